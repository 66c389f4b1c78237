"""Bare-metal virtio drivers (long mode, C) against our virtio-mmio devices,
completing requests by interrupt through the in-kernel PIC."""

from __future__ import annotations

import subprocess
import sys

import pytest

from minikvm.devices.virtio.blk import VirtioBlk
from minikvm.devices.virtio.rng import VirtioRng
from minikvm.devices.virtio.status import DeviceStatus
from minikvm.machine import Machine, StopKind
from minikvm.x86.layout import RESULT_ADDR
from tests.conftest import ROOT

pytestmark = pytest.mark.kvm

SECTOR = 512
#: ``minikvm run`` exit statuses of the virtio guests (guests/include/virtio.h):
#: VIRTIO_EXIT_NO_DEVICE = 2 and VIRTIO_EXIT_REFUSED = 3, as (v << 1) | 1.
EXIT_NO_DEVICE = 5
EXIT_REFUSED = 7


def results(machine: Machine, count: int) -> list[int]:
    return [machine.memory.read_u64(RESULT_ADDR + 8 * i) for i in range(count)]


def test_rng_guest_receives_host_entropy_by_interrupt(guests):
    output = []
    with Machine(irqchip=True, output=output.append) as machine:
        transport = machine.add_virtio(VirtioRng(source=lambda n: bytes(range(0xA0, 0xA0 + n))))
        machine.load_guest(guests / "virtio_rng.elf")
        stop = machine.run(timeout=60)
        marker, received, interrupts, error = results(machine, 4)
        assert stop.kind is StopKind.HALT, stop
        assert error == 0
        assert received == 16
        assert interrupts >= 1
        assert transport.status & DeviceStatus.DRIVER_OK
        text = b"".join(output).decode()
        assert "virtio-rng: 0xa0 0xa1 0xa2" in text and "0xaf" in text


def test_blk_guest_reads_writes_and_flushes_the_host_file(guests, tmp_path):
    image = tmp_path / "disk.img"
    image.write_bytes(b"hello from the host disk\n".ljust(SECTOR, b"\0") + bytes(7 * SECTOR))
    output = []
    with Machine(irqchip=True, output=output.append) as machine:
        machine.add_virtio(VirtioBlk(image))
        machine.load_guest(guests / "virtio_blk.elf")
        stop = machine.run(timeout=60)
        marker, capacity, read_status, write_status, flush_status, interrupts = results(machine, 6)
    assert stop.kind is StopKind.HALT, stop
    assert capacity == 8
    assert (read_status, write_status, flush_status) == (0, 0, 0)
    assert interrupts >= 3
    assert "sector 0 says: hello from the host disk" in b"".join(output).decode()
    sector1 = image.read_bytes()[SECTOR:2 * SECTOR]
    assert sector1 == b"written by the minikvm virtio-blk guest".ljust(SECTOR, b"\0")


def test_blk_guest_on_a_read_only_disk_gets_ioerr_and_the_file_is_untouched(guests, tmp_path):
    image = tmp_path / "ro.img"
    original = b"read only\n".ljust(SECTOR, b"\0") + bytes(SECTOR)
    image.write_bytes(original)
    output = []
    with Machine(irqchip=True, output=output.append) as machine:
        machine.add_virtio(VirtioBlk(image, read_only=True))
        machine.load_guest(guests / "virtio_blk.elf")
        stop = machine.run(timeout=60)
        read_status, write_status, flush_status = results(machine, 5)[2:5]
    assert (stop.kind, stop.status) == (StopKind.DEBUG_EXIT, EXIT_REFUSED), stop
    assert read_status == 0
    assert write_status == 1  # VIRTIO_BLK_S_IOERR
    assert flush_status == 0xFF  # not sent: the guest stopped at the refused write
    assert "writing sector 1 failed: the device answered IOERR" in b"".join(output).decode()
    assert image.read_bytes() == original


def test_blk_guest_whose_image_shrinks_while_it_runs_gets_ioerr_and_sees_the_new_capacity(
        guests, tmp_path):
    image = tmp_path / "shrinks.img"
    image.write_bytes(b"soon gone\n".ljust(SECTOR, b"\0") + bytes(7 * SECTOR))
    output = []
    with Machine(irqchip=True, output=output.append) as machine:
        transport = machine.add_virtio(VirtioBlk(image))
        machine.load_guest(guests / "virtio_blk.elf")
        # Run until the driver is set up and has noted capacity 8 (result
        # word 1), then cut the image to nothing behind its back, and go on.
        paused = machine.run(timeout=60, until=lambda: bool(
            transport.status & DeviceStatus.DRIVER_OK) and results(machine, 2)[1] == 8)
        assert paused.kind is StopKind.PAUSED, paused
        image.write_bytes(b"")
        stop = machine.run(timeout=60)
        marker, capacity, read_status = results(machine, 3)
    assert (stop.kind, stop.status) == (StopKind.DEBUG_EXIT, EXIT_REFUSED), stop
    assert capacity == 8 and read_status == 1        # VIRTIO_BLK_S_IOERR, not OK with zeros
    assert ("virtio-blk: reading sector 0 failed: the device answered IOERR (the disk shrank "
            "from 8 to 0 sectors while we ran: the sector is past its end)"
            ) in b"".join(output).decode()
    assert image.read_bytes() == b""


