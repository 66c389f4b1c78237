"""Multiboot v1: loading a kernel the way GRUB and QEMU's ``-kernel`` do.

The Multiboot Specification (version 0.6.96) is a contract between a boot
loader and an operating-system kernel, so that one loader can start many
kernels. kvm-unit-tests builds every x86 test as a Multiboot kernel, and
many teaching kernels are too. The contract has three parts:

* **The header** (section 3.1, "OS image format"): somewhere in the first
  8192 bytes of the file, 4-byte aligned, the kernel places ``magic``
  0x1BADB002, ``flags`` and a ``checksum`` such that the three add up to 0
  modulo 2^32 (3.1.2). Flag bits 0-15 are *requirements*: a loader that does
  not know one must refuse the kernel; bit 0 asks for modules on 4 KiB
  boundaries, bit 1 for the memory fields, bit 2 for a video mode. Bits
  16-31 are optional features; bit 16 says the *address fields* follow
  (3.1.3): where the header is meant to sit (``header_addr``), where to load
  the file from the header's position backwards (``load_addr``), where the
  loaded part and the zeroed BSS end, and where to start (``entry_addr``).
  This "a.out kludge" lets a kernel in any file format be loaded; without
  it the kernel must be an ELF file, loaded by its program headers.
* **The machine state at entry** (3.2): 32-bit protected mode without
  paging; CS a flat 4 GiB code segment and the data segments flat data;
  interrupts off; EAX = 0x2BADB002 (the loader's magic) and EBX = the
  physical address of the boot information. The GDT the loader leaves
  may vanish: the kernel loads its own before it reloads a segment.
* **The boot information** (3.3): a 88-byte structure whose ``flags`` say
  which fields are valid. We fill in ``mem_lower``/``mem_upper`` (KiB of RAM
  below 640 KiB and from 1 MiB up to the first hole), the command line, the
  modules (start, end, string), the memory map, and the boot loader's name.

Where things go, much as QEMU places them (hw/i386/multiboot.c): the kernel
where it asks; the modules after it, each on a fresh page; the boot
information, the module list, the memory map and the strings in low memory
at :data:`INFO_ADDR` (0x9000), below the VMM's result page and stack -- or,
when the kernel itself lies there, on the page after the last module. The
memory map offers 0-640 KiB and 1 MiB-end of RAM as usable and calls the
640 KiB-1 MiB range reserved, as a PC's firmware does (VGA and BIOS ROM live
there on real hardware).

A kernel file and its modules are input from outside: every field is
checked before a byte is written -- the header's place and checksum, unknown
requirement bits, address fields that contradict each other or the file,
segments that overlap each other, the boot information or a VMM area, or
leave guest RAM or the 32-bit address space, module files that are missing
or too large. Each problem is one :class:`LoaderError` line.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from minikvm.loaders.image import (
    LoadedImage,
    LoadedSegment,
    LoaderError,
    SymbolTable,
    check_placement,
    read_image,
)
from minikvm.memory import GuestMemory
from minikvm.x86.layout import RESULT_ADDR, VMM_RESERVED, MapEntry
from minikvm.x86.modes import CpuMode

__all__ = [
    "BOOTLOADER_MAGIC",
    "BOOTLOADER_NAME",
    "HEADER_MAGIC",
    "INFO_ADDR",
    "MultibootHeader",
    "MultibootImage",
    "MultibootModule",
    "find_header",
    "kernel_cmdline",
    "load_multiboot",
]

#: The header's magic (3.1.2) and what the loader leaves in EAX (3.2).
HEADER_MAGIC = 0x1BADB002
BOOTLOADER_MAGIC = 0x2BADB002
#: The header lies in the first 8192 bytes of the file, 4-byte aligned (3.1).
SEARCH_LIMIT = 8192
HEADER_ALIGN = 4

# Header flags (3.1.2).
MULTIBOOT_PAGE_ALIGN = 1 << 0     #: modules on 4 KiB boundaries (we always do)
MULTIBOOT_MEMORY_INFO = 1 << 1    #: mem_lower/mem_upper wanted (always given)
MULTIBOOT_VIDEO_MODE = 1 << 2     #: a video mode wanted (none here: text-less machine)
MULTIBOOT_AOUT_KLUDGE = 1 << 16   #: the address fields are valid (3.1.3)
#: The requirement bits (0-15) this loader knows.
KNOWN_REQUIREMENTS = MULTIBOOT_PAGE_ALIGN | MULTIBOOT_MEMORY_INFO | MULTIBOOT_VIDEO_MODE

# Boot information flags (3.3): which fields of the structure are valid.
MBI_MEMORY = 1 << 0
MBI_CMDLINE = 1 << 2
MBI_MODS = 1 << 3
MBI_MMAP = 1 << 6
MBI_BOOT_LOADER_NAME = 1 << 9

#: The boot information (3.3): 88 bytes, these fields at these offsets.
#: flags, mem_lower, mem_upper, boot_device, cmdline, mods_count, mods_addr
#: (0-27); syms (28-43, unused); mmap_length, mmap_addr (44-51); drives and
#: config table (52-63, unused); boot_loader_name (64); APM and VBE (68-87).
_MBI = struct.Struct("<7I16x2I12xI20x")
_MBI_SIZE = 88
#: One module entry: start, end, string, reserved (3.3).
_MODULE = struct.Struct("<IIII")
#: One memory map entry: size (of the rest: 20), base, length, type (3.3).
_MMAP = struct.Struct("<IQQI")
MMAP_AVAILABLE = 1
MMAP_RESERVED = 2

#: Where the boot information, module list, memory map and strings go (QEMU's
#: MULTIBOOT_STRUCT_ADDR), and where that area must end: the VMM's result page.
INFO_ADDR = 0x9000
INFO_END = RESULT_ADDR
#: The PC's low-memory limit: RAM below it is "lower memory" (mem_lower).
LOWER_MEMORY_END = 0xA0000
UPPER_MEMORY_START = 0x100000
PAGE = 4096
BOOTLOADER_NAME = "minikvm"

# Caps on what a user (or a file) may ask for.
MAX_MODULES = 256
MAX_STRING = 64 * 1024            #: bytes of one command line
MAX_KERNEL_SIZE = 512 << 20


@dataclass(frozen=True)
class MultibootHeader:
    """A Multiboot header found in a file: where, its flags, its address fields."""

    offset: int               # in the file
    flags: int
    header_addr: int = 0
    load_addr: int = 0
    load_end_addr: int = 0
    bss_end_addr: int = 0
    entry_addr: int = 0

    @property
    def has_addresses(self) -> bool:
        """Bit 16: load by the address fields rather than an ELF's headers."""
        return bool(self.flags & MULTIBOOT_AOUT_KLUDGE)


