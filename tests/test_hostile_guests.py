"""Hostile guests on a real vCPU: whatever the guest does, the VMM ends well.

The device models meet hostile input with mock memory elsewhere
(tests/test_virtio_hostile.py, tests/test_uart_statemachine.py). Here the
hostile party is a guest on a real vCPU, going through real exits:

* guests/c/sweep.c touches thousands of MMIO addresses and ports nobody
  decodes (reads and garbage writes) and floods the debug console;
* guests/c/virtio_hostile.c writes garbage to every virtio-mmio register and
  the configuration space, before and after DRIVER_OK, and kicks queues full
  of garbage descriptors and garbage requests.

For each the VMM must end with a defined status (here: the guest halts,
status 0, because it survives to the end), keep its memory bounded (peak
RSS of a run against a baseline run of the same process doing no work),
and leave host files alone: a disk image changes only where a request the
device carried out wrote it, keeps its size, and files next to it are
untouched. Each run is a process of its own (tests/hostile_driver.py, or
``minikvm run``), so its peak RSS is its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from minikvm.debug.trace import DEFAULT_STATS_ROWS
from tests.conftest import ROOT

pytestmark = pytest.mark.kvm

#: How much more peak memory a hostile run may take than the same process
#: doing nothing (KiB). The guest's RAM is 2 MiB and allocated up front;
#: what is measured is the VMM's own growth.
RSS_SLACK_KIB = 8 * 1024
SECTOR = 512


def drive(*args: object, timeout: float = 300) -> dict:
    """Run tests/hostile_driver.py in a process of its own; its JSON report."""
    result = subprocess.run([sys.executable, "-m", "tests.hostile_driver", *map(str, args)],
                            capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def run_cli(*args: object, timeout: float = 300) -> tuple[int, str, int]:
    """``minikvm run ARGS`` in a process of its own: (status, stdout, peak RSS in KiB)."""
    out_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"minikvm-hostile-{os.getpid()}.out"
    with open(out_path, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "minikvm", "run", *map(str, args)],
                                   stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, cwd=ROOT)
        deadline = time.monotonic() + timeout
        while True:
            pid, wait_status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                process.kill()
                process.wait()
                pytest.fail(f"minikvm run {args} did not end in {timeout} s")
            time.sleep(0.05)
        process.returncode = os.waitstatus_to_exitcode(wait_status)
    text = out_path.read_bytes().decode("latin-1")
    out_path.unlink()
    return process.returncode, text, usage.ru_maxrss


# -- sweeping what nobody decodes, flooding the debug console -------------------------------

@pytest.mark.slow
def test_a_guest_sweeping_unclaimed_mmio_and_ports_and_flooding_debugcon_ends_halted_in_bounded_memory(
        guests):
    base = drive("sweep", 0, 0, 0)
    run = drive("sweep", 4000, 4000, 65536)
    assert (run["stop"], run["status"]) == ("halt", 0), run
    mmio, ports, flooded, not_floating = run["results"][1:]
    assert (mmio, ports, flooded) == (4000, 4000, 65536)
    assert not_floating == 0                 # every read of nothing floats to all ones
    assert run["exits"] >= 2 * 4000 + 2 * 4000 + 65536
    assert run["flood_wrong"] == 0           # every flooded byte arrived, in order, unchanged
    assert ("sweep: 4000 MMIO addresses, 4000 ports, 65536 bytes flooded, 0 reads that did "
            "not float") in run["tail"]
    assert run["maxrss_kib"] - base["maxrss_kib"] < RSS_SLACK_KIB, (base, run)


@pytest.mark.slow
def test_tracing_a_sweeping_guest_to_a_file_keeps_memory_flat(guests):
    # ``minikvm run --trace /dev/null`` of a sweeping guest: the statistics
    # used to keep a row per address (+41% RSS); now they are bounded.
    base = drive("sweep", 0, 0, 0, "--trace", os.devnull)
    run = drive("sweep", 10000, 2000, 0, "--trace", os.devnull)
    assert (run["stop"], run["status"]) == ("halt", 0), run
    assert run["stats_rows"] <= 2 * DEFAULT_STATS_ROWS
    assert run["maxrss_kib"] - base["maxrss_kib"] < 4 * 1024, (base, run)


# -- garbage to every virtio register ---------------------------------------------------------

def disk_image(path: Path, sectors: int = 64) -> bytes:
    data = b"".join(bytes([i]) * SECTOR for i in range(sectors))
    path.write_bytes(data)
    return data


def changed_bytes(before: bytes, after: bytes) -> set[int]:
    return {i for i in range(len(before)) if before[i] != after[i]}


@pytest.mark.slow
def test_hostile_virtio_guest_ends_halted_and_changes_the_image_only_where_it_wrote(
        guests, tmp_path):
    image = tmp_path / "disk.img"
    original = disk_image(image)
    neighbour = tmp_path / "neighbour.txt"
    neighbour.write_bytes(b"a file next to the image\n")
    disk_image(tmp_path / "base.img")
    base = drive("virtio", 0, tmp_path / "base.img")
    run = drive("virtio", 32, image)
    assert (run["stop"], run["status"]) == ("halt", 0), run
    marker, first, last, last_data, rounds, register_writes, kicks = run["results"]
    assert rounds == 32 and register_writes > 32 * 128 and kicks > 32 * 8
    # The device answered a proper request before the garbage, and again
    # after the driver reset it (status 0 = VIRTIO_BLK_S_OK).
    assert (first, last) == (0, 0)
    # The garbage reached the device and got every kind of answer.
    transport, blk = run["transport"], run["blk"]
    assert transport["needs_reset"] > 0 and transport["ignored_accesses"] > 0
    assert blk["ioerr"] > 0 and blk["unsupported"] > 0 and transport["requests_served"] > 32
    # Host files: the image keeps its size and changes only inside the
    # writes the device carried out; the file next to it is untouched.
    after = image.read_bytes()
    assert len(after) == len(original)
    assert run["writes"], "the guest's garbage made no valid write: the check proves nothing"
    written = set()
    for offset, length in run["writes"]:
        written.update(range(offset, offset + length))
    assert changed_bytes(original, after) <= written
    assert last_data == int.from_bytes(after[:8], "little")   # the last read saw the file
    assert neighbour.read_bytes() == b"a file next to the image\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.img", "disk.img", "neighbour.txt"]
    assert run["maxrss_kib"] - base["maxrss_kib"] < RSS_SLACK_KIB, (base, run)


@pytest.mark.slow
def test_hostile_virtio_guest_cannot_change_a_read_only_image(guests, tmp_path):
    image = tmp_path / "ro.img"
    original = disk_image(image)
    status, out, rss = run_cli(guests / "virtio_hostile.elf", "--virtio-blk", f"{image},ro",
                               "--timeout", "120")
    assert status == 0, out
    assert "virtio-hostile: 0x0010 rounds, first request status 0x00, last 0x00" in out
    assert image.read_bytes() == original
    base_status, _, base_rss = run_cli(guests / "hello.bin", "--timeout", "60")
    assert base_status == 0
    assert rss - base_rss < RSS_SLACK_KIB, (base_rss, rss)


@pytest.mark.slow
@pytest.mark.parametrize("device", ["--virtio-rng", "--virtio-console"])
def test_hostile_virtio_guest_against_the_other_device_types_ends_halted(guests, device):
    status, out, _ = run_cli(guests / "virtio_hostile.elf", device, "--timeout", "120")
    assert status == 0, out[-2000:]
    # Not a block device: its proper requests are not made (0xff), the garbage is.
    assert "virtio-hostile: 0x0010 rounds, first request status 0xff, last 0xff" in out
