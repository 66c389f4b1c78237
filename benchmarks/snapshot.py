"""Snapshots: how long saving and restoring a machine takes, and how big the file is.

For a 2 MiB and a 256 MiB guest -- hello.bin, run 5 exits, so nearly all
of RAM is untouched -- each round runs, in this order:

  (b)  build a fresh machine of the same board, no guest (``Machine.from_config``
       with the snapshot's configuration): the baseline, what any restore
       pays before it restores anything (KVM_CREATE_VM, RAM, vCPUs, devices);
  (s)  ``save_machine``: complete pending I/O, read every vCPU, the chips,
       the devices, the non-zero pages, write the file (fsync included);
  (r)  ``load_machine``: read and check the whole file, build the machine,
       restore it -- ready to run;
  (f)  (r) and then run the restored guest to its first exit: the guest
       really goes on from where it was.

Each is timed as process CPU and wall time (:mod:`benchmarks.common`); the
medians and the ratios against (b) are printed with the file's size and
the number of pages saved. Closing the machines is not timed. Firecracker's
published figure for resuming (restore) a snapshot is quoted in
benchmarks/README.md.

    python benchmarks/snapshot.py [--repeat R]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import ROOT, Clock, Rounds, Timing, load_average, print_ratio  # noqa: E402
from minikvm.core.config import MachineConfig  # noqa: E402
from minikvm.machine import Machine  # noqa: E402
from minikvm.snapshot.machine_state import load_machine, save_machine  # noqa: E402

SIZES = {"2 MiB": 2 << 20, "256 MiB": 256 << 20}
EXITS = 5


def _quiet(data: bytes) -> None:
    """The guest's output goes nowhere."""


def saved_machine(mem_size: int, path: str) -> tuple[Machine, MachineConfig]:
    guest = ROOT / "guests" / "build" / "hello.bin"
    config = MachineConfig(guest=str(guest), mem_size=mem_size, irqchip=True)
    machine = Machine.from_config(config, output=_quiet)
    machine.run(timeout=30, max_exits=EXITS)
    save_machine(machine, path, config)
    return machine, config


def build(config: MachineConfig) -> Timing:
    bare = MachineConfig(mem_size=config.mem_size, irqchip=config.irqchip)
    with Clock() as clock:
        machine = Machine.from_config(bare, output=_quiet)
    machine.close()
    return clock.timing


def save(machine: Machine, config: MachineConfig, path: str) -> Timing:
    with Clock() as clock:
        save_machine(machine, path, config)
    return clock.timing


def restore(path: str, first_exit: bool = False) -> Timing:
    with Clock() as clock:
        machine, _ = load_machine(path, output=_quiet)
        if first_exit:
            machine.step(explain=False)
    machine.close()
    return clock.timing


def measure(name: str, mem_size: int, repeat: int, workdir: str) -> None:
    path = os.path.join(workdir, f"{mem_size}.snap")
    machine, config = saved_machine(mem_size, path)
    rounds = Rounds()
    try:
        rounds.run(repeat, {"b": lambda: build(config), "s": lambda: save(machine, config, path),
                            "r": lambda: restore(path), "f": lambda: restore(path, True)})
    finally:
        machine.close()
    size = os.path.getsize(path)
    print(f"\n{name} guest, hello.bin after {EXITS} exits: file {size / 1024:.1f} KiB")
    for key, what in (("b", "fresh machine, no guest (baseline)"), ("s", "save"),
                      ("r", "restore"), ("f", "restore + run to the first exit")):
        median = rounds.median(key)
        print(f"  ({key}) {what:<36} CPU {median.cpu * 1000:7.2f} ms  "
              f"wall {median.wall * 1000:7.2f} ms")
    print_ratio("  (r)/(b)", rounds.ratio("r", "b"))
    print_ratio("  (s)/(b)", rounds.ratio("s", "b"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=9, help="rounds (medians of them)")
    parser.add_argument("--sizes", default=",".join(SIZES),
                        help="which guests: '2 MiB', '256 MiB' (comma-separated)")
    args = parser.parse_args()
    print(f"snapshot benchmark, {args.repeat} rounds, {load_average()}")
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.sizes.split(","):
            measure(name.strip(), SIZES[name.strip()], args.repeat, workdir)


if __name__ == "__main__":
    main()
