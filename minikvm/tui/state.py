"""What the screen shows, as plain data: the :class:`TuiState` snapshot.

The TUI draws every frame from one immutable snapshot. Building it is the
only part that talks to the machine (registers, memory, device state);
drawing it (:mod:`minikvm.tui.render`) is a pure function. That split is what
lets tests render exact frames without a terminal, and what keeps the vCPU
safe: while the guest runs on its own thread, the snapshot is built from
counters and ring buffers the exit listener fills, never from vCPU ioctls.

Nothing here imports KVM; the records are small frozen dataclasses.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from minikvm.debug.inspect import RegisterSnapshot

__all__ = [
    "BreakpointRow",
    "DeviceView",
    "DisasmLine",
    "ExitRow",
    "Focus",
    "MemoryView",
    "PromptView",
    "RegistersView",
    "RunStatus",
    "SideView",
    "StatsView",
    "TuiState",
]


class RunStatus(enum.Enum):
    """What the TUI is doing with the guest, as the header shows it.

    This is an *activity*, not a second stop vocabulary. Why a guest stopped
    -- a breakpoint, ``hlt``, the debug-exit port and its status, a triple
    fault -- is the core :class:`~minikvm.core.stop.Stop`, and the session
    keeps the last one (``Session.last_stop``) and words it from there.
    RunStatus only answers the question the header and the keys need: may
    I press ``s`` now? RUNNING and STEPPING say the vCPU thread is at work
    (no Stop exists yet); PAUSED, FINISHED and CRASHED are read off the
    Stop the work ended with (:meth:`after`); ERROR is the VMM itself
    failing, which no Stop describes.
    """

    PAUSED = "paused"        # stopped, and the guest can go on: step done, breakpoint, pause
    RUNNING = "running"      # the vCPU thread is inside cont()
    STEPPING = "stepping"    # a single step or step-to-exit is under way
    FINISHED = "finished"    # the guest ended: halt, power off, reset, debug-exit port
    CRASHED = "crashed"      # triple fault, failed entry, KVM internal error
    ERROR = "error"          # the VMM itself failed (an exception on the vCPU thread)

    @classmethod
    def after(cls, stop: Any) -> RunStatus:
        """The state a core :class:`~minikvm.core.stop.Stop` leaves the TUI in.

        ``stop.crashed`` and ``stop.finished`` end the guest. Every other
        stop leaves a guest that can go on -- including a timeout, for which
        ``stop.ended`` is true because it ends a ``minikvm run`` (status
        124): in the TUI it only ends the one continue it was given to.
        """
        if stop.crashed:
            return cls.CRASHED
        if stop.finished:
            return cls.FINISHED
        return cls.PAUSED


class Focus(enum.Enum):
    """Where keys go: to the debugger's commands or, raw, to the guest's console."""

    DEBUGGER = "debugger"
    CONSOLE = "console"


class SideView(enum.Enum):
    """The panel shown in the side slot (``v`` cycles). The narrow layout has
    one bottom slot for the exit log and these; wider ones show the exit log
    on its own and treat EXITS as STATS here."""

    EXITS = "exits"
    STATS = "stats"
    DEVICES = "devices"
    MEMORY = "memory"


@dataclass(frozen=True)
class RegistersView:
    """The registers at the last stop and what the last step changed.

    ``stale`` is True while the guest runs: the values are those of the last
    stop (the vCPU cannot be asked while it is inside ``KVM_RUN``).
    ``bitness`` is how the CPU decodes code now (16, 32, 64), ``mode`` the
    CPU mode by CR0.PE / EFER.LMA / CR0.PG.
    """

    values: RegisterSnapshot
    changed: frozenset[str]
    mode: str
    bitness: int
    stale: bool = False


@dataclass(frozen=True)
class DisasmLine:
    """One instruction of the listing around RIP."""

    address: int
    raw: bytes
    text: str
    symbol: str = ""
    current: bool = False
    breakpoint: int | None = None      # its number, when one is set here
    breakpoint_enabled: bool = True


@dataclass(frozen=True)
class BreakpointRow:
    number: int
    address: int
    mechanism: str
    enabled: bool
    hits: int
    symbol: str = ""


@dataclass(frozen=True)
class ExitRow:
    """One VM exit in the log: its number, reason, guest RIP, the port or
    address, device and register, and the device's explanation.

    ``seq`` is the exit's number among the guest exits the TUI counted (the
    header's count; see :mod:`minikvm.tui.monitor`). ``vcpu`` is the vCPU
    that exited, or None on a machine with one vCPU (nothing to tell apart).
    """

    seq: int
    reason: str
    rip: int | None
    where: str
    device: str
    register: str
    value: int | None
    description: str
    stop: str = ""          # set when this exit ended the run
    vcpu: int | None = None


@dataclass(frozen=True)
class StatsView:
    """Exit counts per reason and per device, and the recent exit rate.

    ``total`` counts guest exits (what the header and the log's numbers
    count); ``kicks`` the ``KVM_RUN`` calls the VMM cut short itself and
    ``steps`` the single-stepped instructions, neither of them in ``total``.
    ``timeline`` holds exits per ``interval`` seconds of running, oldest
    first; ``rate`` is exits per second over the latest interval (or the
    last run).
    """

    total: int = 0
    by_reason: tuple[tuple[str, int], ...] = ()
    by_device: tuple[tuple[str, int], ...] = ()
    timeline: tuple[int, ...] = ()
    interval: float = 0.25
    rate: float = 0.0
    steps: int = 0
    kicks: int = 0


@dataclass(frozen=True)
class DeviceView:
    """One device's state as (name, value) rows, ready to print."""

    name: str
    rows: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class MemoryView:
    """A hexdump: ``data`` read at ``address``.

    ``physical`` says whether ``address`` is guest-physical or linear (then
    ``phys`` is where its first byte lives, when mapped); ``follow`` names the
    register the address tracks (``"rip"``, ``"rsp"``) or is empty.
    """

    address: int
    physical: bool
    data: bytes = b""
    follow: str = ""
    phys: int | None = None
    error: str = ""
    note: str = ""


