"""GuestView: the guest at a stop -- registers read once, memory through the
guest's own page tables walked with the vCPU's CPUID paging features.

The guest is a few long-mode instructions (``mov eax, 5; out 0xe9, al;
hlt``) at 0x1000 on the VMM's identity tables; each test maps what it needs
on top with :func:`minikvm.x86.paging.map_page`, in RAM above 1 MiB that
nothing else uses. Ioctls are counted by wrapping the vCPU's ``get_regs``
and ``get_sregs``.
"""

from __future__ import annotations

from collections import Counter

import pytest

from minikvm.debug import Debugger, DebuggerError, GuestView
from minikvm.machine import Machine
from minikvm.x86.cpuid import PagingFeatures
from minikvm.x86.flags import Cr0, Cr4, Efer
from minikvm.x86.paging import PAGE_4K, PageTableAllocator, map_page

pytestmark = pytest.mark.kvm

CODE = bytes([0xB8, 0x05, 0x00, 0x00, 0x00,   # mov eax, 5
              0xE6, 0xE9,                     # out 0xe9, al
              0xF4])                          # hlt
ENTRY = 0x1000
TABLES = 0x10_0000           # page tables built by the tests
HIGH = 0x80_0000_0000        # PML4 entry 1: nothing of the identity map
FIRST_FRAME = 0x12_0000      # HIGH's first page lives here ...
SECOND_FRAME = 0x15_0000     # ... and the next one far away
GIB = 1 << 30
RW = 1 << 1


@pytest.fixture
def machine():
    with Machine(output=lambda data: None) as machine:
        machine.load_flat(CODE, ENTRY, mode="long")
        yield machine


def count_register_reads(monkeypatch, vcpu) -> Counter:
    """``KVM_GET_REGS`` and ``KVM_GET_SREGS`` issued from now on."""
    calls: Counter = Counter()
    for name in ("get_regs", "get_sregs"):
        def counted(*args, _original=getattr(vcpu, name), _name=name):
            calls[_name] += 1
            return _original(*args)
        monkeypatch.setattr(vcpu, name, counted)
    return calls


def map_4k(machine, virtual: int, physical: int, allocator: PageTableAllocator) -> None:
    root = machine.vcpu.get_sregs().cr3
    map_page(machine.memory, root, virtual, physical, PAGE_4K, RW, allocator)


# -- registers: once per stop ---------------------------------------------------------------


def test_every_question_at_one_stop_costs_one_get_regs_and_one_get_sregs(machine, monkeypatch):
    view = GuestView(machine)
    calls = count_register_reads(monkeypatch, machine.vcpu)
    for _ in range(3):
        assert view.rip == ENTRY and view.pc == ENTRY
        assert view.bitness() == 64
        assert view.registers().cr3 == view.sregs().cr3
        assert view.read(ENTRY, len(CODE)) == CODE
        assert view.disassemble(count=1)[0].text == "mov eax, 5"
    assert calls == Counter(get_regs=1, get_sregs=1)


def test_after_the_vcpu_ran_the_next_question_reads_again(machine, monkeypatch):
    view = GuestView(machine)
    assert view.current is False       # nothing read yet
    view.registers()
    assert view.current
    machine.step()                     # KVM_RUN: the out exits to the VMM
    assert not view.current
    calls = count_register_reads(monkeypatch, machine.vcpu)
    assert view.regs().rax == 5
    view.sregs()
    view.regs()
    assert calls == Counter(get_regs=1, get_sregs=1)


def test_registers_set_behind_the_runner_are_read_after_invalidate(machine):
    view = GuestView(machine)
    assert view.rip == ENTRY
    regs = machine.vcpu.get_regs()
    regs.rip = ENTRY + 5
    machine.vcpu.set_regs(regs)
    assert view.rip == ENTRY             # the cache does not know ...
    view.invalidate()
    assert view.rip == ENTRY + 5         # ... until told


