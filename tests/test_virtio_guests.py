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
    with Machine(irqchip=True) as machine:
        machine.add_virtio(VirtioBlk(image, read_only=True))
        machine.load_guest(guests / "virtio_blk.elf")
        assert machine.run(timeout=60).kind is StopKind.HALT
        read_status, write_status = results(machine, 4)[2:4]
    assert read_status == 0
    assert write_status == 1  # VIRTIO_BLK_S_IOERR
    assert image.read_bytes() == original


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
