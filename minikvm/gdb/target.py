"""The machine as gdb sees it: one thread per vCPU, stopped all together.

gdb's default is *all-stop* mode (GDB manual, "All-Stop Mode"): when one
thread stops, every thread stops, and gdb looks at a frozen program. The
Remote Serial Protocol follows it: a resume packet (``c``, ``s``,
``vCont``) starts threads, and exactly one *stop reply* answers it when the
program has stopped again (section "Stop Reply Packets"). This module does
that for a :class:`~minikvm.machine.Machine`:

* each vCPU is a gdb thread (thread id = vCPU index + 1: ids 0 and -1 mean
  "any" and "all") with its own :class:`~minikvm.debug.debugger.Debugger`;
* each vCPU runs on a worker thread of its own (``runner.spawn``) that lives
  as long as the session: KVM wants a vCPU's ``KVM_RUN`` always from the
  same thread (a change of thread costs an RCU grace period, ``kvm_vcpu_ioctl``
  in ``virt/kvm/kvm_main.c``), and the stub's own thread must stay free to
  read the socket for a Ctrl-C;
* the first vCPU that stops for a reason gdb should hear about (a
  breakpoint, a watchpoint, a finished step, the guest's end, Ctrl-C) is
  the one reported; the others are paused and their stops dropped -- except
  a second breakpoint or watchpoint, which is kept and reported at the next
  resume without running (gdb would otherwise never hear of it).

Everything else -- registers, memory, breakpoints -- happens on the stub's
thread while every vCPU is stopped, which is when a vCPU's registers may be
read from any thread (:mod:`minikvm.debug.guestview`).
"""

from __future__ import annotations

import queue
import socket
from collections.abc import Callable
from dataclasses import dataclass

from minikvm.core.stop import Stop, StopKind
from minikvm.debug.debugger import Debugger
from minikvm.debug.probe import DebugSupport, probe_debug_support
from minikvm.gdb.monitor import ExitLog
from minikvm.gdb.points import Points
from minikvm.gdb.registers import Layout, RegisterFile, Source, copy_struct, layout_for
from minikvm.machine import Machine

__all__ = ["KILLED_STATUS", "Report", "Signal", "Target"]

#: The stop reply's reason at the bounds of the recorded history (GDB
#: manual, "Stop Reply Packets": ``replaylog``): gdb then says "No more
#: reverse-execution history".
_REPLAYLOG = {StopKind.HISTORY_START: "replaylog:begin", StopKind.HISTORY_END: "replaylog:end"}

#: The process exit status after gdb's ``kill``: as a shell reports a
#: process ended by SIGKILL (128 + 9).
KILLED_STATUS = 137


class Signal:
    """The signal numbers of stop replies (gdb's own numbering, which for
    these equals Linux's; GDB manual, "Remote Protocol", "Stop Reply Packets")."""

    INT = 2      # Ctrl-C stopped it
    KILL = 9     # gdb's kill
    TRAP = 5     # a breakpoint, watchpoint or step
    SEGV = 11    # the guest crashed (triple fault, KVM could not go on)
    ALRM = 14    # --timeout: the guest's time ran out


@dataclass(frozen=True)
class Report:
    """What one stop reply says: the guest ``exited`` (status), was
    ``terminated`` (signal), or a thread stopped with ``signal`` (``T``),
    with gdb's ``reason`` (``swbreak``, ``watch`` ...) and the watched
    ``address``. ``stop`` is the debugger's or machine's own stop."""

    what: str            # "stopped", "exited", "terminated"
    signal: int
    vcpu: int
    stop: Stop | None = None
    reason: str = ""
    address: int | None = None
    status: int = 0


def _report_of_end(stop: Stop, vcpu: int) -> Report:
    """The stop reply for a guest that ended: W with its status when it
    finished, X with a signal when it crashed or timed out."""
    if stop.finished:
        return Report("exited", 0, vcpu, stop, status=stop.status & 0xFF)
    signal = Signal.ALRM if stop.kind is StopKind.TIMEOUT else (
        Signal.KILL if stop.status == KILLED_STATUS else Signal.SEGV)
    return Report("terminated", signal, vcpu, stop)


class _Worker:
    """The thread that runs one vCPU: it takes work (a cont or a step), does
    it, and hands the result to ``done`` -- never raising on its own thread."""

    def __init__(self, debugger: Debugger, done: Callable[[int, object], None]) -> None:
        self.index = debugger.runner.index
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._done = done
        self.job = debugger.runner.spawn(self._serve, name=f"minikvm-gdb-vcpu{self.index}")

    def _serve(self) -> None:
        while True:
            work = self._requests.get()
            if work is None:
                return
            try:
                result = work()
            except BaseException as err:  # noqa: BLE001 - handed to the stub's thread
                result = err
            self._done(self.index, result)

    def submit(self, work: Callable[[], object]) -> None:
        self._requests.put(work)

    def close(self) -> None:
        self._requests.put(None)
        self.job.wait(timeout=2.0)


