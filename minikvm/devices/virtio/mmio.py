"""The virtio-mmio transport, version 2 (virtio 1.2 §4.2).

A virtio-mmio device is a 4 KiB window of 32-bit registers (offsets below
0x100) followed by the device's configuration space (offset 0x100 on). A
driver finds it by the magic value "virt", reads the device ID, negotiates
features and sets up its queues through the registers, kicks a queue by
writing its index to QueueNotify, and learns about finished work from a
level-triggered interrupt whose cause it reads in InterruptStatus and clears
in InterruptACK.

The guest is not trusted: accesses that are not 32 bits wide and aligned
are ignored (reads give 0), registers take effect only in the states the
spec allows (§4.2.2.2, §3.1.1), and a broken virtqueue puts the device in
NEEDS_RESET instead of raising.

Constants use the Linux names (``<linux/virtio_mmio.h>``); the words in
traces use the spec's register names (MagicValue, QueueNotify ...).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from minikvm.devices.base import Device, DeviceStateError, InterruptLine
from minikvm.devices.state import MAX_U32, SavedState
from minikvm.devices.virtio.device import ChainHandler, VirtioContext, VirtioDevice
from minikvm.devices.virtio.features import (
    TRANSPORT_FEATURES,
    VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC,
    feature_names,
    has_feature,
)
from minikvm.devices.virtio.queue import MAX_CHAIN_BYTES, SplitQueue, VirtqueueError
from minikvm.devices.virtio.status import (
    DeviceStatus,
    describe_status,
    status_after_write,
)
from minikvm.memory import GuestMemory, GuestMemoryError

__all__ = [
    "VIRTIO_MMIO_CONFIG",
    "VIRTIO_MMIO_CONFIG_GENERATION",
    "VIRTIO_MMIO_DEVICE_FEATURES",
    "VIRTIO_MMIO_DEVICE_FEATURES_SEL",
    "VIRTIO_MMIO_DEVICE_ID",
    "VIRTIO_MMIO_DRIVER_FEATURES",
    "VIRTIO_MMIO_DRIVER_FEATURES_SEL",
    "VIRTIO_MMIO_GUEST_PAGE_SIZE",
    "VIRTIO_MMIO_INTERRUPT_ACK",
    "VIRTIO_MMIO_INTERRUPT_STATUS",
    "VIRTIO_MMIO_INT_CONFIG",
    "VIRTIO_MMIO_INT_VRING",
    "VIRTIO_MMIO_MAGIC",
    "VIRTIO_MMIO_MAGIC_VALUE",
    "VIRTIO_MMIO_QUEUE_ALIGN",
    "VIRTIO_MMIO_QUEUE_AVAIL_HIGH",
    "VIRTIO_MMIO_QUEUE_AVAIL_LOW",
    "VIRTIO_MMIO_QUEUE_DESC_HIGH",
    "VIRTIO_MMIO_QUEUE_DESC_LOW",
    "VIRTIO_MMIO_QUEUE_NOTIFY",
    "VIRTIO_MMIO_QUEUE_NUM",
    "VIRTIO_MMIO_QUEUE_NUM_MAX",
    "VIRTIO_MMIO_QUEUE_PFN",
    "VIRTIO_MMIO_QUEUE_READY",
    "VIRTIO_MMIO_QUEUE_RESET",
    "VIRTIO_MMIO_QUEUE_SEL",
    "VIRTIO_MMIO_QUEUE_USED_HIGH",
    "VIRTIO_MMIO_QUEUE_USED_LOW",
    "VIRTIO_MMIO_SHM_BASE_HIGH",
    "VIRTIO_MMIO_SHM_BASE_LOW",
    "VIRTIO_MMIO_SHM_LEN_HIGH",
    "VIRTIO_MMIO_SHM_LEN_LOW",
    "VIRTIO_MMIO_SHM_SEL",
    "VIRTIO_MMIO_STATUS",
    "VIRTIO_MMIO_VENDOR_ID",
    "VIRTIO_MMIO_VENDOR_MINIKVM",
    "VIRTIO_MMIO_VERSION",
    "VIRTIO_MMIO_VERSION_2",
    "VIRTIO_MMIO_WINDOW_SIZE",
    "VirtioMmioContext",
    "VirtioMmioTransport",
]

# -- the register map (§4.2.2, Table 4.1) ---------------------------------

VIRTIO_MMIO_MAGIC_VALUE = 0x000       # R: "virt"
VIRTIO_MMIO_VERSION = 0x004           # R: 2 (1 was the legacy layout)
VIRTIO_MMIO_DEVICE_ID = 0x008         # R: what kind of device (§5)
VIRTIO_MMIO_VENDOR_ID = 0x00C         # R
VIRTIO_MMIO_DEVICE_FEATURES = 0x010   # R: 32 offered feature bits, word DeviceFeaturesSel
VIRTIO_MMIO_DEVICE_FEATURES_SEL = 0x014  # W: which word DeviceFeatures shows
VIRTIO_MMIO_DRIVER_FEATURES = 0x020   # W: 32 accepted feature bits, word DriverFeaturesSel
VIRTIO_MMIO_DRIVER_FEATURES_SEL = 0x024  # W
VIRTIO_MMIO_GUEST_PAGE_SIZE = 0x028   # legacy (version 1) only: ignored
VIRTIO_MMIO_QUEUE_SEL = 0x030         # W: which queue the Queue* registers mean
VIRTIO_MMIO_QUEUE_NUM_MAX = 0x034     # R: largest size of that queue, 0 if absent
VIRTIO_MMIO_QUEUE_NUM = 0x038         # W: size the driver chose
VIRTIO_MMIO_QUEUE_ALIGN = 0x03C       # legacy only: ignored
VIRTIO_MMIO_QUEUE_PFN = 0x040         # legacy only: ignored
VIRTIO_MMIO_QUEUE_READY = 0x044       # RW: 1 = the device may use the queue
VIRTIO_MMIO_QUEUE_NOTIFY = 0x050      # W: "queue N has new buffers" (the kick)
VIRTIO_MMIO_INTERRUPT_STATUS = 0x060  # R: why the interrupt line is up
VIRTIO_MMIO_INTERRUPT_ACK = 0x064     # W: clears those bits
VIRTIO_MMIO_STATUS = 0x070            # RW: device status (§2.1); 0 resets
VIRTIO_MMIO_QUEUE_DESC_LOW = 0x080    # W: descriptor table address
VIRTIO_MMIO_QUEUE_DESC_HIGH = 0x084
VIRTIO_MMIO_QUEUE_AVAIL_LOW = 0x090   # W: driver area (available ring)
VIRTIO_MMIO_QUEUE_AVAIL_HIGH = 0x094
VIRTIO_MMIO_QUEUE_USED_LOW = 0x0A0    # W: device area (used ring)
VIRTIO_MMIO_QUEUE_USED_HIGH = 0x0A4
VIRTIO_MMIO_SHM_SEL = 0x0AC           # W: shared memory region id (we have none)
VIRTIO_MMIO_SHM_LEN_LOW = 0x0B0       # R: -1 = no such region
VIRTIO_MMIO_SHM_LEN_HIGH = 0x0B4
VIRTIO_MMIO_SHM_BASE_LOW = 0x0B8      # R: all ones = no such region
VIRTIO_MMIO_SHM_BASE_HIGH = 0x0BC
VIRTIO_MMIO_QUEUE_RESET = 0x0C0       # RW: only with VIRTIO_F_RING_RESET (not offered)
VIRTIO_MMIO_CONFIG_GENERATION = 0x0FC  # R: changes when the config space changes
VIRTIO_MMIO_CONFIG = 0x100            # RW: device configuration space from here

#: InterruptStatus bit: a used buffer notification (a queue has finished work).
VIRTIO_MMIO_INT_VRING = 1 << 0
#: InterruptStatus bit: the configuration changed (or the device needs a reset).
VIRTIO_MMIO_INT_CONFIG = 1 << 1

#: "virt" read as a little-endian 32-bit word.
VIRTIO_MMIO_MAGIC = 0x74726976
VIRTIO_MMIO_VERSION_2 = 2
#: Our VendorID: "mkvm" as a little-endian word (drivers do not check it).
VIRTIO_MMIO_VENDOR_MINIKVM = int.from_bytes(b"mkvm", "little")
#: The size of the window each device decodes.
VIRTIO_MMIO_WINDOW_SIZE = 0x1000

_REGISTER_NAMES = {
    VIRTIO_MMIO_MAGIC_VALUE: "MagicValue",
    VIRTIO_MMIO_VERSION: "Version",
    VIRTIO_MMIO_DEVICE_ID: "DeviceID",
    VIRTIO_MMIO_VENDOR_ID: "VendorID",
    VIRTIO_MMIO_DEVICE_FEATURES: "DeviceFeatures",
    VIRTIO_MMIO_DEVICE_FEATURES_SEL: "DeviceFeaturesSel",
    VIRTIO_MMIO_DRIVER_FEATURES: "DriverFeatures",
    VIRTIO_MMIO_DRIVER_FEATURES_SEL: "DriverFeaturesSel",
    VIRTIO_MMIO_GUEST_PAGE_SIZE: "GuestPageSize (legacy)",
    VIRTIO_MMIO_QUEUE_SEL: "QueueSel",
    VIRTIO_MMIO_QUEUE_NUM_MAX: "QueueNumMax",
    VIRTIO_MMIO_QUEUE_NUM: "QueueNum",
    VIRTIO_MMIO_QUEUE_ALIGN: "QueueAlign (legacy)",
    VIRTIO_MMIO_QUEUE_PFN: "QueuePFN (legacy)",
    VIRTIO_MMIO_QUEUE_READY: "QueueReady",
    VIRTIO_MMIO_QUEUE_NOTIFY: "QueueNotify",
    VIRTIO_MMIO_INTERRUPT_STATUS: "InterruptStatus",
    VIRTIO_MMIO_INTERRUPT_ACK: "InterruptACK",
    VIRTIO_MMIO_STATUS: "Status",
    VIRTIO_MMIO_QUEUE_DESC_LOW: "QueueDescLow",
    VIRTIO_MMIO_QUEUE_DESC_HIGH: "QueueDescHigh",
    VIRTIO_MMIO_QUEUE_AVAIL_LOW: "QueueDriverLow",
    VIRTIO_MMIO_QUEUE_AVAIL_HIGH: "QueueDriverHigh",
    VIRTIO_MMIO_QUEUE_USED_LOW: "QueueDeviceLow",
    VIRTIO_MMIO_QUEUE_USED_HIGH: "QueueDeviceHigh",
    VIRTIO_MMIO_SHM_SEL: "SHMSel",
    VIRTIO_MMIO_SHM_LEN_LOW: "SHMLenLow",
    VIRTIO_MMIO_SHM_LEN_HIGH: "SHMLenHigh",
    VIRTIO_MMIO_SHM_BASE_LOW: "SHMBaseLow",
    VIRTIO_MMIO_SHM_BASE_HIGH: "SHMBaseHigh",
    VIRTIO_MMIO_QUEUE_RESET: "QueueReset",
    VIRTIO_MMIO_CONFIG_GENERATION: "ConfigGeneration",
}

#: Queue registers a driver writes during setup, and which field each sets.
_QUEUE_ADDRESS_REGISTERS = {
    VIRTIO_MMIO_QUEUE_DESC_LOW: ("desc_table", 0),
    VIRTIO_MMIO_QUEUE_DESC_HIGH: ("desc_table", 32),
    VIRTIO_MMIO_QUEUE_AVAIL_LOW: ("avail_ring", 0),
    VIRTIO_MMIO_QUEUE_AVAIL_HIGH: ("avail_ring", 32),
    VIRTIO_MMIO_QUEUE_USED_LOW: ("used_ring", 0),
    VIRTIO_MMIO_QUEUE_USED_HIGH: ("used_ring", 32),
}

#: Every bit the Status register can hold (§2.1).
_STATUS_BITS = int(DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FEATURES_OK
                   | DeviceStatus.DRIVER_OK | DeviceStatus.NEEDS_RESET | DeviceStatus.FAILED)
#: The transport's registers and latches in a saved state (save() adds the rest).
_SAVED_WORDS = ("device_features_sel", "driver_features_sel", "queue_sel", "shm_sel",
                "config_generation")

_A = DeviceStatus.ACKNOWLEDGE
_D = DeviceStatus.DRIVER
_F = DeviceStatus.FEATURES_OK
_O = DeviceStatus.DRIVER_OK

_WHY_STATUS = {
    _A: "ACKNOWLEDGE — the guest noticed the device",
    _D: "DRIVER — a driver claims the device",
    _F: "FEATURES_OK — features accepted",
    _O: "DRIVER_OK — device live",
}


class VirtioMmioContext:
    """The :class:`~minikvm.devices.virtio.device.VirtioContext` a transport
    hands its device: three doors into the transport and nothing else."""

    __slots__ = ("_transport",)

    def __init__(self, transport: VirtioMmioTransport) -> None:
        self._transport = transport

    @property
    def negotiated_features(self) -> int:
        return self._transport.driver_features

    def serve(self, queue_index: int, handler: ChainHandler,
              more: Callable[[], bool] | None = None) -> int:
        return self._transport.serve(queue_index, handler, more)

    def config_changed(self) -> None:
        self._transport.config_changed()


class VirtioMmioTransport(Device):
    """One virtio-mmio window (4 KiB) in front of a :class:`VirtioDevice`.

    ``irq`` is the device's interrupt line: it is high exactly while
    InterruptStatus is not 0 (level-triggered, §4.2.3.4), and
    ``irq.set_level`` is called only when that changes.
    """

    def __init__(self, backend: VirtioDevice, memory: GuestMemory, irq: InterruptLine,
                 name: str | None = None, max_chain_bytes: int = MAX_CHAIN_BYTES) -> None:
        self.backend = backend
        self.memory = memory
        self.irq = irq
        self.name = name if name is not None else f"virtio-{backend.name}"
        self.queues = [SplitQueue(memory, backend.queue_max_size, max_chain_bytes)
                       for _ in range(backend.num_queues)]
        self._irq_level = False
        self.config_generation = 0
        #: Counters for traces and tests.
        self.counters = {"kicks": 0, "kicks_ignored": 0, "requests_served": 0,
                         "interrupts": 0, "ignored_accesses": 0, "illegal_status_writes": 0,
                         "resets": 0, "needs_reset": 0}
        #: Why the device last entered NEEDS_RESET (None when it has not).
        self.last_error: str | None = None
        self._reset_registers()
        # What the last access did, in words, for describe().
        self._last: tuple[int, bool, str] = (-1, False, "")
        context: VirtioContext = VirtioMmioContext(self)
        backend.attach(context)

    @property
    def model(self) -> str:
        """``virtio-mmio block device``: the transport and what is behind it."""
        return f"virtio-mmio {self.backend.model}"

    # -- the pieces of state a reset clears -----------------------------------

    def _reset_registers(self) -> None:
        self.status = DeviceStatus(0)
        self.device_features_sel = 0
        self.driver_features_sel = 0
        #: What the driver accepted (masked to what was offered).
        self.driver_features = 0
        self.queue_sel = 0
        self.shm_sel = 0
        self.interrupt_status = 0
        for queue in self.queues:
            queue.reset()

    def reset(self) -> None:
        """A device reset (Status write 0, §2.4): back to the power-on state."""
        self._reset_registers()
        self.last_error = None
        self.counters["resets"] += 1
        self._update_irq()
        self.backend.reset()

    # -- what the other side sees --------------------------------------------

    @property
    def device_features(self) -> int:
        """The 64 feature bits offered: the transport's and the device type's."""
        return TRANSPORT_FEATURES | self.backend.device_features()

    @property
    def live(self) -> bool:
        """DRIVER_OK set and neither NEEDS_RESET nor FAILED: queues are served."""
        return bool(self.status & _O) and not self.status & (
            DeviceStatus.NEEDS_RESET | DeviceStatus.FAILED)

    def _selected_queue(self) -> SplitQueue | None:
        if 0 <= self.queue_sel < len(self.queues):
            return self.queues[self.queue_sel]
        return None

    # -- the Device interface ---------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        if offset >= VIRTIO_MMIO_CONFIG:
            return self._read_config(offset - VIRTIO_MMIO_CONFIG, size)
        if size != 4 or offset % 4:
            return self._ignore(offset, False, "ignored: registers take 32-bit aligned "
                                               "accesses only (§4.2.2.2); reads 0")
        return self._read_register(offset) & 0xFFFF_FFFF

    def write(self, offset: int, size: int, value: int) -> None:
        if offset >= VIRTIO_MMIO_CONFIG:
            self._write_config(offset - VIRTIO_MMIO_CONFIG, size, value)
            return
        if size != 4 or offset % 4:
            self._ignore(offset, True, "ignored: registers take 32-bit aligned accesses "
                                       "only (§4.2.2.2)")
            return
        note = self._write_register(offset, value & 0xFFFF_FFFF)
        self._last = (offset, True, note)

    def _ignore(self, offset: int, is_write: bool, note: str) -> int:
        self.counters["ignored_accesses"] += 1
        self._last = (offset, is_write, note)
        return 0

    # -- register reads --------------------------------------------------------

    def _read_register(self, offset: int) -> int:
        queue = self._selected_queue()
        note = ""
        if offset == VIRTIO_MMIO_MAGIC_VALUE:
            value, note = VIRTIO_MMIO_MAGIC, '"virt": a virtio-mmio device'
        elif offset == VIRTIO_MMIO_VERSION:
            value, note = VIRTIO_MMIO_VERSION_2, "version 2 (virtio 1.x layout)"
        elif offset == VIRTIO_MMIO_DEVICE_ID:
            value, note = self.backend.device_id, f"a virtio {self.backend.name} device"
        elif offset == VIRTIO_MMIO_VENDOR_ID:
            value = VIRTIO_MMIO_VENDOR_MINIKVM
        elif offset == VIRTIO_MMIO_DEVICE_FEATURES:
            sel = self.device_features_sel
            value = (self.device_features >> (32 * sel)) & 0xFFFF_FFFF if sel < 2 else 0
            names = feature_names(value << (32 * sel) if sel < 2 else 0,
                                  self.backend.feature_bit_names)
            note = f"offered (word {sel}): {', '.join(names) or 'none'}"
        elif offset == VIRTIO_MMIO_QUEUE_NUM_MAX:
            value = queue.max_size if queue is not None else 0
            note = (f"queue {self.queue_sel} holds up to {value} entries" if queue is not None
                    else f"queue {self.queue_sel} does not exist")
        elif offset == VIRTIO_MMIO_QUEUE_READY:
            value = int(queue.ready) if queue is not None else 0
        elif offset == VIRTIO_MMIO_INTERRUPT_STATUS:
            value = self.interrupt_status
            note = self._describe_interrupts(value)
        elif offset == VIRTIO_MMIO_STATUS:
            value, note = int(self.status), describe_status(self.status)
        elif offset in (VIRTIO_MMIO_SHM_LEN_LOW, VIRTIO_MMIO_SHM_LEN_HIGH,
                        VIRTIO_MMIO_SHM_BASE_LOW, VIRTIO_MMIO_SHM_BASE_HIGH):
            value, note = 0xFFFF_FFFF, f"no shared memory region {self.shm_sel}"
        elif offset == VIRTIO_MMIO_CONFIG_GENERATION:
            value = self.config_generation
        else:
            value, note = 0, "not a readable register: reads 0"
        self._last = (offset, False, note)
        return value

    @staticmethod
    def _describe_interrupts(value: int) -> str:
        causes = []
        if value & VIRTIO_MMIO_INT_VRING:
            causes.append("used buffers")
        if value & VIRTIO_MMIO_INT_CONFIG:
            causes.append("configuration change")
        return ", ".join(causes) or "nothing pending"

    # -- register writes -------------------------------------------------------

    def _write_register(self, offset: int, value: int) -> str:
        """Apply a register write; returns what it did in words."""
        if offset == VIRTIO_MMIO_STATUS:
            return self._write_status(value)
        if offset == VIRTIO_MMIO_QUEUE_NOTIFY:
            return self._notify(value)
        if offset == VIRTIO_MMIO_INTERRUPT_ACK:
            before = self.interrupt_status
            self.interrupt_status &= ~value & 0xFFFF_FFFF
            self._update_irq()
            return (f"acknowledged {self._describe_interrupts(before & value)}; line "
                    f"{'still high' if self._irq_level else 'low'}")
        if offset == VIRTIO_MMIO_DEVICE_FEATURES_SEL:
            self.device_features_sel = value
            return f"DeviceFeatures now shows bits {32 * value}-{32 * value + 31}"
        if offset == VIRTIO_MMIO_DRIVER_FEATURES_SEL:
            self.driver_features_sel = value
            return f"DriverFeatures now sets bits {32 * value}-{32 * value + 31}"
        if offset == VIRTIO_MMIO_DRIVER_FEATURES:
            return self._write_driver_features(value)
        if offset == VIRTIO_MMIO_QUEUE_SEL:
            self.queue_sel = value
            return f"queue {value} selected" + (
                "" if self._selected_queue() is not None else " (does not exist)")
        if offset == VIRTIO_MMIO_QUEUE_READY:
            return self._write_queue_ready(value)
        if offset == VIRTIO_MMIO_QUEUE_NUM or offset in _QUEUE_ADDRESS_REGISTERS:
            return self._write_queue_setup(offset, value)
        if offset == VIRTIO_MMIO_SHM_SEL:
            self.shm_sel = value
            return f"shared memory region {value} selected (there are none)"
        self.counters["ignored_accesses"] += 1
        return "not a writable register: ignored"

    def _write_driver_features(self, value: int) -> str:
        steps = self.status & (_A | _D | _F | _O)
        if steps != _A | _D or self.status & DeviceStatus.FAILED:
            self.counters["ignored_accesses"] += 1
            return ("ignored: features are written after DRIVER and before FEATURES_OK "
                    "(§3.1.1)")
        sel = self.driver_features_sel
        if sel >= 2:
            self.counters["ignored_accesses"] += 1
            return f"ignored: there is no feature word {sel}"
        shift = 32 * sel
        offered = (self.device_features >> shift) & 0xFFFF_FFFF
        kept = value & offered
        self.driver_features = (self.driver_features & ~(0xFFFF_FFFF << shift)) | (kept << shift)
        names = feature_names(kept << shift, self.backend.feature_bit_names)
        note = f"driver accepts (word {sel}): {', '.join(names) or 'none'}"
        if value & ~offered:
            note += f"; unoffered bits {value & ~offered:#x} dropped"
        return note

    def _features_problem(self) -> str | None:
        """Why FEATURES_OK cannot be kept, or None (§2.2.2, §3.1.1 step 5)."""
        if not has_feature(self.driver_features, VIRTIO_F_VERSION_1):
            return "VERSION_1 not accepted (a legacy driver; this device is modern only)"
        return self.backend.features_problem(self.driver_features)

    def _write_status(self, value: int) -> str:
        before = self.status
        change = status_after_write(before, value)
        if change.reset:
            self.reset()
            return "device reset: status, features, interrupts and queues cleared"
        if not change.allowed:
            self.counters["illegal_status_writes"] += 1
            return f"{change.reason}; status stays {describe_status(before)}"
        new = change.status
        added = DeviceStatus(new & ~before)
        if added & _F:
            problem = self._features_problem()
            if problem is not None:
                self.status = DeviceStatus(new & ~_F)
                return f"FEATURES_OK refused: {problem}"
        self.status = new
        if added & DeviceStatus.FAILED:
            return change.reason
        if added & _O:
            self.backend.activate()
        for bit, words in _WHY_STATUS.items():
            if added & bit:
                if bit == _F:
                    words += f" ({', '.join(self.negotiated_feature_names())})"
                return words
        return change.reason

    def negotiated_feature_names(self) -> list[str]:
        return feature_names(self.driver_features, self.backend.feature_bit_names)

    def _queue_setup_problem(self, queue: SplitQueue | None) -> str | None:
        if queue is None:
            return f"queue {self.queue_sel} does not exist"
        if not self.status & _F or self.status & (_O | DeviceStatus.FAILED):
            return "queues are set up after FEATURES_OK and before DRIVER_OK (§3.1.1)"
        return None

    def _write_queue_setup(self, offset: int, value: int) -> str:
        queue = self._selected_queue()
        problem = self._queue_setup_problem(queue)
        if problem is None and queue is not None and queue.ready:
            problem = "the queue is ready: write 0 to QueueReady first (§4.2.2.2)"
        if problem is not None or queue is None:
            self.counters["ignored_accesses"] += 1
            return f"ignored: {problem}"
        if offset == VIRTIO_MMIO_QUEUE_NUM:
            queue.size = value
            return f"queue {self.queue_sel} will have {value} entries"
        attribute, shift = _QUEUE_ADDRESS_REGISTERS[offset]
        address = getattr(queue, attribute)
        address = (address & ~(0xFFFF_FFFF << shift)) | (value << shift)
        setattr(queue, attribute, address)
        return f"queue {self.queue_sel} {attribute.replace('_', ' ')} at {address:#x}"

    def _write_queue_ready(self, value: int) -> str:
        queue = self._selected_queue()
        if queue is not None and value == 0:
            queue.ready = False
            return f"queue {self.queue_sel} stopped"
        problem = self._queue_setup_problem(queue)
        if problem is not None or queue is None:
            self.counters["ignored_accesses"] += 1
            return f"ignored: {problem}"
        if queue.ready:
            return f"queue {self.queue_sel} already ready"
        try:
            queue.enable(event_idx=has_feature(self.driver_features, VIRTIO_RING_F_EVENT_IDX),
                         indirect_desc=has_feature(self.driver_features,
                                                   VIRTIO_RING_F_INDIRECT_DESC))
        except VirtqueueError as error:
            self.needs_reset(f"queue {self.queue_sel}: {error}")
            return f"queue {self.queue_sel} refused: {error}; device NEEDS_RESET"
        return (f"queue {self.queue_sel} ready: {queue.size} entries, descriptors at "
                f"{queue.desc_table:#x}")

    # -- notifications and interrupts ------------------------------------------

    def _notify(self, value: int) -> str:
        self.counters["kicks"] += 1
        index = value & 0xFFFF  # without NOTIFICATION_DATA the value is the index
        if not self.live:
            self.counters["kicks_ignored"] += 1
            why = ("the device needs a reset" if self.status & DeviceStatus.NEEDS_RESET
                   else "the driver failed" if self.status & DeviceStatus.FAILED
                   else "DRIVER_OK is not set (§2.1.2)")
            return f"queue {index} kick ignored: {why}"
        if index >= len(self.queues) or not self.queues[index].ready:
            self.counters["kicks_ignored"] += 1
            return f"queue {index} kick ignored: no such ready queue"
        served_before = self.counters["requests_served"]
        self.backend.queue_notify(index)
        served = self.counters["requests_served"] - served_before
        note = f"queue {index} kicked, {served} request{'' if served == 1 else 's'} served"
        if self.status & DeviceStatus.NEEDS_RESET:
            note += f"; device NEEDS_RESET: {self.last_error}"
        return note

    def serve(self, queue_index: int, handler: ChainHandler,
              more: Callable[[], bool] | None = None) -> int:
        """Serve available chains of a queue with ``handler``; returns how many.

        ``handler(chain)`` does the request and returns the bytes it wrote.
        At most one queue's worth of chains is served per call, so a guest
        cannot make one kick run forever; ``more()`` (if given) can stop
        earlier (a console with no more input). A broken chain puts the
        device in NEEDS_RESET. Raises the used-buffer interrupt if the
        driver wants it.
        """
        if not self.live or not 0 <= queue_index < len(self.queues):
            return 0
        queue = self.queues[queue_index]
        if not queue.ready:
            return 0
        served = 0
        try:
            for _ in range(queue.size):
                if more is not None and not more():
                    break
                chain = queue.pop_chain()
                if chain is None:
                    break
                written = handler(chain)
                queue.add_used(chain.head, max(0, min(written, chain.writable_len)))
                served += 1
            queue.set_avail_event()
            notify = served > 0 and queue.needs_notification()
        except (VirtqueueError, GuestMemoryError) as error:
            self.needs_reset(f"queue {queue_index}: {error}")
            notify = served > 0
        self.counters["requests_served"] += served
        if notify:
            self.raise_interrupt(VIRTIO_MMIO_INT_VRING)
        return served

    def needs_reset(self, reason: str) -> None:
        """Enter NEEDS_RESET (§2.1.2): stop serving queues until the driver resets.

        A live driver is told with a configuration change interrupt.
        """
        self.counters["needs_reset"] += 1
        self.last_error = reason
        was_live = bool(self.status & _O)
        self.status |= DeviceStatus.NEEDS_RESET
        if was_live:
            self.raise_interrupt(VIRTIO_MMIO_INT_CONFIG)

    def config_changed(self) -> None:
        """The device changed its configuration space (§2.5, §4.2.3.4)."""
        self.config_generation = (self.config_generation + 1) & 0xFFFF_FFFF
        if self.status & _O:
            self.raise_interrupt(VIRTIO_MMIO_INT_CONFIG)

    def raise_interrupt(self, cause: int) -> None:
        """Set InterruptStatus bits; the line follows."""
        self.interrupt_status |= cause
        self.counters["interrupts"] += 1
        self._update_irq()

    def _update_irq(self) -> None:
        level = self.interrupt_status != 0
        if level != self._irq_level:
            self._irq_level = level
            self.irq.set_level(level)

    # -- configuration space ---------------------------------------------------

    def _read_config(self, offset: int, size: int) -> int:
        config = self.backend.config_bytes()
        chunk = config[offset:offset + size] if offset < len(config) else b""
        value = int.from_bytes(chunk.ljust(size, b"\0"), "little")
        self._last = (VIRTIO_MMIO_CONFIG + offset, False,
                      "" if chunk else "past the configuration space: reads 0")
        return value

    def _write_config(self, offset: int, size: int, value: int) -> None:
        config_len = len(self.backend.config_bytes())
        if offset + size > config_len:
            self._ignore(VIRTIO_MMIO_CONFIG + offset, True,
                         "ignored: past the configuration space")
            return
        data = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        self.backend.write_config(offset, data)
        self._last = (VIRTIO_MMIO_CONFIG + offset, True, "")

    # -- save and restore ----------------------------------------------------------

    def save(self) -> dict[str, Any]:
        """Status, both feature words and their selectors, the selected queue
        and shared memory region, every queue, InterruptStatus and the level
        it drives, the configuration generation, why the device last needed
        a reset, the counters, and the device type's own state under
        ``"backend"``. ``device_id`` and ``device_features`` are saved to be
        checked: a state restores only into the same kind of device,
        offering the same features."""
        state: dict[str, Any] = {"device_id": self.backend.device_id,
                                 "device_features": self.device_features,
                                 "status": int(self.status),
                                 "driver_features": self.driver_features}
        state |= {key: getattr(self, key) for key in _SAVED_WORDS}
        return state | {"interrupt_status": self.interrupt_status, "irq_level": self._irq_level,
                        "last_error": self.last_error, "counters": dict(self.counters),
                        "queues": [queue.save() for queue in self.queues],
                        "backend": self.backend.save()}

    def check_state(self, state: Any) -> None:
        """Raise DeviceStateError (naming this transport) unless :meth:`restore`
        would take ``state``; the queues and the backend are checked too."""
        name = self.name
        fields = SavedState(state, name, (
            "device_id", "device_features", "status", "driver_features", *_SAVED_WORDS,
            "interrupt_status", "irq_level", "last_error", "counters", "queues", "backend"))
        device_id = self.backend.device_id
        fields.integer("device_id", device_id, device_id)
        offered = self.device_features
        fields.integer("device_features", offered, offered)
        fields.bits("status", _STATUS_BITS)
        fields.bits("driver_features", offered)
        for key in _SAVED_WORDS:
            fields.integer(key, 0, MAX_U32)
        pending = fields.bits("interrupt_status", VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG)
        if fields.boolean("irq_level") != bool(pending):
            raise fields.fail("irq_level", "is not whether InterruptStatus is set (the line "
                                           "is level-triggered)")
        fields.text("last_error", 4096, optional=True)
        fields.counters("counters", self.counters.keys())
        queues = fields.entries("queues", len(self.queues))
        if len(queues) != len(self.queues):
            raise fields.fail("queues", f"has {len(queues)} queues, this device has "
                                        f"{len(self.queues)}")
        for index, (queue, saved) in enumerate(zip(self.queues, queues)):
            queue.check_state(saved, device=f"{name}: queue {index}")
        try:
            self.backend.check_state(state["backend"])
        except DeviceStateError as error:
            raise DeviceStateError(f"{name}: backend {error}") from None

    def restore(self, state: dict[str, Any]) -> None:
        """Take ``state`` (checked whole first), then drive the line to its level."""
        self.check_state(state)
        self.status = DeviceStatus(state["status"])
        self.driver_features = state["driver_features"]
        for key in _SAVED_WORDS:
            setattr(self, key, state[key])
        self.interrupt_status = state["interrupt_status"]
        self.last_error = state["last_error"]
        self.counters = dict(state["counters"])
        for queue, saved in zip(self.queues, state["queues"]):
            queue.restore(saved)
        self.backend.restore(state["backend"])
        self._last = (-1, False, "")
        self._irq_level = state["irq_level"]
        self.irq.set_level(self._irq_level)

    # -- words -------------------------------------------------------------------

    def register_name(self, offset: int, is_write: bool) -> str:
        if offset >= VIRTIO_MMIO_CONFIG:
            return f"Config+{offset - VIRTIO_MMIO_CONFIG:#x}"
        return _REGISTER_NAMES.get(offset, f"+{offset:#x}")

    def describe(self, offset: int, size: int, is_write: bool, value: int) -> str:
        name = self.register_name(offset, is_write)
        text = f"{name} write {value:#x}" if is_write else f"{name} read -> {value:#x}"
        last_offset, last_write, note = self._last
        if (last_offset, last_write) == (offset, is_write) and note:
            text += f": {note}"
        return text

    def state(self) -> dict[str, Any]:
        return {
            "device": self.backend.name,
            "device_id": self.backend.device_id,
            "status": int(self.status),
            "status_decoded": describe_status(self.status),
            "live": self.live,
            "device_features": self.device_features,
            "device_features_decoded": feature_names(self.device_features,
                                                     self.backend.feature_bit_names),
            "driver_features": self.driver_features,
            "driver_features_decoded": self.negotiated_feature_names(),
            "device_features_sel": self.device_features_sel,
            "driver_features_sel": self.driver_features_sel,
            "queue_sel": self.queue_sel,
            "queues": [queue.state() for queue in self.queues],
            "interrupt_status": self.interrupt_status,
            "irq_level": self._irq_level,
            "config_generation": self.config_generation,
            "counters": dict(self.counters),
            "last_error": self.last_error,
            "backend": self.backend.state(),
        }

    def state_rows(self) -> list[tuple[str, str]]:
        """Status, negotiated features, the interrupt, each queue's indices,
        then the device type's own rows."""
        rows = [("status", f"{int(self.status):#04x} {describe_status(self.status)}"),
                ("features", ", ".join(self.negotiated_feature_names()) or "none negotiated"),
                ("interrupt", f"status {self.interrupt_status:#x}, line "
                              f"{'high' if self._irq_level else 'low'}")]
        for index, queue in enumerate(self.queues):
            if not queue.ready and not queue.size:
                rows.append((f"queue {index}", "not set up"))
                continue
            rows.append((f"queue {index}",
                         f"size {queue.size}{' ready' if queue.ready else ''}, avail idx "
                         f"{queue.last_avail_idx}, used idx {queue.next_used_idx}"))
        if self.last_error:
            rows.append(("error", self.last_error))
        return rows + self.backend.state_rows()
