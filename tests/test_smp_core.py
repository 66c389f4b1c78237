"""Two vCPUs of one VM, each on its own thread, through the runner.

No SMP start-up here (tests/test_smp_guests.py has it): without the
in-kernel irqchip every vCPU runs from the start, so each is put in real
mode at an entry of its own. The code is a few hand-assembled instructions
written straight into guest RAM. The HaltGroup's rule -- the run ends on a
halt only when every vCPU is done, confirmed afresh -- is tested here
without a VM.
"""

from __future__ import annotations

import threading
import time

import pytest

from minikvm.core.board import DEBUG_EXIT_PORT, DEBUGCON_PORT
from minikvm.core.runner import HaltGroup
from minikvm.kvm.exits import Hlt, IoOut
from minikvm.machine import Machine, StopKind


ENTRIES = (0x1000, 0x2000)
#: What each vCPU writes to debugcon, by index.
MESSAGES = (b"vcpu zero: 0123456789\n", b"VCPU ONE: ABCDEFGHIJ\n")
OUT_DEBUG_EXIT = 0x21


def debugcon_then_halt(text: bytes) -> bytes:
    """For each byte:  mov al, byte  (B0 ib)
                       out 0xE9, al  (E6 E9)
    then               cli           (FA)
                       hlt           (F4)"""
    code = b"".join(bytes([0xB0, byte, 0xE6, DEBUGCON_PORT]) for byte in text)
    return code + bytes([0xFA, 0xF4])


#:     spin: jmp spin   (EB FE: a short jump to itself, forever, with no exit)
SPIN = bytes([0xEB, 0xFE])
#:     mov al, 0x21     (B0 21)
#:     out 0xF4, al     (E6 F4: the debug-exit port, status (0x21 << 1) | 1)
#:     cli; hlt         (FA F4: not reached)
DEBUG_EXIT = bytes([0xB0, OUT_DEBUG_EXIT, 0xE6, DEBUG_EXIT_PORT, 0xFA, 0xF4])


class Recorder:
    """A machine listener: every ExitEvent, with the thread it arrived on."""

    def __init__(self) -> None:
        self.events = []
        self.threads: dict[int, set[int]] = {}

    def __call__(self, event) -> None:
        self.events.append(event)
        self.threads.setdefault(event.vcpu, set()).add(threading.get_ident())

    def of(self, vcpu: int) -> list:
        return [event for event in self.events if event.vcpu == vcpu]

    def debugcon_bytes(self, vcpu: int) -> bytes:
        return b"".join(event.exit.data for event in self.of(vcpu)
                        if isinstance(event.exit, IoOut) and event.exit.port == DEBUGCON_PORT)


def two_vcpu_machine(programs, output=None) -> tuple[Machine, Recorder]:
    machine = Machine(vcpus=2, irqchip=False, output=output)
    for index, (entry, code) in enumerate(zip(ENTRIES, programs, strict=True)):
        machine.memory.write(entry, code)
        machine.set_mode("real", entry, vcpu=index)
    recorder = Recorder()
    machine.listeners.append(recorder)
    return machine, recorder


@pytest.mark.kvm
def test_each_vcpus_exits_arrive_tagged_with_its_index_and_its_bytes_in_order():
    output = []
    machine, recorder = two_vcpu_machine([debugcon_then_halt(m) for m in MESSAGES],
                                         output.append)
    with machine:
        stop = machine.run(timeout=30)
    assert stop.kind is StopKind.HALT and stop.status == 0
    for index, message in enumerate(MESSAGES):
        assert recorder.debugcon_bytes(index) == message
        events = recorder.of(index)
        assert len(events) == len(message) + 1
        assert isinstance(events[-1].exit, Hlt), "each vCPU ends with its own hlt"
        assert [event.rip for event in events[:-1]] == [
            ENTRIES[index] + 4 * (n + 1) for n in range(len(message))], "RIP after each out"
    assert {event.vcpu for event in recorder.events} == {0, 1}
    assert [event.seq for event in recorder.events] == list(range(1, len(recorder.events) + 1))
    # Both streams reached the one debugcon, each in its own order.
    written = b"".join(output)
    assert sorted(written) == sorted(b"".join(MESSAGES))
    for message in MESSAGES:
        rest = iter(written)
        assert all(byte in rest for byte in message), f"{message!r} out of order in {written!r}"


