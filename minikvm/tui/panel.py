"""The pieces every panel of the TUI is drawn with.

A frame is a set of bordered panels, each given a width and height by the
layout (:mod:`minikvm.tui.render`) and each deciding how much of its content
fits. :class:`Fit` hands a panel that size; :func:`fit_line` keeps a line on
one row (an ellipsis rather than a wrap, so the layout never shifts);
:func:`bordered` frames lines under a title. The few colours are named here
so that every panel uses the same ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from rich.console import Console, ConsoleOptions, RenderResult
from rich.panel import Panel
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


class Fit:
    """A renderable drawn by ``draw(width, height)`` with the size its
    layout region has, so a panel can choose how much to show."""

    def __init__(self, draw: Callable[[int, int], object]) -> None:
        self.draw = draw

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        height = options.height if options.height is not None else options.max_height
        yield self.draw(options.max_width, height)  # type: ignore[misc]


def fit_line(text: Text | str, width: int) -> Text:
    """``text`` on one row of ``width`` cells, cut with an ellipsis if longer."""
    line = Text(text) if isinstance(text, str) else text.copy()
    line.no_wrap = True
    line.overflow = "ellipsis"
    if line.cell_len > width:
        line.truncate(max(width, 1), overflow="ellipsis")
    return line


def bordered(lines: Iterable[Text], title: str, width: int, height: int,
             border: str = BORDER, subtitle: str | None = None) -> Panel:
    """``lines`` in a ``width`` x ``height`` box titled ``title``; what does
    not fit is left out (the caller chose the most telling lines first)."""
    inner = max(width - 4, 1)
    rows = [fit_line(line, inner) for line in lines][:max(height - 2, 0)]
    body = Text("\n").join(rows) if rows else Text("")
    return Panel(body, title=title, title_align="left", subtitle=subtitle,
                 subtitle_align="right", border_style=border, height=height, width=width,
                 padding=(0, 1))