def test_a_single_step_costs_one_get_regs_and_no_get_sregs(machine, monkeypatch):
    debugger = Debugger(machine)
    view = debugger.view
    view.registers()
    calls = count_register_reads(monkeypatch, machine.vcpu)
    record = debugger.step_instruction()             # mov eax, 5: five bytes
    assert record.new_pc == ENTRY + 5
    assert view.regs() is record.after and view.pc == ENTRY + 5
    assert calls == Counter(get_regs=1)
    debugger.close()


# -- memory by linear address ------------------------------------------------------------


def test_a_linear_read_across_a_page_boundary_follows_each_page(machine):
    allocator = PageTableAllocator(machine.memory, TABLES, TABLES + 0x10000)
    map_4k(machine, HIGH, FIRST_FRAME, allocator)
    map_4k(machine, HIGH + PAGE_4K, SECOND_FRAME, allocator)
    machine.memory.write(FIRST_FRAME + PAGE_4K - 4, b"tail")
    machine.memory.write(SECOND_FRAME, b"head")
    view = GuestView(machine)
    assert view.read(HIGH + PAGE_4K - 4, 8) == b"tailhead"
    view.write(HIGH + PAGE_4K - 2, b"XYZW")
    assert machine.memory.read(FIRST_FRAME + PAGE_4K - 2, 2) == b"XY"
    assert machine.memory.read(SECOND_FRAME, 2) == b"ZW"


def test_a_read_into_an_unmapped_page_is_refused_whole(machine):
    allocator = PageTableAllocator(machine.memory, TABLES, TABLES + 0x10000)
    map_4k(machine, HIGH, FIRST_FRAME, allocator)
    view = GuestView(machine)
    with pytest.raises(DebuggerError, match=f"{HIGH + PAGE_4K:#x} is not mapped"):
        view.read(HIGH + PAGE_4K - 4, 8)
    assert view.read_code(HIGH + PAGE_4K - 4, 8) == bytes(4)   # code: as far as mapped


def test_read_linear_serves_a_frame_from_the_last_stop_without_an_ioctl(machine, monkeypatch):
    allocator = PageTableAllocator(machine.memory, TABLES, TABLES + 0x10000)
    map_4k(machine, HIGH, FIRST_FRAME, allocator)
    map_4k(machine, HIGH + PAGE_4K, SECOND_FRAME, allocator)
    machine.memory.write(FIRST_FRAME + PAGE_4K - 4, b"tail")
    machine.memory.write(SECOND_FRAME, b"head")
    view = GuestView(machine)
    assert view.read_linear(HIGH, 4).error == "no registers were read yet"
    view.sregs()                                   # a stop: the UI reads the registers
    machine.step()                                 # the guest runs on
    calls = count_register_reads(monkeypatch, machine.vcpu)
    read = view.read_linear(HIGH + PAGE_4K - 4, 8)
    assert read.data == b"tailhead" and read.physical == FIRST_FRAME + PAGE_4K - 4
    assert read.error == ""
    assert not calls                               # no ioctl: safe while the vCPU runs


def test_read_linear_says_how_far_it_got_and_why_it_stopped(machine):
    allocator = PageTableAllocator(machine.memory, TABLES, TABLES + 0x10000)
    map_4k(machine, HIGH, FIRST_FRAME, allocator)
    map_4k(machine, HIGH + 2 * PAGE_4K, 0x4000_0000, allocator)   # beyond 2 MiB of RAM
    view = GuestView(machine)
    view.sregs()
    unmapped = view.read_linear(HIGH + PAGE_4K - 2, 4)
    assert len(unmapped.data) == 2 and unmapped.physical == FIRST_FRAME + PAGE_4K - 2
    assert unmapped.error == f"linear {HIGH + PAGE_4K:#x} is not mapped"
    outside = view.read_linear(HIGH + 2 * PAGE_4K, 4)
    assert outside.data == b"" and outside.physical is None
    assert "outside guest RAM" in outside.error


# -- the page walk follows the vCPU's CPUID ---------------------------------------------------


