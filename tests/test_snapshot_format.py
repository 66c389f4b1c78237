"""The snapshot container refuses every damaged, foreign or hostile file in one line.

Pure Python (no KVM): files are written with :func:`write_sections` and
damaged in every way the spec names -- truncated at each section boundary
and at every byte, bits flipped, a foreign magic, a future version, lengths
and counts far beyond the file -- and :func:`read_sections` must raise one
:class:`SnapshotError` each time, never return a partial result.
"""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minikvm.snapshot.format import (HEADER, MAGIC, SECTION, VERSION, Section, SnapshotError,
                                     json_payload, read_sections, write_sections)
from minikvm.snapshot.memory_image import PAGE_SIZE, RegionImage

SECTIONS = [
    Section(b"META", 0, json_payload({"guest": "hello.bin", "exit_count": 3})),
    Section(b"VCPU", 0, json_payload({"regs": {"rip": 4096}})),
    Section(b"XSAV", 0, bytes(range(256)) * 2),
    Section(b"MEMR", 0, RegionImage(0, 0, 4 * PAGE_SIZE, [(1, 1)], b"\x90" * PAGE_SIZE)
            .section().payload),
]


@pytest.fixture
def good(tmp_path) -> bytes:
    path = tmp_path / "good.snap"
    write_sections(str(path), SECTIONS)
    return path.read_bytes()


def refused(tmp_path, data: bytes) -> str:
    path = tmp_path / "bad.snap"
    path.write_bytes(data)
    with pytest.raises(SnapshotError) as caught:
        read_sections(str(path))
    message = str(caught.value)
    assert "\n" not in message
    return message


def boundaries(data: bytes) -> list[int]:
    """Offsets where a section header starts, and where each ends."""
    offsets = [HEADER.size]
    offset = HEADER.size
    for section in SECTIONS:
        offsets.append(offset + SECTION.size)
        offset += SECTION.size + len(section.payload)
        offsets.append(offset)
    assert offset == len(data)
    return offsets[:-1]


def test_sections_written_are_read_back_unchanged(tmp_path, good):
    path = tmp_path / "good.snap"
    assert read_sections(str(path)) == SECTIONS


def test_truncated_at_every_section_boundary_is_refused(tmp_path, good):
    for cut in boundaries(good):
        assert "truncated" in refused(tmp_path, good[:cut])


@pytest.mark.slow
def test_truncated_at_any_byte_is_refused(tmp_path, good):
    for cut in range(0, len(good), 7):
        refused(tmp_path, good[:cut])


@settings(max_examples=200, deadline=None)
@given(bit=st.integers(min_value=0))
def test_any_flipped_bit_is_refused(tmp_path_factory, bit):
    tmp_path = tmp_path_factory.mktemp("flip")
    write_sections(str(tmp_path / "good.snap"), SECTIONS)
    data = bytearray((tmp_path / "good.snap").read_bytes())
    bit %= len(data) * 8
    data[bit // 8] ^= 1 << (bit % 8)
    refused(tmp_path, bytes(data))


@settings(max_examples=100, deadline=None)
@given(junk=st.binary(max_size=300))
def test_random_bytes_after_a_valid_header_are_refused(tmp_path_factory, junk):
    tmp_path = tmp_path_factory.mktemp("junk")
    head = struct.pack("<8sII", MAGIC, VERSION, 3)
    refused(tmp_path, head + struct.pack("<I", zlib.crc32(head)) + junk)


def test_a_foreign_file_is_refused_for_its_magic(tmp_path, good):
    assert "not a minikvm snapshot" in refused(tmp_path, b"\x7fELF" + good[4:])
    assert "not a minikvm snapshot" in refused(tmp_path, b"")


def _with_header(good: bytes, version: int = VERSION, count: int = len(SECTIONS)) -> bytes:
    head = struct.pack("<8sII", MAGIC, version, count)
    return head + struct.pack("<I", zlib.crc32(head)) + good[HEADER.size:]


def test_a_future_version_is_refused_by_name(tmp_path, good):
    assert "version 2" in refused(tmp_path, _with_header(good, version=2))


def test_a_huge_section_count_is_refused_before_reading_on(tmp_path, good):
    assert "sections" in refused(tmp_path, _with_header(good, count=1 << 31))


@pytest.mark.parametrize("length", [1 << 63, (1 << 64) - 1, 1 << 41, 10**9])
def test_a_huge_section_length_is_refused_without_allocating(tmp_path, good, length):
    data = bytearray(good)
    tag, index, _, crc = SECTION.unpack_from(data, HEADER.size)
    SECTION.pack_into(data, HEADER.size, tag, index, length, crc)
    refused(tmp_path, bytes(data))


def test_memory_runs_outside_the_region_or_short_of_data_are_refused():
    good = RegionImage(0, 0, 4 * PAGE_SIZE, [(1, 2)], b"\x01" * 2 * PAGE_SIZE)
    assert RegionImage.from_section(good.section()).runs == [(1, 2)]
    for runs, data in (([(3, 2)], 2), ([(1, 1), (1, 1)], 2), ([(0, 0)], 0), ([(1, 2)], 1)):
        bad = RegionImage(0, 0, 4 * PAGE_SIZE, runs, b"\x01" * data * PAGE_SIZE)
        with pytest.raises(SnapshotError):
            RegionImage.from_section(bad.section())
