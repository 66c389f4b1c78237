"""The one-instruction stepper: run exactly one guest instruction.

With ``KVM_GUESTDBG_SINGLESTEP`` KVM sets RFLAGS.TF behind the guest's back;
the CPU raises ``#DB`` after the next instruction, with DR6.BS set (SDM vol.
3B, 17.3.1.4), and KVM hands it to us as a debug exit whose ``pc`` is the
linear address of the instruction after (Documentation/virt/kvm/api.rst,
"KVM_SET_GUEST_DEBUG" and ``kvm_run.debug``). One ``KVM_RUN`` and the
registers per instruction: that is the hot loop of every stepping run, and
:meth:`Stepper.step` does little else unless the step met an exit. It reads
the debug exit's ``pc`` and DR6 straight from the run page
(:meth:`VcpuRunner.run_reason`, no exit object), and the registers are the
copy ``KVM_CAP_SYNC_REGS`` left there (``Vcpu.get_regs``, no ioctl); only an
exit met on the way is decoded into a typed exit and handed to the machine.

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
view's TLB (:meth:`GuestView.cached_byte`: a dictionary look-up, CR3 and the
paging mode read from the run page), and walks the page tables afresh only
when the cached frame does hold 0xF4, so a stale entry never invents a
``hlt``.
"""

from __future__ import annotations

import struct

from minikvm.core.events import ExitEvent
from minikvm.core.stop import Stop
from minikvm.debug.arming import Arming
from minikvm.debug.breakpoints import DR6_BS
from minikvm.debug.events import StepRecord
from minikvm.debug.guestview import GuestView
from minikvm.debug.probe import DebugSupport
from minikvm.kvm.exits import Debug, Hlt, Interrupted, IoIn, IoOut, MmioRead, MmioWrite, VmExit
from minikvm.kvm.uapi import KvmExit, kvm_debug_exit_arch, kvm_regs, kvm_run, kvm_run_debug
from minikvm.machine import Machine
from minikvm.memory import GuestMemoryError

__all__ = ["Stepper"]

#: The one-byte ``hlt`` instruction (SDM vol. 2, "HLT").
HLT_OPCODE = 0xF4
_RFLAGS_IF = 1 << 9
#: KVM_RUN calls one instruction may need: the exit itself, the completion
#: run, and retries after a stray kick. More means something is wrong.
_MAX_RUNS_PER_STEP = 8
#: In DR6 after a plain single step: BS set, none of B0-B3.
_DR6_BS_OR_B = DR6_BS | 0xF
#: Exits of an instruction that KVM completes at the next KVM_RUN.
_COMPLETED_LATER = (IoIn, IoOut, MmioRead, MmioWrite)
_KVM_EXIT_DEBUG = int(KvmExit.KVM_EXIT_DEBUG)
#: ``kvm_run.debug.arch.pc`` and ``.dr6``, read in one go from the run page.
_DEBUG_PC_DR6 = struct.Struct(
    f"<Q{kvm_debug_exit_arch.dr6.offset - kvm_debug_exit_arch.pc.offset - 8}xQ")
_DEBUG_PC_DR6_OFFSET = (kvm_run.debug.offset + kvm_run_debug.arch.offset
                        + kvm_debug_exit_arch.pc.offset)


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
        self._vcpu = self.runner.vcpu
        self._page = self._vcpu.page

    def step(self) -> StepRecord:
        """Execute exactly one guest instruction and say what it did."""
        view = self.view
        before, pc = view.regs_and_pc()
        state = self.arming.stepping_state
        runner = self.runner
        if state is not runner.guest_debug:
            runner.set_guest_debug(state)
        reason = runner.run_reason()
        if reason == _KVM_EXIT_DEBUG:
            new_pc, dr6 = _DEBUG_PC_DR6.unpack_from(self._page, _DEBUG_PC_DR6_OFFSET)
            if dr6 & _DR6_BS_OR_B == DR6_BS:
                after = self._vcpu.get_regs()
                view.stepped(after, new_pc)
                self.steps += 1
                record = StepRecord(before, after, pc, new_pc)
                if (new_pc - pc == 1 and self.check_hlt
                        and view.cached_byte(pc) == HLT_OPCODE):
                    self._stepped_hlt(record)
                return record
        return self._step_slow(before, pc, runner.decode(reason))

    def _step_slow(self, before: kvm_regs, pc: int, exit: VmExit) -> StepRecord:
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
                exit = runner.run()   # a kick before the instruction ran: go again
                continue
            event = self.dispatch(exit, before.rip)
            exits.append(event)
            if event.stop is not None and stop is None:
                stop = event.stop
            if not isinstance(exit, _COMPLETED_LATER):
                break   # hlt, shutdown, ...: the instruction is over
            # With immediate_exit KVM only completes the instruction and comes
            # back: a #DB for the step, or EINTR where that #DB is not reported.
            exit = runner.finish()
        after = runner.vcpu.get_regs()
        self.view.stepped(after, debug.pc if debug is not None else None)
        new_pc = self.view.pc
        self.steps += 1
        record = StepRecord(before, after, pc, new_pc, tuple(exits), stop, debug)
        if debug is not None and new_pc - pc == 1 and self.check_hlt and not exits:
            self._stepped_hlt(record)
        return record

    def _stepped_hlt(self, record: StepRecord) -> None:
        """A one-byte step that did not come back as a HLT exit: if the byte
        was ``hlt``, give the machine the exit it stands for.

        The byte is read through a fresh page walk here, whatever the TLB
        said (see the module docstring). With the irqchip and RFLAGS.IF set
        the vCPU would wait for an interrupt, and the stepping goes on; with
        IF clear nothing can wake it, and the next step would wait for ever."""
        try:
            phys = self.view.physical(record.pc)
            if phys is None or self.machine.memory.read_u8(phys) != HLT_OPCODE:
                return
        except GuestMemoryError:
            return
        if_flag = bool(record.after.rflags & _RFLAGS_IF)
        if if_flag and self.machine.irqchip:
            return
        event = self.dispatch(Hlt(if_flag), record.before.rip)
        record.exits = record.exits + (event,)
        if record.stop is None:
            record.stop = event.stop

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
