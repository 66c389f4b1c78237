"""Exit latency: the cost of one VM exit, Python against C, in one run.

The guest (``guests/asm/portloop.S``) writes N times to port 0x80, which no
device claims, then halts; each write is one VM exit. We time, interleaved
(one round runs every loop once), median of the rounds, CPU and wall:

  (a) a raw loop over ``Vcpu.run()``: the binding's own cost per exit;
  (b) ``Machine.run()`` with nobody listening: the run loop's fast path
      (port read from the run page, bus, stop checks; no objects);
  (c) the same loop in C (``exit_latency.c``), with KVM_CAP_SYNC_REGS on as
      the Python machine has it (KVM copies the registers to the run page
      at every exit; nobody reads them);
  (d) ``Machine.run()`` with one listener that receives every event with
      its RIP (``ExitEvent.rip``) and says it reads no words
      (``words = False``): the events without descriptions, whose exit
      and bus access are made only if read (``core.events.PioEvent``:
      this listener reads neither);
  (dw) (d) with a listener that reads the words of every exit, as the
      trace and the TUI do (a sentence per exit, made while it happens);
  (e) the C loop reading RIP from the synced registers at every exit;
and for information (c0), the C loop without sync regs, and
  (f) the floor of any Python run loop: ``fcntl.ioctl(fd, KVM_RUN)`` and
      the exit reason read from the run page, nothing else -- no device, no
      stop check, no count but the loop's own. What (b) costs above (f) is
      the run loop's; (f) above (c) is the interpreter's own, and on some
      hosts (a cheap ``KVM_RUN``, a slow interpreter) it is a good part of
      the (b)/(c) target already.
(d), (dw) and (e) must sum the same RIPs. Targets: (b)/(c) <= 1.25, (d)/(e) <= 1.6.

Not covered: exits a device claims (the device model's own cost), MMIO
exits, several vCPUs, halt detection (the guest halts with the irqchip off,
so ``hlt`` is an exit of its own).

    python benchmarks/exit_latency.py [--exits N] [--repeat R]
"""

from __future__ import annotations

import argparse
import fcntl
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402
    Clock,
    Rounds,
    Timing,
    build_c,
    load_average,
    print_ratio,
)
from minikvm.kvm import ioctls  # noqa: E402
from minikvm.kvm.exits import Hlt, IoOut  # noqa: E402
from minikvm.kvm.uapi import KvmExit  # noqa: E402
from minikvm.machine import Machine  # noqa: E402

GUEST = ROOT / "guests" / "build" / "portloop.bin"
COUNT_OFFSET = 4  # where portloop keeps its iteration count
TARGETS = {("b", "c"): 1.25, ("d", "e"): 1.6}


def build() -> Path:
    """The guests (make) and the C baseline."""
    subprocess.run(["make", "-s", "-C", str(ROOT / "guests")], check=True)
    return build_c("exit_latency")


def _machine(exits: int, output=None) -> Machine:
    """The portloop guest, loaded and set to do ``exits`` port writes."""
    machine = Machine(output=output)
    machine.load_flat(GUEST, 0x1000)
    machine.memory.write_u32(0x1000 + COUNT_OFFSET, exits)
    return machine


def raw_loop(exits: int) -> Timing:
    """(a) a bare ``Vcpu.run()`` loop."""
    with _machine(exits) as machine:
        vcpu = machine.vcpu
        seen = 0
        with Clock() as clock:
            while True:
                exit = vcpu.run()
                if type(exit) is IoOut:
                    seen += 1
                    continue
                if type(exit) is Hlt:
                    break
                raise RuntimeError(f"unexpected exit {exit}")
    assert seen == exits, (seen, exits)
    return clock.timing.per(exits)


def floor_loop(exits: int) -> Timing:
    """(f) ``fcntl.ioctl(KVM_RUN)`` and the exit reason, the low half of
    the run page's second 64-bit word (``kvm_run.exit_reason``)."""
    io, hlt = int(KvmExit.KVM_EXIT_IO), int(KvmExit.KVM_EXIT_HLT)
    with _machine(exits) as machine:
        vcpu = machine.vcpu
        fd, request, words = vcpu.fd, int(ioctls.KVM_RUN), vcpu.qwords
        seen = 0
        with Clock() as clock:
            while True:
                fcntl.ioctl(fd, request)
                reason = words[1] & 0xFFFF_FFFF
                if reason == io:
                    seen += 1
                    continue
                if reason == hlt:
                    break
                raise RuntimeError(f"unexpected exit reason {reason}")
    assert seen == exits, (seen, exits)
    return clock.timing.per(exits)


