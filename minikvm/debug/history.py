"""The execution history of reverse debugging: one undo entry per instruction.

This is an *undo log*, the design of gdb's "record full" target
(gdb/record-full.c): while recording, every single-stepped instruction
leaves one :class:`Entry` that holds what the instruction changed -- the
registers it changed with their old and new values, the segment/control
registers and the FPU when they changed, and the bytes of guest memory it
changed, old and new. Undoing an entry puts the old values back; redoing it
puts the new ones back. Nothing is re-executed either way, so a device never
sees an access twice and guest output is never printed twice.

Why not checkpoints and deterministic replay? Replaying forward from a
checkpoint needs every value the VMM gave the guest *and* the exact
instruction at which each interrupt arrived. KVM gives no instruction
count without a PMU, and the in-kernel irqchip and PIT inject interrupts on
their own; an undo log is exact without either: an interrupt delivered
during a step would be just another change of registers and stack
(recorded steps block interrupts today: docs/reverse.md).

The log is bounded (:class:`History`, a ring): past ``max_entries`` entries or
``max_bytes`` of recorded data the oldest entries go, as gdb's
``record full insn-number-max`` does. Everything here is plain data: no KVM,
so tests build entries by hand.
"""

from __future__ import annotations

import functools
import struct
from typing import Any

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_ENTRIES",
    "Entry",
    "History",
    "MemoryChange",
    "apply_words",
    "changed_range",
    "info_row",
    "state_size",
    "word_diff",
]

#: Default caps of a recording: enough for a lesson's guest many times over;
#: ``Debugger.record(limit=...)`` and ``max_bytes=`` change them.
DEFAULT_MAX_ENTRIES = 200_000
DEFAULT_MAX_BYTES = 64 << 20
#: What one entry costs besides its data: the Python objects that hold it
#: (an estimate; the cap is about the order of magnitude, not the byte).
ENTRY_OVERHEAD = 160
#: What one value inside a saved device state is counted as, besides the
#: characters of a string (a Python int or the slot that holds it).
DEVICE_VALUE_COST = 16
#: How deep a saved device state may nest before the rest is counted flat.
_STATE_DEPTH = 16

#: One guest memory change: guest-physical address, bytes before, bytes after.
MemoryChange = tuple[int, bytes, bytes]

_WORD = struct.Struct("<Q")
_MASK = struct.Struct("<I")


@functools.lru_cache(maxsize=64)
def _words(size: int) -> struct.Struct:
    """The struct of ``size // 8`` little-endian u64."""
    return struct.Struct(f"<{size // 8}Q")


def word_diff(before: bytes, after: bytes) -> bytes:
    """The 64-bit words that differ between two register blocks, packed.

    ``kvm_regs`` is 18 little-endian u64 (RAX ... R15, RIP, RFLAGS); an
    instruction usually changes two or three of them. The diff is a 32-bit
    mask of the changed words followed by (old, new) for each: 20 bytes for
    a ``nop`` (RIP only) instead of 288 for both blocks.
    """
    words = _words(len(before))
    mask = 0
    values: list[int] = []
    for index, (old, new) in enumerate(zip(words.unpack(before), words.unpack(after))):
        if old != new:
            mask |= 1 << index
            values += (old, new)
    return _MASK.pack(mask) + _words(len(values) * 8).pack(*values)


def apply_words(block: bytearray, diff: bytes, forward: bool) -> None:
    """Write the new (``forward``) or the old values of ``diff`` into ``block``."""
    mask = _MASK.unpack_from(diff)[0]
    values = _words(len(diff) - 4).unpack_from(diff, 4)
    pick = 1 if forward else 0
    at = 0
    index = 0
    while mask:
        if mask & 1:
            _WORD.pack_into(block, index * 8, values[at + pick])
            at += 2
        mask >>= 1
        index += 1


def changed_range(old: bytes, new: bytes) -> tuple[int, int] | None:
    """``(start, end)`` of the bytes that differ between two equal-sized
    blocks, or None when they are equal.

    One XOR of the blocks as big integers: the lowest and the highest set
    bit give the first and last changed byte. Bytes in between that did not
    change are kept too (they are equal on both sides, so undoing and redoing
    stay exact); a page usually changes in one place per instruction.
    """
    if old == new:
        return None
    x = int.from_bytes(old, "little") ^ int.from_bytes(new, "little")
    return ((x & -x).bit_length() - 1) // 8, (x.bit_length() - 1) // 8 + 1


def state_size(state: Any, depth: int = 0) -> int:
    """About how many bytes a saved device state holds: the characters of
    its strings and :data:`DEVICE_VALUE_COST` per value.

    Not a constant: a device may save kilobytes (pc-testdev's 64 KiB of
    scratch memory is a 128 KiB hex string), and a guest that fills it and
    then makes an exit at every step would otherwise keep far more than
    the history's byte cap alive while the count stayed small."""
    if isinstance(state, (str, bytes)):
        return DEVICE_VALUE_COST + len(state)
    if depth >= _STATE_DEPTH:
        return DEVICE_VALUE_COST
    if isinstance(state, dict):
        return DEVICE_VALUE_COST + sum(state_size(key, depth + 1) + state_size(value, depth + 1)
                                       for key, value in state.items())
    if isinstance(state, (list, tuple)):
        return DEVICE_VALUE_COST + sum(state_size(item, depth + 1) for item in state)
    return DEVICE_VALUE_COST


