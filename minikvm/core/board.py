"""The board: the PC platform of the guest contract, as data.

A real PC board fixes where things are before any software runs: COM1 at
port 0x3F8 on IRQ 4, the keyboard controller at 0x60/0x64, RAM from
address 0. A guest relies on those numbers the way a driver relies on a
datasheet. minikvm's board adds the debug devices QEMU offers to test guests
(``debugcon`` at 0xE9, ``isa-debug-exit`` at 0xF4) and virtio-mmio windows
the way Firecracker and QEMU's ``microvm`` place them.

This module is the one place those numbers live. The machine wires its
devices from :data:`PORT_DEVICES` and :func:`virtio_window`; the CLI, the
lessons and the tests read the same names; DESIGN.md and the README repeat
them in words. The guest-physical memory map the VMM writes (GDT, page
tables, stacks) is :mod:`minikvm.x86.layout`.
"""

from __future__ import annotations

import enum

from minikvm.record import FrozenRecord
from minikvm.x86 import layout

__all__ = [
    "ACPI_PM_PORT",
    "ACPI_PM_PORTS",
    "ACPI_TABLES_BASE",
    "BIOS_HANDOVER",
    "BiosHandover",
    "COM1_IRQ",
    "COM1_PORT",
    "COM1_PORTS",
    "DEBUGCON_PORT",
    "DEBUG_EXIT_PORT",
    "DEBUG_EXIT_PORTS",
    "DEFAULT_MEM_SIZE",
    "ExitStatus",
    "FW_CFG_PORT",
    "FW_CFG_PORTS",
    "I8042_COMMAND_PORT",
    "I8042_DATA_PORT",
    "I8042_PORTS",
    "MAX_VIRTIO_DEVICES",
    "PORT_DEVICES",
    "PortDevice",
    "RTC_IRQ",
    "RTC_PORT",
    "RTC_PORTS",
    "RAM_ABOVE_4G_BASE",
    "RAM_BASE",
    "RAM_BELOW_4G_MAX",
    "VIRTIO_MMIO_BASE",
    "VIRTIO_MMIO_FIRST_IRQ",
    "VIRTIO_MMIO_WINDOW",
    "VirtioWindow",
    "virtio_cmdline",
    "TESTDEV_IOMEM_BASE",
    "TESTDEV_IOMEM_SIZE",
    "TESTDEV_IRQ_PORT",
    "TESTDEV_IRQ_PORTS",
    "TESTDEV_PORT",
    "TESTDEV_PORTS",
    "ram_regions",
    "virtio_window",
]

# -- memory ----------------------------------------------------------------------------

#: RAM starts at guest-physical 0 (the real-mode IVT lives there).
RAM_BASE = layout.RAM_BASE
#: Bare-metal guests get 2 MiB unless told otherwise (``--mem``).
DEFAULT_MEM_SIZE = 2 * 1024 * 1024
#: RAM below 4 GiB ends here at most; the rest of a larger ``--mem`` goes
#: above 4 GiB. The gap keeps guest-physical addresses free for what is not
#: RAM: the virtio windows (0xD000_0000), the IOAPIC (0xFEC0_0000), the
#: local APICs (0xFEE0_0000), the KVM areas below 4 GiB. QEMU's PC leaves
#: the same kind of hole ("below_4g_mem_size", 3 GiB with gigabyte alignment).
RAM_BELOW_4G_MAX = 0xC000_0000
RAM_ABOVE_4G_BASE = 1 << 32


def ram_regions(mem_size: int) -> tuple[tuple[int, int], ...]:
    """Where ``mem_size`` bytes of RAM go: ``(base, size)`` from 0, and the
    part beyond :data:`RAM_BELOW_4G_MAX` from 4 GiB."""
    low = min(mem_size, RAM_BELOW_4G_MAX)
    if mem_size <= low:
        return ((RAM_BASE, low),)
    return ((RAM_BASE, low), (RAM_ABOVE_4G_BASE, mem_size - low))

# -- port I/O --------------------------------------------------------------------------

