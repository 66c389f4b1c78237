"""What the debugger hands back besides a stop: a stepped instruction, and
the filter that says which exit to stop at.

Why the guest stopped is the core's one :class:`~minikvm.core.stop.Stop`
(a breakpoint, a watchpoint, a matched exit, the guest's own end ...), the
same type every front end gets. These are plain records, with no
behaviour beyond describing themselves, so the TUI, lessons and tests can
build and inspect them without a VM.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from minikvm.core.events import ExitEvent
from minikvm.core.stop import Stop
from minikvm.debug.inspect import (
    REG_INDEX,
    RegisterSnapshot,
    changed_in_values,
    regs_from_values,
    values_of,
)
from minikvm.kvm.exits import Debug, IoIn, IoOut, MmioRead, MmioWrite
from minikvm.kvm.uapi import kvm_regs

if TYPE_CHECKING:
    from minikvm.debug.guestview import GuestView

__all__ = ["ExitFilter", "StepRecord", "stepped_record"]

_RIP = REG_INDEX["rip"]


@dataclass(frozen=True)
class ExitFilter:
    """Which exit :meth:`Debugger.cont` should stop at; unset fields match anything.

    ``reason`` is an :attr:`ExitEvent.reason` (``IO_OUT``, ``IO_IN``,
    ``MMIO_READ``, ``MMIO_WRITE``, ``HLT`` ...) or ``IO``/``MMIO`` for both
    directions; ``port`` a port number; ``address`` an MMIO guest-physical
    address inside the access; ``device`` a device name.
    """

    reason: str | None = None
    port: int | None = None
    address: int | None = None
    device: str | None = None

    def __call__(self, event: ExitEvent) -> bool:
        return self.matches(event)

    def matches(self, event: ExitEvent) -> bool:
        exit = event.exit
        if self.reason is not None:
            reason = event.reason
            if self.reason != reason and not (self.reason in ("IO", "MMIO")
                                              and reason.startswith(self.reason + "_")):
                return False
        if self.port is not None:
            if not isinstance(exit, (IoIn, IoOut)) or exit.port != self.port:
                return False
        if self.address is not None:
            if not isinstance(exit, (MmioRead, MmioWrite)):
                return False
            if not exit.address <= self.address < exit.address + max(exit.length, 1):
                return False
        if self.device is not None and event.device != self.device:
            return False
        return True


class StepRecord:
    """One single-stepped instruction: the registers before and after, the
    linear addresses it started and ended at, and the exits it caused.

    ``changed`` names the registers the instruction changed; ``stop`` is the
    machine's :class:`Stop` when the instruction ended the run (``hlt``,
    the debug-exit port); ``hit`` the ``WATCHPOINT`` :class:`Stop` of a
    watchpoint it touched.

    ``before`` and ``after`` are given either as ``kvm_regs`` or as the 18
    values of one (a tuple in ``kvm_regs`` order, :func:`~minikvm.debug.
    inspect.values_of`). The stepper hands over tuples, read from the run
    page in one unpack: a step then makes no ctypes structure at all, and
    ``changed`` compares the two tuples. A ``kvm_regs`` is made when someone
    asks for :attr:`before` or :attr:`after`; ``view`` (the debugger's
    :class:`~minikvm.debug.guestview.GuestView`) makes ``after`` the very
    structure the view serves for this stop, as when the record held it.
    """

    __slots__ = ("pc", "new_pc", "exits", "stop", "debug", "hit",
                 "_values_before", "_values_after", "_before", "_after", "_view")

    def __init__(self, before: kvm_regs | tuple[int, ...], after: kvm_regs | tuple[int, ...],
                 pc: int, new_pc: int, exits: tuple[ExitEvent, ...] = (),
                 stop: Stop | None = None, debug: Debug | None = None,
                 view: GuestView | None = None) -> None:
        if type(before) is tuple:
            self._values_before, self._before = before, None
        else:
            self._values_before, self._before = None, before
        if type(after) is tuple:
            self._values_after, self._after = after, None
        else:
            self._values_after, self._after = None, after
        self.pc = pc
        self.new_pc = new_pc
        self.exits = exits
        self.stop = stop
        self.debug = debug
        self.hit: Stop | None = None
        self._view = view

    @property
    def before(self) -> kvm_regs:
        regs = self._before
        if regs is None:
            regs = self._before = regs_from_values(self._values_before)  # type: ignore[arg-type]
        return regs

    @property
    def after(self) -> kvm_regs:
        regs = self._after
        if regs is None:
            values = self._values_after
            view = self._view
            regs = view.regs_of(values) if view is not None else regs_from_values(values)
            self._after = regs
        return regs

    @property
    def values_before(self) -> tuple[int, ...]:
        """The registers before, as the 18 values of ``kvm_regs``."""
        values = self._values_before
        if values is None:
            values = self._values_before = values_of(self._before)
        return values

    @property
    def values_after(self) -> tuple[int, ...]:
        """The registers after, as the 18 values of ``kvm_regs``."""
        values = self._values_after
        if values is None:
            values = self._values_after = values_of(self._after)
        return values

    @property
    def old_rip(self) -> int:
        return self.values_before[_RIP]

    @property
    def new_rip(self) -> int:
        return self.values_after[_RIP]

    @property
    def changed(self) -> tuple[str, ...]:
        """Registers whose value the instruction changed (RIP nearly always),
        in ``kvm_regs`` order.

        The TUI and the trace read it after every step, so it is written
        out: the two tuples unpacked into one name per register (``rax``
        before, ``rax_`` after), then one ``!=`` per register, instead of
        :func:`~minikvm.debug.inspect.changed_in_values`'s
        ``compress(names, map(ne, before, after))``. On CPython 3.11 each
        ``!=`` here is a few bytecodes, specialised for the small ints most
        registers hold, where ``map`` calls ``operator.ne`` eighteen times:
        4,400 instructions instead of 9,100 (callgrind,
        benchmarks/single_step.py). The order of the names is ``struct
        kvm_regs``' (``GPR_NAMES``, then RIP and RFLAGS);
        tests/test_debug_step_record.py holds it to ``changed_in_values``.
        A record made from ``kvm_regs`` has no tuples yet: unpacking the None
        raises, and the properties make them."""
        names: tuple[str, ...] = ()
        try:
            (rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp, r8, r9, r10, r11, r12, r13, r14, r15,
             rip, rflags) = self._values_before
            (rax_, rbx_, rcx_, rdx_, rsi_, rdi_, rsp_, rbp_, r8_, r9_, r10_, r11_, r12_, r13_,
             r14_, r15_, rip_, rflags_) = self._values_after
            if rax != rax_: names += ("rax",)
            if rbx != rbx_: names += ("rbx",)
            if rcx != rcx_: names += ("rcx",)
            if rdx != rdx_: names += ("rdx",)
            if rsi != rsi_: names += ("rsi",)
            if rdi != rdi_: names += ("rdi",)
            if rsp != rsp_: names += ("rsp",)
            if rbp != rbp_: names += ("rbp",)
            if r8 != r8_: names += ("r8",)
            if r9 != r9_: names += ("r9",)
            if r10 != r10_: names += ("r10",)
            if r11 != r11_: names += ("r11",)
            if r12 != r12_: names += ("r12",)
            if r13 != r13_: names += ("r13",)
            if r14 != r14_: names += ("r14",)
            if r15 != r15_: names += ("r15",)
            if rip != rip_: names += ("rip",)
            if rflags != rflags_: names += ("rflags",)
        except TypeError:
            return changed_in_values(self.values_before, self.values_after)
        return names

    @property
    def registers(self) -> RegisterSnapshot:
        return RegisterSnapshot(*self.values_after)

    def __repr__(self) -> str:
        extra = f", exits={len(self.exits)}" if self.exits else ""
        return (f"StepRecord({self.old_rip:#x} -> {self.new_rip:#x}, "
                f"changed={','.join(self.changed)}{extra})")


def stepped_record(before: tuple[int, ...], after: tuple[int, ...], pc: int, new_pc: int,
                   view: GuestView) -> StepRecord:
    """The record of a plain step (no exit, the registers as tuples), made
    the plain way: the reference the tests hold the stepper to. The stepper's
    hot path does not call this; it fills a record in place without
    ``__init__`` (debug/stepper.py: a class call and its keyword and type
    checks measured ~2 µs a step after a ``KVM_RUN``, a call of this
    function ~700 instructions), and
    ``test_a_plain_step_record_reads_as_the_one_init_makes`` compares the two."""
    return StepRecord(before, after, pc, new_pc, view=view)
