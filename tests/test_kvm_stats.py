"""KVM's binary statistics (minikvm/kvm/stats.py) and the watchdog's use of
``blocking``: a vCPU asleep inside ``KVM_RUN`` is seen from another thread,
without stopping it, and the halt check then need not wait for a quiet spell."""

from __future__ import annotations

import os
import struct
import threading
import time

import pytest

import minikvm.machine as machine_module
from minikvm.core.runner import Watchdog
from minikvm.core.stop import StopKind
from minikvm.kvm.errors import KvmError
from minikvm.kvm.stats import KvmStats, StatsError
from minikvm.kvm.uapi import KvmCap
from minikvm.machine import Machine

pytestmark = pytest.mark.kvm

#: Real mode at 0x1000: ``mov al, 'A'; out 0x80, al`` (one exit), then
#: ``cli; hlt`` (asleep for good) or ``sti; hlt`` (asleep, waiting for an
#: interrupt that never comes).
OUT_THEN_CLI_HLT = bytes.fromhex("b041e680") + b"\xfa\xf4"
STI_HLT = b"\xfb\xf4"


def _machine(code: bytes) -> Machine:
    machine = Machine(irqchip=True)
    if machine.kvm.check_extension(KvmCap.KVM_CAP_BINARY_STATS_FD) <= 0:
        machine.close()
        pytest.skip("this kernel has no KVM_GET_STATS_FD (Linux 5.14 and later)")
    if "blocking" not in machine.vcpu.stats().names:
        machine.close()
        pytest.skip("this kernel's vCPUs have no 'blocking' statistic (Linux 5.17 and later)")
    machine.load_flat(code, 0x1000)
    return machine


def test_vcpu_stats_name_the_counters_kvm_keeps():
    with _machine(STI_HLT) as machine:
        stats = machine.vcpu.stats()
        assert {"blocking", "exits", "io_exits", "halt_exits"} <= set(stats.names)
        assert stats is machine.vcpu.stats()          # one fd, opened once
        assert stats.read("blocking") == 0            # not running at all
        with pytest.raises(KeyError):
            stats.read("no_such_statistic")
        assert stats.reader("no_such_statistic") is None


def test_exits_count_grows_as_the_guest_runs():
    # Every exit of the guest, handled in the kernel or not, is counted in
    # vcpu_enter_guest (arch/x86/kvm/x86.c); "io_exits" and the like are
    # counted by the vendor's handlers, which kvm-pvm does not all share.
    with _machine(OUT_THEN_CLI_HLT) as machine:
        before = machine.vcpu.stats().read("exits")
        stop = machine.run(timeout=10)
        assert stop.kind is StopKind.HALT
        assert machine.vcpu.stats().read("exits") > before


def test_blocking_is_one_while_the_vcpu_sleeps_inside_kvm_run():
    with _machine(STI_HLT) as machine:
        blocking = machine.runners[0].blocking_reader()
        assert blocking is not None
        seen = []
        worker = threading.Thread(target=lambda: seen.append(machine.run(timeout=10)))
        worker.start()
        try:
            # Read from this thread while the vCPU waits in hlt on the worker:
            # no ioctl could (they wait for the vCPU's mutex).
            for _ in range(2000):
                if blocking() == 1:
                    break
                time.sleep(0.001)
            asleep = blocking()
        finally:
            machine.pause()
            worker.join(timeout=10)
        assert asleep == 1
        assert seen and seen[0].kind is StopKind.PAUSED
        assert blocking() == 0                        # back out of KVM_RUN


def test_vcpu_close_closes_its_stats_fd_and_its_readers_read_nothing_after():
    machine = _machine(STI_HLT)
    stats = machine.vcpu.stats()
    blocking = machine.runners[0].blocking_reader()
    fd = stats.fd
    machine.close()
    assert stats.fd == -1
    with pytest.raises(OSError):
        os.fstat(fd)
    # The fd number may be another file's now: the reader must not read it.
    with open(os.devnull, "rb") as other:
        assert blocking() == 0
        assert other.fileno() >= 0


def test_stats_closed_by_someone_are_opened_again():
    with _machine(STI_HLT) as machine:
        first = machine.vcpu.stats()
        first.close()
        again = machine.vcpu.stats()
        assert again is not first and again.fd >= 0
        assert "blocking" in again.names


def test_a_watchdog_whose_statistic_fails_falls_back_to_the_quiet_rule():
    with _machine(OUT_THEN_CLI_HLT) as machine:
        def broken() -> int:
            raise OSError(9, "Bad file descriptor")
        machine.runners[0]._blocking = broken
        kind, wakeups, early = _run_counting_wakeups(machine, first=0.15)
    assert kind is StopKind.HALT                  # the watchdog thread lived on
    assert (wakeups, early) == (2, 0)             # by the quiet rule


def _stats_file(tmp_path, header: bytes, rest: bytes = b"") -> int:
    path = tmp_path / "stats"
    path.write_bytes(header + rest)
    return os.open(path, os.O_RDONLY)


