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


def _run_flat(binary: Path, **machine_options: Any):
    """Run a flat real-mode binary at 0x1000; returns (machine, stop, output, events)."""
    from minikvm.machine import Machine

    output: list[bytes] = []
    events = []
    machine = Machine(output=output.append, **machine_options)
    try:
        machine.load_flat(binary, 0x1000)
        machine.listeners.append(events.append)
        stop = machine.run(timeout=GUEST_TIMEOUT)
    except BaseException:
        machine.close()
        raise
    return machine, stop, b"".join(output), events


def _stop_words(stop) -> str:
    if stop.kind.value == "halt":
        return "it halted (status 0)"
    if stop.kind.value == "debug-exit":
        return f"it wrote to the debug-exit port (status {stop.status})"
    if stop.kind.value == "timeout":
        return f"it was still running after {GUEST_TIMEOUT:.0f} s and was stopped"
    return f"it stopped: {stop.message}"


def check_03(path: Path, work: Path) -> Verdict:
    """Read port 0xE9, print the answer in hex, debug-exit with value 1."""
    binary = build_asm(path, work)
    machine, stop, output, events = _run_flat(binary)
    with machine:
        pass
    reads = [e for e in events if e.reason == "IO_IN" and e.exit.port == 0xE9]
    lines = output.decode("latin-1").splitlines()
    last = lines[-1].strip().lower() if lines else ""
    printed = f"Your guest printed {_printable(output)} and {_stop_words(stop)}."
    if stop.kind.value in ("shutdown", "internal-error", "fail-entry", "timeout",
                           "unexpected-exit"):
        return _not_yet(f"Your guest did not finish: {_stop_words(stop)}.", printed)
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
        value = machine.debug_exit.last_value
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

    binary = build_asm(path, work)
    machine, stop, output, _ = _run_flat(binary)
    with machine:
        cr0 = machine.vcpu.get_sregs().cr0
    text = output.decode("latin-1")
    printed = f"Your guest printed {_printable(output)} and {_stop_words(stop)}."
    if stop.kind.value not in ("halt", "debug-exit"):
        return _not_yet(f"Your guest did not finish: {_stop_words(stop)}.", printed)
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
                         "protected mode")
        if actual and not shown:
            hints.append("0 is what EAX held before: the value must come from CR0 itself "
                         "(`mov %cr0, %eax`, or `smsw %ax` for the low 16 bits)")
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


_CHECKS: dict[str, Callable[[Path, Path], Verdict]] = {
    "03": check_03,
    "04": check_04,
    "05": check_05,
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
