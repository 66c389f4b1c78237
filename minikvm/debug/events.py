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

from minikvm.core.events import ExitEvent
from minikvm.core.stop import Stop
from minikvm.debug.inspect import RegisterSnapshot, changed_in_regs
from minikvm.kvm.exits import Debug, IoIn, IoOut, MmioRead, MmioWrite
from minikvm.kvm.uapi import kvm_regs

__all__ = ["ExitFilter", "StepRecord"]


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
    """

    __slots__ = ("before", "after", "pc", "new_pc", "exits", "stop", "debug", "hit")

    def __init__(self, before: kvm_regs, after: kvm_regs, pc: int, new_pc: int,
                 exits: tuple[ExitEvent, ...] = (), stop: Stop | None = None,
                 debug: Debug | None = None) -> None:
        self.before = before
        self.after = after
        self.pc = pc
        self.new_pc = new_pc
        self.exits = exits
        self.stop = stop
        self.debug = debug
        self.hit: Stop | None = None

    @property
    def old_rip(self) -> int:
        return self.before.rip

    @property
    def new_rip(self) -> int:
        return self.after.rip

    @property
    def changed(self) -> tuple[str, ...]:
        """Registers whose value the instruction changed (RIP nearly always)."""
        return changed_in_regs(self.before, self.after)

    @property
    def registers(self) -> RegisterSnapshot:
        return RegisterSnapshot.capture(self.after)

    def __repr__(self) -> str:
        extra = f", exits={len(self.exits)}" if self.exits else ""
        return (f"StepRecord({self.old_rip:#x} -> {self.new_rip:#x}, "
                f"changed={','.join(self.changed)}{extra})")
