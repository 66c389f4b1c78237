"""A driver-side mock: plays the guest's virtio driver against a transport.

Tests, lessons and benchmarks need a *driver*: something that negotiates
through the MMIO registers, lays out descriptor tables and rings in guest
memory, posts requests and reads completions, exactly as a guest kernel
does. (rust-vmm's virtio-queue ships the same idea as ``mock.rs``.)

* :class:`GuestAllocator` hands out guest-physical memory (a bump allocator).
* :class:`VirtqueueDriver` is the driver half of one split queue: it owns
  the free descriptors, adds direct or indirect chains, publishes them in
  the available ring and collects used elements -- plus raw helpers that
  write *any* descriptor or index, for hostile tests.
* :class:`MockDriver` does the device initialisation of virtio 1.2 §3.1.1
  and §4.2.3 through the transport's registers.

The mock trusts nothing it reads back, but it does not defend against the
device: it is test code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from minikvm.devices.base import RecordingLine
from minikvm.devices.virtio.blk import blk_request_header
from minikvm.devices.virtio.device import VirtioDevice
from minikvm.devices.virtio.features import (
    VIRTIO_RING_F_EVENT_IDX,
    has_feature,
)
from minikvm.devices.virtio.mmio import (
    VIRTIO_MMIO_CONFIG,
    VIRTIO_MMIO_DEVICE_FEATURES,
    VIRTIO_MMIO_DEVICE_FEATURES_SEL,
    VIRTIO_MMIO_DEVICE_ID,
    VIRTIO_MMIO_DRIVER_FEATURES,
    VIRTIO_MMIO_DRIVER_FEATURES_SEL,
    VIRTIO_MMIO_INTERRUPT_ACK,
    VIRTIO_MMIO_INTERRUPT_STATUS,
    VIRTIO_MMIO_MAGIC,
    VIRTIO_MMIO_MAGIC_VALUE,
    VIRTIO_MMIO_QUEUE_AVAIL_HIGH,
    VIRTIO_MMIO_QUEUE_AVAIL_LOW,
    VIRTIO_MMIO_QUEUE_DESC_HIGH,
    VIRTIO_MMIO_QUEUE_DESC_LOW,
    VIRTIO_MMIO_QUEUE_NOTIFY,
    VIRTIO_MMIO_QUEUE_NUM,
    VIRTIO_MMIO_QUEUE_NUM_MAX,
    VIRTIO_MMIO_QUEUE_READY,
    VIRTIO_MMIO_QUEUE_SEL,
    VIRTIO_MMIO_QUEUE_USED_HIGH,
    VIRTIO_MMIO_QUEUE_USED_LOW,
    VIRTIO_MMIO_STATUS,
    VIRTIO_MMIO_VERSION,
    VIRTIO_MMIO_VERSION_2,
    VirtioMmioTransport,
)
from minikvm.devices.virtio.queue import (
    MAX_CHAIN_BYTES,
    VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
    VIRTQ_DESC_SIZE,
    VIRTQ_USED_ELEM_SIZE,
    Descriptor,
    avail_ring_size,
    desc_table_size,
    used_ring_size,
    vring_need_event,
)
from minikvm.devices.virtio.status import DeviceStatus
from minikvm.memory import GuestMemory

__all__ = [
    "BlkRequest",
    "GuestAllocator",
    "MockDevice",
    "MockDriver",
    "MockDriverError",
    "UsedElement",
    "VirtqueueDriver",
    "mock_device",
]


class MockDriverError(Exception):
    """The device did not behave as a driver expects (or the mock ran out)."""


class GuestAllocator:
    """Bump allocation of guest-physical memory in ``[base, end)``."""

    def __init__(self, memory: GuestMemory, base: int = 0x1000, end: int | None = None) -> None:
        self.memory = memory
        self.next = base
        self.end = end if end is not None else memory.size

    def alloc(self, size: int, align: int = 16, zero: bool = True) -> int:
        addr = -(-self.next // align) * align
        if addr + size > self.end:
            raise MockDriverError(f"guest allocator exhausted ({size} bytes at {addr:#x})")
        self.next = addr + size
        if zero and size:
            self.memory.fill(addr, size)
        return addr


@dataclass(frozen=True)
class UsedElement:
    """One entry the device put in the used ring."""

    id: int
    len: int


class VirtqueueDriver:
    """The driver half of one split virtqueue laid out in guest memory."""

    def __init__(self, memory: GuestMemory, size: int, desc_table: int, avail_ring: int,
                 used_ring: int, event_idx: bool = False) -> None:
        self.memory = memory
        self.size = size
        self.desc_table = desc_table
        self.avail_ring = avail_ring
        self.used_ring = used_ring
        self.event_idx = event_idx
        self.avail_idx = 0
        self.last_used_idx = 0
        self._free = list(range(size))
        self._chains: dict[int, list[int]] = {}

    @classmethod
    def allocate(cls, memory: GuestMemory, allocator: GuestAllocator, size: int,
                 event_idx: bool = False) -> VirtqueueDriver:
        """Allocate and zero the three areas with the spec's alignments (§2.7)."""
        desc = allocator.alloc(desc_table_size(size), 16)
        avail = allocator.alloc(avail_ring_size(size), 2)
        used = allocator.alloc(used_ring_size(size), 4)
        return cls(memory, size, desc, avail, used, event_idx)

    # -- raw access (also for hostile tests) -----------------------------------

    def write_descriptor(self, index: int, addr: int, length: int, flags: int = 0,
                         next: int = 0) -> None:
        """Write descriptor ``index`` of the table, whatever it says."""
        self.memory.write(self.desc_table + VIRTQ_DESC_SIZE * index,
                          Descriptor(addr, length, flags, next).pack())

    def write_indirect_table(self, addr: int, descriptors: Sequence[Descriptor]) -> int:
        """Write an indirect table at ``addr``; returns its length in bytes."""
        self.memory.write(addr, b"".join(d.pack() for d in descriptors))
        return VIRTQ_DESC_SIZE * len(descriptors)

    def publish(self, head: int) -> None:
        """Put ``head`` in the next available slot and bump avail idx."""
        slot = self.avail_ring + 4 + 2 * (self.avail_idx % self.size)
        self.memory.write_u16(slot, head)
        self.set_avail_idx(self.avail_idx + 1)

    def set_avail_idx(self, value: int) -> None:
        """Write the available ``idx`` (any value: hostile tests jump it)."""
        self.avail_idx = value & 0xFFFF
        self.memory.write_u16(self.avail_ring + 2, self.avail_idx)

    def set_avail_flags(self, flags: int) -> None:
        self.memory.write_u16(self.avail_ring, flags)

    def set_used_event(self, value: int) -> None:
        """EVENT_IDX: "interrupt me when used idx passes ``value``"."""
        self.memory.write_u16(self.avail_ring + 4 + 2 * self.size, value & 0xFFFF)

    def used_idx(self) -> int:
        return self.memory.read_u16(self.used_ring + 2)

    def avail_event(self) -> int:
        return self.memory.read_u16(self.used_ring + 4 + VIRTQ_USED_ELEM_SIZE * self.size)

    def used_element(self, slot: int) -> UsedElement:
        addr = self.used_ring + 4 + VIRTQ_USED_ELEM_SIZE * (slot % self.size)
        return UsedElement(self.memory.read_u32(addr), self.memory.read_u32(addr + 4))

    # -- the normal driver path ------------------------------------------------

    @property
    def free_descriptors(self) -> int:
        return len(self._free)

    def add_chain(self, buffers: Sequence[tuple[int, int, bool]],
                  indirect_table: int | None = None, publish: bool = True) -> int:
        """Post a request made of ``(addr, len, writable)`` buffers; returns its head.

        With ``indirect_table`` (a guest address with room for the table)
        the buffers go into an indirect table and the chain uses one
        descriptor of the queue.
        """
        if not buffers:
            raise MockDriverError("a chain needs at least one buffer")
        if indirect_table is not None:
            table = [
                Descriptor(addr, length,
                           (VIRTQ_DESC_F_WRITE if writable else 0)
                           | (VIRTQ_DESC_F_NEXT if i + 1 < len(buffers) else 0),
                           i + 1 if i + 1 < len(buffers) else 0)
                for i, (addr, length, writable) in enumerate(buffers)
            ]
            length = self.write_indirect_table(indirect_table, table)
            head = self._take(1)[0]
            self.write_descriptor(head, indirect_table, length, VIRTQ_DESC_F_INDIRECT)
            self._chains[head] = [head]
        else:
            indices = self._take(len(buffers))
            for i, (addr, length, writable) in enumerate(buffers):
                last = i + 1 == len(buffers)
                flags = (VIRTQ_DESC_F_WRITE if writable else 0) | (0 if last else
                                                                   VIRTQ_DESC_F_NEXT)
                self.write_descriptor(indices[i], addr, length, flags,
                                      0 if last else indices[i + 1])
            head = indices[0]
            self._chains[head] = indices
        if publish:
            self.publish(head)
        return head

    def _take(self, count: int) -> list[int]:
        if count > len(self._free):
            raise MockDriverError(f"need {count} descriptors, {len(self._free)} free")
        taken, self._free = self._free[:count], self._free[count:]
        return taken

    def pin_chain(self, head: int) -> None:
        """Keep chain ``head``'s descriptors when it is used, so it can be
        posted again with :meth:`publish` (a driver recycling fixed buffers)."""
        self._chains.pop(head, None)

    def get_used(self) -> list[UsedElement]:
        """Used elements since the last call; frees their descriptors."""
        used_idx = self.used_idx()
        elements = []
        while self.last_used_idx != used_idx:
            element = self.used_element(self.last_used_idx)
            self.last_used_idx = (self.last_used_idx + 1) & 0xFFFF
            self._free.extend(self._chains.pop(element.id, []))
            elements.append(element)
            if len(elements) > self.size:
                raise MockDriverError("used idx ran more than a queue ahead")
        if self.event_idx:
            self.set_used_event(self.last_used_idx)
        return elements

    def kick_needed(self, old_avail_idx: int) -> bool:
        """Would a real driver kick after moving avail idx from ``old_avail_idx``?"""
        if self.event_idx:
            return vring_need_event(self.avail_event(), self.avail_idx, old_avail_idx)
        return not self.memory.read_u16(self.used_ring) & 1  # VIRTQ_USED_F_NO_NOTIFY


