"""The one error the debugger layer raises for a request it cannot do.

An unmapped address, a register that does not exist, a symbol the image
does not have, a second breakpoint at one address: these are a person's
mistakes, not the VMM's, so they get one exception type that front ends
catch and show as a message (the TUI's prompt, a lesson's output).
"""

from __future__ import annotations

__all__ = ["DebuggerError"]


class DebuggerError(Exception):
    """A request the debugger cannot do: an unmapped address, a bad register name."""
