"""The side panels: the exit log, exit statistics, devices and memory.

On a narrow terminal they take turns in one slot (``v`` cycles); wider ones
show several at once. Each is drawn from the snapshot alone: the exit log
from :class:`~minikvm.tui.state.ExitRow` lines, the statistics from counters
and a timeline, the device panel from the rows each device wrote about
itself, the memory panel from bytes read at the last stop.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from rich.panel import Panel
from rich.text import Text

from minikvm.tui.panel import DIM, bordered, fit_line, wrap_line
from minikvm.tui.state import DeviceView, ExitRow, MemoryView, StatsView, TuiState

__all__ = [
    "device_lines",
    "hexdump_lines",
    "render_devices",
    "render_exits",
    "render_memory",
    "render_stats",
    "sparkline",
    "stats_lines",
]

_SPARK = " ▁▂▃▄▅▆▇█"


# -- exits ----------------------------------------------------------------------------

@dataclass(frozen=True)
class _Columns:
    """Widths of the exit log's columns before the explanation (0: left out)."""

    seq: int
    vcpu: int
    reason: int
    rip: int
    where: int

    @property
    def before_meaning(self) -> int:
        """Cells before the "what it means" column."""
        return sum(width + 1 for width in (self.seq, self.vcpu, self.reason, self.rip,
                                           self.where) if width)


def _exit_columns(rows: tuple[ExitRow, ...], inner: int) -> _Columns:
    """As narrow as the rows allow, so the explanation gets the room; the
    vCPU column only on a machine with several, the port column only when
    the explanation keeps enough room without it."""
    seq = max([len(str(row.seq)) for row in rows] + [3])
    vcpu = 3 if any(row.vcpu is not None for row in rows) else 0
    reason = max([len(row.reason) for row in rows] + [4])
    rip = max([len(f"{row.rip:#x}") for row in rows if row.rip is not None] + [3])
    where = max([len(row.where) for row in rows] + [9])
    longest = max([len(row.device) + 2 + len(row.description) for row in rows] + [13])
    room = inner - (seq + reason + rip + 3 + (vcpu + 1 if vcpu else 0))
    if room - where - 1 < min(longest, 60):    # the meaning matters more than the port
        where = 0
    return _Columns(seq, vcpu, reason, rip, where)


def _meaning(row: ExitRow, newest: bool) -> Text:
    """The explanation: the device where its sentence does not name it,
    the device's sentence, and the stop this exit caused."""
    text = Text()
    device = row.device
    if device and not row.description.lower().startswith(device.lower()[:5]):
        text.append(f"{device}: ", style="magenta")
    text.append(row.description, style="bold" if newest else "")
    if row.stop:
        text.append(f"  => {row.stop}", style="bold blue")
    return text


def _exit_lines(row: ExitRow, columns: _Columns, inner: int, newest: bool) -> list[Text]:
    """One exit: its columns, then its explanation wrapped (never cut)
    under the "what it means" column, or under the reason when that
    column is too narrow to read."""
    text = Text()
    text.append(f"{row.seq:>{columns.seq}} ", style=DIM)
    if columns.vcpu:
        text.append(f"{'' if row.vcpu is None else row.vcpu:>{columns.vcpu}} ", style=DIM)
    text.append(f"{row.reason:<{columns.reason}} ", style="bold cyan" if newest else "cyan")
    rip = "" if row.rip is None else f"{row.rip:#x}"
    text.append(f"{rip:>{columns.rip}} ", style=DIM)
    if columns.where:
        text.append(f"{row.where:<{columns.where}} ", style=DIM)
    indent = columns.before_meaning
    if inner - indent < _NARROWEST_MEANING:
        indent = columns.seq + 1
    return wrap_line(text + _meaning(row, newest), inner, indent)


#: Below this many cells, continuation rows start under the exit reason instead.
_NARROWEST_MEANING = 40


def render_exits(state: TuiState, width: int, height: int) -> Panel:
    """The newest exits that fit, oldest at the top, each with its whole
    explanation (a long one takes several rows, so fewer exits fit)."""
    rows = max(height - 3, 0)
    inner = width - 4
    candidates = state.exits[-rows:] if rows else ()
    columns = _exit_columns(candidates, inner)
    shown: list[list[Text]] = []
    used = 0
    for i, row in enumerate(reversed(candidates)):
        lines = _exit_lines(row, columns, inner, newest=i == 0)
        if used + len(lines) > rows:
            if not shown:                     # the newest exit, whatever its length
                shown.append(lines[:rows])
            break
        shown.append(lines)
        used += len(lines)
    header = Text()
    header.append(f"{'#':>{columns.seq}} ", style="bold")
    if columns.vcpu:
        header.append(f"{'cpu':>{columns.vcpu}} ", style="bold")
    header.append(f"{'exit':<{columns.reason}} {'rip':>{columns.rip}} ", style="bold")
    if columns.where:
        header.append(f"{'port/addr':<{columns.where}} ", style="bold")
    header.append("what it means", style="bold")
    lines = [header] + [line for lines in reversed(shown) for line in lines]
    if not candidates:
        lines.append(Text("(no exits yet: n runs to the first one)", style=DIM))
    return bordered(lines, "VM exits (newest last)", width, height)


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


