"""gdb's breakpoints and watchpoints (``Z``/``z`` packets) on minikvm's debugger.

gdb asks for five kinds (GDB manual, "Remote Protocol", section "Packets",
``z type,addr,kind``): 0 software breakpoint, 1 hardware breakpoint, 2 write
watchpoint, 3 read watchpoint, 4 access watchpoint. Each becomes a
breakpoint or watchpoint of :class:`~minikvm.debug.debugger.Debugger` --
one per vCPU, since each vCPU has its own debug registers -- and the
debugger picks the mechanism that really works on this KVM (``int3``, a
debug register, or single-stepping: :mod:`minikvm.debug.arming`).

What the manual asks of a stub, and how it is met here:

* Insertion and removal are idempotent ("the operations should be
  implemented in an idempotent way"): the same packet twice is one
  breakpoint, removing one that is not there succeeds.
* x86 watches 1, 2, 4 or 8 aligned bytes per debug register; gdb may ask
  for any length. A longer or unaligned range is split into aligned
  pieces, one watchpoint each, up to :data:`MAX_WATCH_LENGTH` bytes.
* A read watchpoint is served by a read/write one (x86 debug registers
  have no read-only condition, SDM vol. 3B, 17.2.4); gdb tells reads from
  writes itself by comparing the value.
* A software and a hardware breakpoint at one address are one debugger
  breakpoint (the debugger allows one per address), kept while either is.

:meth:`Points.reason` says which gdb breakpoint or watchpoint a stop was,
for the stop reply's ``swbreak``/``hwbreak``/``watch``/``rwatch``/``awatch``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from minikvm.core.stop import Stop
from minikvm.debug.debugger import Debugger, DebuggerError

__all__ = ["MAX_WATCH_LENGTH", "Points", "watch_pieces"]

#: The longest range one ``Z2``-``Z4`` may watch (eight 8-byte pieces).
MAX_WATCH_LENGTH = 64
_SOFTWARE, _HARDWARE, _WRITE, _READ, _ACCESS = range(5)
_WATCH_KIND = {_WRITE: "write", _READ: "rw", _ACCESS: "rw"}
_WATCH_REASON = {_WRITE: "watch", _READ: "rwatch", _ACCESS: "awatch"}


def watch_pieces(address: int, length: int) -> list[tuple[int, int]]:
    """``[address, address + length)`` as aligned (address, size) pieces of
    1, 2, 4 or 8 bytes, the largest that fit at each step."""
    pieces = []
    end = address + length
    while address < end:
        size = 8
        while address % size or address + size > end:
            size //= 2
        pieces.append((address, size))
        address += size
    return pieces


@dataclass
class _Break:
    """One address with a breakpoint: the debugger's number on each vCPU,
    and which gdb kinds (0, 1) asked for it."""

    numbers: list[int]
    kinds: set[int] = field(default_factory=set)


class Points:
    """The breakpoints and watchpoints gdb inserted, on every vCPU's debugger."""

    def __init__(self, debuggers: Sequence[Debugger]) -> None:
        self.debuggers = list(debuggers)
        self._breaks: dict[int, _Break] = {}
        #: (kind, address, length) -> per vCPU, the debugger's watchpoint numbers.
        self._watches: dict[tuple[int, int, int], list[list[int]]] = {}

    def insert(self, kind: int, address: int, length: int) -> None:
        """``Z kind,address,length``. Raises DebuggerError when the debugger
        refuses (an address beyond 64 bits, a range too long) and
        ValueError for a kind that does not exist."""
        if kind in (_SOFTWARE, _HARDWARE):
            found = self._breaks.get(address)
            if found is None:
                how = "software" if kind == _SOFTWARE else "hardware"
                numbers = self._on_each(lambda d: [d.break_at(address, how).number])
                found = self._breaks[address] = _Break([n[0] for n in numbers])
            found.kinds.add(kind)
            return
        if kind not in _WATCH_KIND:
            raise ValueError(f"there is no breakpoint type {kind}")
        key = (kind, address, length)
        if key in self._watches:
            return
        if not 0 < length <= MAX_WATCH_LENGTH:
            raise DebuggerError(f"a watchpoint covers 1 to {MAX_WATCH_LENGTH} bytes, not {length}")
        pieces = watch_pieces(address, length)
        self._watches[key] = self._on_each(lambda d: [
            d.watch(piece, size, _WATCH_KIND[kind]).number for piece, size in pieces])

    def _on_each(self, make) -> list[list[int]]:
        """``make(debugger)`` on every vCPU's debugger; if one refuses, undo
        what the others did, so a failed ``Z`` leaves nothing behind."""
        done: list[list[int]] = []
        try:
            for debugger in self.debuggers:
                done.append(make(debugger))
        except DebuggerError:
            for debugger, numbers in zip(self.debuggers, done):
                for number in numbers:
                    debugger.delete(number)
            raise
        return done

    def remove(self, kind: int, address: int, length: int) -> None:
        """``z kind,address,length``; removing what is not there succeeds."""
        if kind in (_SOFTWARE, _HARDWARE):
            found = self._breaks.get(address)
            if found is None:
                return
            found.kinds.discard(kind)
            if not found.kinds:
                del self._breaks[address]
                for debugger, number in zip(self.debuggers, found.numbers):
                    debugger.delete(number)
            return
        numbers = self._watches.pop((kind, address, length), None)
        for debugger, pieces in zip(self.debuggers, numbers or ()):
            for number in pieces:
                debugger.delete(number)

    def clear(self) -> None:
        """Remove everything gdb inserted (a detach)."""
        for address in list(self._breaks):
            for kind in (_SOFTWARE, _HARDWARE):
                self.remove(kind, address, 1)
        for key in list(self._watches):
            self.remove(*key)

    def reason(self, vcpu: int, stop: Stop) -> tuple[str, int | None]:
        """The stop reply's reason for a BREAKPOINT or WATCHPOINT stop of
        ``vcpu``: (``swbreak``/``hwbreak``/``watch``/``rwatch``/``awatch``,
        the watched address), or ("", None) when it is none of gdb's."""
        if stop.breakpoint is not None:
            number = stop.breakpoint.number
            for found in self._breaks.values():
                if found.numbers[vcpu] == number:
                    return ("swbreak" if _SOFTWARE in found.kinds else "hwbreak"), None
        if stop.watchpoint is not None:
            number = stop.watchpoint.number
            for (kind, _, _), numbers in self._watches.items():
                if number in numbers[vcpu]:
                    return _WATCH_REASON[kind], stop.watchpoint.address
        return "", None
