"""The ``minikvm`` command.

``minikvm run GUEST`` boots a bare-metal guest and exits with the status of
DESIGN.md (0 halt, ``(v<<1)|1`` debug exit, 3 crash, 124 timeout, 2 bad
usage or guest file, 1 KVM unavailable). ``minikvm info`` says what this
host's KVM can do. Every user mistake is one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

__all__ = ["main"]

STATUS_KVM_UNAVAILABLE = 1
STATUS_USAGE = 2

_SIZE_SUFFIXES = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


class UsageError(Exception):
    """Bad input from the user: one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but an error is one line (no usage dump) and status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        # self.prog is "minikvm" or "minikvm run": point at the right --help.
        self.exit(STATUS_USAGE, f"minikvm: {message} (see {self.prog} --help)\n")


def parse_int(text: str) -> int:
    """An address or count: decimal, 0x hex, 0o octal or 0b binary."""
    try:
        value = int(text.replace("_", ""), 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (e.g. 4096 or 0x1000)") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return value


def parse_size(text: str) -> int:
    """A memory size: bytes, or with a K/M/G suffix (``2M``, ``256M``)."""
    raw = text.strip().lower().removesuffix("ib").removesuffix("b")
    scale = 1
    if raw and raw[-1] in _SIZE_SUFFIXES:
        scale = _SIZE_SUFFIXES[raw[-1]]
        raw = raw[:-1]
    try:
        value = int(raw, 0) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 2M, 256M, 0x200000)") from None
    if value <= 0 or value % 4096:
        raise argparse.ArgumentTypeError(f"{text!r}: memory size must be a positive multiple of 4 KiB")
    if value > 64 << 30:
        raise argparse.ArgumentTypeError(f"{text!r}: more than 64 GiB of guest RAM is not supported")
    return value


def parse_timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: the timeout must be a positive number of seconds")
    return value


