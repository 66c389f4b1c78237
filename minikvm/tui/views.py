"""Turning machine state into the words and rows the panels show.

Small translations, each a pure function or close to it: an exit event
into a log row (with debug exits decoded from DR6), a device's ``state()``
dict into named register rows (the ``UART_*`` bit names of Linux's
``serial_reg.h``, virtio status and queue indices), and what a person types
at a prompt (``0x1000``, ``p:0x1000``, ``rsp``, a symbol) into an address.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from minikvm.debug import DebuggerError
from minikvm.kvm.exits import Debug, IoIn, IoOut, MmioRead, MmioWrite
from minikvm.machine import ExitEvent
from minikvm.tui.state import DeviceView, ExitRow

__all__ = [
    "MemorySpec",
    "device_views",
    "exit_row",
    "parse_address",
    "parse_memory_spec",
]


def exit_row(event: ExitEvent) -> ExitRow:
    """One log line's worth of an exit."""
    exit = event.exit
    if isinstance(exit, (IoOut, IoIn)):
        where = f"port {exit.port:#x}"
    elif isinstance(exit, (MmioRead, MmioWrite)):
        where = f"{exit.address:#x}"
    else:
        where = ""
    description = event.description
    if type(exit) is Debug:
        description = _debug_words(exit)
    elif not description:
        from minikvm.machine import describe_exit
        description = describe_exit(exit, event.access, event.accesses)
    return ExitRow(event.seq, event.reason, event.rip, where, event.device, event.register,
                   event.value, description, event.stop.message if event.stop else "")


def _debug_words(exit: Debug) -> str:
    """A debug exit in words: which breakpoint mechanism fired (DR6, SDM 18.2.3)."""
    if exit.exception == 3:
        return f"#BP: the guest ran an int3 at {exit.pc:#x} (a software breakpoint)"
    slots = [f"DR{slot}" for slot in range(4) if exit.dr6 >> slot & 1]
    if slots:
        return (f"#DB: debug register {'/'.join(slots)} matched at {exit.pc:#x} "
                f"(a hardware breakpoint or watchpoint)")
    if exit.dr6 & (1 << 14):
        return f"#DB: single-step trap at {exit.pc:#x} (dr6={exit.dr6:#x})"
    return f"#DB at {exit.pc:#x} (dr6={exit.dr6:#x})"


# -- addresses typed by a person --------------------------------------------------------

def parse_address(text: str, symbols: Callable[[str], int] | None = None) -> int:
    """``0x1000``, ``4096``, ``0x10_00`` or a symbol name; ValueError otherwise."""
    text = text.strip()
    if not text:
        raise ValueError("no address given")
    try:
        value = int(text.replace("_", ""), 0)
    except ValueError:
        if symbols is None:
            raise ValueError(f"{text!r} is not a number (e.g. 0x1000)") from None
        try:
            return symbols(text)
        except DebuggerError as err:
            raise ValueError(f"{text!r} is neither a number nor a symbol ({err})") from None
    if not 0 <= value < 1 << 64:
        raise ValueError(f"{text!r} is not a 64-bit address")
    return value


@dataclass(frozen=True)
class MemorySpec:
    """Where the memory panel looks: a fixed address (linear or physical) or
    a register it follows."""

    address: int = 0
    physical: bool = False
    follow: str = ""        # "rip" or "rsp": the address tracks the register


_FOLLOW_WORDS = {"rip": "rip", "pc": "rip", "ip": "rip", "eip": "rip", "rsp": "rsp",
                 "sp": "rsp", "esp": "rsp", "stack": "rsp"}


def parse_memory_spec(text: str, symbols: Callable[[str], int] | None = None) -> MemorySpec:
    """``rip``/``rsp`` (follow), ``p:ADDR`` or ``phys ADDR`` (guest-physical),
    ``v:ADDR``, ``ADDR`` or a symbol (linear, through the page tables)."""
    words = text.strip().lower()
    if words in _FOLLOW_WORDS:
        return MemorySpec(follow=_FOLLOW_WORDS[words])
    raw = text.strip()
    for prefix, physical in (("p:", True), ("phys ", True), ("phys:", True), ("v:", False),
                             ("virt ", False), ("virt:", False)):
        if raw.lower().startswith(prefix):
            return MemorySpec(parse_address(raw[len(prefix):], symbols), physical)
    return MemorySpec(parse_address(raw, symbols), False)


