"""Breakpoints, watchpoints and the x86 debug registers that implement them.

x86 offers two ways to stop a program at an address (Intel SDM vol. 3B, ch. 17):

* **software breakpoints**: overwrite the first byte of an instruction with
  ``int3`` (0xCC). Executing it raises ``#BP``; with
  ``KVM_GUESTDBG_USE_SW_BP`` KVM turns that into a ``KVM_EXIT_DEBUG`` instead
  of giving it to the guest. As many as you like, but they change guest
  memory, so the debugger must put the original byte back before anyone
  (the guest or a person) looks at it.
* **hardware breakpoints**: the four debug address registers DR0-DR3 hold
  linear addresses and DR7 says, per slot, whether to break on *execution*
  of that address, on a *write*, or on a *read or write* of 1, 2, 4 or 8
  bytes there (SDM 17.2.4). A hit raises ``#DB`` and sets the slot's Bn bit in
  DR6 (17.2.3). Instruction breakpoints are faults (reported before the
  instruction runs); data breakpoints are traps (after the access).

This module holds the records the debugger keeps for each breakpoint and
watchpoint, and the DR6/DR7 bit layout. Which *mechanism* serves a given
breakpoint (``int3``, a DR slot, or single-stepping) is decided by
:class:`minikvm.debug.arming.Arming` from what the host's KVM can do; the
mechanism names are the constants ``MECH_*`` below.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "Breakpoint", "BreakpointKind", "Dr7Slot", "HardwareSlots", "WatchKind", "Watchpoint",
    "DR6_B", "DR6_BD", "DR6_BS", "DR6_BT", "DR7_FIXED", "DR7_GE", "DR7_LE",
    "DR_LEN_BITS", "DR_RW_EXECUTE", "DR_RW_IO", "DR_RW_READ_WRITE", "DR_RW_WRITE",
    "HW_SLOTS", "INT3", "MECH_DECODE", "MECH_INT3", "MECH_STEP",
    "decode_dr7", "dr6_slots", "dr7_slot_bits", "hw_watch_fits",
]

#: The one-byte breakpoint instruction (SDM vol. 2, "INT n/INTO/INT3/INT1").
INT3 = 0xCC
#: DR0-DR3.
HW_SLOTS = 4

# What catches a breakpoint or watchpoint (its ``mechanism``), besides a
# debug register, which is named "hw DR<n>".
#: The ``int3`` byte patched into guest memory.
MECH_INT3 = "int3"
#: Single-stepping, comparing RIP (breakpoints) or the watched bytes (write
#: watchpoints) after every instruction.
MECH_STEP = "single-step compare"
#: Single-stepping, predicting each instruction's memory operands from its
#: decoding (read/write watchpoints).
MECH_DECODE = "single-step + operand decode"

# DR7 (SDM 17.2.4, figure 17-1)
#: Bits 8 and 9: "exact breakpoint" enables, recommended for data breakpoints.
DR7_LE = 1 << 8
DR7_GE = 1 << 9
#: Bit 10 reads as 1.
DR7_FIXED = 1 << 10
#: R/Wn: what kind of access slot n watches.
DR_RW_EXECUTE = 0b00
DR_RW_WRITE = 0b01
DR_RW_IO = 0b10        # only with CR4.DE
DR_RW_READ_WRITE = 0b11
#: LENn encodings: 1, 2, 8 (where supported) and 4 bytes.
DR_LEN_BITS = {1: 0b00, 2: 0b01, 8: 0b10, 4: 0b11}
_LEN_OF_BITS = {bits: size for size, bits in DR_LEN_BITS.items()}
_RW_NAMES = {DR_RW_EXECUTE: "execute", DR_RW_WRITE: "write", DR_RW_IO: "I/O",
             DR_RW_READ_WRITE: "read/write"}

# DR6 (SDM 17.2.3)
#: B0-B3: slot n's condition was met.
DR6_B = (1 << 0, 1 << 1, 1 << 2, 1 << 3)
DR6_BD = 1 << 13   # the next instruction touches a debug register (DR7.GD)
DR6_BS = 1 << 14   # single step (RFLAGS.TF)
DR6_BT = 1 << 15   # task switch to a TSS with the T flag


def dr7_slot_bits(slot: int, rw: int, size: int) -> int:
    """DR7 bits that enable slot ``slot`` (global enable Gn) for access kind
    ``rw`` of ``size`` bytes. An execute breakpoint must use size 1 (LEN=00)."""
    if not 0 <= slot < HW_SLOTS:
        raise ValueError(f"debug register slot must be 0-3, not {slot}")
    if size not in DR_LEN_BITS:
        raise ValueError(f"a hardware watchpoint covers 1, 2, 4 or 8 bytes, not {size}")
    if rw == DR_RW_EXECUTE and size != 1:
        raise ValueError("an instruction breakpoint has length 1 (LEN=00)")
    return (2 << (2 * slot)) | (rw << (16 + 4 * slot)) | (DR_LEN_BITS[size] << (18 + 4 * slot))


@dataclass(frozen=True)
class Dr7Slot:
    """What DR7 says about one slot."""

    slot: int
    local: bool
    global_: bool
    condition: str   # "execute", "write", "I/O", "read/write"
    size: int

    @property
    def enabled(self) -> bool:
        return self.local or self.global_


def decode_dr7(dr7: int) -> list[Dr7Slot]:
    """The four slots of a DR7 value."""
    return [Dr7Slot(n, bool(dr7 >> (2 * n) & 1), bool(dr7 >> (2 * n + 1) & 1),
                    _RW_NAMES[(dr7 >> (16 + 4 * n)) & 3], _LEN_OF_BITS[(dr7 >> (18 + 4 * n)) & 3])
            for n in range(HW_SLOTS)]


def dr6_slots(dr6: int) -> list[int]:
    """Which slots' conditions DR6 reports as met (B0-B3)."""
    return [n for n in range(HW_SLOTS) if dr6 & DR6_B[n]]


