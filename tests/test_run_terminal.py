"""Every command that puts the terminal in raw mode gives it back, however it
ends: ``minikvm run`` after Ctrl-C, SIGTERM and SIGHUP, after Ctrl-D; ``minikvm
tui`` after SIGHUP (tests/test_tui_terminal.py holds its other endings).

Each test runs the command in a child process whose controlling terminal is
a pseudo-terminal we hold, and compares the terminal's settings before and after.
"""

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
import time

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.kvm


class Terminal:
    """A command on a pty of its own: its session's controlling terminal,
    so that Ctrl-C typed on it is SIGINT for the command."""

    def __init__(self, *args: str) -> None:
        self.master, self.slave = os.openpty()
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
        self.before = termios.tcgetattr(self.slave)
        env = dict(os.environ, TERM="xterm-256color", PYTHONPATH=str(ROOT))

        def take_the_terminal() -> None:
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.process = subprocess.Popen([sys.executable, "-m", "minikvm", *args],
                                        stdin=self.slave, stdout=self.slave,
                                        stderr=self.slave, cwd=ROOT, env=env,
                                        start_new_session=True, preexec_fn=take_the_terminal)
        self.output = b""

    def raw(self) -> bool:
        return not termios.tcgetattr(self.slave)[3] & (termios.ICANON | termios.ECHO)

    def wait_until_raw(self, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while not self.raw() and time.monotonic() < deadline:
            self.read(0.05)
        return self.raw()

    def read(self, seconds: float) -> None:
        ready, _, _ = select.select([self.master], [], [], seconds)
        if ready:
            try:
                self.output += os.read(self.master, 65536)
            except OSError:
                pass

    def read_until(self, needle: bytes, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while needle not in self.output and time.monotonic() < deadline:
            self.read(0.1)
        return needle in self.output

    def finish(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while self.process.poll() is None and time.monotonic() < deadline:
            self.read(0.1)
        if self.process.poll() is None:
            self.process.kill()
        self.read(0.3)
        return self.process.wait()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass


@pytest.fixture
def terminal():
    made: list[Terminal] = []

    def start(*args: str) -> Terminal:
        made.append(Terminal(*args))
        return made[-1]

    yield start
    for item in made:
        item.close()


@pytest.mark.parametrize("signum, status", [
    (signal.SIGTERM, 143), pytest.param(signal.SIGHUP, 129, marks=pytest.mark.slow)])
def test_a_signal_to_run_gives_the_terminal_back(guests, terminal, signum, status):
    tty = terminal("run", str(guests / "serial_echo.bin"))
    assert tty.wait_until_raw(), tty.output[-2000:]
    tty.process.send_signal(signum)
    assert tty.finish() == status
    assert termios.tcgetattr(tty.slave) == tty.before
    assert f"terminated by {signal.Signals(signum).name}".encode() in tty.output


@pytest.mark.slow
def test_ctrl_c_in_run_gives_the_terminal_back(guests, terminal):
    tty = terminal("run", str(guests / "spin.bin"))
    assert tty.wait_until_raw(), tty.output[-2000:]
    os.write(tty.master, b"\x03")            # ISIG stays on in run: Ctrl-C is SIGINT
    assert tty.finish() == 130
    assert termios.tcgetattr(tty.slave) == tty.before
    assert b"interrupted" in tty.output


@pytest.mark.slow
def test_typed_lines_are_echoed_on_lines_of_their_own_and_ctrl_d_ends_with_0(guests, terminal):
    tty = terminal("run", str(guests / "serial_echo.bin"))
    assert tty.wait_until_raw(), tty.output[-2000:]
    os.write(tty.master, b"one\r")           # Enter sends CR, as on any terminal
    assert tty.read_until(b"\n"), tty.output
    # The guest echoes CR LF; the host terminal's ONLCR (output processing
    # stays on) shows its LF as CR LF: the next line starts on a line of its own.
    assert re.fullmatch(rb"one\r+\n", tty.output), tty.output
    os.write(tty.master, b"\x04")
    assert tty.finish() == 0
    assert termios.tcgetattr(tty.slave) == tty.before
    assert b"minikvm:" not in tty.output     # the guest ended it: nothing to explain


@pytest.mark.slow
def test_sighup_to_the_tui_gives_the_terminal_back(guests, terminal):
    tty = terminal("tui", str(guests / "spin.bin"))
    assert tty.wait_until_raw(), tty.output[-2000:]
    assert tty.read_until(b"code at RIP"), tty.output[-2000:]
    tty.process.send_signal(signal.SIGHUP)
    assert tty.finish() == 129
    assert termios.tcgetattr(tty.slave) == tty.before
