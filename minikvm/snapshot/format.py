"""The snapshot file: a header that says what it is, then typed sections.

A snapshot file is read by a program that must not trust it: it may be
truncated (a full disk, a copy cut short), corrupted (a flipped bit), made
by another program or a later minikvm, or built by hand to make the reader
allocate 2**64 bytes. So the container is small and strict:

=========  ==========================================================
header     ``MAGIC`` (8 bytes), format ``VERSION`` (u32), section
           count (u32), CRC32 of those 16 bytes (u32)
section    tag (4 ASCII bytes), index (u32: which vCPU, memory region
           or irqchip), length (u64), CRC32 of those 16 bytes and the
           payload (u32), then ``length`` bytes of payload
=========  ==========================================================

All numbers are little-endian. Small structured parts (the configuration,
named registers, device states) are JSON; big ones (the XSAVE area, the
LAPIC page, guest memory) are raw bytes. :func:`read_sections` checks the
magic, the version, every length against a cap and against what is left
of the file, and every CRC, and only then returns anything: a bad file is
a :class:`SnapshotError` (one line), never a half-read result.

The idea is PNG's chunks (a length, a type and a CRC each) and, closer
to home, Firecracker's versioned snapshot file (``vmm/src/snapshot``).
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, BinaryIO

from minikvm.statecheck import Fields

__all__ = ["HEADER", "MAGIC", "MAX_JSON", "MAX_SECTIONS", "SECTION", "JsonFields", "Section",
           "SnapshotError", "VERSION", "json_payload", "parse_json", "read_sections",
           "write_sections"]

#: The first eight bytes of every snapshot: "minikvm snapshot", with a byte
#: that is not text (0x1A, as in PNG) so that a text file never matches.
MAGIC = b"MKVM\x1aSNP"
#: The format version. A reader refuses any other: a later format may
#: mean different things by the same tags.
VERSION = 1
#: magic, version, section count, CRC32 of the preceding 16 bytes.
HEADER = struct.Struct("<8sIII")
#: tag, index, payload length, CRC32 of the three and the payload.
SECTION = struct.Struct("<4sIQI")
#: At most this many sections (a few per vCPU of the 64 a machine may have,
#: the memory regions, the VM's own): a count above it is refused at once.
MAX_SECTIONS = 1024
#: Every section but guest memory is at most this big: the largest JSON
#: (the device states) is a few KiB and the largest raw one (the XSAVE
#: area) 4 KiB, more with AMX; this leaves room and still stops a hostile length.
MAX_JSON = 16 << 20
#: Tags whose payload may be as large as the guest's memory.
_BIG_TAGS = frozenset({b"MEMR"})
#: Guest memory sections: at most 1 TiB each (KVM's per-slot limit is 8 TiB,
#: our hosts have far less); the real cap is what is left of the file.
MAX_MEMORY = 1 << 40


class SnapshotError(ValueError):
    """A snapshot file that cannot be used, or a machine that cannot be
    saved: one line for a person (``minikvm`` exits with status 2)."""


class JsonFields(Fields):
    """An object of a JSON section, checked field by field before any value
    is used (:class:`~minikvm.statecheck.Fields`): its CRC only proves that
    nobody changed it by accident. A wrong value is a :class:`SnapshotError`
    naming its JSON path, ``VCPU[0].regs.rip is '0x1000', not an integer``."""

    error = SnapshotError


@dataclass(frozen=True)
class Section:
    """One section: its four-letter ``tag``, its ``index`` and payload."""

    tag: bytes
    index: int
    payload: bytes

    @property
    def name(self) -> str:
        """``VCPU[1]``: the tag and index, for messages."""
        return f"{self.tag.decode('ascii', 'replace').strip()}[{self.index}]"


def json_payload(value: Any) -> bytes:
    """A JSON section's payload (compact, keys in order: the same state
    gives the same bytes)."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode("utf-8")


