"""The runner: the one place that calls ``KVM_RUN``.

Each vCPU has one :class:`VcpuRunner`. It owns everything about *running*
that vCPU, whoever asked for the run (the machine, the debugger, the TUI):

* ``KVM_RUN`` itself (:meth:`VcpuRunner.run`), and the completion run with
  ``immediate_exit`` set that lets KVM finish an I/O instruction without
  entering the guest again (:meth:`VcpuRunner.finish`);
* the guest-debug state (``KVM_SET_GUEST_DEBUG``), issued only when it
  changes; a free run turns it off (:meth:`VcpuRunner.set_guest_debug`);
* what other threads ask while the vCPU runs: a pause, the end of the
  time given, the end of the whole machine (:meth:`VcpuRunner.kick`);
* the halt check. With the in-kernel irqchip a ``hlt`` waits inside
  ``KVM_RUN`` and never exits to us. When a vCPU has been quiet for a
  while, the :class:`Watchdog` kicks it out and the runner asks KVM
  (``KVM_GET_MP_STATE``, RFLAGS.IF) whether it sleeps with interrupts off:
  then nothing can wake it, and the run is over.

One :class:`Watchdog` thread per run serves both the timeout and the halt
check for every vCPU of that run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from minikvm.core.stop import Requests
from minikvm.kvm.exits import Interrupted, VmExit
from minikvm.kvm.uapi import KvmExit, KvmMpState
from minikvm.kvm.vcpu import Vcpu

__all__ = ["HALT_CHECK_FIRST", "HALT_CHECK_INTERVAL", "Job", "VcpuRunner", "Watchdog"]

#: The halt check: a vCPU that made no exit for HALT_CHECK_FIRST seconds is
#: kicked out of ``KVM_RUN`` so that the runner can look whether it halted for
#: good (irqchip only). While it keeps running without exits (a compute loop)
#: the wait doubles up to HALT_CHECK_INTERVAL, so a busy guest pays a few
#: dozen kicks a second at most, and a guest that just did ``cli; hlt`` is
#: seen within a millisecond or two.
HALT_CHECK_FIRST = 0.001
HALT_CHECK_INTERVAL = 0.05
_RFLAGS_IF = 1 << 9
_KVM_EXIT_INTR = int(KvmExit.KVM_EXIT_INTR)
_now = time.monotonic
#: The guest-debug state "off": what a free run uses.
_NO_DEBUG = (0, (0,) * 8)


class VcpuRunner:
    """Runs one vCPU: ``KVM_RUN``, kicks, requests, halt check, guest debug.

    ``index`` is the vCPU's place in the machine (0 is the boot vCPU).
    ``halt_check`` is on for machines with the in-kernel irqchip, where a
    ``hlt`` never exits to the VMM.
    """

    def __init__(self, vcpu: Vcpu, index: int = 0, *, halt_check: bool = False) -> None:
        self.vcpu = vcpu
        self.index = index
        self.halt_check = halt_check
        #: ``KVM_RUN`` calls that returned, and how many of them were cut
        #: short by the halt check itself (the watchdog looks at the rest).
        self.runs = 0
        self.halt_checks = 0
        #: When the last ``KVM_RUN`` started and returned (time.monotonic).
        self.started = 0.0
        self.returned = 0.0
        # Requests from other threads, read after an Interrupted exit.
        self.pause_requested = False
        self.timed_out = False
        self.halt_check_pending = False
        #: The guest-debug state issued to KVM (control, DR0-DR7).
        self.guest_debug: tuple[int, tuple[int, ...]] = _NO_DEBUG

    # -- running ------------------------------------------------------------

    def run(self) -> VmExit:
        """``KVM_RUN`` once: enter the guest until its next exit."""
        self.started = time.monotonic()
        exit = self.vcpu.run()
        self.returned = time.monotonic()
        self.runs += 1
        return exit

    def run_reason(self) -> int:
        """``KVM_RUN`` once, leaving the exit undecoded in the run page: the
        raw ``KVM_EXIT_*`` reason (``KVM_EXIT_INTR`` for a kick). The
        machine's fast path reads the few bytes it needs itself and asks
        :meth:`decode` for a typed exit only when it needs one."""
        self.started = _now()
        reason = self.vcpu.run_reason()
        self.returned = _now()
        self.runs += 1
        return reason

    def decode(self, reason: int) -> VmExit:
        """The exit of the last :meth:`run_reason` (which returned ``reason``), typed."""
        if reason == _KVM_EXIT_INTR:
            return Interrupted()
        return self.vcpu.decode()

    def finish(self) -> VmExit:
        """``KVM_RUN`` with ``immediate_exit`` set: KVM completes an I/O or
        MMIO instruction (stores the value of an ``in``, advances RIP) and
        returns at once without running the guest on (Documentation/virt/
        kvm/api.rst, "immediate_exit"). Returns what KVM reported: usually
        ``Interrupted``; a single-step ``Debug`` when stepping."""
        self.vcpu.immediate_exit = True
        try:
            return self.run()
        finally:
            self.vcpu.immediate_exit = False

    def set_guest_debug(self, state: tuple[int, tuple[int, ...]] = _NO_DEBUG) -> None:
        """``KVM_SET_GUEST_DEBUG`` with ``state`` = (control, DR0-DR7), issued
        only when it differs from what KVM has.

        With no argument: guest debugging off, what a free run needs (a
        debugger that single-stepped before must not leave the guest
        trapping into debug exits nobody handles)."""
        if state != self.guest_debug:
            self.vcpu.set_guest_debug(state[0], list(state[1]))
        self.guest_debug = state

    def spawn(self, work: Callable[[], Any], name: str = "") -> Job:
        """Run ``work`` (which drives this vCPU) on a thread of its own.

        The thread that runs a vCPU is the only one that may call its
        ioctls while it runs: KVM holds the vCPU's mutex for the whole of
        ``KVM_RUN``, so a ``KVM_GET_REGS`` from elsewhere would wait for the
        guest's next exit. Other threads talk to it through :meth:`pause`
        and :meth:`kick`, and read its result from the :class:`Job`.
        """
        return Job(work, name or f"minikvm-vcpu{self.index}")

    # -- requests from other threads ----------------------------------------

    def kick(self) -> None:
        """Make the current (or next) ``KVM_RUN`` return ``Interrupted``."""
        self.vcpu.kick()

    def pause(self) -> None:
        """From any thread: end the current run with a PAUSED stop soon."""
        self.pause_requested = True
        self.vcpu.kick()

    def time_out(self) -> None:
        """The time given to the run is up: end it with a TIMEOUT stop."""
        self.timed_out = True
        self.vcpu.kick()

    def check_halt(self) -> None:
        """Kick the vCPU out and look whether it halted for good."""
        self.halt_check_pending = True
        self.vcpu.kick()

    def begin(self) -> None:
        """A new run starts: forget requests of the last one."""
        self.timed_out = False
        self.halt_check_pending = False

    def requests(self, exit: VmExit, device_stop=None) -> Requests:
        """What was asked while ``exit`` happened, for :func:`decide_stop`.

        The requests a kick carries are taken (cleared) only on the
        ``Interrupted`` exit the kick produced; the halt check asks KVM then.
        """
        if type(exit) is not Interrupted:
            return Requests(device_stop)
        halted = False
        if self.halt_check_pending:
            self.halt_check_pending = False
            self.halt_checks += 1
            halted = self.halted_for_good()
        pause = self.pause_requested and not halted and not self.timed_out
        if pause:
            self.pause_requested = False
        return Requests(device_stop, self.timed_out, pause, halted)

    # -- looking at the vCPU --------------------------------------------------

    def halted_for_good(self) -> bool:
        """With the in-kernel irqchip: is the vCPU asleep in ``hlt`` with
        RFLAGS.IF clear? Then no device interrupt can wake it (only an NMI
        or INIT, which nothing here sends)."""
        if not self.halt_check:
            return False
        if self.vcpu.get_mp_state() != KvmMpState.KVM_MP_STATE_HALTED:
            return False
        return not self.vcpu.get_regs().rflags & _RFLAGS_IF

    def rip(self) -> int | None:
        """RIP now (for a report; None when it cannot be read)."""
        try:
            return self.vcpu.get_rip()
        except Exception:  # noqa: BLE001 - a report must not fail
            return None


class Job:
    """A piece of vCPU work running on its own thread; its result or error.

    ``done`` is set when ``work`` returned or raised; :meth:`result` gives
    the value or re-raises the exception on the caller's thread.
    """

    def __init__(self, work: Callable[[], Any], name: str) -> None:
        self.done = threading.Event()
        self._value: Any = None
        self._error: BaseException | None = None
        self._work = work
        self.thread = threading.Thread(target=self._main, name=name, daemon=True)
        self.thread.start()

    def _main(self) -> None:
        try:
            self._value = self._work()
        except BaseException as err:  # noqa: BLE001 - handed to whoever asks
            self._error = err
        finally:
            self.done.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the work to end; True when it has."""
        if not self.done.wait(timeout):
            return False
        self.thread.join(timeout=1.0)
        return True

    def result(self) -> Any:
        """The work's return value (raises what the work raised)."""
        self.wait()
        if self._error is not None:
            raise self._error
        return self._value


