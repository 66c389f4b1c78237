"""What a BIOS leaves behind for a Multiboot kernel (minikvm.core.firmware):
the PICs on vectors 0x08/0x70, the 18.2 Hz timer tick on IRQ 0, and a
real-mode vector table whose IRQ handlers acknowledge the PIC."""

from __future__ import annotations

import struct

import pytest

from minikvm.core.board import BIOS_HANDOVER
from minikvm.core.firmware import IVT_VECTORS, hand_over, ivt_image
from minikvm.kvm.uapi import KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE
from minikvm.machine import Machine, StopKind


def far_pointer(table: bytes, vector: int) -> int:
    offset, segment = struct.unpack_from("<HH", table, vector * 4)
    return (segment << 4) + offset


def test_irq_vectors_go_to_handlers_that_send_eoi_and_the_rest_to_an_iret():
    pieces = dict(ivt_image())
    table = pieces[0]
    assert len(table) == IVT_VECTORS * 4
    master, slave, iret = (0xF0000 + offset for offset in (
        BIOS_HANDOVER.master_irq_offset, BIOS_HANDOVER.slave_irq_offset,
        BIOS_HANDOVER.iret_offset))
    assert {far_pointer(table, v) for v in range(0x08, 0x10)} == {master}
    assert {far_pointer(table, v) for v in range(0x70, 0x78)} == {slave}
    others = set(range(IVT_VECTORS)) - set(range(0x08, 0x10)) - set(range(0x70, 0x78))
    assert {far_pointer(table, v) for v in others} == {iret}
    # push ax; mov al, 0x20 (EOI); out 0x20 [, out 0xA0 first for the slave]; pop ax; iret
    assert pieces[master] == bytes.fromhex("50b020e62058cf")
    assert pieces[slave] == bytes.fromhex("50b020e6a0e62058cf")
    assert pieces[iret] == b"\xcf"
    # No piece overlaps another.
    spans = sorted((address, address + len(data)) for address, data in pieces.items())
    assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:]))


@pytest.mark.kvm
def test_a_multiboot_boot_finds_the_pics_and_the_pit_as_a_bios_left_them(guests):
    with Machine(irqchip=True) as machine:
        machine.load_guest(guests / "multiboot.elf")
        master = machine.vm.get_irqchip(KVM_IRQCHIP_PIC_MASTER).chip.pic
        slave = machine.vm.get_irqchip(KVM_IRQCHIP_PIC_SLAVE).chip.pic
        counter = machine.vm.get_pit2().channels[0]
        table = machine.memory.read(0, 4 * IVT_VECTORS)
    assert (master.irq_base, master.imr, master.init4) == (0x08, 0xFA, 1)
    assert (slave.irq_base, slave.imr) == (0x70, 0xFF)
    assert (counter.mode, counter.count, counter.gate) == (2, 0x10000, 1)   # 0 means 65536
    assert table == ivt_image()[0][1]


#: Real mode at 0x1000 (DS = 0): point vector 8 (IRQ 0 after the BIOS's ICW2)
#: at our handler, sti; hlt -- only an interrupt ends the hlt -- then leave
#: through the debug-exit port with 0x2A. The handler prints 'T' and goes on
#: to the BIOS's handler (F000:FF40), which sends the EOI and returns.
TICK_GUEST = (bytes.fromhex("c7062000") + struct.pack("<H", 0x1012)   # mov [0x20], 0x1012
              + bytes.fromhex("c70622000000")                          # mov [0x22], 0
              + bytes.fromhex("fbf4")                                  # sti; hlt
              + bytes.fromhex("b02ae6f4")                              # mov al, 0x2A; out 0xF4
              + bytes.fromhex("b054e6e9")                              # handler: 'T' to 0xE9
              + bytes.fromhex("ea40ff00f0"))                           # jmp far F000:FF40


@pytest.mark.kvm
def test_the_bios_tick_on_vector_8_wakes_a_real_mode_hlt():
    output = []
    with Machine(irqchip=True, output=output.append) as machine:
        hand_over(machine.vm, machine.memory)
        machine.memory.write(0x1000, TICK_GUEST)
        machine.set_mode("real", 0x1000)
        stop = machine.run(timeout=10)
    assert stop.kind is StopKind.DEBUG_EXIT and stop.status == (0x2A << 1) | 1, stop
    assert b"".join(output) == b"T"
