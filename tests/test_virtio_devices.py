"""The virtio device types: block (§5.2), console (§5.3), entropy (§5.4)."""

from __future__ import annotations

import os

import pytest

from minikvm.devices.virtio.blk import (
    VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
    VirtioBlk,
    blk_request_header,
)
from minikvm.devices.virtio.console import (
    VIRTIO_CONSOLE_RECEIVEQ,
    VIRTIO_CONSOLE_TRANSMITQ,
    VirtioConsole,
)
from minikvm.devices.virtio.device import VirtioContext
from minikvm.devices.virtio.features import VIRTIO_F_VERSION_1, bit
from minikvm.devices.virtio.mmio import (
    VIRTIO_MMIO_CONFIG_GENERATION,
    VIRTIO_MMIO_DEVICE_ID,
    VIRTIO_MMIO_INT_CONFIG,
    VIRTIO_MMIO_INTERRUPT_STATUS,
)
from minikvm.devices.virtio.mock import mock_device
from minikvm.devices.virtio.rng import VirtioRng
from minikvm.devices.virtio.status import DeviceStatus

SECTORS = 64


@pytest.fixture
def disk(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(b"".join(bytes([i]) * 512 for i in range(SECTORS)))
    return path


def blk_device(path, read_only=False, features=None):
    backend = VirtioBlk(path, read_only=read_only, serial="minikvm-disk-0",
                        queue_max_size=16)
    dev = mock_device(backend, ram_size=256 * 1024)
    dev.driver.init(features=features)
    return dev


def run(dev, request, queue=0):
    dev.driver.kick(queue)
    used = dev.driver.queues[queue].get_used()
    assert [e.id for e in used] == [request.head]
    return used[0], dev.memory.read_u8(request.status)


# -- virtio-blk ------------------------------------------------------------------

def test_blk_is_device_2_with_capacity_in_512_byte_sectors(disk):
    dev = blk_device(disk)
    assert dev.driver.read_reg(VIRTIO_MMIO_DEVICE_ID) == 2
    assert dev.driver.read_config(0, 8) == SECTORS
    assert dev.driver.read_config(12, 4) == 14  # seg_max: queue minus header and status
    assert dev.driver.features & bit(VIRTIO_BLK_F_FLUSH) and dev.driver.features & bit(
        VIRTIO_BLK_F_SEG_MAX)
    assert not dev.driver.features & bit(VIRTIO_BLK_F_RO)


@pytest.mark.parametrize("indirect", [False, True])
def test_blk_read_copies_sectors_into_guest_memory(disk, indirect):
    dev = blk_device(disk)
    request = dev.driver.blk_request(dev.driver.queues[0], VIRTIO_BLK_T_IN, 3,
                                     data_len=1024, indirect=indirect)
    used, status = run(dev, request)
    assert status == VIRTIO_BLK_S_OK
    assert used.len == 1024 + 1  # data and status byte
    assert dev.memory.read(request.data, 1024) == bytes([3]) * 512 + bytes([4]) * 512


def test_blk_read_scatters_over_many_buffers_whatever_the_framing(disk):
    """§2.7.4: the header may be split and the data spread; only the byte
    streams matter."""
    dev = blk_device(disk)
    mem = dev.memory
    header = blk_request_header(VIRTIO_BLK_T_IN, 1)
    mem.write(0x20000, header[:5])
    mem.write(0x20100, header[5:])
    pieces = [(0x21000, 100, True), (0x22000, 412, True), (0x23000, 513, True)]
    dev.driver.queues[0].add_chain([(0x20000, 5, False), (0x20100, 11, False)] + pieces)
    dev.driver.kick(0)
    assert dev.driver.queues[0].get_used()[0].len == 1025
    data = mem.read(0x21000, 100) + mem.read(0x22000, 412) + mem.read(0x23000, 512)
    assert data == bytes([1]) * 512 + bytes([2]) * 512
    assert mem.read_u8(0x23000 + 512) == VIRTIO_BLK_S_OK  # the last writable byte


def test_blk_write_reaches_the_file(disk):
    dev = blk_device(disk)
    request = dev.driver.blk_request(dev.driver.queues[0], VIRTIO_BLK_T_OUT, 5,
                                     data=b"\x77" * 512)
    used, status = run(dev, request)
    assert status == VIRTIO_BLK_S_OK and used.len == 1
    assert disk.read_bytes()[5 * 512:6 * 512] == b"\x77" * 512


def test_blk_write_without_negotiated_flush_is_still_ok(disk):
    dev = blk_device(disk, features=bit(VIRTIO_F_VERSION_1))
    request = dev.driver.blk_request(dev.driver.queues[0], VIRTIO_BLK_T_OUT, 0,
                                     data=b"\x01" * 512)
    assert run(dev, request)[1] == VIRTIO_BLK_S_OK


def test_read_only_blk_offers_ro_and_answers_writes_with_ioerr(disk):
    before = disk.read_bytes()
    dev = blk_device(disk, read_only=True)
    assert dev.driver.features & bit(VIRTIO_BLK_F_RO)
    request = dev.driver.blk_request(dev.driver.queues[0], VIRTIO_BLK_T_OUT, 0,
                                     data=b"\x55" * 512)
    assert run(dev, request)[1] == VIRTIO_BLK_S_IOERR
    assert disk.read_bytes() == before


@pytest.mark.parametrize("sector,length", [(SECTORS, 512), (SECTORS - 1, 1024),
                                           (2**64 - 1, 512), (0, 100)])
def test_blk_reads_outside_the_disk_or_of_partial_sectors_get_ioerr(disk, sector, length):
    dev = blk_device(disk)
    request = dev.driver.blk_request(dev.driver.queues[0], VIRTIO_BLK_T_IN, sector,
                                     data_len=length)
    used, status = run(dev, request)
    assert status == VIRTIO_BLK_S_IOERR
    assert dev.memory.read(request.data, length) == bytes(length)  # nothing read


def test_blk_last_sector_is_readable(disk):
    dev = blk_device(disk)
    request = dev.driver.blk_request(dev.driver.queues[0], VIRTIO_BLK_T_IN, SECTORS - 1,
                                     data_len=512)
    assert run(dev, request)[1] == VIRTIO_BLK_S_OK


def test_blk_flush_is_ok(disk):
    dev = blk_device(disk)
    request = dev.driver.blk_request(dev.driver.queues[0], VIRTIO_BLK_T_FLUSH)
    assert run(dev, request)[1] == VIRTIO_BLK_S_OK


def test_blk_get_id_returns_the_nul_padded_serial(disk):
    dev = blk_device(disk)
    request = dev.driver.blk_request(dev.driver.queues[0], VIRTIO_BLK_T_GET_ID, data_len=20)
    used, status = run(dev, request)
    assert status == VIRTIO_BLK_S_OK and used.len == 21
    assert dev.memory.read(request.data, 20) == b"minikvm-disk-0".ljust(20, b"\0")


def test_blk_get_id_into_a_short_buffer_gets_ioerr(disk):
    dev = blk_device(disk)
    request = dev.driver.blk_request(dev.driver.queues[0], VIRTIO_BLK_T_GET_ID, data_len=8)
    assert run(dev, request)[1] == VIRTIO_BLK_S_IOERR


@pytest.mark.parametrize("request_type", [VIRTIO_BLK_T_DISCARD, 2, 0xFFFF_FFFF])
def test_blk_unknown_request_types_get_unsupp(disk, request_type):
    dev = blk_device(disk)
    request = dev.driver.blk_request(dev.driver.queues[0], request_type, data_len=512)
    assert run(dev, request)[1] == VIRTIO_BLK_S_UNSUPP


# -- an image that changes size while the guest runs (§5.2.6.1; issue 17.5) -----------------
#
# The device checks every request against the file's size *now* and tells the
# driver of a new size with a configuration change notification.

def read_sector(dev, sector, sectors=1):
    request = dev.driver.blk_request(dev.driver.queues[0], VIRTIO_BLK_T_IN, sector,
                                     data_len=512 * sectors)
    used, status = run(dev, request)
    return status, dev.memory.read(request.data, 512 * sectors)


def test_blk_reads_past_the_end_of_an_image_truncated_mid_run_get_ioerr_not_zeros(tmp_path):
    # The shape of issue 17.5: 128 sectors, truncated to 32 while the guest
    # runs, then 128 reads: 96 of them used to complete OK with zeros.
    image = tmp_path / "shrinks.img"
    image.write_bytes(b"".join(bytes([i]) * 512 for i in range(128)))
    dev = blk_device(image)
    assert dev.driver.read_config(0, 8) == 128
    os.truncate(image, 32 * 512)
    answers = [read_sector(dev, sector) for sector in range(128)]
    ok = [s for s, (status, _) in enumerate(answers) if status == VIRTIO_BLK_S_OK]
    ioerr = [s for s, (status, _) in enumerate(answers) if status == VIRTIO_BLK_S_IOERR]
    assert ok == list(range(32)) and ioerr == list(range(32, 128))
    assert all(data == bytes([s]) * 512 for s, (_, data) in enumerate(answers[:32]))


def test_blk_tells_the_driver_the_new_capacity_with_a_configuration_change(disk):
    dev = blk_device(disk)
    dev.driver.ack_interrupts()
    generation = dev.driver.read_reg(VIRTIO_MMIO_CONFIG_GENERATION)
    os.truncate(disk, 16 * 512)
    assert read_sector(dev, 20)[0] == VIRTIO_BLK_S_IOERR
    assert dev.driver.read_reg(VIRTIO_MMIO_INTERRUPT_STATUS) & VIRTIO_MMIO_INT_CONFIG
    assert dev.driver.read_reg(VIRTIO_MMIO_CONFIG_GENERATION) != generation
    assert dev.driver.read_config(0, 8) == 16
    assert dev.transport.backend.counters["resizes"] == 1
    assert any(label == "resized" and "64 -> 16" in value
               for label, value in dev.transport.backend.state_rows())


def test_blk_capacity_read_after_a_truncation_is_the_files_size_now(disk):
    # Without a request in between: reading the configuration looks too, and
    # ConfigGeneration moves, so a driver reading capacity as §2.5.1 asks
    # (generation, fields, generation again) reads the new value.
    dev = blk_device(disk)
    before = dev.driver.read_reg(VIRTIO_MMIO_CONFIG_GENERATION)
    os.truncate(disk, 10 * 512 + 100)          # a partial last sector does not count
    assert dev.driver.read_config(0, 8) == 10
    assert dev.driver.read_reg(VIRTIO_MMIO_CONFIG_GENERATION) != before
    assert dev.driver.read_config(0, 8) == 10  # and stays put: one change, one notification
    assert dev.transport.backend.counters["resizes"] == 1


def test_blk_write_past_the_end_of_a_shrunken_image_gets_ioerr_and_does_not_grow_it(disk):
    dev = blk_device(disk)
    os.truncate(disk, 16 * 512)
    request = dev.driver.blk_request(dev.driver.queues[0], VIRTIO_BLK_T_OUT, 40,
                                     data=b"\x77" * 512)
    assert run(dev, request)[1] == VIRTIO_BLK_S_IOERR
    assert disk.stat().st_size == 16 * 512


def test_blk_image_that_grows_is_reported_and_its_new_sectors_readable(disk):
    dev = blk_device(disk)
    dev.driver.ack_interrupts()
    with open(disk, "ab") as f:
        f.write(b"\x99" * 512 * 64)
    status, data = read_sector(dev, 100)
    assert status == VIRTIO_BLK_S_OK and data == b"\x99" * 512
    assert dev.driver.read_config(0, 8) == 128
    assert dev.driver.ack_interrupts() & VIRTIO_MMIO_INT_CONFIG


def test_blk_read_that_meets_the_end_of_a_file_shrinking_meanwhile_gets_ioerr(disk, monkeypatch):
    # The file shrinks between the range check and the read itself: the read
    # comes up short, and the answer is IOERR, not the missing bytes as zeros.
    dev = blk_device(disk)
    monkeypatch.setattr(VirtioBlk, "refresh_capacity", lambda self: self.capacity)
    os.truncate(disk, 16 * 512)
    status, data = read_sector(dev, 15, sectors=2)
    assert status == VIRTIO_BLK_S_IOERR
    assert "shrank" in dev.transport.backend.last_request


def test_blk_request_with_a_short_header_gets_ioerr(disk):
    dev = blk_device(disk)
    dev.driver.queues[0].add_chain([(0x20000, 8, False), (0x21000, 1, True)])
    dev.driver.kick(0)
    assert dev.memory.read_u8(0x21000) == VIRTIO_BLK_S_IOERR


def test_blk_request_without_a_status_byte_needs_reset(disk):
    dev = blk_device(disk)
    dev.memory.write(0x20000, blk_request_header(VIRTIO_BLK_T_IN))
    dev.driver.queues[0].add_chain([(0x20000, 16, False)])
    dev.driver.kick(0)
    assert dev.driver.status & DeviceStatus.NEEDS_RESET
    assert "status byte" in dev.transport.last_error


def test_blk_state_counts_requests(disk):
    dev = blk_device(disk)
    run(dev, dev.driver.blk_request(dev.driver.queues[0], VIRTIO_BLK_T_IN, 0, data_len=512))
    state = dev.transport.state()["backend"]
    assert state["counters"]["IN"] == 1 and state["counters"]["bytes_read"] == 512
    assert state["last_request"] == "IN sector 0, 1 sectors: OK"


# -- virtio-rng ------------------------------------------------------------------

def counting_source(n):
    return bytes(i & 0xFF for i in range(n))


def rng_device(**kwargs):
    dev = mock_device(VirtioRng(source=counting_source, **kwargs), ram_size=256 * 1024)
    dev.driver.init()
    return dev


def test_rng_fills_the_buffer_with_entropy():
    dev = rng_device()
    dev.driver.queues[0].add_chain([(0x20000, 10, True), (0x21000, 6, True)])
    dev.driver.kick(0)
    assert dev.driver.queues[0].get_used()[0].len == 16
    assert dev.memory.read(0x20000, 10) + dev.memory.read(0x21000, 6) == counting_source(16)
    assert dev.irq.level


def test_rng_caps_each_request():
    dev = rng_device(request_cap=1000)
    dev.driver.queues[0].add_chain([(0x20000, 4096, True)])
    dev.driver.kick(0)
    assert dev.driver.queues[0].get_used()[0].len == 1000
    assert dev.memory.read(0x20000 + 1000, 8) == bytes(8)


def test_rng_returns_a_request_without_writable_buffers_empty():
    dev = rng_device()
    dev.memory.write(0x20000, b"keep")
    dev.driver.queues[0].add_chain([(0x20000, 4, False)])
    dev.driver.kick(0)
    assert dev.driver.queues[0].get_used()[0].len == 0
    assert dev.memory.read(0x20000, 4) == b"keep"


def test_rng_default_source_is_the_host():
    dev = mock_device(VirtioRng(), ram_size=64 * 1024)
    dev.driver.init()
    dev.driver.queues[0].add_chain([(0x8000, 64, True)])
    dev.driver.kick(0)
    assert dev.driver.queues[0].get_used()[0].len == 64
    assert dev.memory.read(0x8000, 64) != bytes(64)


# -- virtio-console ----------------------------------------------------------------

def console_device(driver_ok=True, **kwargs):
    out = []
    dev = mock_device(VirtioConsole(output=out.append, **kwargs), ram_size=256 * 1024)
    dev.driver.init(driver_ok=driver_ok)
    return dev, out


def test_console_transmit_goes_to_the_host_output():
    dev, out = console_device()
    dev.memory.write(0x20000, b"hello, ")
    dev.memory.write(0x21000, b"world\n")
    tx = dev.driver.queues[VIRTIO_CONSOLE_TRANSMITQ]
    tx.add_chain([(0x20000, 7, False), (0x21000, 6, False)])
    dev.driver.kick(VIRTIO_CONSOLE_TRANSMITQ)
    assert out == [b"hello, world\n"]
    assert tx.get_used()[0].len == 0
    assert dev.transport.state()["backend"]["recent_output"] == "hello, world\n"


def test_console_input_waits_for_a_receive_buffer():
    dev, out = console_device()
    assert dev.transport.backend.receive(b"ls\n") == 3
    rx = dev.driver.queues[VIRTIO_CONSOLE_RECEIVEQ]
    assert rx.used_idx() == 0
    rx.add_chain([(0x20000, 64, True)])
    dev.driver.kick(VIRTIO_CONSOLE_RECEIVEQ)
    assert rx.get_used()[0].len == 3
    assert dev.memory.read(0x20000, 3) == b"ls\n"


def test_console_input_fills_posted_buffers_at_once_and_interrupts():
    dev, out = console_device()
    rx = dev.driver.queues[VIRTIO_CONSOLE_RECEIVEQ]
    rx.add_chain([(0x20000, 2, True)])
    rx.add_chain([(0x21000, 2, True)])
    rx.add_chain([(0x22000, 2, True)])
    dev.driver.kick(VIRTIO_CONSOLE_RECEIVEQ)
    dev.transport.backend.receive(b"abc")
    used = rx.get_used()
    assert [e.len for e in used] == [2, 1]  # the third buffer stays posted
    assert dev.memory.read(0x20000, 2) + dev.memory.read(0x21000, 1) == b"abc"
    assert dev.irq.level


def test_console_input_before_driver_ok_is_delivered_when_the_device_goes_live():
    dev, out = console_device(driver_ok=False)
    rx = dev.driver.queues[VIRTIO_CONSOLE_RECEIVEQ]
    rx.add_chain([(0x20000, 8, True)])
    dev.transport.backend.receive(b"early")
    assert rx.used_idx() == 0
    dev.driver.add_status(DeviceStatus.DRIVER_OK)
    assert rx.get_used()[0].len == 5


def test_console_input_beyond_the_limit_is_dropped():
    dev, out = console_device(input_limit=4)
    assert dev.transport.backend.receive(b"123456") == 4
    assert dev.transport.state()["backend"]["counters"]["input_dropped"] == 2


def test_console_default_output_is_host_stdout(capfd):
    dev = mock_device(VirtioConsole(), ram_size=64 * 1024)
    dev.driver.init()
    dev.memory.write(0x8000, b"to stdout")
    dev.driver.queues[VIRTIO_CONSOLE_TRANSMITQ].add_chain([(0x8000, 9, False)])
    dev.driver.kick(VIRTIO_CONSOLE_TRANSMITQ)
    assert capfd.readouterr().out == "to stdout"


def test_devices_report_their_ids():
    assert VirtioConsole.device_id == 3 and VirtioRng.device_id == 4 and VirtioBlk.device_id == 2


# -- the seam between a device type and its transport ---------------------------------

class RecordingContext:
    """A context of the test's own making: it remembers what the device asked for."""

    negotiated_features = 0

    def __init__(self):
        self.served = []
        self.config_changes = 0

    def serve(self, queue_index, handler, more=None):
        self.served.append(queue_index)
        return 0

    def config_changed(self):
        self.config_changes += 1


def test_a_device_type_works_against_any_context_without_a_transport():
    console = VirtioConsole(output=lambda data: None)
    context = RecordingContext()
    assert isinstance(context, VirtioContext)
    console.attach(context)
    console.receive(b"x")                       # input: offered to the receiveq
    console.queue_notify(VIRTIO_CONSOLE_TRANSMITQ)
    assert context.served == [VIRTIO_CONSOLE_RECEIVEQ, VIRTIO_CONSOLE_TRANSMITQ]


def test_the_transport_hands_its_device_a_narrow_context_not_itself():
    dev = rng_device()
    backend = dev.transport.backend
    assert not hasattr(backend, "transport")
    context = backend.context
    assert isinstance(context, VirtioContext)
    assert {name for name in dir(context) if not name.startswith("_")} == {
        "config_changed", "negotiated_features", "serve"}
    assert context.negotiated_features == dev.transport.driver_features
    assert context.negotiated_features & bit(VIRTIO_F_VERSION_1)


def test_a_config_change_through_the_context_interrupts_a_live_driver():
    dev = rng_device()
    generation = dev.transport.config_generation
    dev.transport.backend.context.config_changed()
    assert dev.transport.config_generation == generation + 1
    assert dev.transport.interrupt_status & VIRTIO_MMIO_INT_CONFIG
    assert dev.irq.level


def test_device_types_word_their_own_state_rows(disk):
    dev = blk_device(disk)
    request = dev.driver.blk_request(dev.driver.queues[0], VIRTIO_BLK_T_IN, 3, data_len=512)
    run(dev, request)
    rows = dict(dev.transport.backend.state_rows())
    assert rows["disk"] == "disk.img, 64 sectors"
    assert rows["requests"] == "IN 1 OUT 0 FLUSH 0 GET_ID 0"
    assert rows["bytes"] == "read 512, written 0"
    assert rows["last"] == "IN sector 3, 1 sectors: OK"
    console, out = console_device(input_limit=2)
    console.transport.backend.receive(b"abc")
    rows = dict(console.transport.backend.state_rows())
    assert rows["input"] == "0 bytes delivered, 2 waiting for a receive buffer, 1 dropped"
