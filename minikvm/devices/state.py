"""Checking saved device state, and saving every device on a machine's buses.

A device's :meth:`~minikvm.devices.base.Device.save` gives plain data; its
:meth:`~minikvm.devices.base.Device.restore` must take that data back --
from a snapshot file that anyone may have edited. So a restore first checks
*every* field (type, range, length, that no field is missing or unknown)
and only then assigns, raising :class:`DeviceStateError` with one line that
names the device and the field. The small validators here keep each
device's check short; each returns the value it checked.

:func:`save_devices` and :func:`restore_devices` do the same for all the
devices on a set of buses at once, keyed ``"pio:0x3f8:com1"`` (bus, base
address, device name). A restore is refused whole when the snapshot's set of
devices is not the machine's, and every device's state is checked before
any device is changed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from minikvm.bus import Bus
from minikvm.devices.base import DeviceStateError

__all__ = [
    "DeviceStateError",
    "MAX_U16",
    "MAX_U32",
    "MAX_U64",
    "device_key",
    "hex_bytes",
    "require_bits",
    "require_bool",
    "require_bools",
    "require_bytes_hex",
    "require_choice",
    "require_counters",
    "require_int",
    "require_keys",
    "require_list",
    "require_optional_int",
    "require_optional_str",
    "require_str",
    "restore_devices",
    "save_devices",
]

MAX_U16 = 0xFFFF
MAX_U32 = 0xFFFF_FFFF
MAX_U64 = 0xFFFF_FFFF_FFFF_FFFF
#: Any counter: a saved count is a non-negative integer below 2**64.
_MAX_COUNT = MAX_U64

_HEX = re.compile(r"[0-9a-f]*")


def _fail(device: str, key: str, why: str) -> DeviceStateError:
    return DeviceStateError(f"{device}: saved field {key!r} {why}")


def hex_bytes(data: bytes | bytearray) -> str:
    """Bytes as a saved state holds them: a lowercase hex string."""
    return bytes(data).hex()


def require_keys(state: Any, keys: Iterable[str], *, device: str = "state") -> dict[str, Any]:
    """``state`` is a dict with exactly ``keys``: none missing, none unknown."""
    if not isinstance(state, dict):
        raise DeviceStateError(f"{device}: saved state is a {type(state).__name__}, "
                               "not a dict")
    wanted = set(keys)
    missing = sorted(wanted - state.keys())
    if missing:
        raise _fail(device, missing[0], "is missing")
    unknown = sorted(str(key) for key in state.keys() - wanted)
    if unknown:
        raise _fail(device, unknown[0], "is not part of this device's state")
    return state


def require_int(state: Mapping[str, Any], key: str, lo: int, hi: int, *,
                device: str = "state") -> int:
    """An integer (not a bool) in ``lo..hi``."""
    value = state[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(device, key, f"is a {type(value).__name__}, not an integer")
    if not lo <= value <= hi:
        raise _fail(device, key, f"= {value} is outside {lo}..{hi}")
    return value


def require_bits(state: Mapping[str, Any], key: str, mask: int, *,
                 device: str = "state") -> int:
    """A register value with no bit set outside ``mask`` (the bits that exist)."""
    value = require_int(state, key, 0, mask, device=device)
    if value & ~mask:
        raise _fail(device, key, f"= {value:#x} sets bits outside {mask:#x}")
    return value


def require_choice(state: Mapping[str, Any], key: str, choices: Iterable[int], *,
                   device: str = "state") -> int:
    """An integer that is one of ``choices``."""
    allowed = sorted(choices)
    value = require_int(state, key, allowed[0], allowed[-1], device=device)
    if value not in allowed:
        raise _fail(device, key, f"= {value:#x} is not one of "
                                 f"{', '.join(f'{choice:#x}' for choice in allowed)}")
    return value


def require_optional_int(state: Mapping[str, Any], key: str, lo: int, hi: int, *,
                         device: str = "state") -> int | None:
    """None, or an integer in ``lo..hi``."""
    if state[key] is None:
        return None
    return require_int(state, key, lo, hi, device=device)


def require_bool(state: Mapping[str, Any], key: str, *, device: str = "state") -> bool:
    value = state[key]
    if not isinstance(value, bool):
        raise _fail(device, key, f"is a {type(value).__name__}, not true/false")
    return value


def _require_sized(state: Mapping[str, Any], key: str, kind: type, max_len: int,
                   device: str) -> Any:
    """A ``kind`` (str or list) of at most ``max_len`` entries."""
    value = state[key]
    if not isinstance(value, kind):
        raise _fail(device, key, f"is a {type(value).__name__}, not a {kind.__name__}")
    if len(value) > max_len:
        raise _fail(device, key, f"has {len(value)} entries, more than {max_len}")
    return value


def require_str(state: Mapping[str, Any], key: str, max_len: int, *,
                device: str = "state") -> str:
    return _require_sized(state, key, str, max_len, device)


def require_optional_str(state: Mapping[str, Any], key: str, max_len: int, *,
                         device: str = "state") -> str | None:
    if state[key] is None:
        return None
    return require_str(state, key, max_len, device=device)


def require_bytes_hex(state: Mapping[str, Any], key: str, max_len: int, *,
                      device: str = "state", exact: bool = False) -> bytes:
    """Bytes saved as lowercase hex: at most ``max_len`` of them (exactly,
    with ``exact``). The length is checked before anything is decoded."""
    value = state[key]
    if not isinstance(value, str):
        raise _fail(device, key, f"is a {type(value).__name__}, not a hex string")
    if len(value) % 2 or len(value) // 2 > max_len or (exact and len(value) // 2 != max_len):
        wanted = f"exactly {max_len}" if exact else f"at most {max_len}"
        raise _fail(device, key, f"holds {len(value) / 2:g} bytes, {wanted} allowed")
    if not _HEX.fullmatch(value):
        raise _fail(device, key, "is not lowercase hex")
    return bytes.fromhex(value)


def require_list(state: Mapping[str, Any], key: str, max_len: int, *,
                 device: str = "state") -> list[Any]:
    return _require_sized(state, key, list, max_len, device)


def require_bools(state: Mapping[str, Any], key: str, length: int, *,
                  device: str = "state") -> list[bool]:
    """A list of exactly ``length`` true/false values."""
    values = require_list(state, key, length, device=device)
    if len(values) != length:
        raise _fail(device, key, f"has {len(values)} entries, not {length}")
    if not all(isinstance(value, bool) for value in values):
        raise _fail(device, key, "holds something that is not true/false")
    return values


def require_counters(state: Mapping[str, Any], key: str, names: Iterable[str], *,
                     device: str = "state") -> dict[str, int]:
    """A dict of the named counters, each a non-negative integer."""
    where = f"{device}: {key}"
    counters = require_keys(state[key], names, device=where)
    return {name: require_int(counters, name, 0, _MAX_COUNT, device=where)
            for name in counters}


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
