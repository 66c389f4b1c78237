"""Single-step speed: the debugger stepping real code, Python against C, in one run.

Two guests, each a row of the table:

* ``guests/debug/calls64.S`` -- the headline: code a person steps through,
  calls, push/pop, ``nop``, ``ret`` next to ``movabs`` and friends; 8 of
  its 19 instructions a pass are one-byte steps, after which the stepper
  checks whether it stepped over a ``hlt``;
* ``guests/debug/loop64.S`` -- a four-instruction counting loop with no
  one-byte instruction: the stepper's floor, for comparison.

Both are patched to loop far longer than we step them. From the same
starting state we time, interleaved, median of the rounds, CPU and wall:

  (a) ``Debugger.step_instruction()`` and ``record.changed`` read on every
      record -- what the TUI and the trace do per instruction;
  (c) the same in C (``single_step.c``): KVM_RUN with single-step, the
      registers from the run page (KVM_CAP_SYNC_REGS, regs and sregs, as the
      Python machine asks for), the 18 registers compared with those before
      (that is ``changed``), and after a one-byte step the hlt check (a page
      walk and one byte read);
and for information
  (a0) (a) without ``changed``;
  (b)  a bare ``Vcpu.run()`` + ``Vcpu.get_regs()`` loop: the binding's floor;
  (c0) the old C baseline: KVM_RUN + KVM_GET_REGS, no sync regs, no
       changed, no hlt check.

Both sides must end on the same RIP, RAX and RDX (they stepped the same
instructions) and (a) and (c) must count the same number of changed
registers over the run. Target: (a)/(c) <= 1.3 on calls64.

``--breakdown`` builds the loop up layer by layer on calls64 (the
``fcntl.ioctl`` of ``KVM_RUN`` alone, the call the binding makes, then
the binding, the registers, the stepper, the debugger, ``changed``) and
prints what each layer adds: where the time goes.

``--irqchip`` runs every loop on the board the ``minikvm`` CLI builds by
default, with the in-kernel irqchip and PIT (the Python API's ``Machine()``
has neither): the TUI's and the gdb stub's steps. Where KVM offers
``KVM_GUESTDBG_BLOCKIRQ`` the stepper then reads each instruction's first
byte before it runs instead of after a one-byte step (a ``hlt`` that may
wait for its interrupt, an ``iret``; the second byte after a prefix), and
the C loop does the same.

Not covered: steps that exit to the VMM on the way (``out``, MMIO), which
go through the machine's full exit handling; watchpoints (a step then also
reads memory); ``cont`` with breakpoints that need stepping.

Each CPU figure is split into user+guest and kernel time (``getrusage``'s
system time, which Linux samples at the tick, counting the guest's own
instructions as user time: an estimate over a run of 50,000 steps, coarse
over a short one). Both sides make one ioctl per step, yet the Python loops
spend more of it in the kernel; ``--footprint`` makes the C loop touch
0-256 KiB of data before each step, and its kernel part grows the same way
-- consistent with the Python loop's work leaving the caches colder for the
kernel's next entry, though an interpreter's footprint is also code (the
instruction cache, branch predictors), which a data sweep does not mimic.

``--instructions`` counts instead of timing: each rung of the breakdown
runs under ``valgrind --tool=callgrind`` for 2,000 and for 12,000 steps,
and the difference of the two totals over 10,000 is what one step costs in
user-space instructions (start-up and the kernel's side cancel out). The
count is the same on a busy machine, so an A/B of a change needs no quiet
one; ``callgrind_annotate`` on the files it leaves in benchmarks/build says
where the instructions go.

    python benchmarks/single_step.py [--steps N] [--repeat R] [--breakdown] [--footprint]
                                     [--irqchip]
    python benchmarks/single_step.py --instructions [--irqchip]
"""

from __future__ import annotations

