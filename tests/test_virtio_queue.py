"""Split virtqueues (virtio 1.2 §2.7): chains, indirect tables, rings, EVENT_IDX.

Each test builds the queue in guest memory with the driver-side mock and
checks what the device side makes of it. The hostile examples here are one
of each kind; tests/test_virtio_hostile.py generates many of them.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minikvm.devices.virtio.mock import GuestAllocator, VirtqueueDriver
from minikvm.devices.virtio.queue import (
    MAX_CHAIN_BYTES,
    VIRTQ_AVAIL_F_NO_INTERRUPT,
    VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
    Buffer,
    Descriptor,
    SplitQueue,
    VirtqueueError,
    vring_need_event,
)
from minikvm.memory import GuestMemory

RAM = 64 * 1024
NEXT, WRITE, INDIRECT = VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VIRTQ_DESC_F_INDIRECT


def make_queue(size=8, ram=RAM, event_idx=False, indirect=True, max_chain_bytes=MAX_CHAIN_BYTES):
    memory = GuestMemory.with_size(ram)
    allocator = GuestAllocator(memory, 0x1000)
    driver = VirtqueueDriver.allocate(memory, allocator, size, event_idx)
    device = SplitQueue(memory, max_size=size, max_chain_bytes=max_chain_bytes)
    device.size = size
    device.desc_table, device.avail_ring, device.used_ring = (
        driver.desc_table, driver.avail_ring, driver.used_ring)
    device.enable(event_idx=event_idx, indirect_desc=indirect)
    return memory, driver, device


def test_a_direct_chain_comes_out_as_its_buffers_readable_first():
    memory, driver, device = make_queue()
    head = driver.add_chain([(0x4000, 16, False), (0x5000, 100, True), (0x6000, 1, True)])
    chain = device.pop_chain()
    assert chain.head == head
    assert chain.buffers == (Buffer(0x4000, 16, False), Buffer(0x5000, 100, True),
                             Buffer(0x6000, 1, True))
    assert (chain.readable_len, chain.writable_len) == (16, 101)
    assert device.pop_chain() is None


def test_an_indirect_chain_comes_out_as_the_table_buffers():
    memory, driver, device = make_queue()
    driver.add_chain([(0x4000, 16, False), (0x5000, 512, True)], indirect_table=0x8000)
    chain = device.pop_chain()
    assert chain.indirect
    assert chain.buffers == (Buffer(0x4000, 16, False), Buffer(0x5000, 512, True))


def test_direct_descriptors_followed_by_an_indirect_table_are_one_chain():
    """§2.7.5.3.2: zero or more chained descriptors, then one indirect one."""
    memory, driver, device = make_queue()
    driver.write_indirect_table(0x8000, [Descriptor(0x5000, 8, WRITE, 0)])
    driver.write_descriptor(0, 0x4000, 16, NEXT, 1)
    driver.write_descriptor(1, 0x8000, 16, INDIRECT | WRITE)  # WRITE here is ignored
    driver.publish(0)
    chain = device.pop_chain()
    assert chain.buffers == (Buffer(0x4000, 16, False), Buffer(0x5000, 8, True))


def test_zero_length_descriptors_describe_no_bytes():
    memory, driver, device = make_queue()
    driver.add_chain([(0x4000, 0, False), (0x5000, 4, True), (0xFFFF_FFFF_0000, 0, True)])
    assert device.pop_chain().buffers == (Buffer(0x5000, 4, True),)


def test_chain_data_helpers_read_readable_and_write_writable_bytes_only():
    memory, driver, device = make_queue()
    memory.write(0x4000, b"abc")
    memory.write(0x4100, b"defg")
    driver.add_chain([(0x4000, 3, False), (0x4100, 4, False), (0x5000, 2, True),
                      (0x5100, 3, True)])
    chain = device.pop_chain()
    assert chain.read() == b"abcdefg"
    assert chain.read(2, 3) == b"cde"
    assert chain.write(b"123456") == 5
    assert memory.read(0x5000, 2) + memory.read(0x5100, 3) == b"12345"
    assert memory.read(0x4000, 3) == b"abc"


def test_used_elements_carry_head_and_written_length():
    memory, driver, device = make_queue()
    head = driver.add_chain([(0x5000, 8, True)])
    device.add_used(device.pop_chain().head, 5)
    assert [(e.id, e.len) for e in driver.get_used()] == [(head, 5)]


@pytest.mark.parametrize("start", [0xFFFE, 0xFFFF, 0])
def test_indices_wrap_around_at_2_to_the_16(start):
    memory, driver, device = make_queue(size=4)
    # as if `start` requests had already gone through
    device.last_avail_idx = device.next_used_idx = device.signalled_used = start
    driver.avail_idx = driver.last_used_idx = start
    memory.write_u16(driver.avail_ring + 2, start)
    memory.write_u16(driver.used_ring + 2, start)
    heads = [driver.add_chain([(0x5000 + 16 * i, 1, True)]) for i in range(4)]
    for _ in heads:
        device.add_used(device.pop_chain().head, 1)
    assert [e.id for e in driver.get_used()] == heads
    assert device.last_avail_idx == (start + 4) & 0xFFFF


# -- hostile chains: one example each ------------------------------------------

def expect_error(device, words):
    with pytest.raises(VirtqueueError, match=words):
        device.pop_chain()


def test_a_loop_is_caught_by_the_hop_budget():
    memory, driver, device = make_queue()
    driver.write_descriptor(0, 0x4000, 1, NEXT, 1)
    driver.write_descriptor(1, 0x4000, 1, NEXT, 0)
    driver.publish(0)
    expect_error(device, "more than 8 buffers")


def test_next_past_the_table_is_refused():
    memory, driver, device = make_queue()
    driver.write_descriptor(0, 0x4000, 1, NEXT, 8)
    driver.publish(0)
    expect_error(device, "next 8 is past the table")


def test_head_past_the_table_is_refused():
    memory, driver, device = make_queue()
    driver.publish(0xFFFF)
    expect_error(device, "head 65535")


def test_avail_index_running_more_than_a_queue_ahead_is_refused():
    memory, driver, device = make_queue()
    driver.set_avail_idx(9)
    expect_error(device, "more than the queue size")


@pytest.mark.parametrize("addr,length", [(RAM - 4, 8), (RAM, 1), (2**64 - 8, 16),
                                         (2**64 - 1, 2)])
def test_buffers_past_ram_or_wrapping_2_to_the_64_are_refused(addr, length):
    memory, driver, device = make_queue()
    driver.add_chain([(addr, length, True)])
    expect_error(device, "not inside guest RAM|wraps past 2\\*\\*64")


def test_lengths_summing_past_2_to_the_32_are_refused():
    memory, driver, device = make_queue()
    driver.add_chain([(0, 0xFFFF_FFFF, False), (0, 0xFFFF_FFFF, False)])
    expect_error(device, "describes more than")


def test_lengths_summing_past_the_chain_cap_are_refused_even_inside_ram():
    memory, driver, device = make_queue(size=16, ram=2 * 1024 * 1024)
    chunk = 2 * 1024 * 1024 - 0x10000
    count = MAX_CHAIN_BYTES // chunk + 1
    driver.add_chain([(0x10000, chunk, False)] * count)
    expect_error(device, f"more than {MAX_CHAIN_BYTES} bytes")


def test_readable_after_writable_is_refused():
    memory, driver, device = make_queue()
    driver.add_chain([(0x5000, 1, True), (0x4000, 1, False)])
    expect_error(device, "readable buffer after a writable")


def test_indirect_without_the_feature_is_refused():
    memory, driver, device = make_queue(indirect=False)
    driver.add_chain([(0x5000, 1, True)], indirect_table=0x8000)
    expect_error(device, "without VIRTIO_RING_F_INDIRECT_DESC")


def test_nested_indirect_tables_are_refused():
    memory, driver, device = make_queue()
    driver.write_indirect_table(0x8100, [Descriptor(0x5000, 1, WRITE, 0)])
    driver.write_indirect_table(0x8000, [Descriptor(0x8100, 16, INDIRECT, 0)])
    driver.write_descriptor(0, 0x8000, 16, INDIRECT)
    driver.publish(0)
    expect_error(device, "indirect table inside an indirect table")


@pytest.mark.parametrize("flags,addr,length,words", [
    (INDIRECT | NEXT, 0x8000, 16, "INDIRECT together with NEXT"),
    (INDIRECT, 0x8000, 15, "not a non-zero multiple of 16"),
    (INDIRECT, 0x8000, 0, "not a non-zero multiple of 16"),
    (INDIRECT, 0x8000, 16 * 9, "longer than the queue size"),
    (INDIRECT, RAM - 16, 32, "not inside guest RAM"),
])
def test_malformed_indirect_descriptors_are_refused(flags, addr, length, words):
    memory, driver, device = make_queue()
    driver.write_descriptor(0, addr, length, flags, 1)
    driver.publish(0)
    expect_error(device, words)


def test_a_loop_inside_an_indirect_table_is_refused():
    memory, driver, device = make_queue()
    driver.write_indirect_table(0x8000, [Descriptor(0x4000, 1, NEXT, 1),
                                         Descriptor(0x4000, 1, NEXT, 0)])
    driver.write_descriptor(0, 0x8000, 32, INDIRECT)
    driver.publish(0)
    expect_error(device, "more than 8 buffers")


def test_next_past_an_indirect_table_is_refused():
    memory, driver, device = make_queue()
    driver.write_indirect_table(0x8000, [Descriptor(0x4000, 1, NEXT, 2),
                                         Descriptor(0x4000, 1, 0, 0)])
    driver.write_descriptor(0, 0x8000, 32, INDIRECT)
    driver.publish(0)
    expect_error(device, "next 2 is past the table of 2")


def test_each_descriptor_is_read_from_guest_memory_once():
    memory, driver, device = make_queue()
    driver.add_chain([(0x4000, 16, False), (0x5000, 16, True)])
    reads = []
    original = memory.read

    def counting_read(addr, size):
        reads.append((addr, size))
        return original(addr, size)

    memory.read = counting_read
    device.pop_chain()
    descriptor_reads = [r for r in reads if driver.desc_table <= r[0] < driver.desc_table + 128]
    assert sorted(descriptor_reads) == [(driver.desc_table, 16), (driver.desc_table + 16, 16)]


# -- notification suppression --------------------------------------------------

def test_no_interrupt_flag_suppresses_notifications_without_event_idx():
    memory, driver, device = make_queue()
    driver.add_chain([(0x5000, 1, True)])
    device.add_used(device.pop_chain().head, 1)
    assert device.needs_notification()
    driver.set_avail_flags(VIRTQ_AVAIL_F_NO_INTERRUPT)
    driver.add_chain([(0x5000, 1, True)])
    device.add_used(device.pop_chain().head, 1)
    assert not device.needs_notification()


def test_event_idx_notifies_only_when_used_idx_passes_used_event():
    memory, driver, device = make_queue(event_idx=True)
    driver.set_used_event(2)  # "interrupt me when the third buffer is used"
    for expected in (False, False, True, False):
        driver.add_chain([(0x5000, 1, True)])
        device.add_used(device.pop_chain().head, 1)
        assert device.needs_notification() is expected


def test_event_idx_device_asks_to_be_kicked_for_the_next_buffer():
    memory, driver, device = make_queue(event_idx=True)
    driver.add_chain([(0x5000, 1, True)])
    device.add_used(device.pop_chain().head, 1)
    device.set_avail_event()
    assert driver.avail_event() == 1
    before = driver.avail_idx
    driver.add_chain([(0x5000, 1, True)])
    assert driver.kick_needed(before)
    before = driver.avail_idx
    driver.add_chain([(0x5000, 1, True)])  # the device has not caught up: no kick needed
    assert not driver.kick_needed(before)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.integers(1, 64))
def test_vring_need_event_means_event_was_crossed(event, old, advance):
    """Moving from old to old+advance (mod 2**16) crosses `event` iff event is
    one of the indices old .. old+advance-1 that were written."""
    new = (old + advance) & 0xFFFF
    crossed = event in {(old + i) & 0xFFFF for i in range(advance)}
    assert vring_need_event(event, new, old) == crossed
