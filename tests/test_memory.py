"""GuestMemory: every access is bounds- and overflow-checked."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minikvm.memory import PAGE_SIZE, GuestMemory, GuestMemoryError

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
