"""ELF executables (ELF32 for i386, ELF64 for x86-64): program headers, BSS, symbols.

An ELF executable says itself what to load where (System V ABI, "gABI",
chapters 4 "Object Files" and 5 "Program Loading"; the x86 supplements fix
the machine numbers):

* the **ELF header** at offset 0: magic ``\\x7fELF``, class (32/64-bit),
  byte order, machine, entry point, and where the program and section
  header tables are;
* the **program headers**: each ``PT_LOAD`` entry copies ``p_filesz`` bytes
  from file offset ``p_offset`` to ``p_paddr`` and zero-fills the rest up to
  ``p_memsz`` -- that tail is the BSS, the zero-initialised variables, which
  take no room in the file;
* the **section headers** (optional for loading): we read only the symbol
  table (``SHT_SYMTAB``) and its string table, for the debugger.

A bare-metal guest is loaded at the *physical* addresses (``p_paddr``), as
firmware and boot loaders do; the vCPU starts with identity page tables, so
for our guests ``p_paddr == p_vaddr``. The class picks the CPU mode: ELF32
starts in 32-bit protected mode, ELF64 in long mode.

The file is untrusted input. Everything is checked before anything is
written: magic, class, byte order, version, type, machine, the header and
table offsets and sizes against the file's length, ``p_filesz <= p_memsz``,
address wrap-around, overlapping segments, counts against caps, and that the
entry point lies in the file-backed part of an executable segment. Each
problem is a :class:`LoaderError` naming it.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from minikvm.loaders.image import (
    LoadedImage,
    LoadedSegment,
    LoaderError,
    Symbol,
    SymbolTable,
    check_placement,
    read_image,
)
from minikvm.memory import GuestMemory
from minikvm.x86.layout import VMM_RESERVED, MapEntry
from minikvm.x86.modes import CpuMode

__all__ = [
    "ELFMAG", "ELFCLASS32", "ELFCLASS64", "ELFDATA2LSB", "EV_CURRENT",
    "ET_EXEC", "ET_DYN", "EM_386", "EM_X86_64",
    "PT_LOAD", "PT_INTERP", "PF_X", "PF_W", "PF_R",
    "SHT_SYMTAB", "SHT_STRTAB", "STT_SECTION", "STT_FILE", "SHN_UNDEF",
    "MAX_ELF_SIZE", "MAX_PROGRAM_HEADERS", "MAX_SECTIONS", "MAX_SYMBOLS",
    "ElfHeader", "ProgramHeader", "SectionHeader", "ElfFile",
    "parse_elf", "load_elf",
]

# e_ident: the first 16 bytes.
ELFMAG = b"\x7fELF"
EI_CLASS = 4          # index of the class byte
EI_DATA = 5           # index of the byte-order byte
EI_VERSION = 6        # index of the ident version byte
EI_NIDENT = 16
ELFCLASS32 = 1        # 32-bit objects
ELFCLASS64 = 2        # 64-bit objects
ELFDATA2LSB = 1       # little-endian (x86)
EV_CURRENT = 1        # the only ELF version there is

ET_EXEC = 2           # an executable at fixed addresses
ET_DYN = 3            # a shared object or position-independent executable
EM_386 = 3            # Intel 80386 (ELF32)
EM_X86_64 = 62        # AMD x86-64 (ELF64)

PT_LOAD = 1           # a segment to copy into memory
PT_INTERP = 3         # the path of a dynamic loader: needs an OS
PF_X = 1              # segment is executable
PF_W = 2              # segment is writable
PF_R = 4              # segment is readable

SHT_SYMTAB = 2        # the full symbol table
SHT_STRTAB = 3        # a string table (symbol names live in one)
SHT_NOBITS = 8        # occupies no file space (.bss)
SHN_UNDEF = 0         # symbol is not defined here
STT_SECTION = 3       # symbol names a section, not a program object
STT_FILE = 4          # symbol names the source file

# Caps on what a file may ask of us (each far above what a real guest has).
MAX_ELF_SIZE = 512 << 20
MAX_PROGRAM_HEADERS = 128
MAX_SECTIONS = 4096
MAX_SYMBOLS = 200_000

_MACHINE_NAMES = {EM_386: "i386", EM_X86_64: "x86-64", 40: "ARM", 183: "AArch64",
                  243: "RISC-V", 8: "MIPS", 20: "PowerPC", 21: "PowerPC64"}


@dataclass(frozen=True)
class _Format:
    """The struct layouts of one ELF class (little-endian)."""

    bits: int
    machine: int
    header: struct.Struct
    program_header: struct.Struct
    section_header: struct.Struct
    symbol: struct.Struct


_ELF32 = _Format(32, EM_386,
                 struct.Struct("<16sHHIIIIIHHHHHH"),   # Elf32_Ehdr, 52 bytes
                 struct.Struct("<8I"),                 # Elf32_Phdr, 32 bytes
                 struct.Struct("<10I"),                # Elf32_Shdr, 40 bytes
                 struct.Struct("<IIIBBH"))             # Elf32_Sym, 16 bytes
_ELF64 = _Format(64, EM_X86_64,
                 struct.Struct("<16sHHIQQQIHHHHHH"),   # Elf64_Ehdr, 64 bytes
                 struct.Struct("<IIQQQQQQ"),           # Elf64_Phdr, 56 bytes
                 struct.Struct("<IIQQQQIIQQ"),         # Elf64_Shdr, 64 bytes
                 struct.Struct("<IBBHQQ"))             # Elf64_Sym, 24 bytes


@dataclass(frozen=True)
class ElfHeader:
    """The ELF header's fields (``e_*``), class-independent."""

    bits: int
    type: int
    machine: int
    version: int
    entry: int
    phoff: int
    shoff: int
    flags: int
    ehsize: int
    phentsize: int
    phnum: int
    shentsize: int
    shnum: int
    shstrndx: int


