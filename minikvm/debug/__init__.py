"""The debugger layer: step a guest, stop it, look inside it, trace its exits.

* :mod:`~minikvm.debug.debugger` -- :class:`Debugger`: single-step, continue
  to breakpoints/watchpoints/exits, pause; registers and memory. Every stop
  is the core :class:`~minikvm.core.stop.Stop`.
* :mod:`~minikvm.debug.guestview` -- :class:`GuestView`: registers read once
  per stop, memory by linear or physical address, symbols, disassembly.
* :mod:`~minikvm.debug.arming` -- breakpoints, watchpoints, their mechanisms
  and the ``KVM_SET_GUEST_DEBUG`` state; ``int3`` in and out.
* :mod:`~minikvm.debug.stepper` -- exactly one guest instruction.
* :mod:`~minikvm.debug.recorder` -- recording every step, undo and redo
  (reverse execution; the log is :mod:`~minikvm.debug.history`, going
  backwards :mod:`~minikvm.debug.backwards`).
* :mod:`~minikvm.debug.stops` -- the debugger's stops, worded once.
* :mod:`~minikvm.debug.watch` -- watchpoint checks after a step.
* :mod:`~minikvm.debug.events` -- step records and exit filters.
* :mod:`~minikvm.debug.probe` -- which debug features this KVM really has.
* :mod:`~minikvm.debug.breakpoints` -- breakpoint records, DR6/DR7 layout.
* :mod:`~minikvm.debug.inspect` -- registers, flags, segments, FPU in words.
* :mod:`~minikvm.debug.disasm` -- capstone disassembly, memory operands.
* :mod:`~minikvm.debug.trace` -- every exit recorded, with statistics (the
  ``minikvm trace`` command that prints them is :mod:`minikvm.cli.trace`).

Nothing here touches KVM when imported; the probe runs when a debugger is
created (or :func:`probe_debug_support` is called).
"""

from minikvm.debug.breakpoints import Breakpoint, BreakpointKind, Watchpoint, WatchKind
from minikvm.debug.debugger import Debugger, DebuggerError, ExitFilter, StepRecord
from minikvm.debug.disasm import Instruction, disassemble
from minikvm.debug.guestview import GuestView, LinearRead
from minikvm.debug.inspect import RegisterSnapshot, changed_registers, describe_rflags
from minikvm.debug.probe import DebugSupport, probe_debug_support, probe_rows
from minikvm.debug.trace import TraceRecord, Tracer

__all__ = [
    "Breakpoint", "BreakpointKind", "DebugSupport", "Debugger", "DebuggerError", "ExitFilter",
    "GuestView", "Instruction", "LinearRead", "RegisterSnapshot", "StepRecord", "TraceRecord",
    "Tracer", "WatchKind", "Watchpoint", "changed_registers", "describe_rflags", "disassemble",
    "probe_debug_support", "probe_rows",
]