@pytest.mark.slow
def test_virtio_guests_run_from_the_cli(guests, tmp_path):
    image = tmp_path / "disk.img"
    image.write_bytes(b"cli disk\n".ljust(SECTOR, b"\0") * 4)
    run = [sys.executable, "-m", "minikvm", "run", "--timeout", "60"]
    rng = subprocess.run(run + [str(guests / "virtio_rng.elf"), "--virtio-rng"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert rng.returncode == 0, rng.stderr
    assert rng.stdout.startswith("virtio-rng: 0x")
    blk = subprocess.run(run + [str(guests / "virtio_blk.elf"), "--virtio-blk", str(image)],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert blk.returncode == 0, blk.stderr
    assert "sector 0 says: cli disk" in blk.stdout
    assert image.read_bytes()[SECTOR:SECTOR + 7] == b"written"


def run_blk_guest_cli(guests, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "minikvm", "run", "--timeout", "60",
                           str(guests / "virtio_blk.elf"), *options],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_blk_guest_says_so_and_fails_when_the_disk_is_read_only(guests, tmp_path):
    image = tmp_path / "disk.img"
    original = b"cli disk\n".ljust(SECTOR, b"\0") * 4
    image.write_bytes(original)
    blk = run_blk_guest_cli(guests, "--virtio-blk", f"{image},ro")
    assert blk.returncode == EXIT_REFUSED, (blk.stdout, blk.stderr)
    assert "sector 0 says: cli disk" in blk.stdout
    assert ("virtio-blk: writing sector 1 failed: the device answered IOERR "
            "(the disk is read-only: VIRTIO_BLK_F_RO)") in blk.stdout
    assert "flushed" not in blk.stdout
    assert image.read_bytes() == original


def test_blk_guest_says_so_and_fails_on_an_empty_image(guests, tmp_path):
    image = tmp_path / "empty.img"
    image.write_bytes(b"")
    blk = run_blk_guest_cli(guests, "--virtio-blk", str(image))
    assert blk.returncode == EXIT_REFUSED, (blk.stdout, blk.stderr)
    assert ("virtio-blk: reading sector 0 failed: the device answered IOERR "
            "(the disk has 0 sectors: the sector is past its end)") in blk.stdout
    assert "sector 0 says" not in blk.stdout and "flushed" not in blk.stdout
    assert image.read_bytes() == b""


def test_blk_guest_says_so_and_fails_when_sector_1_is_past_the_end(guests, tmp_path):
    image = tmp_path / "one.img"
    image.write_bytes(b"one sector\n".ljust(SECTOR, b"\0"))
    blk = run_blk_guest_cli(guests, "--virtio-blk", str(image))
    assert blk.returncode == EXIT_REFUSED, (blk.stdout, blk.stderr)
    assert "sector 0 says: one sector" in blk.stdout
    assert "writing sector 1 failed: the device answered IOERR (the disk has 1 sector" in blk.stdout
    assert image.stat().st_size == SECTOR


def test_blk_guest_without_a_device_says_so_and_fails(guests):
    blk = run_blk_guest_cli(guests)
    assert blk.returncode == EXIT_NO_DEVICE, (blk.stdout, blk.stderr)
    assert blk.stdout == ("virtio-blk: init failed: no \"virt\" magic value: "
                          "no virtio-mmio device there\n")


def test_blk_guest_succeeds_on_a_good_image_from_the_cli(guests, tmp_path):
    image = tmp_path / "disk.img"
    subprocess.run(["truncate", "-s", "1M", str(image)], check=True)   # as the README says
    blk = run_blk_guest_cli(guests, "--virtio-blk", str(image))
    assert blk.returncode == 0, (blk.stdout, blk.stderr)
    assert blk.stdout == "virtio-blk: sector 0 says: \nvirtio-blk: wrote sector 1, flushed\n"
    data = image.read_bytes()
    assert len(data) == 1 << 20
    written = b"written by the minikvm virtio-blk guest".ljust(SECTOR, b"\0")
    assert data[SECTOR:2 * SECTOR] == written
