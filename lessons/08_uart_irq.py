"""Lesson 08: the UART, the in-kernel irqchip, and an interrupt end to end.

Run it: ``python lessons/08_uart_irq.py`` (``--quiet``: checkpoints only).
Exercise: ``lessons/exercises/08_uart_irq.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

from _common import Lesson, run_lesson

from minikvm.devices.uart import UART_IER_RDI, UART_MCR_OUT2, describe_lcr
from minikvm.kvm.uapi import KVM_IRQCHIP_PIC_MASTER
from minikvm.core.board import COM1_IRQ
from minikvm.machine import Machine

IRQ4_VECTOR = 0x0C   # the echo guest programs the master PIC with vector base 0x08


def main(argv: Sequence[str] | None = None) -> int:
    lesson = Lesson("08", "The UART, the irqchip and an interrupt", argv)
    lesson.narrate("""
        The PC serial port is a 16550A UART: eight registers at eight I/O ports (COM1:
        0x3F8-0x3FF), each access a VM exit that minikvm's `Uart16550` answers. This lesson
        first watches a guest *poll* the UART, then lets the UART *interrupt* the guest --
        which needs an interrupt controller, here the one KVM emulates in the kernel -- and
        follows one interrupt from the device model to the guest's handler and back.
    """)

    # -- 1. polling ---------------------------------------------------------------------
    lesson.section("1. A polled UART: every register access, explained")
    lesson.narrate("""
        `guests/asm/serial_hello.S` programs the line (divisor latch for the baud rate, then
        8 data bits, no parity, 1 stop bit), turns the FIFOs on, and sends each byte after
        reading the line status register until it says "transmitter holding register empty"
        (LSR.THRE). The device model explains each exit:
    """)
    events, output = [], []
    with Machine(output=output.append) as machine:
        machine.load_flat(lesson.guest("serial_hello.bin"), 0x1000)
        machine.listeners.append(events.append)
        machine.run(timeout=10)
        uart = machine.uart.state()
    lesson.table("the first exits of serial_hello", ("exit", "register", "what the UART did"),
                 [(e.reason, e.register, e.description) for e in events[:10]])
    text = b"".join(output)
    lesson.result("COM1 output", text)
    lesson.result("the line", f"{uart['line']}, divisor {uart['divisor']} = {uart['baud']} baud")
    lesson.narrate("""
        LCR bit 7, DLAB, swaps what offsets 0 and 1 mean (receive/transmit and interrupt
        enable become the two bytes of the baud-rate divisor): an 8250 from 1981 had too few
        address lines. (The first LCR write, 0x80, only sets DLAB; its other bits say
        "5N1" until the second write sets 8N1.) The model sends each byte at once, so THRE
        is always set and one LSR poll per byte is enough.
    """)
    setup = [f"{e.register}={e.value:#x}" for e in events[:6]]
    lesson.checkpoint("setup writes", " ".join(setup),
                      "LCR=0x80 DLL=0x1 DLM=0x0 LCR=0x3 FCR=0x7 MCR=0x3")
    lesson.checkpoint("line", f"{describe_lcr(uart['lcr'])}, {uart['baud']} baud",
                      "8N1, 115200 baud")
    lesson.checkpoint("COM1 output", repr(text), repr(b"Hello from the 16550A UART!\r\n"))

    # -- 2. the irqchip by hand ----------------------------------------------------------------
    lesson.section("2. An interrupt controller in the kernel: KVM_CREATE_IRQCHIP")
    lesson.narrate(f"""
        Polling wastes the CPU. A real driver asks the UART to raise its interrupt line when
        a byte arrives. On a PC that line (IRQ {COM1_IRQ} for COM1) goes into an *8259 PIC*,
        which picks the highest-priority request, and hands the CPU an interrupt *vector*.
        `KVM_CREATE_IRQCHIP` makes KVM emulate, in the kernel, the two cascaded 8259 PICs
        and an IOAPIC (`kvm_arch_vm_ioctl` in `arch/x86/kvm/x86.c`), and each vCPU created
        afterwards gets a local APIC. Then `hlt` waits *inside* KVM for an interrupt instead
        of exiting (`__kvm_emulate_halt`), and a VMM's device raises or lowers a line with
        `KVM_IRQ_LINE`.
        `KVM_GET_IRQCHIP` shows the PIC's registers: IRR (requests), IMR (mask), ISR (in
        service). KVM numbers interrupt lines as *GSIs* (global system interrupts); 0-15
        are the PC's ISA IRQs. By hand, no guest needed:
    """)
    lesson.code("""
        machine = Machine(irqchip=True)     # KVM_CREATE_IRQCHIP (and a timer)
        machine.vm.get_irqchip(KVM_IRQCHIP_PIC_MASTER).chip.pic.irr
        machine.vm.irq_line(4, True)        # KVM_IRQ_LINE: GSI 4 high
        machine.vm.irq_line(4, False)       # ... and low again
    """)
    irr = []
    with Machine(irqchip=True) as machine:
        irr.append(machine.vm.get_irqchip(KVM_IRQCHIP_PIC_MASTER).chip.pic.irr)
        machine.vm.irq_line(COM1_IRQ, True)
        irr.append(machine.vm.get_irqchip(KVM_IRQCHIP_PIC_MASTER).chip.pic.irr)
        machine.vm.irq_line(COM1_IRQ, False)
        irr.append(machine.vm.get_irqchip(KVM_IRQCHIP_PIC_MASTER).chip.pic.irr)
    for when, value in zip(("before", "after raising IRQ 4", "after lowering it"), irr):
        lesson.result(f"master PIC IRR {when}", f"{value:#04x}")
    lesson.narrate("""
        The PIC is edge-triggered here (the PC default): the *rising edge* sets IRR bit 4,
        and the request stays latched until the CPU takes the interrupt, even after the line
        drops (`pic_set_irq1` in `arch/x86/kvm/i8259.c`; PIC registers: Intel 8259A data
        sheet).
    """)
    lesson.checkpoint("IRR before, raised, lowered", " ".join(f"{v:#04x}" for v in irr),
                      "0x00 0x10 0x10")

    # -- 3. the whole path ------------------------------------------------------------------
    lesson.section("3. One interrupt, end to end: the echo guest")
    lesson.narrate(f"""
        `guests/asm/serial_echo.S` (real mode) sets up every piece of the path and then
        sleeps in `sti; hlt`:

        1. the interrupt vector table entry of vector {IRQ4_VECTOR:#04x} -- at address
           {4 * IRQ4_VECTOR:#x}, 4 bytes per vector: offset, then segment -- points at its
           handler;
        2. it initialises the master PIC with vector base 0x08 (as a PC BIOS does), so IRQ 4
           becomes vector 0x0C, and masks every IRQ but 4;
        3. it programs the UART: 115200 8N1, FIFOs on, IER.RDI ("interrupt when data is
           received") -- and MCR.OUT2. On a PC the UART's interrupt pin reaches the PIC only
           through a buffer that the OUT2 output enables.
    """)
    events, output = [], []
    with Machine(irqchip=True, output=output.append) as machine:
        machine.load_flat(lesson.guest("serial_echo.bin"), 0x1000)
        machine.run(timeout=10, until=lambda: machine.uart.ier & UART_IER_RDI)
        pic = machine.vm.get_irqchip(KVM_IRQCHIP_PIC_MASTER).chip.pic
        ivt = (machine.memory.read_u16(4 * IRQ4_VECTOR + 2),
               machine.memory.read_u16(4 * IRQ4_VECTOR))
        mcr, ier = machine.uart.mcr, machine.uart.ier
        lesson.result("PIC vector base, IMR", f"{pic.irq_base:#04x}, {pic.imr:#04x} "
                      f"(IRQ 4 -> vector {pic.irq_base + COM1_IRQ:#04x})")
        lesson.result("IVT[0x0c]", f"{ivt[0]:04x}:{ivt[1]:04x} (the handler)")
        lesson.result("UART IER, MCR", f"{ier:#04x}, {mcr:#04x} (OUT2 "
                      f"{'on' if mcr & UART_MCR_OUT2 else 'off'})")
        lesson.checkpoint("PIC: IRQ 4 becomes vector", f"{pic.irq_base + COM1_IRQ:#04x}", "0x0c")
        lesson.checkpoint("PIC IMR", f"{pic.imr:#04x} (only IRQ 4 unmasked)",
                          "0xef (only IRQ 4 unmasked)")
        lesson.checkpoint("UART MCR.OUT2", "on" if mcr & UART_MCR_OUT2 else "off", "on")
        lesson.narrate("""
            The guest now sleeps in `hlt`, inside KVM. We type `hi!` and Ctrl-D (0x04, which
            the guest echoes and then ends the run with). `send_serial_input` queues the
            bytes and kicks the vCPU out of `KVM_RUN`; at the next step the machine puts them
            in the UART's receive FIFO, the UART raises its line, `KvmIrqLine` passes the
            change to KVM (`KVM_IRQ_LINE`), and KVM's PIC interrupts the guest. What the
            handler does is again a row of exits:
        """)
        machine.listeners.append(events.append)
        machine.send_serial_input(b"hi!\x04")
        stop = machine.run(timeout=10)
        changes = machine.uart.irq.changes
    io = [e for e in events if e.reason in ("IO_IN", "IO_OUT")]
    lesson.table("the interrupt handler's exits", ("exit", "register", "what the device did"),
                 [(e.reason, e.register, e.description) for e in io[:7]]
                 + [("...", "", "")] + [(e.reason, e.register, e.description) for e in io[-2:]])
    echoed = b"".join(output)
    lesson.result("echoed", echoed)
    lesson.result("the run", stop.message)
    lesson.narrate("""
        The handler asks the UART *why* (IIR: "received data available"), drains the FIFO
        while LSR says "data ready", echoes each byte, and then tells the PIC it is done
        (an EOI, `out 0x20`) and returns with `iret` -- except that here the Ctrl-D ended
        the run first. Reading the last byte emptied the FIFO, so the UART dropped
        its line: two level changes reached KVM, up and down.
    """)
    lesson.checkpoint("handler's first read", io[0].description,
                      "IIR read -> 0xc4: received data available interrupt")
    lesson.checkpoint("echo", repr(echoed), repr(b"hi!\x04"))
    lesson.checkpoint("IRQ 4 level changes", changes, 2)
    lesson.checkpoint("end", f"{stop.kind.value} status {stop.status}", "halt status 0")
    lesson.narrate("""
        **Exercise 08** (`lessons/exercises/08_uart_irq.md`): an echo guest that never
        answers, because one bit is missing on its way to the PIC. Find it and fix it.
        `minikvm lesson check 08`.
    """)
    return lesson.finish()


if __name__ == "__main__":
    run_lesson(main)
