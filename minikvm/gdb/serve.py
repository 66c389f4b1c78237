"""``minikvm run GUEST --gdb HOST:PORT``: wait for gdb, then let it drive the guest.

The Remote Serial Protocol runs over any byte stream; gdb's ``target remote
HOST:PORT`` makes it TCP (GDB manual, "Connecting to a Remote Target").
:func:`serve_gdb` listens, says in one line how to attach, and accepts one
client *before the guest's first instruction* -- so a breakpoint can be
set anywhere, even at the entry. Then it serves that one client:

* the socket and the target's wakeups are watched together (``select``),
  so a Ctrl-C from gdb is read while a vCPU runs on its worker thread;
* when gdb detaches (``D``) or goes away, every breakpoint comes out and
  the guest runs on to its end, as it would have without gdb; ``k`` ends it;
* whatever happened, the result is the machine's one :class:`Stop`, whose
  status is the process's exit status, as in a normal run.

The stub listens on the loopback interface unless told otherwise. Anyone
who can connect to it can read and write the guest's memory and registers,
so another address is allowed but warned about, once.
"""

from __future__ import annotations

import ipaddress
import select
import socket
import sys
from collections.abc import Callable

from minikvm.core.stop import Stop
from minikvm.debug.probe import DebugSupport
from minikvm.gdb.session import Outcome, Session
from minikvm.gdb.target import Target
from minikvm.machine import Machine

__all__ = ["attach_command", "format_address", "listen", "serve_gdb"]

#: While vCPUs still have to stop (after Ctrl-C, or after another vCPU
#: stopped first), the pause is repeated this often (see Target.nudge).
_NUDGE_INTERVAL = 0.05
#: After the last reply, how long gdb may take to acknowledge it and close.
_LINGER = 1.0


def format_address(host: str, port: int) -> str:
    """``HOST:PORT`` as gdb's ``target remote`` takes it (IPv6 in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if not host:
        host = "127.0.0.1"
    return socket.create_server((host, port), family=family, backlog=1)


def attach_command(guest: str | None, address: str, bitness: int) -> str:
    """The gdb command line that attaches to us. gdb learns the registers
    from the stub, but symbols only from the ELF file; real-mode code also
    needs gdb told to decode 16-bit instructions."""
    words = ["gdb"]
    if guest is not None and _is_elf(guest):
        words.append(guest)
    if bitness == 16:
        words += ["-ex", "'set architecture i8086'"]
    words += ["-ex", f"'target remote {address}'"]
    return " ".join(words)


def _is_elf(path: str) -> bool:
    try:
        with open(path, "rb") as file:
            return file.read(4) == b"\x7fELF"
    except OSError:
        return False


def _say(line: str) -> None:
    print(f"minikvm: {line}", file=sys.stderr, flush=True)


def serve_gdb(machine: Machine, address: tuple[str, int], *, guest: str | None = None,
              timeout: float | None = None, support: DebugSupport | None = None,
              say: Callable[[str], None] = _say,
              server: socket.socket | None = None, record: bool = False) -> Stop:
    """Listen on ``address`` (or use the listening ``server``), wait for gdb,
    serve it, and return how the guest ended.

    ``guest`` is the guest's file, named in the line that says how to
    attach; ``timeout`` bounds each stretch the guest runs between two
    stops (and the run after a detach), as ``--timeout`` does a normal run.
    ``record``: vCPU 0 records every instruction from the first (``--reverse``,
    as ``monitor record on``), for reverse-stepi and reverse-continue.
    """
    server = server if server is not None else listen(*address)
    target = None
    try:
        host, port = server.getsockname()[:2]
        where = format_address(host, port)
        if not _is_loopback(host):
            say(f"warning: the gdb stub listens on {where}, not only on this machine: "
                f"anyone who can connect to it controls the guest")
        bitness = 64
        try:
            from minikvm.x86.modes import code_bitness
            bitness = code_bitness(machine.vcpu.get_sregs(), machine.vcpu.get_regs().rflags)
        except Exception:  # noqa: BLE001 - only the suggested command line depends on it
            pass
        say(f"waiting for gdb on {where}; attach with: {attach_command(guest, where, bitness)}")
        connection, _ = server.accept()
    finally:
        server.close()
    with connection:
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        target = Target(machine, support, timeout)
        if record:
            target.debuggers[0].record()
        try:
            session = Session(target, connection.sendall)
            _serve(connection, session, target)
            if session.outcome == Outcome.ENDED:
                _linger(connection)
        except BaseException:
            target.close()
            raise
    return _finish(machine, target, session, timeout)


def _serve(connection: socket.socket, session: Session, target: Target) -> None:
    """Until the session ends: the client's bytes and the target's wakeups."""
    while not session.done:
        wait = _NUDGE_INTERVAL if session.running else None
        readable, _, _ = select.select([connection, target.wakeup], [], [], wait)
        if target.wakeup in readable:
            session.target_woke()
        if connection in readable and not session.done:
            try:
                data = connection.recv(65536)
            except (ConnectionError, OSError):
                data = b""
            if not data:
                session.closed()
                return
            try:
                session.received(data)
            except (BrokenPipeError, ConnectionError):
                session.closed()
                return
        if session.running:
            target.nudge()


def _linger(connection: socket.socket) -> None:
    """After the last reply: let gdb acknowledge it and close first, so that
    closing does not reset a connection with unread bytes."""
    try:
        connection.shutdown(socket.SHUT_WR)
        connection.settimeout(_LINGER)
        while connection.recv(4096):
            pass
    except OSError:
        pass


def _settle(target: Target) -> None:
    """Let every running vCPU stop (a detach or disconnect while running)."""
    for _ in range(200):
        if not target.running:
            return
        target.interrupt()
        select.select([target.wakeup], [], [], _NUDGE_INTERVAL)
        target.collect()


def _finish(machine: Machine, target: Target, session: Session,
            timeout: float | None) -> Stop:
    """The guest's end, after gdb: it ended, was killed, or runs on alone."""
    if session.outcome != Outcome.ENDED:
        _settle(target)
    target.close()
    if target.ended is not None:
        return target.ended
    if session.outcome == Outcome.KILLED:
        return target.kill()
    return machine.run(timeout=timeout)
