"""What a virtio device type is, apart from the transport it sits behind.

Virtio splits a device in two (virtio 1.2 §2, §4): the *transport* (MMIO,
PCI, channel I/O) is how the driver finds the device, negotiates features,
sets up queues and gets interrupts; the *device type* (block, console,
entropy ...) only says what its requests mean and what its configuration
space holds. :class:`VirtioDevice` is the second half. It never touches
registers or interrupt lines: it gets validated descriptor chains and
returns how many bytes it wrote, and the transport does the rest.

The two halves meet at a narrow seam. When a device is plugged into a
transport it is handed a :class:`VirtioContext`: the three things a device
type may ask of whatever transport it sits behind -- serve a queue, know
which features were negotiated, announce a configuration change. The
device never holds the transport itself, so it cannot reach into
registers, queues or interrupt status, and a test can plug it into a
context of its own making.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from minikvm.devices.base import DeviceStateError, plain_rows
from minikvm.devices.virtio.queue import DescriptorChain

__all__ = [
    "VIRTIO_ID_BLOCK",
    "VIRTIO_ID_CONSOLE",
    "VIRTIO_ID_NET",
    "VIRTIO_ID_RNG",
    "ChainHandler",
    "VirtioContext",
    "VirtioDevice",
]

# Device IDs (virtio 1.2 §5, Linux <linux/virtio_ids.h>).
VIRTIO_ID_NET = 1
VIRTIO_ID_BLOCK = 2
VIRTIO_ID_CONSOLE = 3
VIRTIO_ID_RNG = 4

#: A request handler: takes a chain, returns the bytes it wrote into it.
ChainHandler = Callable[[DescriptorChain], int]


@runtime_checkable
class VirtioContext(Protocol):
    """What a device type may ask of its transport (given at :meth:`VirtioDevice.attach`).

    Everything else -- status, queue setup, interrupt status, the
    configuration generation -- belongs to the transport (virtio 1.2 §4)
    and stays out of a device type's reach.
    """

    @property
    def negotiated_features(self) -> int:
        """The feature bits the driver accepted of those offered (§2.2);
        0 until the driver writes them, final once FEATURES_OK holds."""

    def serve(self, queue_index: int, handler: ChainHandler,
              more: Callable[[], bool] | None = None) -> int:
        """Hand the chains the driver made available on ``queue_index``
        (the available ring, §2.7.6) to ``handler``; returns how many were served.

        Nothing is served unless the device is live (DRIVER_OK, no
        NEEDS_RESET) and the queue ready; at most one queue's worth per call,
        fewer once ``more()`` says False. The transport puts each chain in
        the used ring (§2.7.8), raises the used-buffer interrupt if the
        driver wants one (§2.7.7), and turns a broken chain into NEEDS_RESET.
        """

    def config_changed(self) -> None:
        """The configuration space changed: bump its generation and tell a
        live driver with a configuration change interrupt (§2.5, §4.2.3.4)."""


class VirtioDevice:
    """Base class of a virtio device type (the "backend" of a transport).

    Subclasses set :attr:`device_id`, :attr:`num_queues`, and override
    :meth:`process` (and maybe :meth:`device_features`, :meth:`config_bytes`,
    :meth:`queue_notify`). Raising
    :class:`~minikvm.devices.virtio.queue.VirtqueueError` from
    :meth:`process` says "this request cannot even be answered" and puts the
    device in NEEDS_RESET.
    """

    #: Virtio device ID (DeviceID register); 0 means "no device".
    device_id = 0
    #: Short name for traces ("blk", "rng", "console").
    name = "virtio"
    #: What the device is, in a few words, for panel titles ("block device").
    model = "virtio device"
    #: How many virtqueues the device has.
    num_queues = 1
    #: QueueNumMax for every queue (a power of two, at most 32768).
    queue_max_size = 256
    #: Names of the device-type feature bits (bit number -> name), for traces.
    feature_bit_names: dict[int, str] = {}

    def __init__(self) -> None:
        #: What the transport lets this device do (None until plugged in).
        self.context: VirtioContext | None = None

    # -- hooks the transport calls -------------------------------------------

    def attach(self, context: VirtioContext) -> None:
        """Called once, by the transport the device is plugged into."""
        self.context = context

    def device_features(self) -> int:
        """The device-type feature bits offered (the transport adds its own)."""
        return 0

    def features_problem(self, features: int) -> str | None:
        """Why the driver's feature choice cannot be honoured, or None (§2.2.2)."""
        return None

    def config_bytes(self) -> bytes:
        """The device configuration space as it reads now (§2.5)."""
        return b""

    def write_config(self, offset: int, data: bytes) -> None:
        """The driver wrote ``data`` at ``offset`` of the configuration space.
        Most fields are read-only: the default ignores the write."""

    def activate(self) -> None:
        """The driver set DRIVER_OK: the device is live."""

    def reset(self) -> None:
        """The driver reset the device (Status write 0)."""

    def queue_notify(self, queue_index: int) -> None:
        """The driver kicked ``queue_index``: serve what it made available.

        The default serves every available chain with :meth:`process`.
        """
        if self.context is not None:
            self.context.serve(queue_index, lambda chain: self.process(queue_index, chain))

    def process(self, queue_index: int, chain: DescriptorChain) -> int:
        """Handle one request; return the bytes written into its writable part."""
        return 0

    def save(self) -> dict[str, Any]:
        """The device type's own state for a snapshot, as plain data (the
        transport saves it under ``"backend"``). Stateless types save ``{}``."""
        return {}

    def check_state(self, state: Any) -> None:
        """Raise DeviceStateError unless :meth:`restore` would take ``state``."""
        if state != {}:
            raise DeviceStateError(f"{self.name}: a device type without state restores "
                                   "only {}")

    def restore(self, state: dict[str, Any]) -> None:
        """Go back to a saved state, checked whole first."""
        self.check_state(state)

    def state(self) -> dict[str, Any]:
        """The device type's own state as plain data."""
        return {}

    def state_rows(self) -> list[tuple[str, str]]:
        """The device type's own state as (label, value) rows for a person;
        the transport shows them under its own. The default lists
        :meth:`state`'s scalar entries."""
        return plain_rows(self.state())
