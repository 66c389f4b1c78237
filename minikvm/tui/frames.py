"""Building a frame's data: the picture of a stop, and everything else a frame reads.

A frame is drawn up to ten times a second, often while the guest runs on
the vCPU thread. What it shows comes from two kinds of source:

* **read at a stop** -- the registers, the CPU mode and the listing around
  RIP need vCPU ioctls (``KVM_GET_REGS``/``SREGS``) and a page walk. They
  are read *once* per stop, by :func:`picture_stop`, on the vCPU thread at
  the end of its work (or before any work began), into an immutable
  :class:`StopPicture` that every frame until the next stop reuses.
* **read live** -- guest RAM (an ``mmap`` any thread may read), the
  devices' plain state, the exit monitor's counters and the console
  buffer. Frames read these without an ioctl, so they are safe while the
  guest runs. Linear addresses in the memory panel are translated by
  :meth:`GuestView.read_linear <minikvm.debug.guestview.GuestView.read_linear>`
  with the page tables of the last stop (and the vCPU's CPUID paging
  features), which is the debugger's reader, not one of our own.

Every function here must return something drawable whatever the guest
did: hostile page tables or code give an error row, never an exception.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from minikvm.debug import Debugger, DebuggerError
from minikvm.debug.guestview import GuestView
from minikvm.debug.inspect import RegisterSnapshot
from minikvm.memory import GuestMemoryError
from minikvm.tui.monitor import ExitMonitor, Timeline
from minikvm.tui.state import BreakpointRow, DisasmLine, MemoryView, RegistersView, StatsView
from minikvm.tui.views import MemorySpec
from minikvm.x86.modes import cpu_mode_of

__all__ = [
    "DISASM_AFTER",
    "DISASM_BEFORE",
    "MEMORY_BYTES",
    "StopPicture",
    "breakpoint_rows",
    "console_text",
    "mark_breakpoints",
    "memory_view",
    "picture_stop",
    "running_registers",
    "stats_view",
]

#: Bytes the memory panel reads (16 rows of 16).
MEMORY_BYTES = 256
#: Instructions listed before and after RIP.
DISASM_BEFORE = 6
DISASM_AFTER = 30
#: Guest output the console panel is given (the panel shows the end of it).
_CONSOLE_TAIL = 8192
_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class StopPicture:
    """The vCPU at one stop, as the panels show it until the next.

    ``pc`` is the linear address of the next instruction and ``stack`` the
    linear address of the top of the stack (SS.base + RSP outside 64-bit
    code): what the memory panel follows.
    """

    registers: RegistersView | None = None
    disassembly: tuple[DisasmLine, ...] = ()
    pc: int = 0
    stack: int = 0

    @property
    def step_text(self) -> str:
        """``'cld' at 0x1000``: the instruction a step would run, for the message line."""
        return next((f"'{line.text}' at {line.address:#x}"
                     for line in self.disassembly if line.current), "")


def _stack_linear(values: RegisterSnapshot, sregs: Any, bitness: int) -> int:
    """SS.base + RSP, with RSP cut to the stack's width outside 64-bit code."""
    if bitness == 64:
        return values.rsp
    mask = 0xFFFF_FFFF if sregs.ss.db else 0xFFFF
    return (sregs.ss.base + (values.rsp & mask)) & 0xFFFF_FFFF


def picture_stop(debugger: Debugger, previous: RegisterSnapshot | None = None,
                 image: Any = None) -> StopPicture:
    """Read the registers and the listing around RIP (vCPU ioctls: only on
    the vCPU thread, or while nothing runs). ``previous`` are the registers
    of the stop before, for marking what changed; ``image`` the loaded
    guest, whose ranges tell code from what lies around it."""
    snapshot = debugger.registers()
    sregs = debugger.sregs()
    changed = frozenset(snapshot.changed_from(previous)) if previous is not None else frozenset()
    bitness = debugger.bitness()
    registers = RegistersView(snapshot, changed, cpu_mode_of(sregs).value, bitness)
    pc = debugger.pc
    stack = _stack_linear(snapshot, sregs, bitness)
    try:
        listing = debugger.disassemble(count=DISASM_AFTER, before=DISASM_BEFORE)
    except (DebuggerError, GuestMemoryError) as err:
        line = DisasmLine(pc, b"", f"(cannot read code: {err})", current=True)
        return StopPicture(registers, (line,), pc, stack)
    # Before RIP, decoding backwards may start in bytes that are no code at
    # all (zeros ahead of a flat binary): keep only what lies in the image.
    loaded = _loaded_ranges(image)
    lines = tuple(DisasmLine(insn.address, insn.raw, insn.text, insn.symbol,
                             current=insn.address == pc) for insn in listing
                  if insn.address >= pc or not loaded
                  or any(start <= insn.address < end for start, end in loaded))
    return StopPicture(registers, lines, pc, stack)


