"""GNU gdb itself against the stub: what a person types, and what gdb prints.

Each test runs ``gdb -batch -nx GUEST -ex 'target remote HOST:PORT' -ex ...``
against a machine served by :func:`minikvm.gdb.serve.serve_gdb` (in this
process, on a thread) or by ``minikvm run --gdb`` (the command, as a person
starts it), and checks gdb's own output and the guest's end. The guest is
``guests/c/gdbdemo.c``, built with ``-g``: it prints ``twice(answer)`` and
exits with it through the debug-exit port (status ``(v << 1) | 1``).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from minikvm.gdb.serve import listen, serve_gdb
from minikvm.machine import Machine, StopKind
from tests.conftest import ROOT

pytestmark = [pytest.mark.kvm,
              pytest.mark.skipif(shutil.which("gdb") is None, reason="needs gdb (apt install gdb)")]

GDB_TIMEOUT = 60


def gdb_command(file: Path | None, port: int, commands: list[str],
                before: list[str] = ()) -> list[str]:
    args = ["gdb", "-batch", "-nx"]
    if file is not None:
        args.append(str(file))
    for command in before:
        args += ["-ex", command]
    args += ["-ex", f"target remote 127.0.0.1:{port}"]
    for command in commands:
        args += ["-ex", command]
    return args


class Served:
    """What one gdb session gave: gdb's output, and the guest's end."""

    def __init__(self, output: str, stop, printed: bytes) -> None:
        self.output = output
        self.stop = stop
        self.printed = printed


def debug(machine: Machine, commands: list[str], file: Path | None, before: list[str] = (),
          printed: bytearray | None = None) -> Served:
    """Serve ``machine`` to a batch gdb that runs ``commands``."""
    server = listen("127.0.0.1", 0)
    server.settimeout(GDB_TIMEOUT)
    port = server.getsockname()[1]
    result: dict[str, object] = {}

    def work():
        try:
            result["stop"] = serve_gdb(machine, ("127.0.0.1", 0), server=server,
                                       say=lambda line: None, timeout=30)
        except BaseException as err:  # noqa: BLE001 - shown by the test
            result["error"] = err
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    gdb = subprocess.run(gdb_command(file, port, commands, before), capture_output=True,
                         text=True, timeout=GDB_TIMEOUT)
    thread.join(timeout=GDB_TIMEOUT)
    assert "error" not in result, result.get("error")
    assert "internal-error" not in gdb.stderr, gdb.stderr
    return Served(gdb.stdout + gdb.stderr, result.get("stop"),
                  bytes(printed) if printed is not None else b"")


@pytest.fixture
def demo(guests):
    """``demo(commands)``: gdbdemo under gdb; ``vcpus=2`` adds a vCPU at ap_main."""
    elf = guests / "gdbdemo.elf"

    def run(commands: list[str], vcpus: int = 1) -> Served:
        printed = bytearray()
        with Machine(vcpus=vcpus, output=printed.extend) as machine:
            image = machine.load_elf(elf)
            if vcpus > 1:
                machine.set_mode("long", image.symbols.lookup("ap_main").address, vcpu=1)
                regs = machine.vcpus[1].get_regs()
                regs.rsp = 0x60800          # its own stack, in the results page
                machine.vcpus[1].set_regs(regs)
            return debug(machine, commands, elf, printed=printed)
    return run


def values(output: str) -> list[str]:
    """gdb's ``$N = VALUE`` lines, the values."""
    return re.findall(r"^\$\d+ = (.*)$", output, re.MULTILINE)


# -- a first session ------------------------------------------------------------------------


def test_gdb_breaks_at_a_function_reads_a_global_and_sets_one_that_changes_the_guest(demo):
    served = demo(["break twice", "print answer", "set var answer = 5", "continue",
                   "print x", "continue"])
    assert "Breakpoint 1, twice (x=5) at c/gdbdemo.c" in served.output
    assert values(served.output) == ["21", "5"]
    assert "exited with code 025" in served.output       # gdb prints it in octal: 21
    assert served.printed == b"hello from gdbdemo\ntwice(answer) = 10\n"
    assert served.stop.kind is StopKind.DEBUG_EXIT and served.stop.status == 21


# -- one behaviour each -----------------------------------------------------------------------


@pytest.mark.slow
def test_a_watchpoint_reports_the_old_and_the_new_value(demo):
    served = demo(["watch counter", "continue", "continue", "delete", "continue"])
    assert "Hardware watchpoint 1: counter" in served.output
    assert re.search(r"Old value = 0\s+New value = 1", served.output)
    assert re.search(r"Old value = 1\s+New value = 2", served.output)
    assert "count (times=" in served.output


