"""What every loader shares: the loaded image, its segments and symbols, the
one error type, and the checks that keep an image inside guest RAM and clear
of the areas the VMM writes (see the package docstring)."""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterable, Iterator

from minikvm.memory import GuestMemory
from minikvm.record import FrozenRecord, Record
from minikvm.x86.layout import VMM_RESERVED, MapEntry
from minikvm.x86.modes import CpuMode

__all__ = [
    "LoaderError",
    "LoadedSegment",
    "LoadedImage",
    "Symbol",
    "SymbolTable",
    "read_image",
    "check_placement",
]


class LoaderError(Exception):
    """A guest image that cannot be loaded; the message is one line for a person."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class LoadedSegment(FrozenRecord):
    """A piece of the image now in guest RAM: ``file_size`` bytes copied to
    ``address``, then zeros up to ``mem_size`` (an ELF's BSS). A frozen
    record (:mod:`minikvm.record`)."""

    __slots__ = ("address", "file_size", "mem_size", "readable", "writable", "executable",
                 "virtual")
    address: int                 # guest-physical
    file_size: int
    mem_size: int
    readable: bool
    writable: bool
    executable: bool
    virtual: int | None          # the address the program was linked for, if it says

    def __init__(self, address: int, file_size: int, mem_size: int, readable: bool = True,
                 writable: bool = True, executable: bool = True,
                 virtual: int | None = None) -> None:
        self._set(address=address, file_size=file_size, mem_size=mem_size, readable=readable,
                  writable=writable, executable=executable, virtual=virtual)

    @property
    def end(self) -> int:
        """First guest-physical address after the segment."""
        return self.address + self.mem_size

    def __contains__(self, addr: object) -> bool:
        return isinstance(addr, int) and self.address <= addr < self.end


class Symbol(FrozenRecord):
    """A named address from an image's symbol table (a frozen record)."""

    __slots__ = ("address", "size", "name")
    address: int
    size: int
    name: str

    def __init__(self, address: int, size: int, name: str) -> None:
        self._set(address=address, size=size, name=name)


class SymbolTable:
    """Symbols sorted by address: ``symbol_at(addr)`` says ``"main+0x12"``.

    >>> table = SymbolTable([Symbol(0x1000, 0x20, "main"), Symbol(0x1020, 0, "loop")])
    >>> table.symbol_at(0x1012), table.symbol_at(0x1030), table.symbol_at(0xfff)
    ('main+0x12', 'loop+0x10', None)
    """

    def __init__(self, symbols: Iterable[Symbol] = ()) -> None:
        # At one address, sized symbols (functions, objects) before labels.
        self._symbols = sorted(symbols, key=lambda s: (s.address, s.size == 0, s.name))
        self._addresses = [s.address for s in self._symbols]

    def __len__(self) -> int:
        return len(self._symbols)

    def __repr__(self) -> str:
        return f"SymbolTable({len(self._symbols)} symbols)"

    def __iter__(self) -> Iterator[Symbol]:
        return iter(self._symbols)

    def lookup(self, name: str) -> Symbol | None:
        """The first symbol called ``name`` (by address), or None."""
        for symbol in self._symbols:
            if symbol.name == name:
                return symbol
        return None

    def containing(self, addr: int) -> Symbol | None:
        """The symbol at or closest below ``addr``; None when there is none, or
        when that symbol has a size and ``addr`` lies beyond it."""
        i = bisect.bisect_right(self._addresses, addr) - 1
        if i < 0:
            return None
        symbol = self._symbols[bisect.bisect_left(self._addresses, self._addresses[i])]
        if symbol.size and addr >= symbol.address + symbol.size:
            return None
        return symbol

    def symbol_at(self, addr: int) -> str | None:
        """``"name"`` or ``"name+0x12"`` for ``addr``, or None."""
        symbol = self.containing(addr)
        if symbol is None:
            return None
        offset = addr - symbol.address
        return symbol.name if offset == 0 else f"{symbol.name}+{offset:#x}"

    def as_dict(self) -> dict[int, str]:
        """``{address: name}``, one name per address (the first in sort order)."""
        result: dict[int, str] = {}
        for symbol in self._symbols:
            result.setdefault(symbol.address, symbol.name)
        return result


class LoadedImage(Record):
    """What a loader put into guest RAM and how to start it (a record,
    :mod:`minikvm.record`)."""

    __slots__ = ("kind", "entry", "mode", "segments", "symbols", "source")
    kind: str                      # "flat", "elf32" or "elf64"
    entry: int                     # guest-physical address of the first instruction
    mode: CpuMode                  # the CPU mode the image expects
    segments: list[LoadedSegment]
    symbols: SymbolTable
    source: str | None             # the file it came from, when it came from one

    def __init__(self, kind: str, entry: int, mode: CpuMode, segments: list[LoadedSegment],
                 symbols: SymbolTable | None = None, source: str | None = None) -> None:
        self.kind = kind
        self.entry = entry
        self.mode = mode
        self.segments = segments
        self.symbols = SymbolTable() if symbols is None else symbols
        self.source = source

    def symbol_at(self, addr: int) -> str | None:
        return self.symbols.symbol_at(addr)

    @property
    def start(self) -> int:
        return min(segment.address for segment in self.segments)

    @property
    def end(self) -> int:
        return max(segment.end for segment in self.segments)


def read_image(source: bytes | bytearray | memoryview | str | os.PathLike,
               max_size: int) -> tuple[bytes, str | None]:
    """The image's bytes and its file name (None for bytes given directly).

    Refuses, as a LoaderError, files that cannot be read and images larger
    than ``max_size`` (checked before reading the whole file).
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if len(data) > max_size:
            raise LoaderError(f"image of {len(data)} bytes is larger than {max_size} bytes")
        return data, None
    if not isinstance(source, (str, os.PathLike)):
        raise LoaderError(f"an image is bytes or a path, not {type(source).__name__}")
    name = os.fspath(source)
    try:
        with open(name, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            if size > max_size:
                raise LoaderError(f"{name}: {size} bytes is larger than {max_size} bytes")
            data = file.read(max_size + 1)
    except OSError as err:
        raise LoaderError(f"{name}: {err.strerror or err}") from None
    if len(data) > max_size:
        raise LoaderError(f"{name}: larger than {max_size} bytes")
    return data, str(name)


def _ram_ranges(memory: GuestMemory) -> str:
    return ", ".join(f"{r.guest_phys_addr:#x}-{r.end - 1:#x}" for r in memory.regions) or "none"


def check_placement(memory: GuestMemory, addr: int, size: int, what: str,
                    reserved: Iterable[MapEntry] = VMM_RESERVED) -> None:
    """Refuse ``[addr, addr+size)`` unless it lies in guest RAM, clear of ``reserved``."""
    if size <= 0:
        return
    if not memory.contains(addr, size):
        raise LoaderError(f"{what} at {addr:#x}-{addr + size - 1:#x} does not fit in guest RAM "
                          f"({_ram_ranges(memory)})")
    for area in reserved:
        if area.overlaps(addr, size):
            raise LoaderError(f"{what} at {addr:#x}-{addr + size - 1:#x} overlaps the "
                              f"{area.name} at {area.start:#x}-{area.end - 1:#x}, "
                              "which the VMM writes")
