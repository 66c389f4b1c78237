"""The host end of the guest's serial line: where output goes, where input comes from.

A serial port has two ends. The guest drives one through the UART's
registers; this module is the other: the terminal a user types into and
reads from.

* **Output sinks** are callables ``sink(data: bytes) -> None``; a UART calls
  its sink with each byte it transmits. :class:`StdoutSink` hands raw bytes
  to a writer thread that writes them to a file descriptor (the terminal, a
  pipe), so that a reader that stops reading never stops the guest;
  :class:`BufferSink` keeps them in a bounded buffer (tests, the TUI) and may
  pass them on to a callback.
* **Input** goes through :class:`HostInput`, a bounded, thread-safe byte
  queue. Anything may ``put`` bytes into it (a reader thread, the TUI, a
  test); the VMM moves them into the device that takes host input (a
  :class:`Receiver`: the UART, a virtio console) with :meth:`HostInput.feed`,
  never more than the device has room for, so nothing is lost to an overrun. The
  queue has a fixed capacity: a flood of input (a paste, ``yes | minikvm``)
  drops the excess and counts it instead of growing memory.
* :class:`RawStdin` puts a terminal into raw mode so that each key reaches
  the guest at once (no line editing, no echo by the host: the guest echoes),
  reads what is available without blocking, and always restores the terminal,
  even when an exception passes through; :class:`TerminationSignals` turns
  SIGTERM and SIGHUP into such an exception (:class:`Terminated`).
"""

from __future__ import annotations

import atexit
import os
import select
import signal
import sys
import termios
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

from minikvm.devices.state import MAX_U64, SavedState, hex_bytes

__all__ = [
    "DEFAULT_INPUT_CAPACITY",
    "BufferSink",
    "HostInput",
    "DEFAULT_OUTPUT_CAPACITY",
    "RawStdin",
    "Receiver",
    "StdoutSink",
    "TerminationSignals",
    "Terminated",
]

#: How many bytes of host input may wait for the guest (64 KiB).
DEFAULT_INPUT_CAPACITY = 64 * 1024
#: How many bytes of guest output may wait for a slow reader (1 MiB): about a
#: minute of a guest that prints one byte per VM exit on a nested-KVM host.
DEFAULT_OUTPUT_CAPACITY = 1 << 20

_READ_CHUNK = 4096
_WRITE_CHUNK = 64 * 1024


@runtime_checkable
class Receiver(Protocol):
    """A device that takes host input (keyboard, piped stdin): what
    :meth:`HostInput.feed` needs. The device itself implements it -- the UART
    (its receiver FIFO) and the virtio console (its input buffer) -- so the
    machine needs no adapter and no knowledge of which kind it is."""

    def rx_space(self) -> int:
        """How many bytes :meth:`receive` would keep now; 0 means "wait"."""
        ...

    def receive(self, data: bytes) -> int:
        """Take host bytes for the guest; returns how many were kept."""
        ...


# --- output ---------------------------------------------------------------------------------

