"""Single-step speed: guest instructions per second under the debugger, Python against C.

The guest (``guests/debug/loop64.S``) is a long-mode counting loop, patched to
run far longer than we step it. From the same starting state we time
  (a) ``Debugger.step_instruction()``: one KVM_RUN with single-step, one
      KVM_GET_REGS (full register capture) and a StepRecord per instruction,
  (b) a bare ``Vcpu.run()`` + ``Vcpu.get_regs()`` loop: the binding's floor,
  (c) the same loop in C (``single_step.c``, compiled here by gcc), which
      loads the vCPU state the Python side wrote (regs, sregs, RAM),
and, for information, (d) = (a) plus ``record.changed`` (the names of the
registers each instruction changed). Both sides must end on the same RIP and
RAX, which proves they stepped the same instructions.
Targets: (a)/(c) <= 1.5, (a) >= 40,000 steps/s.

    python benchmarks/single_step.py [--steps N] [--repeat R]
"""

from __future__ import annotations

import argparse
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from minikvm.debug.debugger import Debugger  # noqa: E402
from minikvm.debug.probe import probe_debug_support  # noqa: E402
from minikvm.guestbuild import assemble  # noqa: E402
from minikvm.kvm.exits import Debug  # noqa: E402
from minikvm.kvm.uapi import (  # noqa: E402
    KVM_GUESTDBG_BLOCKIRQ,
    KVM_GUESTDBG_ENABLE,
    KVM_GUESTDBG_SINGLESTEP,
)
from minikvm.machine import Machine  # noqa: E402

BUILD = ROOT / "benchmarks" / "build"
SOURCE = ROOT / "guests" / "debug" / "loop64.S"
#: Loop passes: far more than any run steps (4 instructions per pass).
PASSES = 1 << 40


def build() -> tuple[Path, Path]:
    BUILD.mkdir(parents=True, exist_ok=True)
    guest = assemble(SOURCE, BUILD).elf
    binary = BUILD / "single_step"
    source = ROOT / "benchmarks" / "single_step.c"
    if not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime:
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(binary), str(source)], check=True)
    return guest, binary


def _machine(guest: Path) -> Machine:
    machine = Machine()
    image = machine.load_elf(guest)
    count = image.symbols.lookup("count")
    machine.memory.write_u64(count.address, PASSES)
    return machine


def write_state(guest: Path, path: Path) -> None:
    """The starting vCPU state for the C loop, in the kernel's struct layouts."""
    with _machine(guest) as machine:
        regs, sregs = machine.vcpu.get_regs(), machine.vcpu.get_sregs()
        size = machine.memory.size
        with open(path, "wb") as file:
            file.write(struct.pack("<Q", size))
            file.write(bytes(regs))
            file.write(bytes(sregs))
            file.write(machine.memory.read(0, size))


def debugger_loop(guest: Path, steps: int, changed: bool = False) -> tuple[float, int, int]:
    """(a), or (d) with ``changed``: seconds per step, final RIP and RAX."""
    with _machine(guest) as machine:
        debugger = Debugger(machine)
        step = debugger.step_instruction
        debugger.step_instruction()   # issue KVM_SET_GUEST_DEBUG outside the timing
        start = time.perf_counter()
        if changed:
            for _ in range(steps):
                step().changed
        else:
            for _ in range(steps):
                step()
        elapsed = time.perf_counter() - start
        regs = machine.vcpu.get_regs()
        return elapsed / steps, regs.rip, regs.rax


def bare_loop(guest: Path, steps: int, blockirq: bool) -> tuple[float, int, int]:
    """(b): Vcpu.run() + Vcpu.get_regs(), nothing else."""
    with _machine(guest) as machine:
        vcpu = machine.vcpu
        vcpu.set_guest_debug(KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP
                             | (KVM_GUESTDBG_BLOCKIRQ if blockirq else 0))
        if type(vcpu.run()) is not Debug:
            raise RuntimeError("the first step did not end in a debug exit")
        start = time.perf_counter()
        for _ in range(steps):
            if type(vcpu.run()) is not Debug:
                raise RuntimeError("a step did not end in a debug exit")
            regs = vcpu.get_regs()
        elapsed = time.perf_counter() - start
        return elapsed / steps, regs.rip, regs.rax


def c_loop(binary: Path, state: Path, steps: int, blockirq: bool) -> tuple[float, int, int]:
    """(c): seconds per step for the C loop."""
    out = subprocess.run([str(binary), str(state), str(steps + 1), str(int(blockirq))],
                         check=True, capture_output=True, text=True).stdout.split()
    return int(out[1]) / 1e9 / (steps + 1), int(out[2]), int(out[3])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    guest, binary = build()
    state = BUILD / "single_step.state"
    write_state(guest, state)
    blockirq = probe_debug_support().block_irq
    results: dict[str, list[float]] = {"a": [], "b": [], "c": [], "d": []}
    finals: dict[str, tuple[int, int]] = {}
    for _ in range(args.repeat):   # interleaved, so drift hits all alike
        for key, run in (("c", lambda: c_loop(binary, state, args.steps, blockirq)),
                         ("a", lambda: debugger_loop(guest, args.steps)),
                         ("b", lambda: bare_loop(guest, args.steps, blockirq)),
                         ("d", lambda: debugger_loop(guest, args.steps, changed=True))):
            seconds, rip, rax = run()
            results[key].append(seconds)
            finals[key] = (rip, rax)
    if len(set(finals.values())) != 1:
        print(f"the loops ended in different states: {finals}", file=sys.stderr)
        return 1
    med = {key: statistics.median(values) for key, values in results.items()}
    rate = {key: 1 / value for key, value in med.items()}
    print(f"steps per run: {args.steps}, runs: {args.repeat} (median shown), "
          f"BLOCKIRQ: {'on' if blockirq else 'off'}; all end at RIP {finals['a'][0]:#x}, "
          f"RAX {finals['a'][1]:#x}")
    labels = {"a": "(a) Debugger.step_instruction()", "b": "(b) bare Vcpu.run()+get_regs()",
              "c": "(c) C loop", "d": "(d) (a) + record.changed"}
    for key, label in labels.items():
        print(f"{label:<34}{med[key] * 1e6:7.2f} us/step {rate[key]:9.0f} steps/s")
    print(f"(a)/(c) = {med['a'] / med['c']:.2f}  (target <= 1.5); "
          f"(a) = {rate['a']:.0f} steps/s (target >= 40000)")
    print(f"(b)/(c) = {med['b'] / med['c']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
