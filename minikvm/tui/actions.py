"""The TUI's actions -- step, next exit, continue, and backwards -- and what they ended in.

Each action runs on the vCPU thread (a :class:`~minikvm.core.runner.Job` of
the debugger's runner) and is the debugger's, not the TUI's: ``s`` is
:meth:`Debugger.step_instruction`, ``n`` and ``c`` are :meth:`Debugger.cont`
(with a filter that matches the next guest exit, or none). The debugger
hands back the core :class:`~minikvm.core.stop.Stop` -- or, for a step, a
:class:`~minikvm.debug.events.StepRecord` that carries one when the step
ended the guest -- and :func:`outcome_of_stop` / :func:`outcome_of_step`
turn it into what the TUI shows: a :class:`RunStatus` and one sentence.
``r`` turns recording on or off, and then ``S`` and ``C`` are
:meth:`Debugger.step_back` and :meth:`Debugger.reverse_cont` (docs/reverse.md):
they work on a guest that has ended too -- going back is the point.

**A guest that cannot run on.** With the in-kernel irqchip, ``hlt`` never
exits to the VMM: a vCPU that halted with interrupts off sleeps inside
``KVM_RUN`` for ever. A free run does not mind -- the runner's watchdog
kicks a quiet vCPU and asks KVM whether it sleeps that way, and the run
ends with a HALT stop. A *step* has no watchdog: one ``KVM_RUN`` for one
instruction, which would never return. The debugger's stepper already
recognises a stepped ``hlt`` and ends the guest there. What is left is a
vCPU that went to sleep for good while nobody was looking -- a pause that
landed in the same millisecond as ``cli; hlt``. So before every action
:func:`perform` asks the runner (:meth:`VcpuRunner.halted_for_good`: two
ioctls, on the vCPU thread) and turns a yes into the HALT stop a free run
would have ended with. With several vCPUs that holds only when every one
sleeps so (the core's :class:`~minikvm.core.runner.HaltGroup` rule); an AP
still parked for INIT/SIPI, or asleep while another vCPU can still send it
an IPI, just refuses to run, and the guest goes on.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from minikvm.core.board import ExitStatus
from minikvm.core.events import ExitEvent
from minikvm.core.runner import VcpuRunner
from minikvm.core.stop import HALTED_MESSAGE, Stop, StopKind
from minikvm.debug import Debugger
from minikvm.debug.events import StepRecord
from minikvm.kvm.exits import Interrupted
from minikvm.tui.state import RunStatus

__all__ = ["Action", "Outcome", "outcome_of_step", "outcome_of_stop", "perform"]

#: How many exits of a step the message line words.
_STEP_EXITS_SAID = 3


class Action(enum.Enum):
    """What a key asks the vCPU thread to do."""

    STEP = "step"            # s: one guest instruction (KVM single-step)
    NEXT = "next"            # n: run until the guest's next VM exit
    CONTINUE = "continue"    # c: run until a breakpoint, the guest's end, or a pause
    RECORD = "record"        # r: recording on/off (reverse execution)
    STEP_BACK = "step-back"  # S: one recorded instruction back
    REVERSE = "reverse-continue"  # C: back to the previous breakpoint or watched write

    @property
    def backwards(self) -> bool:
        """Goes back through the recorded history (allowed after the guest's end)."""
        return self in (Action.STEP_BACK, Action.REVERSE)

    @property
    def status(self) -> RunStatus:
        """The header's state while the action is under way."""
        running = self in (Action.CONTINUE, Action.REVERSE)
        return RunStatus.RUNNING if running else RunStatus.STEPPING

    @property
    def doing(self) -> str:
        """The message line while the action is under way."""
        return {Action.STEP: "stepping one instruction ...",
                Action.NEXT: "running to the next exit ...",
                Action.CONTINUE: "running: p pauses",
                Action.RECORD: "recording on/off ...",
                Action.STEP_BACK: "stepping one instruction back ...",
                Action.REVERSE: "going back: p pauses"}[self]


@dataclass(frozen=True)
class Outcome:
    """What an action ended in: the TUI's state, one sentence, and the core
    stop behind them (None after a plain step, or when the VMM failed)."""

    status: RunStatus
    message: str
    stop: Stop | None = None


def _guest_exit(event: ExitEvent) -> bool:
    """``n``'s filter: any exit the guest made (a kick is the VMM's own)."""
    return type(event.exit) is not Interrupted


def perform(debugger: Debugger, action: Action, *, timeout: float | None = None,
            pause_wanted: Callable[[], bool] = lambda: False, step_text: str = "",
            number_of: Callable[[ExitEvent], int | None] = lambda event: None,
            vcpus: int = 1) -> Outcome:
    """Do ``action`` with ``debugger`` (on the vCPU thread) and say how it ended.

    ``timeout`` bounds a ``next`` or ``continue``; ``pause_wanted`` is asked
    before a run starts (a pause that came before ``cont`` cleared the
    runner's request would otherwise be lost); ``step_text`` names the
    instruction about to be stepped; ``number_of`` gives an exit's number in
    the log; ``vcpus`` is how many vCPUs the machine has.
    """
    if action in (Action.RECORD, Action.STEP_BACK, Action.REVERSE):
        return _recorded(debugger, action, timeout, vcpus)
    runner = debugger.runner
    if runner.halted_for_good():
        others = [other for other in debugger.machine.runners if other is not runner]
        if not all(other.halted_for_good() for other in others):
            return Outcome(RunStatus.PAUSED, _asleep_message(runner))
        stop = Stop(StopKind.HALT, int(ExitStatus.OK), HALTED_MESSAGE, debugger.rip,
                    runner.index)
        return outcome_of_stop(stop, vcpus=vcpus)
    if action is Action.STEP:
        return outcome_of_step(debugger.step_instruction(), step_text, vcpus=vcpus)
    if pause_wanted():
        rip = debugger.rip
        return outcome_of_stop(Stop(StopKind.PAUSED, None, f"paused at RIP {rip:#x}", rip,
                                    runner.index), vcpus=vcpus)
    until = _guest_exit if action is Action.NEXT else None
    return outcome_of_stop(debugger.cont(until=until, timeout=timeout), number_of, vcpus)


def _recorded(debugger: Debugger, action: Action, timeout: float | None,
              vcpus: int) -> Outcome:
    """``r``, ``S`` and ``C``: recording on/off, one step back, back to a stop."""
    if action is Action.RECORD:
        debugger.record(not debugger.recording)
        if debugger.recording:
            return Outcome(RunStatus.PAUSED, "recording every instruction: S steps back, "
                                             "C goes back to a breakpoint; c single-steps now")
        return Outcome(RunStatus.PAUSED, "recording off: the history is forgotten")
    if action is Action.STEP_BACK:
        return outcome_of_stop(debugger.step_back(), vcpus=vcpus)
    return outcome_of_stop(debugger.reverse_cont(timeout), vcpus=vcpus)


def _asleep_message(runner: VcpuRunner) -> str:
    """Why the picked vCPU cannot run while another one can: only that
    other vCPU can wake it (an INIT/SIPI, an IPI, an NMI)."""
    why = ("waits for INIT/SIPI" if runner.parked
           else "sleeps in hlt with interrupts off")
    return (f"vCPU {runner.index} {why}: only another vCPU can wake it "
            f"(t picks the next vCPU)")


def outcome_of_stop(stop: Stop,
                    number_of: Callable[[ExitEvent], int | None] = lambda event: None,
                    vcpus: int = 1) -> Outcome:
    """The TUI's state and sentence after ``stop`` (see :meth:`RunStatus.after`)."""
    status = RunStatus.after(stop)
    event = stop.event
    if stop.kind is StopKind.EXIT_MATCHED and event is not None:
        number = number_of(event)
        which = f"exit {number}" if number is not None else "exit"
        message = f"{which} ({event.reason}): {event.description}; paused at RIP {stop.rip:#x}"
    else:
        message = stop.message
    if vcpus > 1:
        message = f"vCPU {stop.vcpu}: {message}"
    return Outcome(status, message, stop)


def outcome_of_step(record: StepRecord, step_text: str = "", vcpus: int = 1) -> Outcome:
    """The TUI's state and sentence after one stepped instruction: what it
    was, the exits it made on the way, and the stop it ran into, if any."""
    text = f"stepped {step_text}" if step_text else "stepped one instruction"
    if record.exits:
        said = "; ".join(event.description for event in record.exits[:_STEP_EXITS_SAID])
        count = len(record.exits)
        text += f" -> {count} exit{'s' if count > 1 else ''}: {said}"
    if record.stop is not None:
        outcome = outcome_of_stop(record.stop, vcpus=vcpus)
        return Outcome(outcome.status, f"{outcome.message} -- {text}", record.stop)
    if record.hit is not None:
        return outcome_of_stop(record.hit, vcpus=vcpus)
    return Outcome(RunStatus.PAUSED, text)
