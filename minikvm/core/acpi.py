"""ACPI on the board: the tables a BIOS publishes, and sleeping in S3.

A PC's firmware tells the operating system about power management through
tables in memory (ACPI 6.5, chapter 5) and fixed registers at I/O ports
(chapter 4). For a Multiboot kernel minikvm publishes the few tables that
say where those registers are, as SeaBIOS does under QEMU:

* the **RSDP** (5.2.5), found by scanning 0xE0000-0xFFFFF for
  ``"RSD PTR "`` on a 16-byte boundary; revision 0, pointing at
* the **RSDT** (5.2.7), which lists one table:
* the **FADT** (5.2.9, the ACPI 1.0 layout of 116 bytes): the PM1a event
  and control blocks and the PM timer (``devices/acpi_pm.py``), the RTC's
  century register, and the addresses of
* the **FACS** (5.2.10), where the OS leaves its *waking vector*, and
* the **DSDT** (5.2.11.1), whose AML here only names the sleep types:
  ``Name (_S3, Package () {1, 1})`` and ``Name (_S5, Package () {0, 0})``
  -- the SLP_TYP values QEMU's PIIX4 uses for S3 and S5 (7.4.2).

:func:`~minikvm.core.firmware.hand_over` writes them with the rest of what a
BIOS leaves. :class:`AcpiPlatform` is the board's side of the registers: the MC146818
RTC and the PM registers on the port bus, and what a write of SLP_EN does.
SLP_TYP 0 (S5) powers the machine off. SLP_TYP 1 (S3, "suspend to RAM")
stops the CPU with RAM kept; when the RTC alarm rings with RTC_EN set the
PC wakes, and the firmware's resume path jumps to the FACS's
``firmware_waking_vector`` in real mode: CS = vector >> 4, IP = vector &
0xF (5.2.10). That is done here directly, on the vCPU that asked to sleep,
while the machine's lock holds every other device access.
"""

from __future__ import annotations

import struct
import time
from typing import Any

from minikvm.core import board
from minikvm.core.stop import Stop, StopKind
from minikvm.devices.acpi_pm import AcpiPm
from minikvm.devices.rtc import REG_CENTURY, Rtc

__all__ = ["FACS_OFFSET", "SLP_TYP_S3", "SLP_TYP_S5", "AcpiPlatform", "acpi_tables", "checksum"]

#: The DSDT's sleep types (what ``\_S3``/``\_S5`` say SLP_TYP is).
SLP_TYP_S3 = 1
SLP_TYP_S5 = 0
_OEM_ID = b"MINKVM"
_OEM_TABLE_ID = b"MINIKVM "
#: Name (_S3_, Package (0x02) {One, One}); Name (_S5_, Package (0x02) {Zero, Zero})
_DSDT_AML = (b"\x08_S3_\x12\x06\x02\x0a\x01\x0a\x01"
             b"\x08_S5_\x12\x06\x02\x0a\x00\x0a\x00")
#: FADT flags (5.2.9 table 5.10): WBINVD (0), PROC_C1 (2), PWR_BUTTON (4) and
#: SLP_BUTTON (5) -- the last two set mean "no such button".
_FADT_FLAGS = 1 << 0 | 1 << 2 | 1 << 4 | 1 << 5
_FACS_SIZE = 64
#: Where the FACS lies from the tables' base (64-byte aligned, as 5.2.10 asks).
FACS_OFFSET = 0x100
_WAKING_VECTOR = 12          # offset of firmware_waking_vector in the FACS
_X_WAKING_VECTOR = 24        # ... and of the 64-bit one
#: The SCI's interrupt line (QEMU's PIIX4: IRQ 9).
_SCI_IRQ = 9
#: How often a sleeping machine looks whether it should wake or the run ended.
_SLEEP_SLICE = 0.005


def checksum(data: bytes) -> int:
    """The byte that makes ``data`` sum to 0 mod 256 (every ACPI table's rule)."""
    return -sum(data) & 0xFF


def _table(signature: bytes, revision: int, body: bytes) -> bytes:
    """A table with the System Description Table Header (5.2.6), summed to 0."""
    header = struct.pack("<4sIBB6s8sI4sI", signature, 36 + len(body), revision, 0, _OEM_ID,
                         _OEM_TABLE_ID, 1, b"MKVM", 1)
    data = bytearray(header + body)
    data[9] = checksum(data)
    return bytes(data)


def _fadt(facs: int, dsdt: int) -> bytes:
    """FADT revision 1: where the PM registers are and how long each block is."""
    pm = board.ACPI_PM_PORT
    body = struct.pack(
        "<IIBBHIBBBB" "IIIIIIII" "BBBBBBBB" "HHHH" "BBBBBHBI",
        facs, dsdt, 0, 0, _SCI_IRQ, 0, 0, 0, 0, 0,
        pm, 0, pm + 4, 0, 0, pm + 8, 0, 0,                  # PM1a_EVT, PM1a_CNT, PM_TMR
        4, 2, 0, 4, 0, 0, 0, 0,                             # their lengths
        101, 1001, 0, 0,                                    # no C2, no C3
        0, 0, 0, 0, REG_CENTURY, 0, 0, _FADT_FLAGS)
    return _table(b"FACP", 1, body)


