"""Memory by virtual and physical address, the page walk, and the other register files."""

from __future__ import annotations

from pathlib import Path

import pytest

from minikvm.debug.debugger import Debugger, DebuggerError
from minikvm.guestbuild import assemble, tools_available
from minikvm.machine import Machine, StopKind

pytestmark = [pytest.mark.kvm,
              pytest.mark.skipif(not tools_available(), reason="needs binutils (as, ld)")]

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "tests" / "build" / "debug"
VIRTUAL = 0x80_0000_5000     # what ownpages64 maps ...
FRAME = 0x30000              # ... to this physical page
PATTERN = bytes.fromhex("8877665544332211") + (0xCAFEBABE).to_bytes(4, "little")


@pytest.fixture(scope="module")
def ownpages64() -> Path:
    return assemble(ROOT / "guests" / "debug" / "ownpages64.S", BUILD).elf


@pytest.fixture
def paged(ownpages64):
    with Machine() as machine:
        machine.load_elf(ownpages64)
        debugger = Debugger(machine)
        stop = debugger.cont(timeout=20)
        assert stop.kind is StopKind.HALT, stop.message
        yield machine, debugger
        debugger.close()


def test_guest_runs_on_its_own_page_tables(paged):
    _, debugger = paged
    assert debugger.sregs().cr3 == 0x20000


def test_virtual_read_equals_physical_read_at_the_translated_address(paged):
    _, debugger = paged
    translation = debugger.translate(VIRTUAL + 3)
    assert translation.valid and translation.physical == FRAME + 3
    assert [step.level for step in translation.levels] == ["PML4", "PDPT", "PD", "PT"]
    assert translation.levels[0].table == 0x20000   # the guest's PML4, not the VMM's
    virtual = debugger.read_memory(VIRTUAL, len(PATTERN))
    physical = debugger.read_memory(translation.physical - 3, len(PATTERN), physical=True)
    assert virtual == physical == PATTERN


def test_kvm_translate_agrees_with_the_software_walk(paged):
    _, debugger = paged
    for address in (VIRTUAL, VIRTUAL + 0xFFF, 0x1000, 0x1234):
        assert debugger.translate_kvm(address) == debugger.translate(address).physical


def test_identity_mapped_code_reads_the_same_both_ways(paged):
    _, debugger = paged
    assert debugger.read_memory(0x1000, 16) == debugger.read_memory(0x1000, 16, physical=True)


def test_virtual_write_lands_in_the_physical_frame(paged):
    machine, debugger = paged
    debugger.write_memory(VIRTUAL + 0x10, b"minikvm")
    assert machine.memory.read(FRAME + 0x10, 7) == b"minikvm"


def test_read_across_a_page_boundary_follows_each_page(paged):
    machine, debugger = paged
    # VIRTUAL - 4 is in an unmapped page (PT[4]): the read must fail, not
    # silently read the physical bytes below FRAME.
    with pytest.raises(DebuggerError, match="not mapped"):
        debugger.read_memory(VIRTUAL - 4, 8)
    machine.memory.write(FRAME + 0xFFC, b"\x01\x02\x03\x04")
    with pytest.raises(DebuggerError, match="not mapped"):
        debugger.read_memory(VIRTUAL + 0xFFC, 8)   # PT[6] is empty too
    assert debugger.read_memory(VIRTUAL + 0xFFC, 4) == b"\x01\x02\x03\x04"


def test_unmapped_virtual_and_outside_physical_are_refused(paged):
    _, debugger = paged
    assert debugger.translate_kvm(0x90_0000_0000) is None
    with pytest.raises(DebuggerError):
        debugger.read_memory(0x90_0000_0000, 1)
    with pytest.raises(DebuggerError):
        debugger.read_memory(64 << 20, 1, physical=True)
    with pytest.raises(DebuggerError):
        debugger.write_memory(64 << 20, b"x", physical=True)
    with pytest.raises(DebuggerError):
        debugger.read_memory(0, -1)


def test_register_files_are_readable(paged):
    _, debugger = paged
    snapshot = debugger.registers()
    assert snapshot.rax == 0x1122334455667788 and snapshot.rbx == VIRTUAL
    assert snapshot.cr3 == 0x20000 and snapshot.efer & (1 << 10)   # LMA
    fpu = debugger.fpu()
    assert fpu.fcw == 0x37F   # x87 control word after reset (SDM vol. 1, 8.1.5)
    assert len(fpu.xmm) == 16
    debugregs = debugger.debug_registers()
    assert debugregs.dr7 & 0x400   # bit 10 reads as 1


def test_set_registers_refuses_unknown_names_and_wide_values(paged):
    _, debugger = paged
    with pytest.raises(DebuggerError):
        debugger.set_registers(xmm0=1)
    with pytest.raises(DebuggerError):
        debugger.set_registers(rax=1 << 64)
    debugger.set_registers(r15=0xFEED)
    assert debugger.registers().r15 == 0xFEED
