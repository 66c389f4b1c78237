"""What every lesson shares: narration, checkpoints, and the guests.

A lesson is a script (``python lessons/NN_topic.py``) that does one thing with
the real KVM and tells the story as it goes: what is about to happen, what
KVM returned, and why. After each result that matters it prints a
*checkpoint* line and checks the value::

    CHECKPOINT first exit: KVM_EXIT_IO (2)

``--quiet`` prints only those lines. The tests run every lesson that way and
compare the lines with ``lessons/expected/NN.txt``, so a checkpoint holds
only what every host gives: no timings, no host addresses, nothing that
depends on the CPU or on which KVM runs underneath. Facts about this host
are narrated, never checkpointed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

LESSONS_DIR = Path(__file__).resolve().parent
ROOT = LESSONS_DIR.parent
GUESTS_DIR = ROOT / "guests"
# A lesson runs from a source checkout, installed or not.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.markdown import Markdown  # noqa: E402
from rich.markup import escape  # noqa: E402
from rich.syntax import Syntax  # noqa: E402
from rich.table import Table  # noqa: E402

__all__ = ["CheckpointError", "Lesson", "ROOT", "hexdump", "run_lesson"]

_MISSING = object()


class CheckpointError(AssertionError):
    """A lesson got a value other than the one it teaches."""


def hexdump(data: bytes, base: int = 0, width: int = 16) -> str:
    """``0x1000: 0f 01 ...  |..|`` lines, the way a debugger shows memory."""
    lines = []
    for offset in range(0, len(data), width):
        chunk = data[offset:offset + width]
        text = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in chunk)
        lines.append(f"{base + offset:#07x}: {chunk.hex(' '):<{3 * width - 1}}  |{text}|")
    return "\n".join(lines)


class Lesson:
    """One lesson run: parses ``--quiet``, narrates, checks checkpoints."""

    def __init__(self, number: str, title: str, argv: Sequence[str] | None = None) -> None:
        parser = argparse.ArgumentParser(prog=f"python lessons/{number}_*.py",
                                         description=f"Lesson {number}: {title}")
        parser.add_argument("--quiet", action="store_true",
                            help="print only the CHECKPOINT lines (what the tests compare)")
        args = parser.parse_args(argv)
        self.number = number
        self.title = title
        self.quiet: bool = args.quiet
        self.console = Console(highlight=False)
        self.checkpoints = 0
        self._built = False
        self._pending_gap = False
        self._last_kind = ""
        if not self.quiet:
            self.console.rule(f"[bold]Lesson {number}: {escape(title)}")
            self.console.print()

    # -- telling the story -----------------------------------------------------

    def _gap(self) -> None:
        """A blank line after a run of result or checkpoint lines."""
        if self._pending_gap:
            self.console.print()
            self._pending_gap = False
        self._last_kind = ""

    def narrate(self, text: str) -> None:
        """A paragraph or two of Markdown: what happens next and why."""
        if not self.quiet:
            self._gap()
            self.console.print(Markdown(textwrap.dedent(text).strip()))
            self.console.print()

    def section(self, title: str) -> None:
        """A new step of the lesson."""
        if not self.quiet:
            self._gap()
            self.console.rule(f"[bold cyan]{escape(title)}", align="left")
            self.console.print()

    def code(self, source: str, language: str = "python") -> None:
        """Show the code that is about to run (or that the guest runs)."""
        if not self.quiet:
            self._gap()
            self.console.print(Syntax(textwrap.dedent(source).strip("\n").rstrip(), language,
                                      theme="ansi_dark", background_color="default",
                                      word_wrap=True))
            self.console.print()

    def result(self, what: str, value: object) -> None:
        """What KVM (or the guest) answered: ``-> what: value``."""
        if not self.quiet:
            if self._last_kind != "result":
                self._gap()
            self.console.print(f"  [green]->[/] {escape(what)}: [bold]{escape(str(value))}[/]")
            self._pending_gap = True
            self._last_kind = "result"

    def block(self, text: str) -> None:
        """Preformatted text (a hex dump, a page walk), shown as is."""
        if not self.quiet:
            self._gap()
            self.console.print(escape(text), soft_wrap=True)
            self.console.print()

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        if not self.quiet:
            self._gap()
            table = Table(title=title, title_justify="left")
            for column in columns:
                table.add_column(column)
            for row in rows:
                table.add_row(*(escape(str(cell)) for cell in row))
            self.console.print(table)
            self.console.print()

    # -- checking --------------------------------------------------------------

    def checkpoint(self, name: str, value: object, expected: object = _MISSING) -> None:
        """Print ``CHECKPOINT name: value``; stop the lesson if ``value`` is
        not ``expected`` (when one is given)."""
        self.checkpoints += 1
        line = f"CHECKPOINT {name}: {value}"
        if self.quiet:
            print(line, flush=True)
        else:
            if self._last_kind != "checkpoint":
                self._gap()
            self.console.print(f"[bold magenta]{escape(line)}[/]", soft_wrap=True)
            self._pending_gap = True
            self._last_kind = "checkpoint"
        if expected is not _MISSING and value != expected:
            raise CheckpointError(f"checkpoint {name!r}: expected {expected!r}, got {value!r}")

    def finish(self) -> int:
        if not self.quiet:
            self._gap()
            self.console.rule(f"[bold green]Lesson {self.number} done: "
                              f"{self.checkpoints} checkpoints passed")
        return 0

    # -- guests ----------------------------------------------------------------

    def guest(self, name: str) -> Path:
        """The built guest ``guests/build/NAME``, building the guests first
        (``make -C guests``, quietly; make skips what is up to date)."""
        if not self._built:
            result = subprocess.run(["make", "-s", "-C", str(GUESTS_DIR)],
                                    capture_output=True, text=True, timeout=300)
            if result.returncode != 0:
                raise RuntimeError("building the guests failed (make -C guests):\n"
                                   + result.stdout + result.stderr)
            self._built = True
        path = GUESTS_DIR / "build" / name
        if not path.exists():
            raise RuntimeError(f"make -C guests did not produce {path}")
        return path


def run_lesson(main: Callable[[Sequence[str] | None], int]) -> None:
    """Run a lesson's ``main`` as a script: a missing KVM or a failed
    checkpoint is one line on stderr and exit status 1, not a traceback."""
    from minikvm.kvm.errors import KvmUnavailableError

    try:
        status = main(sys.argv[1:])
    except KvmUnavailableError as err:
        print(f"this lesson needs KVM: {err}", file=sys.stderr)
        status = 1
    except CheckpointError as err:
        print(f"lesson stopped: {err}", file=sys.stderr)
        status = 1
    except BrokenPipeError:  # the reader went away (| head): not an error of ours
        sys.stderr.close()
        status = 0
    sys.exit(status)
