"""The debugger: step a guest one instruction or one exit at a time, stop it
at breakpoints and watchpoints, look at and change its registers and memory.

KVM gives a VMM the tools a hardware debugger (a JTAG probe) would give:

* ``KVM_SET_GUEST_DEBUG`` with ``KVM_GUESTDBG_SINGLESTEP`` makes ``KVM_RUN``
  return after every guest instruction (KVM sets RFLAGS.TF behind the guest's
  back and catches the ``#DB``); ``KVM_GUESTDBG_BLOCKIRQ`` keeps interrupts
  from being taken meanwhile, so a step does not wander into a handler;
* ``KVM_GUESTDBG_USE_HW_BP`` loads our DR0-DR7 while the guest runs, and
  ``KVM_GUESTDBG_USE_SW_BP`` makes an ``int3`` exit to us instead of reaching
  the guest's IDT (see :mod:`minikvm.debug.breakpoints`);
* ``KVM_GET/SET_REGS``, ``_SREGS``, ``_FPU``, ``_DEBUGREGS`` and guest RAM,
  which the VMM maps and can read at any time.

Not every KVM really delivers every one of those (kvm-pvm, a software nested
scheme, ignores ``int3`` interception and data breakpoints).
:mod:`minikvm.debug.probe` finds out by trying, and the debugger picks, per
breakpoint and watchpoint, the direct mechanism where it works and an honest
fallback where it does not -- and says which it uses:

==========================  ====================================================
asked for                   served by, in order of preference
==========================  ====================================================
software breakpoint         ``int3`` patched into guest memory; a free debug
                            register; single-stepping and comparing RIP
hardware breakpoint         a debug register; single-stepping and comparing RIP
write watchpoint            a debug register (aligned 1/2/4/8 bytes);
                            single-stepping and comparing the watched bytes
read/write watchpoint       a debug register; single-stepping, predicting each
                            instruction's memory operands with capstone
==========================  ====================================================

Addresses of breakpoints and watchpoints are *linear* addresses, what the
debug registers compare against (SDM vol. 3B, 18.2.4): in 64-bit code that is
the virtual address; in real mode it is ``segment * 16 + offset``.

Exits that happen in the middle of a stepped instruction (an ``out`` exits to
the VMM before the ``#DB`` of the step) go through the machine like any
other, so devices see them and listeners (the trace) record them. The
single-step ``#DB`` exits themselves are the debugger's own and are not
dispatched.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

from minikvm.debug.breakpoints import (
    DR6_BS,
    DR7_FIXED,
    DR7_GE,
    DR_RW_EXECUTE,
    DR_RW_READ_WRITE,
    DR_RW_WRITE,
    INT3,
    Breakpoint,
    BreakpointKind,
    HardwareSlots,
    WatchKind,
    Watchpoint,
    dr6_slots,
    dr7_slot_bits,
    hw_watch_fits,
)
from minikvm.debug.disasm import (
    MAX_INSTRUCTION_LENGTH,
    Instruction,
    MemoryAccess,
    disassemble,
    memory_accesses,
)
from minikvm.debug.inspect import (
    GPR_NAMES,
    FpuState,
    RegisterSnapshot,
    changed_registers,
    fpu_state,
)
from minikvm.debug.events import ExitFilter, StepRecord, StopEvent, StopReason
from minikvm.debug.probe import DebugSupport, probe_debug_support
from minikvm.kvm.exits import Debug, Hlt, Interrupted, IoIn, IoOut, MmioRead, MmioWrite, VmExit
from minikvm.kvm.uapi import (
    KVM_GUESTDBG_BLOCKIRQ,
    KVM_GUESTDBG_ENABLE,
    KVM_GUESTDBG_SINGLESTEP,
    KVM_GUESTDBG_USE_HW_BP,
    KVM_GUESTDBG_USE_SW_BP,
    kvm_regs,
)
from minikvm.core.runner import Watchdog
from minikvm.machine import ExitEvent, Stop, StopKind
from minikvm.memory import GuestMemoryError
from minikvm.x86.modes import code_bitness
from minikvm.x86.paging import Translation, translate

__all__ = [
    "Debugger",
    "DebuggerError",
    "ExitFilter",
    "StepRecord",
    "StopEvent",
    "StopReason",
]

_HLT = 0xF4
_RFLAGS_IF = 1 << 9
_PAGE = 4096
#: KVM_RUN calls one instruction may need: the exit itself, the completion
#: run, and retries after a stray kick. More means something is wrong.
_MAX_RUNS_PER_STEP = 8
#: Most bytes one read_memory/write_memory call moves (a debugger shows pages, not RAM).
MAX_ACCESS = 16 << 20
#: Most instructions one disassemble() call lists on either side of its address.
MAX_LISTING = 256

_MECH_STEP = "single-step compare"
_MECH_DECODE = "single-step + operand decode"
_REG_NAMES = frozenset(GPR_NAMES + ("rip", "rflags"))
#: In DR6 after a plain single step: BS set, no B0-B3.
_DR6_BS_OR_B = DR6_BS | 0xF
_monotonic = time.monotonic


class DebuggerError(Exception):
    """A request the debugger cannot do: an unmapped address, a bad register name."""


_Matcher = Callable[[ExitEvent], bool]


class Debugger:
    """Drives one :class:`~minikvm.machine.Machine` under guest debugging.

    ``support`` says what this KVM can do (default: probed once per process,
    :func:`~minikvm.debug.probe.probe_debug_support`); tests pass
    ``support.without("hw_breakpoints")`` and the like to force a fallback.
    """

    def __init__(self, machine: Any, support: DebugSupport | None = None) -> None:
        self.machine = machine
        self.vcpu = machine.vcpu
        self.runner = machine.runner
        self.memory = machine.memory
        if support is None:
            support = probe_debug_support(getattr(machine.kvm, "path", "/dev/kvm"),
                                          kvm=machine.kvm)
        self.support = support
        self.breakpoints: dict[int, Breakpoint] = {}
        self.watchpoints: dict[int, Watchpoint] = {}
        self.slots = HardwareSlots()
        self.last_stop: StopEvent | None = None
        #: Instructions single-stepped by this debugger so far.
        self.steps = 0
        self._numbers = itertools.count(1)
        self._step_state: tuple[int, tuple[int, ...]] | None = None
        self._regs: kvm_regs | None = None
        self._pc = 0
        self._stamp = -1          # machine.exit_count when _regs was read
        self._previous: kvm_regs | None = None
        self._inserted: dict[int, Breakpoint] = {}
        self._watch_phys: dict[int, int | None] = {}
        #: Look at one-byte steps for a hlt that did not exit (see _stepped_hlt).
        self._check_hlt = not support.step_reports_hlt or bool(getattr(machine, "irqchip", False))

    # -- registers ----------------------------------------------------------------------

    def _current(self) -> kvm_regs:
        """The registers now: cached after our own steps, re-read when anyone
        else ran the machine since (its exit counter moved)."""
        if self._regs is None or self._stamp != self.machine.exit_count:
            self._refresh()
        return self._regs  # type: ignore[return-value]

    def _refresh(self, sregs: Any = None) -> kvm_regs:
        regs = self.vcpu.get_regs()
        self._regs = regs
        self._pc = self._linear(regs, sregs)
        self._stamp = self.machine.exit_count
        return regs

    def _linear(self, regs: kvm_regs, sregs: Any = None) -> int:
        """Linear address of RIP: CS.base + RIP (the base is ignored in 64-bit code)."""
        sregs = sregs if sregs is not None else self.vcpu.get_sregs()
        bits = code_bitness(sregs, regs.rflags)
        if bits == 64:
            return regs.rip
        mask = 0xFFFF if bits == 16 else 0xFFFF_FFFF
        return (sregs.cs.base + (regs.rip & mask)) & 0xFFFF_FFFF

    @property
    def rip(self) -> int:
        return self._current().rip

    @property
    def pc(self) -> int:
        """The linear address of the next instruction."""
        self._current()
        return self._pc

    def registers(self, with_sregs: bool = True) -> RegisterSnapshot:
        """All general registers, RIP, RFLAGS and (by default) segment
        selectors, CR0-CR4 and EFER, as an immutable snapshot."""
        sregs = self.vcpu.get_sregs() if with_sregs else None
        return RegisterSnapshot.capture(self._current(), sregs)

    def changed_registers(self) -> tuple[str, ...]:
        """Registers changed by the last step or ``cont``."""
        if self._previous is None:
            return ()
        return changed_registers(self._previous, self._current())

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
        self._refresh()

    def sregs(self) -> Any:
        """``KVM_GET_SREGS``: segments, descriptor tables, CR0-CR4, EFER."""
        return self.vcpu.get_sregs()

    def set_sregs(self, sregs: Any) -> None:
        self.vcpu.set_sregs(sregs)
        self._refresh()

    def fpu(self) -> FpuState:
        """x87 and SSE registers, decoded."""
        return fpu_state(self.vcpu.get_fpu())

    def debug_registers(self) -> Any:
        """The guest's own DR0-DR3, DR6, DR7 (``KVM_GET_DEBUGREGS``); while
        the debugger uses DRs they are loaded only when the guest runs."""
        return self.vcpu.get_debugregs()

    def bitness(self) -> int:
        """16, 32 or 64: how the CPU decodes the code at RIP now."""
        return code_bitness(self.vcpu.get_sregs(), self._current().rflags)

    # -- memory -------------------------------------------------------------------------

    def translate(self, address: int) -> Translation:
        """Walk the guest's page tables for linear ``address`` the way the CPU
        would (:func:`minikvm.x86.paging.translate`), every level reported."""
        return translate(self.memory, self.vcpu.get_sregs(), address)

    def translate_kvm(self, address: int) -> int | None:
        """Ask KVM to do the walk (``KVM_TRANSLATE``); None when not mapped."""
        result = self.vcpu.translate(address)
        return result.physical_address if result.valid else None

    def _physical(self, address: int, sregs: Any = None) -> int | None:
        sregs = sregs if sregs is not None else self.vcpu.get_sregs()
        result = translate(self.memory, sregs, address)
        return result.physical if result.valid else None

    def _pieces(self, address: int, size: int, physical: bool) -> list[tuple[int, int]]:
        """(guest-physical address, length) for each page of the range."""
        if not 0 <= size <= MAX_ACCESS:
            raise DebuggerError(f"size {size} is outside 0..{MAX_ACCESS}")
        if physical:
            return [(address, size)]
        sregs = self.vcpu.get_sregs()
        pieces = []
        done = 0
        while done < size:
            linear = address + done
            chunk = min(size - done, _PAGE - (linear % _PAGE))
            phys = self._physical(linear, sregs)
            if phys is None:
                raise DebuggerError(f"linear address {linear:#x} is not mapped")
            pieces.append((phys, chunk))
            done += chunk
        return pieces

    def read_memory(self, address: int, size: int, physical: bool = False) -> bytes:
        """``size`` bytes at a linear address (through the page tables) or at
        a guest-physical one. Raises DebuggerError outside RAM or the mapping."""
        try:
            return b"".join(self.memory.read(phys, length)
                            for phys, length in self._pieces(address, size, physical))
        except GuestMemoryError as err:
            raise DebuggerError(str(err)) from None

    def write_memory(self, address: int, data: bytes, physical: bool = False) -> None:
        """Write guest memory at a linear or guest-physical address."""
        pieces = self._pieces(address, len(data), physical)
        for phys, length in pieces:
            if not self.memory.contains(phys, length):
                raise DebuggerError(f"{phys:#x}+{length:#x} is outside guest RAM")
        offset = 0
        for phys, length in pieces:
            self.memory.write(phys, data[offset:offset + length])
            offset += length

    def _read_code(self, address: int, size: int) -> bytes:
        """As many of ``size`` bytes at ``address`` as are mapped (code near
        the end of a mapping is still shown)."""
        result = bytearray()
        while len(result) < size:
            linear = address + len(result)
            chunk = min(size - len(result), _PAGE - (linear % _PAGE))
            try:
                result += self.read_memory(linear, chunk)
            except DebuggerError:
                break
        return bytes(result)

    # -- symbols and disassembly ------------------------------------------------------

    def symbol_at(self, address: int) -> str:
        """``name+0xoff`` from the loaded image's symbol table, or ``""``."""
        image = getattr(self.machine, "image", None)
        lookup = getattr(image, "symbol_at", None)
        if lookup is None:
            return ""
        try:
            return lookup(address) or ""
        except Exception:  # noqa: BLE001 - a missing symbol must not break a listing
            return ""

    def address_of(self, symbol: str) -> int:
        """The address of a symbol of the loaded ELF image."""
        image = getattr(self.machine, "image", None)
        table = getattr(image, "symbols", None)
        found = table.lookup(symbol) if table is not None else None
        if found is None:
            raise DebuggerError(f"no symbol {symbol!r} in the loaded image")
        return found.address

    def disassemble(self, address: int | None = None, count: int = 8,
                    before: int = 0) -> list[Instruction]:
        """``count`` instructions from ``address`` (default: RIP), in the
        current CPU mode, with symbols; ``before`` adds that many instructions
        ahead of it.

        x86 cannot be decoded backwards reliably; for ``before`` we try start
        points further and further back and keep the first whose decoding
        falls exactly on ``address`` -- a heuristic, as in every debugger.
        """
        if not 0 < count <= MAX_LISTING or not 0 <= before <= MAX_LISTING:
            raise DebuggerError(f"count and before must be within 1..{MAX_LISTING}")
        start = self.pc if address is None else address
        bits = self.bitness()
        forward = disassemble(self._read_code(start, count * MAX_INSTRUCTION_LENGTH), start,
                              bits, count, self.symbol_at)
        if before == 0:
            return forward
        reach = min(before * MAX_INSTRUCTION_LENGTH, start)
        window = self._read_code(start - reach, reach)
        if len(window) != reach:
            return forward   # the bytes before are not all mapped
        for back in range(reach, 0, -1):
            decoded = disassemble(window[reach - back:], start - back, bits, None, self.symbol_at)
            if decoded and decoded[-1].next_address == start and len(decoded) >= before:
                return decoded[-before:] + forward
        return forward

    # -- guest-debug state ------------------------------------------------------------

    def _state(self, stepping: bool, exec_slots: bool) -> tuple[int, tuple[int, ...]]:
        """The ``KVM_SET_GUEST_DEBUG`` arguments for what is active now."""
        debugreg = [0] * 8
        dr7 = 0
        for slot in range(4):
            owner = self.slots.owner(slot)
            if owner is None or not owner.enabled:
                continue
            if isinstance(owner, Breakpoint):
                if not exec_slots:
                    continue
                dr7 |= dr7_slot_bits(slot, DR_RW_EXECUTE, 1)
            else:
                rw = DR_RW_WRITE if owner.kind is WatchKind.WRITE else DR_RW_READ_WRITE
                dr7 |= dr7_slot_bits(slot, rw, owner.size) | DR7_GE
            debugreg[slot] = owner.address
        control = 0
        if dr7:
            control |= KVM_GUESTDBG_USE_HW_BP
            debugreg[7] = dr7 | DR7_FIXED
        if stepping:
            control |= KVM_GUESTDBG_SINGLESTEP
            if self.support.block_irq:
                control |= KVM_GUESTDBG_BLOCKIRQ
        if self._inserted:
            control |= KVM_GUESTDBG_USE_SW_BP
        if control:
            control |= KVM_GUESTDBG_ENABLE
        return control, tuple(debugreg)

    def _apply(self, state: tuple[int, tuple[int, ...]]) -> None:
        """Re-issue ``KVM_SET_GUEST_DEBUG`` only when the wanted state changed."""
        self.runner.set_guest_debug(state)

    def _changed(self) -> None:
        """Breakpoints or watchpoints changed: recompute states lazily."""
        self._step_state = None
        self._watch_phys.clear()

    def _stepping_state(self) -> tuple[int, tuple[int, ...]]:
        # While stepping, execute breakpoints are checked by comparing RIP:
        # a DR execute breakpoint at the next instruction would otherwise
        # fire before it runs, again and again (kvm-pvm ignores RFLAGS.RF).
        if self._step_state is None:
            self._step_state = self._state(stepping=True, exec_slots=False)
        return self._step_state

    # -- breakpoints and watchpoints --------------------------------------------------

    def _resolve(self, address: int | str) -> int:
        if isinstance(address, str):
            return self.address_of(address)
        if not 0 <= address < 1 << 64:
            raise DebuggerError(f"{address:#x} is not a 64-bit address")
        return address

    def break_at(self, address: int | str, kind: str | BreakpointKind = "software") -> Breakpoint:
        """Stop before the instruction at linear ``address`` (or a symbol) runs.

        The breakpoint's ``mechanism`` says how it is caught here; ``note``
        why, when that is not what was asked for.
        """
        address = self._resolve(address)
        kind = BreakpointKind(kind)
        for existing in self.breakpoints.values():
            if existing.address == address:
                raise DebuggerError(f"breakpoint {existing.number} is already at {address:#x}")
        bp = Breakpoint(next(self._numbers), address, kind)
        support = self.support
        if kind is BreakpointKind.SOFTWARE and support.sw_breakpoints:
            bp.mechanism = "int3"
        else:
            why = ""
            if kind is BreakpointKind.SOFTWARE:
                why = "int3 does not stop here: " + support.reasons.get(
                    "sw_breakpoints", "not supported")
            if support.hw_breakpoints:
                bp.slot = self.slots.allocate(bp)
            if bp.slot is not None:
                bp.mechanism = f"hw DR{bp.slot}"
                bp.note = why + ("; using a debug register" if why else "")
            else:
                bp.mechanism = _MECH_STEP
                if not support.hw_breakpoints:
                    reason = "hardware breakpoints do not stop here: " + support.reasons.get(
                        "hw_breakpoints", "not supported")
                else:
                    reason = "all four debug registers are in use"
                bp.note = "; ".join(filter(None, [why, reason])) + (
                    "; single-stepping and comparing RIP (slow)")
        self.breakpoints[bp.number] = bp
        self._changed()
        return bp

    def watch(self, address: int | str, size: int = 4,
              kind: str | WatchKind = "write") -> Watchpoint:
        """Stop after an access to ``size`` (1, 2, 4 or 8) bytes at linear ``address``.

        Fallbacks when the debug registers cannot do it: a write watchpoint
        single-steps and compares the bytes after every instruction (a write
        of the same value goes unnoticed); a read/write watchpoint predicts
        each instruction's memory operands from its decoding
        (:func:`~minikvm.debug.disasm.memory_accesses` says what that misses).
        """
        address = self._resolve(address)
        kind = WatchKind(kind)
        if size not in (1, 2, 4, 8):
            raise DebuggerError(f"a watchpoint covers 1, 2, 4 or 8 bytes, not {size}")
        wp = Watchpoint(next(self._numbers), address, size, kind)
        support = self.support
        hw_ok = support.hw_write_watch if kind is WatchKind.WRITE else support.hw_rw_watch
        fits = hw_watch_fits(address, size)
        if hw_ok and fits:
            wp.slot = self.slots.allocate(wp)
        if wp.slot is not None:
            wp.mechanism = f"hw DR{wp.slot}"
        else:
            wp.mechanism = _MECH_STEP if kind is WatchKind.WRITE else _MECH_DECODE
            if not hw_ok:
                name = "hw_write_watch" if kind is WatchKind.WRITE else "hw_rw_watch"
                wp.note = "debug-register watchpoints do not fire here: " + support.reasons.get(
                    name, "not supported")
            elif not fits:
                wp.note = f"{size} bytes at {address:#x} is not aligned to its size"
            else:
                wp.note = "all four debug registers are in use"
        try:
            wp.last_value = int.from_bytes(self.read_memory(address, size), "little")
        except DebuggerError:
            wp.last_value = None
        self.watchpoints[wp.number] = wp
        self._changed()
        return wp

    def delete(self, number: int) -> None:
        """Remove breakpoint or watchpoint ``number``."""
        item = self.breakpoints.pop(number, None) or self.watchpoints.pop(number, None)
        if item is None:
            raise DebuggerError(f"no breakpoint or watchpoint {number}")
        self.slots.release(item.slot)
        self._changed()

    def enable(self, number: int, enabled: bool = True) -> None:
        item = self.breakpoints.get(number) or self.watchpoints.get(number)
        if item is None:
            raise DebuggerError(f"no breakpoint or watchpoint {number}")
        item.enabled = enabled
        self._changed()

    def _breakpoint_at(self, pc: int) -> Breakpoint | None:
        for bp in self.breakpoints.values():
            if bp.enabled and bp.address == pc:
                return bp
        return None

    def _needs_stepping(self) -> bool:
        return (any(bp.enabled and bp.mechanism == _MECH_STEP
                    for bp in self.breakpoints.values())
                or any(wp.enabled and wp.slot is None for wp in self.watchpoints.values()))

    # -- int3 ---------------------------------------------------------------------------

    def _insert_int3s(self) -> None:
        """Patch ``int3`` over the first byte of each int3 breakpoint."""
        sregs = self.vcpu.get_sregs()
        for bp in self.breakpoints.values():
            if not bp.enabled or bp.mechanism != "int3":
                continue
            phys = self._physical(bp.address, sregs)
            if phys is None or not self.memory.contains(phys, 1) or phys in self._inserted:
                continue
            bp.physical = phys
            bp.original = self.memory.read_u8(phys)
            self.memory.write_u8(phys, INT3)
            self._inserted[phys] = bp

    def _remove_int3s(self) -> None:
        """Put the original bytes back (where the guest did not overwrite the int3)."""
        for phys, bp in self._inserted.items():
            if bp.original is not None and self.memory.read_u8(phys) == INT3:
                self.memory.write_u8(phys, bp.original)
        self._inserted.clear()

    # -- exits that happen during a step ---------------------------------------------

    def _dispatch(self, exit: VmExit, started: float, rip: int | None) -> ExitEvent:
        """Hand an exit we got from ``KVM_RUN`` to the machine: bus, stop
        rules, listeners -- what :meth:`Machine.step` does after its run."""
        machine = self.machine
        event = machine.handle_exit(exit, self.runner, explain=True, rip=rip)
        self._stamp = machine.exit_count
        return event

    # -- stepping -----------------------------------------------------------------------

    def _step(self, before: kvm_regs | None = None) -> StepRecord:
        """Execute exactly one guest instruction (the core of every step).

        This is the debugger's hot loop: one ``KVM_RUN``, one
        ``KVM_GET_REGS`` and one small record per instruction, nothing else
        unless the step exited to the VMM on the way.
        """
        if before is None:
            before = self._current()
        pc = self._pc
        state = self._step_state or self._stepping_state()
        runner = self.runner
        if state is not runner.guest_debug:
            runner.set_guest_debug(state)
        vcpu = self.vcpu
        started = _monotonic()
        exit = runner.run()
        if type(exit) is Debug and exit.dr6 & _DR6_BS_OR_B == DR6_BS:
            after = vcpu.get_regs()
            self._regs = after
            self._pc = new_pc = exit.pc
            self.steps += 1
            record = StepRecord(before, after, pc, new_pc)
            if new_pc - pc == 1 and self._check_hlt:
                self._stepped_hlt(record, started)
            return record
        return self._step_slow(before, pc, exit, started)

    def _step_slow(self, before: kvm_regs, pc: int, exit: VmExit, started: float) -> StepRecord:
        """A step that exited to the VMM on the way (I/O, MMIO, hlt, a kick)."""
        vcpu = self.vcpu
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
                exit = self.runner.run()   # a stray kick before the instruction ran: go again
                continue
            event = self._dispatch(exit, started, before.rip)
            exits.append(event)
            if event.stop is not None and stop is None:
                stop = event.stop
            if not isinstance(exit, (IoIn, IoOut, MmioRead, MmioWrite)):
                break   # hlt, shutdown, ...: the instruction is over
            # KVM finishes an I/O or MMIO instruction at the next KVM_RUN. With
            # immediate_exit set it does only that and comes back: a #DB for
            # the step, or EINTR where the step's #DB is not reported.
            started = time.monotonic()
            exit = self.runner.finish()
        sregs = vcpu.get_sregs()
        after = vcpu.get_regs()
        self._regs = after
        self._stamp = self.machine.exit_count
        self._pc = new_pc = debug.pc if debug is not None else self._linear(after, sregs)
        self.steps += 1
        record = StepRecord(before, after, pc, new_pc, tuple(exits), stop, debug)
        if debug is not None and new_pc - pc == 1 and self._check_hlt and not exits:
            self._stepped_hlt(record, started)
        return record

    def _stepped_hlt(self, record: StepRecord, started: float) -> None:
        """Recognise a stepped ``hlt`` that did not come back as a HLT exit
        and give the machine the exit it stands for.

        Two cases: kvm-pvm reports a stepped ``hlt`` as a #DB after it and
        the vCPU does not halt; with the in-kernel irqchip, ``hlt`` never
        exits to us at all (the vCPU waits inside KVM), and with RFLAGS.IF
        clear nothing can wake it, so the next step would wait for ever.
        Only one-byte steps are looked at (``hlt`` is one byte)."""
        try:
            phys = self._physical(record.pc)
            if phys is None or self.memory.read_u8(phys) != _HLT:
                return
        except GuestMemoryError:
            return
        if_flag = bool(record.after.rflags & _RFLAGS_IF)
        if if_flag and getattr(self.machine, "irqchip", False):
            return   # it would wait for an interrupt; the stepping goes on
        event = self._dispatch(Hlt(if_flag), started, record.before.rip)
        record.exits = record.exits + (event,)
        if record.stop is None:
            record.stop = event.stop

    def step_instruction(self) -> StepRecord:
        """Execute one guest instruction and return what it did.

        Interrupts stay blocked during the step where KVM offers
        ``KVM_GUESTDBG_BLOCKIRQ``. Breakpoints do not stop a single step;
        watchpoints do: ``record.hit`` is then set.
        """
        before = self._regs
        if before is None or self._stamp != self.machine.exit_count:
            before = self._refresh()
        self._previous = before
        if not self.watchpoints:
            return self._step(before)
        predicted = self._predict_accesses()
        record = self._step()
        record.hit = self._watch_hit(record, predicted)
        return record

    def step(self, count: int = 1) -> list[StepRecord]:
        """Up to ``count`` instructions; stops early when the guest stops or
        a watchpoint is hit (the last record says which)."""
        records = []
        for _ in range(count):
            record = self.step_instruction()
            records.append(record)
            if record.stop is not None or record.hit is not None:
                break
        return records

    def step_exit(self, timeout: float | None = None) -> StopEvent:
        """Run to the next VM exit (breakpoints still stop first)."""
        return self.cont(until=lambda event: True, timeout=timeout)

    # -- watchpoint checks --------------------------------------------------------------

    def _watch_phys_of(self, wp: Watchpoint) -> int | None:
        """The watched bytes' guest-physical address, translated once per run
        (a guest that remaps the page meanwhile is not followed)."""
        if wp.number not in self._watch_phys:
            try:
                phys = self._physical(wp.address)
            except GuestMemoryError:
                phys = None
            if phys is not None and not self.memory.contains(phys, wp.size):
                phys = None
            self._watch_phys[wp.number] = phys
        return self._watch_phys[wp.number]

    def _watched_value(self, wp: Watchpoint) -> int | None:
        phys = self._watch_phys_of(wp)
        if phys is None:
            return None
        return self.memory.read_int(phys, wp.size)

    def _predict_accesses(self) -> list[tuple[Watchpoint, MemoryAccess]]:
        """For read/write watchpoints served by decoding: which of them the
        instruction at RIP is about to touch."""
        watched = [wp for wp in self.watchpoints.values()
                   if wp.enabled and wp.mechanism == _MECH_DECODE]
        if not watched:
            return []
        regs = self._current()
        sregs = self.vcpu.get_sregs()
        code = self._read_code(self._pc, MAX_INSTRUCTION_LENGTH)
        segments = {name: getattr(sregs, name).base for name in ("cs", "ds", "es", "fs", "gs",
                                                                 "ss")}
        accesses = memory_accesses(code, self._pc, code_bitness(sregs, regs.rflags), regs,
                                   segments.__getitem__)
        return [(wp, access) for wp in watched for access in accesses
                if access.overlaps(wp.address, wp.size)]

    def _hit_watchpoint(self, wp: Watchpoint, rip: int, steps: int, how: str) -> StopEvent:
        old = wp.last_value
        new = self._watched_value(wp) if wp.slot is None else None
        if new is None:
            try:
                new = int.from_bytes(self.read_memory(wp.address, wp.size), "little")
            except DebuggerError:
                new = None
        wp.hits += 1
        wp.last_value = new
        values = f"{old:#x} -> {new:#x}" if old is not None and new is not None else "value unknown"
        return StopEvent(StopReason.WATCHPOINT, rip,
                         f"watchpoint {wp.number} ({wp.kind.value}, {wp.size} bytes at "
                         f"{wp.address:#x}) {how}: {values}; by {wp.mechanism}; "
                         f"stopped at RIP {rip:#x}{self._sym(rip)}",
                         watchpoint=wp, old_value=old, new_value=new, steps=steps)

    def _watch_hit(self, record: StepRecord, predicted: list[tuple[Watchpoint, MemoryAccess]],
                   steps: int = 1) -> StopEvent | None:
        rip = record.after.rip
        if record.debug is not None:
            for slot in dr6_slots(record.debug.dr6):
                owner = self.slots.owner(slot)
                if isinstance(owner, Watchpoint) and owner.enabled:
                    return self._hit_watchpoint(owner, rip, steps, "was accessed")
        for wp in self.watchpoints.values():
            if wp.enabled and wp.mechanism == _MECH_STEP:
                value = self._watched_value(wp)
                if value is not None and value != wp.last_value:
                    return self._hit_watchpoint(wp, rip, steps, "was written")
        for wp, access in predicted:
            how = "was written" if access.is_write else "was read"
            return self._hit_watchpoint(wp, rip, steps, how)
        return None

    def _prepare_watchpoints(self) -> None:
        """At the start of a run: translate watched addresses afresh and take
        the current values as the baseline."""
        self._watch_phys.clear()
        for wp in self.watchpoints.values():
            if wp.slot is None:
                wp.last_value = self._watched_value(wp)
            else:
                try:
                    wp.last_value = int.from_bytes(self.read_memory(wp.address, wp.size),
                                                   "little")
                except DebuggerError:
                    wp.last_value = None

    # -- running ------------------------------------------------------------------------

    def pause(self) -> None:
        """From any thread: make a running :meth:`cont` return PAUSED soon."""
        self.runner.pause()

    def _sym(self, address: int) -> str:
        name = self.symbol_at(address)
        return f" <{name}>" if name else ""

    def cont(self, until: ExitFilter | _Matcher | None = None, timeout: float | None = None,
             max_steps: int | None = None) -> StopEvent:
        """Run until a breakpoint, a watchpoint, an exit ``until`` matches, the
        guest stops, :meth:`pause`, ``timeout`` seconds or ``max_steps``
        single-stepped instructions (only counted while stepping).

        When every active breakpoint and watchpoint has a debug register or
        an ``int3``, the guest runs at full speed between exits; otherwise it
        is single-stepped and each instruction checked (slow, and said so
        in each breakpoint's ``mechanism``).
        """
        self._previous = self._current()
        self.runner.pause_requested = False
        try:
            with Watchdog([self.runner], timeout):
                stop = self._cont(until, max_steps)
        finally:
            self._remove_int3s()
        self.last_stop = stop
        return stop

    def _control_stop(self, steps: int) -> StopEvent | None:
        runner = self.runner
        if runner.pause_requested:
            runner.pause_requested = False
            rip = self._current().rip
            return StopEvent(StopReason.PAUSED, rip, f"paused at RIP {rip:#x}{self._sym(rip)}",
                             steps=steps)
        if runner.timed_out:
            rip = self._current().rip
            return StopEvent(StopReason.TIMEOUT, rip,
                             f"timeout: stopped at RIP {rip:#x}{self._sym(rip)}", steps=steps)
        return None

    def _guest_stopped(self, stop: Stop, event: ExitEvent | None, steps: int) -> StopEvent:
        rip = self._current().rip
        if stop.kind is StopKind.PAUSED:
            return StopEvent(StopReason.PAUSED, rip, f"paused at RIP {rip:#x}{self._sym(rip)}",
                             event=event, stop=stop, steps=steps)
        if stop.kind is StopKind.TIMEOUT:
            return StopEvent(StopReason.TIMEOUT, rip, stop.message, event=event, stop=stop,
                             steps=steps)
        return StopEvent(StopReason.GUEST_STOPPED, rip, stop.message, event=event, stop=stop,
                         steps=steps)

    def _after_step(self, record: StepRecord, until: _Matcher | None,
                    predicted: list[tuple[Watchpoint, MemoryAccess]],
                    steps: int) -> StopEvent | None:
        """What, if anything, a stepped instruction ran into."""
        if until is not None:
            for event in record.exits:
                if until(event):
                    rip = record.after.rip
                    return StopEvent(StopReason.EXIT_MATCHED, rip,
                                     f"exit matched: {event.description} (RIP {rip:#x})",
                                     event=event, steps=steps)
        if record.stop is not None:
            return self._guest_stopped(record.stop, record.exits[-1] if record.exits else None,
                                       steps)
        hit = self._watch_hit(record, predicted, steps)
        if hit is not None:
            return hit
        bp = self._breakpoint_at(record.new_pc)
        if bp is not None:
            return self._hit_breakpoint(bp, steps)
        return None

    def _hit_breakpoint(self, bp: Breakpoint, steps: int) -> StopEvent:
        bp.hits += 1
        rip = self._current().rip
        return StopEvent(StopReason.BREAKPOINT, rip,
                         f"breakpoint {bp.number} at {bp.address:#x}{self._sym(bp.address)} "
                         f"(hit {bp.hits}, by {bp.mechanism})", breakpoint=bp, steps=steps)

    def _cont(self, until: ExitFilter | _Matcher | None, max_steps: int | None) -> StopEvent:
        steps = 0
        self._prepare_watchpoints()
        # Leave a breakpoint we are stopped at: one step with it out of the way
        # (an int3 is not inserted yet, an execute DR is off while stepping).
        if self._breakpoint_at(self.pc) is not None:
            predicted = self._predict_accesses()
            record = self._step()
            steps += 1
            stop = self._after_step(record, until, predicted, steps)
            if stop is not None:
                return stop
        if self._needs_stepping():
            while True:
                stop = self._control_stop(steps)
                if stop is not None:
                    return stop
                if max_steps is not None and steps >= max_steps:
                    rip = self._current().rip
                    return StopEvent(StopReason.STEP_LIMIT, rip,
                                     f"stopped after {steps} single-stepped instructions at "
                                     f"RIP {rip:#x}{self._sym(rip)}", steps=steps)
                predicted = self._predict_accesses()
                record = self._step()
                steps += 1
                stop = self._after_step(record, until, predicted, steps)
                if stop is not None:
                    return stop
        return self._run_free(until, steps)

    def _run_free(self, until: _Matcher | None, steps: int) -> StopEvent:
        """Let the guest run, with int3s and debug registers armed."""
        self._insert_int3s()
        self._apply(self._state(stepping=False, exec_slots=True))
        return self._run_free_loop(until, steps)

    def _run_free_loop(self, until: _Matcher | None, steps: int) -> StopEvent:
        machine = self.machine
        while True:
            stop = self._control_stop(steps)
            if stop is not None:
                return stop
            event = machine.step(explain=True, capture_rip=bool(machine.listeners))
            self._regs = None
            exit = event.exit
            if type(exit) is Debug:
                hit = self._on_debug(exit, steps)
                if hit is not None:
                    return hit
                continue
            if event.stop is not None:
                self._complete(exit)
                return self._guest_stopped(event.stop, event, steps)
            if until is not None and until(event):
                self._complete(exit)
                rip = self._current().rip
                return StopEvent(StopReason.EXIT_MATCHED, rip,
                                 f"exit matched: {event.description} (RIP {rip:#x})",
                                 event=event, steps=steps)

    def _complete(self, exit: VmExit) -> None:
        """Before stopping at an I/O or MMIO exit: let KVM finish the
        instruction (store an ``in`` value, advance RIP) without running on,
        so the registers a person looks at are consistent (KVM_RUN with
        ``immediate_exit`` set, Documentation/virt/kvm/api.rst)."""
        if not isinstance(exit, (IoIn, IoOut, MmioRead, MmioWrite)):
            return
        started = time.monotonic()
        done = self.runner.finish()
        if not isinstance(done, (Interrupted, Debug)):
            self._dispatch(done, started, None)
        self._regs = None

    def _on_debug(self, exit: Debug, steps: int) -> StopEvent | None:
        """A #DB or #BP while running freely: which breakpoint or watchpoint?"""
        if exit.exception == 3:
            for bp in self._inserted.values():
                if bp.address == exit.pc or bp.address + 1 == exit.pc:
                    regs = self._current()
                    if self._pc == bp.address + 1:   # report the int3's own address
                        regs.rip -= 1
                        self.vcpu.set_regs(regs)
                        self._refresh()
                    return self._hit_breakpoint(bp, steps)
        for slot in dr6_slots(exit.dr6):
            owner = self.slots.owner(slot)
            if isinstance(owner, Breakpoint) and owner.enabled:
                return self._hit_breakpoint(owner, steps)
            if isinstance(owner, Watchpoint) and owner.enabled:
                return self._hit_watchpoint(owner, self._current().rip, steps, "was accessed")
        rip = self._current().rip
        name = "#BP (int3)" if exit.exception == 3 else "#DB"
        return StopEvent(StopReason.DEBUG_EXCEPTION, rip,
                         f"{name} the debugger did not ask for at {exit.pc:#x} "
                         f"(dr6={exit.dr6:#x})", steps=steps)

    # -- lifetime -----------------------------------------------------------------------

    def close(self) -> None:
        """Take every int3 out and turn guest debugging off."""
        self._remove_int3s()
        try:
            self.runner.set_guest_debug()
        except Exception:  # noqa: BLE001 - closing must not fail
            pass

    def __enter__(self) -> Debugger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