@dataclass(frozen=True)
class MultibootModule:
    """A module in guest RAM: ``[start, end)`` and its string."""

    start: int
    end: int
    string: str


class MultibootImage(LoadedImage):
    """A loaded Multiboot kernel: its image, plus what EAX and EBX must hold
    (a record: the fields of :class:`LoadedImage`, then these)."""

    __slots__ = ("info_addr", "magic", "cmdline", "modules", "memory_map", "header")
    info_addr: int
    magic: int
    cmdline: str
    modules: list[MultibootModule]
    memory_map: list[tuple[int, int, int]]   # base, length, type
    header: MultibootHeader | None

    def __init__(self, kind: str, entry: int, mode: CpuMode, segments: list[LoadedSegment],
                 symbols: SymbolTable | None = None, source: str | None = None,
                 info_addr: int = INFO_ADDR, magic: int = BOOTLOADER_MAGIC, cmdline: str = "",
                 modules: list[MultibootModule] | None = None,
                 memory_map: list[tuple[int, int, int]] | None = None,
                 header: MultibootHeader | None = None) -> None:
        super().__init__(kind, entry, mode, segments, symbols, source)
        self.info_addr = info_addr
        self.magic = magic
        self.cmdline = cmdline
        self.modules = [] if modules is None else modules
        self.memory_map = [] if memory_map is None else memory_map
        self.header = header


def kernel_cmdline(kernel_name: str, append: str | None) -> str:
    """The command line a Multiboot kernel gets, as QEMU builds it: the
    kernel's file name, then a space and the ``--append`` text (if any).
    kvm-unit-tests reads its argv from it, argv[0] being the file name."""
    return kernel_name if not append else f"{kernel_name} {append}"


