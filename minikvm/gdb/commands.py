"""The command dispatcher: one gdb packet in, the reply (or what to do) out.

Each packet is a command named by its first character, or by a word for
the ``q``, ``Q`` and ``v`` families (GDB manual, "Remote Protocol",
sections "Packets", "General Query Packets", "Stop Reply Packets"). The
replies follow the manual's conventions:

* ``OK`` for a command that worked and has nothing to say;
* ``E NN`` (two hex digits, an errno) for one that failed: ``E0e`` (EFAULT)
  for memory that is not mapped or not RAM, ``E16`` (EINVAL) for a packet
  we cannot parse or a value that cannot be set, ``E03`` (ESRCH) for a
  thread that does not exist;
* an *empty* reply for a command we do not implement -- gdb then knows not
  to use it, which is how the protocol grows without versions.

Resuming (``c``, ``s``, ``vCont``, and backwards ``bc``, ``bs``), detaching (``D``) and killing (``k``)
are not answered here: :meth:`Commands.handle` returns what to do
(:class:`Resume`, :data:`DETACH`, :data:`KILL`) and the session does it,
because the answer to a resume is a stop reply that comes later.
"""

from __future__ import annotations

from dataclasses import dataclass

from minikvm.debug.debugger import DebuggerError
from minikvm.gdb.monitor import run_monitor
from minikvm.gdb.packets import MAX_PACKET
from minikvm.gdb.target import Report, Target
from minikvm.gdb.tdesc import ANNEX, read_chunk, target_xml
from minikvm.memory import GuestMemoryError
from minikvm.x86.modes import cpu_mode_of

__all__ = ["DETACH", "E_FAULT", "E_INVALID", "E_THREAD", "KILL", "Commands", "Resume",
           "SUPPORTED", "stop_reply"]

E_FAULT = b"E0e"     # EFAULT: the address is not mapped, or not in RAM
E_INVALID = b"E16"   # EINVAL: a packet we cannot parse, a value we cannot set
E_THREAD = b"E03"    # ESRCH: no such thread
OK = b"OK"
#: What we offer in reply to ``qSupported`` (section "General Query Packets").
SUPPORTED = (b"PacketSize=%x;QStartNoAckMode+;qXfer:features:read+;swbreak+;hwbreak+;"
             b"vContSupported+;ReverseStep+;ReverseContinue+" % MAX_PACKET)
#: The most memory one ``m`` reply carries: two hex digits per byte.
MAX_READ = MAX_PACKET // 2


@dataclass(frozen=True)
class Resume:
    """Run: ``actions`` maps each vCPU to run to ``"c"`` or ``"s"``, or
    backwards through the recorded history to ``"bc"`` or ``"bs"``."""

    actions: dict[int, str]


DETACH = "detach"
KILL = "kill"


class BadPacket(ValueError):
    """The packet does not parse: the reply is :data:`E_INVALID`."""


def _number(text: bytes, limit: int = 1 << 64) -> int:
    """A hex number as gdb writes them (addresses, lengths, register numbers)."""
    if not text or len(text) > 16 or not all(c in b"0123456789abcdefABCDEF" for c in text):
        raise BadPacket(f"{text[:20]!r} is not a hex number")
    value = int(text, 16)
    if value >= limit:
        raise BadPacket(f"{value:#x} is too large")
    return value


