"""Runs one hostile guest in a process of its own and reports as one JSON line.

tests/test_hostile_guests.py starts it with ``python -m tests.hostile_driver``
so that the peak resident memory (``ru_maxrss``) it reports belongs to that
one run and nothing else::

    python -m tests.hostile_driver sweep MMIO PORTS FLOOD [--trace FILE]
    python -m tests.hostile_driver virtio ROUNDS IMAGE [--ro]

``sweep`` runs guests/c/sweep.c: MMIO addresses and ports nobody decodes,
then FLOOD bytes to the debug console; the output is checked as it arrives
(byte i of the flood is i & 0xff) and not kept, as a terminal would not
keep it. ``--trace FILE`` attaches the JSON Lines tracer of ``minikvm run
--trace``. ``virtio`` runs guests/c/virtio_hostile.c for ROUNDS rounds
against a virtio-blk device on IMAGE and reports every successful write
request (sector, bytes), so the caller can tell the guest's own writes from
damage. Zero amounts give the baseline: the same process doing no work.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from pathlib import Path

from minikvm.devices.virtio.blk import SECTOR_SIZE, VIRTIO_BLK_S_OK, VirtioBlk
from minikvm.machine import Machine
from minikvm.x86.layout import RESULT_ADDR

BUILD = Path(__file__).resolve().parent.parent / "guests" / "build"
PARAMS = RESULT_ADDR + 0x800
SWEEP_MAGIC = 0x5357454550
HOSTILE_MAGIC = 0x4C4954534F48


class FloodChecker:
    """The machine's output sink: checks the flood byte by byte, keeps only the tail."""

    def __init__(self, flood: int) -> None:
        self.flood = flood
        self.seen = 0
        self.wrong = 0
        self.tail = bytearray()

    def __call__(self, data: bytes) -> None:
        for byte in data:
            if self.seen < self.flood:
                self.wrong += byte != (self.seen & 0xFF)
            else:
                self.tail.append(byte)
                del self.tail[:-200]
            self.seen += 1


class RecordingBlk(VirtioBlk):
    """A virtio-blk device that notes every write request it carried out."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.writes: list[tuple[int, int]] = []

    def _write(self, chain, sector, length):
        status, written = super()._write(chain, sector, length)
        if status == VIRTIO_BLK_S_OK and length:
            self.writes.append((sector * SECTOR_SIZE, length))
        return status, written


def results(machine: Machine, count: int) -> list[int]:
    return [machine.memory.read_u64(RESULT_ADDR + 8 * i) for i in range(count)]


def sweep(args: argparse.Namespace) -> dict:
    sink = FloodChecker(args.flood)
    with Machine(output=sink) as machine:
        machine.load_guest(BUILD / "sweep.elf")
        for i, value in enumerate((SWEEP_MAGIC, args.mmio, 0x4000_0000, 8, args.ports,
                                   0x1000, args.flood)):
            machine.memory.write_u64(PARAMS + 8 * i, value)
        tracer = None
        if args.trace:
            from minikvm.cli.trace import attach_trace_file
            tracer = attach_trace_file(machine, args.trace)
        stop = machine.run(timeout=args.timeout)
        report = {"results": results(machine, 5), "exits": machine.exit_count}
        if tracer is not None:
            tracer.close()
            report["stats_rows"] = len(tracer.stats.by_port)
    report.update(stop=stop.kind.value, status=stop.status, output=sink.seen,
                  flood_wrong=sink.wrong, tail=sink.tail.decode("latin-1"))
    return report


def virtio(args: argparse.Namespace) -> dict:
    output = bytearray()
    with Machine(output=output.extend) as machine:
        blk = RecordingBlk(args.image, read_only=args.ro)
        transport = machine.add_virtio(blk)
        machine.load_guest(BUILD / "virtio_hostile.elf")
        machine.memory.write_u64(PARAMS, HOSTILE_MAGIC)
        machine.memory.write_u64(PARAMS + 8, args.rounds)
        stop = machine.run(timeout=args.timeout)
        report = {"results": results(machine, 7), "exits": machine.exit_count,
                  "transport": dict(transport.counters), "blk": dict(blk.counters),
                  "writes": blk.writes}
    report.update(stop=stop.kind.value, status=stop.status,
                  output=bytes(output[-300:]).decode("latin-1"))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.hostile_driver")
    parser.add_argument("--timeout", type=float, default=120.0)
    sub = parser.add_subparsers(dest="guest", required=True)
    s = sub.add_parser("sweep")
    s.add_argument("mmio", type=int)
    s.add_argument("ports", type=int)
    s.add_argument("flood", type=int)
    s.add_argument("--trace", default=None)
    v = sub.add_parser("virtio")
    v.add_argument("rounds", type=int)
    v.add_argument("image")
    v.add_argument("--ro", action="store_true")
    args = parser.parse_args(argv)
    report = sweep(args) if args.guest == "sweep" else virtio(args)
    report["maxrss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
