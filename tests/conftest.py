"""Shared fixtures: KVM availability, guests built once per test session.

Two runs of the suite
---------------------
``pytest -m "not slow"`` is the fast run a developer makes before every
commit (under 30 s); ``pytest`` (what CI runs) is the full run. A test is
marked ``slow`` when it costs more than it adds to the fast run (a CLI
subprocess per case, every lesson's narration, a terminal test per key);
each feature keeps at least one test in the fast run.

Property tests (hypothesis) run in both, at a different size: in the fast
run each one runs a tenth of the ``max_examples`` its own ``@settings`` (or
its state machine's ``TestCase.settings``) asks for, at least one; the full
run uses the test's own counts unchanged. The fast run is recognised by its
mark expression (``-m`` containing ``not slow``); set
``MINIKVM_FULL_EXAMPLES=1`` to run the full counts in a fast run anyway.
(A hypothesis settings profile cannot do this: every property test here
names its own ``max_examples``, and a test's own settings beat the profile.)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import is_hypothesis_test, settings

ROOT = Path(__file__).resolve().parent.parent

# pytest rewrites the asserts of every test module it collects and keeps the
# result in __pycache__ (ignored by git) -- unless writing bytecode is off, as
# PYTHONDONTWRITEBYTECODE=1 makes it in our environment: then every run
# rewrites every module again (~7 s of the ~30 s fast run, measured
# 2026-12-02), and the CLI tests' subprocesses compile minikvm from source
# each time. The suite writes its caches while it collects; the setting is
# put back for the tests themselves (pytest_collection_finish).
_DONT_WRITE_BYTECODE = sys.dont_write_bytecode
sys.dont_write_bytecode = False


def pytest_collection_finish(session: pytest.Session) -> None:
    sys.dont_write_bytecode = _DONT_WRITE_BYTECODE
GUESTS_DIR = ROOT / "guests"
KVM_PATH = "/dev/kvm"


def kvm_usable() -> tuple[bool, str]:
    if not os.path.exists(KVM_PATH):
        return False, f"{KVM_PATH} is absent on this machine"
    if not os.access(KVM_PATH, os.R_OK | os.W_OK):
        return False, f"no permission to open {KVM_PATH}"
    return True, ""


#: In the fast run a property test runs max_examples // FAST_EXAMPLES_DIVISOR examples.
FAST_EXAMPLES_DIVISOR = 10


def is_fast_run(config: pytest.Config) -> bool:
    """The run leaves out the slow tests (``-m "not slow"``)."""
    if os.environ.get("MINIKVM_FULL_EXAMPLES"):
        return False
    return re.search(r"\bnot\s+slow\b", config.getoption("markexpr") or "") is not None


def fewer_examples(current: settings) -> settings:
    """``current`` with a tenth of its examples (at least one)."""
    return settings(current, max_examples=max(1, current.max_examples // FAST_EXAMPLES_DIVISOR))


def shrink_property_tests(items: list[pytest.Item]) -> None:
    """Give every property test among ``items`` its fast-run size.

    A ``@given`` test keeps the settings hypothesis resolved at decoration
    in ``_hypothesis_internal_use_settings``, read again each time the test
    runs (``@settings`` itself refuses to be applied twice); a
    ``RuleBasedStateMachine``'s are its ``TestCase.settings``. Each is
    shrunk once, however many parametrized items share it. Should a new
    hypothesis keep its settings elsewhere, the fast run merely runs the
    full counts.
    """
    done: set[int] = set()
    for item in items:
        test = getattr(item, "obj", None)
        test = getattr(test, "__func__", test)
        if test is not None and is_hypothesis_test(test) and id(test) not in done:
            done.add(id(test))
            current = getattr(test, "_hypothesis_internal_use_settings", None)
            if isinstance(current, settings):
                test._hypothesis_internal_use_settings = fewer_examples(current)
        case = getattr(item, "cls", None)
        machine_settings = getattr(case, "settings", None)
        if isinstance(machine_settings, settings) and id(case) not in done:
            done.add(id(case))
            case.settings = fewer_examples(machine_settings)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if is_fast_run(config):
        shrink_property_tests(items)
    usable, why = kvm_usable()
    if usable:
        return
    skip = pytest.mark.skip(reason=f"needs KVM: {why}")
    for item in items:
        if "kvm" in item.keywords:
            item.add_marker(skip)


def build_guests() -> Path:
    """Build every guest with the Makefile (incremental: make skips fresh ones)."""
    result = subprocess.run(["make", "-s", "-C", str(GUESTS_DIR)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"building the guests failed:\n{result.stdout}\n{result.stderr}")
    return GUESTS_DIR / "build"


def _with_slow_mark(case: object, slow: bool):
    mark = [pytest.mark.slow] if slow else []
    if isinstance(case, tuple):
        return pytest.param(*case, marks=mark)
    return pytest.param(case, marks=mark)


def _matches(case: object, names: tuple[object, ...]) -> bool:
    return case in names or (isinstance(case, tuple) and any(item in names for item in case))


def slow_except(cases, *fast):
    """The cases of a ``parametrize``, all marked slow but those named in ``fast``.

    A case is named by its value or, for a tuple of arguments (spread over
    the parameter names as ``parametrize`` does), by one of its items:
    ``slow_except(LESSON_IDS, "01")``. Tests ids stay what they were.
    """
    return [_with_slow_mark(case, not _matches(case, fast)) for case in cases]


def slow_only(cases, *slow):
    """The cases of a ``parametrize`` with those named in ``slow`` marked slow
    (named as for :func:`slow_except`)."""
    return [_with_slow_mark(case, _matches(case, slow)) for case in cases]


@pytest.fixture(scope="session")
def guests() -> Path:
    """The folder holding the built guests (guests/build)."""
    return build_guests()


# -- the long hostile run ----------------------------------------------------------------
# ``pytest -m slow --hypothesis-profile long`` (README, "Tests"): the tests of
# tests/test_hostile_long.py name no example count, so this profile gives each
# 25,000 examples -- 100,000 hostile inputs to the virtio and UART models.
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("long", max_examples=25_000, deadline=None)
