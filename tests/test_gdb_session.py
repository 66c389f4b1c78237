"""The gdb stub's packets, spoken by hand to a real machine (no gdb, no socket).

Each test sends the packets gdb would send for one command and checks the
reply the GDB manual ("Remote Protocol") asks for. The guest is
``guests/c/gdbdemo.c`` in long mode. :class:`Client` plays gdb: it frames
packets, checks that every byte that comes back is an ack or a packet with
a good checksum, and, while the guest runs, waits for the stop reply the way
the server's loop does.

The last part is the property that makes the stub safe to expose: any byte
stream -- malformed, truncated, oversized, bad checksums, stray escapes,
Ctrl-C anywhere -- gets defined answers, and the stub still answers after it.
"""

from __future__ import annotations

import select
import socket
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minikvm.debug.probe import probe_debug_support
from minikvm.gdb.packets import MAX_PACKET, checksum, encode_packet, escape_binary
from minikvm.gdb.serve import listen, serve_gdb
from minikvm.gdb.session import Outcome, Session
from minikvm.gdb.target import Target
from minikvm.machine import Machine, StopKind

pytestmark = pytest.mark.kvm

STUCK_AFTER = 5.0   # seconds a resume may take before the client presses Ctrl-C


def parse_replies(stream: bytes) -> list[bytes]:
    """Split what the stub sent into ``+``, ``-`` and packet-data; fail on
    anything else (a byte outside a packet, a bad checksum)."""
    found = []
    i = 0
    while i < len(stream):
        if stream[i:i + 1] in (b"+", b"-"):
            found.append(stream[i:i + 1])
            i += 1
            continue
        assert stream[i:i + 1] == b"$", f"stray byte {stream[i:i + 1]!r} at {i}"
        end = stream.index(b"#", i)
        data = stream[i + 1:end]
        assert int(stream[end + 1:end + 3], 16) == checksum(data), stream[i:end + 3]
        found.append(data)
        i = end + 3
    return found


class Client:
    """gdb's side of a :class:`Session` over a real :class:`Target`."""

    def __init__(self, machine: Machine) -> None:
        self.target = Target(machine, probe_debug_support())
        self.output = bytearray()
        self.session = Session(self.target, self.output.extend)

    def feed(self, data: bytes) -> list[bytes]:
        """Send raw bytes; every ack and packet that came back (the stop reply
        of a resume included)."""
        self.session.received(data)
        self.settle()
        out = bytes(self.output)
        self.output.clear()
        return parse_replies(out)

    def settle(self) -> None:
        deadline = time.monotonic() + STUCK_AFTER
        while self.session.running:
            readable, _, _ = select.select([self.target.wakeup], [], [], 0.05)
            if readable:
                self.session.target_woke()
            self.target.nudge()
            if time.monotonic() > deadline:
                self.session.received(b"\x03")
                deadline += STUCK_AFTER

    def ask(self, packet: str | bytes) -> list[bytes]:
        """One packet; the replies without the acks."""
        data = packet.encode() if isinstance(packet, str) else packet
        return [r for r in self.feed(encode_packet(data)) if r not in (b"+", b"-")]

    def one(self, packet: str | bytes) -> bytes:
        [reply] = self.ask(packet)
        return reply

    def close(self) -> None:
        self.target.close()


@pytest.fixture
def demo(guests):
    made = []

    def make(vcpus: int = 1) -> tuple[Client, object]:
        machine = Machine(vcpus=vcpus)
        image = machine.load_elf(guests / "gdbdemo.elf")
        client = Client(machine)
        made.append((client, machine))
        return client, image.symbols
    yield make
    for client, machine in made:
        client.close()
        machine.close()


def address(symbols, name: str) -> int:
    return symbols.lookup(name).address


def reg(reply: bytes, number: int, size: int = 8) -> int:
    return int.from_bytes(bytes.fromhex(reply.decode())[number * 8:number * 8 + size], "little")


# -- connecting -------------------------------------------------------------------------------


