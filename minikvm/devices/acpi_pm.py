"""ACPI's fixed power-management registers: PM1a event, PM1a control, PM timer.

ACPI (6.5, section 4.8 "ACPI Hardware Specification") gives every PC a
few registers at I/O ports the FADT names; QEMU's PIIX4 puts them at 0x600
and so does this board (offsets inside the 12-port window):

=======  ========  ======================================================
offset   register  bits used here
=======  ========  ======================================================
0        PM1_STS   TMR_STS (0), RTC_STS (10), WAK_STS (15); a 1 written
                   clears a bit (4.8.3.1.1 "PM1 Status Registers")
2        PM1_EN    TMR_EN (0), RTC_EN (10): which events may wake the PC
4        PM1_CNT   SCI_EN (0), SLP_TYP (12:10), SLP_EN (13, write-only):
                   writing SLP_EN puts the PC to sleep in the state whose
                   SLP_TYP value the DSDT's ``\\_Sx`` object gave (4.8.3.2.1)
8        PM_TMR    a 24-bit counter at 3.579545 MHz (4.8.3.3)
=======  ========  ======================================================

The device knows nothing of how a PC sleeps: a write of SLP_EN calls
``on_sleep(slp_typ)`` and the machine decides (it suspends to RAM for the
type the board's DSDT gives S3, and wakes when the RTC alarm rings with
RTC_EN set). It sets WAK_STS and the wake event's status bit when told of
the wake (:meth:`woke`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from minikvm.devices.base import Device
from minikvm.devices.state import MAX_U64, SavedState

__all__ = ["PM_TIMER_HZ", "AcpiPm"]

PM1_STS, PM1_EN, PM1_CNT, PM_TMR = 0, 2, 4, 8
TMR_STS = 1 << 0
RTC_STS = 1 << 10
WAK_STS = 1 << 15
RTC_EN = 1 << 10
SCI_EN = 1 << 0
SLP_TYP_SHIFT = 10
SLP_TYP_MASK = 0x7 << SLP_TYP_SHIFT
SLP_EN = 1 << 13
#: The PM timer's frequency (ACPI 4.8.3.3: 3.579545 MHz).
PM_TIMER_HZ = 3_579_545
_TIMER_MASK = (1 << 24) - 1
_STS_BITS = TMR_STS | RTC_STS | WAK_STS
_EN_BITS = 1 | RTC_EN
_NAMES = {PM1_STS: "PM1_STS", PM1_EN: "PM1_EN", PM1_CNT: "PM1_CNT", PM_TMR: "PM_TMR"}


class AcpiPm(Device):
    """PM1a event and control blocks and the PM timer, in one window."""

    name = "acpi-pm"
    model = "ACPI PM1a + PM timer"
    clock_fields = ("ticks",)

    def __init__(self, on_sleep: Callable[[int], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.on_sleep = on_sleep
        self.clock = clock
        self.status = 0
        self.enable = 0
        self.control = 0
        self._start = clock()

    def timer(self) -> int:
        """PM_TMR: 3.579545 MHz ticks since power-up, 24 bits."""
        return int((self.clock() - self._start) * PM_TIMER_HZ) & _TIMER_MASK

    def woke(self, rtc: bool) -> None:
        """The machine woke from a sleep state (by the RTC alarm if ``rtc``)."""
        self.status |= WAK_STS | (RTC_STS if rtc else 0)
        self.control &= ~SLP_TYP_MASK

    def read(self, offset: int, size: int) -> int:
        if offset == PM_TMR:
            return self.timer()
        # A 4-byte read at the event block gives PM1_STS and PM1_EN at once.
        value = self.status | self.enable << 16 if offset == PM1_STS else {
            PM1_EN: self.enable, PM1_CNT: self.control}.get(offset, 0)
        return value & ((1 << 8 * size) - 1) if offset in _NAMES else 0xFF

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == PM1_STS:
            self.status &= ~(value & _STS_BITS)          # write 1 to clear
            if size == 4:
                self.enable = (value >> 16) & _EN_BITS
        elif offset == PM1_EN:
            self.enable = value & _EN_BITS
        elif offset == PM1_CNT:
            self.control = value & (SCI_EN | SLP_TYP_MASK)   # SLP_EN reads as 0
            if value & SLP_EN and self.on_sleep is not None:
                self.on_sleep((value & SLP_TYP_MASK) >> SLP_TYP_SHIFT)

    @property
    def rtc_wakes(self) -> bool:
        """RTC_EN: may the RTC alarm wake the PC?"""
        return bool(self.enable & RTC_EN)

    def register_name(self, offset: int, is_write: bool) -> str:
        return _NAMES.get(offset, f"+{offset:#x}")

    def describe(self, offset: int, size: int, is_write: bool, value: int) -> str:
        name = self.register_name(offset, is_write)
        if is_write and offset == PM1_CNT and value & SLP_EN:
            woke = ("; it slept and woke (WAK_STS set)" if self.status & WAK_STS else "")
            return (f"ACPI {name} write {value:#06x}: SLP_EN with SLP_TYP "
                    f"{(value & SLP_TYP_MASK) >> SLP_TYP_SHIFT}: the guest asks to sleep{woke}")
        what = "write" if is_write else "read ->"
        return f"ACPI {name} {what} {value:#x}"

    def save(self) -> dict[str, Any]:
        """The three registers and the PM timer's count (all its ticks, not
        only the 24 bits the guest reads): restored, the timer goes on from
        there, so a guest measuring time across a snapshot sees no jump back."""
        ticks = int((self.clock() - self._start) * PM_TIMER_HZ)
        return {"status": self.status, "enable": self.enable, "control": self.control,
                "ticks": max(0, min(ticks, MAX_U64))}

    def check_state(self, state: Any) -> None:
        fields = SavedState(state, self.name, ("status", "enable", "control", "ticks"))
        for key, bits in (("status", _STS_BITS), ("enable", _EN_BITS),
                          ("control", SCI_EN | SLP_TYP_MASK)):
            fields.bits(key, bits)
        fields.integer("ticks", 0, MAX_U64)

    def restore(self, state: dict[str, Any]) -> None:
        self.check_state(state)
        self.status, self.enable, self.control = state["status"], state["enable"], state["control"]
        self._start = self.clock() - state["ticks"] / PM_TIMER_HZ

    def state(self) -> dict[str, Any]:
        return {"PM1_STS": self.status, "PM1_EN": self.enable, "PM1_CNT": self.control}
