"""Machine.close() gives everything back at once: fds, guest RAM, image files.

A VMM that creates machine after machine (a test suite, a lesson checker, a
fuzzing loop) must not depend on Python's garbage collector to unmap guest
RAM: a closed 64 MiB guest that lingers in a reference cycle is 64 MiB of
host memory until the collector happens to run. These tests turn the
collector off and watch the process itself.
"""

from __future__ import annotations

import gc
import os

import pytest

from minikvm.memory import GuestMemory, GuestMemoryError

MIB = 1 << 20


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_closed_memory_refuses_every_access():
    memory = GuestMemory.with_size(2 * MIB)
    memory.write_u32(0x1000, 7)
    memory.close()
    assert memory.closed
    with pytest.raises(GuestMemoryError):
        memory.read_u32(0x1000)
    memory.close()   # idempotent


def test_memory_with_a_live_view_still_gives_its_pages_back():
    memory = GuestMemory.with_size(16 * MIB)
    view = memory.view(0, 16 * MIB)
    memory.fill(0, 16 * MIB, 0xAB)
    before = rss_bytes()
    memory.close()
    assert rss_bytes() < before - 8 * MIB
    assert view[0] == 0      # the pages were released: the view reads zeros now
    view.release()


def _touch_and_close(count: int, mem: int, tmp_path, every: int = 10) -> list[tuple[int, int]]:
    from minikvm.devices.virtio.blk import VirtioBlk
    from minikvm.machine import Machine
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(64 * 512))
    samples = []
    for i in range(count):
        machine = Machine(mem)
        machine.add_virtio(VirtioBlk(str(image)))
        machine.memory.fill(0, mem, 0x5A)       # touch every page
        machine.close()
        machine.close()                          # idempotent
        if i % every == every - 1:
            samples.append((rss_bytes(), open_fds()))
    return samples


@pytest.mark.kvm
def test_closing_machines_keeps_rss_and_fds_flat_without_the_collector(tmp_path):
    gc.collect()
    gc.disable()
    try:
        samples = _touch_and_close(8, 32 * MIB, tmp_path, every=2)
    finally:
        gc.enable()
    (rss_first, fds_first), (rss_last, fds_last) = samples[0], samples[-1]
    assert fds_last == fds_first, samples
    assert rss_last < rss_first + 32 * MIB, samples


@pytest.mark.kvm
@pytest.mark.slow
def test_two_hundred_machines_of_64_mib_leave_nothing_behind(tmp_path):
    gc.collect()
    gc.disable()
    try:
        samples = _touch_and_close(200, 64 * MIB, tmp_path)
    finally:
        gc.enable()
    (rss_first, fds_first), (rss_last, fds_last) = samples[0], samples[-1]
    assert fds_last == fds_first, samples
    # 200 x 64 MiB were touched; a leak of even one in ten would show here.
    assert rss_last < rss_first + 32 * MIB, samples
