"""The TUI's model: a machine, its debugger, the vCPU thread, and snapshots.

A debugger front end has two jobs that must not block each other: run the
guest, and listen to the person. :class:`Session` gives the guest its own
thread (the *vCPU thread*) for every step, step-to-exit and continue, and
leaves the caller's thread (the UI) free to read keys and draw. The rules
that keep this safe are few:

* While the vCPU thread works, only it calls vCPU ioctls. KVM serialises
  ioctls on one vCPU with a mutex held for the whole of ``KVM_RUN``: a
  ``KVM_GET_REGS`` from the UI would simply hang until the guest exits.
* The UI learns what happens from an exit listener (:class:`ExitMonitor`)
  that only bumps counters and appends to bounded ring buffers, from guest
  RAM (an ``mmap`` any thread may read) and from the devices' plain state.
  Registers and disassembly shown while running are those of the last stop.
* Pausing is ``Debugger.pause()``: it sets a flag and *kicks* the vCPU
  thread out of ``KVM_RUN`` with a signal; the thread returns, and only then
  does the UI read registers again.

With the in-kernel irqchip a guest that executes ``cli; hlt`` sleeps inside
KVM and never exits again; the debugger's ``cont`` notices that (it kicks
the vCPU after a quiet spell and asks ``KVM_GET_MP_STATE``). Before each
action the session asks the same question, so a finished guest is never
stepped into a ``hlt`` that would not return.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from minikvm.debug import Debugger, DebuggerError
from minikvm.debug.inspect import RegisterSnapshot
from minikvm.kvm.exits import Interrupted
from minikvm.kvm.uapi import KvmMpState
from minikvm.machine import ExitEvent, Stop, StopKind
from minikvm.memory import GuestMemoryError
from minikvm.tui.state import (
    BreakpointRow,
    DisasmLine,
    Focus,
    MemoryView,
    PromptView,
    RegistersView,
    RunStatus,
    SideView,
    StatsView,
    TuiState,
)
from minikvm.tui.views import (
    MemorySpec,
    device_views,
    exit_row,
    parse_address,
    parse_memory_spec,
)
from minikvm.x86.flags import Rflags
from minikvm.x86.modes import cpu_mode_of

__all__ = [
    "EXIT_LOG_CAPACITY",
    "ExitMonitor",
    "MEMORY_BYTES",
    "Session",
]

#: Exits kept for the log panel (a guest may exit millions of times).
EXIT_LOG_CAPACITY = 256
#: Bytes the memory panel reads (16 rows of 16).
MEMORY_BYTES = 256
#: The timeline: one bar per this many seconds of running, this many bars.
TIMELINE_INTERVAL = 0.25
TIMELINE_LENGTH = 240
#: Instructions listed before and after RIP.
DISASM_BEFORE = 6
DISASM_AFTER = 30
#: How often pause() re-kicks the vCPU while waiting for the thread to return.
_PAUSE_RETRY = 0.02
_FINISHED_KINDS = (StopKind.HALT, StopKind.DEBUG_EXIT, StopKind.POWER_OFF, StopKind.RESET)
_CRASH_KINDS = (StopKind.SHUTDOWN, StopKind.FAIL_ENTRY, StopKind.INTERNAL_ERROR,
                StopKind.UNEXPECTED_EXIT)


class ExitMonitor:
    """The machine listener of the TUI: cheap enough to leave on at full speed.

    Per exit it appends the :class:`ExitEvent` to a bounded deque and bumps
    two counters; turning events into text waits until a frame needs the
    newest few. ``KVM_RUN`` calls cut short by a *kick* (the pause key, the
    debugger's halt check) are the VMM's business, not the guest's: they are
    only counted, in ``kicks``.
    """

    def __init__(self, capacity: int = EXIT_LOG_CAPACITY) -> None:
        self.events: deque[ExitEvent] = deque(maxlen=capacity)
        self.count = 0
        self.by_reason: dict[str, int] = {}
        self.by_device: dict[str, int] = {}
        self.kicks = 0

    def __call__(self, event: ExitEvent) -> None:
        if type(event.exit) is Interrupted:
            self.kicks += 1
            return
        self.count += 1
        self.events.append(event)
        reason = event.reason
        by_reason = self.by_reason
        by_reason[reason] = by_reason.get(reason, 0) + 1
        access = event.access
        if access is not None:
            name = access.device_name
            self.by_device[name] = self.by_device.get(name, 0) + 1

    def newest(self, count: int) -> list[ExitEvent]:
        """The last ``count`` events, oldest first (safe while the vCPU thread appends)."""
        for _ in range(3):
            try:
                events = list(self.events)
                break
            except RuntimeError:   # mutated during the copy: try again
                continue
        else:
            return []
        return events[-count:] if count > 0 else []


# -- the session ---------------------------------------------------------------------------

@dataclass
class _Outcome:
    status: RunStatus
    message: str


class Session:
    """A machine under the TUI: actions on the vCPU thread, snapshots for frames.

    ``console`` is the sink the machine writes guest output to (a
    :class:`minikvm.hostio.BufferSink`), or None.
    """

    def __init__(self, machine: Any, debugger: Debugger | None = None, *, guest: str = "guest",
                 console: Any = None) -> None:
        self.machine = machine
        self.debugger = debugger if debugger is not None else Debugger(machine)
        self.guest = guest
        self.console = console
        self.monitor = ExitMonitor()
        machine.listeners.append(self.monitor)
        self.status = RunStatus.PAUSED
        self.message = ("ready: s steps one instruction, n runs to the next VM exit, "
                        "c continues, ? helps")
        # What the person set up (the app changes these).
        self.focus = Focus.DEBUGGER
        self.side = SideView.EXITS
        self.prompt: PromptView | None = None
        self.show_help = False
        self.memory_spec = MemorySpec(follow="rip")
        self.memory_offset = 0
        # The vCPU thread and its result.
        self._worker: threading.Thread | None = None
        self._done = threading.Event()
        self._outcome: _Outcome | None = None
        self._pause_wanted = False
        self.error_trace = ""
        #: Why the guest can run no more (set when it ended).
        self.end_reason = ""
        self._run_started = 0.0
        self._run_start_count = 0
        self._last_rate = 0.0
        # Timeline of exits per interval while running.
        self.timeline: deque[int] = deque(maxlen=TIMELINE_LENGTH)
        self._sample_time: float | None = None
        self._sample_count = 0
        # What the last stop looked like (the registers, listing, sregs).
        self._registers: RegistersView | None = None
        self._previous: RegisterSnapshot | None = None
        self._disassembly: tuple[DisasmLine, ...] = ()
        self._sregs: Any = None
        self._step_text = ""
        self._refresh_stop()

    # -- state of the guest -----------------------------------------------------------

    @property
    def busy(self) -> bool:
        return self._worker is not None

    @property
    def ended(self) -> bool:
        return self.status in (RunStatus.FINISHED, RunStatus.CRASHED, RunStatus.ERROR)

    def _halted_for_good(self) -> bool:
        """With the in-kernel irqchip: is the vCPU asleep in ``hlt`` with
        RFLAGS.IF clear? Then no interrupt can ever wake it. (vCPU thread,
        or the UI thread while nothing runs.)"""
        if not getattr(self.machine, "irqchip", False):
            return False
        vcpu = self.machine.vcpu
        if vcpu.get_mp_state() != KvmMpState.KVM_MP_STATE_HALTED:
            return False
        return not vcpu.get_regs().rflags & Rflags.IF

    # -- actions (run on the vCPU thread) ---------------------------------------------

    def start(self, action: str, timeout: float | None = None) -> bool:
        """Begin ``"step"`` (one instruction), ``"next"`` (to the next VM exit)
        or ``"continue"`` on the vCPU thread. False (with a message) when the
        guest is busy or has ended."""
        if action not in ("step", "next", "continue"):
            raise ValueError(f"unknown action {action!r}")
        if self.busy:
            self.message = "the guest is running: p pauses it first"
            return False
        if self.ended:
            self.message = f"the guest has ended ({self.end_reason}); q quits"
            return False
        self._pause_wanted = False
        self._outcome = None
        self._done.clear()
        self._previous = self._registers.values if self._registers else None
        self.status = RunStatus.RUNNING if action == "continue" else RunStatus.STEPPING
        self.message = {"step": "stepping one instruction ...",
                        "next": "running to the next exit ...",
                        "continue": "running: p pauses"}[action]
        self._run_started = time.monotonic()
        self._run_start_count = self.monitor.count
        # The timeline and the rate describe free runs only.
        self._sample_time = self._run_started if action == "continue" else None
        self._sample_count = self.monitor.count
        self._worker = threading.Thread(target=self._work, args=(action, timeout),
                                        name="minikvm-vcpu", daemon=True)
        self._worker.start()
        return True

    def _work(self, action: str, timeout: float | None) -> None:
        try:
            if self._halted_for_good():
                outcome = _Outcome(RunStatus.FINISHED,
                                   "the guest halted (hlt with interrupts off)")
            elif action == "step":
                outcome = self._outcome_of_step(self.debugger.step_instruction())
            elif action == "next":
                outcome = self._outcome_of_stop(self._cont(
                    lambda event: type(event.exit) is not Interrupted, timeout))
            else:
                outcome = self._outcome_of_stop(self._cont(None, timeout))
        except Exception as err:  # noqa: BLE001 - the UI must survive and say why
            self.error_trace = traceback.format_exc()
            outcome = _Outcome(RunStatus.ERROR, f"the VMM failed: {type(err).__name__}: {err}")
        self._outcome = outcome
        self._note_mp_states()
        self._done.set()

    def _note_mp_states(self) -> None:
        """With several vCPUs, after an action (no vCPU runs now): each
        runner's MP state, for the devices panel (parked APs show)."""
        runners = getattr(self.machine, "runners", ())
        if len(runners) < 2:
            return
        for runner in runners:
            try:
                runner.mp_state = KvmMpState(runner.vcpu.get_mp_state())
            except Exception:  # noqa: BLE001 - a panel detail must not fail the action
                runner.mp_state = None

    def _cont(self, until: Callable[[ExitEvent], bool] | None,
              timeout: float | None) -> Stop:
        """``Debugger.cont`` (which also notices a guest halted for good)."""
        if self._pause_wanted:
            rip = self.debugger.rip
            return Stop(StopKind.PAUSED, None, f"paused at RIP {rip:#x}", rip)
        return self.debugger.cont(until=until, timeout=timeout)

    def _outcome_of_stop(self, stop: Stop) -> _Outcome:
        if stop.kind is StopKind.EXIT_MATCHED and stop.event is not None:
            event = stop.event
            return _Outcome(RunStatus.PAUSED,
                            f"exit {event.seq} ({event.reason}): {event.description}; "
                            f"paused at RIP {stop.rip:#x}")
        return self._outcome_of_machine_stop(stop)

    @staticmethod
    def _outcome_of_machine_stop(stop: Stop) -> _Outcome:
        if stop.kind in _CRASH_KINDS:
            return _Outcome(RunStatus.CRASHED, stop.message)
        if stop.kind in _FINISHED_KINDS:
            status = f" (exit status {stop.status})" if stop.status else ""
            return _Outcome(RunStatus.FINISHED, stop.message + status)
        return _Outcome(RunStatus.PAUSED, stop.message)

    def _outcome_of_step(self, record: Any) -> _Outcome:
        text = f"stepped {self._step_text}" if self._step_text else "stepped one instruction"
        if record.exits:
            said = "; ".join(event.description for event in record.exits[:3])
            text += f" -> {len(record.exits)} exit{'s' if len(record.exits) > 1 else ''}: {said}"
        if record.stop is not None:
            outcome = self._outcome_of_machine_stop(record.stop)
            outcome.message = f"{outcome.message} -- {text}"
            return outcome
        if record.hit is not None:
            return _Outcome(RunStatus.PAUSED, record.hit.message)
        return _Outcome(RunStatus.PAUSED, text)

    def poll(self) -> bool:
        """Collect the vCPU thread's result if it has finished (UI thread).
        Returns True when the guest just stopped."""
        worker = self._worker
        if worker is None or not self._done.is_set():
            return False
        worker.join(timeout=1.0)
        self._worker = None
        self._sample()
        self._sample_time = None
        outcome = self._outcome or _Outcome(RunStatus.ERROR, "the vCPU thread gave no result")
        self.status = outcome.status
        self.message = outcome.message
        if self.ended:
            self.end_reason = outcome.message.split(" -- ")[0]
        seconds = time.monotonic() - self._run_started
        if self._sample_time is not None and seconds > 0.05:
            self._last_rate = (self.monitor.count - self._run_start_count) / seconds
        if self.status is not RunStatus.ERROR:
            try:
                self._refresh_stop()
            except Exception as err:  # noqa: BLE001
                self.error_trace = traceback.format_exc()
                self.status = RunStatus.ERROR
                self.message = f"reading the vCPU failed: {type(err).__name__}: {err}"
        return True

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the vCPU thread; True when it is done (then polled)."""
        if self._worker is None:
            return True
        if not self._done.wait(timeout):
            return False
        self.poll()
        return True

    def pause(self, timeout: float = 2.0) -> bool:
        """Stop a running guest and wait for the vCPU thread (kicking it
        again every few ms: a kick that lands before ``cont`` starts would
        be forgotten). True when the guest is paused."""
        if self._worker is None:
            return True
        self._pause_wanted = True
        deadline = time.monotonic() + timeout
        while not self._done.is_set() and time.monotonic() < deadline:
            self.debugger.pause()
            self._done.wait(_PAUSE_RETRY)
        return self.wait(0)

    def run_action(self, action: str, timeout: float | None = None) -> None:
        """Do an action and wait for it (scripts, ``--record``, tests).
        ``timeout`` bounds a continue; the guest is paused when it expires."""
        if not self.start(action, timeout):
            return
        if not self.wait(None if timeout is None else timeout + 2.0):
            self.pause()

    # -- breakpoints, memory, console -------------------------------------------------

    def toggle_breakpoint(self, text: str = "") -> str:
        """Set a breakpoint at ``text`` (address or symbol; empty: RIP), or
        remove the one already there. Returns (and shows) what happened."""
        if self.busy:
            self.message = "pause the guest (p) before changing breakpoints"
            return self.message
        debugger = self.debugger
        try:
            address = debugger.pc if not text.strip() else parse_address(text,
                                                                          debugger.address_of)
        except ValueError as err:
            self.message = f"no breakpoint: {err}"
            return self.message
        for bp in list(debugger.breakpoints.values()):
            if bp.address == address:
                debugger.delete(bp.number)
                self.message = f"breakpoint {bp.number} at {address:#x} removed"
                return self.message
        try:
            bp = debugger.break_at(address)
        except DebuggerError as err:
            self.message = f"no breakpoint: {err}"
            return self.message
        note = f" ({bp.note})" if bp.note else ""
        self.message = f"breakpoint {bp.number} at {address:#x}: caught by {bp.mechanism}{note}"
        return self.message

    def set_memory(self, text: str) -> str:
        """Point the memory panel at what ``text`` says (see :func:`parse_memory_spec`)."""
        try:
            self.memory_spec = parse_memory_spec(text, self.debugger.address_of)
        except ValueError as err:
            self.message = f"memory: {err}"
            return self.message
        self.memory_offset = 0
        self.side = SideView.MEMORY
        spec = self.memory_spec
        if spec.follow:
            self.message = f"memory follows {spec.follow.upper()}"
        else:
            kind = "guest-physical" if spec.physical else "linear"
            self.message = f"memory at {kind} address {spec.address:#x}"
        return self.message

    def scroll_memory(self, rows: int) -> None:
        self.memory_offset += rows * 16

    def send_console(self, data: bytes) -> int:
        """Keys typed in console focus: queue them for the guest's serial input."""
        accepted = self.machine.send_serial_input(data)
        if accepted < len(data):
            self.message = f"serial input queue full: {len(data) - accepted} bytes dropped"
        return accepted

    # -- snapshots ----------------------------------------------------------------------

    def _refresh_stop(self) -> None:
        """Read registers and the listing around RIP (only while stopped)."""
        debugger = self.debugger
        snapshot = debugger.registers()
        sregs = debugger.sregs()
        self._sregs = sregs
        changed = frozenset(snapshot.changed_from(self._previous)) if self._previous else frozenset()
        self._registers = RegistersView(snapshot, changed, cpu_mode_of(sregs).value,
                                        debugger.bitness())
        pc = debugger.pc
        try:
            listing = debugger.disassemble(count=DISASM_AFTER, before=DISASM_BEFORE)
        except (DebuggerError, GuestMemoryError) as err:
            listing = []
            self._disassembly = (DisasmLine(pc, b"", f"(cannot read code: {err})", current=True),)
        if listing:
            # Before RIP, decoding backwards may start in bytes that are no
            # code at all (zeros ahead of a flat binary): keep only what lies
            # inside the loaded image.
            loaded = self._loaded_ranges()
            self._disassembly = tuple(
                DisasmLine(insn.address, insn.raw, insn.text, insn.symbol,
                           current=insn.address == pc) for insn in listing
                if insn.address >= pc or not loaded
                or any(start <= insn.address < end for start, end in loaded))
        self._step_text = next((f"'{line.text}' at {line.address:#x}"
                                for line in self._disassembly if line.current), "")

    def _loaded_ranges(self) -> list[tuple[int, int]]:
        """Linear ranges of the loaded image (where the program said, else
        where it was put), for telling code from whatever lies around it."""
        image = getattr(self.machine, "image", None)
        ranges = []
        for segment in getattr(image, "segments", None) or ():
            start = segment.virtual if segment.virtual is not None else segment.address
            ranges.append((start, start + segment.mem_size))
        return ranges

    def _sample(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if self._sample_time is None:
            return
        count = self.monitor.count
        self.timeline.append(count - self._sample_count)
        self._sample_time = now
        self._sample_count = count

    def tick(self, now: float | None = None) -> None:
        """Add a timeline bar for each interval that passed while running (UI thread)."""
        if self._worker is None:
            return
        now = time.monotonic() if now is None else now
        if self._sample_time is not None and now - self._sample_time >= TIMELINE_INTERVAL:
            self._sample(now)

    def _stats(self) -> StatsView:
        monitor = self.monitor
        by_reason = sorted(dict(monitor.by_reason).items(), key=lambda kv: (-kv[1], kv[0]))
        by_device = sorted(dict(monitor.by_device).items(), key=lambda kv: (-kv[1], kv[0]))
        timeline = tuple(self.timeline)
        if self.busy:
            rate = timeline[-1] / TIMELINE_INTERVAL if timeline else 0.0
        else:
            rate = self._last_rate
        return StatsView(monitor.count, tuple(by_reason), tuple(by_device), timeline,
                         TIMELINE_INTERVAL, rate, self.debugger.steps, monitor.kicks)

    def _memory(self) -> MemoryView:
        """The hexdump, read from guest RAM (any thread may), translating
        linear addresses with the page tables of the last stop."""
        spec = self.memory_spec
        registers = self._registers
        note = ""
        if spec.follow and registers is not None:
            values = registers.values
            if spec.follow == "rip":
                address = self.debugger_pc_at_stop()
            else:
                address = self._stack_linear(values)
            physical = False
        else:
            address, physical = spec.address, spec.physical
        address = max(0, address + self.memory_offset) & ((1 << 64) - 1)
        if self.busy:
            note = "live RAM; linear addresses use the page tables of the last stop"
        memory = self.machine.memory
        if physical:
            return MemoryView(address, True, self._read_physical(address, MEMORY_BYTES),
                              spec.follow, address, "" if memory.contains(address, 1)
                              else f"{address:#x} is outside guest RAM", note)
        data = bytearray()
        first_phys = None
        error = ""
        while len(data) < MEMORY_BYTES:
            linear = address + len(data)
            chunk = min(MEMORY_BYTES - len(data), 4096 - linear % 4096)
            phys = self._translate(linear)
            if phys is None or not memory.contains(phys, chunk):
                error = f"linear {linear:#x} is not mapped" if phys is None else (
                    f"linear {linear:#x} -> physical {phys:#x} is outside guest RAM")
                break
            if first_phys is None:
                first_phys = phys
            data += memory.read(phys, chunk)
        return MemoryView(address, False, bytes(data), spec.follow, first_phys, error, note)

    def _safe_memory(self) -> MemoryView:
        """The hexdump, or the reason there is none: whatever the guest put
        in its page tables, a frame must still be drawn."""
        try:
            return self._memory()
        except Exception as err:  # noqa: BLE001 - hostile page tables must not kill the UI
            return MemoryView(self.memory_spec.address, self.memory_spec.physical,
                              error=f"cannot read memory here: {err}")

    def debugger_pc_at_stop(self) -> int:
        """The linear address of RIP at the last stop (no ioctl)."""
        for line in self._disassembly:
            if line.current:
                return line.address
        return self._registers.values.rip if self._registers else 0

    def _stack_linear(self, values: RegisterSnapshot) -> int:
        sregs = self._sregs
        if sregs is None:
            return values.rsp
        bits = self._registers.bitness if self._registers else 64
        if bits == 64:
            return values.rsp
        mask = 0xFFFF_FFFF if sregs.ss.db else 0xFFFF
        return (sregs.ss.base + (values.rsp & mask)) & 0xFFFF_FFFF

    def _translate(self, linear: int) -> int | None:
        from minikvm.x86.paging import translate
        if self._sregs is None:
            return None
        paging = getattr(self.machine, "paging", None)
        kwargs = {}
        if paging is not None:
            kwargs = {"gbpages": paging.gbpages, "maxphyaddr": paging.maxphyaddr}
        try:
            result = translate(self.machine.memory, self._sregs, linear, **kwargs)
        except (GuestMemoryError, ValueError):
            return None
        return result.physical if result.valid else None

    def _read_physical(self, address: int, size: int) -> bytes:
        memory = self.machine.memory
        region = memory.region_at(address)
        if region is None:
            return b""
        try:
            return memory.read(address, min(size, region.end - address))
        except GuestMemoryError:
            return b""

    def _breakpoints(self) -> tuple[BreakpointRow, ...]:
        return tuple(BreakpointRow(bp.number, bp.address, bp.mechanism, bp.enabled, bp.hits,
                                   self.debugger.symbol_at(bp.address))
                     for bp in list(self.debugger.breakpoints.values()))

    def _console_text(self) -> tuple[str, int]:
        sink = self.console
        if sink is None:
            return "", 0
        data = bytes(sink.buffer[-8192:]) if hasattr(sink, "buffer") else b""
        return data.decode("utf-8", errors="replace"), getattr(sink, "total", len(data))

    def snapshot(self, exits: int = 64) -> TuiState:
        """Everything a frame shows, without a single vCPU ioctl."""
        breakpoints = self._breakpoints()
        marks = {bp.address: bp for bp in breakpoints}
        listing = tuple(
            DisasmLine(line.address, line.raw, line.text, line.symbol, line.current,
                       marks[line.address].number if line.address in marks else None,
                       marks[line.address].enabled if line.address in marks else True)
            for line in self._disassembly)
        registers = self._registers
        if registers is not None and self.busy:
            registers = RegistersView(registers.values, frozenset(), registers.mode,
                                      registers.bitness, stale=True)
        console, console_total = self._console_text()
        return TuiState(
            guest=self.guest,
            status=self.status,
            message=self.message,
            registers=registers,
            disassembly=listing,
            breakpoints=breakpoints,
            exits=tuple(exit_row(event) for event in self.monitor.newest(exits)),
            stats=self._stats(),
            console=console,
            console_total=console_total,
            devices=device_views(self.machine),
            memory=self._safe_memory(),
            focus=self.focus,
            side=self.side,
            prompt=self.prompt,
            show_help=self.show_help,
            input_queued=len(getattr(self.machine, "serial_input", ()) or ()),
        )

    def close(self) -> None:
        """Stop the guest if it runs, and take the listener and breakpoints out."""
        self.pause(timeout=1.0)
        if self.monitor in self.machine.listeners:
            self.machine.listeners.remove(self.monitor)
        if self._worker is None:
            self.debugger.close()
