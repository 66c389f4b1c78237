"""Assemble a small guest from source with binutils (``as``, ``ld``, ``objcopy``).

The debugger's tests, its benchmark and lessons need guests whose every
instruction is known. They are written in assembly (``guests/debug/*.S``) and
built here into an ELF file, which keeps the symbols the debugger shows, and
a flat binary of the same code. Results are cached by the source's content,
so a test session assembles each guest once.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["AssembledGuest", "GuestBuildError", "assemble", "tools_available"]

_TOOLS = ("as", "ld", "objcopy")
_ARCH = {64: ("--64", "elf_x86_64"), 32: ("--32", "elf_i386"), 16: ("--32", "elf_i386")}


class GuestBuildError(Exception):
    """The assembler or linker failed (the message holds their output)."""


@dataclass(frozen=True)
class AssembledGuest:
    elf: Path
    flat: Path
    base: int


def tools_available() -> bool:
    return all(shutil.which(tool) for tool in _TOOLS)


def _run(args: list[str]) -> None:
    result = subprocess.run(args, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise GuestBuildError(f"{' '.join(args)} failed:\n{result.stdout}{result.stderr}")


def assemble(source: str | Path, out_dir: str | Path, bits: int = 64,
             base: int = 0x1000) -> AssembledGuest:
    """Assemble ``source`` (a ``.S`` file) as ``bits``-bit code linked at
    ``base``; returns the ELF and flat-binary paths under ``out_dir``."""
    if bits not in _ARCH:
        raise ValueError(f"bits must be 16, 32 or 64, not {bits}")
    source = Path(source)
    text = source.read_bytes()
    key = hashlib.sha256(text + f"{bits}:{base:#x}".encode()).hexdigest()[:12]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{source.stem}-{key}"
    elf, flat = out / f"{stem}.elf", out / f"{stem}.bin"
    if elf.exists() and flat.exists():
        return AssembledGuest(elf, flat, base)
    as_flag, emulation = _ARCH[bits]
    obj = out / f"{stem}.o"
    _run(["as", as_flag, "-o", str(obj), str(source)])
    _run(["ld", "-m", emulation, "-nostdlib", f"-Ttext={base:#x}", "-e", "_start",
          "--build-id=none", "-o", str(elf), str(obj)])
    _run(["objcopy", "-O", "binary", "-j", ".text", str(elf), str(flat)])
    return AssembledGuest(elf, flat, base)
