"""Going backwards: ``reverse-stepi`` and ``reverse-continue`` over the recorded history.

Both undo entries of the :class:`~minikvm.debug.recorder.Recorder` one at a
time; nothing runs in the guest. The stops mirror the forward ones the way
gdb expects them (gdb manual, "Running programs backward"):

* a **breakpoint** stops when the vCPU is back *at* its address, i.e. the
  state before the instruction there ran, as if it had just been reached;
* a **watchpoint** stops when undoing an instruction changed the watched
  value: the state is the one *before* that instruction wrote it, so the
  next forward step is the write (a read/write watchpoint stops at writes
  only here: the log keeps what changed, not what was read);
* at the **start of the history** (nothing older kept) the stop is
  ``HISTORY_START``; gdb's remote protocol says ``replaylog:begin``.

A pause from another thread stops a long reverse run, and so does its time;
both leave the guest able to go on (kind ``PAUSED``).
"""

from __future__ import annotations

import time

from minikvm.core.stop import Stop, StopKind
from minikvm.debug.arming import Arming
from minikvm.debug.breakpoints import Watchpoint
from minikvm.debug.recorder import Recorder
from minikvm.debug.stops import Stops
from minikvm.debug.watch import WatchChecks

__all__ = ["reverse_cont", "step_back"]


def _history_start(recorder: Recorder, stops: Stops, steps: int) -> Stop:
    rip = stops.view.rip
    if recorder.history is None:
        why = "nothing is recorded (record it first: Debugger.record(), gdb 'record full')"
    else:
        why = "no older history"
        if recorder.history.dropped:
            why += f" (the oldest {recorder.history.dropped} entries went to keep the cap)"
    return stops.stop(StopKind.HISTORY_START,
                      f"at the start of the recorded history after {steps} steps back: {why}; "
                      f"RIP {rip:#x}{stops.view.describe(rip)}", steps)


def step_back(recorder: Recorder, stops: Stops, count: int = 1) -> Stop:
    """Undo ``count`` instructions: ``STEP_LIMIT`` when all were undone,
    ``HISTORY_START`` (nothing changed beyond it) when the history ran out."""
    if count < 0:
        raise ValueError(f"cannot step back {count} instructions")
    for steps in range(count):
        if recorder.undo() is None:
            return _history_start(recorder, stops, steps)
    rip = stops.view.rip
    return stops.stop(StopKind.STEP_LIMIT,
                      f"stepped back {count} instruction{'s' if count != 1 else ''} to "
                      f"RIP {rip:#x}{stops.view.describe(rip)}", count)


def reverse_cont(recorder: Recorder, stops: Stops, arming: Arming, watches: WatchChecks,
                 timeout: float | None = None) -> Stop:
    """Undo until a breakpoint, a watched value's change, the start of the
    history, a pause or ``timeout`` seconds (see the module docstring)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    runner = stops.runner
    runner.pause_requested = False
    watched = [wp for wp in arming.watchpoints.values() if wp.enabled]
    values = {wp.number: watches.current_value(wp) for wp in watched}
    steps = 0
    while True:
        if runner.pause_requested or (deadline is not None and time.monotonic() > deadline):
            runner.pause_requested = False
            rip = stops.view.rip
            return stops.stop(StopKind.PAUSED,
                              f"paused going backwards after {steps} steps at RIP {rip:#x}"
                              f"{stops.view.describe(rip)}", steps)
        if recorder.undo() is None:
            return _history_start(recorder, stops, steps)
        steps += 1
        for wp in watched:
            value = watches.current_value(wp)
            if value != values[wp.number]:
                return _watch_hit(stops, wp, later=values[wp.number], earlier=value, steps=steps)
        bp = arming.breakpoint_at(stops.view.pc)
        if bp is not None:
            return stops.breakpoint(bp, steps, ", going backwards")


def _watch_hit(stops: Stops, wp: Watchpoint, later: int | None, earlier: int | None, steps: int) -> Stop:
    """The instruction at RIP now is the one that wrote ``wp`` (going forward
    it turns ``earlier`` into ``later``)."""
    wp.hits += 1
    wp.last_value = earlier
    rip = stops.view.rip

    def show(value: int | None) -> str:
        return "unmapped" if value is None else f"{value:#x}"

    return stops.stop(StopKind.WATCHPOINT,
                      f"watchpoint {wp.number} ({wp.kind.value}, {wp.size} bytes at "
                      f"{wp.address:#x}) is written by the instruction at RIP {rip:#x}"
                      f"{stops.view.describe(rip)}: {show(earlier)} -> {show(later)} "
                      f"(going backwards, stopped before the write)", steps,
                      watchpoint=wp, old_value=earlier, new_value=later)
