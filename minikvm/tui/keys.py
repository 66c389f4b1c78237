"""Keys: turning terminal bytes into key names, and what each key does.

In raw mode a terminal sends bytes, not keys: ``s`` is one byte, Enter is
``\\r``, Ctrl-] is ``0x1d``, and the arrow keys are *escape sequences*
(``ESC [ A`` for up, ECMA-48 / xterm's "CSI" form, or ``ESC O A`` when the
terminal is in application-cursor mode). :func:`parse_keys` splits a chunk
of bytes into :class:`Key` values, keeping each key's raw bytes so that in
console focus they can go to the guest unchanged.

The key tables below are the single source for the footer and the help.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "CONSOLE_ESCAPE",
    "FOOTER_CONSOLE",
    "FOOTER_PAUSED",
    "FOOTER_REVERSE",
    "FOOTER_RUNNING",
    "HELP_TEXT",
    "Key",
    "SMP_ONLY_KEYS",
    "parse_keys",
]

ESC = 0x1B
#: Ctrl-] (GS, 0x1D): leaves console focus, as it leaves telnet's connection.
CONSOLE_ESCAPE = 0x1D

_CONTROL_NAMES = {0x09: "tab", 0x0D: "enter", 0x0A: "enter", 0x7F: "backspace",
                  0x08: "backspace", 0x03: "ctrl-c", 0x04: "ctrl-d", CONSOLE_ESCAPE: "ctrl-]",
                  0x0C: "ctrl-l"}
#: Final bytes of ``ESC [ <final>`` and ``ESC O <final>``.
_CSI_FINALS = {ord("A"): "up", ord("B"): "down", ord("C"): "right", ord("D"): "left",
               ord("H"): "home", ord("F"): "end"}
#: ``ESC [ <n> ~`` sequences (VT220 editing keys).
_TILDE_KEYS = {"1": "home", "2": "insert", "3": "delete", "4": "end", "5": "pageup",
               "6": "pagedown", "7": "home", "8": "end"}


@dataclass(frozen=True)
class Key:
    """One key press: a name (``"s"``, ``"enter"``, ``"up"``, ``"ctrl-]"``)
    and the bytes the terminal sent for it."""

    name: str
    data: bytes


def _escape(data: bytes, i: int) -> tuple[Key, int]:
    """The key that starts with the ESC at ``data[i]``; returns it and the next index."""
    if i + 1 >= len(data) or data[i + 1] not in (ord("["), ord("O")):
        return Key("escape", data[i:i + 1]), i + 1
    j = i + 2
    if data[i + 1] == ord("O"):
        if j < len(data):
            name = _CSI_FINALS.get(data[j], "unknown")
            return Key(name, data[i:j + 1]), j + 1
        return Key("escape", data[i:i + 1]), i + 1
    # CSI: parameter bytes 0x30-0x3F, intermediates 0x20-0x2F, one final 0x40-0x7E.
    while j < len(data) and 0x20 <= data[j] <= 0x3F:
        j += 1
    if j >= len(data) or not 0x40 <= data[j] <= 0x7E:
        return Key("escape", data[i:i + 1]), i + 1
    params = data[i + 2:j].decode("ascii", errors="replace")
    final = data[j]
    if final == ord("~"):
        name = _TILDE_KEYS.get(params.split(";")[0], "unknown")
    else:
        name = _CSI_FINALS.get(final, "unknown")
    return Key(name, data[i:j + 1]), j + 1


def parse_keys(data: bytes) -> list[Key]:
    """Split raw terminal input into keys. Printable text (UTF-8 too) gives
    one key per character named by the character itself."""
    keys: list[Key] = []
    i = 0
    while i < len(data):
        byte = data[i]
        if byte == ESC:
            key, i = _escape(data, i)
            keys.append(key)
            continue
        if byte in _CONTROL_NAMES:
            keys.append(Key(_CONTROL_NAMES[byte], data[i:i + 1]))
            i += 1
            continue
        if byte < 0x20:
            keys.append(Key(f"ctrl-{chr(byte + 0x60)}", data[i:i + 1]))
            i += 1
            continue
        # One UTF-8 character: its length follows from the lead byte.
        length = 1 if byte < 0x80 else 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
        chunk = data[i:i + length]
        keys.append(Key(chunk.decode("utf-8", errors="replace"), chunk))
        i += length
    return keys


#: (key, label, short label) for the footer while the guest is stopped.
FOOTER_PAUSED: tuple[tuple[str, str, str], ...] = (
    ("s", "step", "step"), ("n", "next exit", "next"), ("c", "continue", "cont"),
    ("p", "pause", "pause"), ("b", "breakpoint", "break"), ("g", "go to memory", "mem"),
    ("v", "view", "view"), ("t", "next vCPU", "vCPU"), ("Tab", "console", "console"),
    ("?", "help", "help"), ("q", "quit", "quit"),
)
#: ... and, stopped while recording (``r``), the keys that go back, after ``c``.
FOOTER_REVERSE: tuple[tuple[str, str, str], ...] = (
    ("S", "step back", "back"), ("C", "reverse continue", "rev"),
)
#: Keys of FOOTER_PAUSED that only mean something with several vCPUs.
SMP_ONLY_KEYS = frozenset({"t"})
#: ... and while it runs (any other key pauses too).
FOOTER_RUNNING: tuple[tuple[str, str, str], ...] = (
    ("p", "pause", "pause"), ("Tab", "console", "console"), ("v", "view", "view"),
    ("?", "help", "help"), ("q", "quit", "quit"),
)
FOOTER_CONSOLE = "keys go to the guest's serial port · Ctrl-] back to the debugger"

HELP_TEXT = """\
KEYS
 s      step one instruction (KVM single-step); changed registers get a *
 n      run to the next VM exit: the guest runs until it needs the VMM
 c      continue until a breakpoint, the guest's end, or a pause
 r      record every instruction (on/off; c then single-steps): S and C go back
 S      step one instruction back (s redoes it)   C  back to the last breakpoint
 p      pause a running guest (any key but Tab, v and ? pauses it too)
 b      toggle a breakpoint: address or symbol, then Enter (empty: at RIP)
 g      memory panel: 0x1000 (linear), p:0x1000 (guest-physical), rip, rsp
 t      with --smp N: show the next vCPU; s, n and c then run it alone
        (the others stay paused); breakpoints apply to every vCPU
 ↑ ↓ PgUp PgDn  scroll the memory panel     v  next side panel
 Tab    console focus: type into the guest's serial port; Ctrl-] comes back
 ?      this help                           q  quit (pauses the guest first)
PANELS
 registers     KVM_GET_REGS/SREGS: flags and CR0/CR4/EFER bits by name
 code at RIP   disassembly in the CPU's mode; → next to run, ● breakpoint
 guest output  bytes the guest wrote to COM1 (0x3f8) and port 0xe9
 VM exits      guest exits (not kicks): reason, RIP, port, what it means
 statistics    exits by reason and by device; exits per interval over time
 devices       UART registers, FIFO levels; virtio status, queue indices
 memory        hexdump of guest RAM, through the page tables or physical
"""
