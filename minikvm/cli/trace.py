"""``minikvm trace GUEST`` and ``minikvm run --trace FILE``: the exit log for people.

``minikvm trace`` runs a guest with a :class:`~minikvm.debug.trace.Tracer`
attached and prints the exits as a table -- sequence number, time since the
start, RIP, reason, port or address, size, direction, value, device,
register and what the device says it means -- followed by the statistics by
reason, device and port. ``minikvm run --trace FILE`` writes the same
records as JSON Lines while the guest runs normally.

The rendering functions are pure (records in, rich tables out), so tests
render them without a terminal. rich and the tracer are imported only when
a trace is made: importing :mod:`minikvm.debug` loads the whole debugger.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING

from minikvm.cli.options import add_gdb_option, add_run_options, config_from_args, guest_file_errors
from minikvm.core.board import ExitStatus

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from minikvm.debug.trace import StatEntry, TraceRecord, Tracer
    from minikvm.machine import Machine

__all__ = [
    "DEFAULT_CAPACITY",
    "add_arguments",
    "add_trace_arguments",
    "attach_trace_file",
    "render_log",
    "render_stats",
    "run",
    "trace_machine",
]

HELP = "run a guest and print every VM exit, explained"

#: How long ``minikvm trace`` lets a guest run unless --timeout says otherwise.
DEFAULT_TRACE_TIMEOUT = 10.0
#: Exits kept in memory unless --capacity says otherwise: the tracer's own
#: default (:data:`minikvm.debug.trace.DEFAULT_CAPACITY`, a test holds them
#: equal), written here so that building the parser does not import the debugger.
DEFAULT_CAPACITY = 10_000


def add_trace_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``minikvm trace`` beyond the guest and run options."""
    parser.add_argument("--limit", type=int, default=200, metavar="N",
                        help="show the last N exits (default 200; 0: statistics only)")
    parser.add_argument("--capacity", type=int, default=DEFAULT_CAPACITY, metavar="N",
                        help=f"exits kept in memory (default {DEFAULT_CAPACITY})")
    parser.add_argument("--jsonl", default=None, metavar="FILE",
                        help="also write every exit to FILE as JSON Lines")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_options(parser)
    add_trace_arguments(parser)
    add_gdb_option(parser)


def attach_trace_file(machine: Machine, path: str | os.PathLike) -> Tracer:
    """For ``minikvm run --trace FILE``: record every exit of ``machine`` to
    ``path`` as JSON Lines. Call ``close()`` on the result after the run.
    Raises OSError when the file cannot be created."""
    from minikvm.debug.trace import Tracer

    return Tracer.attach(machine, capacity=1, path=os.fspath(path))


def _time_cell(record: TraceRecord, start: float) -> str:
    return f"{(record.time - start) * 1e3:.3f}"


def render_log(records: Iterable[TraceRecord], title: str = "exits") -> Table:
    """One row per exit; the explanation takes whatever width is left."""
    from rich import box
    from rich.table import Table

    records = list(records)
    start = records[0].time - records[0].guest_time if records else 0.0
    table = Table(title=title, title_justify="left", expand=True, box=box.SIMPLE_HEAD,
                  pad_edge=False, padding=(0, 1), collapse_padding=True)
    for name, justify in (("#", "right"), ("ms", "right"), ("rip", "right"), ("exit", "left"),
                          ("access", "left"), ("value", "right")):
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    table.add_column("device.register", overflow="fold", max_width=16)
    table.add_column("meaning", overflow="fold", ratio=1, min_width=24)
    for record in records:
        value = "" if record.value is None else f"{record.value:#x}"
        if record.char:
            value += f" {record.char!r}"
        where = record.where.removeprefix("port ")
        access = " ".join(part for part in (record.direction, where) if part)
        if record.size:
            access += f"/{record.size}"
        where = ".".join(part for part in (record.device, record.register) if part)
        table.add_row(str(record.seq), _time_cell(record, start),
                      "" if record.rip is None else f"{record.rip:#x}", record.reason,
                      access, value, where, record.description)
    return table


