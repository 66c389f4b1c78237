"""The probe: each debug feature is tried, not assumed, and explained when missing."""

from __future__ import annotations

import pytest

from minikvm.debug.probe import DebugSupport, clear_probe_cache, probe_debug_support, probe_rows
from minikvm.kvm.host import detect_host
from minikvm.kvm.system import Kvm
from minikvm.kvm.uapi import KVM_GUESTDBG_BLOCKIRQ, KvmCap

pytestmark = pytest.mark.kvm

FEATURES = ("single_step", "step_reports_hlt", "hw_breakpoints", "sw_breakpoints",
            "hw_write_watch", "hw_rw_watch", "block_irq", "readonly_memory")


def test_every_missing_feature_has_a_reason():
    support = probe_debug_support()
    for name in FEATURES:
        if not getattr(support, name):
            assert support.reasons.get(name), name


def test_single_step_works_on_any_kvm_a_debugger_can_use():
    assert probe_debug_support().single_step


def test_block_irq_follows_the_capability():
    with Kvm() as kvm:
        flags = kvm.check_extension(KvmCap.KVM_CAP_SET_GUEST_DEBUG2)
    assert probe_debug_support().block_irq == bool(flags & KVM_GUESTDBG_BLOCKIRQ)


def test_results_are_cached_per_process():
    first = probe_debug_support()
    assert probe_debug_support() is first
    clear_probe_cache()
    again = probe_debug_support()
    assert again is not first and again == first   # same answers when tried again


def test_pvm_lacks_int3_and_data_watchpoints_as_documented():
    if not detect_host().is_pvm:
        pytest.skip("only kvm-pvm is known to lack these")
    support = probe_debug_support()
    assert not support.sw_breakpoints and not support.hw_write_watch and not support.hw_rw_watch
    assert support.single_step and support.hw_breakpoints


def test_rows_for_minikvm_info():
    rows = probe_rows()
    assert len(rows) == len(FEATURES)
    assert all(len(row) == 3 and row[1] in ("yes", "no") for row in rows)
    assert all(row[0].startswith("debug: ") for row in rows)


def test_rows_explain_a_missing_feature_with_the_reason():
    support = DebugSupport(single_step=True, reasons={"sw_breakpoints": "because of X"})
    row = next(r for r in support.rows() if r[0] == "debug: int3 breakpoints")
    assert row[:2] == ("debug: int3 breakpoints", "no")
    assert row[2].startswith("because of X. In use instead: ")
    assert "DR slot" in row[2]  # names the fallback mechanism


def test_without_turns_features_off_and_says_so():
    support = DebugSupport(single_step=True, hw_breakpoints=True).without("hw_breakpoints")
    assert not support.hw_breakpoints and support.single_step
    assert support.reasons["hw_breakpoints"] == "turned off by the caller"


def test_probe_of_a_missing_device_reports_instead_of_raising(tmp_path):
    rows = probe_rows(str(tmp_path / "no-kvm"))
    assert rows[0][1] == "unknown"