class Target:
    """A machine under gdb: threads, all-stop resumption, registers, memory.

    ``timeout`` bounds each resumption (``minikvm run --timeout``): a guest
    that runs that long without stopping is ended as a normal run would be.
    With several vCPUs, software breakpoints use debug registers (each vCPU
    has its own) rather than ``int3`` bytes in the one shared RAM.
    """

    def __init__(self, machine: Machine, support: DebugSupport | None = None,
                 timeout: float | None = None) -> None:
        self.machine = machine
        self.timeout = timeout
        if support is None:
            support = probe_debug_support(machine.kvm.path, kvm=machine.kvm)
        if len(machine.runners) > 1:
            support = support.without("sw_breakpoints")
        self.debuggers = [Debugger(machine, support, vcpu=i) for i in range(len(machine.runners))]
        self.points = Points(self.debuggers)
        #: The last exits, for ``monitor exits``.
        self.exit_log = ExitLog()
        machine.listeners.append(self.exit_log)
        self._layout: Layout | None = None
        #: The stub's thread waits on this socket; workers write a byte to it.
        self.wakeup, self._waker = socket.socketpair()
        self.wakeup.setblocking(False)
        self._results: queue.SimpleQueue = queue.SimpleQueue()
        self._workers = [_Worker(d, self._on_done) for d in self.debuggers]
        self.running: set[int] = set()
        self.halted: set[int] = set()
        self._interrupted = False
        self._resumed = False
        self._first: Report | None = None
        self._pending: list[Report] = []
        #: The guest's end, once it came (its stop reply may still be due).
        self.ended: Stop | None = None
        self._crash_shown = False
        #: The last stop reported, for ``?``: at first, the guest before its
        #: first instruction.
        self.last = Report("stopped", Signal.TRAP, 0)

    @property
    def threads(self) -> range:
        return range(len(self.debuggers))

    def layout(self) -> Layout:
        """The register layout, chosen once, by the boot vCPU's mode when
        gdb first asks (gdb keeps the description for the whole session)."""
        if self._layout is None:
            self._layout = layout_for(self.debuggers[0].bitness())
        return self._layout

    # -- resuming -------------------------------------------------------------------------

    def resume(self, actions: dict[int, str]) -> Report | None:
        """Start vCPUs: ``actions`` maps a vCPU to ``"c"`` or ``"s"``. Returns
        a report at once when there is one to give without running (a kept
        stop, or the guest already ended); else None, and :meth:`collect`
        gives the report when the vCPUs have stopped."""
        if self.ended is not None:
            self._crash_shown = True
            return _report_of_end(self.ended, self.last.vcpu)
        if self._pending:
            self.last = self._pending.pop(0)
            return self.last
        self._first = None
        self._interrupted = False
        self._resumed = True
        for index, action in sorted(actions.items()):
            if index in self.halted:
                continue
            debugger = self.debuggers[index]
            if action == "s":
                self._workers[index].submit(debugger.step_instruction)
            elif action == "bs":
                self._workers[index].submit(debugger.step_back)
            elif action == "bc":
                self._workers[index].submit(lambda d=debugger: d.reverse_cont(self.timeout))
            else:
                timeout = self.timeout
                self._workers[index].submit(lambda d=debugger: d.cont(timeout=timeout))
            self.running.add(index)
        if not self.running:   # every vCPU asked to run has halted for good
            self._resumed = False
            return self._nothing_ran(min(actions, default=0))
        return None

    def _nothing_ran(self, index: int) -> Report:
        """No vCPU had anything to report: they all halted for good (the
        guest's end), or those gdb resumed did and others wait stopped."""
        if len(self.halted) == len(self.debuggers):
            return self._end(Stop(StopKind.HALT, 0, "every vCPU has halted"), index)
        self.last = Report("stopped", Signal.TRAP, index)
        return self.last

    def interrupt(self) -> None:
        """Ctrl-C: pause every running vCPU (from the stub's thread)."""
        self._interrupted = True
        self.nudge()

    def nudge(self) -> None:
        """Ask the running vCPUs to pause (again: a pause that arrives before
        a worker's ``cont`` began is forgotten by it, so the stub repeats it
        until the vCPUs have stopped)."""
        if self._first is not None or self._interrupted:
            for index in self.running:
                self.debuggers[index].pause()

    def _on_done(self, index: int, result: object) -> None:
        """On a worker's thread: hand the result over and wake the stub."""
        self._results.put((index, result))
        try:
            self._waker.send(b"!")
        except OSError:
            pass

    def collect(self) -> Report | None:
        """On the stub's thread, after a wakeup: take the workers' results;
        the report once every vCPU has stopped, else None. A VMM error on a
        worker's thread is raised here."""
        try:
            while self.wakeup.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        last = self.last.vcpu
        while True:
            try:
                index, result = self._results.get_nowait()
            except queue.Empty:
                break
            self.running.discard(index)
            if isinstance(result, BaseException):
                self._pause_others()
                raise result
            self._take(index, result)
            last = index
        if self.running or not self._resumed:
            return None
        self._resumed = False
        if self._first is None:
            return self._nothing_ran(last)
        self.last = self._first
        return self._first

    def _take(self, index: int, result: object) -> None:
        """Sort one vCPU's result into: the report, a kept stop, or nothing."""
        if isinstance(result, Stop):          # a cont
            stop: Stop | None = result
        else:                                 # a step: its StepRecord
            stop = result.stop or result.hit  # type: ignore[attr-defined]
        if stop is None:   # a step that ran into nothing
            self._offer(Report("stopped", Signal.TRAP, index))
            return
        if stop.kind is StopKind.HALT and len(self.debuggers) > 1:
            self.halted.add(index)
            if len(self.halted) == len(self.debuggers):
                self._end(stop, index)
            return
        if stop.ended:
            self._end(stop, index)
            return
        if stop.kind is StopKind.PAUSED:
            if self._interrupted and self._first is None:
                self._offer(Report("stopped", Signal.INT, index, stop))
            return
        if stop.kind in _REPLAYLOG:
            self._offer(Report("stopped", Signal.TRAP, index, stop, _REPLAYLOG[stop.kind]))
            return
        reason, address = self.points.reason(index, stop)
        self._offer(Report("stopped", Signal.TRAP, index, stop, reason, address))

    def _offer(self, report: Report) -> None:
        if self._first is None:
            self._first = report
            self._pause_others()
        elif report.reason:
            self._pending.append(report)

    def _pause_others(self) -> None:
        for index in self.running:
            self.debuggers[index].pause()

    def _end(self, stop: Stop, index: int) -> Report:
        """The guest ended: a crash is first shown as a SIGSEGV stop, so the
        wreck can be looked at; every other end is final at once."""
        if self.ended is None:
            self.ended = stop
        self._pending.clear()
        if stop.crashed and not self._crash_shown:
            report = Report("stopped", Signal.SEGV, index, stop)
        else:
            report = _report_of_end(stop, index)
        self._first = report
        self.last = report
        self._pause_others()
        return report

    def kill(self) -> Stop:
        """gdb's ``k``: the guest ends here."""
        self.ended = self.ended or Stop(StopKind.PAUSED, KILLED_STATUS, "gdb killed the guest")
        return self.ended

    # -- a stopped vCPU --------------------------------------------------------------------

    def registers(self, vcpu: int) -> RegisterFile:
        """The registers of a stopped vCPU, in the session's layout."""
        debugger = self.debuggers[vcpu]

        def load(source: Source):
            if source is Source.REGS:
                return copy_struct(debugger.view.regs())
            if source is Source.SREGS:
                return debugger.sregs()
            return debugger.vcpu.get_fpu()

        def store(source: Source, struct) -> None:
            if source is Source.REGS:
                debugger.vcpu.set_regs(struct)
            elif source is Source.SREGS:
                debugger.vcpu.set_sregs(struct)
            else:
                debugger.vcpu.set_fpu(struct)
            debugger.view.invalidate()
            debugger.recorder.edited()   # in the past: the recorded future is gone

        return RegisterFile(self.layout(), load, store)

    def read_memory(self, vcpu: int, address: int, size: int) -> bytes:
        """Up to ``size`` bytes at linear ``address`` through ``vcpu``'s page
        tables: as many as are mapped and in RAM from the start (the manual
        lets a reply to ``m`` be shorter than asked)."""
        return self.debuggers[vcpu].view.read_code(address, size)

    def write_memory(self, vcpu: int, address: int, data: bytes) -> None:
        """All of ``data`` at linear ``address``, or nothing (DebuggerError)."""
        self.debuggers[vcpu].write_memory(address, data)

    # -- the end ------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the workers, take every breakpoint out, guest debugging off."""
        for index in list(self.running):
            self.debuggers[index].pause()
        for worker in self._workers:
            worker.close()
        self.running.clear()
        for debugger in self.debuggers:
            debugger.close()
        if self.exit_log in self.machine.listeners:
            self.machine.listeners.remove(self.exit_log)
        self.wakeup.close()
        self._waker.close()
