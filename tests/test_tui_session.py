"""The TUI's session: actions on the vCPU thread, pausing, breakpoints, and
snapshots that never touch the vCPU while the guest runs."""

from __future__ import annotations

import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minikvm.hostio import BufferSink
from minikvm.machine import Machine
from minikvm.tui.session import ExitMonitor, Session
from minikvm.tui.views import MemorySpec, parse_address, parse_memory_spec
from minikvm.tui.state import RunStatus, SideView


# -- parsing what a person types (no KVM) ---------------------------------------------

def test_addresses_in_hex_decimal_or_with_underscores():
    assert parse_address("0x1011") == 0x1011
    assert parse_address("4096") == 4096
    assert parse_address("0x10_00") == 0x1000


def test_an_address_that_is_no_number_must_be_a_symbol():
    with pytest.raises(ValueError, match="not a number"):
        parse_address("main")
    assert parse_address("main", {"main": 0x100000}.__getitem__) == 0x100000


def test_memory_specs_follow_registers_or_name_an_address_space():
    assert parse_memory_spec("rsp") == MemorySpec(follow="rsp")
    assert parse_memory_spec("RIP") == MemorySpec(follow="rip")
    assert parse_memory_spec("p:0x2000") == MemorySpec(0x2000, physical=True)
    assert parse_memory_spec("phys 0x2000") == MemorySpec(0x2000, physical=True)
    assert parse_memory_spec("0x7f0000000000") == MemorySpec(0x7F0000000000, physical=False)


def test_the_exit_monitor_keeps_a_bounded_log():
    from minikvm.kvm.exits import Hlt
    from minikvm.machine import ExitEvent

    monitor = ExitMonitor(capacity=4)
    for seq in range(10):
        monitor(ExitEvent(seq, 0.0, 0.0, Hlt(False)))
    assert monitor.count == 10 and len(monitor.events) == 4
    assert [number for number, _ in monitor.newest(2)] == [9, 10]
    assert [event.seq for _, event in monitor.newest(2)] == [8, 9]
    assert monitor.by_reason == {"HLT": 10}


def test_kicks_are_counted_apart_and_the_log_numbers_only_guest_exits():
    # The machine's sequence numbers count every KVM_RUN return, kicks too;
    # the TUI's numbers count guest exits, so the last one is the header's count.
    from minikvm.kvm.exits import Hlt, Interrupted
    from minikvm.machine import ExitEvent

    monitor = ExitMonitor()
    for seq, exit in enumerate([Hlt(True), Interrupted(), Interrupted(), Hlt(True)], 1):
        monitor(ExitEvent(seq, 0.0, 0.0, exit))
    assert monitor.count == 2 and monitor.kicks == 2
    numbers = [(number, event.seq) for number, event in monitor.newest(10)]
    assert numbers == [(1, 1), (2, 4)]
    assert monitor.number_of(monitor.events[-1][1]) == 2


def test_the_tui_state_after_a_stop_comes_from_the_core_stop():
    # RunStatus is the TUI's activity; whether the guest ended is the Stop's to say.
    from minikvm.core.stop import Stop, StopKind

    def after(kind, status=None):
        return RunStatus.after(Stop(kind, status, "words"))

    assert after(StopKind.HALT, 0) is RunStatus.FINISHED
    assert after(StopKind.DEBUG_EXIT, 85) is RunStatus.FINISHED
    assert after(StopKind.RESET, 0) is RunStatus.FINISHED
    assert after(StopKind.SHUTDOWN, 3) is RunStatus.CRASHED
    assert after(StopKind.INTERNAL_ERROR, 3) is RunStatus.CRASHED
    assert after(StopKind.BREAKPOINT) is RunStatus.PAUSED
    assert after(StopKind.EXIT_MATCHED) is RunStatus.PAUSED
    # A timeout ends `minikvm run` (status 124), but in the TUI only the one
    # continue it bounded: the guest can go on.
    assert Stop(StopKind.TIMEOUT, 124, "timeout").ended
    assert after(StopKind.TIMEOUT, 124) is RunStatus.PAUSED


# -- with a guest -----------------------------------------------------------------------

@pytest.fixture
def session_for(guests):
    made = []

    def make(name: str, irqchip: bool = True) -> Session:
        sink = BufferSink()
        machine = Machine(output=sink, irqchip=irqchip)
        machine.load_guest(guests / name)
        session = Session(machine, guest=name, console=sink)
        made.append((session, machine))
        return session

    yield make
    for session, machine in made:
        session.close()
        if not session.busy:
            machine.close()


