"""What every command that boots a guest shares: its options, their parsers,
and the way from parsed options to a machine.

``minikvm run``, ``trace`` and ``tui`` take the same guest and machine
options (:func:`add_run_options`), turn them into one
:class:`~minikvm.core.config.MachineConfig` (:func:`config_from_args`), and
build the machine with :meth:`Machine.from_config
<minikvm.machine.Machine.from_config>` inside :func:`guest_file_errors`, so
the same options give the same guest and a bad guest file the same one-line
message under every command.

Only the standard library is imported at module level: building the parser
must not load the machine, let alone capstone or rich.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from minikvm.core.board import ExitStatus

if TYPE_CHECKING:
    from minikvm.core.config import MachineConfig

__all__ = [
    "Parser",
    "UsageError",
    "KVM_MAX_SLOT_BYTES",
    "add_gdb_option",
    "add_run_options",
    "check_guest_file",
    "check_mem_size",
    "config_from_args",
    "format_size",
    "guest_file_errors",
    "parse_blk",
    "parse_initrd",
    "parse_gdb_address",
    "parse_int",
    "parse_size",
    "parse_smp",
    "parse_timeout",
]

_SIZE_SUFFIXES = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
#: The most guest RAM one KVM memory slot can hold: KVM_MEM_MAX_NR_PAGES
#: (``include/linux/kvm_host.h``, 2^31 - 1 pages of 4 KiB). Our RAM is one slot.
KVM_MAX_SLOT_BYTES = ((1 << 31) - 1) * 4096
_MEMINFO = "/proc/meminfo"


class UsageError(Exception):
    """Bad input from the user: one line on stderr, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse, but an error is one line (no usage dump) and status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        # self.prog is "minikvm" or "minikvm run": point at the right --help.
        self.exit(ExitStatus.USAGE, f"minikvm: {message} (see {self.prog} --help)\n")


