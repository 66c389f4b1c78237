"""The pieces every panel of the TUI is drawn with.

A frame is a set of bordered panels, each given a width and height by the
layout (:mod:`minikvm.tui.render`) and each deciding how much of its content
fits. :class:`Fit` hands a panel that size; :func:`fit_line` keeps a line on
one row (an ellipsis rather than a wrap, so the layout never shifts) and
:func:`wrap_line` breaks a sentence that must be read whole into rows of a
width; :func:`bordered` frames lines under a title. The few colours are
named here so that every panel uses the same ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from rich.cells import get_character_cell_size
from rich.console import Console, ConsoleOptions, RenderResult
from rich.panel import Panel
from rich.segment import Segment
from rich.text import Text

__all__ = [
    "BORDER",
    "CHANGED",
    "DIM",
    "FOCUS_BORDER",
    "MEDIUM_WIDTH",
    "WIDE_HEIGHT",
    "WIDE_WIDTH",
    "Fit",
    "bordered",
    "fit_line",
    "wrap_line",
]

#: Where the layout changes (see :func:`minikvm.tui.render.layout_tier`):
#: from 100 columns the exit log gets its own panel; from 150x40 every panel shows.
MEDIUM_WIDTH = 100
WIDE_WIDTH = 150
WIDE_HEIGHT = 40

#: A value that changed since the last stop.
CHANGED = "bold black on yellow"
#: Labels and hints: present, but not what the eye should land on.
DIM = "grey50"
#: The border of a panel, and of the one that has the keyboard.
BORDER = "blue"
FOCUS_BORDER = "bold bright_cyan"


#: The lines each layout slot drew last: slot name -> (inputs, options, lines).
#: One entry per slot, so the memo never grows past the panels of a screen.
_DRAWN: dict[str, tuple[object, ConsoleOptions, list[list[Segment]]]] = {}


class Fit:
    """A renderable drawn by ``draw(width, height)`` with the size its
    layout region has, so a panel can choose how much to show.

    Given ``slot`` (the layout region's name) and ``inputs`` (everything
    ``draw`` reads, compared with ``==``), the panel's rendered lines are
    kept and handed out again while the inputs and the region's size and
    options stay the same. A frame is drawn ten times a second while the
    guest runs, and holds the GIL the vCPU thread needs meanwhile; most
    panels (the registers and listing of the last stop, a quiet console)
    do not change between those frames, and rich's layout of a panel --
    measuring and cropping every line -- is most of a frame's cost. The
    lines are rich ``Segment`` tuples, immutable, so sharing them is safe;
    what is drawn is exactly what ``draw`` would draw (the default theme's
    styles do not depend on the console).
    """

    def __init__(self, draw: Callable[[int, int], object], slot: str | None = None,
                 inputs: object = None) -> None:
        self.draw = draw
        self.slot = slot
        self.inputs = inputs

    def _draw(self, options: ConsoleOptions) -> object:
        height = options.height if options.height is not None else options.max_height
        return self.draw(options.max_width, height)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        if self.slot is None:
            yield self._draw(options)  # type: ignore[misc]
            return
        kept = _DRAWN.get(self.slot)
        if kept is not None and kept[1] == options and kept[0] == self.inputs:
            lines = kept[2]
        else:
            lines = console.render_lines(self._draw(options), options)  # type: ignore[arg-type]
            _DRAWN[self.slot] = (self.inputs, options.copy(), lines)
        newline = Segment.line()
        for line in lines:
            yield from line
            yield newline


def fit_line(text: Text | str, width: int) -> Text:
    """``text`` on one row of ``width`` cells, cut with an ellipsis if longer."""
    line = Text(text) if isinstance(text, str) else text.copy()
    line.no_wrap = True
    line.overflow = "ellipsis"
    if line.cell_len > width:
        line.truncate(max(width, 1), overflow="ellipsis")
    return line


def _break_at(plain: str, start: int, room: int) -> tuple[int, int]:
    """Where the row that starts at ``plain[start]`` ends (exclusive) and
    where the next one starts: at the last space that fits ``room`` cells,
    else (one long word) at the last character that fits."""
    rest = plain[start:start + room + 1]
    if rest.isascii() and rest.isprintable():
        # One cell a character (the exit log's usual text): no need to
        # measure them one by one.
        end = min(start + max(room, 0), len(plain))
        return _break_before(plain, start, end)
    cells = 0
    end = start
    while end < len(plain):
        width = get_character_cell_size(plain[end])
        if cells + width > room:
            break
        cells += width
        end += 1
    return _break_before(plain, start, end)


def _break_before(plain: str, start: int, end: int) -> tuple[int, int]:
    """:func:`_break_at` once ``plain[start:end]`` is known to fit."""
    if end >= len(plain):
        return end, end
    space = plain.rfind(" ", start, end + 1)
    if space > start:
        following = space
        while following < len(plain) and plain[following] == " ":
            following += 1
        return space, following
    return max(end, start + 1), max(end, start + 1)


def wrap_line(text: Text | str, width: int, indent: int = 0,
              max_rows: int | None = None) -> list[Text]:
    """``text`` broken at spaces into rows of ``width`` cells, styles kept.

    Rows after the first start with ``indent`` spaces (a hanging indent:
    continuation rows sit under the column they continue). With
    ``max_rows`` the last row allowed ends in an ellipsis when more was left.
    """
    line = Text(text) if isinstance(text, str) else text.copy()
    width = max(width, 1)
    indent = indent if 0 <= indent <= width - 8 else 0
    plain = line.plain
    if len(plain) <= width and plain.isascii() and plain.isprintable():
        line.rstrip()                 # one row, of one cell a character
        return [line]
    # Where each row starts and ends first, then one divide of the text
    # into all of them (slicing a Text divides the whole of it each time).
    spans: list[tuple[int, int]] = []
    start = 0
    rest: int | None = None
    while True:
        room = width if not spans else width - indent
        end, following = _break_at(plain, start, room)
        spans.append((start, end))
        start = following
        if start >= len(plain):
            break
        if max_rows is not None and len(spans) >= max_rows:
            rest = start
            break
    offsets = [offset for span in spans for offset in span]
    pieces = line.divide(offsets if rest is None else [*offsets, rest])
    rows: list[Text] = []
    for i in range(len(spans)):
        row = pieces[2 * i + 1]
        row.rstrip()
        if i and indent:
            row = Text(" " * indent) + row
        rows.append(row)
    if rest is not None:
        # No room for the rest: the last row shows how it goes on, cut.
        rows[-1] = fit_line(rows[-1] + Text(" ") + pieces[-1], width)
    return rows


def bordered(lines: Iterable[Text], title: str, width: int, height: int,
             border: str = BORDER, subtitle: str | None = None) -> Panel:
    """``lines`` in a ``width`` x ``height`` box titled ``title``; what does
    not fit is left out (the caller chose the most telling lines first)."""
    inner = max(width - 4, 1)
    rows = [fit_line(line, inner) for line in lines][:max(height - 2, 0)]
    body = Text("\n").join(rows) if rows else Text("")
    if width >= 5:
        # Every row already fits the panel (fit_line): rich need not look
        # for places to wrap them, which is most of drawing a panel's text.
        body.no_wrap = True
    return Panel(body, title=title, title_align="left", subtitle=subtitle,
                 subtitle_align="right", border_style=border, height=height, width=width,
                 padding=(0, 1))