def _loaded_ranges(image: Any) -> list[tuple[int, int]]:
    """Linear ranges of the loaded image (where the program said, else
    where it was put)."""
    ranges = []
    for segment in getattr(image, "segments", None) or ():
        start = segment.virtual if segment.virtual is not None else segment.address
        ranges.append((start, start + segment.mem_size))
    return ranges


def running_registers(picture: StopPicture) -> RegistersView | None:
    """The registers of the last stop as a running frame shows them: no
    change marks (nothing was compared yet), flagged as old."""
    registers = picture.registers
    if registers is None:
        return None
    return RegistersView(registers.values, frozenset(), registers.mode, registers.bitness,
                         stale=True)


# -- read live (no ioctl) ---------------------------------------------------------------

def memory_view(view: GuestView, spec: MemorySpec, offset: int, picture: StopPicture,
                busy: bool) -> MemoryView:
    """The hexdump the memory panel shows; never raises."""
    try:
        return _memory_view(view, spec, offset, picture, busy)
    except Exception as err:  # noqa: BLE001 - hostile page tables must not kill the UI
        return MemoryView(spec.address, spec.physical, error=f"cannot read memory here: {err}")


def _memory_view(view: GuestView, spec: MemorySpec, offset: int, picture: StopPicture,
                 busy: bool) -> MemoryView:
    if spec.follow:
        address = picture.pc if spec.follow == "rip" else picture.stack
        physical = False
    else:
        address, physical = spec.address, spec.physical
    address = max(0, address + offset) & _MASK64
    note = "live RAM; linear addresses use the page tables of the last stop" if busy else ""
    memory = view.memory
    if physical:
        error = "" if memory.contains(address, 1) else f"{address:#x} is outside guest RAM"
        return MemoryView(address, True, _read_physical(memory, address, MEMORY_BYTES),
                          spec.follow, address, error, note)
    read = view.read_linear(address, MEMORY_BYTES)
    return MemoryView(address, False, read.data, spec.follow, read.physical, read.error, note)


def _read_physical(memory: Any, address: int, size: int) -> bytes:
    """Up to ``size`` bytes of guest RAM at ``address`` (up to the end of its region)."""
    region = memory.region_at(address)
    if region is None:
        return b""
    try:
        return memory.read(address, min(size, region.end - address))
    except GuestMemoryError:
        return b""


def breakpoint_rows(debugger: Debugger) -> tuple[BreakpointRow, ...]:
    return tuple(BreakpointRow(bp.number, bp.address, bp.mechanism, bp.enabled, bp.hits,
                               debugger.symbol_at(bp.address))
                 for bp in list(debugger.breakpoints.values()))


def mark_breakpoints(listing: tuple[DisasmLine, ...],
                     breakpoints: tuple[BreakpointRow, ...]) -> tuple[DisasmLine, ...]:
    """The listing with each line that has a breakpoint marked with its number."""
    marks = {bp.address: bp for bp in breakpoints}
    return tuple(
        DisasmLine(line.address, line.raw, line.text, line.symbol, line.current,
                   marks[line.address].number if line.address in marks else None,
                   marks[line.address].enabled if line.address in marks else True)
        for line in listing)


def stats_view(monitor: ExitMonitor, timeline: Timeline, steps: int) -> StatsView:
    by_reason = sorted(dict(monitor.by_reason).items(), key=lambda kv: (-kv[1], kv[0]))
    by_device = sorted(dict(monitor.by_device).items(), key=lambda kv: (-kv[1], kv[0]))
    return StatsView(monitor.count, tuple(by_reason), tuple(by_device), tuple(timeline.bars),
                     timeline.interval, timeline.rate(), steps, monitor.kicks)


def console_text(sink: Any) -> tuple[str, int]:
    """The end of the guest's output as text, and how many bytes it wrote in all."""
    if sink is None:
        return "", 0
    data = bytes(sink.buffer[-_CONSOLE_TAIL:]) if hasattr(sink, "buffer") else b""
    return data.decode("utf-8", errors="replace"), getattr(sink, "total", len(data))
