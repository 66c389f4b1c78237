"""Checking saved device state, and saving every device on a machine's buses.

A device's :meth:`~minikvm.devices.base.Device.save` gives plain data; its
:meth:`~minikvm.devices.base.Device.restore` must take that data back --
from a snapshot file that anyone may have edited. So a restore first checks
*every* field (type, range, length, that no field is missing or unknown)
and only then assigns, raising :class:`DeviceStateError` with one line that
names the device and the field. :class:`SavedState` keeps each device's
check short: the checks themselves are :mod:`minikvm.statecheck`'s,
shared with the snapshot reader; each returns the value it checked.

:func:`save_devices` and :func:`restore_devices` do the same for all the
devices on a set of buses at once, keyed ``"pio:0x3f8:com1"`` (bus, base
address, device name). A restore is refused whole when the snapshot's set of
devices is not the machine's, and every device's state is checked before
any device is changed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from minikvm.bus import Bus
from minikvm.devices.base import DeviceStateError
from minikvm.statecheck import MAX_U16, MAX_U32, MAX_U64, Fields

__all__ = [
    "DeviceStateError",
    "MAX_U16",
    "MAX_U32",
    "MAX_U64",
    "SavedState",
    "device_key",
    "hex_bytes",
    "restore_devices",
    "save_devices",
]


class SavedState(Fields):
    """A device's saved state, checked field by field (:class:`~minikvm.statecheck.Fields`):
    a failed check is a :class:`DeviceStateError` that names the device and
    the field, ``com1: saved field 'ier' = 0x10 sets bits outside 0xf``.
    ``device`` is the device's name; a part of it that checks itself (a
    virtqueue, a backend) is named by the caller, ``virtio-rng: queue 0``."""

    error = DeviceStateError
    unknown_field = "is not part of this device's state"

    def __init__(self, state: Any, device: str, keys: Iterable[str] | None = None) -> None:
        """Check that ``state`` is a dict, and has exactly ``keys`` when given."""
        super().__init__(state, device)
        if keys is not None:
            self.exactly(keys)

    def whole_name(self) -> str:
        return f"{self.name}: saved state"

    def field_name(self, key: str) -> str:
        return f"{self.name}: saved field {key!r}"

    def inner_name(self, key: str) -> str:
        return f"{self.name}: {key}"


def hex_bytes(data: bytes | bytearray) -> str:
    """Bytes as a saved state holds them: a lowercase hex string
    (:meth:`~minikvm.statecheck.Fields.hex_bytes` reads them back)."""
    return bytes(data).hex()


# -- every device on the buses ------------------------------------------------------------

def device_key(space: str, base: int, name: str) -> str:
    """How a device is named in a machine's saved state: ``pio:0x3f8:com1``."""
    return f"{space}:{base:#x}:{name}"


def _devices(buses: Iterable[Bus]) -> dict[str, Any]:
    devices: dict[str, Any] = {}
    for bus in buses:
        for mapping in bus:
            device = mapping.device
            key = device_key(bus.space, mapping.base, device.name)
            if not all(hasattr(device, method) for method in ("save", "check_state",
                                                              "restore")):
                raise DeviceStateError(f"{key}: the device cannot save its state")
            devices[key] = device
    return devices


def save_devices(buses: Iterable[Bus], *, clocks: bool = True) -> dict[str, dict[str, Any]]:
    """The saved state of every device on ``buses``, by :func:`device_key`.

    Call it (and :func:`restore_devices`) while no vCPU runs, or under the
    machine's lock: a device is only consistent between two exits.
    ``clocks=False`` leaves out the fields that move with host time on
    their own (a device's ``clock_fields``: the ACPI PM timer's count), for
    comparing two states; a snapshot keeps them.
    """
    states = {}
    for key, device in _devices(buses).items():
        state = states[key] = device.save()
        if not clocks:
            for field in getattr(device, "clock_fields", ()):
                state.pop(field, None)
    return states


def restore_devices(buses: Iterable[Bus], states: Any) -> None:
    """Restore every device on ``buses`` from :func:`save_devices` output.

    Refused (:class:`DeviceStateError`, nothing changed) when the snapshot
    names a device the machine lacks or lacks one the machine has, or when
    any device's state fails its checks: all are checked before any is
    restored.
    """
    devices = _devices(buses)
    if not isinstance(states, dict):
        raise DeviceStateError(f"devices: the saved states are a {type(states).__name__}, "
                               "not a dict")
    for key in devices:
        if key not in states:
            raise DeviceStateError(f"devices: the snapshot has no state for {key}, a device "
                                   "of this machine")
    for key in states:
        if key not in devices:
            raise DeviceStateError(f"devices: the snapshot names {key!r:.80}, a device this "
                                   "machine does not have")
    for key, device in devices.items():
        device.check_state(states[key])
    for key, device in devices.items():
        device.restore(states[key])
