"""The check of the SMP exercise (11): a spinlock that holds across vCPUs.

The learner writes ``spin_lock``/``spin_unlock``; the guest around them
(``guests/include/lock_exercise.h``) starts four vCPUs and has each add 1 to
a shared counter under the lock, with a VM exit in the middle of every
increment. The guest keeps its counters in the result page -- the total,
how often a CPU entered while another was inside, each CPU's progress, the
lock word -- so the check reads what happened from guest memory, stuck or
not. A race need not show on every run, so the count is run three times.
"""

from __future__ import annotations

import struct
from pathlib import Path

from minikvm.core.stop import StopKind
from minikvm.guestbuild import compile_c
from minikvm.lessons import learner
from minikvm.lessons.verdict import Verdict, not_yet, passed, printable, stop_words

__all__ = ["CPUS", "ROUNDS", "RUNS", "check_11"]

#: vCPUs the check runs, rounds each CPU counts (lock_exercise.h), runs made.
CPUS = 4
ROUNDS = 200
RUNS = 3
_MARKER = 0x4B434F4C            # "LOCK"
_HEADER = struct.Struct("<9I")  # marker cpus lock counter inside overlaps started finished done
_RESULT_ADDR = 0x60000


def _shared(machine) -> dict:
    raw = machine.memory.read(_RESULT_ADDR, _HEADER.size + 4 * CPUS)
    names = ("marker", "cpus", "lock", "counter", "inside", "overlaps", "started", "finished",
             "done")
    shared = dict(zip(names, _HEADER.unpack_from(raw)))
    shared["progress"] = list(struct.unpack_from(f"<{CPUS}I", raw, _HEADER.size))
    return shared


def _run_once(elf: Path) -> tuple:
    from minikvm.core.config import MachineConfig
    from minikvm.machine import Machine

    output: list[bytes] = []
    config = MachineConfig(guest=str(elf), vcpus=CPUS, irqchip=True)
    timeout = learner.GUEST_TIMEOUT
    with Machine.from_config(config, output=output.append) as machine:
        stop = machine.run(timeout=timeout)
        return stop, _shared(machine), b"".join(output), timeout


def check_11(path: Path, work: Path) -> Verdict:
    """Four CPUs count to CPUS * ROUNDS under the learner's spinlock, with
    nobody ever inside the critical section together, three runs out of three."""
    elf = compile_c(path, work, bits=32)
    expected = CPUS * ROUNDS
    for run in range(1, RUNS + 1):
        stop, shared, output, timeout = _run_once(elf)
        seen = f"The guest printed {printable(output)} and {stop_words(stop, timeout)}."
        progress = ", ".join(f"CPU {cpu}: {done}" for cpu, done in
                             enumerate(shared["progress"]))
        if shared["marker"] != _MARKER:
            return not_yet("The guest never started counting (the shared page has no "
                           "marker): did the file keep `#include \"lock_exercise.h\"`?", seen)
        if shared["started"] != CPUS - 1:
            return not_yet(f"Only {shared['started']} of {CPUS - 1} application processors "
                           "arrived; the lock had nothing to do with it.", seen)
        if stop.kind is StopKind.TIMEOUT or not shared["done"]:
            if shared["lock"]:
                return not_yet(
                    "The CPUs got stuck: the lock word is still 1, so every spin_lock waits "
                    "for a lock that nobody gives back. spin_unlock must store 0 in it.",
                    f"Rounds done per CPU ({ROUNDS} each to do): {progress}.", seen)
            return not_yet(
                "The CPUs got stuck although the lock word reads 0 (free): spin_lock keeps "
                "spinning on a free lock. Check what its loop waits for.",
                f"Rounds done per CPU: {progress}.", seen)
        if stop.crashed:
            return not_yet(f"The guest crashed: {stop.message}.", seen)
        lost = expected - shared["counter"]
        if shared["overlaps"] or lost:
            return not_yet(
                f"In run {run}, {shared['overlaps']} times a CPU entered the critical section "
                f"while another was inside, and the counter ended at {shared['counter']} of "
                f"{expected}: {lost} increments were overwritten. spin_lock must test the "
                "lock and take it in one indivisible step (an `xchg`, or a `lock cmpxchg`); "
                "a read followed by a write lets two CPUs see 0 and both go in.",
                f"Rounds done per CPU: {progress}.", seen)
    return passed(f"{CPUS} CPUs counted to {expected} under your lock, {RUNS} runs out of "
                  f"{RUNS}, and no CPU ever entered while another was inside: your spinlock "
                  "holds across vCPUs running at the same time on the host.",
                  "Each increment had a VM exit in its middle; the lock kept every other "
                  "CPU spinning until it was over.")
