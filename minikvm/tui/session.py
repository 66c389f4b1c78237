"""The TUI's model: a machine, its debugger, the vCPU thread, and snapshots.

A debugger front end has two jobs that must not block each other: run the
guest, and listen to the person. :class:`Session` gives every step,
step-to-exit and continue to the vCPU thread -- a
:class:`~minikvm.core.runner.Job` of the debugger's runner
(:meth:`VcpuRunner.spawn`) -- and leaves the caller's thread (the UI) free
to read keys and draw. The rules that keep this safe are few:

* While the vCPU thread works, only it calls vCPU ioctls. KVM serialises
  ioctls on one vCPU with a mutex held for the whole of ``KVM_RUN``: a
  ``KVM_GET_REGS`` from the UI would simply hang until the guest exits.
  The thread therefore reads the registers and the listing of the stop
  it ended at itself (:func:`~minikvm.tui.frames.picture_stop`) and hands
  them back with the outcome.
* The UI learns what happens meanwhile from the exit listener
  (:class:`~minikvm.tui.monitor.ExitMonitor`), from guest RAM (an ``mmap``
  any thread may read, through the debugger's
  :meth:`~minikvm.debug.guestview.GuestView.read_linear`) and from the
  devices' plain state. Registers and code shown while running are those
  of the last stop.
* With several vCPUs the debugger drives one, the one picked
  (:meth:`Session.select_vcpu`); only its thread runs, the others stay
  where they are. Each vCPU gets its own :class:`Debugger`, all sharing
  one set of breakpoints.
* Pausing is :meth:`Debugger.pause` -- the runner's request and a *kick*
  that makes ``KVM_RUN`` return. The session repeats it until the thread
  is done, because a kick that lands before ``cont`` began is forgotten.

The session keeps no run loop, watchdog or halt check of its own: the
actions are the debugger's (:mod:`minikvm.tui.actions`), and what they
ended in is the core :class:`~minikvm.core.stop.Stop`, kept as
:attr:`Session.last_stop`.
"""

from __future__ import annotations

import time
import traceback
from typing import Any

from minikvm.core.runner import Job
from minikvm.core.stop import Stop
from minikvm.debug import Debugger, DebuggerError
from minikvm.debug.inspect import RegisterSnapshot
from minikvm.kvm.uapi import KvmMpState
from minikvm.tui.actions import Action, Outcome, perform
from minikvm.tui.frames import (
    MEMORY_BYTES,
    StopPicture,
    breakpoint_rows,
    console_text,
    mark_breakpoints,
    memory_view,
    picture_stop,
    running_registers,
    stats_view,
)
from minikvm.tui.monitor import EXIT_LOG_CAPACITY, ExitMonitor, Timeline
from minikvm.tui.state import Focus, PromptView, RunStatus, SideView, TuiState
from minikvm.tui.views import (
    MemorySpec,
    device_views,
    exit_row,
    mp_state_words,
    parse_address,
    parse_memory_spec,
)

__all__ = ["Action", "EXIT_LOG_CAPACITY", "ExitMonitor", "MEMORY_BYTES", "Session"]

#: How often pause() re-kicks the vCPU while waiting for the thread to return.
_PAUSE_RETRY = 0.02
_READY = ("ready: s steps one instruction, n runs to the next VM exit, c continues, "
          "? helps")


