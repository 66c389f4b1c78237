"""Regenerate the picture of the TUI in the docs: ``python -m minikvm.tui.record``.

It is ``minikvm tui guests/build/hello.bin --step 3 --next 5 --record
docs/tui.svg --size 150x42``: the hello guest after three single steps and
five VM exits, in the wide layout that shows every panel: changed registers,
the code at RIP, the exit log with its explanations, the first bytes of
output, statistics, device registers and memory.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

__all__ = ["DOC_ARGS", "main"]

ROOT = Path(__file__).resolve().parent.parent.parent
#: The options the picture is made with (the guest path and output come first).
DOC_ARGS = ("--step", "3", "--next", "5", "--size", "150x42")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    out = Path(argv[0]) if argv else ROOT / "docs" / "tui.svg"
    subprocess.run(["make", "-s", "-C", str(ROOT / "guests")], check=True)
    # The command itself, in a child process: the TUI package never imports
    # the CLI (the CLI imports the TUI).
    return subprocess.run([sys.executable, "-m", "minikvm", "tui",
                           str(ROOT / "guests" / "build" / "hello.bin"), *DOC_ARGS,
                           "--record", str(out)]).returncode


if __name__ == "__main__":
    sys.exit(main())
