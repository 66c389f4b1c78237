"""``minikvm run GUEST``: boot a guest and exit with its status.

The guest's output goes to stdout as it comes; the keyboard (or a pipe)
goes to the guest -- to the virtio console when there is one, else to COM1.

**Statuses.** The table is the guest contract's (DESIGN.md, the README):
0 when the guest halts or powers off, ``(v << 1) | 1`` from the debug-exit
port, 3 when it crashes, 124 at ``--timeout``; and the VMM's own: 2 bad
usage, 1 KVM unavailable, 130 Ctrl-C, 128 + N for signal N (143 SIGTERM,
129 SIGHUP), :data:`OUTPUT_CLOSED` when stdout's reader went away. The two
ranges meet (a guest writing 1 exits with 3, like a crash), so the source
is said: *every status the VMM decides comes with one line on stderr*, and
a status the guest decided (debug-exit, halt, power off) comes with none.
``--trace FILE`` ends with a ``STOP`` record that names the source too.

**Output** never stops the guest: it goes through
:class:`~minikvm.hostio.StdoutSink`, a bounded buffer emptied by a writer
thread, which drops (and counts) what a stalled reader leaves no room for.
After the guest stops, what is buffered is written out -- for as long as
it takes without ``--timeout``, and at most until the timeout (plus
:data:`OUTPUT_GRACE`) with one; what could not be written is counted on
the status line.

**Input** waits on the host until the guest's device asks for it (see
:attr:`Uart16550.receiver_ready <minikvm.devices.uart.Uart16550.receiver_ready>`).
When piped input ends (EOF, ``</dev/null``), the run ends once the guest
has read every byte and then been silent for :data:`INPUT_END_QUIET`
seconds -- the way a program reading a pipe ends at its end -- with status
0 and a line saying so. A guest that never listens is not affected.

This is the command people run most, so it imports only the machine:
no debugger, no capstone, no rich (unless ``--trace`` asks for the tracer).
"""

from __future__ import annotations

import argparse
import errno
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from minikvm.cli.options import (UsageError, add_gdb_option, add_run_options, config_from_args,
                                 guest_file_errors)
from minikvm.cli.snapshot_options import (GuestExits, add_snapshot_options,
                                          check_snapshot_options, save_snapshot_words)
from minikvm.core.board import ExitStatus
from minikvm.record import Record

if TYPE_CHECKING:
    from minikvm.core.config import MachineConfig
    from minikvm.core.stop import Stop
    from minikvm.hostio import RawStdin, StdoutSink
    from minikvm.machine import Machine

__all__ = ["INPUT_END_QUIET", "OUTPUT_CLOSED", "OUTPUT_GRACE", "Outcome", "add_arguments",
           "drive", "outcome", "run"]

HELP = "run a guest to completion"

#: Status when the guest's output has nowhere to go: stdout's reader went
#: away (EPIPE) or writing failed (EIO, ENOSPC). 128 + SIGPIPE (13), what a
#: shell reports for a program that a closed pipe killed (``yes | head``).
OUTPUT_CLOSED = int(ExitStatus.OUTPUT_CLOSED)
#: After the end of piped input, how long a guest that has read all of it
#: may stay silent (no output, no input read) before the run ends.
INPUT_END_QUIET = 0.5
#: After ``--timeout``, how long buffered output may still take to be written.
OUTPUT_GRACE = 0.5
_WATCH_INTERVAL = 0.05


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_options(parser)
    parser.add_argument("--trace", default=None, metavar="FILE",
                        help="record every VM exit to FILE as JSON Lines")
    add_gdb_option(parser)
    add_snapshot_options(parser)


class Outcome(Record):
    """How a run ended, for the process: its status, who decided it
    (``"guest"``, ``"debug-exit"`` or ``"vmm"``), and the line for stderr
    (None for a status the guest decided). A record (:mod:`minikvm.record`)."""

    __slots__ = ("status", "source", "line")
    status: int
    source: str
    line: str | None

    def __init__(self, status: int, source: str, line: str | None) -> None:
        self.status = status
        self.source = source
        self.line = line


