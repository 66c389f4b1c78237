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
        self.exit(STATUS_USAGE, f"minikvm: {message} (see minikvm {self.prog.split()[-1]} --help)\n"
                  if " " in self.prog else f"minikvm: {message} (see minikvm --help)\n")


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


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="minikvm", description="A teaching hypervisor on the Linux KVM API.")
    parser.add_argument("--kvm", default=os.environ.get("MINIKVM_KVM", "/dev/kvm"),
                        metavar="PATH", help="the KVM device (default /dev/kvm, or $MINIKVM_KVM)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    run = sub.add_parser("run", help="run a guest to completion")
    _add_run_options(run)

    sub.add_parser("info", help="what this host's KVM offers")
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


def cmd_run(args: argparse.Namespace) -> int:
    from minikvm.loaders import LoaderError
    from minikvm.machine import DEFAULT_MEM_SIZE, Machine

    _read_guest(args.guest)
    with Machine(args.mem or DEFAULT_MEM_SIZE, kvm_path=args.kvm, output=_stdout_sink) as machine:
        try:
            machine.load_guest(args.guest, load_addr=args.load_addr, entry=args.entry,
                               mode=args.mode)
        except LoaderError as err:
            raise UsageError(str(err)) from None
        stop = machine.run(timeout=args.timeout)
    if stop.kind.value not in ("halt", "debug-exit", "power-off", "reset"):
        print(f"minikvm: {stop.message}", file=sys.stderr)
    return stop.status if stop.status is not None else 0


def cmd_info(args: argparse.Namespace) -> int:
    from minikvm.info import print_info
    return print_info(args.kvm)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run,
    "info": cmd_info,
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
