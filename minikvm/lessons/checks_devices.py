"""The checks of the device exercises (08 to 10): an interrupt from the
UART, a chained virtqueue request, a virtio-blk request of the learner's.

Here the learner writes the guest's side of a device protocol, so a check
watches from the device's side: the UART's registers and the PIC's mask
after the run, every request a virtio device received (its buffers, its
type, the device's own words about it). What the device saw is what the
verdict tells.
"""

from __future__ import annotations

from pathlib import Path

from minikvm.core.board import COM1_IRQ
from minikvm.core.config import MachineConfig
from minikvm.core.stop import StopKind
from minikvm.guestbuild import assemble, compile_c
from minikvm.lessons import learner
from minikvm.lessons.verdict import Verdict, not_yet, passed, printable, stop_words

__all__ = ["check_08", "check_09", "check_10"]


_ECHO_INPUT = b"ok\x04"
#: Seconds the echo may take: the reference guest needs milliseconds.
_ECHO_TIMEOUT = 3.0


def check_08(path: Path, work: Path) -> Verdict:
    """The echo guest answers typed input through IRQ 4 (MCR.OUT2 set)."""
    from minikvm.devices.uart import (
        UART_IER_RDI,
        UART_MCR_LOOP,
        UART_MCR_OUT1,
        UART_MCR_OUT2,
    )
    from minikvm.kvm.uapi import KVM_IRQCHIP_PIC_MASTER
    from minikvm.machine import Machine

    binary = assemble(path, work, bits=16).flat
    output: list[bytes] = []
    config = MachineConfig(guest=str(binary), load_addr=0x1000, mode="real", irqchip=True)
    timeout = learner.GUEST_TIMEOUT
    with Machine.from_config(config, output=output.append) as machine:
        ready = machine.run(timeout=timeout, until=lambda: machine.uart.ier & UART_IER_RDI)
        if ready.kind is not StopKind.PAUSED:
            return not_yet("Your guest never enabled the UART's received-data interrupt "
                           f"(IER.RDI): {stop_words(ready, timeout)}.")
        machine.send_serial_input(_ECHO_INPUT)
        stop = machine.run(timeout=_ECHO_TIMEOUT)
        uart = machine.uart.state()
        pic = machine.vm.get_irqchip(KVM_IRQCHIP_PIC_MASTER).chip.pic
        changes = machine.uart.irq.changes
    echoed = b"".join(output)
    seen = (f"We typed {printable(_ECHO_INPUT)}; your guest echoed {printable(echoed)} and "
            f"{stop_words(stop, _ECHO_TIMEOUT)}.")
    if echoed == _ECHO_INPUT and stop.kind is StopKind.DEBUG_EXIT:
        return passed("Your guest took the UART's interrupt and echoed every byte: the path "
                      "UART -> MCR.OUT2 -> IRQ 4 -> PIC -> vector 0x0c -> handler works.",
                      f"The interrupt line changed level {changes} times.")
    mcr = uart["mcr"]
    details = [seen, f"The UART's state now: IER={uart['ier']:#04x}, MCR={mcr:#04x}, "
                     f"IIR says: {uart['interrupt']}, {uart['rx_level']} byte(s) waiting in "
                     "the RX FIFO."]
    if uart["rx_level"] and not uart["irq_level"]:
        if not mcr & UART_MCR_OUT2:
            why = ("MCR bit 3, OUT2, is clear: on a PC the UART's interrupt pin reaches the "
                   "PIC only through a buffer that OUT2 enables, so IRQ 4 never rose")
            if mcr & UART_MCR_OUT1:
                why += " (bit 2 is OUT1, which no PC wires to anything)"
            return not_yet("The UART wanted to interrupt (data waiting, IER.RDI on), but its "
                           f"interrupt never reached the PIC: {why}.", *details)
        if mcr & UART_MCR_LOOP:
            return not_yet("MCR.LOOP is set: in loopback the UART is cut off from the line "
                           "and from the PIC.", *details)
    if pic.imr & (1 << COM1_IRQ):
        return not_yet(f"The PIC masks IRQ 4 (IMR={pic.imr:#04x}, bit 4 set): the "
                       "interrupt is requested but never delivered.", *details)
    return not_yet("Your guest did not echo what we typed.", *details)


#: Seconds a virtio guest may take: the reference guests need a fraction of one.
_VIRTIO_TIMEOUT = 3.0


def _counting_bytes(n: int) -> bytes:
    return bytes(i & 0xFF for i in range(n))


def _recording(backend) -> list[list[tuple[int, bool]]]:
    """Record each request's buffers, (length, device-writable), as the device sees them."""
    requests: list[list[tuple[int, bool]]] = []
    original = backend.process

    def process(queue_index, chain):
        requests.append([(buffer.len, buffer.writable) for buffer in chain.buffers])
        return original(queue_index, chain)

    backend.process = process
    return requests


def _buffers_words(buffers: list[tuple[int, bool]]) -> str:
    return ", ".join(f"{length} bytes {'device-writable' if writable else 'device-readable'}"
                     for length, writable in buffers) or "no buffers"