import argparse
import fcntl
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402
    BUILD,
    Clock,
    Rounds,
    Timing,
    build_c,
    load_average,
    print_ratio,
)
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

GUESTS = {"calls64": ROOT / "guests" / "debug" / "calls64.S",
          "loop64": ROOT / "guests" / "debug" / "loop64.S"}
#: Loop passes: far more than any run steps.
PASSES = 1 << 40
TARGET = 1.3


def build() -> tuple[dict[str, Path], Path]:
    """The guests' ELF files and the C baseline."""
    guests = {name: assemble(source, BUILD).elf for name, source in GUESTS.items()}
    return guests, build_c("single_step")


def _machine(guest: Path, irqchip: bool = False) -> Machine:
    machine = Machine(irqchip=irqchip)
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


#: What a loop ended on: RIP, RAX, RDX, and the changed registers counted
#: (None where the loop does not count them).
Final = tuple[int, int, int, "int | None"]


def debugger_loop(guest: Path, steps: int, changed: bool = True,
                  irqchip: bool = False) -> tuple[Timing, Final]:
    """(a), or (a0) without ``changed``."""
    with _machine(guest, irqchip) as machine:
        debugger = Debugger(machine)
        step = debugger.step_instruction
        step()   # issues KVM_SET_GUEST_DEBUG: outside the timing, as in C
        total = 0
        with Clock() as clock:
            if changed:
                for _ in range(steps):
                    total += len(step().changed)
            else:
                for _ in range(steps):
                    step()
        regs = machine.vcpu.get_regs()
        return clock.timing.per(steps), (regs.rip, regs.rax, regs.rdx,
                                         total if changed else None)


def bare_loop(guest: Path, steps: int, blockirq: bool,
              irqchip: bool = False) -> tuple[Timing, Final]:
    """(b): Vcpu.run() + Vcpu.get_regs(), nothing else."""
    with _machine(guest, irqchip) as machine:
        vcpu = machine.vcpu
        vcpu.set_guest_debug(KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP
                             | (KVM_GUESTDBG_BLOCKIRQ if blockirq else 0))
        if type(vcpu.run()) is not Debug:
            raise RuntimeError("the first step did not end in a debug exit")
        with Clock() as clock:
            for _ in range(steps):
                if type(vcpu.run()) is not Debug:
                    raise RuntimeError("a step did not end in a debug exit")
                regs = vcpu.get_regs()
        return clock.timing.per(steps), (regs.rip, regs.rax, regs.rdx, None)


def c_loop(binary: Path, state: Path, steps: int, blockirq: bool,
           sync: bool = True, touch_kb: int = 0, irqchip: bool = False) -> tuple[Timing, Final]:
    """(c), or (c0) with ``sync`` False; with ``touch_kb`` the footprint
    study (``--footprint``)."""
    command = [str(binary), str(state), str(steps), str(int(blockirq)), str(int(sync)),
               str(int(irqchip))]
    if touch_kb:
        command.append(str(touch_kb))
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    _, wall, cpu, rip, rax, rdx, changed, _checks, system = (int(word) for word in out.split())
    return (Timing(cpu / 1e9, wall / 1e9, system / 1e9).per(steps),
            (rip, rax, rdx, changed if sync else None))


