"""Typed VM exits: what ``KVM_RUN`` returned, as plain Python objects.

``KVM_RUN`` returns when the guest does something the kernel will not handle
by itself. Why it stopped is ``kvm_run.exit_reason``, and the details sit in
a union of the shared ``kvm_run`` page. :func:`decode_exit` turns that page
into one of the classes below, copying out what the guest wrote, so that the
object stays correct after the next ``KVM_RUN`` reuses the page.

Two exits need an answer before the next run: :class:`IoIn` and
:class:`MmioRead`. The guest is stopped in the middle of an ``in`` or a
``mov`` from MMIO; KVM finishes that instruction at the next ``KVM_RUN`` with
the bytes the VMM left in the page. Call ``complete()`` on them.
"""

from __future__ import annotations

import struct
from typing import ClassVar

from minikvm.kvm.uapi import KVM_EXIT_IO_OUT, KvmExit, kvm_run, kvm_run_exit
from minikvm.record import Record

__all__ = [
    "Debug", "ExceptionExit", "FailEntry", "Hlt", "Hypercall", "InternalError",
    "Interrupted", "IoIn", "IoOut", "IrqWindowOpen", "MmioRead", "MmioWrite",
    "Shutdown", "SystemEvent", "Unknown", "VmExit", "decode_exit", "read_io",
    "EXIT_AND_IO", "EXIT_AND_IO_OFFSET",
]

#: ``struct kvm_run.io`` (direction, size, port, count, data_offset) as bytes
#: in the run page, for a hot loop that wants no ctypes objects.
_IO_FIELDS = struct.Struct("<BBHIQ")
_IO_OFFSET = kvm_run._exit.offset + kvm_run_exit.io.offset


def read_io(page: memoryview) -> tuple[int, int, int, int, int]:
    """``(direction, size, port, count, data_offset)`` of the I/O exit in
    ``page``; direction is ``KVM_EXIT_IO_OUT`` (1) or ``KVM_EXIT_IO_IN`` (0)."""
    return _IO_FIELDS.unpack_from(page, _IO_OFFSET)


#: ``exit_reason`` and the ``io`` member of the exit union in one go, for
#: the run loop: ``(reason, direction, size, port, count, data_offset)``.
#: Between them sit ``ready_for_interrupt_injection``, ``if_flag``,
#: ``flags``, ``cr8`` and ``apic_base`` (skipped). For an exit other than
#: ``KVM_EXIT_IO`` the last five are bytes of another union member: noise.
EXIT_AND_IO = struct.Struct(
    f"<I{_IO_OFFSET - kvm_run.exit_reason.offset - 4}x{_IO_FIELDS.format[1:]}")
#: Where :data:`EXIT_AND_IO` starts in the run page.
EXIT_AND_IO_OFFSET = kvm_run.exit_reason.offset

_SYSTEM_EVENT_NAMES = {1: "shutdown", 2: "reset", 3: "crash", 4: "wakeup", 5: "suspend", 6: "SEV termination"}


class VmExit(Record):
    """Base of all exits. ``reason`` is the kernel's ``KVM_EXIT_*`` value.

    The exits are plain records (:class:`~minikvm.record.Record`: fields in
    ``__slots__``, an ``__init__`` written out, ``repr`` and ``==`` as a
    dataclass's, not hashable) rather than dataclasses: every command
    imports this module, and a dataclass costs ~0.5 ms to create (its
    ``__init__``, ``__repr__`` and ``__eq__`` are compiled from source at
    import), ~7 ms for these fifteen.
    """

    __slots__ = ()
    reason: ClassVar[int] = KvmExit.KVM_EXIT_UNKNOWN

    @property
    def reason_name(self) -> str:
        """``"IO"``, ``"HLT"``, ... (the kernel name without ``KVM_EXIT_``)."""
        try:
            return KvmExit(self.reason).name.removeprefix("KVM_EXIT_")
        except ValueError:
            return f"UNKNOWN({self.reason})"


class IoOut(VmExit):
    """The guest executed ``out``/``outs``: ``count`` items of ``size`` bytes
    to ``port``. ``data`` holds them, copied out of the run page."""

    reason: ClassVar[int] = KvmExit.KVM_EXIT_IO
    __slots__ = ("port", "size", "count", "data")

    def __init__(self, port: int, size: int, count: int, data: bytes) -> None:
        self.port = port
        self.size = size
        self.count = count
        self.data = data

    def values(self) -> list[int]:
        """The written items as little-endian integers."""
        size = self.size
        return [int.from_bytes(self.data[i:i + size], "little")
                for i in range(0, size * self.count, size)]


