"""``minikvm run`` at its edges: a stdout nobody reads, a reader that leaves,
piped input and its end, signals, statuses and who decided them, ``--mem``.

Every test runs the real command in a child process, as a user would."""

from __future__ import annotations

import fcntl
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.kvm

#: What the flood guest prints, forever (guests/asm/flood.S).
FLOOD_LINE = b"flood: 0123456789abcdefghijklm\r\n"
#: debug-exit with v = 1: status (1 << 1) | 1 = 3, the same number as a crash.
GUEST_SAYS_1 = bytes.fromhex("b001e6f4") + b"\xfa\xf4"          # mov al,1; out 0xf4,al; cli; hlt
#: Long mode: an IDT with limit 0, then ud2: #UD -> #GP -> #DF -> triple fault.
TRIPLE_FAULT = bytes.fromhex("0f011c2500200000") + b"\x0f\x0b\xf4"
F_SETPIPE_SZ = 1031


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "minikvm", *args]


def minikvm(*args: str, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("capture_output", True)
    return subprocess.run(command(*args), timeout=timeout, cwd=ROOT, **kwargs)


def stderr_lines(stderr: bytes) -> list[str]:
    text = stderr.decode(errors="replace")
    assert "Traceback" not in text
    return text.strip().splitlines()


@pytest.fixture
def guest_file(tmp_path):
    def make(code: bytes) -> str:
        path = tmp_path / f"guest{len(list(tmp_path.iterdir()))}.bin"
        path.write_bytes(code)
        return str(path)
    return make


# --- a stdout that stalls, a reader that leaves ---------------------------------------------

@pytest.mark.slow
def test_a_stdout_nobody_reads_does_not_stop_the_timeout(guests):
    # `minikvm run flood.bin --timeout 2 | sleep 20`: a small pipe that is never read.
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, F_SETPIPE_SZ, 4096)
    try:
        started = time.monotonic()
        child = subprocess.Popen(command("run", str(guests / "flood.bin"), "--timeout", "2"),
                                 stdout=write_end, stderr=subprocess.PIPE, cwd=ROOT)
        os.close(write_end)
        _, stderr = child.communicate(timeout=30)
        took = time.monotonic() - started
    finally:
        os.close(read_end)
    assert child.returncode == 124
    lines = stderr_lines(stderr)
    assert len(lines) == 1 and "timeout" in lines[0] and "dropped" in lines[0], lines
    assert took < 2 + 5, f"the run took {took:.1f} s for a 2 s timeout"


