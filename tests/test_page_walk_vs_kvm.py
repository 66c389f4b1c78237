"""Our page walk against KVM's own (KVM_TRANSLATE), on random 4-level tables.

Hypothesis builds page tables in guest memory with random mappings (4 KiB,
2 MiB, 1 GiB pages), random non-present entries and random permission bits,
loads CR3 in long mode, and asks both walkers about random addresses: mapped
ones (with offsets), their neighbours, and arbitrary (also non-canonical)
ones. They must agree on validity and on the physical address. KVM_TRANSLATE
reports writeable=1 and usermode=0 whatever the tables say, so permissions
are not compared here (the by-construction tests in test_x86_* cover them).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from minikvm.machine import Machine
from minikvm.x86.flags import PageFlag
from minikvm.x86.paging import PAGE_1G, PAGE_2M, PAGE_4K, PageTableBuilder, PageTableError

pytestmark = pytest.mark.kvm

TABLES = (0x100000, 0x1C0000)  # 64 tables' worth of RAM for the builder
SIZES = {PAGE_4K: "4K", PAGE_2M: "2M", PAGE_1G: "1G"}


@pytest.fixture(scope="module")
def machine():
    with Machine() as m:
        m.load_flat(b"\xf4", 0x1000, mode="long")
        yield m


# Virtual addresses drawn from a few "neighbourhoods" so mappings share upper
# tables (and collide), plus anywhere in the canonical halves.
neighbourhoods = st.sampled_from([0, 0x7F00_0000_0000, 0xFFFF_8000_0000_0000,
                                  0x0000_0040_0000_0000, 0xFFFF_FFFF_C000_0000])
page_sizes = st.sampled_from(list(SIZES))
leaf_flags = st.sets(st.sampled_from([PageFlag.RW, PageFlag.USER, PageFlag.PWT, PageFlag.PCD,
                                      PageFlag.ACCESSED, PageFlag.DIRTY]))


@st.composite
def mapping(draw):
    size = draw(page_sizes)
    base = draw(neighbourhoods)
    vaddr = (base + draw(st.integers(0, 63)) * size) & ~(size - 1)
    if vaddr >= 1 << 47 and vaddr < 0xFFFF_8000_0000_0000:
        vaddr = 0
    paddr = draw(st.integers(0, (1 << 34) // size - 1)) * size
    flags = 0
    for f in draw(leaf_flags):
        flags |= f
    return vaddr, paddr, size, flags


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mappings=st.lists(mapping(), min_size=1, max_size=12),
       holes=st.lists(st.integers(0, 2**16), max_size=3),
       probes=st.lists(st.one_of(st.integers(0, 2**64 - 1), st.integers(0, PAGE_1G * 2)),
                       max_size=8),
       offsets=st.lists(st.integers(0, PAGE_1G - 1), min_size=1, max_size=4))
def test_python_walk_agrees_with_kvm_translate(machine, mappings, holes, probes, offsets):
    memory = machine.memory
    memory.fill(TABLES[0], TABLES[1] - TABLES[0])
    tables = PageTableBuilder(memory, *TABLES)
    mapped = []
    for vaddr, paddr, size, flags in mappings:
        try:
            tables.map(vaddr, paddr, size, flags)
        except PageTableError:
            continue  # collides with an earlier mapping: the builder refuses, fine
        mapped.append((vaddr, size))
    # Knock the present bit out of a few entries anywhere in the tables.
    entries = tables.allocator.used // 8
    for hole in holes:
        entry = TABLES[0] + (hole % entries) * 8
        memory.write_u64(entry, memory.read_u64(entry) & ~PageFlag.PRESENT)

    sregs = machine.vcpu.get_sregs()
    sregs.cr3 = tables.cr3
    machine.vcpu.set_sregs(sregs)

    addresses = list(probes)
    for vaddr, size in mapped:
        addresses += [vaddr + off % size for off in offsets] + [vaddr + size, vaddr - 1]
    for vaddr in addresses:
        vaddr %= 1 << 64
        ours = machine.translate(vaddr)
        kvm = machine.vcpu.translate(vaddr)
        assert bool(kvm.valid) == ours.valid, (hex(vaddr), ours.describe())
        event(f"valid {SIZES.get(ours.page_size)}" if ours.valid else "invalid")
        if ours.valid:
            assert kvm.physical_address == ours.physical, (hex(vaddr), ours.describe())