def test_qsupported_offers_what_gdb_needs(demo):
    client, _ = demo()
    reply = client.one("qSupported:multiprocess+;swbreak+;hwbreak+;xmlRegisters=i386")
    for feature in (b"PacketSize=4000", b"qXfer:features:read+", b"swbreak+", b"hwbreak+",
                    b"vContSupported+", b"QStartNoAckMode+"):
        assert feature in reply.split(b";")


def test_the_guest_waits_before_its_first_instruction(demo):
    client, symbols = demo()
    assert client.one("?") == b"T05thread:1;"
    assert reg(client.one("g"), 16) == address(symbols, "_start")       # rip


def test_every_packet_is_acknowledged_until_no_ack_mode(demo):
    client, _ = demo()
    assert client.feed(encode_packet(b"QStartNoAckMode")) == [b"+", b"OK"]
    assert client.feed(encode_packet(b"?")) == [b"T05thread:1;"]


def test_a_damaged_packet_is_asked_for_again_and_a_nak_resends_our_last(demo):
    client, _ = demo()
    assert client.feed(b"$?#00") == [b"-"]
    assert client.feed(encode_packet(b"qAttached")) == [b"+", b"1"]
    assert client.feed(b"-") == [b"1"]


def test_the_target_description_is_read_in_pieces(demo):
    client, _ = demo()
    first = client.one("qXfer:features:read:target.xml:0,40")
    assert first.startswith(b"m<?xml")
    whole = b""
    offset = 0
    while True:
        piece = client.one(f"qXfer:features:read:target.xml:{offset:x},100")
        whole += piece[1:]
        offset += len(piece) - 1
        if piece.startswith(b"l"):
            break
    assert b"<architecture>i386:x86-64</architecture>" in whole
    assert client.one("qXfer:features:read:other.xml:0,10") == b"E00"
    assert client.one("qXfer:auxv:read::0,10") == b""         # not offered


def test_unknown_packets_get_the_empty_reply(demo):
    client, _ = demo()
    for packet in ("vMustReplyEmpty", "qTStatus", "!", "Qbogus", "j"):
        assert client.one(packet) == b""


# -- registers and memory -------------------------------------------------------------------


def test_p_and_P_read_and_write_one_register(demo):
    client, _ = demo()
    assert client.one("P0=efbeadde00000000") == b"OK"          # rax
    assert client.one("p0") == b"efbeadde00000000"
    assert reg(client.one("g"), 0) == 0xDEADBEEF
    assert client.one("p999") == b"E16"
    assert client.one("Pzz=00") == b"E16"


def test_memory_is_read_through_the_page_tables(demo):
    client, symbols = demo()
    greeting = address(symbols, "greeting")
    assert client.one(f"m{greeting:x},12") == b"hello from gdbdemo".hex().encode()


def test_unmapped_or_out_of_ram_memory_is_E0e(demo):
    client, _ = demo()
    assert client.one("m7f0000000000,4") == b"E0e"       # no page table maps it
    assert client.one("m300000,4") == b"E0e"             # mapped, but beyond 2 MiB of RAM
    assert client.one("M300000,1:00") == b"E0e"


def test_a_read_that_runs_off_ram_returns_what_there_is(demo):
    client, _ = demo()
    assert len(client.one("m1ffffe,10")) == 4            # 2 bytes, then the end of RAM


def test_M_and_X_write_memory_and_X_undoes_binary_escapes(demo):
    client, symbols = demo()
    answer = address(symbols, "answer")
    assert client.one(f"M{answer:x},4:05000000") == b"OK"
    assert client.one(f"m{answer:x},4") == b"05000000"
    raw = b"#$}*"
    assert client.one(f"X{answer:x},4:".encode() + escape_binary(raw)) == b"OK"
    assert client.one(f"m{answer:x},4") == raw.hex().encode()
    assert client.one(f"X{answer:x},0:") == b"OK"                # gdb's probe for X
    assert client.one(f"M{answer:x},4:05") == b"E16"            # length and data disagree


