"""The PC's real-time clock and CMOS RAM: a Motorola MC146818 at ports 0x70/0x71.

Every PC since the AT keeps the time of day and 114 bytes of battery-backed
RAM in an MC146818 (today: a part of the chipset that behaves like one).
Software selects a register by writing its number to port 0x70 (bit 7 of
that byte masks the NMI on a PC; the RTC ignores it) and reads or writes
it at port 0x71. The MC146818A data sheet names them:

==========  ===========================================================
0, 2, 4     seconds, minutes, hours (BCD unless register B's DM is set)
1, 3, 5     the alarm for each; a value with bits 7-6 set (0xC0-0xFF)
            is "don't care", so 0xC0 in all three rings every second
6-9         day of the week, date, month, year
A (10)      UIP (bit 7): an update of the time registers is under way
            -- set for 244 us before each second's update -- and the
            divider and rate select bits
B (11)      SET (7), PIE (6), AIE (5: alarm interrupt enable), UIE (4),
            SQWE (3), DM (2: binary), 24/12 (1), DSE (0)
C (12)      IRQF (7), PF (6), AF (5: alarm), UF (4); read-only, and
            reading it clears them
D (13)      VRT (7): the battery is good
14-127      RAM (the PC's layout: 0x0F shutdown status, 0x32 century)
==========  ===========================================================

This model keeps the host's time (UTC) plus whatever offset the guest set,
and works the flags out from that time when they are read, with no timer
of its own: UIP in the last 244 us of each second, AF and UF once per
second that passed since register C was last read (the alarm compared at
each of those seconds). It raises no interrupt on IRQ 8 -- no periodic,
alarm or update interrupt while the guest runs; the alarm is seen by
polling register C, and by the ACPI sleep logic through
:meth:`Rtc.next_alarm` (an alarm wakes a sleeping PC, ACPI 6.5 section
4.8.2.1.1 "RTC_STS").
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from minikvm.devices.base import Device
from minikvm.devices.state import SavedState, hex_bytes

__all__ = ["CMOS_SIZE", "Rtc"]

CMOS_SIZE = 128
#: A saved offset from host time: at most ~35,000 years either way.
_OFFSET_LIMIT = 1 << 40
#: Register C looks back at most a day (see _register_c).
_SEEN_LIMIT = 86400
REG_SECONDS, REG_SECONDS_ALARM, REG_MINUTES, REG_MINUTES_ALARM = 0, 1, 2, 3
REG_HOURS, REG_HOURS_ALARM, REG_WEEKDAY, REG_DAY, REG_MONTH, REG_YEAR = 4, 5, 6, 7, 8, 9
REG_A, REG_B, REG_C, REG_D = 10, 11, 12, 13
REG_CENTURY = 0x32
REG_A_UIP = 0x80
REG_B_SET, REG_B_AIE, REG_B_UIE, REG_B_DM, REG_B_24H = 0x80, 0x20, 0x10, 0x04, 0x02
REG_C_IRQF, REG_C_AF, REG_C_UF = 0x80, 0x20, 0x10
REG_D_VRT = 0x80
#: The data sheet's t_BUC: UIP rises this long before the update.
UIP_SECONDS = 244e-6
#: Registers 1, 3, 5 with both top bits set match any value.
DONT_CARE = 0xC0
#: At power-up: 32.768 kHz time base, 1024 Hz rate (register A = 0x26),
#: 24-hour BCD (register B = 0x02), battery good -- what PC BIOSes leave.
_POWER_UP_A = 0x26
_POWER_UP_B = REG_B_24H
_NAMES = {0: "seconds", 1: "seconds alarm", 2: "minutes", 3: "minutes alarm", 4: "hours",
          5: "hours alarm", 6: "day of week", 7: "date", 8: "month", 9: "year",
          10: "register A", 11: "register B", 12: "register C", 13: "register D"}
_BIT_NAMES = {REG_A: {REG_A_UIP: "UIP: update in progress"},
              REG_B: {REG_B_SET: "SET", 0x40: "PIE", REG_B_AIE: "AIE", REG_B_UIE: "UIE",
                      0x08: "SQWE", REG_B_DM: "DM binary", REG_B_24H: "24h", 0x01: "DSE"},
              REG_C: {REG_C_IRQF: "IRQF", 0x40: "PF", REG_C_AF: "AF alarm", REG_C_UF: "UF update"}}
_TIME_REGS = (REG_SECONDS, REG_MINUTES, REG_HOURS, REG_WEEKDAY, REG_DAY, REG_MONTH, REG_YEAR)


def _bcd(value: int) -> int:
    return (value // 10) << 4 | value % 10


def _from_bcd(value: int) -> int:
    return (value >> 4) * 10 + (value & 0x0F)


class Rtc(Device):
    """MC146818 RTC and CMOS RAM: port offset 0 selects, offset 1 is data.

    ``clock`` gives the host's time in seconds since the epoch (tests pass
    their own); the guest's clock runs at the same rate from where it set it.
    """

    name = "rtc"
    model = "MC146818 RTC/CMOS"
    clock_fields = ("seen",)

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.index = 0
        self.cmos = bytearray(CMOS_SIZE)
        self.cmos[REG_A] = _POWER_UP_A
        self.cmos[REG_B] = _POWER_UP_B
        self.cmos[REG_D] = REG_D_VRT
        #: Guest time minus host time, in whole seconds (the guest set it).
        self.offset = 0
        #: The last whole second whose update register C has reported.
        self._seen = int(self.clock())

    # -- time ----------------------------------------------------------------------

    def now(self) -> float:
        """The guest's time of day, in seconds since the epoch."""
        return self.clock() + self.offset

    def _encode(self, value: int) -> int:
        return value if self.cmos[REG_B] & REG_B_DM else _bcd(value)

    def _decode(self, value: int) -> int:
        return value if self.cmos[REG_B] & REG_B_DM else _from_bcd(value)

    def _time_value(self, register: int, seconds: float) -> int:
        t = time.gmtime(int(seconds))
        if register == REG_HOURS and not self.cmos[REG_B] & REG_B_24H:
            hour = t.tm_hour % 12 or 12
            return self._encode(hour) | (0x80 if t.tm_hour >= 12 else 0)
        value = {REG_SECONDS: t.tm_sec, REG_MINUTES: t.tm_min, REG_HOURS: t.tm_hour,
                 REG_WEEKDAY: (t.tm_wday + 1) % 7 + 1, REG_DAY: t.tm_mday,
                 REG_MONTH: t.tm_mon, REG_YEAR: t.tm_year % 100}[register]
        return self._encode(value)

    def _set_time(self, register: int, value: int) -> None:
        """The guest writes a time register: move its clock, keep the rest."""
        t = time.gmtime(int(self.now()))
        fields = [t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec]
        where = {REG_YEAR: 0, REG_MONTH: 1, REG_DAY: 2, REG_HOURS: 3, REG_MINUTES: 4,
                 REG_SECONDS: 5}
        if register not in where:
            return                    # day of week follows from the date here
        if register == REG_HOURS and not self.cmos[REG_B] & REG_B_24H:
            decoded = self._decode(value & 0x7F) % 12 + (12 if value & 0x80 else 0)
        else:
            decoded = self._decode(value)
        if register == REG_YEAR:
            decoded += t.tm_year - t.tm_year % 100
        limits = {0: (1970, 2099), 1: (1, 12), 2: (1, 31), 3: (0, 23), 4: (0, 59), 5: (0, 59)}
        low, high = limits[where[register]]
        if not low <= decoded <= high:
            return                    # nonsense from the guest: the clock keeps its time
        fields[where[register]] = decoded
        try:
            import calendar   # here: it imports datetime, and most runs never set the clock
            wanted = calendar.timegm(tuple(fields) + (0, 0, 0))
        except (OverflowError, ValueError):
            return
        self.offset = int(wanted - int(self.clock()))

    def alarm_matches(self, seconds: int) -> bool:
        """Does the alarm ring at the guest second ``seconds``?"""
        for register, alarm in ((REG_SECONDS, REG_SECONDS_ALARM), (REG_MINUTES, REG_MINUTES_ALARM),
                                (REG_HOURS, REG_HOURS_ALARM)):
            wanted = self.cmos[alarm]
            if wanted & DONT_CARE != DONT_CARE and wanted != self._time_value(register, seconds):
                return False
        return True

    def next_alarm(self, limit: int = 86400) -> float | None:
        """Host time at which the alarm next rings with AIE set (a wake
        source for an ACPI sleep); None when it is off or not within ``limit``
        seconds (an alarm repeats at least daily)."""
        if not self.cmos[REG_B] & REG_B_AIE:
            return None
        start = int(self.now()) + 1
        for second in range(start, start + limit):
            if self.alarm_matches(second):
                return second - self.offset
        return None

    def _register_c(self) -> int:
        """Register C: the flags of the seconds that passed since the last read."""
        now = int(self.now())
        passed = range(max(self._seen + 1, now - 86400), now + 1)
        self._seen = now
        if self.cmos[REG_B] & REG_B_SET or not passed:
            return 0
        flags = REG_C_UF
        if any(self.alarm_matches(second) for second in passed):
            flags |= REG_C_AF
        enabled = self.cmos[REG_B] & (REG_B_AIE | REG_B_UIE)
        if flags & enabled:
            flags |= REG_C_IRQF
        return flags

    # -- the ports -----------------------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        if offset == 0:
            return 0xFF                   # the index port reads back nothing on a PC
        register = self.index
        if register in _TIME_REGS:
            return self._time_value(register, self.now())
        if register == REG_A:
            uip = 0 if self.cmos[REG_B] & REG_B_SET else (
                REG_A_UIP if self.now() % 1 >= 1 - UIP_SECONDS else 0)
            return self.cmos[REG_A] & 0x7F | uip
        if register == REG_C:
            return self._register_c()
        if register == REG_CENTURY:
            return self._encode(time.gmtime(int(self.now())).tm_year // 100)
        return self.cmos[register]

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        if offset == 0:
            self.index = value & 0x7F     # bit 7 masks the NMI on a PC, not an RTC bit
            return
        register = self.index
        if register in _TIME_REGS:
            self._set_time(register, value)
        elif register == REG_A:
            self.cmos[REG_A] = value & 0x7F    # UIP is read-only
        elif register not in (REG_C, REG_D):    # C and D are read-only
            self.cmos[register] = value

    # -- words -----------------------------------------------------------------------

    def register_name(self, offset: int, is_write: bool) -> str:
        if offset == 0:
            return "index"
        return _NAMES.get(self.index, f"CMOS {self.index:#04x}")

    def describe(self, offset: int, size: int, is_write: bool, value: int) -> str:
        if offset == 0:
            return f"RTC index {value & 0x7F:#04x} ({_NAMES.get(value & 0x7F, 'CMOS RAM')})"
        what = "write" if is_write else "read ->"
        bits = _BIT_NAMES.get(self.index)
        named = [name for bit, name in bits.items() if value & bit] if bits else []
        words = f" ({' '.join(named)})" if named else ""
        return f"RTC {self.register_name(offset, is_write)} {what} {value:#04x}{words}"

    # -- snapshots -------------------------------------------------------------------

    def save(self) -> dict[str, Any]:
        """The index, the 128 CMOS bytes, the guest's offset from host time,
        and how far behind "now" register C last reported. Time itself is
        not saved: like a PC's battery-backed clock (and QEMU's RTC with
        ``base=utc``) it keeps running while the machine is saved."""
        seen = max(-_SEEN_LIMIT, min(0, self._seen - int(self.now())))
        return {"index": self.index, "cmos": hex_bytes(self.cmos), "offset": self.offset,
                "seen": seen}

    def check_state(self, state: Any) -> None:
        fields = SavedState(state, self.name, ("index", "cmos", "offset", "seen"))
        fields.integer("index", 0, CMOS_SIZE - 1)
        fields.hex_bytes("cmos", CMOS_SIZE, exact=True)
        fields.integer("offset", -_OFFSET_LIMIT, _OFFSET_LIMIT)
        fields.integer("seen", -_SEEN_LIMIT, 0)

    def restore(self, state: dict[str, Any]) -> None:
        self.check_state(state)
        self.index = state["index"]
        self.cmos[:] = bytes.fromhex(state["cmos"])
        self.offset = state["offset"]
        self._seen = int(self.now()) + state["seen"]

    def state(self) -> dict[str, Any]:
        return {"index": self.index, "offset": self.offset,
                "register_b": self.cmos[REG_B], "time": time.strftime(
                    "%Y-%m-%d %H:%M:%S", time.gmtime(int(self.now())))}
