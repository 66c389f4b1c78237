"""GuestMemory: every access is bounds- and overflow-checked."""

from __future__ import annotations

import tracemalloc

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from minikvm.memory import FILL_CHUNK, PAGE_SIZE, GuestMemory, GuestMemoryError

MIB = 1 << 20


@pytest.fixture
def memory() -> GuestMemory:
    mem = GuestMemory()
    mem.add_region(0, 2 * MIB)
    mem.add_region(4 * MIB, 64 * 1024)
    return mem


def test_new_memory_reads_zero(memory):
    assert memory.read(0, 16) == bytes(16)


def test_little_endian_integers_round_trip(memory):
    memory.write_u8(0x10, 0x1AB)
    memory.write_u16(0x20, 0xBEEF)
    memory.write_u32(0x30, 0xDEADBEEF)
    memory.write_u64(0x40, 0x0123456789ABCDEF)
    assert memory.read_u8(0x10) == 0xAB
    assert memory.read(0x20, 2) == b"\xef\xbe"
    assert memory.read_u32(0x30) == 0xDEADBEEF
    assert memory.read_u64(0x40) == 0x0123456789ABCDEF
    assert memory.read_int(0x40, 8) == 0x0123456789ABCDEF


def test_second_region_is_addressed_by_its_guest_address(memory):
    memory.write(4 * MIB + 8, b"abc")
    assert memory.read(4 * MIB + 8, 3) == b"abc"
    assert memory.regions[1].mapping[8:11] == b"abc"


def test_view_is_zero_copy(memory):
    view = memory.view(0x100, 4)
    view[:] = b"wxyz"
    assert memory.read(0x100, 4) == b"wxyz"
    memory.write(0x100, b"1234")
    assert bytes(view) == b"1234"


def test_access_in_the_hole_between_regions_is_refused(memory):
    with pytest.raises(GuestMemoryError, match="not in guest RAM"):
        memory.read(3 * MIB, 1)


def test_access_straddling_the_end_of_a_region_is_refused(memory):
    with pytest.raises(GuestMemoryError, match="runs past the end"):
        memory.read(2 * MIB - 2, 4)
    with pytest.raises(GuestMemoryError):
        memory.write_u64(2 * MIB - 4, 0)


def test_negative_and_wrapping_addresses_are_refused(memory):
    with pytest.raises(GuestMemoryError, match="negative"):
        memory.read(-1, 1)
    with pytest.raises(GuestMemoryError, match="wraps"):
        memory.read((1 << 64) - 2, 4)
    with pytest.raises(GuestMemoryError):
        memory.read_u32(1 << 70)


def test_non_integer_address_is_refused(memory):
    with pytest.raises(GuestMemoryError):
        memory.read(1.5, 1)  # type: ignore[arg-type]
    with pytest.raises(GuestMemoryError):
        memory.read(True, 1)  # type: ignore[arg-type]


def test_overlapping_or_unaligned_regions_are_refused(memory):
    with pytest.raises(GuestMemoryError, match="overlaps"):
        memory.add_region(MIB, PAGE_SIZE)
    with pytest.raises(GuestMemoryError, match="page aligned"):
        memory.add_region(8 * MIB + 1, PAGE_SIZE)
    with pytest.raises(GuestMemoryError, match="page aligned"):
        memory.add_region(8 * MIB, 100)


def test_contains(memory):
    assert memory.contains(0, 2 * MIB)
    assert not memory.contains(0, 2 * MIB + 1)
    assert not memory.contains(-4)


def _expected_ok(regions: list[tuple[int, int]], addr: int, size: int) -> bool:
    """The spec: an access is valid iff it lies inside one region."""
    return any(base <= addr and addr + size <= base + length for base, length in regions)


addresses = st.one_of(
    st.integers(min_value=-(1 << 65), max_value=1 << 65),
    # near the edges of the regions below
    st.sampled_from([0, 2 * MIB, 4 * MIB, 4 * MIB + 64 * 1024]).flatmap(
        lambda edge: st.integers(min_value=edge - 16, max_value=edge + 16)),
    st.integers(min_value=(1 << 64) - 32, max_value=(1 << 64) + 32),
)