class IoIn(VmExit):
    """The guest executed ``in``/``ins`` and waits for the value(s).

    Call :meth:`complete` before the next ``KVM_RUN``; until then the buffer
    holds whatever was there (a VMM that forgets leaves stale bytes).
    """

    reason: ClassVar[int] = KvmExit.KVM_EXIT_IO
    __slots__ = ("port", "size", "count", "buffer")
    #: Left out of ``repr``: a view of the run page, whose bytes the next
    #: ``KVM_RUN`` reuses.
    _unshown = frozenset({"buffer"})

    def __init__(self, port: int, size: int, count: int, buffer: memoryview) -> None:
        self.port = port
        self.size = size
        self.count = count
        self.buffer = buffer

    def complete(self, values: list[int] | bytes) -> None:
        """Give the guest its ``count`` items (ints or raw bytes)."""
        if isinstance(values, bytes | bytearray):
            raw = bytes(values)
        else:
            raw = b"".join((v & ((1 << (8 * self.size)) - 1)).to_bytes(self.size, "little")
                           for v in values)
        if len(raw) != len(self.buffer):
            raise ValueError(f"IN needs {len(self.buffer)} bytes, got {len(raw)}")
        self.buffer[:] = raw


class MmioRead(VmExit):
    """The guest read ``length`` bytes at a guest-physical address that is
    not RAM. Call :meth:`complete` with the value before the next run."""

    reason: ClassVar[int] = KvmExit.KVM_EXIT_MMIO
    __slots__ = ("address", "length", "buffer")
    #: Left out of ``repr``: a view of the run page, whose bytes the next
    #: ``KVM_RUN`` reuses.
    _unshown = frozenset({"buffer"})

    def __init__(self, address: int, length: int, buffer: memoryview) -> None:
        self.address = address
        self.length = length
        self.buffer = buffer

    def complete(self, value: int) -> None:
        self.buffer[:self.length] = (value & ((1 << (8 * self.length)) - 1)).to_bytes(
            self.length, "little")


class MmioWrite(VmExit):
    """The guest wrote ``data`` at a guest-physical address that is not RAM."""

    reason: ClassVar[int] = KvmExit.KVM_EXIT_MMIO
    __slots__ = ("address", "length", "data")

    def __init__(self, address: int, length: int, data: bytes) -> None:
        self.address = address
        self.length = length
        self.data = data

    @property
    def value(self) -> int:
        return int.from_bytes(self.data, "little")


class Hlt(VmExit):
    """The guest executed ``hlt`` and no in-kernel irqchip handles it.
    ``if_flag`` tells whether interrupts were enabled (RFLAGS.IF)."""

    reason: ClassVar[int] = KvmExit.KVM_EXIT_HLT
    __slots__ = ("if_flag",)

    def __init__(self, if_flag: bool) -> None:
        self.if_flag = if_flag


class Debug(VmExit):
    """A debug event requested with ``KVM_SET_GUEST_DEBUG``: a single step
    (``#DB`` with DR6.BS), a hardware breakpoint or watchpoint (``#DB``), or an
    ``int3`` (``#BP``, exception 3). ``pc`` is the guest RIP."""

    reason: ClassVar[int] = KvmExit.KVM_EXIT_DEBUG
    __slots__ = ("exception", "pc", "dr6", "dr7")

    def __init__(self, exception: int, pc: int, dr6: int, dr7: int) -> None:
        self.exception = exception
        self.pc = pc
        self.dr6 = dr6
        self.dr7 = dr7


class Shutdown(VmExit):
    """The CPU shut down: on x86 almost always a triple fault (an exception
    while delivering a double fault), i.e. the guest crashed."""

    reason: ClassVar[int] = KvmExit.KVM_EXIT_SHUTDOWN
    __slots__ = ()


class FailEntry(VmExit):
    """The hardware refused to enter the guest (invalid guest state)."""

    reason: ClassVar[int] = KvmExit.KVM_EXIT_FAIL_ENTRY
    __slots__ = ("hardware_entry_failure_reason", "cpu")

    def __init__(self, hardware_entry_failure_reason: int, cpu: int) -> None:
        self.hardware_entry_failure_reason = hardware_entry_failure_reason
        self.cpu = cpu


class InternalError(VmExit):
    """KVM could not handle something (often: an instruction its emulator
    does not know). ``suberror`` is ``KVM_INTERNAL_ERROR_*``."""

    reason: ClassVar[int] = KvmExit.KVM_EXIT_INTERNAL_ERROR
    __slots__ = ("suberror", "data")

    def __init__(self, suberror: int, data: tuple[int, ...]) -> None:
        self.suberror = suberror
        self.data = data

    @property
    def suberror_name(self) -> str:
        return {1: "emulation failure", 2: "simultaneous exceptions",
                3: "delivery event failure", 4: "unexpected exit reason"}.get(
                    self.suberror, f"suberror {self.suberror}")