@dataclass(frozen=True)
class ProgramHeader:
    """One program header (``p_*``)."""

    index: int
    type: int
    flags: int
    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int
    align: int

    @property
    def executable(self) -> bool:
        return bool(self.flags & PF_X)


@dataclass(frozen=True)
class SectionHeader:
    """One section header (``sh_*``)."""

    index: int
    name: int
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int
    info: int
    addralign: int
    entsize: int


@dataclass(frozen=True)
class ElfFile:
    """A checked ELF executable: what to load, where to start, the symbols."""

    header: ElfHeader
    program_headers: tuple[ProgramHeader, ...]
    entry_physical: int
    symbols: SymbolTable

    @property
    def bits(self) -> int:
        return self.header.bits

    @property
    def entry(self) -> int:
        """The entry point as linked (virtual)."""
        return self.header.entry

    @property
    def load_segments(self) -> list[ProgramHeader]:
        """The PT_LOAD entries that occupy memory."""
        return [ph for ph in self.program_headers if ph.type == PT_LOAD and ph.memsz]

    @property
    def mode(self) -> CpuMode:
        """The mode the class suggests: ELF64 long mode, ELF32 protected mode."""
        return CpuMode.LONG if self.bits == 64 else CpuMode.PROTECTED


def _parse_header(data: bytes) -> tuple[ElfHeader, _Format]:
    if len(data) < EI_NIDENT:
        raise LoaderError(f"too short for an ELF file ({len(data)} bytes)")
    if data[:4] != ELFMAG:
        raise LoaderError("not an ELF file (no \\x7fELF magic)")
    elf_class, encoding, ident_version = data[EI_CLASS], data[EI_DATA], data[EI_VERSION]
    if elf_class not in (ELFCLASS32, ELFCLASS64):
        raise LoaderError(f"unknown ELF class {elf_class} (1 is ELF32, 2 is ELF64)")
    if encoding != ELFDATA2LSB:
        raise LoaderError(f"ELF byte order {encoding} is not little-endian, as x86 is")
    if ident_version != EV_CURRENT:
        raise LoaderError(f"unknown ELF version {ident_version} in e_ident")
    fmt = _ELF32 if elf_class == ELFCLASS32 else _ELF64
    if len(data) < fmt.header.size:
        raise LoaderError(f"truncated: the ELF{fmt.bits} header needs {fmt.header.size} bytes, "
                          f"the file has {len(data)}")
    header = ElfHeader(fmt.bits, *fmt.header.unpack_from(data)[1:])
    if header.type == ET_DYN:
        raise LoaderError("a position-independent executable (ET_DYN) needs relocating; "
                          "link the guest with -static -no-pie")
    if header.type != ET_EXEC:
        raise LoaderError(f"not an executable (e_type {header.type}; ET_EXEC is 2)")
    if header.machine != fmt.machine:
        name = _MACHINE_NAMES.get(header.machine, "unknown")
        expected = _MACHINE_NAMES[fmt.machine]
        raise LoaderError(f"ELF{fmt.bits} file for machine {header.machine} ({name}); "
                          f"an x86 guest of this class is {expected} (e_machine {fmt.machine})")
    if header.version != EV_CURRENT:
        raise LoaderError(f"unknown ELF version {header.version} in e_version")
    if not fmt.header.size <= header.ehsize <= len(data):
        raise LoaderError(f"bad header size e_ehsize {header.ehsize}")
    return header, fmt


