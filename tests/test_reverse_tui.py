"""Reverse execution in the TUI: ``r`` records, ``S`` steps back, ``C`` goes
back to the last breakpoint; the footer shows those keys."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from minikvm.hostio import BufferSink
from minikvm.machine import Machine
from minikvm.tui.bars import render_footer
from minikvm.tui.keys import HELP_TEXT
from minikvm.tui.session import Session
from minikvm.tui.state import RunStatus, TuiState
from tests.test_tui_app import app, make_app, press  # noqa: F401 - fixtures used here


def test_the_footer_shows_the_keys_that_go_back_while_recording_and_the_help_always():
    state = TuiState(guest="hello.bin", status=RunStatus.PAUSED)
    assert "step back" not in render_footer(state, 200).plain
    footer = render_footer(replace(state, recording=True), 200).plain
    assert re.search(r"c\s+continue\s+S\s+step back\s+C\s+reverse continue\s+p\s+pause", footer)
    assert "S back" in render_footer(replace(state, recording=True), 90).plain
    for words in ("S      step one instruction back", "C  back to the last breakpoint",
                  "r      record every instruction"):
        assert words in HELP_TEXT


@pytest.fixture
def hello(guests):
    """The TUI's session over hello.bin (in-kernel irqchip, as ``minikvm tui``)."""
    sink = BufferSink()
    machine = Machine(output=sink, irqchip=True)
    machine.load_guest(guests / "hello.bin")
    session = Session(machine, guest="hello.bin", console=sink)
    yield session, sink
    session.close()
    machine.close()


@pytest.mark.kvm
def test_keys_r_then_capital_s_undo_the_last_step_and_s_redoes_it(app):  # noqa: F811
    press(app, b"r")
    rips = []
    for _ in range(3):
        press(app, b"s")
        rips.append(app.session.snapshot().registers.values.rip)
    press(app, b"S")
    assert app.session.snapshot().registers.values.rip == rips[1]
    press(app, b"s")
    assert app.session.snapshot().registers.values.rip == rips[2]
    press(app, b"C")                                  # no breakpoint: back to the start
    assert app.session.snapshot().registers.values.rip == 0x1000


@pytest.mark.slow
@pytest.mark.kvm
def test_s_steps_back_after_the_guest_ended_and_s_redoes_without_printing_twice(hello):
    session, sink = hello
    session.run_action("record")
    assert "recording every instruction" in session.message
    session.run_action("continue", timeout=20)
    state = session.snapshot()
    assert state.status is RunStatus.FINISHED
    end_rip, printed = state.registers.values.rip, sink.getvalue()
    assert state.recording and "step back" in render_footer(state, 200).plain
    session.run_action("step-back")                      # allowed after the end
    state = session.snapshot()
    assert state.status is RunStatus.PAUSED and state.registers.values.rip != end_rip
    assert "stepped back 1 instruction" in state.message
    session.run_action("step")                           # redone: nothing printed again
    session.run_action("reverse-continue", timeout=20)   # no breakpoint: to the start
    assert "start of the recorded history" in session.snapshot().message
    assert session.snapshot().registers.values.rip == 0x1000
    session.run_action("continue", timeout=20)           # replays to the recorded end
    assert session.snapshot().status is RunStatus.FINISHED
    assert sink.getvalue() == printed
