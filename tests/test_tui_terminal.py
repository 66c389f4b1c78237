"""The terminal is always given back: after q, after an exception while
drawing, after SIGTERM. Each test runs the TUI in a child process on a
pseudo-terminal and compares the terminal's settings before and after."""

from __future__ import annotations

import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import textwrap
import time
from pathlib import Path

import pytest

from minikvm.tui.app import RESTORE_SEQUENCE

pytestmark = pytest.mark.kvm

ROOT = Path(__file__).resolve().parent.parent

CHILD = textwrap.dedent("""
    import sys
    from minikvm.hostio import BufferSink
    from minikvm.machine import Machine
    from minikvm.tui.app import App
    from minikvm.tui.render import render_screen
    from minikvm.tui.session import Session

    def boom(state, width, height):
        raise RuntimeError("boom while drawing")

    sink = BufferSink()
    machine = Machine(output=sink)
    machine.load_guest(sys.argv[1])
    session = Session(machine, guest="spin.bin", console=sink)
    import time
    if sys.argv[2] == "run":
        session.start("continue")
    app = App(session, render=boom if sys.argv[2] == "boom" else render_screen)
    started = time.monotonic()
    app.run()
    print(f"FRAMES {app.frames} IN {time.monotonic() - started:.3f} S")
    session.close()
    print("CHILD DONE")
""")


class PtyChild:
    """The TUI in a child process whose terminal is a pty we hold."""

    def __init__(self, guest: Path, mode: str) -> None:
        self.master, self.slave = os.openpty()
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
        self.before = termios.tcgetattr(self.slave)
        env = dict(os.environ, TERM="xterm-256color", PYTHONPATH=str(ROOT), COLUMNS="100",
                   LINES="30")
        self.process = subprocess.Popen([sys.executable, "-c", CHILD, str(guest), mode],
                                        stdin=self.slave, stdout=self.slave, stderr=self.slave,
                                        cwd=ROOT, env=env, close_fds=True)
        self.output = b""

    def read_until(self, needle: bytes, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while needle not in self.output and time.monotonic() < deadline:
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if ready:
                try:
                    self.output += os.read(self.master, 65536)
                except OSError:
                    break
        return needle in self.output

    def finish(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while self.process.poll() is None and time.monotonic() < deadline:
            self.read_until(b"\x00never\x00", 0.1)
        if self.process.poll() is None:
            self.process.kill()
        self.read_until(b"\x00never\x00", 0.3)
        return self.process.wait()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def child(guests):
    made = []

    def start(mode: str) -> PtyChild:
        made.append(PtyChild(guests / "spin.bin", mode))
        return made[-1]

    yield start
    for item in made:
        item.close()


def lflag(attrs: list) -> int:
    return attrs[3]


def test_q_quits_and_gives_the_terminal_back(child):
    tui = child("paused")
    assert tui.read_until(b"code at RIP"), tui.output[-2000:]
    during = termios.tcgetattr(tui.slave)
    assert not lflag(during) & (termios.ICANON | termios.ECHO)   # raw while it runs
    os.write(tui.master, b"q")
    assert tui.finish() == 0
    assert b"CHILD DONE" in tui.output
    assert termios.tcgetattr(tui.slave) == tui.before
    assert lflag(tui.before) & termios.ICANON and lflag(tui.before) & termios.ECHO
    assert RESTORE_SEQUENCE.encode() in tui.output.split(b"code at RIP")[-1]


@pytest.mark.slow
def test_q_while_the_guest_runs_pauses_it_and_quits(child):
    tui = child("run")
    assert tui.read_until(b"RUNNING"), tui.output[-2000:]
    time.sleep(1.0)                               # let it draw a while
    os.write(tui.master, b"q")
    assert tui.finish() == 0
    assert termios.tcgetattr(tui.slave) == tui.before
    # While the guest ran, the screen was redrawn at most ~10 times a second.
    frames, seconds = re.search(rb"FRAMES (\d+) IN ([\d.]+) S", tui.output).groups()
    assert 2 <= int(frames) <= 10 * float(seconds) + 3


@pytest.mark.slow
def test_an_exception_while_drawing_still_restores_the_terminal(child):
    tui = child("boom")
    assert tui.finish() != 0
    assert b"boom while drawing" in tui.output            # the traceback is readable ...
    assert termios.tcgetattr(tui.slave) == tui.before     # ... on a sane terminal
    shown_at = tui.output.rfind(b"\x1b[?25h")
    assert shown_at != -1 and shown_at < tui.output.find(b"Traceback")


@pytest.mark.slow
def test_sigterm_restores_the_terminal(child):
    tui = child("run")
    assert tui.read_until(b"RUNNING"), tui.output[-2000:]
    tui.process.send_signal(signal.SIGTERM)
    assert tui.finish() == 128 + signal.SIGTERM
    assert termios.tcgetattr(tui.slave) == tui.before
