"""The MC146818 RTC at ports 0x70/0x71, read as its data sheet describes it,
on a clock the test holds (no KVM)."""

from __future__ import annotations

import calendar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from minikvm.devices.rtc import (
    REG_A,
    REG_A_UIP,
    REG_B,
    REG_B_AIE,
    REG_B_DM,
    REG_C,
    REG_C_AF,
    REG_C_IRQF,
    REG_C_UF,
    REG_D,
    REG_D_VRT,
    UIP_SECONDS,
    Rtc,
)

#: 2026-12-01 23:59:58 UTC
T0 = calendar.timegm((2026, 12, 1, 23, 59, 58, 0, 0, 0))


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def read(rtc: Rtc, register: int) -> int:
    rtc.write(0, 1, register | 0x80)     # bit 7: the PC's NMI mask, not part of the index
    return rtc.read(1, 1)


def write(rtc: Rtc, register: int, value: int) -> None:
    rtc.write(0, 1, register)
    rtc.write(1, 1, value)


def test_the_time_reads_in_bcd_and_in_binary_when_register_b_says_so():
    rtc = Rtc(Clock(T0))
    assert [read(rtc, r) for r in (0, 2, 4, 7, 8, 9, 0x32)] == [0x58, 0x59, 0x23, 0x01, 0x12,
                                                                0x26, 0x20]
    assert read(rtc, REG_D) == REG_D_VRT
    write(rtc, REG_B, read(rtc, REG_B) | REG_B_DM)
    assert [read(rtc, r) for r in (0, 2, 4)] == [58, 59, 23]


def test_uip_is_set_only_in_the_last_244_microseconds_of_each_second():
    clock = Clock(T0 + 0.5)
    rtc = Rtc(clock)
    assert not read(rtc, REG_A) & REG_A_UIP
    clock.now = T0 + 1 - UIP_SECONDS / 2
    assert read(rtc, REG_A) & REG_A_UIP
    clock.now = T0 + 1.0001
    assert not read(rtc, REG_A) & REG_A_UIP
    assert read(rtc, REG_A) & 0x7F == 0x26      # the divider and rate bits


def test_register_c_reports_the_alarm_once_and_reading_it_clears_it():
    clock = Clock(T0 + 0.5)
    rtc = Rtc(clock)
    for alarm in (1, 3, 5):
        write(rtc, alarm, 0xC0)                  # don't care: every second
    write(rtc, REG_B, read(rtc, REG_B) | REG_B_AIE)
    assert read(rtc, REG_C) == 0                 # no second has passed
    clock.now += 1
    assert read(rtc, REG_C) == REG_C_IRQF | REG_C_AF | REG_C_UF
    assert read(rtc, REG_C) == 0                 # read: cleared


def test_an_alarm_at_a_given_second_rings_then_and_next_alarm_says_when():
    clock = Clock(T0)                            # :58
    rtc = Rtc(clock)
    write(rtc, 1, 0x05)                          # at second 05 (BCD), any minute and hour
    write(rtc, 3, 0xC0)
    write(rtc, 5, 0xC0)
    assert rtc.next_alarm() is None              # AIE off: no wake source
    write(rtc, REG_B, read(rtc, REG_B) | REG_B_AIE)
    assert rtc.next_alarm() == T0 + 7            # 23:59:58 -> 00:00:05
    clock.now += 3
    assert not read(rtc, REG_C) & REG_C_AF
    clock.now += 4
    assert read(rtc, REG_C) & REG_C_AF


def test_the_guest_sets_the_clock_and_it_runs_on_from_there():
    clock = Clock(T0)
    rtc = Rtc(clock)
    write(rtc, 4, 0x07)                          # 07 hours (BCD)
    write(rtc, 2, 0x30)
    assert (read(rtc, 4), read(rtc, 2)) == (0x07, 0x30)
    clock.now += 60
    assert read(rtc, 2) == 0x31
    write(rtc, 2, 0x99)                          # no such minute: ignored
    assert read(rtc, 2) == 0x31


def test_cmos_ram_keeps_what_is_written_and_c_and_d_are_read_only():
    rtc = Rtc(Clock(T0))
    write(rtc, 0x0F, 0xFE)                       # the shutdown status byte
    write(rtc, 0x7F, 0x12)
    write(rtc, REG_D, 0)
    assert (read(rtc, 0x0F), read(rtc, 0x7F), read(rtc, REG_D)) == (0xFE, 0x12, REG_D_VRT)


@pytest.mark.slow
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 255), st.booleans()), max_size=60),
       st.floats(0, 4e9))
def test_any_sequence_of_port_accesses_reads_bytes_and_never_fails(accesses, start):
    rtc = Rtc(Clock(start))
    for offset, value, is_write in accesses:
        if is_write:
            rtc.write(offset, 1, value)
        else:
            assert 0 <= rtc.read(offset, 1) <= 0xFF
        rtc.describe(offset, 1, is_write, value)
