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

import gc
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# pytest rewrites the asserts of every test module it collects and keeps the
# result in __pycache__ (ignored by git) -- unless writing bytecode is off, as
# PYTHONDONTWRITEBYTECODE=1 makes it in our environment: then every run
# rewrites every module again (~7 s of the ~30 s fast run, measured
# 2026-12-02), and the CLI tests' subprocesses compile minikvm from source
# each time. The suite writes its caches while it collects; the setting is
# put back for the tests themselves (pytest_collection_finish).
#
# It is turned on before hypothesis is imported: pytest also rewrites every
# module of a distribution that installs a pytest plugin
# (Config._mark_plugins_for_rewrite), and hypothesis installs one, so its
# ~75 modules were rewritten at each run, 1.2-1.5 s before the first test
# (measured 2026-12-02: importing hypothesis took 0.2 s in a bare
# interpreter, 1.5 s inside pytest; pytest reached its configure hook
# after 1.66 s, and after 0.47 s once cached). Those caches go to the interpreter's
# site-packages (where it is read-only, pytest silently keeps none). A
# plugin pytest loads before this file (pytest-benchmark, where installed)
# is still rewritten each time, ~50 ms.
_DONT_WRITE_BYTECODE = sys.dont_write_bytecode
sys.dont_write_bytecode = False

from hypothesis import is_hypothesis_test, settings  # noqa: E402  (after the line above)


def pytest_collection_finish(session: pytest.Session) -> None:
    sys.dont_write_bytecode = _DONT_WRITE_BYTECODE


# -- the collector -------------------------------------------------------------
# What the suite keeps alive grows to ~400,000 objects: the collected tests,
# the syntax trees test_architecture parses once, hypothesis's records. A
# full collection of CPython's collector walks every one of them, so the
# fast run spent 1.3-1.8 s in its ~5 full collections, and its exit another
# ~2.3 s (pytest's unraisable-exception cleanup collects five times, the
# interpreter once more). So the suite collects where a test module begins
# -- the garbage the last module left: its descriptors are closed there,
# not in some later module -- and freezes what survives (``gc.freeze``:
# later collections, the ones at the exit too, skip those objects). Each
# collection then walks only what the last module made. Measured
# 2026-12-02, the fast run, three runs each, interleaved (both sides with
# hypothesis's rewritten modules cached, above): 3.4-3.6 s less wall time in each pair
# (32.6-39.1 s -> 29.2-35.5 s; the host slowed down as they ran), 3.6-3.8 s
# less user CPU time; full collections 1.5-1.8 s -> 0.5 s a run; no
# descriptor left open at the end.
#
# The price: an object alive at a freeze that later becomes garbage in a
# reference cycle is never collected, and its finaliser never runs (freed
# by reference counting, as most are, it goes as usual). One collection
# may also leave a cycle a finaliser made while it ran. So a failed test's
# traceback, which pytest keeps in ``sys.last_traceback`` until the next
# test runs, is dropped before the freeze: it holds that test's frames,
# and with them its machine, descriptors and guest RAM.

_last_module_started: object = None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before the first test of a module (and its module fixtures), or of a
    module the run comes back to."""
    global _last_module_started
    module = getattr(item, "module", None)
    if module is not _last_module_started:
        _last_module_started = module
        for name in ("last_type", "last_value", "last_traceback", "last_exc"):
            if hasattr(sys, name):
                delattr(sys, name)
        gc.collect()
        gc.freeze()


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
