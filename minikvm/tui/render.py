"""Drawing a frame: :class:`~minikvm.tui.state.TuiState` in, rich renderables out.

Every function here is pure: the same state and size give the same screen,
and nothing reads the machine. Tests render frames into a recording
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
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from pathlib import Path

from rich.console import Console, ConsoleOptions, RenderResult
from rich.layout import Layout
from rich.panel import Panel
from rich.text import Text

from minikvm.tui.keys import FOOTER_CONSOLE, FOOTER_PAUSED, FOOTER_RUNNING, HELP_TEXT
from minikvm.tui.state import (
    DeviceView,
    DisasmLine,
    ExitRow,
    Focus,
    MemoryView,
    RegistersView,
    RunStatus,
    SideView,
    StatsView,
    TuiState,
)
from minikvm.x86.flags import Cr0, Cr4, Efer, flag_names

__all__ = [
    "Fit",
    "MEDIUM_WIDTH",
    "WIDE_HEIGHT",
    "WIDE_WIDTH",
    "export_screen",
    "has_exit_panel",
    "layout_tier",
    "render_console_text",
    "render_disassembly",
    "render_exits",
    "render_footer",
    "render_header",
    "render_memory",
    "render_registers",
    "render_screen",
    "render_stats",
    "render_text",
    "sparkline",
]

MEDIUM_WIDTH = 100
WIDE_WIDTH = 150
WIDE_HEIGHT = 40

_STATUS_STYLE = {
    RunStatus.PAUSED: "bold black on yellow",
    RunStatus.RUNNING: "bold black on green",
    RunStatus.STEPPING: "bold black on cyan",
    RunStatus.FINISHED: "bold white on blue",
    RunStatus.CRASHED: "bold white on red",
    RunStatus.ERROR: "bold white on red",
}
_CHANGED = "bold black on yellow"
_DIM = "grey50"
_BORDER = "blue"
_FOCUS_BORDER = "bold bright_cyan"
#: The status flags a person reads most, in the order the SDM lists them (vol. 1, 3.4.3).
_FLAG_ORDER = (("CF", 0), ("PF", 2), ("AF", 4), ("ZF", 6), ("SF", 7), ("TF", 8), ("IF", 9),
               ("DF", 10), ("OF", 11))
_SPARK = " ▁▂▃▄▅▆▇█"


class Fit:
    """A renderable drawn by ``draw(width, height)`` with the size its
    layout region has, so a panel can choose how much to show."""

    def __init__(self, draw: Callable[[int, int], object]) -> None:
        self.draw = draw

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        height = options.height if options.height is not None else options.max_height
        yield self.draw(options.max_width, height)  # type: ignore[misc]


def _line(text: Text | str, width: int) -> Text:
    line = Text(text) if isinstance(text, str) else text.copy()
    line.no_wrap = True
    line.overflow = "ellipsis"
    if line.cell_len > width:
        line.truncate(max(width, 1), overflow="ellipsis")
    return line


def _panel(lines: Iterable[Text], title: str, width: int, height: int,
           border: str = _BORDER, subtitle: str | None = None) -> Panel:
    inner = max(width - 4, 1)
    rows = [_line(line, inner) for line in lines][:max(height - 2, 0)]
    body = Text("\n").join(rows) if rows else Text("")
    return Panel(body, title=title, title_align="left", subtitle=subtitle,
                 subtitle_align="right", border_style=border, height=height, width=width,
                 padding=(0, 1))


# -- header and footer ------------------------------------------------------------

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
    line.append(f" {state.status.value.upper()} ", style=_STATUS_STYLE[state.status])
    where = ""
    if state.registers is not None and not state.busy:
        where = f" at {state.registers.values.rip:#x}"
    line.append(where)
    line.append(f"  exits {state.stats.total:,}  steps {state.stats.steps:,}", style=_DIM)
    return _line(line, width)


def render_message(state: TuiState, width: int) -> Text:
    """Line 2: what the last action did, in a sentence."""
    style = {RunStatus.CRASHED: "bold red", RunStatus.ERROR: "bold red",
             RunStatus.FINISHED: "bold blue"}.get(state.status, "")
    return _line(Text(" " + state.message, style=style), width)


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
    return _line(line, width)


def render_footer(state: TuiState, width: int) -> Text:
    """The keys that work now (or the prompt being typed)."""
    if state.prompt is not None:
        line = Text(f" {state.prompt.label}: ", style="bold")
        line.append(state.prompt.text)
        line.append("█", style="blink")
        line.append("   Enter ok · Esc cancel", style=_DIM)
        return _line(line, width)
    if state.focus is Focus.CONSOLE:
        line = Text(" CONSOLE ", style="bold black on bright_cyan")
        line.append(f" {FOOTER_CONSOLE}")
        if not state.busy and not state.ended:
            line.append("  (paused: Ctrl-] c runs it)", style=_DIM)
        return _line(line, width)
    return _key_hints(FOOTER_RUNNING if state.busy else FOOTER_PAUSED, width)


# -- registers ----------------------------------------------------------------------

_GPR_64 = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
           "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
_GPR_32 = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp")


def _reg_label(name: str, bitness: int) -> str:
    """``eax`` for 16/32-bit code (the register the code can name), ``rax`` in 64-bit."""
    if bitness == 64 or not name.startswith("r"):
        return name
    return "e" + name[1:]


def _reg_cell(name: str, label: str, value: int, digits: int, changed: frozenset[str]) -> Text:
    cell = Text()
    cell.append(f"{label:<3} ", style="bold" if name in changed else _DIM)
    text = f"{value:0{digits}x}"
    if name in changed:
        cell.append(text, style=_CHANGED)
        cell.append("*", style="bold yellow")
    else:
        cell.append(text)
        cell.append(" ")
    return cell


def _bit_names(flags: type, value: int) -> str:
    """``PG|ET|PE``: the set bits by their SDM names; ``-`` when none is set."""
    names = flag_names(flags(value & 0xFFFF_FFFF))
    return "-" if names == "0" else names


def _register_sections(view: RegistersView) -> list[tuple[int, str, Text]]:
    """(priority, key, line) in display order; lower priorities give way first
    when the panel is short."""
    values = view.values
    bits = view.bitness
    digits = 16 if bits == 64 else 8
    changed = view.changed
    names = _GPR_64 if bits == 64 else _GPR_32
    lines: list[tuple[int, str, Text]] = []
    for index, (left, right) in enumerate(zip(names[0::2], names[1::2])):
        line = _reg_cell(left, _reg_label(left, bits), getattr(values, left), digits, changed)
        line.append(" ")
        line.append(_reg_cell(right, _reg_label(right, bits), getattr(values, right), digits,
                              changed))
        lines.append((10 if index < 4 else 5, "gpr-high" if index >= 4 else "gpr", line))
    ip = _reg_cell("rip", _reg_label("rip", bits), values.rip, digits, changed)
    ip.append(" ")
    flags_label = "rflags" if bits == 64 else "eflags"
    ip.append(f"{flags_label} ", style="bold" if "rflags" in changed else _DIM)
    ip.append(f"{values.rflags:08x}", style=_CHANGED if "rflags" in changed else "")
    lines.append((10, "ip", ip))
    flags = Text("flags ", style=_DIM)
    for name, bit in _FLAG_ORDER:
        if values.rflags >> bit & 1:
            flags.append(name + " ", style="bold green")
    iopl = (values.rflags >> 12) & 3
    if iopl:
        flags.append(f"IOPL={iopl} ", style="bold green")
    clear = [name.lower() for name, bit in _FLAG_ORDER if not values.rflags >> bit & 1]
    flags.append("· " + " ".join(clear), style=_DIM)
    lines.append((9, "flags", flags))
    if values.cs is not None:
        for priority, group in ((4, ("cs", "ds", "es")), (3, ("ss", "fs", "gs"))):
            segs = Text()
            for name in group:
                segs.append(f"{name} ", style="bold" if name in changed else _DIM)
                segs.append(f"{getattr(values, name):04x}",
                            style=_CHANGED if name in changed else "")
                segs.append("   ")
            lines.append((priority, "segments", segs))
    if values.cr0 is not None:
        def control(name: str, value: int, decode: Callable[[int], str]) -> Text:
            line = Text(f"{name:<4} ", style="bold" if name in changed else _DIM)
            line.append(f"{value:08x}", style=_CHANGED if name in changed else "")
            line.append(f" {decode(value)}", style="cyan")
            return line
        lines.append((8, "cr0", control("cr0", values.cr0, lambda v: _bit_names(Cr0, v))))
        cr3 = Text("cr3  ", style="bold" if "cr3" in changed else _DIM)
        cr3.append(f"{values.cr3:0{digits}x}", style=_CHANGED if "cr3" in changed else "")
        cr3.append("  cr2 ", style="bold" if "cr2" in changed else _DIM)
        cr3.append(f"{values.cr2:x}", style=_CHANGED if "cr2" in changed else "")
        lines.append((6, "cr3", cr3))
        lines.append((7, "cr4", control("cr4", values.cr4, lambda v: _bit_names(Cr4, v))))
        lines.append((8, "efer", control("efer", values.efer, lambda v: _bit_names(Efer, v))))
    return lines


def register_lines(view: RegistersView, rows: int | None = None) -> list[Text]:
    """The register panel's lines: GPRs two per line, RIP/RFLAGS, flags,
    segment selectors, CR0/CR3/CR4/EFER with their bits named.

    With ``rows`` set and too little room, r8-r15 fold into one line when
    they are all zero, then the least telling lines (segments, CR3) go.
    """
    sections = _register_sections(view)
    if rows is None or len(sections) <= rows:
        return [line for _, _, line in sections]
    values = view.values
    high = [f"r{n}" for n in range(8, 16)]
    if view.bitness == 64 and not any(getattr(values, name) for name in high) and not (
            view.changed & set(high)):
        first = next(i for i, (_, key, _) in enumerate(sections) if key == "gpr-high")
        folded = Text("r8-r15 ", style=_DIM)
        folded.append("all zero")
        sections = (sections[:first] + [(5, "gpr-high", folded)]
                    + [item for item in sections[first:] if item[1] != "gpr-high"])
    while len(sections) > rows and sections:
        lowest = min(priority for priority, _, _ in sections)
        index = max(i for i, (priority, _, _) in enumerate(sections) if priority == lowest)
        del sections[index]
    return [line for _, _, line in sections]


def registers_height(view: RegistersView | None) -> int:
    """Rows the register panel wants, borders included."""
    if view is None:
        return 3
    return len(_register_sections(view)) + 2


def render_registers(state: TuiState, width: int, height: int) -> Panel:
    view = state.registers
    if view is None:
        return _panel([Text("(no registers yet)", style=_DIM)], "registers", width, height)
    title = "registers"
    subtitle = "at the last stop" if view.stale else (
        "* = changed" if view.changed else None)
    return _panel(register_lines(view, max(height - 2, 1)), title, width, height,
                  subtitle=subtitle)


# -- disassembly --------------------------------------------------------------------

def disassembly_window(lines: tuple[DisasmLine, ...], rows: int) -> tuple[DisasmLine, ...]:
    """``rows`` instructions with the current one a third of the way down."""
    if rows <= 0:
        return ()
    current = next((i for i, line in enumerate(lines) if line.current), 0)
    start = max(0, min(current - rows // 3, len(lines) - rows))
    return lines[start:start + rows]


def _is_function_start(symbol: str) -> bool:
    return bool(symbol) and "+" not in symbol


def _instruction_text(line: DisasmLine, digits: int, show_bytes: bool, busy: bool,
                      inner: int) -> Text:
    text = Text()
    if line.breakpoint is not None:
        text.append("●" if line.breakpoint_enabled else "○", style="bold red")
    else:
        text.append(" ")
    text.append("→ " if line.current and not busy else "  ", style="bold green")
    text.append(f"{line.address:>{digits}x} ", style="bold green" if line.current else _DIM)
    if show_bytes:
        raw = line.raw[:7].hex(" ") + ("…" if len(line.raw) > 7 else "")
        text.append(f"{raw:<21}", style=_DIM)
    style = "bold reverse green" if line.current and not busy else (
        "bold" if line.current else "")
    text.append(f" {line.text} ", style=style)
    if line.current and line.symbol and not _is_function_start(line.symbol) and (
            inner - text.cell_len > len(line.symbol) + 3):
        text.append(f" <{line.symbol}>", style="magenta")
    return text


def render_disassembly(state: TuiState, width: int, height: int) -> Panel:
    """The listing around RIP, objdump-style: a ``<symbol>:`` line where a
    function starts, ``→`` at the next instruction, ``●`` at breakpoints."""
    inner = width - 4
    rows = max(height - 2, 0)
    show_bytes = inner >= 52
    digits = max((len(f"{line.address:x}") for line in state.disassembly), default=4)
    # Display rows: labels and instructions; the window keeps RIP a third down.
    display: list[tuple[Text, bool]] = []
    for line in state.disassembly:
        if _is_function_start(line.symbol):
            display.append((Text(f"<{line.symbol}>:", style="magenta"), False))
        display.append((_instruction_text(line, digits, show_bytes, state.busy, inner),
                        line.current))
    current = next((i for i, (_, is_current) in enumerate(display) if is_current), 0)
    start = max(0, min(current - rows // 3, len(display) - rows))
    shown = [text for text, _ in display[start:start + rows]]
    if not shown:
        shown.append(Text("(nothing to show)", style=_DIM))
    subtitle = None
    if state.breakpoints:
        subtitle = "● breakpoint " + " ".join(f"{bp.number}:{bp.address:#x}"
                                              for bp in state.breakpoints)
    title = "code at RIP" if not state.busy else "code (at the last stop)"
    return _panel(shown, title, width, height, subtitle=subtitle)


# -- exits ----------------------------------------------------------------------------

def _exit_columns(rows: tuple[ExitRow, ...], inner: int) -> tuple[int, int, int, int]:
    """Widths of the #, exit, rip and port/address columns (0: left out),
    as narrow as the rows allow, so the explanation gets the room."""
    seq = max([len(str(row.seq)) for row in rows] + [3])
    reason = max([len(row.reason) for row in rows] + [4])
    rip = max([len(f"{row.rip:#x}") for row in rows if row.rip is not None] + [3])
    where = max([len(row.where) for row in rows] + [9])
    longest = max([len(row.device) + 2 + len(row.description) for row in rows] + [13])
    room = inner - (seq + reason + rip + 3)
    if room - where - 1 < min(longest, 60):    # the meaning matters more than the port
        where = 0
    return seq, reason, rip, where


def _exit_line(row: ExitRow, columns: tuple[int, int, int, int], newest: bool) -> Text:
    seq, reason, rip_width, where = columns
    text = Text()
    text.append(f"{row.seq:>{seq}} ", style=_DIM)
    text.append(f"{row.reason:<{reason}} ", style="bold cyan" if newest else "cyan")
    rip = "" if row.rip is None else f"{row.rip:#x}"
    text.append(f"{rip:>{rip_width}} ", style=_DIM)
    if where:
        text.append(f"{row.where:<{where}} ", style=_DIM)
    device = row.device
    if device and not row.description.lower().startswith(device.lower()[:5]):
        text.append(f"{device}: ", style="magenta")
    text.append(row.description, style="bold" if newest else "")
    if row.stop:
        text.append(f"  => {row.stop}", style="bold blue")
    return text


def render_exits(state: TuiState, width: int, height: int) -> Panel:
    """The newest exits that fit, oldest at the top, each with its meaning."""
    rows = max(height - 3, 0)
    inner = width - 4
    exits = state.exits[-rows:] if rows else ()
    columns = _exit_columns(exits, inner)
    seq, reason, rip, where = columns
    header = Text()
    header.append(f"{'#':>{seq}} {'exit':<{reason}} {'rip':>{rip}} ", style="bold")
    if where:
        header.append(f"{'port/addr':<{where}} ", style="bold")
    header.append("what it means", style="bold")
    lines = [header] + [_exit_line(row, columns, i == len(exits) - 1)
                        for i, row in enumerate(exits)]
    if not exits:
        lines.append(Text("(no exits yet: n runs to the first one)", style=_DIM))
    title = "VM exits (newest last)"
    return _panel(lines, title, width, height)


# -- serial console -------------------------------------------------------------------

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


def render_console_text(state: TuiState, width: int, height: int) -> Panel:
    inner = max(width - 4, 1)
    rows = max(height - 2, 0)
    lines = console_lines(state.console, inner)
    while lines and not lines[-1] and len(lines) > 1 and not state.console.endswith("\n"):
        lines.pop()
    if not state.console:
        lines = ["(no output yet)"]
    shown = [Text(line, style=_DIM if not state.console else "") for line in lines[-rows:]]
    if state.focus is Focus.CONSOLE:
        title = "serial console: TYPING GOES TO THE GUEST (Ctrl-] leaves)"
        border = _FOCUS_BORDER
    else:
        title = "guest output (COM1 and port 0xe9)" if width >= 44 else "guest output"
        border = _BORDER
    subtitle = None
    if state.console_total:
        subtitle = f"{state.console_total:,} byte{'' if state.console_total == 1 else 's'}"
    if state.input_queued:
        subtitle = f"{state.input_queued} bytes waiting for the guest"
    return _panel(shown, title, width, height, border=border, subtitle=subtitle)


# -- statistics ------------------------------------------------------------------------

def sparkline(values: Iterable[int], width: int) -> str:
    """The last ``width`` values as block characters, scaled to the largest."""
    values = list(values)[-max(width, 0):] if width > 0 else []
    if not values:
        return ""
    top = max(values)
    if top <= 0:
        return _SPARK[0] * len(values)
    return "".join(_SPARK[min(8, (v * 8 + top - 1) // top)] if v > 0 else _SPARK[0]
                   for v in values)


def _bar_rows(items: tuple[tuple[str, int], ...], total: int, inner: int) -> list[Text]:
    rows = []
    label_width = min(max((len(name) for name, _ in items), default=4), 16)
    bar_room = max(inner - label_width - 11, 0)
    for name, count in items:
        line = Text(f"  {name[:label_width]:<{label_width}} ", style="cyan")
        line.append(f"{count:>7,} ")
        if bar_room and total:
            line.append("█" * max(1, round(bar_room * count / total)), style="green")
        rows.append(line)
    return rows


def stats_lines(stats: StatsView, inner: int, busy: bool) -> list[Text]:
    lines = []
    head = Text()
    head.append(f"{stats.total:,}", style="bold")
    head.append(" exit" + ("" if stats.total == 1 else "s") + "  ")
    head.append(f"{stats.steps:,}", style="bold")
    head.append(" step" + ("" if stats.steps == 1 else "s") + "  ")
    if stats.rate:
        head.append(f"{stats.rate:,.0f}", style="bold")
        head.append(" exits/s" + ("" if busy else " (last run)"))
    lines.append(head)
    timeline = sparkline(stats.timeline, inner)
    lines.append(Text(f"exits per {stats.interval:g} s while running:", style=_DIM))
    lines.append(Text(timeline or "(not run yet: c continues)", style="green" if timeline else _DIM))
    lines.append(Text("by reason", style="bold"))
    lines += _bar_rows(stats.by_reason, stats.total, inner)
    if stats.by_device:
        lines.append(Text("by device", style="bold"))
        lines += _bar_rows(stats.by_device, stats.total, inner)
    if stats.kicks:
        lines.append(Text(f"kicks {stats.kicks:,}: KVM_RUN cut short by a signal (pause, "
                          "halt check); not in the log", style=_DIM))
    return lines


def render_stats(state: TuiState, width: int, height: int) -> Panel:
    return _panel(stats_lines(state.stats, width - 4, state.busy), "exit statistics",
                  width, height)


# -- devices ----------------------------------------------------------------------------

def device_lines(devices: tuple[DeviceView, ...], inner: int) -> list[Text]:
    lines = []
    for device in devices:
        lines.append(Text(device.name, style="bold"))
        key_width = max((len(key) for key, _ in device.rows), default=0)
        for key, value in device.rows:
            line = Text(f"  {key:<{key_width}} ", style="cyan")
            line.append(value)
            lines.append(line)
    return lines


def render_devices(state: TuiState, width: int, height: int) -> Panel:
    lines = device_lines(state.devices, width - 4) or [Text("(no devices)", style=_DIM)]
    subtitle = "live" if state.busy else None
    return _panel(lines, "devices", width, height, subtitle=subtitle)


# -- memory ------------------------------------------------------------------------------

def hexdump_lines(view: MemoryView, inner: int, rows: int) -> list[Text]:
    """``address  xx xx ...  ascii`` rows; 16, 8 or 4 bytes a row by width."""
    per_row = 16 if inner >= 76 else 8 if inner >= 44 else 4
    lines = []
    for row in range(rows):
        offset = row * per_row
        chunk = view.data[offset:offset + per_row]
        if not chunk:
            break
        line = Text(f"{view.address + offset:08x}  ", style=_DIM)
        for i in range(per_row):
            if i < len(chunk):
                line.append(f"{chunk[i]:02x} ", style="bold" if offset + i == 0 else "")
            else:
                line.append("   ")
        ascii_text = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in chunk)
        line.append(f" {ascii_text}", style="green")
        lines.append(line)
    return lines


def render_memory(state: TuiState, width: int, height: int) -> Panel:
    view = state.memory
    if view is None:
        return _panel([Text("(no memory view)", style=_DIM)], "memory", width, height)
    if view.physical:
        title = f"memory at physical {view.address:#x}"
    elif view.follow:
        title = f"memory at {view.follow.upper()} {view.address:#x}"
    else:
        title = f"memory at {view.address:#x}"
    lines = hexdump_lines(view, width - 4, max(height - 3, 0))
    if view.error:
        lines.append(Text(view.error, style="red"))
    elif not view.physical and view.phys is not None:
        lines.append(Text(f"{view.address:#x} -> guest-physical {view.phys:#x} (page walk)",
                          style=_DIM))
    subtitle = "g address · ↑↓ scroll"
    if view.note:
        subtitle = view.note
    return _panel(lines, title, width, height, subtitle=subtitle)


# -- help ---------------------------------------------------------------------------------

def render_help(width: int, height: int) -> Panel:
    lines = [Text(line) for line in HELP_TEXT.splitlines()]
    return _panel(lines, "help (any key closes)", width, height, border=_FOCUS_BORDER)


# -- the whole screen ------------------------------------------------------------------------

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


def _fit(draw: Callable[[int, int], object]) -> Fit:
    return Fit(draw)


def _body(state: TuiState, width: int, height: int, tier: str) -> Layout:
    body = Layout(name="body")
    if state.show_help:
        body.update(_fit(render_help))
        return body
    reg_height = registers_height(state.registers)
    reg_width = 48 if state.registers is not None and state.registers.bitness == 64 else 34
    registers = _fit(lambda w, h: render_registers(state, w, h))
    disassembly = _fit(lambda w, h: render_disassembly(state, w, h))
    console = _fit(lambda w, h: render_console_text(state, w, h))
    exits = _fit(lambda w, h: render_exits(state, w, h))
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
        bottom.split_row(Layout(_fit(lambda w, h: render_memory(state, w, h)), name="memory",
                                size=left_width),
                         Layout(exits, name="exits", ratio=1), side)
        side.split_column(Layout(_fit(lambda w, h: render_stats(state, w, h)), name="stats",
                                 size=stats_height),
                          Layout(_fit(lambda w, h: render_devices(state, w, h)),
                                 name="devices", ratio=1))
        return body
    top_height = max(reg_height, min(height // 2 + 1, height - 6))
    top_height = min(top_height, max(height - 6, 3))
    top, bottom = Layout(name="top", size=top_height), Layout(name="bottom")
    body.split_column(top, bottom)
    right = Layout(name="right")
    top.split_row(Layout(registers, name="registers", size=reg_width), right)
    console_height = max(4, round(top_height * 0.45))
    right.split_column(Layout(disassembly, name="disassembly"),
                       Layout(console, name="console", size=console_height))
    if tier == "medium":
        bottom.split_row(Layout(exits, name="exits"),
                         Layout(_fit(_side(state, narrow=False)), name="side",
                                size=min(56, max(36, width * 2 // 5 - 4))))
    else:
        bottom.update(_fit(_side(state, narrow=True)))
    return body


def render_screen(state: TuiState, width: int, height: int) -> Layout:
    """The whole screen for a terminal of ``width`` x ``height``."""
    screen = Layout(name="screen")
    screen.split_column(
        Layout(render_header(state, width), name="header", size=1),
        Layout(render_message(state, width), name="message", size=1),
        _body(state, width, max(height - 3, 1), layout_tier(width, height)),
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
