"""The host end of the serial line: output sinks, bounded input, raw terminal mode."""

from __future__ import annotations

import errno
import os
import signal
import termios
import threading
import time

import pytest

from minikvm.devices.uart import (
    UART_FCR,
    UART_FCR_ENABLE_FIFO,
    UART_IER,
    UART_IER_RDI,
    UART_IER_THRI,
    UART_LCR,
    UART_LSR,
    UART_MCR,
    UART_MCR_DTR,
    UART_MCR_LOOP,
    UART_MCR_OUT2,
    UART_MCR_RTS,
    Uart16550,
)
from minikvm.devices.virtio.console import VirtioConsole
from minikvm.hostio import (
    BufferSink,
    HostInput,
    RawStdin,
    Receiver,
    StdoutSink,
    Terminated,
    TerminationSignals,
)


@pytest.fixture
def pty_pair():
    master, slave = os.openpty()
    yield master, slave
    for fd in (master, slave):
        try:
            os.close(fd)
        except OSError:
            pass


# --- output ---------------------------------------------------------------------------------

def test_buffer_sink_collects_uart_output():
    sink = BufferSink()
    uart = Uart16550(output=sink)
    for byte in b"hello\r\n":
        uart.write(0, 1, byte)
    assert sink.getvalue() == b"hello\r\n"
    assert sink.text() == "hello\r\n"


def test_buffer_sink_keeps_only_the_last_limit_bytes():
    sink = BufferSink(limit=4)
    sink(b"abc")
    sink(b"defg")
    assert sink.getvalue() == b"defg"
    assert (sink.total, sink.discarded) == (7, 3)


def test_buffer_sink_passes_chunks_to_callback():
    seen: list[bytes] = []
    sink = BufferSink(limit=0, callback=seen.append)
    sink(b"x")
    sink(b"yz")
    assert seen == [b"x", b"yz"]
    assert len(sink) == 0


def test_stdout_sink_writes_raw_bytes_to_its_fd():
    read_end, write_end = os.pipe()
    try:
        sink = StdoutSink(fd=write_end)
        sink(b"\x00raw\xff\r\n")
        assert sink.drain(timeout=5)
        assert os.read(read_end, 100) == b"\x00raw\xff\r\n"
        assert (sink.received, sink.written, sink.dropped) == (7, 7, 0)
    finally:
        os.close(read_end)
        os.close(write_end)


def test_stdout_sink_keeps_every_byte_in_order_while_the_reader_keeps_up():
    read_end, write_end = os.pipe()
    got = bytearray()

    def reader() -> None:
        while chunk := os.read(read_end, 65536):
            got.extend(chunk)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        sink = StdoutSink(fd=write_end, capacity=1 << 20)
        chunks = [bytes([i % 251]) * (i % 97 + 1) for i in range(3000)]
        for chunk in chunks:
            sink(chunk)
        assert sink.drain(timeout=10)
    finally:
        os.close(write_end)
        thread.join(10)
        os.close(read_end)
    assert bytes(got) == b"".join(chunks)
    assert sink.dropped == 0


def test_a_stalled_reader_never_makes_the_guest_wait_and_the_excess_is_counted():
    # Firecracker's test_serial_block, as an idea: a reader that reads nothing.
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    try:
        while True:                              # fill the pipe: the reader is asleep
            os.write(write_end, b"." * 4096)
    except BlockingIOError:
        os.set_blocking(write_end, True)
    try:
        sink = StdoutSink(fd=write_end, capacity=4096)
        started = time.monotonic()
        for _ in range(1000):
            sink(b"x" * 1000)       # 1 MB: far more than the pipe and the buffer hold
        assert time.monotonic() - started < 2.0     # the caller (the vCPU) never blocked
        assert sink.received == 1_000_000
        assert sink.pending <= 4096
        assert sink.dropped == 1_000_000 - 4096 and sink.written == 0
        assert not sink.drain(timeout=0.2)          # nothing can get out
        lost = sink.close()
        assert lost > 0 and sink.dropped == sink.received - sink.written
        sink(b"after close")                        # still harmless
    finally:
        os.close(read_end)
        os.close(write_end)


def test_stdout_sink_marks_itself_broken_and_says_so_once_when_the_reader_is_gone():
    read_end, write_end = os.pipe()
    os.close(read_end)
    errors: list[OSError] = []
    try:
        sink = StdoutSink(fd=write_end, on_error=errors.append)
        sink(b"lost")   # EPIPE (SIGPIPE is ignored by Python)
        sink.drain(timeout=5)
        sink(b"more")
        assert sink.broken
        assert sink.dropped == 8 and sink.written == 0
        assert [err.errno for err in errors] == [errno.EPIPE]
    finally:
        os.close(write_end)


# --- input queue ----------------------------------------------------------------------------