def info_row() -> tuple[str, str, str]:
    """The ``minikvm info`` row that says how much history a recording keeps."""
    return ("reverse execution",
            f"undo log of the last {DEFAULT_MAX_ENTRIES:,} instructions "
            f"or {DEFAULT_MAX_BYTES >> 20} MiB",
            "Debugger.record(limit=, max_bytes=), gdb 'monitor record on': the oldest "
            "entries go first (docs/reverse.md)")


class Entry:
    """What one instruction (or one VMM exit it caused) changed.

    ``regs`` is a :func:`word_diff` of ``kvm_regs``; ``sregs``, ``fpu`` and
    ``devices`` are ``(before, after)`` or None when unchanged; ``memory`` the
    changed byte ranges; ``stop`` the machine's stop when the instruction
    ended the run (``hlt``, the debug-exit port), so a redo reports it again;
    ``asleep`` says that after it the vCPU sleeps in ``hlt`` waiting for an
    interrupt (KVM's MP state HALTED), which undo and redo put back too.
    """

    __slots__ = ("regs", "sregs", "fpu", "memory", "devices", "stop", "asleep", "size")

    def __init__(self, regs: bytes, sregs: tuple[bytes, bytes] | None = None,
                 fpu: tuple[bytes, bytes] | None = None,
                 memory: tuple[MemoryChange, ...] = (),
                 devices: tuple[Any, Any] | None = None, stop: Any = None,
                 asleep: bool = False) -> None:
        self.regs = regs
        self.sregs = sregs
        self.fpu = fpu
        self.memory = memory
        self.devices = devices
        self.stop = stop
        self.asleep = asleep
        size = ENTRY_OVERHEAD + len(regs)
        if sregs is not None:
            size += 2 * len(sregs[0])
        if fpu is not None:
            size += 2 * len(fpu[0])
        for _, old, new in memory:
            size += 64 + len(old) + len(new)
        if devices is not None:
            size += state_size(devices[0]) + state_size(devices[1])
        self.size = size

    def __repr__(self) -> str:
        parts = [f"regs={_MASK.unpack_from(self.regs)[0]:#x}"]
        if self.sregs is not None:
            parts.append("sregs")
        if self.fpu is not None:
            parts.append("fpu")
        if self.memory:
            parts.append("memory=" + ",".join(f"{a:#x}+{len(n)}" for a, _, n in self.memory))
        if self.devices is not None:
            parts.append("devices")
        return f"Entry({' '.join(parts)})"


class History:
    """The recorded entries and where the vCPU is among them.

    ``position`` counts the entries whose effect the machine shows now: at
    ``len(history)`` the vCPU is at the end (live), at 0 at the start of what
    was kept. Past either cap the oldest entries are dropped (``dropped``
    counts them). ``bytes`` never exceeds ``max_bytes``: an entry bigger
    than the whole cap (a device's DMA that rewrote megabytes in one step)
    empties the history, itself included -- going back stops at the state
    after it, as at any dropped entry.
    """

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ValueError(f"history limits must be positive, not {max_entries} entries "
                             f"and {max_bytes} bytes")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        #: Entries dropped from the start to stay under the caps.
        self.dropped = 0
        #: Bytes the kept entries are counted as (see :class:`Entry`).
        self.bytes = 0
        # A list used as a ring: the kept entries are _entries[_head:], the
        # dropped ones are deleted in batches (deleting one at a time from the
        # front of a list would copy it each time).
        self._entries: list[Entry] = []
        self._head = 0
        self._at = 0   # index into _entries of the next entry to redo

    def __len__(self) -> int:
        return len(self._entries) - self._head

    @property
    def position(self) -> int:
        return self._at - self._head

    @property
    def at_end(self) -> bool:
        """The vCPU shows the newest recorded state: execution is live."""
        return self._at == len(self._entries)

    @property
    def at_start(self) -> bool:
        """Nothing left to undo."""
        return self._at == self._head

    def append(self, entry: Entry) -> None:
        """Add the entry of the instruction just executed (only at the end)."""
        if not self.at_end:
            raise ValueError("history: append while in the past (truncate first)")
        self._entries.append(entry)
        self._at += 1
        self.bytes += entry.size
        while len(self) > self.max_entries or self.bytes > self.max_bytes:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        entries = self._entries
        self.bytes -= entries[self._head].size
        entries[self._head] = None  # type: ignore[call-overload]
        self._head += 1
        self.dropped += 1
        if self._head > 4096 and self._head * 2 > len(entries):
            del entries[:self._head]
            self._at -= self._head
            self._head = 0
        self._at = max(self._at, self._head)

    @property
    def last_done(self) -> Entry | None:
        """The entry whose effect the machine shows last (None at the start)."""
        return None if self.at_start else self._entries[self._at - 1]

    def undo(self) -> Entry | None:
        """The entry to undo now (and move before it), or None at the start."""
        if self.at_start:
            return None
        self._at -= 1
        return self._entries[self._at]

    def redo(self) -> Entry | None:
        """The entry to redo now (and move after it), or None at the end."""
        if self.at_end:
            return None
        entry = self._entries[self._at]
        self._at += 1
        return entry

    def truncate(self) -> int:
        """Forget the entries after the position (the state changed there);
        how many went."""
        gone = len(self._entries) - self._at
        for entry in self._entries[self._at:]:
            self.bytes -= entry.size
        del self._entries[self._at:]
        return gone

    def __repr__(self) -> str:
        return (f"History({self.position}/{len(self)} entries, {self.bytes} bytes, "
                f"{self.dropped} dropped)")