@pytest.mark.parametrize("fields, words", [
    ((0, 48, 5000, 24, 24, 24), "5000 statistics"),          # more than any kernel has
    ((0, 0, 1, 24, 24, 24), "names of 0 bytes"),
    ((0, 48, 2, 24, 24, 200), "bytes at offset 24"),         # descriptors past the end
])
def test_a_stats_header_that_lies_is_refused_and_its_fd_closed(tmp_path, fields, words):
    fd = _stats_file(tmp_path, struct.pack("<6I", *fields))
    with pytest.raises(StatsError, match=words):
        KvmStats(fd)
    with pytest.raises(OSError):
        os.fstat(fd)                              # closed on the way out


def test_a_statistic_past_the_end_of_the_file_has_no_reader(tmp_path):
    name = b"blocking".ljust(48, b"\0")
    desc = struct.pack("<IhHII", 0, 0, 1, 4096, 0) + name   # its value would be at 4096+
    fd = _stats_file(tmp_path, struct.pack("<6I", 0, 48, 1, 24, 24, 24 + 64), desc)
    stats = KvmStats(fd)
    try:
        assert stats.names == ["blocking"]
        assert stats.reader("blocking") is None
        with pytest.raises(StatsError):
            stats.read("blocking")
    finally:
        stats.close()


def _run_counting_wakeups(machine: Machine, first: float) -> tuple[StopKind, int, int]:
    made: list[Watchdog] = []

    def watchdog(runners, timeout=None):
        made.append(Watchdog(runners, timeout, interval=first, first=first))
        return made[-1]

    original = machine_module.Watchdog
    machine_module.Watchdog = watchdog
    try:
        stop = machine.run(timeout=30)
    finally:
        machine_module.Watchdog = original
    return stop.kind, made[0].wakeups, machine.runners[0].early_checks


def test_watchdog_checks_a_vcpu_asleep_in_kvm_at_its_first_wakeup():
    # The guest makes its exit and sleeps in cli; hlt long before the
    # watchdog's first wake-up, 0.15 s in. That wake-up sees activity (the
    # exit), so by the quiet rule alone the check would wait one period more;
    # KVM's "blocking" says the vCPU sleeps now, and the check is made at once.
    with _machine(OUT_THEN_CLI_HLT) as machine:
        assert machine.runners[0].blocking_reader() is not None
        kind, wakeups, early = _run_counting_wakeups(machine, first=0.15)
    assert kind is StopKind.HALT
    assert (wakeups, early) == (1, 1)


def test_without_the_statistic_the_check_waits_for_a_quiet_spell():
    with _machine(OUT_THEN_CLI_HLT) as machine:
        machine.runners[0]._blocking = None           # as on a kernel without it
        kind, wakeups, early = _run_counting_wakeups(machine, first=0.15)
    assert kind is StopKind.HALT
    assert (wakeups, early) == (2, 0)


def test_a_runner_without_halt_checks_opens_no_stats_fd():
    machine = Machine(irqchip=False)
    try:
        assert machine.runners[0].blocking_reader() is None
        assert machine.vcpu._stats is None
    finally:
        machine.close()


def test_blocking_reader_is_none_where_the_kernel_has_no_stats_fd(monkeypatch):
    from minikvm.core.runner import VcpuRunner

    with _machine(STI_HLT) as machine:
        def refuse():
            raise KvmError("KVM_GET_STATS_FD", 25)   # ENOTTY: an older kernel
        monkeypatch.setattr(machine.vcpu, "stats", refuse)
        assert VcpuRunner(machine.vcpu, halt_check=True).blocking_reader() is None


def test_info_says_how_this_host_sees_a_halt():
    from minikvm.cli.info import halt_detection
    from minikvm.kvm.system import Kvm

    with Kvm() as kvm:
        if kvm.check_extension(KvmCap.KVM_CAP_BINARY_STATS_FD) <= 0:
            pytest.skip("this kernel has no KVM_GET_STATS_FD (Linux 5.14 and later)")
        with kvm.create_vm() as vm, vm.create_vcpu(0) as vcpu:
            if "blocking" not in vcpu.stats().names:
                pytest.skip("this kernel's vCPUs have no 'blocking' statistic (Linux 5.17)")
        assert halt_detection(kvm).startswith("the check starts at the watchdog's first wake-up")


def test_early_checks_of_a_vcpu_that_sleeps_between_exits_come_once_per_interval():
    # A guest that makes an exit, sleeps in sti; hlt until its next interrupt,
    # makes an exit ...: each wake-up sees activity and finds it asleep. The
    # early check would kick it at every wake-up for nothing; it is made at
    # most once per interval (and the quiet rule never fires: never quiet).
    with _machine(STI_HLT) as machine:
        runner = machine.runners[0]
        checks = []
        done = threading.Event()

        def guest() -> None:          # an exit every 2 ms, asleep in between
            while not done.wait(0.002):
                runner.runs += 1

        runner._blocking = lambda: 1
        runner.check_halt = lambda: checks.append(time.monotonic())
        exits = threading.Thread(target=guest)
        exits.start()
        started = time.monotonic()
        watchdog = Watchdog([runner], first=0.01, interval=0.1)
        time.sleep(0.35)
        watchdog.close()
        elapsed = time.monotonic() - started
        done.set()
        exits.join()
    # Up to one early check per interval, and a quiet-rule check or two where
    # the host stalled the fake guest for longer than `first`.
    bound = elapsed / 0.1 + 1 + 2
    assert 1 <= len(checks) <= bound
    assert 1 <= runner.early_checks <= elapsed / 0.1 + 1
    assert watchdog.wakeups > 2 * bound           # so the limit is what held them back