def bench_guest(name: str, guest: Path, binary: Path, steps: int, repeat: int,
                blockirq: bool, irqchip: bool = False) -> Rounds:
    """All variants on one guest, interleaved; checks that they agree."""
    state = BUILD / f"single_step-{name}.state"
    write_state(guest, state)
    finals: dict[str, Final] = {}

    def variant(key: str, run):
        def measure() -> Timing:
            timing, final = run()
            finals[key] = final
            return timing
        return measure

    rounds = Rounds()
    rounds.run(repeat, {
        "c": variant("c", lambda: c_loop(binary, state, steps, blockirq, irqchip=irqchip)),
        "a": variant("a", lambda: debugger_loop(guest, steps, irqchip=irqchip)),
        "a0": variant("a0", lambda: debugger_loop(guest, steps, changed=False, irqchip=irqchip)),
        "b": variant("b", lambda: bare_loop(guest, steps, blockirq, irqchip)),
        "c0": variant("c0", lambda: c_loop(binary, state, steps, blockirq, sync=False,
                                           irqchip=irqchip)),
    })
    places = {final[:3] for final in finals.values()}
    if len(places) != 1:
        raise RuntimeError(f"{name}: the loops ended in different states: {finals}")
    if finals["a"][3] != finals["c"][3]:
        raise RuntimeError(f"{name}: Python counted {finals['a'][3]} changed registers, "
                           f"C {finals['c'][3]}")
    return rounds


def ladder_loop(guest: Path, steps: int, rung: str, blockirq: bool,
                irqchip: bool = False) -> Timing:
    """One rung of ``--breakdown``: the stepping loop built up piece by piece."""
    from minikvm.debug import stepper
    from minikvm.kvm import ioctls

    with _machine(guest, irqchip) as machine:
        debugger = Debugger(machine)
        debugger.step_instruction()   # guest debugging on, as in every loop here
        vcpu = machine.vcpu
        with Clock() as clock:
            if rung == "ioctl":
                # The call Vcpu.run_reason makes (fcntl.ioctl, no argument).
                fd, request, run = vcpu.fd, int(ioctls.KVM_RUN), fcntl.ioctl
                for _ in range(steps):
                    run(fd, request)
            elif rung == "run_reason":
                run_reason = debugger.runner.run_reason
                for _ in range(steps):
                    run_reason(())   # what the stepper writes out, as a call (nobody listens)
            elif rung == "unpack":
                # What the stepper reads after its run (untimed: nobody listens).
                run_reason, page, qwords = debugger.runner.run_reason, vcpu.page, vcpu.qwords
                pc_index, dr6_index = stepper._PC_INDEX, stepper._DR6_INDEX
                regs, regs_offset = stepper._SYNCED_REGS, stepper._SYNCED_REGS_OFFSET
                for _ in range(steps):
                    run_reason(())
                    qwords[dr6_index]
                    qwords[pc_index]
                    regs.unpack_from(page, regs_offset)
            elif rung == "stepper":
                step = debugger.stepper.step
                for _ in range(steps):
                    step()
            elif rung == "debugger":
                step = debugger.step_instruction
                for _ in range(steps):
                    step()
            else:
                step = debugger.step_instruction
                for _ in range(steps):
                    step().changed
        return clock.timing.per(steps)


RUNGS = {
    "ioctl": "fcntl.ioctl(KVM_RUN) alone: the floor of any Python loop",
    "run_reason": "+ VcpuRunner.run_reason() (clock, counts, exit reason)",
    "unpack": "+ pc and DR6 (two words), the 18 synced registers",
    "stepper": "Stepper.step() (+ StepRecord, view, hlt check via TLB)",
    "debugger": "Debugger.step_instruction() (+ watchpoint check)",
    "changed": "+ record.changed",
}


#: Steps of the two runs of ``--instructions``: what the second runs more,
#: over the difference, is one step.
INSTRUCTION_RUNS = (2_000, 12_000)


def callgrind_total(out_file: Path) -> int:
    """The instruction total a callgrind output file ends with."""
    match = re.search(r"^(?:summary|totals): (\d+)", out_file.read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"{out_file}: no instruction total")
    return int(match.group(1))


