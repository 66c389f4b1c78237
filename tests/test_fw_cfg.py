"""fw_cfg, the port interface: the items, and the selector/data state machine
checked against a model written from QEMU's docs/specs/fw_cfg.rst.

The model is the spec's sentences, nothing more: a selector write picks an
item and sets the offset to zero; each data read returns the next byte and
moves on; past the end a read returns 0x00; writes to the data register are
ignored; bit 14 of the selector names the same item. The device is driven
through the bus, at the board's ports, as a guest drives it.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from minikvm.bus import Bus
from minikvm.core import board
from minikvm.devices.fw_cfg import (
    FW_CFG_CMDLINE_DATA,
    FW_CFG_CMDLINE_SIZE,
    FW_CFG_FILE_DIR,
    FW_CFG_FILE_FIRST,
    FW_CFG_ID,
    FW_CFG_MAX_CPUS,
    FW_CFG_NB_CPUS,
    FW_CFG_RAM_SIZE,
    FW_CFG_SIGNATURE,
    FW_CFG_WRITE_CHANNEL,
    FwCfg,
)

SELECTOR = board.FW_CFG_PORT
DATA = board.FW_CFG_PORT + 1


def on_bus(device: FwCfg) -> Bus:
    bus = Bus("pio")
    bus.register(board.FW_CFG_PORT, board.FW_CFG_PORTS, device)
    return bus


def read_item(bus: Bus, key: int, length: int) -> bytes:
    """What a guest does: outw key, 0x510; then inb 0x511, length times."""
    bus.write(SELECTOR, 2, key)
    return bytes(bus.read(DATA, 1).value for _ in range(length))


@pytest.fixture
def machine_cfg() -> tuple[FwCfg, Bus]:
    device = FwCfg()
    device.set_machine(256 << 20, 4)
    device.set_cmdline("x86/smptest.flat -v")
    return device, on_bus(device)


def test_the_board_puts_it_where_qemu_does():
    assert (board.FW_CFG_PORT, board.FW_CFG_PORTS) == (0x510, 2)
    assert any(slot.name == "fw_cfg" and slot.base == 0x510 for slot in board.PORT_DEVICES)


def test_signature_reads_qemu_and_id_says_port_interface_without_dma(machine_cfg):
    _, bus = machine_cfg
    assert read_item(bus, FW_CFG_SIGNATURE, 4) == b"QEMU"
    assert struct.unpack("<I", read_item(bus, FW_CFG_ID, 4))[0] == 1


def test_ram_size_and_cpu_counts_are_little_endian(machine_cfg):
    _, bus = machine_cfg
    assert struct.unpack("<Q", read_item(bus, FW_CFG_RAM_SIZE, 8))[0] == 256 << 20
    assert struct.unpack("<H", read_item(bus, FW_CFG_NB_CPUS, 2))[0] == 4
    assert struct.unpack("<H", read_item(bus, FW_CFG_MAX_CPUS, 2))[0] == 4


def test_command_line_size_counts_the_nul_and_data_ends_in_it(machine_cfg):
    _, bus = machine_cfg
    size = struct.unpack("<I", read_item(bus, FW_CFG_CMDLINE_SIZE, 4))[0]
    assert size == len("x86/smptest.flat -v") + 1
    assert read_item(bus, FW_CFG_CMDLINE_DATA, size + 3) == b"x86/smptest.flat -v\0\0\0\0"


def test_a_selector_write_rewinds_the_offset(machine_cfg):
    _, bus = machine_cfg
    assert read_item(bus, FW_CFG_SIGNATURE, 2) == b"QE"
    assert read_item(bus, FW_CFG_SIGNATURE, 4) == b"QEMU"


def test_an_unknown_key_reads_zeros_and_the_write_channel_bit_names_the_same_item(machine_cfg):
    _, bus = machine_cfg
    assert read_item(bus, 0x1234, 4) == bytes(4)
    assert read_item(bus, FW_CFG_WRITE_CHANNEL | FW_CFG_SIGNATURE, 4) == b"QEMU"


def test_data_writes_and_odd_widths_change_nothing(machine_cfg):
    device, bus = machine_cfg
    bus.write(SELECTOR, 2, FW_CFG_SIGNATURE)
    bus.write(DATA, 1, 0x41)                   # ignored, as since QEMU 2.4
    bus.write(SELECTOR, 1, FW_CFG_NB_CPUS)     # the selector takes 16 bits
    assert bus.read(SELECTOR, 2).value == 0xFFFF   # write-only
    assert bus.read(DATA, 4).value == 0xFFFF_FFFF  # the data port is 8 bits
    assert bytes(bus.read(DATA, 1).value for _ in range(4)) == b"QEMU"
    assert device.item(FW_CFG_SIGNATURE) == b"QEMU"


def test_the_file_directory_is_big_endian_with_56_byte_names():
    device = FwCfg()
    key = device.add_file("opt/org.minikvm/hello", b"hi there")
    assert key == FW_CFG_FILE_FIRST
    bus = on_bus(device)
    raw = read_item(bus, FW_CFG_FILE_DIR, 4 + 64)
    assert struct.unpack(">I", raw[:4])[0] == 1
    size, select, reserved, name = struct.unpack(">IHH56s", raw[4:])
    assert (size, select, reserved) == (8, key, 0)
    assert name.rstrip(b"\0") == b"opt/org.minikvm/hello"
    assert read_item(bus, key, 8) == b"hi there"


@pytest.mark.parametrize("name", ["", "x" * 56, "a\0b", "dup"])
def test_bad_file_names_are_refused(name):
    device = FwCfg()
    device.add_file("dup", b"")
    with pytest.raises(ValueError):
        device.add_file(name, b"")


def test_a_command_line_with_a_nul_is_refused():
    with pytest.raises(ValueError):
        FwCfg().set_cmdline("a\0b")


def test_accesses_are_described_in_words(machine_cfg):
    _, bus = machine_cfg
    select = bus.write(SELECTOR, 2, FW_CFG_NB_CPUS, explain=True)
    assert "NB_CPUS" in select.description and "offset goes back to 0" in select.description
    first = bus.read(DATA, 1, explain=True)
    assert first.description == "fw_cfg: NB_CPUS byte 0 of 2 -> 0x04"
    bus.read(DATA, 1)
    past = bus.read(DATA, 1, explain=True)
    assert "past the end" in past.description and past.value == 0


def test_state_rows_say_what_is_selected_and_the_machine(machine_cfg):
    device, bus = machine_cfg
    bus.write(SELECTOR, 2, FW_CFG_RAM_SIZE)
    bus.read(DATA, 1)
    rows = dict(device.state_rows())
    assert rows["selected"] == "0x0003 RAM_SIZE"
    assert rows["offset"] == "1 of 8 bytes"
    assert rows["machine"] == "4 CPUs, 256 MiB"
    assert rows["cmdline"] == "'x86/smptest.flat -v'"
    assert device.state()["item"] == "RAM_SIZE"


# -- the state machine against the spec's model ----------------------------------------


class FwCfgAgainstSpec(RuleBasedStateMachine):
    """Random selector writes, data reads and ignored accesses; every data
    read must give what the spec's model says."""

    @initialize(items=st.dictionaries(
        st.integers(0, 0xFFFF).filter(lambda k: not k & FW_CFG_WRITE_CHANNEL),
        st.binary(max_size=12), max_size=6))
    def fill(self, items):
        self.device = FwCfg()
        self.model = {FW_CFG_SIGNATURE: b"QEMU", FW_CFG_ID: b"\x01\0\0\0"}
        for key, data in items.items():
            if key == FW_CFG_FILE_DIR:
                continue
            self.device.set_item(key, data)
            self.model[key] = data
        self.model[FW_CFG_FILE_DIR] = self.device.item(FW_CFG_FILE_DIR)
        self.bus = on_bus(self.device)
        self.selector = 0
        self.offset = 0

    @rule(data=st.data(), write_channel=st.booleans())
    def select_known(self, data, write_channel):
        key = data.draw(st.sampled_from(sorted(self.model)))
        self.select(key | (FW_CFG_WRITE_CHANNEL if write_channel else 0))

    @rule(value=st.integers(0, 0xFFFF))
    def select_any(self, value):
        self.select(value)

    def select(self, value):
        self.bus.write(SELECTOR, 2, value)
        self.selector, self.offset = value, 0

    @rule()
    def read_data(self):
        item = self.model.get(self.selector & ~FW_CFG_WRITE_CHANNEL, b"")
        expected = item[self.offset] if self.offset < len(item) else 0
        if self.offset < len(item):
            self.offset += 1
        assert self.bus.read(DATA, 1).value == expected

    @rule(value=st.integers(0, 0xFF))
    def write_data(self, value):
        self.bus.write(DATA, 1, value)          # ignored: no effect at all

    @rule(size=st.sampled_from([1, 4]), value=st.integers(0, 0xFFFF_FFFF))
    def write_selector_wrong_width(self, size, value):
        self.bus.write(SELECTOR, size, value)   # not a 16-bit write: ignored

    @rule(port=st.sampled_from([SELECTOR, DATA]), size=st.sampled_from([1, 2, 4]))
    def read_other(self, port, size):
        if (port, size) == (DATA, 1):
            return
        assert self.bus.read(port, size).value == (1 << (8 * size)) - 1

    @invariant()
    def offset_matches(self):
        if hasattr(self, "device"):
            assert (self.device.selector, self.device.offset) == (self.selector, self.offset)


FwCfgAgainstSpec.TestCase.settings = settings(
    max_examples=200, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
TestFwCfgAgainstSpec = FwCfgAgainstSpec.TestCase


@settings(max_examples=100, deadline=None)
@given(ram=st.integers(1, (1 << 64) - 1), cpus=st.integers(1, 64))
def test_machine_items_round_trip(ram, cpus):
    device = FwCfg()
    device.set_machine(ram, cpus)
    bus = on_bus(device)
    assert struct.unpack("<Q", read_item(bus, FW_CFG_RAM_SIZE, 8))[0] == ram
    assert struct.unpack("<H", read_item(bus, FW_CFG_NB_CPUS, 2))[0] == cpus
