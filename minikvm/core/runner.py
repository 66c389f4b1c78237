"""The runner: the one place that calls ``KVM_RUN``.

Each vCPU has one :class:`VcpuRunner`. It owns everything about *running*
that vCPU, whoever asked for the run (the machine, the debugger, the TUI):

* ``KVM_RUN`` itself (:meth:`VcpuRunner.run`, :meth:`~VcpuRunner.run_reason`,
  and :meth:`~VcpuRunner.exits`, the machine's run loop, which enters the
  guest exit after exit with the least Python per exit), and the completion run with
  ``immediate_exit`` set that lets KVM finish an I/O instruction without
  entering the guest again (:meth:`VcpuRunner.finish`);
* the guest-debug state (``KVM_SET_GUEST_DEBUG``), issued only when it
  changes; a free run turns it off (:meth:`VcpuRunner.set_guest_debug`);
* what other threads ask while the vCPU runs: a pause, the end of the
  time given, the end of the whole machine (:meth:`VcpuRunner.kick`);
* the halt check. With the in-kernel irqchip a ``hlt`` waits inside
  ``KVM_RUN`` and never exits to us. When a vCPU has been quiet for a
  while, or KVM's ``blocking`` statistic shows it asleep after its last
  exit (:meth:`VcpuRunner.blocking_reader`), the :class:`Watchdog` kicks it
  out and the runner asks KVM (``KVM_GET_MP_STATE``, RFLAGS.IF) whether it
  sleeps with interrupts off: then nothing can wake it, and the run is over.

One :class:`Watchdog` thread per run serves both the timeout and the halt
check for every vCPU of that run.

With several vCPUs "halted for good" belongs to the whole machine, not to
one vCPU: a vCPU asleep with interrupts off can still be woken by another
vCPU's INIT or NMI, and an application processor (AP) that the in-kernel
LAPIC keeps parked until a startup IPI (``KVM_MP_STATE_UNINITIALIZED`` or
``KVM_MP_STATE_INIT_RECEIVED``) waits for exactly such a message. So each
run's :class:`HaltGroup` ends the run only when *every* vCPU of the run
is halted with interrupts off or parked, confirmed by a fresh look at each
(see :meth:`HaltGroup.report`); until then a halted vCPU sleeps on inside
``KVM_RUN``. A parked AP that never got its SIPI therefore counts as done:
a guest that never starts its APs ends when vCPU 0 halts.
"""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable, Generator, Iterable, Sized
from typing import Any

from minikvm.core.stop import Requests
from minikvm.kvm.errors import KvmError
from minikvm.kvm.exits import EXIT_AND_IO, EXIT_AND_IO_OFFSET, Interrupted, VmExit
from minikvm.kvm.uapi import KvmExit, KvmMpState
from minikvm.kvm.vcpu import Vcpu

__all__ = ["HALT_CHECK_FIRST", "HALT_CHECK_INTERVAL", "PARKED_STATES", "HaltGroup", "Job",
           "VcpuRunner", "Watchdog"]

