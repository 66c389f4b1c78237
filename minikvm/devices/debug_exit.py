"""The debug-exit port: a guest ends the run with an exit status (ports 0xF4-0xF7).

QEMU's ``isa-debug-exit`` device lets a test guest end the emulator with a
status of its choosing, which is how test suites such as kvm-unit-tests
report pass/fail. Writing ``v`` ends the run with status ``(v << 1) | 1``:
always odd, so a guest can never produce the VMM's even statuses (0 for a
clean halt, 2 for bad usage, 124 for a timeout). It *can* produce the odd
ones: ``v = 0`` gives 1 (also "KVM unavailable") and ``v = 1`` gives 3 (also
"guest crashed") -- kvm-unit-tests relies on exactly that (1 = pass). The
statuses do not say who decided; ``minikvm run`` prints one line on stderr
whenever the VMM decides, and the trace records a debug-exit write.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from minikvm.devices.base import Device
from minikvm.devices.state import MAX_U64, SavedState

__all__ = ["DebugExit", "debug_exit_status"]


def debug_exit_status(value: int) -> int:
    """The process exit status QEMU (and minikvm) reports for a write of ``value``."""
    return ((value << 1) | 1) & 0xFF


class DebugExit(Device):
    """Port 0xF4: a write asks the machine to stop with ``(v << 1) | 1``.

    The device does not stop anything itself (it knows nothing of KVM): it
    calls ``on_exit(status)`` and the machine decides.
    """

    name = "debug-exit"
    model = "isa-debug-exit"

    def __init__(self, on_exit: Callable[[int], None] | None = None) -> None:
        self.on_exit = on_exit
        self.last_value: int | None = None

    def write(self, offset: int, size: int, value: int) -> None:
        self.last_value = value
        if self.on_exit is not None:
            self.on_exit(debug_exit_status(value))

    def register_name(self, offset: int, is_write: bool) -> str:
        return "exit"

    def describe(self, offset: int, size: int, is_write: bool, value: int) -> str:
        if is_write:
            return (f"debug exit: the guest ends the run with value {value:#x}, "
                    f"exit status ({value:#x} << 1) | 1 = {debug_exit_status(value)}")
        return f"debug exit: read -> {value:#x} (the port is write-only)"

    def state(self) -> dict[str, Any]:
        return {"last_value": self.last_value}

    def save(self) -> dict[str, Any]:
        """The last value written (None before the first write)."""
        return {"last_value": self.last_value}

    def check_state(self, state: Any) -> None:
        fields = SavedState(state, self.name, ("last_value",))
        fields.integer("last_value", 0, MAX_U64, optional=True)

    def restore(self, state: dict[str, Any]) -> None:
        self.check_state(state)
        self.last_value = state["last_value"]

    def state_rows(self) -> list[tuple[str, str]]:
        if self.last_value is None:
            return [("last write", "none yet (writing v exits with (v << 1) | 1)")]
        return [("last write", f"{self.last_value:#x}: exit status "
                               f"{debug_exit_status(self.last_value)}")]