def find_header(data: bytes) -> MultibootHeader | None:
    """The Multiboot header of ``data``, None when it has none.

    A header is the magic at a 4-byte aligned offset in the first 8192
    bytes with a checksum that makes magic + flags + checksum zero. A magic
    whose checksum does not add up is a broken header, not an absent one:
    a LoaderError. So are unknown requirement bits and header fields that
    run past 8192 bytes or the end of the file.
    """
    limit = min(len(data), SEARCH_LIMIT)
    broken_at = None
    for offset in range(0, limit - 11, HEADER_ALIGN):
        magic, flags, checksum = struct.unpack_from("<III", data, offset)
        if magic != HEADER_MAGIC:
            continue
        if (magic + flags + checksum) & 0xFFFF_FFFF:
            broken_at = offset if broken_at is None else broken_at
            continue
        return _parse_header(data, offset, flags)
    if broken_at is not None:
        raise LoaderError(f"Multiboot magic at offset {broken_at:#x} with a bad checksum "
                          "(magic + flags + checksum must be 0 modulo 2^32)")
    return None


def _parse_header(data: bytes, offset: int, flags: int) -> MultibootHeader:
    unknown = flags & 0xFFFF & ~KNOWN_REQUIREMENTS
    if unknown:
        bits = ", ".join(str(bit) for bit in range(16) if unknown >> bit & 1)
        raise LoaderError(f"the Multiboot header requires flag bit {bits}, which this "
                          "loader does not know (a loader must refuse such a kernel)")
    size = 48 if flags & MULTIBOOT_VIDEO_MODE else 32 if flags & MULTIBOOT_AOUT_KLUDGE else 12
    if offset + size > min(len(data), SEARCH_LIMIT):
        raise LoaderError(f"the Multiboot header at offset {offset:#x} needs {size} bytes, "
                          "past the end of the file or of its first 8192 bytes")
    if not flags & MULTIBOOT_AOUT_KLUDGE:
        return MultibootHeader(offset, flags)
    fields = struct.unpack_from("<5I", data, offset + 12)
    return MultibootHeader(offset, flags, *fields)


# -- the kernel ---------------------------------------------------------------------


def _aout_segment(data: bytes, header: MultibootHeader) -> tuple[int, int, int, int]:
    """From the address fields (3.1.3): (file offset, load address, bytes from
    the file, bytes in memory with the BSS); the entry must be loaded code."""
    h = header
    if h.load_addr > h.header_addr:
        raise LoaderError(f"Multiboot load_addr {h.load_addr:#x} is above header_addr "
                          f"{h.header_addr:#x}")
    start = h.offset - (h.header_addr - h.load_addr)
    if start < 0:
        raise LoaderError(f"Multiboot header_addr - load_addr = "
                          f"{h.header_addr - h.load_addr:#x} reaches before the file's start "
                          f"(header at offset {h.offset:#x})")
    if h.load_end_addr:
        if h.load_end_addr <= h.load_addr:
            raise LoaderError(f"Multiboot load_end_addr {h.load_end_addr:#x} is not above "
                              f"load_addr {h.load_addr:#x}")
        file_size = h.load_end_addr - h.load_addr
        if start + file_size > len(data):
            raise LoaderError(f"Multiboot load_end_addr {h.load_end_addr:#x} asks for "
                              f"{file_size:#x} bytes from offset {start:#x}; the file has "
                              f"{len(data):#x}")
    else:
        file_size = len(data) - start   # 0: the text and data fill the rest of the file
    load_end = h.load_addr + file_size
    if h.header_addr >= load_end:
        raise LoaderError(f"Multiboot header_addr {h.header_addr:#x} lies outside the loaded "
                          f"range {h.load_addr:#x}-{load_end - 1:#x}")
    mem_size = file_size
    if h.bss_end_addr:
        if h.bss_end_addr < load_end:
            raise LoaderError(f"Multiboot bss_end_addr {h.bss_end_addr:#x} is below the end "
                              f"of the loaded part {load_end:#x}")
        mem_size = h.bss_end_addr - h.load_addr
    if h.load_addr + mem_size > 1 << 32:
        raise LoaderError("the Multiboot kernel runs past 4 GiB")
    if not h.load_addr <= h.entry_addr < load_end:
        raise LoaderError(f"Multiboot entry_addr {h.entry_addr:#x} is not in the loaded "
                          f"range {h.load_addr:#x}-{load_end - 1:#x}")
    return start, h.load_addr, file_size, mem_size


