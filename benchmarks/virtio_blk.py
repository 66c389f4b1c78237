"""How fast does the virtio-blk model move data? (the VMM side alone)

Part (a): no guest and no KVM. The driver-side mock queues 64 KiB
sequential reads (header, data, status: the layout Linux uses) in guest
memory; the timed part is what the VMM does on each kick -- walk the chains,
``preadv`` the file straight into guest RAM, write the status bytes and the
used ring. The file is in the page cache after the first pass, so this
measures the device model, not the disk. Target: at least 1 GB/s, which
needs the data copied into guest memory without intermediate copies.

Part (b): end to end. ``guests/c/virtio_blkbench.c`` reads 64 KiB blocks one
after another through a real KVM guest driver (one request in flight, each
completed by an interrupt). We report MB/s, µs per request and VM exits per
request. On kvm-pvm the guest's own ring-0 instructions are emulated one at a
time (~5 µs each), so the driver, not the device model, dominates there.

Run: ``python -m benchmarks.virtio_blk`` (or ``python benchmarks/virtio_blk.py``).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from minikvm.devices.base import RecordingLine
from minikvm.devices.virtio.blk import (
    SECTOR_SIZE,
    VIRTIO_BLK_S_OK,
    VIRTIO_BLK_T_IN,
    VirtioBlk,
)
from minikvm.devices.virtio.mmio import VirtioMmioTransport
from minikvm.devices.virtio.mock import BlkRequest, MockDriver
from minikvm.memory import GuestMemory

__all__ = ["BenchResult", "bench_vmm_side", "main"]


@dataclass(frozen=True)
class BenchResult:
    """What one run measured."""

    request_size: int
    requests: int
    batch: int
    indirect: bool
    #: Seconds spent inside QueueNotify writes (the device model).
    device_seconds: float
    #: Seconds including the mock driver queueing requests and reaping them.
    total_seconds: float

    @property
    def bytes(self) -> int:
        return self.request_size * self.requests

    @property
    def device_mb_per_s(self) -> float:
        return self.bytes / self.device_seconds / 1e6

    @property
    def device_us_per_request(self) -> float:
        return self.device_seconds / self.requests * 1e6

    @property
    def total_mb_per_s(self) -> float:
        return self.bytes / self.total_seconds / 1e6


def bench_vmm_side(total_bytes: int = 256 * 1024 * 1024, request_size: int = 64 * 1024,
                   batch: int = 64, disk_bytes: int = 32 * 1024 * 1024,
                   indirect: bool = False, path: str | None = None) -> BenchResult:
    """Serve ``total_bytes`` of sequential ``request_size`` reads, ``batch``
    requests per kick, from a disk file of ``disk_bytes`` (created in a
    temporary directory unless ``path`` names one); returns the timings."""
    if request_size % SECTOR_SIZE:
        raise ValueError("request size must be whole sectors")
    queue_size = 1 << max(batch * (1 if indirect else 3) - 1, 1).bit_length()
    ram = 2 * 1024 * 1024 + batch * (request_size + 4096) + 32 * queue_size
    ram = -(-ram // 4096) * 4096
    with tempfile.TemporaryDirectory() as scratch:
        if path is None:
            path = os.path.join(scratch, "disk.img")
            with open(path, "wb") as disk:
                disk.write(os.urandom(1024 * 1024) * max(1, disk_bytes // (1024 * 1024)))
        memory = GuestMemory.with_size(ram)
        blk = VirtioBlk(path, read_only=True, queue_max_size=queue_size)
        try:
            transport = VirtioMmioTransport(blk, memory, RecordingLine())
            driver = MockDriver(transport, memory)
            driver.init(queue_size=queue_size)
            queue = driver.queues[0]
            sectors_per_request = request_size // SECTOR_SIZE
            disk_requests = blk.capacity // sectors_per_request
            if disk_requests == 0:
                raise ValueError("disk smaller than one request")
            # Lay out one batch of requests once; each round re-posts them with
            # the next sectors, as a driver reusing its buffers would.
            slots: list[BlkRequest] = [
                driver.blk_request(queue, VIRTIO_BLK_T_IN, 0, data_len=request_size,
                                   indirect=indirect, publish=False)
                for _ in range(batch)
            ]
            for slot in slots:
                queue.pin_chain(slot.head)
            rounds = max(1, total_bytes // (request_size * batch))
            device = 0.0
            started = time.perf_counter()
            next_request = 0
            for _ in range(rounds):
                for slot in slots:
                    sector = (next_request % disk_requests) * sectors_per_request
                    memory.write_u64(slot.header + 8, sector)
                    queue.publish(slot.head)
                    next_request += 1
                t0 = time.perf_counter()
                driver.kick(0)
                device += time.perf_counter() - t0
                used = queue.get_used()
                driver.ack_interrupts()
                if len(used) != batch or any(memory.read_u8(s.status) != VIRTIO_BLK_S_OK
                                             for s in slots):
                    raise RuntimeError(f"requests failed: {transport.state()['last_error']}")
            total = time.perf_counter() - started
        finally:
            blk.close()
    return BenchResult(request_size, rounds * batch, batch, indirect, device, total)


@dataclass(frozen=True)
class EndToEndResult:
    requests: int
    seconds: float
    exits: int
    interrupts: int

    @property
    def mb_per_s(self) -> float:
        return self.requests * 64 * 1024 / self.seconds / 1e6

    @property
    def us_per_request(self) -> float:
        return self.seconds / self.requests * 1e6

    @property
    def exits_per_request(self) -> float:
        return self.exits / self.requests


def bench_end_to_end(requests: int = 256) -> EndToEndResult:
    """(b) the blkbench guest reading ``requests`` × 64 KiB through KVM."""
    import subprocess

    from minikvm.machine import Machine
    from minikvm.x86.layout import RESULT_ADDR

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run(["make", "-s", "-C", os.path.join(root, "guests")], check=True)
    block = 64 * 1024
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "disk.img")
        with open(path, "wb") as file:
            for i in range(requests):
                file.write(bytes([i & 0xFF]) * block)
        with Machine(irqchip=True) as machine:
            machine.add_virtio(VirtioBlk(path))
            machine.load_guest(os.path.join(root, "guests", "build", "virtio_blkbench.elf"))
            machine.memory.write_u64(RESULT_ADDR, requests)
            start = time.perf_counter()
            stop = machine.run(timeout=600)
            seconds = time.perf_counter() - start
            marker, done, interrupts, checksum, failed = (
                machine.memory.read_u64(RESULT_ADDR + 8 * i) for i in range(5))
            if stop.kind.value != "halt" or done != requests or failed:
                raise RuntimeError(f"blkbench guest failed: {stop.message}, {done} done, "
                                   f"status {failed}")
            if checksum != sum(i & 0xFF for i in range(requests)):
                raise RuntimeError("blkbench guest read the wrong data")
            return EndToEndResult(requests, seconds, machine.exit_count, interrupts)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total-mib", type=int, default=256, help="data moved per run")
    parser.add_argument("--request-kib", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64, help="requests per kick")
    parser.add_argument("--guest-requests", type=int, default=256,
                        help="64 KiB reads for part (b), end to end from a guest")
    args = parser.parse_args(argv)
    print("virtio-blk, VMM side alone: sequential reads from a page-cached file")
    print(f"{'layout':<10} {'request':>8} {'batch':>6} {'requests':>9} "
          f"{'device MB/s':>12} {'µs/request':>11} {'with mock MB/s':>15}")
    for indirect in (False, True):
        result = bench_vmm_side(args.total_mib * 1024 * 1024, args.request_kib * 1024,
                                args.batch, indirect=indirect)
        print(f"{'indirect' if indirect else 'direct':<10} {args.request_kib:>6}Ki "
              f"{result.batch:>6} {result.requests:>9} {result.device_mb_per_s:>12.0f} "
              f"{result.device_us_per_request:>11.1f} {result.total_mb_per_s:>15.0f}")
    print()
    print("virtio-blk, end to end from the blkbench guest (one 64 KiB read in flight)")
    e2e = bench_end_to_end(args.guest_requests)
    print(f"requests {e2e.requests}, {e2e.mb_per_s:.1f} MB/s, {e2e.us_per_request:.0f} µs/request, "
          f"{e2e.exits_per_request:.1f} VM exits/request, {e2e.interrupts} interrupts")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
