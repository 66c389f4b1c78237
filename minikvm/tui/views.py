"""Turning machine state into the words and rows the panels show.

Small translations, each a pure function or close to it: an exit event
into a log row (with debug exits decoded from DR6), the devices on the
machine's buses into panels (each device words its own rows:
``state_rows()``), and what a person types at a prompt (``0x1000``,
``p:0x1000``, ``rsp``, a symbol) into an address.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from minikvm.bus import Mapping
from minikvm.debug import DebuggerError
from minikvm.kvm.exits import Debug, IoIn, IoOut, MmioRead, MmioWrite
from minikvm.core.events import ExitEvent, describe_exit
from minikvm.tui.state import DeviceView, ExitRow

__all__ = [
    "MemorySpec",
    "device_views",
    "exit_row",
    "mp_state_words",
    "parse_address",
    "parse_memory_spec",
]


def exit_row(event: ExitEvent, number: int | None = None, vcpus: int = 1) -> ExitRow:
    """One log line's worth of an exit: ``number`` is its place among the
    guest exits the TUI counted (default: the machine's sequence number);
    the vCPU is named only when the machine has more than one."""
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
        description = describe_exit(exit, event.access, event.accesses, event.stop)
    return ExitRow(event.seq if number is None else number, event.reason, event.rip, where,
                   event.device, event.register, event.value, description,
                   event.stop.message if event.stop else "",
                   event.vcpu if vcpus > 1 else None)


def _debug_words(exit: Debug) -> str:
    """A debug exit in words: which breakpoint mechanism fired (DR6, SDM 17.2.3)."""
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

def vcpu_view(runners: Any) -> DeviceView:
    """With several vCPUs: each one's MP state as its runner last read it
    (``KVM_GET_MP_STATE`` at a halt check or after a TUI action), so an AP
    still parked waiting for INIT/SIPI shows as such. No ioctl here."""
    rows = tuple((f"vCPU {runner.index}", mp_state_words(getattr(runner, "mp_state", None)))
                 for runner in runners)
    return DeviceView(f"vCPUs ({len(rows)})", rows)


def mp_state_words(state: Any) -> str:
    """A vCPU's ``KVM_GET_MP_STATE`` in words (None: not read yet)."""
    if state is None:
        return "not looked at yet"
    name = getattr(state, "name", str(state))
    return {"KVM_MP_STATE_RUNNABLE": "runnable", "KVM_MP_STATE_HALTED": "halted",
            "KVM_MP_STATE_UNINITIALIZED": "parked: waiting for INIT/SIPI",
            "KVM_MP_STATE_INIT_RECEIVED": "parked: waiting for SIPI"}.get(name, name)


def _where(space: str, base: int) -> str:
    return f"port {base:#x}" if space == "pio" else f"{base:#x}"


def _device_view(space: str, mapping: Mapping) -> DeviceView:
    """One device's panel: ``com1 (port 0x3f8) 16550A UART`` over its rows."""
    device = mapping.device
    name = getattr(device, "name", "device")
    title = f"{name} ({_where(space, mapping.base)})"
    try:
        model = getattr(device, "model", "")
        if model:
            title += f" {model}"
        state_rows = getattr(device, "state_rows", None)
        rows = tuple(state_rows()) if state_rows is not None else ()
    except Exception:  # noqa: BLE001 - a panel must not kill the UI
        rows = (("state", "unavailable"),)
    return DeviceView(title, rows)


def device_views(machine: Any) -> tuple[DeviceView, ...]:
    """Every device on the machine's buses, as a title and rows.

    The panel names no device: it lists what is registered on the port-I/O
    and MMIO buses and asks each for its ``state_rows()``. Richest first --
    a short panel then shows the devices with the most to say (the UART,
    the virtio transports) before the one-row ports -- and devices with as
    many rows in bus order. Reads plain Python state only (no ioctl), so it
    is safe while the guest runs; a device caught mid-update shows its
    previous rows next frame.
    """
    views = []
    unclaimed = 0
    for bus in (getattr(machine, "pio", None), getattr(machine, "mmio", None)):
        if bus is None:
            continue
        views += [_device_view(bus.space, mapping) for mapping in bus]
        unclaimed += bus.unclaimed_count
    views.sort(key=lambda view: -len(view.rows))  # stable: bus order among equals
    runners = getattr(machine, "runners", ())
    if len(runners) > 1:
        views.insert(0, vcpu_view(runners))
    if unclaimed:
        views.append(DeviceView("unclaimed",
                                (("accesses", f"{unclaimed} (reads return all-ones)"),)))
    return tuple(views)
