"""Disassembly with capstone, in whatever mode the vCPU is executing.

The same bytes mean different instructions in 16-, 32- and 64-bit code:
``48 ff c0`` is ``inc rax`` in 64-bit mode but ``dec ax; inc eax`` in 32-bit
mode. The CPU decides which from three bits (Intel SDM vol. 3A, 3.4.5 "the
D/B flag" and 5.2.1 "code-segment descriptor in 64-bit mode"): CR0.PE (real
mode is always 16-bit), the L bit of the CS descriptor (64-bit code, only
with EFER.LMA) and its D/B bit (32-bit default operand size).
:func:`minikvm.x86.modes.code_bitness` applies that rule; the debugger passes
its answer here, so what it shows around RIP is what the CPU will execute.

:func:`memory_accesses` goes further: with capstone's detail mode it lists
the memory an instruction reads and writes, computing each effective address
from the current registers. The debugger uses it as the read/write-watchpoint
fallback on hosts whose debug registers do not catch data accesses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import capstone
from capstone import x86 as cs_x86

__all__ = [
    "Instruction",
    "MemoryAccess",
    "disassemble",
    "format_instructions",
    "memory_accesses",
    "register_value",
]

_MODES = {16: capstone.CS_MODE_16, 32: capstone.CS_MODE_32, 64: capstone.CS_MODE_64}
_ENGINES: dict[tuple[int, bool], capstone.Cs] = {}

#: The longest x86 instruction (SDM vol. 2, 2.3.11): 15 bytes.
MAX_INSTRUCTION_LENGTH = 15


def _engine(bitness: int, detail: bool = False) -> capstone.Cs:
    key = (bitness, detail)
    engine = _ENGINES.get(key)
    if engine is None:
        if bitness not in _MODES:
            raise ValueError(f"bitness must be 16, 32 or 64, not {bitness}")
        engine = capstone.Cs(capstone.CS_ARCH_X86, _MODES[bitness])
        engine.detail = detail
        _ENGINES[key] = engine
    return engine


@dataclass(frozen=True)
class Instruction:
    """One decoded instruction. ``symbol`` is ``name+0xoff`` when known."""

    address: int
    size: int
    raw: bytes
    mnemonic: str
    op_str: str
    symbol: str = ""

    @property
    def text(self) -> str:
        """``mov rax, qword ptr [rbx + 8]``"""
        return f"{self.mnemonic} {self.op_str}".rstrip()

    @property
    def next_address(self) -> int:
        return self.address + self.size

    def __str__(self) -> str:
        label = f" <{self.symbol}>" if self.symbol else ""
        return f"{self.address:#x}{label}: {self.raw.hex(' '):<24} {self.text}"


def disassemble(code: bytes, address: int, bitness: int, count: int | None = None,
                symbolize: Callable[[int], str] | None = None) -> list[Instruction]:
    """Decode ``code`` (placed at ``address``) as ``bitness``-bit x86.

    Stops at ``count`` instructions or at the first byte sequence capstone
    cannot decode; an undecodable first byte is returned as ``(bad)`` so
    that a caller showing "the instruction at RIP" always gets one line.
    """
    engine = _engine(bitness)
    result: list[Instruction] = []
    for insn in engine.disasm(bytes(code), address):
        result.append(Instruction(insn.address, insn.size, bytes(insn.bytes), insn.mnemonic,
                                  insn.op_str, symbolize(insn.address) if symbolize else ""))
        if count is not None and len(result) >= count:
            break
    if not result and code:
        result.append(Instruction(address, 1, bytes(code[:1]), "(bad)", "",
                                  symbolize(address) if symbolize else ""))
    return result


def format_instructions(instructions: Iterable[Instruction], current: int | None = None) -> str:
    """One line per instruction; the one at ``current`` (RIP) marked ``=>``."""
    return "\n".join(("=> " if insn.address == current else "   ") + str(insn)
                     for insn in instructions)


# -- memory operands ---------------------------------------------------------------

@dataclass(frozen=True)
class MemoryAccess:
    """A memory access an instruction will make: linear address, size, direction."""

    address: int
    size: int
    is_write: bool
    is_read: bool

    def overlaps(self, start: int, size: int) -> bool:
        return self.address < start + size and start < self.address + self.size


def _gpr_table() -> dict[str, tuple[str, int, int]]:
    """capstone register name -> (kvm_regs field, shift, mask)."""
    table: dict[str, tuple[str, int, int]] = {}
    for letter in "abcd":
        full = f"r{letter}x"
        table[full] = (full, 0, (1 << 64) - 1)
        table[f"e{letter}x"] = (full, 0, 0xFFFF_FFFF)
        table[f"{letter}x"] = (full, 0, 0xFFFF)
        table[f"{letter}l"] = (full, 0, 0xFF)
        table[f"{letter}h"] = (full, 8, 0xFF)
    for name in ("si", "di", "sp", "bp"):
        full = f"r{name}"
        table[full] = (full, 0, (1 << 64) - 1)
        table[f"e{name}"] = (full, 0, 0xFFFF_FFFF)
        table[name] = (full, 0, 0xFFFF)
        table[f"{name}l"] = (full, 0, 0xFF)
    for n in range(8, 16):
        full = f"r{n}"
        table[full] = (full, 0, (1 << 64) - 1)
        table[f"r{n}d"] = (full, 0, 0xFFFF_FFFF)
        table[f"r{n}w"] = (full, 0, 0xFFFF)
        table[f"r{n}b"] = (full, 0, 0xFF)
    return table


_GPRS = _gpr_table()


def register_value(regs: Any, name: str) -> int | None:
    """The value of general register ``name`` (``eax``, ``r9w``, ``bh`` ...) in
    a ``kvm_regs``-like object, or None for a name that is not a GPR."""
    entry = _GPRS.get(name)
    if entry is None:
        return None
    field, shift, mask = entry
    return (int(getattr(regs, field)) >> shift) & mask


_STACK_BASES = frozenset({"sp", "esp", "rsp", "bp", "ebp", "rbp"})
_SEGMENT_NAMES = {cs_x86.X86_REG_CS: "cs", cs_x86.X86_REG_DS: "ds", cs_x86.X86_REG_ES: "es",
                  cs_x86.X86_REG_FS: "fs", cs_x86.X86_REG_GS: "gs", cs_x86.X86_REG_SS: "ss"}
#: Instructions that push onto the stack (an implicit write below RSP) and pop.
_PUSHES = frozenset({"push", "call", "pushf", "pushfd", "pushfq", "enter"})
_POPS = frozenset({"pop", "ret", "retf", "popf", "popfd", "popfq", "leave", "iret", "iretd",
                   "iretq"})


def memory_accesses(code: bytes, address: int, bitness: int, regs: Any,
                    segment_base: Callable[[str], int] | None = None) -> list[MemoryAccess]:
    """The memory the instruction at the start of ``code`` will touch.

    ``regs`` is a ``kvm_regs``; ``segment_base(name)`` gives the base of a
    segment register (only FS/GS matter in 64-bit mode; in 16- and 32-bit
    code every segment's base is added, DS by default and SS for accesses
    based on SP/BP). Explicit memory operands are decoded from capstone's
    operand list (which includes the implicit string operands of ``lods``,
    ``stos``, ``movs``); stack pushes and pops are added by hand.

    What this cannot see: memory the CPU touches on its own (page-table
    walks, descriptor loads, interrupt and exception frames), ``rep``
    string instructions beyond their first element, and the stack slots of
    ``pusha``/``popa``/``enter`` levels. It is a model, stated as such.
    """
    engine = _engine(bitness, detail=True)
    decoded = next(iter(engine.disasm(bytes(code[:MAX_INSTRUCTION_LENGTH]), address, 1)), None)
    if decoded is None:
        return []
    addr_mask = (1 << 64) - 1 if bitness == 64 else (0xFFFF_FFFF if bitness == 32 else 0xFFFF)
    base_of = segment_base or (lambda name: 0)
    accesses: list[MemoryAccess] = []
    for op in decoded.operands:
        if op.type != cs_x86.X86_OP_MEM:
            continue
        if decoded.mnemonic == "lea":
            continue  # computes an address, touches no memory
        mem = op.mem
        base_name = decoded.reg_name(mem.base) if mem.base else ""
        index_name = decoded.reg_name(mem.index) if mem.index else ""
        if base_name in ("rip", "eip", "ip"):
            base = address + decoded.size
        else:
            base = (register_value(regs, base_name) or 0) if base_name else 0
        index = (register_value(regs, index_name) or 0) * mem.scale if index_name else 0
        effective = (base + index + mem.disp) & addr_mask
        if mem.segment:
            segment = _SEGMENT_NAMES.get(mem.segment, "ds")
        else:
            segment = "ss" if base_name in _STACK_BASES else "ds"
        if bitness == 64 and segment not in ("fs", "gs"):
            linear = effective
        else:
            linear = (base_of(segment) + effective) & ((1 << 64) - 1)
        access = op.access or (capstone.CS_AC_READ | capstone.CS_AC_WRITE)
        accesses.append(MemoryAccess(linear, op.size or 1, bool(access & capstone.CS_AC_WRITE),
                                     bool(access & capstone.CS_AC_READ)))
    mnemonic = decoded.mnemonic
    if mnemonic in _PUSHES or mnemonic in _POPS:
        width = bitness // 8 if bitness != 16 else 2
        if mnemonic in ("push", "pop") and decoded.operands and decoded.operands[0].size:
            width = decoded.operands[0].size
        rsp = int(regs.rsp) & addr_mask
        stack = 0 if bitness == 64 else base_of("ss")
        if mnemonic in _PUSHES:
            accesses.append(MemoryAccess((stack + ((rsp - width) & addr_mask)) & ((1 << 64) - 1),
                                         width, True, False))
        else:
            accesses.append(MemoryAccess((stack + rsp) & ((1 << 64) - 1), width, False, True))
    return accesses
