"""ACPI on the board: the tables a Multiboot kernel finds as an OS would
(ACPI 6.5, 5.2), the PM1 registers (4.8.3), and S3/S5 from a real guest."""

from __future__ import annotations

import struct
import time

import pytest

from minikvm.core import board
from minikvm.core.acpi import acpi_tables
from minikvm.core.firmware import hand_over
from minikvm.devices.acpi_pm import PM_TIMER_HZ, AcpiPm
from minikvm.machine import Machine, StopKind


class Ram:
    """The tables laid out in a flat bytearray, read back by address."""

    def __init__(self) -> None:
        self.data = bytearray(0x100000)
        for address, table in acpi_tables():
            self.data[address:address + len(table)] = table

    def u32(self, address: int) -> int:
        return struct.unpack_from("<I", self.data, address)[0]

    def table(self, address: int) -> bytes:
        return bytes(self.data[address:address + self.u32(address + 4)])


def find_rsdp(ram: Ram) -> int:
    """What an OS does (5.2.5.1): "RSD PTR " on a 16-byte boundary in 0xE0000-0xFFFFF."""
    return next(a for a in range(0xE0000, 0x100000, 16) if ram.data[a:a + 8] == b"RSD PTR ")


def test_an_os_finds_rsdp_rsdt_fadt_facs_and_dsdt_each_summing_to_zero():
    ram = Ram()
    rsdp = find_rsdp(ram)
    assert sum(ram.data[rsdp:rsdp + 20]) % 256 == 0 and ram.data[rsdp + 15] == 0   # revision 0
    rsdt = ram.table(ram.u32(rsdp + 16))
    assert rsdt[:4] == b"RSDT" and sum(rsdt) % 256 == 0
    (fadt_at,) = struct.unpack_from("<I", rsdt, 36)
    fadt = ram.table(fadt_at)
    assert fadt[:4] == b"FACP" and len(fadt) == 116 and sum(fadt) % 256 == 0
    facs_at, dsdt_at = struct.unpack_from("<II", fadt, 36)
    assert facs_at % 64 == 0 and ram.data[facs_at:facs_at + 4] == b"FACS"
    assert ram.u32(facs_at + 4) == 64
    dsdt = ram.table(dsdt_at)
    assert dsdt[:4] == b"DSDT" and sum(dsdt) % 256 == 0
    assert b"_S3_" in dsdt and b"_S5_" in dsdt
    # The PM registers where the board puts them, with their lengths.
    pm1a_evt, _, pm1a_cnt, _, _, pm_tmr = struct.unpack_from("<6I", fadt, 56)
    assert (pm1a_evt, pm1a_cnt, pm_tmr) == (board.ACPI_PM_PORT, board.ACPI_PM_PORT + 4,
                                            board.ACPI_PM_PORT + 8)
    assert tuple(fadt[88:92]) == (4, 2, 0, 4)


def test_pm1_status_bits_clear_when_written_with_one_and_slp_en_calls_the_machine():
    asked = []
    pm = AcpiPm(asked.append)
    pm.woke(rtc=True)
    assert pm.read(0, 2) == 0x8400                      # WAK_STS | RTC_STS
    pm.write(0, 2, 0x0400)                              # clear RTC_STS only
    assert pm.read(0, 2) == 0x8000
    pm.write(2, 2, 0x0400)
    assert pm.rtc_wakes and pm.read(0, 4) == 0x0400_8000   # STS and EN in one read
    pm.write(4, 2, 0x2400)                              # SLP_TYP 1, SLP_EN
    assert asked == [1] and pm.read(4, 2) == 0x0400     # SLP_EN reads as 0
    assert pm.describe(4, 2, True, 0x2400).endswith(
        "SLP_EN with SLP_TYP 1: the guest asks to sleep; it slept and woke (WAK_STS set)")


def test_the_pm_timer_counts_at_3_579545_mhz_in_24_bits():
    now = [100.0]
    pm = AcpiPm(clock=lambda: now[0])
    now[0] += 0.5
    assert pm.read(8, 4) == PM_TIMER_HZ // 2
    now[0] += 10
    assert pm.read(8, 4) == int(10.5 * PM_TIMER_HZ) & 0xFFFFFF


def real_mode(*parts: str) -> bytes:
    return bytes.fromhex("".join(parts))


#: Real mode at 0x1000: SLP_TYP 0 (S5) with SLP_EN, then debug-exit 0x33 (never reached).
S5_GUEST = real_mode("ba0406", "b80020", "ef", "b033e6f4")
#: Real mode at 0x1000: FACS.firmware_waking_vector = 0x2000, RTC_EN in
#: PM1_EN, the RTC alarm at every second with AIE, then SLP_TYP 1 (S3) with
#: SLP_EN; after it, debug-exit 0x33. At 0x2000, the resume: debug-exit 0x2A.
S3_GUEST = real_mode(
    "b800e08ec0", "2666c7060c0100200000",           # es = 0xE000; mov dword es:[0x10c], 0x2000
    "ba0206", "b80004", "ef",                        # PM1_EN = RTC_EN
    "b001e670b0c0e671", "b003e670b0c0e671", "b005e670b0c0e671",   # alarms: don't care
    "b00be670b022e671",                              # register B = AIE | 24-hour
    "ba0406", "b80024", "ef",                        # PM1_CNT = SLP_EN | SLP_TYP 1
    "b033e6f4")
RESUME = real_mode("b02ae6f4")


def acpi_machine(code: bytes) -> Machine:
    machine = Machine(irqchip=True)
    hand_over(machine.vm, machine.memory)            # the tables, as for a Multiboot kernel
    machine.memory.write(0x1000, code)
    machine.memory.write(0x2000, RESUME)
    machine.set_mode("real", 0x1000)
    return machine


@pytest.mark.kvm
def test_slp_typ_0_is_s5_and_powers_the_machine_off():
    with acpi_machine(S5_GUEST) as machine:
        stop = machine.run(timeout=10)
    assert stop.kind is StopKind.POWER_OFF and stop.status == 0, stop


@pytest.mark.kvm
@pytest.mark.slow
def test_s3_sleeps_until_the_rtc_alarm_and_resumes_at_the_waking_vector_in_real_mode():
    with acpi_machine(S3_GUEST) as machine:
        started = time.time()
        stop = machine.run(timeout=10)
        slept = time.time() - started
        sregs = machine.vcpu.get_sregs()
        wakes = machine.acpi.wakes
        status = machine.acpi.pm.read(0, 2)
    assert stop.kind is StopKind.DEBUG_EXIT and stop.status == (0x2A << 1) | 1, stop
    assert wakes == 1 and status & 0x8400 == 0x8400       # WAK_STS, RTC_STS
    assert sregs.cs.selector == 0x200 and sregs.cr0 & 1 == 0  # 0x2000 = 0200:0000, real mode
    assert slept <= 2.5                                     # the alarm rings within a second


@pytest.mark.kvm
@pytest.mark.slow
def test_without_rtc_en_nothing_wakes_the_sleeper_and_the_timeout_ends_the_run():
    no_rtc_en = S3_GUEST.replace(real_mode("ba0206", "b80004"), real_mode("ba0206", "b80000"))
    assert no_rtc_en != S3_GUEST
    with acpi_machine(no_rtc_en) as machine:
        stop = machine.run(timeout=1)
        wakes = machine.acpi.wakes
    assert stop.kind is StopKind.TIMEOUT and stop.status == 124 and wakes == 0