def hw_watch_fits(address: int, size: int) -> bool:
    """Can one debug register watch ``size`` bytes at ``address``? The range
    must be 1, 2, 4 or 8 bytes and aligned to its size (SDM 17.2.5: the low
    address bits are ignored, so an unaligned range would watch the wrong bytes)."""
    return size in DR_LEN_BITS and address % size == 0


class BreakpointKind(enum.Enum):
    """What the user asked for; the mechanism may differ (see ``mechanism``)."""

    SOFTWARE = "software"
    HARDWARE = "hardware"

    @classmethod
    def _missing_(cls, value: object) -> BreakpointKind | None:
        return {"sw": cls.SOFTWARE, "hw": cls.HARDWARE}.get(str(value).lower())


class WatchKind(enum.Enum):
    WRITE = "write"
    READ_WRITE = "read/write"

    @classmethod
    def _missing_(cls, value: object) -> WatchKind | None:
        return {"w": cls.WRITE, "rw": cls.READ_WRITE, "access": cls.READ_WRITE,
                "read-write": cls.READ_WRITE}.get(str(value).lower())


@dataclass
class Breakpoint:
    """Stop before executing the instruction at linear address ``address``.

    ``mechanism`` says what actually catches it: ``"int3"``, ``"hw DR<n>"``
    or ``"single-step compare"``; ``note`` says why when it is not the one
    asked for. ``original`` is the byte an inserted ``int3`` replaced.
    """

    number: int
    address: int
    kind: BreakpointKind
    mechanism: str = ""
    note: str = ""
    slot: int | None = None
    enabled: bool = True
    hits: int = 0
    physical: int | None = None
    original: int | None = None

    def describe(self) -> str:
        state = "" if self.enabled else " (disabled)"
        note = f" -- {self.note}" if self.note else ""
        return (f"breakpoint {self.number} at {self.address:#x}: {self.kind.value}, "
                f"by {self.mechanism}, {self.hits} hit(s){state}{note}")


@dataclass
class Watchpoint:
    """Stop after an access to ``size`` bytes at linear address ``address``.

    ``last_value`` is the watched value as last seen, so a hit can report
    old -> new. ``mechanism``: ``"hw DR<n>"``, ``"single-step compare"`` (a
    write watchpoint checked after every instruction) or ``"single-step +
    operand decode"`` (a read/write watchpoint predicted from each
    instruction's memory operands).
    """

    number: int
    address: int
    size: int
    kind: WatchKind
    mechanism: str = ""
    note: str = ""
    slot: int | None = None
    enabled: bool = True
    hits: int = 0
    last_value: int | None = None

    def describe(self) -> str:
        state = "" if self.enabled else " (disabled)"
        note = f" -- {self.note}" if self.note else ""
        return (f"watchpoint {self.number} on {self.size} byte(s) at {self.address:#x} "
                f"({self.kind.value}): by {self.mechanism}, {self.hits} hit(s){state}{note}")


class HardwareSlots:
    """Which of DR0-DR3 are in use, and by what."""

    def __init__(self, count: int = HW_SLOTS) -> None:
        self._owners: list[Breakpoint | Watchpoint | None] = [None] * count

    def allocate(self, owner: Breakpoint | Watchpoint) -> int | None:
        """The lowest free slot, now owned by ``owner``; None when all are taken."""
        for slot, current in enumerate(self._owners):
            if current is None:
                self._owners[slot] = owner
                return slot
        return None

    def release(self, slot: int | None) -> None:
        if slot is not None and 0 <= slot < len(self._owners):
            self._owners[slot] = None

    def owner(self, slot: int) -> Breakpoint | Watchpoint | None:
        return self._owners[slot] if 0 <= slot < len(self._owners) else None

    @property
    def free(self) -> int:
        return sum(owner is None for owner in self._owners)