def test_a_reader_that_goes_away_ends_the_run_with_141(guests):
    # `minikvm run flood.bin | head -c 10`
    child = subprocess.Popen(command("run", str(guests / "flood.bin"), "--timeout", "60"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    assert child.stdout.read(10) == FLOOD_LINE[:10]
    child.stdout.close()
    started = time.monotonic()
    child.wait(timeout=30)
    assert time.monotonic() - started < 10
    assert child.returncode == 141
    lines = stderr_lines(child.stderr.read())
    child.stderr.close()
    assert len(lines) == 1 and "broken pipe" in lines[0], lines


@pytest.mark.slow
def test_a_reader_that_keeps_up_gets_every_byte_in_order(guests):
    result = minikvm("run", str(guests / "flood.bin"), "--timeout", "1")
    assert result.returncode == 124
    out = result.stdout
    assert len(out) > len(FLOOD_LINE)
    assert out == (FLOOD_LINE * (len(out) // len(FLOOD_LINE) + 1))[:len(out)]
    lines = stderr_lines(result.stderr)
    assert len(lines) == 1 and "timeout" in lines[0] and "dropped" not in lines[0]


# --- piped input and its end ----------------------------------------------------------------

def test_piped_serial_input_keeps_its_first_byte_and_its_end_ends_the_run(guests):
    result = minikvm("run", str(guests / "serial_echo.bin"), input=b"hello\n", timeout=60)
    assert result.stdout == b"hello\n"
    assert result.returncode == 0
    lines = stderr_lines(result.stderr)
    assert len(lines) == 1 and "end of input" in lines[0] and "6 bytes" in lines[0], lines


@pytest.mark.slow
def test_stdin_from_dev_null_ends_a_guest_that_waits_for_input(guests):
    started = time.monotonic()
    result = minikvm("run", str(guests / "serial_echo.bin"), stdin=subprocess.DEVNULL)
    assert result.returncode == 0
    assert "end of input" in stderr_lines(result.stderr)[0]
    assert time.monotonic() - started < 15


@pytest.mark.slow
def test_the_end_of_input_does_not_end_a_guest_that_never_listens(guests):
    result = minikvm("run", str(guests / "spin.bin"), "--timeout", "2",
                     stdin=subprocess.DEVNULL)
    assert result.returncode == 124


@pytest.mark.slow
def test_ctrl_d_ends_the_echo_guest_with_status_0_not_1(guests):
    result = minikvm("run", str(guests / "serial_echo.bin"), input=b"bye\x04", timeout=60)
    assert result.returncode == 0
    assert result.stdout == b"bye\x04"
    assert result.stderr == b""      # the guest ended it: no VMM line


# --- statuses and who decided them ------------------------------------------------------------

@pytest.mark.slow
def test_a_guest_status_comes_without_a_line_and_a_vmm_status_with_one(guests, guest_file):
    said_1 = minikvm("run", guest_file(GUEST_SAYS_1))
    crashed = minikvm("run", guest_file(TRIPLE_FAULT), "--mode", "long")
    assert said_1.returncode == crashed.returncode == 3     # the same number ...
    assert said_1.stderr == b""                             # ... but only the VMM says why
    lines = stderr_lines(crashed.stderr)
    assert len(lines) == 1 and "triple fault" in lines[0]
    exitcode = minikvm("run", str(guests / "exitcode.bin"))
    assert (exitcode.returncode, exitcode.stderr) == ((0x2A << 1) | 1, b"")


@pytest.mark.slow
def test_the_trace_ends_with_who_decided_the_status(guests, guest_file, tmp_path):
    records = {}
    for name, args in (("debug-exit", [guest_file(GUEST_SAYS_1)]),
                       ("crash", [guest_file(TRIPLE_FAULT), "--mode", "long"]),
                       ("halt", [str(guests / "hello.bin")])):
        path = tmp_path / f"{name}.jsonl"
        minikvm("run", *args, "--trace", str(path))
        records[name] = json.loads(path.read_text().splitlines()[-1])
    said = records["debug-exit"]
    assert (said["reason"], said["status"], said["status_from"]) == ("STOP", 3, "debug-exit")
    assert said["debug_exit_value"] == 1
    assert "status 3 from the guest's debug-exit" in said["description"]
    crash = records["crash"]
    assert (crash["status"], crash["status_from"]) == (3, "vmm")
    assert "triple fault" in crash["description"]
    assert (records["halt"]["status"], records["halt"]["status_from"]) == (0, "guest")


@pytest.mark.parametrize("signum, status, words", [
    (signal.SIGINT, 130, "interrupted"),
    pytest.param(signal.SIGTERM, 143, "terminated by SIGTERM", marks=pytest.mark.slow),
    pytest.param(signal.SIGHUP, 129, "terminated by SIGHUP", marks=pytest.mark.slow),
])
def test_a_signal_ends_the_run_with_its_status_and_one_line(guests, signum, status, words):
    child = subprocess.Popen(command("run", str(guests / "flood.bin"), "--timeout", "60"),
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, cwd=ROOT)
    assert child.stdout.read(10) == FLOOD_LINE[:10]  # the guest runs
    child.send_signal(signum)
    _, stderr = child.communicate(timeout=30)
    assert child.returncode == status
    lines = stderr_lines(stderr)
    assert len(lines) == 1 and words in lines[0], lines


# --- --mem ----------------------------------------------------------------------------------

def host_memory() -> int:
    info = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, _, rest = line.partition(":")
        info[name] = int(rest.split()[0]) * 1024
    return info["MemTotal"] + info.get("SwapTotal", 0)


@pytest.mark.slow
def test_mem_beyond_the_host_is_one_line_naming_the_limit(guests):
    too_much = (host_memory() >> 30) + 2
    for size in (f"{too_much}G", "1T"):
        if size == "1T" and host_memory() >= 1 << 40:
            continue
        result = minikvm("run", str(guests / "hello.bin"), "--mem", size)
        assert result.returncode == 2
        lines = stderr_lines(result.stderr)
        assert len(lines) == 1 and "this host has" in lines[0] and "GiB" in lines[0], lines


def test_mem_beyond_kvm_is_one_line_naming_kvm_limit(guests):
    result = minikvm("run", str(guests / "hello.bin"), "--mem", "9T")
    assert result.returncode == 2
    lines = stderr_lines(result.stderr)
    assert len(lines) == 1 and "KVM_MEM_MAX_NR_PAGES" in lines[0]


def test_mem_the_host_refuses_to_map_is_one_line(guests):
    def small_address_space() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))

    result = minikvm("run", str(guests / "hello.bin"), "--mem", "4G",
                     preexec_fn=small_address_space)
    assert result.returncode == 2
    lines = stderr_lines(result.stderr)
    assert len(lines) == 1 and "would not map 4 GiB" in lines[0], lines


@pytest.mark.slow
def test_mem_beyond_3_gib_goes_above_4_gib_and_leaves_the_virtio_windows_to_the_devices(guests):
    result = minikvm("run", str(guests / "virtio_rng.elf"), "--virtio-rng", "--mem", "4G")
    assert result.returncode == 0, result.stderr
