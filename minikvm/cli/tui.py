"""``minikvm tui GUEST [run options]``: the options, scripted actions and ``--record``.

Interactive use needs a terminal. Everything else is scriptable, so a lesson
or a test can produce exactly the screen it wants without one::

    minikvm tui guests/build/hello.bin --step 3 --next 2 --record hello.svg

runs three instructions and two exits, then saves the screen as SVG (or
HTML, or plain text) and exits. The actions run in the order given, before
the interactive screen (if any) starts.

The TUI itself (:mod:`minikvm.tui`: session, rendering, the terminal loop)
is imported only when the command runs: the rest of ``minikvm`` never loads
it, and it never imports the CLI.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from minikvm.cli.options import UsageError, add_run_options, config_from_args, guest_file_errors

__all__ = ["add_arguments", "parse_screen_size", "run"]

HELP = "step through a guest in a full-screen debugger"

#: Bytes of guest output the console panel keeps.
CONSOLE_LIMIT = 64 * 1024
#: How long a scripted --cont may run unless --timeout says otherwise.
DEFAULT_SCRIPT_TIMEOUT = 10.0
DEFAULT_RECORD_SIZE = (120, 36)
_RECORD_SUFFIXES = (".svg", ".html", ".htm", ".txt")


def parse_screen_size(text: str) -> tuple[int, int]:
    """``120x36`` -> (120, 36): columns and rows of a recorded screen."""
    columns, sep, rows = text.lower().partition("x")
    try:
        size = (int(columns), int(rows))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 120x36") from None
    if not sep or not (40 <= size[0] <= 500 and 12 <= size[1] <= 200):
        raise argparse.ArgumentTypeError(f"{text!r}: a screen is 40-500 columns by 12-200 rows")
    return size


def _count(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count") from None
    if not 1 <= value <= 1_000_000:
        raise argparse.ArgumentTypeError(f"{text!r}: a count is 1 to 1000000")
    return value


def _vcpu_index(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a vCPU number") from None
    if not 0 <= value < 64:
        raise argparse.ArgumentTypeError(f"{text!r}: a vCPU is 0 to 63")
    return value


class _Action(argparse.Action):
    """Collects --step/--next/--cont in the order they were given."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        actions = list(getattr(namespace, self.dest, None) or [])
        actions.append((self.const, values if isinstance(values, int) else 1))
        setattr(namespace, self.dest, actions)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``minikvm tui``'s options: the run options (guest, --mem, --mode,
    virtio devices ...) and the TUI's own."""
    add_run_options(parser)
    group = parser.add_argument_group("before the screen opens (in the order given)")
    group.add_argument("--break", dest="tui_breaks", action="append", default=[],
                       metavar="ADDR", help="set a breakpoint at an address or symbol "
                       "(repeatable)")
    group.add_argument("--step", dest="tui_actions", action=_Action, const="step",
                       type=_count, metavar="N", help="single-step N instructions")
    group.add_argument("--next", dest="tui_actions", action=_Action, const="next",
                       type=_count, metavar="N", help="run to the next VM exit, N times")
    group.add_argument("--cont", dest="tui_actions", action=_Action, const="continue",
                       nargs=0, help="continue until a breakpoint or the guest stops "
                       f"(at most --timeout seconds, default {DEFAULT_SCRIPT_TIMEOUT:g})")
    group.add_argument("--vcpu", dest="tui_actions", action=_Action, const="vcpu",
                       type=_vcpu_index, metavar="N", help="with --smp: show vCPU N and let "
                       "the actions after this run it alone (the t key)")
    group.add_argument("--memory", dest="tui_memory", default=None, metavar="WHERE",
                       help="memory panel address: 0x1000 (linear), p:0x1000 (physical), "
                       "rip, rsp")
    group.add_argument("--view", dest="tui_view", default=None,
                       choices=("exits", "stats", "devices", "memory"),
                       help="the panel shown in the side slot")
    out = parser.add_argument_group("saving the screen")
    out.add_argument("--record", default=None, metavar="FILE",
                     help="save the screen as FILE (.svg, .html or .txt) and exit; "
                     "needs no terminal")
    out.add_argument("--size", dest="tui_size", type=parse_screen_size,
                     default=DEFAULT_RECORD_SIZE, metavar="COLSxROWS",
                     help="screen size for --record (default 120x36)")
    parser.set_defaults(tui_actions=[])


def _prepare(args: argparse.Namespace, session: Any) -> None:
    """Breakpoints, memory view and scripted actions, before the screen opens."""
    from minikvm.tui.state import SideView

    for spec in args.tui_breaks:
        message = session.toggle_breakpoint(spec)
        if message.startswith("no breakpoint"):
            raise UsageError(f"--break {spec}: {message}")
    if args.tui_memory:
        message = session.set_memory(args.tui_memory)
        if message.startswith("memory:"):
            raise UsageError(f"--memory {args.tui_memory}: {message[8:]}")
    if args.tui_view:
        session.side = SideView(args.tui_view)
    timeout = args.timeout if args.timeout is not None else DEFAULT_SCRIPT_TIMEOUT
    for action, count in args.tui_actions:
        if action == "vcpu":
            message = session.select_vcpu(count)
            if message.startswith("no vCPU"):
                raise UsageError(f"--vcpu {count}: {message}")
            continue
        for _ in range(count):
            if session.ended:
                return
            session.run_action(action, timeout=timeout if action != "step" else None)


def run(args: argparse.Namespace) -> int:
    """Run ``minikvm tui``: build the machine, do the scripted actions, then
    save the screen (``--record``) or open the interactive screen."""
    from minikvm.hostio import BufferSink
    from minikvm.machine import Machine

    if args.record is not None and not args.record.lower().endswith(_RECORD_SUFFIXES):
        raise UsageError(f"--record {args.record}: the screen can be saved as .svg, .html "
                         "or .txt")
    interactive = args.record is None
    sink = BufferSink(limit=CONSOLE_LIMIT)
    config = config_from_args(args)            # a bad guest file is said first
    with guest_file_errors(config.guest):
        machine = Machine.from_config(config, output=sink)
    session = None
    try:
        if interactive and not (sys.stdin.isatty() and sys.stdout.isatty()):
            raise UsageError("tui needs a terminal (use --record FILE.svg to save a screen "
                             "without one)")
        from minikvm.tui.session import Session
        session = Session(machine, guest=os.path.basename(args.guest), console=sink)
        _prepare(args, session)
        if not interactive:
            from minikvm.tui.render import export_screen
            width, height = args.tui_size
            path = export_screen(session.snapshot(), args.record, width, height,
                                 title=f"minikvm tui {os.path.basename(args.guest)}")
            print(f"minikvm: saved the screen ({width}x{height}) to {path}")
            return 0
        from minikvm.tui.app import App
        status = App(session).run()
        if session.error_trace:
            print(f"minikvm: {session.message}\n{session.error_trace}", file=sys.stderr)
        return status
    finally:
        busy = session is not None and session.busy
        if session is not None:
            session.close()
            busy = session.busy
        if not busy:   # never close the VM under a vCPU thread still inside KVM_RUN
            machine.close()
