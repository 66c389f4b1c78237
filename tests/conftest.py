"""Shared fixtures: KVM availability, guests built once per test session."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUESTS_DIR = ROOT / "guests"
KVM_PATH = "/dev/kvm"


def kvm_usable() -> tuple[bool, str]:
    if not os.path.exists(KVM_PATH):
        return False, f"{KVM_PATH} is absent on this machine"
    if not os.access(KVM_PATH, os.R_OK | os.W_OK):
        return False, f"no permission to open {KVM_PATH}"
    return True, ""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
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
