"""The debugger's free run: the guest at full speed between exits, with
debug registers and ``int3`` armed, until something is worth stopping for.

This is the loop under the TUI's "continue" and a GDB client's ``c``: it runs
once per VM exit, possibly for millions of exits, so it does on each only
what a stop needs to be noticed. It enters ``KVM_RUN`` through the runner's
own loop (:meth:`VcpuRunner.exits <minikvm.core.runner.VcpuRunner.exits>`,
as :meth:`Machine.run` does: the vCPU's thread held once for the whole run,
the exit reason and the I/O fields in one read), and the machine handles the
exit (:func:`~minikvm.runloop.pio_event` for a single ``in``/``out``,
straight from the run page; :meth:`Machine.handle_exit` for the rest: the
bus, the listeners, the machine's own stop rules). The loop then asks three
questions, cheapest first: did the guest or a device end the run
(``event.stop``), was it a ``#DB``/``#BP`` of ours (``KVM_EXIT_DEBUG``), and
does the caller's ``until`` match it. A pause or the end of the time is
asked for from another thread by setting a flag on the runner; only when one
is set does :meth:`Stops.control` build the stop -- after KVM has completed
an ``in``/``out`` the device already answered, as at every other stop.

A ``#DB`` or ``#BP`` is told apart by what KVM reports with it
(``kvm_run.debug.arch``, Documentation/virt/kvm/api.rst): the exception
vector (1 or 3), the address, and DR6, whose B0-B3 bits name the debug
register that fired (SDM vol. 3B, 17.2.3).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from minikvm.core.events import ExitEvent
from minikvm.core.stop import Stop, StopKind
from minikvm.debug.breakpoints import Breakpoint, Watchpoint, dr6_slots
from minikvm.kvm.exits import Debug
from minikvm.kvm.uapi import KvmExit
from minikvm.runloop import pio_event

if TYPE_CHECKING:
    from minikvm.debug.debugger import Debugger

__all__ = ["run_free"]

#: The exception vector of ``int3`` (#BP); a single step or a debug
#: register reports #DB, vector 1 (SDM vol. 3A, 6.3.1).
_BP_VECTOR = 3
_KVM_EXIT_IO = int(KvmExit.KVM_EXIT_IO)
#: The runner's loop reads the clock around every run while this is not
#: empty: the events of a free run always carry their times (a stop shows
#: its exit's), listeners or not.
_TIMED = (True,)


def run_free(debugger: Debugger, until: Callable[[ExitEvent], bool] | None,
             steps: int) -> Stop:
    """Let the guest run, with ``int3``s and debug registers armed, until a
    stop; ``steps`` is how many instructions were single-stepped before."""
    arming, view, runner = debugger.arming, debugger.view, debugger.runner
    # A vCPU the stepper put to sleep in hlt stays asleep in KVM, where the
    # free run lets its interrupt wake it; the stepper forgets it.
    debugger.stepper.asleep = False
    arming.insert_int3s(view.physical)
    runner.set_guest_debug(arming.running_state())
    machine, stops = debugger.machine, debugger.stops
    listeners = machine.listeners
    handle, decode = machine.handle_exit, runner.decode
    page = runner.vcpu.page
    page_size = len(page)
    while True:
        # Stops.control answers None unless one of these two flags is set.
        if runner.pause_requested or runner.timed_out:
            stop = stops.control(steps)
            if stop is not None:
                return stop
        controlled = False
        exits = runner.exits(_TIMED)
        try:
            for reason, direction, size, port, count, offset in exits:
                # As next_event (runloop.py), on the fields the loop read.
                if (reason == _KVM_EXIT_IO and count == 1 and size != 0
                        and offset + size <= page_size):
                    event = pio_event(machine, runner, page, direction, size, port, offset,
                                      True, bool(listeners))
                else:
                    event = handle(decode(reason), runner, explain=True,
                                   capture_rip=bool(listeners))
                if event.stop is not None or type(event.exit) is Debug or (
                        until is not None and until(event)):
                    break
                if runner.pause_requested or runner.timed_out:
                    controlled = True
                    break
            else:
                raise AssertionError("VcpuRunner.exits() ended")   # it runs until closed
        finally:
            # The thread's hold ends before anything below runs KVM_RUN again
            # (completing an in/out: Stepper.complete).
            exits.close()
        if not controlled:
            break
        # A pause or timeout right after an in/out the device answered: KVM
        # has not stored the value or moved RIP yet (that happens on the next
        # KVM_RUN); complete it, so the stop shows the registers after it.
        debugger.stepper.complete(event.exit)
    exit = event.exit
    if type(exit) is Debug:
        return _on_debug(debugger, exit, event, steps)
    debugger.stepper.complete(exit)
    if event.stop is not None:
        return stops.guest_stopped(event.stop, event, steps)
    return stops.exit_matched(event, steps)


def _on_debug(debugger: Debugger, exit: Debug, event: ExitEvent, steps: int) -> Stop:
    """A #DB or #BP while running freely: which breakpoint or watchpoint?"""
    arming, view, stops = debugger.arming, debugger.view, debugger.stops
    if exit.exception == _BP_VECTOR:
        bp = arming.int3_hit(exit.pc)
        if bp is not None:
            if view.pc == bp.address + 1:   # report the int3's own address
                regs = view.regs()
                regs.rip -= 1
                debugger.vcpu.set_regs(regs)
                view.invalidate()
            return stops.breakpoint(bp, steps)
    for slot in dr6_slots(exit.dr6):
        owner = arming.slot_owner(slot)
        if isinstance(owner, Breakpoint):
            return stops.breakpoint(owner, steps)
        if isinstance(owner, Watchpoint):
            return debugger.watches.hit(owner, view.rip, steps, "was accessed")
    name = "#BP (int3)" if exit.exception == _BP_VECTOR else "#DB"
    return stops.stop(StopKind.DEBUG_EXCEPTION,
                      f"{name} the debugger did not ask for at {exit.pc:#x} "
                      f"(dr6={exit.dr6:#x})", steps, event=event)
