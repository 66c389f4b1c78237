"""The ``minikvm`` command: one module per subcommand.

``minikvm run GUEST`` boots a bare-metal guest and exits with the status of
DESIGN.md (0 halt, ``(v<<1)|1`` debug exit, 3 crash, 124 timeout, 2 bad
usage or guest file, 1 KVM unavailable: :class:`~minikvm.core.board.ExitStatus`;
130 Ctrl-C, 143/129 SIGTERM/SIGHUP, 141 stdout closed).
``resume``, ``snapshot``, ``trace``, ``tui``, ``info`` and ``lesson`` are the other subcommands, each
in its own module with ``HELP``, ``add_arguments(parser)`` and ``run(args)``:

* :mod:`~minikvm.cli.options` -- the run options shared by run/trace/tui,
  their parsers, options -> :class:`~minikvm.core.config.MachineConfig`;
* :mod:`~minikvm.cli.run`, :mod:`~minikvm.cli.trace`, :mod:`~minikvm.cli.tui`,
  :mod:`~minikvm.cli.info`, :mod:`~minikvm.cli.lesson` -- the subcommands.

Building the parser imports only the modules of the commands it is built
for (:func:`command`), which import only the standard library at their
top; a command imports what it needs when it runs. ``minikvm run`` so
never loads capstone, rich, the debugger, the TUI or the lessons, nor the
other commands' modules.

Every user mistake is one line on stderr, never a traceback: :func:`main`
maps the errors a command may raise to the statuses.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from types import ModuleType

from minikvm.cli.options import Parser, UsageError
from minikvm.core.board import ExitStatus

__all__ = ["COMMANDS", "UsageError", "build_parser", "command", "entry", "main"]

#: The subcommands, in the order ``minikvm --help`` lists them; each is the
#: module ``minikvm.cli.<name>``.
COMMANDS = ("run", "resume", "snapshot", "trace", "info", "tui", "lesson")


def command(name: str) -> ModuleType:
    """The module of the command ``name``, imported on first use."""
    return importlib.import_module(f"{__name__}.{name}")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """``minikvm [--kvm PATH] COMMAND ...``: each command adds its options.

    With ``only`` (a command's name, which :func:`command_named` found as
    the line's command) the parser knows that one command alone: parsing
    that line gives the same result, and the start of ``minikvm run`` does
    not pay for building the others' parsers (each ``ArgumentParser`` asks
    ``gettext`` for its titles, a few ``stat`` calls apiece: ~0.5 ms)."""
    parser = Parser(prog="minikvm", description="A teaching hypervisor on the Linux KVM API.")
    parser.add_argument("--kvm", default=os.environ.get("MINIKVM_KVM", "/dev/kvm"),
                        metavar="PATH", help="the KVM device (default /dev/kvm, or $MINIKVM_KVM)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for name in COMMANDS:
        if only is None or name == only:
            module = command(name)
            module.add_arguments(sub.add_parser(name, help=module.HELP))
    return parser


def command_named(argv: Sequence[str]) -> str | None:
    """The command ``argv`` names where that is plain without parsing: its
    first word, or the word after ``--kvm PATH`` / ``--kvm=PATH``. None
    otherwise (``--help``, an abbreviated ``--kv``, a typo): then the whole
    parser is built and argparse says what is wrong."""
    words = list(argv)
    if words[:1] == ["--kvm"]:
        words = words[2:]
    elif words and words[0].startswith("--kvm="):
        words = words[1:]
    return words[0] if words and words[0] in COMMANDS else None


def _say(line: str) -> None:
    """One line on stderr; a terminal that hung up (SIGHUP) cannot refuse it loudly."""
    try:
        print(f"minikvm: {line}", file=sys.stderr)
    except (OSError, ValueError):
        pass


def entry() -> None:
    """The ``minikvm`` command itself (console script and ``python -m minikvm``).

    Runs :func:`main`, flushes what it printed, and leaves with ``os._exit``:
    by then every file is closed, the terminal restored and the guest's
    output written, and the interpreter's own teardown (tens of ms, spent
    freeing objects a dying process need not free) would only delay the
    moment a script or a shell sees the status.
    """
    status = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(int(status) & 0xFF)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: the process's), run the command, return its
    exit status. Errors become one line on stderr and their status: every
    status the VMM decides is said, so that it cannot be mistaken for the
    same number coming from the guest's debug-exit port.

    SIGTERM and SIGHUP unwind the command like Ctrl-C does (the terminal's
    mode is restored on the way: :class:`~minikvm.hostio.TerminationSignals`)
    and end it with 128 + the signal's number.
    """
    from minikvm.hostio import TerminationSignals, Terminated
    from minikvm.kvm.errors import KvmError, KvmUnavailableError

    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(command_named(argv)).parse_args(argv)
    try:
        with TerminationSignals():
            return command(args.command).run(args)
    except UsageError as err:
        _say(str(err))
        return ExitStatus.USAGE
    except (KvmUnavailableError, KvmError) as err:
        # No /dev/kvm, no permission, or an ioctl KVM refused: not the guest's doing.
        _say(str(err))
        return ExitStatus.KVM_UNAVAILABLE
    except KeyboardInterrupt:
        _say("interrupted (Ctrl-C)")
        return ExitStatus.INTERRUPTED
    except Terminated as err:
        _say(str(err))
        return err.status
    except BrokenPipeError:
        # Our own printing (a trace table, info) hit a closed pipe. Python would
        # complain again when it flushes stdout at exit: point it at nothing.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass
        _say("stdout was closed (broken pipe)")
        return ExitStatus.OUTPUT_CLOSED
