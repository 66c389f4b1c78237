"""``minikvm lesson list | show NN | check NN [--file PATH]``.

``list`` prints the lessons and how to run each; ``show NN`` prints an
exercise's task; ``check NN`` runs the checker of :mod:`minikvm.lessons` on
the learner's file (by default the starting file's name in the current
folder) and prints PASSED or NOT YET with the checker's sentences.

``check`` has a status scale of its own, :class:`CheckStatus` -- 0 passed,
1 not yet, 2 bad usage -- for scripts and editors that run it after every
save; its 1 means "not yet", not "KVM unavailable" as for ``run``.
"""

from __future__ import annotations

import argparse
import enum
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from minikvm.lessons.catalog import LessonInfo

__all__ = ["CheckStatus", "add_arguments", "run"]

HELP = "the lessons: list, show NN, check NN [--file PATH]"


class CheckStatus(enum.IntEnum):
    """Exit statuses of ``minikvm lesson`` (not those of ``minikvm run``)."""

    PASSED = 0    #: the check passed (or ``list``/``show`` did their job)
    NOT_YET = 1   #: the learner's file does not do what the task asks, yet
    USAGE = 2     #: no such lesson, no exercise, no file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``lesson`` subcommand's own subcommands: ``list``, ``show``, ``check``."""
    sub = parser.add_subparsers(dest="lesson_command", metavar="ACTION")
    sub.required = True
    sub.add_parser("list", help="the lessons, in order, and how to run each")
    show = sub.add_parser("show", help="print the task of exercise NN")
    show.add_argument("number", metavar="NN", help="lesson number, e.g. 03")
    check = sub.add_parser("check", help="check your solution of exercise NN")
    check.add_argument("number", metavar="NN", help="lesson number, e.g. 03")
    check.add_argument("--file", default=None, metavar="PATH",
                       help="your solution (default: the starting file's name in the "
                            "current folder, e.g. ./03_port_io.S)")


def _print_list(console: Console) -> int:
    from rich.table import Table

    from minikvm.lessons.catalog import LESSONS

    # Commands are never cut or broken (a person copies them): they get a
    # line of their own under the title, which wraps instead.
    table = Table(title="minikvm lessons (lessons/README.md)", title_justify="left",
                  show_lines=True)
    table.add_column("NN", no_wrap=True)
    table.add_column("lesson and how to run it")
    for lesson in LESSONS:
        commands = f"python lessons/{lesson.script.name}"
        if lesson.starter:
            commands += f"\nexercise: minikvm lesson check {lesson.number}"
        table.add_row(lesson.number, f"{lesson.title}\n[bold]{commands}[/bold]")
    console.print(table)
    return CheckStatus.PASSED


def _exercise_or_error(number: str, console: Console) -> LessonInfo | None:
    from minikvm.lessons.catalog import EXERCISES, find_lesson

    lesson = find_lesson(number)
    if lesson is None:
        console.print(f"minikvm: there is no lesson {number!r} (see minikvm lesson list)")
        return None
    if lesson.starter is None:
        console.print(f"minikvm: lesson {lesson.number} has no exercise; exercises belong to "
                      f"lessons {', '.join(EXERCISES)}")
        return None
    if not lesson.starter_path.exists():
        console.print(f"minikvm: {lesson.starter_path} is missing: the lessons live in the "
                      "minikvm source tree (git clone it and pip install -e .)")
        return None
    return lesson


def _shown(path: Path) -> str:
    """``path`` relative to the current folder when that is shorter."""
    relative = os.path.relpath(path)
    return relative if len(relative) < len(str(path)) else str(path)


def run(args: argparse.Namespace) -> int:
    """``minikvm lesson ...``; returns a :class:`CheckStatus`."""
    from rich.console import Console

    console = Console(highlight=False)
    if args.lesson_command == "list":
        return _print_list(console)
    lesson = _exercise_or_error(args.number, console)
    if lesson is None:
        return CheckStatus.USAGE
    if args.lesson_command == "show":
        # Only here: the Markdown renderer brings markdown-it and pygments,
        # ~120 ms of imports that a check (run after every save, or by a
        # teacher over a class's files) does not need.
        from rich.markdown import Markdown

        console.print(Markdown(lesson.task.read_text()))
        return CheckStatus.PASSED
    path = Path(args.file) if args.file else Path(lesson.starter)
    if not path.is_file():
        if args.file:
            console.print(f"minikvm: {path}: no such file", markup=False)
        else:
            console.print(f"minikvm: there is no ./{lesson.starter} here. Start from the "
                          f"exercise's file:\n    cp {_shown(lesson.starter_path)} .\n"
                          "edit it, and run this again (or name your file with --file PATH). "
                          f"The task: {_shown(lesson.task)}", markup=False)
        return CheckStatus.USAGE
    from minikvm.lessons.checker import check_exercise

    console.print(f"Exercise {lesson.number}: {lesson.title}", style="bold", markup=False)
    console.print(f"checking {path} ...", markup=False)
    verdict = check_exercise(lesson.number, path)
    mark = "[bold green]PASSED[/]" if verdict.passed else "[bold red]NOT YET[/]"
    console.print(mark)
    console.print(verdict.message, markup=False)
    for detail in verdict.details:
        console.print(detail, markup=False)
    return CheckStatus.PASSED if verdict.passed else CheckStatus.NOT_YET
