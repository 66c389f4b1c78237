"""Breakpoints and watchpoints: each stops at the right RIP, by whichever
mechanism this KVM offers, and every fallback works.

The probe decides what runs directly here; paths this KVM cannot run (an
``int3`` that traps, debug-register data watchpoints) are skipped with the
probe's reason, and their fallbacks are forced with ``DebugSupport.without``
so they are exercised on every host.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from minikvm.debug.breakpoints import INT3
from minikvm.debug.debugger import Debugger, DebuggerError, ExitFilter
from minikvm.debug.probe import probe_debug_support
from minikvm.guestbuild import assemble, tools_available
from minikvm.machine import Machine, StopKind

pytestmark = [pytest.mark.kvm,
              pytest.mark.skipif(not tools_available(), reason="needs binutils (as, ld)")]

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "tests" / "build" / "debug"
PASSES = 3   # loop64 runs its body this many times


@pytest.fixture(scope="module")
def loop64() -> Path:
    return assemble(ROOT / "guests" / "debug" / "loop64.S", BUILD).elf


@pytest.fixture(scope="module")
def selfread64() -> Path:
    return assemble(ROOT / "guests" / "debug" / "selfread64.S", BUILD).elf


@pytest.fixture(scope="module")
def support():
    return probe_debug_support()


def stepping_only(support):
    return support.without("hw_breakpoints", "sw_breakpoints", "hw_write_watch", "hw_rw_watch")


@pytest.fixture
def loop(loop64):
    def make(support=None):
        machine = Machine()
        machine.load_elf(loop64)
        return machine, Debugger(machine, support=support)
    made = []

    def factory(support=None):
        pair = make(support)
        made.append(pair)
        return pair
    yield factory
    for machine, debugger in made:
        debugger.close()
        machine.close()


def run_to_end(debugger, limit=20):
    stops = []
    for _ in range(limit):
        stops.append(debugger.cont(timeout=20))
        if stops[-1].kind is not StopKind.BREAKPOINT and \
                stops[-1].kind is not StopKind.WATCHPOINT:
            break
    return stops


def assert_loop_breakpoint_hits(debugger, bp, symbol="body_store"):
    """A breakpoint in the loop body: hit once per pass, at its address,
    with the loop counter showing which pass; then the guest halts."""
    address = debugger.address_of(symbol)
    stops = run_to_end(debugger)
    hits, last = stops[:-1], stops[-1]
    assert [s.kind for s in hits] == [StopKind.BREAKPOINT] * PASSES
    assert all(s.rip == address and s.breakpoint is bp for s in hits)
    assert last.kind is StopKind.HALT
    assert bp.hits == PASSES


def test_hardware_breakpoint_in_a_loop_is_hit_every_pass(loop, support):
    machine, debugger = loop()
    bp = debugger.break_at("body_store", "hardware")
    if support.hw_breakpoints:
        assert bp.mechanism == "hw DR0" and bp.note == ""
    rax_at_hits = []
    address = debugger.address_of("body_store")
    for _ in range(PASSES):
        stop = debugger.cont(timeout=20)
        assert stop.kind is StopKind.BREAKPOINT and stop.rip == address
        assert stop.breakpoint is bp and stop.status is None and not stop.ended
        assert stop.vcpu == 0 and "body_store" in stop.message
        rax_at_hits.append(debugger.registers().rax)
    assert rax_at_hits == [1, 2, 3]   # stopped before the store of each pass
    assert debugger.cont(timeout=20).kind is StopKind.HALT


def test_software_breakpoint_in_a_loop_is_hit_every_pass(loop, support):
    _, debugger = loop()
    bp = debugger.break_at("body_store")
    if support.sw_breakpoints:
        assert bp.mechanism == "int3"
    elif support.hw_breakpoints:
        assert bp.mechanism.startswith("hw DR") and "int3" in bp.note
    assert_loop_breakpoint_hits(debugger, bp)


def test_int3_breakpoint_traps_where_kvm_intercepts_int3(loop, support):
    if not support.sw_breakpoints:
        pytest.skip(f"int3 does not exit to the VMM here: {support.reasons['sw_breakpoints']}")
    _, debugger = loop()
    bp = debugger.break_at("body_store")
    assert bp.mechanism == "int3"
    assert_loop_breakpoint_hits(debugger, bp)


def test_int3_is_in_guest_memory_while_running_and_gone_when_stopped(selfread64, support):
    # The guest reads the byte under the breakpoint and writes it to port 0x80.
    forced = dataclasses.replace(support, sw_breakpoints=True)
    with Machine() as machine:
        machine.load_elf(selfread64)
        debugger = Debugger(machine, support=forced)
        target = debugger.address_of("target")
        bp = debugger.break_at("target")
        assert bp.mechanism == "int3"
        stop = debugger.cont(until=ExitFilter(port=0x80), timeout=20)
        assert stop.kind is StopKind.EXIT_MATCHED
        assert stop.event.value == INT3            # what the guest saw
        assert bp.original == 0x90                 # the nop it replaced
        assert debugger.read_memory(target, 1) == b"\x90"   # put back at the stop
        assert debugger.cont(timeout=20).kind is StopKind.HALT
        assert machine.memory.read_u8(target) == 0x90


def test_breakpoint_by_single_stepping_when_no_debug_register_works(loop, support):
    _, debugger = loop(stepping_only(support))
    bp = debugger.break_at("body_store", "hardware")
    assert bp.mechanism == "single-step compare" and "hardware breakpoints" in bp.note
    assert_loop_breakpoint_hits(debugger, bp)


def test_fifth_hardware_breakpoint_falls_back_to_stepping(loop, support):
    if not support.hw_breakpoints:
        pytest.skip(support.reasons["hw_breakpoints"])
    _, debugger = loop()
    for address in (0x9000, 0x9001, 0x9002, 0x9003):
        assert debugger.break_at(address, "hardware").mechanism.startswith("hw DR")
    bp = debugger.break_at("loop", "hardware")
    assert bp.mechanism == "single-step compare" and "in use" in bp.note
    assert_loop_breakpoint_hits(debugger, bp, "loop")


def test_stepping_breakpoint_and_hardware_breakpoint_together(loop):
    _, debugger = loop()
    first = debugger.break_at("loop", "hardware")
    for address in (0x9000, 0x9001, 0x9002):   # never reached; they use up DR1-DR3
        debugger.break_at(address, "hardware")
    second = debugger.break_at("body_store", "hardware")
    assert second.mechanism == "single-step compare"
    stops = run_to_end(debugger)
    assert [s.breakpoint for s in stops[:-1]] == [first, second] * PASSES
    assert stops[-1].kind is StopKind.HALT


def test_deleted_and_disabled_breakpoints_do_not_stop(loop):
    _, debugger = loop()
    first = debugger.break_at("body_store", "hardware")
    second = debugger.break_at("loop", "hardware")
    debugger.delete(first.number)
    debugger.enable(second.number, False)
    assert debugger.cont(timeout=20).kind is StopKind.HALT
    with pytest.raises(DebuggerError):
        debugger.delete(first.number)


def test_two_breakpoints_at_one_address_are_refused(loop):
    _, debugger = loop()
    debugger.break_at("loop")
    with pytest.raises(DebuggerError):
        debugger.break_at("loop", "hardware")
    with pytest.raises(DebuggerError):
        debugger.break_at("no_such_symbol")


def assert_counter_watch(debugger, wp):
    """A write watchpoint on ``counter``: one stop per store, right after it,
    reporting old -> new."""
    after_store = debugger.address_of("body_store") + 7   # mov [rip+x], rax is 7 bytes
    stops = run_to_end(debugger)
    hits, last = stops[:-1], stops[-1]
    assert [(s.old_value, s.new_value) for s in hits] == [(0, 1), (1, 2), (2, 3)]
    assert all(s.kind is StopKind.WATCHPOINT and s.watchpoint is wp for s in hits)
    assert all(s.rip == after_store for s in hits)
    assert last.kind is StopKind.HALT and wp.hits == PASSES


def test_write_watchpoint_stops_after_each_store(loop, support):
    _, debugger = loop()
    wp = debugger.watch("counter", 8)
    if support.hw_write_watch:
        assert wp.mechanism.startswith("hw DR")
    else:
        assert wp.mechanism == "single-step compare" and "do not fire" in wp.note
    assert_counter_watch(debugger, wp)


def test_write_watchpoint_in_a_debug_register_where_they_fire(loop, support):
    if not support.hw_write_watch:
        pytest.skip(f"debug-register write watchpoints do not fire here: "
                    f"{support.reasons['hw_write_watch']}")
    _, debugger = loop()
    wp = debugger.watch("counter", 8)
    assert wp.mechanism == "hw DR0"
    assert_counter_watch(debugger, wp)


def test_write_watchpoint_by_comparing_on_every_host(loop, support):
    _, debugger = loop(stepping_only(support))
    wp = debugger.watch("counter", 8)
    assert wp.mechanism == "single-step compare"
    assert_counter_watch(debugger, wp)


@pytest.mark.parametrize("size, offset", [(1, 0), (2, 0), (4, 0), (8, 0), (1, 1), (4, 4)])
def test_watchpoint_sizes_cover_exactly_their_bytes(loop, support, size, offset):
    # Only the low bytes of counter change (1, 2, 3); a watch on byte 1 or on
    # the upper half never fires.
    _, debugger = loop(stepping_only(support))
    wp = debugger.watch(debugger.address_of("counter") + offset, size)
    stops = run_to_end(debugger)
    fires = offset == 0
    assert wp.hits == (PASSES if fires else 0)
    assert stops[-1].kind is StopKind.HALT


def test_unaligned_watchpoint_cannot_use_a_debug_register(loop, support):
    _, debugger = loop()
    wp = debugger.watch(debugger.address_of("counter") + 2, 4)
    assert wp.slot is None and wp.mechanism == "single-step compare"
    if support.hw_write_watch:
        assert "aligned" in wp.note
    with pytest.raises(DebuggerError):
        debugger.watch("counter", 3)


def test_read_write_watchpoint_catches_a_read(loop, support):
    # The guest reads `count` once, at `begin`; nothing writes it.
    _, debugger = loop()
    wp = debugger.watch("count", 8, "rw")
    if not support.hw_rw_watch:
        assert wp.mechanism == "single-step + operand decode"
    stop = debugger.cont(timeout=20)
    assert stop.kind is StopKind.WATCHPOINT and stop.watchpoint is wp
    assert stop.old_value == stop.new_value == PASSES
    assert stop.rip == debugger.address_of("begin") + 7   # after mov rcx, [rip+x]
    assert debugger.cont(timeout=20).kind is StopKind.HALT


def test_read_write_watchpoint_by_operand_decode_also_sees_writes(loop, support):
    _, debugger = loop(stepping_only(support))
    wp = debugger.watch("counter", 8, "rw")
    assert wp.mechanism == "single-step + operand decode"
    assert_counter_watch(debugger, wp)


def test_read_write_watchpoint_in_a_debug_register_where_they_fire(loop, support):
    if not support.hw_rw_watch:
        pytest.skip(f"debug-register read/write watchpoints do not fire here: "
                    f"{support.reasons['hw_rw_watch']}")
    _, debugger = loop()
    wp = debugger.watch("count", 8, "rw")
    assert wp.mechanism == "hw DR0"
    stop = debugger.cont(timeout=20)
    assert stop.watchpoint is wp and stop.rip == debugger.address_of("begin") + 7


def test_watchpoint_hit_by_a_single_step_is_reported_on_the_record(loop, support):
    _, debugger = loop(stepping_only(support))
    wp = debugger.watch("counter", 8)
    records = debugger.step(20)
    assert records[-1].hit is not None and records[-1].hit.watchpoint is wp
    assert records[-1].old_rip == debugger.address_of("body_store")
