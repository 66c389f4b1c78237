"""The one-instruction stepper: run exactly one guest instruction.

With ``KVM_GUESTDBG_SINGLESTEP`` KVM sets RFLAGS.TF behind the guest's back;
the CPU raises ``#DB`` after the next instruction, with DR6.BS set (SDM vol.
3B, 17.3.1.4), and KVM hands it to us as a debug exit whose ``pc`` is the
linear address of the instruction after (Documentation/virt/kvm/api.rst,
"KVM_SET_GUEST_DEBUG" and ``kvm_run.debug``). One ``KVM_RUN`` and the
registers per instruction: that is the hot loop of every stepping run, and
:meth:`Stepper.step` does little else unless the step met an exit. It makes
the ``KVM_RUN`` itself (what :meth:`VcpuRunner.run_reason` does, written
out: the clock, the thread a kick signals, the run count; a failed run goes
the long way), then reads the exit reason, the debug exit's ``pc`` and DR6 straight
from the run page (no exit object), and the 18 registers that
``KVM_CAP_SYNC_REGS`` left there as a tuple of ints (one ``unpack_from``: no
ioctl, no ``kvm_regs``); the :class:`StepRecord` keeps the tuples before and
after and makes a ``kvm_regs`` only for whoever asks. Only an exit met on
the way is decoded into a typed exit and handed to the machine.

Why so frugal: on kvm-pvm every ``KVM_RUN`` comes back to caches and TLBs
the nested hypervisor has cooled, and each object or function a step then
touches costs several times what it costs in a tight loop
(benchmarks/README.md, "Where the time goes"). A plain step is one run,
three words and one unpack of the run page, one tuple for the view, one
record and, where the stepper must look for a ``hlt``, one call of
:meth:`GuestView.current_byte` (two after an ``iret``'s possible prefix),
each one comparison of the run page's bytes from CR0 to EFER with the last
translation's. On CPython 3.11 a call of a
Python function costs ~700 instructions here, as much as the few stores it
would make, so the run, and what a plain step does to the view and the
record, are written out in :meth:`Stepper.step` (each line says what it
stands for; tests/test_debug_stepping.py, "the hot path", holds them to
it), and no clock is read after the run while nobody listens.

An instruction may exit to the VMM *before* its ``#DB``: an ``out`` or an
MMIO access exits first, and KVM completes the instruction only at the next
``KVM_RUN``. Those exits go through :meth:`Machine.handle_exit` like any
other (devices see them, the trace records them, the stop rules apply), and
the stepper completes the instruction with a ``KVM_RUN`` that has
``immediate_exit`` set (:meth:`VcpuRunner.finish`), so the step still ends
after exactly one instruction. The single-step ``#DB`` exits themselves are
the debugger's own and are not dispatched.

``hlt`` needs a word. Hardware KVM reports a stepped ``hlt`` as a HLT exit.
kvm-pvm reports a ``#DB`` after it and the vCPU runs on; with the in-kernel
irqchip a ``hlt`` never exits at all (the vCPU waits inside KVM). So after a
one-byte step the stepper looks whether the byte was ``hlt`` (0xF4) and
hands the machine the HLT exit it stands for. That look is on the hot path
(push, pop, nop, ``cld`` are one byte), so it reads the byte through the
view's TLB (:meth:`GuestView.current_byte`): the translation used last
(:attr:`Tlb.last`) while the step stays on that page and the run page's
bytes from CR0 to EFER are those it was made for (CR0, CR3, CR4 and EFER
decide the translation), else a dictionary look-up, and walks the page
tables afresh only when the cached frame does hold 0xF4, so a stale entry
never invents a ``hlt``. Where steps let interrupts into a ``hlt`` (the
irqchip and ``KVM_GUESTDBG_BLOCKIRQ``, below) the stepper needs the byte
*before* every step anyway (a ``hlt`` that may wait for its interrupt; an
``iret``, after which kvm-pvm may put the vCPU back to sleep,
:meth:`Stepper._slept_after`), so it reads it there instead, once, and the
same byte answers after the step. It is also the byte that ran, where a
``stosb`` that overwrites itself leaves another one behind.

**Interrupts and ``hlt``.** A step keeps interrupts out
(``KVM_GUESTDBG_BLOCKIRQ``: ``inject_pending_event`` in arch/x86/kvm/x86.c
returns before injecting any interrupt while it is set), so a ``stepi``
does not wander into a handler. But a guest that waits in ``sti; hlt`` for
its UART, virtio or PIT interrupt would then wait for ever. So with the
in-kernel irqchip two steps let interrupts in: the step of a ``hlt`` with
RFLAGS.IF set, and the step after it, the *wake-up*. After the ``hlt`` the
stepper puts the vCPU to sleep as hardware KVM itself does after an
emulated ``hlt`` (``KVM_SET_MP_STATE`` HALTED; kvm-pvm reports the step's
``#DB`` and leaves the vCPU runnable); the wake-up's ``KVM_RUN`` then sleeps
in ``vcpu_block`` until ``kvm_arch_vcpu_runnable`` sees an interrupt the
vCPU may take (``kvm_vcpu_has_events``), and KVM injects it: the step ends
after the handler's first instruction, with the frame pushed. Kicks while
it sleeps are the machine's (:meth:`Machine.handle_exit`: host input is
delivered, a pause or the timeout ends the step with nothing executed).
Why the ``hlt``'s own step too: on kvm-pvm a ``hlt`` stepped with
BLOCKIRQ leaves an interrupt that is already pending unseen by the next
runs. docs/reverse.md, "Interrupts while recording", says more.
"""

