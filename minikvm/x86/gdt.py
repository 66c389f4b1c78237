"""Segment descriptors and the flat GDT the VMM writes into guest memory.

In protected and long mode a segment register holds a *selector*: an index
into the global descriptor table (GDT). Loading a selector makes the CPU read
the 8-byte descriptor and cache base, limit and attributes in the register's
hidden part (Intel SDM vol. 3A, 3.4.3 and 3.4.5). KVM lets a VMM write that
hidden part directly (``kvm_segment`` in ``KVM_SET_SREGS``), so a guest can
start in protected or long mode without running the code that loads it.

The hidden part and the GDT must still agree: the moment the guest reloads a
segment register -- an interrupt return, a far jump, ``mov ds, ax`` -- the
CPU reads the descriptor from guest memory. So the VMM writes the same
descriptors into the GDT (:func:`write_gdt`) that it puts in the registers
(:func:`load_segment`); tests check that each GDT entry decodes to the
registers' values.

Descriptor layout (SDM figure 3-8)::

    63      56 55 54  53 52  51    48 47 46 45 44 43   40 39          16 15        0
    base 31:24  G D/B  L AVL limit19:16 P  DPL  S   type    base 23:0     limit 15:0
"""

from __future__ import annotations

from typing import Any

from minikvm.memory import GuestMemory
from minikvm.record import FrozenRecord
from minikvm.x86.flags import SegmentType, flag_names
from minikvm.x86.layout import GDT_ADDR, GDT_END, SEL_CODE32, SEL_CODE64, SEL_DATA

__all__ = [
    "SegmentDescriptor",
    "NULL_DESCRIPTOR",
    "FLAT_CODE64",
    "FLAT_CODE32",
    "FLAT_DATA",
    "flat_gdt",
    "write_gdt",
    "load_segment",
    "selector_index",
]

_LIMIT_MAX = (1 << 20) - 1


class SegmentDescriptor(FrozenRecord):
    """One code or data segment descriptor, field by field.

    ``limit`` is the 20-bit field as stored; with ``g=1`` it counts 4 KiB
    units, so the byte limit (:attr:`byte_limit`, what ``kvm_segment.limit``
    holds) is ``limit * 4096 + 4095``. The one-bit fields are 0 or 1, as in
    ``kvm_segment``. A frozen record (:mod:`minikvm.record`).
    """

    __slots__ = ("base", "limit", "type", "s", "dpl", "present", "avl", "l", "db", "g")
    base: int
    limit: int
    type: int
    s: int        # 1: code or data segment; 0: system segment (TSS, LDT, gates)
    dpl: int      # descriptor privilege level (ring 0..3)
    present: int  # loading a not-present descriptor raises #NP
    avl: int      # available to software
    l: int        # 64-bit code segment (IA-32e mode only)
    db: int       # code: 32-bit default operands; data/stack: 32-bit SP, 4 GiB bound
    g: int        # granularity: the limit counts 4 KiB pages

    def __init__(self, base: int = 0, limit: int = 0, type: int = 0, s: int = 1, dpl: int = 0,
                 present: int = 1, avl: int = 0, l: int = 0, db: int = 0, g: int = 0) -> None:
        self._set(base=base, limit=limit, type=type, s=s, dpl=dpl, present=present, avl=avl,
                  l=l, db=db, g=g)
        self._check()

    def _check(self) -> None:
        if not 0 <= self.base < 1 << 32:
            raise ValueError(f"descriptor base {self.base:#x} does not fit in 32 bits")
        if not 0 <= self.limit <= _LIMIT_MAX:
            raise ValueError(f"descriptor limit {self.limit:#x} does not fit in 20 bits")
        if not 0 <= self.type < 16:
            raise ValueError(f"descriptor type {self.type} does not fit in 4 bits")
        if not 0 <= self.dpl < 4:
            raise ValueError(f"DPL {self.dpl} is not a ring 0..3")
        for name in ("s", "present", "avl", "l", "db", "g"):
            if getattr(self, name) not in (0, 1):
                raise ValueError(f"descriptor bit {name} must be 0 or 1")

    @property
    def byte_limit(self) -> int:
        """The limit in bytes, as the CPU caches it (and KVM wants it)."""
        return (self.limit << 12) | 0xFFF if self.g else self.limit

    def pack(self) -> int:
        """The descriptor as the 64-bit value stored in the GDT."""
        return (
            (self.limit & 0xFFFF)
            | (self.base & 0xFF_FFFF) << 16
            | self.type << 40
            | self.s << 44
            | self.dpl << 45
            | self.present << 47
            | (self.limit >> 16) << 48
            | self.avl << 52
            | self.l << 53
            | self.db << 54
            | self.g << 55
            | (self.base >> 24) << 56
        )

    def to_bytes(self) -> bytes:
        return self.pack().to_bytes(8, "little")

    @classmethod
    def unpack(cls, raw: int) -> SegmentDescriptor:
        """Decode a 64-bit GDT entry (the inverse of :meth:`pack`).

        Any 64-bit value decodes (the guest may have written anything); L and
        D/B both set is a reserved encoding the CPU refuses to load as CS."""
        return cls(
            base=((raw >> 16) & 0xFF_FFFF) | ((raw >> 56) & 0xFF) << 24,
            limit=(raw & 0xFFFF) | ((raw >> 48) & 0xF) << 16,
            type=(raw >> 40) & 0xF,
            s=(raw >> 44) & 1,
            dpl=(raw >> 45) & 3,
            present=(raw >> 47) & 1,
            avl=(raw >> 52) & 1,
            l=(raw >> 53) & 1,
            db=(raw >> 54) & 1,
            g=(raw >> 55) & 1,
        )

    def describe(self) -> str:
        """One line: ``code64 base=0x0 limit=0xffffffff type=EXECUTABLE|RW|ACCESSED dpl=0``."""
        if self.pack() == 0:
            return "null"
        if not self.s:
            kind = "system"
        elif self.type & SegmentType.EXECUTABLE:
            kind = "code64" if self.l else ("code32" if self.db else "code16")
        else:
            kind = "data32" if self.db else "data16"
        attrs = [name.upper() for name in ("present", "g", "avl") if getattr(self, name)]
        return (f"{kind} base={self.base:#x} limit={self.byte_limit:#x} "
                f"type={flag_names(SegmentType(self.type))} dpl={self.dpl}"
                + (f" {' '.join(attrs)}" if attrs else ""))


