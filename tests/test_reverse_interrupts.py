"""Reverse execution of guests that sleep in ``hlt`` until an interrupt wakes them.

The specification: recording a guest that waits in ``sti; hlt`` for its
device (COM1 input, a virtio completion) runs it to its end as a free run
would; the wake-up -- the interrupt delivered, its frame pushed, the
handler's first instruction -- is one recorded step; and every recorded
state (registers, RAM, devices, and whether the vCPU sleeps in ``hlt``)
comes back going backwards and again going forwards. A wait that nothing
can end stops at the timeout or a pause, or (a lone ``stepi``) pauses after
``LONE_WAIT_TIMEOUT`` -- never a hang.
"""

from __future__ import annotations

import threading
import time

import pytest

from minikvm.core.stop import StopKind
from minikvm.debug.debugger import Debugger
from minikvm.debug.stepper import HLT_OPCODE, LONE_WAIT_TIMEOUT
from minikvm.devices.virtio.blk import VirtioBlk
from minikvm.hostio import BufferSink
from minikvm.machine import Machine
from minikvm.x86.layout import RESULT_ADDR
from tests.test_reverse import machine_state, record_to_halt

pytestmark = pytest.mark.kvm

SECTOR = 512


def full_state(machine: Machine, debugger: Debugger) -> tuple[object, ...]:
    """:func:`machine_state` and the vCPU's MP state (asleep in hlt or not)."""
    return machine_state(machine, debugger) + (debugger.vcpu.get_mp_state(),)


def record_states(machine: Machine, debugger: Debugger, most: int) -> list[tuple[object, ...]]:
    """Record one instruction at a time to the guest's end (at most ``most``
    steps): the full state before the first step and after each."""
    states = record_to_halt(machine, debugger, most, full_state)
    assert len(debugger.history) == len(states) - 1
    return states


def walk_back_and_forth(machine: Machine, debugger: Debugger,
                        states: list[tuple[object, ...]]) -> None:
    for n in range(len(states) - 1, 0, -1):
        assert full_state(machine, debugger) == states[n], f"back at step {n}"
        assert debugger.step_back().kind is StopKind.STEP_LIMIT
    assert full_state(machine, debugger) == states[0]
    for n in range(1, len(states)):
        debugger.step_instruction()
        assert full_state(machine, debugger) == states[n], f"redo of step {n}"


def test_a_recorded_echo_is_woken_by_com1_input_and_steps_back_through_the_wake_up(guests):
    sink = BufferSink()
    with Machine(64 << 10, irqchip=True, output=sink) as machine:   # code, IVT and stack
        machine.load_flat(guests / "serial_echo.bin", 0x1000)
        debugger = Debugger(machine)
        machine.send_serial_input(b"hi\r\x04")      # queued; recording starts next
        states = record_states(machine, debugger, 400)
        assert sink.getvalue() == b"hi\r\n\x04"
        # The wake-up is one entry: from just after the hlt (asleep) into the
        # handler, with the real-mode frame (FLAGS, CS, IP) and the handler's
        # first push on the stack.
        debugger.step_back(len(debugger.history))
        wakes = []
        for _ in range(len(states) - 1):
            before = debugger.registers()
            asleep = debugger.stepper.asleep
            record = debugger.step_instruction()
            if asleep:
                wakes.append((before, record.after))
        assert len(wakes) == 1
        before, after = wakes[0]
        assert machine.memory.read_u8(before.rip - 1) == HLT_OPCODE
        assert before.rsp - after.rsp == 6 + 2 and not after.rflags & (1 << 9)
        walk_back_and_forth(machine, debugger, states)
        assert sink.getvalue() == b"hi\r\n\x04"     # redone, not executed again
        debugger.close()