def instructions(blockirq: bool, irqchip: bool = False) -> int:
    """``--instructions``: user-space instructions per step of each rung, on calls64."""
    print(f"instructions per step, calls64{BOARDS[irqchip]} (callgrind, steps "
          f"{INSTRUCTION_RUNS[1]} minus {INSTRUCTION_RUNS[0]}):")
    env = dict(os.environ, PYTHONHASHSEED="0")   # the same dictionaries every run
    previous = None
    for rung, label in RUNGS.items():
        totals = []
        for steps in INSTRUCTION_RUNS:
            out_file = BUILD / f"single_step.callgrind.{rung}.{steps}"
            command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_file}",
                       sys.executable, __file__, "--rung", rung, "--steps", str(steps),
                       "--blockirq", str(int(blockirq))] + (["--irqchip"] if irqchip else [])
            try:
                subprocess.run(command, check=True, capture_output=True, env=env)
            except FileNotFoundError:
                print("single_step: --instructions needs valgrind", file=sys.stderr)
                return 2
            totals.append(callgrind_total(out_file))
        per_step = (totals[1] - totals[0]) // (INSTRUCTION_RUNS[1] - INSTRUCTION_RUNS[0])
        step = "" if previous is None else f"  step {per_step - previous:+7,d}"
        print(f"  {label:<58} {per_step:7,d}{step}")
        previous = per_step
    return 0


def breakdown(name: str, guest: Path, binary: Path, steps: int, repeat: int,
              blockirq: bool, irqchip: bool = False) -> None:
    """Where the time of (a) goes: each rung adds one layer, against (c)."""
    state = BUILD / f"single_step-{name}.state"
    write_state(guest, state)
    rounds = Rounds()
    variants = {"c": lambda: c_loop(binary, state, steps, blockirq, irqchip=irqchip)[0]}
    for rung in RUNGS:
        variants[rung] = lambda rung=rung: ladder_loop(guest, steps, rung, blockirq, irqchip)
    rounds.run(repeat, variants)
    c = rounds.median("c")
    print(f"\nwhere the time goes, {name}{BOARDS[irqchip]} (median CPU per step; ratio to (c) "
          f"{c.cpu * 1e6:.2f} us, {_split(c)}):")
    previous = None
    for rung, label in RUNGS.items():
        median = rounds.median(rung)
        step = "" if previous is None else f"  step {1e6 * (median.cpu - previous.cpu):+6.2f} us"
        print(f"  {label:<58} CPU {median.cpu * 1e6:6.2f} us  x{median.cpu / c.cpu:4.2f}{step}"
              f"  {_split(median)}")
        previous = median


def _split(timing: Timing) -> str:
    """``user+guest 3.96 + kernel 10.07``: the CPU time of a step by where
    it was spent, sampled (:class:`~benchmarks.common.Timing`: the guest's
    own instructions are counted with user space). Both sides run the same
    guest instructions, so the difference of the first parts is the Python
    side's user space; and though both make one ioctl per step, the Python
    loops' kernel part is larger (``--footprint``)."""
    if timing.system is None:
        return ""
    user = max(timing.cpu - timing.system, 0.0)   # the two clocks are read apart
    return f"user+guest {user * 1e6:5.2f} + kernel {timing.system * 1e6:5.2f}"


#: How the headings name the board: no irqchip (the Python API's default),
#: or the CLI's (``--irqchip``).
BOARDS = {False: "", True: ", irqchip and PIT"}


#: Footprints of ``--footprint``: KiB the C loop touches before each step.
FOOTPRINTS = (0, 16, 64, 256)


