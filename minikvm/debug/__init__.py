"""The debugger layer: step a guest, stop it, look inside it, trace its exits.

* :mod:`~minikvm.debug.debugger` -- :class:`Debugger`: single-step, continue
  to breakpoints/watchpoints/exits, pause; registers and memory.
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
from minikvm.debug.debugger import (
    Debugger,
    DebuggerError,
    ExitFilter,
    StepRecord,
    StopEvent,
    StopReason,
)
from minikvm.debug.disasm import Instruction, disassemble
from minikvm.debug.inspect import RegisterSnapshot, changed_registers, describe_rflags
from minikvm.debug.probe import DebugSupport, probe_debug_support, probe_rows
from minikvm.debug.trace import TraceRecord, Tracer

__all__ = [
    "Breakpoint", "BreakpointKind", "DebugSupport", "Debugger", "DebuggerError", "ExitFilter",
    "Instruction", "RegisterSnapshot", "StepRecord", "StopEvent", "StopReason", "TraceRecord",
    "Tracer", "WatchKind", "Watchpoint", "changed_registers", "describe_rflags", "disassemble",
    "probe_debug_support", "probe_rows",
]
