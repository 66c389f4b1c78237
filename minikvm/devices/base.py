"""What every device model is: registers at offsets, an interrupt line, words.

A device knows nothing of KVM. The bus hands it an offset inside its own
window and a size; a device that does DMA is given a ``GuestMemory``; a device
that interrupts is given an :class:`InterruptLine` to raise and lower. Because
this project teaches, every device can also say in words what an access did
(:meth:`Device.describe`), show its state as a plain dict (:meth:`Device.state`:
the trace and the tests read it) and as rows a person reads
(:meth:`Device.state_rows`: the TUI's device panel shows them, without
knowing which devices a machine has).

Apart from those views, a device can *save* everything that decides its
future behaviour as plain JSON-able data and *restore* it later
(:meth:`Device.save`, :meth:`Device.restore`): a snapshot of the machine, and
reverse execution, are built on that. A snapshot file may come from anywhere,
so :meth:`Device.restore` checks every field first (:meth:`Device.check_state`)
and changes nothing when one is wrong -- it raises :class:`DeviceStateError`.

The bus is the layer below: :class:`Device` is one way to be the
:class:`~minikvm.bus.BusDevice` it asks for.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Protocol

from minikvm.bus import all_ones

__all__ = ["Device", "DeviceStateError", "InterruptLine", "RecordingLine", "Row", "all_ones",
           "plain_rows"]

#: One row of a device panel: (label, value), both already words.
Row = tuple[str, str]


def plain_rows(state: dict[str, Any]) -> list[Row]:
    """The scalar entries of a ``state()`` dict as rows, unchanged: the
    fallback for a device that has not chosen better words."""
    return [(key, "-" if value is None else str(value)) for key, value in state.items()
            if value is None or isinstance(value, (bool, int, float, str))]


class DeviceStateError(ValueError):
    """A saved device state that cannot be restored: a field is missing,
    unknown, of the wrong type or out of range, or the state belongs to a
    different device. The message is one line naming the device and field."""


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
    #: What the device is, in a few words, for panel titles ("16550A UART").
    model = "device"
    #: Fields of :meth:`save` that change with host time while nothing
    #: happens (a free-running timer's count): left out when states are
    #: compared (``save_devices(..., clocks=False)``).
    clock_fields: tuple[str, ...] = ()

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

    def state_rows(self) -> list[Row]:
        """The state as (label, value) rows for a person: bits named, units
        given. Reads plain Python state only, so a panel may call it while
        the guest runs. The default lists :meth:`state`'s scalar entries."""
        return plain_rows(self.state())

    # -- save and restore (snapshots) ------------------------------------------

    def save(self) -> dict[str, Any]:
        """Everything that decides the device's future behaviour, as plain
        JSON-serialisable data (bytes as lowercase hex). A device without
        state saves ``{}``; every stateful device overrides this."""
        return {}

    def check_state(self, state: Any) -> None:
        """Raise :class:`DeviceStateError` unless :meth:`restore` would accept
        ``state``. Changes nothing, so a machine can check every device
        before restoring any."""
        if state != {}:
            raise DeviceStateError(f"{self.name}: a device without state restores only {{}}")

    def restore(self, state: dict[str, Any]) -> None:
        """Go back to a saved state. A stateful device overrides this: it
        checks the state whole (:meth:`check_state`), then assigns, then
        drives its interrupt line (if it has one) to the restored level,
        so that the wire matches the registers."""
        self.check_state(state)