def test_host_input_feeds_uart_no_more_than_it_has_room_for():
    uart = Uart16550()
    uart.write(UART_MCR, 1, UART_MCR_RTS)    # the driver asks for input
    host = HostInput()
    host.put(b"abc")
    assert host.feed(uart) == 1          # FIFOs off: one byte of room
    assert uart.overruns == 0
    assert uart.read(0, 1) == ord("a")
    uart.write(UART_FCR, 1, UART_FCR_ENABLE_FIFO)
    assert host.feed(uart) == 2
    assert bytes(uart.read(0, 1) for _ in range(2)) == b"bc"
    assert host.feed(uart) == 0
    assert uart.overruns == 0


def test_host_input_waits_while_uart_is_in_loopback():
    uart = Uart16550()
    uart.write(UART_MCR, 1, UART_MCR_LOOP | UART_MCR_RTS)
    host = HostInput()
    host.put(b"k")
    assert host.feed(uart) == 0
    assert len(host) == 1
    uart.write(UART_MCR, 1, UART_MCR_RTS)
    assert host.feed(uart) == 1


def test_host_input_waits_until_the_driver_has_set_the_uart_up():
    # The order of serial_echo.S and of most drivers: line, FIFOs (FCR 0x07
    # clears them), MCR, IER. Input queued before must survive the clear.
    uart = Uart16550()
    host = HostInput()
    host.put(b"hello\n")
    for offset, value in ((UART_LCR, 0x80), (0, 1), (1, 0), (UART_LCR, 0x03)):
        uart.write(offset, 1, value)
        assert host.feed(uart) == 0              # not asked for yet: it waits on the host
    uart.write(UART_FCR, 1, 0x07)                # enable and clear the FIFOs
    assert host.feed(uart) == 0
    uart.write(UART_MCR, 1, 0x0B)                # OUT2 | RTS | DTR: "ready to exchange data"
    assert host.feed(uart) == 6
    assert bytes(uart.read(0, 1) for _ in range(6)) == b"hello\n"
    assert uart.overruns == 0


@pytest.mark.parametrize("offset, value, ready", [
    (UART_MCR, UART_MCR_RTS, True),             # hardware flow control: RTS asserted
    (UART_IER, UART_IER_RDI, True),             # "interrupt me when data arrives"
    (UART_MCR, UART_MCR_DTR, False),            # DTR alone: a link, not yet data
    (UART_MCR, UART_MCR_OUT2, False),
    (UART_IER, UART_IER_THRI, False),
    (UART_MCR, UART_MCR_RTS | UART_MCR_LOOP, False),   # loopback cuts the input pin
])
def test_uart_receiver_is_ready_for_host_input_after_rts_or_rdi(offset, value, ready):
    uart = Uart16550()
    assert not uart.receiver_ready and uart.rx_space() == 0
    uart.write(offset, 1, value)
    assert uart.receiver_ready is ready
    assert (uart.rx_space() > 0) is ready


def test_fcr_clear_still_clears_what_the_fifo_holds():
    uart = Uart16550()
    uart.write(UART_FCR, 1, UART_FCR_ENABLE_FIFO)
    uart.write(UART_MCR, 1, UART_MCR_RTS)
    host = HostInput()
    host.put(b"stale")
    assert host.feed(uart) == 5
    uart.write(UART_FCR, 1, 0x07)
    assert uart.rx_pending() == 0 and not uart.read(UART_LSR, 1) & 0x01


def test_the_uart_and_the_virtio_console_are_both_receivers_of_host_input():
    assert isinstance(Uart16550(), Receiver)
    assert isinstance(VirtioConsole(output=lambda data: None), Receiver)
    assert not isinstance(BufferSink(), Receiver)


def test_host_input_feeds_a_virtio_console_up_to_its_input_limit():
    console = VirtioConsole(output=lambda data: None, input_limit=4)
    host = HostInput()
    host.put(b"abcdef")
    assert host.feed(console) == 4       # kept until the driver posts buffers
    assert console.rx_space() == 0
    assert host.feed(console) == 0       # the rest waits in HostInput, not dropped
    assert len(host) == 2
    assert console.counters["input_dropped"] == 0


def test_host_input_flood_is_bounded_and_counted():
    host = HostInput(capacity=1024)
    accepted = sum(host.put(b"y" * 100) for _ in range(100))
    assert accepted == 1024
    assert len(host) == 1024
    assert host.dropped == 100 * 100 - 1024
    assert host.free() == 0


def test_host_input_keeps_order_across_threads():
    host = HostInput(capacity=100_000)
    chunks = [bytes([i]) * 50 for i in range(100)]

    def producer() -> None:
        for chunk in chunks:
            host.put(chunk)

    thread = threading.Thread(target=producer)
    thread.start()
    got = bytearray()
    while thread.is_alive() or len(host):
        got += host.get(37)
    thread.join()
    assert bytes(got) == b"".join(chunks)


# --- raw terminal ---------------------------------------------------------------------------

def test_raw_stdin_puts_a_tty_in_raw_mode_and_restores_it(pty_pair):
    _, slave = pty_pair
    before = termios.tcgetattr(slave)
    assert before[3] & termios.ICANON
    with RawStdin(fd=slave) as stdin:
        assert stdin.is_tty and stdin.is_raw
        during = termios.tcgetattr(slave)
        assert not during[3] & (termios.ICANON | termios.ECHO)
        assert during[3] & termios.ISIG  # Ctrl-C still stops the VMM by default
    assert termios.tcgetattr(slave) == before


