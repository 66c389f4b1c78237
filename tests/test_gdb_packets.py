"""The gdb stub's wire format and register maps, without a VM.

The framing follows the GDB manual's appendix "Remote Protocol", section
"Overview" (``$data#cs``, acks, binary escapes) and "Interrupts" (the 0x03
byte); the register numbering follows "Target Descriptions" / "i386 Features".
The byte-stream properties here are what makes the stub safe to expose to
any client: whatever arrives, in whatever pieces, the parser yields events
and never raises.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minikvm.cli.options import parse_gdb_address
from minikvm.gdb.commands import stop_reply
from minikvm.gdb.packets import (
    MAX_PACKET,
    EventKind,
    PacketReader,
    checksum,
    encode_packet,
    escape_binary,
    unescape_binary,
)
from minikvm.gdb.points import watch_pieces
from minikvm.gdb.registers import AMD64, I386, RegisterError, RegisterFile, Source, full_tag_word
from minikvm.gdb.target import Report
from minikvm.gdb.tdesc import read_chunk, target_xml
from minikvm.kvm.uapi import kvm_fpu, kvm_regs, kvm_sregs
from minikvm.x86.flags import Cr0, Rflags


def events(*chunks: bytes):
    reader = PacketReader()
    return [event for chunk in chunks for event in reader.feed(chunk)]


# -- framing ---------------------------------------------------------------------------------


def test_the_checksum_is_the_byte_sum_modulo_256():
    assert encode_packet(b"g") == b"$g#67"               # the manual's own example
    assert encode_packet(b"OK") == b"$OK#9a"
    assert checksum(b"\xff\x02") == 0x01


def test_a_packet_with_a_good_checksum_is_delivered():
    [event] = events(b"$m1000,4#" + b"%02x" % checksum(b"m1000,4"))
    assert event.kind is EventKind.PACKET and event.data == b"m1000,4"


def test_acks_naks_and_the_interrupt_byte_between_packets():
    kinds = [event.kind for event in events(b"+-\x03")]
    assert kinds == [EventKind.ACK, EventKind.NAK, EventKind.INTERRUPT]


def test_noise_between_packets_is_skipped_and_counted():
    reader = PacketReader()
    assert list(reader.feed(b"\r\n hello ")) == []
    assert reader.skipped == 9


def test_a_wrong_checksum_is_reported_corrupt():
    [event] = events(b"$g#00")
    assert event.kind is EventKind.CORRUPT and "sums to 67" in event.reason


def test_checksum_digits_that_are_not_hex_are_corrupt():
    [event] = events(b"$g#zz")
    assert event.kind is EventKind.CORRUPT


def test_a_packet_cut_short_by_a_new_start_is_corrupt_and_the_next_one_counts():
    found = events(b"$m10" + encode_packet(b"?"))
    assert [event.kind for event in found] == [EventKind.CORRUPT, EventKind.PACKET]
    assert found[1].data == b"?"


def test_0x03_inside_a_packet_is_data_not_an_interrupt():
    data = b"X1000,1:\x03"        # X carries raw binary
    [event] = events(encode_packet(data))
    assert event.kind is EventKind.PACKET and event.data == data


def test_an_oversized_packet_is_malformed_and_never_kept_whole():
    data = b"M0," + b"0" * (MAX_PACKET * 2)
    reader = PacketReader()
    [event] = list(reader.feed(encode_packet(data)))
    assert event.kind is EventKind.MALFORMED and "PacketSize" in event.reason
    assert len(reader._data) <= MAX_PACKET


def test_binary_escapes_are_undone_and_a_lone_escape_is_malformed():
    [event] = events(encode_packet(b"X0,2:}\x03}\x5d"))   # '#' and '}' escaped
    assert event.data == b"X0,2:#}"
    [event] = events(encode_packet(b"X0,1:}"))
    assert event.kind is EventKind.MALFORMED


@given(st.binary(max_size=300))
def test_escaping_round_trips_and_leaves_no_framing_byte(data):
    escaped = escape_binary(data)
    assert unescape_binary(escaped) == data
    assert not set(escaped) & set(b"$#*") and escaped.count(b"}") * 2 <= len(escaped)


@settings(max_examples=200)
@given(st.lists(st.binary(min_size=0, max_size=40), max_size=8), st.data())
def test_packets_split_anywhere_give_the_same_events(payloads, data):
    stream = b"".join(encode_packet(escape_binary(p)) + b"+" for p in payloads)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    pieces = [stream[a:b] for a, b in zip([0] + cuts, cuts + [len(stream)])]
    whole = events(stream)
    assert events(*pieces) == whole
    assert [e.data for e in whole if e.kind is EventKind.PACKET] == payloads


@settings(max_examples=100)
@given(st.lists(st.one_of(st.binary(max_size=64), st.sampled_from(
    [b"$", b"#", b"}", b"\x03", b"+", b"-", b"$g#67", b"$g#6", b"#zz"])), max_size=30))
def test_any_byte_stream_gives_events_and_never_raises(chunks):
    for event in events(*chunks):
        assert event.kind in EventKind
        assert len(event.data) <= MAX_PACKET


# -- replies --------------------------------------------------------------------------------


@pytest.mark.parametrize("report, reply", [
    (Report("stopped", 5, 0), b"T05thread:1;"),
    (Report("stopped", 5, 1, reason="swbreak"), b"T05swbreak:;thread:2;"),
    (Report("stopped", 5, 0, reason="hwbreak"), b"T05hwbreak:;thread:1;"),
    (Report("stopped", 5, 0, reason="watch", address=0x100150), b"T05watch:100150;thread:1;"),
    (Report("stopped", 5, 0, reason="rwatch", address=0x10), b"T05rwatch:10;thread:1;"),
    (Report("stopped", 2, 0), b"T02thread:1;"),
    (Report("exited", 0, 0, status=85), b"W55"),
    (Report("terminated", 11, 0), b"X0b"),
])
def test_stop_replies(report, reply):
    assert stop_reply(report) == reply


def test_a_qxfer_read_says_m_while_more_follows_and_l_at_the_end():
    assert read_chunk(b"abcdef", 0, 4) == b"mabcd"
    assert read_chunk(b"abcdef", 4, 4) == b"lef"
    assert read_chunk(b"abcdef", 6, 4) == b"l"


# -- the target description and the registers ------------------------------------------------


@pytest.mark.parametrize("layout", [AMD64, I386], ids=["amd64", "i386"])
def test_the_description_numbers_every_register_in_layout_order(layout):
    root = ET.fromstring(target_xml(layout))
    assert root.find("architecture").text == layout.architecture
    regs = root.iter("reg")
    assert [(r.get("name"), int(r.get("regnum")), int(r.get("bitsize"))) for r in regs] == [
        (spec.name, n, spec.bits) for n, spec in enumerate(layout.registers)]
    features = [f.get("name") for f in root.iter("feature")]
    assert features[:2] == ["org.gnu.gdb.i386.core", "org.gnu.gdb.i386.sse"]


def test_the_eflags_bits_are_minikvms_rflags_names():
    root = ET.fromstring(target_xml(AMD64))
    flags = {f.get("name"): int(f.get("start")) for f in root.find(".//flags[@id='i386_eflags']")}
    assert flags["ZF"] == Rflags.ZF.bit_length() - 1 == 6
    assert flags["IF"] == 9 and "IOPL" not in flags and "FIXED" not in flags


def test_amd64_and_i386_name_their_registers_as_gdb_does():
    assert [s.name for s in AMD64.registers[:18]] == [
        "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", *(f"r{i}" for i in range(8, 16)),
        "rip", "eflags"]
    assert [s.name for s in I386.registers[:10]] == [
        "eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi", "eip", "eflags"]
    assert AMD64.pc == 16 and I386.pc == 8
    assert "fs_base" in [s.name for s in AMD64.registers]
    assert "fs_base" not in [s.name for s in I386.registers]   # gdb 13's i386 has no room


def fake_file(layout, regs=None, sregs=None, fpu=None):
    structs = {Source.REGS: regs or kvm_regs(), Source.SREGS: sregs or kvm_sregs(),
               Source.FPU: fpu or kvm_fpu()}
    stored = {}
    registers = RegisterFile(layout, lambda source: structs[source],
                             lambda source, struct: stored.__setitem__(source, struct))
    return registers, stored


def test_the_register_block_is_every_register_little_endian_in_order():
    regs = kvm_regs(rax=0x1122334455667788, rip=0x100000, rflags=0x202)
    registers, _ = fake_file(AMD64, regs)
    block = registers.read_all()
    assert len(block) == sum(spec.size for spec in AMD64.registers)
    assert block[:8] == (0x1122334455667788).to_bytes(8, "little")
    assert registers.read(16) == (0x100000).to_bytes(8, "little")
    assert registers.read(17) == (0x202).to_bytes(4, "little")


def test_a_32_bit_register_write_keeps_the_upper_half():
    regs = kvm_regs(rax=0xAAAA_BBBB_0000_0001)
    registers, stored = fake_file(I386, regs)
    registers.write(0, (0x1234).to_bytes(4, "little"))
    registers.commit()
    assert stored[Source.REGS].rax == 0xAAAA_BBBB_0000_1234
    assert Source.SREGS not in stored and Source.FPU not in stored   # only what changed


def test_a_selector_is_set_only_in_real_mode_where_it_means_base_times_16():
    real, stored = fake_file(I386)
    real.write(18 - 8, (0x0700).to_bytes(4, "little"))   # cs
    real.commit()
    assert stored[Source.SREGS].cs.base == 0x7000
    protected, _ = fake_file(I386, sregs=kvm_sregs(cr0=int(Cr0.PE)))
    with pytest.raises(RegisterError, match="descriptor"):
        protected.write(10, (0x10).to_bytes(4, "little"))


def test_a_register_of_the_wrong_size_or_number_is_refused():
    registers, _ = fake_file(AMD64)
    with pytest.raises(RegisterError):
        registers.write(0, b"\x01")
    with pytest.raises(RegisterError):
        registers.write(len(AMD64), b"\x00" * 8)


def test_st0_and_xmm_round_trip_through_kvm_fpu():
    registers, stored = fake_file(AMD64)
    st0 = next(n for n, s in enumerate(AMD64.registers) if s.name == "st0")
    xmm1 = next(n for n, s in enumerate(AMD64.registers) if s.name == "xmm1")
    one = (0x3FFF << 64 | 1 << 63).to_bytes(10, "little")   # 1.0 in 80-bit extended
    registers.write(st0, one)
    registers.write(xmm1, bytes(range(16)))
    registers.commit()
    assert bytes(stored[Source.FPU].fpr[0])[:10] == one
    assert bytes(stored[Source.FPU].xmm[1]) == bytes(range(16))


def test_the_full_tag_word_marks_empty_registers_3_and_classifies_the_rest():
    fpu = kvm_fpu(fsw=7 << 11)               # TOP = 7: ST(0) is physical register 7
    assert full_tag_word(fpu) == 0xFFFF      # abridged 0: all empty
    fpu.ftwx = 1 << 7                        # physical 7 in use: ST(0) = 0.0 -> zero (01)
    assert full_tag_word(fpu) == 0x7FFF


def test_watch_ranges_are_split_into_aligned_pieces():
    assert watch_pieces(0x1000, 4) == [(0x1000, 4)]
    assert watch_pieces(0x1001, 7) == [(0x1001, 1), (0x1002, 2), (0x1004, 4)]
    assert watch_pieces(0x1000, 16) == [(0x1000, 8), (0x1008, 8)]


@pytest.mark.parametrize("text, address", [
    ("1234", ("127.0.0.1", 1234)), (":1234", ("127.0.0.1", 1234)),
    ("0.0.0.0:0", ("0.0.0.0", 0)), ("[::1]:99", ("::1", 99)), ("localhost:5", ("localhost", 5)),
])
def test_gdb_addresses(text, address):
    assert parse_gdb_address(text) == address


@pytest.mark.parametrize("text", ["host:port", "1:99999", ""])
def test_bad_gdb_addresses_are_refused(text):
    import argparse
    with pytest.raises(argparse.ArgumentTypeError):
        parse_gdb_address(text)


# -- where the stub sits ----------------------------------------------------------------------


def test_the_stub_is_a_front_end_nothing_below_it_imports():
    """DESIGN.md: the stub speaks the debugger layer to gdb; no layer under
    the front ends may depend on it (only cli/ and lessons/ call it)."""
    from tests.test_architecture import MODULES, module_level_imports, within

    users = [name for name in MODULES
             if not any(within(name, top) for top in ("minikvm.gdb", "minikvm.cli",
                                                      "minikvm.lessons"))
             and any(within(edge.imported, "minikvm.gdb") for edge in module_level_imports(name))]
    assert users == []


def test_each_module_of_the_stub_holds_one_concept_in_at_most_450_lines():
    from tests.conftest import ROOT

    sizes = {path.name: len(path.read_text().splitlines())
             for path in (ROOT / "minikvm" / "gdb").glob("*.py")}
    assert {name for name, lines in sizes.items() if lines > 450} == set()
    assert {"packets.py", "registers.py", "tdesc.py", "commands.py", "serve.py"} <= set(sizes)
