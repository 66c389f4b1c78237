"""Split virtqueues: how a driver hands buffers to a device (virtio 1.2 §2.7).

A split virtqueue is three areas of guest memory that the *driver* allocates
and tells the device about (QueueDesc, QueueDriver, QueueDevice):

* the **descriptor table**, ``size`` entries of 16 bytes: ``le64 addr,
  le32 len, le16 flags, le16 next``. A request is a *chain* of descriptors
  linked by ``next`` while ``VIRTQ_DESC_F_NEXT`` is set; each names one buffer
  the device may read, or (``VIRTQ_DESC_F_WRITE``) write;
* the **available ring** (driver area), written by the driver only:
  ``le16 flags, le16 idx, le16 ring[size], le16 used_event``. The driver puts
  the head index of each new chain in ``ring[idx % size]`` and then bumps
  ``idx``;
* the **used ring** (device area), written by the device only:
  ``le16 flags, le16 idx, {le32 id, le32 len} ring[size], le16 avail_event``.
  The device returns each finished chain there with the number of bytes it
  wrote.

Both ``idx`` fields are free-running 16-bit counters: the slot is
``idx % size`` and the number of new entries is ``(idx - last) mod 2**16``.

Everything in those areas belongs to a possibly hostile guest, so the walk
here is defensive: every descriptor is read once and then checked, ``next``
must be inside the table, a chain may have at most ``size`` buffers (which
also ends loops), every ``addr + len`` must fit in 64 bits and lie in guest
RAM, the total length is capped (:data:`MAX_CHAIN_BYTES`), readable buffers
must come before writable ones, and indirect tables follow §2.7.5.3. Any
violation raises :class:`VirtqueueError`; the transport then puts the device
in NEEDS_RESET -- the VMM itself carries on.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from minikvm.devices.base import DeviceStateError
from minikvm.devices.state import MAX_U16, MAX_U32, MAX_U64, SavedState
from minikvm.memory import GuestMemory

__all__ = [
    "Buffer",
    "Descriptor",
    "DescriptorChain",
    "MAX_CHAIN_BYTES",
    "SplitQueue",
    "VIRTQ_AVAIL_F_NO_INTERRUPT",
    "VIRTQ_DESC_F_INDIRECT",
    "VIRTQ_DESC_F_NEXT",
    "VIRTQ_DESC_F_WRITE",
    "VIRTQ_DESC_SIZE",
    "VIRTQ_MAX_SIZE",
    "VIRTQ_USED_ELEM_SIZE",
    "VIRTQ_USED_F_NO_NOTIFY",
    "VirtqueueError",
    "avail_ring_size",
    "desc_table_size",
    "used_ring_size",
    "vring_need_event",
]

#: The buffer continues in the descriptor named by ``next``.
VIRTQ_DESC_F_NEXT = 1
#: The buffer is device write-only (otherwise device read-only).
VIRTQ_DESC_F_WRITE = 2
#: The buffer holds a table of descriptors (§2.7.5.3).
VIRTQ_DESC_F_INDIRECT = 4
#: Avail ring flag: the driver would rather not be interrupted (no EVENT_IDX).
VIRTQ_AVAIL_F_NO_INTERRUPT = 1
#: Used ring flag: the device would rather not be kicked (no EVENT_IDX).
VIRTQ_USED_F_NO_NOTIFY = 1

VIRTQ_DESC_SIZE = 16
VIRTQ_USED_ELEM_SIZE = 8
#: The largest queue size a split queue can have (§2.7: at most 32768).
VIRTQ_MAX_SIZE = 32768
#: Our cap on the bytes one chain may describe. The spec forbids chains over
#: 2**32 bytes (§2.7.5.2); 16 MiB is far above what Linux sends (a virtio-blk
#: request is at most a few MiB) and keeps one request from pinning the VMM.
MAX_CHAIN_BYTES = 16 * 1024 * 1024

_DESCRIPTOR = struct.Struct("<QIHH")
_ADDRESS_LIMIT = 1 << 64


class VirtqueueError(Exception):
    """The driver broke a virtqueue rule; the device must be reset."""


def desc_table_size(size: int) -> int:
    """Bytes of a descriptor table of ``size`` entries (alignment 16)."""
    return VIRTQ_DESC_SIZE * size


def avail_ring_size(size: int) -> int:
    """Bytes of an available ring: flags, idx, ring[size], used_event (alignment 2)."""
    return 6 + 2 * size


def used_ring_size(size: int) -> int:
    """Bytes of a used ring: flags, idx, ring[size] of 8 bytes, avail_event (alignment 4)."""
    return 6 + VIRTQ_USED_ELEM_SIZE * size


def vring_need_event(event: int, new: int, old: int) -> bool:
    """Must the other side be notified? (§2.7.7, §2.7.10 with EVENT_IDX)

    Between two notification decisions the index moved from ``old`` to
    ``new``; the other side asked to hear about the moment the index passes
    ``event``. It did pass iff ``event`` lies in ``[old, new)``, computed
    modulo 2**16 so that wrap-around works.
    """
    return (new - event - 1) & 0xFFFF < (new - old) & 0xFFFF


@dataclass(frozen=True)
class Descriptor:
    """One 16-byte descriptor as read (once) from guest memory."""

    addr: int
    len: int
    flags: int
    next: int

    @classmethod
    def unpack(cls, raw: bytes) -> Descriptor:
        return cls(*_DESCRIPTOR.unpack(raw))

    def pack(self) -> bytes:
        return _DESCRIPTOR.pack(self.addr, self.len, self.flags, self.next)


@dataclass(frozen=True)
class Buffer:
    """A validated guest buffer: inside one RAM region, no wrap-around."""

    addr: int
    len: int
    writable: bool


def _pieces(buffers: tuple[Buffer, ...], offset: int, size: int) -> Iterator[tuple[int, int]]:
    """(addr, len) pieces covering bytes ``[offset, offset+size)`` of the
    concatenation of ``buffers`` (shorter if the buffers end first)."""
    for buffer in buffers:
        if size <= 0:
            return
        if offset >= buffer.len:
            offset -= buffer.len
            continue
        take = min(buffer.len - offset, size)
        yield buffer.addr + offset, take
        size -= take
        offset = 0


@dataclass(frozen=True)
class DescriptorChain:
    """A validated request: its head index and its buffers, readable first.

    Zero-length descriptors are dropped (they describe no bytes). The data
    helpers read only device-readable buffers and write only device-writable
    ones, so a device built on them cannot break §2.7.5.1 ("a device MUST
    NOT write to a device-readable buffer").
    """

    head: int
    buffers: tuple[Buffer, ...]
    memory: GuestMemory = field(repr=False, compare=False)
    #: True when the buffers came from an indirect table.
    indirect: bool = False

    @property
    def readable(self) -> tuple[Buffer, ...]:
        return tuple(b for b in self.buffers if not b.writable)

    @property
    def writable(self) -> tuple[Buffer, ...]:
        return tuple(b for b in self.buffers if b.writable)

    @property
    def readable_len(self) -> int:
        return sum(b.len for b in self.buffers if not b.writable)

    @property
    def writable_len(self) -> int:
        return sum(b.len for b in self.buffers if b.writable)

    def read(self, offset: int = 0, size: int | None = None) -> bytes:
        """Copy device-readable bytes ``[offset, offset+size)`` (all by default)."""
        if size is None:
            size = self.readable_len - offset
        return b"".join(self.memory.read(addr, length)
                        for addr, length in _pieces(self.readable, offset, size))

    def readable_views(self, offset: int, size: int) -> list[memoryview]:
        """Zero-copy views of device-readable bytes, e.g. for ``os.pwritev``."""
        return [self.memory.view(addr, length)
                for addr, length in _pieces(self.readable, offset, size)]

    def writable_views(self, offset: int, size: int) -> list[memoryview]:
        """Zero-copy views of device-writable bytes, e.g. for ``os.preadv``."""
        return [self.memory.view(addr, length)
                for addr, length in _pieces(self.writable, offset, size)]

    def write(self, data: bytes | bytearray | memoryview, offset: int = 0) -> int:
        """Scatter ``data`` into the device-writable bytes from ``offset``;
        returns how many bytes fitted."""
        data = memoryview(data).cast("B")
        done = 0
        for addr, length in _pieces(self.writable, offset, len(data)):
            self.memory.write(addr, data[done:done + length])
            done += length
        return done


class SplitQueue:
    """The device side of one split virtqueue.

    The transport fills in ``size`` and the three addresses from the
    driver's register writes, then calls :meth:`enable`. After that a device
    takes requests with :meth:`pop_chain` and returns them with
    :meth:`add_used`, and asks :meth:`needs_notification` whether the driver
    wants an interrupt for what was returned.
    """

    def __init__(self, memory: GuestMemory, max_size: int = 256,
                 max_chain_bytes: int = MAX_CHAIN_BYTES) -> None:
        if not 0 < max_size <= VIRTQ_MAX_SIZE or max_size & (max_size - 1):
            raise ValueError(f"queue max size {max_size} must be a power of two up to 32768")
        self.memory = memory
        self.max_size = max_size
        self.max_chain_bytes = max_chain_bytes
        self.reset()

    def reset(self) -> None:
        """Back to the state after a device reset (§2.4)."""
        self.size = self.max_size
        self.ready = False
        self.desc_table = 0
        self.avail_ring = 0
        self.used_ring = 0
        #: Our position in the available ring: the next entry to take.
        self.last_avail_idx = 0
        #: The used ring ``idx`` we publish.
        self.next_used_idx = 0
        #: ``next_used_idx`` when we last decided about an interrupt.
        self.signalled_used = 0
        self.event_idx = False
        self.indirect_desc = False
        self.chains_popped = 0

    # -- setup -------------------------------------------------------------

    def layout_problem(self) -> str | None:
        """Why the driver's size and addresses cannot be used, or None (§2.7)."""
        size = self.size
        if size == 0 or size > self.max_size or size & (size - 1):
            return f"queue size {size} is not a power of two in 1..{self.max_size}"
        areas = (("descriptor table", self.desc_table, desc_table_size(size), 16),
                 ("available ring", self.avail_ring, avail_ring_size(size), 2),
                 ("used ring", self.used_ring, used_ring_size(size), 4))
        for what, addr, length, align in areas:
            if addr % align:
                return f"{what} at {addr:#x} is not {align}-byte aligned"
            if not self.memory.contains(addr, length):
                return f"{what} {addr:#x}+{length:#x} is not inside guest RAM"
        return None

    def enable(self, event_idx: bool, indirect_desc: bool) -> None:
        """QueueReady=1: check the layout and start from index 0.

        Raises :class:`VirtqueueError` (and stays disabled) when the layout
        is unusable.
        """
        problem = self.layout_problem()
        if problem is not None:
            raise VirtqueueError(problem)
        self.event_idx = event_idx
        self.indirect_desc = indirect_desc
        self.last_avail_idx = 0
        self.next_used_idx = 0
        self.signalled_used = 0
        self.ready = True

    # -- taking requests -----------------------------------------------------

    def avail_idx(self) -> int:
        """The driver's available ``idx`` (read fresh from guest memory)."""
        return self.memory.read_u16(self.avail_ring + 2)

    def pending(self) -> int:
        """How many chains the driver has made available that we have not taken.

        More than ``size`` is impossible for a correct driver (it only has
        ``size`` descriptors) and is refused.
        """
        pending = (self.avail_idx() - self.last_avail_idx) & 0xFFFF
        if pending > self.size:
            raise VirtqueueError(
                f"available idx moved {pending} entries ahead, more than the queue size "
                f"{self.size}")
        return pending

    def pop_chain(self) -> DescriptorChain | None:
        """Take the next available chain, validated, or None if there is none."""
        if not self.ready or self.pending() == 0:
            return None
        slot = self.last_avail_idx % self.size
        head = self.memory.read_u16(self.avail_ring + 4 + 2 * slot)
        self.last_avail_idx = (self.last_avail_idx + 1) & 0xFFFF
        self.chains_popped += 1
        if head >= self.size:
            raise VirtqueueError(f"available ring names head {head}, past the table of "
                                 f"{self.size}")
        return self._walk(head)

    def _read_descriptor(self, table: int, index: int) -> Descriptor:
        return Descriptor.unpack(self.memory.read(table + VIRTQ_DESC_SIZE * index,
                                                  VIRTQ_DESC_SIZE))

    def _walk(self, head: int) -> DescriptorChain:
        """Follow a chain from ``head``; every rule broken raises VirtqueueError."""
        buffers: list[Buffer] = []
        total = 0
        seen_writable = False
        # A chain holds at most `size` buffers (§2.7.5.3.1: "a driver MUST NOT
        # create a descriptor chain longer than the Queue Size"), so a walk
        # reads at most size + 1 descriptors (one may point to an indirect
        # table). That bound is also what ends a loop.
        buffer_budget = self.size
        table, table_entries, index = self.desc_table, self.size, head
        in_indirect = False
        while True:
            desc = self._read_descriptor(table, index)  # read once, then only `desc`
            where = f"descriptor {index}" + (" of the indirect table" if in_indirect else "")
            if desc.flags & VIRTQ_DESC_F_INDIRECT:
                table_entries = self._check_indirect(desc, where, in_indirect)
                table, index, in_indirect = desc.addr, 0, True
                continue
            if buffer_budget == 0:
                raise VirtqueueError(
                    f"chain from head {head} has more than {self.size} buffers (a loop?)")
            buffer_budget -= 1
            writable = bool(desc.flags & VIRTQ_DESC_F_WRITE)
            if seen_writable and not writable:
                raise VirtqueueError(f"{where}: device-readable buffer after a writable one "
                                     "(§2.7.4.2)")
            seen_writable |= writable
            total += desc.len
            if total > self.max_chain_bytes:
                raise VirtqueueError(f"chain from head {head} describes more than "
                                     f"{self.max_chain_bytes} bytes")
            if desc.len:
                self._check_buffer(desc.addr, desc.len, where)
                buffers.append(Buffer(desc.addr, desc.len, writable))
            if not desc.flags & VIRTQ_DESC_F_NEXT:
                break
            if desc.next >= table_entries:
                raise VirtqueueError(f"{where}: next {desc.next} is past the table of "
                                     f"{table_entries}")
            index = desc.next
        return DescriptorChain(head, tuple(buffers), self.memory, in_indirect)

    def _check_indirect(self, desc: Descriptor, where: str, in_indirect: bool) -> int:
        """Validate a descriptor that points to an indirect table; returns its entries."""
        if not self.indirect_desc:
            raise VirtqueueError(f"{where}: INDIRECT without VIRTIO_RING_F_INDIRECT_DESC")
        if in_indirect:
            raise VirtqueueError(f"{where}: an indirect table inside an indirect table")
        if desc.flags & VIRTQ_DESC_F_NEXT:
            raise VirtqueueError(f"{where}: INDIRECT together with NEXT")
        if desc.len == 0 or desc.len % VIRTQ_DESC_SIZE:
            raise VirtqueueError(f"{where}: indirect table length {desc.len} is not a "
                                 "non-zero multiple of 16")
        entries = desc.len // VIRTQ_DESC_SIZE
        if entries > self.size:
            raise VirtqueueError(f"{where}: indirect table of {entries} entries is longer "
                                 f"than the queue size {self.size}")
        self._check_buffer(desc.addr, desc.len, where + " (indirect table)")
        return entries

    def _check_buffer(self, addr: int, length: int, where: str) -> None:
        if addr + length > _ADDRESS_LIMIT:
            raise VirtqueueError(f"{where}: {addr:#x}+{length:#x} wraps past 2**64")
        if not self.memory.contains(addr, length):
            raise VirtqueueError(f"{where}: {addr:#x}+{length:#x} is not inside guest RAM")

    # -- returning requests --------------------------------------------------

    def add_used(self, head: int, written: int) -> None:
        """Return chain ``head`` with ``written`` bytes written (§2.7.8).

        The element is written before ``idx`` is bumped: the driver reads
        ``idx`` first and must find a complete element behind it.
        """
        slot = self.next_used_idx % self.size
        element = self.used_ring + 4 + VIRTQ_USED_ELEM_SIZE * slot
        self.memory.write_u32(element, head)
        self.memory.write_u32(element + 4, written)
        self.next_used_idx = (self.next_used_idx + 1) & 0xFFFF
        self.memory.write_u16(self.used_ring + 2, self.next_used_idx)

    def set_avail_event(self) -> None:
        """With EVENT_IDX, ask to be kicked for the next chain made available.

        avail_event tells the driver "notify me when your idx passes this"
        (§2.7.10); setting it to our position means "kick me for the next
        one". Without it an EVENT_IDX driver would almost never kick.
        """
        if self.event_idx:
            self.memory.write_u16(self.used_ring + 4 + VIRTQ_USED_ELEM_SIZE * self.size,
                                  self.last_avail_idx)

    def needs_notification(self) -> bool:
        """Does the driver want an interrupt for the chains used since last time?

        Without EVENT_IDX: unless it set VIRTQ_AVAIL_F_NO_INTERRUPT. With
        EVENT_IDX: if the used idx passed ``used_event`` (§2.7.7).
        """
        if self.event_idx:
            used_event = self.memory.read_u16(self.avail_ring + 4 + 2 * self.size)
            old, self.signalled_used = self.signalled_used, self.next_used_idx
            return vring_need_event(used_event, self.next_used_idx, old)
        flags = self.memory.read_u16(self.avail_ring)
        return not flags & VIRTQ_AVAIL_F_NO_INTERRUPT

    # -- save and restore ------------------------------------------------------

    def save(self) -> dict[str, Any]:
        """What the driver set up (size, ready, the three addresses), the
        device's positions in both rings and the notification bookkeeping.
        ``max_size`` is saved to be checked: it is the device's, not the
        driver's. The rings themselves live in guest RAM, saved with it."""
        return {"max_size": self.max_size, "size": self.size, "ready": self.ready,
                "desc_table": self.desc_table, "avail_ring": self.avail_ring,
                "used_ring": self.used_ring, "last_avail_idx": self.last_avail_idx,
                "used_idx": self.next_used_idx, "signalled_used": self.signalled_used,
                "event_idx": self.event_idx, "indirect_desc": self.indirect_desc,
                "chains_popped": self.chains_popped}

    def check_state(self, state: Any, device: str = "virtqueue") -> None:
        """Raise DeviceStateError unless :meth:`restore` would take ``state``.

        A queue saved as ready must have a layout :meth:`enable` would have
        accepted in *this* guest memory, so that a restored device never
        walks rings outside RAM.
        """
        fields = SavedState(state, device, self.save().keys())
        fields.integer("max_size", self.max_size, self.max_size)
        fields.integer("size", 0, MAX_U32)  # QueueNum takes any word
        for key in ("desc_table", "avail_ring", "used_ring"):
            fields.integer(key, 0, MAX_U64)
        for key in ("last_avail_idx", "used_idx", "signalled_used"):
            fields.integer(key, 0, MAX_U16)
        for key in ("ready", "event_idx", "indirect_desc"):
            fields.boolean(key)
        fields.integer("chains_popped", 0, MAX_U64)
        if state["ready"]:
            scratch = SplitQueue(self.memory, self.max_size, self.max_chain_bytes)
            scratch._assign(state)
            problem = scratch.layout_problem()
            if problem is not None:
                raise DeviceStateError(f"{device}: saved as ready, but {problem}")

    def restore(self, state: dict[str, Any], device: str = "virtqueue") -> None:
        self.check_state(state, device)
        self._assign(state)

    def _assign(self, state: dict[str, Any]) -> None:
        self.size, self.ready = state["size"], state["ready"]
        self.desc_table, self.avail_ring = state["desc_table"], state["avail_ring"]
        self.used_ring = state["used_ring"]
        self.last_avail_idx, self.next_used_idx = state["last_avail_idx"], state["used_idx"]
        self.signalled_used = state["signalled_used"]
        self.event_idx, self.indirect_desc = state["event_idx"], state["indirect_desc"]
        self.chains_popped = state["chains_popped"]

    def state(self) -> dict[str, Any]:
        return {
            "max_size": self.max_size,
            "size": self.size,
            "ready": self.ready,
            "desc_table": self.desc_table,
            "avail_ring": self.avail_ring,
            "used_ring": self.used_ring,
            "last_avail_idx": self.last_avail_idx,
            "used_idx": self.next_used_idx,
            "event_idx": self.event_idx,
            "indirect_desc": self.indirect_desc,
            "chains_popped": self.chains_popped,
        }