@dataclass(frozen=True)
class BlkRequest:
    """Where a virtio-blk request's pieces live in guest memory."""

    head: int
    header: int
    data: int
    data_len: int
    status: int


class MockDriver:
    """Initialises and drives a :class:`VirtioMmioTransport` like a guest driver."""

    def __init__(self, transport: VirtioMmioTransport, memory: GuestMemory,
                 allocator: GuestAllocator | None = None) -> None:
        self.transport = transport
        self.memory = memory
        self.allocator = allocator if allocator is not None else GuestAllocator(memory)
        self.queues: list[VirtqueueDriver] = []
        self.features = 0

    # -- registers ---------------------------------------------------------------

    def read_reg(self, offset: int) -> int:
        return self.transport.read(offset, 4)

    def write_reg(self, offset: int, value: int) -> None:
        self.transport.write(offset, 4, value & 0xFFFF_FFFF)

    def read_config(self, offset: int, size: int) -> int:
        return self.transport.read(VIRTIO_MMIO_CONFIG + offset, size)

    @property
    def status(self) -> int:
        return self.read_reg(VIRTIO_MMIO_STATUS)

    def add_status(self, bit: int) -> None:
        """Read-modify-write one more status bit, as Linux does."""
        self.write_reg(VIRTIO_MMIO_STATUS, self.status | bit)

    # -- initialisation (§3.1.1, §4.2.3) -------------------------------------------

    def probe(self) -> int:
        """Check magic and version; returns the device ID."""
        if self.read_reg(VIRTIO_MMIO_MAGIC_VALUE) != VIRTIO_MMIO_MAGIC:
            raise MockDriverError("no virtio-mmio magic value")
        if self.read_reg(VIRTIO_MMIO_VERSION) != VIRTIO_MMIO_VERSION_2:
            raise MockDriverError("not a version 2 virtio-mmio device")
        return self.read_reg(VIRTIO_MMIO_DEVICE_ID)

    def read_device_features(self) -> int:
        features = 0
        for word in (0, 1):
            self.write_reg(VIRTIO_MMIO_DEVICE_FEATURES_SEL, word)
            features |= self.read_reg(VIRTIO_MMIO_DEVICE_FEATURES) << (32 * word)
        return features

    def write_driver_features(self, features: int) -> None:
        for word in (0, 1):
            self.write_reg(VIRTIO_MMIO_DRIVER_FEATURES_SEL, word)
            self.write_reg(VIRTIO_MMIO_DRIVER_FEATURES, features >> (32 * word))

    def negotiate(self, wanted: int | None = None) -> int:
        """Reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK (checked); returns them.

        ``wanted`` defaults to everything offered.
        """
        self.probe()
        self.write_reg(VIRTIO_MMIO_STATUS, 0)
        self.add_status(DeviceStatus.ACKNOWLEDGE)
        self.add_status(DeviceStatus.DRIVER)
        offered = self.read_device_features()
        features = offered if wanted is None else offered & wanted
        self.write_driver_features(features)
        self.add_status(DeviceStatus.FEATURES_OK)
        if not self.status & DeviceStatus.FEATURES_OK:
            raise MockDriverError(f"device refused features {features:#x}")
        self.features = features
        return features

    def setup_queue(self, index: int, size: int | None = None) -> VirtqueueDriver:
        """§4.2.3.2: select, check, size, allocate, tell the addresses, ready."""
        self.write_reg(VIRTIO_MMIO_QUEUE_SEL, index)
        if self.read_reg(VIRTIO_MMIO_QUEUE_READY):
            raise MockDriverError(f"queue {index} already in use")
        max_size = self.read_reg(VIRTIO_MMIO_QUEUE_NUM_MAX)
        if max_size == 0:
            raise MockDriverError(f"queue {index} is not available")
        size = max_size if size is None else size
        queue = VirtqueueDriver.allocate(self.memory, self.allocator, size,
                                         has_feature(self.features, VIRTIO_RING_F_EVENT_IDX))
        self.write_reg(VIRTIO_MMIO_QUEUE_NUM, size)
        for low, high, addr in ((VIRTIO_MMIO_QUEUE_DESC_LOW, VIRTIO_MMIO_QUEUE_DESC_HIGH,
                                 queue.desc_table),
                                (VIRTIO_MMIO_QUEUE_AVAIL_LOW, VIRTIO_MMIO_QUEUE_AVAIL_HIGH,
                                 queue.avail_ring),
                                (VIRTIO_MMIO_QUEUE_USED_LOW, VIRTIO_MMIO_QUEUE_USED_HIGH,
                                 queue.used_ring)):
            self.write_reg(low, addr & 0xFFFF_FFFF)
            self.write_reg(high, addr >> 32)
        self.write_reg(VIRTIO_MMIO_QUEUE_READY, 1)
        return queue

    def init(self, features: int | None = None, queue_size: int | None = None,
             num_queues: int | None = None, driver_ok: bool = True) -> int:
        """The whole bring-up; returns the negotiated features."""
        negotiated = self.negotiate(features)
        count = self.transport.backend.num_queues if num_queues is None else num_queues
        self.queues = [self.setup_queue(i, queue_size) for i in range(count)]
        if driver_ok:
            self.add_status(DeviceStatus.DRIVER_OK)
        return negotiated

    # -- running -----------------------------------------------------------------

    def kick(self, index: int) -> None:
        self.write_reg(VIRTIO_MMIO_QUEUE_NOTIFY, index)

    def ack_interrupts(self) -> int:
        """Read InterruptStatus and acknowledge it all; returns what was pending."""
        pending = self.read_reg(VIRTIO_MMIO_INTERRUPT_STATUS)
        if pending:
            self.write_reg(VIRTIO_MMIO_INTERRUPT_ACK, pending)
        return pending

    def alloc(self, size: int, align: int = 16) -> int:
        return self.allocator.alloc(size, align)

    # -- virtio-blk requests -------------------------------------------------------

    def blk_request(self, queue: VirtqueueDriver, request_type: int, sector: int = 0,
                    data: bytes | None = None, data_len: int = 0, writable_data: bool = True,
                    indirect: bool = False, publish: bool = True) -> BlkRequest:
        """Lay out header, data and status in fresh memory and post them.

        ``data`` (for OUT) is device-readable; otherwise ``data_len`` bytes
        are device-writable (IN, GET_ID).
        """
        header = self.alloc(16)
        self.memory.write(header, blk_request_header(request_type, sector))
        length = len(data) if data is not None else data_len
        data_addr = self.alloc(max(length, 1), 512)
        if data is not None:
            self.memory.write(data_addr, data)
        status = self.alloc(1, 1)
        self.memory.write_u8(status, 0xFF)  # "not written yet"
        buffers = [(header, 16, False)]
        if length:
            buffers.append((data_addr, length, data is None and writable_data))
        buffers.append((status, 1, True))
        table = self.alloc(VIRTQ_DESC_SIZE * len(buffers)) if indirect else None
        head = queue.add_chain(buffers, indirect_table=table, publish=publish)
        return BlkRequest(head, header, data_addr, length, status)



@dataclass
class MockDevice:
    """A device behind a transport, with guest RAM, an IRQ line and a driver."""

    memory: GuestMemory
    irq: RecordingLine
    transport: VirtioMmioTransport
    driver: MockDriver


def mock_device(backend: VirtioDevice, ram_size: int = 256 * 1024, ring_base: int = 0x1000,
                max_chain_bytes: int = MAX_CHAIN_BYTES) -> MockDevice:
    """Fresh RAM of ``ram_size`` bytes, a transport for ``backend`` and a
    driver whose allocations start at ``ring_base`` (nothing initialised yet)."""
    memory = GuestMemory.with_size(ram_size)
    irq = RecordingLine()
    transport = VirtioMmioTransport(backend, memory, irq, max_chain_bytes=max_chain_bytes)
    driver = MockDriver(transport, memory, GuestAllocator(memory, ring_base))
    return MockDevice(memory, irq, transport, driver)
