"""``minikvm lesson``: the list of lessons, and the checker of their exercises.

The lessons are scripts in ``lessons/`` (``python lessons/03_port_io.py``);
lessons 03 to 10 end with an exercise, ``lessons/exercises/NN_*.md``, and a
starting file the learner copies and changes. ``minikvm lesson check NN``
builds the learner's version, runs it on a real machine (or calls it, for the
exercises that are a Python function) and says in plain words whether it
does what was asked -- and when it does not, what it did instead, read from
the machine's own state (registers, device state, what the guest printed).

Every check treats the learner's code as a guest: built in a temporary
folder, run with a timeout, and any failure -- a build error, a crash, an
exception in their function -- is a sentence, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = [
    "BuildError",
    "EXERCISES",
    "LESSONS",
    "LessonInfo",
    "Verdict",
    "add_lesson_arguments",
    "build_asm",
    "build_c_guest",
    "check_exercise",
    "cmd_lesson",
    "lessons_dir",
]

ROOT = Path(__file__).resolve().parent.parent
GUESTS_DIR = ROOT / "guests"

#: How long a learner's guest may run before the checker calls it stuck.
GUEST_TIMEOUT = 10.0

STATUS_PASSED = 0
STATUS_NOT_YET = 1
STATUS_USAGE = 2


def lessons_dir() -> Path:
    """The ``lessons/`` folder of this source tree."""
    return ROOT / "lessons"


@dataclass(frozen=True)
class LessonInfo:
    """One lesson: ``lessons/{number}_{slug}.py``, and its exercise's
    starting file in ``lessons/exercises/`` (None: no exercise)."""

    number: str
    slug: str
    title: str
    starter: str | None = None

    @property
    def script(self) -> Path:
        return lessons_dir() / f"{self.number}_{self.slug}.py"

    @property
    def task(self) -> Path | None:
        if self.starter is None:
            return None
        return lessons_dir() / "exercises" / f"{Path(self.starter).stem}.md"

    @property
    def starter_path(self) -> Path | None:
        return None if self.starter is None else lessons_dir() / "exercises" / self.starter

    @property
    def solution_path(self) -> Path | None:
        return (None if self.starter is None
                else lessons_dir() / "exercises" / "solutions" / self.starter)


LESSONS: tuple[LessonInfo, ...] = (
    LessonInfo("01", "open_kvm", "Opening /dev/kvm: the API version and capabilities"),
    LessonInfo("02", "first_run", "A VM, a memory slot, a vCPU and the first KVM_RUN"),
    LessonInfo("03", "port_io", "Port I/O exits and a debug console", "03_port_io.S"),
    LessonInfo("04", "real_mode", "Real mode: registers and segments", "04_real_mode.S"),
    LessonInfo("05", "protected_mode", "Protected mode and the GDT", "05_gdt.py"),
    LessonInfo("06", "paging", "Paging and long mode, one level at a time", "06_walk.py"),
    LessonInfo("07", "debugging", "Single-stepping, breakpoints and watchpoints", "07_dr7.py"),
    LessonInfo("08", "uart_irq", "The UART, the irqchip and an interrupt", "08_uart_irq.S"),
    LessonInfo("09", "virtqueue", "MMIO exits and the virtqueue, a descriptor at a time",
               "09_chain.c"),
    LessonInfo("10", "virtio_blk", "virtio-blk end to end", "10_get_id.c"),
)


def _lesson(number: str) -> LessonInfo | None:
    number = number.zfill(2)
    return next((lesson for lesson in LESSONS if lesson.number == number), None)


@dataclass
class Verdict:
    """The checker's answer: passed or not, in sentences for a person."""

    passed: bool
    message: str
    details: list[str] = field(default_factory=list)


def _ok(message: str, *details: str) -> Verdict:
    return Verdict(True, message, list(details))


def _not_yet(message: str, *details: str) -> Verdict:
    return Verdict(False, message, list(details))


# -- building guests -----------------------------------------------------------------


class BuildError(Exception):
    """The assembler, compiler or linker refused the learner's file."""


