"""The keys of the TUI, pressed without a terminal: App.handle on a real session."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from minikvm.hostio import BufferSink
from minikvm.machine import Machine
from minikvm.tui.app import App
from minikvm.tui.keys import parse_keys
from minikvm.tui.session import Session
from minikvm.tui.state import Focus, RunStatus, SideView

pytestmark = pytest.mark.kvm


@pytest.fixture
def make_app(guests):
    made = []

    def make(guest: str) -> App:
        sink = BufferSink()
        machine = Machine(output=sink, irqchip=True)
        machine.load_guest(guests / guest)
        session = Session(machine, guest=guest, console=sink)
        console = Console(file=io.StringIO(), width=100, height=30, force_terminal=True)
        made.append((session, machine))
        return App(session, input_fd=0, console=console)

    yield make
    for session, machine in made:
        session.close()
        machine.close()


@pytest.fixture
def app(make_app):
    return make_app("hello.bin")


def press(app: App, data: bytes) -> None:
    for key in parse_keys(data):
        app.handle(key)
        app.session.wait(10)


def test_s_and_n_step_and_run_to_the_next_exit(app):
    press(app, b"ss")
    assert app.session.snapshot().registers.values.rip == 0x1003
    press(app, b"n")
    assert app.session.snapshot().exits[-1].description == "debug console: the guest prints 'H'"


def test_b_prompts_for_an_address_and_sets_a_breakpoint(app):
    press(app, b"b0x1011")
    assert app.session.prompt.text == "0x1011"
    press(app, b"\r")
    assert app.session.prompt is None
    assert [bp.address for bp in app.session.snapshot().breakpoints] == [0x1011]
    press(app, b"c")
    state = app.session.snapshot()
    assert state.status is RunStatus.PAUSED and state.registers.values.rip == 0x1011


def test_escape_cancels_a_prompt_and_backspace_edits_it(app):
    press(app, b"g0x12\x7f")
    assert app.session.prompt.text == "0x1"
    press(app, b"\x1b")
    assert app.session.prompt is None and app.session.message == "cancelled"


def test_g_points_the_memory_panel_at_a_physical_address(app):
    press(app, b"gp:0x1000\r")
    memory = app.session.snapshot().memory
    assert memory.physical and memory.address == 0x1000
    assert app.session.side is SideView.MEMORY
    press(app, b"\x1b[B")                      # down: one row further
    assert app.session.snapshot().memory.address == 0x1010


def test_tab_gives_keys_to_the_guest_until_ctrl_close_bracket(app):
    press(app, b"\t")
    assert app.session.focus is Focus.CONSOLE
    press(app, b"sq")                          # not commands now: guest input
    assert not app.quit and len(app.session.machine.serial_input) == 2
    press(app, b"\x1d")
    assert app.session.focus is Focus.DEBUGGER


def test_v_cycles_the_side_panel_and_question_mark_shows_help(app):
    press(app, b"v")
    assert app.session.side is SideView.DEVICES   # 100 columns: exits have their own panel
    press(app, b"?")
    assert app.session.snapshot().show_help
    press(app, b"x")                               # any key closes the help
    assert not app.session.snapshot().show_help


def test_any_key_pauses_a_running_guest_and_q_quits(make_app):
    app = make_app("spin.bin")                     # loops forever without an exit
    app.session.start("continue")
    assert app.session.busy
    app.handle(parse_keys(b"x")[0])
    assert not app.session.busy and app.session.status is RunStatus.PAUSED
    app.session.start("continue")
    app.handle(parse_keys(b"q")[0])
    assert app.quit and not app.session.busy


def test_p_on_a_guest_that_has_ended_says_so(app):
    press(app, b"c")
    assert app.session.status is RunStatus.FINISHED
    press(app, b"p")
    assert app.session.message == ("the guest has ended (the guest halted (hlt with "
                                   "interrupts off)); q quits")
    press(app, b"s")
    assert "has ended" in app.session.message
