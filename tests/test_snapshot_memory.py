"""Guest RAM in a snapshot: every region, only the non-zero pages, page for page.

A 256 MiB guest that touched 1 MiB gives a file of about 1 MiB (plus the
fixed state: registers, chips, device models); RAM above the board's hole
at 3 GiB is a second region, saved and restored like the first.
"""

from __future__ import annotations

import pytest

from minikvm.core.config import MachineConfig
from minikvm.machine import Machine
from minikvm.snapshot.machine_state import load_machine, save_machine
from minikvm.snapshot.memory_image import PAGE_SIZE

pytestmark = [pytest.mark.kvm, pytest.mark.slow]


def test_a_256_mib_guest_that_touched_1_mib_gives_a_file_of_about_1_mib(guests, tmp_path):
    config = MachineConfig(guest=str(guests / "hello.bin"), irqchip=True, mem_size=256 << 20)
    with Machine.from_config(config, output=lambda data: None) as machine:
        for page in range(256):
            machine.memory.write(0x100_0000 + page * PAGE_SIZE,
                                 page.to_bytes(2, "little") * (PAGE_SIZE // 2))
        machine.run(timeout=20, max_exits=3)
        saved = save_machine(machine, str(tmp_path / "sparse.snap"), config)
    assert 256 <= saved.memory_pages <= 256 + 8
    assert (1 << 20) < saved.size < (1 << 20) + (512 << 10)
    restored, _ = load_machine(str(tmp_path / "sparse.snap"), output=lambda data: None)
    with restored:
        assert restored.memory.read(0x100_0000 + 7 * PAGE_SIZE, 4) == b"\x07\x00\x07\x00"


def test_ram_above_4_gib_is_saved_and_restored_page_for_page(guests, tmp_path):
    """RAM beyond the board's 3 GiB hole goes above 4 GiB: a second region,
    saved and restored like the first, and only its non-zero pages."""
    from minikvm.core.board import RAM_ABOVE_4G_BASE, RAM_BELOW_4G_MAX

    config = MachineConfig(guest=str(guests / "hello.bin"), irqchip=True,
                           mem_size=RAM_BELOW_4G_MAX + (2 << 20))
    marks = {0x7000: b"low page", RAM_BELOW_4G_MAX - 4096: b"below the hole",
             RAM_ABOVE_4G_BASE + 0x1F_F000: b"the last page above 4 GiB"}
    with Machine.from_config(config, output=lambda data: None) as machine:
        assert len(machine.memory.regions) == 2
        for address, data in marks.items():
            machine.memory.write(address, data)
        machine.run(timeout=20, max_exits=3)
        saved = save_machine(machine, str(tmp_path / "big.snap"), config)
    assert saved.memory_pages <= 8 and saved.size < 1 << 20
    restored, _ = load_machine(str(tmp_path / "big.snap"), output=lambda data: None)
    with restored:
        for address, data in marks.items():
            assert restored.memory.read(address, len(data)) == data
        assert restored.memory.read(RAM_ABOVE_4G_BASE, 4096) == bytes(4096)
