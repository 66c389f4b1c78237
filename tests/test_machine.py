"""Machine: wiring, typed events that explain themselves, stops and timeouts."""

from __future__ import annotations

import threading
import time

import pytest

from minikvm.bus import Bus
from minikvm.devices.debugcon import DebugCon
from minikvm.kvm.exits import Hlt, IoOut
from minikvm.machine import Machine, StopKind, dispatch_exit

pytestmark = pytest.mark.kvm


def test_hello_guest_prints_its_greeting(guests):
    output = []
    with Machine(output=output.append) as machine:
        machine.load_flat(guests / "hello.bin", 0x1000)
        stop = machine.run(timeout=30)
    assert b"".join(output) == b"Hello from a KVM guest, driven entirely from Python!\n"
    assert stop.kind is StopKind.HALT and stop.status == 0


def test_step_returns_an_explained_event_per_exit(guests):
    with Machine() as machine:
        machine.load_flat(guests / "hello.bin", 0x1000)
        event = machine.step()
        assert event.seq == 1
        assert event.reason == "IO_OUT"
        assert event.device == "debugcon" and event.register == "data"
        assert event.value == ord("H")
        assert "'H'" in event.description
        assert event.stop is None


def test_exitcode_guest_stops_with_shifted_status(guests):
    with Machine() as machine:
        machine.load_flat(guests / "exitcode.bin", 0x1000)
        stop = machine.run(timeout=30)
    assert stop.kind is StopKind.DEBUG_EXIT
    assert stop.status == (0x2A << 1) | 1


def test_result_guest_leaves_known_registers_and_memory(guests):
    with Machine() as machine:
        machine.load_flat(guests / "result.bin", 0x1000)
        stop = machine.run(timeout=30)
        regs = machine.vcpu.get_regs()
        assert stop.kind is StopKind.HALT
        assert regs.rax & 0xFFFF == 0x5555
        assert regs.rbx & 0xFFFF == 42
        assert regs.rcx & 0xFFFF == 3628800 % 65536
        assert machine.memory.read_u16(0x5000) == 0xBEEF
        assert machine.memory.read_u16(0x5002) == 5050


def test_runaway_guest_is_stopped_at_the_timeout(guests):
    with Machine() as machine:
        machine.load_flat(guests / "spin.bin", 0x1000)
        stop = machine.run(timeout=0.5)
    assert stop.kind is StopKind.TIMEOUT and stop.status == 124
    assert stop.rip == 0x1001  # inside the `jmp $` loop


@pytest.mark.slow
def test_pause_from_another_thread_returns_and_guest_can_continue(guests):
    with Machine() as machine:
        machine.load_flat(guests / "spin.bin", 0x1000)
        threading.Timer(0.2, machine.pause).start()
        stop = machine.run(timeout=20)
        assert stop.kind is StopKind.PAUSED and stop.status is None
        assert machine.run(timeout=0.3).kind is StopKind.TIMEOUT


def test_unclaimed_port_writes_are_recorded(guests):
    with Machine() as machine:
        machine.load_flat(guests / "portloop.bin", 0x1000)
        machine.memory.write_u32(0x1004, 5)
        stop = machine.run(timeout=30)
        assert stop.kind is StopKind.HALT
        assert machine.pio.unclaimed_count == 5
        assert machine.pio.unclaimed[-1].address == 0x80


def test_listeners_see_every_event(guests):
    events = []
    with Machine() as machine:
        machine.listeners.append(events.append)
        machine.load_flat(guests / "hello.bin", 0x1000)
        machine.run(timeout=30)
    text = "".join(chr(e.value) for e in events if e.device == "debugcon")
    assert text.startswith("Hello from a KVM guest")
    assert events[-1].reason == "HLT" and events[-1].stop is not None
    assert all(e.rip is not None for e in events)


def test_triple_fault_is_reported_with_status_3():
    # Long mode: `lidt [0x2000]` loads an IDT with limit 0, then `ud2` raises
    # #UD, which has no gate -> #GP, no gate either -> #DF -> triple fault.
    with Machine() as machine:
        machine.memory.write(0x2000, b"\x00" * 10)
        machine.load_flat(bytes.fromhex("0f011c2500200000") + b"\x0f\x0b\xf4", 0x1000,
                          mode="long")
        stop = machine.run(timeout=10)
    assert stop.kind is StopKind.SHUTDOWN and stop.status == 3
    assert "triple fault" in stop.message


