"""The guest's serial console as a panel, and the help screen.

Guest output is raw bytes; :func:`console_lines` turns it into what a
terminal would show (carriage returns, backspaces, wrapping) so that a
guest's prompt and progress lines look as they would on a real serial
terminal. While the console has the keyboard its border and title say so.
"""

from __future__ import annotations

from rich.panel import Panel
from rich.text import Text

from minikvm.tui.keys import HELP_TEXT
from minikvm.tui.panel import BORDER, DIM, FOCUS_BORDER, bordered
from minikvm.tui.state import Focus, TuiState

__all__ = ["console_inputs", "console_lines", "render_console_text", "render_help"]


def console_lines(text: str, width: int) -> list[str]:
    """Guest output as a terminal would show it: ``\\r\\n`` and ``\\n`` end a
    line, a lone ``\\r`` returns to its start, backspace erases, other control
    bytes are shown as ``·``; long lines wrap at ``width``."""
    lines: list[str] = []
    current: list[str] = []
    column = 0
    for char in text:
        if char == "\n":
            lines.append("".join(current))
            current, column = [], 0
        elif char == "\r":
            column = 0
        elif char == "\b":
            column = max(0, column - 1)
        else:
            if char == "\t":
                char = " "
            elif ord(char) < 0x20 or ord(char) == 0x7F:
                char = "·"
            if column < len(current):
                current[column] = char
            else:
                current.append(char)
            column += 1
    lines.append("".join(current))
    width = max(width, 1)
    wrapped: list[str] = []
    for line in lines:
        if not line:
            wrapped.append("")
        while line:
            wrapped.append(line[:width])
            line = line[width:]
    return wrapped


def console_inputs(state: TuiState) -> tuple[object, ...]:
    """Everything :func:`render_console_text` reads: a guest that prints
    nothing leaves the panel as it was."""
    return state.console, state.console_total, state.input_queued, state.focus


def render_console_text(state: TuiState, width: int, height: int) -> Panel:
    inner = max(width - 4, 1)
    rows = max(height - 2, 0)
    lines = console_lines(state.console, inner)
    while lines and not lines[-1] and len(lines) > 1 and not state.console.endswith("\n"):
        lines.pop()
    if not state.console:
        lines = ["(no output yet)"]
    shown = [Text(line, style=DIM if not state.console else "") for line in lines[-rows:]]
    if state.focus is Focus.CONSOLE:
        title = "serial console: TYPING GOES TO THE GUEST (Ctrl-] leaves)"
        border = FOCUS_BORDER
    else:
        title = "guest output (COM1 and port 0xe9)" if width >= 44 else "guest output"
        border = BORDER
    subtitle = None
    if state.console_total:
        subtitle = f"{state.console_total:,} byte{'' if state.console_total == 1 else 's'}"
    if state.input_queued:
        subtitle = f"{state.input_queued} bytes waiting for the guest"
    return bordered(shown, title, width, height, border=border, subtitle=subtitle)


def render_help(width: int, height: int) -> Panel:
    lines = [Text(line) for line in HELP_TEXT.splitlines()]
    return bordered(lines, "help (any key closes)", width, height, border=FOCUS_BORDER)