def machine_timing(exits: int, listen: bool = False, words: bool = False) -> tuple[Timing, int]:
    """(b), or (d) with ``listen``, or (dw) with ``words`` too:
    ``Machine.run()``; and the sum of the RIPs the listener received (0
    without one)."""
    rips = [0]

    def listener(event) -> None:
        rips[0] += event.rip

    def reader(event) -> None:   # (dw): what a trace pays, the words made for every exit
        rips[0] += event.rip
        if not event.description:
            raise RuntimeError(f"exit {event.seq} came without its words")

    # (d) reads RIP only and says so: no words are made (core/events.wants_words).
    listener.words = False  # type: ignore[attr-defined]

    with _machine(exits) as machine:
        if listen:
            machine.listeners.append(reader if words else listener)
        with Clock() as clock:
            stop = machine.run(timeout=600)
        assert stop.kind.value == "halt", stop
        assert machine.pio.unclaimed_count == exits
    return clock.timing.per(exits), rips[0]


def machine_loop(exits: int) -> float:
    """(b) wall seconds per exit (``tui_overhead.py`` builds on it)."""
    return machine_timing(exits)[0].wall


def c_loop(binary: Path, exits: int, mode: int) -> tuple[Timing, int]:
    """(c) with ``mode`` 1, (e) with 2, (c0) with 0 (see exit_latency.c)."""
    out = subprocess.run([str(binary), str(GUEST), str(exits), str(mode)], check=True,
                         capture_output=True, text=True).stdout.split()
    seen, wall, cpu, rip_sum = (int(word) for word in out)
    assert seen == exits, (seen, exits)
    return Timing(cpu / 1e9, wall / 1e9).per(exits), rip_sum


LABELS = {
    "a": "(a)  raw Vcpu.run() loop",
    "b": "(b)  Machine.run(), no listener",
    "c": "(c)  C loop, sync regs on",
    "d": "(d)  Machine.run(), listener with RIP",
    "dw": "(dw) (d) + the words of every exit",
    "e": "(e)  C loop, RIP from sync regs",
    "c0": "(c0) C loop, no sync regs",
    "f": "(f)  fcntl.ioctl + exit reason: floor",
}


def measure(exits: int, repeat: int) -> Rounds:
    """Every loop, interleaved; checks that (d) and (e) saw the same RIPs."""
    binary = build()
    sums: dict[str, int] = {}

    def keep(key: str, result: tuple[Timing, int]) -> Timing:
        sums[key] = result[1]
        return result[0]

    rounds = Rounds()
    rounds.run(repeat, {
        "c": lambda: c_loop(binary, exits, 1)[0],
        "a": lambda: raw_loop(exits),
        "b": lambda: machine_timing(exits)[0],
        "e": lambda: keep("e", c_loop(binary, exits, 2)),
        "d": lambda: keep("d", machine_timing(exits, listen=True)),
        "dw": lambda: keep("dw", machine_timing(exits, listen=True, words=True)),
        "c0": lambda: c_loop(binary, exits, 0)[0],
        "f": lambda: floor_loop(exits),
    })
    if not sums["d"] == sums["dw"] == sums["e"]:
        raise RuntimeError(f"the listener summed RIPs to {sums['d']:#x}, C to {sums['e']:#x}")
    return rounds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exits", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args(argv)
    print(f"exit latency: {args.exits} exits per run, {args.repeat} interleaved rounds "
          f"(median); {load_average()}")
    rounds = measure(args.exits, args.repeat)
    for key, label in LABELS.items():
        median = rounds.median(key)
        print(f"  {label:<40} CPU {median.cpu * 1e6:6.2f} us/exit  "
              f"wall {median.wall * 1e6:6.2f} us/exit")
    print_ratio("(a)/(c)", rounds.ratio("a", "c"))
    print_ratio("(f)/(c)", rounds.ratio("f", "c"), spread=rounds.spread("f", "c"))
    for (key, baseline), target in TARGETS.items():
        print_ratio(f"({key})/({baseline})", rounds.ratio(key, baseline), target,
                    rounds.spread(key, baseline))
    print_ratio("(dw)/(e)", rounds.ratio("dw", "e"), spread=rounds.spread("dw", "e"))
    print_ratio("(d)/(b)", rounds.ratio("d", "b"))
    print_ratio("(c)/(c0)", rounds.ratio("c", "c0"))
    print(load_average())
    return 0


if __name__ == "__main__":
    sys.exit(main())
