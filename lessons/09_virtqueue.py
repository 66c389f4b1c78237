"""Lesson 09: MMIO exits, and the virtqueue -- one descriptor at a time.

Run it: ``python lessons/09_virtqueue.py`` (``--quiet``: checkpoints only).
Exercise: ``lessons/exercises/09_chain.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

from _common import Lesson, hexdump, run_lesson

from minikvm.bus import Bus
from minikvm.devices.base import RecordingLine
from minikvm.devices.virtio import mmio as regs
from minikvm.devices.virtio.mmio import VirtioMmioTransport
from minikvm.devices.virtio.mock import GuestAllocator, MockDriver
from minikvm.devices.virtio.queue import VIRTQ_DESC_F_WRITE, Descriptor
from minikvm.devices.virtio.rng import VirtioRng
from minikvm.devices.virtio.status import describe_status
from minikvm.kvm.exits import Hlt, MmioRead, MmioWrite
from minikvm.core.board import VIRTIO_MMIO_BASE
from minikvm.machine import Machine
from minikvm.memory import GuestMemory

# 64-bit code (encodings from `as --64`): read MagicValue, write it to Status.
TOUCH_MMIO = bytes([
    0xBB, 0x00, 0x00, 0x00, 0xD0,   # mov ebx, 0xd0000000
    0x8B, 0x03,                     # mov eax, [rbx]          ; a 4-byte MMIO read
    0x89, 0x43, 0x70,               # mov [rbx + 0x70], eax   ; a 4-byte MMIO write
    0xF4,                           # hlt
])
QUEUE_SIZE = 8
DESC, AVAIL, USED, BUFFER = 0x10000, 0x10080, 0x10100, 0x20000


def note(description: str) -> str:
    """A device's description without the "Register read -> value:" it starts with."""
    return description.split(": ", 1)[1] if ": " in description else description


def counting_bytes(n: int) -> bytes:
    """A predictable "random" source, so that the lesson's output never changes."""
    return bytes(i & 0xFF for i in range(n))


