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
  took to handle them before re-entering the guest (*VMM time*).

The VMM time of an exit is measured as the gap between that exit's return
from ``KVM_RUN`` and the start of the next ``KVM_RUN`` (the next event's
``time - guest_time``); it includes the listeners, this tracer too.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import IO, Any

from minikvm.kvm.exits import IoIn, IoOut, MmioRead, MmioWrite

__all__ = [
    "DEFAULT_CAPACITY",
    "StatEntry",
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
    if not record.description:
        from minikvm.machine import describe_exit
        record.description = describe_exit(exit, access, record.count)
    return record


@dataclass(slots=True)
class StatEntry:
    """Totals for one group of exits."""

    count: int = 0
    guest_time: float = 0.0
    vmm_time: float = 0.0


@dataclass
class TraceStats:
    """Counts and times by exit reason, by device and by port/address."""

    by_reason: dict[str, StatEntry] = field(default_factory=dict)
    by_device: dict[str, StatEntry] = field(default_factory=dict)
    by_port: dict[str, StatEntry] = field(default_factory=dict)
    total: StatEntry = field(default_factory=StatEntry)

    def _keys(self, record: TraceRecord) -> list[tuple[dict[str, StatEntry], str]]:
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
            entry = table.get(key)
            if entry is None:
                entry = table[key] = StatEntry()
            entry.count += 1
            entry.guest_time += record.guest_time

    def add_vmm_time(self, record: TraceRecord, seconds: float) -> None:
        """Charge ``seconds`` of handling time to the groups ``record`` is in."""
        self.total.vmm_time += seconds
        for table, key in self._keys(record):
            table[key].vmm_time += seconds

    def as_dict(self) -> dict[str, Any]:
        def rows(table: dict[str, StatEntry]) -> dict[str, dict[str, float]]:
            return {key: asdict(entry) for key, entry in table.items()}
        return {"by_reason": rows(self.by_reason), "by_device": rows(self.by_device),
                "by_port": rows(self.by_port), "total": asdict(self.total)}


class Tracer:
    """Records every exit of a machine: ring buffer, JSON Lines file, statistics.

    >>> tracer = Tracer.attach(machine, path="trace.jsonl")   # doctest: +SKIP
    >>> machine.run(); tracer.close()                         # doctest: +SKIP
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY, path: str | None = None,
                 file: IO[str] | None = None, include: Iterable[str] | None = None) -> None:
        if capacity < 1:
            raise ValueError("a trace keeps at least one record")
        self.records: deque[TraceRecord] = deque(maxlen=capacity)
        self.stats = TraceStats()
        #: Exit reasons recorded (None: all). The debugger's own single-step
        #: exits are DEBUG; a tracer with ``include`` can leave them out.
        self.include = frozenset(include) if include is not None else None
        self.seen = 0
        self.dropped = 0
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
