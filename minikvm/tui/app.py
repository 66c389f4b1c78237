"""The interactive loop: a raw terminal, keys, and frames at most 10 times a second.

The UI thread (this module) owns the terminal; the guest runs on the vCPU
thread of a :class:`~minikvm.tui.session.Session`. Each turn of the loop

1. collects a finished action from the vCPU thread (``session.poll()``),
2. draws a frame when something changed -- while the guest runs freely, at
   most every :data:`FRAME_INTERVAL` seconds, from a snapshot made of
   counters and ring buffers, so drawing never slows the guest much,
3. waits for a key with ``select`` and a short timeout, and acts on it.

The terminal is put in a raw-ish mode (no echo, no line editing, no signals
from Ctrl-C: each key arrives at once) with output processing left on, and
the screen switches to the alternate buffer. :class:`TerminalMode` undoes
both however the loop ends: normally, by an exception (a bug while drawing),
by SIGTERM/SIGHUP, or at interpreter exit (``atexit``).

Before leaving the alternate buffer the loop erases it (:data:`ERASE_SEQUENCE`).
A terminal that was made *larger* while the TUI ran does not always give
the old screen back whole: tmux, for one, keeps the rows the alternate
screen gained and shows them over the shell's screen afterwards -- pieces of
the last frame. An empty alternate screen leaves nothing behind.
"""

from __future__ import annotations

import atexit
import os
import select
import signal
import sys
import termios
import time
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import IO, Any

from minikvm.tui.keys import Key, parse_keys
from minikvm.tui.render import has_exit_panel, render_screen
from minikvm.tui.session import Session
from minikvm.tui.state import Focus, PromptView, SideView, TuiState

__all__ = ["App", "ERASE_SEQUENCE", "FRAME_INTERVAL", "RESTORE_SEQUENCE", "TerminalMode"]

#: At most 10 frames a second while the guest runs.
FRAME_INTERVAL = 0.1
#: How long ``select`` waits for a key when nothing runs (poll for a finished step).
_IDLE_WAIT = 0.05
#: Show cursor, leave the alternate screen (DEC private modes 25 and 1049).
RESTORE_SEQUENCE = "\x1b[?25h\x1b[?1049l"
#: Cursor home, erase the whole display (ECMA-48 CUP and ED 2): written while
#: the alternate screen is still on, just before leaving it.
ERASE_SEQUENCE = "\x1b[H\x1b[2J"

_BREAK_PROMPT = "breakpoint at (address or symbol; empty: RIP)"
_MEMORY_PROMPT = "memory at (0x1000 linear, p:0x1000 physical, rip, rsp)"


class TerminalMode:
    """Raw key input on ``fd`` for the duration of a ``with`` block.

    ``ICANON`` off: keys arrive one by one, not a line at a time; ``ECHO``
    off: the UI draws what it wants; ``ISIG`` off: Ctrl-C is a key (the UI
    decides: pause), not SIGINT; ``IXON``/``ICRNL`` off: Ctrl-S/Ctrl-Q and
    Enter reach us unchanged. Output post-processing (``OPOST``) stays on,
    so ``\\n`` still starts a new line for rich.
    """

    def __init__(self, fd: int, output: IO[str] | None = None) -> None:
        self.fd = fd
        self.output = output if output is not None else sys.stdout
        self._saved: list[Any] | None = None
        self._old_handlers: dict[int, Any] = {}

    def __enter__(self) -> TerminalMode:
        self._saved = termios.tcgetattr(self.fd)
        raw = termios.tcgetattr(self.fd)
        raw[0] &= ~(termios.IXON | termios.ICRNL | termios.INLCR | termios.IGNCR
                    | termios.BRKINT | termios.ISTRIP | termios.INPCK)
        raw[3] &= ~(termios.ECHO | termios.ICANON | termios.ISIG | termios.IEXTEN)
        raw[6][termios.VMIN] = 1
        raw[6][termios.VTIME] = 0
        atexit.register(self.restore)
        termios.tcsetattr(self.fd, termios.TCSANOW, raw)
        for signum in (signal.SIGTERM, signal.SIGHUP):
            try:
                self._old_handlers[signum] = signal.signal(signum, self._on_signal)
            except (ValueError, OSError):   # not the main thread
                pass
        return self

    @staticmethod
    def _on_signal(signum: int, frame: FrameType | None) -> None:
        # Unwind through the finally blocks, which restore the terminal.
        raise SystemExit(128 + signum)

    def restore(self) -> None:
        """Put the terminal back as it was (safe to call more than once)."""
        saved, self._saved = self._saved, None
        for signum, handler in self._old_handlers.items():
            try:
                signal.signal(signum, handler)
            except (ValueError, OSError, TypeError):
                pass
        self._old_handlers.clear()
        if saved is None:
            return
        try:
            self.output.write(RESTORE_SEQUENCE)
            self.output.flush()
        except (OSError, ValueError):
            pass
        try:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, saved)
        except termios.error:
            pass
        atexit.unregister(self.restore)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.restore()


