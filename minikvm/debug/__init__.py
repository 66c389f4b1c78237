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

Importing the package loads none of these modules: each name of
``__all__`` comes from its module the first time it is asked for
(``minikvm.debug.Debugger`` or ``from minikvm.debug import Debugger``; a
module ``__getattr__``, PEP 562, as :mod:`minikvm.loaders` does for its
loaders). So ``minikvm trace``, which needs :mod:`~minikvm.debug.trace`
alone, does not load the debugger and capstone with it: ``python3 -m minikvm
trace hello.bin`` takes 0.24 s instead of 0.28, 0.23 s of CPU time instead
of 0.26 (medians of 9, interleaved), and 21 MiB at most instead of 29
(measured 2026-12-02).
"""

import importlib as _importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from minikvm.debug.breakpoints import Breakpoint, BreakpointKind, Watchpoint, WatchKind
    from minikvm.debug.debugger import Debugger, DebuggerError, ExitFilter, StepRecord
    from minikvm.debug.disasm import Instruction, disassemble
    from minikvm.debug.guestview import GuestView, LinearRead
    from minikvm.debug.inspect import RegisterSnapshot, changed_registers, describe_rflags
    from minikvm.debug.probe import DebugSupport, probe_debug_support, probe_rows
    from minikvm.debug.trace import TraceRecord, Tracer

#: The module of this package that defines each name the package exports.
_HOMES = {
    **dict.fromkeys(("Breakpoint", "BreakpointKind", "Watchpoint", "WatchKind"), "breakpoints"),
    **dict.fromkeys(("Debugger", "DebuggerError", "ExitFilter", "StepRecord"), "debugger"),
    **dict.fromkeys(("Instruction", "disassemble"), "disasm"),
    **dict.fromkeys(("GuestView", "LinearRead"), "guestview"),
    **dict.fromkeys(("RegisterSnapshot", "changed_registers", "describe_rflags"), "inspect"),
    **dict.fromkeys(("DebugSupport", "probe_debug_support", "probe_rows"), "probe"),
    **dict.fromkeys(("TraceRecord", "Tracer"), "trace"),
}

__all__ = [
    "Breakpoint", "BreakpointKind", "DebugSupport", "Debugger", "DebuggerError", "ExitFilter",
    "GuestView", "Instruction", "LinearRead", "RegisterSnapshot", "StepRecord", "TraceRecord",
    "Tracer", "WatchKind", "Watchpoint", "changed_registers", "describe_rflags", "disassemble",
    "probe_debug_support", "probe_rows",
]


def __getattr__(name: str) -> Any:
    """An exported name, imported from its module on first use and bound
    here, so that later look-ups are ordinary ones. Any other name is an
    AttributeError, which also lets ``from minikvm.debug import stepper``
    fall back to importing the submodule, as for any package."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
