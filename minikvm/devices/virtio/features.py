"""Virtio feature bits: what a device offers and a driver accepts (virtio 1.2 §2.2, §6).

A virtio device and its driver agree on optional behaviour by *feature
negotiation*: the device offers a 64-bit mask, the driver writes back the
subset it understands, and the device either accepts that subset (it keeps
FEATURES_OK set) or refuses it. Bits 0-23 belong to the device type (for
example ``VIRTIO_BLK_F_RO``), bits 24-40 to the queues and the transport --
those are the ones defined here, with the kernel's names and bit *numbers*
(``1 << VIRTIO_F_VERSION_1`` is the mask).
"""

from __future__ import annotations

__all__ = [
    "TRANSPORT_FEATURES",
    "VIRTIO_F_ACCESS_PLATFORM",
    "VIRTIO_F_ANY_LAYOUT",
    "VIRTIO_F_IN_ORDER",
    "VIRTIO_F_NOTIFICATION_DATA",
    "VIRTIO_F_RING_PACKED",
    "VIRTIO_F_RING_RESET",
    "VIRTIO_F_VERSION_1",
    "VIRTIO_RING_F_EVENT_IDX",
    "VIRTIO_RING_F_INDIRECT_DESC",
    "bit",
    "feature_names",
    "has_feature",
]

#: Legacy drivers only: the device does not care how buffers are framed.
VIRTIO_F_ANY_LAYOUT = 27
#: The driver may put a table of descriptors in one descriptor (§2.7.5.3).
VIRTIO_RING_F_INDIRECT_DESC = 28
#: used_event / avail_event fields suppress notifications (§2.7.7, §2.7.10).
VIRTIO_RING_F_EVENT_IDX = 29
#: The device follows this (1.x, "modern") specification, not the legacy
#: one. A modern MMIO device (Version 2) requires it.
VIRTIO_F_VERSION_1 = 32
#: The device sits behind an IOMMU; addresses are I/O virtual addresses.
VIRTIO_F_ACCESS_PLATFORM = 33
#: The packed ring layout (§2.8) instead of the split one (§2.7).
VIRTIO_F_RING_PACKED = 34
#: Buffers are used in the order they were made available.
VIRTIO_F_IN_ORDER = 35
#: The driver puts extra data in its notifications.
VIRTIO_F_NOTIFICATION_DATA = 38
#: Single queues can be reset (the QueueReset register).
VIRTIO_F_RING_RESET = 40


def bit(feature: int) -> int:
    """The mask of feature bit number ``feature``."""
    return 1 << feature


#: What every minikvm virtio device offers on top of its own bits.
TRANSPORT_FEATURES = (bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_RING_F_INDIRECT_DESC)
                      | bit(VIRTIO_RING_F_EVENT_IDX))

_NAMES = {
    VIRTIO_F_ANY_LAYOUT: "ANY_LAYOUT",
    VIRTIO_RING_F_INDIRECT_DESC: "INDIRECT_DESC",
    VIRTIO_RING_F_EVENT_IDX: "EVENT_IDX",
    VIRTIO_F_VERSION_1: "VERSION_1",
    VIRTIO_F_ACCESS_PLATFORM: "ACCESS_PLATFORM",
    VIRTIO_F_RING_PACKED: "RING_PACKED",
    VIRTIO_F_IN_ORDER: "IN_ORDER",
    VIRTIO_F_NOTIFICATION_DATA: "NOTIFICATION_DATA",
    VIRTIO_F_RING_RESET: "RING_RESET",
}


def has_feature(features: int, feature: int) -> bool:
    """True when bit number ``feature`` is set in the mask ``features``."""
    return bool(features >> feature & 1)


def feature_names(features: int, device_names: dict[int, str] | None = None) -> list[str]:
    """The set bits of ``features`` in words, lowest first ("VERSION_1", "bit 50")."""
    names = []
    for number in range(64):
        if has_feature(features, number):
            if device_names and number in device_names:
                names.append(device_names[number])
            else:
                names.append(_NAMES.get(number, f"bit {number}"))
    return names
