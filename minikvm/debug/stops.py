"""The debugger's stops: one :class:`~minikvm.core.stop.Stop` per reason,
worded once for every way of moving through the guest.

Running forwards (:meth:`Debugger.cont`) and backwards through the recorded
history (:mod:`~minikvm.debug.recorder`) end for the same reasons -- a
breakpoint, a pause, the time given -- and a person should read the same
line for each, so both build their stops here. Each stop is taken at the
vCPU's RIP *now*, as the view reads it.
"""

from __future__ import annotations

from minikvm.core.board import ExitStatus
from minikvm.core.events import ExitEvent
from minikvm.core.runner import VcpuRunner
from minikvm.core.stop import Stop, StopKind
from minikvm.debug.breakpoints import Breakpoint
from minikvm.debug.guestview import GuestView

__all__ = ["Stops"]

_TIMEOUT = int(ExitStatus.TIMEOUT)


class Stops:
    """Builds the stops of the debugger driving ``view``'s vCPU."""

    def __init__(self, view: GuestView, runner: VcpuRunner) -> None:
        self.view = view
        self.runner = runner

    def stop(self, kind: StopKind, message: str, steps: int, status: int | None = None,
             **fields: object) -> Stop:
        """A stop of this vCPU at its RIP now (``status`` None: the guest can go on)."""
        return Stop(kind, status, message, self.view.rip, self.runner.index, steps=steps,
                    **fields)  # type: ignore[arg-type]

    def paused(self, steps: int, event: ExitEvent | None = None) -> Stop:
        rip = self.view.rip
        return self.stop(StopKind.PAUSED, f"paused at RIP {rip:#x}{self.view.describe(rip)}",
                         steps, event=event)

    def control(self, steps: int) -> Stop | None:
        """A pause or the end of the time, asked for from another thread."""
        runner = self.runner
        if runner.pause_requested:
            runner.pause_requested = False
            return self.paused(steps)
        if runner.timed_out:
            rip = self.view.rip
            return self.stop(StopKind.TIMEOUT, f"timeout: stopped at RIP {rip:#x}"
                             f"{self.view.describe(rip)}", steps, _TIMEOUT)
        return None

    def guest_stopped(self, stop: Stop, event: ExitEvent | None, steps: int) -> Stop:
        """The machine's own stop (halt, debug-exit, crash, its pause or
        timeout), with the RIP after KVM completed the instruction."""
        if stop.kind is StopKind.PAUSED:
            return self.paused(steps, event)
        return stop.but(rip=self.view.rip, event=event, steps=steps)

    def exit_matched(self, event: ExitEvent, steps: int) -> Stop:
        rip = self.view.rip
        return self.stop(StopKind.EXIT_MATCHED,
                         f"exit matched: {event.description} (RIP {rip:#x})", steps,
                         event=event)

    def breakpoint(self, bp: Breakpoint, steps: int, how: str = "") -> Stop:
        """A hit on ``bp`` (counted); ``how`` adds e.g. "going backwards"."""
        bp.hits += 1
        return self.stop(StopKind.BREAKPOINT,
                         f"breakpoint {bp.number} at {bp.address:#x}"
                         f"{self.view.describe(bp.address)} (hit {bp.hits}, by {bp.mechanism}"
                         f"{how})", steps, breakpoint=bp)