def acpi_tables(base: int = board.ACPI_TABLES_BASE) -> list[tuple[int, bytes]]:
    """The RSDP and the tables, as (guest-physical address, bytes), from ``base``."""
    rsdt_at, fadt_at, facs_at, dsdt_at = base + 0x40, base + 0x80, base + FACS_OFFSET, base + 0x140
    rsdp = bytearray(struct.pack("<8sB6sBI", b"RSD PTR ", 0, _OEM_ID, 0, rsdt_at))
    rsdp[8] = checksum(rsdp)
    facs = struct.pack("<4sIIIIIQB", b"FACS", _FACS_SIZE, 0, 0, 0, 0, 0, 1).ljust(_FACS_SIZE,
                                                                                  b"\0")
    return [(base, bytes(rsdp)), (rsdt_at, _table(b"RSDT", 1, struct.pack("<I", fadt_at))),
            (fadt_at, _fadt(facs_at, dsdt_at)), (facs_at, facs),
            (dsdt_at, _table(b"DSDT", 1, _DSDT_AML))]


class AcpiPlatform:
    """The RTC and the ACPI PM registers of ``machine``, and its sleep states."""

    def __init__(self, machine: Any) -> None:
        self.machine = machine
        self.rtc = Rtc()
        self.pm = AcpiPm(self._on_sleep)
        #: The devices by the board's names (the machine wires them).
        self.devices = {"rtc": self.rtc, "acpi-pm": self.pm}
        #: How many times the guest slept in S3 and woke.
        self.wakes = 0

    def _on_sleep(self, slp_typ: int) -> None:
        """SLP_EN was written (on a vCPU thread, under the machine's lock)."""
        machine = self.machine
        if slp_typ == SLP_TYP_S5:
            machine.request_stop(Stop(StopKind.POWER_OFF, board.ExitStatus.OK.value,
                                      "the guest powered off (ACPI S5: SLP_TYP 0, SLP_EN)"))
        elif slp_typ == SLP_TYP_S3:
            self.suspend_to_ram()

    def waking_vector(self) -> int:
        """FACS.firmware_waking_vector as the OS left it (0: none, or no
        FACS published -- only a Multiboot boot gets the tables)."""
        memory = self.machine.memory
        facs = board.ACPI_TABLES_BASE + FACS_OFFSET
        if memory.read(facs, 4) != b"FACS":
            return 0
        if struct.unpack("<Q", memory.read(facs + _X_WAKING_VECTOR, 8))[0]:
            return 0       # a 32/64-bit waking vector: not offered (no such firmware path)
        return struct.unpack("<I", memory.read(facs + _WAKING_VECTOR, 4))[0]

    def suspend_to_ram(self) -> None:
        """S3: the CPU stops, RAM stays; wake on the RTC alarm if RTC_EN,
        then resume at the waking vector. Without a vector to go to, a PC's
        firmware cold-boots: the run ends as a reset. A timeout or a pause
        (the TUI's, the debugger's) while asleep ends the sleep without a
        wake: the guest goes on after its SLP_EN write."""
        machine = self.machine
        if len(machine.runners) > 1:
            machine.request_stop(Stop(StopKind.UNEXPECTED_EXIT, board.ExitStatus.GUEST_CRASH.value,
                                      "ACPI S3 with several vCPUs is not emulated"))
            return
        vector = self.waking_vector()
        if not 0 < vector < 0x100000:
            machine.request_stop(Stop(StopKind.RESET, board.ExitStatus.OK.value,
                                      "the guest slept in S3 with no real-mode waking "
                                      "vector: the firmware would reboot"))
            return
        runner = machine.runners[0]
        wake = self.rtc.next_alarm() if self.pm.rtc_wakes else None
        while wake is None or time.time() < wake:
            if runner.timed_out or runner.pause_requested:
                return    # the run's time is up, or a pause: the sleep is given up
            time.sleep(_SLEEP_SLICE if wake is None else
                       max(0.0, min(_SLEEP_SLICE, wake - time.time())))
        runner.finish()                 # complete the OUT that asked for the sleep
        machine.set_mode("real", 0)
        sregs = runner.vcpu.get_sregs()
        sregs.cs.selector, sregs.cs.base = vector >> 4, (vector >> 4) << 4
        runner.vcpu.set_sregs(sregs)
        regs = runner.vcpu.get_regs()
        regs.rip = vector & 0xF
        runner.vcpu.set_regs(regs)
        self.pm.woke(rtc=True)
        self.wakes += 1
