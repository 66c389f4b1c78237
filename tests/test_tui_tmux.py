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

import itertools
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
_SERVERS = itertools.count()


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


def start_tui(guest: Path, stty_file: Path, size: tuple[int, int] = (100, 30),
              before: str = "", options: tuple[str, ...] = ()) -> Pane:
    """The TUI on ``guest`` (with ``options``) in a new tmux server;
    afterwards the shell says how it exited, saves ``stty -a`` and echoes a
    line it reads."""
    server = f"minikvm-test-{os.getpid()}-{next(_SERVERS)}"   # never one still closing
    tui = " ".join(shlex.quote(part) for part in
                   [sys.executable, "-m", "minikvm", "tui", str(guest), *options])
    script = (f"{before}{tui}; echo \"TUI EXITED $?\"; "
              f"stty -a > {shlex.quote(str(stty_file))}; "
              "read line; echo \"GOT:$line\"; sleep 60")
    env = dict(os.environ, PYTHONPATH=str(ROOT), TERM="xterm-256color")
    subprocess.run(["tmux", "-L", server, "-f", "/dev/null", "new-session", "-d", "-s", "tui",
                    "-x", str(size[0]), "-y", str(size[1]), "-c", str(ROOT), "sh", "-c", script],
                   check=True, env=env, timeout=30)
    return Pane(server, "tui")


@pytest.fixture
def tui_pane(guests, tmp_path):
    stty_file = tmp_path / "stty.txt"
    pane = start_tui(guests / "hello.bin", stty_file)
    try:
        yield pane, stty_file
    finally:
        pane.tmux("kill-server")


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


def test_after_a_resize_q_leaves_no_pieces_of_the_screen(guests, tmp_path):
    # tmux keeps the rows an alternate screen gained while it was larger; the
    # TUI erases its screen before leaving it, so nothing of the frame remains.
    pane = start_tui(guests / "hello.bin", tmp_path / "stty.txt", size=(80, 24),
                     before="echo BEFORE THE TUI; ")
    try:
        pane.wait_for("code at RIP", "PAUSED")
        pane.tmux("resize-window", "-t", "tui", "-x", "120", "-y", "36")
        pane.wait_for(" minikvm ", "go to memory")            # redrawn in the wide form
        pane.keys("q")
        screen = pane.wait_for("TUI EXITED 0")
        assert [line for line in screen.splitlines() if line.strip()] == [
            "BEFORE THE TUI", "TUI EXITED 0"], screen
    finally:
        pane.tmux("kill-server")


def test_t_picks_the_woken_ap_and_s_steps_it_in_a_real_terminal(guests, tmp_path):
    # The SMP guest at --smp 2: vCPU 0 runs alone until it has sent INIT,
    # SIPI, SIPI; then t shows vCPU 1 (at the trampoline, 0x800:0) and s
    # steps it, vCPU 0 staying where it was paused.
    pane = start_tui(guests / "smp.elf", tmp_path / "stty.txt", size=(120, 36),
                     options=("--smp", "2"))
    try:
        pane.wait_for("vCPU 0 of 2", "vCPU 0/2 (runnable) registers", "PAUSED")
        pane.keys("c")
        pane.wait_for("RUNNING")
        time.sleep(1.0)                      # the SIPIs go out in the first few ms
        pane.keys("p")
        pane.wait_for("vCPU 0: paused at RIP")
        pane.keys("t")
        screen = pane.wait_for("vCPU 1 of 2", "vCPU 1/2 (runnable) registers")
        assert "eip 00000000" in screen and "cs 0800" in screen
        pane.keys("s")
        pane.wait_for("stepped 'cli' at 0x8000", "eip 00000001*")
        pane.keys("q")
        pane.wait_for("TUI EXITED 0")
    finally:
        pane.tmux("kill-server")