# -- device panel -------------------------------------------------------------------------

_LSR_NAMES = ((0x01, "DR"), (0x02, "OE"), (0x04, "PE"), (0x08, "FE"), (0x10, "BI"),
              (0x20, "THRE"), (0x40, "TEMT"), (0x80, "FIFOE"))
_IER_NAMES = ((0x01, "RDI"), (0x02, "THRI"), (0x04, "RLSI"), (0x08, "MSI"))
_MCR_NAMES = ((0x01, "DTR"), (0x02, "RTS"), (0x04, "OUT1"), (0x08, "OUT2"), (0x10, "LOOP"))


def _names(value: int, table: tuple[tuple[int, str], ...]) -> str:
    names = [name for bit, name in table if value & bit]
    return " ".join(names) if names else "-"


def _uart_rows(state: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """A 16550A's registers with their bits named (the UART_* names of Linux's serial_reg.h)."""
    return (
        ("LSR", f"{state['lsr']:#04x} {_names(state['lsr'], _LSR_NAMES)}"),
        ("IER", f"{state['ier']:#04x} {_names(state['ier'], _IER_NAMES)}"),
        ("IIR", f"{state['iir']:#04x} {state['interrupt']}"),
        ("LCR", f"{state['lcr']:#04x} {state['line']}"),
        ("MCR", f"{state['mcr']:#04x} {_names(state['mcr'], _MCR_NAMES)}"),
        ("MSR", f"{state['msr']:#04x}"),
        ("divisor", f"{state['divisor']} ({state['baud']} baud)"),
        ("RX FIFO", f"{state['rx_level']}/16 bytes, trigger {state['rx_trigger']}"
                    + (", FIFOs on" if state["fifo_enabled"] else ", FIFOs off")),
        ("IRQ line", "high" if state["irq_level"] else "low"),
        ("bytes", f"sent {state['tx_count']}, received {state['rx_count']}"
                  + (f", overruns {state['overruns']}" if state["overruns"] else "")),
    )


def _virtio_rows(state: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    rows = [("status", f"{state['status']:#04x} {state['status_decoded']}"),
            ("features", ", ".join(state["driver_features_decoded"]) or "none negotiated"),
            ("interrupt", f"status {state['interrupt_status']:#x}, line "
                          f"{'high' if state['irq_level'] else 'low'}")]
    for index, queue in enumerate(state["queues"]):
        if not queue["ready"] and not queue["size"]:
            rows.append((f"queue {index}", "not set up"))
            continue
        rows.append((f"queue {index}",
                     f"size {queue['size']}{' ready' if queue['ready'] else ''}, "
                     f"avail idx {queue['last_avail_idx']}, used idx {queue['used_idx']}"))
    if state.get("last_error"):
        rows.append(("error", str(state["last_error"])))
    return tuple(rows)


def device_views(machine: Any) -> tuple[DeviceView, ...]:
    """Every device's state in rows. Reads plain Python state only (no
    ioctl), so it is safe while the guest runs; a device caught mid-update
    shows its previous rows next frame."""
    views = []
    try:
        views.append(DeviceView("COM1 16550A (port 0x3f8)", _uart_rows(machine.uart.state())))
    except Exception:  # noqa: BLE001 - a panel must not kill the UI
        views.append(DeviceView("COM1 16550A (port 0x3f8)", (("state", "unavailable"),)))
    for transport in getattr(machine, "virtio", ()):
        try:
            views.append(DeviceView(transport.name, _virtio_rows(transport.state())))
        except Exception:  # noqa: BLE001
            views.append(DeviceView(getattr(transport, "name", "virtio"),
                                    (("state", "unavailable"),)))
    try:
        debugcon = machine.debugcon.state()
        views.append(DeviceView("debugcon (port 0xe9)",
                                (("bytes", str(debugcon["bytes_written"])),)))
    except Exception:  # noqa: BLE001
        pass
    unclaimed = getattr(getattr(machine, "pio", None), "unclaimed_count", 0)
    unclaimed += getattr(getattr(machine, "mmio", None), "unclaimed_count", 0)
    if unclaimed:
        views.append(DeviceView("unclaimed", (("accesses", f"{unclaimed} (reads return all-ones)"),)))
    return tuple(views)
