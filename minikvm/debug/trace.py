"""A trace of every VM exit: what happened, where, and how long it took.

Everything a bare-metal guest does to the outside world is a VM exit, so a
list of exits is a complete log of its conversation with the VMM: each
``out`` to the debug console, each UART register poke, each halt. A
:class:`Tracer` listens to a :class:`~minikvm.machine.Machine` (it is one of
``machine.listeners``) and keeps

* the most recent records in a bounded ring buffer (a guest may exit
  millions of times; memory must not grow with it),
* optionally every record as one JSON object per line in a file
  (``minikvm run --trace FILE``), which ``jq`` or pandas can read,
* statistics by exit reason, by device and by port/address: how many exits,
  how long the guest ran before them (*guest time*) and how long the VMM
  took to handle them before re-entering the guest (*VMM time*). These are
  bounded too: the guest chooses which ports and addresses it touches, so
  each table keeps its busiest rows and sums the rest in an "other" row
  (:class:`StatTable`).

Only the JSON Lines file grows with the run: it holds every exit, on disk,
because the user asked for it.

The VMM time of an exit is measured as the gap between that exit's return
from ``KVM_RUN`` and the start of the next ``KVM_RUN`` (the next event's
``time - guest_time``); it includes the listeners, this tracer too.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import IO, Any

from minikvm.core.events import describe_exit
from minikvm.kvm.exits import Interrupted, IoIn, IoOut, MmioRead, MmioWrite

__all__ = [
    "DEFAULT_CAPACITY",
    "DEFAULT_STATS_ROWS",
    "StatEntry",
    "StatTable",
    "TraceRecord",
    "TraceStats",
    "Tracer",
    "record_from_event",
]

#: Records kept in memory by default.
DEFAULT_CAPACITY = 10_000


@dataclass(slots=True)
class TraceRecord:
    """One exit, flattened for a table row or a JSON line.

    ``space`` is ``"pio"`` or ``"mmio"`` for device accesses (empty for other
    exits); ``address`` is then the port or the guest-physical address,
    ``direction`` ``"out"``/``"in"`` (port I/O) or ``"write"``/``"read"``
    (MMIO). ``char`` is the character a one-byte write carried when it is
    printable (how a debug-console log reads as text).
    """

    seq: int
    time: float
    guest_time: float
    rip: int | None
    reason: str
    space: str = ""
    address: int | None = None
    size: int | None = None
    direction: str = ""
    value: int | None = None
    count: int = 1
    device: str = ""
    register: str = ""
    description: str = ""
    char: str = ""
    vcpu: int = 0          # the vCPU that made the exit

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @property
    def where(self) -> str:
        """``port 0xe9`` or ``mmio 0xd0000000`` (empty for other exits)."""
        if self.address is None:
            return ""
        return f"port {self.address:#x}" if self.space == "pio" else f"mmio {self.address:#x}"


def _char_of(value: int | None, size: int | None, is_write: bool) -> str:
    if not is_write or value is None or size != 1:
        return ""
    if value == 0x0A:
        return "\\n"
    if 0x20 <= value < 0x7F:
        return chr(value)
    return ""


def record_from_event(event: Any) -> TraceRecord:
    """Flatten a :class:`~minikvm.machine.ExitEvent` into a record."""
    exit = event.exit
    record = TraceRecord(event.seq, event.time, event.guest_time, event.rip, event.reason,
                         count=getattr(event, "accesses", 1) or 1,
                         description=event.description, vcpu=event.vcpu)
    access = event.access
    if isinstance(exit, (IoOut, IoIn)):
        record.space, record.address, record.size = "pio", exit.port, exit.size
        record.direction = "out" if isinstance(exit, IoOut) else "in"
    elif isinstance(exit, (MmioRead, MmioWrite)):
        record.space, record.address, record.size = "mmio", exit.address, exit.length
        record.direction = "write" if isinstance(exit, MmioWrite) else "read"
    if access is not None:
        record.value = access.value
        record.device = access.device_name
        record.register = access.register
        record.char = _char_of(access.value, access.size, access.is_write)
    if not record.description or isinstance(exit, Interrupted):
        # An interrupted KVM_RUN means what its stop says (the halt check,
        # a timeout, a pause): describe it with the stop.
        record.description = describe_exit(exit, access, record.count,
                                           getattr(event, "stop", None))
    return record


@dataclass(slots=True)
class StatEntry:
    """Totals for one group of exits."""

    count: int = 0
    guest_time: float = 0.0
    vmm_time: float = 0.0

    def merge(self, other: StatEntry) -> None:
        """Add ``other``'s totals to these."""
        self.count += other.count
        self.guest_time += other.guest_time
        self.vmm_time += other.vmm_time