class Session:
    """A machine under the TUI: actions on the vCPU thread, snapshots for frames.

    ``debugger`` drives one vCPU of ``machine`` (default: a new
    :class:`Debugger` of vCPU 0). ``console`` is the sink the machine writes
    guest output to (a :class:`minikvm.hostio.BufferSink`), or None.
    """

    def __init__(self, machine: Any, debugger: Debugger | None = None, *, guest: str = "guest",
                 console: Any = None) -> None:
        self.machine = machine
        self.debugger = debugger if debugger is not None else Debugger(machine)
        #: One debugger per vCPU looked at so far, sharing the breakpoints.
        self._debuggers = {self.debugger.runner.index: self.debugger}
        self.guest = guest
        self.console = console
        self.vcpus = len(machine.vcpus)
        self.monitor = ExitMonitor()
        machine.listeners.append(self.monitor)
        self.timeline = Timeline()
        self.status = RunStatus.PAUSED
        self.message = _READY
        #: The core stop the last action ended in (None before one did, and
        #: after a plain step).
        self.last_stop: Stop | None = None
        #: Why the guest can run no more (set when it ended).
        self.end_reason = ""
        #: The traceback when the VMM failed (status ERROR).
        self.error_trace = ""
        # What the person set up (the app changes these).
        self.focus = Focus.DEBUGGER
        self.side = SideView.EXITS
        self.prompt: PromptView | None = None
        self.show_help = False
        self.memory_spec = MemorySpec(follow="rip")
        self.memory_offset = 0
        # The vCPU thread.
        self._job: Job | None = None
        self._pause_wanted = False
        # The last stop as the panels show it (read now: nothing runs yet).
        self._picture = StopPicture()
        try:
            self._picture = picture_stop(self.debugger, None, machine.image)
        except Exception as err:  # noqa: BLE001 - the UI must open and say why
            self._failed("reading the vCPU failed", err)
        self._note_mp_states()

    # -- state of the guest -----------------------------------------------------------

    @property
    def busy(self) -> bool:
        """True while the vCPU thread owns the guest."""
        return self._job is not None

    @property
    def ended(self) -> bool:
        """True once the guest can run no more."""
        return self.status in (RunStatus.FINISHED, RunStatus.CRASHED, RunStatus.ERROR)

    def _failed(self, what: str, err: BaseException) -> Outcome:
        self.error_trace = traceback.format_exc()
        self.status = RunStatus.ERROR
        self.message = f"{what}: {type(err).__name__}: {err}"
        self.end_reason = self.message
        return Outcome(RunStatus.ERROR, self.message)

    # -- actions (on the vCPU thread) ---------------------------------------------------

    def start(self, action: Action | str, timeout: float | None = None) -> bool:
        """Begin ``"step"`` (one instruction), ``"next"`` (to the next VM exit)
        or ``"continue"`` on the vCPU thread. False (with a message) when the
        guest is busy or has ended."""
        action = Action(action)
        if self.busy:
            self.message = "the guest is running: p pauses it first"
            return False
        if self.ended and not action.backwards:
            self.message = f"the guest has ended ({self.end_reason}); q quits"
            return False
        self._pause_wanted = False
        previous = self._picture.registers.values if self._picture.registers else None
        step_text = self._picture.step_text
        self.status = action.status
        self.message = action.doing
        if action is Action.CONTINUE:
            self.timeline.start(self.monitor.count)
        self._job = self.debugger.runner.spawn(
            lambda: self._work(action, timeout, previous, step_text))
        return True

    def _work(self, action: Action, timeout: float | None, previous: RegisterSnapshot | None,
              step_text: str) -> tuple[Outcome, StopPicture | None]:
        """The vCPU thread: the action, then the picture of the stop it ended at."""
        try:
            outcome = perform(self.debugger, action, timeout=timeout,
                              pause_wanted=lambda: self._pause_wanted, step_text=step_text,
                              number_of=self.monitor.number_of, vcpus=self.vcpus)
        except Exception as err:  # noqa: BLE001 - the UI must survive and say why
            self.error_trace = traceback.format_exc()
            return Outcome(RunStatus.ERROR, f"the VMM failed: {type(err).__name__}: {err}"), None
        self._note_mp_states()
        try:
            return outcome, picture_stop(self.debugger, previous, self.machine.image)
        except Exception as err:  # noqa: BLE001
            self.error_trace = traceback.format_exc()
            return Outcome(RunStatus.ERROR, f"reading the vCPU failed: {type(err).__name__}: "
                                            f"{err}", outcome.stop), None

    def _note_mp_states(self) -> None:
        """With several vCPUs, after an action (no vCPU runs now): each
        runner's MP state, for the devices panel (parked APs show)."""
        runners = self.machine.runners
        if len(runners) < 2:
            return
        for runner in runners:
            try:
                runner.mp_state = KvmMpState(runner.vcpu.get_mp_state())
            except Exception:  # noqa: BLE001 - a panel detail must not fail the action
                runner.mp_state = None

    def poll(self) -> bool:
        """Collect the vCPU thread's result if it has finished (UI thread).
        Returns True when the guest just stopped."""
        job = self._job
        if job is None or not job.done.is_set():
            return False
        job.wait(timeout=1.0)
        self._job = None
        self.timeline.stop(self.monitor.count)
        try:
            outcome, picture = job.result()
        except BaseException as err:  # noqa: BLE001 - even SystemExit on that thread
            outcome, picture = Outcome(RunStatus.ERROR, f"the vCPU thread failed: "
                                                        f"{type(err).__name__}: {err}"), None
        self.status = outcome.status
        self.message = outcome.message
        if outcome.stop is not None:
            self.last_stop = outcome.stop
        if picture is not None:
            self._picture = picture
        if self.ended:
            # The stop's own words (a debug-exit stop names its status), not
            # the message line, which may go on about the step that led there.
            stop = outcome.stop
            self.end_reason = outcome.message if stop is None else stop.message
        return True

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the vCPU thread; True when it is done (then polled)."""
        job = self._job
        if job is None:
            return True
        if not job.done.wait(timeout):
            return False
        self.poll()
        return True

    def pause(self, timeout: float = 2.0) -> bool:
        """Stop a running guest and wait for the vCPU thread (kicking it
        again every few ms: a kick that lands before ``cont`` starts would
        be forgotten). True when the guest is paused."""
        job = self._job
        if job is None:
            return True
        self._pause_wanted = True
        deadline = time.monotonic() + timeout
        while not job.done.is_set() and time.monotonic() < deadline:
            self.debugger.pause()
            job.done.wait(_PAUSE_RETRY)
        return self.wait(0)

    def run_action(self, action: Action | str, timeout: float | None = None) -> None:
        """Do an action and wait for it (scripts, ``--record``, tests).
        ``timeout`` bounds a continue; the guest is paused when it expires."""
        if not self.start(action, timeout):
            return
        if not self.wait(None if timeout is None else timeout + 2.0):
            self.pause()

    def tick(self, now: float | None = None) -> None:
        """Add a timeline bar for each interval that passed while running (UI thread)."""
        self.timeline.tick(self.monitor.count, now)

    def select_vcpu(self, index: int | None = None) -> str:
        """Show and step vCPU ``index`` (None: the next one, round the ring).

        Only while paused: the vCPU thread must not be running. The new
        vCPU's debugger shares the breakpoints (they are addresses in
        guest memory, caught on whichever vCPU runs there)."""
        if self.busy:
            self.message = "pause the guest (p) before picking another vCPU"
            return self.message
        if self.debugger.recording:
            # The history is one vCPU's: another vCPU's steps would change
            # memory behind it, and stepping back would undo them wrongly.
            self.message = "recording follows this vCPU: r turns it off before picking another"
            return self.message
        current = self.debugger.runner.index
        if index is None:
            index = (current + 1) % self.vcpus
        if not 0 <= index < self.vcpus:
            self.message = f"no vCPU {index}: this machine has vCPU 0 to {self.vcpus - 1}"
            return self.message
        debugger = self._debuggers.get(index)
        if debugger is None:
            debugger = Debugger(self.machine, self.debugger.support, vcpu=index,
                                arming=self.debugger.arming)
            self._debuggers[index] = debugger
        self.debugger = debugger
        self._note_mp_states()
        # Read afresh: another vCPU may have changed this one since (a SIPI
        # that KVM_GET_MP_STATE just delivered sets CS:IP).
        debugger.view.invalidate()
        try:
            self._picture = picture_stop(debugger, None, self.machine.image)
        except Exception as err:  # noqa: BLE001 - the UI must say why and go on
            self._picture = StopPicture()
            self.message = f"reading vCPU {index} failed: {type(err).__name__}: {err}"
            return self.message
        state = mp_state_words(self.machine.runners[index].mp_state)
        self.message = (f"vCPU {index} of {self.vcpus} ({state}): s steps it alone, "
                        f"the others stay paused")
        return self.message

    # -- breakpoints, memory, console -------------------------------------------------

    def toggle_breakpoint(self, text: str = "") -> str:
        """Set a breakpoint at ``text`` (address or symbol; empty: RIP), or
        remove the one already there. Returns (and shows) what happened."""
        if self.busy:
            self.message = "pause the guest (p) before changing breakpoints"
            return self.message
        debugger = self.debugger
        try:
            address = self._picture.pc if not text.strip() else parse_address(
                text, debugger.address_of)
        except ValueError as err:
            self.message = f"no breakpoint: {err}"
            return self.message
        for bp in list(debugger.breakpoints.values()):
            if bp.address == address:
                debugger.delete(bp.number)
                self.message = f"breakpoint {bp.number} at {address:#x} removed"
                return self.message
        try:
            bp = debugger.break_at(address)
        except DebuggerError as err:
            self.message = f"no breakpoint: {err}"
            return self.message
        note = f" ({bp.note})" if bp.note else ""
        self.message = f"breakpoint {bp.number} at {address:#x}: caught by {bp.mechanism}{note}"
        return self.message

    def set_memory(self, text: str) -> str:
        """Point the memory panel at what ``text`` says (see :func:`parse_memory_spec`)."""
        try:
            self.memory_spec = parse_memory_spec(text, self.debugger.address_of)
        except ValueError as err:
            self.message = f"memory: {err}"
            return self.message
        self.memory_offset = 0
        self.side = SideView.MEMORY
        spec = self.memory_spec
        if spec.follow:
            self.message = f"memory follows {spec.follow.upper()}"
        else:
            kind = "guest-physical" if spec.physical else "linear"
            self.message = f"memory at {kind} address {spec.address:#x}"
        return self.message

    def scroll_memory(self, rows: int) -> None:
        self.memory_offset += rows * 16

    def send_console(self, data: bytes) -> int:
        """Keys typed in console focus: queue them for the guest's serial input."""
        accepted = self.machine.send_serial_input(data)
        if accepted < len(data):
            self.message = f"serial input queue full: {len(data) - accepted} bytes dropped"
        return accepted

    # -- snapshots ----------------------------------------------------------------------

    def snapshot(self, exits: int = 64) -> TuiState:
        """Everything a frame shows, without a single vCPU ioctl."""
        picture = self._picture
        busy = self.busy
        breakpoints = breakpoint_rows(self.debugger)
        console, console_total = console_text(self.console)
        return TuiState(
            guest=self.guest,
            status=self.status,
            message=self.message,
            registers=running_registers(picture) if busy else picture.registers,
            disassembly=mark_breakpoints(picture.disassembly, breakpoints),
            breakpoints=breakpoints,
            exits=tuple(exit_row(event, number, self.vcpus)
                        for number, event in self.monitor.newest(exits)),
            stats=stats_view(self.monitor, self.timeline, self.debugger.steps),
            console=console,
            console_total=console_total,
            devices=device_views(self.machine),
            memory=memory_view(self.debugger.view, self.memory_spec, self.memory_offset,
                               picture, busy),
            focus=self.focus,
            side=self.side,
            prompt=self.prompt,
            show_help=self.show_help,
            input_queued=len(getattr(self.machine, "serial_input", ()) or ()),
            vcpu=self.debugger.runner.index,
            vcpus=self.vcpus,
            recording=self.debugger.recording,
            vcpu_state=mp_state_words(self.debugger.runner.mp_state) if self.vcpus > 1 else "",
        )

    def close(self) -> None:
        """Stop the guest if it runs, and take the listener and breakpoints out."""
        self.pause(timeout=1.0)
        if self.monitor in self.machine.listeners:
            self.machine.listeners.remove(self.monitor)
        if self._job is None:
            for debugger in self._debuggers.values():
                debugger.close()
