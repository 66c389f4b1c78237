"""``minikvm run --snapshot`` then ``minikvm resume`` equals one uninterrupted run.

For every bundled guest -- the debug console (hello), COM1 by interrupt
(serial_echo with the irqchip), virtio-blk, long mode with its own page
tables (long, paged), two vCPUs (smp) -- the guest's stdout of a run cut
after N exits and resumed in a fresh process is byte for byte the stdout
of one run, and the final status is the same. Everything goes through the
CLI in subprocesses, as a user would do it. When the guest ends before N
exits there is no snapshot: the run ends with the guest's own status and
says so.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import ROOT, slow_except

pytestmark = pytest.mark.kvm

SECTOR = 512
#: serial_echo's input: two lines, then Ctrl-D, which makes it halt.
ECHO_INPUT = b"hello\rsnapshot\r\x04"


def minikvm(*args: str, stdin=subprocess.DEVNULL) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "minikvm", *args], capture_output=True,
                          stdin=stdin, timeout=120, cwd=ROOT)


class Guest:
    """A bundled guest, its run options, and what it reads."""

    def __init__(self, name: str, *options: str, stdin: bytes | None = None,
                 disk: bool = False) -> None:
        self.name, self.options, self.stdin, self.disk = name, options, stdin, disk

    def __repr__(self) -> str:
        return " ".join((self.name, *self.options))

    def args(self, guests: Path, workdir: Path) -> list[str]:
        args = [str(guests / self.name), *self.options, "--timeout", "60"]
        if self.disk:
            image = workdir / "disk.img"
            image.write_bytes(b"snapshot disk\n".ljust(SECTOR, b"\0") * 8)
            args += ["--virtio-blk", str(image)]
        return args

    def input(self, workdir: Path):
        """A regular file as stdin: all of it is there from the start."""
        if self.stdin is None:
            return subprocess.DEVNULL
        path = workdir / "input"
        path.write_bytes(self.stdin)
        return path.open("rb")


GUESTS = [
    Guest("hello.bin"),
    Guest("serial_echo.bin", stdin=ECHO_INPUT),
    Guest("virtio_blk.elf", disk=True),
    Guest("long.elf"),
    Guest("paged.elf"),
    Guest("smp.elf", "--smp", "2"),
    # Without the irqchip: no LAPIC, chips or MP state; an MSR that needs
    # the LAPIC (MSR_KVM_ASYNC_PF_INT) reads back but cannot be written.
    Guest("long.elf", "--no-irqchip"),
]


def uninterrupted(guest: Guest, guests: Path, workdir: Path) -> subprocess.CompletedProcess:
    workdir.mkdir(exist_ok=True)
    return minikvm("run", *guest.args(guests, workdir), stdin=guest.input(workdir))


def run_then_resume(guest: Guest, guests: Path, workdir: Path, exits: int):
    """(stdout of both processes, final status, stderr lines, snapshot taken?)"""
    workdir.mkdir(exist_ok=True)
    snap = workdir / "machine.snap"
    first = minikvm("run", *guest.args(guests, workdir), "--snapshot", str(snap),
                    "--snapshot-after-exits", str(exits), stdin=guest.input(workdir))
    errors = first.stderr.decode()
    if not snap.exists():
        assert "no snapshot" in errors, errors
        return first.stdout, first.returncode, errors, False
    assert first.returncode == 0, errors
    assert errors.startswith(f"minikvm: saved snapshot {snap} after "), errors
    second = minikvm("resume", str(snap))
    return first.stdout + second.stdout, second.returncode, errors + second.stderr.decode(), True


def assert_same_as_one_run(guest: Guest, guests: Path, tmp_path: Path, exits: int) -> bool:
    whole = uninterrupted(guest, guests, tmp_path / "whole")
    output, status, errors, cut = run_then_resume(guest, guests, tmp_path / "cut", exits)
    assert output == whole.stdout, (errors, whole.stderr)
    assert status == whole.returncode, errors
    if guest.disk:
        assert ((tmp_path / "cut" / "disk.img").read_bytes()
                == (tmp_path / "whole" / "disk.img").read_bytes())
    return cut


@pytest.mark.parametrize("guest", slow_except(GUESTS), ids=repr)
def test_resume_output_equals_uninterrupted_run(guests, tmp_path, guest):
    assert assert_same_as_one_run(guest, guests, tmp_path, 5)


def test_resume_output_equals_an_uninterrupted_machine_run(guests, tmp_path):
    """The fast representative: two processes (run --snapshot, resume),
    compared with the same guest run whole in this process."""
    from minikvm.core.config import MachineConfig
    from minikvm.machine import Machine

    output: list[bytes] = []
    with Machine.from_config(MachineConfig(guest=str(guests / "hello.bin"), irqchip=True),
                             output=output.append) as machine:
        stop = machine.run(timeout=60)
    cut_output, status, _, cut = run_then_resume(GUESTS[0], guests, tmp_path, 5)
    assert cut and cut_output == b"".join(output) and status == stop.status


@pytest.mark.slow
@pytest.mark.parametrize("exits", [1, 12, 30])
@pytest.mark.parametrize("guest", GUESTS[1:], ids=repr)
def test_resume_output_equals_uninterrupted_run_at_other_cuts(guests, tmp_path, guest, exits):
    assert_same_as_one_run(guest, guests, tmp_path, exits)


@pytest.mark.slow
@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(exits=st.integers(min_value=1, max_value=80))
def test_any_cut_of_the_debugcon_guest_resumes_to_the_same_output(guests, tmp_path_factory,
                                                                    exits):
    assert_same_as_one_run(GUESTS[0], guests, tmp_path_factory.mktemp("cut"), exits)


@pytest.mark.slow
def test_a_guest_that_ends_first_ends_as_usual_without_snapshot(guests, tmp_path):
    output, status, errors, cut = run_then_resume(GUESTS[0], guests, tmp_path, 100_000)
    assert not cut and status == 0
    assert output.startswith(b"Hello")
    assert "no snapshot: the run ended after" in errors


@pytest.mark.slow
def test_a_resumed_machine_can_be_snapshotted_again(guests, tmp_path):
    whole = uninterrupted(GUESTS[3], guests, tmp_path / "whole")
    first = minikvm("run", *GUESTS[3].args(guests, tmp_path), "--snapshot",
                    str(tmp_path / "a.snap"), "--snapshot-after-exits", "3")
    second = minikvm("resume", str(tmp_path / "a.snap"), "--snapshot", str(tmp_path / "b.snap"),
                     "--snapshot-after-exits", "10")
    third = minikvm("resume", str(tmp_path / "b.snap"))
    assert first.stdout + second.stdout + third.stdout == whole.stdout
    assert third.returncode == whole.returncode


@pytest.mark.slow
def test_resume_refuses_a_disk_of_another_size(guests, tmp_path):
    snap = tmp_path / "blk.snap"
    first = minikvm("run", *GUESTS[2].args(guests, tmp_path), "--snapshot", str(snap),
                    "--snapshot-after-exits", "3")
    assert first.returncode == 0, first.stderr
    other = tmp_path / "other.img"
    other.write_bytes(bytes(SECTOR))
    refused = minikvm("resume", str(snap), "--virtio-blk", str(other))
    assert refused.returncode == 2
    lines = refused.stderr.decode().splitlines()
    assert len(lines) == 1 and "is 512 bytes; the snapshot's was 4096" in lines[0]
    copy = tmp_path / "copy.img"
    shutil.copy(tmp_path / "disk.img", copy)
    assert minikvm("resume", str(snap), "--virtio-blk", str(copy)).returncode == 0


def _cut_with_late_input(guests: Path, workdir: Path, exits: int, delay: float) -> bytes:
    """stdout of serial_echo cut after ``exits`` exits, its input arriving
    ``delay`` seconds late (the guest sleeps in ``hlt`` meanwhile)."""
    workdir.mkdir()
    process = subprocess.Popen(
        [sys.executable, "-m", "minikvm", "run", str(guests / "serial_echo.bin"),
         "--timeout", "60", "--snapshot", str(workdir / "m.snap"),
         "--snapshot-after-exits", str(exits)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    time.sleep(delay)
    output, errors = process.communicate(ECHO_INPUT, timeout=60)
    assert process.returncode == 0 and (workdir / "m.snap").exists(), errors
    assert errors.decode().startswith(f"minikvm: saved snapshot {workdir / 'm.snap'} after "
                                      f"{exits} exits"), errors
    return output


@pytest.mark.slow
def test_snapshot_after_exits_counts_the_guests_exits_not_the_vmms_kicks(guests, tmp_path):
    """While serial_echo waits in ``hlt`` for late input the watchdog kicks
    its vCPU out of KVM_RUN many times (halt checks); those KVM_EXIT_INTR
    are not the guest's, so the cut lands at the same instruction -- the
    same output so far -- however long the input took."""
    prompt = _cut_with_late_input(guests, tmp_path / "prompt", 70, 0.0)
    late = _cut_with_late_input(guests, tmp_path / "late", 70, 2.0)
    assert late == prompt and prompt.startswith(b"hello\r\n")
    rest = minikvm("resume", str(tmp_path / "late" / "m.snap"))
    whole = uninterrupted(GUESTS[1], guests, tmp_path / "whole")
    assert late + rest.stdout == whole.stdout and rest.returncode == whole.returncode


@pytest.mark.slow
def test_the_same_snapshot_resumes_twice_to_the_same_end_and_is_not_changed(guests, tmp_path):
    """A snapshot is read, never written, by resume: two resumes of one file
    print the same and end the same (serial_echo: pending input and an
    interrupt-driven UART are in the file)."""
    snap = tmp_path / "echo.snap"
    first = minikvm("run", *GUESTS[1].args(guests, tmp_path), "--snapshot", str(snap),
                    "--snapshot-after-exits", "40", stdin=GUESTS[1].input(tmp_path))
    assert first.returncode == 0, first.stderr
    saved = snap.read_bytes()
    once, twice = minikvm("resume", str(snap)), minikvm("resume", str(snap))
    assert (once.stdout, once.returncode) == (twice.stdout, twice.returncode)
    whole = uninterrupted(GUESTS[1], guests, tmp_path / "whole")
    assert first.stdout + once.stdout == whole.stdout and snap.read_bytes() == saved
