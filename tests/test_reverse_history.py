"""The undo log's data, without a VM: register diffs, changed byte ranges,
the bounded history, and the VMM's own writes to guest RAM."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from minikvm.debug.history import Entry, History, apply_words, changed_range, word_diff
from minikvm.memory import PAGE_SIZE, GuestMemory

REGS = st.lists(st.integers(0, 2**64 - 1), min_size=18, max_size=18)


@given(REGS, REGS)
def test_a_register_diff_takes_either_block_to_the_other(before, after):
    old, new = struct.pack("<18Q", *before), struct.pack("<18Q", *after)
    diff = word_diff(old, new)
    changed = sum(b != a for b, a in zip(before, after))
    assert len(diff) == 4 + 16 * changed
    block = bytearray(old)
    apply_words(block, diff, forward=True)
    assert block == new
    apply_words(block, diff, forward=False)
    assert block == old


@given(st.binary(min_size=64, max_size=64), st.data())
def test_changed_range_covers_exactly_the_first_to_the_last_changed_byte(old, data):
    new = bytearray(old)
    for index in data.draw(st.sets(st.integers(0, 63), max_size=5)):
        new[index] ^= data.draw(st.integers(1, 255))
    differ = [i for i in range(64) if old[i] != new[i]]
    expected = (differ[0], differ[-1] + 1) if differ else None
    assert changed_range(old, bytes(new)) == expected


@given(st.lists(st.sampled_from(["append", "undo", "redo", "truncate"]), max_size=60),
       st.integers(1, 8))
def test_history_keeps_at_most_the_cap_and_moves_one_entry_at_a_time(operations, cap):
    history = History(max_entries=cap)
    for operation in operations:
        length, position = len(history), history.position
        if operation == "append":
            history.truncate()
            history.append(Entry(word_diff(bytes(8), bytes(8))))
            assert len(history) == min(cap, history.position)
            assert history.at_end
        elif operation == "undo":
            entry = history.undo()
            assert (entry is None) == (position == 0)
            assert history.position == max(position - 1, 0)
        elif operation == "redo":
            entry = history.redo()
            assert (entry is None) == (position == length)
            assert history.position == min(position + 1, length)
        else:
            history.truncate()
            assert len(history) == position and history.at_end
        assert 0 <= history.position <= len(history) <= cap
        assert history.bytes == sum(e.size for e in history._entries[history._head:])


@settings(max_examples=40)
@given(st.lists(st.tuples(st.integers(0, 3 * PAGE_SIZE), st.integers(0, 200_000)),
                min_size=1, max_size=30),
       st.integers(1, 1 << 20))
def test_the_byte_cap_holds_whatever_each_step_changed(steps, max_bytes):
    """A hostile guest decides how much each step changes: guest memory (a
    device's DMA may rewrite megabytes in one exit) and device state
    (pc-testdev saves its 64 KiB of scratch memory as hex). The history
    never counts more than its cap, and counts at least the data it keeps."""
    history = History(max_entries=1000, max_bytes=max_bytes)
    for number, (memory_bytes, state_chars) in enumerate(steps, 1):
        memory = ((0x1000, bytes(memory_bytes), b"\1" * memory_bytes),) if memory_bytes else ()
        devices = ({"testdev": "0" * state_chars}, {"testdev": "1" * state_chars})
        entry = Entry(word_diff(bytes(8), bytes(8)), memory=memory, devices=devices)
        assert entry.size >= 2 * memory_bytes + 2 * state_chars
        history.append(entry)
        assert history.bytes <= max_bytes
        assert history.bytes == sum(e.size for e in history._entries[history._head:])
        assert history.at_end and len(history) + history.dropped == number


def test_an_entry_bigger_than_the_byte_cap_empties_the_history():
    history = History(max_entries=100, max_bytes=1000)
    history.append(Entry(word_diff(bytes(8), bytes(8)), memory=((0, b"a", b"b"),)))
    history.append(Entry(word_diff(bytes(8), bytes(8)), memory=((0, bytes(600), b"x" * 600),)))
    assert (len(history), history.dropped, history.bytes) == (0, 2, 0)
    assert history.undo() is None and history.at_end


def test_guest_memory_names_the_pages_the_vmm_wrote_only_when_asked():
    memory = GuestMemory.with_size(16 * PAGE_SIZE)
    memory.write(0x10, b"x")
    assert memory.take_written() == set()
    memory.track_writes()
    memory.write(PAGE_SIZE - 1, b"ab")              # straddles pages 0 and 1
    memory.write_u64(3 * PAGE_SIZE, 1)
    memory.fill(5 * PAGE_SIZE, PAGE_SIZE + 1)       # pages 5 and 6
    memory.view(9 * PAGE_SIZE, 8)                    # a device may store through it
    assert memory.take_written() == {0, 1, 3, 5, 6, 9}
    assert memory.take_written() == set()
    memory.track_writes(False)
    memory.write_u8(0, 1)
    assert memory.take_written() == set()