def _counts(title: str, items: tuple[tuple[str, int], ...], total: int,
            inner: int) -> list[Text]:
    return [Text(title, style="bold")] + _bar_rows(items, total, inner)


def _side_by_side(left: list[Text], right: list[Text], inner: int) -> list[Text]:
    """Two columns of rows in one: ``left`` padded to half the width."""
    half = (inner - 1) // 2
    rows = []
    for i in range(max(len(left), len(right))):
        row = fit_line(left[i], half) if i < len(left) else Text()
        row.pad_right(half + 1 - row.cell_len)
        if i < len(right):
            row.append_text(fit_line(right[i], inner - half - 1))
        rows.append(row)
    return rows


#: From this inner width the two count tables stand side by side.
_TWO_COLUMNS = 56


def _counted_note(stats: StatsView) -> str:
    """What the exit count leaves out (see :mod:`minikvm.tui.monitor`)."""
    left_out = []
    if stats.kicks:
        left_out.append(f"{stats.kicks:,} kick{'' if stats.kicks == 1 else 's'} (KVM_RUN "
                        "cut short by the VMM's own signal: halt check, pause)")
    if stats.steps:
        left_out.append("the single-step traps (counted as steps)")
    return "not counted: " + " and ".join(left_out) if left_out else ""


def stats_lines(stats: StatsView, inner: int, busy: bool,
                rows: int | None = None) -> list[Text]:
    """The statistics panel's lines for ``inner`` cells; with ``rows`` set,
    in that many rows: the timeline on one line, the two tables side by
    side, and what does not fit said as "+N more" instead of cut off."""
    head = Text()
    head.append(f"{stats.total:,}", style="bold")
    head.append(" guest exit" + ("" if stats.total == 1 else "s") + "  ")
    head.append(f"{stats.steps:,}", style="bold")
    head.append(" step" + ("" if stats.steps == 1 else "s") + "  ")
    if stats.rate:
        head.append(f"{stats.rate:,.0f}", style="bold")
        head.append(" exits/s" + ("" if busy else " (last run)"))
    lines = wrap_line(head, inner, indent=2)
    label = f"per {stats.interval:g} s "
    timeline = sparkline(stats.timeline, inner - len(label) if rows else inner)
    if rows is not None or not timeline:
        line = Text(label.rstrip() + (" " if timeline else ": "), style=DIM)
        line.append(timeline or "no free run yet", style="green" if timeline else DIM)
        lines.append(line)
    else:
        lines.append(Text(f"exits per {stats.interval:g} s while running:", style=DIM))
        lines.append(Text(timeline, style="green"))
    note = _counted_note(stats)
    notes = [Text(row.plain, style=DIM) for row in wrap_line(note, inner, indent=2)] \
        if note else []
    reasons = _counts("by reason", stats.by_reason, stats.total, inner)
    devices = _counts("by device", stats.by_device, stats.total, inner) \
        if stats.by_device else []
    if rows is None:
        return lines + reasons + devices + notes
    if inner >= _TWO_COLUMNS and devices:
        half = (inner - 1) // 2
        tables = _side_by_side(_counts("by reason", stats.by_reason, stats.total, half),
                               _counts("by device", stats.by_device, stats.total,
                                       inner - half - 1), inner)
    else:
        tables = reasons + devices
    if notes and len(lines) + len(tables) + len(notes) > rows:
        notes = [fit_line(Text(note, style=DIM), inner)]
    room = rows - len(lines) - len(notes)
    if len(tables) > room:
        left = len(tables) - max(room - 1, 0)
        tables = tables[:max(room - 1, 0)] + [Text(f"  +{left} more row"
                                                   f"{'' if left == 1 else 's'} (a taller "
                                                   "terminal shows them)", style=DIM)]
    return lines + tables + notes


def render_stats(state: TuiState, width: int, height: int) -> Panel:
    return bordered(stats_lines(state.stats, width - 4, state.busy, max(height - 2, 0)),
                    "exit statistics", width, height)


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
    lines = device_lines(state.devices, width - 4) or [Text("(no devices)", style=DIM)]
    subtitle = "live" if state.busy else None
    return bordered(lines, "devices", width, height, subtitle=subtitle)


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
        line = Text(f"{view.address + offset:08x}  ", style=DIM)
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
        return bordered([Text("(no memory view)", style=DIM)], "memory", width, height)
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
                          style=DIM))
    subtitle = "g address · ↑↓ scroll"
    if view.note:
        subtitle = view.note
    return bordered(lines, title, width, height, subtitle=subtitle)