# -- running ---------------------------------------------------------------------------------


def test_a_software_breakpoint_stops_the_guest_at_its_address(demo):
    client, symbols = demo()
    twice = address(symbols, "twice")
    assert client.one(f"Z0,{twice:x},1") == b"OK"
    assert client.one(f"Z0,{twice:x},1") == b"OK"                # idempotent
    assert client.one("vCont;c") == b"T05swbreak:;thread:1;"
    assert reg(client.one("g"), 16) == twice
    assert client.one(f"z0,{twice:x},1") == b"OK"
    assert client.one(f"z0,{twice:x},1") == b"OK"


def test_a_hardware_breakpoint_says_hwbreak(demo):
    client, symbols = demo()
    count = address(symbols, "count")
    assert client.one(f"Z1,{count:x},1") == b"OK"
    assert client.one("c") == b"T05hwbreak:;thread:1;"


def test_a_write_watchpoint_reports_the_watched_address(demo):
    client, symbols = demo()
    counter = address(symbols, "counter")
    assert client.one(f"Z2,{counter:x},4") == b"OK"
    assert client.one("vCont;c") == f"T05watch:{counter:x};thread:1;".encode()
    assert client.one(f"m{counter:x},4") == b"01000000"


def test_a_step_moves_the_pc_by_one_instruction(demo):
    client, symbols = demo()
    assert client.one("vCont;s:1") == b"T05thread:1;"
    assert reg(client.one("g"), 16) == address(symbols, "_start") + 4    # sub $0x10,%rsp


def test_the_guest_exit_is_W_with_its_status_after_a_line_of_console_output(demo):
    client, symbols = demo()
    client.one(f"M{address(symbols, 'answer'):x},4:05000000")
    replies = client.ask("vCont;c")
    assert bytes.fromhex(replies[0][1:].decode()).startswith(b"minikvm: the guest wrote 0xa")
    assert replies[1] == b"W15"                        # (10 << 1) | 1 = 21
    assert client.session.outcome == Outcome.ENDED


def test_a_crash_is_shown_as_sigsegv_first_and_ends_with_X_at_the_next_resume(demo):
    client, symbols = demo()
    client.one(f"M{address(symbols, '_start'):x},2:0f0b")   # ud2, and no IDT: a triple fault
    message, stop = client.ask("vCont;c")
    assert b"triple fault" in bytes.fromhex(message[1:].decode()) and stop == b"T0bthread:1;"
    assert reg(client.one("g"), 16) == address(symbols, "_start")   # the wreck can be looked at
    assert client.ask("vCont;c")[-1] == b"X0b"
    assert client.target.ended.status == 3                         # as `minikvm run` says


def test_ctrl_c_stops_a_spinning_guest_with_sigint(demo):
    client, symbols = demo()
    client.one(f"M{address(symbols, 'spin'):x},4:01000000")
    client.session.received(encode_packet(b"vCont;c"))
    time.sleep(0.1)
    assert client.session.running
    assert client.feed(b"\x03")[-1] == b"T02thread:1;"


def test_monitor_output_comes_as_console_packets_then_OK(demo):
    client, _ = demo()
    replies = client.ask("qRcmd," + b"cpu".hex())
    assert replies[-1] == b"OK"
    text = b"".join(bytes.fromhex(r[1:].decode()) for r in replies[:-1]).decode()
    assert "long mode" in text and "PG" in text and "LME" in text


def test_two_vcpus_are_two_threads(demo):
    client, _ = demo(vcpus=2)
    assert client.one("qfThreadInfo") == b"m1,2"
    assert client.one("qsThreadInfo") == b"l"
    assert client.one("Hg2") == b"OK" and client.one("T2") == b"OK"
    assert client.one("T3") == b"E03" and client.one("Hg3") == b"E03"
    assert bytes.fromhex(client.one("qThreadExtraInfo,2").decode()).startswith(b"vCPU 1")