def _table_bounds(data: bytes, what: str, offset: int, count: int, entsize: int,
                  min_entsize: int, max_count: int) -> None:
    if entsize < min_entsize:
        raise LoaderError(f"{what} entry size {entsize} is smaller than {min_entsize}")
    if count > max_count:
        raise LoaderError(f"{count} {what} entries is more than the {max_count} allowed")
    if offset + count * entsize > len(data):
        raise LoaderError(f"truncated: the {what} table at offset {offset:#x} "
                          f"({count} x {entsize} bytes) runs past the end of the file "
                          f"({len(data)} bytes)")


def _parse_program_headers(data: bytes, header: ElfHeader, fmt: _Format) -> list[ProgramHeader]:
    if header.phnum == 0:
        raise LoaderError("no program headers: nothing to load")
    _table_bounds(data, "program header", header.phoff, header.phnum, header.phentsize,
                  fmt.program_header.size, MAX_PROGRAM_HEADERS)
    address_limit = 1 << fmt.bits
    result = []
    for index in range(header.phnum):
        raw = fmt.program_header.unpack_from(data, header.phoff + index * header.phentsize)
        if fmt.bits == 32:
            p_type, offset, vaddr, paddr, filesz, memsz, flags, align = raw
        else:
            p_type, flags, offset, vaddr, paddr, filesz, memsz, align = raw
        ph = ProgramHeader(index, p_type, flags, offset, vaddr, paddr, filesz, memsz, align)
        if ph.type == PT_INTERP:
            raise LoaderError("dynamically linked (it names a program interpreter); "
                              "a guest must be linked -static")
        if ph.type == PT_LOAD:
            where = f"segment {index}"
            if ph.filesz > ph.memsz:
                raise LoaderError(f"{where}: p_filesz {ph.filesz:#x} is larger than "
                                  f"p_memsz {ph.memsz:#x}")
            if ph.offset + ph.filesz > len(data):
                raise LoaderError(f"truncated: {where} wants file bytes {ph.offset:#x}+"
                                  f"{ph.filesz:#x}, the file has {len(data):#x}")
            if ph.vaddr + ph.memsz > address_limit or ph.paddr + ph.memsz > address_limit:
                raise LoaderError(f"{where} wraps past the end of the {fmt.bits}-bit "
                                  "address space")
        result.append(ph)
    return result


def _check_segments(segments: list[ProgramHeader]) -> None:
    if not segments:
        raise LoaderError("no PT_LOAD segment with any bytes: nothing to load")
    ordered = sorted(segments, key=lambda ph: ph.paddr)
    for first, second in zip(ordered, ordered[1:]):
        if second.paddr < first.paddr + first.memsz:
            raise LoaderError(f"segments {first.index} and {second.index} overlap at "
                              f"{second.paddr:#x}")


def _entry_physical(entry: int, segments: list[ProgramHeader]) -> int:
    """Where the entry point lies once loaded; it must be code from the file."""
    for ph in segments:
        if ph.vaddr <= entry < ph.vaddr + ph.memsz:
            if not ph.executable:
                raise LoaderError(f"entry point {entry:#x} lies in segment {ph.index}, "
                                  "which is not executable")
            if entry >= ph.vaddr + ph.filesz:
                raise LoaderError(f"entry point {entry:#x} lies in the zero-filled (BSS) "
                                  f"part of segment {ph.index}")
            return ph.paddr + (entry - ph.vaddr)
    raise LoaderError(f"entry point {entry:#x} lies outside every loaded segment")


def _parse_section_headers(data: bytes, header: ElfHeader, fmt: _Format) -> list[SectionHeader]:
    if header.shoff == 0 or header.shnum == 0:
        return []  # stripped of sections (or e_shnum escaped to section 0: not used here)
    _table_bounds(data, "section header", header.shoff, header.shnum, header.shentsize,
                  fmt.section_header.size, MAX_SECTIONS)
    sections = []
    for index in range(header.shnum):
        raw = fmt.section_header.unpack_from(data, header.shoff + index * header.shentsize)
        section = SectionHeader(index, *raw)
        if section.type != SHT_NOBITS and section.offset + section.size > len(data):
            raise LoaderError(f"truncated: section {index} wants file bytes "
                              f"{section.offset:#x}+{section.size:#x}, the file has "
                              f"{len(data):#x}")
        sections.append(section)
    return sections


