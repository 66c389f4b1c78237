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
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ROOT", "BUILD", "Clock", "Rounds", "Timing", "build_c", "load_average",
           "print_ratio", "ratio_line"]

ROOT = Path(__file__).resolve().parent.parent
#: Where the benchmarks put what they build (C baselines, assembled guests).
BUILD = ROOT / "benchmarks" / "build"


@dataclass(frozen=True)
class Timing:
    """Seconds of process CPU time and of wall time, per unit of work."""

    cpu: float
    wall: float

    def per(self, units: int) -> Timing:
        return Timing(self.cpu / units, self.wall / units)


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
        self._cpu = time.process_time()
        self._wall = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.timing = Timing(time.process_time() - self._cpu, time.perf_counter() - self._wall)


@dataclass
class Rounds:
    """Timings per variant, one per round; medians of each."""

    results: dict[str, list[Timing]] = field(default_factory=dict)

    def add(self, key: str, timing: Timing) -> None:
        self.results.setdefault(key, []).append(timing)

    def median(self, key: str) -> Timing:
        values = self.results[key]
        return Timing(statistics.median(t.cpu for t in values),
                      statistics.median(t.wall for t in values))

    def ratio(self, key: str, baseline: str) -> Timing:
        """Median of ``key`` over median of ``baseline``, CPU and wall."""
        a, b = self.median(key), self.median(baseline)
        return Timing(a.cpu / b.cpu, a.wall / b.wall)

    def run(self, repeat: int, variants: dict[str, Callable[[], Timing]]) -> None:
        """``repeat`` rounds, each running every variant once, in order."""
        for _ in range(repeat):
            for key, variant in variants.items():
                self.add(key, variant())


def ratio_line(what: str, ratio: Timing, target: float | None) -> str:
    """``(b)/(c)  CPU 1.21  wall 1.18  target <= 1.25: met``"""
    line = f"{what:<10} CPU {ratio.cpu:5.2f}  wall {ratio.wall:5.2f}"
    if target is not None:
        met = "met" if ratio.cpu <= target and ratio.wall <= target else (
            "met on CPU only" if ratio.cpu <= target else
            "met on wall only" if ratio.wall <= target else "MISSED")
        line += f"  target <= {target}: {met}"
    return line


def print_ratio(what: str, ratio: Timing, target: float | None = None) -> None:
    print(ratio_line(what, ratio, target))


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
