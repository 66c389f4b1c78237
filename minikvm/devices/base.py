"""What every device model is: registers at offsets, an interrupt line, words.

A device knows nothing of KVM. The bus hands it an offset inside its own
window and a size; a device that does DMA is given a ``GuestMemory``; a device
that interrupts is given an :class:`InterruptLine` to raise and lower. Because
this project teaches, every device can also say in words what an access did
(:meth:`Device.describe`) and show its state as a plain dict
(:meth:`Device.state`): the trace, the TUI and the tests read those.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Protocol

__all__ = ["Device", "InterruptLine", "RecordingLine", "all_ones"]


def all_ones(size: int) -> int:
    """What a read of ``size`` bytes returns from a floating bus: every bit set."""
    return (1 << (8 * size)) - 1


class InterruptLine(Protocol):
    """An interrupt wire from a device to an interrupt controller."""

    def set_level(self, level: bool) -> None:
        """Drive the wire high (asserted) or low."""


class RecordingLine:
    """An interrupt line that only remembers: for tests and for machines
    without an interrupt controller. Keeps the last 1024 edges."""

    def __init__(self) -> None:
        self.level = False
        self.edges: deque[bool] = deque(maxlen=1024)

    def set_level(self, level: bool) -> None:
        level = bool(level)
        if level != self.level:
            self.edges.append(level)
        self.level = level


class Device:
    """Base class for a device on the port-I/O or MMIO bus.

    Subclasses override :meth:`read` and :meth:`write`; the defaults behave
    like nothing being there (reads float to all-ones, writes are dropped).
    ``offset`` is relative to the start of the device's window; ``size`` is
    1, 2, 4 or 8 bytes; values are unsigned integers of that size.
    """

    #: Short name shown in traces and the TUI ("debugcon", "uart0", ...).
    name = "device"

    def read(self, offset: int, size: int) -> int:
        return all_ones(size)

    def write(self, offset: int, size: int, value: int) -> None:
        return None

    def register_name(self, offset: int, is_write: bool) -> str:
        """The name of the register at ``offset`` (datasheet spelling)."""
        return f"+{offset:#x}"

    def describe(self, offset: int, size: int, is_write: bool, value: int) -> str:
        """One line saying what the access that just happened did.

        Called right after :meth:`read`/:meth:`write` with the value that was
        read or written, so the device may consult its current state.
        """
        register = self.register_name(offset, is_write)
        if is_write:
            return f"{register} write {value:#x}"
        return f"{register} read -> {value:#x}"

    def state(self) -> dict[str, Any]:
        """The device's state as plain data (ints, strings, lists, dicts)."""
        return {}
