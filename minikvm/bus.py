"""Address maps that route port-I/O and MMIO accesses to devices.

On a PC, a CPU access to an I/O port or to an address that is not RAM goes
out on a bus and whichever device decodes that address answers. Under KVM
such an access becomes a VM exit, and the VMM plays the bus: it looks the
address up here and calls the device with an offset inside the device's own
window. Two devices may not decode the same address, so overlapping
registrations are refused. An access nobody decodes is recorded (guests probe
for hardware this way) and, as on a real floating bus, reads all-ones.

The bus sits below the devices (``minikvm/devices/`` imports from here, never
the other way): it states in :class:`BusDevice` what it needs of whatever
answers an address, and any object with those methods may be registered.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterator
from typing import NamedTuple, Protocol, runtime_checkable

from minikvm.record import Record

__all__ = ["Access", "Bus", "BusDevice", "BusError", "Mapping", "UnclaimedAccess", "all_ones"]

#: Addresses whose lookup the bus remembers (a guest that sweeps MMIO
#: addresses must not grow the cache without bound: it is emptied when full).
_LOOKUP_CACHE_LIMIT = 4096

#: What the lookup cache answers for an address it has not seen (``None``
#: is a cached answer: nobody decodes that address).
_NOT_CACHED = object()

#: ``all_ones(size)`` for the sizes of an access (1-8 bytes; KVM reports no
#: others), by index: a look-up instead of a shift and a subtraction on the
#: fast paths.
_MASKS = tuple((1 << (8 * size)) - 1 for size in range(9))


def all_ones(size: int) -> int:
    """What a read of ``size`` bytes returns from a floating bus: every bit set.

    Nothing drives the data lines, the pull-up resistors win, and the CPU
    reads 0xFF per byte -- which is how a guest probing for absent hardware
    learns that it is absent.
    """
    return (1 << (8 * size)) - 1


@runtime_checkable
class BusDevice(Protocol):
    """What the bus needs of a device: to be called with an offset inside its
    own window, and to say in words what an access did (for traces).

    :class:`minikvm.devices.base.Device` implements it with defaults that
    behave like nothing being there.
    """

    #: Short name shown in traces and the TUI ("debugcon", "com1", ...).
    name: str

    def read(self, offset: int, size: int) -> int:
        """The value of a ``size``-byte read at ``offset`` (1, 2, 4 or 8 bytes)."""
        ...

    def write(self, offset: int, size: int, value: int) -> None:
        """A ``size``-byte write of ``value`` at ``offset``."""
        ...

    def register_name(self, offset: int, is_write: bool) -> str:
        """The register at ``offset``, spelled as the datasheet or spec does."""
        ...

    def describe(self, offset: int, size: int, is_write: bool, value: int) -> str:
        """One line on what the access that just happened did."""
        ...


class BusError(Exception):
    """A registration that would overlap another, or an empty range."""


# The two records below are written out rather than made with @dataclass:
# every command imports the bus, and a dataclass costs ~1 ms to create at
# import (its methods are compiled from source), more than the bus itself.

class Mapping(NamedTuple):
    """A device decoding ``[base, base + size)`` (immutable, compared by value)."""

    base: int
    size: int
    device: BusDevice

    @property
    def end(self) -> int:
        return self.base + self.size


class Access(Record):
    """One access that went over a bus, with its meaning when asked for.

    Made for every exit someone listens to; ``register`` and
    ``description`` are filled in afterwards when words are asked for.
    A :class:`~minikvm.record.Record`: ``repr`` and ``==`` from its fields,
    not hashable.
    """

    __slots__ = ("space", "address", "size", "is_write", "value", "device", "offset",
                 "register", "description")

    def __init__(self, space: str, address: int, size: int, is_write: bool, value: int,
                 device: BusDevice | None = None, offset: int = 0, register: str = "",
                 description: str = "") -> None:
        self.space = space   # "pio" or "mmio"
        self.address = address
        self.size = size
        self.is_write = is_write
        self.value = value
        self.device = device
        self.offset = offset
        self.register = register
        self.description = description

    @property
    def claimed(self) -> bool:
        return self.device is not None

    @property
    def device_name(self) -> str:
        return self.device.name if self.device is not None else "unclaimed"


class UnclaimedAccess(NamedTuple):
    """An access no device decoded.

    The bus keeps plain tuples and makes these only when the history is
    read (:attr:`Bus.unclaimed`): a probing guest may make millions of
    unclaimed accesses, and a NamedTuple's constructor is a Python function
    call on every one of them.
    """

    address: int
    size: int
    is_write: bool
    value: int


class Bus:
    """A sorted map of non-overlapping address ranges to devices.

    Lookups are a binary search over the sorted bases; the answer for each
    address is remembered in a small cache, so the hot path of a VMM (the
    same few ports again and again) is one dictionary lookup.
    """

    def __init__(self, space: str, unclaimed_history: int = 256) -> None:
        self.space = space
        self._bases: list[int] = []
        self._mappings: list[Mapping] = []
        self._cache: dict[int, Mapping | None] = {}
        # The most recent unclaimed accesses as plain (address, size,
        # is_write, value) tuples (bounded: a guest may probe forever).
        self._unclaimed: deque[tuple[int, int, bool, int]] = deque(maxlen=unclaimed_history)
        #: How many accesses no device decoded, ever.
        self.unclaimed_count = 0

    @property
    def unclaimed(self) -> tuple[UnclaimedAccess, ...]:
        """The most recent unclaimed accesses, oldest first (a snapshot)."""
        return tuple(map(UnclaimedAccess._make, self._unclaimed))

    @property
    def mappings(self) -> tuple[Mapping, ...]:
        """Every registration, in address order."""
        return tuple(self._mappings)

    def __iter__(self) -> Iterator[Mapping]:
        """The registrations in address order (a snapshot: registering while
        iterating is safe)."""
        return iter(self.mappings)

    def register(self, base: int, size: int, device: BusDevice) -> Mapping:
        """Let ``device`` decode ``[base, base + size)``."""
        if size <= 0 or base < 0:
            raise BusError(f"{self.space}: bad range {base:#x}+{size:#x} for {device.name}")
        index = bisect.bisect_right(self._bases, base)
        neighbours = self._mappings[max(index - 1, 0):index + 1]
        for other in neighbours:
            if base < other.end and other.base < base + size:
                raise BusError(
                    f"{self.space}: {device.name} at {base:#x}-{base + size - 1:#x} overlaps "
                    f"{other.device.name} at {other.base:#x}-{other.end - 1:#x}"
                )
        mapping = Mapping(base, size, device)
        self._bases.insert(index, base)
        self._mappings.insert(index, mapping)
        self._cache.clear()
        return mapping

    def find(self, address: int) -> Mapping | None:
        """The mapping that decodes ``address``, or None."""
        try:
            return self._cache[address]
        except KeyError:
            pass
        found = None
        index = bisect.bisect_right(self._bases, address) - 1
        if index >= 0:
            mapping = self._mappings[index]
            if address < mapping.end:
                found = mapping
        if len(self._cache) >= _LOOKUP_CACHE_LIMIT:
            self._cache.clear()
        self._cache[address] = found
        return found

    def write_value(self, address: int, size: int, value: int) -> Mapping | None:
        """A write without the :class:`Access` record: what a VMM does when
        nobody listens (the machine's fast path). Same effect as :meth:`write`;
        ``size`` is 1-8 bytes, as KVM reports accesses.

        Returns the mapping the write went to (None: unclaimed): with the
        arguments, what the record needs, should someone ask for it later
        (:class:`~minikvm.core.events.PioEvent`)."""
        try:
            mapping = self._cache[address]   # a subscript: cheaper than get() here
        except KeyError:
            mapping = self.find(address)
        if mapping is None:
            self.unclaimed_count += 1
            self._unclaimed.append((address, size, True, value & _MASKS[size]))
            return None
        mapping.device.write(address - mapping.base, size, value & _MASKS[size])
        return mapping

    def read_value(self, address: int, size: int) -> int:
        """A read without the :class:`Access` record (see :meth:`write_value`)."""
        return self.read_mapped(address, size)[1]

    def read_mapped(self, address: int, size: int) -> tuple[Mapping | None, int]:
        """A read without the :class:`Access` record: the mapping it went to
        (None: unclaimed) and the value read (see :meth:`write_value`)."""
        try:
            mapping = self._cache[address]
        except KeyError:
            mapping = self.find(address)
        if mapping is None:
            value = _MASKS[size]   # a floating bus: all ones
            self.unclaimed_count += 1
            self._unclaimed.append((address, size, False, value))
            return None, value
        return mapping, mapping.device.read(address - mapping.base, size) & _MASKS[size]

    def read(self, address: int, size: int, explain: bool = False) -> Access:
        """Perform a read; ``explain`` also asks the device for words."""
        mapping = self._cache.get(address, _NOT_CACHED)
        if mapping is _NOT_CACHED:
            mapping = self.find(address)
        if mapping is None:
            value = (1 << (8 * size)) - 1
            access = Access(self.space, address, size, False, value)
            self.unclaimed_count += 1
            self._unclaimed.append((address, size, False, value))
            if explain:
                self._describe_unclaimed(access)
            return access
        offset = address - mapping.base
        device = mapping.device
        value = device.read(offset, size) & ((1 << (8 * size)) - 1)
        access = Access(self.space, address, size, False, value, device, offset)
        if explain:
            access.register = device.register_name(offset, False)
            access.description = device.describe(offset, size, False, value)
        return access

    def write(self, address: int, size: int, value: int, explain: bool = False) -> Access:
        """Perform a write; ``explain`` also asks the device for words."""
        value &= (1 << (8 * size)) - 1
        mapping = self._cache.get(address, _NOT_CACHED)
        if mapping is _NOT_CACHED:
            mapping = self.find(address)
        if mapping is None:
            access = Access(self.space, address, size, True, value)
            self.unclaimed_count += 1
            self._unclaimed.append((address, size, True, value))
            if explain:
                self._describe_unclaimed(access)
            return access
        offset = address - mapping.base
        device = mapping.device
        device.write(offset, size, value)
        access = Access(self.space, address, size, True, value, device, offset)
        if explain:
            access.register = device.register_name(offset, True)
            access.description = device.describe(offset, size, True, value)
        return access

    def _describe_unclaimed(self, access: Access) -> None:
        what = "port" if self.space == "pio" else "address"
        if access.is_write:
            access.description = (
                f"no device at {what} {access.address:#x}: write of {access.value:#x} dropped"
            )
        else:
            access.description = (
                f"no device at {what} {access.address:#x}: read floats to {access.value:#x}"
            )
