"""Just enough of the i8042 keyboard controller for a guest to reset the PC.

On a PC the keyboard controller's output port drives the CPU's reset line,
so command 0xFE ("pulse output line 0") written to the command port 0x64
reboots the machine -- the oldest reset method there is, and the one Linux
uses with ``reboot=k``. This model has no keyboard: the status register says
"no data, input buffer empty" so a driver waiting to send a command never
spins, data reads float, and only the reset pulse does something: it calls
``on_reset()`` and the machine ends the run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from minikvm.devices.base import Device
from minikvm.devices.state import MAX_U64, SavedState

__all__ = [
    "I8042", "I8042_CMD_PULSE_RESET", "I8042_COMMAND", "I8042_DATA",
]

# Offsets inside the device's window, which the board opens at port 0x60
# (minikvm.core.board.I8042_DATA_PORT): data at 0x60, command at 0x64.
I8042_DATA = 0                    # data register (port 0x60 on a PC)
I8042_COMMAND = 4                 # write: command; read: status (port 0x64 on a PC)
I8042_CMD_PULSE_RESET = 0xFE      # pulse output line 0 (the CPU's reset line) low
I8042_STR_OBF = 0x01              # status: output buffer full (a byte waits at 0x60)
I8042_STR_IBF = 0x02              # status: input buffer full (controller busy)


class I8042(Device):
    """Registered at port 0x60 with a 5-port window (0x60 data ... 0x64 command)."""

    name = "i8042"
    model = "keyboard controller (reset line only)"

    def __init__(self, on_reset: Callable[[], None] | None = None) -> None:
        self.on_reset = on_reset
        self.last_command: int | None = None
        self.resets = 0

    def read(self, offset: int, size: int) -> int:
        if offset == I8042_COMMAND:
            return 0  # status: nothing to read, ready for a command
        return 0xFF if size == 1 else (1 << (8 * size)) - 1

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == I8042_COMMAND:
            self.last_command = value & 0xFF
            if self.last_command == I8042_CMD_PULSE_RESET:
                self.resets += 1
                if self.on_reset is not None:
                    self.on_reset()

    def register_name(self, offset: int, is_write: bool) -> str:
        if offset == I8042_COMMAND:
            return "command" if is_write else "status"
        if offset == I8042_DATA:
            return "data"
        return f"port 0x60+{offset} (not an i8042 register)"

    def describe(self, offset: int, size: int, is_write: bool, value: int) -> str:
        register = self.register_name(offset, is_write)
        if register == "command" and value & 0xFF == I8042_CMD_PULSE_RESET:
            return "i8042 command 0xfe: pulse the reset line -- the guest asks for a reset"
        if register == "command":
            return f"i8042 command {value & 0xFF:#04x}: ignored (no keyboard here)"
        if register == "status":
            return f"i8042 status read -> {value:#04x}: no data, ready for a command"
        if is_write:
            return f"i8042 {register} write {value:#x}: ignored (no keyboard here)"
        return f"i8042 {register} read -> {value:#x}: no keyboard data"

    def state(self) -> dict[str, Any]:
        return {"last_command": self.last_command, "resets": self.resets}

    def save(self) -> dict[str, Any]:
        """The last command and how many resets were asked for."""
        return {"last_command": self.last_command, "resets": self.resets}

    def check_state(self, state: Any) -> None:
        fields = SavedState(state, self.name, ("last_command", "resets"))
        fields.integer("last_command", 0, 0xFF, optional=True)
        fields.integer("resets", 0, MAX_U64)

    def restore(self, state: dict[str, Any]) -> None:
        self.check_state(state)
        self.last_command, self.resets = state["last_command"], state["resets"]

    def state_rows(self) -> list[tuple[str, str]]:
        if self.last_command is None:
            command = "none yet"
        elif self.last_command == I8042_CMD_PULSE_RESET:
            command = f"{self.last_command:#04x} (pulse the reset line)"
        else:
            command = f"{self.last_command:#04x} (ignored)"
        return [("last command", command), ("resets asked", str(self.resets))]