@pytest.mark.slow
def test_stepi_moves_the_pc_one_instruction(demo):
    served = demo(["print $pc", "stepi", "print $pc", "x/i $pc"])
    before, after = values(served.output)
    assert before.endswith("0x100000 <_start>") and after.endswith("0x100004 <_start+4>")


@pytest.mark.slow
def test_x_s_reads_a_string_through_the_guests_page_tables(demo):
    served = demo(["x/s greeting", "x/s 0x7f0000000000"])
    assert '<greeting>:\t"hello from gdbdemo"' in served.output
    assert "Cannot access memory at address 0x7f0000000000" in served.output


@pytest.mark.slow
def test_info_registers_shows_the_general_segment_and_system_registers(demo):
    served = demo(["info registers rip eflags cs", "info registers cr0", "p/x $efer"])
    assert re.search(r"rip\s+0x100000\s+0x100000 <_start>", served.output)
    assert re.search(r"eflags\s+0x2\s+\[ \]", served.output)
    assert re.search(r"cs\s+0x8\s+8", served.output)
    assert re.search(r"cr0\s+0x80010033", served.output)
    assert values(served.output) == ["0x500"]               # EFER: LME | LMA


@pytest.mark.slow
def test_ctrl_c_stops_a_spinning_guest(demo):
    # gdb in batch mode has no keyboard: a timer sends gdb the SIGINT Ctrl-C would.
    interrupt = ("python import threading, os, signal; threading.Timer(1.0, "
                 "lambda: os.kill(os.getpid(), signal.SIGINT)).start()")
    served = demo(["set var spin = 1", interrupt, "continue", "set var spin = 0", "continue"])
    assert "Program received signal SIGINT, Interrupt." in served.output
    assert "while (spin)" in served.output
    assert "exited with code 0125" in served.output


@pytest.mark.slow
def test_the_guests_end_reaches_gdb(demo):
    served = demo(["continue", "print $_exitcode"])
    assert "minikvm: the guest wrote 0x2a to the debug-exit port: status 85" in served.output
    assert "[Inferior 1 (Remote target) exited with code 0125]" in served.output
    assert values(served.output) == ["85"]


@pytest.mark.slow
def test_monitor_commands_explain_what_gdb_cannot_see(demo):
    served = demo(["break twice", "continue", "monitor exits 3", "monitor translate greeting",
                   "monitor breakpoints", "monitor cpu", "monitor nonsense"])
    assert "debug console: the guest prints '\\n'" in served.output
    assert "PML4[0]" in served.output and "PD[0]" in served.output
    assert "the guest last ran with DR7=" in served.output
    assert "efer 0x500 [LMA|LME]" in served.output
    assert "no monitor command 'nonsense'" in served.output


@pytest.mark.slow
def test_two_vcpus_are_two_threads_and_a_breakpoint_stops_the_second(demo):
    # vCPU 0 spins until gdb clears `spin`: the guest cannot end before vCPU 1 gets there.
    served = demo(["set var spin = 1", "info threads", "break ap_count", "continue",
                   "info threads", "set var spin = 0", "delete", "continue"], vcpus=2)
    assert re.search(r"2\s+Thread 2 \(vCPU 1, long mode, stopped\) ap_main", served.output)
    assert "Thread 2 hit Breakpoint 1, ap_count ()" in served.output
    assert re.search(r"\* 2\s+Thread 2 \(vCPU 1", served.output)
    assert "exited with code 0125" in served.output


# -- other CPU modes ----------------------------------------------------------------------------


@pytest.mark.slow
def test_a_32_bit_guest_gets_i386_registers(guests):
    with Machine(output=lambda data: None) as machine:
        machine.load_elf(guests / "protected.elf")
        served = debug(machine, ["show architecture", "info registers eip cs", "stepi",
                                 "print $eip", "monitor cpu", "continue"],
                       guests / "protected.elf")
    assert '(currently "i386")' in served.output
    assert re.search(r"eip\s+0x100000\s+0x100000 <_start>", served.output)
    assert values(served.output) == ["(void (*)()) 0x100001 <_start+1>"]
    assert "protected mode, 32-bit code (gdb's registers: i386)" in served.output
    assert "exited normally" in served.output and served.stop.status == 0


@pytest.mark.slow
def test_real_mode_needs_set_architecture_i8086(guests):
    with Machine(output=lambda data: None) as machine:
        machine.load_flat(guests / "real.bin", 0x1000)
        served = debug(machine, ["x/2i $pc", "stepi", "print $pc"], None,
                       before=["set architecture i8086"])
    assert "push   %si" in served.output                 # decoded as 16-bit code
    assert values(served.output) == ["(void (*)()) 0x1002"]


