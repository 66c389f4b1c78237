"""Reverse execution: what recording costs per step, and how fast a step back is
with 10k and 1M instructions of history.

The guest is ``guests/debug/loop64.S`` patched to loop far longer than we
step it: four instructions a pass, one of them a store (a dirty page every
pass), so the recorder does every part of its work -- registers, the dirty
log, a page compared with the shadow.

Measured, CPU and wall, median of interleaved rounds:

  (a) ``Debugger.step_instruction()`` with recording off: the baseline;
  (r) the same while recording: (r)/(a) is what the undo log costs;
  (u) ``Debugger.step_back()``, one instruction, and
  (d) redoing it with ``step_instruction()`` (no execution),
      each measured as the mean over ``--undo`` consecutive entries taken
      from the end of a history of ``--history`` instructions (10 000 by
      default; ``--history 1000000`` for the issue's second figure: the
      recording of it takes minutes at the (r) rate, so it runs once);
  (g) ``reverse_cont`` from the end to the start of that history, per
      entry undone: the loop of a reverse-continue with nothing to stop it.

With an undo log a step back costs the same at any depth (one entry put
back); the two history sizes show that, and the bytes each entry is counted
as and the process's peak RSS show what the depth costs in memory.

    python benchmarks/reverse.py [--steps N] [--repeat R] [--history H] [--undo U]
"""

from __future__ import annotations

import argparse
import resource
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import BUILD, Clock, Rounds, Timing, load_average  # noqa: E402

LOOP = ROOT / "guests" / "debug" / "loop64.S"
#: Passes of loop64 patched in: far more than any run here steps.
PASSES = 1 << 40


def make_debugger(guest: Path):
    """A fresh machine on loop64 (patched to loop long) and its debugger."""
    from minikvm.debug.debugger import Debugger
    from minikvm.machine import Machine

    machine = Machine()
    machine.load_elf(guest)
    debugger = Debugger(machine)
    machine.memory.write_u64(debugger.address_of("count"), PASSES)
    return machine, debugger


def build() -> Path:
    from minikvm.guestbuild import assemble
    return assemble(LOOP, BUILD / "guests").elf


def step_cost(guest: Path, steps: int, recording: bool) -> Timing:
    """Per step: ``steps`` instructions stepped with recording on or off."""
    machine, debugger = make_debugger(guest)
    try:
        if recording:
            debugger.record(limit=steps + 1, max_bytes=1 << 34)
        debugger.step_instruction()   # warm: first KVM_SET_GUEST_DEBUG, TLB
        with Clock() as clock:
            for _ in range(steps):
                debugger.step_instruction()
        return clock.timing.per(steps)
    finally:
        debugger.close()
        machine.close()


def history_costs(guest: Path, history: int, undo: int) -> dict[str, object]:
    """Record ``history`` instructions, then time step backs, redos and a
    reverse-continue over all of it."""
    machine, debugger = make_debugger(guest)
    try:
        debugger.record(limit=history, max_bytes=1 << 34)
        with Clock() as clock:
            for _ in range(history):
                debugger.step_instruction()
        recorded = clock.timing.per(history)
        kept = debugger.history
        entry_bytes = kept.bytes / len(kept)
        end = debugger.registers()
        undo = min(undo, history)
        with Clock() as back:
            for _ in range(undo):
                debugger.step_back()
        with Clock() as redo:
            for _ in range(undo):
                debugger.step_instruction()
        assert debugger.registers() == end, "redo did not come back to the end"
        with Clock() as reverse:
            stop = debugger.reverse_cont()
        assert stop.kind.name == "HISTORY_START" and stop.steps == history, stop
        return {"recorded": recorded, "back": back.timing.per(undo),
                "redo": redo.timing.per(undo), "reverse": reverse.timing.per(history),
                "entry_bytes": entry_bytes, "rip": debugger.rip}
    finally:
        debugger.close()
        machine.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5000, help="steps per round for (a), (r)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--history", type=int, default=10_000)
    parser.add_argument("--undo", type=int, default=2000, help="step backs timed (u), (d)")
    args = parser.parse_args(argv)
    guest = build()
    print(load_average())
    rounds = Rounds()
    rounds.run(args.repeat, {"a": lambda: step_cost(guest, args.steps, False),
                             "r": lambda: step_cost(guest, args.steps, True)})
    a, r = rounds.median("a"), rounds.median("r")
    ratio = rounds.ratio("r", "a")
    print(f"(a) step, not recording   CPU {a.cpu * 1e6:7.1f} µs  wall {a.wall * 1e6:7.1f} µs")
    print(f"(r) step, recording       CPU {r.cpu * 1e6:7.1f} µs  wall {r.wall * 1e6:7.1f} µs"
          f"   (r)/(a) CPU {ratio.cpu:.2f} wall {ratio.wall:.2f}")
    costs = history_costs(guest, args.history, args.undo)
    for key, label in (("recorded", "recording the history"), ("back", "(u) step back"),
                       ("redo", "(d) redo"), ("reverse", "(g) reverse-continue")):
        t = costs[key]
        print(f"{label:<26}CPU {t.cpu * 1e6:7.1f} µs  wall {t.wall * 1e6:7.1f} µs per "
              f"instruction, history {args.history:,}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"each entry counted as {costs['entry_bytes']:.0f} bytes; peak RSS {peak:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
