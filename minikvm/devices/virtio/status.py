"""The virtio device status field and the order a driver may set its bits in.

A driver brings a virtio device up by setting status bits one at a time
(virtio 1.2 §3.1.1): ACKNOWLEDGE ("I found you"), DRIVER ("I can drive
you"), FEATURES_OK ("these are the features I use" -- the device may refuse
by not keeping the bit), then DRIVER_OK ("you are live"). Writing 0 resets
the device (§2.4, §4.2.2). FAILED may be set at any time by a driver that
gives up, and only a reset clears it (§2.1.1). NEEDS_RESET belongs to the
device: it sets it when it hit an error it cannot recover from (§2.1.2).

The allowed steps are data, :data:`STATUS_TRANSITIONS`, so the rules can be
read (and taught) in one place; :func:`status_after_write` applies them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntFlag

__all__ = [
    "DeviceStatus",
    "STATUS_TRANSITIONS",
    "StatusChange",
    "VIRTIO_CONFIG_S_ACKNOWLEDGE",
    "VIRTIO_CONFIG_S_DRIVER",
    "VIRTIO_CONFIG_S_DRIVER_OK",
    "VIRTIO_CONFIG_S_FAILED",
    "VIRTIO_CONFIG_S_FEATURES_OK",
    "VIRTIO_CONFIG_S_NEEDS_RESET",
    "describe_status",
    "status_after_write",
]


class DeviceStatus(IntFlag):
    """The bits of the Status register (virtio 1.2 §2.1)."""

    #: The guest OS has noticed the device.
    ACKNOWLEDGE = 1
    #: The guest OS has a driver for it.
    DRIVER = 2
    #: The driver is set up and the device may process queues.
    DRIVER_OK = 4
    #: The driver has written the features it uses; kept only if the device agrees.
    FEATURES_OK = 8
    #: Set by the device: something went wrong, the driver must reset it.
    NEEDS_RESET = 0x40
    #: Set by the driver: it gave up on the device.
    FAILED = 0x80


VIRTIO_CONFIG_S_ACKNOWLEDGE = DeviceStatus.ACKNOWLEDGE
VIRTIO_CONFIG_S_DRIVER = DeviceStatus.DRIVER
VIRTIO_CONFIG_S_DRIVER_OK = DeviceStatus.DRIVER_OK
VIRTIO_CONFIG_S_FEATURES_OK = DeviceStatus.FEATURES_OK
VIRTIO_CONFIG_S_NEEDS_RESET = DeviceStatus.NEEDS_RESET
VIRTIO_CONFIG_S_FAILED = DeviceStatus.FAILED

_A = DeviceStatus.ACKNOWLEDGE
_D = DeviceStatus.DRIVER
_F = DeviceStatus.FEATURES_OK
_O = DeviceStatus.DRIVER_OK
_NONE = DeviceStatus(0)
#: The bits in the order a driver sets them, for printing.
_SPEC_ORDER = (_A, _D, _F, _O, DeviceStatus.NEEDS_RESET, DeviceStatus.FAILED)

#: The driver-owned bits (everything but NEEDS_RESET and FAILED).
_DRIVER_STEPS = _A | _D | _F | _O

#: From each initialisation state, the one next state a driver may write
#: (virtio 1.2 §3.1.1 steps 2, 3, 5 and 8; §2.1.1 "the driver MUST NOT clear
#: a device status bit"). Not in the table but always allowed: writing 0
#: (reset, §2.4), writing the current value again (no change), and setting
#: FAILED (§2.1: "the driver has given up on the device").
STATUS_TRANSITIONS: dict[DeviceStatus, DeviceStatus | None] = {
    _NONE: _A,                # 2. the OS noticed the device
    _A: _A | _D,              # 3. it knows how to drive it
    _A | _D: _A | _D | _F,    # 5. features written; the device may refuse
    _A | _D | _F: _A | _D | _F | _O,  # 8. set up, device live
    _A | _D | _F | _O: None,  # live: only FAILED or a reset from here
}


@dataclass(frozen=True)
class StatusChange:
    """What writing the Status register does."""

    #: The status afterwards (what a read returns).
    status: DeviceStatus
    #: True when the write was 0: the whole device must be reset.
    reset: bool = False
    #: False when the write broke the rules and was ignored.
    allowed: bool = True
    #: Words for traces ("DRIVER_OK: device live", "illegal: ...").
    reason: str = ""


def describe_status(status: int) -> str:
    """``0x0f`` -> "ACKNOWLEDGE|DRIVER|FEATURES_OK|DRIVER_OK"; 0 -> "reset"."""
    if status == 0:
        return "reset"
    names = [flag.name for flag in _SPEC_ORDER if status & flag and flag.name]
    unknown = status & ~sum(_SPEC_ORDER) & 0xFF
    if unknown:
        names.append(f"{unknown:#x}")
    return "|".join(names)


def status_after_write(current: DeviceStatus, written: int) -> StatusChange:
    """Apply the transition rules to a write of ``written`` in state ``current``.

    The FEATURES_OK *acceptance* check is not here (it needs the features);
    the caller clears FEATURES_OK from the result when it refuses them.
    NEEDS_RESET in a written value is ignored: only the device sets it, and
    a driver that read-modify-writes the status may echo it back.
    """
    current = DeviceStatus(current & 0xFF)
    written &= 0xFF
    if written == 0:
        return StatusChange(_NONE, reset=True, reason="device reset")
    sticky = current & (DeviceStatus.NEEDS_RESET | DeviceStatus.FAILED)
    steps = current & _DRIVER_STEPS
    wanted = DeviceStatus(written & _DRIVER_STEPS)
    unknown = written & ~(_DRIVER_STEPS | DeviceStatus.NEEDS_RESET | DeviceStatus.FAILED)
    if written & DeviceStatus.FAILED:
        # §2.1: the driver may give up at any point; keep what was there.
        return StatusChange(current | DeviceStatus.FAILED,
                            reason="FAILED: the driver gave up on the device")
    if current & DeviceStatus.FAILED:
        return StatusChange(current, allowed=False,
                            reason="illegal: FAILED is sticky until a reset (write 0)")
    if unknown:
        return StatusChange(current, allowed=False,
                            reason=f"illegal: undefined status bits {unknown:#x}")
    if wanted == steps:
        return StatusChange(current, reason="no change")
    if STATUS_TRANSITIONS.get(steps) == wanted:
        added = DeviceStatus(wanted & ~steps)
        return StatusChange(wanted | sticky, reason=f"{added.name} set")
    return StatusChange(
        current, allowed=False,
        reason=(f"illegal: {describe_status(steps)} -> {describe_status(wanted)} "
                "(bits are set one at a time, in order, and never cleared; §3.1.1)"),
    )