def parse_json(section: Section) -> Any:
    """A JSON section's value; bad JSON is a :class:`SnapshotError`."""
    try:
        return json.loads(section.payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise SnapshotError(f"section {section.name} is not valid JSON") from None


def write_sections(path: str, sections: Iterable[Section]) -> int:
    """Write a snapshot file atomically: into ``path``.tmp, flushed to disk,
    then renamed over ``path`` -- a crash mid-save leaves the old file or
    none, never a torn one. Returns the file's size."""
    sections = list(sections)
    if len(sections) > MAX_SECTIONS:
        raise SnapshotError(f"{len(sections)} sections: a snapshot holds at most {MAX_SECTIONS}")
    head = struct.pack("<8sII", MAGIC, VERSION, len(sections))
    temporary = f"{path}.tmp"
    try:
        with open(temporary, "wb") as file:
            file.write(head + struct.pack("<I", zlib.crc32(head)))
            for section in sections:
                fields = _FIELDS.pack(section.tag, section.index, len(section.payload))
                file.write(fields + struct.pack("<I", _crc(fields, section.payload)))
                file.write(section.payload)
            file.flush()
            os.fsync(file.fileno())
            size = file.tell()
        os.replace(temporary, path)
    except OSError as err:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise SnapshotError(f"cannot write the snapshot {path}: {err.strerror or err}") from None
    return size


_FIELDS = struct.Struct("<4sIQ")


def _crc(fields: bytes, payload: bytes) -> int:
    """A section's CRC covers its tag, index and length too: a flipped bit
    there would otherwise turn one valid section into another."""
    return zlib.crc32(payload, zlib.crc32(fields))


def _read_exactly(file: BinaryIO, size: int, what: str) -> bytes:
    data = file.read(size)
    if len(data) != size:
        raise SnapshotError(f"the file is truncated: it ends inside {what}")
    return data


def _cap(tag: bytes) -> int:
    return MAX_MEMORY if tag in _BIG_TAGS else MAX_JSON


def read_sections(path: str) -> list[Section]:
    """Every section of the snapshot at ``path``, each checked (see the
    module docstring); any problem is one :class:`SnapshotError`."""
    try:
        file = open(path, "rb")
    except OSError as err:
        raise SnapshotError(f"{path}: {err.strerror or err}") from None
    with file:
        try:
            total = os.fstat(file.fileno()).st_size
        except OSError as err:
            raise SnapshotError(f"{path}: {err.strerror or err}") from None
        head = file.read(HEADER.size)
        if len(head) < len(MAGIC) or head[:len(MAGIC)] != MAGIC:
            raise SnapshotError(f"{path} is not a minikvm snapshot (no {MAGIC!r} at its start)")
        if len(head) != HEADER.size:
            raise SnapshotError(f"{path} is truncated: it ends inside the header")
        _, version, count, crc = HEADER.unpack(head)
        if zlib.crc32(head[:-4]) != crc:
            raise SnapshotError(f"{path}: the header is corrupted (CRC mismatch)")
        if version != VERSION:
            raise SnapshotError(f"{path} is a version {version} snapshot; this minikvm reads "
                                f"version {VERSION} only")
        if count > MAX_SECTIONS:
            raise SnapshotError(f"{path}: {count} sections is more than a snapshot may hold "
                                f"({MAX_SECTIONS})")
        sections = []
        for number in range(count):
            raw = _read_exactly(file, SECTION.size, f"the header of section {number}")
            tag, index, length, crc = SECTION.unpack(raw)
            if not (tag.isascii() and tag.decode("ascii").strip().isalnum()):
                raise SnapshotError(f"{path}: section {number} has no valid tag ({tag!r})")
            left = total - file.tell()
            if length > _cap(tag):
                raise SnapshotError(f"{path}: section {tag.decode()}[{index}] claims {length} "
                                    f"bytes, more than such a section may hold ({_cap(tag)})")
            if length > left:
                raise SnapshotError(f"{path} is truncated: section {tag.decode()}[{index}] "
                                    f"needs {length} bytes, {left} are left")
            payload = _read_exactly(file, length, f"section {tag.decode()}[{index}]")
            if _crc(raw[:_FIELDS.size], payload) != crc:
                raise SnapshotError(f"{path}: section {tag.decode()}[{index}] is corrupted "
                                    "(CRC mismatch)")
            sections.append(Section(tag, index, payload))
        if file.read(1):
            raise SnapshotError(f"{path}: bytes after the last section (not a file this "
                                "minikvm wrote)")
    return sections
