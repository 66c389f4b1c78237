"""The debugger: step a guest one instruction or one exit at a time, stop it
at breakpoints and watchpoints, look at and change its registers and memory.

KVM gives a VMM the tools a hardware debugger (a JTAG probe) would give:
``KVM_SET_GUEST_DEBUG`` (single-stepping, debug registers, ``int3``
interception) and ``KVM_GET/SET_REGS``, ``_SREGS``, ``_FPU``, ``_DEBUGREGS``
and guest RAM, which the VMM maps and can read at any time. Not every KVM
really delivers every one of those (kvm-pvm, a software nested scheme,
ignores ``int3`` interception and data breakpoints): :mod:`~minikvm.debug.probe`
finds out by trying, and each breakpoint and watchpoint is served by the
direct mechanism where it works and an honest fallback where it does not --
and says which.

:class:`Debugger` is a facade over four objects, one concept each:

* :class:`~minikvm.debug.guestview.GuestView` -- the registers read once per
  stop, memory by linear or physical address, symbols, disassembly;
* :class:`~minikvm.debug.arming.Arming` -- the breakpoints and watchpoints,
  their mechanisms, the ``KVM_SET_GUEST_DEBUG`` state and the ``int3`` bytes;
* :class:`~minikvm.debug.stepper.Stepper` -- exactly one guest instruction;
* :class:`~minikvm.debug.watch.WatchChecks` -- did a step touch a watched variable?

What is left here is the run to the next stop (:meth:`Debugger.cont`):
single-stepping when some breakpoint or watchpoint needs it, else running
freely with debug registers and ``int3`` armed (:mod:`~minikvm.debug.freerun`,
the loop that runs once per exit), every ``KVM_RUN`` through the vCPU's
runner (pause and timeout are the runner's and the core Watchdog's).
Every stop is the core :class:`~minikvm.core.stop.Stop`: ``BREAKPOINT``,
``WATCHPOINT`` (with ``old_value``/``new_value``), ``EXIT_MATCHED``,
``STEP_LIMIT``, ``DEBUG_EXCEPTION``, ``PAUSED``, ``TIMEOUT``, or the
machine's own stop when the guest ended; ``steps`` counts the instructions
single-stepped on the way, ``event`` is the exit that caused it, if any.
"""

from __future__ import annotations

from collections.abc import Callable

from minikvm.core.events import ExitEvent
from minikvm.core.runner import Watchdog
from minikvm.core.stop import Stop, StopKind
from minikvm.debug.arming import Arming
from minikvm.debug.backwards import reverse_cont, step_back
from minikvm.debug.breakpoints import Breakpoint, BreakpointKind, WatchKind, Watchpoint
from minikvm.debug.disasm import Instruction
from minikvm.debug.errors import DebuggerError
from minikvm.debug.freerun import run_free
from minikvm.debug.events import ExitFilter, StepRecord
from minikvm.debug.guestview import GuestView
from minikvm.debug.history import DEFAULT_MAX_BYTES, DEFAULT_MAX_ENTRIES, History
from minikvm.debug.inspect import GPR_NAMES, FpuState, RegisterSnapshot, changed_in_values, fpu_state
from minikvm.debug.probe import DebugSupport, probe_debug_support
from minikvm.debug.recorder import Recorder
from minikvm.debug.stepper import Stepper
from minikvm.debug.stops import Stops
from minikvm.debug.watch import Predicted, WatchChecks
from minikvm.kvm.uapi import kvm_debugregs, kvm_sregs
from minikvm.machine import Machine
from minikvm.x86.paging import Translation

__all__ = ["Debugger", "DebuggerError", "ExitFilter", "StepRecord"]

_REG_NAMES = frozenset(GPR_NAMES + ("rip", "rflags"))
_Matcher = Callable[[ExitEvent], bool]


