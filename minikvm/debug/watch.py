"""Watchpoint checks: did the instruction just run touch a watched variable?

A watchpoint in a debug register needs no checking: the CPU raises ``#DB``
after the access and sets the slot's bit in DR6 (SDM vol. 3B, 17.2.3), and
KVM reports it as a debug exit. Where debug registers do not catch data
accesses (kvm-pvm emulates guest ring-0 code and ignores them), or all four
are taken, the debugger single-steps and asks, after every instruction:

* for a *write* watchpoint: do the watched bytes differ from what they
  were? (A write of the same value goes unnoticed -- the price of comparing.)
* for a *read/write* watchpoint: did the instruction's memory operands,
  predicted *before* it ran from its decoding and the registers
  (:func:`~minikvm.debug.disasm.memory_accesses`), overlap the watched bytes?

A hit becomes a :class:`~minikvm.core.stop.Stop` of kind ``WATCHPOINT`` with
the watched value before and after.
"""

from __future__ import annotations

from minikvm.core.stop import Stop, StopKind
from minikvm.debug.arming import Arming
from minikvm.debug.breakpoints import MECH_DECODE, MECH_STEP, Watchpoint, dr6_slots
from minikvm.debug.disasm import MAX_INSTRUCTION_LENGTH, MemoryAccess, memory_accesses
from minikvm.debug.errors import DebuggerError
from minikvm.debug.events import StepRecord
from minikvm.debug.guestview import GuestView
from minikvm.debug.inspect import SREG_NAMES
from minikvm.memory import GuestMemoryError

__all__ = ["Predicted", "WatchChecks"]

#: The read/write watchpoints an instruction is about to touch, and how.
Predicted = list[tuple[Watchpoint, MemoryAccess]]


class WatchChecks:
    """The watchpoint checks of one debugger, around each stepped instruction."""

    def __init__(self, view: GuestView, arming: Arming) -> None:
        self.view = view
        self.arming = arming
        self.memory = view.memory
        # Guest-physical address of each watched range, by watchpoint number.
        self._physical: dict[int, int | None] = {}

    def forget(self) -> None:
        """Translate the watched addresses afresh at the next check (the
        watchpoints changed, or a new run begins)."""
        self._physical.clear()

    def current_value(self, wp: Watchpoint) -> int | None:
        """The watched value now, through the page tables; None when unmapped."""
        try:
            return int.from_bytes(self.view.read(wp.address, wp.size), "little")
        except DebuggerError:
            return None

    def _physical_of(self, wp: Watchpoint) -> int | None:
        """The watched bytes' guest-physical address, translated once per run
        (a guest that remaps the page meanwhile is not followed)."""
        if wp.number not in self._physical:
            try:
                phys = self.view.physical(wp.address)
            except GuestMemoryError:
                phys = None
            if phys is not None and not self.memory.contains(phys, wp.size):
                phys = None
            self._physical[wp.number] = phys
        return self._physical[wp.number]

    def _compared_value(self, wp: Watchpoint) -> int | None:
        """The watched value, read straight from RAM (after every step: no walk)."""
        phys = self._physical_of(wp)
        if phys is None:
            return None
        return self.memory.read_int(phys, wp.size)

    def baseline(self) -> None:
        """At the start of a run: translate watched addresses afresh and take
        the current values as the ones to compare against."""
        self.forget()
        for wp in self.arming.watchpoints.values():
            wp.last_value = (self._compared_value(wp) if wp.slot is None
                             else self.current_value(wp))

    def predict(self) -> Predicted:
        """For read/write watchpoints served by decoding: which of them the
        instruction at RIP is about to touch (call it *before* the step)."""
        watched = [wp for wp in self.arming.watchpoints.values()
                   if wp.enabled and wp.mechanism == MECH_DECODE]
        if not watched:
            return []
        view = self.view
        regs, sregs, pc = view.regs(), view.sregs(), view.pc
        code = view.read_code(pc, MAX_INSTRUCTION_LENGTH)
        bases = {name: getattr(sregs, name).base for name in SREG_NAMES}
        accesses = memory_accesses(code, pc, view.bitness(), regs, bases.__getitem__)
        return [(wp, access) for wp in watched for access in accesses
                if access.overlaps(wp.address, wp.size)]

    def hit(self, wp: Watchpoint, rip: int, steps: int, how: str) -> Stop:
        """Count a hit on ``wp`` and say it: the value before and after."""
        old = wp.last_value
        new = self._compared_value(wp) if wp.slot is None else None
        if new is None:
            new = self.current_value(wp)
        wp.hits += 1
        wp.last_value = new
        values = f"{old:#x} -> {new:#x}" if old is not None and new is not None else "value unknown"
        return Stop(StopKind.WATCHPOINT, None,
                    f"watchpoint {wp.number} ({wp.kind.value}, {wp.size} bytes at "
                    f"{wp.address:#x}) {how}: {values}; by {wp.mechanism}; "
                    f"stopped at RIP {rip:#x}{self.view.describe(rip)}",
                    rip, self.view.runner.index, watchpoint=wp, old_value=old, new_value=new,
                    steps=steps)

    def check(self, record: StepRecord, predicted: Predicted, steps: int = 1) -> Stop | None:
        """After a step: the first watchpoint it hit, if any -- a debug
        register that fired (DR6.Bn), compared bytes that changed, or a
        predicted access."""
        rip = record.after.rip
        if record.debug is not None:
            for slot in dr6_slots(record.debug.dr6):
                owner = self.arming.slot_owner(slot)
                if isinstance(owner, Watchpoint):
                    return self.hit(owner, rip, steps, "was accessed")
        for wp in self.arming.watchpoints.values():
            if wp.enabled and wp.mechanism == MECH_STEP:
                value = self._compared_value(wp)
                if value is not None and value != wp.last_value:
                    return self.hit(wp, rip, steps, "was written")
        for wp, access in predicted:
            return self.hit(wp, rip, steps, "was written" if access.is_write else "was read")
        return None