#: Index 0 of every GDT: the CPU refuses to load it (a null selector).
NULL_DESCRIPTOR = SegmentDescriptor(s=0, present=0)

# Code and data segments cover all 4 GiB from base 0 ("flat"): segmentation
# then leaves addresses unchanged, which is what every modern OS does. The
# type has ACCESSED set because the CPU would otherwise write that bit into
# the GDT on first use, and because VMX requires it in a usable segment
# register (SDM vol. 3C, 26.3.1.2).

#: 64-bit code, ring 0: L=1 makes it 64-bit (D/B must then be 0). In 64-bit
#: mode base and limit are ignored; they are set flat anyway.
FLAT_CODE64 = SegmentDescriptor(
    limit=_LIMIT_MAX, type=SegmentType.EXECUTABLE | SegmentType.RW | SegmentType.ACCESSED,
    l=1, db=0, g=1)

#: 32-bit code, ring 0: D/B=1 makes operands and addresses 32-bit by default.
FLAT_CODE32 = SegmentDescriptor(
    limit=_LIMIT_MAX, type=SegmentType.EXECUTABLE | SegmentType.RW | SegmentType.ACCESSED,
    db=1, g=1)

#: Read/write data, ring 0; as SS, D/B=1 makes push/pop use ESP (not SP).
FLAT_DATA = SegmentDescriptor(
    limit=_LIMIT_MAX, type=SegmentType.RW | SegmentType.ACCESSED, db=1, g=1)


def selector_index(selector: int) -> int:
    """The GDT index a selector names (bits 15:3; bit 2 is TI, bits 1:0 RPL)."""
    return (selector & 0xFFFF) >> 3


def flat_gdt() -> list[SegmentDescriptor]:
    """The GDT of this machine, by index (see the selectors in :mod:`layout`)."""
    table = [NULL_DESCRIPTOR] * (selector_index(SEL_DATA) + 1)
    table[selector_index(SEL_CODE64)] = FLAT_CODE64
    table[selector_index(SEL_CODE32)] = FLAT_CODE32
    table[selector_index(SEL_DATA)] = FLAT_DATA
    return table


def write_gdt(memory: GuestMemory, addr: int = GDT_ADDR,
              entries: list[SegmentDescriptor] | None = None) -> int:
    """Write ``entries`` (default :func:`flat_gdt`) at ``addr``; return the GDTR limit.

    The limit is the offset of the table's last byte (size - 1), as LGDT and
    ``kvm_dtable.limit`` expect. At ``GDT_ADDR`` the table must end by
    ``GDT_END``. Raises GuestMemoryError when ``addr`` is not in RAM.
    """
    entries = flat_gdt() if entries is None else entries
    if not entries:
        raise ValueError("a GDT needs at least the null descriptor")
    if len(entries) > 8192:
        raise ValueError("a GDT holds at most 8192 descriptors")
    data = b"".join(entry.to_bytes() for entry in entries)
    if addr == GDT_ADDR and addr + len(data) > GDT_END:
        raise ValueError(f"{len(entries)} descriptors overflow the GDT area "
                         f"{GDT_ADDR:#x}-{GDT_END - 1:#x}")
    memory.write(addr, data)
    return len(data) - 1


def load_segment(segment: Any, selector: int, descriptor: SegmentDescriptor) -> None:
    """Fill a segment register's visible and hidden parts, as loading ``selector`` would.

    ``segment`` is a ``kvm_segment`` or any object with its field names.
    """
    segment.selector = selector
    segment.base = descriptor.base
    segment.limit = descriptor.byte_limit
    segment.type = descriptor.type
    segment.s = descriptor.s
    segment.dpl = descriptor.dpl
    segment.present = descriptor.present
    segment.avl = descriptor.avl
    segment.l = descriptor.l
    segment.db = descriptor.db
    segment.g = descriptor.g
    segment.unusable = 0
