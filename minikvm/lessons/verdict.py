"""The checker's answer, and the words it is made of.

A check never answers with a traceback or a bare "wrong": a
:class:`Verdict` is a first sentence saying what the learner's code did (or
that it passed), then details read from the machine -- what the guest
printed, how it stopped, which bits differ. The helpers here put machine
facts into those words the same way in every check.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from minikvm.core.stop import Stop, StopKind

__all__ = ["Verdict", "not_yet", "passed", "printable", "stop_words"]


@dataclass
class Verdict:
    """The checker's answer: passed or not, in sentences for a person."""

    passed: bool
    message: str
    details: list[str] = field(default_factory=list)


def passed(message: str, *details: str) -> Verdict:
    """The exercise does what was asked; ``message`` says what that proved."""
    return Verdict(True, message, list(details))


def not_yet(message: str, *details: str) -> Verdict:
    """Not there yet: ``message`` says what happened instead, ``details`` why."""
    return Verdict(False, message, list(details))


def printable(data: bytes) -> str:
    """Guest output as a quoted Python string, every byte visible."""
    return repr(data.decode("latin-1"))


def stop_words(stop: Stop, timeout: float) -> str:
    """How a learner's guest stopped, as the end of a sentence ("it halted
    (status 0)"); ``timeout`` is the time the run was given."""
    if stop.kind is StopKind.HALT:
        return "it halted (status 0)"
    if stop.kind is StopKind.DEBUG_EXIT:
        return f"it wrote to the debug-exit port (status {stop.status})"
    if stop.kind is StopKind.TIMEOUT:
        return f"it was still running after {timeout:g} s and was stopped"
    return f"it stopped: {stop.message}"