class App:
    """The TUI on a terminal: ``App(session).run()``.

    ``render`` draws a state at a size (default :func:`render_screen`; tests
    pass one that fails, to check the terminal is restored anyway).
    """

    def __init__(self, session: Session, *, input_fd: int | None = None,
                 console: Any = None,
                 render: Callable[[TuiState, int, int], Any] = render_screen) -> None:
        from rich.console import Console
        self.session = session
        self.input_fd = sys.stdin.fileno() if input_fd is None else input_fd
        self.console = console if console is not None else Console()
        self.render = render
        self.quit = False
        self.dirty = True
        self.frames = 0

    # -- keys --------------------------------------------------------------------------

    def _prompt_key(self, key: Key) -> None:
        session = self.session
        prompt = session.prompt
        assert prompt is not None
        if key.name in ("escape", "ctrl-c"):
            session.prompt = None
            session.message = "cancelled"
        elif key.name == "enter":
            session.prompt = None
            if prompt.label == _BREAK_PROMPT:
                session.toggle_breakpoint(prompt.text)
            else:
                session.set_memory(prompt.text or "rip")
        elif key.name == "backspace":
            session.prompt = PromptView(prompt.label, prompt.text[:-1])
        elif len(key.name) == 1 and key.name.isprintable() and len(prompt.text) < 64:
            session.prompt = PromptView(prompt.label, prompt.text + key.name)

    def _cycle_side(self) -> None:
        session = self.session
        order = list(SideView)
        if has_exit_panel(*self.console.size):
            order.remove(SideView.EXITS)
        current = session.side if session.side in order else order[0]
        session.side = order[(order.index(current) + 1) % len(order)]

    def handle(self, key: Key) -> None:
        """Act on one key."""
        session = self.session
        self.dirty = True
        if session.prompt is not None:
            self._prompt_key(key)
            return
        if session.show_help:
            session.show_help = False
            return
        if session.focus is Focus.CONSOLE:
            if key.name == "ctrl-]":
                session.focus = Focus.DEBUGGER
                session.message = "back to the debugger"
            else:
                session.send_console(key.data)
            return
        name = key.name
        if name == "tab":
            session.focus = Focus.CONSOLE
            session.message = "console focus: what you type goes to the guest; Ctrl-] returns"
        elif name == "v":
            self._cycle_side()
        elif name in ("?", "h", "f1"):
            session.show_help = True
        elif name == "ctrl-l":
            self.console.clear()
        elif name in ("q", "ctrl-d"):
            if session.busy:
                session.pause()
            self.quit = True
        elif session.busy:
            session.pause()          # any other key pauses a running guest
        elif name == "s":
            session.start("step")
        elif name == "n":
            session.start("next")
        elif name == "c":
            session.start("continue")
        elif name in ("r", "S", "C"):     # reverse execution (docs/reverse.md)
            session.start({"r": "record", "S": "step-back", "C": "reverse-continue"}[name])
        elif name in ("p", " ", "ctrl-c"):
            if session.ended:
                session.message = f"the guest has ended ({session.end_reason}); q quits"
            else:
                session.message = "the guest is already paused (c continues)"
        elif name == "t":
            if session.vcpus > 1:
                session.select_vcpu()
            else:
                session.message = "one vCPU: nothing to pick (minikvm tui --smp N has more)"
        elif name == "b":
            session.prompt = PromptView(_BREAK_PROMPT, "")
        elif name == "g":
            session.prompt = PromptView(_MEMORY_PROMPT, "")
        elif name in ("up", "down", "pageup", "pagedown"):
            session.scroll_memory({"up": -1, "down": 1, "pageup": -8, "pagedown": 8}[name])
            if not has_exit_panel(*self.console.size) or session.side is not SideView.MEMORY:
                session.side = SideView.MEMORY

    # -- the loop ------------------------------------------------------------------------

    def draw(self, live: Any) -> None:
        width, height = self.console.size
        live.update(self.render(self.session.snapshot(), width, height), refresh=True)
        self.frames += 1
        self.dirty = False

    def _read_keys(self, timeout: float) -> list[Key]:
        try:
            ready, _, _ = select.select([self.input_fd], [], [], max(timeout, 0.0))
        except InterruptedError:
            return []
        if not ready:
            return []
        data = os.read(self.input_fd, 1024)
        if not data:   # the terminal went away
            self.quit = True
            return []
        return parse_keys(data)

    def run(self) -> int:
        """Until ``q``: returns 0. The terminal is restored however this ends."""
        from rich.live import Live
        with TerminalMode(self.input_fd, self.console.file), \
                Live(console=self.console, screen=True, auto_refresh=False,
                     redirect_stdout=False, redirect_stderr=False, transient=True) as live:
            try:
                self._loop(live)
            finally:
                self._erase()
        return 0

    def _loop(self, live: Any) -> None:
        session = self.session
        last_draw = 0.0
        last_size = self.console.size
        while not self.quit:
            if session.poll():
                self.dirty = True
            session.tick()
            now = time.monotonic()
            size = self.console.size
            if size != last_size:
                self.dirty, last_size = True, size
            due = session.busy and now - last_draw >= FRAME_INTERVAL
            if self.dirty or due:
                self.draw(live)
                last_draw = now
            wait = FRAME_INTERVAL - (time.monotonic() - last_draw) if session.busy else _IDLE_WAIT
            for key in self._read_keys(min(max(wait, 0.005), _IDLE_WAIT * 2)):
                self.handle(key)
                if self.quit:
                    break

    def _erase(self) -> None:
        """Empty the alternate screen before it is left (see the module docstring)."""
        try:
            self.console.file.write(ERASE_SEQUENCE)
            self.console.file.flush()
        except (OSError, ValueError):
            pass
