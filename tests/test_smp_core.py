"""Two vCPUs of one VM, each on its own thread, through the runner.

No SMP start-up here (that is the next issue): without the in-kernel
irqchip every vCPU runs from the start, so each is put in real mode at an
entry of its own. The code is a few hand-assembled instructions written
straight into guest RAM.
"""

from __future__ import annotations

import threading
import time

import pytest

from minikvm.core.board import DEBUG_EXIT_PORT, DEBUGCON_PORT
from minikvm.kvm.exits import Hlt, IoOut
from minikvm.machine import Machine, StopKind

pytestmark = pytest.mark.kvm

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


def test_each_vcpu_runs_on_a_thread_of_its_own():
    machine, recorder = two_vcpu_machine([debugcon_then_halt(m) for m in MESSAGES])
    with machine:
        machine.run(timeout=30)
    assert len(recorder.threads[0]) == 1 and len(recorder.threads[1]) == 1
    assert recorder.threads[0] != recorder.threads[1]


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


def test_ctrl_c_on_the_callers_thread_propagates_as_with_one_vcpu():
    machine, _ = two_vcpu_machine([debugcon_then_halt(m) for m in MESSAGES])

    def ctrl_c(event) -> None:
        if event.vcpu == 0:
            raise KeyboardInterrupt

    machine.listeners.append(ctrl_c)
    with machine, pytest.raises(KeyboardInterrupt):
        machine.run(timeout=30)
