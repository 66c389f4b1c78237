"""One gdb connection: acknowledgements, the running state, Ctrl-C, stop replies.

The session sits between the byte stream (:mod:`~minikvm.gdb.packets`) and
the commands (:mod:`~minikvm.gdb.commands`). It knows nothing of sockets:
the server hands it bytes (:meth:`Session.received`) and tells it when the
target has news (:meth:`Session.target_woke`); it sends through a function.
So tests drive it with plain bytes, and a hostile stream cannot do more
than a well-behaved one: every event gets a defined answer.

The rules it keeps (GDB manual, "Remote Protocol"):

* **Acknowledgements** ("Packet Acknowledgment"): each packet received
  intact is answered ``+`` before its reply, each damaged one ``-`` (gdb
  sends it again); a ``-`` from gdb makes us send our last packet again.
  After ``QStartNoAckMode`` is answered ``OK`` neither side acknowledges.
  In no-ack mode nobody resends, so a damaged packet gets an ``E16`` reply
  instead of a ``-``.
* **All-stop**: after a resume, the only thing gdb may send is Ctrl-C
  (``0x03``, "Interrupts"), and its one answer is the stop reply. A packet
  that comes anyway waits (up to :data:`MAX_QUEUED`) and is answered after
  the stop reply.
* **Console output**: when the guest ends or crashes, an ``O`` packet (hex
  text, "Stop Reply Packets") says why in words before the stop reply.
* **The end**: ``D`` (detach) and ``k`` (kill) end the session; so does a
  ``W``/``X`` reply (the guest is gone), or the client going away.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

from minikvm.gdb.commands import E_INVALID, KILL, OK, Commands, Resume, stop_reply
from minikvm.gdb.packets import ACK, NAK, EventKind, PacketReader, encode_packet
from minikvm.gdb.target import Report, Signal, Target

__all__ = ["MAX_QUEUED", "Outcome", "Session"]

#: Packets kept while the guest runs (a well-behaved gdb sends none).
MAX_QUEUED = 64


class Outcome:
    """How a session ended (:attr:`Session.outcome`)."""

    DETACHED = "detached"   # D: the guest runs on without gdb
    KILLED = "killed"       # k: the guest ends here
    ENDED = "ended"         # the guest ended; gdb was told (W or X)
    CLOSED = "closed"       # the client went away without a word


class Session:
    """The protocol state of one connection to ``target``; ``send`` writes
    bytes to the client."""

    def __init__(self, target: Target, send: Callable[[bytes], None]) -> None:
        self.target = target
        self.commands = Commands(target)
        self.reader = PacketReader()
        self._send = send
        self.acks = True
        #: A resume is outstanding: the stop reply is still due.
        self.running = False
        self.queued: collections.deque[bytes] = collections.deque()
        self.dropped = 0
        self.outcome: str | None = None
        self._last: bytes | None = None

    @property
    def done(self) -> bool:
        return self.outcome is not None

    # -- sending --------------------------------------------------------------------------

    def send_packet(self, data: bytes) -> None:
        self._last = encode_packet(data)
        self._send(self._last)

    def _ack(self, byte: bytes) -> None:
        if self.acks:
            self._send(byte)

    # -- receiving --------------------------------------------------------------------------

    def received(self, data: bytes) -> None:
        """Bytes from the client, in whatever pieces they came."""
        for event in self.reader.feed(data):
            if self.done:
                return
            kind = event.kind
            if kind is EventKind.PACKET:
                self._ack(ACK)
                self._packet(event.data)
            elif kind is EventKind.INTERRUPT:
                if self.running:
                    self.target.interrupt()
            elif kind is EventKind.NAK:
                if self.acks and self._last is not None:
                    self._send(self._last)
            elif kind is EventKind.CORRUPT:
                if self.acks:
                    self._send(NAK)
                elif not self.running:
                    self.send_packet(E_INVALID)
            elif kind is EventKind.MALFORMED:
                self._ack(ACK)
                if not self.running:
                    self.send_packet(E_INVALID)

    def _packet(self, data: bytes) -> None:
        if self.running:
            if len(self.queued) < MAX_QUEUED:
                self.queued.append(data)
            else:
                self.dropped += 1
            return
        result = self.commands.handle(data)
        if isinstance(result, bytes):
            self.send_packet(result)
            if data == b"QStartNoAckMode" and result == OK:
                self.acks = False
        elif isinstance(result, list):
            for reply in result:
                self.send_packet(reply)
        elif isinstance(result, Resume):
            report = self.target.resume(result.actions)
            self.running = True
            if report is not None:
                self._stopped(report)
        elif result == KILL:
            if data.startswith(b"vKill"):
                self.send_packet(OK)
            self.target.kill()
            self.outcome = Outcome.KILLED
        else:   # DETACH
            self.send_packet(OK)
            self.outcome = Outcome.DETACHED

    # -- the target's news ----------------------------------------------------------------

    def target_woke(self) -> None:
        """A vCPU finished its work: if all have stopped, send the stop reply."""
        report = self.target.collect()
        if report is not None and self.running:
            self._stopped(report)

    def _stopped(self, report: Report) -> None:
        """Send the stop reply. gdb takes the thread it names as the stub's
        general thread from now on (it sends no ``Hg`` for it), so we do too."""
        self.running = False
        self.commands.general = report.vcpu
        stop = report.stop
        if stop is not None and (report.what != "stopped" or report.signal == Signal.SEGV):
            self.send_packet(b"O" + f"minikvm: {stop.message}\n".encode().hex().encode())
        self.send_packet(stop_reply(report))
        if report.what != "stopped":
            self.outcome = Outcome.ENDED
            return
        while self.queued and not self.running and not self.done:
            self._packet(self.queued.popleft())

    def closed(self) -> None:
        """The client went away (end of file, a reset)."""
        if self.outcome is None:
            self.outcome = Outcome.CLOSED