def parse_int(text: str) -> int:
    """An address or count: decimal, 0x hex, 0o octal or 0b binary."""
    try:
        value = int(text.replace("_", ""), 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (e.g. 4096 or 0x1000)") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return value


def format_size(size: int) -> str:
    """Bytes for people: ``24 GiB``, ``22.9 GiB``, ``512 MiB``, ``4 KiB``."""
    for shift, unit in ((40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")):
        if size >= 1 << shift:
            value = size / (1 << shift)
            return f"{value:.2f}".rstrip("0").rstrip(".") + f" {unit}"
    return f"{size} bytes"


def parse_size(text: str) -> int:
    """A memory size: bytes, or with a K/M/G/T suffix (``2M``, ``256M``, ``1T``).

    Only what no host could give is refused here (KVM's limit for one memory
    slot); what *this* host can give is checked with the machine's other
    options (:func:`check_mem_size`)."""
    raw = text.strip().lower().removesuffix("ib").removesuffix("b")
    scale = 1
    if raw and raw[-1] in _SIZE_SUFFIXES:
        scale = _SIZE_SUFFIXES[raw[-1]]
        raw = raw[:-1]
    try:
        value = int(raw, 0) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 2M, 256M, 4G, "
                                         "0x200000)") from None
    if value <= 0 or value % 4096:
        raise argparse.ArgumentTypeError(f"{text!r}: memory size must be a positive multiple of 4 KiB")
    if value > KVM_MAX_SLOT_BYTES:
        raise argparse.ArgumentTypeError(
            f"{text!r}: KVM maps at most {format_size(KVM_MAX_SLOT_BYTES + 4096)} less 4 KiB "
            "in one memory slot (KVM_MEM_MAX_NR_PAGES)")
    return value


def _meminfo() -> dict[str, int]:
    """``/proc/meminfo`` in bytes (empty where it cannot be read)."""
    values = {}
    try:
        with open(_MEMINFO, encoding="ascii") as file:
            for line in file:
                name, _, rest = line.partition(":")
                words = rest.split()
                if words and words[0].isdigit():
                    values[name] = int(words[0]) * (1024 if words[1:] == ["kB"] else 1)
    except OSError:
        pass
    return values


def check_mem_size(size: int, virtio: bool = False) -> None:
    """Refuse, in one line with the numbers, guest RAM this host or board cannot give.

    * More than the host's RAM and swap together (``MemTotal`` + ``SwapTotal``):
      the kernel refuses such a mapping itself (its heuristic overcommit
      check for shared memory), and a guest could never use it anyway.

    RAM never covers the virtio windows (``virtio`` is kept for callers): the
    board puts what does not fit below 3 GiB above 4 GiB
    (:func:`minikvm.core.board.ram_regions`).
    """
    del virtio
    info = _meminfo()
    host = info.get("MemTotal", 0) + info.get("SwapTotal", 0)
    if info.get("MemTotal") and size > host:
        raise UsageError(f"--mem {format_size(size)}: this host has {format_size(host)} of "
                         "memory (RAM and swap in /proc/meminfo); give the guest less")


def parse_timeout(text: str) -> float:
    """Seconds: a positive, finite number (``0.5``, ``30``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: the timeout must be a positive number of seconds")
    return value


def parse_blk(text: str) -> tuple[str, bool]:
    """``PATH`` or ``PATH,ro``: a disk image the user may read (and write)."""
    path, _, option = text.partition(",")
    if option not in ("", "ro"):
        raise argparse.ArgumentTypeError(f"{text!r}: the only option after the path is ',ro'")
    if os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"{path!r} is a directory, not a disk image file "
                                         "(make one with: truncate -s 1M disk.img)")
    if not os.path.isfile(path):
        raise argparse.ArgumentTypeError(f"{path!r}: no such disk image file "
                                         "(make one with: truncate -s 1M disk.img)")
    if not os.access(path, os.R_OK | (0 if option == "ro" else os.W_OK)):
        raise argparse.ArgumentTypeError(f"{path!r}: permission denied")
    return path, option == "ro"


def parse_smp(text: str) -> int:
    """``--smp N``: 1 to 64 vCPUs (the host's KVM may allow fewer; the
    machine says so)."""
    from minikvm.core.config import MAX_VCPUS

    value = parse_int(text)
    if not 1 <= value <= MAX_VCPUS:
        raise argparse.ArgumentTypeError(f"{text!r}: a machine has 1 to {MAX_VCPUS} vCPUs")
    return value


def parse_initrd(text: str) -> tuple[str, ...]:
    """``--initrd FILE[,FILE...]``: module files that exist and can be read."""
    paths = tuple(text.split(","))
    for path in paths:
        if not path or not os.path.isfile(path):
            raise argparse.ArgumentTypeError(f"{path!r}: no such module file")
        if not os.access(path, os.R_OK):
            raise argparse.ArgumentTypeError(f"{path!r}: permission denied")
    return paths
def parse_gdb_address(text: str) -> tuple[str, int]:
    """Where the gdb stub listens: ``HOST:PORT``, ``[IPv6]:PORT``, ``:PORT``
    or ``PORT`` (then on 127.0.0.1, this machine only); port 0 takes a free one."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = host.removeprefix("[").removesuffix("]") or "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:1234)") from None
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: a TCP port is 0-65535")
    return host, number


def add_gdb_option(parser: argparse.ArgumentParser) -> None:
    """``--gdb HOST:PORT`` (run, trace): wait for gdb before the first
    instruction; ``--reverse`` with it: record from that instruction on, for
    reverse execution (not the TUI's ``--record FILE``, which saves a screen)."""
    parser.add_argument("--gdb", type=parse_gdb_address, default=None, metavar="HOST:PORT",
                        help="wait for gdb on HOST:PORT before the guest's first instruction "
                             "(minikvm/gdb; PORT alone listens on 127.0.0.1)")
    parser.add_argument("--reverse", action="store_true",
                        help="with --gdb: record every instruction from the first, so gdb's "
                             "reverse-stepi and reverse-continue work (docs/reverse.md)")


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """The guest and the machine: what ``run``, ``trace`` and ``tui`` share."""
    parser.add_argument("guest", help="guest image: a flat binary (or an ELF file)")
    parser.add_argument("--load-addr", type=parse_int, default=None, metavar="ADDR",
                        help="guest-physical address to load a flat binary at (default 0x1000)")
    parser.add_argument("--entry", type=parse_int, default=None, metavar="ADDR",
                        help="address to start at (default: the load address or the ELF entry)")
    parser.add_argument("--mem", type=parse_size, default=None, metavar="SIZE",
                        help="guest RAM, with a K/M/G/T suffix (default 2M)")
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
    parser.add_argument("--smp", type=parse_smp, default=1, metavar="N",
                        help="N vCPUs (1-64); with the irqchip vCPUs 1.. wait for INIT/SIPI")
    parser.add_argument("--append", default=None, metavar="TEXT",
                        help="kernel command line: fw_cfg's, and a Multiboot kernel's "
                        "after its file name")
    parser.add_argument("--initrd", type=parse_initrd, default=(), metavar="FILE[,FILE...]",
                        help="modules of a Multiboot kernel, one per file")


def check_guest_file(path: str) -> None:
    """Refuse a guest path that cannot be a guest image, in one line,
    before any machine is built."""
    if not os.path.exists(path):
        raise UsageError(f"{path}: no such file")
    if os.path.isdir(path):
        raise UsageError(f"{path} is a directory, not a guest image")
    if not os.access(path, os.R_OK):
        raise UsageError(f"{path}: permission denied")
    if os.path.getsize(path) == 0:
        raise UsageError(f"{path} is empty: a guest image needs at least one instruction")


def config_from_args(args: argparse.Namespace) -> MachineConfig:
    """The machine the run options describe (after :func:`check_guest_file`).

    virtio devices take the board's windows in a fixed order -- rng, blk,
    console -- whatever the order of the options, so a guest (or a Linux
    command line) can rely on where each one is.
    """
    from minikvm.core.config import MachineConfig, VirtioSpec

    check_guest_file(args.guest)
    if getattr(args, "reverse", False) and getattr(args, "gdb", None) is None:
        raise UsageError("--reverse needs --gdb: reverse execution is driven from gdb "
                         "(or from the TUI's r key)")
    if args.smp > 1 and not args.irqchip:
        # Without a LAPIC nothing holds the APs back: every vCPU would start
        # at the reset vector at once.
        raise UsageError("--smp needs the in-kernel irqchip: its LAPICs keep vCPUs 1.. "
                         "waiting for INIT/SIPI (drop --no-irqchip)")
    virtio = []
    if args.virtio_rng:
        virtio.append(VirtioSpec("rng"))
    if args.virtio_blk:
        path, read_only = args.virtio_blk
        virtio.append(VirtioSpec("blk", path, read_only))
    if args.virtio_console:
        virtio.append(VirtioSpec("console"))
    if args.mem is not None:
        check_mem_size(args.mem, virtio=bool(virtio))
    sized = {} if args.mem is None else {"mem_size": args.mem}
    return MachineConfig(guest=args.guest, irqchip=args.irqchip, kvm_path=args.kvm,
                         load_addr=args.load_addr, entry=args.entry, mode=args.mode,
                         virtio=tuple(virtio), vcpus=args.smp, append=args.append,
                         initrd=args.initrd, **sized)


@contextlib.contextmanager
def guest_file_errors(guest: str | None, mem_size: int | None = None) -> Iterator[None]:
    """Around ``Machine.from_config``: a guest the loader or the CPU-mode
    setup refuses, a file (guest, disk image) that cannot be read, or guest
    RAM (``mem_size`` bytes, when known) the host will not map, becomes a
    one-line :class:`UsageError` (status 2) instead of a traceback. KVM's
    own errors pass: they have a status of their own."""
    from minikvm.core.config import ConfigError
    from minikvm.loaders import LoaderError
    from minikvm.x86.modes import ModeError

    try:
        yield
    except (LoaderError, ModeError, ConfigError) as err:
        raise UsageError(str(err)) from None
    except MemoryError:
        raise UsageError(_no_memory_words(mem_size, "out of memory")) from None
    except OSError as err:
        if err.filename is None:   # not a file: e.g. no host memory for the guest's RAM
            if err.errno == errno.ENOMEM:
                raise UsageError(_no_memory_words(mem_size, err.strerror)) from None
            raise UsageError(f"cannot build the machine for {guest}: "
                             f"{err.strerror or err}") from None
        raise UsageError(f"{err.filename}: {err.strerror}") from None


def _no_memory_words(mem_size: int | None, why: str | None) -> str:
    available = _meminfo().get("MemAvailable")
    wanted = f"{format_size(mem_size)} of guest RAM" if mem_size else "the guest's RAM"
    line = f"--mem: the host would not map {wanted} ({why or 'no memory'})"
    if available and mem_size and available > mem_size:
        line += (f"; the host has {format_size(available)} available, so a limit on this "
                 "process (ulimit -v, a cgroup) refused it")
    elif available:
        line += f"; {format_size(available)} is available now (MemAvailable)"
    return line
