"""``minikvm tui`` in a real terminal: tmux runs it, we press keys and read the pane.

This is the test a person would do by hand: start the TUI on the hello
guest, step twice, run to the next exit, continue, quit -- and check at each
point that the screen says what it should (register values, the exit's
explanation, the guest's output), then that the terminal works normally
afterwards (echo and line editing back on).

It uses its own tmux server (``-L``) so it never touches a user's sessions,
and polls the pane instead of sleeping fixed times, so a loaded machine only
makes it slower.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.kvm, pytest.mark.slow,
              pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")]

ROOT = Path(__file__).resolve().parent.parent
WAIT = 60.0   # seconds: generous for a loaded 2-core machine


class Pane:
    def __init__(self, server: str, name: str) -> None:
        self.server = server
        self.name = name

    def tmux(self, *args: str) -> str:
        result = subprocess.run(["tmux", "-L", self.server, *args], capture_output=True,
                                text=True, timeout=30)
        return result.stdout

    def text(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", self.name)

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", self.name, *keys)

    def wait_for(self, *needles: str, timeout: float = WAIT) -> str:
        """Poll the pane until every needle is on it; return the pane text."""
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.text()
            if all(needle in text for needle in needles):
                return text
            time.sleep(0.1)
        missing = [needle for needle in needles if needle not in text]
        raise AssertionError(f"not on the screen after {timeout}s: {missing}\n{text}")


@pytest.fixture
def tui_pane(guests, tmp_path):
    server = f"minikvm-test-{os.getpid()}"
    stty_file = tmp_path / "stty.txt"
    tui = " ".join(shlex.quote(part) for part in
                   [sys.executable, "-m", "minikvm", "tui", str(guests / "hello.bin")])
    script = (f"{tui}; echo \"TUI EXITED $?\"; stty -a > {shlex.quote(str(stty_file))}; "
              "read line; echo \"GOT:$line\"; sleep 60")
    env = dict(os.environ, PYTHONPATH=str(ROOT), TERM="xterm-256color")
    subprocess.run(["tmux", "-L", server, "-f", "/dev/null", "new-session", "-d", "-s", "tui",
                    "-x", "100", "-y", "30", "-c", str(ROOT), "sh", "-c", script],
                   check=True, env=env, timeout=30)
    try:
        yield Pane(server, "tui"), stty_file
    finally:
        subprocess.run(["tmux", "-L", server, "kill-server"], capture_output=True, timeout=30)


def test_step_step_next_continue_quit_in_a_real_terminal(tui_pane):
    pane, stty_file = tui_pane
    screen = pane.wait_for("code at RIP", "PAUSED", "eip 00001000")
    assert "real mode (16-bit)" in screen

    pane.keys("s")
    pane.wait_for("steps 1", "eip 00001001*")          # cld
    pane.keys("s")
    screen = pane.wait_for("steps 2", "eip 00001003*")  # xor ax, ax
    assert "stepped 'xor ax, ax' at 0x1001" in screen

    pane.keys("n")
    # The exit log shows the exit while the action is still finishing (the
    # status line says STEPPING); the registers follow once it is PAUSED.
    screen = pane.wait_for("debug console: the guest prints 'H'", "PAUSED",
                           "eax 00000048*")             # 'H' in AL
    assert "IO_OUT" in screen and "0x1011" in screen

    pane.keys("c")
    screen = pane.wait_for("FINISHED", "Hello from a KVM guest")
    assert "the guest halted (hlt with interrupts off)" in screen

    pane.keys("q")
    pane.wait_for("TUI EXITED 0")

    # The terminal is usable: the line discipline echoes and edits lines again.
    deadline = time.monotonic() + WAIT
    while not (stty_file.exists() and stty_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    settings = stty_file.read_text()
    assert re.search(r"(?<![-\w])icanon\b", settings), settings
    assert re.search(r"(?<![-\w])echo\b", settings), settings
    pane.keys("typed line", "Enter")
    screen = pane.wait_for("GOT:typed line")
    assert "typed line\n" in screen                     # echoed as typed