@dataclass(frozen=True)
class PromptView:
    """A one-line question in the footer (breakpoint address, memory address)."""

    label: str
    text: str


@dataclass(frozen=True)
class TuiState:
    """Everything one frame shows. Built by :meth:`Session.snapshot`."""

    guest: str
    status: RunStatus
    message: str = ""
    registers: RegistersView | None = None
    disassembly: tuple[DisasmLine, ...] = ()
    breakpoints: tuple[BreakpointRow, ...] = ()
    exits: tuple[ExitRow, ...] = ()
    stats: StatsView = field(default_factory=StatsView)
    console: str = ""
    console_total: int = 0
    devices: tuple[DeviceView, ...] = ()
    memory: MemoryView | None = None
    focus: Focus = Focus.DEBUGGER
    side: SideView = SideView.EXITS
    prompt: PromptView | None = None
    show_help: bool = False
    input_queued: int = 0
    #: The vCPU the debugger drives and how many the machine has; the
    #: header names the vCPU only when there is more than one.
    vcpu: int = 0
    vcpus: int = 1
    #: The debugger records every instruction (``r``): S and C can go back.
    recording: bool = False
    #: The shown vCPU's MP state in words ("runnable", "parked: waiting
    #: for SIPI" ...), for the register panel's title; "" with one vCPU.
    vcpu_state: str = ""

    @property
    def busy(self) -> bool:
        """True while the vCPU thread owns the guest."""
        return self.status in (RunStatus.RUNNING, RunStatus.STEPPING)

    @property
    def ended(self) -> bool:
        """True once the guest can run no more."""
        return self.status in (RunStatus.FINISHED, RunStatus.CRASHED, RunStatus.ERROR)
