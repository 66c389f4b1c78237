"""The minikvm command as a new user meets it: statuses and one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT, slow_except


def minikvm(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "minikvm", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def assert_one_clean_line(result: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.kvm
def test_run_hello_prints_greeting_and_exits_0(guests):
    result = minikvm("run", str(guests / "hello.bin"), "--load-addr", "0x1000", "--entry", "0x1000")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Hello from a KVM guest, driven entirely from Python!\n"


@pytest.mark.kvm
@pytest.mark.slow
def test_run_exitcode_status_is_shifted_value(guests):
    assert minikvm("run", str(guests / "exitcode.bin")).returncode == (0x2A << 1) | 1


@pytest.mark.kvm
@pytest.mark.slow
def test_run_forever_loop_ends_with_124_at_timeout(guests):
    result = minikvm("run", str(guests / "spin.bin"), "--timeout", "0.5")
    assert result.returncode == 124
    assert_one_clean_line(result)
    assert "timeout" in result.stderr


@pytest.mark.kvm
@pytest.mark.slow
def test_info_shows_api_version_and_host(guests):
    result = minikvm("info")
    assert result.returncode == 0, result.stderr
    assert "API version" in result.stdout and "12" in result.stdout
    assert "host KVM" in result.stdout


@pytest.mark.parametrize("args, status, words", slow_except([
    (["run", "no/such/guest.bin"], 2, "no such file"),
    (["run", "guests"], 2, "is a directory"),
    (["run", "guests/hello.bin", "--load-addr", "zz"], 2, "not a number"),
    (["run", "guests/hello.bin", "--mem", "3x"], 2, "not a size"),
    (["run", "guests/hello.bin", "--timeout", "-1"], 2, "positive"),
    (["frobnicate"], 2, "invalid choice"),
    (["run", "guests/build/hello.bin", "--entry", "0x900000"], 2, "out of reach in real mode"),
    (["run", "guests/build/hello.bin", "--virtio-blk", "no/such.img"], 2, "no such disk image"),
], "no such file"))
def test_bad_input_gets_one_line_and_nonzero_status(args, status, words, guests):
    result = minikvm(*args)
    assert result.returncode == status
    assert_one_clean_line(result)
    assert words in result.stderr


@pytest.mark.slow
def test_empty_guest_file_is_refused(tmp_path):
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    result = minikvm("run", str(empty))
    assert result.returncode == 2
    assert_one_clean_line(result)
    assert "empty" in result.stderr


@pytest.mark.kvm
@pytest.mark.slow
def test_guest_larger_than_ram_is_refused(tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(b"\x90" * (3 << 20))
    result = minikvm("run", str(big))
    assert result.returncode == 2
    assert_one_clean_line(result)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["run", "info"])
def test_missing_kvm_device_is_status_1_with_advice(tmp_path, command, guests):
    args = ["--kvm", str(tmp_path / "kvm")]
    args += [command] + ([str(guests / "hello.bin")] if command == "run" else [])
    result = minikvm(*args)
    assert result.returncode == 1
    assert_one_clean_line(result)
    assert "KVM is not available" in result.stderr
