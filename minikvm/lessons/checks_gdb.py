"""The check of exercise 12: a packet of gdb's protocol, framed and escaped by hand.

The learner's ``frame()`` and ``write_packet()`` make the bytes gdb would
send for ``set var answer = 0x7d23`` -- an ``X`` packet whose binary data
holds ``#`` and ``}``. The judge is minikvm's own gdb stub
(:class:`minikvm.gdb.session.Session` on a real machine running
``guests/c/gdbdemo.c``): it acknowledges the packet or not, writes the
bytes or not, and the guest then prints ``twice(answer)`` and exits with it.
When the stub refuses, the check says what the stub's packet reader made of
the bytes (:class:`minikvm.gdb.packets.PacketReader`): where the packet
ended, what the escapes decoded to.
"""

from __future__ import annotations

import select
import time
from pathlib import Path

from minikvm.guestbuild import GUESTS_DIR, compile_c
from minikvm.lessons.learner import learner_function, their_error
from minikvm.lessons.verdict import Verdict, not_yet, passed, printable

__all__ = ["check_12"]

#: What the checker writes into ``answer``: its bytes are '#', '}', 0, 0.
VALUE = 0x7D23
#: twice(VALUE) as the guest prints it, and its exit status ((v & 0xff) << 1 | 1).
PRINTED = f"twice(answer) = {2 * VALUE}"
STATUS = ((2 * VALUE) & 0xFF) << 1 | 1


def _replies(stream: bytes) -> list[bytes]:
    """The stub's acks and packet-data, in order."""
    from minikvm.gdb.packets import EventKind, PacketReader

    found: list[bytes] = []
    for event in PacketReader().feed(stream):
        if event.kind is EventKind.ACK:
            found.append(b"+")
        elif event.kind is EventKind.NAK:
            found.append(b"-")
        elif event.kind is EventKind.PACKET:
            found.append(event.data)
    return found


def _exchange(session, target, sent: bytearray, wire: bytes,
              timeout: float = 10.0) -> list[bytes]:
    """Send ``wire`` to the stub (whose output goes to ``sent``); what it
    answered (after a resume: once the guest stopped)."""
    sent.clear()
    session.received(wire)
    deadline = time.monotonic() + timeout
    while session.running and time.monotonic() < deadline:
        if select.select([target.wakeup], [], [], 0.05)[0]:
            session.target_woke()
    if session.running:
        session.received(b"\x03")
        while session.running:
            if select.select([target.wakeup], [], [], 0.05)[0]:
                session.target_woke()
            target.nudge()
    return _replies(bytes(sent))


def _what_the_stub_read(wire: bytes) -> str:
    """In words, how the stub's packet reader took the learner's bytes apart."""
    from minikvm.gdb.packets import EventKind, PacketReader

    events = list(PacketReader().feed(wire))
    if not events:
        return ("The stub is still waiting for the end of your packet: it never saw '#' "
                "and two digits.")
    first = events[0]
    if first.kind is EventKind.CORRUPT:
        end = wire.find(b"#")
        return (f"The stub read your packet as far as the first '#' (byte {end} of "
                f"{len(wire)}), then took the next two bytes {wire[end + 1:end + 3]!r} as the "
                f"checksum: {first.reason}. Every '#' in the data ends the packet there.")
    return f"The stub's packet reader saw: {first.kind.value} {first.reason}".strip()


def check_12(path: Path, work: Path) -> Verdict:
    """frame() and write_packet(): an X packet the stub takes, whatever the bytes."""
    from minikvm.core.config import MachineConfig
    from minikvm.gdb.packets import unescape_binary
    from minikvm.gdb.session import Session
    from minikvm.gdb.target import Target
    from minikvm.machine import Machine

    frame, problem = learner_function(path, "frame")
    if problem is not None:
        return problem
    write_packet, problem = learner_function(path, "write_packet")
    if problem is not None:
        return problem
    try:
        probe = frame(b"?")
    except Exception as err:  # noqa: BLE001
        return not_yet(f"frame(b'?') raised {their_error(err, path)}")
    if probe != b"$?#3f":
        return not_yet(f"frame(b'?') returned {probe!r}, not b'$?#3f': a packet is '$', the "
                       "data, '#', and the sum of the data bytes modulo 256 in two hex digits "
                       "('?' is 0x3f).")
    elf = compile_c(GUESTS_DIR / "c" / "gdbdemo.c", work)
    data = VALUE.to_bytes(4, "little")
    output = bytearray()
    with Machine.from_config(MachineConfig(guest=str(elf)), output=output.extend) as machine:
        answer = machine.image.symbols.lookup("answer").address
        try:
            body = write_packet(answer, data)
            wire = frame(body)
        except Exception as err:  # noqa: BLE001
            return not_yet(f"write_packet({answer:#x}, {data!r}) raised {their_error(err, path)}")
        if not isinstance(wire, bytes):
            return not_yet(f"frame() returned {type(wire).__name__}, not bytes")
        target = Target(machine)
        try:
            sent = bytearray()
            session = Session(target, sent.extend)
            replies = _exchange(session, target, sent, wire)
            said = f"You sent {wire!r}; the stub answered {replies!r}."
            if replies[:1] != [b"+"]:
                return not_yet("The stub did not take your packet: it answered '-', \"send it "
                               "again\", which gdb would do for ever.", said,
                               _what_the_stub_read(wire))
            if replies[1:2] != [b"OK"]:
                decoded = unescape_binary(body.partition(b":")[2]) or b""
                return not_yet(f"The stub refused the write ({replies[1:2]!r}): your packet "
                               f"announces {len(data)} bytes, and its data decodes to "
                               f"{len(decoded)}: {decoded!r}. A '}}' in the data is read as "
                               "an escape: the escape byte itself must be escaped too.", said)
            written = machine.memory.read(answer, 4)
            if written != data:
                return not_yet(f"The stub wrote {written!r} into answer, not {data!r}: "
                               "an escaped byte is '}' followed by the byte XOR 0x20.", said)
            end = _exchange(session, target, sent, frame(b"vCont;c"))
        finally:
            target.close()
    printed = bytes(output)
    ran = f"Then the guest printed {printable(printed)} and the stub said {end[-1:]!r}."
    if PRINTED.encode() in printed and end[-1:] == [b"W%02x" % STATUS]:
        return passed(f"The stub took your X packet ('+', 'OK') and wrote {data!r} into "
                      f"answer; the guest printed '{PRINTED}' and exited with status {STATUS}: "
                      "the '#' and the '}' arrived as data.", said, ran)
    return not_yet("The stub took your packet, but the guest did not print what it should.",
                   said, ran)