@pytest.mark.kvm
def test_each_vcpu_runs_on_a_thread_of_its_own():
    machine, recorder = two_vcpu_machine([debugcon_then_halt(m) for m in MESSAGES])
    with machine:
        machine.run(timeout=30)
    assert len(recorder.threads[0]) == 1 and len(recorder.threads[1]) == 1
    assert recorder.threads[0] != recorder.threads[1]


@pytest.mark.kvm
def test_a_debug_exit_on_vcpu_1_ends_the_run_and_stops_the_spinning_vcpu_0():
    machine, recorder = two_vcpu_machine([SPIN, DEBUG_EXIT])
    with machine:
        before = set(threading.enumerate())
        started = time.monotonic()
        stop = machine.run(timeout=20)
        elapsed = time.monotonic() - started
        rip0 = machine.vcpus[0].get_regs().rip
    assert stop.kind is StopKind.DEBUG_EXIT
    assert stop.status == (OUT_DEBUG_EXIT << 1) | 1
    assert stop.vcpu == 1
    # vCPU 0 was paused by the stop, not left to the timeout.
    assert elapsed < 10, f"vCPU 0 ran on for {elapsed:.1f} s"
    assert rip0 == ENTRIES[0], "vCPU 0 was inside its loop"
    assert set(threading.enumerate()) <= before, "the vCPU 1 thread has ended"
    assert [event.vcpu for event in recorder.events if event.stop is not None][0] == 1


@pytest.mark.kvm
def test_ctrl_c_on_the_callers_thread_propagates_as_with_one_vcpu():
    machine, _ = two_vcpu_machine([debugcon_then_halt(m) for m in MESSAGES])

    def ctrl_c(event) -> None:
        if event.vcpu == 0:
            raise KeyboardInterrupt

    machine.listeners.append(ctrl_c)
    with machine, pytest.raises(KeyboardInterrupt):
        machine.run(timeout=30)


# -- the HaltGroup, without a VM ---------------------------------------------------------


class FakeRunner:
    """What the HaltGroup reads of a runner: its index, its activity, whether
    the last check found it parked; what it asks: a fresh halt check."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.activity = 0
        self.parked = False
        self.checks_asked = 0

    def check_halt(self) -> None:
        self.checks_asked += 1


def test_one_vcpu_alone_decides_at_once():
    runner = FakeRunner(0)
    assert HaltGroup([runner]).report(runner, True) is True
    assert HaltGroup([runner]).report(runner, False) is False


def test_all_marked_starts_a_confirmation_round_and_only_fresh_marks_end_the_run():
    bsp, ap = FakeRunner(0), FakeRunner(1)
    group = HaltGroup([bsp, ap])
    assert group.report(ap, True) is False            # parked AP; the BSP has not reported
    assert group.report(bsp, True) is False           # all marked, but the AP's mark is old
    assert ap.checks_asked == 1                       # so the AP is asked again
    assert group.report(ap, True) is True             # confirmed after the round: the end


def test_a_vcpu_that_did_something_since_its_mark_keeps_the_run_going():
    bsp, ap = FakeRunner(0), FakeRunner(1)
    group = HaltGroup([bsp, ap])
    group.report(ap, True)
    ap.activity += 1                                  # it exited since: the mark is stale
    assert group.report(bsp, True) is False
    assert ap.checks_asked == 0                       # no round while a mark is stale
    assert group.report(ap, False) is False           # and it is running after all
    assert group.report(bsp, True) is False


def test_a_woken_ap_found_running_in_the_round_cancels_the_end():
    bsp, ap = FakeRunner(0), FakeRunner(1)
    group = HaltGroup([bsp, ap])
    group.report(ap, True)                            # parked ...
    assert group.report(bsp, True) is False           # the BSP sent SIPI, then halted
    assert group.report(ap, False) is False           # the fresh look: the AP runs
    ap.activity += 1
    assert group.report(bsp, True) is False


def test_the_summary_names_parked_vcpus():
    runners = [FakeRunner(i) for i in range(3)]
    runners[1].parked = runners[2].parked = True
    assert HaltGroup(runners).summary() == ("vCPU 0 halted (hlt with interrupts off); "
                                            "vCPU 1, 2 never started (waiting for INIT/SIPI)")
