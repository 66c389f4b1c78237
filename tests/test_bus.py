"""The I/O bus: routing by address, refusing overlaps, recording the unclaimed."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minikvm.bus
from minikvm.bus import Bus, BusDevice, BusError
from minikvm.devices.base import Device
from minikvm.devices.debug_exit import DebugExit, debug_exit_status
from minikvm.devices.debugcon import DebugCon
from minikvm.devices.i8042 import I8042, I8042_COMMAND


class Recorder(Device):
    name = "recorder"

    def __init__(self) -> None:
        self.log: list[tuple] = []

    def read(self, offset, size):
        self.log.append(("r", offset, size))
        return 0x1234_5678_9ABC_DEF0

    def write(self, offset, size, value):
        self.log.append(("w", offset, size, value))


def test_access_reaches_device_with_offset_inside_its_window():
    bus = Bus("pio")
    dev = Recorder()
    bus.register(0x3F8, 8, dev)
    bus.write(0x3FB, 1, 0x83)
    assert dev.log == [("w", 3, 1, 0x83)]


def test_read_value_is_truncated_to_access_size():
    bus = Bus("mmio")
    bus.register(0xD000_0000, 0x1000, Recorder())
    assert bus.read(0xD000_0004, 2).value == 0xDEF0


def test_overlapping_registration_is_refused():
    bus = Bus("pio")
    bus.register(0x60, 5, Recorder())
    with pytest.raises(BusError, match="overlaps"):
        bus.register(0x64, 1, Recorder())
    with pytest.raises(BusError, match="overlaps"):
        bus.register(0x5F, 2, Recorder())
    bus.register(0x65, 1, Recorder())  # adjacent is fine
    bus.register(0x5F, 1, Recorder())


def test_the_bus_imports_nothing_from_the_devices_above_it():
    tree = ast.parse(Path(minikvm.bus.__file__).read_text())
    imported = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    imported += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                 for alias in node.names]
    # minikvm.record imports nothing of minikvm (a leaf, as the standard library is).
    assert not [name for name in imported
                if name and name.startswith("minikvm") and name != "minikvm.record"]


class Plain:
    """Not a Device subclass: just the methods the bus asks for."""

    name = "plain"

    def read(self, offset, size):
        return offset

    def write(self, offset, size, value):
        pass

    def register_name(self, offset, is_write):
        return f"reg{offset}"

    def describe(self, offset, size, is_write, value):
        return f"plain {'write' if is_write else 'read'} {value:#x}"


def test_any_object_with_the_bus_device_methods_can_be_registered():
    assert isinstance(Plain(), BusDevice) and isinstance(DebugCon(), BusDevice)
    bus = Bus("mmio")
    bus.register(0x1000, 0x10, Plain())
    access = bus.read(0x1003, 4, explain=True)
    assert (access.value, access.register, access.description) == (3, "reg3", "plain read 0x3")


def test_iterating_a_bus_lists_its_devices_in_address_order():
    bus = Bus("pio")
    com1, debugcon = Recorder(), DebugCon()
    bus.register(0x3F8, 8, com1)
    bus.register(0xE9, 1, debugcon)
    assert [(m.base, m.size, m.device) for m in bus] == [(0xE9, 1, debugcon), (0x3F8, 8, com1)]


def test_unclaimed_read_floats_to_all_ones_and_is_recorded():
    bus = Bus("pio")
    access = bus.read(0x80, 2, explain=True)
    assert access.value == 0xFFFF
    assert not access.claimed
    assert bus.unclaimed_count == 1 and bus.unclaimed[-1].address == 0x80
    assert "no device at port 0x80" in access.description


def test_unclaimed_write_is_dropped_and_recorded():
    bus = Bus("pio")
    bus.write(0x80, 1, 0x42)
    assert bus.unclaimed_count == 1
    assert bus.unclaimed[-1].is_write and bus.unclaimed[-1].value == 0x42


def test_unclaimed_history_is_bounded():
    bus = Bus("pio", unclaimed_history=8)
    for _ in range(100):
        bus.write(0x80, 1, 0)
    assert len(bus.unclaimed) == 8 and bus.unclaimed_count == 100


def test_explained_access_names_register_and_effect():
    bus = Bus("pio")
    output = []
    bus.register(0xE9, 1, DebugCon(output.append))
    access = bus.write(0xE9, 1, ord("H"), explain=True)
    assert output == [b"H"]
    assert access.device_name == "debugcon"
    assert access.register == "data"
    assert "'H'" in access.description


def test_debugcon_read_returns_port_number():
    assert DebugCon().read(0, 1) == 0xE9


def test_debug_exit_reports_shifted_status():
    statuses = []
    device = DebugExit(statuses.append)
    device.write(0, 1, 0x2A)
    assert statuses == [(0x2A << 1) | 1] == [85]
    assert "85" in device.describe(0, 1, True, 0x2A)
    assert debug_exit_status(0) == 1


def test_simple_ports_word_their_state_for_the_device_panel():
    debugcon, debug_exit, i8042 = DebugCon(), DebugExit(), I8042()
    for byte in b"ok\n":
        debugcon.write(0, 1, byte)
    assert debugcon.state_rows() == [("bytes", "3 written"), ("last", "ok\\n")]
    assert "none yet" in dict(debug_exit.state_rows())["last write"]
    debug_exit.write(0, 1, 0x2A)
    assert debug_exit.state_rows() == [("last write", "0x2a: exit status 85")]
    i8042.write(I8042_COMMAND, 1, 0xFE)
    assert i8042.state_rows() == [("last command", "0xfe (pulse the reset line)"),
                                  ("resets asked", "1")]


def test_a_device_without_words_of_its_own_lists_its_plain_state():
    class Counter(Device):
        def state(self):
            return {"count": 3, "history": [1, 2, 3], "last": None}

    assert Counter().state_rows() == [("count", "3"), ("last", "-")]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 0xFFFF), st.integers(1, 64)), max_size=20),
       st.integers(0, 0x1_0040))
def test_lookup_agrees_with_a_linear_model(ranges, probe):
    bus = Bus("pio")
    accepted = []
    for base, size in ranges:
        overlaps = any(base < b + s and b < base + size for b, s, _ in accepted)
        device = Recorder()
        if overlaps:
            with pytest.raises(BusError):
                bus.register(base, size, device)
        else:
            bus.register(base, size, device)
            accepted.append((base, size, device))
    expected = [d for b, s, d in accepted if b <= probe < b + s]
    found = bus.find(probe)
    assert (found.device if found else None) is (expected[0] if expected else None)


_UNCLAIMED_OPS = st.lists(st.tuples(st.sampled_from(["write", "read", "write_value", "read_value"]),
                                    st.integers(0, 0xFFFF), st.sampled_from([1, 2, 4]),
                                    st.integers(0, (1 << 32) - 1)), max_size=30)


@settings(max_examples=50, deadline=None)
@given(_UNCLAIMED_OPS)
def test_unclaimed_history_holds_the_newest_accesses_in_order_whichever_path_made_them(ops):
    # Both paths -- with an Access record (listeners) and without (the fast
    # path) -- count every access and keep the newest `unclaimed_history`.
    bus = Bus("pio", unclaimed_history=8)
    bus.register(0x3F8, 8, Recorder())
    model = []
    for how, port, size, value in ops:
        if 0x3F8 <= port < 0x400:
            continue
        mask = (1 << (8 * size)) - 1
        if how == "write":
            bus.write(port, size, value)
        elif how == "write_value":
            bus.write_value(port, size, value)
        elif how == "read":
            assert bus.read(port, size).value == mask
        else:
            assert bus.read_value(port, size) == mask
        is_write = how.startswith("write")
        model.append((port, size, is_write, value & mask if is_write else mask))
    assert bus.unclaimed_count == len(model)
    assert [tuple(access) for access in bus.unclaimed] == model[-8:]
    assert all(access.address == entry[0] and access.is_write == entry[2]
               for access, entry in zip(bus.unclaimed, model[-8:]))
