"""One stop vocabulary: why a vCPU stopped running, for every front end.

Whatever drives the guest -- :meth:`Machine.run`, the debugger's ``cont`` and
``step``, the TUI, ``minikvm run`` -- ends up with one :class:`Stop`: what
happened (:class:`StopKind`), the process exit status it maps to (``None``
while the guest can go on), one line for a person, where (RIP) and on which
vCPU. A debugger stop adds the breakpoint or watchpoint it hit.

Whether an exit ends the run is decided by one pure function,
:func:`decide_stop`, from the exit and what was asked meanwhile
(:class:`Requests`: a device's stop, a timeout, a pause, the halt check).
It needs no VM, so a table test can hold every rule.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

from minikvm.core.board import ExitStatus
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
from minikvm.record import FrozenRecord, Record

__all__ = [
    "CRASH_KINDS",
    "FINISHED_KINDS",
    "HALTED_MESSAGE",
    "Requests",
    "Stop",
    "StopKind",
    "decide_stop",
]


class StopKind(enum.Enum):
    """Why a run (or a debugger step) stopped."""

    # The guest ended: a status for the process.
    HALT = "halt"                    # hlt with interrupts off: the guest is done
    DEBUG_EXIT = "debug-exit"        # the guest wrote to the debug-exit port
    POWER_OFF = "power-off"          # KVM_SYSTEM_EVENT shutdown (ACPI power off)
    RESET = "reset"                  # the guest asked for a reset (i8042, system event)
    # The guest crashed.
    SHUTDOWN = "shutdown"            # triple fault
    FAIL_ENTRY = "fail-entry"        # the CPU refused the guest state
    INTERNAL_ERROR = "internal-error"  # KVM could not go on (e.g. emulation failed)
    UNEXPECTED_EXIT = "unexpected-exit"  # an exit this VMM has no answer for
    # The VMM ended it.
    TIMEOUT = "timeout"              # the time given to the run ran out
    # Stopped, and the guest can go on.
    PAUSED = "paused"                # pause() from another thread, or ``until`` met
    EXIT_LIMIT = "exit-limit"        # run(max_exits=...) reached
    BREAKPOINT = "breakpoint"        # the debugger's breakpoint
    WATCHPOINT = "watchpoint"        # the debugger's watchpoint
    EXIT_MATCHED = "exit-matched"    # the debugger's ``until`` filter matched an exit
    STEP_LIMIT = "step-limit"        # ``max_steps`` instructions single-stepped
    DEBUG_EXCEPTION = "debug-exception"  # a #DB/#BP the debugger did not ask for
    HISTORY_START = "history-start"  # going backwards, nothing older was recorded
    HISTORY_END = "history-end"      # replaying forwards, the recorded history ran out


#: Kinds after which the guest has finished normally.
FINISHED_KINDS = frozenset({StopKind.HALT, StopKind.DEBUG_EXIT, StopKind.POWER_OFF,
                            StopKind.RESET})
#: Kinds after which the guest cannot go on because it (or KVM) failed.
CRASH_KINDS = frozenset({StopKind.SHUTDOWN, StopKind.FAIL_ENTRY, StopKind.INTERNAL_ERROR,
                         StopKind.UNEXPECTED_EXIT})

HALTED_MESSAGE = "the guest halted (hlt with interrupts off)"

# Plain ints in a Stop, so that it prints as ``status=0``.
_OK = int(ExitStatus.OK)
_CRASH = int(ExitStatus.GUEST_CRASH)
_TIMEOUT = int(ExitStatus.TIMEOUT)


class Stop(FrozenRecord):
    """Where and why a vCPU stopped.

    ``status`` is the process exit status the stop maps to, or ``None`` when
    the guest can go on (a pause, a breakpoint). ``vcpu`` is the index of
    the vCPU that stopped. ``event`` is the exit that caused the stop, when
    one did. A debugger stop also carries ``breakpoint`` or ``watchpoint``
    (with the watched bytes' ``old_value``/``new_value``) and ``steps``,
    the instructions single-stepped on the way.

    A frozen record (:mod:`minikvm.record`): two stops are equal when all
    but ``event``, ``breakpoint`` and ``watchpoint`` are, which ``repr``
    leaves out too.
    """

    __slots__ = ("kind", "status", "message", "rip", "vcpu", "event", "breakpoint",
                 "watchpoint", "old_value", "new_value", "steps")
    _uncompared = _unshown = frozenset({"event", "breakpoint", "watchpoint"})
    kind: StopKind
    status: int | None
    message: str
    rip: int | None
    vcpu: int
    event: Any
    breakpoint: Any
    watchpoint: Any
    old_value: int | None
    new_value: int | None
    steps: int

    def __init__(self, kind: StopKind, status: int | None, message: str, rip: int | None = None,
                 vcpu: int = 0, event: Any = None, breakpoint: Any = None, watchpoint: Any = None,
                 old_value: int | None = None, new_value: int | None = None,
                 steps: int = 0) -> None:
        self._set(kind=kind, status=status, message=message, rip=rip, vcpu=vcpu, event=event,
                  breakpoint=breakpoint, watchpoint=watchpoint, old_value=old_value,
                  new_value=new_value, steps=steps)

    @property
    def ended(self) -> bool:
        """The guest cannot run on (finished, crashed or timed out)."""
        return self.status is not None

    @property
    def finished(self) -> bool:
        """The guest ended normally (halt, debug-exit, power off, reset)."""
        return self.kind in FINISHED_KINDS

    @property
    def crashed(self) -> bool:
        """The guest (or KVM) failed: triple fault, bad entry, internal error."""
        return self.kind in CRASH_KINDS

    def but(self, **changes: Any) -> Stop:
        """A copy with some fields changed (``stop.but(steps=3)``)."""
        return self.replace(**changes)

    def __str__(self) -> str:
        return self.message


class Requests(Record):
    """What was asked of a vCPU's run while it was inside ``KVM_RUN``.

    ``device_stop``: a device's wish to end the run (the debug-exit port, an
    i8042 reset), taken while handling this exit. ``timed_out``: the run's
    time is up. ``pause``: another thread asked for a pause. ``halted``:
    the halt check found the vCPU asleep in ``hlt`` with RFLAGS.IF clear
    (with the in-kernel irqchip ``hlt`` never exits to the VMM).
    """

    __slots__ = ("device_stop", "timed_out", "pause", "halted")

    def __init__(self, device_stop: Stop | None = None, timed_out: bool = False,
                 pause: bool = False, halted: bool = False) -> None:
        self.device_stop = device_stop
        self.timed_out = timed_out
        self.pause = pause
        self.halted = halted


_PASS_THROUGH = (IoOut, IoIn, MmioRead, MmioWrite, Debug)


def _at(rip: int | None) -> str:
    return f" at RIP {rip:#x}" if rip is not None else ""


def decide_stop(exit: VmExit, requests: Requests,
                rip: Callable[[], int | None] = lambda: None, vcpu: int = 0) -> Stop | None:
    """Does ``exit`` end the run? The rules of DESIGN.md, in one place.

    * A stop a device asked for (debug-exit, reset) wins: it came from the
      instruction this exit ran.
    * ``hlt`` (without the in-kernel irqchip) ends the run: with interrupts
      off nothing can wake the vCPU, and with them on there is no interrupt
      controller that could.
    * Triple fault, failed entry, KVM internal error, a system event other
      than power-off/reset, an exit with no handler: the guest crashed.
    * A ``KVM_RUN`` cut short by a signal (``Interrupted``) is the VMM's own
      doing: the halt check, then the timeout, then a pause; otherwise a
      stray kick, and the run goes on.
    * Port I/O, MMIO and debug exits go on.

    ``rip`` is called only for a stop that reports where it happened.
    """
    if requests.device_stop is not None:
        return requests.device_stop.but(vcpu=vcpu)
    kind = type(exit)
    if kind in _PASS_THROUGH:
        return None
    if kind is Interrupted:
        if requests.halted:
            return Stop(StopKind.HALT, _OK, HALTED_MESSAGE, rip(), vcpu)
        if requests.timed_out:
            return Stop(StopKind.TIMEOUT, _TIMEOUT, "timeout: the guest was stopped",
                        rip(), vcpu)
        if requests.pause:
            where = rip()
            return Stop(StopKind.PAUSED, None, "paused" + _at(where), where, vcpu)
        return None
    if kind is Hlt:
        if exit.if_flag:  # type: ignore[attr-defined]
            return Stop(StopKind.HALT, _OK,
                        "the guest halted with interrupts on, but this machine has no "
                        "interrupt controller to wake it", rip(), vcpu)
        return Stop(StopKind.HALT, _OK, HALTED_MESSAGE, rip(), vcpu)
    if kind is Shutdown:
        where = rip()
        return Stop(StopKind.SHUTDOWN, _CRASH,
                    f"guest crashed: triple fault (shutdown){_at(where)}", where, vcpu)
    if kind is FailEntry:
        where = rip()
        return Stop(StopKind.FAIL_ENTRY, _CRASH,
                    f"VM entry failed: hardware reason "
                    f"{exit.hardware_entry_failure_reason:#x} (invalid guest state)"  # type: ignore[attr-defined]
                    f"{_at(where)}", where, vcpu)
    if kind is InternalError:
        where = rip()
        return Stop(StopKind.INTERNAL_ERROR, _CRASH,
                    f"KVM internal error: {exit.suberror_name}{_at(where)}",  # type: ignore[attr-defined]
                    where, vcpu)
    if kind is SystemEvent:
        name = exit.type_name  # type: ignore[attr-defined]
        if name == "shutdown":
            return Stop(StopKind.POWER_OFF, _OK, "the guest powered off", rip(), vcpu)
        if name == "reset":
            return Stop(StopKind.RESET, _OK, "the guest asked for a reset", rip(), vcpu)
        where = rip()
        return Stop(StopKind.SHUTDOWN, _CRASH,
                    f"system event: {name}{_at(where)}", where, vcpu)
    where = rip()
    return Stop(StopKind.UNEXPECTED_EXIT, _CRASH,
                f"unexpected exit {exit.reason_name}{_at(where)}", where, vcpu)