def _symbol_name(strtab: bytes, offset: int, index: int) -> str:
    if offset >= len(strtab):
        raise LoaderError(f"symbol {index}: name offset {offset:#x} is outside the string table")
    end = strtab.find(b"\0", offset)
    if end < 0:
        raise LoaderError(f"symbol {index}: name runs past the end of the string table")
    return strtab[offset:end].decode("utf-8", "replace")


def _parse_symbols(data: bytes, sections: list[SectionHeader], fmt: _Format) -> SymbolTable:
    symtab = next((s for s in sections if s.type == SHT_SYMTAB), None)
    if symtab is None:
        return SymbolTable()
    if symtab.link >= len(sections) or sections[symtab.link].type != SHT_STRTAB:
        raise LoaderError(f"symbol table (section {symtab.index}) links to section "
                          f"{symtab.link}, which is not a string table")
    if symtab.entsize < fmt.symbol.size:
        raise LoaderError(f"symbol table entry size {symtab.entsize} is smaller than "
                          f"{fmt.symbol.size}")
    count = symtab.size // symtab.entsize
    if count > MAX_SYMBOLS:
        raise LoaderError(f"{count} symbols is more than the {MAX_SYMBOLS} allowed")
    strsec = sections[symtab.link]
    strtab = data[strsec.offset:strsec.offset + strsec.size]
    symbols = []
    for index in range(count):
        raw = fmt.symbol.unpack_from(data, symtab.offset + index * symtab.entsize)
        if fmt.bits == 32:
            name_offset, value, size, info, _other, shndx = raw
        else:
            name_offset, info, _other, shndx, value, size = raw
        if shndx == SHN_UNDEF or (info & 0xF) in (STT_SECTION, STT_FILE):
            continue
        name = _symbol_name(strtab, name_offset, index)
        if name:
            symbols.append(Symbol(value, size, name))
    return SymbolTable(symbols)


def parse_elf(data: bytes) -> ElfFile:
    """Check an ELF executable and describe it, without loading anything."""
    header, fmt = _parse_header(data)
    program_headers = _parse_program_headers(data, header, fmt)
    segments = [ph for ph in program_headers if ph.type == PT_LOAD and ph.memsz]
    _check_segments(segments)
    entry_physical = _entry_physical(header.entry, segments)
    symbols = _parse_symbols(data, _parse_section_headers(data, header, fmt), fmt)
    return ElfFile(header, tuple(program_headers), entry_physical, symbols)


def load_elf(memory: GuestMemory, data_or_path: bytes | str | os.PathLike, *,
             reserved: Iterable[MapEntry] = VMM_RESERVED) -> LoadedImage:
    """Load an ELF32/ELF64 executable into guest RAM at its physical addresses.

    Every segment must fit in guest RAM and keep clear of the VMM's areas;
    nothing is written unless the whole image is good. The result's ``entry``
    is the physical address of the entry point, its ``mode`` follows the
    ELF class, its ``symbols`` come from ``.symtab`` when the file has one.
    """
    data, name = read_image(data_or_path, MAX_ELF_SIZE)
    reserved = tuple(reserved)
    try:
        elf = parse_elf(data)
        for ph in elf.load_segments:
            check_placement(memory, ph.paddr, ph.memsz, f"segment {ph.index}", reserved)
    except LoaderError as err:
        if name is None:
            raise
        raise LoaderError(f"{name}: {err}") from None

    loaded = []
    for ph in elf.load_segments:
        memory.write(ph.paddr, data[ph.offset:ph.offset + ph.filesz])
        if ph.memsz > ph.filesz:
            memory.fill(ph.paddr + ph.filesz, ph.memsz - ph.filesz, 0)  # the BSS
        loaded.append(LoadedSegment(ph.paddr, ph.filesz, ph.memsz, readable=bool(ph.flags & PF_R),
                                    writable=bool(ph.flags & PF_W), executable=ph.executable,
                                    virtual=ph.vaddr))
    return LoadedImage(f"elf{elf.bits}", elf.entry_physical, elf.mode, loaded, elf.symbols,
                       source=name)
