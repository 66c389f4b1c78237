"""The three one-line bars: the header, the message line and the footer.

The header says what is running and in which state (the guest, the CPU
mode, the vCPU when there are several, PAUSED/RUNNING/..., the counters);
the message line says in a sentence what the last action did -- wrapped
onto up to :data:`MESSAGE_ROWS` rows rather than cut, since the reason a
guest ended is often the longest sentence on the screen; the footer lists
the keys that work now, or shows the prompt being typed.
"""

from __future__ import annotations

from rich.text import Text

from minikvm.tui.keys import (
    FOOTER_CONSOLE,
    FOOTER_PAUSED,
    FOOTER_REVERSE,
    FOOTER_RUNNING,
    SMP_ONLY_KEYS,
)
from minikvm.tui.panel import DIM, MEDIUM_WIDTH, fit_line, wrap_line
from minikvm.tui.state import Focus, RegistersView, RunStatus, TuiState

__all__ = ["MESSAGE_ROWS", "message_lines", "render_footer", "render_header",
           "render_message"]

#: Most rows the message line may take (the panels give way to it).
MESSAGE_ROWS = 3

_STATUS_STYLE = {
    RunStatus.PAUSED: "bold black on yellow",
    RunStatus.RUNNING: "bold black on green",
    RunStatus.STEPPING: "bold black on cyan",
    RunStatus.FINISHED: "bold white on blue",
    RunStatus.CRASHED: "bold white on red",
    RunStatus.ERROR: "bold white on red",
}


def _mode_words(registers: RegistersView | None) -> str:
    if registers is None:
        return ""
    mode = {"real": "real mode", "protected": "protected mode", "paged": "paged protected mode",
            "long": "long mode"}.get(registers.mode, registers.mode)
    return f"{mode} ({registers.bitness}-bit)"


def render_header(state: TuiState, width: int) -> Text:
    """Line 1: the guest, the CPU mode, the status and the counters."""
    line = Text()
    if width >= MEDIUM_WIDTH:
        line.append(" minikvm ", style="bold white on blue")
    line.append(f" {state.guest} ", style="bold")
    words = _mode_words(state.registers)
    if words:
        line.append(f"│ {words} ", style="cyan")
    if state.vcpus > 1:
        line.append(f"│ vCPU {state.vcpu} of {state.vcpus} ", style="cyan")
    line.append(f" {state.status.value.upper()} ", style=_STATUS_STYLE[state.status])
    where = ""
    if state.registers is not None and not state.busy:
        where = f" at {state.registers.values.rip:#x}"
    line.append(where)
    line.append(f"  exits {state.stats.total:,}  steps {state.stats.steps:,}", style=DIM)
    return fit_line(line, width)


def message_lines(state: TuiState, width: int) -> list[Text]:
    """What the last action did, in a sentence, on as many rows as it needs
    (at most :data:`MESSAGE_ROWS`)."""
    style = {RunStatus.CRASHED: "bold red", RunStatus.ERROR: "bold red",
             RunStatus.FINISHED: "bold blue"}.get(state.status, "")
    text = " ".join(state.message.split())     # a message is one line of words
    return wrap_line(Text(" " + text, style=style), width, indent=1, max_rows=MESSAGE_ROWS)


def render_message(state: TuiState, width: int) -> Text:
    """Line 2 (and 3, 4 when the sentence is long): what the last action did."""
    return Text("\n").join(message_lines(state, width))


def _key_hints(hints: tuple[tuple[str, str, str], ...], width: int) -> Text:
    """``s step  n next exit ...``; short labels when the line is too narrow."""
    line = Text()
    for key, label, _ in hints:
        line.append(f" {key} ", style="bold black on white")
        line.append(f" {label} ")
    if line.cell_len <= width:
        return line
    line = Text()
    for key, _, short in hints:
        line.append(key, style="bold black on white")
        line.append(f" {short} ")
    return fit_line(line, width)


def render_footer(state: TuiState, width: int) -> Text:
    """The keys that work now (or the prompt being typed)."""
    if state.prompt is not None:
        line = Text(f" {state.prompt.label}: ", style="bold")
        line.append(state.prompt.text)
        line.append("█", style="blink")
        line.append("   Enter ok · Esc cancel", style=DIM)
        return fit_line(line, width)
    if state.focus is Focus.CONSOLE:
        line = Text(" CONSOLE ", style="bold black on bright_cyan")
        line.append(f" {FOOTER_CONSOLE}")
        if not state.busy and not state.ended:
            line.append("  (paused: Ctrl-] c runs it)", style=DIM)
        return fit_line(line, width)
    if state.busy:
        return _key_hints(FOOTER_RUNNING, width)
    hints = FOOTER_PAUSED if state.vcpus > 1 else tuple(
        hint for hint in FOOTER_PAUSED if hint[0] not in SMP_ONLY_KEYS)
    if state.recording:   # the keys that go back, after s n c
        hints = hints[:3] + FOOTER_REVERSE + hints[3:]
    return _key_hints(hints, width)