from __future__ import annotations

import ctypes
import struct
from threading import get_ident as _thread
from time import monotonic as _now
from collections.abc import Callable

from minikvm.core.events import ExitEvent
from minikvm.core.runner import Watchdog
from minikvm.core.stop import Stop, StopKind
from minikvm.debug.arming import Arming
from minikvm.debug.breakpoints import DR6_BS
from minikvm.debug.events import StepRecord
from minikvm.debug.guestview import GuestView
from minikvm.debug.inspect import REG_INDEX, values_of
from minikvm.debug.probe import DebugSupport
from minikvm.kvm.errors import KvmError
from minikvm.kvm.exits import Debug, Hlt, Interrupted, IoIn, IoOut, MmioRead, MmioWrite, VmExit
from minikvm.kvm.uapi import (
    KVM_GUESTDBG_BLOCKIRQ,
    KVM_SYNC_X86_REGS,
    KvmExit,
    KvmMpState,
    kvm_debug_exit_arch,
    kvm_regs,
    kvm_run,
    kvm_run_debug,
    kvm_run_s,
    kvm_sync_regs,
)
from minikvm.machine import Machine
from minikvm.memory import GuestMemoryError

__all__ = ["Stepper"]

#: The one-byte ``hlt`` instruction (SDM vol. 2, "HLT").
HLT_OPCODE = 0xF4
#: ``iret``/``iretd``/``iretq`` (SDM vol. 2, "IRET/IRETD/IRETQ").
_IRET_OPCODE = 0xCF
#: What an ``iret`` may start with: itself, or the operand-size prefix
#: (0x66) or a REX prefix (0x40-0x4F; ``iretq`` is 0x48 0xCF) before it.
_IRET_FIRST_BYTES = frozenset({_IRET_OPCODE, 0x66, *range(0x40, 0x50)})
_RFLAGS_IF = 1 << 9
#: KVM_RUN calls one instruction may need: the exit itself, the completion
#: run, and retries after a stray kick. More means something is wrong.
_MAX_RUNS_PER_STEP = 8
#: In DR6 after a plain single step: BS set, none of B0-B3.
_DR6_BS_OR_B = DR6_BS | 0xF
#: Exits of an instruction that KVM completes at the next KVM_RUN.
_COMPLETED_LATER = (IoIn, IoOut, MmioRead, MmioWrite)
_KVM_EXIT_DEBUG = int(KvmExit.KVM_EXIT_DEBUG)
_KVM_EXIT_INTR = int(KvmExit.KVM_EXIT_INTR)
_BLOCKIRQ = int(KVM_GUESTDBG_BLOCKIRQ)
#: How long a wake-up step waits for its interrupt when no run (and so no
#: timeout) is going on: a ``stepi`` at a sleeping ``hlt`` comes back.
LONE_WAIT_TIMEOUT = 2.0
_RIP = REG_INDEX["rip"]
_RFLAGS = REG_INDEX["rflags"]
_SYNC_REGS = int(KVM_SYNC_X86_REGS)
_new = object.__new__


