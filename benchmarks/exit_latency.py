"""Exit latency: microseconds per VM exit, Python against C, in one run.

The guest (``guests/asm/portloop.S``) writes N times to port 0x80, which no
device claims, then halts; each write is one VM exit. We time
  (a) a raw loop over ``Vcpu.run()``: the binding's own cost per exit,
  (b) ``Machine.run()``: the binding plus full dispatch (bus lookup, typed
      events, stop checks),
  (c) the same loop in C (``exit_latency.c``, compiled here by gcc),
and print the ratios (a)/(c) and (b)/(c). Targets: <= 1.5 and <= 2.0.

    python benchmarks/exit_latency.py [--exits N] [--repeat R]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from minikvm.kvm.exits import Hlt, IoOut  # noqa: E402
from minikvm.machine import Machine  # noqa: E402

BUILD = ROOT / "benchmarks" / "build"
GUEST = ROOT / "guests" / "build" / "portloop.bin"
COUNT_OFFSET = 4  # where portloop keeps its iteration count


def build() -> Path:
    subprocess.run(["make", "-s", "-C", str(ROOT / "guests")], check=True)
    BUILD.mkdir(exist_ok=True)
    binary = BUILD / "exit_latency"
    source = ROOT / "benchmarks" / "exit_latency.c"
    if not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime:
        subprocess.run(["gcc", "-O2", "-o", str(binary), str(source)], check=True)
    return binary


def _machine(exits: int, output=None) -> Machine:
    """The portloop guest, loaded and set to do ``exits`` port writes."""
    machine = Machine(output=output)
    machine.load_flat(GUEST, 0x1000)
    machine.memory.write_u32(0x1000 + COUNT_OFFSET, exits)
    return machine


def raw_loop(exits: int) -> float:
    """(a) seconds per exit for a bare ``Vcpu.run()`` loop."""
    with _machine(exits) as machine:
        vcpu = machine.vcpu
        seen = 0
        start = time.perf_counter()
        while True:
            exit = vcpu.run()
            if type(exit) is IoOut:
                seen += 1
                continue
            if type(exit) is Hlt:
                break
            raise RuntimeError(f"unexpected exit {exit}")
        elapsed = time.perf_counter() - start
    assert seen == exits, (seen, exits)
    return elapsed / exits


def machine_loop(exits: int) -> float:
    """(b) seconds per exit for ``Machine.run()`` with full dispatch."""
    with _machine(exits) as machine:
        start = time.perf_counter()
        stop = machine.run(timeout=600)
        elapsed = time.perf_counter() - start
        assert stop.kind.value == "halt", stop
        assert machine.pio.unclaimed_count == exits
    return elapsed / exits


def c_loop(binary: Path, exits: int) -> float:
    """(c) seconds per exit for the C loop."""
    out = subprocess.run([str(binary), str(GUEST), str(exits)], check=True,
                         capture_output=True, text=True).stdout.split()
    seen, ns = int(out[0]), int(out[1])
    assert seen == exits
    return ns / 1e9 / exits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exits", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    binary = build()
    results: dict[str, list[float]] = {"a": [], "b": [], "c": []}
    for _ in range(args.repeat):  # interleave, so drift hits all three alike
        results["c"].append(c_loop(binary, args.exits))
        results["a"].append(raw_loop(args.exits))
        results["b"].append(machine_loop(args.exits))
    med = {k: statistics.median(v) * 1e6 for k, v in results.items()}
    print(f"exits per run: {args.exits}, runs: {args.repeat} (median shown)")
    print(f"(a) raw Vcpu.run() loop      {med['a']:8.2f} us/exit")
    print(f"(b) Machine.run() dispatch   {med['b']:8.2f} us/exit")
    print(f"(c) C loop                   {med['c']:8.2f} us/exit")
    print(f"(a)/(c) = {med['a'] / med['c']:.2f}  (target <= 1.5)")
    print(f"(b)/(c) = {med['b'] / med['c']:.2f}  (target <= 2.0)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