def test_dispatch_exit_completes_reads_without_a_vm():
    pio, mmio = Bus("pio"), Bus("mmio")
    pio.register(0xE9, 1, DebugCon())
    access, count = dispatch_exit(IoOut(0xE9, 1, 2, b"ok"), pio, mmio, explain=True)
    assert count == 2 and access.value == ord("o")
    assert dispatch_exit(Hlt(False), pio, mmio) == (None, 0)


def test_i8042_reset_command_ends_the_run_with_a_reset():
    # mov al, 0xfe ; out 0x64, al ; hlt
    with Machine() as machine:
        machine.load_flat(b"\xb0\xfe\xe6\x64\xf4", 0x1000)
        event = machine.step()
        assert event.device == "i8042" and event.register == "command"
        assert "asks for a reset" in event.description
        assert event.stop is not None and event.stop.kind is StopKind.RESET
        assert event.stop.status == 0


def test_i8042_status_says_ready_so_drivers_do_not_spin():
    # in al, 0x64 ; hlt
    with Machine() as machine:
        machine.load_flat(b"\xe4\x64\xf4", 0x1000)
        event = machine.step()
        assert event.register == "status" and event.value == 0


def _serial_hello_events(guests, listener_words: bool = True) -> list[tuple]:
    """Every event of serial_hello (UART writes and LSR reads), as plain fields."""
    events = []

    def listen(event) -> None:
        events.append(event)

    if not listener_words:
        listen.words = False  # type: ignore[attr-defined]
    with Machine(irqchip=False) as machine:
        machine.listeners.append(listen)
        machine.load_flat(guests / "serial_hello.bin", 0x1000)
        assert machine.run(timeout=30).kind is StopKind.HALT
    return [(e.seq, e.vcpu, e.reason, e.exit, e.device, e.register, e.value, e.accesses,
             e.description, e.rip, e.stop is None) for e in events]


def test_the_fast_path_gives_listeners_the_events_the_general_path_gives(guests, monkeypatch):
    """A single in/out with listeners is built from the run page (runloop.pio_event);
    with that path switched off every exit goes through handle_exit. The listener
    must not see the difference, words (of a stateful UART) and RIP included."""
    from minikvm import runloop

    fast = _serial_hello_events(guests)
    real_read_io = runloop.read_io
    monkeypatch.setattr(runloop, "read_io", lambda page: real_read_io(page)[:3] + (0, 0))
    general = _serial_hello_events(guests)
    assert any(reason == "IO_IN" for _, _, reason, *_ in fast)
    assert [row[:8] + row[9:] for row in fast] == [row[:8] + row[9:] for row in general]
    assert [row[8] for row in fast] == [row[8] for row in general]   # the words


def test_every_listened_exit_carries_the_time_of_its_own_kvm_run(guests):
    """The run loop reads no clock while nobody listens; with a listener each
    event's run (time - guest_time .. time) lies inside the run, after the
    previous event's."""
    events = []
    with Machine(irqchip=False) as machine:
        machine.load_flat(guests / "serial_hello.bin", 0x1000)
        assert machine.run(max_exits=3).kind is StopKind.EXIT_LIMIT   # unlistened: untimed
        machine.listeners.append(events.append)
        start = time.monotonic()
        assert machine.run(timeout=30).kind is StopKind.HALT
        end = time.monotonic()
    assert len(events) > 10
    previous = start
    for event in events:
        assert previous <= event.time - event.guest_time <= event.time <= end
        previous = event.time


def test_a_listener_that_reads_words_gets_them_when_it_joins_during_a_run(guests):
    """Whether to make words is worked out again when the listeners change."""
    worded = []

    def quiet(event) -> None:
        if event.seq == 3:
            machine.listeners.append(worded.append)

    quiet.words = False  # type: ignore[attr-defined]
    with Machine(irqchip=False) as machine:
        machine.listeners.append(quiet)
        machine.load_flat(guests / "serial_hello.bin", 0x1000)
        assert machine.run(timeout=30).kind is StopKind.HALT
    # It hears the exit it joined at (made without words) and every one after, with them.
    assert worded[0].seq == 3 and not worded[0].description
    assert len(worded) > 10 and all(event.description for event in worded[1:])


def test_a_listener_that_reads_no_words_gets_the_same_events_without_them(guests):
    with_words = _serial_hello_events(guests)
    without = _serial_hello_events(guests, listener_words=False)
    assert all(row[8] for row in with_words)
    assert not any(row[8] for row in without[:-1])   # the last, the HLT, is not an I/O exit
    assert [row[:5] + row[6:8] + row[9:] for row in without] == \
        [row[:5] + row[6:8] + row[9:] for row in with_words]
