"""The state a PC BIOS hands over, made without running a BIOS.

On a real PC, and under QEMU, a boot loader never meets the hardware in its
reset state: the BIOS's power-on self test has already initialised the two
8259A interrupt controllers, started the 8254 timer's 18.2 Hz tick and
filled the real-mode interrupt vector table. QEMU's ``-kernel`` starts a
Multiboot kernel after SeaBIOS did all that, and kernels rely on it: the
kvm-unit-tests ``realmode`` test waits in ``hlt`` for *some* interrupt to
come, and sends IRQ 11 expecting it on vector 0x73.

minikvm has no firmware. :func:`hand_over` puts the same state in place
directly -- the board says what it is (:class:`~minikvm.core.board.BiosHandover`):

* the PICs through ``KVM_SET_IRQCHIP``: what ICW1-ICW4 and OCW1 would have
  left in KVM's model (arch/x86/kvm/i8259.c: ``irq_base`` from ICW2,
  ``init4`` from ICW1's IC4 bit, ``imr`` from OCW1);
* the PIT through ``KVM_SET_PIT2``: counter 0 in mode 2; loading it starts
  KVM's timer (``kvm_pit_load_count``, arch/x86/kvm/i8254.c);
* the vector table and its handlers by writing guest RAM (:func:`ivt_image`);
* the ACPI tables (:func:`minikvm.core.acpi.acpi_tables`): where the power
  management registers are, and where the OS leaves its waking vector.

A Multiboot kernel starts with interrupts off (Multiboot Specification
0.6.96, 3.2): none of this reaches it before it enables them itself, and a
kernel that masks the PICs (as kvm-unit-tests' ``cstart`` does) sees only
what it would see under QEMU.
"""

from __future__ import annotations

import struct
from typing import Any

from minikvm.core.acpi import acpi_tables
from minikvm.core.board import BIOS_HANDOVER, BiosHandover
from minikvm.kvm.uapi import KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE

__all__ = ["IVT_VECTORS", "hand_over", "ivt_image", "program_pic", "program_pit"]

#: Real mode's interrupt vector table: 256 far pointers (offset, segment) at 0.
IVT_VECTORS = 256
#: The end-of-interrupt command (OCW2 with EOI set, 8259A data sheet).
_EOI = 0x20
_PIC_MASTER_COMMAND = 0x20
_PIC_SLAVE_COMMAND = 0xA0
#: PIT counter 0 written low byte then high byte (the "rw mode" 3 of the
#: 8254's control word, and KVM's RW_STATE_WORD0 for the next access).
_PIT_LSB_THEN_MSB = 3


def _irq_handler(commands: tuple[int, ...]) -> bytes:
    """Real-mode code: ``push ax; mov al, 0x20; out <port>, al ...; pop ax; iret``."""
    code = bytes([0x50, 0xB0, _EOI])
    for port in commands:
        code += bytes([0xE6, port])
    return code + bytes([0x58, 0xCF])


def ivt_image(handover: BiosHandover = BIOS_HANDOVER) -> list[tuple[int, bytes]]:
    """What to write where: the vector table at 0 and its three handlers.

    An IRQ of the master PIC needs one EOI to the master; one of the slave
    needs one to each (the slave's, then the master's for the cascade)."""
    segment = handover.handler_segment
    vectors = [handover.iret_offset] * IVT_VECTORS
    for irq in range(8):
        vectors[handover.pic_master_base + irq] = handover.master_irq_offset
        vectors[handover.pic_slave_base + irq] = handover.slave_irq_offset
    table = b"".join(struct.pack("<HH", offset, segment) for offset in vectors)
    base = segment << 4
    return [
        (0, table),
        (base + handover.master_irq_offset, _irq_handler((_PIC_MASTER_COMMAND,))),
        (base + handover.slave_irq_offset,
         _irq_handler((_PIC_SLAVE_COMMAND, _PIC_MASTER_COMMAND))),
        (base + handover.iret_offset, bytes([0xCF])),
    ]


def program_pic(vm: Any, handover: BiosHandover = BIOS_HANDOVER) -> None:
    """Both PICs as after ICW1-ICW4 and OCW1: vector base, 8086 mode, mask."""
    for chip_id, base, mask in ((KVM_IRQCHIP_PIC_MASTER, handover.pic_master_base,
                                 handover.pic_master_mask),
                                (KVM_IRQCHIP_PIC_SLAVE, handover.pic_slave_base,
                                 handover.pic_slave_mask)):
        chip = vm.get_irqchip(chip_id)
        pic = chip.chip.pic
        pic.irq_base = base
        pic.imr = mask
        pic.init4 = 1          # ICW1 said an ICW4 follows; ICW4: 8086 mode
        pic.init_state = 0     # the initialisation sequence is over
        pic.irr = pic.isr = pic.last_irr = 0
        vm.set_irqchip(chip)


def program_pit(vm: Any, handover: BiosHandover = BIOS_HANDOVER) -> None:
    """Counter 0 in ``pit_mode`` with ``pit_count``: the BIOS tick on IRQ 0."""
    state = vm.get_pit2()
    counter = state.channels[0]
    counter.mode = handover.pit_mode
    counter.count = handover.pit_count
    counter.rw_mode = counter.read_state = counter.write_state = _PIT_LSB_THEN_MSB
    counter.bcd = 0
    counter.gate = 1
    vm.set_pit2(state)


def hand_over(vm: Any, memory: Any, handover: BiosHandover = BIOS_HANDOVER) -> None:
    """Leave the PICs, the PIT, the vector table and the ACPI tables as a BIOS would (needs
    the in-kernel irqchip and PIT, and RAM up to the handlers at F000:FFxx)."""
    for address, data in ivt_image(handover) + acpi_tables():
        memory.write(address, data)
    program_pic(vm, handover)
    program_pit(vm, handover)