def _run_tool(args: list[str], what: str) -> None:
    try:
        result = subprocess.run(args, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise BuildError(f"{args[0]} is not installed: the guests need gcc and binutils") from None
    except subprocess.TimeoutExpired:
        raise BuildError(f"{what} took more than two minutes") from None
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()
        lines = output.splitlines()
        if len(lines) > 20:
            lines = lines[:20] + [f"... ({len(lines) - 20} more lines)"]
        raise BuildError(f"{what} failed:\n" + "\n".join(lines))


def build_asm(source: str | Path, out_dir: str | Path, bits: int = 16,
              base: int = 0x1000) -> Path:
    """Assemble a GNU as source into a flat binary linked at ``base``.

    16-bit (real mode) and 32-bit code are assembled with ``as --32``,
    64-bit with ``--64``; the code starts at ``_start``. Like the Makefile
    of ``guests/``, .text, .rodata and .data go into the binary in that order.
    """
    source = Path(source)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    obj, elf, flat = (out / f"{source.stem}{ext}" for ext in (".o", ".elf", ".bin"))
    as_flag, emulation = ("--64", "elf_x86_64") if bits == 64 else ("--32", "elf_i386")
    _run_tool(["as", as_flag, "-o", str(obj), str(source)], f"assembling {source.name}")
    script = out / "flat.ld"
    script.write_text("ENTRY(_start)\nSECTIONS {\n"
                      f"  . = {base:#x};\n"
                      "  .text : { *(.text.start) *(.text .text.*) }\n"
                      "  .rodata : { *(.rodata .rodata.*) }\n"
                      "  .data : { *(.data .data.*) }\n"
                      "  .bss : { *(.bss .bss.*) *(COMMON) }\n"
                      "  /DISCARD/ : { *(.note*) *(.comment) *(.eh_frame*) }\n}\n")
    _run_tool(["ld", "-m", emulation, "-nostdlib", "--build-id=none", "-T", str(script),
               "-o", str(elf), str(obj)], f"linking {source.name}")
    _run_tool(["objcopy", "-O", "binary", str(elf), str(flat)], f"objcopy of {source.name}")
    return flat


#: The C guests' flags, as in guests/Makefile: freestanding, no libc, no SSE.
C_GUEST_FLAGS = ("-ffreestanding", "-nostdlib", "-static", "-fno-pic", "-fno-pie", "-no-pie",
                 "-fno-stack-protector", "-fno-asynchronous-unwind-tables", "-fno-builtin",
                 "-mgeneral-regs-only", "-O2", "-Wall", "-Wextra", "-Wl,--build-id=none")


def build_c_guest(source: str | Path, out_dir: str | Path, bits: int = 64) -> Path:
    """Compile a C guest like ``guests/Makefile`` does: an ELF at 1 MiB
    (``guests/c/guest.ld``), with ``guests/include`` on the include path."""
    source = Path(source)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    elf = out / f"{source.stem}.elf"
    mode = ["-m64", "-mno-red-zone"] if bits == 64 else ["-m32"]
    _run_tool(["gcc", *mode, *C_GUEST_FLAGS, "-I", str(GUESTS_DIR / "include"),
               "-T", str(GUESTS_DIR / "c" / "guest.ld"), "-o", str(elf), str(source)],
              f"compiling {source.name}")
    return elf


def _load_python(path: Path) -> ModuleType:
    """Import the learner's Python file (raises what its code raises)."""
    name = f"minikvm_exercise_{re.sub(r'[^0-9A-Za-z_]', '_', path.stem)}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _their_error(err: BaseException, path: Path) -> str:
    """``ValueError: ... (03_gdt.py line 12)``: the learner's own frame."""
    frames = [f for f in traceback.extract_tb(err.__traceback__)
              if Path(f.filename).resolve() == path.resolve()]
    where = f" ({path.name} line {frames[-1].lineno})" if frames else ""
    return f"{type(err).__name__}: {err}{where}"


def _function(path: Path, name: str) -> tuple[Callable[..., Any] | None, Verdict | None]:
    """The learner's function ``name`` from ``path``, or a verdict saying why not."""
    try:
        module = _load_python(path)
    except SyntaxError as err:
        return None, _not_yet(f"{path.name} is not valid Python: {err.msg} (line {err.lineno})")
    except Exception as err:  # noqa: BLE001 - the learner's code may raise anything
        return None, _not_yet(f"importing {path.name} failed: {_their_error(err, path)}")
    function = getattr(module, name, None)
    if not callable(function):
        return None, _not_yet(f"{path.name} has no function {name}(): keep the name of the "
                              "starting file's function")
    return function, None


def _printable(data: bytes) -> str:
    return repr(data.decode("latin-1"))


# -- the checks ------------------------------------------------------------------------


@dataclass
class _FlatRun:
    """What a run of a flat real-mode guest left behind."""

    stop: Any
    output: bytes
    events: list
    cr0: int
    exit_value: int | None


def _run_flat(binary: Path) -> _FlatRun:
    """Run a flat real-mode binary at 0x1000 on a fresh machine, every exit recorded."""
    from minikvm.machine import Machine

    output: list[bytes] = []
    events: list = []
    with Machine(output=output.append) as machine:
        machine.load_flat(binary, 0x1000)
        machine.listeners.append(events.append)
        stop = machine.run(timeout=GUEST_TIMEOUT)
        return _FlatRun(stop, b"".join(output), events, machine.vcpu.get_sregs().cr0,
                        machine.debug_exit.last_value)


def _stop_words(stop, timeout: float | None = None) -> str:
    timeout = GUEST_TIMEOUT if timeout is None else timeout
    if stop.kind.value == "halt":
        return "it halted (status 0)"
    if stop.kind.value == "debug-exit":
        return f"it wrote to the debug-exit port (status {stop.status})"
    if stop.kind.value == "timeout":
        return f"it was still running after {timeout:g} s and was stopped"
    return f"it stopped: {stop.message}"


def check_03(path: Path, work: Path) -> Verdict:
    """Read port 0xE9, print the answer in hex, debug-exit with value 1."""
    run = _run_flat(build_asm(path, work))
    stop, output = run.stop, run.output
    reads = [e for e in run.events if e.reason == "IO_IN" and e.exit.port == 0xE9]
    lines = output.decode("latin-1").splitlines()
    last = lines[-1].strip().lower() if lines else ""
    printed = f"Your guest printed {_printable(output)} and {_stop_words(stop)}."
    if stop.kind.value in ("shutdown", "internal-error", "fail-entry", "timeout",
                           "unexpected-exit"):
        return _not_yet(f"Your guest did not finish: {_stop_words(stop)}.",
                        f"Before that, it printed {_printable(output)}.")
    if not reads:
        return _not_yet("Your guest never read port 0xE9: there was no KVM_EXIT_IO in the "
                        "'in' direction on that port. Use `in $0xe9, %al`.", printed)
    if last != "e9":
        return _not_yet(f"Your guest read port 0xE9 and the debug console answered 0xe9, "
                        f"but the last line it printed is {last!r}, not 'e9'. Call "
                        "print_hex_al right after the `in`, while AL still holds the answer.",
                        printed)
    if stop.kind.value != "debug-exit":
        return _not_yet("Your guest printed 'e9', but then it halted instead of writing to "
                        "the debug-exit port: `mov $1, %al` and `out %al, $0xf4` end the run "
                        "with status (1 << 1) | 1 = 3.", printed)
    if stop.status != 3:
        value = run.exit_value
        return _not_yet(f"Your guest wrote {value:#x} to the debug-exit port, so the run "
                        f"ended with status ({value:#x} << 1) | 1 = {stop.status}; the task "
                        "asks for value 1 (status 3).", printed)
    return _ok("Your guest asked the debug console for a byte (an IN exit on port 0xE9), "
               "printed the answer, 'e9', and ended the run with status 3.")


def _bit_words(value: int, flags_type) -> str:
    from minikvm.x86.flags import flag_names
    return f"{value:#010x} ({flag_names(flags_type(value))})"


def check_04(path: Path, work: Path) -> Verdict:
    """Print the guest's own CR0; compared with KVM_GET_SREGS after the run."""
    from minikvm.x86.flags import Cr0

    run = _run_flat(build_asm(path, work))
    stop, output, cr0 = run.stop, run.output, run.cr0
    text = output.decode("latin-1")
    printed = f"Your guest printed {_printable(output)} and {_stop_words(stop)}."
    if stop.kind.value not in ("halt", "debug-exit"):
        return _not_yet(f"Your guest did not finish: {_stop_words(stop)}.",
                        f"Before that, it printed {_printable(output)}.")
    found = re.search(r"CR0=0x([0-9a-fA-F]+)", text)
    if found is None:
        return _not_yet("Your guest did not print a line like 'CR0=0x00000010'.", printed)
    digits = found.group(1)
    shown = int(digits, 16)
    width_mask = (1 << (4 * len(digits))) - 1 if len(digits) < 8 else 0xFFFF_FFFF
    actual = cr0 & width_mask
    if shown != actual:
        wrong = shown ^ actual
        hints = []
        if wrong & Cr0.PE:
            hints.append("PE (bit 0) is clear in real mode: setting it is what enters "
                         "protected mode.")
        if actual and not shown:
            hints.append("0 is what EAX held before: the value must come from CR0 itself "
                         "(`mov %cr0, %eax`, or `smsw %ax` for the low 16 bits).")
        return _not_yet(f"Your guest printed CR0=0x{digits}, but its CR0 is "
                        f"{_bit_words(cr0, Cr0)} (KVM_GET_SREGS after the run); the bits "
                        f"{wrong:#x} differ.", *hints, printed)
    width = "its low 16 bits, as smsw gives them" if len(digits) < 8 else "all 32 bits"
    return _ok(f"Your guest printed CR0=0x{digits}: {width} of the CR0 that KVM reports, "
               f"{_bit_words(cr0, Cr0)}. PE is clear: real mode.")


#: The exercise 05 guest (32-bit code, encodings from ``as --32``).
_GDT_GUEST = bytes([
    0x66, 0xB8, 0x20, 0x00,                         # 0x1000 mov ax, 0x20
    0x8E, 0xC0,                                     # 0x1004 mov es, ax
    0x26, 0xC7, 0x05, 0x00, 0x00, 0x00, 0x00,       # 0x1006 mov dword es:[0], 0x600dc0de
    0xDE, 0xC0, 0x0D, 0x60,
    0xF4,                                           # 0x1011 hlt
])
_GDT_LOAD_RIP, _GDT_WRITE_RIP = 0x1004, 0x1006
_GDT_MARKER = (0x600DC0DE).to_bytes(4, "little")
_GDT_BASE, _GDT_LIMIT = 0x10000, 0xFFFF


def _descriptor_problems(desc) -> list[str]:
    """What differs from the descriptor the task asks for, in words."""
    from minikvm.x86.flags import SegmentType

    problems = []
    if desc.base != _GDT_BASE:
        problems.append(f"its base is {desc.base:#x}, the task asks for {_GDT_BASE:#x} "
                        "(base 23:0 is bits 39:16, base 31:24 bits 63:56)")
    if desc.byte_limit != _GDT_LIMIT:
        problems.append(f"its limit is {desc.byte_limit:#x} bytes (limit field "
                        f"{desc.limit:#x}, G={desc.g}), the task asks for {_GDT_LIMIT:#x} "
                        "(limit 15:0 is bits 15:0, limit 19:16 bits 51:48, G bit 55)")
    if not desc.present:
        problems.append("P (bit 47) is 0: not present")
    if not desc.s:
        problems.append("S (bit 44) is 0: that makes it a system descriptor (TSS, LDT, "
                        "gate), not code or data")
    if desc.type & SegmentType.EXECUTABLE:
        problems.append(f"its type {desc.type:#x} has bit 3 set: a code segment, and code "
                        "is never writable (type 0x3 is data, read/write, accessed)")
    elif not desc.type & SegmentType.RW:
        problems.append(f"its type {desc.type:#x} has bit 1 clear: read-only data")
    if desc.dpl != 0:
        problems.append(f"its DPL (bits 46:45) is {desc.dpl}, the task asks for ring 0")
    if desc.db != 1 or desc.l:
        problems.append(f"D/B (bit 54) is {desc.db} and L (bit 53) {desc.l}: a 32-bit "
                        "segment has D/B=1, L=0")
    return problems


def check_05(path: Path, work: Path) -> Verdict:
    """data_descriptor(): base 0x10000, 64 KiB, writable, used by a real guest."""
    from minikvm.machine import Machine
    from minikvm.x86.gdt import SegmentDescriptor
    from minikvm.x86.layout import GDT_ADDR

    function, problem = _function(path, "data_descriptor")
    if problem is not None:
        return problem
    try:
        value = function()
    except Exception as err:  # noqa: BLE001
        return _not_yet(f"data_descriptor() raised {_their_error(err, path)}")
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 64:
        return _not_yet(f"data_descriptor() returned {value!r}: it must be an int that fits "
                        "in 64 bits (a descriptor is 8 bytes)")
    desc = SegmentDescriptor.unpack(value)
    decoded = (f"Your descriptor {value:#018x} decodes as: {desc.describe()} "
               f"(D/B={desc.db}, L={desc.l}, S={desc.s}).")
    problems = _descriptor_problems(desc)
    with Machine() as machine:
        machine.load_flat(_GDT_GUEST, 0x1000, mode="protected")
        machine.memory.write(GDT_ADDR + 0x20, value.to_bytes(8, "little"))
        sregs = machine.vcpu.get_sregs()
        sregs.gdt.limit = 0x27          # five entries: the machine's four and yours
        machine.vcpu.set_sregs(sregs)
        stop = machine.run(timeout=GUEST_TIMEOUT)
        es = machine.vcpu.get_sregs().es
        ram = bytearray(machine.memory.read(0, machine.memory.size))
        unclaimed = [a.address for a in machine.mmio.unclaimed if a.is_write]
    ram[0x1000:0x1000 + len(_GDT_GUEST)] = bytes(len(_GDT_GUEST))  # the marker in the code
    landed = ram.find(_GDT_MARKER)
    hints = [f"- {problem}." for problem in problems]
    if stop.kind.value == "shutdown":
        if stop.rip == _GDT_LOAD_RIP:
            return _not_yet("The CPU refused to load selector 0x20 into ES (`mov %ax, %es` "
                            "faulted, and with no IDT the fault became a triple fault).",
                            decoded, *(hints or ["Loading a data segment needs P=1 and S=1."]))
        if stop.rip == _GDT_WRITE_RIP:
            return _not_yet("ES was loaded, but the write through it faulted (#GP, then a "
                            "triple fault).", decoded,
                            *(hints or ["A write needs a writable data type and a limit of "
                                        "at least 3."]))
        return _not_yet(f"The guest crashed: {stop.message}.", decoded, *hints)
    if stop.kind.value != "halt":
        return _not_yet(f"The guest did not finish: {_stop_words(stop)}.", decoded, *hints)
    cached = f"After `mov %ax, %es`, KVM_GET_SREGS shows ES.base={es.base:#x}, " \
             f"ES.limit={es.limit:#x}: the CPU copied your descriptor into the hidden part."
    if landed != _GDT_BASE:
        where = (f"at physical {landed:#x}" if landed >= 0 else
                 f"outside RAM (an MMIO write nobody claimed, at "
                 f"{', '.join(hex(a) for a in unclaimed) or 'an unknown address'})")
        return _not_yet(f"The guest's write landed {where}, not at {_GDT_BASE:#x}.",
                        decoded, cached, *hints)
    if problems:
        return _not_yet(f"The write landed at {_GDT_BASE:#x}, but the descriptor is not the "
                        "one asked for.", decoded, *hints)
    return _ok("The guest loaded selector 0x20, the CPU read your descriptor from the GDT, "
               f"and the write through ES landed at {_GDT_BASE:#x}.", cached)


_ALIAS = 0x7F00_0000_0000
#: Addresses the walker is tried on, with long.c's own tables in CR3: its 2 MiB
#: identity page, its 4 KiB alias page, and holes at each level.
_WALK_ADDRESSES = (0x1000, 0x100ABC, 0x1FFFF8, 0x60008, _ALIAS, _ALIAS + 0xFF8, _ALIAS + 0x123,
                   0x200000, _ALIAS + 0x1000, _ALIAS + 0x200000, 0x4000_0000, 0x0000_7E00_0000_0000)


def _hex_or_none(value: int | None) -> str:
    return "not mapped" if value is None else f"{value:#x}"


def check_06(path: Path, work: Path) -> Verdict:
    """walk(memory, cr3, vaddr) against KVM_TRANSLATE, on long.c's own tables."""
    from minikvm.machine import Machine
    from minikvm.memory import GuestMemoryError
    from minikvm.x86.paging import walk_4level

    function, problem = _function(path, "walk")
    if problem is not None:
        return problem
    subprocess.run(["make", "-s", "-C", str(GUESTS_DIR), "build/long.elf"],
                   capture_output=True, timeout=300)
    with Machine() as machine:
        machine.load_guest(GUESTS_DIR / "build" / "long.elf")
        machine.run(timeout=GUEST_TIMEOUT)
        cr3 = machine.vcpu.get_sregs().cr3
        results = []
        for vaddr in _WALK_ADDRESSES:
            kvm = machine.vcpu.translate(vaddr)
            expected = kvm.physical_address if kvm.valid else None
            try:
                got = function(machine.memory, cr3, vaddr)
            except GuestMemoryError as err:
                return _not_yet(f"walk(memory, {cr3:#x}, {vaddr:#x}) read outside guest RAM: "
                                f"{err}. An entry's bits 51:12 are the next table's address; "
                                "mask off the flag bits (ADDRESS_MASK).")
            except Exception as err:  # noqa: BLE001
                return _not_yet(f"walk(memory, {cr3:#x}, {vaddr:#x}) raised "
                                f"{_their_error(err, path)}")
            reference = walk_4level(machine.memory, cr3, vaddr, gbpages=False, maxphyaddr=36)
            results.append((vaddr, expected, got, reference))
    wrong = [r for r in results if r[1] != r[2]]
    if not wrong:
        return _ok(f"All {len(results)} addresses agree with KVM_TRANSLATE, 2 MiB pages, "
                   "4 KiB pages and holes alike.",
                   *(f"  {vaddr:#x} -> {_hex_or_none(expected)}"
                     for vaddr, expected, _, _ in results))
    vaddr, expected, got, reference = wrong[0]
    message = (f"{len(results) - len(wrong)} of {len(results)} addresses agree with "
               f"KVM_TRANSLATE. The first that does not: {vaddr:#x}, which KVM translates "
               f"to {_hex_or_none(expected)} and your walk to {_hex_or_none(got)}.")
    details = ["The walk, level by level (minikvm.x86.paging.walk_4level):",
               *("  " + line for line in reference.describe().splitlines()[1:])]
    leaf = reference.levels[-1] if reference.levels else None
    if expected is not None and leaf is not None and leaf.large:
        if got is None:
            details.append(f"The {leaf.level} entry has PS (bit 7) set: it maps a "
                           f"{reference.page_size >> 20} MiB page itself. The walk ends there; "
                           "it does not point to another table.")
        elif (got ^ expected) & ~0x1FFFFF == 0:
            details.append("Right page, wrong offset: inside a 2 MiB page the offset is bits "
                           "20:0 of the address, not 11:0.")
    if expected is None and got is not None:
        details.append(f"KVM says the address is not mapped: {reference.fault_reason}.")
    return _not_yet(message, *details)


def _dr7_words(dr7: int, debugreg: list[int]) -> list[str]:
    from minikvm.debug.breakpoints import decode_dr7

    words = []
    for slot in decode_dr7(dr7):
        if slot.enabled:
            words.append(f"slot {slot.slot}: enabled ({'G' if slot.global_ else 'L'}"
                         f"{slot.slot}), watches {slot.condition} of {slot.size} byte(s) at "
                         f"DR{slot.slot} = {debugreg[slot.slot]:#x}")
    return words or ["no slot is enabled: slot n needs its L (bit 2n) or G (bit 2n+1) bit"]


def check_07(path: Path, work: Path) -> Verdict:
    """debug_registers(address): an execute breakpoint that stops steps64 there."""
    from minikvm.debug.breakpoints import DR6_B, decode_dr7
    from minikvm.kvm.exits import Debug, Hlt, Shutdown
    from minikvm.kvm.uapi import KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_USE_HW_BP
    from minikvm.machine import Machine, dispatch_exit

    function, problem = _function(path, "debug_registers")
    if problem is not None:
        return problem
    flat = build_asm(GUESTS_DIR / "debug" / "steps64.S", work, bits=64)
    with Machine() as machine:
        image = machine.load_elf(flat.with_suffix(".elf"))
        address = image.symbols.lookup("after_out").address
        data = image.symbols.lookup("data").address
        try:
            values = function(address)
        except Exception as err:  # noqa: BLE001
            return _not_yet(f"debug_registers({address:#x}) raised {_their_error(err, path)}")
        if (not isinstance(values, (list, tuple)) or len(values) != 8
                or not all(isinstance(v, int) and 0 <= v < 1 << 64 for v in values)):
            return _not_yet(f"debug_registers() returned {values!r}: it must be eight integers, "
                            "DR0 to DR7")
        values = list(values)
        dr7 = values[7]
        words = _dr7_words(dr7, values)
        machine.vcpu.set_guest_debug(KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW_BP, values)
        stopped = None
        for _ in range(100):
            exit = machine.vcpu.run()
            dispatch_exit(exit, machine.pio, machine.mmio)
            if isinstance(exit, (Debug, Hlt, Shutdown)):
                stopped = exit
                break
        written = machine.memory.read_u64(data)
    described = f"Your DR7 = {dr7:#x}: " + "; ".join(words) + "."
    execute_slots = [s for s in decode_dr7(dr7) if s.enabled and s.condition == "execute"]
    if isinstance(stopped, Debug) and stopped.pc == address:
        slots = [n for n in range(4) if stopped.dr6 & DR6_B[n]]
        long_ones = [s for s in execute_slots if s.size != 1]
        if long_ones:
            return _not_yet(f"The guest stopped at {address:#x}, but slot "
                            f"{long_ones[0].slot} says length {long_ones[0].size}: an "
                            "instruction breakpoint must have LEN = 00 (SDM vol. 3B, 18.2.5; "
                            "other lengths are undefined behaviour).", described)
        return _ok(f"The guest stopped with KVM_EXIT_DEBUG at {address:#x} (after_out), "
                   f"DR6 reporting slot {', '.join(map(str, slots)) or '?'}; data is still "
                   f"{written:#x}: the breakpoint fired before the instruction ran.", described)
    if isinstance(stopped, Debug):
        return _not_yet(f"The guest stopped at {stopped.pc:#x}, not at after_out "
                        f"({address:#x}) (DR6 = {stopped.dr6:#x}).", described)
    if isinstance(stopped, Shutdown):
        return _not_yet("The guest crashed (triple fault) instead of stopping.", described)
    hints = []
    if not any(slot.enabled for slot in decode_dr7(dr7)):
        hints.append("Nothing is switched on: set G0 (bit 1) or L0 (bit 0) to enable slot 0.")
    elif not execute_slots:
        hints.append("An instruction breakpoint needs R/W = 00 (\"break on instruction "
                     "execution\") and LEN = 00 in its slot's bits of DR7: R/W0 is bits "
                     "17:16, LEN0 bits 19:18.")
    elif all(values[s.slot] != address for s in execute_slots):
        hints.append(f"The enabled execute slot's address register does not hold "
                     f"{address:#x}.")
    elif any(s.size != 1 for s in execute_slots):
        hints.append("An instruction breakpoint must have LEN = 00; with another length "
                     "the CPU's behaviour is undefined (SDM vol. 3B, 18.2.5), and this one "
                     "did not stop.")
    return _not_yet(f"The guest ran to its hlt without stopping at after_out ({address:#x}).",
                    described, *hints)


_ECHO_INPUT = b"ok\x04"
#: Seconds the echo may take: the reference guest needs milliseconds.
_ECHO_TIMEOUT = 3.0


def check_08(path: Path, work: Path) -> Verdict:
    """The echo guest answers typed input through IRQ 4 (MCR.OUT2 set)."""
    from minikvm.devices.uart import (
        UART_IER_RDI,
        UART_MCR_LOOP,
        UART_MCR_OUT1,
        UART_MCR_OUT2,
    )
    from minikvm.kvm.uapi import KVM_IRQCHIP_PIC_MASTER
    from minikvm.core.board import COM1_IRQ
    from minikvm.machine import Machine

    binary = build_asm(path, work)
    output: list[bytes] = []
    with Machine(irqchip=True, output=output.append) as machine:
        machine.load_flat(binary, 0x1000)
        ready = machine.run(timeout=GUEST_TIMEOUT, until=lambda: machine.uart.ier & UART_IER_RDI)
        if ready.kind.value != "paused":
            return _not_yet("Your guest never enabled the UART's received-data interrupt "
                            f"(IER.RDI): {_stop_words(ready)}.")
        machine.send_serial_input(_ECHO_INPUT)
        stop = machine.run(timeout=_ECHO_TIMEOUT)
        uart = machine.uart.state()
        pic = machine.vm.get_irqchip(KVM_IRQCHIP_PIC_MASTER).chip.pic
        changes = machine.uart.irq.changes
    echoed = b"".join(output)
    seen = (f"We typed {_printable(_ECHO_INPUT)}; your guest echoed {_printable(echoed)} and "
            f"{_stop_words(stop, _ECHO_TIMEOUT)}.")
    if echoed == _ECHO_INPUT and stop.kind.value == "debug-exit":
        return _ok("Your guest took the UART's interrupt and echoed every byte: the path "
                   "UART -> MCR.OUT2 -> IRQ 4 -> PIC -> vector 0x0c -> handler works.",
                   f"The interrupt line changed level {changes} times.")
    mcr = uart["mcr"]
    details = [seen, f"The UART's state now: IER={uart['ier']:#04x}, MCR={mcr:#04x}, "
                     f"IIR says: {uart['interrupt']}, {uart['rx_level']} byte(s) waiting in "
                     "the RX FIFO."]
    if uart["rx_level"] and not uart["irq_level"]:
        if not mcr & UART_MCR_OUT2:
            why = ("MCR bit 3, OUT2, is clear: on a PC the UART's interrupt pin reaches the "
                   "PIC only through a buffer that OUT2 enables, so IRQ 4 never rose")
            if mcr & UART_MCR_OUT1:
                why += " (bit 2 is OUT1, which no PC wires to anything)"
            return _not_yet("The UART wanted to interrupt (data waiting, IER.RDI on), but its "
                            f"interrupt never reached the PIC: {why}.", *details)
        if mcr & UART_MCR_LOOP:
            return _not_yet("MCR.LOOP is set: in loopback the UART is cut off from the line "
                            "and from the PIC.", *details)
    if pic.imr & (1 << COM1_IRQ):
        return _not_yet(f"The PIC masks IRQ 4 (IMR={pic.imr:#04x}, bit 4 set): the "
                        "interrupt is requested but never delivered.", *details)
    return _not_yet("Your guest did not echo what we typed.", *details)


#: Seconds a virtio guest may take: the reference guests need a fraction of one.
_VIRTIO_TIMEOUT = 3.0


def _counting_bytes(n: int) -> bytes:
    return bytes(i & 0xFF for i in range(n))


def _recording(backend) -> list[list[tuple[int, bool]]]:
    """Record each request's buffers, (length, device-writable), as the device sees them."""
    requests: list[list[tuple[int, bool]]] = []
    original = backend.process

    def process(queue_index, chain):
        requests.append([(buffer.len, buffer.writable) for buffer in chain.buffers])
        return original(queue_index, chain)

    backend.process = process
    return requests


def _buffers_words(buffers: list[tuple[int, bool]]) -> str:
    return ", ".join(f"{length} bytes {'device-writable' if writable else 'device-readable'}"
                     for length, writable in buffers) or "no buffers"


def check_09(path: Path, work: Path) -> Verdict:
    """One virtio-rng request made of two chained, device-writable 8-byte descriptors."""
    from minikvm.devices.virtio.rng import VirtioRng
    from minikvm.machine import Machine

    elf = build_c_guest(path, work)
    rng = VirtioRng(source=_counting_bytes)
    requests = _recording(rng)
    output: list[bytes] = []
    with Machine(irqchip=True, output=output.append) as machine:
        transport = machine.add_virtio(rng)
        machine.load_guest(elf)
        stop = machine.run(timeout=_VIRTIO_TIMEOUT,
                           until=lambda: transport.last_error is not None)
        error = transport.last_error
    text = b"".join(output).decode("latin-1")
    printed = f"Your guest printed {text.strip()!r} and {_stop_words(stop, _VIRTIO_TIMEOUT)}."
    seen = [f"Request {i + 1}: {_buffers_words(r)}." for i, r in enumerate(requests)]
    if error:
        return _not_yet(f"The device refused your request and now needs a reset: {error}.",
                        *seen)
    if not requests:
        return _not_yet("The device received no request at all.", printed)
    if len(requests) > 1:
        return _not_yet(f"The device received {len(requests)} requests: one per descriptor. "
                        "To make one request of two buffers, descriptor 0 needs "
                        "VIRTQ_DESC_F_NEXT in its flags and `next = 1`, and only the head "
                        "(0) goes in the available ring.", *seen, printed)
    buffers = requests[0]
    if len(buffers) == 1:
        return _not_yet(f"The request had one buffer ({_buffers_words(buffers)}): the "
                        "device stopped at descriptor 0 because its flags have no "
                        "VIRTQ_DESC_F_NEXT (virtio 1.2 §2.7.5).", printed)
    if buffers != [(8, True), (8, True)]:
        return _not_yet(f"The request's buffers were: {_buffers_words(buffers)}. The task "
                        "asks for two device-writable buffers of 8 bytes.", printed)
    expected = "virtio-rng: " + " ".join(f"{b:#04x}" for b in _counting_bytes(16))
    if expected not in text:
        return _not_yet("The device filled a chain of two 8-byte buffers, but the guest did "
                        "not print the 16 bytes (it prints `used.len` bytes from `buffer`: "
                        "are the two halves next to each other?).", printed)
    return _ok("The device received one request made of two chained 8-byte buffers, "
               "filled both, and returned 16 bytes in one used element.", printed)


_SERIAL = "lesson10-disk"
_DISK_TEXT = b"the exercise 10 disk\n"


def check_10(path: Path, work: Path) -> Verdict:
    """A GET_ID request, and the serial printed as 'serial: ...'."""
    from minikvm.devices.virtio.blk import SECTOR_SIZE, VIRTIO_BLK_T_GET_ID, VirtioBlk
    from minikvm.machine import Machine

    elf = build_c_guest(path, work)
    disk = work / "disk.img"
    disk.write_bytes(_DISK_TEXT.ljust(8 * SECTOR_SIZE, b"\0"))
    blk = VirtioBlk(disk, serial=_SERIAL)
    outcomes: list[str] = []
    types: list[int] = []
    failed: list[bool] = []
    original = blk.process

    def process(queue_index, chain):
        if chain.readable_len >= 16:
            types.append(int.from_bytes(chain.read(0, 4), "little"))
        errors = blk.counters["ioerr"] + blk.counters["unsupported"]
        written = original(queue_index, chain)
        outcomes.append(blk.last_request)
        failed.append(blk.counters["ioerr"] + blk.counters["unsupported"] != errors)
        return written

    blk.process = process
    output: list[bytes] = []
    try:
        with Machine(irqchip=True, output=output.append) as machine:
            transport = machine.add_virtio(blk)
            machine.load_guest(elf)
            stop = machine.run(timeout=_VIRTIO_TIMEOUT,
                               until=lambda: transport.last_error is not None)
            error = transport.last_error
    finally:
        blk.close()
    text = b"".join(output).decode("latin-1")
    printed = f"Your guest printed {text!r} and {_stop_words(stop, _VIRTIO_TIMEOUT)}."
    requests = f"The disk's requests, in its own words: {' | '.join(outcomes) or 'none'}."
    if error:
        return _not_yet(f"The device refused a request and now needs a reset: {error}.",
                        requests, printed)
    if VIRTIO_BLK_T_GET_ID not in types:
        return _not_yet("The device received no VIRTIO_BLK_T_GET_ID (type 8) request.",
                        requests, printed)
    which = types.index(VIRTIO_BLK_T_GET_ID)
    get_id = outcomes[which]
    if failed[which]:
        return _not_yet(f"Your GET_ID request failed: {get_id}. The serial goes into a "
                        "device-writable buffer of at least 20 bytes, between the header "
                        "and the status byte.", requests, printed)
    if f"serial: {_SERIAL}\n" not in text:
        return _not_yet(f"The device wrote the serial {_SERIAL!r} into your buffer, but "
                        f"your guest did not print the line 'serial: {_SERIAL}'.", printed)
    return _ok(f"Your driver asked the disk for its ID, the device wrote {_SERIAL!r} into "
               "guest memory, and your guest printed it.", requests)


_CHECKS: dict[str, Callable[[Path, Path], Verdict]] = {
    "03": check_03,
    "04": check_04,
    "05": check_05,
    "06": check_06,
    "07": check_07,
    "08": check_08,
    "09": check_09,
    "10": check_10,
}

#: Exercise numbers, in order.
EXERCISES: tuple[str, ...] = tuple(lesson.number for lesson in LESSONS if lesson.starter)


def check_exercise(number: str, path: str | Path) -> Verdict:
    """Build and run the learner's file for exercise ``number``; never raises
    for anything the learner's file does."""
    from minikvm.kvm.errors import KvmError, KvmUnavailableError
    from minikvm.loaders import LoaderError

    number = str(number).zfill(2)
    check = _CHECKS.get(number)
    if check is None:
        raise ValueError(f"lesson {number} has no exercise")
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix=f"minikvm-exercise-{number}-") as work:
        try:
            return check(path, Path(work))
        except BuildError as err:
            return _not_yet(f"{path.name} does not build.", str(err))
        except LoaderError as err:
            return _not_yet(f"The machine refused to load your guest: {err}")
        except KvmUnavailableError:
            raise
        except KvmError as err:
            return _not_yet(f"KVM refused what your code asked for: {err}")


