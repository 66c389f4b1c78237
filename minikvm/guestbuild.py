"""Build a guest from source with the host's toolchain (binutils, gcc).

Some guests are built on demand rather than by ``guests/Makefile``: the
debugger's test guests (``guests/debug/*.S``), the benchmark's loop, and
above all a learner's exercise, which ``minikvm lesson check`` builds from
whatever file the learner wrote. All of them are built here, the way the
Makefile builds the others:

* :func:`assemble` -- GNU ``as`` source into an ELF file, which keeps the
  symbols the debugger shows, and a flat binary of the same code;
* :func:`compile_c` -- a freestanding C guest into an ELF file at 1 MiB.

A tool that fails raises :class:`GuestBuildError` with the tool's own
messages (the first 20 lines), because for a learner those messages *are*
the answer. This module imports nothing else of minikvm: building a guest
is the host's business, not the VMM's.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "AssembledGuest",
    "C_GUEST_FLAGS",
    "GUESTS_DIR",
    "GuestBuildError",
    "assemble",
    "compile_c",
    "tools_available",
]

#: ``guests/`` of this source tree: the C guests' headers and linker script.
GUESTS_DIR = Path(__file__).resolve().parent.parent / "guests"

_TOOLS = ("as", "ld", "objcopy")
#: ``as`` flag and ``ld`` emulation per code size. 16-bit code is assembled
#: as i386 (the source says ``.code16``), as the Makefile does.
_ARCH = {64: ("--64", "elf_x86_64"), 32: ("--32", "elf_i386"), 16: ("--32", "elf_i386")}
#: Output a learner sees at most from a failing tool.
_MAX_LINES = 20

#: The C guests' flags, as in guests/Makefile: freestanding, no libc, no SSE.
C_GUEST_FLAGS = ("-ffreestanding", "-nostdlib", "-static", "-fno-pic", "-fno-pie", "-no-pie",
                 "-fno-stack-protector", "-fno-asynchronous-unwind-tables", "-fno-builtin",
                 "-mgeneral-regs-only", "-O2", "-Wall", "-Wextra", "-Wl,--build-id=none")


class GuestBuildError(Exception):
    """The assembler, compiler or linker refused the source (the message
    holds their output), or is not installed."""


@dataclass(frozen=True)
class AssembledGuest:
    """An assembled guest: the ELF (with symbols), the flat binary of the
    same bytes, and the address both are linked at."""

    elf: Path
    flat: Path
    base: int


def tools_available() -> bool:
    """Are ``as``, ``ld`` and ``objcopy`` installed (tests skip without them)?"""
    return all(shutil.which(tool) for tool in _TOOLS)


def _run_tool(args: list[str], what: str) -> None:
    try:
        result = subprocess.run(args, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise GuestBuildError(f"{args[0]} is not installed: the guests need gcc and "
                              "binutils") from None
    except subprocess.TimeoutExpired:
        raise GuestBuildError(f"{what} took more than two minutes") from None
    if result.returncode != 0:
        lines = (result.stdout + result.stderr).strip().splitlines()
        if len(lines) > _MAX_LINES:
            lines = lines[:_MAX_LINES] + [f"... ({len(lines) - _MAX_LINES} more lines)"]
        raise GuestBuildError(f"{what} failed:\n" + "\n".join(lines))


def _flat_script(base: int) -> str:
    """The linker script of a flat guest: code from ``base``, the entry
    section first, then read-only data, data and bss, with nothing the
    guest does not need (notes, unwind tables)."""
    return ("ENTRY(_start)\nSECTIONS {\n"
            f"  . = {base:#x};\n"
            "  .text : { *(.text.start) *(.text .text.*) }\n"
            "  .rodata : { *(.rodata .rodata.*) }\n"
            "  .data : { *(.data .data.*) }\n"
            "  .bss : { *(.bss .bss.*) *(COMMON) }\n"
            "  /DISCARD/ : { *(.note*) *(.comment) *(.eh_frame*) }\n}\n")


def assemble(source: str | Path, out_dir: str | Path, bits: int = 64,
             base: int = 0x1000) -> AssembledGuest:
    """Assemble ``source`` (GNU ``as`` syntax, entry point ``_start``) as
    ``bits``-bit code linked at ``base``; returns the ELF and flat binary
    written under ``out_dir``.

    The results are named after the source and a hash of its text, the
    code size and the base, so a test session (or a benchmark) assembles
    each guest once and a changed source is never served stale.
    """
    if bits not in _ARCH:
        raise ValueError(f"bits must be 16, 32 or 64, not {bits}")
    source = Path(source)
    script = _flat_script(base)
    key = hashlib.sha256(source.read_bytes() + f"{bits}\n{script}".encode()).hexdigest()[:12]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{source.stem}-{key}"
    obj, elf, flat, lds = (out / f"{stem}{ext}" for ext in (".o", ".elf", ".bin", ".ld"))
    if elf.exists() and flat.exists():
        return AssembledGuest(elf, flat, base)
    as_flag, emulation = _ARCH[bits]
    _run_tool(["as", as_flag, "-o", str(obj), str(source)], f"assembling {source.name}")
    lds.write_text(script)
    _run_tool(["ld", "-m", emulation, "-nostdlib", "--build-id=none", "-T", str(lds),
               "-o", str(elf), str(obj)], f"linking {source.name}")
    _run_tool(["objcopy", "-O", "binary", str(elf), str(flat)], f"objcopy of {source.name}")
    return AssembledGuest(elf, flat, base)


def compile_c(source: str | Path, out_dir: str | Path, bits: int = 64) -> Path:
    """Compile a C guest like ``guests/Makefile`` does: a 32- or 64-bit ELF
    linked at 1 MiB (``guests/c/guest.ld``), with ``guests/include`` on the
    include path. Returns the ELF's path under ``out_dir``."""
    if bits not in (32, 64):
        raise ValueError(f"a C guest is 32- or 64-bit, not {bits}")
    source = Path(source)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    elf = out / f"{source.stem}.elf"
    mode = ["-m64", "-mno-red-zone"] if bits == 64 else ["-m32"]
    _run_tool(["gcc", *mode, *C_GUEST_FLAGS, "-I", str(GUESTS_DIR / "include"),
               "-T", str(GUESTS_DIR / "c" / "guest.ld"), "-o", str(elf), str(source)],
              f"compiling {source.name}")
    return elf