#: ``kvm_run.debug.arch.pc`` and ``.dr6`` as indexes into the run page as
#: 64-bit words (:attr:`Vcpu.qwords`): two indexes cost less than an
#: ``unpack_from`` of both (callgrind, benchmarks/single_step.py). Both
#: fields are 8-byte aligned in the page (include/uapi/linux/kvm.h).
_PC_OFFSET = kvm_run.debug.offset + kvm_run_debug.arch.offset + kvm_debug_exit_arch.pc.offset
_DR6_OFFSET = kvm_run.debug.offset + kvm_run_debug.arch.offset + kvm_debug_exit_arch.dr6.offset
assert _PC_OFFSET % 8 == 0 and _DR6_OFFSET % 8 == 0
_PC_INDEX = _PC_OFFSET // 8
#: ``kvm_run.exit_reason`` (a __u32 at offset 8) is the low half of word 1.
assert kvm_run.exit_reason.offset == 8
_EXIT_REASON_INDEX = 1
_DR6_INDEX = _DR6_OFFSET // 8
#: The 18 registers ``KVM_CAP_SYNC_REGS`` leaves in ``kvm_run.s.regs.regs``,
#: read as values (no ``kvm_regs`` copy) in one ``unpack_from``.
_SYNCED_REGS = struct.Struct(f"<{ctypes.sizeof(kvm_regs) // 8}Q")
_SYNCED_REGS_OFFSET = kvm_run.s.offset + kvm_run_s.regs.offset + kvm_sync_regs.regs.offset


