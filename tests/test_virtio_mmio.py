"""The virtio-mmio register window, version 2 (virtio 1.2 §4.2)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minikvm.devices.virtio.blk import VirtioBlk
from minikvm.devices.virtio.mmio import (
    VIRTIO_MMIO_CONFIG,
    VIRTIO_MMIO_CONFIG_GENERATION,
    VIRTIO_MMIO_DEVICE_ID,
    VIRTIO_MMIO_DRIVER_FEATURES,
    VIRTIO_MMIO_INT_CONFIG,
    VIRTIO_MMIO_INT_VRING,
    VIRTIO_MMIO_INTERRUPT_ACK,
    VIRTIO_MMIO_INTERRUPT_STATUS,
    VIRTIO_MMIO_MAGIC_VALUE,
    VIRTIO_MMIO_QUEUE_DESC_LOW,
    VIRTIO_MMIO_QUEUE_NOTIFY,
    VIRTIO_MMIO_QUEUE_NUM,
    VIRTIO_MMIO_QUEUE_NUM_MAX,
    VIRTIO_MMIO_QUEUE_READY,
    VIRTIO_MMIO_QUEUE_SEL,
    VIRTIO_MMIO_SHM_LEN_LOW,
    VIRTIO_MMIO_SHM_SEL,
    VIRTIO_MMIO_STATUS,
    VIRTIO_MMIO_VENDOR_ID,
    VIRTIO_MMIO_VERSION,
    VIRTIO_MMIO_WINDOW_SIZE,
)
from minikvm.devices.virtio.mock import mock_device
from minikvm.devices.virtio.rng import VirtioRng
from minikvm.devices.virtio.status import DeviceStatus

A, D, F, O = (DeviceStatus.ACKNOWLEDGE, DeviceStatus.DRIVER, DeviceStatus.FEATURES_OK,
              DeviceStatus.DRIVER_OK)


def rng_device(**kwargs):
    return mock_device(VirtioRng(source=lambda n: b"\xAA" * n, queue_max_size=8),
                       ram_size=64 * 1024, **kwargs)


def live_rng():
    dev = rng_device()
    dev.driver.init()
    return dev


def test_register_offsets_are_the_kernel_ones():
    assert (VIRTIO_MMIO_MAGIC_VALUE, VIRTIO_MMIO_QUEUE_NOTIFY, VIRTIO_MMIO_INTERRUPT_STATUS,
            VIRTIO_MMIO_STATUS, VIRTIO_MMIO_QUEUE_DESC_LOW, VIRTIO_MMIO_CONFIG_GENERATION,
            VIRTIO_MMIO_CONFIG) == (0x000, 0x050, 0x060, 0x070, 0x080, 0x0FC, 0x100)
    assert VIRTIO_MMIO_WINDOW_SIZE == 0x1000


def test_identification_registers():
    dev = rng_device()
    assert dev.driver.read_reg(VIRTIO_MMIO_MAGIC_VALUE) == 0x74726976  # "virt"
    assert dev.driver.read_reg(VIRTIO_MMIO_VERSION) == 2
    assert dev.driver.read_reg(VIRTIO_MMIO_DEVICE_ID) == 4
    assert dev.driver.read_reg(VIRTIO_MMIO_VENDOR_ID) == int.from_bytes(b"mkvm", "little")


@pytest.mark.parametrize("size,offset", [(1, 0), (2, 0), (8, 0), (4, 2), (4, 1), (2, 0x70)])
def test_registers_ignore_accesses_that_are_not_32_bit_aligned(size, offset):
    dev = rng_device()
    assert dev.transport.read(offset, size) == 0
    before = dev.transport.state()
    dev.transport.write(VIRTIO_MMIO_STATUS + (offset % 4), size, 1)
    after = dev.transport.state()
    assert after["status"] == before["status"] == 0
    assert after["counters"]["ignored_accesses"] == before["counters"]["ignored_accesses"] + 1


def test_write_only_registers_read_zero():
    dev = rng_device()
    assert dev.driver.read_reg(VIRTIO_MMIO_DRIVER_FEATURES) == 0
    assert dev.driver.read_reg(VIRTIO_MMIO_QUEUE_NOTIFY) == 0


def test_no_shared_memory_regions_read_as_minus_one():
    dev = rng_device()
    dev.driver.write_reg(VIRTIO_MMIO_SHM_SEL, 0)
    assert dev.driver.read_reg(VIRTIO_MMIO_SHM_LEN_LOW) == 0xFFFF_FFFF


def test_queue_num_max_is_zero_for_a_queue_that_does_not_exist():
    dev = rng_device()
    dev.driver.write_reg(VIRTIO_MMIO_QUEUE_SEL, 0)
    assert dev.driver.read_reg(VIRTIO_MMIO_QUEUE_NUM_MAX) == 8
    dev.driver.write_reg(VIRTIO_MMIO_QUEUE_SEL, 1)
    assert dev.driver.read_reg(VIRTIO_MMIO_QUEUE_NUM_MAX) == 0


def test_queue_registers_are_ignored_before_features_ok():
    dev = rng_device()
    dev.driver.add_status(A)
    dev.driver.add_status(D)
    dev.driver.write_reg(VIRTIO_MMIO_QUEUE_NUM, 4)
    dev.driver.write_reg(VIRTIO_MMIO_QUEUE_DESC_LOW, 0x2000)
    assert dev.transport.queues[0].size == 8
    assert dev.transport.queues[0].desc_table == 0


def test_queue_registers_are_ignored_after_driver_ok():
    dev = live_rng()
    queue = dev.transport.queues[0]
    desc = queue.desc_table
    dev.driver.write_reg(VIRTIO_MMIO_QUEUE_DESC_LOW, 0x8000)
    assert queue.desc_table == desc


def test_queue_size_cannot_change_while_the_queue_is_ready():
    dev = rng_device()
    dev.driver.negotiate()
    dev.driver.setup_queue(0, 4)
    dev.driver.write_reg(VIRTIO_MMIO_QUEUE_NUM, 8)
    assert dev.transport.queues[0].size == 4


def test_queue_ready_with_a_bad_layout_sets_needs_reset():
    dev = rng_device()
    dev.driver.negotiate()
    dev.driver.write_reg(VIRTIO_MMIO_QUEUE_SEL, 0)
    dev.driver.write_reg(VIRTIO_MMIO_QUEUE_NUM, 3)  # not a power of two
    dev.driver.write_reg(VIRTIO_MMIO_QUEUE_READY, 1)
    assert dev.driver.read_reg(VIRTIO_MMIO_QUEUE_READY) == 0
    assert dev.driver.status & DeviceStatus.NEEDS_RESET
    assert not dev.irq.level  # no config interrupt before DRIVER_OK


def test_queue_ring_outside_ram_is_refused():
    dev = rng_device()
    dev.driver.negotiate()
    dev.driver.write_reg(VIRTIO_MMIO_QUEUE_SEL, 0)
    dev.driver.write_reg(VIRTIO_MMIO_QUEUE_DESC_LOW, 64 * 1024 - 16)  # runs off the end
    dev.driver.write_reg(VIRTIO_MMIO_QUEUE_READY, 1)
    assert dev.driver.status & DeviceStatus.NEEDS_RESET
    assert "not inside guest RAM" in dev.transport.last_error


def test_used_buffer_interrupt_is_a_level_until_acknowledged():
    dev = live_rng()
    queue = dev.driver.queues[0]
    buf = dev.driver.alloc(16)
    queue.add_chain([(buf, 16, True)])
    dev.driver.kick(0)
    assert dev.driver.read_reg(VIRTIO_MMIO_INTERRUPT_STATUS) == VIRTIO_MMIO_INT_VRING
    assert dev.irq.level
    dev.driver.write_reg(VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INT_CONFIG)
    assert dev.irq.level  # acknowledging another cause leaves the line up
    dev.driver.write_reg(VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INT_VRING)
    assert not dev.irq.level
    assert list(dev.irq.edges) == [True, False]  # set_level only on changes


def test_kick_before_driver_ok_is_ignored():
    dev = rng_device()
    dev.driver.init(driver_ok=False)
    queue = dev.driver.queues[0]
    buf = dev.driver.alloc(16)
    queue.add_chain([(buf, 16, True)])
    dev.driver.kick(0)
    assert queue.used_idx() == 0 and not dev.irq.level
    assert dev.transport.describe(VIRTIO_MMIO_QUEUE_NOTIFY, 4, True, 0).endswith(
        "kick ignored: DRIVER_OK is not set (§2.1.2)")
    dev.driver.add_status(O)
    dev.driver.kick(0)
    assert queue.used_idx() == 1


def test_reset_clears_status_features_interrupts_and_queues():
    dev = live_rng()
    queue = dev.driver.queues[0]
    queue.add_chain([(dev.driver.alloc(8), 8, True)])
    dev.driver.kick(0)
    assert dev.irq.level
    dev.driver.write_reg(VIRTIO_MMIO_STATUS, 0)
    state = dev.transport.state()
    assert state["status"] == 0 and state["driver_features"] == 0
    assert state["interrupt_status"] == 0 and not dev.irq.level
    assert all(not q["ready"] and q["last_avail_idx"] == 0 and q["used_idx"] == 0
               and q["desc_table"] == 0 for q in state["queues"])


def test_device_works_again_after_needs_reset_and_a_reset():
    dev = live_rng()
    dev.transport.needs_reset("test")
    assert dev.driver.read_reg(VIRTIO_MMIO_INTERRUPT_STATUS) & VIRTIO_MMIO_INT_CONFIG
    dev.driver.init()
    queue = dev.driver.queues[0]
    queue.add_chain([(dev.driver.alloc(8), 8, True)])
    dev.driver.kick(0)
    assert queue.get_used()[0].len == 8


def test_config_space_reads_any_size_and_zero_past_its_end(tmp_path):
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(512 * 100))
    dev = mock_device(VirtioBlk(disk), ram_size=64 * 1024)
    assert dev.driver.read_config(0, 8) == 100  # capacity, in sectors
    assert dev.driver.read_config(0, 4) == 100 and dev.driver.read_config(4, 4) == 0
    assert dev.driver.read_config(0, 1) == 100
    assert dev.driver.read_config(0x800, 4) == 0
    dev.transport.write(VIRTIO_MMIO_CONFIG, 8, 0xFFFF)  # capacity is read-only
    assert dev.driver.read_config(0, 8) == 100
    dev.transport.backend.close()


def test_config_generation_changes_with_the_config_and_interrupts_a_live_driver():
    dev = live_rng()
    before = dev.driver.read_reg(VIRTIO_MMIO_CONFIG_GENERATION)
    dev.transport.config_changed()
    assert dev.driver.read_reg(VIRTIO_MMIO_CONFIG_GENERATION) != before
    assert dev.driver.read_reg(VIRTIO_MMIO_INTERRUPT_STATUS) == VIRTIO_MMIO_INT_CONFIG


def test_describe_says_what_a_kick_and_a_status_write_did():
    dev = rng_device()
    dev.driver.init(driver_ok=False)
    dev.driver.write_reg(VIRTIO_MMIO_STATUS, 0x0F)
    assert dev.transport.describe(VIRTIO_MMIO_STATUS, 4, True, 0x0F) == \
        "Status write 0xf: DRIVER_OK — device live"
    dev.driver.queues[0].add_chain([(dev.driver.alloc(8), 8, True)])
    dev.driver.kick(0)
    assert dev.transport.describe(VIRTIO_MMIO_QUEUE_NOTIFY, 4, True, 0) == \
        "QueueNotify write 0x0: queue 0 kicked, 1 request served"
    assert dev.transport.register_name(VIRTIO_MMIO_QUEUE_NOTIFY, True) == "QueueNotify"
    assert dev.transport.register_name(0x104, False) == "Config+0x4"


def test_state_is_plain_data():
    dev = live_rng()
    state = dev.transport.state()
    assert state["status_decoded"] == "ACKNOWLEDGE|DRIVER|FEATURES_OK|DRIVER_OK"
    assert "VERSION_1" in state["driver_features_decoded"]
    assert state["queues"][0]["ready"] is True

    def plain(value):
        if isinstance(value, dict):
            return all(isinstance(k, str) and plain(v) for k, v in value.items())
        if isinstance(value, list):
            return all(plain(v) for v in value)
        return value is None or type(value) in (int, str, bool, float)

    assert plain(state)


def test_state_rows_show_status_queues_and_then_the_device_types_own_rows():
    dev = live_rng()
    dev.driver.queues[0].add_chain([(dev.driver.alloc(8), 8, True)])
    dev.driver.kick(0)
    rows = dev.transport.state_rows()
    assert rows[0] == ("status", "0x0f ACKNOWLEDGE|DRIVER|FEATURES_OK|DRIVER_OK")
    assert "VERSION_1" in dict(rows)["features"]
    assert dict(rows)["interrupt"] == "status 0x1, line high"
    assert dict(rows)["queue 0"] == "size 8 ready, avail idx 1, used idx 1"
    assert rows[-1] == ("entropy", "8 bytes in 1 request (at most 65536 each)")
    dev.transport.needs_reset("queue 0: a test broke it")
    assert ("error", "queue 0: a test broke it") in dev.transport.state_rows()
    assert dev.transport.model == "virtio-mmio entropy source"


# -- hostile register traffic ---------------------------------------------------

register_offsets = st.integers(0, 0x1FF) | st.sampled_from(
    [VIRTIO_MMIO_STATUS, VIRTIO_MMIO_QUEUE_NOTIFY, VIRTIO_MMIO_QUEUE_READY,
     VIRTIO_MMIO_QUEUE_SEL, VIRTIO_MMIO_QUEUE_NUM, VIRTIO_MMIO_INTERRUPT_ACK])
accesses = st.tuples(st.booleans(), register_offsets, st.sampled_from([1, 2, 4, 8]),
                     st.integers(0, 2**64 - 1))


@settings(max_examples=60, deadline=None)
@given(st.lists(accesses, max_size=40), st.booleans())
def test_any_register_traffic_never_raises_and_keeps_the_line_honest(traffic, live):
    """Random reads and writes of any width at any offset of the window, on
    a fresh or a live device: nothing raises, misaligned or odd-sized register
    accesses read 0, and the line is high exactly while InterruptStatus != 0."""
    check_register_traffic(live_rng() if live else rng_device(), traffic)


def check_register_traffic(dev, traffic):
    """Play ``traffic`` on ``dev``'s window and hold the rules after each access
    (also run by tests/test_hostile_long.py, on every device type)."""
    for is_write, offset, size, value in traffic:
        value &= (1 << (8 * size)) - 1
        if is_write:
            dev.transport.write(offset, size, value)
        else:
            result = dev.transport.read(offset, size)
            assert 0 <= result < 1 << (8 * size)
            if offset < VIRTIO_MMIO_CONFIG and (size != 4 or offset % 4):
                assert result == 0
        assert dev.irq.level == (dev.transport.interrupt_status != 0)
        assert dev.transport.driver_features & ~dev.transport.device_features == 0