def _kernel_extent(data: bytes, header: MultibootHeader) -> list[tuple[int, int, str]]:
    """Where the kernel will lie, as (address, bytes in memory, name) per
    segment, from the address fields or else the ELF32 program headers;
    checks the file but writes nothing."""
    if header.has_addresses:
        _, addr, _, mem_size = _aout_segment(data, header)
        return [(addr, mem_size, "the Multiboot kernel")]
    # Imported here: a Multiboot kernel with address fields, and every guest
    # that only has its first bytes searched for a header, need no ELF parser.
    from minikvm.loaders.elf import ELFCLASS32, ELFCLASS64, ELFMAG, parse_elf

    if data[:4] != ELFMAG:
        raise LoaderError("a Multiboot header without address fields (flag bit 16) needs an "
                          "ELF file, and this is none")
    if data[4] == ELFCLASS64:
        raise LoaderError("a 64-bit ELF file with a Multiboot header: Multiboot v1 kernels "
                          "are ELF32 (objcopy -O elf32-i386 makes one, as kvm-unit-tests does)")
    if data[4] != ELFCLASS32:
        raise LoaderError(f"unknown ELF class {data[4]} in a Multiboot kernel")
    elf = parse_elf(data)
    return [(ph.paddr, ph.memsz, f"segment {ph.index}") for ph in elf.load_segments]


def _write_kernel(memory: GuestMemory, data: bytes, header: MultibootHeader,
                  reserved: tuple[MapEntry, ...]) -> LoadedImage:
    """Copy the kernel in (its placement already checked)."""
    if header.has_addresses:
        start, addr, file_size, mem_size = _aout_segment(data, header)
        memory.write(addr, data[start:start + file_size])
        if mem_size > file_size:
            memory.fill(addr + file_size, mem_size - file_size, 0)
        segment = LoadedSegment(addr, file_size, mem_size, virtual=addr)
        return LoadedImage("multiboot", header.entry_addr, CpuMode.PROTECTED, [segment])
    from minikvm.loaders.elf import load_elf   # see _kernel_extent

    image = load_elf(memory, data, reserved=reserved)
    image.kind = "multiboot-elf32"
    return image


# -- the boot information -------------------------------------------------------------


def _memory_map(memory: GuestMemory) -> list[tuple[int, int, int]]:
    """RAM as (base, length, type): usable except 640 KiB-1 MiB (reserved)."""
    entries: list[tuple[int, int, int]] = []
    for region in memory.regions:
        start, end = region.guest_phys_addr, region.end
        pieces = [(start, min(end, LOWER_MEMORY_END), MMAP_AVAILABLE),
                  (max(start, LOWER_MEMORY_END), min(end, UPPER_MEMORY_START), MMAP_RESERVED),
                  (max(start, UPPER_MEMORY_START), end, MMAP_AVAILABLE)]
        entries.extend((base, stop - base, kind) for base, stop, kind in pieces if stop > base)
    return entries


def _contiguous_end(memory: GuestMemory, start: int) -> int:
    """The end of the RAM that runs without a hole from ``start``."""
    end = start
    for region in memory.regions:
        if region.guest_phys_addr <= end < region.end:
            end = region.end
    return end


def _string(text: str, what: str) -> bytes:
    raw = text.encode("utf-8")
    if b"\0" in raw:
        raise LoaderError(f"{what} holds a NUL byte")
    if len(raw) >= MAX_STRING:
        raise LoaderError(f"{what} is {len(raw)} bytes long; at most {MAX_STRING - 1}")
    return raw + b"\0"


