"""Reverse execution: step back, reverse-continue, and redo, as gdb's "record full" does.

The specification is the machine itself: every state the vCPU and RAM went
through going forwards (general registers, segment and control registers,
FPU, and a digest of all of guest RAM, so every page the guest touched) must
come back, exactly, going backwards -- and again going forwards over the
same history, without a device seeing any access twice.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minikvm.core.stop import StopKind
from minikvm.debug.debugger import Debugger
from minikvm.devices.state import save_devices
from minikvm.guestbuild import assemble, tools_available
from minikvm.machine import Machine

pytestmark = [pytest.mark.kvm,
              pytest.mark.skipif(not tools_available(), reason="needs binutils (as, ld)")]

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "tests" / "build" / "debug"


@pytest.fixture(scope="module")
def reverse64() -> Path:
    return assemble(ROOT / "guests" / "debug" / "reverse64.S", BUILD).elf


@pytest.fixture(scope="module")
def loop64() -> Path:
    return assemble(ROOT / "guests" / "debug" / "loop64.S", BUILD).elf


def machine_state(machine: Machine, debugger: Debugger) -> tuple[object, ...]:
    """What the vCPU, RAM and the devices hold now, straight from KVM, the
    mapping and the device models."""
    vcpu = debugger.vcpu
    ram = hashlib.blake2b(machine.memory.read(0, machine.memory.size)).digest()
    devices = save_devices((machine.pio, machine.mmio), clocks=False)
    return bytes(vcpu.get_regs()), bytes(vcpu.get_sregs()), bytes(vcpu.get_fpu()), ram, devices


def record_to_halt(machine: Machine, debugger: Debugger, most: int,
                   state=machine_state) -> list[tuple[object, ...]]:
    """Record from here, one instruction at a time, to the guest's ``hlt``
    (at most ``most`` steps): the ``state`` before the first step and after each."""
    debugger.record()
    states = [state(machine, debugger)]
    for _ in range(most):
        record = debugger.step_instruction()
        states.append(state(machine, debugger))
        if record.stop is not None:
            break
    assert record.stop is not None and record.stop.kind is StopKind.HALT
    return states


@pytest.fixture
def recorded(reverse64):
    """reverse64 run to its hlt while recording, with the state after each step
    (512 KiB of RAM: room for the guest's pages and the VMM's page tables at
    0x70000, and a quarter of the default's bytes to hash after each step)."""
    output: list[bytes] = []
    with Machine(512 << 10, output=output.append) as machine:
        machine.load_elf(reverse64)
        debugger = Debugger(machine)
        states = record_to_halt(machine, debugger, 500)
        yield machine, debugger, states, output
        debugger.close()


def test_step_back_restores_each_recorded_state_and_redo_replays_them(recorded):
    machine, debugger, states, output = recorded
    steps = len(states) - 1
    assert output == [b"3", b"2", b"1"]
    assert machine.uart.scr == 0x5A
    assert len(debugger.history) == steps and debugger.history.at_end
    for n in range(steps, 0, -1):
        assert machine_state(machine, debugger) == states[n], f"after undoing to step {n}"
        stop = debugger.step_back()
        assert stop.kind is StopKind.STEP_LIMIT
    assert machine_state(machine, debugger) == states[0]
    assert debugger.history.at_start and debugger.rip == debugger.address_of("_start")
    assert machine.uart.scr == 0                # the device was rewound too
    for n in range(1, steps + 1):
        record = debugger.step_instruction()
        assert machine_state(machine, debugger) == states[n], f"after redoing step {n}"
    assert record.stop is not None and record.stop.kind is StopKind.HALT
    assert output == [b"3", b"2", b"1"]      # redone, not executed: printed once
    assert debugger.history.at_end


@pytest.mark.slow
@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(moves=st.lists(st.integers(-40, 40), min_size=1, max_size=8))
def test_any_walk_back_and_forth_shows_the_recorded_state_at_each_position(recorded, moves):
    """The model: a position in the list of recorded states; ``step_back(k)``
    and ``k`` steps forward move it, clamped to the history."""
    machine, debugger, states, output = recorded
    position = debugger.history.position
    for move in moves:
        if move < 0:
            debugger.step_back(-move)
            position = max(position + move, 0)
        else:
            move = min(move, len(states) - 1 - position)   # not past the end: that is live
            if move:
                debugger.step(move)
            position += move
        assert debugger.history.position == position
        assert machine_state(machine, debugger) == states[position]
    assert output == [b"3", b"2", b"1"]


@pytest.mark.slow
def test_going_back_and_running_live_again_gives_the_same_states(recorded):
    """Undo half the history, forget the rest (record again from there) and
    execute live: the guest goes through the same states and prints the rest."""
    machine, debugger, states, output = recorded
    steps = len(states) - 1
    debugger.step_back(steps // 2)
    debugger.record()                      # a fresh history here: the future is gone
    del output[:]
    for n in range(steps - steps // 2 + 1, steps + 1):
        debugger.step_instruction()
        assert machine_state(machine, debugger) == states[n], f"live step {n}"
    assert b"".join(output) == b"321"[-len(output):] and output


def test_step_back_without_history_stops_at_history_start_and_changes_nothing(loop64):
    with Machine() as machine:
        machine.load_elf(loop64)
        debugger = Debugger(machine)
        before = machine_state(machine, debugger)
        stop = debugger.step_back()
        assert stop.kind is StopKind.HISTORY_START and stop.status is None
        assert "nothing is recorded" in stop.message
        debugger.record()
        stop = debugger.step_back(3)
        assert stop.kind is StopKind.HISTORY_START and stop.steps == 0
        assert machine_state(machine, debugger) == before
        debugger.close()


@pytest.fixture
def loop_recording(loop64):
    """loop64 (three passes) at its first instruction, recording; what it prints."""
    output: list[bytes] = []
    with Machine(output=output.append) as machine:
        machine.load_elf(loop64)
        debugger = Debugger(machine)
        debugger.record()
        yield machine, debugger, output
        debugger.close()


@pytest.fixture
def loop_done(loop_recording):
    """loop64 run to its end by ``cont`` while recording."""
    machine, debugger, output = loop_recording
    stop = debugger.cont(timeout=30)
    assert stop.kind is StopKind.HALT and output == [b"."]
    return loop_recording


@pytest.mark.slow
def test_reverse_cont_stops_at_each_earlier_breakpoint_hit_then_at_the_start(loop_done):
    machine, debugger, _ = loop_done
    counter = debugger.address_of("counter")
    bp = debugger.break_at("body_store")
    for passes_before in (2, 1, 0):
        stop = debugger.reverse_cont(timeout=30)
        assert stop.kind is StopKind.BREAKPOINT and stop.breakpoint is bp
        assert debugger.pc == bp.address
        assert machine.memory.read_u64(counter) == passes_before
        assert debugger.registers().rax == passes_before + 1
    stop = debugger.reverse_cont(timeout=30)
    assert stop.kind is StopKind.HISTORY_START
    assert debugger.rip == debugger.address_of("_start")


@pytest.mark.slow
def test_reverse_cont_from_a_breakpoint_does_not_stop_where_it_starts(loop_recording):
    """gdb's reverse-continue from a breakpoint goes back to its *previous*
    hit: the one at the current RIP does not count before a step was undone."""
    machine, debugger, _ = loop_recording
    bp = debugger.break_at("body_store")
    counter = debugger.address_of("counter")
    assert debugger.cont(timeout=30).kind is StopKind.BREAKPOINT        # pass 1
    assert debugger.cont(timeout=30).kind is StopKind.BREAKPOINT        # pass 2
    assert machine.memory.read_u64(counter) == 1
    stop = debugger.reverse_cont(timeout=30)
    assert stop.kind is StopKind.BREAKPOINT and stop.breakpoint is bp and stop.steps == 4
    assert debugger.pc == bp.address and machine.memory.read_u64(counter) == 0
    stop = debugger.reverse_cont(timeout=30)
    assert stop.kind is StopKind.HISTORY_START and stop.steps > 0


def test_reverse_cont_to_a_watchpoint_stops_before_the_write(loop_done):
    machine, debugger, output = loop_done
    counter = debugger.address_of("counter")
    debugger.watch("counter", 8)
    stop = debugger.reverse_cont(timeout=30)
    assert stop.kind is StopKind.WATCHPOINT
    assert (stop.old_value, stop.new_value) == (2, 3)
    assert debugger.pc == debugger.address_of("body_store")     # the writing instruction
    assert machine.memory.read_u64(counter) == 2                # not written yet
    record = debugger.step_instruction()                        # redo the write
    assert machine.memory.read_u64(counter) == 3 and record.old_rip == stop.rip
    # Replaying forward ends where the recording did; the guest ran once.
    stop = debugger.cont(timeout=30)
    assert stop.kind is StopKind.HALT and output == [b"."]


@pytest.mark.slow
def test_cont_in_the_past_stops_at_the_end_of_the_history_then_runs_live(loop_recording):
    machine, debugger, output = loop_recording
    debugger.step(10)
    end = machine_state(machine, debugger)
    debugger.step_back(10)
    stop = debugger.cont(timeout=30)
    assert stop.kind is StopKind.HISTORY_END and stop.steps == 10
    assert machine_state(machine, debugger) == end
    stop = debugger.cont(timeout=30)
    assert stop.kind is StopKind.HALT and output == [b"."]


@pytest.mark.slow
def test_the_cap_drops_the_oldest_entries(loop_recording):
    machine, debugger, _ = loop_recording
    debugger.record(limit=10)                     # a fresh history, capped
    states = [machine_state(machine, debugger)]
    for _ in range(25):
        debugger.step_instruction()
        states.append(machine_state(machine, debugger))
    history = debugger.history
    assert (len(history), history.dropped) == (10, 15)
    stop = debugger.step_back(100)
    assert stop.kind is StopKind.HISTORY_START and stop.steps == 10
    assert "oldest 15 entries" in stop.message
    assert machine_state(machine, debugger) == states[15]


@pytest.mark.slow
def test_changing_a_register_in_the_past_discards_the_future(loop_recording):
    machine, debugger, _ = loop_recording
    debugger.step(10)
    debugger.step_back(4)
    debugger.set_registers(rcx=1)
    history = debugger.history
    assert (len(history), history.position, history.at_end) == (6, 6, True)
    stop = debugger.cont(timeout=30)             # live: one pass left
    assert stop.kind is StopKind.HALT
    debugger.step_back(len(debugger.history))
    assert debugger.rip == debugger.address_of("_start")


@pytest.mark.slow
def test_recording_off_forgets_the_history_and_stops_logging_dirty_pages(loop_recording):
    machine, debugger, _ = loop_recording
    debugger.step(5)
    debugger.record(False)
    assert debugger.history is None and not debugger.recording
    assert machine.memory.take_written() == set()
    assert debugger.step_back().kind is StopKind.HISTORY_START
    stop = debugger.cont(timeout=30)              # runs freely again
    assert stop.kind is StopKind.HALT and stop.steps == 0


@pytest.mark.slow
def test_the_reverse_benchmark_redoes_to_the_end_and_goes_back_to_the_start():
    from benchmarks import reverse

    guest = reverse.build()
    assert reverse.step_cost(guest, 20, recording=True).cpu > 0
    costs = reverse.history_costs(guest, history=300, undo=100)   # asserts as it goes
    assert costs["rip"] == 0x1000 and costs["entry_bytes"] > 0


@pytest.mark.slow
def test_stores_across_page_boundaries_and_to_untouched_pages_step_back_exactly():
    """crosspage64: an unaligned store over two pages, ``rep movsb`` and
    ``rep stosb`` over page boundaries, and stores to a page nobody touched
    before -- every state comes back going backwards and forwards."""
    elf = assemble(ROOT / "guests" / "debug" / "crosspage64.S", BUILD).elf
    with Machine(512 << 10, output=lambda data: None) as machine:
        machine.load_elf(elf)
        debugger = Debugger(machine)
        states = record_to_halt(machine, debugger, 100)
        edge = debugger.address_of("edge")
        assert machine.memory.read_u64(edge) == 0x1122334455667788
        assert machine.memory.read(debugger.address_of("copy_to"), 12) == b"crosspage64!"
        assert machine.memory.read_u64(0x7F000) == 0x5A5A
        for n in range(len(states) - 1, 0, -1):
            assert machine_state(machine, debugger) == states[n], f"back at step {n}"
            debugger.step_back()
        assert machine_state(machine, debugger) == states[0]
        assert machine.memory.read_u64(edge) == 0 and machine.memory.read_u64(0x7F000) == 0
        for n in range(1, len(states)):
            debugger.step_instruction()
            assert machine_state(machine, debugger) == states[n], f"redo of step {n}"
        debugger.close()


@pytest.mark.slow
def test_a_guest_that_bloats_device_state_cannot_push_the_history_over_its_cap():
    """devhog64 grows pc-testdev's saved state to 64 KiB (128 KiB of hex) and
    makes an exit at every other step: what the history keeps -- each entry's
    device states measured as the JSON a snapshot would write -- stays
    within the byte cap."""
    import json

    elf = assemble(ROOT / "guests" / "debug" / "devhog64.S", BUILD).elf
    cap = 2 << 20
    with Machine(512 << 10, output=lambda data: None) as machine:
        machine.load_elf(elf)
        debugger = Debugger(machine)
        debugger.record(max_bytes=cap)
        debugger.step(200)
        history = debugger.history
        kept = history._entries[history._head:]
        held = sum(len(json.dumps(state)) for entry in kept if entry.devices is not None
                   for state in entry.devices)
        assert history.dropped > 0 and history.bytes <= cap
        assert held <= cap, f"{len(kept)} entries hold {held >> 10} KiB"
        debugger.close()