class Watchdog:
    """One thread per run: the timeout and the halt check of its vCPUs.

    It kicks a vCPU whose runner saw no exit (other than the watchdog's own
    kicks) for a while, when the runner does halt checks -- first after
    ``first`` seconds of quiet, then after twice as long each time the vCPU
    turned out to be busy, up to ``interval`` -- and at ``timeout`` seconds
    it times every runner out.
    """

    def __init__(self, runners: Iterable[VcpuRunner], timeout: float | None = None,
                 interval: float = HALT_CHECK_INTERVAL, first: float = HALT_CHECK_FIRST) -> None:
        self.runners = tuple(runners)
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.interval = interval
        self.first = min(first, interval)
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        for runner in self.runners:
            runner.begin()
        self._watched = [runner for runner in self.runners if runner.halt_check]
        if self._watched or self.deadline is not None:
            self._thread = threading.Thread(target=self._loop, name="minikvm-watchdog",
                                            daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        watched = self._watched
        now = time.monotonic()
        # Per watched runner: activity seen last, since when it is quiet, and
        # how long a quiet spell must last before the next halt check.
        seen = [runner.runs - runner.halt_checks for runner in watched]
        quiet_since = [now] * len(watched)
        wait_for = [self.first] * len(watched)
        while True:
            now = time.monotonic()
            wake = [quiet_since[i] + wait_for[i] for i in range(len(watched))]
            if self.deadline is not None:
                wake.append(self.deadline)
            delay = max(0.0, min(wake) - now) if wake else self.interval
            if self._done.wait(delay):
                return
            now = time.monotonic()
            if self.deadline is not None and now >= self.deadline:
                for runner in self.runners:
                    runner.time_out()
                self.deadline = None
                continue
            for i, runner in enumerate(watched):
                activity = runner.runs - runner.halt_checks
                if activity != seen[i]:
                    seen[i] = activity
                    quiet_since[i] = now
                    wait_for[i] = self.first
                elif now - quiet_since[i] >= wait_for[i] and not runner.halt_check_pending:
                    runner.check_halt()
                    quiet_since[i] = now
                    wait_for[i] = min(wait_for[i] * 2, self.interval)

    def close(self) -> None:
        """End the watchdog and forget the run's timeout."""
        self._done.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        for runner in self.runners:
            runner.timed_out = False
            runner.halt_check_pending = False

    def __enter__(self) -> Watchdog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
