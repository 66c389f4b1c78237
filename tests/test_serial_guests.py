"""COM1 with real guests: a polled hello, and an interrupt-driven echo
through KVM's in-kernel PIC (IVT handler, EOI, hlt), whose input may be
sent before it has set its UART up."""

from __future__ import annotations

import random

import pytest

from minikvm.hostio import BufferSink
from minikvm.machine import Machine, StopKind

pytestmark = pytest.mark.kvm


def test_polled_serial_hello_reaches_the_host(guests):
    sink = BufferSink()
    with Machine(output=sink) as machine:
        machine.load_flat(guests / "serial_hello.bin", 0x1000)
        stop = machine.run(timeout=30)
        assert stop.kind is StopKind.HALT
        assert sink.getvalue() == b"Hello from the 16550A UART!\r\n"
        assert machine.uart.divisor == 1 and machine.uart.lcr == 0x03


@pytest.mark.slow
def test_echo_guest_round_trips_4_kib_through_interrupts(guests):
    rng = random.Random(1234)
    payload = bytes(rng.choice([b for b in range(256) if b != 0x04]) for _ in range(4096))
    sink = BufferSink()
    with Machine(irqchip=True, output=sink) as machine:
        machine.load_flat(guests / "serial_echo.bin", 0x1000)
        machine.send_serial_input(payload + b"\x04")
        stop = machine.run(timeout=120)
        assert stop.kind is StopKind.HALT, stop      # Ctrl-D: cli; hlt, status 0
        assert stop.status == 0
        # Every byte echoed, in order; Enter (CR) as CR LF, like a terminal's line discipline.
        assert sink.getvalue() == payload.replace(b"\r", b"\r\n") + b"\x04"
        assert machine.uart.overruns == 0
        # every byte arrived by interrupt: the guest only reads in its handler
        assert machine.uart.state()["irq_level"] is False


def test_input_sent_before_the_guest_sets_up_its_uart_keeps_its_first_byte(guests):
    # `printf 'hello\n' | minikvm run serial_echo.bin`: the bytes are queued
    # before the first instruction runs. The guest's FCR write (0x07) clears
    # the FIFOs; the host holds the input back until the driver raises RTS.
    sink = BufferSink()
    with Machine(irqchip=True, output=sink) as machine:
        machine.load_flat(guests / "serial_echo.bin", 0x1000)
        machine.send_serial_input(b"hello\n\x04")
        stop = machine.run(timeout=30)
        assert (stop.kind, stop.status) == (StopKind.HALT, 0)
        assert sink.getvalue() == b"hello\n\x04"
        assert machine.uart.overruns == 0


def test_echo_guest_answers_enter_with_a_new_line(guests):
    sink = BufferSink()
    with Machine(irqchip=True, output=sink) as machine:
        machine.load_flat(guests / "serial_echo.bin", 0x1000)
        machine.send_serial_input(b"one\rtwo\r\x04")
        assert machine.run(timeout=30).kind is StopKind.HALT
        assert sink.getvalue() == b"one\r\ntwo\r\n\x04"


def test_echo_guest_waits_in_hlt_until_input_arrives(guests):
    sink = BufferSink()
    with Machine(irqchip=True, output=sink) as machine:
        machine.load_flat(guests / "serial_echo.bin", 0x1000)
        assert machine.run(timeout=0.5).kind is StopKind.TIMEOUT  # idle, nothing typed
        assert machine.uart.ier & 0x01  # it listens
        assert sink.getvalue() == b""
        machine.send_serial_input(b"hi\x04")
        assert machine.run(timeout=30).kind is StopKind.HALT
        assert sink.getvalue() == b"hi\x04"