class SystemEvent(VmExit):
    """The guest asked the platform for shutdown, reset or reported a crash."""

    reason: ClassVar[int] = KvmExit.KVM_EXIT_SYSTEM_EVENT
    __slots__ = ("type", "data")

    def __init__(self, type: int, data: tuple[int, ...]) -> None:
        self.type = type
        self.data = data

    @property
    def type_name(self) -> str:
        return _SYSTEM_EVENT_NAMES.get(self.type, f"type {self.type}")


class Hypercall(VmExit):
    """The guest executed ``vmcall``/``vmmcall`` with a hypercall KVM forwards."""

    reason: ClassVar[int] = KvmExit.KVM_EXIT_HYPERCALL
    __slots__ = ("nr", "args")

    def __init__(self, nr: int, args: tuple[int, ...]) -> None:
        self.nr = nr
        self.args = args


class ExceptionExit(VmExit):
    """An exception KVM reports instead of delivering (``KVM_EXIT_EXCEPTION``)."""

    reason: ClassVar[int] = KvmExit.KVM_EXIT_EXCEPTION
    __slots__ = ("exception", "error_code")

    def __init__(self, exception: int, error_code: int) -> None:
        self.exception = exception
        self.error_code = error_code


class IrqWindowOpen(VmExit):
    """The guest can take an interrupt now (after ``request_interrupt_window``)."""

    reason: ClassVar[int] = KvmExit.KVM_EXIT_IRQ_WINDOW_OPEN
    __slots__ = ()


class Interrupted(VmExit):
    """``KVM_RUN`` returned ``EINTR``: a signal or ``immediate_exit`` asked the
    vCPU thread to come back (a pause, a timeout). The guest is intact; run
    again to continue."""

    reason: ClassVar[int] = KvmExit.KVM_EXIT_INTR
    __slots__ = ()


class Unknown(VmExit):
    """An exit this VMM does not decode; ``code`` is the raw ``exit_reason``."""

    __slots__ = ("code", "hardware_exit_reason")

    def __init__(self, code: int, hardware_exit_reason: int = 0) -> None:
        self.code = code
        self.hardware_exit_reason = hardware_exit_reason

    @property
    def reason_name(self) -> str:
        try:
            return KvmExit(self.code).name.removeprefix("KVM_EXIT_")
        except ValueError:
            return f"UNKNOWN({self.code})"


def decode_exit(run: kvm_run, page: memoryview) -> VmExit:
    """Turn the ``kvm_run`` page after a ``KVM_RUN`` into a typed exit.

    ``page`` is the whole mmap'ed run area: string I/O data lives in it at
    ``io.data_offset``, which the guest cannot choose but we check anyway.
    """
    reason = run.exit_reason
    if reason == KvmExit.KVM_EXIT_IO:
        io = run.io
        length = io.size * io.count
        start = io.data_offset
        if start + length > len(page) or length == 0:
            return Unknown(reason)
        buffer = page[start:start + length]
        if io.direction == KVM_EXIT_IO_OUT:
            return IoOut(io.port, io.size, io.count, bytes(buffer))
        return IoIn(io.port, io.size, io.count, buffer)
    if reason == KvmExit.KVM_EXIT_MMIO:
        mmio = run.mmio
        length = min(mmio.len, 8)
        if mmio.is_write:
            return MmioWrite(mmio.phys_addr, length, bytes(mmio.data[:length]))
        offset = kvm_run.mmio.offset + type(mmio).data.offset
        return MmioRead(mmio.phys_addr, length, page[offset:offset + 8])
    if reason == KvmExit.KVM_EXIT_HLT:
        return Hlt(bool(run.if_flag))
    if reason == KvmExit.KVM_EXIT_DEBUG:
        arch = run.debug.arch
        return Debug(arch.exception, arch.pc, arch.dr6, arch.dr7)
    if reason == KvmExit.KVM_EXIT_SHUTDOWN:
        return Shutdown()
    if reason == KvmExit.KVM_EXIT_FAIL_ENTRY:
        return FailEntry(run.fail_entry.hardware_entry_failure_reason, run.fail_entry.cpu)
    if reason == KvmExit.KVM_EXIT_INTERNAL_ERROR:
        internal = run.internal
        count = min(internal.ndata, len(internal.data))
        return InternalError(internal.suberror, tuple(internal.data[:count]))
    if reason == KvmExit.KVM_EXIT_SYSTEM_EVENT:
        event = run.system_event
        count = min(event.ndata, 16)
        return SystemEvent(event.type, tuple(event.data[:count]))
    if reason == KvmExit.KVM_EXIT_HYPERCALL:
        call = run.hypercall
        return Hypercall(call.nr, tuple(call.args))
    if reason == KvmExit.KVM_EXIT_EXCEPTION:
        return ExceptionExit(run.ex.exception, run.ex.error_code)
    if reason == KvmExit.KVM_EXIT_IRQ_WINDOW_OPEN:
        return IrqWindowOpen()
    if reason == KvmExit.KVM_EXIT_INTR:
        return Interrupted()
    return Unknown(reason, run.hw.hardware_exit_reason)

