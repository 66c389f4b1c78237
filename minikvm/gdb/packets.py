"""The wire format of the GDB Remote Serial Protocol: packets, checksums, escapes.

Everything gdb and a stub say to each other travels as a *packet*
(GDB manual, appendix "Remote Protocol", section "Overview")::

    $ packet-data # c1 c2

``c1 c2`` are two hex digits: the sum of the packet-data bytes modulo 256.
The receiver answers ``+`` (received intact) or ``-`` (send it again) --
until both sides agree to stop acknowledging (``QStartNoAckMode``, section
"Packet Acknowledgment"). Between packets one more byte has a meaning of its
own: ``0x03``, the *interrupt*, what gdb sends when you press Ctrl-C while
the program runs (section "Interrupts").

Inside packet-data, ``$``, ``#`` and ``}`` cannot appear as themselves, nor
``*`` (which marks run-length encoding in replies): binary data, such as the
bytes of an ``X`` packet, writes each of them as ``}`` followed by the byte
XOR 0x20 (section "Overview", "binary data").

:class:`PacketReader` turns whatever bytes arrive -- in any pieces, from a
well-behaved gdb or from anyone else who can reach the socket -- into
:class:`Event` values and never raises: a bad checksum, a packet cut short
by a new ``$``, a packet longer than we said we accept, a dangling escape,
each becomes an event that the session answers in a defined way.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = [
    "ACK",
    "INTERRUPT",
    "MAX_PACKET",
    "NAK",
    "Event",
    "EventKind",
    "PacketReader",
    "checksum",
    "encode_packet",
    "escape_binary",
    "unescape_binary",
]

#: The acknowledgements and the interrupt byte (section "Interrupts").
ACK = b"+"
NAK = b"-"
INTERRUPT = 0x03
#: The largest packet-data we accept (what ``qSupported`` announces as
#: ``PacketSize``, section "General Query Packets"): enough for a 4 KiB
#: ``X`` write even if every byte needs an escape.
MAX_PACKET = 0x4000

_START = ord("$")
_END = ord("#")
_ESCAPE = ord("}")
_ESCAPED = frozenset(b"$#}*")
_HEX = frozenset(b"0123456789abcdefABCDEF")


def checksum(data: bytes) -> int:
    """The packet checksum: the sum of the packet-data bytes, modulo 256."""
    return sum(data) & 0xFF


def escape_binary(data: bytes) -> bytes:
    """Binary data as packet-data: ``$ # } *`` become ``}`` + (byte XOR 0x20)."""
    if not any(byte in _ESCAPED for byte in data):
        return data
    out = bytearray()
    for byte in data:
        if byte in _ESCAPED:
            out += bytes((_ESCAPE, byte ^ 0x20))
        else:
            out.append(byte)
    return bytes(out)


def unescape_binary(data: bytes) -> bytes | None:
    """The inverse of :func:`escape_binary`; None when ``data`` ends in a lone ``}``."""
    if _ESCAPE not in data:
        return data
    out = bytearray()
    escaped = False
    for byte in data:
        if escaped:
            out.append(byte ^ 0x20)
            escaped = False
        elif byte == _ESCAPE:
            escaped = True
        else:
            out.append(byte)
    return None if escaped else bytes(out)


def encode_packet(data: bytes) -> bytes:
    """``$data#cs``. ``data`` must already be escaped where it is binary."""
    return b"$" + data + b"#" + b"%02x" % checksum(data)


class EventKind(enum.Enum):
    """What :class:`PacketReader` found in the byte stream."""

    PACKET = "packet"          # a complete packet with a good checksum
    ACK = "ack"                # '+'
    NAK = "nak"                # '-': the peer asks us to send our last packet again
    INTERRUPT = "interrupt"    # 0x03 between packets: Ctrl-C
    CORRUPT = "corrupt"        # bad checksum, or cut short by a new '$'
    MALFORMED = "malformed"    # good checksum, but unusable: too long, bad escape


@dataclass(frozen=True)
class Event:
    """One thing the peer said. ``data`` is the packet-data, unescaped (PACKET);
    ``reason`` says what was wrong (CORRUPT, MALFORMED)."""

    kind: EventKind
    data: bytes = b""
    reason: str = ""


_ACK_EVENT = Event(EventKind.ACK)
_NAK_EVENT = Event(EventKind.NAK)
_INTERRUPT_EVENT = Event(EventKind.INTERRUPT)


class _State(enum.Enum):
    BETWEEN = 0     # outside any packet
    DATA = 1        # after '$'
    CHECKSUM = 2    # after '#'


class PacketReader:
    """An incremental parser: :meth:`feed` bytes as they arrive, get events.

    Bytes between packets other than ``+``, ``-`` and ``0x03`` are noise and
    skipped (the manual lets a stub ignore them). Packet-data longer than
    ``limit`` is not kept (a client cannot make us hold more than that) but
    still summed, and the packet is reported MALFORMED. The whole packet-data
    is unescaped here: only binary data contains ``}``, and nothing else
    gdb sends may contain it.
    """

    def __init__(self, limit: int = MAX_PACKET) -> None:
        self.limit = limit
        self._state = _State.BETWEEN
        self._data = bytearray()
        self._sum = 0
        self._overflow = False
        self._digits = bytearray()
        #: Noise bytes skipped between packets (for a report, never an error).
        self.skipped = 0

    @property
    def inside_packet(self) -> bool:
        """A packet has begun and not yet ended (what a disconnect would cut)."""
        return self._state is not _State.BETWEEN

    def _begin(self) -> None:
        self._state = _State.DATA
        self._data = bytearray()
        self._sum = 0
        self._overflow = False
        self._digits = bytearray()

    def feed(self, chunk: bytes) -> Iterator[Event]:
        """The events completed by ``chunk`` (which may end anywhere)."""
        for byte in chunk:
            state = self._state
            if state is _State.BETWEEN:
                if byte == _START:
                    self._begin()
                elif byte == 0x2B:        # '+'
                    yield _ACK_EVENT
                elif byte == 0x2D:        # '-'
                    yield _NAK_EVENT
                elif byte == INTERRUPT:
                    yield _INTERRUPT_EVENT
                else:
                    self.skipped += 1
            elif state is _State.DATA:
                if byte == _END:
                    self._state = _State.CHECKSUM
                elif byte == _START:
                    yield Event(EventKind.CORRUPT,
                                reason="a new '$' began before this packet's '#'")
                    self._begin()
                else:
                    self._sum = (self._sum + byte) & 0xFF
                    if len(self._data) < self.limit:
                        self._data.append(byte)
                    else:
                        self._overflow = True
            else:
                self._digits.append(byte)
                if len(self._digits) == 2:
                    self._state = _State.BETWEEN
                    yield self._finish()

    def _finish(self) -> Event:
        digits = bytes(self._digits)
        if not all(digit in _HEX for digit in digits):
            return Event(EventKind.CORRUPT, reason=f"checksum {digits!r} is not two hex digits")
        if int(digits, 16) != self._sum:
            return Event(EventKind.CORRUPT,
                         reason=f"checksum {digits.decode()} but the data sums to {self._sum:02x}")
        if self._overflow:
            return Event(EventKind.MALFORMED,
                         reason=f"longer than the {self.limit} bytes we accept (PacketSize)")
        data = unescape_binary(bytes(self._data))
        if data is None:
            return Event(EventKind.MALFORMED, reason="the data ends in a lone '}' escape")
        return Event(EventKind.PACKET, data)