def parse_blk(text: str) -> tuple[str, bool]:
    """``PATH`` or ``PATH,ro``."""
    path, _, option = text.partition(",")
    if option not in ("", "ro"):
        raise argparse.ArgumentTypeError(f"{text!r}: the only option after the path is ',ro'")
    if not os.path.isfile(path):
        raise argparse.ArgumentTypeError(f"{path!r}: no such disk image file")
    if not os.access(path, os.R_OK | (0 if option == "ro" else os.W_OK)):
        raise argparse.ArgumentTypeError(f"{path!r}: permission denied")
    return path, option == "ro"


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("guest", help="guest image: a flat binary (or an ELF file)")
    parser.add_argument("--load-addr", type=parse_int, default=None, metavar="ADDR",
                        help="guest-physical address to load a flat binary at (default 0x1000)")
    parser.add_argument("--entry", type=parse_int, default=None, metavar="ADDR",
                        help="address to start at (default: the load address or the ELF entry)")
    parser.add_argument("--mem", type=parse_size, default=None, metavar="SIZE",
                        help="guest RAM (default 2M)")
    parser.add_argument("--mode", choices=("real", "protected", "paged", "long"), default=None,
                        help="CPU mode to start a flat binary in (default real; ELF: from its class)")
    parser.add_argument("--timeout", type=parse_timeout, default=None, metavar="S",
                        help="stop the guest after S seconds (exit status 124)")
    parser.add_argument("--no-irqchip", dest="irqchip", action="store_false",
                        help="no in-kernel PIC/IOAPIC/LAPIC and PIT: hlt then exits to the VMM")
    parser.add_argument("--virtio-rng", action="store_true",
                        help="add a virtio-rng device (entropy from the host)")
    parser.add_argument("--virtio-blk", type=parse_blk, default=None, metavar="PATH[,ro]",
                        help="add a virtio-blk device backed by the file PATH (,ro: read-only)")
    parser.add_argument("--virtio-console", action="store_true",
                        help="add a virtio-console device (host stdin/stdout)")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="minikvm", description="A teaching hypervisor on the Linux KVM API.")
    parser.add_argument("--kvm", default=os.environ.get("MINIKVM_KVM", "/dev/kvm"),
                        metavar="PATH", help="the KVM device (default /dev/kvm, or $MINIKVM_KVM)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    run = sub.add_parser("run", help="run a guest to completion")
    _add_run_options(run)
    run.add_argument("--trace", default=None, metavar="FILE",
                     help="record every VM exit to FILE as JSON Lines")

    from minikvm.debug.trace_cli import add_trace_arguments
    trace = sub.add_parser("trace", help="run a guest and print every VM exit, explained")
    _add_run_options(trace)
    add_trace_arguments(trace)

    sub.add_parser("info", help="what this host's KVM offers")

    from minikvm.tui.cli import add_tui_arguments
    tui = sub.add_parser("tui", help="step through a guest in a full-screen debugger")
    add_tui_arguments(tui)

    from minikvm.lessons import add_lesson_arguments
    lesson = sub.add_parser("lesson", help="the lessons: list, show NN, check NN [--file PATH]")
    add_lesson_arguments(lesson)
    return parser


def _read_guest(path: str) -> None:
    """Refuse a guest path that cannot be a guest image, in one line."""
    if not os.path.exists(path):
        raise UsageError(f"{path}: no such file")
    if os.path.isdir(path):
        raise UsageError(f"{path} is a directory, not a guest image")
    if not os.access(path, os.R_OK):
        raise UsageError(f"{path}: permission denied")
    if os.path.getsize(path) == 0:
        raise UsageError(f"{path} is empty: a guest image needs at least one instruction")


def _stdout_sink(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def build_machine(args: argparse.Namespace, output: Callable[[bytes], None] = _stdout_sink):
    """The machine ``minikvm run``/``tui``/``trace`` describe with their options,
    with the guest loaded. Bad guest files raise UsageError."""
    from minikvm.loaders import LoaderError
    from minikvm.machine import DEFAULT_MEM_SIZE, Machine
    from minikvm.x86.modes import ModeError

    _read_guest(args.guest)
    machine = Machine(args.mem or DEFAULT_MEM_SIZE, kvm_path=args.kvm, output=output,
                      irqchip=args.irqchip)
    try:
        if args.virtio_rng:
            from minikvm.devices.virtio.rng import VirtioRng
            machine.add_virtio(VirtioRng())
        if args.virtio_blk:
            from minikvm.devices.virtio.blk import VirtioBlk
            path, read_only = args.virtio_blk
            machine.add_virtio(VirtioBlk(path, read_only=read_only))
        if args.virtio_console:
            from minikvm.devices.virtio.console import VirtioConsole
            machine.add_virtio(VirtioConsole(output))
        machine.load_guest(args.guest, load_addr=args.load_addr, entry=args.entry, mode=args.mode)
    except (LoaderError, ModeError) as err:
        machine.close()
        raise UsageError(str(err)) from None
    except OSError as err:
        machine.close()
        raise UsageError(f"{err.filename or args.guest}: {err.strerror}") from None
    except BaseException:
        machine.close()
        raise
    return machine


def cmd_run(args: argparse.Namespace) -> int:
    from minikvm.debug.trace_cli import attach_trace_file
    from minikvm.hostio import RawStdin

    machine = build_machine(args)
    tracer = None
    with machine, RawStdin() as stdin:
        if args.trace:
            try:
                tracer = attach_trace_file(machine, args.trace)
            except OSError as err:
                raise UsageError(f"cannot write the trace to {args.trace}: {err.strerror}") from None
        try:
            # Keyboard (or piped) input goes to the guest: to the virtio console
            # when there is one, else to COM1. The reader thread kicks the vCPU
            # so that a guest sleeping in hlt sees the byte at once.
            stdin.start_reader(machine.serial_input, on_input=machine.vcpu.kick)
            stop = machine.run(timeout=args.timeout)
        finally:
            stdin.stop_reader()
            if tracer is not None:
                tracer.close()
    if stop.kind.value not in ("halt", "debug-exit", "power-off", "reset"):
        print(f"minikvm: {stop.message}", file=sys.stderr)
    return stop.status if stop.status is not None else 0


def cmd_trace(args: argparse.Namespace) -> int:
    from minikvm.debug.trace_cli import cmd_trace as trace
    return trace(args, build_machine=build_machine)


def cmd_tui(args: argparse.Namespace) -> int:
    from minikvm.tui.cli import cmd_tui as run_tui
    return run_tui(args)


def cmd_lesson(args: argparse.Namespace) -> int:
    from minikvm.lessons import cmd_lesson as lesson
    return lesson(args)


def cmd_info(args: argparse.Namespace) -> int:
    from minikvm.info import print_info
    return print_info(args.kvm)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run,
    "trace": cmd_trace,
    "tui": cmd_tui,
    "info": cmd_info,
    "lesson": cmd_lesson,
}


def main(argv: Sequence[str] | None = None) -> int:
    from minikvm.kvm.errors import KvmError, KvmUnavailableError

    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UsageError as err:
        print(f"minikvm: {err}", file=sys.stderr)
        return STATUS_USAGE
    except KvmUnavailableError as err:
        print(f"minikvm: {err}", file=sys.stderr)
        return STATUS_KVM_UNAVAILABLE
    except KvmError as err:
        print(f"minikvm: {err}", file=sys.stderr)
        return STATUS_KVM_UNAVAILABLE
    except KeyboardInterrupt:
        print("minikvm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
