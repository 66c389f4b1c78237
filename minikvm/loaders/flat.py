"""Flat binaries: raw machine code with no header, copied to one address.

A flat binary is what ``objcopy -O binary`` leaves of a program: the bytes of
its sections, nothing else -- no entry point, no load address, no mode. The
program was linked for one address (ours for ``FLAT_LOAD_ADDR`` = 0x1000,
guests/Makefile) and only runs there; the user must say it again
(``--load-addr``), and in which CPU mode it starts (``--mode``, default real
mode, like a boot sector). Execution starts at the first byte.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from minikvm.loaders.image import LoadedImage, LoadedSegment, LoaderError, check_placement, read_image
from minikvm.memory import GuestMemory
from minikvm.x86.layout import FLAT_LOAD_ADDR, VMM_RESERVED, MapEntry
from minikvm.x86.modes import CpuMode

__all__ = ["load_flat"]


def load_flat(memory: GuestMemory, data_or_path: bytes | str | os.PathLike,
              load_addr: int = FLAT_LOAD_ADDR, *, mode: CpuMode | str = CpuMode.REAL,
              reserved: Iterable[MapEntry] = VMM_RESERVED) -> LoadedImage:
    """Copy a flat binary to guest-physical ``load_addr``; the entry is its first byte.

    ``mode`` is only recorded in the result (the CPU mode is set up by
    :mod:`minikvm.x86.modes`). Raises LoaderError for an empty or unreadable
    image, or one that does not fit in guest RAM or covers a VMM area.
    """
    if not isinstance(load_addr, int) or isinstance(load_addr, bool) or load_addr < 0:
        raise LoaderError(f"load address {load_addr!r} must be a non-negative integer")
    try:
        mode = CpuMode(mode)
    except ValueError:
        raise LoaderError(f"unknown CPU mode {mode!r}") from None
    data, name = read_image(data_or_path, max_size=memory.size)
    what = f"{name}: flat binary" if name else "flat binary"
    if not data:
        raise LoaderError(f"{what} is empty: it needs at least one instruction")
    check_placement(memory, load_addr, len(data), f"{what} of {len(data)} bytes", reserved)
    memory.write(load_addr, data)
    segment = LoadedSegment(load_addr, len(data), len(data), virtual=load_addr)
    return LoadedImage("flat", load_addr, mode, [segment], source=name)