@settings(max_examples=300, deadline=None)
@given(addr=addresses, size=st.integers(min_value=0, max_value=64))
def test_read_succeeds_exactly_when_inside_one_region(addr, size):
    regions = [(0, 2 * MIB), (4 * MIB, 64 * 1024)]
    mem = GuestMemory()
    for base, length in regions:
        mem.add_region(base, length)
    ok = addr >= 0 and addr + size <= (1 << 64) and _expected_ok(regions, addr, size)
    if ok:
        assert len(mem.read(addr, size)) == size
        mem.write(addr, b"\x5a" * size)
        assert mem.read(addr, size) == b"\x5a" * size
    else:
        with pytest.raises(GuestMemoryError):
            mem.read(addr, size)
        with pytest.raises(GuestMemoryError):
            mem.write(addr, b"\x00" * size)


@settings(max_examples=200, deadline=None)
@given(addr=addresses, width=st.sampled_from([1, 2, 4, 8]), value=st.integers(0, (1 << 64) - 1))
def test_sized_access_round_trips_or_raises(addr, width, value):
    mem = GuestMemory.with_size(2 * MIB)
    writer = {1: mem.write_u8, 2: mem.write_u16, 4: mem.write_u32, 8: mem.write_u64}[width]
    reader = {1: mem.read_u8, 2: mem.read_u16, 4: mem.read_u32, 8: mem.read_u64}[width]
    if 0 <= addr and addr + width <= 2 * MIB:
        writer(addr, value)
        assert reader(addr) == value & ((1 << (8 * width)) - 1)
    else:
        with pytest.raises(GuestMemoryError):
            writer(addr, value)
        with pytest.raises(GuestMemoryError):
            reader(addr)


# -- fill ------------------------------------------------------------------------------------

FILL_RAM = 4 * MIB
FILL_BASE = 16 * PAGE_SIZE   # not 0: a guest address is not an offset into the region

#: Sizes around the edges of fill's chunks, and any size up to three of them.
fill_sizes = st.one_of(
    st.integers(min_value=0, max_value=3 * FILL_CHUNK + 16),
    st.integers(min_value=0, max_value=3).flatmap(
        lambda chunks: st.integers(min_value=max(0, chunks * FILL_CHUNK - 8),
                                   max_value=chunks * FILL_CHUNK + 8)),
)


@settings(max_examples=60, deadline=None)
@given(addr=st.integers(min_value=FILL_BASE - 8, max_value=FILL_BASE + FILL_RAM + 8),
       size=fill_sizes, byte=st.integers(min_value=0, max_value=255))
@example(addr=FILL_BASE, size=0, byte=1)
@example(addr=FILL_BASE + 1, size=FILL_CHUNK, byte=2)
@example(addr=FILL_BASE, size=2 * FILL_CHUNK, byte=3)
@example(addr=FILL_BASE + 7, size=FILL_CHUNK + 1, byte=4)
@example(addr=FILL_BASE, size=FILL_RAM, byte=5)
def test_fill_sets_exactly_its_range_or_refuses_it_whole(addr, size, byte):
    """The spec: inside the region every byte of the range becomes ``byte``
    and nothing else changes; a range that leaves the region is refused
    before anything is written."""
    mem = GuestMemory.with_size(FILL_RAM, base=FILL_BASE)
    mem.write(FILL_BASE, bytes(range(256)) * (FILL_RAM // 256))
    model = bytearray(mem.read(FILL_BASE, FILL_RAM))
    if FILL_BASE <= addr and addr + size <= FILL_BASE + FILL_RAM:
        mem.fill(addr, size, byte)
        model[addr - FILL_BASE:addr - FILL_BASE + size] = bytes((byte,)) * size
    else:
        with pytest.raises(GuestMemoryError):
            mem.fill(addr, size, byte)
    assert mem.read(FILL_BASE, FILL_RAM) == model


def test_fill_of_a_large_range_allocates_one_chunk_on_the_host():
    """A BSS of most of guest RAM (the size comes from the image) must not
    cost a host allocation as large: fill writes from one chunk, and the
    last, shorter part through a view of it, not a copy."""
    size = 32 * MIB - PAGE_SIZE   # whole chunks and a tail
    mem = GuestMemory.with_size(32 * MIB)
    tracing_already = tracemalloc.is_tracing()
    if not tracing_already:
        tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        start, _ = tracemalloc.get_traced_memory()
        mem.fill(0, size, 0xCC)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        if not tracing_already:
            tracemalloc.stop()
    assert mem.read(size - 4, 5) == b"\xcc" * 4 + b"\x00"
    assert peak - start < FILL_CHUNK + 64 * 1024, peak - start
