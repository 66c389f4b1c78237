"""Drawing a frame: :class:`~minikvm.tui.state.TuiState` in, rich renderables out.

Every function here is pure: the same state and size give the same screen,
and nothing reads the machine (panels that did not change since the last
frame hand out the lines they drew then -- :class:`Fit` -- which is the
same screen, drawn cheaper). Tests render frames into a recording
``Console`` at a fixed width and read the text; ``--record`` saves the very
same frame as SVG or HTML.

The layout adapts to the terminal:

* narrow (under 100 columns, e.g. 80x24): registers | disassembly over the
  serial console on top, one full-width panel below -- the exit log, or
  (``v`` cycles) statistics, devices, memory;
* medium (100 columns and more): the exit log and a side panel side by side;
* wide (150x40 and more): three columns, every panel at once.

Panels size their content to the room the layout gives them (the exit log
shows as many newest exits as fit, the listing keeps RIP a third of the way
down), which is why several are wrapped in :class:`Fit`.

This module is the layout; the panels live by concept in
:mod:`~minikvm.tui.bars` (header, message, footer),
:mod:`~minikvm.tui.cpu_panels` (registers, code),
:mod:`~minikvm.tui.side_panels` (exits, statistics, devices, memory) and
:mod:`~minikvm.tui.console_panel` (guest output, help), drawn with the pieces
in :mod:`~minikvm.tui.panel`. Their public functions are importable from
here too.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.layout import Layout
from rich.panel import Panel
from rich.text import Text

from minikvm.tui.bars import message_lines, render_footer, render_header, render_message
from minikvm.tui.console_panel import (
    console_inputs,
    console_lines,
    render_console_text,
    render_help,
)
from minikvm.tui.cpu_panels import (
    disassembly_inputs,
    disassembly_window,
    register_lines,
    registers_height,
    registers_inputs,
    render_disassembly,
    render_registers,
)
from minikvm.tui.panel import MEDIUM_WIDTH, WIDE_HEIGHT, WIDE_WIDTH, Fit
from minikvm.tui.side_panels import (
    device_lines,
    hexdump_lines,
    render_devices,
    render_exits,
    render_memory,
    render_stats,
    sparkline,
    stats_lines,
)
from minikvm.tui.state import SideView, TuiState

__all__ = [
    "Fit",
    "MEDIUM_WIDTH",
    "WIDE_HEIGHT",
    "WIDE_WIDTH",
    "console_lines",
    "device_lines",
    "disassembly_window",
    "export_screen",
    "has_exit_panel",
    "hexdump_lines",
    "layout_tier",
    "message_lines",
    "register_lines",
    "registers_height",
    "render_console_text",
    "render_devices",
    "render_disassembly",
    "render_exits",
    "render_footer",
    "render_header",
    "render_help",
    "render_memory",
    "render_message",
    "render_registers",
    "render_screen",
    "render_stats",
    "render_text",
    "sparkline",
    "stats_lines",
]


def layout_tier(width: int, height: int) -> str:
    """``"narrow"``, ``"medium"`` or ``"wide"`` (see the module docstring)."""
    if width >= WIDE_WIDTH and height >= WIDE_HEIGHT:
        return "wide"
    if width >= MEDIUM_WIDTH:
        return "medium"
    return "narrow"


def has_exit_panel(width: int, height: int) -> bool:
    """Whether the exit log has its own panel (else it shares the side slot)."""
    return layout_tier(width, height) != "narrow"


def _side(state: TuiState, narrow: bool) -> Callable[[int, int], Panel]:
    side = state.side
    if side is SideView.EXITS and not narrow:
        side = SideView.STATS
    return {SideView.EXITS: lambda w, h: render_exits(state, w, h),
            SideView.STATS: lambda w, h: render_stats(state, w, h),
            SideView.DEVICES: lambda w, h: render_devices(state, w, h),
            SideView.MEMORY: lambda w, h: render_memory(state, w, h)}[side]


def _bottom_wants(state: TuiState, width: int, height: int) -> int:
    """Rows the narrow layout's bottom slot would like for the side view
    shown (borders included)."""
    if state.side is SideView.STATS:
        return len(stats_lines(state.stats, width - 4, state.busy, rows=height)) + 2
    return 20    # the devices' rows, or 16 hexdump rows and a note


def _body(state: TuiState, width: int, height: int, tier: str) -> Layout:
    body = Layout(name="body")
    if state.show_help:
        body.update(Fit(render_help, slot="help", inputs=()))
        return body
    reg_height = registers_height(state.registers)
    reg_width = 48 if state.registers is not None and state.registers.bitness == 64 else 34
    # The panels that stay as the last stop left them while the guest runs
    # are drawn once and kept (Fit's slot and inputs).
    registers = Fit(lambda w, h: render_registers(state, w, h), "registers",
                    registers_inputs(state))
    disassembly = Fit(lambda w, h: render_disassembly(state, w, h), "disassembly",
                      disassembly_inputs(state))
    console = Fit(lambda w, h: render_console_text(state, w, h), "console",
                  console_inputs(state))
    exits = Fit(lambda w, h: render_exits(state, w, h))
    if tier == "wide":
        # Top: registers | code | output. Bottom: memory | exits | stats over devices.
        top_height = max(reg_height, height * 9 // 20)
        top, bottom = Layout(name="top", size=top_height), Layout(name="bottom")
        body.split_column(top, bottom)
        left_width = max(reg_width, 48)
        top.split_row(Layout(registers, name="registers", size=left_width),
                      Layout(disassembly, name="disassembly", ratio=3),
                      Layout(console, name="console", ratio=2))
        stats_height = min(len(stats_lines(state.stats, 40, state.busy)) + 2,
                           max((height - top_height) // 2, 4))
        side = Layout(name="side", size=44)
        bottom.split_row(Layout(Fit(lambda w, h: render_memory(state, w, h)), name="memory",
                                size=left_width),
                         Layout(exits, name="exits", ratio=1), side)
        side.split_column(Layout(Fit(lambda w, h: render_stats(state, w, h)), name="stats",
                                 size=stats_height),
                          Layout(Fit(lambda w, h: render_devices(state, w, h)),
                                 name="devices", ratio=1))
        return body
    top_height = max(reg_height, min(height // 2 + 1, height - 6))
    top_height = min(top_height, max(height - 6, 3))
    if tier == "narrow" and state.side is not SideView.EXITS:
        # A view chosen with v gets the room it needs, down to half the body:
        # the registers fold their least telling lines first.
        top_height = min(top_height, max(height - _bottom_wants(state, width, height),
                                         height // 2 + 1))
    top, bottom = Layout(name="top", size=top_height), Layout(name="bottom")
    body.split_column(top, bottom)
    right = Layout(name="right")
    top.split_row(Layout(registers, name="registers", size=reg_width), right)
    console_height = max(4, round(top_height * 0.45))
    right.split_column(Layout(disassembly, name="disassembly"),
                       Layout(console, name="console", size=console_height))
    if tier == "medium":
        bottom.split_row(Layout(exits, name="exits"),
                         Layout(Fit(_side(state, narrow=False)), name="side",
                                size=min(56, max(36, width * 2 // 5 - 4))))
    else:
        bottom.update(Fit(_side(state, narrow=True)))
    return body


def render_screen(state: TuiState, width: int, height: int) -> Layout:
    """The whole screen for a terminal of ``width`` x ``height``."""
    screen = Layout(name="screen")
    message = message_lines(state, width)
    screen.split_column(
        Layout(render_header(state, width), name="header", size=1),
        Layout(Text("\n").join(message), name="message", size=len(message)),
        _body(state, width, max(height - 2 - len(message), 1), layout_tier(width, height)),
        Layout(render_footer(state, width), name="footer", size=1),
    )
    return screen


def _recording_console(width: int, height: int, file: io.StringIO | None = None) -> Console:
    return Console(width=width, height=height, record=True, file=file or io.StringIO(),
                   force_terminal=True, color_system="truecolor", legacy_windows=False,
                   _environ={})


def render_text(state: TuiState, width: int = 100, height: int = 30) -> str:
    """The frame as plain text, as a person would read it (tests)."""
    console = _recording_console(width, height)
    console.print(render_screen(state, width, height))
    return console.export_text(styles=False)


def export_screen(state: TuiState, path: str | Path, width: int = 120, height: int = 36,
                  title: str = "minikvm tui") -> Path:
    """Save the frame as ``.svg``, ``.html`` or ``.txt`` (by the file's suffix)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".svg", ".html", ".htm", ".txt"):
        raise ValueError(f"{path}: the screen can be saved as .svg, .html or .txt")
    console = _recording_console(width, height)
    console.print(render_screen(state, width, height))
    if suffix == ".svg":
        console.save_svg(str(path), title=title)
    elif suffix in (".html", ".htm"):
        console.save_html(str(path))
    else:
        console.save_text(str(path))
    return path