#: Bochs/QEMU debug console: each byte written appears on the host.
DEBUGCON_PORT = 0xE9
#: QEMU ``isa-debug-exit`` with ``iosize=4``: a write of ``v`` to any of the
#: four ports ends the run with status ``(v << 1) | 1``.
DEBUG_EXIT_PORT = 0xF4
DEBUG_EXIT_PORTS = 4
#: The 8042 keyboard controller: data at 0x60, command/status at 0x64.
#: Command 0xFE pulses the CPU reset line (Linux ``reboot=k``).
I8042_DATA_PORT = 0x60
I8042_COMMAND_PORT = 0x64
I8042_PORTS = 5
#: COM1, as on every PC: eight registers from 0x3F8, interrupt on IRQ 4.
COM1_PORT = 0x3F8
COM1_PORTS = 8
COM1_IRQ = 4
#: QEMU's fw_cfg, port interface (docs/specs/fw_cfg.rst, "Register
#: Locations", x86): the 16-bit selector at 0x510, the 8-bit data register
#: at 0x511. (The DMA register at 0x514 is not offered.)
FW_CFG_PORT = 0x510
FW_CFG_PORTS = 2
#: QEMU's pc-testdev (hw/misc/pc-testdev.c), for kvm-unit-tests.
TESTDEV_PORT = 0xE0
TESTDEV_PORTS = 8
TESTDEV_IRQ_PORT = 0x2000
TESTDEV_IRQ_PORTS = 24
#: The MC146818 RTC and CMOS RAM: index at 0x70, data at 0x71, IRQ 8 (PC AT).
RTC_PORT = 0x70
RTC_PORTS = 2
RTC_IRQ = 8
#: ACPI's fixed registers where QEMU's PIIX4 has them (and the FADT says):
#: PM1a event block 0x600, PM1a control 0x604, PM timer 0x608.
ACPI_PM_PORT = 0x600
ACPI_PM_PORTS = 12
#: Where a Multiboot kernel finds the ACPI tables (RSDP first; the RSDP
#: scan covers 0xE0000-0xFFFFF, ACPI 6.5 section 5.2.5.1).
ACPI_TABLES_BASE = 0xE0000


# -- what the BIOS leaves behind (a Multiboot kernel's boot) ---------------------------

class BiosHandover(FrozenRecord):
    """The interrupt hardware as a PC BIOS's POST leaves it for the boot
    loader -- and so for a Multiboot kernel QEMU's ``-kernel`` boots through
    SeaBIOS (src/hw/pic.c ``pic_setup``, src/hw/timer.c ``timer_setup``).

    * The two 8259A PICs initialised (ICW1-ICW4, Intel 8259A data sheet):
      IRQ 0-7 on vectors 0x08-0x0F, IRQ 8-15 on 0x70-0x77 (the IBM PC AT
      numbers), the slave cascaded on the master's IRQ 2; everything masked
      but the timer and the cascade.
    * The 8254 PIT's counter 0 in mode 2 (rate generator) with count 0,
      that is 65536: IRQ 0 at 1193182 / 65536 = 18.2 Hz, the BIOS tick.
    * A real-mode interrupt vector table at 0: the IRQ vectors go to
      handlers that acknowledge the PIC (EOI) and return, every other vector
      to a lone ``iret`` (at F000:FF53, where the IBM PC BIOS kept it).

    A frozen record (:mod:`minikvm.record`).
    """

    __slots__ = ("pic_master_base", "pic_slave_base", "pic_master_mask", "pic_slave_mask",
                 "pit_mode", "pit_count", "handler_segment", "iret_offset",
                 "master_irq_offset", "slave_irq_offset")
    pic_master_base: int
    pic_slave_base: int
    pic_master_mask: int
    pic_slave_mask: int
    pit_mode: int
    pit_count: int
    handler_segment: int
    iret_offset: int
    master_irq_offset: int
    slave_irq_offset: int

    def __init__(self, pic_master_base: int = 0x08, pic_slave_base: int = 0x70,
                 pic_master_mask: int = 0xFA,      # IRQ 0 (timer) and 2 (cascade) open
                 pic_slave_mask: int = 0xFF, pit_mode: int = 2,
                 pit_count: int = 0,               # 0 means 65536
                 # Segment F000: the handlers' offsets (the PC BIOS ROM's 64 KiB).
                 handler_segment: int = 0xF000, iret_offset: int = 0xFF53,
                 master_irq_offset: int = 0xFF40, slave_irq_offset: int = 0xFF48) -> None:
        self._set(pic_master_base=pic_master_base, pic_slave_base=pic_slave_base,
                  pic_master_mask=pic_master_mask, pic_slave_mask=pic_slave_mask,
                  pit_mode=pit_mode, pit_count=pit_count, handler_segment=handler_segment,
                  iret_offset=iret_offset, master_irq_offset=master_irq_offset,
                  slave_irq_offset=slave_irq_offset)


BIOS_HANDOVER = BiosHandover()


class PortDevice(FrozenRecord):
    """One fixed port-I/O device of the board: its window and its IRQ (a
    frozen record, :mod:`minikvm.record`)."""

    __slots__ = ("name", "base", "size", "irq")
    name: str
    base: int
    size: int
    irq: int | None

    def __init__(self, name: str, base: int, size: int, irq: int | None = None) -> None:
        self._set(name=name, base=base, size=size, irq=irq)

    @property
    def end(self) -> int:
        return self.base + self.size


