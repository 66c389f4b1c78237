"""Virtio devices over the MMIO transport: queues, block, console and entropy.

How the pieces fit (virtio 1.2):

* :mod:`.mmio` -- :class:`VirtioMmioTransport`, the 4 KiB register window
  a guest driver talks to (§4.2);
* :mod:`.status`, :mod:`.features` -- the device status bits and their
  allowed order (§2.1, §3.1), the feature bits (§2.2, §6);
* :mod:`.queue` -- split virtqueues in guest memory (§2.7);
* :mod:`.device` -- :class:`VirtioDevice`, what a device type implements,
  and :class:`VirtioContext`, all it may ask of its transport;
* :mod:`.blk`, :mod:`.console`, :mod:`.rng` -- the device types (§5.2-5.4);
* :mod:`.mock` -- a driver-side mock for tests, lessons and benchmarks.

To plug a device into a machine: ``VirtioMmioTransport(VirtioBlk(path),
memory, irq_line)`` registered on the MMIO bus with a window of
:data:`VIRTIO_MMIO_WINDOW_SIZE` bytes.
"""

from minikvm.devices.virtio.blk import VirtioBlk
from minikvm.devices.virtio.console import VirtioConsole
from minikvm.devices.virtio.device import VirtioContext, VirtioDevice
from minikvm.devices.virtio.mmio import VIRTIO_MMIO_WINDOW_SIZE, VirtioMmioTransport
from minikvm.devices.virtio.queue import DescriptorChain, SplitQueue, VirtqueueError
from minikvm.devices.virtio.rng import VirtioRng
from minikvm.devices.virtio.status import DeviceStatus

__all__ = [
    "DescriptorChain",
    "DeviceStatus",
    "SplitQueue",
    "VIRTIO_MMIO_WINDOW_SIZE",
    "VirtioBlk",
    "VirtioConsole",
    "VirtioContext",
    "VirtioDevice",
    "VirtioMmioTransport",
    "VirtioRng",
    "VirtqueueError",
]
