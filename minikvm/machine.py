"""``Machine``: the one place that wires a virtual machine together.

A VMM is mostly plumbing: open KVM, create a VM, give it RAM, create a vCPU,
put devices on the port-I/O and MMIO buses, load a guest, set the registers,
then loop on ``KVM_RUN`` and answer each exit. This module does exactly that
and nothing more; the devices know nothing of KVM and the exit dispatch is a
plain function (:func:`dispatch_exit`) that can be tested without a VM.

Each exit becomes an :class:`ExitEvent` that carries its meaning: which
device and register the access hit, the value, and a sentence from the
device. :meth:`Machine.step` returns one event; :meth:`Machine.run` loops
until the guest stops (a :class:`Stop` says why and with which status).
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from minikvm.bus import Access, Bus
from minikvm.devices.base import Device, InterruptLine, RecordingLine
from minikvm.devices.debug_exit import DEBUG_EXIT_PORT, DebugExit
from minikvm.devices.debugcon import DEBUGCON_PORT, DebugCon
from minikvm.devices.i8042 import I8042, I8042_DATA_PORT
from minikvm.kvm.exits import (
    Debug,
    FailEntry,
    Hlt,
    InternalError,
    Interrupted,
    IoIn,
    IoOut,
    MmioRead,
    MmioWrite,
    Shutdown,
    SystemEvent,
    VmExit,
)
from minikvm.devices.uart import Uart16550
from minikvm.devices.virtio.mmio import VirtioMmioTransport
from minikvm.hostio import HostInput
from minikvm.kvm.system import DEFAULT_KVM_PATH, Kvm
from minikvm.kvm.uapi import KvmMpState
from minikvm.loaders.elf import load_elf
from minikvm.loaders.flat import load_flat
from minikvm.memory import GuestMemory
from minikvm.x86 import layout, modes
from minikvm.x86.cpuid import paging_features
from minikvm.x86.paging import translate

__all__ = [
    "DEFAULT_MEM_SIZE",
    "ExitEvent",
    "KvmIrqLine",
    "Machine",
    "Stop",
    "StopKind",
    "describe_exit",
    "dispatch_exit",
]

DEFAULT_MEM_SIZE = 2 * 1024 * 1024

#: COM1, as on every PC: eight ports from 0x3F8, interrupt on IRQ 4.
COM1_PORT = 0x3F8
COM1_IRQ = 4

#: virtio-mmio devices: 4 KiB windows from here, IRQ 5, 6, 7 ... in order
#: (DESIGN.md; Linux learns them from ``virtio_mmio.device=4K@0xd0000000:5``).
VIRTIO_MMIO_BASE = 0xD000_0000
VIRTIO_MMIO_WINDOW = 0x1000
VIRTIO_MMIO_FIRST_IRQ = 5

#: With the in-kernel irqchip, ``hlt`` waits inside KVM and never exits to
#: us. If no exit came for this long, the machine looks whether the guest
#: halted with interrupts off (then nothing can ever wake it: the run is over).
HALT_CHECK_INTERVAL = 0.05

#: Exit statuses of ``minikvm run`` (DESIGN.md, "the guest contract").
STATUS_OK = 0
STATUS_KVM_UNAVAILABLE = 1
STATUS_USAGE = 2
STATUS_GUEST_CRASH = 3
STATUS_TIMEOUT = 124


class StopKind(enum.Enum):
    """Why a run ended."""

    HALT = "halt"                  # hlt with interrupts off: the guest is done
    DEBUG_EXIT = "debug-exit"      # the guest wrote to port 0xF4
    POWER_OFF = "power-off"        # KVM_SYSTEM_EVENT shutdown
    RESET = "reset"                # the guest asked for a reset (i8042, system event)
    SHUTDOWN = "shutdown"          # triple fault
    FAIL_ENTRY = "fail-entry"      # the CPU refused the guest state
    INTERNAL_ERROR = "internal-error"
    UNEXPECTED_EXIT = "unexpected-exit"
    TIMEOUT = "timeout"
    PAUSED = "paused"              # another thread called pause()
    EXIT_LIMIT = "exit-limit"      # run(max_exits=...) reached


@dataclass(frozen=True)
class Stop:
    """The end of a run: what happened, the process status it maps to, and
    one line for a person. ``status`` is None for a pause (not an end)."""

    kind: StopKind
    status: int | None
    message: str
    rip: int | None = None


@dataclass(slots=True)
class ExitEvent:
    """One VM exit and what it meant.

    ``access`` is the bus access an I/O or MMIO exit turned into (device,
    register, value, description); ``stop`` is set when this exit ended the
    run. ``guest_time`` is how long the guest ran before exiting (seconds).
    """

    seq: int
    time: float
    guest_time: float
    exit: VmExit
    access: Access | None = None
    accesses: int = 1
    stop: Stop | None = None
    description: str = ""
    rip: int | None = None

    @property
    def reason(self) -> str:
        """Exit reason, with I/O and MMIO split by direction (``IO_OUT``...)."""
        ex = self.exit
        if isinstance(ex, IoOut):
            return "IO_OUT"
        if isinstance(ex, IoIn):
            return "IO_IN"
        if isinstance(ex, MmioWrite):
            return "MMIO_WRITE"
        if isinstance(ex, MmioRead):
            return "MMIO_READ"
        return ex.reason_name

    @property
    def device(self) -> str:
        return self.access.device_name if self.access is not None else ""

    @property
    def register(self) -> str:
        return self.access.register if self.access is not None else ""

    @property
    def value(self) -> int | None:
        return self.access.value if self.access is not None else None


class KvmIrqLine:
    """An interrupt wire into KVM's in-kernel irqchip (``KVM_IRQ_LINE``).

    Only level changes reach the kernel: a device that recomputes its line on
    every register access would otherwise cost an ioctl each time.
    """

    def __init__(self, vm, gsi: int) -> None:
        self.vm = vm
        self.gsi = gsi
        self.level = False
        self.changes = 0

    def set_level(self, level: bool) -> None:
        level = bool(level)
        if level != self.level:
            self.level = level
            self.changes += 1
            self.vm.irq_line(self.gsi, level)


def dispatch_exit(exit: VmExit, pio: Bus, mmio: Bus, explain: bool = False) -> tuple[Access | None, int]:
    """Send an I/O or MMIO exit to its bus and complete reads for the guest.

    Returns the (first) bus access and the number of accesses (string I/O
    such as ``rep outsb`` moves ``count`` items in one exit). Other exits
    return ``(None, 0)``. This is the whole of "emulating a device access".
    """
    if isinstance(exit, IoOut):
        size = exit.size
        first = None
        for i in range(exit.count):
            value = int.from_bytes(exit.data[i * size:(i + 1) * size], "little")
            access = pio.write(exit.port, size, value, explain)
            if first is None:
                first = access
        return first, exit.count
    if isinstance(exit, IoIn):
        values = []
        first = None
        for _ in range(exit.count):
            access = pio.read(exit.port, exit.size, explain)
            values.append(access.value)
            if first is None:
                first = access
        exit.complete(values)
        return first, exit.count
    if isinstance(exit, MmioWrite):
        return mmio.write(exit.address, exit.length, exit.value, explain), 1
    if isinstance(exit, MmioRead):
        access = mmio.read(exit.address, exit.length, explain)
        exit.complete(access.value)
        return access, 1
    return None, 0


def describe_exit(exit: VmExit, access: Access | None, accesses: int) -> str:
    """One sentence on what an exit was, for the trace and the TUI."""
    if access is not None:
        where = f"port {access.address:#06x}" if access.space == "pio" else f"{access.address:#x}"
        verb = "write" if access.is_write else "read"
        text = access.description or f"{access.size}-byte {verb} at {where}"
        if accesses > 1:
            text += f" (string I/O: {accesses} items in one exit)"
        return text
    if isinstance(exit, Hlt):
        if exit.if_flag:
            return "hlt with interrupts on: the guest waits for an interrupt"
        return "hlt with interrupts off: the guest has stopped for good"
    if isinstance(exit, Debug):
        return f"debug exception {exit.exception} at {exit.pc:#x} (dr6={exit.dr6:#x})"
    if isinstance(exit, Shutdown):
        return "shutdown: the CPU met a fault while handling a double fault (triple fault)"
    if isinstance(exit, FailEntry):
        return (f"VM entry failed: the CPU refused the guest state "
                f"(hardware reason {exit.hardware_entry_failure_reason:#x})")
    if isinstance(exit, InternalError):
        return f"KVM internal error: {exit.suberror_name}"
    if isinstance(exit, SystemEvent):
        return f"system event: the guest asks for {exit.type_name}"
    if isinstance(exit, Interrupted):
        return "KVM_RUN interrupted by a signal (pause or timeout): the guest is intact"
    return f"exit {exit.reason_name}"


class Machine:
    """A VM with RAM, one vCPU, port-I/O and MMIO buses and the debug devices.

    >>> m = Machine()                                     # doctest: +SKIP
    >>> m.load_flat("guests/build/hello.bin", 0x1000)     # doctest: +SKIP
    >>> m.run(timeout=5)                                  # doctest: +SKIP
    Stop(kind=<StopKind.HALT: 'halt'>, status=0, ...)
    """

    def __init__(self, mem_size: int = DEFAULT_MEM_SIZE, *, kvm: Kvm | None = None,
                 kvm_path: str = DEFAULT_KVM_PATH, irqchip: bool = False,
                 output: Callable[[bytes], None] | None = None) -> None:
        self.kvm = kvm if kvm is not None else Kvm(kvm_path)
        self.vm = self.kvm.create_vm()
        # Intel VMX needs these two guest-physical areas (outside RAM) to run
        # real-mode code; AMD and kvm-pvm accept and ignore them.
        self.vm.set_tss_addr(layout.KVM_TSS_ADDR)
        self.vm.set_identity_map_addr(layout.KVM_IDENTITY_MAP_ADDR)
        self.irqchip = irqchip
        if irqchip:
            self.vm.create_irqchip()
            self.vm.create_pit2()

        self.memory = GuestMemory.with_size(mem_size)
        for region in self.memory.regions:
            self.vm.set_user_memory_region(region.slot, region.guest_phys_addr, region.size,
                                           region.host_address)
        self.vcpu = self.vm.create_vcpu(0)
        # The CPUID the guest sees: everything KVM can virtualize, as QEMU's
        # "-cpu host" does. KVM's page walker also reads it (1 GiB pages,
        # physical address width), so our own walk asks the same table.
        self.cpuid = self.kvm.supported_cpuid()
        self.vcpu.set_cpuid2(self.cpuid)
        self.paging = paging_features(self.cpuid)

        self.pio = Bus("pio")
        self.mmio = Bus("mmio")
        self.debugcon = DebugCon(output)
        self.debug_exit = DebugExit(self._on_debug_exit)
        self.pio.register(DEBUGCON_PORT, 1, self.debugcon)
        self.pio.register(DEBUG_EXIT_PORT, 4, self.debug_exit)
        # Ports 0x60 (data) to 0x64 (command/status). Port 0x61 in between is
        # the PC speaker: the in-kernel PIT claims it (KVM_PIT_SPEAKER_DUMMY)
        # before it reaches us; without one the i8042 model floats it.
        self.i8042 = I8042(self._on_reset_request)
        self.pio.register(I8042_DATA_PORT, 5, self.i8042)
        #: COM1. Its interrupt reaches the guest only with the irqchip;
        #: without one the line is just recorded.
        self.serial_input = HostInput()
        self.uart = Uart16550(self._line(COM1_IRQ), output, name="com1")
        self.pio.register(COM1_PORT, 8, self.uart)
        #: virtio-mmio transports, in the order added (see add_virtio).
        self.virtio: list = []
        #: Where host input (send_serial_input, the keyboard) goes: COM1, or
        #: the virtio console once one is added.
        self.input_target = self.uart

        #: Called with every ExitEvent (the tracer, the TUI).
        self.listeners: list[Callable[[ExitEvent], None]] = []
        #: Called when run() starts to let the guest go freely (a debugger
        #: uses it to turn single-stepping off).
        self.run_hooks: list[Callable[[], None]] = []
        self.exit_count = 0
        self.image = None
        self._pending_stop: Stop | None = None
        self._timed_out = False
        self._pause_requested = False
        self._halt_check_pending = False

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

    def add_virtio(self, backend):
        """Put a virtio device (rng, blk, console backend) on the next
        virtio-mmio window and IRQ; returns its transport."""
        index = len(self.virtio)
        base = VIRTIO_MMIO_BASE + index * VIRTIO_MMIO_WINDOW
        irq = VIRTIO_MMIO_FIRST_IRQ + index
        transport = VirtioMmioTransport(backend, self.memory, self._line(irq),
                                        name=f"virtio{index}-{backend.name}")
        self.mmio.register(base, VIRTIO_MMIO_WINDOW, transport)
        self.virtio.append(transport)
        if backend.name == "console":
            self.input_target = _ConsoleInput(backend)
        return transport

    def virtio_cmdline(self) -> str:
        """The Linux command-line words that describe our virtio-mmio devices."""
        return " ".join(
            f"virtio_mmio.device=4K@{VIRTIO_MMIO_BASE + i * VIRTIO_MMIO_WINDOW:#x}:"
            f"{VIRTIO_MMIO_FIRST_IRQ + i}" for i in range(len(self.virtio)))

    def _line(self, gsi: int) -> InterruptLine:
        """GSI ``gsi`` of the irqchip, or a line that only records without one."""
        return self.irq_line(gsi) if self.irqchip else RecordingLine()

    def send_serial_input(self, data: bytes) -> int:
        """Queue bytes for COM1's receiver (bounded; returns how many were
        accepted) and wake the vCPU so they are delivered promptly."""
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
        loaded = load_elf(self.memory, image)
        self.image = loaded
        self.set_mode(mode or loaded.mode.value, loaded.entry if entry is None else entry)
        return loaded

    def load_guest(self, path: str | Path, load_addr: int | None = None,
                   entry: int | None = None, mode: str | None = None):
        """Load ``path`` as ELF when it starts with the ELF magic, else as a
        flat binary at ``load_addr`` (default 0x1000) in ``mode`` (default real)."""
        with open(path, "rb") as file:
            data = file.read()
        if data[:4] == b"\x7fELF":
            return self.load_elf(data, entry=entry, mode=mode)
        load_addr = layout.FLAT_LOAD_ADDR if load_addr is None else load_addr
        return self.load_flat(data, load_addr, entry, mode or "real")

    def set_mode(self, mode: str, entry: int) -> None:
        """Put the vCPU in ``mode`` and point it at ``entry`` (see :mod:`minikvm.x86.modes`)."""
        sregs = self.vcpu.get_sregs()
        regs = self.vcpu.get_regs()
        modes.setup_mode(mode, self.memory, sregs, regs, entry)
        self.vcpu.set_sregs(sregs)
        self.vcpu.set_regs(regs)

    def translate(self, vaddr: int):
        """Walk the guest's current page tables in Python (level by level),
        the way the vCPU would: see :func:`minikvm.x86.paging.translate`."""
        return translate(self.memory, self.vcpu.get_sregs(), vaddr,
                         gbpages=self.paging.gbpages, maxphyaddr=self.paging.maxphyaddr)

    # -- running -----------------------------------------------------------

    def _on_debug_exit(self, status: int) -> None:
        self._pending_stop = Stop(StopKind.DEBUG_EXIT, status,
                                  f"the guest wrote {self.debug_exit.last_value:#x} to the "
                                  f"debug-exit port: status {status}")

    def _on_reset_request(self) -> None:
        self._pending_stop = Stop(StopKind.RESET, STATUS_OK,
                                  "the guest asked for a reset (i8042 command 0xfe)")

    def request_stop(self, stop: Stop) -> None:
        """For devices wired by the machine: end the run after this exit."""
        self._pending_stop = stop

    def pause(self) -> None:
        """From any thread: make :meth:`run` return a PAUSED stop soon."""
        self._pause_requested = True
        self.vcpu.kick()

    def _rip(self) -> int | None:
        try:
            return self.vcpu.get_regs().rip
        except Exception:  # noqa: BLE001 - a report must not fail
            return None

    def _stop_for(self, exit: VmExit) -> Stop | None:
        """Which exits end a run, and with which status (DESIGN.md)."""
        if self._pending_stop is not None:
            stop, self._pending_stop = self._pending_stop, None
            return stop
        if isinstance(exit, Hlt):
            if exit.if_flag:
                return Stop(StopKind.HALT, STATUS_OK,
                            "the guest halted with interrupts on, but this machine has no "
                            "interrupt controller to wake it", self._rip())
            return Stop(StopKind.HALT, STATUS_OK, "the guest halted (hlt with interrupts off)",
                        self._rip())
        if isinstance(exit, Shutdown):
            rip = self._rip()
            where = f" at RIP {rip:#x}" if rip is not None else ""
            return Stop(StopKind.SHUTDOWN, STATUS_GUEST_CRASH,
                        f"guest crashed: triple fault (shutdown){where}", rip)
        if isinstance(exit, FailEntry):
            return Stop(StopKind.FAIL_ENTRY, STATUS_GUEST_CRASH,
                        f"VM entry failed: hardware reason "
                        f"{exit.hardware_entry_failure_reason:#x} (invalid guest state)", self._rip())
        if isinstance(exit, InternalError):
            rip = self._rip()
            where = f" at RIP {rip:#x}" if rip is not None else ""
            return Stop(StopKind.INTERNAL_ERROR, STATUS_GUEST_CRASH,
                        f"KVM internal error: {exit.suberror_name}{where}", rip)
        if isinstance(exit, SystemEvent):
            if exit.type_name == "shutdown":
                return Stop(StopKind.POWER_OFF, STATUS_OK, "the guest powered off")
            if exit.type_name == "reset":
                return Stop(StopKind.RESET, STATUS_OK, "the guest asked for a reset")
            return Stop(StopKind.SHUTDOWN, STATUS_GUEST_CRASH,
                        f"system event: {exit.type_name}", self._rip())
        if isinstance(exit, Interrupted):
            if self._halt_check_pending:
                self._halt_check_pending = False
                stop = self._halted_for_good()
                if stop is not None:
                    return stop
            if self._timed_out:
                return Stop(StopKind.TIMEOUT, STATUS_TIMEOUT, "timeout: the guest was stopped",
                            self._rip())
            if self._pause_requested:
                self._pause_requested = False
                return Stop(StopKind.PAUSED, None, "paused", self._rip())
            return None
        if isinstance(exit, (IoOut, IoIn, MmioRead, MmioWrite, Debug)):
            return None
        rip = self._rip()
        return Stop(StopKind.UNEXPECTED_EXIT, STATUS_GUEST_CRASH,
                    f"unexpected exit {exit.reason_name}"
                    + (f" at RIP {rip:#x}" if rip is not None else ""), rip)

    def _halted_for_good(self) -> Stop | None:
        """With the irqchip: is the vCPU halted with RFLAGS.IF clear? Then no
        device interrupt can wake it (only NMI/INIT, which nothing sends)."""
        if self.vcpu.get_mp_state() != KvmMpState.KVM_MP_STATE_HALTED:
            return None
        regs = self.vcpu.get_regs()
        if regs.rflags & 0x200:  # RFLAGS.IF
            return None
        return Stop(StopKind.HALT, STATUS_OK, "the guest halted (hlt with interrupts off)",
                    regs.rip)

    def deliver_host_input(self) -> None:
        """Move queued host input into the receiving device as far as it has
        room. Runs on the vCPU thread between exits, so devices are only ever
        touched by one thread."""
        if len(self.serial_input):
            self.serial_input.feed(self.input_target)

    def step(self, explain: bool = True, capture_rip: bool = False) -> ExitEvent:
        """Run the guest to its next exit, handle it, and return what happened."""
        started = time.monotonic()
        exit = self.vcpu.run()
        return self.handle_exit(exit, started, time.monotonic(), explain, capture_rip)

    def handle_exit(self, exit: VmExit, started: float, now: float, explain: bool = True,
                    capture_rip: bool = False, rip: int | None = None) -> ExitEvent:
        """Everything the VMM does with one exit: dispatch it to the buses,
        decide whether it ends the run, explain it, tell the listeners.

        :meth:`step` calls it after ``KVM_RUN``; the debugger calls it for
        exits it met while single-stepping, so devices and traces see them too.
        """
        self.deliver_host_input()
        access, count = dispatch_exit(exit, self.pio, self.mmio, explain)
        self.exit_count += 1
        event = ExitEvent(self.exit_count, now, now - started, exit, access, count)
        event.stop = self._stop_for(exit)
        if explain:
            event.description = describe_exit(exit, access, count)
        event.rip = rip if rip is not None else (self._rip() if capture_rip else None)
        for listener in self.listeners:
            listener(event)
        return event

    def run(self, timeout: float | None = None, max_exits: int | None = None,
            until: Callable[[], bool] | None = None) -> Stop:
        """Run until the guest stops, ``timeout`` seconds pass, ``pause()``,
        ``max_exits`` exits, or ``until()`` (checked after each exit) is true.

        A guest that loops without exiting is still stopped at the timeout: a
        timer thread kicks the vCPU out of ``KVM_RUN`` (see :meth:`Vcpu.kick`).
        """
        self._timed_out = False
        for hook in self.run_hooks:
            hook()
        timer = None
        if timeout is not None:
            timer = threading.Timer(timeout, self._on_timeout)
            timer.daemon = True
            timer.start()
        watchdog = _HaltWatchdog(self) if self.irqchip else None
        try:
            exits = 0
            explain = bool(self.listeners)
            while True:
                event = self.step(explain=explain, capture_rip=explain)
                if event.stop is not None:
                    return event.stop
                exits += 1
                if max_exits is not None and exits >= max_exits:
                    return Stop(StopKind.EXIT_LIMIT, None, f"stopped after {exits} exits",
                                self._rip())
                if until is not None and until():
                    return Stop(StopKind.PAUSED, None, "the condition asked for was met",
                                self._rip())
        finally:
            if watchdog is not None:
                watchdog.stop()
            if timer is not None:
                timer.cancel()
            self._timed_out = False

    def _on_timeout(self) -> None:
        self._timed_out = True
        self.vcpu.kick()

    def close(self) -> None:
        self.vm.close()
        self.kvm.close()

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _HaltWatchdog:
    """Kicks the vCPU when no exit came for a while, so that the machine can
    see a guest that halted with interrupts off inside the in-kernel irqchip."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="minikvm-halt-check",
                                        daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        machine = self.machine
        seen = machine.exit_count
        while not self._stop.wait(HALT_CHECK_INTERVAL):
            if machine.exit_count == seen and not machine._halt_check_pending:
                machine._halt_check_pending = True
                machine.vcpu.kick()
            seen = machine.exit_count

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)


class _ConsoleInput:
    """Host input into a virtio console, with the receiver interface of a UART."""

    def __init__(self, console) -> None:
        self.console = console

    def rx_space(self) -> int:
        return max(0, self.console.input_limit - len(self.console.pending))

    def receive(self, data: bytes) -> int:
        return self.console.receive(data)