#: The halt check: a vCPU that made no exit for HALT_CHECK_FIRST seconds is
#: kicked out of ``KVM_RUN`` so that the runner can look whether it halted for
#: good (irqchip only). While it keeps running without exits (a compute loop)
#: the wait doubles up to HALT_CHECK_INTERVAL, so a busy guest pays a few
#: dozen kicks a second at most, and a guest that just did ``cli; hlt`` is
#: seen within a millisecond or two -- usually within one, where KVM's
#: ``blocking`` statistic shows the vCPU asleep (see :class:`Watchdog`).
HALT_CHECK_FIRST = 0.001
HALT_CHECK_INTERVAL = 0.05
_RFLAGS_IF = 1 << 9
_KVM_EXIT_INTR = int(KvmExit.KVM_EXIT_INTR)
_now = time.monotonic
#: The guest-debug state "off": what a free run uses.
_NO_DEBUG = (0, (0,) * 8)
#: MP states of an AP that the in-kernel LAPIC keeps waiting for INIT and a
#: startup IPI (Intel SDM vol. 3, 8.4 "Multiple-Processor (MP)
#: Initialization"; KVM: kvm_apic_accept_events, arch/x86/kvm/lapic.c). A
#: vCPU other than vCPU 0 starts UNINITIALIZED (kvm_arch_vcpu_create,
#: arch/x86/kvm/x86.c, when the irqchip is in the kernel).
PARKED_STATES = frozenset({KvmMpState.KVM_MP_STATE_UNINITIALIZED,
                           KvmMpState.KVM_MP_STATE_INIT_RECEIVED})


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
        #: Halt checks the watchdog asked for early: on KVM's ``blocking``
        #: statistic, before a quiet spell (:class:`Watchdog`). Counted when
        #: asked, where :attr:`halt_checks` counts those taken.
        self.early_checks = 0
        #: Exits of :meth:`exits` that were no exit of the guest's: a
        #: ``KVM_RUN`` cut short by a signal (``KVM_EXIT_INTR``: the VMM's
        #: kicks). ``Machine.run(max_exits=)`` leaves them out of its count.
        self.kicks = 0
        #: When the last ``KVM_RUN`` started and returned (time.monotonic).
        self.started = 0.0
        self.returned = 0.0
        # Requests from other threads, read after an Interrupted exit.
        self.pause_requested = False
        self.timed_out = False
        self.halt_check_pending = False
        #: The guest-debug state issued to KVM (control, DR0-DR7).
        self.guest_debug: tuple[int, tuple[int, ...]] = _NO_DEBUG
        #: The MP state the last halt check read (a ``KvmMpState``), None
        #: before the first: the trace and the TUI show it.
        self.mp_state: KvmMpState | None = None
        #: The vCPUs of the current run that must all be done before it ends
        #: (set by the run's Watchdog; None: this vCPU alone decides).
        self.group: HaltGroup | None = None
        # Opened here, while the vCPU is not running: KVM_GET_STATS_FD, like
        # every vCPU ioctl, waits for the vCPU's mutex, which KVM_RUN holds.
        self._blocking = self._find_blocking() if halt_check else None

    # -- running ------------------------------------------------------------

    def run(self) -> VmExit:
        """``KVM_RUN`` once: enter the guest until its next exit."""
        self.started = _now()
        while True:
            try:
                exit = self.vcpu.run()
            except KvmError as err:
                self._woken(err)
                continue
            self.returned = _now()
            self.runs += 1
            return exit

    def run_reason(self, timed: object = True) -> int:
        """``KVM_RUN`` once, leaving the exit undecoded in the run page: the
        raw ``KVM_EXIT_*`` reason (``KVM_EXIT_INTR`` for a kick). A caller
        that looks at a few bytes of the exit reads them itself and asks
        :meth:`decode` for a typed exit only when it needs one (the
        debugger's stepper does what this does, written out, once per guest
        instruction: debug/stepper.py). ``EAGAIN`` (an INIT
        woke the vCPU, no exit: :meth:`_woken`) enters again -- in a loop,
        not by recursion: another vCPU may send INIT after INIT.

        With ``timed`` false :attr:`returned` is left as it was: as the
        stepper does while nobody listens, which makes no event of a plain step
        and stamps :attr:`returned` itself when the step met an exit
        (:meth:`stamp`). :attr:`started` is always read: the time an exit's
        guest run began is known only before it."""
        self.started = _now()
        return self.run_reason_again(timed)

    def run_reason_again(self, timed: object = True) -> int:
        """:meth:`run_reason` with :attr:`started` kept: for a caller whose
        own ``KVM_RUN`` of this exit failed with ``EAGAIN`` (the debugger's
        stepper, which makes its run itself) and enters again."""
        while True:
            try:
                reason = self.vcpu.run_reason()
            except KvmError as err:
                self._woken(err)
                continue
            if timed:
                self.returned = _now()
            self.runs += 1
            return reason

    def stamp(self) -> None:
        """The last ``KVM_RUN`` returned about now: for a caller of
        ``run_reason(timed=False)`` that found an exit it hands on."""
        self.returned = _now()

    def _woken(self, err: KvmError) -> None:
        """``KVM_RUN`` failed with ``err``: raise it, unless it is ``EAGAIN``.

        A parked AP (``KVM_MP_STATE_UNINITIALIZED``) sleeps inside
        ``KVM_RUN``; when an INIT wakes it, KVM takes the INIT and returns
        ``EAGAIN`` instead of an exit (kvm_arch_vcpu_ioctl_run,
        arch/x86/kvm/x86.c): "run me again". That is no exit for the VMM,
        so every way of running here enters again at once; it counts as
        activity (the vCPU's state changed), which keeps the halt check
        honest."""
        if err.errno != errno.EAGAIN:
            raise err
        self.runs += 1

    def exits(self, timed: Sized = ()
              ) -> Generator[tuple[int, int, int, int, int, int], None, None]:
        """``KVM_RUN`` again and again, on the calling thread: after each
        exit, ``(reason, direction, size, port, count, data_offset)`` read
        from the run page in one unpack (:data:`~minikvm.kvm.exits.EXIT_AND_IO`;
        the last five mean something only for ``KVM_EXIT_IO``). The rest of
        the exit stays in the page until the loop asks for the next one:
        :meth:`decode` types it. ``KVM_EXIT_INTR`` is a kick.

        The machine's run loop: what :meth:`run_reason` does per exit, done
        once per loop where it can be (the thread that :meth:`Vcpu.kick`
        signals, the bound calls). :attr:`started` and :attr:`returned` are
        read while ``timed`` (the machine's listeners) is not empty.
        Close the generator when the loop ends.
        """
        vcpu = self.vcpu
        enter = vcpu.entry()
        page = vcpu.page
        unpack = EXIT_AND_IO.unpack_from
        synced = vcpu.sync_mask != 0
        holder = vcpu.hold_thread()
        try:
            while True:
                if timed:
                    self.started = _now()
                vcpu.synced = False
                try:
                    enter()
                except OSError as failed:
                    vcpu.synced = synced
                    try:
                        fields = (vcpu.run_failed(failed.errno), 0, 0, 0, 0, 0)
                    except KvmError as err:
                        self._woken(err)
                        continue
                    self.kicks += 1   # run_failed() returned KVM_EXIT_INTR
                else:
                    vcpu.synced = synced
                    fields = unpack(page, EXIT_AND_IO_OFFSET)
                if timed:
                    self.returned = _now()
                self.runs += 1
                yield fields
        finally:
            vcpu.release_thread(holder)

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
        ``Interrupted``; a single-step ``Debug`` when stepping. A kick meant
        for the run loop (a timeout, a pause) that arrives before or during
        it stays pending for the loop (:meth:`Vcpu.immediate
        <minikvm.kvm.vcpu.Vcpu.immediate>`)."""
        with self.vcpu.immediate():
            return self.run()

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

    def begin(self, group: HaltGroup | None = None) -> None:
        """A new run starts: forget requests of the last one; ``group``
        holds the vCPUs of the run that must all be done before it ends."""
        self.timed_out = False
        self.halt_check_pending = False
        self.group = group

    def blocking_reader(self) -> Callable[[], int] | None:
        """KVM's ``blocking`` statistic of this vCPU as a callable: 1 while
        it sleeps inside ``KVM_RUN`` (a ``hlt`` the in-kernel LAPIC handles,
        an AP waiting for its SIPI), else 0; readable from the watchdog's
        thread while the vCPU runs (minikvm/kvm/stats.py). None where the
        runner does no halt checks, or the kernel has no binary statistics
        or no such statistic: the halt check then waits for a quiet spell."""
        return self._blocking

    def _find_blocking(self) -> Callable[[], int] | None:
        try:
            return self.vcpu.stats().reader("blocking")
        except (KvmError, OSError, ValueError):   # no stats fd; a malformed one
            return None

    @property
    def activity(self) -> int:
        """``KVM_RUN`` returns other than the halt check's own kicks: when
        it changes, the vCPU did something."""
        return self.runs - self.halt_checks

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
            if self.group is not None:
                halted = self.group.report(self, halted)
        pause = self.pause_requested and not halted and not self.timed_out
        if pause:
            self.pause_requested = False
        return Requests(device_stop, self.timed_out, pause, halted)

    # -- looking at the vCPU --------------------------------------------------

    def halted_for_good(self) -> bool:
        """With the in-kernel irqchip: is the vCPU asleep in ``hlt`` with
        RFLAGS.IF clear, or an AP still parked waiting for INIT/SIPI? Then
        no device interrupt can wake it; only another vCPU can (an INIT, a
        SIPI, an NMI), which is the :class:`HaltGroup`'s concern.

        ``KVM_GET_MP_STATE`` first delivers INIT/SIPI events already sent
        to the vCPU (kvm_arch_vcpu_ioctl_get_mpstate calls
        kvm_apic_accept_events, arch/x86/kvm/x86.c), so an AP that has
        just been sent its SIPI reads RUNNABLE, not parked."""
        if not self.halt_check:
            return False
        state = KvmMpState(self.vcpu.get_mp_state())
        self.mp_state = state
        if state in PARKED_STATES:
            return True
        if state != KvmMpState.KVM_MP_STATE_HALTED:
            return False
        return not self.vcpu.get_regs().rflags & _RFLAGS_IF

    @property
    def parked(self) -> bool:
        """The last halt check found an AP waiting for INIT/SIPI."""
        return self.mp_state in PARKED_STATES

    @property
    def asleep(self) -> bool:
        """The last halt check found the vCPU waiting -- in ``hlt`` for an
        interrupt (whatever RFLAGS.IF), or parked -- rather than running.
        A guest that computes for a long time without exits is not asleep."""
        return (self.mp_state is KvmMpState.KVM_MP_STATE_HALTED
                or self.mp_state in PARKED_STATES)

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


class HaltGroup:
    """The vCPUs of one run, and whether all of them are done.

    Each halt check of a member reports here (:meth:`report`); the run
    ends (``Requests.halted``) only when every member is halted with
    interrupts off or parked. A vCPU cannot look at another one while that
    one is inside ``KVM_RUN`` (KVM holds its mutex), so each member's
    answer is a *mark* left at its own last check, with its
    :attr:`VcpuRunner.activity` then: a mark goes stale as soon as the vCPU
    does anything. Marks can still be old news -- an AP sent its SIPI runs
    inside ``KVM_RUN`` without a single exit -- so when all marks look
    good, the reporter starts a *confirmation round* instead of ending:
    it kicks every other member for a fresh check, and the run ends only
    when all marks are younger than that round. A vCPU that makes
    progress never confirms, and the run goes on.
    """

    def __init__(self, runners: Iterable[VcpuRunner]) -> None:
        self.runners = tuple(runners)
        self._lock = threading.Lock()
        # Per runner: (check number, activity) of its last "done" check, or None.
        self._marks: dict[int, tuple[int, int] | None] = {id(r): None for r in self.runners}
        self._checks = 0
        # The check number that started the last confirmation round (None: none yet).
        self._round: int | None = None

    def report(self, runner: VcpuRunner, done: bool) -> bool:
        """``runner``'s halt check found it ``done`` (or not); True when the
        whole group is done and the run should end."""
        to_kick: list[VcpuRunner] = []
        with self._lock:
            self._checks += 1
            if not done:
                self._marks[id(runner)] = None
                return False
            self._marks[id(runner)] = (self._checks, runner.activity)
            others = [r for r in self.runners if r is not runner]
            for other in others:
                mark = self._marks[id(other)]
                if mark is None or mark[1] != other.activity:
                    return False
            # Every mark at least as young as the round's start (the starter's
            # own mark is that start): all were done at once. One vCPU alone
            # needs no round.
            if self._round is not None or not others:
                if all(self._marks[id(other)][0] >= (self._round or 0)  # type: ignore[index]
                       for other in others):
                    return True
            self._round = self._checks
            to_kick = others
        for other in to_kick:
            other.check_halt()
        return False

    def summary(self) -> str:
        """Which vCPUs halted and which never left wait-for-SIPI, in words."""
        parked = [r.index for r in self.runners if r.parked]
        if not parked:
            return "every vCPU halted (hlt with interrupts off)"
        halted = [r.index for r in self.runners if not r.parked]
        names = ", ".join(map(str, parked))
        return (f"vCPU {', '.join(map(str, halted))} halted (hlt with interrupts off); "
                f"vCPU {names} never started (waiting for INIT/SIPI)")


class Watchdog:
    """One thread per run: the timeout and the halt check of its vCPUs.

    It kicks a vCPU whose runner saw no exit (other than the watchdog's own
    kicks) for a while, when the runner does halt checks -- first after
    ``first`` seconds of quiet, then after twice as long each time the vCPU
    turned out to be busy, up to ``interval`` -- and at ``timeout`` seconds
    it times every runner out.

    Where KVM offers the vCPU's ``blocking`` statistic
    (:meth:`VcpuRunner.blocking_reader`), the first check after the vCPU's
    last exit need not wait for the quiet spell: a wake-up that finds the
    vCPU asleep inside ``KVM_RUN`` kicks it at once. The watchdog wakes
    every ``first`` seconds while the vCPU keeps making exits, so a guest
    that makes exits and then ends in ``cli; hlt`` is usually seen within
    one such period of its last exit instead of one to two. Otherwise --
    after a stretch of computing without exits (the wake-ups are spaced
    out then), within ``interval`` of another early check, or while KVM
    still polls before it sleeps (``kvm_vcpu_halt`` polls first and only
    then calls ``kvm_vcpu_block``, which sets ``blocking``:
    virt/kvm/kvm_main.c) -- the quiet rule applies as without the
    statistic. A vCPU that is computing is never asleep
    there and gets no more kicks than before. One that makes exits and
    sleeps in ``sti; hlt`` between them (waiting for its timer or its UART)
    would be found asleep at wake-up after wake-up and kicked for nothing,
    so this early check is made at most once per ``interval``.
    """

    def __init__(self, runners: Iterable[VcpuRunner], timeout: float | None = None,
                 interval: float = HALT_CHECK_INTERVAL, first: float = HALT_CHECK_FIRST) -> None:
        self.runners = tuple(runners)
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.interval = interval
        self.first = min(first, interval)
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        #: Times the thread woke up to look at its vCPUs (or the deadline);
        #: the early checks it asked for are counted per runner
        #: (:attr:`VcpuRunner.early_checks`).
        self.wakeups = 0
        #: The run ends on a halt only when all of its vCPUs are done.
        self.group = HaltGroup(self.runners)
        for runner in self.runners:
            runner.begin(self.group)
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
        first = self.first
        blocking = [runner.blocking_reader() for runner in watched]
        early_at = [now - self.interval] * len(watched)   # the last early check
        while True:
            now = time.monotonic()
            wake = [quiet_since[i] + wait_for[i] for i in range(len(watched))]
            if self.deadline is not None:
                wake.append(self.deadline)
            delay = max(0.0, min(wake) - now) if wake else self.interval
            if self._done.wait(delay):
                return
            self.wakeups += 1
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
                    wait_for[i] = first
                if runner.halt_check_pending:
                    continue
                # Quiet for long enough; or, before the first check since its
                # last exit, asleep inside KVM_RUN right now (an early check,
                # at most one per interval).
                due = now - quiet_since[i] >= wait_for[i]
                if (not due and wait_for[i] == first and blocking[i] is not None
                        and now - early_at[i] >= self.interval and self._asleep(blocking, i)):
                    early_at[i] = now
                    runner.early_checks += 1
                    due = True
                if due:
                    runner.check_halt()
                    quiet_since[i] = now
                    wait_for[i] = min(wait_for[i] * 2, self.interval)

    @staticmethod
    def _asleep(blocking: list[Callable[[], int] | None], i: int) -> bool:
        """Read runner ``i``'s ``blocking`` statistic; a read that fails
        (a closed or odd statistics file) drops it for the rest of the run,
        which then waits for quiet spells only: the watchdog thread must not
        die, or the run would have no timeout and no halt check left."""
        try:
            return blocking[i]() == 1   # type: ignore[misc]
        except (OSError, ValueError):
            blocking[i] = None
            return False

    def close(self) -> None:
        """End the watchdog and forget the run's timeout."""
        self._done.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        for runner in self.runners:
            runner.timed_out = False
            runner.halt_check_pending = False
            runner.group = None

    def __enter__(self) -> Watchdog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