def test_a_pause_asked_before_a_step_ends_it_with_nothing_executed(guests):
    with Machine(512 << 10, irqchip=True, output=lambda data: None) as machine:
        machine.load_flat(guests / "serial_echo.bin", 0x1000)
        debugger = Debugger(machine)
        debugger.record()
        debugger.step(3)
        before = full_state(machine, debugger)
        debugger.runner.pause()                     # as from another thread
        record = debugger.step_instruction()
        assert record.stop is not None and record.stop.kind is StopKind.PAUSED
        assert full_state(machine, debugger) == before and len(debugger.history) == 3
        debugger.close()


@pytest.mark.slow
def test_a_recorded_virtio_blk_guest_runs_to_its_end_and_every_state_comes_back(guests, tmp_path):
    """Three requests, each waited for in ``sti; hlt`` and completed by
    interrupt: recorded one instruction at a time, then walked back to
    the first and forward to the last."""
    image = tmp_path / "disk.img"
    image.write_bytes(b"hello from the host disk\n".ljust(SECTOR, b"\0") + bytes(7 * SECTOR))
    output: list[bytes] = []
    with Machine(irqchip=True, output=output.append) as machine:
        machine.add_virtio(VirtioBlk(image))
        machine.load_guest(guests / "virtio_blk.elf")
        debugger = Debugger(machine)
        states = record_states(machine, debugger, 5000)
        marker, capacity, read, write, flush, interrupts = (
            machine.memory.read_u64(RESULT_ADDR + 8 * i) for i in range(6))
        assert (capacity, read, write, flush) == (8, 0, 0, 0) and interrupts >= 3
        assert b"sector 0 says: hello from the host disk" in b"".join(output)
        walk_back_and_forth(machine, debugger, states)
        debugger.close()


@pytest.mark.slow
def test_recording_virtio_blk_with_cont_reaches_the_end_and_reverse_cont_the_start(guests,
                                                                                   tmp_path):
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(8 * SECTOR))
    with Machine(irqchip=True, output=lambda data: None) as machine:
        machine.add_virtio(VirtioBlk(image))
        machine.load_guest(guests / "virtio_blk.elf")
        debugger = Debugger(machine)
        debugger.record()
        start = full_state(machine, debugger)
        stop = debugger.cont(timeout=60)
        assert stop.kind is StopKind.HALT, stop
        end = full_state(machine, debugger)
        assert debugger.reverse_cont(timeout=60).kind is StopKind.HISTORY_START
        assert full_state(machine, debugger) == start
        stop = debugger.cont(timeout=60)            # redone: the hlt ends it again
        assert stop.kind is StopKind.HALT and debugger.history.at_end
        assert full_state(machine, debugger) == end
        debugger.close()


@pytest.mark.slow
def test_a_hlt_nothing_can_wake_ends_at_the_timeout_a_pause_or_the_lone_wait(guests):
    """serial_echo with no input: ``sti; hlt`` and no interrupt will come."""
    with Machine(512 << 10, irqchip=True, output=lambda data: None) as machine:
        machine.load_flat(guests / "serial_echo.bin", 0x1000)
        debugger = Debugger(machine)
        debugger.record()
        started = time.monotonic()
        stop = debugger.cont(timeout=1)
        assert stop.kind is StopKind.TIMEOUT and time.monotonic() - started < 3
        assert debugger.stepper.asleep
        entries = len(debugger.history)
        started = time.monotonic()
        record = debugger.step_instruction()        # a lone stepi: its own wait
        waited = time.monotonic() - started
        assert record.stop is not None and record.stop.kind is StopKind.PAUSED
        assert "still sleeps in hlt" in record.stop.message
        assert LONE_WAIT_TIMEOUT <= waited < LONE_WAIT_TIMEOUT + 2
        threading.Timer(0.3, debugger.pause).start()
        assert debugger.cont().kind is StopKind.PAUSED
        assert len(debugger.history) == entries     # the waits made no entries
        machine.send_serial_input(b"\x04")          # now something wakes it
        assert debugger.cont(timeout=30).kind is StopKind.HALT
        debugger.close()
