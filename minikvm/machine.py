"""``Machine``: the one place that wires a virtual machine together.

A VMM is mostly plumbing: open KVM, create a VM, give it RAM, create the
vCPUs, put devices on the port-I/O and MMIO buses, load a guest, set the
registers, then loop on ``KVM_RUN`` and answer each exit. This module does
the wiring, from the board (:mod:`minikvm.core.board`) and a
:class:`~minikvm.core.config.MachineConfig`; running is the job of one
:class:`~minikvm.core.runner.VcpuRunner` per vCPU, and whether an exit ends
the run is :func:`~minikvm.core.stop.decide_stop`.

Each exit becomes an :class:`ExitEvent` that carries its meaning: which
device and register the access hit, the value, a sentence from the device,
and the vCPU it came from. :meth:`Machine.step` returns one event;
:meth:`Machine.run` loops until the guest stops (a :class:`Stop` says why
and with which status).

Several vCPUs share the devices under one rule: everything the machine does
with an exit -- host input, the bus access, the device's stop request, the
decision, the listeners -- happens under :attr:`Machine.lock`. Devices are
therefore only ever touched by one thread at a time, and a listener sees
events in one order. (The run loop of a single vCPU owns the lock and skips
its mutex while no other thread has asked for it: :mod:`minikvm.core.devicelock`.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from minikvm.bus import Bus
from minikvm.core import acpi, board
from minikvm.core.config import MachineConfig, VirtioSpec, check_vcpu_count
from minikvm.core.devicelock import DeviceLock
from minikvm.core.events import ExitEvent, describe_exit, dispatch_exit
from minikvm.core.firmware import hand_over
from minikvm.core.irq import KvmIrqLine
from minikvm.core.runner import VcpuRunner, Watchdog
from minikvm.core.stop import Stop, StopKind, decide_stop
from minikvm.runloop import next_event, run_all, run_vcpu
from minikvm.devices.base import Device, InterruptLine, RecordingLine
from minikvm.devices.debug_exit import DebugExit
from minikvm.devices.debugcon import DebugCon
from minikvm.devices.fw_cfg import FwCfg
from minikvm.devices.i8042 import I8042
from minikvm.devices.testdev import PcTestdevIomem, PcTestdevIrq, PcTestdevPorts
from minikvm.devices.uart import Uart16550
from minikvm.hostio import HostInput, Receiver
from minikvm.kvm.exits import VmExit
from minikvm.kvm.system import DEFAULT_KVM_PATH, Kvm
from minikvm.kvm import uapi
from minikvm.loaders import identify_guest
from minikvm.loaders.flat import load_flat
from minikvm.memory import GuestMemory
from minikvm.x86 import layout, modes
from minikvm.x86.cpuid import paging_features, with_apic_id

if TYPE_CHECKING:
    # Only in annotations: pathlib (with urllib.parse and ipaddress) is
    # ~8 ms of a start where nothing else loads it (issue 12).
    from pathlib import Path

    from minikvm.devices.virtio.mmio import VirtioMmioTransport

__all__ = [
    "DEFAULT_MEM_SIZE",
    "ExitEvent",
    "KvmIrqLine",
    "Machine",
    "MachineConfig",
    "Stop",
    "StopKind",
    "describe_exit",
    "dispatch_exit",
]

DEFAULT_MEM_SIZE = board.DEFAULT_MEM_SIZE


class Machine:
    """A VM with RAM, vCPUs, port-I/O and MMIO buses and the board's devices.

    >>> m = Machine()                                     # doctest: +SKIP
    >>> m.load_flat("guests/build/hello.bin", 0x1000)     # doctest: +SKIP
    >>> m.run(timeout=5)                                  # doctest: +SKIP
    Stop(kind=<StopKind.HALT: 'halt'>, status=0, ...)
    """

    def __init__(self, mem_size: int = DEFAULT_MEM_SIZE, *, kvm: Kvm | None = None,
                 kvm_path: str = DEFAULT_KVM_PATH, irqchip: bool = False,
                 output: Callable[[bytes], None] | None = None, vcpus: int = 1,
                 sync_regs: bool = True) -> None:
        if vcpus < 1:
            raise ValueError(f"a machine needs at least one vCPU, not {vcpus}")
        self.kvm = kvm if kvm is not None else Kvm(kvm_path)
        self.vm = self.kvm.create_vm()
        # Intel VMX needs these two guest-physical areas (outside RAM) to run
        # real-mode code; AMD and kvm-pvm accept and ignore them.
        self.vm.set_tss_addr(layout.KVM_TSS_ADDR)
        self.vm.set_identity_map_addr(layout.KVM_IDENTITY_MAP_ADDR)
        # RAM from 0, and above 4 GiB what does not fit below the board's hole; before the
        # irqchip, as a slot added after it waits ~6 ms for its SRCU grace period (kvm_main.c).
        self.memory = GuestMemory()
        for base, size in board.ram_regions(mem_size):
            self.memory.add_region(base, size)
        for region in self.memory.regions:
            self.vm.set_user_memory_region(region.slot, region.guest_phys_addr, region.size,
                                           region.host_address)
        self.irqchip = irqchip
        if irqchip:
            self.vm.create_irqchip()
            self.vm.create_pit2()
        # The CPUID the guest sees: everything KVM can virtualize, as QEMU's
        # "-cpu host" does. KVM's page walker also reads it (1 GiB pages,
        # physical address width), so our own walk asks the same table.
        self.cpuid = self.kvm.supported_cpuid()
        self.paging = paging_features(self.cpuid)
        #: Register sets KVM copies into each vCPU's run page at every exit
        #: (KVM_CAP_SYNC_REGS): registers at an exit then cost no ioctl.
        self.sync_regs = 0
        if sync_regs:
            self.sync_regs = (self.kvm.check_extension(uapi.KVM_CAP_SYNC_REGS)
                              & (uapi.KVM_SYNC_X86_REGS | uapi.KVM_SYNC_X86_SREGS))
        #: The vCPUs, by index (vCPU 0 boots the guest), and their runners.
        self.vcpus = []
        self.runners: list[VcpuRunner] = []
        if vcpus > 1:
            check_vcpu_count(vcpus, self.kvm.check_extension(uapi.KVM_CAP_MAX_VCPUS))
        for index in range(vcpus):
            vcpu = self.vm.create_vcpu(index)
            # Each vCPU hears its own APIC id from CPUID (leaf 1, leaf 0xB),
            # the id the in-kernel LAPIC gives it: its index (x86/cpuid.py).
            vcpu.set_cpuid2(with_apic_id(self.cpuid, index))
            vcpu.sync_regs(self.sync_regs)
            self.vcpus.append(vcpu)
            self.runners.append(VcpuRunner(vcpu, index, halt_check=irqchip))

        #: Held for everything done with one exit (see the module docstring;
        #: the run loop of one vCPU owns it: core/devicelock.py).
        self.lock = DeviceLock()
        self.pio = Bus("pio")
        self.mmio = Bus("mmio")
        self.debugcon = DebugCon(output)
        self.debug_exit = DebugExit(self._on_debug_exit)
        self.i8042 = I8042(self._on_reset_request)
        #: COM1. Its interrupt reaches the guest only with the irqchip;
        #: without one the line is just recorded.
        self.uart = Uart16550(self._line(board.COM1_IRQ), output, name="com1")
        #: QEMU's firmware configuration device: RAM size, CPUs, command line.
        self.fw_cfg = FwCfg()
        self.fw_cfg.set_machine(mem_size, vcpus)
        #: QEMU's pc-testdev, which kvm-unit-tests drives (devices/testdev.py).
        self.testdev = PcTestdevPorts()
        self.testdev_irq = PcTestdevIrq([self._line(gsi) for gsi in range(board.TESTDEV_IRQ_PORTS)])
        self.acpi = acpi.AcpiPlatform(self)   # the RTC, ACPI's registers, S3 and S5
        wired = {"debugcon": self.debugcon, "debug-exit": self.debug_exit,
                 "i8042": self.i8042, "com1": self.uart, "fw_cfg": self.fw_cfg,
                 "testdev": self.testdev, "testdev-irq": self.testdev_irq, **self.acpi.devices}
        for slot in board.PORT_DEVICES:
            self.pio.register(slot.base, slot.size, wired[slot.name])
        self.mmio.register(board.TESTDEV_IOMEM_BASE, board.TESTDEV_IOMEM_SIZE, PcTestdevIomem())
        self.serial_input = HostInput()
        #: virtio-mmio transports, in the order added (see add_virtio).
        self.virtio: list[VirtioMmioTransport] = []
        #: Where host input (send_serial_input, the keyboard) goes: COM1, or
        #: the last device added that takes host input (a virtio console).
        self.input_target: Receiver = self.uart

        #: Called with every ExitEvent (the tracer, the TUI), under the lock
        #: (which is not re-entrant: a listener must not take it again).
        self.listeners: list[Callable[[ExitEvent], None]] = []
        self.exit_count = 0
        self.image = None
        #: A stop a device asked for (the debug-exit port, an i8042 reset)
        #: while the machine handled an exit; the run loop takes it.
        self.device_stop: Stop | None = None
        self._end_all: Stop | None = None

    @classmethod
    def from_config(cls, config: MachineConfig, *, kvm: Kvm | None = None,
                    output: Callable[[bytes], None] | None = None) -> Machine:
        """The machine ``config`` describes, with its guest loaded.

        Loader and mode errors (``LoaderError``, ``ModeError``, ``OSError``)
        come out as they are; the half-built machine is closed first.
        """
        machine = cls(config.mem_size, kvm=kvm, kvm_path=config.kvm_path,
                      irqchip=config.irqchip, output=output, vcpus=config.vcpus)
        try:
            for spec in config.virtio:
                machine.add_virtio(_virtio_backend(spec, output))
            if config.guest is not None:
                machine.load_guest(config.guest, load_addr=config.load_addr,
                                   entry=config.entry, mode=config.mode,
                                   append=config.append, initrd=config.initrd)
            if config.append is not None:
                machine.fw_cfg.set_cmdline(config.append)
        except BaseException:
            machine.close()
            raise
        return machine

    # -- the boot vCPU --------------------------------------------------------

    @property
    def vcpu(self):
        """vCPU 0, the one that boots the guest."""
        return self.vcpus[0]

    @property
    def runner(self) -> VcpuRunner:
        """The runner of vCPU 0."""
        return self.runners[0]

    # -- wiring ------------------------------------------------------------

    def add_pio_device(self, base: int, size: int, device: Device) -> Device:
        self.pio.register(base, size, device)
        return device

    def add_mmio_device(self, base: int, size: int, device: Device) -> Device:
        self.mmio.register(base, size, device)
        return device

    def irq_line(self, gsi: int) -> KvmIrqLine:
        """An interrupt line into the in-kernel irqchip (create it with ``irqchip=True``)."""
        if not self.irqchip:
            raise RuntimeError("this machine has no in-kernel irqchip (Machine(irqchip=True))")
        return KvmIrqLine(self.vm, gsi)

    def add_virtio(self, backend) -> VirtioMmioTransport:
        """Put a virtio device (rng, blk, console backend) on the board's next
        virtio-mmio window and IRQ; returns its transport. A backend that
        takes host input (a console) becomes where the keyboard goes."""
        # Imported here: a machine without virtio devices (``minikvm run`` of
        # most guests) does not pay for loading the transport and the queues.
        from minikvm.devices.virtio.mmio import VirtioMmioTransport

        window = board.virtio_window(len(self.virtio))
        transport = VirtioMmioTransport(backend, self.memory, self._line(window.irq),
                                        name=f"virtio{window.index}-{backend.name}")
        self.mmio.register(window.base, window.size, transport)
        self.virtio.append(transport)
        if isinstance(backend, Receiver):
            self.input_target = backend
        return transport

    def virtio_cmdline(self) -> str:
        """The Linux command-line words that describe our virtio-mmio devices."""
        return board.virtio_cmdline(len(self.virtio))

    def _line(self, gsi: int) -> InterruptLine:
        """GSI ``gsi`` of the irqchip, or a line that only records without one."""
        return self.irq_line(gsi) if self.irqchip else RecordingLine()

    def send_serial_input(self, data: bytes) -> int:
        """Queue bytes for the guest's console (bounded; returns how many were
        accepted) and wake vCPU 0 so they are delivered promptly."""
        accepted = self.serial_input.put(data)
        if accepted:
            self.vcpu.kick()
        return accepted

    # -- loading -----------------------------------------------------------

    def load_flat(self, image: str | Path | bytes, load_addr: int, entry: int | None = None,
                  mode: str = "real"):
        """Copy a flat binary to ``load_addr`` and start there (or at ``entry``)
        in the given CPU mode (real, protected, paged, long)."""
        loaded = load_flat(self.memory, image, load_addr)
        self.image = loaded
        self.set_mode(mode, load_addr if entry is None else entry)
        return loaded

    def load_elf(self, image: str | Path | bytes, entry: int | None = None,
                 mode: str | None = None):
        """Load an ELF32/ELF64 guest; the CPU mode follows the ELF class
        (32-bit: protected mode, 64-bit: long mode) unless ``mode`` says otherwise."""
        from minikvm.loaders.elf import load_elf   # only ELF guests pay for its import

        loaded = load_elf(self.memory, image)
        self.image = loaded
        self.set_mode(mode or loaded.mode.value, loaded.entry if entry is None else entry)
        return loaded

    def load_multiboot(self, path: str | Path, cmdline: str = "",
                       modules: tuple[str, ...] = ()):
        """Load a Multiboot kernel and its modules as QEMU's ``-kernel`` and
        ``-initrd`` do, and start vCPU 0 as the Multiboot Specification 0.6.96
        says (3.2 "Machine state"): flat 32-bit protected mode, EAX =
        0x2BADB002, EBX = the boot information (:mod:`minikvm.loaders.multiboot`)."""
        from minikvm.loaders.multiboot import load_multiboot
        loaded = load_multiboot(self.memory, path, cmdline=cmdline, modules=modules)
        self.image = loaded
        if self.irqchip:    # what a BIOS leaves (QEMU: SeaBIOS): PICs, PIT, IVT, ACPI tables
            hand_over(self.vm, self.memory)
        self.set_mode("protected", loaded.entry)
        regs = self.vcpu.get_regs()
        regs.rax = loaded.magic
        regs.rbx = loaded.info_addr
        self.vcpu.set_regs(regs)
        return loaded

    def load_guest(self, path: str | Path, load_addr: int | None = None,
                   entry: int | None = None, mode: str | None = None,
                   append: str | None = None, initrd: tuple[str, ...] = ()):
        """Load ``path``: a Multiboot kernel (a Multiboot header in its first
        8 KiB) with ``initrd`` as its modules and the command line "``path``
        ``append``"; else an ELF file; else a flat binary at ``load_addr``
        (default 0x1000) in ``mode`` (default real)."""
        kind, data = identify_guest(str(path), load_addr=load_addr, entry=entry, mode=mode,
                                    initrd=tuple(initrd))
        if kind == "multiboot":
            from minikvm.loaders.multiboot import kernel_cmdline
            return self.load_multiboot(path, kernel_cmdline(str(path), append), tuple(initrd))
        if kind == "elf":
            return self.load_elf(data, entry=entry, mode=mode)
        load_addr = layout.FLAT_LOAD_ADDR if load_addr is None else load_addr
        return self.load_flat(data, load_addr, entry, mode or "real")

    def set_mode(self, mode: str, entry: int, vcpu: int = 0) -> None:
        """Put a vCPU in ``mode`` and point it at ``entry`` (see :mod:`minikvm.x86.modes`)."""
        target = self.vcpus[vcpu]
        sregs = target.get_sregs()
        regs = target.get_regs()
        modes.setup_mode(mode, self.memory, sregs, regs, entry)
        target.set_sregs(sregs)
        target.set_regs(regs)

    def translate(self, vaddr: int, vcpu: int = 0):
        """Walk a vCPU's current page tables in Python (level by level), the
        way the vCPU would: see :func:`minikvm.x86.paging.translate`."""
        from minikvm.x86.paging import translate   # a run without paging questions skips it
        return translate(self.memory, self.vcpus[vcpu].get_sregs(), vaddr,
                         gbpages=self.paging.gbpages, maxphyaddr=self.paging.maxphyaddr)

    # -- handling exits ------------------------------------------------------

    def _on_debug_exit(self, status: int) -> None:
        self.device_stop = Stop(StopKind.DEBUG_EXIT, status,
                                 f"the guest wrote {self.debug_exit.last_value:#x} to the "
                                 f"debug-exit port: status {status}")

    def _on_reset_request(self) -> None:
        self.device_stop = Stop(StopKind.RESET, board.ExitStatus.OK.value,
                                 "the guest asked for a reset (i8042 command 0xfe)")

    def request_stop(self, stop: Stop) -> None:
        """For devices wired by the machine: end the run after this exit."""
        self.device_stop = stop

    def deliver_host_input(self) -> None:
        """Move queued host input into the receiving device as far as it has
        room. Runs between exits under the lock, like every device access."""
        if self.serial_input.waiting:
            self.serial_input.feed(self.input_target)

    def handle_exit(self, exit: VmExit, runner: VcpuRunner | None = None, *,
                    explain: bool = True, capture_rip: bool = False,
                    rip: int | None = None) -> ExitEvent:
        """Everything the VMM does with one exit of ``runner``'s vCPU
        (default vCPU 0): dispatch it to the buses, decide whether it ends
        the run, explain it, tell the listeners.

        :meth:`step` calls it after ``KVM_RUN``; the debugger calls it for
        exits it met while single-stepping, so devices and traces see them too.
        """
        runner = runner if runner is not None else self.runners[0]
        with self.lock:
            self.deliver_host_input()
            access, count = dispatch_exit(exit, self.pio, self.mmio, explain)
            device_stop, self.device_stop = self.device_stop, None
            self.exit_count += 1
            event = ExitEvent(self.exit_count, runner.returned, runner.returned - runner.started,
                              exit, access, count, vcpu=runner.index)
            event.stop = decide_stop(exit, runner.requests(exit, device_stop), runner.rip,
                                     runner.index)
            if explain:
                event.description = describe_exit(exit, access, count, event.stop)
            if rip is not None:
                event.rip = rip
            elif capture_rip:
                event.rip = runner.rip()
            for listener in self.listeners:
                listener(event)
        return event

    def step(self, explain: bool = True, capture_rip: bool = False, vcpu: int = 0) -> ExitEvent:
        """Run a vCPU to its next exit, handle it, and return what happened."""
        return next_event(self, self.runners[vcpu], explain, capture_rip)

    # -- running -----------------------------------------------------------

    def pause(self) -> None:
        """From any thread: make :meth:`run` return a PAUSED stop soon."""
        for runner in self.runners:
            runner.pause()

    def run(self, timeout: float | None = None, max_exits: int | None = None,
            until: Callable[[], bool] | None = None) -> Stop:
        """Run until the guest stops, ``timeout`` seconds pass, ``pause()``,
        ``max_exits`` exits of the guest (the VMM's kicks do not count), or
        ``until()`` (checked after each exit) is true. A guest that loops
        without exiting is still stopped at the timeout: the watchdog kicks
        the vCPU out of ``KVM_RUN`` (see :meth:`Vcpu.kick`). With several
        vCPUs each runs on its own thread (vCPU 0 on the caller's); a stop
        that ends the guest on any of them ends all; ``max_exits`` counts all.
        """
        for runner in self.runners:
            runner.set_guest_debug()   # a free run: no debugger traps
        with Watchdog(self.runners, timeout):
            if len(self.runners) == 1:
                return run_vcpu(self, self.runners[0], max_exits, until)
            return run_all(self, max_exits, until)

    def close(self) -> None:
        """Release everything the machine holds, at once and idempotently:
        the vCPU, VM and KVM file descriptors, guest RAM (unmapped, not left
        for the garbage collector), and the devices' host resources (a
        virtio-blk image file). Listeners are dropped."""
        self.listeners.clear()
        self.vm.close()
        self.kvm.close()
        self.memory.close()
        for transport in self.virtio:
            close = getattr(transport.backend, "close", None)
            if close is not None:
                close()

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _virtio_backend(spec: VirtioSpec, output: Callable[[bytes], None] | None):
    """The device model a :class:`VirtioSpec` names."""
    if spec.kind == "rng":
        from minikvm.devices.virtio.rng import VirtioRng
        return VirtioRng()
    if spec.kind == "blk":
        from minikvm.devices.virtio.blk import VirtioBlk
        return VirtioBlk(spec.path, read_only=spec.read_only)
    from minikvm.devices.virtio.console import VirtioConsole
    return VirtioConsole(output)