class _Ending:
    """The VMM's own reasons to end a run, asked from other threads (the
    output writer, the end-of-input watch): the first one wins, and the
    guest is paused so that :meth:`Machine.run` returns."""

    def __init__(self) -> None:
        self.machine: Machine | None = None
        self.outcome: Outcome | None = None
        self._lock = threading.Lock()

    def request(self, status: int, line: str) -> None:
        with self._lock:
            if self.outcome is not None:
                return
            self.outcome = Outcome(status, "vmm", line)
        if self.machine is not None:
            self.machine.pause()

    def output_failed(self, err: OSError) -> None:
        """The output writer's ``on_error``."""
        self.request(OUTPUT_CLOSED, _output_failed_words(err))


def _output_failed_words(err: OSError | None) -> str:
    if err is not None and err.errno == errno.EPIPE:
        return "stdout was closed (broken pipe): the guest was stopped"
    reason = (err.strerror or str(err)) if err is not None else "unknown error"
    return f"cannot write the guest's output ({reason}): the guest was stopped"


def outcome(stop: Stop, ending: Outcome | None = None) -> Outcome:
    """The process status for ``stop``, and whether the VMM must say why.

    A stop the guest decided -- debug-exit (any value), halt, power off,
    reset -- carries no line. Everything else (crash, timeout, a reason of
    the VMM's own in ``ending``) does."""
    from minikvm.core.stop import StopKind

    if stop.kind is StopKind.DEBUG_EXIT:
        return Outcome(int(stop.status or 0), "debug-exit", None)
    if stop.finished:
        return Outcome(int(stop.status or 0), "guest", None)
    if stop.kind is StopKind.PAUSED and ending is not None:
        return ending
    if stop.status is None:   # paused with no reason given: nothing in `run` asks for that
        return Outcome(ExitStatus.INTERRUPTED.value, "vmm", f"stopped: {stop.message}")
    return Outcome(int(stop.status), "vmm", stop.message)


class _InputEndWatch:
    """Ends the run after the end of piped input (see the module docstring).

    A thread looks every few milliseconds, under the machine lock, at: the
    reader's end of file, input still queued on the host or unread in the
    device, whether the device listens (:attr:`receiver_ready` for the UART,
    DRIVER_OK for a virtio console), and the guest's output. Once input has
    ended, all of it was read, neither output nor reading moved for
    :data:`INPUT_END_QUIET` seconds, and the runner's halt checks since then
    found every vCPU asleep (in ``hlt`` waiting for an interrupt, or parked),
    it asks for the end. A guest that computes without printing is not
    asleep, and runs on.
    """

    def __init__(self, machine: Machine, stdin: RawStdin, sink: StdoutSink,
                 ending: _Ending, quiet: float = INPUT_END_QUIET) -> None:
        self.machine = machine
        self.stdin = stdin
        self.sink = sink
        self.ending = ending
        self.quiet = quiet
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="minikvm-input-end",
                                        daemon=True)
        self._thread.start()

    def _listening_and_unread(self) -> tuple[bool, int]:
        machine = self.machine
        target = machine.input_target
        with machine.lock:
            ready = getattr(target, "receiver_ready", None)
            if ready is None:   # a virtio console: it listens once the driver set DRIVER_OK
                ready = any(t.backend is target and t.live for t in machine.virtio)
            pending = getattr(target, "rx_pending", None)
            unread = pending() if pending is not None else target.state().get("pending_input", 0)
            return bool(ready), len(machine.serial_input) + unread

    def _asleep(self, checks: list[int]) -> bool:
        """Every vCPU was looked at by a halt check since ``checks`` (their
        counts when the quiet began), and the last look found it asleep."""
        return all(runner.halt_checks > seen and runner.asleep
                   for runner, seen in zip(self.machine.runners, checks))

    def _loop(self) -> None:
        last: tuple[int, int] | None = None
        since = time.monotonic()
        checks = [runner.halt_checks for runner in self.machine.runners]
        while not self._done.wait(_WATCH_INTERVAL):
            if not self.stdin.eof:
                continue
            listening, unread = self._listening_and_unread()
            now = time.monotonic()
            activity = (self.sink.received, unread)
            if activity != last:
                last, since = activity, now
                checks = [runner.halt_checks for runner in self.machine.runners]
                continue
            if listening and unread == 0 and now - since >= self.quiet and self._asleep(checks):
                delivered = self.machine.serial_input.delivered
                read = (f"the guest read all {delivered} byte{'s' if delivered != 1 else ''}"
                        if delivered else "nothing came for the guest")
                self.ending.request(ExitStatus.OK.value, f"end of input: {read}, and it was "
                                    f"quiet for {self.quiet:g} s after")
                return

    def stop(self) -> None:
        self._done.set()
        self._thread.join(timeout=1.0)