class StdoutSink:
    """Guest output to a file descriptor (default 1, stdout), written by a thread of its own.

    **Why a thread.** A device calls its sink on the vCPU thread, in the middle
    of an exit. A plain blocking ``write`` there would stop the guest whenever
    the reader stops reading (``minikvm run guest | less`` left unscrolled, a
    terminal paused with Ctrl-S, ``| sleep 20``), and with it the timeout and
    Ctrl-C, which only interrupt ``KVM_RUN``. So the vCPU only appends to a
    bounded buffer, under a lock it shares with nobody but the writer, and a
    writer thread moves the buffer to the descriptor with blocking writes.

    **When the buffer is full, new bytes are dropped and counted** in
    ``dropped``: the vCPU never waits. The other choice -- holding the guest's
    output device "busy" as a full transmit FIFO would -- is impossible for the
    debug console (port 0xE9 has no status a guest could poll: every ``out`` is
    a byte, whatever the host can take) and would make the same stalled reader
    stop a UART guest in its polling loop. One rule for every output device is
    easier to reason about; the buffer (:data:`DEFAULT_OUTPUT_CAPACITY`) is large
    enough that a reader that is slow but alive never loses a byte to a guest
    that makes one VM exit per byte. Firecracker's serial console makes the same
    choice for the same reason: a guest must not be able to block its VMM.

    **When the reader goes away** (``EPIPE``: ``| head -c 10`` exited; ``EIO``: the
    terminal hung up; ``ENOSPC`` ...) the sink marks itself ``broken``, keeps the
    error in ``error``, drops what is left and calls ``on_error(err)`` once, from
    the writer thread (``minikvm run`` then ends the run).

    :meth:`drain` waits until everything was written; :meth:`close` gives up on
    the rest. Python's own ``sys.stdout`` is flushed first, so text the VMM printed
    before stays in order.
    """

    def __init__(self, fd: int = 1, capacity: int = 0,
                 on_error: Callable[[OSError], None] | None = None) -> None:
        self.fd = fd
        self.capacity = max(1, capacity or DEFAULT_OUTPUT_CAPACITY)
        self.on_error = on_error
        #: Bytes the guest produced, bytes written to ``fd``, bytes lost.
        self.received = 0
        self.written = 0
        self.dropped = 0
        self.broken = False
        self.error: OSError | None = None
        self._buffer = bytearray()
        self._in_flight = 0
        self._closing = False
        # Re-entrant: Ctrl-C or SIGTERM raise on the main thread, and may land
        # inside ``with self._changed`` before the block is entered (the lock
        # taken, its release never registered). The cleanup that follows on
        # the same thread (``close``) must still get in, not wait for ever.
        self._changed = threading.Condition(threading.RLock())
        self._thread: threading.Thread | None = None

    # -- the vCPU side -------------------------------------------------------------------------

    def __call__(self, data: bytes) -> None:
        """Take guest output: never blocks (see the class docstring)."""
        count = len(data)
        with self._changed:
            self.received += count
            if self.broken or self._closing:
                self.dropped += count
                return
            room = self.capacity - len(self._buffer) - self._in_flight
            if room < count:
                self.dropped += count - max(0, room)
                data = data[:max(0, room)]
            if not data:
                return
            wake = not self._buffer
            self._buffer += data
            if wake:
                self._changed.notify_all()
        if self._thread is None:
            self.start()

    # -- the writer side ---------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer thread (the first output does it too)."""
        with self._changed:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._write_loop, name="minikvm-output",
                                            daemon=True)
        if self.fd == 1 and sys.stdout is not None:
            try:
                sys.stdout.flush()
            except (OSError, ValueError):
                pass
        self._thread.start()

    def _write_loop(self) -> None:
        while True:
            with self._changed:
                while not self._buffer and not self._closing:
                    self._changed.wait()
                if not self._buffer:
                    return
                chunk = bytes(self._buffer[:_WRITE_CHUNK])
                del self._buffer[:len(chunk)]
                self._in_flight = len(chunk)
            try:
                self._write_all(chunk)
            except OSError as err:
                self._fail(err)
                return
            with self._changed:
                self._in_flight = 0
                self._changed.notify_all()

    def _write_all(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            try:
                count = os.write(self.fd, view)
            except BlockingIOError:
                # Someone left the descriptor non-blocking: wait until it takes more.
                select.select([], [self.fd], [], 0.1)
                continue
            except InterruptedError:
                continue
            with self._changed:
                self.written += count
                self._in_flight -= count
            view = view[count:]

    def _fail(self, err: OSError) -> None:
        with self._changed:
            self.broken = True
            self.error = err
            self.dropped += self._in_flight + len(self._buffer)
            self._in_flight = 0
            self._buffer.clear()
            self._changed.notify_all()
        if self.on_error is not None:
            self.on_error(err)

    @property
    def pending(self) -> int:
        """Bytes taken from the guest and not yet written."""
        with self._changed:
            return len(self._buffer) + self._in_flight

    def drain(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds (None: as long as it takes) until
        everything taken was written or the sink broke; True when nothing is
        left to write."""
        with self._changed:
            self._changed.wait_for(lambda: self.broken or not (self._buffer or self._in_flight),
                                   timeout)
            return not (self._buffer or self._in_flight)

    def close(self) -> int:
        """Stop taking output and give up on what was not written yet (counted
        in ``dropped``); returns how many bytes that was. A write blocked on a
        stalled reader is left to the writer thread (a daemon)."""
        with self._changed:
            self._closing = True
            lost = len(self._buffer) + self._in_flight
            self.dropped += lost
            self._buffer.clear()
            self._in_flight = 0
            self._changed.notify_all()
        return lost


class BufferSink:
    """Collects guest output in memory, keeping at most the last ``limit`` bytes.

    ``callback``, if given, is called with every chunk as it arrives (the TUI
    uses this to refresh); ``total`` counts every byte ever received and
    ``discarded`` those pushed out of the buffer by the limit.
    """

    def __init__(self, limit: int = 1 << 20,
                 callback: Callable[[bytes], None] | None = None) -> None:
        self.limit = max(0, limit)
        self.callback = callback
        self.buffer = bytearray()
        self.total = 0
        self.discarded = 0

    def __call__(self, data: bytes) -> None:
        data = bytes(data)
        self.total += len(data)
        self.buffer += data
        excess = len(self.buffer) - self.limit
        if excess > 0:
            del self.buffer[:excess]
            self.discarded += excess
        if self.callback is not None:
            self.callback(data)

    def __len__(self) -> int:
        return len(self.buffer)

    def getvalue(self) -> bytes:
        """The bytes kept so far."""
        return bytes(self.buffer)

    def text(self, encoding: str = "utf-8") -> str:
        """The bytes kept so far as text (undecodable bytes replaced)."""
        return self.buffer.decode(encoding, errors="replace")

    def clear(self) -> None:
        self.buffer.clear()


# --- input ----------------------------------------------------------------------------------

class HostInput:
    """A bounded, thread-safe queue of bytes on their way from the host to a device.

    ``put`` never blocks: what does not fit in ``capacity`` is dropped and
    counted in ``dropped``. ``feed`` moves as many queued bytes as the
    device (a :class:`Receiver`) has room for (``rx_space()``), in order.
    """

    def __init__(self, capacity: int = DEFAULT_INPUT_CAPACITY) -> None:
        self.capacity = max(1, capacity)
        self._buffer = bytearray()
        #: The queue itself (the same bytearray for the object's life): true
        #: while a byte waits. The run loop looks at it between every two
        #: exits without the lock (a length read is atomic in CPython; a byte
        #: that arrives just after the look goes in at the next exit) and
        #: without a call (:attr:`waiting` costs a property call, ~0.1 µs).
        #: Read it only; change the queue through the methods.
        self.queued = self._buffer
        self._lock = threading.Lock()
        self.accepted = 0
        self.dropped = 0
        self.delivered = 0

    def put(self, data: bytes) -> int:
        """Queue ``data``; returns how many bytes were accepted (the rest is dropped)."""
        data = bytes(data)
        with self._lock:
            room = self.capacity - len(self._buffer)
            taken = data[:max(0, room)]
            self._buffer += taken
            self.accepted += len(taken)
            self.dropped += len(data) - len(taken)
            return len(taken)

    def get(self, max_bytes: int) -> bytes:
        """Take up to ``max_bytes`` queued bytes, oldest first."""
        if max_bytes <= 0:
            return b""
        with self._lock:
            chunk = bytes(self._buffer[:max_bytes])
            del self._buffer[:len(chunk)]
            return chunk

    def free(self) -> int:
        """How many more bytes ``put`` would accept now."""
        with self._lock:
            return self.capacity - len(self._buffer)

    def __len__(self) -> int:
        with self._lock:
            return len(self._buffer)

    @property
    def waiting(self) -> bool:
        """Is anything queued? Asked between every two exits, so without the
        lock: a length read is atomic in CPython, and a byte that arrives
        just after the look is delivered at the next exit."""
        return bool(self._buffer)

    # -- save and restore (snapshots) ------------------------------------------

    _COUNTERS = ("accepted", "dropped", "delivered")

    def save(self) -> dict[str, Any]:
        """The bytes queued for the guest and not yet delivered (hex), and
        the counters. They belong to the machine's state: restored, the
        guest receives them as it would have."""
        with self._lock:
            queued = hex_bytes(self._buffer)
        return {"queued": queued} | {name: getattr(self, name) for name in self._COUNTERS}

    def check_state(self, state: Any) -> None:
        """Raise DeviceStateError unless :meth:`restore` would take ``state``;
        the queue may hold no more than this queue's ``capacity``."""
        fields = SavedState(state, "host input", ("queued", *self._COUNTERS))
        fields.hex_bytes("queued", self.capacity)
        for name in self._COUNTERS:
            fields.integer(name, 0, MAX_U64)

    def restore(self, state: dict[str, Any]) -> None:
        """Replace the queue with the saved bytes (checked first)."""
        self.check_state(state)
        with self._lock:
            self._buffer[:] = bytes.fromhex(state["queued"])
            for name in self._COUNTERS:
                setattr(self, name, state[name])

    def feed(self, device: Receiver) -> int:
        """Deliver queued bytes to ``device`` as far as it has room; returns how many."""
        space = device.rx_space()
        if space <= 0:
            return 0
        chunk = self.get(space)
        if not chunk:
            return 0
        device.receive(chunk)
        self.delivered += len(chunk)
        return len(chunk)


def _raw_attributes(attrs: list, keep_signals: bool) -> list:
    """Terminal attributes for raw input (like ``cfmakeraw``), keeping output
    processing (so host messages still start at column 0) and, if asked,
    the signal keys (Ctrl-C still stops the VMM)."""
    iflag, oflag, cflag, lflag, ispeed, ospeed, cc = attrs
    iflag &= ~(termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP
               | termios.INLCR | termios.IGNCR | termios.ICRNL | termios.IXON)
    cflag = (cflag & ~(termios.CSIZE | termios.PARENB)) | termios.CS8
    lflag &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.IEXTEN)
    if not keep_signals:
        lflag &= ~termios.ISIG
    cc = list(cc)
    cc[termios.VMIN] = 1
    cc[termios.VTIME] = 0
    return [iflag, oflag, cflag, lflag, ispeed, ospeed, cc]


class RawStdin:
    """A context manager for keyboard input to the guest.

    On entry, if the descriptor (default: stdin) is a terminal, it is put
    into raw mode: no line buffering, no echo, Ctrl-C still a signal unless
    ``keep_signals=False``. On exit the saved mode is restored, whatever
    happened inside. If the descriptor is not a terminal (a pipe, a file)
    nothing is changed and :meth:`read_available` still works; if there is
    no stdin at all, reads return nothing.

    Input is read either by calling :meth:`read_available` / :meth:`pump`
    from the VMM's loop, or by :meth:`start_reader`, a background thread that
    moves bytes into a :class:`HostInput` and calls ``on_input`` so that the
    VMM can wake a halted vCPU.
    """

    def __init__(self, fd: int | None = None, *, keep_signals: bool = True) -> None:
        self._fd_argument = fd
        self.keep_signals = keep_signals
        self.fd = -1
        self.is_tty = False
        self.eof = False
        self._saved: list | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake_w = -1

    def __enter__(self) -> RawStdin:
        fd = self._fd_argument
        if fd is None:
            try:
                fd = sys.stdin.fileno() if sys.stdin is not None else -1
            except (OSError, ValueError):
                fd = -1
        self.fd = fd
        self.is_tty = fd >= 0 and os.isatty(fd)
        if self.is_tty:
            saved = termios.tcgetattr(fd)
            self._saved = saved
            # Should the interpreter exit without unwinding this block (a
            # SystemExit from a thread, os._exit excepted), the mode still
            # comes back.
            atexit.register(self.restore)
            try:
                termios.tcsetattr(fd, termios.TCSANOW,
                                  _raw_attributes(saved, self.keep_signals))
            except BaseException:
                self.restore()
                raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            self.stop_reader()
        finally:
            self.restore()

    @property
    def is_raw(self) -> bool:
        """Whether the terminal is in raw mode now (and will be restored)."""
        return self._saved is not None

    def restore(self) -> None:
        """Put the terminal back as it was on entry (safe to call twice, and
        from a signal handler that interrupted a restore in progress: the
        saved mode is forgotten only after it was set)."""
        saved = self._saved
        if saved is None:
            return
        try:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, saved)
        except termios.error:
            pass  # the terminal went away (SIGHUP); nothing left to restore
        self._saved = None
        atexit.unregister(self.restore)

    def read_available(self, max_bytes: int = _READ_CHUNK, timeout: float = 0.0) -> bytes:
        """The bytes that can be read now (waiting up to ``timeout`` seconds); b"" if none."""
        if self.fd < 0 or self.eof or max_bytes <= 0:
            return b""
        try:
            readable, _, _ = select.select([self.fd], [], [], timeout)
        except (OSError, ValueError):
            self.eof = True
            return b""
        if not readable:
            return b""
        try:
            data = os.read(self.fd, max_bytes)
        except BlockingIOError:
            return b""
        except OSError:
            self.eof = True  # e.g. EIO when a pty's other end closed
            return b""
        if not data:
            self.eof = True
        return data

    def pump(self, host_input: HostInput) -> int:
        """Move what can be read now into ``host_input`` (no more than it has room for)."""
        room = min(host_input.free(), _READ_CHUNK)
        if room <= 0:
            return 0  # leave the bytes in the terminal's own buffer for now
        data = self.read_available(room)
        return host_input.put(data) if data else 0

    def start_reader(self, host_input: HostInput,
                     on_input: Callable[[], None] | None = None,
                     poll_seconds: float = 0.05) -> None:
        """Read in a daemon thread until exit or end of input, feeding ``host_input``.

        What can be read at once is read here first, until nothing more is
        there or ``host_input`` is full: input that reaches its end so
        (``</dev/null``, a short file) then needs no thread, whose start
        costs ``minikvm run`` a wait for the scheduler (``Thread.start``
        returns once the thread runs: up to a few ms on a busy machine)."""
        if self._thread is not None or self.fd < 0:
            return
        taken = 0
        while True:   # ends: each round takes bytes into a bounded queue, or stops
            count = self.pump(host_input)
            if not count:
                break
            taken += count
        if taken and on_input is not None:
            on_input()
        if self.eof:
            return
        self._stop.clear()
        # A pipe whose other end stop_reader() writes: the thread's select()
        # wakes at once instead of at the end of its poll (the "self-pipe").
        wake_r, self._wake_w = os.pipe()

        def loop() -> None:
            try:
                while not self._stop.is_set() and not self.eof:
                    room = min(host_input.free(), _READ_CHUNK)
                    if room <= 0:
                        self._stop.wait(poll_seconds)
                        continue
                    try:
                        readable, _, _ = select.select([self.fd, wake_r], [], [], poll_seconds)
                    except (OSError, ValueError):
                        self.eof = True
                        break
                    if self.fd not in readable:
                        continue
                    data = self.read_available(room)
                    if data and host_input.put(data) and on_input is not None:
                        on_input()
            finally:
                os.close(wake_r)

        self._thread = threading.Thread(target=loop, name="minikvm-stdin", daemon=True)
        self._thread.start()

    def stop_reader(self) -> None:
        """Stop the reader thread, if one runs, and wait for it."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            wake_w, self._wake_w = self._wake_w, -1
            try:
                os.write(wake_w, b"x")
            except OSError:
                pass
            try:
                thread.join(timeout=2.0)
            except RuntimeError:
                # Ctrl-C came while start_reader() was starting it: the thread
                # never ran (or, started after all, sees _stop and ends).
                pass
            os.close(wake_w)


# --- signals that end the VMM ----------------------------------------------------------------

class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived. Raised by :class:`TerminationSignals`'
    handler, on the main thread, so that it unwinds like Ctrl-C's
    ``KeyboardInterrupt`` -- through every ``with`` and ``finally`` that gives
    something back (the terminal's mode above all) -- and the command exits
    with ``status`` = 128 + the signal number, as a shell reports a process
    the signal killed. A ``BaseException`` (like ``KeyboardInterrupt``), so
    that no ``except Exception`` on the way swallows it."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.status = 128 + signum
        self.name = signal.Signals(signum).name
        super().__init__(f"terminated by {self.name}")


class TerminationSignals:
    """While active: SIGTERM and SIGHUP raise :class:`Terminated` on the main thread.

    Their default action kills the process on the spot, and a terminal that
    :class:`RawStdin` put into raw mode would stay raw (no echo, no line
    editing) under the shell. With this context manager the process unwinds
    instead. Python runs signal handlers on the main thread between
    bytecodes; a main thread inside ``KVM_RUN`` gets ``EINTR`` from the same
    signal, so the handler runs at once. The previous handlers come back on
    exit, so a second signal while unwinding acts as it normally would.
    Off the main thread (where handlers cannot be set) it does nothing.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self._old: dict[int, object] = {}

    @staticmethod
    def _handler(signum: int, frame: object) -> None:
        raise Terminated(signum)

    def __enter__(self) -> TerminationSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._old[signum] = signal.signal(signum, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        old, self._old = self._old, {}
        for signum, handler in old.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)  # type: ignore[arg-type]
