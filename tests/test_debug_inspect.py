"""Registers in words: snapshots and what changed, RFLAGS, segments, x87 values, DR6/DR7."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minikvm.debug.breakpoints import (
    DR6_BS,
    DR7_FIXED,
    DR_RW_EXECUTE,
    DR_RW_READ_WRITE,
    DR_RW_WRITE,
    HardwareSlots,
    Breakpoint,
    BreakpointKind,
    decode_dr7,
    dr6_slots,
    dr7_slot_bits,
    hw_watch_fits,
)
from minikvm.debug.inspect import (
    GPR_NAMES,
    RegisterSnapshot,
    changed_registers,
    describe_control_registers,
    describe_debug_registers,
    describe_rflags,
    describe_segment,
    extended_to_float,
    fpu_state,
    segment_kind,
)
from minikvm.kvm.uapi import kvm_debugregs, kvm_fpu, kvm_regs, kvm_segment, kvm_sregs

REG_FIELDS = GPR_NAMES + ("rip", "rflags")
u64 = st.integers(min_value=0, max_value=(1 << 64) - 1)


def make_regs(values: dict[str, int]) -> kvm_regs:
    regs = kvm_regs()
    for name, value in values.items():
        setattr(regs, name, value)
    return regs


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.sampled_from(REG_FIELDS), u64),
       st.dictionaries(st.sampled_from(REG_FIELDS), u64))
def test_changed_names_exactly_the_registers_that_differ(a, b):
    old, new = make_regs(a), make_regs(b)
    expected = {name for name in REG_FIELDS if a.get(name, 0) != b.get(name, 0)}
    assert set(changed_registers(old, new)) == expected
    assert set(changed_registers(RegisterSnapshot.capture(old),
                                 RegisterSnapshot.capture(new))) == expected


def test_changed_refuses_a_snapshot_with_raw_registers():
    with pytest.raises(TypeError):
        changed_registers(RegisterSnapshot.capture(make_regs({})), make_regs({"rax": 1}))


def test_changed_of_equal_registers_is_empty():
    assert changed_registers(make_regs({"rip": 5}), make_regs({"rip": 5})) == ()


def test_changed_keeps_kvm_regs_order():
    old = make_regs({})
    new = make_regs({"rip": 1, "rax": 2, "r15": 3})
    assert changed_registers(old, new) == ("rax", "r15", "rip")


def test_snapshot_with_sregs_compares_control_registers_too():
    regs, sregs = make_regs({"rip": 0x1000}), kvm_sregs()
    sregs.cs.selector, sregs.cr3 = 0x8, 0x70000
    first = RegisterSnapshot.capture(regs, sregs)
    sregs.cr3 = 0x20000
    second = RegisterSnapshot.capture(regs, sregs)
    assert second.changed_from(first) == ("cr3",)
    assert first.as_dict()["cs"] == 0x8
    # a snapshot without sregs compares only what both have
    assert RegisterSnapshot.capture(regs).changed_from(first) == ()


def test_rflags_names_the_set_flags_without_the_fixed_bit():
    assert describe_rflags(0x246) == "0x246 [IF ZF PF]"
    assert describe_rflags(0x2) == "0x2 []"
    assert describe_rflags(0x3202).startswith("0x3202 [IOPL=3 IF")


def test_segment_kind_reads_the_descriptor_bits():
    code64 = kvm_segment(selector=8, type=0xB, present=1, s=1, l=1, db=0)
    code16 = kvm_segment(type=0xB, present=1, s=1)
    data = kvm_segment(type=0x3, present=1, s=1)
    tss = kvm_segment(type=0xB, present=1, s=0)
    assert segment_kind(code64) == "64-bit code, execute/read"
    assert segment_kind(code16) == "16-bit code, execute/read"
    assert segment_kind(data) == "data, read/write"
    assert segment_kind(tss) == "system (type 11)"
    assert segment_kind(kvm_segment(present=0)) == "not present"
    assert describe_segment("cs", code64).startswith("cs=0x0008 base=0x0")


def test_control_registers_name_their_bits():
    sregs = kvm_sregs()
    sregs.cr0, sregs.cr4, sregs.efer = 0x80010033, 0x620, 0x500
    text = describe_control_registers(sregs)
    assert "PG" in text["cr0"] and "PE" in text["cr0"]
    assert "PAE" in text["cr4"] and "OSFXSR" in text["cr4"]
    assert "LMA" in text["efer"] and "LME" in text["efer"]


def encode_extended(x: float) -> bytes:
    """The 80-bit format of SDM vol. 1, 4.2.2, written from the definition."""
    sign = 0x8000 if math.copysign(1.0, x) < 0 else 0
    if x == 0:
        return bytes(8) + sign.to_bytes(2, "little")
    mantissa, exponent = math.frexp(abs(x))        # x = m * 2**e, 0.5 <= m < 1
    significand = int(mantissa * (1 << 64))        # explicit integer bit at bit 63
    return significand.to_bytes(8, "little") + (sign | (exponent - 1 + 16383)).to_bytes(2, "little")


@settings(max_examples=100, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_extended_precision_values_decode_to_the_same_number(x):
    assert extended_to_float(encode_extended(x)) == x


def test_extended_infinities_and_nans():
    assert extended_to_float(bytes.fromhex("0000000000000080ff7f")) == math.inf
    assert extended_to_float(bytes.fromhex("0000000000000080ffff")) == -math.inf
    assert math.isnan(extended_to_float(bytes.fromhex("00000000000000c0ff7f")))
    with pytest.raises(ValueError):
        extended_to_float(b"\x00" * 9)


def test_fpu_state_decodes_stack_and_xmm_registers():
    fpu = kvm_fpu()
    fpu.fcw, fpu.fsw, fpu.mxcsr = 0x37F, 3 << 11, 0x1F80
    for i, byte in enumerate(encode_extended(1.5)):
        fpu.fpr[0][i] = byte
    fpu.xmm[1][0], fpu.xmm[1][15] = 0x01, 0x80
    state = fpu_state(fpu)
    assert state.st[0] == 1.5 and state.top == 3 and state.mxcsr == 0x1F80
    assert state.xmm[1] == (0x80 << 120) | 1
    assert any(line.startswith("st0=1.5") for line in state.describe())


# -- DR6 / DR7 --------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(st.integers(0, 3), st.sampled_from([DR_RW_WRITE, DR_RW_READ_WRITE]),
       st.sampled_from([1, 2, 4, 8]))
def test_dr7_bits_decode_back_to_the_slot_asked_for(slot, rw, size):
    slots = decode_dr7(dr7_slot_bits(slot, rw, size) | DR7_FIXED)
    assert [s.enabled for s in slots] == [n == slot for n in range(4)]
    assert slots[slot].size == size and slots[slot].global_ and not slots[slot].local
    assert slots[slot].condition == {DR_RW_WRITE: "write", DR_RW_READ_WRITE: "read/write"}[rw]


def test_dr7_layout_matches_the_sdm_figure():
    # slot 1, write, 4 bytes: G1 = bit 3, R/W1 = bits 20-21, LEN1 = bits 22-23
    assert dr7_slot_bits(1, DR_RW_WRITE, 4) == (1 << 3) | (0b01 << 20) | (0b11 << 22)
    assert dr7_slot_bits(0, DR_RW_EXECUTE, 1) == 1 << 1


def test_execute_breakpoints_have_length_one_and_slots_are_0_to_3():
    with pytest.raises(ValueError):
        dr7_slot_bits(0, DR_RW_EXECUTE, 4)
    with pytest.raises(ValueError):
        dr7_slot_bits(4, DR_RW_WRITE, 1)
    with pytest.raises(ValueError):
        dr7_slot_bits(0, DR_RW_WRITE, 3)


def test_dr6_names_the_slots_that_fired():
    assert dr6_slots(0xFFFF0FF1) == [0]
    assert dr6_slots(0xFFFF4FF0) == [] and 0xFFFF4FF0 & DR6_BS
    assert dr6_slots(0b1010) == [1, 3]


@pytest.mark.parametrize("address, size, fits", [
    (0x1000, 8, True), (0x1004, 8, False), (0x1002, 2, True), (0x1001, 2, False),
    (0x1003, 1, True), (0x1000, 3, False),
])
def test_a_debug_register_watches_only_aligned_ranges(address, size, fits):
    assert hw_watch_fits(address, size) is fits


def test_hardware_slots_run_out_after_four():
    slots = HardwareSlots()
    owners = [Breakpoint(n, n, BreakpointKind.HARDWARE) for n in range(5)]
    assert [slots.allocate(o) for o in owners] == [0, 1, 2, 3, None]
    slots.release(2)
    assert slots.free == 1 and slots.allocate(owners[4]) == 2 and slots.owner(2) is owners[4]


def test_debug_registers_in_words():
    debugregs = kvm_debugregs()
    debugregs.db[1] = 0x1010
    debugregs.dr7 = dr7_slot_bits(1, DR_RW_WRITE, 8) | DR7_FIXED
    debugregs.dr6 = 0xFFFF0FF0 | 0b10 | DR6_BS
    lines = describe_debug_registers(debugregs)
    assert lines[0] == "dr0=0x0 (disabled)"
    assert lines[1] == "dr1=0x1010 (write, 8 byte(s))"
    assert lines[4] == f"dr6={debugregs.dr6:#x} [B1 BS]"