# -- the command ----------------------------------------------------------------------------------


def minikvm(*args: str, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "minikvm", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def gdb_then_end(process: subprocess.Popen, file: Path, port: int,
                 commands: list[str]) -> tuple[str, str, str]:
    """Run a batch gdb with ``commands`` against ``process`` (``minikvm ...
    --gdb``), then wait for the process: (gdb's output, its stdout, its
    stderr). The process is killed if anything goes wrong on the way."""
    try:
        gdb = subprocess.run(gdb_command(file, port, commands), capture_output=True, text=True,
                             timeout=GDB_TIMEOUT)
        out, err = process.communicate(timeout=GDB_TIMEOUT)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()
    return gdb.stdout + gdb.stderr, out, err


def attach_line(process: subprocess.Popen) -> str:
    line = process.stderr.readline()
    if not line.startswith("minikvm: waiting for gdb on 127.0.0.1:"):
        process.kill()          # it would wait for a gdb that never comes
        process.wait()
        pytest.fail(f"no attach line: {line!r}")
    return line


@pytest.mark.slow
@pytest.mark.parametrize("last, status, printed", [
    ("print answer", 85, "twice(answer) = 42"),   # batch end: gdb detaches, the guest runs on
    ("kill", 137, ""),
])
def test_minikvm_run_gdb_says_how_to_attach_and_exits_as_the_guest(guests, last, status, printed):
    elf = guests / "gdbdemo.elf"
    process = minikvm("run", str(elf), "--gdb", "127.0.0.1:0")
    line = attach_line(process)
    command = line.split("attach with: ")[1].strip()
    port = int(re.search(r"127\.0\.0\.1:(\d+)", line).group(1))
    assert command == f"gdb {elf} -ex 'target remote 127.0.0.1:{port}'"
    session, out, err = gdb_then_end(process, elf, port, [last])
    assert process.returncode == status, session + err
    assert printed in out


@pytest.mark.slow
def test_listening_beyond_loopback_is_warned_about_once(guests):
    process = minikvm("run", str(guests / "gdbdemo.elf"), "--gdb", "0.0.0.0:0")
    try:
        warning = process.stderr.readline()
        assert "warning: the gdb stub listens on 0.0.0.0:" in warning
        assert "anyone who can connect to it controls the guest" in warning
        line = process.stderr.readline()
        port = int(re.search(r":(\d+);", line).group(1))
        import socket
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"$k#6b")
        process.communicate(timeout=GDB_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 137


@pytest.mark.slow
def test_minikvm_trace_gdb_traces_what_happened_under_gdb(guests):
    elf = guests / "gdbdemo.elf"
    process = minikvm("trace", str(elf), "--gdb", "127.0.0.1:0", "--limit", "3")
    try:
        port = int(re.search(r"127\.0\.0\.1:(\d+)", attach_line(process)).group(1))
        subprocess.run(gdb_command(elf, port, ["break twice", "continue"]), capture_output=True,
                       timeout=GDB_TIMEOUT)
        out, _ = process.communicate(timeout=GDB_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 85
    assert "exits by reason" in out and "twice(answer) = 42" in out


@pytest.mark.slow
def test_gdb_attaches_to_a_resumed_machine_and_debugs_it_to_the_guests_end(guests, tmp_path):
    """``minikvm resume FILE --gdb``: gdb meets the machine where the snapshot
    left it -- reads a variable and a register, stops at a breakpoint with
    the argument it was called with -- and the guest ends as one whole run does."""
    elf = guests / "gdbdemo.elf"
    snap = tmp_path / "demo.snap"
    first = subprocess.run([sys.executable, "-m", "minikvm", "run", str(elf), "--snapshot",
                            str(snap), "--snapshot-after-exits", "5"], cwd=ROOT,
                           capture_output=True, timeout=GDB_TIMEOUT)
    assert first.returncode == 0 and first.stdout == b"hello", first.stderr
    process = minikvm("resume", str(snap), "--gdb", "127.0.0.1:0")
    line = attach_line(process)
    assert f"gdb {elf} -ex" in line
    port = int(re.search(r"127\.0\.0\.1:(\d+)", line).group(1))
    session, out, err = gdb_then_end(process, elf, port, [
        "print answer", "print $pc == (long) &_start", "print $rsp != 0", "break twice",
        "continue", "print x", "continue"])
    assert values(session) == ["21", "0", "1", "21"], session
    assert "Breakpoint 1, twice (x=21) at c/gdbdemo.c" in session
    assert "exited with code 0125" in session            # 85, in octal
    assert first.stdout.decode() + out == "hello from gdbdemo\ntwice(answer) = 42\n"
    assert process.returncode == 85, err
