"""gdb's view of the x86 registers, and where each one lives in KVM's structures.

gdb reads registers in one block (``g``) or one at a time (``p n``), by
*number*; the numbers and sizes are those of the target description the
stub sends (:mod:`~minikvm.gdb.tdesc`; GDB manual, "Target Descriptions").
KVM hands registers over in three structures: ``kvm_regs`` (general
registers, RIP, RFLAGS), ``kvm_sregs`` (segments, control registers, EFER)
and ``kvm_fpu`` (x87 and SSE in the FXSAVE layout, Intel SDM vol. 1, 10.5.1).
A :class:`Layout` is the list of :class:`RegisterSpec` -- gdb's name, its
number (the index), its size, the description's type and feature -- and
each spec says which field of which structure holds it.

Two layouts, because gdb's x86 architectures differ in their registers
(GDB manual, "i386 Features"):

* :data:`AMD64`: ``rax``..``r15``, ``rip`` -- 64-bit registers, for a vCPU
  in long mode;
* :data:`I386`: ``eax``..``edi``, ``eip`` -- the low 32 bits, for real and
  protected mode (gdb's ``i8086`` architecture uses the same registers).

gdb requires the x87 registers in the core feature, so they are always
there; the SSE registers, ``fs_base``/``gs_base`` (long mode only) and the
system registers follow -- CR0-CR4 and EFER, a feature of our own: gdb
shows them in ``info registers`` and by name (``p/x $cr3``). (They say
``group="system"``, but gdb 13's x86 puts every register it does not know
itself in the general group.)

:class:`RegisterFile` reads the three structures of one vCPU once, serves
every register from them, and writes back only the structures a write
changed.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from minikvm.kvm.uapi import kvm_fpu, kvm_sregs
from minikvm.x86.flags import Cr0

__all__ = ["AMD64", "I386", "Layout", "RegisterError", "RegisterFile", "RegisterSpec",
           "Source", "copy_struct", "full_tag_word", "layout_for"]


class RegisterError(ValueError):
    """A register write that cannot be done (gdb gets an ``E`` reply)."""


class Source(enum.Enum):
    """Which KVM structure holds a register."""

    REGS = "regs"      # KVM_GET_REGS / KVM_SET_REGS
    SREGS = "sregs"    # KVM_GET_SREGS / KVM_SET_SREGS
    FPU = "fpu"        # KVM_GET_FPU / KVM_SET_FPU


@dataclass(frozen=True)
class RegisterSpec:
    """One register as gdb numbers it, and where KVM keeps it.

    ``field`` names the place: a ``kvm_regs`` field (``rax``), a segment's
    part (``cs.selector``, ``fs.base``), a control register (``cr3``), or an
    x87/SSE slot (``fpr.3``, ``xmm.7``, ``fcw``...).
    """

    name: str
    bits: int
    type: str
    feature: str
    source: Source
    field: str
    group: str | None = None

    @property
    def size(self) -> int:
        return self.bits // 8


@dataclass(frozen=True)
class Layout:
    """The registers of one gdb architecture, in gdb's numbering."""

    architecture: str        # the target description's <architecture>
    registers: tuple[RegisterSpec, ...]

    @property
    def pc(self) -> int:
        """The number of the program counter (``rip`` or ``eip``)."""
        return next(n for n, spec in enumerate(self.registers) if spec.field == "rip")

    def __len__(self) -> int:
        return len(self.registers)


_SEGMENTS = ("cs", "ss", "ds", "es", "fs", "gs")
_X87_CONTROL = ("fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop")


def _layout(architecture: str, gprs: tuple[tuple[str, str], ...], pc: str, width: int,
            xmm_count: int, system: tuple[str, ...]) -> Layout:
    """gdb's register order for an x86 architecture: the general registers,
    the PC, eflags, the segments, x87 (core); xmm and mxcsr (sse); fs_base and
    gs_base (segments); control registers (ours)."""
    core = "org.gnu.gdb.i386.core"
    specs = []
    for name, field in gprs:
        kind = "data_ptr" if field in ("rsp", "rbp") else f"int{width}"
        specs.append(RegisterSpec(name, width, kind, core, Source.REGS, field))
    specs.append(RegisterSpec(pc, width, "code_ptr", core, Source.REGS, "rip"))
    specs.append(RegisterSpec("eflags", 32, "i386_eflags", core, Source.REGS, "rflags"))
    specs += [RegisterSpec(seg, 32, "int32", core, Source.SREGS, f"{seg}.selector")
              for seg in _SEGMENTS]
    specs += [RegisterSpec(f"st{i}", 80, "i387_ext", core, Source.FPU, f"fpr.{i}")
              for i in range(8)]
    specs += [RegisterSpec(name, 32, "int", core, Source.FPU, name, "float")
              for name in _X87_CONTROL]
    sse = "org.gnu.gdb.i386.sse"
    specs += [RegisterSpec(f"xmm{i}", 128, "vec128", sse, Source.FPU, f"xmm.{i}")
              for i in range(xmm_count)]
    specs.append(RegisterSpec("mxcsr", 32, "i386_mxcsr", sse, Source.FPU, "mxcsr", "vector"))
    if width == 64:
        # gdb 13 numbers i386 fs_base/gs_base past the registers of a bare
        # i386 (only its Linux variant makes room): a 32-bit description
        # with them makes gdb fail an internal assertion. Long mode only.
        segments = "org.gnu.gdb.i386.segments"
        specs += [RegisterSpec(f"{seg}_base", width, "int", segments, Source.SREGS,
                               f"{seg}.base") for seg in ("fs", "gs")]
    specs += [RegisterSpec(name, 64 if name == "efer" else width, "int", "org.minikvm.system",
                           Source.SREGS, name, "system") for name in system]
    return Layout(architecture, tuple(specs))


