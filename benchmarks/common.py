"""What every benchmark here shares: CPU and wall time, interleaved rounds,
medians, ratios against a baseline measured in the same run.

Why this way. On our shared 2-core kvm-pvm machines the wall clock of the
same code swings 1.3-1.7x from one minute to the next, so a figure measured
alone says little. Each benchmark therefore

* measures its baseline (a C program doing the same work, or Python's own
  start) in the same run, interleaved with the thing measured -- one round
  runs every variant once, in the same order -- so drift hits all alike;
* reports both *process CPU time* (what the code costs; barely moved by
  other processes) and *wall time* (what a user waits);
* takes the median of the rounds, and prints ratios, never absolute
  verdicts: a target is "ratio <= x", and whether it is met is printed, not
  asserted (the tests only check that the benchmarks run).

A :class:`Timing` is seconds per unit of work (per exit, per step, per
process start), CPU and wall; :class:`Rounds` collects them per variant.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ROOT", "BUILD", "Clock", "Rounds", "Spread", "Timing", "build_c", "load_average",
           "print_ratio", "ratio_line"]

ROOT = Path(__file__).resolve().parent.parent
#: Where the benchmarks put what they build (C baselines, assembled guests).
BUILD = ROOT / "benchmarks" / "build"


@dataclass(frozen=True)
class Timing:
    """Seconds of process CPU time and of wall time, per unit of work, and
    where known the part of ``cpu`` spent in the kernel (``system``).

    ``system`` is what ``getrusage`` reports as system time. Linux measures
    the sum of user and system time exactly but splits it by sampling at the
    scheduler tick (``cputime_adjust``, kernel/sched/cputime.c): over a
    run of a second or so, a few hundred samples -- an estimate, not a
    measurement (and the split is kept monotonic across the process's life,
    which can bias a short stretch's share), so only medians are printed.
    A tick that finds the task running the guest is counted as *user* time
    (``account_guest_time``, the same file): the rest of ``cpu`` is user
    space and guest together."""

    cpu: float
    wall: float
    system: float | None = None

    def per(self, units: int) -> Timing:
        return Timing(self.cpu / units, self.wall / units,
                      None if self.system is None else self.system / units)


class Clock:
    """CPU and wall time of a stretch of code in this process::

        with Clock() as clock:
            work()
        clock.timing.per(n)

    CPU time is :func:`time.process_time` (all threads of the process: a
    watchdog thread's work is part of what ``Machine.run`` costs).
    """

    timing: Timing

    def __enter__(self) -> Clock:
        self._system = resource.getrusage(resource.RUSAGE_SELF).ru_stime
        self._cpu = time.process_time()
        self._wall = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        cpu, wall = time.process_time() - self._cpu, time.perf_counter() - self._wall
        system = resource.getrusage(resource.RUSAGE_SELF).ru_stime - self._system
        self.timing = Timing(cpu, wall, system)


@dataclass(frozen=True)
class Spread:
    """Quartiles of the round-by-round CPU ratios (:meth:`Rounds.spread`)."""

    low: float
    median: float
    high: float
    rounds: int

    def __str__(self) -> str:
        return (f"per round {self.median:4.2f} "
                f"(quartiles {self.low:4.2f}-{self.high:4.2f} of {self.rounds})")


@dataclass
class Rounds:
    """Timings per variant, one per round; medians of each."""

    results: dict[str, list[Timing]] = field(default_factory=dict)

    def add(self, key: str, timing: Timing) -> None:
        self.results.setdefault(key, []).append(timing)

    def median(self, key: str) -> Timing:
        values = self.results[key]
        systems = [t.system for t in values]
        return Timing(statistics.median(t.cpu for t in values),
                      statistics.median(t.wall for t in values),
                      None if None in systems else statistics.median(systems))

    def ratio(self, key: str, baseline: str) -> Timing:
        """Median of ``key`` over median of ``baseline``, CPU and wall."""
        a, b = self.median(key), self.median(baseline)
        return Timing(a.cpu / b.cpu, a.wall / b.wall)

    def spread(self, key: str, baseline: str) -> Spread:
        """The CPU ratio of ``key`` to ``baseline`` round by round: each
        round's pair ran a few seconds apart, so a slow spell of the host
        that lasts less than a round moves the pair together, where the
        medians of :meth:`ratio` may take their values from different
        rounds. Its quartiles say how firm the ratio of medians is."""
        pairs = zip(self.results[key], self.results[baseline], strict=True)
        ratios = sorted(a.cpu / b.cpu for a, b in pairs)
        if not ratios:
            raise ValueError(f"no rounds of {key} and {baseline} to pair")
        if len(ratios) < 2:
            return Spread(ratios[0], ratios[0], ratios[0], len(ratios))
        low, median, high = statistics.quantiles(ratios, n=4, method="inclusive")
        return Spread(low, median, high, len(ratios))

    def run(self, repeat: int, variants: dict[str, Callable[[], Timing]]) -> None:
        """``repeat`` rounds, each running every variant once, in order."""
        for _ in range(repeat):
            for key, variant in variants.items():
                self.add(key, variant())


def ratio_line(what: str, ratio: Timing, target: float | None,
               spread: Spread | None = None) -> str:
    """``(b)/(c)  CPU 1.21  wall 1.18  target <= 1.25: met``, and with
    ``spread`` the CPU ratio round by round after it. The verdict is the
    ratio of the medians'; the quartiles say how firm it is (a target met
    while the upper quartile is over it is met only just)."""
    line = f"{what:<10} CPU {ratio.cpu:5.2f}  wall {ratio.wall:5.2f}"
    if target is not None:
        met = "met" if ratio.cpu <= target and ratio.wall <= target else (
            "met on CPU only" if ratio.cpu <= target else
            "met on wall only" if ratio.wall <= target else "MISSED")
        line += f"  target <= {target}: {met}"
    if spread is not None:
        line += f"  [CPU {spread}]"
    return line


def print_ratio(what: str, ratio: Timing, target: float | None = None,
                spread: Spread | None = None) -> None:
    print(ratio_line(what, ratio, target, spread))


def load_average() -> str:
    """``load average 1.52 1.61 1.70`` (1, 5, 15 minutes), for the report."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


def build_c(name: str, extra: tuple[str, ...] = ()) -> Path:
    """Compile ``benchmarks/NAME.c`` with gcc -O2 into :data:`BUILD` (when the
    source is newer than the binary); returns the binary."""
    BUILD.mkdir(parents=True, exist_ok=True)
    binary = BUILD / name
    source = ROOT / "benchmarks" / f"{name}.c"
    if not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime:
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(binary), str(source), *extra],
                       check=True)
    return binary
