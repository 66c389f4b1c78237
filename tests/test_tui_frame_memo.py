"""Frames drawn one after another show what a first frame would show.

The layout keeps the lines of panels whose inputs did not change (the
registers, listing and console of the last stop while the guest runs, see
:class:`minikvm.tui.panel.Fit`); every change a person can cause between
two frames must still reach the screen. Rows are cut without measuring
each character where every character is one cell (:func:`wrap_line`);
they must still fit and lose no word.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.cells import cell_len

from minikvm.tui import panel
from minikvm.tui.panel import wrap_line
from minikvm.tui.render import render_text
from minikvm.tui.state import BreakpointRow, Focus, RunStatus
from tests.test_tui_render import LONG_MODE, long_mode_state


def _first_frame(state, width: int, height: int) -> str:
    panel._DRAWN.clear()
    return render_text(state, width, height)


@pytest.mark.parametrize("size", [
    (120, 40),
    pytest.param((80, 24), marks=pytest.mark.slow),
    pytest.param((160, 44), marks=pytest.mark.slow),
])
def test_each_frame_in_a_sequence_equals_the_frame_drawn_first(size):
    base = long_mode_state()
    moved = dataclasses.replace(base.registers, values=dataclasses.replace(LONG_MODE, rax=7))
    sequence = [
        base,
        base,                                                   # kept as is
        dataclasses.replace(base, status=RunStatus.RUNNING),    # listing title, no arrow
        dataclasses.replace(base, registers=moved),             # a register changed
        dataclasses.replace(base, registers=dataclasses.replace(moved, stale=True)),
        dataclasses.replace(base, breakpoints=(BreakpointRow(2, 0x100138, "hw DR1", True, 0),)),
        dataclasses.replace(base, console=base.console + "more\n", console_total=42),
        dataclasses.replace(base, focus=Focus.CONSOLE),
        dataclasses.replace(base, vcpus=2, vcpu=1, vcpu_state="parked: waiting for SIPI"),
    ]
    panel._DRAWN.clear()
    for state in sequence:
        drawn = render_text(state, *size)
        assert drawn == _first_frame(state, *size), state


@settings(max_examples=60, deadline=None)
@given(text=st.text(alphabet="abc xyz-.é界→\t", max_size=120), width=st.integers(8, 50),
       indent=st.integers(0, 10))
def test_wrapped_rows_fit_and_keep_every_word(text, width, indent):
    rows = wrap_line(text, width, indent)
    assert all(cell_len(row.plain) <= width for row in rows)
    assert "".join("".join(row.plain.split()) for row in rows) == "".join(text.split())
