"""The debug console: a one-port "printer" at I/O port 0xE9.

Bochs introduced it and QEMU copies it (``-debugcon``): every byte a guest
writes to port 0xE9 appears on the host. It needs no setup at all, which
makes it the simplest way for a first guest to say something. Reading the
port returns 0xE9, which is how a guest can tell the console is there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from minikvm.devices.base import Device
from minikvm.devices.state import MAX_U64, SavedState

__all__ = ["DEBUGCON_READBACK", "DebugCon"]

#: What a read returns: the port number (0xE9, where Bochs and QEMU put it), Bochs' "I am here" answer.
DEBUGCON_READBACK = 0xE9

_HISTORY = 4096  # bytes kept for state(); output itself is not limited
_TAIL = 40       # bytes of it a panel row shows


def _shown(byte: int) -> str:
    """A byte as a panel row shows it: itself if printable, else an escape."""
    if 0x20 <= byte < 0x7F:
        return chr(byte)
    return {0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}.get(byte, f"\\x{byte:02x}")


def _printable(byte: int) -> str:
    if byte == 0x0A:
        return "'\\n'"
    if 0x20 <= byte < 0x7F:
        return repr(chr(byte))
    return f"0x{byte:02x}"


class DebugCon(Device):
    """Port 0xE9: each byte written goes to ``output``."""

    name = "debugcon"
    model = "Bochs debug console"

    def __init__(self, output: Callable[[bytes], None] | None = None) -> None:
        self.output = output
        self.recent = bytearray()
        self.bytes_written = 0

    def read(self, offset: int, size: int) -> int:
        return DEBUGCON_READBACK

    def write(self, offset: int, size: int, value: int) -> None:
        data = bytes([value & 0xFF])  # only the low byte reaches the console
        self.bytes_written += 1
        self.recent += data
        if len(self.recent) > _HISTORY:
            del self.recent[:-_HISTORY]
        if self.output is not None:
            self.output(data)

    def register_name(self, offset: int, is_write: bool) -> str:
        return "data"

    def describe(self, offset: int, size: int, is_write: bool, value: int) -> str:
        if is_write:
            return f"debug console: the guest prints {_printable(value & 0xFF)}"
        return f"debug console: read -> {value:#x} (the console is present)"

    def state(self) -> dict[str, Any]:
        return {"bytes_written": self.bytes_written,
                "recent": self.recent.decode("latin-1")}

    def save(self) -> dict[str, Any]:
        """The byte count. The recent bytes are a history for the TUI only:
        they decide nothing, so they are not saved."""
        return {"bytes_written": self.bytes_written}

    def check_state(self, state: Any) -> None:
        fields = SavedState(state, self.name, ("bytes_written",))
        fields.integer("bytes_written", 0, MAX_U64)

    def restore(self, state: dict[str, Any]) -> None:
        self.check_state(state)
        self.bytes_written = state["bytes_written"]

    def state_rows(self) -> list[tuple[str, str]]:
        """How much the guest printed, and the end of it."""
        rows = [("bytes", f"{self.bytes_written} written")]
        if self.recent:
            rows.append(("last", "".join(_shown(byte) for byte in self.recent[-_TAIL:])))
        return rows