class Stepper:
    """Steps one vCPU of ``machine`` through its runner, one instruction at a time.

    ``view`` is told the registers after each step; ``arming`` gives the
    guest-debug state a step needs; ``support`` says whether a stepped
    ``hlt`` must be recognised here (see the module docstring).
    """

    def __init__(self, machine: Machine, view: GuestView, arming: Arming,
                 support: DebugSupport) -> None:
        self.machine = machine
        self.view = view
        self.runner = view.runner
        self.arming = arming
        #: Instructions single-stepped so far.
        self.steps = 0
        self.check_hlt = not support.step_reports_hlt or machine.irqchip
        #: Let interrupts into the step of a ``hlt`` with IF set and into
        #: the wake-up after it (see the module docstring): with the
        #: irqchip, where an interrupt can wake a ``hlt``, and only where
        #: steps block interrupts at all.
        self.wake_hlts = bool(machine.irqchip and support.block_irq)
        #: The vCPU sleeps in a stepped ``hlt``: the next step waits for
        #: its interrupt (KVM's MP state is HALTED).
        self.asleep = False
        #: Did the last step execute anything? False when a pause or the
        #: timeout ended it first (its record's ``stop`` says which).
        self.ran = True
        #: Did the last step move host input into a device outside an exit?
        self.fed_input = False
        self._vcpu = self.runner.vcpu
        #: The machine's listeners (the list itself): a step reads the clock
        #: after its run only while someone listens.
        self._listeners = machine.listeners
        self._page = self._vcpu.page
        self._qwords = self._vcpu.qwords
        #: KVM_RUN as a bare callable (:meth:`Vcpu.entry`).
        self._enter = self._vcpu.entry()
        self._blocking: tuple[int, tuple[int, ...]] | None = None
        self._open: tuple[int, tuple[int, ...]] = (0, (0,) * 8)

    def step(self) -> StepRecord:
        """Execute exactly one guest instruction and say what it did."""
        view = self.view
        runner = self.runner
        last = view.last_step
        if last is not None and last[0] == runner.runs:
            _, before, pc = last   # the stop the last plain step made
        else:
            before, pc = view.values_and_pc()
        self.ran = True
        if runner.halt_check_pending:
            # A halt check whose kick a completion run (``finish``) took:
            # forget it, or the watchdog would never kick this vCPU again.
            runner.halt_check_pending = False
        if self.asleep:
            return self._wake(before, pc)
        state = self.arming.stepping_state
        opcode = None   # the instruction's first byte, where it is read before the run
        if self.wake_hlts:
            # Is it a hlt that may wait for its interrupt, or an iret? The
            # byte also answers "was that a hlt?" after the step.
            opcode = view.current_byte(pc)
            if opcode == HLT_OPCODE:
                if before[_RFLAGS] & _RFLAGS_IF:
                    state = self._letting_interrupts_in(state)
            elif opcode in _IRET_FIRST_BYTES and runner.group is None and (
                    opcode == _IRET_OPCODE or view.current_byte(pc + 1) == _IRET_OPCODE):
                # an iret, alone or after its prefix
                return self._watched(self.step)
        if state is not runner.guest_debug:
            runner.set_guest_debug(state)
        # No clock after the run while nobody listens: a plain step makes no
        # event; one that met an exit stamps its return time below.
        timed = self._listeners
        # runner.run_reason(timed) written out (a call of each of it and
        # Vcpu.run_reason costs more than what it does): the thread a kick
        # signals, the synced copy marked stale for the run, one KVM_RUN;
        # anything but success goes the long way (_run_failed).
        vcpu = self._vcpu
        synced = vcpu.sync_mask
        runner.started = _now()
        holder = vcpu._thread_id
        vcpu._thread_id = _thread()
        vcpu.synced = False
        try:
            self._enter()
        except OSError as failed:
            reason = self._run_failed(failed, holder, timed)
        except BaseException:
            # A signal handler's exception (Ctrl-C, hostio.Terminated) comes
            # out of the ioctl instead of EINTR: let the thread go all the same.
            vcpu._thread_id = holder
            raise
        else:
            vcpu._thread_id = holder
            vcpu.synced = synced != 0
            runs = runner.runs = runner.runs + 1
            if timed:
                runner.returned = _now()
            qwords = self._qwords
            if (qwords[_EXIT_REASON_INDEX] & 0xFFFF_FFFF == _KVM_EXIT_DEBUG and synced & _SYNC_REGS
                    and qwords[_DR6_INDEX] & _DR6_BS_OR_B == DR6_BS):
                page = self._page
                new_pc = qwords[_PC_INDEX]
                after = _SYNCED_REGS.unpack_from(page, _SYNCED_REGS_OFFSET)
                # view.stepped_values(after, new_pc) in one store (the view
                # takes last_step as its stop's registers when asked:
                # GuestView._adopt) and stepped_record(before, after, pc,
                # new_pc, view) written out: each call would cost ~700
                # instructions, as much as what it does (callgrind,
                # benchmarks/single_step.py --instructions).
                view.last_step = (runs, after, new_pc)
                self.steps += 1
                record = _new(StepRecord)
                record._values_before = before
                record._values_after = after
                record._before = record._after = record.stop = record.debug = record.hit = None
                record.pc = pc
                record.new_pc = new_pc
                record.exits = ()
                record._view = view
                if new_pc - pc == 1 and self.check_hlt:
                    if not self.wake_hlts:   # else read before the run
                        opcode = view.current_byte(pc)
                    if opcode == HLT_OPCODE:
                        self._stepped_hlt(record)
                return record
            reason = qwords[_EXIT_REASON_INDEX] & 0xFFFF_FFFF
        if not timed:
            runner.stamp()
        return self._step_slow(before, pc, runner.decode(reason))

    def _run_failed(self, failed: OSError, holder: int | None, timed: object) -> int:
        """The inline ``KVM_RUN`` of :meth:`step` failed: what
        :meth:`VcpuRunner.run_reason` does then (a kick is ``KVM_EXIT_INTR``;
        ``EAGAIN``, an INIT that woke the vCPU, runs again, in a loop, with
        the run's first start time kept; anything else raises)."""
        vcpu, runner = self._vcpu, self.runner
        vcpu._thread_id = holder
        vcpu.synced = vcpu.sync_mask != 0   # KVM stores them on every way out
        try:
            reason = vcpu.run_failed(failed.errno)
        except KvmError as err:
            runner._woken(err)   # EAGAIN counts as a run; anything else raises
            return runner.run_reason_again(timed)
        runner.runs += 1
        if timed:
            runner.returned = _now()
        return reason

    def _step_slow(self, before: tuple[int, ...], pc: int, exit: VmExit) -> StepRecord:
        """A step that exited to the VMM on the way (I/O, MMIO, hlt, a kick)."""
        runner = self.runner
        exits: list[ExitEvent] = []
        stop: Stop | None = None
        debug: Debug | None = None
        for _ in range(_MAX_RUNS_PER_STEP):
            if type(exit) is Debug:
                debug = exit
                break
            if type(exit) is Interrupted:
                if exits:
                    break   # the instruction completed; this KVM dropped its #DB
                if runner.pause_requested or runner.timed_out or runner.halt_check_pending:
                    # A kick of the machine's (a pause, the timeout, a halt
                    # check): it decides; a pause or the timeout ends the step.
                    event = self.dispatch(exit, before[_RIP])
                    if self._slept_after(before):
                        stop = event.stop
                        break   # it ran, then slept in KVM without its #DB
                    if event.stop is not None:
                        return self._not_run(before, pc, event)
                exit = runner.run()   # a kick before the instruction ran: go again
                continue
            event = self.dispatch(exit, before[_RIP])
            exits.append(event)
            if event.stop is not None and stop is None:
                stop = event.stop
            if not isinstance(exit, _COMPLETED_LATER):
                break   # hlt, shutdown, ...: the instruction is over
            # With immediate_exit KVM only completes the instruction and comes
            # back: a #DB for the step, or EINTR where that #DB is not reported.
            exit = runner.finish()
        view = self.view
        after = values_of(runner.vcpu.get_regs())
        view.stepped_values(after, debug.pc if debug is not None else None)
        new_pc = view.pc
        self.steps += 1
        record = StepRecord(before, after, pc, new_pc, tuple(exits), stop, debug, view)
        if debug is not None and new_pc - pc == 1 and self.check_hlt and not exits:
            self._stepped_hlt(record)
        return record

    def _stepped_hlt(self, record: StepRecord) -> None:
        """A one-byte step that did not come back as a HLT exit: if the byte
        was ``hlt``, give the machine the exit it stands for.

        The byte is read through a fresh page walk here, whatever the TLB
        said (see the module docstring), and a ``hlt`` changes no
        general-purpose register: a one-byte ``stosb``, ``movsb`` or
        ``push`` that wrote 0xF4 over itself moved RDI or RSP, and is not
        taken for one. With the irqchip and RFLAGS.IF set the vCPU would
        wait for an interrupt, and the stepping goes on; with IF clear
        nothing can wake it, and the next step would wait for ever."""
        if record.values_before[:_RIP] != record.values_after[:_RIP]:   # the 16 GPRs
            return
        try:
            phys = self.view.physical(record.pc)
            if phys is None or self.machine.memory.read_u8(phys) != HLT_OPCODE:
                return
        except GuestMemoryError:
            return
        if_flag = bool(record.values_after[_RFLAGS] & _RFLAGS_IF)
        if if_flag and self.machine.irqchip:
            if self.wake_hlts:
                self.sleep(True)
            return
        if not self._listeners:
            # A plain step nobody listens to left the run's return time
            # unread (run_reason(timed)); the event made here needs it.
            self.runner.stamp()
        event = self.dispatch(Hlt(if_flag), record.values_before[_RIP])
        record.exits = record.exits + (event,)
        if record.stop is None:
            record.stop = event.stop

    # -- sleeping in hlt and waking up -------------------------------------------------

    def _letting_interrupts_in(self, state: tuple[int, tuple[int, ...]]
                               ) -> tuple[int, tuple[int, ...]]:
        """``state`` without ``KVM_GUESTDBG_BLOCKIRQ`` (one tuple object per
        stepping state, so the runner sees with ``is`` that KVM has it)."""
        if state is not self._blocking:
            self._blocking = state
            self._open = (state[0] & ~_BLOCKIRQ, state[1])
        return self._open

    def _watched(self, step: Callable[[], StepRecord]) -> StepRecord:
        """``step`` outside any run, under a watchdog of its own: its halt
        checks kick a vCPU that kvm-pvm put back to sleep after an ``iret``
        (:meth:`_slept_after`), and it ends a wait after
        :data:`LONE_WAIT_TIMEOUT` seconds with a PAUSED stop (a TIMEOUT
        would say the guest's run is over)."""
        with Watchdog([self.runner], LONE_WAIT_TIMEOUT):
            record = step()
        stop = record.stop
        if stop is not None and stop.kind is StopKind.TIMEOUT:
            # Not the guest's end: the step paused, and the vCPU still sleeps.
            record.stop = stop.but(kind=StopKind.PAUSED, status=None,
                                   message=f"paused: no interrupt came in {LONE_WAIT_TIMEOUT:g} s; "
                                   "the vCPU still sleeps in hlt")
        return record

    def sleep(self, asleep: bool) -> None:
        """Make the vCPU sleep in ``hlt`` (or not) as KVM sees it:
        ``KVM_SET_MP_STATE`` HALTED or RUNNABLE, only on a change. The
        recorder calls it when undo or redo moves to a state before or
        after a ``hlt``'s wait."""
        if asleep != self.asleep:
            state = KvmMpState.KVM_MP_STATE_HALTED if asleep else KvmMpState.KVM_MP_STATE_RUNNABLE
            self._vcpu.set_mp_state(int(state))
            self.asleep = asleep

    def _wake(self, before: tuple[int, ...], pc: int) -> StepRecord:
        """The step of a vCPU asleep in ``hlt``: wait in ``KVM_RUN``, with
        interrupts let in, until KVM injects one (the step then ends after
        the handler's first instruction) or the machine stops the wait.

        Host input already queued goes into its device first (its interrupt
        is what the guest waits for). Each kick is handled as in a free run
        (:meth:`Machine.handle_exit`: host input, pause, timeout); outside a
        run a watchdog of its own ends the wait after
        :data:`LONE_WAIT_TIMEOUT` seconds."""
        runner, machine = self.runner, self.machine
        self.fed_input = False
        if machine.serial_input.waiting:
            with machine.lock:
                machine.deliver_host_input()
            self.fed_input = True
        if runner.group is None:
            return self._watched(lambda: self._wait(before, pc))
        return self._wait(before, pc)

    def _wait(self, before: tuple[int, ...], pc: int) -> StepRecord:
        runner = self.runner
        runner.set_guest_debug(self._letting_interrupts_in(self.arming.stepping_state))
        while True:
            reason = runner.run_reason()
            if reason != _KVM_EXIT_INTR:
                break
            event = self.dispatch(Interrupted(), None)
            if event.stop is not None:
                return self._not_run(before, pc, event)
        self.asleep = False   # KVM woke the vCPU (or it exited on the way)
        return self._step_slow(before, pc, runner.decode(reason))

    def _slept_after(self, before: tuple[int, ...]) -> bool:
        """After a kick: did the instruction run (the registers moved) with
        no ``#DB`` reported? Then the step is over. kvm-pvm does that to an
        ``iret`` returning to the instruction after a ``hlt`` whose wait an
        interrupt ended: the vCPU is HALTED again, asleep inside ``KVM_RUN``
        with nothing left to wake it. It is made runnable, as it would be on
        hardware, which does not go back to sleep after such an ``iret``."""
        vcpu = self._vcpu
        if values_of(vcpu.get_regs()) == before:
            return False
        if vcpu.get_mp_state() == KvmMpState.KVM_MP_STATE_HALTED:
            vcpu.set_mp_state(int(KvmMpState.KVM_MP_STATE_RUNNABLE))
        return True

    def _not_run(self, before: tuple[int, ...], pc: int, event: ExitEvent) -> StepRecord:
        """The record of a step a pause or the timeout ended before any
        instruction ran: the registers as they were, the machine's stop."""
        self.ran = False
        return StepRecord(before, before, pc, pc, (event,), event.stop, view=self.view)

    def dispatch(self, exit: VmExit, rip: int | None) -> ExitEvent:
        """Hand an exit met on the way to the machine: the bus, the stop
        rules, the listeners -- what :meth:`Machine.step` does after its run."""
        return self.machine.handle_exit(exit, self.runner, explain=True, rip=rip)

    def complete(self, exit: VmExit) -> None:
        """Before stopping at an I/O or MMIO exit: let KVM finish the
        instruction (store an ``in`` value, advance RIP) without running on,
        so the registers a person looks at are consistent (``KVM_RUN`` with
        ``immediate_exit`` set, Documentation/virt/kvm/api.rst)."""
        if not isinstance(exit, _COMPLETED_LATER):
            return
        done = self.runner.finish()
        if not isinstance(done, (Interrupted, Debug)):
            self.dispatch(done, None)