def footprint(name: str, guest: Path, binary: Path, steps: int, repeat: int,
              blockirq: bool, irqchip: bool = False) -> None:
    """``--footprint``: why instructions may not be the whole story. The C
    loop (c), made to touch one byte in each cache line of a buffer before
    every ``KVM_RUN``, against (a) and (a0): if the kernel's part of a step
    grows with what user space touched in between (the caches the kernel's
    next entry finds colder), a Python loop pays in the kernel too, and a
    cut in its instructions buys less than their own time. A data sweep
    only stands in for an interpreter, whose footprint is code as well."""
    state = BUILD / f"single_step-{name}.state"
    write_state(guest, state)
    variants = {f"c+{kb}": (lambda kb=kb: c_loop(binary, state, steps, blockirq, touch_kb=kb,
                                                 irqchip=irqchip)[0])
                for kb in FOOTPRINTS}
    variants["a"] = lambda: debugger_loop(guest, steps, irqchip=irqchip)[0]
    variants["a0"] = lambda: debugger_loop(guest, steps, changed=False, irqchip=irqchip)[0]
    rounds = Rounds()
    rounds.run(repeat, variants)
    print(f"\nfootprint study, {name}{BOARDS[irqchip]} (median per step; the kernel's part "
          "sampled):")
    for key in variants:
        label = (f"(c) touching {key[2:]} KiB before each step" if key.startswith("c+")
                 else LABELS[key])
        median = rounds.median(key)
        print(f"  {label:<48} CPU {median.cpu * 1e6:6.2f} us  {_split(median)}")


LABELS = {
    "a": "(a)  Debugger.step_instruction() + changed",
    "c": "(c)  C: sync regs + changed + hlt check",
    "a0": "(a0) Debugger.step_instruction() alone",
    "b": "(b)  bare Vcpu.run() + get_regs()",
    "c0": "(c0) C: KVM_RUN + KVM_GET_REGS (old baseline)",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--guest", choices=sorted(GUESTS), action="append",
                        help="only this guest (default: both)")
    parser.add_argument("--breakdown", action="store_true",
                        help="also build the stepping loop up layer by layer (on calls64) "
                             "to show where the time goes")
    parser.add_argument("--instructions", action="store_true",
                        help="count user-space instructions per step of each breakdown rung "
                             "under valgrind's callgrind instead of timing")
    parser.add_argument("--footprint", action="store_true",
                        help="also run the footprint study: the C loop touching 0-256 KiB "
                             "between steps, its kernel time against (a)'s")
    parser.add_argument("--irqchip", action="store_true",
                        help="on the minikvm CLI's default board: the in-kernel irqchip and PIT "
                             "on both sides (the stepper then reads each instruction's first "
                             "byte before it runs: a hlt that may wait, an iret)")
    parser.add_argument("--rung", choices=sorted(RUNGS), help=argparse.SUPPRESS)
    parser.add_argument("--blockirq", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    guests, binary = build()
    if args.rung is not None:   # one run of --instructions, under callgrind
        ladder_loop(guests["calls64"], args.steps, args.rung, bool(args.blockirq), args.irqchip)
        return 0
    blockirq = probe_debug_support().block_irq
    irqchip = args.irqchip
    if args.instructions:
        return instructions(blockirq, irqchip)
    print(f"single-step{BOARDS[irqchip]}: {args.steps} steps per run, {args.repeat} interleaved "
          f"rounds (median), BLOCKIRQ {'on' if blockirq else 'off'}; {load_average()}")
    for name in args.guest or GUESTS:
        rounds = bench_guest(name, guests[name], binary, args.steps, args.repeat, blockirq,
                             irqchip)
        print(f"\n{name}")
        for key, label in LABELS.items():
            median = rounds.median(key)
            print(f"  {label:<48} CPU {median.cpu * 1e6:6.2f} us/step  "
                  f"wall {median.wall * 1e6:6.2f} us/step  {_split(median)}")
        print_ratio("  (a)/(c)", rounds.ratio("a", "c"), TARGET if name == "calls64" else None,
                    rounds.spread("a", "c"))
        print_ratio("  (a0)/(c)", rounds.ratio("a0", "c"), spread=rounds.spread("a0", "c"))
        print_ratio("  (b)/(c)", rounds.ratio("b", "c"))
    if args.breakdown:
        breakdown("calls64", guests["calls64"], binary, args.steps, args.repeat, blockirq,
                  irqchip)
    if args.footprint:
        footprint("calls64", guests["calls64"], binary, args.steps, args.repeat, blockirq,
                  irqchip)
    print(f"\n{load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
