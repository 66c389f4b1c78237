"""``minikvm trace GUEST`` and ``minikvm run --trace FILE``: the exit log for people.

``minikvm trace`` runs a guest with a :class:`~minikvm.debug.trace.Tracer`
attached and prints the exits as a table -- sequence number, time since the
start, RIP, reason, port or address, size, direction, value, device,
register and what the device says it means -- followed by the statistics by
reason, device and port. ``minikvm run --trace FILE`` writes the same
records as JSON Lines while the guest runs normally.

The rendering functions are pure (records in, rich tables out), so tests
render them without a terminal. rich and the tracer are imported only when
a trace is made, and the tracer alone of the debugger's package (see
:mod:`minikvm.debug`: its names are imported when first asked for).
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
    from rich.console import Console, ConsoleOptions
    from rich.table import Table
    from rich.text import Text

    from minikvm.debug.trace import StatEntry, StatTable, TraceRecord, Tracer
    from minikvm.machine import Machine

__all__ = [
    "DEFAULT_CAPACITY",
    "ExitLog",
    "add_arguments",
    "add_trace_arguments",
    "attach_trace_file",
    "describe_vcpus",
    "mp_state_words",
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
#: equal), written here so that building the parser does not import the tracer.
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


#: The meaning stays a column of the log while it gets at least this many
#: characters; on a narrower screen (80 columns, or a pipe, which rich
#: treats as 80 columns) it goes on its own lines under each exit instead
#: of being squeezed into a sliver.
MEANING_MIN_WIDTH = 40
#: Rows shown per statistics table; the others are summed in an "other" row.
STATS_SHOWN = 20

_LOG_COLUMNS = (("#", "right"), ("ms", "right"), ("rip", "right"), ("exit", "left"),
                ("access", "left"), ("value", "right"), ("device.register", "left"))
_GAP = "  "
LOG_FOOTNOTE = ("ms: milliseconds from the start of the run to the moment this exit reached "
                "the VMM (KVM_RUN returned). rip: where the guest was. value: what was moved, "
                "with the character a one-byte write carries ('\\n' is a newline).")


def _time_cell(record: TraceRecord, start: float) -> str:
    return f"{(record.time - start) * 1e3:.3f}"


def _log_cells(record: TraceRecord, start: float) -> list[str]:
    """The short cells of one exit (everything but its meaning)."""
    value = "" if record.value is None else f"{record.value:#x}"
    if record.char:
        # The record spells a newline as the two characters \n (JSON-friendly),
        # the same way the device's meaning does: show it as it is, quoted.
        value += f" '{record.char}'"
    # "out 0xe9", "write 0xd0000070": in/out is port I/O, read/write MMIO.
    where = "" if record.address is None else f"{record.address:#x}"
    access = " ".join(part for part in (record.direction, where) if part)
    if record.size:
        access += f"/{record.size}"
    device = ".".join(part for part in (record.device, record.register) if part)
    return [str(record.seq), _time_cell(record, start),
            "" if record.rip is None else f"{record.rip:#x}", record.reason, access, value,
            device]


class ExitLog:
    """The exit log as a rich renderable that lays itself out for the width it gets.

    Every cell but the meaning is short, so those columns are as wide as
    their longest cell. The meaning -- the part worth reading -- is a last
    column, wrapped inside it, while that column gets at least
    :data:`MEANING_MIN_WIDTH` characters; on a narrower screen it goes on its
    own lines under the exit, indented, using the whole width (and takes the
    device.register cell with it when the row would not fit otherwise).
    Lines carry no trailing blanks, so a piped log is plain text.
    """

    def __init__(self, records: Iterable[TraceRecord], title: str = "exits",
                 start: float | None = None) -> None:
        self.records = list(records)
        self.title = title
        self.start = start

    def lines(self, width: int, ascii_only: bool = False) -> list[Text]:
        """The log as lines of at most ``width`` characters (when the short
        columns fit at all)."""
        from rich.text import Text

        records = self.records
        start = self.start
        if start is None:
            start = records[0].time - records[0].guest_time if records else 0.0
        rows = [_log_cells(record, start) for record in records]
        columns = list(_LOG_COLUMNS)
        if any(getattr(record, "vcpu", 0) for record in records):
            # Several vCPUs exited: each row names its own, after the number.
            columns.insert(1, ("cpu", "right"))
            for cells, record in zip(rows, records):
                cells.insert(1, str(record.vcpu))
        headers = [name for name, _ in columns]
        widths = [max([len(header)] + [len(row[i]) for row in rows])
                  for i, header in enumerate(headers)]

        def fixed_width() -> int:
            return sum(widths) + len(_GAP) * (len(widths) - 1)

        room = width - fixed_width() - len(_GAP)
        inline = room >= MEANING_MIN_WIDTH
        # Under the row, the meaning has the width to itself; if the row is
        # still too wide (long register names of virtio devices), the
        # device.register cell goes down there too, in brackets.
        device_below = not inline and fixed_width() > width
        if device_below:
            columns, headers, widths = columns[:-1], headers[:-1], widths[:-1]
        fixed = fixed_width()
        rule = "-" if ascii_only else "\u2500"

        def line(cells: list[str]) -> str:
            parts = [cell.rjust(w) if justify == "right" else cell.ljust(w)
                     for cell, w, (_, justify) in zip(cells, widths, columns)]
            return _GAP.join(parts)

        out = [Text(self.title, style="bold")]
        head = (line(headers) + (_GAP + "meaning" if inline else "")).rstrip()
        out.append(Text(head, style="bold"))
        indent = " " * (fixed + len(_GAP)) if inline else " " * (widths[0] + len(_GAP))
        if not inline:
            out.append(Text(indent + ("[device.register] " if device_below else "") + "meaning",
                            style="bold"))
        out.append(Text(rule * min(width, max(len(head), fixed)), style="dim"))
        wrap_at = room if inline else max(20, width - len(indent))
        import textwrap   # here: building the parser of `minikvm run` must not load it

        for cells, record in zip(rows, records):
            meaning = record.description
            if device_below and cells[-1]:
                meaning = f"[{cells[-1]}] {meaning}"
            wrapped = textwrap.wrap(meaning, wrap_at) or [""]
            if inline:
                out.append(Text((line(cells) + _GAP + wrapped[0]).rstrip()))
                out.extend(Text(indent + rest) for rest in wrapped[1:])
            else:
                out.append(Text(line(cells).rstrip()))
                out.extend(Text(indent + part) for part in wrapped if part)
        return out

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterable[Text]:
        yield from self.lines(options.max_width, options.ascii_only)


def render_log(records: Iterable[TraceRecord], title: str = "exits",
               start: float | None = None) -> ExitLog:
    """One row per exit, its meaning beside it or, on a narrow screen, under it.

    ``start`` is the time the ``ms`` column counts from: the start of the
    run (:attr:`Tracer.start`); by default the first record's run.
    """
    return ExitLog(records, title, start)


def _stats_table(title: str, key_name: str, what: str, table_data: StatTable,
                 shown: int = STATS_SHOWN) -> Table:
    from rich import box
    from rich.table import Table

    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                  show_edge=False)
    table.add_column(key_name)
    table.add_column("exits", justify="right")
    table.add_column("guest time (ms)", justify="right")
    table.add_column("VMM time (ms)", justify="right")
    table.add_column("VMM us/exit", justify="right")

    def add(key: str, entry: StatEntry) -> None:
        per_exit = entry.vmm_time / entry.count * 1e6 if entry.count else 0.0
        table.add_row(key, str(entry.count), f"{entry.guest_time * 1e3:.3f}",
                      f"{entry.vmm_time * 1e3:.3f}", f"{per_exit:.1f}")

    top, rest, summed = table_data.top(shown)
    for key, entry in top:
        add(key, entry)
    if summed or rest.count:
        add(f"other ({summed} more)" if not table_data.folded else "other", rest)
    if table_data.folded:
        table.caption = (f"note: the guest touched more than {2 * table_data.max_rows} "
                         f"different {what}: to keep memory bounded the trace kept the "
                         f"busiest {table_data.max_rows} and summed the others in 'other' "
                         f"({table_data.folded} rows folded)")
        table.caption_justify = "left"
    return table


def render_stats(tracer: Tracer) -> list[Table]:
    """Statistics by reason, device and port, one table each: the
    :data:`STATS_SHOWN` busiest rows, the rest summed in "other"."""
    stats = tracer.stats
    tables = [_stats_table("exits by reason", "reason", "exit reasons", stats.by_reason)]
    if stats.by_device:
        tables.append(_stats_table("exits by device", "device", "devices", stats.by_device))
    if stats.by_port:
        tables.append(_stats_table("exits by port / address", "port", "ports and addresses",
                                   stats.by_port))
    return tables


def describe_vcpus(machine: Machine) -> str:
    """Each vCPU's MP state after a run, in words: ``0 halted, 1 waiting
    for INIT/SIPI (KVM_MP_STATE_UNINITIALIZED)`` -- an AP the guest never
    started shows as parked. Call it when no vCPU runs (KVM_GET_MP_STATE
    waits for a vCPU inside KVM_RUN)."""
    return ", ".join(f"{index} {mp_state_words(vcpu.get_mp_state())}"
                     for index, vcpu in enumerate(machine.vcpus))


def mp_state_words(state: int) -> str:
    """A ``KVM_MP_STATE_*`` value as a person reads it."""
    from minikvm.kvm.uapi import KvmMpState

    try:
        name = KvmMpState(state).name
    except ValueError:
        return f"MP state {state}"
    words = {"KVM_MP_STATE_RUNNABLE": "runnable", "KVM_MP_STATE_HALTED": "halted",
             "KVM_MP_STATE_UNINITIALIZED": "waiting for INIT/SIPI",
             "KVM_MP_STATE_INIT_RECEIVED": "waiting for SIPI"}.get(name)
    return f"{words} ({name})" if words else name


def _print(console: Console, renderable: object) -> None:
    """Print; without colours (a pipe, a file) as plain text without trailing blanks."""
    if console.color_system is not None:
        console.print(renderable)
        return
    with console.capture() as capture:
        console.print(renderable)
    text = "\n".join(line.rstrip() for line in capture.get().splitlines())
    console.print(text, markup=False, highlight=False, emoji=False, soft_wrap=True)


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
                             gdb=args.gdb, guest=args.guest, record=args.reverse)


def trace_machine(machine: Machine, *, limit: int = 200, capacity: int = DEFAULT_CAPACITY,
                  jsonl: str | None = None, timeout: float | None = None,
                  output: bytearray | None = None, console: Console | None = None,
                  gdb: tuple[str, int] | None = None, guest: str | None = None,
                  record: bool = False) -> int:
    """Run ``machine`` with a tracer keeping ``capacity`` exits (and writing
    all to ``jsonl``); print the last ``limit`` exits, the statistics, what
    the guest printed (``output``, which the machine's output sink fills)
    and how it stopped. The run lasts at most ``timeout`` seconds (default
    :data:`DEFAULT_TRACE_TIMEOUT`). With ``gdb`` (host, port) gdb drives the
    run (:func:`minikvm.gdb.serve.serve_gdb`; ``guest`` names the file in the
    attach line; ``record``: from the first instruction) and the trace shows
    what happened under it. Returns the
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
            stop = serve_gdb(machine, gdb, guest=guest, timeout=timeout, record=record)
        else:
            stop = machine.run(timeout=timeout or DEFAULT_TRACE_TIMEOUT)
    if limit:
        shown = list(tracer.records)[-limit:]
        hidden = tracer.seen - len(shown)
        title = f"exits ({tracer.seen} in all" + (f", first {hidden} not shown)" if hidden else ")")
        _print(console, render_log(shown, title, tracer.start))
        _print(console, LOG_FOOTNOTE)
    for table in render_stats(tracer):
        console.line()
        _print(console, table)
    console.line()
    if output:
        _print(console, f"guest output: {bytes(output).decode('latin-1')!r}")
    _print(console, f"stop: {stop.message}")
    if len(machine.vcpus) > 1:
        _print(console, f"vCPUs: {describe_vcpus(machine)}")
    return stop.status if stop.status is not None else 0
