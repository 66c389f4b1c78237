"""The flat-binary loader: raw bytes at one address, the entry is the first byte."""

from __future__ import annotations

import pytest

from minikvm.loaders import LoaderError, SymbolTable, Symbol, load_flat
from minikvm.memory import GuestMemory
from minikvm.x86.layout import FLAT_LOAD_ADDR, PAGE_TABLES_ADDR
from minikvm.x86.modes import CpuMode

MIB = 1 << 20
PROGRAM = bytes.fromhex("fa f4 eb fd")  # cli; hlt; jmp $-1


@pytest.fixture
def mem() -> GuestMemory:
    return GuestMemory.with_size(2 * MIB)


def test_flat_binary_is_copied_to_the_default_load_address(mem):
    image = load_flat(mem, PROGRAM)
    assert mem.read(FLAT_LOAD_ADDR, len(PROGRAM)) == PROGRAM
    assert (image.kind, image.entry, image.mode) == ("flat", FLAT_LOAD_ADDR, CpuMode.REAL)
    [segment] = image.segments
    assert (segment.address, segment.file_size, segment.mem_size) == (0x1000, 4, 4)
    assert len(image.symbols) == 0


def test_flat_binary_at_another_address_and_mode(mem):
    image = load_flat(mem, PROGRAM, 0x10_0000, mode="long")
    assert mem.read(0x10_0000, 4) == PROGRAM
    assert (image.entry, image.mode) == (0x10_0000, CpuMode.LONG)


def test_flat_binary_from_a_path(mem, tmp_path):
    path = tmp_path / "guest.bin"
    path.write_bytes(PROGRAM)
    image = load_flat(mem, str(path))
    assert image.source == str(path) and mem.read(0x1000, 4) == PROGRAM


def test_flat_binary_may_end_exactly_at_the_end_of_ram(mem):
    load_flat(mem, PROGRAM, 2 * MIB - len(PROGRAM))
    with pytest.raises(LoaderError, match="does not fit in guest RAM"):
        load_flat(mem, PROGRAM, 2 * MIB - len(PROGRAM) + 1)


@pytest.mark.parametrize("data, addr, fragment", [
    (b"", FLAT_LOAD_ADDR, "empty"),
    (PROGRAM, 4 * MIB, "does not fit in guest RAM"),
    (bytes(3 * MIB), 0, "larger than"),
    (PROGRAM, -1, "non-negative"),
    (PROGRAM, "0x1000", "non-negative"),
    (PROGRAM, 0x4FE, "overlaps the GDT"),
    (bytes(0x70000), FLAT_LOAD_ADDR, "overlaps the page tables"),
])
def test_bad_flat_binaries_are_refused(mem, data, addr, fragment):
    with pytest.raises(LoaderError, match=fragment):
        load_flat(mem, data, addr)
    assert mem.read(0, 0x1000 + 16) == bytes(0x1010)


def test_vmm_areas_may_be_allowed_explicitly(mem):
    load_flat(mem, PROGRAM, PAGE_TABLES_ADDR, reserved=())
    assert mem.read(PAGE_TABLES_ADDR, 4) == PROGRAM


@pytest.mark.parametrize("make_path, fragment", [
    (lambda tmp: tmp / "absent.bin", "No such file"),
    (lambda tmp: tmp, "Is a directory"),
])
def test_unreadable_paths_are_loader_errors_naming_the_path(mem, tmp_path, make_path, fragment):
    path = make_path(tmp_path)
    with pytest.raises(LoaderError, match=fragment) as info:
        load_flat(mem, path)
    assert str(path) in str(info.value)


def test_symbol_table_prefers_sized_symbols_at_one_address():
    table = SymbolTable([Symbol(0x10, 0, "label"), Symbol(0x10, 8, "func"), Symbol(0x30, 0, "x")])
    assert table.symbol_at(0x12) == "func+0x2"
    assert table.symbol_at(0x18) is None  # past func's 8 bytes
    assert table.symbol_at(0x31) == "x+0x1"
    assert table.as_dict() == {0x10: "func", 0x30: "x"}
