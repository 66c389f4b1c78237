"""``check_exercise``: one exercise's check, run so that nothing escapes it.

The checks themselves live by exercise group (:mod:`~minikvm.lessons.checks_cpu`,
:mod:`~minikvm.lessons.checks_devices`, :mod:`~minikvm.lessons.checks_smp`,
:mod:`~minikvm.lessons.checks_gdb`, :mod:`~minikvm.lessons.checks_reverse`,
:mod:`~minikvm.lessons.checks_stats`). This module picks the check for a
lesson number, gives it a fresh temporary folder to build in, and turns what
the learner's file can make go wrong on the way -- a build error, a file the
loader refuses, an ioctl KVM rejects -- into a :class:`Verdict`. Only KVM
being unavailable is not the learner's doing, and goes up to the caller.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from minikvm.guestbuild import GuestBuildError
from minikvm.lessons.checks_cpu import check_03, check_04, check_05, check_06, check_07
from minikvm.lessons.checks_devices import check_08, check_09, check_10
from minikvm.lessons.checks_gdb import check_12
from minikvm.lessons.checks_reverse import check_13
from minikvm.lessons.checks_smp import check_11
from minikvm.lessons.checks_stats import check_14
from minikvm.lessons.verdict import Verdict, not_yet

__all__ = ["CHECKS", "check_exercise"]

#: The check of each exercise: (the learner's file, a work folder) -> Verdict.
CHECKS: dict[str, Callable[[Path, Path], Verdict]] = {
    "03": check_03,
    "04": check_04,
    "05": check_05,
    "06": check_06,
    "07": check_07,
    "08": check_08,
    "09": check_09,
    "10": check_10,
    "11": check_11,
    "12": check_12,
    "13": check_13,
    "14": check_14,
}


def check_exercise(number: str, path: str | Path) -> Verdict:
    """Build and run the learner's file for exercise ``number``; never raises
    for anything the learner's file does (KvmUnavailableError is the host's)."""
    from minikvm.kvm.errors import KvmError
    from minikvm.loaders import LoaderError

    number = str(number).zfill(2)
    check = CHECKS.get(number)
    if check is None:
        raise ValueError(f"lesson {number} has no exercise")
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix=f"minikvm-exercise-{number}-") as work:
        try:
            return check(path, Path(work))
        except GuestBuildError as err:
            return not_yet(f"{path.name} does not build.", str(err))
        except LoaderError as err:
            return not_yet(f"The machine refused to load your guest: {err}")
        except KvmError as err:
            return not_yet(f"KVM refused what your code asked for: {err}")