class Debugger:
    """Drives one vCPU (default: vCPU 0) of a :class:`~minikvm.machine.Machine`
    under guest debugging.

    ``support`` says what this KVM can do (default: probed once per process,
    :func:`~minikvm.debug.probe.probe_debug_support`); tests pass
    ``support.without("hw_breakpoints")`` and the like to force a fallback. ``arming``: another
    vCPU's debugger's, so that its breakpoints and watchpoints (in guest memory) stop this one too.
    """

    def __init__(self, machine: Machine, support: DebugSupport | None = None,
                 vcpu: int = 0, arming: Arming | None = None) -> None:
        self.machine = machine
        self.view = GuestView(machine, vcpu)
        self.runner = self.view.runner
        self.vcpu = self.runner.vcpu
        self.memory = machine.memory
        if support is None:
            support = probe_debug_support(machine.kvm.path, kvm=machine.kvm)
        self.support = support
        self.arming = arming if arming is not None else Arming(support, machine.memory)
        self.watches = WatchChecks(self.view, self.arming)
        self.stepper = Stepper(machine, self.view, self.arming, support)
        self.stops = Stops(self.view, self.runner)
        self.recorder = Recorder(machine, self.view, self.stepper)
        #: What the last :meth:`cont` returned.
        self.last_stop: Stop | None = None
        #: The registers before the last step or ``cont`` (:meth:`changed_registers`):
        #: the 18 values of ``kvm_regs``, or the last step's record, which
        #: holds them (one property call a step less).
        self._previous: tuple[int, ...] | StepRecord | None = None

    @property
    def breakpoints(self) -> dict[int, Breakpoint]:
        return self.arming.breakpoints

    @property
    def watchpoints(self) -> dict[int, Watchpoint]:
        return self.arming.watchpoints

    @property
    def steps(self) -> int:
        """Instructions single-stepped by this debugger so far."""
        return self.stepper.steps

    # -- registers ----------------------------------------------------------------------

    @property
    def rip(self) -> int:
        return self.view.rip

    @property
    def pc(self) -> int:
        """The linear address of the next instruction."""
        return self.view.pc

    def registers(self, with_sregs: bool = True) -> RegisterSnapshot:
        """All general registers, RIP, RFLAGS and (by default) segment
        selectors, CR0-CR4 and EFER, as an immutable snapshot."""
        return self.view.registers(with_sregs)

    def changed_registers(self) -> tuple[str, ...]:
        """Registers changed by the last step or ``cont``."""
        previous = self._previous
        if previous is None:
            return ()
        if type(previous) is StepRecord:
            previous = previous.values_before
        return changed_in_values(previous, self.view.values())

    def set_registers(self, **values: int) -> None:
        """Change general registers, RIP or RFLAGS: ``set_registers(rax=1, rip=0x1000)``."""
        regs = self.vcpu.get_regs()
        for name, value in values.items():
            if name not in _REG_NAMES:
                raise DebuggerError(f"{name!r} is not a general register, rip or rflags")
            if not 0 <= value < 1 << 64:
                raise DebuggerError(f"{name}={value:#x} does not fit in 64 bits")
            setattr(regs, name, value)
        self.vcpu.set_regs(regs)
        self.view.invalidate()
        self.recorder.edited()

    def sregs(self) -> kvm_sregs:
        """``KVM_GET_SREGS``: segments, descriptor tables, CR0-CR4, EFER (a
        copy: change it and hand it to :meth:`set_sregs`)."""
        return kvm_sregs.from_buffer_copy(self.view.sregs())

    def set_sregs(self, sregs: kvm_sregs) -> None:
        self.vcpu.set_sregs(sregs)
        self.view.invalidate()
        self.recorder.edited()

    def fpu(self) -> FpuState:
        """x87 and SSE registers, decoded."""
        return fpu_state(self.vcpu.get_fpu())

    def debug_registers(self) -> kvm_debugregs:
        """The guest's own DR0-DR3, DR6, DR7 (``KVM_GET_DEBUGREGS``); while
        the debugger uses DRs they are loaded only when the guest runs."""
        return self.vcpu.get_debugregs()

    def bitness(self) -> int:
        """16, 32 or 64: how the CPU decodes the code at RIP now."""
        return self.view.bitness()

    # -- memory, symbols, disassembly ---------------------------------------------------

    def translate(self, address: int) -> Translation:
        """Walk the guest's page tables for linear ``address`` the way the vCPU
        would (with its CPUID paging features), every level reported."""
        return self.view.translate(address)

    def translate_kvm(self, address: int) -> int | None:
        """Ask KVM to do the walk (``KVM_TRANSLATE``); None when not mapped."""
        result = self.vcpu.translate(address)
        return result.physical_address if result.valid else None

    def read_memory(self, address: int, size: int, physical: bool = False) -> bytes:
        """``size`` bytes at a linear address (through the page tables) or at
        a guest-physical one. Raises DebuggerError outside RAM or the mapping."""
        return self.view.read(address, size, physical)

    def write_memory(self, address: int, data: bytes, physical: bool = False) -> None:
        """Write guest memory at a linear or guest-physical address."""
        self.view.write(address, data, physical)
        self.recorder.edited()

    def symbol_at(self, address: int) -> str:
        """``name+0xoff`` from the loaded image's symbol table, or ``""``."""
        return self.view.symbol_at(address)

    def address_of(self, symbol: str) -> int:
        """The address of a symbol of the loaded ELF image."""
        return self.view.address_of(symbol)

    def disassemble(self, address: int | None = None, count: int = 8,
                    before: int = 0) -> list[Instruction]:
        """``count`` instructions from ``address`` (default: RIP) in the current
        CPU mode, with symbols; ``before`` adds that many ahead of it
        (see :meth:`GuestView.disassemble`)."""
        return self.view.disassemble(address, count, before)

    # -- breakpoints and watchpoints --------------------------------------------------

    def _resolve(self, address: int | str) -> int:
        if isinstance(address, str):
            return self.view.address_of(address)
        if not 0 <= address < 1 << 64:
            raise DebuggerError(f"{address:#x} is not a 64-bit address")
        return address

    def break_at(self, address: int | str, kind: str | BreakpointKind = "software") -> Breakpoint:
        """Stop before the instruction at linear ``address`` (or a symbol) runs.

        The breakpoint's ``mechanism`` says how it is caught here; ``note``
        why, when that is not what was asked for (:mod:`~minikvm.debug.arming`).
        """
        bp = self.arming.add_breakpoint(self._resolve(address), BreakpointKind(kind))
        self.watches.forget()
        return bp

    def watch(self, address: int | str, size: int = 4,
              kind: str | WatchKind = "write") -> Watchpoint:
        """Stop after an access to ``size`` (1, 2, 4 or 8) bytes at linear
        ``address`` (or a symbol); ``mechanism`` says how it is caught here."""
        wp = self.arming.add_watchpoint(self._resolve(address), size, WatchKind(kind))
        wp.last_value = self.watches.current_value(wp)
        self.watches.forget()
        return wp

    def delete(self, number: int) -> None:
        """Remove breakpoint or watchpoint ``number``."""
        self.arming.delete(number)
        self.watches.forget()

    def enable(self, number: int, enabled: bool = True) -> None:
        self.arming.enable(number, enabled)
        self.watches.forget()

    # -- stepping -----------------------------------------------------------------------

    def step_instruction(self) -> StepRecord:
        """Execute one guest instruction and return what it did.

        Interrupts stay blocked during the step where KVM offers
        ``KVM_GUESTDBG_BLOCKIRQ`` -- except, with the irqchip, a ``hlt`` with
        IF set and the step that wakes from it (debug/stepper.py: the vCPU
        waits for its interrupt as it would). Breakpoints do not stop a step;
        watchpoints do: ``record.hit`` is then their ``WATCHPOINT`` stop.
        """
        if self.arming.watchpoints:
            predicted = self.watches.predict()
            record = self.recorder.step()
            record.hit = self.watches.check(record, predicted)
        elif self.recorder.history is None:
            record = self.stepper.step()   # what recorder.step() does when not recording
        else:
            record = self.recorder.step()
        self._previous = record
        return record

    def step(self, count: int = 1) -> list[StepRecord]:
        """Up to ``count`` instructions; stops early when the guest stops or
        a watchpoint is hit (the last record says which)."""
        records = []
        self.view.tlb.flush()   # a new batch: no translation from before it
        for _ in range(count):
            record = self.step_instruction()
            records.append(record)
            if record.stop is not None or record.hit is not None:
                break
        return records

    def step_exit(self, timeout: float | None = None) -> Stop:
        """Run to the next VM exit (breakpoints still stop first)."""
        return self.cont(until=lambda event: True, timeout=timeout)

    # -- recording and going backwards (debug/recorder.py, debug/backwards.py) ---------

    def record(self, enabled: bool = True, limit: int = DEFAULT_MAX_ENTRIES,
               max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        """Record every instruction from here (at most ``limit`` of them and
        ~``max_bytes``, oldest dropped first; :meth:`cont` then single-steps),
        or stop and forget the history (``enabled=False``)."""
        if enabled:
            self.recorder.start(limit, max_bytes)
        else:
            self.recorder.stop()

    @property
    def recording(self) -> bool:
        return self.recorder.active

    @property
    def history(self) -> History | None:
        """The recorded history (``len``, ``position``, ``at_end``), or None."""
        return self.recorder.history

    def step_back(self, count: int = 1) -> Stop:
        """Undo ``count`` recorded instructions (``STEP_LIMIT``), or as many
        as there are (``HISTORY_START``). Stepping forward then redoes them."""
        self._previous = self.view.values()
        self.last_stop = step_back(self.recorder, self.stops, count)
        return self.last_stop

    def reverse_cont(self, timeout: float | None = None) -> Stop:
        """Go back to the previous breakpoint, or to before the last write
        to a watched value, or to the start of the history."""
        self._previous = self.view.values()
        self.last_stop = reverse_cont(self.recorder, self.stops, self.arming, self.watches,
                                      timeout)
        return self.last_stop

    # -- running ------------------------------------------------------------------------

    def pause(self) -> None:
        """From any thread: make a running :meth:`cont` return PAUSED soon."""
        self.runner.pause()

    def cont(self, until: ExitFilter | _Matcher | None = None, timeout: float | None = None,
             max_steps: int | None = None) -> Stop:
        """Run until a breakpoint, a watchpoint, an exit ``until`` matches, the
        guest stops, :meth:`pause`, ``timeout`` seconds or ``max_steps``
        single-stepped instructions (only counted while stepping).

        When every active breakpoint and watchpoint has a debug register or
        an ``int3``, the guest runs at full speed between exits; otherwise it
        is single-stepped and each instruction checked (slow, and said so
        in each breakpoint's ``mechanism``).
        """
        self._previous = self.view.values()
        self.view.tlb.flush()   # a new run: no translation from before it
        self.runner.pause_requested = False
        try:
            with Watchdog([self.runner], timeout):
                stop = self._cont(until, max_steps)
        finally:
            self.arming.remove_int3s()
        self.last_stop = stop
        return stop

    def _cont(self, until: _Matcher | None, max_steps: int | None) -> Stop:
        steps = 0
        self.watches.baseline()
        # Leave a breakpoint we are stopped at: one step with it out of the way
        # (an int3 is not inserted yet, an execute DR is off while stepping).
        if self.arming.breakpoint_at(self.view.pc) is not None:
            steps += 1
            stop = self._step_and_check(until, steps)
            if stop is not None:
                return stop
        if self.arming.needs_stepping() or self.recorder.active:   # recording steps all
            while True:
                stop = self.stops.control(steps)
                if stop is not None:
                    return stop
                if max_steps is not None and steps >= max_steps:
                    rip = self.view.rip
                    return self.stops.stop(StopKind.STEP_LIMIT,
                                           f"stopped after {steps} single-stepped instructions at "
                                           f"RIP {rip:#x}{self.view.describe(rip)}", steps)
                steps += 1
                stop = self._step_and_check(until, steps)
                if stop is not None:
                    return stop
        return run_free(self, until, steps)

    def _step_and_check(self, until: _Matcher | None, steps: int) -> Stop | None:
        """Step one instruction; the stop it ran into, if any."""
        predicted = self.watches.predict()
        record = self.recorder.step()
        stop = self._after_step(record, until, predicted, steps)
        if stop is None and self.recorder.reached_end:   # gdb stops there too
            stop = self.stops.stop(StopKind.HISTORY_END, "at the end of the recorded history: "
                                   "from here the guest runs live", steps)
        return stop

    def _after_step(self, record: StepRecord, until: _Matcher | None, predicted: Predicted,
                    steps: int) -> Stop | None:
        """What, if anything, a stepped instruction ran into."""
        if until is not None:
            for event in record.exits:
                if until(event):
                    return self.stops.exit_matched(event, steps)
        if record.stop is not None:
            return self.stops.guest_stopped(record.stop,
                                            record.exits[-1] if record.exits else None, steps)
        hit = self.watches.check(record, predicted, steps)
        if hit is not None:
            return hit
        bp = self.arming.breakpoint_at(record.new_pc)
        if bp is not None:
            return self.stops.breakpoint(bp, steps)
        return None

    # -- lifetime -----------------------------------------------------------------------

    def close(self) -> None:
        """Take every int3 out, stop recording, turn guest debugging off."""
        self.arming.remove_int3s()
        for finish in (self.recorder.stop, self.runner.set_guest_debug):
            try:
                finish()
            except Exception:  # noqa: BLE001 - closing must not fail
                pass

    def __enter__(self) -> Debugger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