@pytest.mark.kvm
def test_a_step_runs_on_the_vcpu_thread_and_reports_changed_registers(session_for):
    session = session_for("hello.bin")
    seen = []
    original = session.debugger.step_instruction

    def spy():
        seen.append(threading.current_thread().name)
        return original()

    session.debugger.step_instruction = spy
    session.run_action("step")
    assert seen == ["minikvm-vcpu0"]          # the runner's Job
    state = session.snapshot()
    assert state.status is RunStatus.PAUSED
    assert state.registers.values.rip == 0x1001
    assert "rip" in state.registers.changed
    assert state.message == "stepped 'cld' at 0x1000"


@pytest.mark.kvm
def test_next_stops_after_the_first_exit_with_its_explanation(session_for):
    session = session_for("hello.bin")
    session.run_action("next", timeout=10)
    state = session.snapshot()
    assert [row.description for row in state.exits] == ["debug console: the guest prints 'H'"]
    assert state.exits[0].reason == "IO_OUT" and state.exits[0].where == "port 0xe9"
    assert state.console == "H"
    assert state.stats.by_device == (("debugcon", 1),)


@pytest.mark.kvm
def test_continue_runs_hello_to_its_end(session_for):
    session = session_for("hello.bin")
    session.run_action("continue", timeout=10)
    state = session.snapshot()
    assert state.status is RunStatus.FINISHED
    assert "halted" in state.message
    assert state.console == "Hello from a KVM guest, driven entirely from Python!\n"
    assert session.start("step") is False          # nothing more to run
    assert "has ended" in session.message


@pytest.mark.kvm
def test_a_breakpoint_stops_the_guest_and_toggles_off(session_for):
    session = session_for("hello.bin")
    assert "breakpoint 1 at 0x1011" in session.toggle_breakpoint("0x1011")
    session.run_action("continue", timeout=10)
    state = session.snapshot()
    assert state.status is RunStatus.PAUSED and state.registers.values.rip == 0x1011
    assert "breakpoint 1" in state.message
    assert [line.breakpoint for line in state.disassembly if line.current] == [1]
    assert "removed" in session.toggle_breakpoint("0x1011")
    assert session.snapshot().breakpoints == ()


@pytest.mark.kvm
def test_a_bad_breakpoint_address_is_a_message_not_an_exception(session_for):
    session = session_for("hello.bin")
    assert session.toggle_breakpoint("nowhere").startswith("no breakpoint")


@pytest.mark.kvm
def test_pause_stops_a_guest_that_never_exits(session_for):
    session = session_for("spin.bin")
    session.start("continue")
    time.sleep(0.2)
    started = time.monotonic()
    assert session.pause(timeout=5)
    assert time.monotonic() - started < 1.0
    assert session.status is RunStatus.PAUSED
    assert session.snapshot().registers.values.rip in (0x1001, 0x1002, 0x1003)


@pytest.mark.kvm
def test_snapshots_while_running_make_no_vcpu_call_from_the_ui_thread(session_for):
    session = session_for("spin.bin")
    vcpu = session.machine.vcpu
    callers = []
    for name in ("get_regs", "get_sregs", "get_mp_state", "set_guest_debug", "translate"):
        original = getattr(vcpu, name)

        def wrapper(*args, _original=original, _name=name, **kwargs):
            callers.append((_name, threading.current_thread().name))
            return _original(*args, **kwargs)

        setattr(vcpu, name, wrapper)
    session.start("continue")
    time.sleep(0.1)
    callers.clear()
    for _ in range(5):
        state = session.snapshot()
        assert state.busy and state.registers.stale
    from_ui = [call for call in callers if call[1] == threading.current_thread().name]
    assert from_ui == []
    session.pause()


@pytest.mark.kvm
def test_memory_can_follow_rsp_or_show_physical_ram(session_for):
    session = session_for("hello.bin")
    session.set_memory("p:0x1000")
    state = session.snapshot()
    assert state.side is SideView.MEMORY
    assert state.memory.physical and state.memory.data[:1] == b"\xfc"   # cld
    session.set_memory("rsp")
    assert session.snapshot().memory.address == 0x7C00
    assert session.set_memory("bogus").startswith("memory:")


@pytest.mark.kvm
def test_long_mode_guest_shows_its_mode_and_symbols(session_for):
    session = session_for("long.elf")
    state = session.snapshot()
    assert state.registers.mode == "long" and state.registers.bitness == 64
    assert any(line.symbol.startswith("_start") for line in state.disassembly)
    session.run_action("continue", timeout=10)
    assert session.status is RunStatus.FINISHED
    assert "fib(90)=0x27f80ddaa1ba7878" in session.snapshot().console