def check_09(path: Path, work: Path) -> Verdict:
    """One virtio-rng request made of two chained, device-writable 8-byte descriptors."""
    from minikvm.devices.virtio.rng import VirtioRng
    from minikvm.machine import Machine

    elf = compile_c(path, work)
    rng = VirtioRng(source=_counting_bytes)
    requests = _recording(rng)
    output: list[bytes] = []
    with Machine(irqchip=True, output=output.append) as machine:
        transport = machine.add_virtio(rng)
        machine.load_guest(elf)
        stop = machine.run(timeout=_VIRTIO_TIMEOUT,
                           until=lambda: transport.last_error is not None)
        error = transport.last_error
    text = b"".join(output).decode("latin-1")
    printed = f"Your guest printed {text.strip()!r} and {stop_words(stop, _VIRTIO_TIMEOUT)}."
    seen = [f"Request {i + 1}: {_buffers_words(r)}." for i, r in enumerate(requests)]
    if error:
        return not_yet(f"The device refused your request and now needs a reset: {error}.",
                       *seen)
    if not requests:
        return not_yet("The device received no request at all.", printed)
    if len(requests) > 1:
        return not_yet(f"The device received {len(requests)} requests: one per descriptor. "
                       "To make one request of two buffers, descriptor 0 needs "
                       "VIRTQ_DESC_F_NEXT in its flags and `next = 1`, and only the head "
                       "(0) goes in the available ring.", *seen, printed)
    buffers = requests[0]
    if len(buffers) == 1:
        return not_yet(f"The request had one buffer ({_buffers_words(buffers)}): the "
                       "device stopped at descriptor 0 because its flags have no "
                       "VIRTQ_DESC_F_NEXT (virtio 1.2 §2.7.5).", printed)
    if buffers != [(8, True), (8, True)]:
        return not_yet(f"The request's buffers were: {_buffers_words(buffers)}. The task "
                       "asks for two device-writable buffers of 8 bytes.", printed)
    expected = "virtio-rng: " + " ".join(f"{b:#04x}" for b in _counting_bytes(16))
    if expected not in text:
        return not_yet("The device filled a chain of two 8-byte buffers, but the guest did "
                       "not print the 16 bytes (it prints `used.len` bytes from `buffer`: "
                       "are the two halves next to each other?).", printed)
    return passed("The device received one request made of two chained 8-byte buffers, "
                  "filled both, and returned 16 bytes in one used element.", printed)


_SERIAL = "lesson10-disk"
_DISK_TEXT = b"the exercise 10 disk\n"


def check_10(path: Path, work: Path) -> Verdict:
    """A GET_ID request, and the serial printed as 'serial: ...'."""
    from minikvm.devices.virtio.blk import SECTOR_SIZE, VIRTIO_BLK_T_GET_ID, VirtioBlk
    from minikvm.machine import Machine

    elf = compile_c(path, work)
    disk = work / "disk.img"
    disk.write_bytes(_DISK_TEXT.ljust(8 * SECTOR_SIZE, b"\0"))
    blk = VirtioBlk(disk, serial=_SERIAL)
    outcomes: list[str] = []
    types: list[int] = []
    failed: list[bool] = []
    original = blk.process

    def process(queue_index, chain):
        if chain.readable_len >= 16:
            types.append(int.from_bytes(chain.read(0, 4), "little"))
        errors = blk.counters["ioerr"] + blk.counters["unsupported"]
        written = original(queue_index, chain)
        outcomes.append(blk.last_request)
        failed.append(blk.counters["ioerr"] + blk.counters["unsupported"] != errors)
        return written

    blk.process = process
    output: list[bytes] = []
    try:
        with Machine(irqchip=True, output=output.append) as machine:
            transport = machine.add_virtio(blk)
            machine.load_guest(elf)
            stop = machine.run(timeout=_VIRTIO_TIMEOUT,
                               until=lambda: transport.last_error is not None)
            error = transport.last_error
    finally:
        blk.close()
    text = b"".join(output).decode("latin-1")
    printed = f"Your guest printed {text!r} and {stop_words(stop, _VIRTIO_TIMEOUT)}."
    requests = f"The disk's requests, in its own words: {' | '.join(outcomes) or 'none'}."
    if error:
        return not_yet(f"The device refused a request and now needs a reset: {error}.",
                       requests, printed)
    if VIRTIO_BLK_T_GET_ID not in types:
        return not_yet("The device received no VIRTIO_BLK_T_GET_ID (type 8) request.",
                       requests, printed)
    which = types.index(VIRTIO_BLK_T_GET_ID)
    get_id = outcomes[which]
    if failed[which]:
        return not_yet(f"Your GET_ID request failed: {get_id}. The serial goes into a "
                       "device-writable buffer of at least 20 bytes, between the header "
                       "and the status byte.", requests, printed)
    if f"serial: {_SERIAL}\n" not in text:
        return not_yet(f"The device wrote the serial {_SERIAL!r} into your buffer, but "
                       f"your guest did not print the line 'serial: {_SERIAL}'.", printed)
    return passed(f"Your driver asked the disk for its ID, the device wrote {_SERIAL!r} into "
                  "guest memory, and your guest printed it.", requests)

