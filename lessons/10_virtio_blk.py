"""Lesson 10: virtio-blk, end to end -- from a guest's request to a host file.

Run it: ``python lessons/10_virtio_blk.py`` (``--quiet``: checkpoints only).
Exercise: ``lessons/exercises/10_get_id.md``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

from _common import Lesson, hexdump, run_lesson

from minikvm.devices.virtio.blk import (
    SECTOR_SIZE,
    VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
    VirtioBlk,
)
from minikvm.devices.virtio.mock import mock_device
from minikvm.devices.virtio.queue import VIRTQ_DESC_SIZE, Descriptor
from minikvm.machine import Machine

SECTORS = 8
SECTOR0 = b"minikvm disk: sector 0 says hello\n"
STATUS_NAMES = {VIRTIO_BLK_S_OK: "OK", VIRTIO_BLK_S_IOERR: "IOERR",
                VIRTIO_BLK_S_UNSUPP: "UNSUPP", 0xFF: "(not written)"}


def make_disk(folder: str) -> Path:
    """A 4 KiB disk image: text in sector 0, zeros elsewhere."""
    path = Path(folder) / "disk.img"
    path.write_bytes(SECTOR0.ljust(SECTORS * SECTOR_SIZE, b"\0"))
    return path


def main(argv: Sequence[str] | None = None) -> int:
    lesson = Lesson("10", "virtio-blk end to end", argv)
    lesson.narrate("""
        The last lesson puts everything together: a disk. A guest's block driver asks for
        sectors; the request travels as descriptors in guest memory (lesson 09), one MMIO
        exit kicks the device, the VMM reads the host file *straight into guest memory*,
        and an interrupt (lesson 08) tells the guest it is done. This is how QEMU and
        Firecracker give Linux its disks.
    """)
    with tempfile.TemporaryDirectory(prefix="minikvm-lesson10-") as folder:
        disk = make_disk(folder)
        by_hand(lesson, disk)
        with_a_guest(lesson, disk)
    lesson.narrate("""
        That is the whole stack of this course: a VM and its memory (lessons 01-02), exits
        and devices (03, 08, 09), the CPU modes a guest runs in (04-06), a debugger to watch
        it (07), and virtio (09-10), where the data moves through shared memory and only
        the doorbell and the interrupt cross between guest and VMM.

        **Exercise 10** (`lessons/exercises/10_get_id.md`): add a request type to the
        guest's driver, and read the disk's serial number. `minikvm lesson check 10`.
    """)
    return lesson.finish()


def by_hand(lesson: Lesson, disk: Path) -> None:
    lesson.section("1. A virtio-blk request: three parts")
    lesson.narrate("""
        Every virtio-blk request (virtio 1.2 §5.2.6) is one chain holding, in this order:

        - a 16-byte **header** the device reads: `le32 type` (`VIRTIO_BLK_T_IN` = 0 read,
          `_OUT` = 1 write, `_FLUSH` = 4, `_GET_ID` = 8 ...), `le32 reserved`, `le64 sector`;
        - the **data**: written by the device for a read, read by it for a write;
        - one **status** byte the device writes: `VIRTIO_BLK_S_OK` (0), `_IOERR` (1),
          `_UNSUPP` (2).

        Sectors are always 512 bytes. The disk here is a 4 KiB file; sector 0 holds a line
        of text. First from Python, with the mock driver as the guest:
    """)
    device = mock_device(VirtioBlk(disk, serial="lesson10-disk"), ram_size=1 << 20)
    driver, memory = device.driver, device.memory
    driver.init(queue_size=8)
    queue = driver.queues[0]
    capacity = driver.read_config(0, 8)
    lesson.result("config space: capacity (sectors of 512 bytes)", capacity)
    lesson.checkpoint("capacity", capacity, SECTORS)

    lesson.narrate("""
        A read of sector 0. The mock driver lays out header, data and status in its memory
        and posts them as one chain:
    """)
    lesson.code("""
        request = driver.blk_request(queue, VIRTIO_BLK_T_IN, sector=0, data_len=512)
        driver.kick(0)                     # QueueNotify
        queue.get_used()                   # [UsedElement(id=0, len=513)]
    """)
    request = driver.blk_request(queue, VIRTIO_BLK_T_IN, sector=0, data_len=SECTOR_SIZE)
    table = memory.read(queue.desc_table, 3 * VIRTQ_DESC_SIZE)
    decoded = [Descriptor.unpack(table[i:i + VIRTQ_DESC_SIZE])
               for i in range(0, len(table), VIRTQ_DESC_SIZE)]
    lesson.block("the descriptor table, one descriptor per line:\n"
                 + hexdump(table, queue.desc_table) + "\n"
                 + "\n".join(f"  {i}: addr={d.addr:#x} len={d.len} flags={d.flags} next={d.next}"
                             for i, d in enumerate(decoded)))
    lesson.narrate("""
        Descriptor 0: the header, 16 bytes, flags 1 (NEXT). Descriptor 1: 512 bytes of data,
        flags 3 (NEXT | WRITE). Descriptor 2: the status byte, flags 2 (WRITE), the end.
    """)
    driver.kick(0)
    (used,) = queue.get_used()
    status = memory.read_u8(request.status)
    data = memory.read(request.data, SECTOR_SIZE)
    lesson.result("used element", f"id {used.id}, len {used.len} (512 data + 1 status)")
    lesson.result("status byte", f"{status} ({STATUS_NAMES.get(status)})")
    lesson.result("data", data.rstrip(b"\0"))
    lesson.checkpoint("IN sector 0", f"used len {used.len}, status "
                      f"{STATUS_NAMES.get(status)}, data {data.rstrip(bytes(1))!r}",
                      f"used len 513, status OK, data {SECTOR0!r}")

    lesson.narrate("""
        Now a write of sector 1: the same three parts, but the data descriptor has no WRITE
        flag -- the device *reads* it:
    """)
    lesson.code("""
        driver.blk_request(queue, VIRTIO_BLK_T_OUT, sector=1, data=message)
    """)
    message = b"written from Python through the virtqueue".ljust(SECTOR_SIZE, b"\0")
    request = driver.blk_request(queue, VIRTIO_BLK_T_OUT, sector=1, data=message)
    driver.kick(0)
    (used,) = queue.get_used()
    status = memory.read_u8(request.status)
    with open(disk, "rb") as file:
        file.seek(SECTOR_SIZE)
        on_disk = file.read(SECTOR_SIZE)
    lesson.result("OUT sector 1: status", STATUS_NAMES.get(status))
    lesson.result("the host file at offset 512", on_disk.rstrip(b"\0"))
    lesson.narrate("""
        The device wrote the guest's buffer to the file with `os.pwritev` on views of guest
        memory: no copy in Python. For a write, the used `len` counts only what the device
        *wrote* into the chain: the status byte.
    """)
    lesson.checkpoint("OUT sector 1", f"used len {used.len}, status {STATUS_NAMES.get(status)}",
                      "used len 1, status OK")
    lesson.checkpoint("host file sector 1", repr(on_disk.rstrip(b"\0")),
                      repr(message.rstrip(b"\0")))

    lesson.narrate(f"""
        And a request the disk cannot do: sector {SECTORS} of a disk of {SECTORS} sectors.
        The device still completes it -- with an error in the status byte.
    """)
    request = driver.blk_request(queue, VIRTIO_BLK_T_IN, sector=SECTORS, data_len=SECTOR_SIZE)
    driver.kick(0)
    queue.get_used()
    status = memory.read_u8(request.status)
    lesson.result(f"IN sector {SECTORS} (past the end)", STATUS_NAMES.get(status))
    lesson.result("the device's own words", device.transport.backend.last_request)
    lesson.checkpoint("IN past the end", STATUS_NAMES.get(status), "IOERR")
    device.transport.backend.close()


def with_a_guest(lesson: Lesson, disk: Path) -> None:
    lesson.section("2. The same from a guest: guests/c/virtio_blk.c")
    lesson.narrate("""
        A bare-metal C driver in long mode (`guests/c/virtio_blk.c`) initialises the device,
        reads sector 0 and prints its first line, writes sector 1, and flushes -- each
        request a chain of descriptors, a kick, and an interrupt. It checks the status byte
        of each: on IOERR or UNSUPP it says which request failed and ends the run with exit
        status 7 (try `minikvm run guests/build/virtio_blk.elf --virtio-blk disk.img,ro`).
        We watch from the device's side: after each QueueNotify exit, what the disk did.
    """)
    blk = VirtioBlk(disk)
    output, done = [], []

    def watch(event) -> None:
        if event.register == "QueueNotify":
            done.append(blk.last_request)

    with Machine(irqchip=True, output=output.append) as machine:
        transport = machine.add_virtio(blk)
        machine.load_guest(lesson.guest("virtio_blk.elf"))
        machine.listeners.append(watch)
        stop = machine.run(timeout=10)
        interrupts = machine.memory.read_u64(0x60000 + 5 * 8)
        counters = transport.counters
    blk.close()
    for number, words in enumerate(done, 1):
        lesson.result(f"kick {number}", words)
    text = b"".join(output).decode()
    lesson.block(text.rstrip("\n"))
    with open(disk, "rb") as file:
        file.seek(SECTOR_SIZE)
        sector1 = file.read(SECTOR_SIZE).rstrip(b"\0")
    lesson.result("host file, sector 1", sector1)
    lesson.result("interrupts the guest counted", interrupts)
    lesson.result("kicks received / interrupts raised by the device",
                  f"{counters['kicks']} / {counters['interrupts']}")
    lesson.narrate(f"""
        {SECTOR_SIZE} bytes in and {SECTOR_SIZE} out, and per request exactly one kick and
        one interrupt. Besides the start-up handshake and the guest's own prints, the only
        other exits are the interrupt handler's InterruptStatus read and ACK write. A Linux
        guest drives the same device with its own `virtio_blk` driver, told where the
        device is by `virtio_mmio.device=4K@0xd0000000:5` on its command line
        (`Machine.virtio_cmdline()`).
    """)
    lesson.checkpoint("requests", " | ".join(done),
                      "IN sector 0, 1 sectors: OK | OUT sector 1, 1 sectors: OK | FLUSH: OK")
    lesson.checkpoint("guest output", repr(text),
                      repr(f"virtio-blk: sector 0 says: {SECTOR0.decode().strip()}\n"
                           "virtio-blk: wrote sector 1, flushed\n"))
    lesson.checkpoint("host file sector 1", repr(sector1),
                      repr(b"written by the minikvm virtio-blk guest"))
    lesson.checkpoint("interrupts", interrupts, 3)
    lesson.checkpoint("stop", stop.kind.value, "halt")


if __name__ == "__main__":
    run_lesson(main)