# -- the command line ------------------------------------------------------------------


def add_lesson_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``lesson`` subcommand's own subcommands: ``list``, ``show``, ``check``."""
    sub = parser.add_subparsers(dest="lesson_command", metavar="ACTION")
    sub.required = True
    sub.add_parser("list", help="the lessons, in order, and how to run each")
    show = sub.add_parser("show", help="print the task of exercise NN")
    show.add_argument("number", metavar="NN", help="lesson number, e.g. 03")
    check = sub.add_parser("check", help="check your solution of exercise NN")
    check.add_argument("number", metavar="NN", help="lesson number, e.g. 03")
    check.add_argument("--file", default=None, metavar="PATH",
                       help="your solution (default: the starting file's name in the "
                            "current folder, e.g. ./03_port_io.S)")


def _print_list(console) -> int:
    from rich.table import Table

    table = Table(title="minikvm lessons (lessons/README.md)", title_justify="left")
    table.add_column("NN")
    table.add_column("lesson")
    table.add_column("run it")
    table.add_column("exercise")
    for lesson in LESSONS:
        exercise = (f"minikvm lesson check {lesson.number}" if lesson.starter else "")
        table.add_row(lesson.number, lesson.title,
                      f"python lessons/{lesson.script.name}", exercise)
    console.print(table)
    return STATUS_PASSED


