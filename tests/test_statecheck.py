"""The checks of saved state read back (minikvm/statecheck.py), as a spec.

Device restores and the snapshot reader share them; here they are driven
directly, through the two ways of naming a field. Their use on real device
states and real snapshot files is in test_device_state.py and
test_snapshot_hostile.py.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minikvm.devices.state import DeviceStateError, SavedState
from minikvm.snapshot.format import JsonFields, SnapshotError
from minikvm.statecheck import MAX_U64, Fields


def test_a_device_field_and_a_json_field_are_named_each_their_own_way():
    with pytest.raises(DeviceStateError) as device:
        SavedState({"ier": 16}, "com1").integer("ier", 0, 15)
    assert str(device.value) == "com1: saved field 'ier' = 16 is outside 0..15"
    with pytest.raises(SnapshotError) as snapshot:
        JsonFields({"regs": {"rip": "0x1000"}}, "VCPU[0]").mapping("regs").integer("rip")
    assert str(snapshot.value) == "VCPU[0].regs.rip is '0x1000', not an integer"


def test_missing_unknown_and_non_dict_states_are_refused_by_name():
    with pytest.raises(DeviceStateError, match="rtc: saved field 'cmos' is missing"):
        SavedState({"index": 0}, "rtc", ("index", "cmos"))
    with pytest.raises(DeviceStateError, match="'x' is not part of this device's state"):
        SavedState({"index": 0, "x": 1}, "rtc", ("index",))
    with pytest.raises(DeviceStateError, match="rtc: saved state is a list, not a dict"):
        SavedState([], "rtc")
    with pytest.raises(SnapshotError, match=r"^META\.config is None, not a dict$"):
        JsonFields({"config": None}, "META").mapping("config")


def test_hex_must_be_lowercase_digits_of_the_right_length():
    fields = SavedState({"a": "00 ", "b": "0A", "c": "0a0b", "d": "00"}, "dev")
    with pytest.raises(DeviceStateError, match="holds 1.5 bytes"):
        fields.hex_bytes("a", 4)
    with pytest.raises(DeviceStateError, match="is not lowercase hex"):
        fields.hex_bytes("b", 4)
    assert fields.hex_bytes("c", 2, exact=True) == b"\x0a\x0b"
    with pytest.raises(DeviceStateError, match="exactly 2 allowed"):
        fields.hex_bytes("d", 2, exact=True)
    # bytes.fromhex would skip the spaces and give one byte where two were promised
    with pytest.raises(DeviceStateError, match="is not lowercase hex"):
        SavedState({"e": "00  "}, "dev").hex_bytes("e", 2, exact=True)


#: Anything a JSON document may hold, hostile sizes included.
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(1 << 80), max_value=1 << 80)
    | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                 max_size=3),
    max_leaves=6)


@settings(max_examples=40, deadline=None)
@given(value=JSON_VALUES, kind=st.sampled_from([SavedState, JsonFields]))
def test_every_check_returns_a_value_of_its_type_or_refuses_in_one_printable_line(value, kind):
    """The hostile-input guarantee: whatever the field holds, a check either
    hands back exactly what it promised or raises its own error class with
    one printable line; never another exception."""
    fields: Fields = kind({"k": value}, "dev")
    checks = [
        (lambda: fields.integer("k", 0, MAX_U64),
         lambda v: type(v) is int and 0 <= v <= MAX_U64),
        (lambda: fields.bits("k", 0xF0), lambda v: type(v) is int and v & ~0xF0 == 0),
        (lambda: fields.choice("k", (1, 4)), lambda v: v in (1, 4) and type(v) is int),
        (lambda: fields.boolean("k"), lambda v: type(v) is bool),
        (lambda: fields.text("k", 8), lambda v: type(v) is str and len(v) <= 8
         and v.isprintable()),
        (lambda: fields.hex_bytes("k", 4), lambda v: type(v) is bytes and len(v) <= 4),
        (lambda: fields.entries("k", 2), lambda v: type(v) is list and len(v) <= 2),
        (lambda: fields.booleans("k", 2), lambda v: len(v) == 2
         and all(type(b) is bool for b in v)),
        (lambda: fields.mapping("k"), lambda v: isinstance(v, Fields)),
    ]
    for check, promised in checks:
        try:
            result = check()
        except kind.error as error:
            message = str(error)
            assert message.startswith("dev") and message.isprintable(), message
            assert len(message) < 200, message
        else:
            assert promised(result), result