#: Long mode: gdb's ``i386:x86-64``.
AMD64 = _layout(
    "i386:x86-64",
    tuple((name, name) for name in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
                                    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")),
    "rip", 64, 16, ("cr0", "cr2", "cr3", "cr4", "cr8", "efer"))
#: Real and protected mode: gdb's ``i386`` (and ``i8086``, which shares it).
I386 = _layout(
    "i386",
    tuple(("e" + name[1:], name) for name in ("rax", "rcx", "rdx", "rbx", "rsp", "rbp",
                                              "rsi", "rdi")),
    "eip", 32, 8, ("cr0", "cr2", "cr3", "cr4", "efer"))


def layout_for(bitness: int) -> Layout:
    """The layout for code of this bitness (64: AMD64, else I386)."""
    return AMD64 if bitness == 64 else I386


def _classify(raw: bytes) -> int:
    """The x87 tag of a non-empty register (SDM vol. 1, 8.1.7): 0 valid,
    1 zero, 2 special (NaN, infinity, denormal, unnormal)."""
    significand = int.from_bytes(raw[:8], "little")
    exponent = int.from_bytes(raw[8:10], "little") & 0x7FFF
    if exponent == 0x7FFF:
        return 2
    if exponent == 0:
        return 1 if significand == 0 else 2
    return 0 if significand >> 63 else 2


def full_tag_word(fpu: kvm_fpu) -> int:
    """The 16-bit x87 tag word gdb shows as ``ftag``, from FXSAVE's abridged
    one (one "not empty" bit per physical register, SDM vol. 1, 10.5.1.1).
    Physical register i is ST((i - TOP) mod 8); ``fpr`` holds ST(0) first."""
    top = (fpu.fsw >> 11) & 7
    word = 0
    for physical in range(8):
        if fpu.ftwx >> physical & 1:
            tag = _classify(bytes(fpu.fpr[(physical - top) & 7]))
        else:
            tag = 3
        word |= tag << (2 * physical)
    return word


def _abridged(tag_word: int) -> int:
    return sum(1 << i for i in range(8) if (tag_word >> (2 * i)) & 3 != 3)


Loader = Callable[[Source], object]
Storer = Callable[[Source, object], None]


class RegisterFile:
    """The registers of one vCPU at a stop, as bytes for gdb.

    ``load(source)`` returns a *copy* of the structure (KVM_GET_*),
    ``store(source, struct)`` hands a changed one back (KVM_SET_*); each
    structure is loaded at most once. Writes go to the copies;
    :meth:`commit` stores the ones that changed.
    """

    def __init__(self, layout: Layout, load: Loader, store: Storer) -> None:
        self.layout = layout
        self._load = load
        self._store = store
        self._structs: dict[Source, object] = {}
        self._dirty: set[Source] = set()

    def _struct(self, source: Source):
        if source not in self._structs:
            self._structs[source] = self._load(source)
        return self._structs[source]

    # -- reading -----------------------------------------------------------------------

    def value(self, spec: RegisterSpec) -> int:
        """The register's value as an unsigned integer of ``spec.bits`` bits."""
        struct = self._struct(spec.source)
        field = spec.field
        if spec.source is Source.REGS:
            value = getattr(struct, field)
        elif spec.source is Source.SREGS:
            if "." in field:
                segment, part = field.split(".")
                value = getattr(getattr(struct, segment), part)
            else:
                value = getattr(struct, field)
        else:
            value = self._fpu_value(struct, field)  # type: ignore[arg-type]
        return value & ((1 << spec.bits) - 1)

    @staticmethod
    def _fpu_value(fpu: kvm_fpu, field: str) -> int:
        if field.startswith(("fpr.", "xmm.")):
            kind, index = field.split(".")
            slot = bytes((fpu.fpr if kind == "fpr" else fpu.xmm)[int(index)])
            return int.from_bytes(slot[:10] if kind == "fpr" else slot, "little")
        return {
            "fctrl": lambda: fpu.fcw,
            "fstat": lambda: fpu.fsw,
            "ftag": lambda: full_tag_word(fpu),
            "fiseg": lambda: fpu.last_ip >> 32,
            "fioff": lambda: fpu.last_ip,
            "foseg": lambda: fpu.last_dp >> 32,
            "fooff": lambda: fpu.last_dp,
            "fop": lambda: fpu.last_opcode,
            "mxcsr": lambda: fpu.mxcsr,
        }[field]()

    def read(self, number: int) -> bytes:
        """Register ``number``, little-endian, as gdb expects it in ``p``/``g``."""
        spec = self.layout.registers[number]
        return self.value(spec).to_bytes(spec.size, "little")

    def read_all(self) -> bytes:
        """Every register in order: the ``g`` reply's bytes."""
        return b"".join(self.read(n) for n in range(len(self.layout)))

    # -- writing -----------------------------------------------------------------------

    def write(self, number: int, data: bytes) -> None:
        """Set register ``number`` from gdb's little-endian bytes (not yet
        stored: :meth:`commit`). Raises RegisterError for a write that
        cannot mean anything (see :meth:`_write_sregs`)."""
        if not 0 <= number < len(self.layout):
            raise RegisterError(f"there is no register {number}")
        spec = self.layout.registers[number]
        if len(data) != spec.size:
            raise RegisterError(f"{spec.name} takes {spec.size} bytes, not {len(data)}")
        value = int.from_bytes(data, "little")
        if value == self.value(spec):
            return
        struct = self._struct(spec.source)
        if spec.source is Source.REGS:
            old = getattr(struct, spec.field)
            mask = (1 << spec.bits) - 1
            setattr(struct, spec.field, (old & ~mask) | value)   # i386: keep bits 63:32
        elif spec.source is Source.SREGS:
            self._write_sregs(struct, spec, value)  # type: ignore[arg-type]
        else:
            self._write_fpu(struct, spec.field, value)  # type: ignore[arg-type]
        self._dirty.add(spec.source)

    @staticmethod
    def _write_sregs(sregs: kvm_sregs, spec: RegisterSpec, value: int) -> None:
        """A segment selector means something by itself only in real mode
        (base = selector * 16); in protected and long mode it points into a
        descriptor table, and loading that is the guest's job, not gdb's."""
        if spec.field.endswith(".selector"):
            if sregs.cr0 & Cr0.PE:
                raise RegisterError(f"{spec.name}: in protected and long mode a selector "
                                    f"names a descriptor; the guest must load it")
            segment = getattr(sregs, spec.field.split(".")[0])
            segment.selector = value & 0xFFFF
            segment.base = (value & 0xFFFF) << 4
        elif "." in spec.field:
            setattr(getattr(sregs, spec.field.split(".")[0]), "base", value)
        else:
            setattr(sregs, spec.field, value)

    @staticmethod
    def _write_fpu(fpu: kvm_fpu, field: str, value: int) -> None:
        if field.startswith(("fpr.", "xmm.")):
            kind, index = field.split(".")
            slot = (fpu.fpr if kind == "fpr" else fpu.xmm)[int(index)]
            size = 10 if kind == "fpr" else 16
            for i, byte in enumerate(value.to_bytes(size, "little")):
                slot[i] = byte
            return
        if field in ("fiseg", "fioff", "foseg", "fooff"):
            name = "last_ip" if field.startswith("fi") else "last_dp"
            old = getattr(fpu, name)
            high = field.endswith("seg")
            new = ((value << 32) | (old & 0xFFFF_FFFF)) if high else \
                ((old & ~0xFFFF_FFFF) | value)
            setattr(fpu, name, new)
            return
        if field == "ftag":
            fpu.ftwx = _abridged(value)
            return
        name = {"fctrl": "fcw", "fstat": "fsw", "fop": "last_opcode"}.get(field, field)
        setattr(fpu, name, value)

    def write_all(self, data: bytes) -> None:
        """A ``G`` packet: every register in order (a shorter block sets the
        first ones only, as the manual allows for registers gdb lacks)."""
        offset = 0
        for number, spec in enumerate(self.layout.registers):
            if offset + spec.size > len(data):
                break
            self.write(number, data[offset:offset + spec.size])
            offset += spec.size

    def commit(self) -> None:
        """Hand every changed structure back to KVM."""
        for source in sorted(self._dirty, key=lambda s: s.value):
            self._store(source, self._structs[source])
        self._dirty.clear()


def copy_struct(struct):
    """A detached copy of a ctypes structure (what :class:`RegisterFile` edits)."""
    return type(struct).from_buffer_copy(struct)