def test_a_1gib_page_translates_only_where_cpuid_offers_1gib_pages(machine):
    allocator = PageTableAllocator(machine.memory, TABLES, TABLES + 0x10000)
    root = machine.vcpu.get_sregs().cr3
    map_page(machine.memory, root, 5 * GIB, 0, GIB, RW, allocator)   # PDPT entry 5, PS set
    view = GuestView(machine)
    machine.paging = PagingFeatures(gbpages=True, maxphyaddr=machine.paging.maxphyaddr)
    assert view.physical(5 * GIB + ENTRY) == ENTRY
    assert view.read(5 * GIB + ENTRY, len(CODE)) == CODE
    machine.paging = PagingFeatures(gbpages=False, maxphyaddr=machine.paging.maxphyaddr)
    walk = view.translate(5 * GIB + ENTRY)
    assert not walk.valid and "reserved bits" in walk.fault_reason   # PS is reserved there
    assert machine.translate(5 * GIB + ENTRY).valid is False        # the machine agrees


def test_physical_address_bits_above_maxphyaddr_are_reserved(machine):
    allocator = PageTableAllocator(machine.memory, TABLES, TABLES + 0x10000)
    far = 1 << 39                                  # a frame at 512 GiB
    map_4k(machine, HIGH, far, allocator)
    view = GuestView(machine)
    machine.paging = PagingFeatures(gbpages=True, maxphyaddr=40)
    assert view.physical(HIGH + 8) == far + 8
    machine.paging = PagingFeatures(gbpages=True, maxphyaddr=36)
    walk = view.translate(HIGH + 8)
    assert not walk.valid and walk.levels[-1].reserved == far


# -- symbols -----------------------------------------------------------------------------------


def test_a_flat_image_has_no_symbols(machine):
    view = GuestView(machine)
    assert view.symbol_at(ENTRY) == "" and view.describe(ENTRY) == ""
    with pytest.raises(DebuggerError, match="no symbol 'main'"):
        view.address_of("main")


# -- the TLB behind the stepper's hlt check ---------------------------------------------------


def test_cached_byte_walks_a_page_once_then_answers_without_register_reads(machine, monkeypatch):
    allocator = PageTableAllocator(machine.memory, TABLES, TABLES + 0x10000)
    map_4k(machine, HIGH, FIRST_FRAME, allocator)
    machine.memory.write(FIRST_FRAME + 0x10, b"\xf4\x90")
    view = GuestView(machine)
    machine.step()                        # a KVM_RUN: the run page holds the synced sregs
    assert view.cached_byte(HIGH + 0x10) == 0xF4
    assert (view.tlb.misses, view.tlb.hits) == (1, 0)
    calls = count_register_reads(monkeypatch, machine.vcpu)
    walks = []
    monkeypatch.setattr(view, "_walk", lambda *args: walks.append(args))
    assert view.cached_byte(HIGH + 0x11) == 0x90
    assert view.cached_byte(HIGH + 0x10) == 0xF4
    assert (view.tlb.misses, view.tlb.hits) == (1, 2)
    assert not calls and not walks        # no ioctl, no copy of the sregs, no walk


def test_cached_byte_of_an_unmapped_address_is_none_and_not_remembered(machine):
    view = GuestView(machine)
    assert view.cached_byte(HIGH) is None
    assert view.cached_byte(HIGH) is None
    assert view.tlb.misses == 2 and len(view.tlb) == 0


def test_the_paging_context_from_the_run_page_equals_get_sregs(machine):
    view = GuestView(machine)
    machine.step()
    assert machine.vcpu.synced
    cr3, mode = view.paging_context()
    sregs = machine.vcpu.get_sregs()
    assert cr3 == sregs.cr3
    assert mode == ((sregs.cr0 & Cr0.PG) | (sregs.cr4 & (Cr4.PSE | Cr4.PAE | Cr4.LA57))
                    | (sregs.efer & (Efer.LMA | Efer.NXE)) << 32)
    assert mode & Cr0.PG and mode >> 32 & Efer.LMA     # the VMM's long mode


