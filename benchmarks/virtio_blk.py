"""How fast does the virtio-blk model move data? The device alone against
``preadv`` on the same file, and end to end through a guest driver.

Part (a), the VMM side alone: no guest and no KVM. The driver-side mock
queues 64 KiB sequential reads (header, data, status: the layout Linux
uses) in guest memory; the timed part is what the VMM does on each kick --
walk the chains, ``preadv`` the file straight into guest RAM, write the
status bytes and the used ring. The baseline, in the same run and
interleaved with it (median of the rounds, CPU and wall): the same reads of
the same file done with ``os.preadv`` straight into the same guest RAM, one
call per request and nothing else -- the floor for any device model that
copies the data once. The ratio device/baseline is the device model's
overhead per byte. The file is in the page cache after the first pass, so
this measures the device model, not the disk.

Part (b), end to end: ``guests/c/virtio_blkbench.c`` reads 64 KiB blocks
one after another through a real KVM guest driver (one request in flight,
each completed by an interrupt). The time runs from ``Machine.run()`` to the
guest's *last exit* (the machine's ``until`` hook stamps every exit), not to
the moment the run returns: with the in-kernel irqchip the final ``hlt``
makes no exit, and noticing it (the watchdog's halt check) is not part of
moving data; that delay is printed on its own. On kvm-pvm the guest's own
ring-0 instructions are emulated one at a time (~5 µs each), so the driver,
not the device model, dominates there.

Not covered: writes, flushes, several requests in flight from a guest,
indirect descriptors end to end, a cold page cache.

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
# (benchmarks.common is imported below, after the path is set.)

from benchmarks.common import load_average
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

__all__ = ["BenchResult", "bench_preadv", "bench_vmm_side", "main"]


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
    #: Process CPU seconds spent inside QueueNotify writes.
    device_cpu_seconds: float = 0.0

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
            device = device_cpu = 0.0
            started = time.perf_counter()
            next_request = 0
            for _ in range(rounds):
                for slot in slots:
                    sector = (next_request % disk_requests) * sectors_per_request
                    memory.write_u64(slot.header + 8, sector)
                    queue.publish(slot.head)
                    next_request += 1
                t0, c0 = time.perf_counter(), time.process_time()
                driver.kick(0)
                device += time.perf_counter() - t0
                device_cpu += time.process_time() - c0
                used = queue.get_used()
                driver.ack_interrupts()
                if len(used) != batch or any(memory.read_u8(s.status) != VIRTIO_BLK_S_OK
                                             for s in slots):
                    raise RuntimeError(f"requests failed: {transport.state()['last_error']}")
            total = time.perf_counter() - started
        finally:
            blk.close()
    return BenchResult(request_size, rounds * batch, batch, indirect, device, total, device_cpu)


def make_disk(path: str, disk_bytes: int = 32 * 1024 * 1024) -> str:
    """A disk image of ``disk_bytes`` of random data (whole MiB)."""
    with open(path, "wb") as disk:
        disk.write(os.urandom(1024 * 1024) * max(1, disk_bytes // (1024 * 1024)))
    return path


def bench_preadv(path: str, total_bytes: int = 256 * 1024 * 1024,
                 request_size: int = 64 * 1024, batch: int = 64) -> tuple[float, float]:
    """The baseline of (a): the same sequential reads of the same file into
    guest RAM (``batch`` buffers, reused round after round) with one
    ``os.preadv`` per request and nothing else. Returns (wall, CPU) seconds
    for ``total_bytes``."""
    memory = GuestMemory.with_size(2 * 1024 * 1024 + batch * request_size)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        views = [memory.view(2 * 1024 * 1024 + i * request_size, request_size)
                 for i in range(batch)]
        disk_requests = os.fstat(fd).st_size // request_size
        requests = max(1, total_bytes // (request_size * batch)) * batch
        preadv = os.preadv
        c0, t0 = time.process_time(), time.perf_counter()
        for n in range(requests):
            offset = (n % disk_requests) * request_size
            if preadv(fd, [views[n % batch]], offset) != request_size:
                raise RuntimeError("short read")
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        for view in views:
            view.release()
    finally:
        os.close(fd)
        memory.close()
    return wall, cpu


@dataclass(frozen=True)
class EndToEndResult:
    requests: int
    #: From Machine.run() to the guest's last exit.
    seconds: float
    exits: int
    interrupts: int
    #: From the guest's last exit to Machine.run() returning (halt detection).
    halt_seconds: float = 0.0

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
            last_exit = [0.0]

            def stamp() -> bool:
                """Called by the run loop after every exit: when was the last."""
                last_exit[0] = time.perf_counter()
                return False

            start = time.perf_counter()
            stop = machine.run(timeout=600, until=stamp)
            returned = time.perf_counter()
            seconds = last_exit[0] - start
            marker, done, interrupts, checksum, failed = (
                machine.memory.read_u64(RESULT_ADDR + 8 * i) for i in range(5))
            if stop.kind.value != "halt" or done != requests or failed:
                raise RuntimeError(f"blkbench guest failed: {stop.message}, {done} done, "
                                   f"status {failed}")
            if checksum != sum(i & 0xFF for i in range(requests)):
                raise RuntimeError("blkbench guest read the wrong data")
            return EndToEndResult(requests, seconds, machine.exit_count, interrupts,
                                  returned - last_exit[0])


def main(argv: list[str] | None = None) -> int:
    import argparse
    import statistics

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total-mib", type=int, default=256, help="data moved per run")
    parser.add_argument("--request-kib", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64, help="requests per kick")
    parser.add_argument("--repeat", type=int, default=5, help="interleaved rounds of (a)")
    parser.add_argument("--guest-requests", type=int, default=256,
                        help="64 KiB reads for part (b), end to end from a guest")
    args = parser.parse_args(argv)
    total, request = args.total_mib * 1024 * 1024, args.request_kib * 1024
    print(f"virtio-blk; {load_average()}")
    print(f"(a) VMM side alone: sequential {args.request_kib} KiB reads from a page-cached "
          f"file, {args.batch} per kick, {args.total_mib} MiB per run, {args.repeat} "
          f"interleaved rounds (median)")
    runs: dict[str, list[tuple[float, float]]] = {"direct": [], "indirect": [], "preadv": []}
    with tempfile.TemporaryDirectory() as scratch:
        path = make_disk(os.path.join(scratch, "disk.img"))
        for _ in range(args.repeat):
            bench_preadv(path, total, request, args.batch)      # the page cache, warm
            runs["preadv"].append(bench_preadv(path, total, request, args.batch))
            for indirect in (False, True):
                result = bench_vmm_side(total, request, args.batch, indirect=indirect, path=path)
                runs["indirect" if indirect else "direct"].append(
                    (result.device_seconds, result.device_cpu_seconds))
    moved = max(1, total // (request * args.batch)) * args.batch * request
    median = {key: (statistics.median(w for w, _ in values),
                    statistics.median(c for _, c in values))
              for key, values in runs.items()}
    print(f"  {'':<28} {'MB/s (wall)':>12} {'MB/s (CPU)':>12} {'µs/request':>11}")
    for key, label in (("direct", "device, direct descriptors"),
                       ("indirect", "device, indirect descriptors"),
                       ("preadv", "baseline: os.preadv")):
        wall, cpu = median[key]
        print(f"  {label:<28} {moved / wall / 1e6:12.0f} {moved / cpu / 1e6:12.0f} "
              f"{wall / (moved / request) * 1e6:11.1f}")
    for key in ("direct", "indirect"):
        wall, cpu = median[key]
        print(f"  {key + '/preadv (time per byte)':<40} CPU {cpu / median['preadv'][1]:5.2f}  "
              f"wall {wall / median['preadv'][0]:5.2f}")
    print()
    print("(b) end to end from the blkbench guest (one 64 KiB read in flight), to its last exit")
    e2e = bench_end_to_end(args.guest_requests)
    print(f"  requests {e2e.requests}, {e2e.mb_per_s:.1f} MB/s, "
          f"{e2e.us_per_request:.0f} µs/request, "
          f"{e2e.exits_per_request:.1f} VM exits/request, {e2e.interrupts} interrupts; "
          f"then {e2e.halt_seconds * 1e3:.1f} ms until the halt was noticed (not counted)")
    print(load_average())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
