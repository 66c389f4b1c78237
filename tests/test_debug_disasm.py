"""Disassembly in the CPU's current mode, and the memory operands of an instruction."""

from __future__ import annotations


import pytest

from minikvm.debug.disasm import (
    Instruction,
    MemoryAccess,
    disassemble,
    format_instructions,
    memory_accesses,
    register_value,
)
from minikvm.kvm.uapi import kvm_regs


def regs(**values: int) -> kvm_regs:
    result = kvm_regs()
    for name, value in values.items():
        setattr(result, name, value)
    return result


def test_same_bytes_decode_differently_in_64_and_32_bit_mode():
    code = bytes.fromhex("48ffc0")  # inc rax (64-bit); dec eax; inc eax (32-bit)
    assert [i.text for i in disassemble(code, 0x1000, 64)] == ["inc rax"]
    assert [i.text for i in disassemble(code, 0x1000, 32)] == ["dec eax", "inc eax"]


def test_16_bit_code_uses_16_bit_registers():
    code = bytes.fromhex("b80500")  # mov ax, 5
    (insn,) = disassemble(code, 0x7C00, 16)
    assert insn.text == "mov ax, 5" and insn.size == 3 and insn.next_address == 0x7C03


def test_count_limits_the_listing_and_addresses_follow_sizes():
    code = bytes.fromhex("90" "b805000000" "f4")  # nop; mov eax, 5; hlt
    listing = disassemble(code, 0x1000, 64)
    assert [(i.address, i.mnemonic) for i in listing] == [(0x1000, "nop"), (0x1001, "mov"),
                                                          (0x1006, "hlt")]
    assert len(disassemble(code, 0x1000, 64, count=2)) == 2


def test_undecodable_first_byte_is_shown_as_bad():
    (insn,) = disassemble(b"\x06", 0x2000, 64)  # push es: invalid in 64-bit mode
    assert (insn.address, insn.size, insn.mnemonic) == (0x2000, 1, "(bad)")
    assert disassemble(b"\x06", 0x2000, 32)[0].text == "push es"


def test_symbols_label_instructions():
    listing = disassemble(b"\x90\x90", 0x1000, 64,
                          symbolize=lambda a: "main" if a == 0x1000 else "main+0x1")
    assert [i.symbol for i in listing] == ["main", "main+0x1"]
    assert "<main>" in str(listing[0])


def test_format_marks_the_current_instruction():
    listing = disassemble(b"\x90\xf4", 0x1000, 64)
    text = format_instructions(listing, current=0x1001).splitlines()
    assert text[0].startswith("   ") and text[1].startswith("=> ")


def test_bitness_must_be_16_32_or_64():
    with pytest.raises(ValueError):
        disassemble(b"\x90", 0, 8)


@pytest.mark.parametrize("name, expected", [
    ("rax", 0x1122334455667788), ("eax", 0x55667788), ("ax", 0x7788), ("al", 0x88),
    ("ah", 0x77), ("r9d", 0xDDCCBBAA), ("r9w", 0xBBAA), ("r9b", 0xAA), ("sil", 0x11),
])
def test_register_value_reads_sub_registers(name, expected):
    values = regs(rax=0x1122334455667788, r9=0x99887766DDCCBBAA, rsi=0x11)
    assert register_value(values, name) == expected


def test_register_value_of_a_non_gpr_is_none():
    assert register_value(regs(), "xmm0") is None


def test_store_through_base_and_displacement_is_a_write():
    code = bytes.fromhex("48894308")  # mov [rbx + 8], rax
    (access,) = memory_accesses(code, 0x1000, 64, regs(rbx=0x5000))
    assert access == MemoryAccess(0x5008, 8, is_write=True, is_read=False)


def test_load_with_index_and_scale_is_a_read():
    code = bytes.fromhex("8b0c8b")  # mov ecx, [rbx + rcx*4]
    (access,) = memory_accesses(code, 0x1000, 64, regs(rbx=0x6000, rcx=3))
    assert access.address == 0x600C and access.size == 4 and access.is_read and not access.is_write


def test_rip_relative_address_counts_from_the_next_instruction():
    code = bytes.fromhex("488b0500100000")  # mov rax, [rip + 0x1000]
    (access,) = memory_accesses(code, 0x1000, 64, regs())
    assert access.address == 0x1007 + 0x1000


def test_read_modify_write_is_both():
    code = bytes.fromhex("48ff03")  # inc qword ptr [rbx]
    (access,) = memory_accesses(code, 0x1000, 64, regs(rbx=0x7000))
    assert access.is_read and access.is_write


def test_lea_touches_no_memory():
    assert memory_accesses(bytes.fromhex("488d4308"), 0x1000, 64, regs(rbx=1)) == []


def test_push_writes_below_the_stack_pointer_and_pop_reads_at_it():
    (push,) = memory_accesses(b"\x50", 0x1000, 64, regs(rsp=0x8000))   # push rax
    (pop,) = memory_accesses(b"\x58", 0x1000, 64, regs(rsp=0x7FF8))    # pop rax
    assert (push.address, push.size, push.is_write) == (0x7FF8, 8, True)
    assert (pop.address, pop.size, pop.is_read) == (0x7FF8, 8, True)


def test_real_mode_adds_the_segment_base_ds_by_default_ss_for_bp():
    bases = {"ds": 0x10000, "ss": 0x20000, "es": 0, "cs": 0, "fs": 0, "gs": 0}.__getitem__
    (data,) = memory_accesses(bytes.fromhex("8b07"), 0, 16, regs(rbx=0x10), bases)  # mov ax,[bx]
    (stack,) = memory_accesses(bytes.fromhex("8b4602"), 0, 16, regs(rbp=0x10), bases)  # [bp+2]
    assert data.address == 0x10010 and data.size == 2
    assert stack.address == 0x20012


def test_fs_override_adds_the_fs_base_in_64_bit_mode():
    bases = {"fs": 0x40000}.get
    code = bytes.fromhex("64488b042528000000")  # mov rax, fs:[0x28]
    (access,) = memory_accesses(code, 0x1000, 64, regs(), bases)
    assert access.address == 0x40028


def test_string_instruction_operand_comes_from_rsi():
    (access,) = memory_accesses(b"\xac", 0x1000, 64, regs(rsi=0x3000))  # lodsb
    assert access.address == 0x3000 and access.size == 1 and access.is_read


def test_overlap_is_half_open():
    access = MemoryAccess(0x100, 4, True, False)
    assert access.overlaps(0x103, 1) and not access.overlaps(0x104, 4)
    assert access.overlaps(0xFC, 5) and not access.overlaps(0xFC, 4)


def test_instruction_text_without_operands_has_no_trailing_space():
    assert Instruction(0, 1, b"\x90", "nop", "").text == "nop"
