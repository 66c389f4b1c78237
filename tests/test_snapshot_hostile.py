"""A damaged, foreign or doctored snapshot is refused in one line, status 2.

The container's own checks are in test_snapshot_format.py. Here the file is
a real snapshot of a real machine, damaged in the ways the spec names --
cut at every section boundary and at random points, bits flipped, a
foreign magic, a future version, a huge length -- and also *doctored*:
sections with valid CRCs whose contents are wrong (a register that is not
a number, a memory region of another size, a device missing, another CPU
vendor). :func:`load_machine` must raise one
:class:`SnapshotError` for each, and ``minikvm resume`` must print one line
and exit with 2, without a traceback.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minikvm.core.config import MachineConfig
from minikvm.machine import Machine
from minikvm.snapshot.info import describe
from minikvm.snapshot.format import (HEADER, MAGIC, SECTION, Section, SnapshotError,
                                     json_payload, read_sections, write_sections)
from minikvm.snapshot.machine_state import load_machine, save_machine
from minikvm.kvm.uapi import kvm_sregs
from minikvm.snapshot.vcpu_state import MSR_IA32_TSC
from tests.conftest import ROOT

pytestmark = pytest.mark.kvm


@pytest.fixture(scope="module")
def snapshot(guests, tmp_path_factory) -> Path:
    """hello.bin, saved after a few exits."""
    path = tmp_path_factory.mktemp("snap") / "hello.snap"
    with Machine.from_config(machine_config(guests), output=lambda data: None) as machine:
        machine.run(timeout=20, max_exits=5)
        save_machine(machine, str(path), machine_config(guests))
    return path


def machine_config(guests: Path) -> MachineConfig:
    return MachineConfig(guest=str(guests / "hello.bin"), irqchip=True)


def refused_in_process(path: Path) -> str:
    with pytest.raises(SnapshotError) as caught:
        load_machine(str(path), output=lambda data: None)
    assert "\n" not in str(caught.value)
    return str(caught.value)


def refused_by_cli(path: Path) -> str:
    result = subprocess.run([sys.executable, "-m", "minikvm", "resume", str(path)],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def section_ends(data: bytes) -> list[int]:
    offsets, offset = [HEADER.size], HEADER.size
    while offset < len(data):
        length = SECTION.unpack_from(data, offset)[2]
        offsets.append(offset + SECTION.size)
        offset += SECTION.size + length
        offsets.append(offset)
    return offsets[:-1]


def doctored(snapshot: Path, tmp_path: Path, tag: bytes, change) -> Path:
    """A copy of ``snapshot`` whose JSON section ``tag`` went through
    ``change`` (CRCs recomputed: only the meaning is wrong)."""
    sections = []
    for section in read_sections(str(snapshot)):
        if section.tag == tag:
            doc = json.loads(section.payload)
            change(doc)
            section = Section(section.tag, section.index, json_payload(doc))
        sections.append(section)
    path = tmp_path / f"doctored-{tag.decode().strip()}.snap"
    write_sections(str(path), sections)
    return path


def test_the_snapshot_resumes_when_intact(snapshot):
    machine, config = load_machine(str(snapshot), output=lambda data: None)
    with machine:
        assert machine.exit_count >= 5
        assert config.guest.endswith("hello.bin")


def test_cut_at_every_section_boundary_is_refused_before_a_machine_is_built(snapshot, tmp_path):
    data = snapshot.read_bytes()
    for cut in section_ends(data):
        (tmp_path / "cut.snap").write_bytes(data[:cut])
        assert "truncated" in refused_in_process(tmp_path / "cut.snap")


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.floats(min_value=0, max_value=1, exclude_max=True),
       bit=st.integers(min_value=0))
def test_random_cuts_and_flipped_bits_are_refused(snapshot, tmp_path_factory, cut, bit):
    data = bytearray(snapshot.read_bytes())
    tmp_path = tmp_path_factory.mktemp("bad")
    (tmp_path / "cut.snap").write_bytes(data[:int(cut * len(data))])
    refused_in_process(tmp_path / "cut.snap")
    bit %= len(data) * 8
    data[bit // 8] ^= 1 << (bit % 8)
    (tmp_path / "flip.snap").write_bytes(bytes(data))
    refused_in_process(tmp_path / "flip.snap")


@pytest.mark.slow
def test_resume_refuses_a_foreign_file_in_one_line(guests, tmp_path):
    assert "not a minikvm snapshot" in refused_by_cli(guests / "hello.bin")


@pytest.mark.slow
def test_resume_refuses_cut_future_and_huge_files_in_one_line(snapshot, tmp_path):
    data = snapshot.read_bytes()
    (tmp_path / "cut.snap").write_bytes(data[:len(data) // 2])
    assert "truncated" in refused_by_cli(tmp_path / "cut.snap")
    head = struct.pack("<8sII", MAGIC, 99, 1)
    (tmp_path / "future.snap").write_bytes(head + struct.pack("<I", zlib.crc32(head)))
    assert "version 99" in refused_by_cli(tmp_path / "future.snap")
    huge = bytearray(data)
    tag, index, _, crc = SECTION.unpack_from(huge, HEADER.size)
    SECTION.pack_into(huge, HEADER.size, tag, index, 1 << 62, crc)
    (tmp_path / "huge.snap").write_bytes(bytes(huge))
    refused_by_cli(tmp_path / "huge.snap")
    assert "no such file" in refused_by_cli(tmp_path / "missing.snap").lower()


def _set_rip(doc):
    doc["regs"]["rip"] = "0x1000"


def _drop_a_device(doc):
    doc["devices"].pop(sorted(doc["devices"])[0])


def _bad_uart(doc):
    key = next(k for k in doc["devices"] if "com1" in k)
    doc["devices"][key] = {"nonsense": 1}


def _other_vendor(doc):
    doc["vendor"] = "GenuineIntel" if doc["vendor"] != "GenuineIntel" else "AuthenticAMD"


def _more_memory(doc):
    doc["config"]["mem_size"] *= 2


def _more_vcpus(doc):
    doc["config"]["vcpus"] = 2


def _msr_out_of_range(doc):
    doc["msrs"].append([MSR_IA32_TSC, 1 << 64])


def _xsave_size(doc):
    doc["xsave_size"] = 8192


def _escape_in_guest_name(doc):
    doc["guest"] = "hello.bin\x1b]0;owned\x07\nminikvm: all is well"


def _newline_in_disk_path(doc):
    doc["config"]["virtio"] = [{"kind": "blk", "path": "a\nb", "read_only": False, "size": 512}]


def _cr4_reserved_bit(doc):
    sregs = kvm_sregs.from_buffer_copy(bytes.fromhex(doc["sregs"]))
    sregs.cr4 |= 1 << 40    # reserved (Intel SDM vol. 3, 2.5): KVM_SET_SREGS says EINVAL
    doc["sregs"] = bytes(sregs).hex()


def _xcr0_without_x87(doc):
    doc["xcrs"] = [[0, 0xFFFF_FFFF]]   # XCR0 bit 0 must be set: KVM_SET_XCRS says EINVAL


DOCTORED = [
    (b"VCPU", _set_rip, "regs.rip"),
    (b"VCPU", _msr_out_of_range, "msrs"),
    (b"DEVS", _drop_a_device, "device state"),
    (b"DEVS", _bad_uart, "device state"),
    (b"META", _other_vendor, "CPU"),
    (b"META", _more_memory, "memory regions"),
    (b"META", _more_vcpus, "vCPU"),
    (b"META", _xsave_size, "XSAVE"),
    (b"META", _escape_in_guest_name, "META.guest holds control characters"),
    (b"META", _newline_in_disk_path, "META.config.virtio[].path holds control characters"),
    (b"VCPU", _cr4_reserved_bit, "KVM refused the snapshot's state: KVM_SET_SREGS"),
    (b"VCPU", _xcr0_without_x87, "KVM refused the snapshot's state: KVM_SET_XCRS"),
]


@pytest.mark.parametrize("tag, change, words", DOCTORED[:1] + [
    pytest.param(*case, marks=pytest.mark.slow) for case in DOCTORED[1:]],
    ids=[case[1].__name__.strip("_") for case in DOCTORED])
def test_doctored_sections_are_refused_before_anything_is_restored(snapshot, tmp_path, tag,
                                                                   change, words):
    assert words in refused_in_process(doctored(snapshot, tmp_path, tag, change))



@pytest.mark.slow
def test_resume_of_a_state_kvm_refuses_is_bad_input_not_a_kvm_failure(snapshot, tmp_path):
    """KVM_SET_SREGS refusing the file's CR4 is the file's fault: status 2, one line."""
    line = refused_by_cli(doctored(snapshot, tmp_path, b"VCPU", _cr4_reserved_bit))
    assert "KVM refused the snapshot's state" in line


#: Values a hostile JSON section may hold where the reader expects others.
HOSTILE_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(1 << 70), max_value=1 << 70),
    st.floats(allow_nan=True), st.text(max_size=8), st.just("ff" * 100_000),
    st.lists(st.integers(), max_size=4), st.dictionaries(st.text(max_size=4), st.integers(),
                                                         max_size=3))


def _paths(value, path=()):
    """Every place in a JSON document (the document itself first)."""
    yield path
    items = value.items() if isinstance(value, dict) else (
        enumerate(value) if isinstance(value, list) else ())
    for key, item in items:
        yield from _paths(item, (*path, key))


@pytest.mark.slow
@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_value_anywhere_in_a_json_section_is_refused_or_runs(snapshot, tmp_path_factory,
                                                                 data):
    """One JSON value replaced by a hostile one, CRCs valid: ``snapshot info``
    and the load are each one SnapshotError, or they work and the machine
    runs (bounded) without the VMM failing."""
    sections = read_sections(str(snapshot))
    number = data.draw(st.sampled_from([i for i, s in enumerate(sections)
                                        if s.tag in (b"META", b"VCPU", b"DEVS", b"CLCK")]))
    victim = sections[number]
    doc = json.loads(victim.payload)
    path = data.draw(st.sampled_from(list(_paths(doc))))
    value = data.draw(HOSTILE_VALUES)
    if path:
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        parent[path[-1]] = value
    else:
        doc = value
    sections[number] = Section(victim.tag, victim.index, json_payload(doc))
    path_out = tmp_path_factory.mktemp("json") / "doctored.snap"
    write_sections(str(path_out), sections)
    try:
        assert all(isinstance(line, str) for line in describe(str(path_out)))  # snapshot info
    except SnapshotError as err:
        assert "\n" not in str(err)
    try:
        machine, _ = load_machine(str(path_out), output=lambda data: None)
    except SnapshotError as err:
        assert "\n" not in str(err)
        return
    with machine:
        machine.run(timeout=2, max_exits=20)


@pytest.mark.slow
def test_a_tiny_file_that_claims_a_terabyte_of_ram_is_refused_in_one_line(snapshot, tmp_path):
    """Zero pages are not stored, so a few bytes can claim 1 TiB of RAM
    consistently (META and every region): the host refusing to map it is a
    SnapshotError, and resume says so with status 2."""
    from minikvm.core.board import ram_regions

    size = 1 << 40
    sections = []
    for section in read_sections(str(snapshot)):
        if section.tag == b"META":
            doc = json.loads(section.payload)
            doc["config"]["mem_size"] = size
            section = Section(b"META", 0, json_payload(doc))
        if section.tag != b"MEMR":
            sections.append(section)
    sections += [Section(b"MEMR", slot, struct.pack("<QQI", base, length, 0))
                 for slot, (base, length) in enumerate(ram_regions(size))]
    path = tmp_path / "terabyte.snap"
    write_sections(str(path), sections)
    assert path.stat().st_size < 64 << 10
    assert "cannot be built here: 1099511627776 bytes of RAM" in refused_in_process(path)
    assert "cannot be built here" in refused_by_cli(path)


@pytest.mark.slow
@pytest.mark.parametrize("value", [5, None, "vcpu", {"a": 1}, ["\x1b[2J", "ok"]])
def test_snapshot_info_reads_doctored_parts_without_failing(snapshot, tmp_path, value):
    """META's ``parts`` only informs a person: ``snapshot info`` shows what
    it can of a doctored one (the load does not read it at all)."""
    def change(doc):
        doc["parts"] = {"vcpu": value, "vm": value, "devices": value}

    lines = describe(str(doctored(snapshot, tmp_path, b"META", change)))
    assert any(line.startswith("parts saved per vCPU:") for line in lines)
    assert all(line.isprintable() for line in lines)
