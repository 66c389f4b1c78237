"""Breakpoint arming: which breakpoints and watchpoints exist, what catches
each one, and how KVM is told.

Each breakpoint and watchpoint gets a *mechanism* when it is created, the
best one this host's KVM really offers (:class:`DebugSupport`, probed):

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

*Arming* is what happens before the guest runs. ``KVM_SET_GUEST_DEBUG``
takes a control word and DR0-DR7 (Documentation/virt/kvm/api.rst,
"KVM_SET_GUEST_DEBUG"): ``KVM_GUESTDBG_ENABLE`` turns guest debugging on,
``KVM_GUESTDBG_USE_HW_BP`` makes KVM load our DR0-DR7 while the guest runs,
``KVM_GUESTDBG_USE_SW_BP`` makes an ``int3`` exit to us instead of reaching
the guest's IDT, ``KVM_GUESTDBG_SINGLESTEP`` stops after every instruction
and ``KVM_GUESTDBG_BLOCKIRQ`` keeps interrupts out of a step.
:meth:`Arming.state` computes those arguments; the runner issues them
(:meth:`VcpuRunner.set_guest_debug`) only when they change. The ``int3``
bytes go into guest RAM just before a free run and come out at every stop
(:meth:`Arming.insert_int3s`, :meth:`Arming.remove_int3s`), so neither a
person nor a stepped instruction ever sees them.

Addresses are *linear* addresses, what the debug registers compare against
(SDM vol. 3B, 17.2.4): in 64-bit code the virtual address; in real mode
``segment * 16 + offset``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

from minikvm.debug.breakpoints import (
    DR7_FIXED,
    DR7_GE,
    DR_RW_EXECUTE,
    DR_RW_READ_WRITE,
    DR_RW_WRITE,
    HW_SLOTS,
    INT3,
    MECH_DECODE,
    MECH_INT3,
    MECH_STEP,
    Breakpoint,
    BreakpointKind,
    HardwareSlots,
    WatchKind,
    Watchpoint,
    dr7_slot_bits,
    hw_watch_fits,
)
from minikvm.debug.errors import DebuggerError
from minikvm.debug.probe import DebugSupport
from minikvm.kvm.uapi import (
    KVM_GUESTDBG_BLOCKIRQ,
    KVM_GUESTDBG_ENABLE,
    KVM_GUESTDBG_SINGLESTEP,
    KVM_GUESTDBG_USE_HW_BP,
    KVM_GUESTDBG_USE_SW_BP,
)
from minikvm.memory import GuestMemory

__all__ = ["Arming", "GuestDebugState", "NO_GUEST_DEBUG"]

#: The arguments of ``KVM_SET_GUEST_DEBUG``: (control, (DR0, ..., DR7)).
GuestDebugState = tuple[int, tuple[int, ...]]
#: Guest debugging off.
NO_GUEST_DEBUG: GuestDebugState = (0, (0,) * 8)


class Arming:
    """The breakpoints and watchpoints of one debugger, and their arming.

    ``support`` says what this KVM can do; ``memory`` is where ``int3``
    bytes are patched in.
    """

    def __init__(self, support: DebugSupport, memory: GuestMemory) -> None:
        self.support = support
        self.memory = memory
        self.breakpoints: dict[int, Breakpoint] = {}
        self.watchpoints: dict[int, Watchpoint] = {}
        self.slots = HardwareSlots()
        #: int3 bytes in guest RAM now, by guest-physical address.
        self.inserted: dict[int, Breakpoint] = {}
        self._numbers = itertools.count(1)
        #: The guest-debug state for a single step, kept up to date (see
        #: :meth:`changed`). While stepping, execute breakpoints are checked
        #: by comparing RIP: a debug-register execute breakpoint at the next
        #: instruction would otherwise fire before it runs, again and again
        #: (kvm-pvm ignores RFLAGS.RF). It is one tuple object until something
        #: changes, so the stepper can see with ``is`` that KVM already has it.
        self.stepping_state: GuestDebugState = self.state(stepping=True, exec_slots=False)

    # -- creating and removing -----------------------------------------------------

    def add_breakpoint(self, address: int, kind: BreakpointKind) -> Breakpoint:
        """A breakpoint at linear ``address``, with the best mechanism here;
        ``note`` says why when it is not the one asked for."""
        for existing in self.breakpoints.values():
            if existing.address == address:
                raise DebuggerError(f"breakpoint {existing.number} is already at {address:#x}")
        bp = Breakpoint(next(self._numbers), address, kind)
        support = self.support
        if kind is BreakpointKind.SOFTWARE and support.sw_breakpoints:
            bp.mechanism = MECH_INT3
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
                bp.mechanism = MECH_STEP
                if not support.hw_breakpoints:
                    reason = "hardware breakpoints do not stop here: " + support.reasons.get(
                        "hw_breakpoints", "not supported")
                else:
                    reason = f"all {HW_SLOTS} debug registers are in use"
                bp.note = "; ".join(filter(None, [why, reason])) + (
                    "; single-stepping and comparing RIP (slow)")
        self.breakpoints[bp.number] = bp
        self.changed()
        return bp

    def add_watchpoint(self, address: int, size: int, kind: WatchKind) -> Watchpoint:
        """A watchpoint on ``size`` (1, 2, 4 or 8) bytes at linear ``address``.

        Fallbacks when the debug registers cannot do it: a write watchpoint
        single-steps and compares the bytes after every instruction (a write
        of the same value goes unnoticed); a read/write watchpoint predicts
        each instruction's memory operands from its decoding
        (:func:`~minikvm.debug.disasm.memory_accesses` says what that misses).
        """
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
            wp.mechanism = MECH_STEP if kind is WatchKind.WRITE else MECH_DECODE
            if not hw_ok:
                name = "hw_write_watch" if kind is WatchKind.WRITE else "hw_rw_watch"
                wp.note = "debug-register watchpoints do not fire here: " + support.reasons.get(
                    name, "not supported")
            elif not fits:
                wp.note = f"{size} bytes at {address:#x} is not aligned to its size"
            else:
                wp.note = f"all {HW_SLOTS} debug registers are in use"
        self.watchpoints[wp.number] = wp
        self.changed()
        return wp

    def delete(self, number: int) -> Breakpoint | Watchpoint:
        """Remove breakpoint or watchpoint ``number`` (its debug register is free again)."""
        item = self.breakpoints.pop(number, None) or self.watchpoints.pop(number, None)
        if item is None:
            raise DebuggerError(f"no breakpoint or watchpoint {number}")
        self.slots.release(item.slot)
        self.changed()
        return item

    def enable(self, number: int, enabled: bool = True) -> None:
        item = self.breakpoints.get(number) or self.watchpoints.get(number)
        if item is None:
            raise DebuggerError(f"no breakpoint or watchpoint {number}")
        item.enabled = enabled
        self.changed()

    def changed(self) -> None:
        """Breakpoints, watchpoints or inserted int3s changed: compute the
        stepping state afresh."""
        self.stepping_state = self.state(stepping=True, exec_slots=False)

    # -- questions -----------------------------------------------------------------

    def breakpoint_at(self, pc: int) -> Breakpoint | None:
        """The enabled breakpoint at linear ``pc``, if any."""
        for bp in self.breakpoints.values():
            if bp.enabled and bp.address == pc:
                return bp
        return None

    def needs_stepping(self) -> bool:
        """Must a run single-step (some enabled breakpoint or watchpoint has
        no debug register or int3 to catch it)?"""
        return (any(bp.enabled and bp.mechanism == MECH_STEP
                    for bp in self.breakpoints.values())
                or any(wp.enabled and wp.slot is None for wp in self.watchpoints.values()))

    def slot_owner(self, slot: int) -> Breakpoint | Watchpoint | None:
        """The enabled breakpoint or watchpoint in debug register ``slot``."""
        owner = self.slots.owner(slot)
        return owner if owner is not None and owner.enabled else None

    def int3_hit(self, pc: int) -> Breakpoint | None:
        """The inserted int3 breakpoint a #BP at ``pc`` came from. KVM reports
        either the int3's own address or the one after it (the trap's RIP)."""
        for bp in self.inserted.values():
            if bp.address == pc or bp.address + 1 == pc:
                return bp
        return None

    # -- the guest-debug state ------------------------------------------------------

    def state(self, stepping: bool, exec_slots: bool) -> GuestDebugState:
        """The ``KVM_SET_GUEST_DEBUG`` arguments for what is active now.

        ``exec_slots``: arm the execute breakpoints in debug registers (a
        free run). DR7 gets, per slot, Gn and its R/W and LEN bits (SDM
        17.2.4), GE for data breakpoints, and bit 10, which reads as 1.
        """
        debugreg = [0] * 8
        dr7 = 0
        for slot in range(HW_SLOTS):
            owner = self.slot_owner(slot)
            if owner is None:
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
        if self.inserted:
            control |= KVM_GUESTDBG_USE_SW_BP
        if control:
            control |= KVM_GUESTDBG_ENABLE
        return control, tuple(debugreg)

    def running_state(self) -> GuestDebugState:
        """The state for a free run: every debug register and int3 armed."""
        return self.state(stepping=False, exec_slots=True)

    # -- int3 ------------------------------------------------------------------------

    def insert_int3s(self, physical: Callable[[int], int | None]) -> None:
        """Patch ``int3`` over the first byte of each enabled int3 breakpoint;
        ``physical`` translates a linear address (None: not mapped, skipped)."""
        memory = self.memory
        for bp in self.breakpoints.values():
            if not bp.enabled or bp.mechanism != MECH_INT3:
                continue
            phys = physical(bp.address)
            if phys is None or not memory.contains(phys, 1) or phys in self.inserted:
                continue
            bp.physical = phys
            bp.original = memory.read_u8(phys)
            memory.write_u8(phys, INT3)
            self.inserted[phys] = bp
        self.changed()   # USE_SW_BP follows the inserted bytes

    def remove_int3s(self) -> None:
        """Put the original bytes back (where the guest did not overwrite the int3)."""
        memory = self.memory
        for phys, bp in self.inserted.items():
            if bp.original is not None and memory.read_u8(phys) == INT3:
                memory.write_u8(phys, bp.original)
        if self.inserted:
            self.inserted.clear()
            self.changed()
