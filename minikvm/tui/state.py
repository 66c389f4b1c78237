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
    """What the guest is doing, as the header shows it."""

    PAUSED = "paused"        # stopped by us: step done, breakpoint, pause key
    RUNNING = "running"      # the vCPU thread is inside cont()
    STEPPING = "stepping"    # a single step or step-to-exit is under way
    FINISHED = "finished"    # the guest halted, powered off or wrote the debug-exit port
    CRASHED = "crashed"      # triple fault, failed entry, KVM internal error
    ERROR = "error"          # the VMM itself failed (an exception on the vCPU thread)


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
    """One VM exit in the log: sequence number, reason, guest RIP, the
    port or address, device and register, and the device's explanation."""

    seq: int
    reason: str
    rip: int | None
    where: str
    device: str
    register: str
    value: int | None
    description: str
    stop: str = ""          # set when this exit ended the run


@dataclass(frozen=True)
class StatsView:
    """Exit counts per reason and per device, and the recent exit rate.

    ``timeline`` holds exits per ``interval`` seconds of running, oldest
    first; ``rate`` is exits per second over the latest interval.
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

    @property
    def busy(self) -> bool:
        """True while the vCPU thread owns the guest."""
        return self.status in (RunStatus.RUNNING, RunStatus.STEPPING)

    @property
    def ended(self) -> bool:
        """True once the guest can run no more."""
        return self.status in (RunStatus.FINISHED, RunStatus.CRASHED, RunStatus.ERROR)