def main(argv: Sequence[str] | None = None) -> int:
    lesson = Lesson("09", "MMIO exits and the virtqueue, a descriptor at a time", argv)
    lesson.narrate("""
        Port I/O is a PC peculiarity; most devices everywhere else are *memory-mapped*: their
        registers sit at physical addresses, and the CPU reaches them with ordinary loads and
        stores. Under KVM, a guest-physical address with no memory slot behind it is exactly
        that: an access there exits with `KVM_EXIT_MMIO`. This lesson looks at MMIO exits,
        then at **virtio** (the virtio 1.2 specification, OASIS), the standard way for a
        guest to talk to a VMM's devices with as few exits as possible.
    """)

    # -- 1. MMIO exits by hand ------------------------------------------------------------
    lesson.section("1. MMIO exits by hand")
    lesson.narrate(f"""
        Our RAM ends at 2 MiB; `{VIRTIO_MMIO_BASE:#x}` is nothing. This long-mode snippet
        reads 4 bytes there and writes them back 0x70 bytes further:
    """)
    lesson.code("""
        mov ebx, 0xd0000000
        mov eax, [rbx]          ; MMIO read
        mov [rbx + 0x70], eax   ; MMIO write
        hlt
    """, "nasm")
    with Machine() as machine:
        machine.load_flat(TOUCH_MMIO, 0x1000, mode="long")
        read = machine.vcpu.run()
        lesson.result("vcpu.run()", f"MmioRead(address={read.address:#x}, "
                      f"length={read.length})")
        assert isinstance(read, MmioRead), read
        read.complete(0x74726976)
        write = machine.vcpu.run()
        lesson.result("after read.complete(0x74726976), vcpu.run()",
                      f"MmioWrite(address={write.address:#x}, length={write.length}, "
                      f"data={write.data!r})")
        halt = machine.vcpu.run()
        lesson.result("vcpu.run()", halt)
    lesson.narrate("""
        Like an `in`, a read stops the guest in the middle of the `mov`; the VMM leaves the
        value in `kvm_run.mmio.data` and KVM finishes the instruction at the next `KVM_RUN`.
        (On hardware KVM the access faults in the MMU and KVM's instruction emulator decodes
        the `mov` to learn address, size and data: `kvm_mmu_page_fault` in
        `arch/x86/kvm/mmu/mmu.c`, `complete_emulated_mmio` in `arch/x86/kvm/x86.c`.)
        The write carries its bytes out. `0x74726976` is "virt" in ASCII, read as a
        little-endian word -- the first thing a virtio driver checks.
    """)
    lesson.checkpoint("MMIO read", f"{read.address:#x}, {read.length} bytes", "0xd0000000, 4 bytes")
    lesson.checkpoint("MMIO write", f"{write.address:#x} = {write.value:#x}",
                      "0xd0000070 = 0x74726976")
    lesson.checkpoint("then", type(halt).__name__, Hlt.__name__)
    assert isinstance(write, MmioWrite)

    # -- 2. the virtio-mmio registers, by hand --------------------------------------------
    lesson.section("2. Bringing up a virtio device, register by register")
    lesson.narrate("""
        A virtio-mmio device is a 4 KiB window of 32-bit registers (virtio 1.2 §4.2.2). We
        build one in Python -- the transport in front of a `VirtioRng`, the simplest virtio
        device: it fills the buffers it is given with random bytes (here: 0, 1, 2 ... so that
        the lesson's output stays the same) -- and put it on an MMIO bus, exactly where the
        machine would. Then we play the guest's driver: each `bus.read`/`bus.write` below is
        what one MMIO exit of a real guest turns into. The order is the spec's driver
        initialisation (§3.1.1): reset, ACKNOWLEDGE, DRIVER, read the feature bits, accept
        some, FEATURES_OK (and check the device kept it), set up the queue, DRIVER_OK.
    """)
    memory = GuestMemory.with_size(1 << 20)
    irq = RecordingLine()
    transport = VirtioMmioTransport(VirtioRng(source=counting_bytes), memory, irq, name="rng")
    bus = Bus("mmio")
    bus.register(VIRTIO_MMIO_BASE, regs.VIRTIO_MMIO_WINDOW_SIZE, transport)
    trace = []

    def read(offset: int) -> int:
        access = bus.read(VIRTIO_MMIO_BASE + offset, 4, explain=True)
        trace.append(("read", f"{access.register} -> {access.value:#x}",
                      note(access.description)))
        return access.value

    def write(offset: int, value: int) -> None:
        access = bus.write(VIRTIO_MMIO_BASE + offset, 4, value, explain=True)
        trace.append(("write", f"{access.register} = {value:#x}", note(access.description)))

    read(regs.VIRTIO_MMIO_MAGIC_VALUE)
    read(regs.VIRTIO_MMIO_VERSION)
    device_id = read(regs.VIRTIO_MMIO_DEVICE_ID)
    write(regs.VIRTIO_MMIO_STATUS, 0)
    write(regs.VIRTIO_MMIO_STATUS, 1)                       # ACKNOWLEDGE
    write(regs.VIRTIO_MMIO_STATUS, 1 | 2)                   # DRIVER
    write(regs.VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1)
    read(regs.VIRTIO_MMIO_DEVICE_FEATURES)                  # bits 32-63: VERSION_1 is bit 32
    write(regs.VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1)
    write(regs.VIRTIO_MMIO_DRIVER_FEATURES, 1)              # we accept VERSION_1 only
    write(regs.VIRTIO_MMIO_STATUS, 1 | 2 | 8)               # FEATURES_OK
    read(regs.VIRTIO_MMIO_STATUS)
    write(regs.VIRTIO_MMIO_QUEUE_SEL, 0)
    read(regs.VIRTIO_MMIO_QUEUE_NUM_MAX)
    write(regs.VIRTIO_MMIO_QUEUE_NUM, QUEUE_SIZE)
    for low, address in ((regs.VIRTIO_MMIO_QUEUE_DESC_LOW, DESC),
                         (regs.VIRTIO_MMIO_QUEUE_AVAIL_LOW, AVAIL),
                         (regs.VIRTIO_MMIO_QUEUE_USED_LOW, USED)):
        write(low, address)
        write(low + 4, 0)                                   # the HIGH halves
    write(regs.VIRTIO_MMIO_QUEUE_READY, 1)
    write(regs.VIRTIO_MMIO_STATUS, 1 | 2 | 8 | 4)           # DRIVER_OK
    lesson.table("the driver's side of the handshake", ("", "register", "the device says"),
                 trace)
    lesson.checkpoint("device ID", f"{device_id} (entropy source)", "4 (entropy source)")
    lesson.checkpoint("status", describe_status(transport.status),
                      "ACKNOWLEDGE|DRIVER|FEATURES_OK|DRIVER_OK")

    # -- 3. one descriptor -------------------------------------------------------------------
    lesson.section("3. A request, one descriptor at a time")
    lesson.narrate(f"""
        A *split virtqueue* (§2.7) is three areas of guest memory that the driver owns and
        told the device about: the **descriptor table** (16 bytes each: `le64 addr, le32 len,
        le16 flags, le16 next`), the **available ring** (the driver's: `le16 flags, le16 idx,
        le16 ring[size]`) and the **used ring** (the device's: `le16 flags, le16 idx,
        {{le32 id, le32 len}} ring[size]`). The *data* never goes through registers: the
        device reads and writes guest memory directly.

        One request: a 16-byte buffer at `{BUFFER:#x}` for the device to fill. Descriptor 0
        says where, how long, and `VIRTQ_DESC_F_WRITE` (2): "the device writes this buffer".
    """)
    memory.write(DESC, Descriptor(BUFFER, 16, VIRTQ_DESC_F_WRITE, 0).pack())
    lesson.block("descriptor table:\n" + hexdump(memory.read(DESC, 16), DESC)
                 + "\n         addr=0x20000 (8 bytes)  len=16 (4)  flags=2 (2)  next=0 (2)")
    lesson.narrate("""
        Then the driver *offers* it: the head's index (0) goes in `avail.ring[idx % size]`,
        and only then `avail.idx` goes from 0 to 1 -- the device looks at `idx`, so
        everything it points to must be in place first. (A real driver puts a memory barrier
        between the two stores.)
    """)
    memory.write_u16(AVAIL + 4 + 2 * 0, 0)       # avail.ring[0] = head 0
    memory.write_u16(AVAIL + 2, 1)               # avail.idx = 1
    lesson.block("available ring:\n" + hexdump(memory.read(AVAIL, 8), AVAIL)
                 + "\n         flags=0  idx=1  ring[0]=0 (the head)")
    lesson.narrate("""
        Nothing has happened yet: the device does not watch memory. The driver *kicks* it
        by writing the queue's number to QueueNotify -- the one MMIO exit of the request:
    """)
    write(regs.VIRTIO_MMIO_QUEUE_NOTIFY, 0)
    lesson.result("QueueNotify", trace[-1][2])
    used_idx = memory.read_u16(USED + 2)
    used_id, used_len = memory.read_u32(USED + 4), memory.read_u32(USED + 8)
    filled = memory.read(BUFFER, 16)
    lesson.block("used ring:\n" + hexdump(memory.read(USED, 12), USED)
                 + f"\n         flags=0  idx={used_idx}  ring[0]={{id {used_id}, len {used_len}}}")
    lesson.block("the buffer:\n" + hexdump(filled, BUFFER))
    lesson.narrate("""
        The device walked the chain, filled the buffer, returned it in the used ring -- id 0
        (the head), len 16 (bytes written) -- bumped `used.idx`, and raised its interrupt:
        InterruptStatus bit 0, "used buffer notification". The driver reads the cause and
        acknowledges it, and the level-triggered line drops (§4.2.3.4).
    """)
    status = read(regs.VIRTIO_MMIO_INTERRUPT_STATUS)
    line_before = irq.level
    write(regs.VIRTIO_MMIO_INTERRUPT_ACK, status)
    lesson.result("InterruptStatus", trace[-2][2])
    lesson.result("InterruptACK", trace[-1][2])
    lesson.checkpoint("descriptor 0", memory.read(DESC, 16).hex(" "),
                      "00 00 02 00 00 00 00 00 10 00 00 00 02 00 00 00")
    lesson.checkpoint("used ring", f"idx={used_idx} id={used_id} len={used_len}",
                      "idx=1 id=0 len=16")
    lesson.checkpoint("buffer", filled.hex(" "), counting_bytes(16).hex(" "))
    lesson.checkpoint("interrupt", f"status={status:#x} line {'high' if line_before else 'low'}"
                      f" -> after ACK {'high' if irq.level else 'low'}",
                      "status=0x1 line high -> after ACK low")

    # -- 4. the mock driver -------------------------------------------------------------------
    lesson.section("4. The same with minikvm's driver-side mock")
    lesson.narrate("""
        `minikvm.devices.virtio.mock` plays the guest's driver for tests: `MockDriver.init()`
        is step 2, `VirtqueueDriver.add_chain()` step 3 for any number of buffers, and
        `get_used()` reads the used ring.
    """)
    lesson.code("""
        driver = MockDriver(transport, memory, GuestAllocator(memory, 0x10000))
        driver.init(queue_size=8)
        queue = driver.queues[0]
        queue.add_chain([(0x20000, 8, True), (0x20008, 8, True)])  # (addr, len, writable)
        driver.kick(0)
        queue.get_used()
    """)
    memory = GuestMemory.with_size(1 << 20)
    transport = VirtioMmioTransport(VirtioRng(source=counting_bytes), memory, RecordingLine())
    driver = MockDriver(transport, memory, GuestAllocator(memory, 0x10000))
    driver.init(queue_size=QUEUE_SIZE)
    queue = driver.queues[0]
    head = queue.add_chain([(BUFFER, 8, True), (BUFFER + 8, 8, True)])
    driver.kick(0)
    used = queue.get_used()
    lesson.result("get_used()", used)
    lesson.narrate("""
        Two descriptors, one request: descriptor 0 has `VIRTQ_DESC_F_NEXT` (1) and
        `next = 1`. The device sees one chain of 16 writable bytes, fills it across both
        buffers and returns one used element for the head.
    """)
    lesson.checkpoint("chain of two", f"head {head}, used {[(u.id, u.len) for u in used]}",
                      "head 0, used [(0, 16)]")
    lesson.checkpoint("descriptor 0 flags", memory.read_u16(queue.desc_table + 12), 3)

    # -- 5. a guest driver ----------------------------------------------------------------
    lesson.section("5. A real guest driver: guests/c/virtio_rng.c")
    lesson.narrate("""
        The same handshake from inside a long-mode C guest (`guests/include/virtio.h`), on a
        machine with KVM's irqchip: the request completes with an interrupt (IRQ 5 through
        the PIC) that wakes the guest from `hlt`. Every register access is an MMIO exit; the
        16 bytes of data are not.
    """)
    output, events = [], []
    with Machine(irqchip=True, output=output.append) as machine:
        transport = machine.add_virtio(VirtioRng(source=counting_bytes))
        machine.load_guest(lesson.guest("virtio_rng.elf"))
        machine.listeners.append(events.append)
        stop = machine.run(timeout=10)
    mmio = [e for e in events if e.reason.startswith("MMIO")]
    text = b"".join(output).decode().strip()
    kick = next(i for i, e in enumerate(mmio) if e.register == "QueueNotify")
    lesson.result("MMIO exits of the handshake", kick)
    lesson.table("then, for the request", ("exit", "register", "the device says"),
                 [(e.reason, f"{e.register} {'=' if e.reason == 'MMIO_WRITE' else '->'} "
                   f"{e.value:#x}", note(e.description)) for e in mmio[kick:]])
    lesson.result("the guest printed", text)
    lesson.checkpoint("guest's registers, in order", " ".join(e.register for e in mmio))
    lesson.checkpoint("virtio_rng.c says", text, "virtio-rng: " + " ".join(
        f"{b:#04x}" for b in counting_bytes(16)))
    lesson.checkpoint("stop", stop.kind.value, "halt")
    lesson.narrate("""
        **Exercise 09** (`lessons/exercises/09_chain.md`): change a guest driver to offer
        its buffer as a chain of two descriptors. `minikvm lesson check 09`.
    """)
    return lesson.finish()


if __name__ == "__main__":
    run_lesson(main)