def _record_stop(path: str, seq: int, result: Outcome, stop: Stop | None,
                 debug_exit_value: int | None) -> None:
    """Append the run's last record to the ``--trace`` file: a ``STOP`` line
    shaped like the exit records (same keys) plus ``status``, ``status_from``
    and, for a debug-exit, the value the guest wrote. The statuses of the
    guest and of the VMM can be equal (a guest's 1 gives 3, like a crash):
    this is where a trace says which it was."""
    if result.source == "debug-exit":
        words = f"status {result.status} from the guest's debug-exit (it wrote {debug_exit_value:#x})"
    elif result.source == "guest":
        words = f"status {result.status} from the guest: {stop.message if stop else ''}"
    else:
        words = f"status {result.status} from the VMM: {result.line}"
    record: dict[str, Any] = {
        "seq": seq, "time": time.monotonic(), "guest_time": 0.0,
        "rip": stop.rip if stop is not None else None, "reason": "STOP", "space": "",
        "address": None, "size": None, "direction": "", "value": None, "count": 1,
        "device": "", "register": "", "description": words, "char": "",
        "status": result.status, "status_from": result.source,
    }
    if result.source == "debug-exit":
        record["debug_exit_value"] = debug_exit_value
    import json   # here: only a run with --trace pays for loading it

    try:
        with open(path, "a", encoding="utf-8") as file:
            file.write(json.dumps(record, separators=(",", ":")) + "\n")
    except OSError:
        pass   # the trace is a by-product; the status line still says it all


def _drain(sink: StdoutSink, deadline: float | None) -> int:
    """Write what the guest left in the output buffer; returns the bytes
    that could not be written (they are counted in ``sink.dropped`` too).

    Without a deadline (no ``--timeout``) it waits as long as the reader
    needs, as ``cat`` would (Ctrl-C and SIGTERM still end it). With one, it
    waits until the deadline and then at most :data:`OUTPUT_GRACE` seconds
    more, and only while the reader keeps taking bytes: a stalled reader
    does not hold the process past its timeout."""
    if deadline is None:
        sink.drain()
        return 0
    if sink.drain(max(0.0, deadline - time.monotonic())):
        return 0
    grace_end = time.monotonic() + OUTPUT_GRACE
    while time.monotonic() < grace_end:
        before = sink.written
        if sink.drain(0.1):
            return 0
        if sink.written == before:
            break   # not a byte taken in 0.1 s: the reader has stalled
    return sink.close()


def run(args: argparse.Namespace) -> int:
    from minikvm.machine import Machine

    config = config_from_args(args)
    check_snapshot_options(args)

    def build(sink: StdoutSink) -> tuple[Machine, MachineConfig]:
        with guest_file_errors(config.guest, config.mem_size):
            return Machine.from_config(config, output=sink), config

    return drive(args, build)