@pytest.mark.kvm
def test_console_input_reaches_the_echo_guest(session_for):
    session = session_for("serial_echo.bin")
    session.start("continue")
    deadline = time.monotonic() + 10
    while not session.machine.uart.ier & 0x01 and time.monotonic() < deadline:
        time.sleep(0.01)                      # wait until it listens
    session.send_console(b"hi")
    while "hi" not in session.snapshot().console and time.monotonic() < deadline:
        time.sleep(0.01)
    assert session.snapshot().console == "hi"
    session.send_console(b"\x04")             # Ctrl-D ends the echo guest
    assert session.wait(10)
    assert session.status is RunStatus.FINISHED


@pytest.mark.kvm
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(code=st.binary(min_size=1, max_size=48),
       mode=st.sampled_from(["real", "protected", "long"]))
def test_whatever_the_guest_runs_the_screen_can_be_drawn(code, mode):
    # The guest is hostile: random code may fault, loop, jump anywhere or
    # write junk to devices; the session reports it and every frame draws.
    from minikvm.tui.render import render_text

    sink = BufferSink()
    with Machine(output=sink, irqchip=True) as machine:
        machine.load_flat(code, 0x1000, mode=mode)
        session = Session(machine, guest="random.bin", console=sink)
        session.set_memory("rsp")
        for action in ("step", "next", "continue"):
            session.run_action(action, timeout=0.2)
        state = session.snapshot()
        assert not state.busy
        assert state.status is not RunStatus.ERROR, session.error_trace
        assert render_text(state, 80, 24) and render_text(state, 160, 45)
        session.close()


@pytest.mark.kvm
def test_the_header_the_log_and_the_statistics_count_the_same_exits(session_for):
    from minikvm.tui.render import render_text

    session = session_for("hello.bin")
    session.run_action("step")
    session.run_action("continue", timeout=10)
    state = session.snapshot()
    assert state.status is RunStatus.FINISHED
    # The halt check kicked the vCPU at least once: the machine's sequence
    # numbers count that, the TUI does not.
    assert state.stats.kicks >= 1
    assert session.machine.exit_count == state.stats.total + state.stats.kicks
    assert state.stats.total == 53 == state.exits[-1].seq
    header = render_text(state, 120, 36).splitlines()[0]
    assert "exits 53 " in header and "steps 1" in header


@pytest.mark.kvm
def test_stepping_cli_hlt_with_the_irqchip_ends_the_guest_and_no_step_follows(session_for,
                                                                                tmp_path):
    # With the in-kernel irqchip a hlt never exits; the debugger's stepper
    # recognises the stepped hlt, so the step returns and the guest has ended.
    guest = tmp_path / "clihlt.bin"
    guest.write_bytes(bytes([0xFA, 0xF4]))                  # cli; hlt
    session = session_for(str(guest))
    for _ in range(2):
        assert session.start("step")
        assert session.wait(30), "a step hung"
    assert session.status is RunStatus.FINISHED
    assert session.last_stop.finished
    assert "halted" in session.message
    assert session.start("step") is False and "has ended" in session.message


@pytest.mark.kvm
def test_a_step_on_a_vcpu_asleep_for_good_ends_the_guest_instead_of_hanging(guests, tmp_path):
    # The guest went to sleep with interrupts off before the session saw it
    # (here: a plain Machine.run). A step would wait in KVM_RUN for ever; the
    # session asks the runner first and reports the halt.
    guest = tmp_path / "clihlt.bin"
    guest.write_bytes(bytes([0xFA, 0xF4, 0xEB, 0xFC]))      # cli; hlt; jmp $-2
    sink = BufferSink()
    with Machine(output=sink, irqchip=True) as machine:
        machine.load_guest(guest)
        assert machine.run(timeout=10).finished
        session = Session(machine, guest="clihlt.bin", console=sink)
        assert session.start("step")
        assert session.wait(30), "the step hung"
        assert session.status is RunStatus.FINISHED
        assert session.message == "the guest halted (hlt with interrupts off)"
        session.close()


@pytest.mark.kvm
def test_a_machine_with_two_vcpus_names_the_vcpu_of_each_exit(guests):
    from minikvm.tui.render import render_text

    sink = BufferSink()
    with Machine(output=sink, irqchip=True, vcpus=2) as machine:
        machine.load_guest(guests / "hello.bin")
        session = Session(machine, guest="hello.bin", console=sink)
        session.run_action("next", timeout=10)
        state = session.snapshot()
        assert (state.vcpu, state.vcpus) == (0, 2)
        assert [row.vcpu for row in state.exits] == [0]
        assert session.message.startswith("vCPU 0: exit 1 (IO_OUT)")
        assert "vCPU 0 of 2" in render_text(state, 120, 36).splitlines()[0]
        session.close()