#: Rows a statistics table keeps in memory (the ``max_rows`` of
#: :class:`StatTable`): plenty for any real guest, which touches a few dozen
#: ports and addresses.
DEFAULT_STATS_ROWS = 256


class StatTable:
    """Totals by key (an exit reason, a device, a port or address), in bounded memory.

    The keys are the guest's choice: a guest that sweeps the MMIO space
    touches a new address with every exit, and one row per address would
    grow without end (a sweeping guest once took ``minikvm trace`` to
    336 MB). So a table holds at most ``2 * max_rows`` rows: when it is that
    full, the ``max_rows`` rows with the most exits stay and the others are
    *folded* into :attr:`other`. Folding costs one sort every ``max_rows``
    new keys, not a scan per exit.

    Totals stay exact: the rows plus :attr:`other` always add up to every
    exit counted. A row's count is exact unless its key was folded once and
    came back (then the exits before the fold are in :attr:`other`);
    :attr:`folded` says whether that can have happened at all.
    """

    __slots__ = ("max_rows", "rows", "other", "folded")

    def __init__(self, max_rows: int = DEFAULT_STATS_ROWS) -> None:
        if max_rows < 1:
            raise ValueError("a statistics table keeps at least one row")
        self.max_rows = max_rows
        self.rows: dict[str, StatEntry] = {}
        #: The totals of every row folded away so far.
        self.other = StatEntry()
        #: How many rows were folded into :attr:`other` (0: every key has its row).
        self.folded = 0

    def entry(self, key: str) -> StatEntry:
        """The row of ``key``, made (and the table folded) if need be."""
        entry = self.rows.get(key)
        if entry is None:
            if len(self.rows) >= 2 * self.max_rows:
                self._fold()          # (makes a new dict: look it up again)
            entry = self.rows[key] = StatEntry()
        return entry

    def existing(self, key: str) -> StatEntry:
        """The row of ``key``, or :attr:`other` when it was folded away."""
        return self.rows.get(key, self.other)

    def _fold(self) -> None:
        ranked = sorted(self.rows.items(), key=lambda item: item[1].count, reverse=True)
        self.rows = dict(ranked[:self.max_rows])
        for _, entry in ranked[self.max_rows:]:
            self.other.merge(entry)
        self.folded += len(ranked) - self.max_rows

    def top(self, limit: int) -> tuple[list[tuple[str, StatEntry]], StatEntry, int]:
        """The ``limit`` rows with the most exits, and the rest summed: ``(rows,
        rest, how many rows the rest sums)``; ``rest`` includes :attr:`other`."""
        ranked = sorted(self.rows.items(), key=lambda item: item[1].count, reverse=True)
        rest = StatEntry()
        rest.merge(self.other)
        for _, entry in ranked[limit:]:
            rest.merge(entry)
        return ranked[:limit], rest, max(0, len(ranked) - limit) + self.folded

    def __len__(self) -> int:
        return len(self.rows)

    def __bool__(self) -> bool:
        return bool(self.rows) or self.other.count > 0

    def __contains__(self, key: object) -> bool:
        return key in self.rows

    def __getitem__(self, key: str) -> StatEntry:
        return self.rows[key]

    def items(self) -> Iterable[tuple[str, StatEntry]]:
        return self.rows.items()

    def as_dict(self) -> dict[str, Any]:
        return {"rows": {key: asdict(entry) for key, entry in self.rows.items()},
                "other": asdict(self.other), "folded": self.folded}