def _hex_data(text: bytes) -> bytes:
    try:
        return bytes.fromhex(text.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise BadPacket("the data is not hex") from None


def _address_length(text: bytes) -> tuple[int, int]:
    address, sep, length = text.partition(b",")
    if not sep:
        raise BadPacket("expected ADDR,LENGTH")
    return _number(address), _number(length)


def stop_reply(report: Report) -> bytes:
    """The stop reply packet for ``report`` (section "Stop Reply Packets"):
    ``W`` exit status, ``X`` signal, or ``T`` signal with the reason and the
    thread that stopped (vCPU + 1)."""
    if report.what == "exited":
        return b"W%02x" % report.status
    if report.what == "terminated":
        return b"X%02x" % report.signal
    reply = b"T%02x" % report.signal
    if report.reason.startswith("replaylog:"):   # replaylog:begin / replaylog:end
        reply += report.reason.encode() + b";"
    elif report.reason in ("swbreak", "hwbreak"):
        reply += report.reason.encode() + b":;"
    elif report.reason:
        reply += report.reason.encode() + b":%x;" % (report.address or 0)
    return reply + b"thread:%x;" % (report.vcpu + 1)


class Commands:
    """Answers the packets of a stopped target (see the module docstring)."""

    def __init__(self, target: Target) -> None:
        self.target = target
        #: ``Hg``: the thread (vCPU) whose registers and memory we serve.
        self.general = 0
        #: ``Hc``: the thread a plain ``s`` steps (None: the one that stopped).
        self.stepping: int | None = None
        self._xml: bytes | None = None

    # -- the dispatch -----------------------------------------------------------------

    def handle(self, packet: bytes) -> bytes | list[bytes] | Resume | str:
        """The reply to ``packet``, several replies (``qRcmd`` output), or a
        :class:`Resume`, :data:`DETACH` or :data:`KILL`. Never raises for
        anything a client can send."""
        try:
            return self._dispatch(packet)
        except (DebuggerError, GuestMemoryError):
            return E_FAULT
        except (ValueError, OverflowError):   # BadPacket and RegisterError among them
            return E_INVALID

    def _dispatch(self, packet: bytes) -> bytes | list[bytes] | Resume | str:
        if not packet:
            return b""
        head, body = packet[:1], packet[1:]
        simple = {b"?": lambda: stop_reply(self.target.last), b"g": self._read_registers,
                  b"k": lambda: KILL}
        if head in simple and not body:
            return simple[head]()
        handlers = {b"G": self._write_registers, b"p": self._read_register,
                    b"P": self._write_register, b"m": self._read_memory,
                    b"M": self._write_memory, b"X": self._write_binary, b"H": self._set_thread,
                    b"T": self._thread_alive, b"Z": self._insert, b"z": self._remove,
                    b"c": self._continue, b"s": self._step, b"C": self._continue_signal,
                    b"S": self._step_signal, b"D": lambda body: DETACH, b"b": self._backwards,
                    b"q": self._query, b"Q": self._set, b"v": self._verbose}
        handler = handlers.get(head)
        return handler(body) if handler is not None else b""

    # -- registers ----------------------------------------------------------------------

    def _read_registers(self) -> bytes:
        return self.target.registers(self.general).read_all().hex().encode()

    def _write_registers(self, body: bytes) -> bytes:
        registers = self.target.registers(self.general)
        registers.write_all(_hex_data(body))
        registers.commit()
        return OK

    def _read_register(self, body: bytes) -> bytes:
        number = _number(body)
        registers = self.target.registers(self.general)
        if number >= len(registers.layout):
            return E_INVALID
        return registers.read(number).hex().encode()

    def _write_register(self, body: bytes) -> bytes:
        number, sep, value = body.partition(b"=")
        if not sep:
            raise BadPacket("expected N=VALUE")
        registers = self.target.registers(self.general)
        registers.write(_number(number), _hex_data(value))
        registers.commit()
        return OK

    # -- memory ---------------------------------------------------------------------------

    def _read_memory(self, body: bytes) -> bytes:
        address, length = _address_length(body)
        if length == 0:
            return E_INVALID
        data = self.target.read_memory(self.general, address, min(length, MAX_READ))
        return data.hex().encode() if data else E_FAULT

    def _write(self, body: bytes, decode) -> bytes:
        where, sep, data = body.partition(b":")
        if not sep:
            raise BadPacket("expected ADDR,LENGTH:DATA")
        address, length = _address_length(where)
        data = decode(data)
        if len(data) != length:
            raise BadPacket(f"{length} bytes announced, {len(data)} sent")
        if data:
            self.target.write_memory(self.general, address, data)
        return OK

    def _write_memory(self, body: bytes) -> bytes:
        return self._write(body, _hex_data)

    def _write_binary(self, body: bytes) -> bytes:
        return self._write(body, bytes)   # the packet layer already unescaped it

    # -- threads ------------------------------------------------------------------------

    def _thread(self, text: bytes) -> int | None:
        """A thread-id as a vCPU index; None for "all" (-1) or "any" (0)."""
        if text.startswith(b"p"):   # multiprocess form pPID.TID
            text = text.partition(b".")[2] or b"-1"
        if text in (b"-1", b"0"):
            return None
        vcpu = _number(text) - 1
        if vcpu not in self.target.threads:
            raise LookupError(vcpu)
        return vcpu

    def _set_thread(self, body: bytes) -> bytes:
        op, text = body[:1], body[1:]
        try:
            vcpu = self._thread(text)
        except LookupError:
            return E_THREAD
        if op == b"g":
            self.general = self.target.last.vcpu if vcpu is None else vcpu
        elif op == b"c":
            self.stepping = vcpu
        else:
            raise BadPacket("H takes g or c")
        return OK

    def _thread_alive(self, body: bytes) -> bytes:
        try:
            self._thread(body)
        except LookupError:
            return E_THREAD
        return OK

    def _thread_info(self, vcpu: int) -> str:
        debugger = self.target.debuggers[vcpu]
        state = "halted" if vcpu in self.target.halted else "stopped"
        return f"vCPU {vcpu}, {cpu_mode_of(debugger.sregs()).value} mode, {state}"

    # -- breakpoints and watchpoints -------------------------------------------------

    def _point(self, body: bytes) -> tuple[int, int, int]:
        fields = body.split(b";")[0].split(b",")   # conditions after ';' are not offered
        if len(fields) != 3:
            raise BadPacket("expected TYPE,ADDR,KIND")
        return _number(fields[0]), _number(fields[1]), _number(fields[2])

    def _insert(self, body: bytes) -> bytes:
        kind, address, length = self._point(body)
        if kind > 4:
            return b""      # the manual: an unknown type gets the empty reply
        self.target.points.insert(kind, address, length)
        return OK

    def _remove(self, body: bytes) -> bytes:
        kind, address, length = self._point(body)
        if kind > 4:
            return b""
        self.target.points.remove(kind, address, length)
        return OK

    # -- resuming ---------------------------------------------------------------------------

    def _at(self, vcpu: int, address: bytes) -> None:
        """``c ADDR`` / ``s ADDR``: resume at ADDR (RIP := ADDR)."""
        if address:
            registers = self.target.registers(vcpu)
            number = registers.layout.pc
            size = registers.layout.registers[number].size
            registers.write(number, _number(address, 1 << (8 * size)).to_bytes(size, "little"))
            registers.commit()

    def _continue(self, body: bytes) -> Resume:
        self._at(self.target.last.vcpu, body)
        return Resume({vcpu: "c" for vcpu in self.target.threads})

    def _step(self, body: bytes) -> Resume:
        vcpu = self.target.last.vcpu if self.stepping is None else self.stepping
        self._at(vcpu, body)
        return Resume({vcpu: "s"})

    def _backwards(self, body: bytes) -> bytes | Resume:
        """``bs`` / ``bc``: one instruction back, or back to the previous
        breakpoint or watchpoint hit, in the recorded history of the vCPU that
        stopped last (section "Packets"; offered by ``ReverseStep+`` and
        ``ReverseContinue+``; ``monitor record on`` starts the recording)."""
        if body not in (b"s", b"c"):
            return b""
        vcpu = self.target.last.vcpu if self.stepping is None else self.stepping
        return Resume({vcpu: "b" + body.decode()})

    def _continue_signal(self, body: bytes) -> Resume:
        """``C sig[;addr]``: a signal cannot be given to a guest; it runs on."""
        _number(body.split(b";")[0], 256)
        return self._continue(body.partition(b";")[2])

    def _step_signal(self, body: bytes) -> Resume:
        _number(body.split(b";")[0], 256)
        return self._step(body.partition(b";")[2])

    def _vcont(self, body: bytes) -> Resume:
        """``vCont;ACTION[:TID]...``: for each thread the leftmost action that
        names it (or names none) applies; threads no action names stay put."""
        actions: dict[int, str] = {}
        for part in body.split(b";")[1:]:
            action, _, tid = part.partition(b":")
            letter = action[:1]
            if letter in (b"C", b"S"):
                _number(action[1:], 256)
            elif letter not in (b"c", b"s") or len(action) != 1:
                raise BadPacket(f"vCont action {action[:8]!r} is not offered")
            try:
                vcpu = self._thread(tid) if tid else None
            except LookupError:
                raise BadPacket("no such thread") from None
            for index in self.target.threads if vcpu is None else (vcpu,):
                actions.setdefault(index, letter.lower().decode())
        if not actions:
            raise BadPacket("vCont without an action")
        return Resume(actions)

    # -- q, Q and v packets -------------------------------------------------------------------

    def _query(self, body: bytes) -> bytes | list[bytes]:
        # A query's name ends at ':' -- or at ',' for these two (section
        # "General Query Packets" spells them qRcmd,COMMAND and qThreadExtraInfo,ID).
        comma = body.startswith((b"Rcmd,", b"ThreadExtraInfo,"))
        name, _, args = body.partition(b"," if comma else b":")
        target = self.target
        if name == b"Supported":
            return SUPPORTED
        if name == b"Attached":
            return b"1"       # gdb found the guest running: leaving it detaches, not kills
        if name == b"C" and not args:
            return b"QC%x" % (target.last.vcpu + 1)
        if name == b"fThreadInfo":
            return b"m" + b",".join(b"%x" % (vcpu + 1) for vcpu in target.threads)
        if name == b"sThreadInfo":
            return b"l"
        if name == b"ThreadExtraInfo":
            try:
                vcpu = self._thread(args)
            except LookupError:
                return E_THREAD
            info = self._thread_info(target.last.vcpu if vcpu is None else vcpu)
            return info.encode().hex().encode()
        if name == b"Symbol":
            return OK         # no symbols wanted
        if name == b"Xfer":
            return self._xfer(args)
        if name == b"Rcmd":
            text = _hex_data(args).decode("utf-8", "replace")
            output = run_monitor(target, self.general, text).encode()
            return [b"O" + output[i:i + 1024].hex().encode()
                    for i in range(0, len(output), 1024)] + [OK]
        return b""

    def _xfer(self, args: bytes) -> bytes:
        """``qXfer:features:read:ANNEX:OFFSET,LENGTH``; other objects are not offered."""
        parts = args.split(b":")
        if len(parts) != 4 or parts[0] != b"features" or parts[1] != b"read":
            return b""
        if parts[2].decode("ascii", "replace") != ANNEX:
            return b"E00"
        offset, length = _address_length(parts[3])
        if self._xml is None:
            self._xml = target_xml(self.target.layout())
        return read_chunk(self._xml, offset, min(length, MAX_PACKET - 1))

    def _set(self, body: bytes) -> bytes:
        if body == b"StartNoAckMode":
            return OK
        return b""

    def _verbose(self, body: bytes) -> bytes | Resume | str:
        if body == b"Cont?":
            return b"vCont;c;C;s;S"
        if body.startswith(b"Cont;"):
            return self._vcont(body)
        if body.startswith(b"Kill"):
            return KILL
        return b""
