"""What the TUI counts while the guest runs: its exits, and exits over time.

The machine calls its listeners with every :class:`ExitEvent`, on the vCPU
thread, under the machine lock, possibly millions of times a second. The
TUI's listener, :class:`ExitMonitor`, therefore does the least it can: it
numbers the exit, appends it to a bounded deque and bumps two counters.
Turning events into words waits until a frame needs the newest few.

**What is counted as an exit.** The number in the header, the ``#`` column
of the exit log and the statistics are one count: *guest exits*, the times
``KVM_RUN`` returned because the guest did something the VMM must answer
(port I/O, MMIO, ``hlt``, a shutdown, a debug trap of a breakpoint). Two
kinds of ``KVM_RUN`` return are the VMM's own doing and are left out:

* *kicks* -- ``KVM_RUN`` cut short by our signal (the halt check that looks
  for a guest asleep with interrupts off, a pause, a timeout). They are
  counted apart, in :attr:`ExitMonitor.kicks`;
* the single-step traps of the debugger: after each stepped instruction KVM
  reports a ``#DB`` that the debugger consumes itself (it never reaches the
  listeners); the header counts those as *steps*.

The machine's own sequence number (:attr:`ExitEvent.seq`) counts kicks too,
so the TUI numbers guest exits itself: the log's last number is the
header's count.

:class:`Timeline` turns the count into a picture of the run: exits per
quarter second while the guest runs freely, and the rate of the last run.
"""

from __future__ import annotations

import time
from collections import deque

from minikvm.core.events import ExitEvent
from minikvm.kvm.exits import Interrupted, IoIn, IoOut, MmioRead, MmioWrite

__all__ = ["EXIT_LOG_CAPACITY", "ExitMonitor", "TIMELINE_INTERVAL", "TIMELINE_LENGTH",
           "Timeline"]

#: Exits kept for the log panel (a guest may exit millions of times).
EXIT_LOG_CAPACITY = 256
#: The timeline: one bar per this many seconds of running, this many bars.
TIMELINE_INTERVAL = 0.25
TIMELINE_LENGTH = 240
#: ExitEvent.reason of the commonest exits, by the exit's type.
_IO_REASONS = {IoOut: "IO_OUT", IoIn: "IO_IN", MmioWrite: "MMIO_WRITE", MmioRead: "MMIO_READ"}
#: A free run shorter than this gives no rate (a few exits in a millisecond
#: say nothing about the speed).
_SHORTEST_RATED_RUN = 0.05


class ExitMonitor:
    """The machine listener of the TUI: cheap enough to leave on at full speed.

    :attr:`events` holds ``(number, event)`` pairs, the newest
    ``capacity`` guest exits with their number (1 for the first guest exit
    the TUI saw); :attr:`count` is the number of the newest.
    """

    def __init__(self, capacity: int = EXIT_LOG_CAPACITY) -> None:
        self.events: deque[tuple[int, ExitEvent]] = deque(maxlen=capacity)
        self.count = 0
        self.by_reason: dict[str, int] = {}
        self.by_device: dict[str, int] = {}
        #: ``KVM_RUN`` calls cut short by the VMM's own signal (not guest exits).
        self.kicks = 0

    def __call__(self, event: ExitEvent) -> None:
        kind = type(event.exit)
        if kind is Interrupted:
            self.kicks += 1
            return
        self.count += 1
        self.events.append((self.count, event))
        # The four commonest reasons by a look-up on the exit's type;
        # ExitEvent.reason (a chain of isinstance) for the rest.
        reason = _IO_REASONS.get(kind) or event.reason
        by_reason = self.by_reason
        by_reason[reason] = by_reason.get(reason, 0) + 1
        access = event.access
        if access is not None:
            device = access.device
            name = "unclaimed" if device is None else device.name
            self.by_device[name] = self.by_device.get(name, 0) + 1

    def newest(self, count: int) -> list[tuple[int, ExitEvent]]:
        """The last ``count`` (number, event) pairs, oldest first (safe while
        the vCPU thread appends)."""
        for _ in range(3):
            try:
                events = list(self.events)
                break
            except RuntimeError:   # mutated during the copy: try again
                continue
        else:
            return []
        return events[-count:] if count > 0 else []

    def number_of(self, event: ExitEvent) -> int | None:
        """The number the log gives ``event`` (None when it is not a guest
        exit or already out of the log). The exit a run stopped at is the
        newest, so the search from the end is short."""
        for number, seen in reversed(self.newest(len(self.events))):
            if seen is event:
                return number
        return None


class Timeline:
    """Guest exits per :data:`TIMELINE_INTERVAL` while the guest runs freely.

    The session calls :meth:`start` when a free run begins, :meth:`tick`
    from the UI loop, :meth:`stop` when the run ends; each takes the exit
    count at that moment. Steps and step-to-exit are not free runs and add
    no bars (their speed is the speed of a person pressing keys).
    """

    def __init__(self, interval: float = TIMELINE_INTERVAL,
                 length: int = TIMELINE_LENGTH) -> None:
        self.interval = interval
        self.bars: deque[int] = deque(maxlen=length)
        #: Exits per second over the last free run (0 before one ended).
        self.last_rate = 0.0
        self._run_start: float | None = None
        self._run_start_count = 0
        self._sample_time = 0.0
        self._sample_count = 0

    @property
    def running(self) -> bool:
        return self._run_start is not None

    def start(self, count: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._run_start = self._sample_time = now
        self._run_start_count = self._sample_count = count

    def tick(self, count: int, now: float | None = None) -> None:
        """Add a bar when an interval has passed since the last one."""
        if self._run_start is None:
            return
        now = time.monotonic() if now is None else now
        if now - self._sample_time >= self.interval:
            self._sample(count, now)

    def stop(self, count: int, now: float | None = None) -> None:
        """The free run ended: its last (partial) bar, and its rate."""
        if self._run_start is None:
            return
        now = time.monotonic() if now is None else now
        self._sample(count, now)
        seconds = now - self._run_start
        if seconds >= _SHORTEST_RATED_RUN:
            self.last_rate = (count - self._run_start_count) / seconds
        self._run_start = None

    def _sample(self, count: int, now: float) -> None:
        self.bars.append(count - self._sample_count)
        self._sample_time = now
        self._sample_count = count

    def rate(self) -> float:
        """Exits per second: over the latest bar while running, else the last run's."""
        if self._run_start is not None:
            return self.bars[-1] / self.interval if self.bars else 0.0
        return self.last_rate
