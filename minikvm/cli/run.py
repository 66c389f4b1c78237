"""``minikvm run GUEST``: boot a guest and exit with its status.

The guest's output goes to stdout as it comes; the keyboard (or a pipe)
goes to the guest -- to the virtio console when there is one, else to COM1.
The exit status is the guest contract's (DESIGN.md): 0 when it halts or
powers off, ``(v << 1) | 1`` from the debug-exit port, 3 when it crashes,
124 at ``--timeout``. A stop that is not the guest finishing is said in
one line on stderr.

This is the command people run most, so it imports only the machine:
no debugger, no capstone, no rich (unless ``--trace`` asks for the tracer).
"""

from __future__ import annotations

import argparse
import sys

from minikvm.cli.options import (UsageError, add_gdb_option, add_run_options, config_from_args,
                                 guest_file_errors)

__all__ = ["add_arguments", "run", "stdout_sink"]

HELP = "run a guest to completion"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_options(parser)
    parser.add_argument("--trace", default=None, metavar="FILE",
                        help="record every VM exit to FILE as JSON Lines")
    add_gdb_option(parser)


def stdout_sink(data: bytes) -> None:
    """Guest output to our stdout, at once (a guest may print a prompt)."""
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def run(args: argparse.Namespace) -> int:
    from minikvm.hostio import RawStdin
    from minikvm.machine import Machine

    config = config_from_args(args)
    with guest_file_errors(config.guest):
        machine = Machine.from_config(config, output=stdout_sink)
    tracer = None
    with machine, RawStdin() as stdin:
        if args.trace:
            from minikvm.cli.trace import attach_trace_file
            try:
                tracer = attach_trace_file(machine, args.trace)
            except OSError as err:
                raise UsageError(f"cannot write the trace to {args.trace}: {err.strerror}") from None
        try:
            # The reader thread kicks the vCPU so that a guest sleeping in
            # hlt sees the byte at once.
            stdin.start_reader(machine.serial_input, on_input=machine.vcpu.kick)
            if args.gdb is not None:
                from minikvm.gdb.serve import serve_gdb
                stop = serve_gdb(machine, args.gdb, guest=args.guest, timeout=args.timeout)
            else:
                stop = machine.run(timeout=args.timeout)
        finally:
            stdin.stop_reader()
            if tracer is not None:
                tracer.close()
    if not stop.finished:
        print(f"minikvm: {stop.message}", file=sys.stderr)
    return stop.status if stop.status is not None else 0
