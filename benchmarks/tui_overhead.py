"""What the TUI costs a free-running guest: exits per second, with and without it.

The guest (``guests/asm/portloop.S``) writes N times to port 0x80, one VM
exit each, then halts. We time

  (a) ``Machine.run()``: the plain VMM loop (what ``minikvm run`` does);
  (b) the TUI's free run: ``Session.start("continue")`` -- the debugger's
      ``cont`` on the vCPU thread (a job of the runner) with the TUI's exit
      listener attached --
      while this (UI) thread takes a snapshot and renders the full screen
      (120x40, to a console writing nowhere) every 0.1 s, as ``minikvm tui``
      does at most;

  (c) ``Machine.run()`` with the TUI's exit listener (:class:`ExitMonitor`)
      attached and nothing drawn: what the listener itself costs;

and print exits/s for each and the ratios (a)/(b) (target <= 2.0) and
(c)/(b): the TUI's free run against the same loop with its listener
(target <= 1.3; what is left is the debugger's ``cont`` and the frames,
which hold the GIL while they render).

    python benchmarks/tui_overhead.py [--exits N] [--repeat R]
"""

from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402

from benchmarks.common import load_average  # noqa: E402
from benchmarks.exit_latency import _machine, machine_loop  # noqa: E402
from minikvm.hostio import BufferSink  # noqa: E402
from minikvm.tui.monitor import ExitMonitor  # noqa: E402
from minikvm.tui.render import render_screen  # noqa: E402
from minikvm.tui.session import Session  # noqa: E402

FRAME_INTERVAL = 0.1
TARGET = 2.0
TARGET_LISTENER = 1.3


def plain_run(exits: int) -> float:
    """(a) exits per second of ``Machine.run()`` (exit_latency.py's loop (b))."""
    return 1.0 / machine_loop(exits)


def listener_run(exits: int) -> float:
    """(c) exits per second of ``Machine.run()`` with the TUI's listener."""
    with _machine(exits, BufferSink()) as machine:
        monitor = ExitMonitor()
        machine.listeners.append(monitor)
        start = time.perf_counter()
        stop = machine.run(timeout=600)
        elapsed = time.perf_counter() - start
        assert stop.kind.value == "halt", stop
        assert monitor.by_device.get("unclaimed", 0) == exits
    return exits / elapsed


def tui_run(exits: int, width: int = 120, height: int = 40) -> tuple[float, int, float]:
    """(b) exits per second of the TUI's free run with 10 Hz rendering;
    also the frames drawn and the mean seconds per frame."""
    sink = BufferSink()
    with _machine(exits, sink) as machine:
        session = Session(machine, guest="portloop.bin", console=sink)
        console = Console(file=io.StringIO(), width=width, height=height, force_terminal=True,
                          color_system="truecolor")
        frames = 0
        render_time = 0.0
        start = time.perf_counter()
        session.start("continue", timeout=600)
        next_frame = start + FRAME_INTERVAL
        while not session.poll():
            now = time.perf_counter()
            if now >= next_frame:
                session.tick()
                began = time.perf_counter()
                console.print(render_screen(session.snapshot(), width, height))
                console.file.seek(0)
                console.file.truncate()
                render_time += time.perf_counter() - began
                frames += 1
                next_frame = now + FRAME_INTERVAL
            time.sleep(min(0.01, max(0.0, next_frame - time.perf_counter())))
        elapsed = time.perf_counter() - start
        assert session.last_stop is not None and session.last_stop.finished, session.message
        counted = session.monitor.by_device.get("unclaimed", 0)
        assert counted == exits, (counted, exits)
        session.close()
    return exits / elapsed, frames, render_time / max(frames, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exits", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    subprocess.run(["make", "-s", "-C", str(ROOT / "guests")], check=True)
    plain, listened, tui, frames, frame_time = [], [], [], [], []
    for _ in range(args.repeat):
        plain.append(plain_run(args.exits))
        listened.append(listener_run(args.exits))
        rate, count, per_frame = tui_run(args.exits)
        tui.append(rate)
        frames.append(count)
        frame_time.append(per_frame)
    a, b = statistics.median(plain), statistics.median(tui)
    c = statistics.median(listened)
    print(f"exits per run: {args.exits}, runs: {args.repeat} (median shown)")
    print(f"(a) Machine.run()                {a:12,.0f} exits/s")
    print(f"(b) TUI free run, 10 Hz frames   {b:12,.0f} exits/s "
          f"({statistics.median(frames)} frames, {statistics.median(frame_time) * 1e3:.1f} ms each)")
    print(f"(c) Machine.run(), TUI listener  {c:12,.0f} exits/s")
    ratio = a / b
    print(f"(a)/(b) = {ratio:.2f}  (target <= {TARGET})")
    print(f"(c)/(b) = {c / b:.2f}  (target <= {TARGET_LISTENER})")
    print(load_average())
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