def _exercise_or_error(number: str, console) -> LessonInfo | None:
    lesson = _lesson(number)
    if lesson is None:
        console.print(f"minikvm: there is no lesson {number!r} (see minikvm lesson list)")
        return None
    if lesson.starter is None:
        console.print(f"minikvm: lesson {lesson.number} has no exercise; exercises belong to "
                      f"lessons {', '.join(EXERCISES)}")
        return None
    if not lesson.starter_path.exists():
        console.print(f"minikvm: {lesson.starter_path} is missing: the lessons live in the "
                      "minikvm source tree (git clone it and pip install -e .)")
        return None
    return lesson


def _shown(path: Path) -> str:
    """``path`` relative to the current folder when that is shorter."""
    relative = os.path.relpath(path)
    return relative if len(relative) < len(str(path)) else str(path)


def cmd_lesson(args: argparse.Namespace) -> int:
    """``minikvm lesson list | show NN | check NN [--file PATH]``.

    Status: 0 passed (or listed), 1 not passed yet, 2 bad usage.
    """
    from rich.console import Console
    from rich.markdown import Markdown

    console = Console(highlight=False)
    if args.lesson_command == "list":
        return _print_list(console)
    lesson = _exercise_or_error(args.number, console)
    if lesson is None:
        return STATUS_USAGE
    if args.lesson_command == "show":
        console.print(Markdown(lesson.task.read_text()))
        return STATUS_PASSED
    path = Path(args.file) if args.file else Path(lesson.starter)
    if not path.is_file():
        if args.file:
            console.print(f"minikvm: {path}: no such file", markup=False)
        else:
            console.print(f"minikvm: there is no ./{lesson.starter} here. Start from the "
                          f"exercise's file:\n    cp {_shown(lesson.starter_path)} .\n"
                          "edit it, and run this again (or name your file with --file PATH). "
                          f"The task: {_shown(lesson.task)}", markup=False)
        return STATUS_USAGE
    console.print(f"Exercise {lesson.number}: {lesson.title}", style="bold", markup=False)
    console.print(f"checking {path} ...", markup=False)
    verdict = check_exercise(lesson.number, path)
    mark = "[bold green]PASSED[/]" if verdict.passed else "[bold red]NOT YET[/]"
    console.print(mark)
    console.print(verdict.message, markup=False)
    for detail in verdict.details:
        console.print(detail, markup=False)
    return STATUS_PASSED if verdict.passed else STATUS_NOT_YET


def main(argv: list[str] | None = None) -> int:
    """``python -m minikvm.lessons ...``, until the ``minikvm`` command has it."""
    parser = argparse.ArgumentParser(prog="minikvm lesson")
    add_lesson_arguments(parser)
    return cmd_lesson(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