def test_k_kills_and_D_detaches(demo):
    client, _ = demo()
    client.feed(encode_packet(b"k"))
    assert client.session.outcome == Outcome.KILLED and client.target.ended.status == 137
    other, _ = demo()
    assert other.one("D") == b"OK" and other.session.outcome == Outcome.DETACHED


# -- a hostile client ------------------------------------------------------------------------

COMMANDS = st.sampled_from([
    "?", "g", "p10", "p0", "pffff", "P0=0100000000000000", "m100000,10", "m0,ffffffff",
    "m7f0000000000,8", "M100144,4:05000000", "qSupported", "qC", "qAttached", "qfThreadInfo",
    "Hg0", "Hg-1", "Hc-1", "T1", "Z0,1000ca,1", "z0,1000ca,1", "Z2,100150,4", "Z3,100150,3",
    "Z4,100151,9", "z2,100150,4", "Z1,ffffffffffffffff,1", "Z9,0,0", "vCont?", "vCont;s:1",
    "s", "qXfer:features:read:target.xml:0,ffff", "qRcmd,6578697473", "qRcmd,7a7a",
    "qThreadExtraInfo,1", "QStartNoAckMode", "G00", "vCont;x", "m,", "M1,2:zz", "X1,1:",
    "c", "C05", "S05", "vCont;c",
])
NOISE = st.sampled_from([b"\x03", b"+", b"-", b"$", b"#", b"}", b"$g#00", b"$m10", b"##",
                         b"$" + b"0" * (MAX_PACKET + 5) + b"#00", b"\x00\xff"])


def damage(packet: bytes, how: int) -> bytes:
    if how == 1:
        return packet[:-2] + b"00" if not packet.endswith(b"00") else packet[:-2] + b"11"
    if how == 2:
        return packet[:len(packet) // 2]         # truncated: the next '$' cuts it
    return packet


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunks=st.lists(st.one_of(
    st.tuples(COMMANDS, st.integers(0, 4)).map(
        lambda case: damage(encode_packet(case[0].encode()), case[1])),
    st.binary(max_size=40).map(lambda b: encode_packet(escape_binary(b"X100150,%x:" % len(b)) +
                                                       escape_binary(b))),
    st.binary(max_size=24), NOISE), max_size=12))
def test_any_byte_stream_gets_defined_replies_and_the_stub_still_answers(guests, chunks):
    with Machine() as machine:
        machine.load_elf(guests / "gdbdemo.elf")
        client = Client(machine)
        try:
            for chunk in chunks:
                client.feed(chunk)        # parse_replies fails on anything but acks and packets
                if client.session.done:
                    return
            client.feed(b"$#00")          # end whatever packet the stream left open
            replies = client.ask("qAttached")
            assert replies and replies[-1] in (b"1", b"E16")
        finally:
            client.close()


# -- over TCP: a client that goes away --------------------------------------------------------


def serve_in_thread(machine: Machine):
    server = listen("127.0.0.1", 0)
    result: dict[str, object] = {}

    def work():
        result["stop"] = serve_gdb(machine, ("127.0.0.1", 0), server=server, say=lambda s: None,
                                   timeout=20)
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return server.getsockname()[1], thread, result


@pytest.mark.parametrize("running", [False, True], ids=["stopped", "running"])
def test_a_client_that_disconnects_mid_packet_leaves_the_guest_to_run_to_its_end(
        guests, capfd, running):
    with Machine(output=lambda data: None) as machine:
        image = machine.load_elf(guests / "gdbdemo.elf")
        port, thread, result = serve_in_thread(machine)
        with socket.create_connection(("127.0.0.1", port)) as sock:
            if running:    # a breakpoint vCPU 0 never reaches: the guest is running when we go
                sock.sendall(encode_packet(b"Z0,%x,1" % image.symbols.lookup("ap_main").address))
                sock.sendall(encode_packet(b"vCont;c"))
            sock.sendall(b"$m100000,")
        thread.join(timeout=30)
        stop = result["stop"]
        assert stop.kind is StopKind.DEBUG_EXIT and stop.status == 85