def test_raw_stdin_restores_the_terminal_after_an_exception(pty_pair):
    _, slave = pty_pair
    before = termios.tcgetattr(slave)

    class GuestCrashed(Exception):
        pass

    with pytest.raises(GuestCrashed):
        with RawStdin(fd=slave, keep_signals=False):
            assert not termios.tcgetattr(slave)[3] & termios.ISIG
            raise GuestCrashed
    assert termios.tcgetattr(slave) == before


def test_raw_stdin_reads_keys_without_waiting_for_enter(pty_pair):
    master, slave = pty_pair
    with RawStdin(fd=slave) as stdin:
        assert stdin.read_available() == b""       # nothing typed: no blocking
        os.write(master, b"ls")                  # no newline
        assert stdin.read_available(timeout=2.0) == b"ls"


def test_raw_stdin_reader_thread_fills_host_input(pty_pair):
    master, slave = pty_pair
    host = HostInput()
    woke = threading.Event()
    with RawStdin(fd=slave, keep_signals=False) as stdin:  # Ctrl-C goes to the guest
        stdin.start_reader(host, on_input=woke.set, poll_seconds=0.01)
        os.write(master, b"\x03q")
        assert woke.wait(5.0)
        pause = threading.Event()
        for _ in range(200):
            if len(host) >= 2:
                break
            pause.wait(0.01)
    assert host.get(10) == b"\x03q"


def test_raw_stdin_on_a_pipe_changes_nothing_and_reads():
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, b"scripted input")
        os.close(write_end)
        with RawStdin(fd=read_end) as stdin:
            assert not stdin.is_tty and not stdin.is_raw
            assert stdin.read_available(timeout=1.0) == b"scripted input"
            assert stdin.read_available(timeout=1.0) == b""
            assert stdin.eof
    finally:
        os.close(read_end)


def test_raw_stdin_pump_respects_host_input_capacity(pty_pair):
    master, slave = pty_pair
    host = HostInput(capacity=3)
    with RawStdin(fd=slave) as stdin:
        os.write(master, b"abcdef")
        stdin.read_available(0, timeout=0.5)  # asks for nothing: reads nothing
        got = 0
        for _ in range(50):
            got += stdin.pump(host)
            if got >= 3:
                break
            threading.Event().wait(0.01)
        assert host.get(10) == b"abc"
        assert host.dropped == 0                 # the rest waits in the terminal
        assert stdin.read_available(timeout=1.0) == b"def"


def test_raw_stdin_without_stdin_reads_nothing():
    with RawStdin(fd=-1) as stdin:
        assert stdin.read_available() == b""
        assert stdin.pump(HostInput()) == 0


def test_raw_stdin_restore_can_run_again_after_an_interrupted_restore(pty_pair):
    _, slave = pty_pair
    before = termios.tcgetattr(slave)
    stdin = RawStdin(fd=slave).__enter__()
    stdin.restore()
    stdin.restore()                              # a signal handler's second try: harmless
    assert termios.tcgetattr(slave) == before and not stdin.is_raw


# --- signals --------------------------------------------------------------------------------

@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_termination_signals_unwind_with_128_plus_the_signal(signum):
    before = signal.getsignal(signum)
    with pytest.raises(Terminated) as caught:
        with TerminationSignals():
            os.kill(os.getpid(), signum)
            time.sleep(5)                        # the handler runs before this ends
    assert caught.value.status == 128 + signum
    assert caught.value.name in str(caught.value)
    assert signal.getsignal(signum) == before    # the old handler is back


def test_ctrl_c_while_the_reader_starts_still_lets_stop_reader_clean_up(monkeypatch):
    """Ctrl-C can land inside ``Thread.start()`` (the terminal is raw, the
    user is quick): ``stop_reader`` in the ``finally`` must not raise."""
    read_end, write_end = os.pipe()

    def interrupted_start(self) -> None:
        raise KeyboardInterrupt

    try:
        with RawStdin(fd=read_end) as stdin:
            monkeypatch.setattr(threading.Thread, "start", interrupted_start)
            with pytest.raises(KeyboardInterrupt):
                stdin.start_reader(HostInput())
            monkeypatch.undo()
            stdin.stop_reader()          # no "cannot join thread before it is started"
    finally:
        os.close(read_end)
        os.close(write_end)


def test_a_signal_that_left_the_sink_locked_does_not_hang_its_close():
    """SIGTERM's exception can land inside ``with`` after the lock was taken
    but before its release was registered: the main thread's own cleanup
    (``close``) must still go through."""
    read_end, write_end = os.pipe()
    sink = StdoutSink(write_end)
    closed = threading.Event()

    def leak_then_close() -> None:
        sink._changed.acquire()          # what the interrupted `with` left behind
        sink(b"lost")
        sink.close()
        closed.set()

    worker = threading.Thread(target=leak_then_close, daemon=True)
    worker.start()
    try:
        assert closed.wait(5.0), "close() waited for a lock its own thread holds"
    finally:
        os.close(read_end)
        os.close(write_end)
