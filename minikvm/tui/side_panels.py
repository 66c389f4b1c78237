"""The side panels: the exit log, exit statistics, devices and memory.

On a narrow terminal they take turns in one slot (``v`` cycles); wider ones
show several at once. Each is drawn from the snapshot alone: the exit log
from :class:`~minikvm.tui.state.ExitRow` lines, the statistics from counters
and a timeline, the device panel from the rows each device wrote about
itself, the memory panel from bytes read at the last stop.
"""

from __future__ import annotations

from collections.abc import Iterable

from rich.panel import Panel
from rich.text import Text

from minikvm.tui.panel import DIM, bordered
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
    text.append(f"{row.seq:>{seq}} ", style=DIM)
    text.append(f"{row.reason:<{reason}} ", style="bold cyan" if newest else "cyan")
    rip = "" if row.rip is None else f"{row.rip:#x}"
    text.append(f"{rip:>{rip_width}} ", style=DIM)
    if where:
        text.append(f"{row.where:<{where}} ", style=DIM)
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
        lines.append(Text("(no exits yet: n runs to the first one)", style=DIM))
    title = "VM exits (newest last)"
    return bordered(lines, title, width, height)


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
    lines.append(Text(f"exits per {stats.interval:g} s while running:", style=DIM))
    lines.append(Text(timeline or "(not run yet: c continues)", style="green" if timeline else DIM))
    lines.append(Text("by reason", style="bold"))
    lines += _bar_rows(stats.by_reason, stats.total, inner)
    if stats.by_device:
        lines.append(Text("by device", style="bold"))
        lines += _bar_rows(stats.by_device, stats.total, inner)
    if stats.kicks:
        lines.append(Text(f"kicks {stats.kicks:,}: KVM_RUN cut short by a signal (pause, "
                          "halt check); not in the log", style=DIM))
    return lines


def render_stats(state: TuiState, width: int, height: int) -> Panel:
    return bordered(stats_lines(state.stats, width - 4, state.busy), "exit statistics",
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
