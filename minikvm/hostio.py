"""The host end of the guest's serial line: where output goes, where input comes from.

A serial port has two ends. The guest drives one through the UART's
registers; this module is the other: the terminal a user types into and
reads from.

* **Output sinks** are callables ``sink(data: bytes) -> None``; a UART calls
  its sink with each byte it transmits. :class:`StdoutSink` writes raw bytes
  to a file descriptor (the terminal), :class:`BufferSink` keeps them in a
  bounded buffer (tests, the TUI) and may pass them on to a callback.
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
  even when an exception passes through.
"""

from __future__ import annotations

import os
import select
import sys
import termios
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Protocol, runtime_checkable

__all__ = [
    "DEFAULT_INPUT_CAPACITY",
    "BufferSink",
    "HostInput",
    "RawStdin",
    "Receiver",
    "StdoutSink",
]

#: How many bytes of host input may wait for the guest (64 KiB).
DEFAULT_INPUT_CAPACITY = 64 * 1024

_READ_CHUNK = 4096
_WRITE_STALL_SECONDS = 2.0  # give up on a terminal that accepts nothing for this long


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
    """Writes guest output as raw bytes to a file descriptor (default 1, stdout).

    Bytes go straight to the descriptor with ``os.write``, so nothing sits in
    a Python buffer; Python's own ``sys.stdout`` is flushed first so that text
    the VMM printed earlier stays in order. If the reader goes away (a closed
    pipe) the sink marks itself ``broken`` and drops further output.
    """

    def __init__(self, fd: int = 1) -> None:
        self.fd = fd
        self.written = 0
        self.dropped = 0
        self.broken = False

    def __call__(self, data: bytes) -> None:
        if self.broken:
            self.dropped += len(data)
            return
        if self.fd == 1 and sys.stdout is not None:
            try:
                sys.stdout.flush()
            except (OSError, ValueError):
                pass
        view = memoryview(bytes(data))
        while view:
            try:
                count = os.write(self.fd, view)
            except BlockingIOError:
                # A non-blocking terminal that is full: wait a little, then give up.
                _, writable, _ = select.select([], [self.fd], [], _WRITE_STALL_SECONDS)
                if not writable:
                    self.dropped += len(view)
                    return
                continue
            except OSError:  # a closed pipe, a vanished terminal
                self.broken = True
                self.dropped += len(view)
                return
            self.written += count
            view = view[count:]


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
        """Put the terminal back as it was on entry (safe to call twice)."""
        saved, self._saved = self._saved, None
        if saved is not None:
            try:
                termios.tcsetattr(self.fd, termios.TCSADRAIN, saved)
            except termios.error:
                pass  # the terminal went away; nothing left to restore

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
        """Read in a daemon thread until exit or end of input, feeding ``host_input``."""
        if self._thread is not None or self.fd < 0:
            return
        self._stop.clear()

        def loop() -> None:
            while not self._stop.is_set() and not self.eof:
                room = min(host_input.free(), _READ_CHUNK)
                if room <= 0:
                    self._stop.wait(poll_seconds)
                    continue
                data = self.read_available(room, timeout=poll_seconds)
                if data and host_input.put(data) and on_input is not None:
                    on_input()

        self._thread = threading.Thread(target=loop, name="minikvm-stdin", daemon=True)
        self._thread.start()

    def stop_reader(self) -> None:
        """Stop the reader thread, if one runs, and wait for it."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join(timeout=2.0)