class TraceStats:
    """Counts and times by exit reason, by device and by port/address.

    Each table keeps at most ``2 * max_rows`` rows (:class:`StatTable`), so
    the statistics stay small whatever the guest touches.
    """

    def __init__(self, max_rows: int = DEFAULT_STATS_ROWS) -> None:
        self.by_reason = StatTable(max_rows)
        self.by_device = StatTable(max_rows)
        self.by_port = StatTable(max_rows)
        self.total = StatEntry()

    def _keys(self, record: TraceRecord) -> list[tuple[StatTable, str]]:
        keys = [(self.by_reason, record.reason)]
        if record.device:
            keys.append((self.by_device, record.device))
        if record.address is not None:
            keys.append((self.by_port, record.where))
        return keys

    def add(self, record: TraceRecord) -> None:
        self.total.count += 1
        self.total.guest_time += record.guest_time
        for table, key in self._keys(record):
            entry = table.entry(key)
            entry.count += 1
            entry.guest_time += record.guest_time

    def add_vmm_time(self, record: TraceRecord, seconds: float) -> None:
        """Charge ``seconds`` of handling time to the groups ``record`` is in
        (to a table's "other" when its row was folded away meanwhile)."""
        self.total.vmm_time += seconds
        for table, key in self._keys(record):
            table.existing(key).vmm_time += seconds

    @property
    def folded(self) -> bool:
        """Whether any table reached its cap and folded rows into "other"."""
        return any(table.folded for table in (self.by_reason, self.by_device, self.by_port))

    def as_dict(self) -> dict[str, Any]:
        return {"by_reason": self.by_reason.as_dict(), "by_device": self.by_device.as_dict(),
                "by_port": self.by_port.as_dict(), "total": asdict(self.total)}


class Tracer:
    """Records every exit of a machine: ring buffer, JSON Lines file, statistics.

    >>> tracer = Tracer.attach(machine, path="trace.jsonl")   # doctest: +SKIP
    >>> machine.run(); tracer.close()                         # doctest: +SKIP
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY, path: str | None = None,
                 file: IO[str] | None = None, include: Iterable[str] | None = None,
                 stats_rows: int = DEFAULT_STATS_ROWS) -> None:
        if capacity < 1:
            raise ValueError("a trace keeps at least one record")
        self.records: deque[TraceRecord] = deque(maxlen=capacity)
        self.stats = TraceStats(stats_rows)
        #: Exit reasons recorded (None: all). The debugger's own single-step
        #: exits are DEBUG; a tracer with ``include`` can leave them out.
        self.include = frozenset(include) if include is not None else None
        self.seen = 0
        self.dropped = 0
        #: When the guest first entered ``KVM_RUN`` in this trace (the
        #: first exit's time minus its guest time); None before any exit.
        self.start: float | None = None
        self._owns_file = file is None and path is not None
        self._file: IO[str] | None = open(path, "w", encoding="utf-8") if path else file
        self._last: TraceRecord | None = None
        self._machine: Any = None

    @classmethod
    def attach(cls, machine: Any, **kwargs: Any) -> Tracer:
        """Create a tracer and add it to ``machine.listeners``."""
        tracer = cls(**kwargs)
        machine.listeners.append(tracer)
        tracer._machine = machine
        return tracer

    def detach(self) -> None:
        if self._machine is not None and self in self._machine.listeners:
            self._machine.listeners.remove(self)
        self._machine = None

    def __call__(self, event: Any) -> None:
        record = record_from_event(event)
        if self.include is not None and record.reason not in self.include:
            return
        last = self._last
        if last is not None:
            gap = (record.time - record.guest_time) - last.time
            if gap >= 0:
                self.stats.add_vmm_time(last, gap)
        self._last = record
        if self.start is None:
            self.start = record.time - record.guest_time
        self.seen += 1
        if len(self.records) == self.records.maxlen:
            self.dropped += 1
        self.records.append(record)
        self.stats.add(record)
        if self._file is not None:
            self._file.write(record.to_json())
            self._file.write("\n")

    def close(self) -> None:
        """Detach from the machine and close the file this tracer opened."""
        self.detach()
        if self._file is not None:
            if self._owns_file:
                self._file.close()
            else:
                self._file.flush()
            self._file = None

    def __enter__(self) -> Tracer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
