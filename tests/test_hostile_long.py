"""The long hostile run: the device models against tens of thousands of hostile inputs.

The everyday suite runs a few hundred hostile examples per model. This
module runs the richest of those generators as often as the Hypothesis
profile says: the default profile (100 examples per test, a few seconds
here), or the long one registered in tests/conftest.py::

    python3 -m pytest -m slow --hypothesis-profile long tests/test_hostile_long.py

which runs 25,000 examples per test, 100,000 in all:

* random virtio queues -- descriptor tables, indirect tables and available
  rings mutated from well-formed requests -- against rng, blk and
  read-only blk, every one judged as tests/test_virtio_hostile.py does
  (completed, IOERR or NEEDS_RESET; nothing written outside device-writable
  buffers; nothing touched outside RAM; recovery after a reset);
* random register traffic of any width at any offset of the virtio-mmio
  window, on a fresh or a live device of each type;
* the 16550A against its datasheet model (tests/test_uart_statemachine.py),
  40 steps per example;
* random UART register traffic with host input in between, on the UART
  alone: nothing raises, the receive FIFO stays within 16 bytes, the line
  is high only while the IIR shows an interrupt and OUT2 is set.

The settings below name no example count, so the profile decides.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import run_state_machine_as_test

from minikvm.devices.base import RecordingLine
from minikvm.devices.uart import Uart16550
from minikvm.devices.virtio.blk import SECTOR_SIZE, VirtioBlk
from minikvm.devices.virtio.console import VirtioConsole
from minikvm.devices.virtio.mock import mock_device
from minikvm.devices.virtio.rng import VirtioRng
from tests.test_uart_statemachine import UartAgainstDatasheet
from tests.test_virtio_hostile import (
    DISK_SECTORS,
    avail_jumps,
    check_random_queue,
    hostile_queues,
    kinds,
    ring_features,
    starts,
)
from tests.test_virtio_mmio import accesses, check_register_traffic

pytestmark = pytest.mark.slow

#: No max_examples: the active profile decides (100 by default, 25,000 long).
LONG = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                      HealthCheck.function_scoped_fixture,
                                                      HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def disk(tmp_path_factory):
    """The disk image of the random queues (as tests/test_virtio_hostile.py lays it out)."""
    path = tmp_path_factory.mktemp("virtio-long") / "disk.img"
    path.write_bytes(bytes(range(256)) * (DISK_SECTORS * SECTOR_SIZE // 256))
    return path


@LONG
@given(kind=kinds, features=ring_features, start=starts, queue=hostile_queues(),
       jump=avail_jumps)
def test_long_random_virtio_queues_end_in_a_defined_outcome(disk, kind, features, start, queue,
                                                             jump):
    check_random_queue(disk, kind, features, start, queue, jump)


def virtio_device(kind, disk_path):
    if kind == "rng":
        backend = VirtioRng(source=lambda n: b"\xAA" * n, queue_max_size=8)
    elif kind == "console":
        backend = VirtioConsole(output=lambda data: None, queue_max_size=8)
    else:
        backend = VirtioBlk(disk_path, read_only=(kind == "blk-ro"), queue_max_size=8)
    return mock_device(backend, ram_size=64 * 1024)


@LONG
@given(kind=st.sampled_from(["rng", "console", "blk", "blk-ro"]), live=st.booleans(),
       traffic=st.lists(accesses, max_size=80))
def test_long_virtio_register_traffic_never_raises_and_keeps_the_line_honest(
        disk, kind, live, traffic):
    dev = virtio_device(kind, disk)
    try:
        if live:
            dev.driver.init()
        check_register_traffic(dev, traffic)
    finally:
        if isinstance(dev.transport.backend, VirtioBlk):
            dev.transport.backend.close()


def test_long_uart_agrees_with_its_datasheet():
    run_state_machine_as_test(UartAgainstDatasheet, settings=settings(
        LONG, stateful_step_count=40))


uart_traffic = st.lists(st.one_of(
    st.tuples(st.just("write"), st.integers(0, 7), st.integers(0, 255)),
    st.tuples(st.just("read"), st.integers(0, 7), st.just(0)),
    st.tuples(st.just("input"), st.just(0), st.integers(0, 255))), max_size=120)


@LONG
@given(traffic=uart_traffic)
def test_long_uart_register_traffic_with_host_input_never_raises(traffic):
    line = RecordingLine()
    uart = Uart16550(irq=line, output=lambda data: None)
    for op, offset, value in traffic:
        if op == "write":
            uart.write(offset, 1, value)
        elif op == "read":
            assert 0 <= uart.read(offset, 1) <= 0xFF
        else:
            uart.receive(bytes([value]))
        state = uart.state()          # (no read side effects)
        assert len(state["rx_fifo"]) <= 16
        assert line.level == state["irq_level"]
        if state["irq_level"]:
            # High only with an interrupt pending in IIR and OUT2 set (the
            # PC wires the IRQ through OUT2).
            assert not state["iir"] & 0x01 and state["mcr"] & 0x08