#: The fixed port-I/O devices every machine has, in the order they are wired.
PORT_DEVICES = (
    PortDevice("debugcon", DEBUGCON_PORT, 1),
    PortDevice("debug-exit", DEBUG_EXIT_PORT, DEBUG_EXIT_PORTS),
    # 0x60 (data) to 0x64 (command/status). Port 0x61 in between is the PC
    # speaker gate: the in-kernel PIT claims it (KVM_PIT_SPEAKER_DUMMY)
    # before it reaches the VMM; without one the i8042 model floats it.
    PortDevice("i8042", I8042_DATA_PORT, I8042_PORTS),
    PortDevice("com1", COM1_PORT, COM1_PORTS, COM1_IRQ),
    PortDevice("fw_cfg", FW_CFG_PORT, FW_CFG_PORTS),
    # QEMU's pc-testdev, which kvm-unit-tests expects: a scratch register at
    # 0xE0 and the flush-page port at 0xE4, and 24 ISA interrupt lines a guest
    # may drive itself from 0x2000. Its scratch memory is MMIO (below). (Its
    # byte view of the register at 0xE8 would cover the debug console.)
    PortDevice("testdev", TESTDEV_PORT, TESTDEV_PORTS),
    PortDevice("testdev-irq", TESTDEV_IRQ_PORT, TESTDEV_IRQ_PORTS),
    PortDevice("rtc", RTC_PORT, RTC_PORTS, RTC_IRQ),
    PortDevice("acpi-pm", ACPI_PM_PORT, ACPI_PM_PORTS),
)

#: pc-testdev's 64 KiB of scratch memory (MMIO, not RAM).
TESTDEV_IOMEM_BASE = 0xFF00_0000
TESTDEV_IOMEM_SIZE = 0x1_0000

# -- virtio-mmio -----------------------------------------------------------------------

#: virtio-mmio devices: 4 KiB windows from here, IRQ 5, 6, 7 ... in the order
#: they are added. Linux learns them from ``virtio_mmio.device=4K@0xd0000000:5``.
VIRTIO_MMIO_BASE = 0xD000_0000
VIRTIO_MMIO_WINDOW = 0x1000
VIRTIO_MMIO_FIRST_IRQ = 5
#: IRQs 5..15 are free on the PIC (the IOAPIC has 24 pins): eleven devices.
MAX_VIRTIO_DEVICES = 11


class VirtioWindow(FrozenRecord):
    """Where virtio-mmio device number ``index`` lives (a frozen record)."""

    __slots__ = ("index", "base", "size", "irq")
    index: int
    base: int
    size: int
    irq: int

    def __init__(self, index: int, base: int, size: int, irq: int) -> None:
        self._set(index=index, base=base, size=size, irq=irq)


def virtio_window(index: int) -> VirtioWindow:
    """The window and IRQ of the ``index``-th virtio device (0-based)."""
    if not 0 <= index < MAX_VIRTIO_DEVICES:
        raise ValueError(f"virtio device {index}: the board has windows for "
                         f"{MAX_VIRTIO_DEVICES} (IRQ {VIRTIO_MMIO_FIRST_IRQ}.."
                         f"{VIRTIO_MMIO_FIRST_IRQ + MAX_VIRTIO_DEVICES - 1})")
    return VirtioWindow(index, VIRTIO_MMIO_BASE + index * VIRTIO_MMIO_WINDOW,
                        VIRTIO_MMIO_WINDOW, VIRTIO_MMIO_FIRST_IRQ + index)


def virtio_cmdline(count: int) -> str:
    """The Linux command-line words that describe ``count`` virtio-mmio devices."""
    return " ".join(f"virtio_mmio.device=4K@{w.base:#x}:{w.irq}"
                    for w in map(virtio_window, range(count)))

# -- exit statuses ---------------------------------------------------------------------


class ExitStatus(enum.IntEnum):
    """Exit statuses of ``minikvm`` (DESIGN.md, "the guest contract").

    They follow QEMU and kvm-unit-tests: the VMM's own statuses are fixed
    numbers, and a guest's debug-exit write ``v`` becomes ``(v << 1) | 1``
    (:func:`minikvm.devices.debug_exit.debug_exit_status`). The two ranges
    can meet (``v = 1`` gives 3, ``v = 0x80`` gives 1): the one line on
    stderr and the trace say which source decided.
    """

    OK = 0                #: the guest halted with interrupts off, powered off, or reset
    KVM_UNAVAILABLE = 1   #: no /dev/kvm, no permission, a KVM ioctl failed
    USAGE = 2             #: bad usage or a bad guest file
    GUEST_CRASH = 3       #: triple fault, KVM internal error, failed VM entry
    TIMEOUT = 124         #: ``--timeout`` expired (as coreutils' timeout)
    HANGUP = 129          #: SIGHUP (128 + 1): the terminal went away
    INTERRUPTED = 130     #: Ctrl-C (128 + SIGINT, as a shell reports it)
    OUTPUT_CLOSED = 141   #: stdout's reader went away (128 + SIGPIPE, as a shell reports it)
    TERMINATED = 143      #: SIGTERM (128 + 15)
