"""QEMU's pc-testdev as kvm-unit-tests drives it: the scratch register, the
IRQ lines, the scratch memory; through the bus at the board's addresses."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minikvm.bus import Bus
from minikvm.core import board
from minikvm.devices.base import RecordingLine
from minikvm.devices.testdev import IOMEM_SIZE, PcTestdevIomem, PcTestdevIrq, PcTestdevPorts


def ports() -> tuple[PcTestdevPorts, Bus]:
    device = PcTestdevPorts()
    bus = Bus("pio")
    bus.register(board.TESTDEV_PORT, board.TESTDEV_PORTS, device)
    return device, bus


def test_the_scratch_register_reads_back_by_byte_lane():
    device, bus = ports()
    bus.write(0xE0, 4, 0x11223344)
    assert bus.read(0xE0, 4).value == 0x11223344
    assert bus.read(0xE1, 2).value == 0x2233
    bus.write(0xE3, 1, 0xAA)
    assert bus.read(0xE0, 4).value == 0xAA223344
    bus.write(0xE2, 4, 0xFFFFFFFF)               # only the lanes inside the register
    assert device.value == 0xFFFF3344


def test_flush_page_writes_are_counted_and_change_nothing():
    device, bus = ports()
    bus.write(0xE0, 4, 7)
    access = bus.write(0xE4, 4, 0x1000, explain=True)
    assert device.flushes == 1 and device.value == 7
    assert "flush page 0x1000" in access.description


def test_the_debug_console_keeps_port_0xe9():
    ends = [(slot.base, slot.end) for slot in board.PORT_DEVICES]
    assert all(not start <= board.DEBUGCON_PORT < end for start, end in ends
               if (start, end) != (board.DEBUGCON_PORT, board.DEBUGCON_PORT + 1))


def test_irq_line_writes_drive_the_isa_lines():
    lines = [RecordingLine() for _ in range(24)]
    device = PcTestdevIrq(lines)
    bus = Bus("pio")
    bus.register(board.TESTDEV_IRQ_PORT, board.TESTDEV_IRQ_PORTS, device)
    bus.write(0x200B, 4, 1)                      # realmode.flat raises IRQ 11 with outl
    assert lines[11].level and device.state()["high"] == [11]
    described = bus.write(0x200B, 1, 0, explain=True).description
    assert not lines[11].level and "line 11 low" in described
    assert list(lines[11].edges) == [True, False]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(-8, IOMEM_SIZE + 8), st.sampled_from([1, 2, 4, 8]),
                          st.integers(0, (1 << 64) - 1)), max_size=40))
def test_scratch_memory_is_memory_and_ignores_what_falls_outside(writes):
    device, model = PcTestdevIomem(), bytearray(IOMEM_SIZE)
    for offset, size, value in writes:
        value &= (1 << (8 * size)) - 1
        device.write(offset, size, value)
        if 0 <= offset <= IOMEM_SIZE - size:
            model[offset:offset + size] = value.to_bytes(size, "little")
    assert device.buffer == model
    assert device.read(IOMEM_SIZE - 2, 4) == 0xFFFF_FFFF


@pytest.mark.kvm
def test_a_guest_raises_an_irq_line_and_the_in_kernel_pic_sees_it():
    from minikvm.kvm.uapi import KVM_IRQCHIP_PIC_MASTER
    from minikvm.machine import Machine

    with Machine(irqchip=True) as machine:
        # mov dx, 0x2003; mov al, 1; out dx, al; cli; hlt
        machine.memory.write(0x1000, bytes([0xBA, 0x03, 0x20, 0xB0, 0x01, 0xEE, 0xFA, 0xF4]))
        machine.set_mode("real", 0x1000)
        stop = machine.run(timeout=10)
        irr = machine.vm.get_irqchip(KVM_IRQCHIP_PIC_MASTER).chip.pic.irr
    assert stop.status == 0
    assert irr & (1 << 3), "IRQ 3 requested at the PIC"
