"""Loaders: putting a guest image into guest RAM and saying where it starts.

A loader does what firmware or a boot loader does on a real machine: copy the
program's bytes to the guest-physical addresses it was built for, zero what
must start zeroed, and report the entry point and the CPU mode the program
expects. Two formats so far:

* :mod:`~minikvm.loaders.flat` -- a flat binary: raw bytes, no header; the
  user says where it goes and in which mode it starts.
* :mod:`~minikvm.loaders.elf` -- ELF32/ELF64 executables: the program headers
  say what goes where, the class (32/64-bit) suggests the mode, the symbol
  table names addresses for the debugger.

An image file is input from outside, possibly truncated or hostile, so every
number in it is checked before a byte is written; anything wrong is a
:class:`LoaderError` with a one-line message, never a traceback and never a
half-loaded image. An image must also fit in guest RAM and keep clear of the
areas the VMM itself writes (the GDT and page tables, see
:mod:`minikvm.x86.layout`): setting up the CPU mode would overwrite it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from minikvm.loaders.image import (
    LoadedImage,
    LoadedSegment,
    LoaderError,
    Symbol,
    SymbolTable,
    check_placement,
    read_image,
)

__all__ = [
    "LoaderError",
    "LoadedSegment",
    "LoadedImage",
    "Symbol",
    "SymbolTable",
    "read_image",
    "check_placement",
    "load_flat",
    "load_elf",
    "MULTIBOOT_SEARCH_LIMIT",
    "find_multiboot_header",
    "identify_guest",
]

#: Where a Multiboot header may lie (the first 8 KiB of a file) and its magic
#: as the file holds it: ``SEARCH_LIMIT`` and ``HEADER_MAGIC`` of
#: :mod:`~minikvm.loaders.multiboot` (a test holds them equal), repeated here
#: so that a guest without the magic never imports the Multiboot loader.
MULTIBOOT_SEARCH_LIMIT = 8192
MULTIBOOT_MAGIC = (0x1BADB002).to_bytes(4, "little")

if TYPE_CHECKING:
    from minikvm.loaders.elf import load_elf
    from minikvm.loaders.flat import load_flat
    from minikvm.loaders.multiboot import MultibootHeader


def find_multiboot_header(data: bytes) -> MultibootHeader | None:
    """The Multiboot header in ``data`` (a file's first
    :data:`MULTIBOOT_SEARCH_LIMIT` bytes), None when it has none: the
    loader's :func:`~minikvm.loaders.multiboot.find_header`, asked only when
    the magic is there at all (most guests are no Multiboot kernels)."""
    if MULTIBOOT_MAGIC not in data:
        return None
    from minikvm.loaders.multiboot import find_header

    return find_header(data)


def identify_guest(path: str, *, load_addr: int | None = None, entry: int | None = None,
                   mode: str | None = None, initrd: tuple[str, ...] = ()) -> tuple[str, bytes]:
    """Which loader ``path`` needs, as ``(kind, data)``: ``("multiboot", b"")``
    for a Multiboot kernel (a header in its first 8 KiB), ``("elf", data)``,
    or ``("flat", data)`` with the whole file. Options that do not apply to
    the kind found (a Multiboot header says where it loads and starts;
    modules go to Multiboot kernels only) are a :class:`LoaderError`."""
    with open(path, "rb") as file:
        head = file.read(MULTIBOOT_SEARCH_LIMIT)
        if find_multiboot_header(head) is not None:
            given = [name for name, value in (("--load-addr", load_addr), ("--entry", entry),
                                              ("--mode", mode)) if value is not None]
            if given:
                raise LoaderError(f"{path} is a Multiboot kernel: its header says where it "
                                  f"loads and starts ({', '.join(given)} does not apply)")
            return "multiboot", b""
        if initrd:
            raise LoaderError(f"{path} has no Multiboot header: modules (--initrd) go to "
                              "Multiboot kernels only")
        data = head + file.read()
    return ("elf" if data[:4] == b"\x7fELF" else "flat"), data


def __getattr__(name: str) -> Any:
    """``load_elf``/``load_flat`` on first use (PEP 562): a flat guest's
    ``minikvm run`` never pays for importing the ELF parser."""
    if name == "load_elf":
        from minikvm.loaders.elf import load_elf
        return load_elf
    if name == "load_flat":
        from minikvm.loaders.flat import load_flat
        return load_flat
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