def _view_of_high(machine, first: bytes) -> GuestView:
    """HIGH mapped to FIRST_FRAME, which holds ``first``; SECOND_FRAME
    holds b"B" for _run_on_a_second_address_space. A fresh view."""
    map_4k(machine, HIGH, FIRST_FRAME, PageTableAllocator(machine.memory, TABLES, TABLES + 0x10000))
    machine.memory.write(FIRST_FRAME, first)
    machine.memory.write(SECOND_FRAME, b"B")
    return GuestView(machine)


def _run_on_a_second_address_space(machine) -> None:
    """Load a CR3 whose tables are the same but map HIGH to SECOND_FRAME,
    and let the guest run one exit on them."""
    memory = machine.memory
    sregs = machine.vcpu.get_sregs()
    other_root = TABLES + 0x30000                       # clear of FIRST_FRAME's page
    memory.write(other_root, memory.read(sregs.cr3, PAGE_4K))
    memory.write_u64(other_root + 8, 0)                 # PML4 entry 1: HIGH's, unshared
    map_page(memory, other_root, HIGH, SECOND_FRAME, PAGE_4K, RW,
             PageTableAllocator(memory, TABLES + 0x31000, TABLES + 0x40000))
    sregs.cr3 = other_root
    machine.vcpu.set_sregs(sregs)
    machine.step()                                      # the guest runs on the new tables


def test_another_cr3_is_another_tlb_context(machine):
    view = _view_of_high(machine, b"A")
    assert view.cached_byte(HIGH) == ord("A")
    _run_on_a_second_address_space(machine)
    assert view.cached_byte(HIGH) == ord("B")           # a miss: no flush was needed
    assert len(view.tlb) == 2


def test_current_byte_answers_as_cached_byte_and_its_last_translation_follows_cr3(machine):
    """The stepper's look-up at a stop: the same bytes, the same counts,
    and the translation it remembers is dropped by a flush and not used
    for another address space."""
    view = _view_of_high(machine, b"AZ")
    machine.step()
    assert [view.current_byte(HIGH), view.current_byte(HIGH + 1)] == [ord("A"), ord("Z")]
    assert (view.tlb.misses, view.tlb.hits) == (1, 1)
    assert view.cached_byte(HIGH) == ord("A") and view.tlb.misses == 1
    view.tlb.flush()
    assert view.current_byte(HIGH) == ord("A") and view.tlb.misses == 2
    _run_on_a_second_address_space(machine)
    assert view.current_byte(HIGH) == ord("B")          # not the remembered frame
    assert view.tlb.misses == 3


def test_current_byte_after_the_registers_were_set_reads_them_not_the_run_page(machine):
    """Once the control registers were set, the run page shows the last
    exit's and no longer this stop's: the look-up goes through the
    registers KVM holds, and what it remembers is filed under them."""
    view = _view_of_high(machine, b"A")
    machine.step()
    first_space = machine.vcpu.get_sregs()
    _run_on_a_second_address_space(machine)
    assert view.current_byte(HIGH) == ord("B")
    machine.vcpu.set_sregs(first_space)                 # the run page still shows the second
    view.invalidate()                                   # as whoever sets them must
    assert not machine.vcpu.synced
    assert view.current_byte(HIGH) == ord("A")
    assert [key[0] for key in view.tlb.entries] == [first_space.cr3]
    assert view.tlb.last is None                        # nothing kept under the run page's bytes


def test_the_tlb_is_emptied_by_writes_invalidate_cont_and_step(machine):
    debugger = Debugger(machine)
    view = debugger.view

    def fill() -> None:
        assert view.cached_byte(ENTRY) == CODE[0]
        assert len(view.tlb) == 1

    fill()
    view.write(ENTRY + 0x800, b"\x00")
    assert len(view.tlb) == 0
    fill()
    view.invalidate()
    assert len(view.tlb) == 0
    fill()
    debugger.step(1)                     # mov eax, 5: not a one-byte step, nothing refilled
    assert len(view.tlb) == 0
    fill()
    debugger.cont(timeout=10)            # out, then hlt without the irqchip: a HLT exit
    assert len(view.tlb) == 0
    debugger.close()