def drive(args: argparse.Namespace,
          build: Callable[[StdoutSink], tuple[Machine, MachineConfig]]) -> int:
    """Run the machine ``build`` makes (given the output sink; with the
    configuration it was built from) as ``minikvm
    run`` does -- input, output, ``--gdb``, ``--trace``, ``--snapshot`` --
    and return the process status. ``minikvm resume`` shares it."""
    from minikvm.core.stop import StopKind
    from minikvm.hostio import RawStdin, StdoutSink

    ending = _Ending()
    sink = StdoutSink(on_error=ending.output_failed)
    machine, config = build(sink)
    ending.machine = machine
    snapshot = getattr(args, "snapshot", None)
    max_exits = getattr(args, "snapshot_after_exits", None) if snapshot else None
    started = time.monotonic()
    tracer = None
    stop = None
    counted = None
    try:
        with machine, RawStdin() as stdin:
            if args.trace:
                from minikvm.cli.trace import attach_trace_file
                try:
                    tracer = attach_trace_file(machine, args.trace)
                except OSError as err:
                    raise UsageError(f"cannot write the trace to {args.trace}: "
                                     f"{err.strerror}") from None
            watch = None
            try:
                # The reader thread kicks the vCPU so that a guest sleeping in
                # hlt sees the byte at once.
                stdin.start_reader(machine.serial_input, on_input=machine.vcpu.kick)
                if stdin.fd >= 0 and not stdin.is_tty:
                    watch = _InputEndWatch(machine, stdin, sink, ending)
                if args.gdb is not None:
                    from minikvm.gdb.serve import serve_gdb
                    stop = serve_gdb(machine, args.gdb, guest=args.guest, timeout=args.timeout,
                                     record=args.reverse)
                elif max_exits is not None:
                    counted = GuestExits(machine, max_exits)
                    stop = machine.run(timeout=args.timeout, until=counted.reached)
                else:
                    stop = machine.run(timeout=args.timeout)
            finally:
                if watch is not None:
                    watch.stop()
                stdin.stop_reader()
                debug_exit_value = machine.debug_exit.last_value
            saved = None
            if (counted is not None and ending.outcome is None
                    and stop.kind is StopKind.PAUSED and counted.reached()):
                saved = save_snapshot_words(machine, config, snapshot, counted.count)
        result = Outcome(ExitStatus.OK.value, "vmm", saved) if saved else outcome(stop, ending.outcome)
        if snapshot and not saved:
            seen = machine.exit_count if counted is None else counted.count
            note = (f"no snapshot: the run ended after {seen} exits, before "
                    f"{max_exits}")
            result.line = f"{result.line}; {note}" if result.line else note
        deadline = None if args.timeout is None else started + args.timeout
        _drain(sink, deadline)
        if sink.broken:
            if result.status != OUTPUT_CLOSED and sink.dropped:
                # The reader left before all the guest said was written: as for `cat`.
                result = Outcome(OUTPUT_CLOSED, "vmm", _output_failed_words(sink.error))
        elif sink.dropped:
            note = (f"{sink.dropped} byte{'s' if sink.dropped != 1 else ''} of guest output "
                    "dropped: stdout was not read fast enough")
            result.line = f"{result.line}; {note}" if result.line else f"note: {note}"
    except BaseException as err:
        # Ctrl-C, SIGTERM/SIGHUP: main() says it; the trace still gets its STOP record.
        status = getattr(err, "status", None)
        if isinstance(err, KeyboardInterrupt):
            status = ExitStatus.INTERRUPTED.value
        if tracer is not None and status is not None:
            tracer.close()
            _record_stop(args.trace, tracer.seen + 1, Outcome(status, "vmm", str(err) or
                                                              "interrupted"), stop, None)
        sink.close()
        raise
    if tracer is not None:
        tracer.close()
        _record_stop(args.trace, tracer.seen + 1, result, stop, debug_exit_value)
    if result.line:
        try:
            print(f"minikvm: {result.line}", file=sys.stderr)
        except (OSError, ValueError):
            pass   # a terminal that hung up
    return result.status