def _stats_table(title: str, key_name: str, table_data: dict[str, StatEntry]) -> Table:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column(key_name)
    table.add_column("exits", justify="right")
    table.add_column("guest time (ms)", justify="right")
    table.add_column("VMM time (ms)", justify="right")
    table.add_column("VMM us/exit", justify="right")
    for key, entry in sorted(table_data.items(), key=lambda item: -item[1].count):
        per_exit = entry.vmm_time / entry.count * 1e6 if entry.count else 0.0
        table.add_row(key, str(entry.count), f"{entry.guest_time * 1e3:.3f}",
                      f"{entry.vmm_time * 1e3:.3f}", f"{per_exit:.1f}")
    return table


def render_stats(tracer: Tracer) -> list[Table]:
    """Statistics by reason, device and port, one table each."""
    stats = tracer.stats
    tables = [_stats_table("exits by reason", "reason", stats.by_reason)]
    if stats.by_device:
        tables.append(_stats_table("exits by device", "device", stats.by_device))
    if stats.by_port:
        tables.append(_stats_table("exits by port / address", "port", stats.by_port))
    return tables


def _usage(message: str) -> int:
    print(f"minikvm: {message}", file=sys.stderr)
    return ExitStatus.USAGE


def run(args: argparse.Namespace) -> int:
    """``minikvm trace``: build the machine the options describe, with the
    guest's output kept for the report, and trace it (:func:`trace_machine`)."""
    from minikvm.machine import Machine

    if args.limit < 0 or args.capacity < 1:
        return _usage("--limit must be >= 0 and --capacity >= 1")
    config = config_from_args(args)
    output = bytearray()
    with guest_file_errors(config.guest):
        machine = Machine.from_config(config, output=output.extend)
    with machine:
        return trace_machine(machine, limit=args.limit, capacity=args.capacity,
                             jsonl=args.jsonl, timeout=args.timeout, output=output,
                             gdb=args.gdb, guest=args.guest)


def trace_machine(machine: Machine, *, limit: int = 200, capacity: int = DEFAULT_CAPACITY,
                  jsonl: str | None = None, timeout: float | None = None,
                  output: bytearray | None = None, console: Console | None = None,
                  gdb: tuple[str, int] | None = None, guest: str | None = None) -> int:
    """Run ``machine`` with a tracer keeping ``capacity`` exits (and writing
    all to ``jsonl``); print the last ``limit`` exits, the statistics, what
    the guest printed (``output``, which the machine's output sink fills)
    and how it stopped. The run lasts at most ``timeout`` seconds (default
    :data:`DEFAULT_TRACE_TIMEOUT`). With ``gdb`` (host, port) gdb drives the
    run (:func:`minikvm.gdb.serve.serve_gdb`; ``guest`` names the file in the
    attach line) and the trace shows what happened under it. Returns the
    guest's exit status as ``minikvm run`` would, 2 when the ``jsonl`` file
    cannot be written.
    """
    from rich.console import Console

    from minikvm.debug.trace import Tracer

    console = console or Console()
    try:
        tracer = Tracer.attach(machine, capacity=capacity, path=jsonl)
    except OSError as err:
        return _usage(f"{err.filename}: {err.strerror}")
    with tracer:
        if gdb is not None:   # gdb drives the guest; no default time limit then
            from minikvm.gdb.serve import serve_gdb
            stop = serve_gdb(machine, gdb, guest=guest, timeout=timeout)
        else:
            stop = machine.run(timeout=timeout or DEFAULT_TRACE_TIMEOUT)
    if limit:
        shown = list(tracer.records)[-limit:]
        hidden = tracer.seen - len(shown)
        title = f"exits ({tracer.seen} in all" + (f", first {hidden} not shown)" if hidden else ")")
        console.print(render_log(shown, title))
    for table in render_stats(tracer):
        console.print(table)
    if output:
        console.print(f"guest output: {bytes(output).decode('latin-1')!r}")
    console.print(f"stop: {stop.message}")
    return stop.status if stop.status is not None else 0