def _align(value: int, to: int = PAGE) -> int:
    return -(-value // to) * to


def _info_place(memory: GuestMemory, size: int, kernel: list[tuple[int, int, str]],
                after_modules: int, reserved: tuple[MapEntry, ...]) -> int:
    """Where the information block goes: at :data:`INFO_ADDR` in low memory
    as QEMU puts it, unless the kernel itself lies there (kvm-unit-tests'
    real-mode test is linked at 0x8000); then on the page after the last
    module. Refuses a block that fits nowhere."""
    if INFO_ADDR + size <= INFO_END and not any(
            MapEntry(addr, addr + length, what, "").overlaps(INFO_ADDR, size)
            for addr, length, what in kernel):
        check_placement(memory, INFO_ADDR, size, "the boot information", reserved)
        return INFO_ADDR
    if after_modules + size > 1 << 32:
        raise LoaderError("the boot information would end above 4 GiB")
    check_placement(memory, after_modules, size, f"the boot information ({size} bytes)",
                    reserved)
    return after_modules


def load_multiboot(memory: GuestMemory, data_or_path: bytes | str | os.PathLike, *,
                   cmdline: str = "", modules: Sequence[str | os.PathLike] = (),
                   header: MultibootHeader | None = None,
                   reserved: Iterable[MapEntry] = VMM_RESERVED) -> MultibootImage:
    """Load a Multiboot kernel, its ``modules`` (file paths, one module each)
    and the boot information with ``cmdline``; nothing is written unless all
    of it fits. Start the kernel in protected mode at ``entry`` with EAX =
    ``magic`` and EBX = ``info_addr`` (:meth:`Machine.load_guest` does).
    """
    data, name = read_image(data_or_path, MAX_KERNEL_SIZE)
    prefix = f"{name}: " if name else ""
    reserved = tuple(reserved)
    if len(modules) > MAX_MODULES:
        raise LoaderError(f"{len(modules)} modules; at most {MAX_MODULES}")
    try:
        header = header or find_header(data)
        if header is None:
            raise LoaderError("no Multiboot header in the first 8192 bytes")
        cmdline_raw = _string(cmdline, "the command line")
        module_data = []
        for path in modules:
            blob, module_name = read_image(path, memory.size)
            module_data.append((blob, _string(module_name or "module", "a module's name")))
        memory_map = _memory_map(memory)
        strings = [cmdline_raw, _string(BOOTLOADER_NAME, "the loader name")]
        strings += [string for _, string in module_data]
        # The information block: the structure, the module list, the map, the strings.
        info_size = (_MBI_SIZE + _MODULE.size * len(module_data)
                     + _MMAP.size * len(memory_map) + sum(map(len, strings)))
        kernel = _kernel_extent(data, header)
        for addr, size, what in kernel:
            check_placement(memory, addr, size, what, reserved)
        # Modules: after the kernel, each on a fresh page, below 4 GiB.
        placed: list[MultibootModule] = []
        at = _align(max(addr + size for addr, size, _ in kernel))
        for (blob, string), path in zip(module_data, modules):
            what = f"module {os.fspath(path)} ({len(blob)} bytes)"
            if at + len(blob) > 1 << 32:
                raise LoaderError(f"{what} would end above 4 GiB")
            check_placement(memory, at, len(blob), what, reserved)
            placed.append(MultibootModule(at, at + len(blob), string[:-1].decode()))
            at = _align(at + len(blob))
        info_addr = _info_place(memory, info_size, kernel, at, reserved)
        image = _write_kernel(memory, data, header, reserved)
    except LoaderError as err:
        raise LoaderError(f"{prefix}{err}") from None
    for (blob, _), module in zip(module_data, placed):
        memory.write(module.start, blob)
    modules_at = info_addr + _MBI_SIZE
    mmap_at = modules_at + _MODULE.size * len(module_data)
    strings_at = mmap_at + _MMAP.size * len(memory_map)

    # Strings, then the structures that point at them.
    addresses = []
    cursor = strings_at
    for string in strings:
        memory.write(cursor, string)
        addresses.append(cursor)
        cursor += len(string)
    cmdline_addr, name_addr, module_names = addresses[0], addresses[1], addresses[2:]
    for index, (module, string_addr) in enumerate(zip(placed, module_names)):
        memory.write(modules_at + index * _MODULE.size,
                     _MODULE.pack(module.start, module.end, string_addr, 0))
    for index, (base, length, kind) in enumerate(memory_map):
        memory.write(mmap_at + index * _MMAP.size, _MMAP.pack(_MMAP.size - 4, base, length, kind))
    lower = min(_contiguous_end(memory, 0), LOWER_MEMORY_END) // 1024
    upper_end = _contiguous_end(memory, UPPER_MEMORY_START)
    upper = min(max(0, upper_end - UPPER_MEMORY_START) // 1024, 0xFFFF_FFFF)
    flags = MBI_MEMORY | MBI_CMDLINE | MBI_MODS | MBI_MMAP | MBI_BOOT_LOADER_NAME
    memory.write(info_addr, bytes(_MBI_SIZE))
    memory.write(info_addr, _MBI.pack(flags, lower, upper, 0, cmdline_addr, len(placed),
                                      modules_at if placed else 0,
                                      _MMAP.size * len(memory_map), mmap_at, name_addr))
    return MultibootImage(image.kind, image.entry, CpuMode.PROTECTED, image.segments,
                          image.symbols, source=name, info_addr=info_addr,
                          cmdline=cmdline, modules=placed, memory_map=memory_map,
                          header=header)
