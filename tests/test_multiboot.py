"""Multiboot v1 (Multiboot Specification 0.6.96): the header, loading by ELF32
program headers or by the address fields, the boot information, hostile
headers and modules; then the C kernel in guests/ under KVM and the CLI.
"""

from __future__ import annotations

import struct
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minikvm.loaders import LoaderError
from minikvm.loaders.multiboot import (
    BOOTLOADER_MAGIC,
    HEADER_MAGIC,
    SEARCH_LIMIT,
    INFO_ADDR,
    MBI_BOOT_LOADER_NAME,
    MBI_CMDLINE,
    MBI_MEMORY,
    MBI_MMAP,
    MBI_MODS,
    find_header,
    kernel_cmdline,
    load_multiboot,
)
from minikvm.memory import GuestMemory
from tests.conftest import ROOT, slow_except

MiB = 1 << 20
KLUDGE = 1 << 16


def header(flags: int, *fields: int, checksum: int | None = None) -> bytes:
    if checksum is None:
        checksum = -(HEADER_MAGIC + flags) & 0xFFFF_FFFF
    return struct.pack("<III", HEADER_MAGIC, flags, checksum) + struct.pack(f"<{len(fields)}I",
                                                                           *fields)


def aout_kernel(code: bytes = b"\x90" * 16 + b"\xfa\xf4", *, at: int = 0x40,
                load_addr: int = 0x100000, load_end: int = 0, bss_end: int = 0,
                entry: int | None = None, flags: int = KLUDGE, header_addr: int | None = None,
                size: int = 0x200) -> bytes:
    """A flat kernel with the header at offset ``at`` and its address fields."""
    header_addr = load_addr + at if header_addr is None else header_addr
    entry = load_addr + 0x100 if entry is None else entry
    image = bytearray(size)
    image[at:at + 32] = header(flags, header_addr, load_addr, load_end, bss_end, entry)
    image[0x100:0x100 + len(code)] = code
    return bytes(image)


def mbi_fields(memory: GuestMemory) -> dict[str, int]:
    raw = memory.read(INFO_ADDR, 88)
    flags, lower, upper, _boot, cmdline, count, mods = struct.unpack_from("<7I", raw)
    mmap_length, mmap_addr = struct.unpack_from("<2I", raw, 44)
    name = struct.unpack_from("<I", raw, 64)[0]
    return dict(flags=flags, lower=lower, upper=upper, cmdline=cmdline, count=count, mods=mods,
                mmap_length=mmap_length, mmap_addr=mmap_addr, name=name)


def c_string(memory: GuestMemory, addr: int) -> str:
    data = memory.read(addr, 256)
    return data[:data.index(0)].decode()


# -- the header --------------------------------------------------------------------------


def test_a_file_without_the_magic_has_no_header():
    assert find_header(bytes(8192)) is None


def test_the_header_is_found_4_byte_aligned_in_the_first_8_kib():
    data = bytes(0x1000) + header(0) + bytes(100)
    assert find_header(data).offset == 0x1000
    assert find_header(bytes(2) + header(0) + bytes(100)) is None, "not 4-byte aligned"
    assert find_header(bytes(8192) + header(0) + bytes(100)) is None, "beyond 8 KiB"


def test_a_bad_checksum_is_a_broken_header_in_one_line():
    with pytest.raises(LoaderError, match="bad checksum"):
        find_header(header(0, checksum=0x1234) + bytes(64))


def test_an_unknown_requirement_bit_is_refused():
    with pytest.raises(LoaderError, match="flag bit 3"):
        find_header(header(1 << 3) + bytes(64))


def test_optional_bits_are_ignored():
    assert find_header(header(1 << 20) + bytes(64)).flags == 1 << 20


def test_address_fields_that_run_past_8_kib_are_refused():
    data = bytes(8192 - 16) + header(KLUDGE) + bytes(64)
    with pytest.raises(LoaderError, match="needs 32 bytes"):
        find_header(data)


def test_the_command_line_is_the_file_name_then_the_text():
    assert kernel_cmdline("x86/smptest.flat", "-v 3") == "x86/smptest.flat -v 3"
    assert kernel_cmdline("k.elf", None) == "k.elf"


# -- loading -------------------------------------------------------------------------------


def test_the_address_fields_load_the_file_from_the_header_backwards_and_zero_the_bss():
    memory = GuestMemory.with_size(2 * MiB)
    memory.fill(0x100000, 0x3000, 0xAA)
    data = aout_kernel(bss_end=0x102000)
    image = load_multiboot(memory, data, cmdline="k")
    assert image.kind == "multiboot" and image.entry == 0x100100
    assert memory.read(0x100000, len(data)) == data
    assert memory.read(0x100000 + len(data), 0x2000 - len(data)) == bytes(0x2000 - len(data))
    assert memory.read(0x102000, 1) == b"\xaa", "nothing past bss_end_addr"


def test_load_end_addr_limits_what_is_copied():
    memory = GuestMemory.with_size(2 * MiB)
    data = aout_kernel(load_end=0x100180)
    image = load_multiboot(memory, data)
    assert image.segments[0].file_size == 0x180
    assert memory.read(0x100180, 0x80) == bytes(0x80)


@pytest.mark.parametrize("fields, words", [
    (dict(header_addr=0xFFFFF), "above header_addr"),
    (dict(at=0x40, load_addr=0x100000, header_addr=0x100100), "before the file's start"),
    (dict(load_end=0x100000), "not above load_addr"),
    (dict(load_end=0x101000), "the file has"),
    (dict(bss_end=0x100100), "below the end of the loaded part"),
    (dict(entry=0x100200), "entry_addr"),
    (dict(load_addr=0x300000), "does not fit in guest RAM"),
    (dict(load_addr=0x400), "overlaps the GDT"),
    (dict(load_addr=0xFFFFFF00, size=0x200, entry=0xFFFFFF10), "past 4 GiB"),
])
def test_bad_address_fields_are_one_line_and_write_nothing(fields, words):
    memory = GuestMemory.with_size(2 * MiB)
    with pytest.raises(LoaderError, match=words) as info:
        load_multiboot(memory, aout_kernel(**fields))
    assert "\n" not in str(info.value)
    assert memory.read(0, 2 * MiB) == bytes(2 * MiB), "a refused kernel leaves RAM untouched"


def test_a_kernel_in_low_memory_gets_the_boot_information_after_it():
    memory = GuestMemory.with_size(2 * MiB)
    image = load_multiboot(memory, aout_kernel(load_addr=0x8000, size=0x2800), cmdline="rm")
    assert image.info_addr == 0xB000, "the page after the kernel (0x8000-0xa7ff)"
    mbi = struct.unpack_from("<7I", memory.read(image.info_addr, 28))
    assert c_string(memory, mbi[4]) == "rm"
    assert memory.read(0x8000, 0x2800) == aout_kernel(load_addr=0x8000, size=0x2800)


def test_without_address_fields_the_kernel_must_be_elf32():
    memory = GuestMemory.with_size(2 * MiB)
    with pytest.raises(LoaderError, match="needs an ELF file"):
        load_multiboot(memory, header(0) + bytes(64))
    elf64 = bytearray(b"\x7fELF\x02\x01\x01" + bytes(57)) + header(0) + bytes(64)
    with pytest.raises(LoaderError, match="ELF32"):
        load_multiboot(memory, bytes(elf64))


def test_the_boot_information_says_memory_command_line_modules_and_loader(tmp_path):
    first = tmp_path / "one.txt"
    first.write_bytes(b"first module")
    second = tmp_path / "two.bin"
    second.write_bytes(bytes(range(256)) * 20)
    memory = GuestMemory.with_size(8 * MiB)
    image = load_multiboot(memory, aout_kernel(bss_end=0x102345), cmdline="kernel -x",
                           modules=[str(first), str(second)])
    mbi = mbi_fields(memory)
    assert mbi["flags"] == MBI_MEMORY | MBI_CMDLINE | MBI_MODS | MBI_MMAP | MBI_BOOT_LOADER_NAME
    assert (mbi["lower"], mbi["upper"]) == (640, 7 * 1024)
    assert c_string(memory, mbi["cmdline"]) == "kernel -x"
    assert c_string(memory, mbi["name"]) == "minikvm"
    assert mbi["count"] == 2
    starts = []
    for index, path in enumerate((first, second)):
        start, end, string, _ = struct.unpack("<4I", memory.read(mbi["mods"] + 16 * index, 16))
        assert start % 4096 == 0 and start >= 0x103000, "after the kernel, page aligned"
        assert memory.read(start, end - start) == path.read_bytes()
        assert c_string(memory, string) == str(path)
        starts.append(start)
    assert starts == [m.start for m in image.modules]
    entries = [struct.unpack("<IQQI", memory.read(mbi["mmap_addr"] + 24 * i, 24))
               for i in range(mbi["mmap_length"] // 24)]
    assert [(base, length, kind) for size, base, length, kind in entries] == [
        (0, 0xA0000, 1), (0xA0000, 0x60000, 2), (0x100000, 7 * MiB, 1)]
    assert all(size == 20 for size, *_ in entries)


def test_a_missing_module_is_one_line_naming_it(tmp_path):
    memory = GuestMemory.with_size(2 * MiB)
    with pytest.raises(LoaderError, match="no/such/module"):
        load_multiboot(memory, aout_kernel(), modules=["no/such/module"])


def test_a_module_that_does_not_fit_in_ram_is_refused_and_nothing_is_written(tmp_path):
    big = tmp_path / "big"
    big.write_bytes(b"\1" * (MiB - 4096))
    memory = GuestMemory.with_size(2 * MiB)
    with pytest.raises(LoaderError, match="module .*does not fit"):
        load_multiboot(memory, aout_kernel(), modules=[str(big), str(big)])
    assert memory.read(0, 2 * MiB) == bytes(2 * MiB)


def test_a_command_line_with_a_nul_is_refused():
    with pytest.raises(LoaderError, match="NUL"):
        load_multiboot(GuestMemory.with_size(2 * MiB), aout_kernel(), cmdline="a\0b")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(min_size=0, max_size=600), at=st.integers(0, 0x200).map(lambda x: x * 4),
       fields=st.lists(st.one_of(st.integers(0, 0xFFFF_FFFF), st.integers(0x0FF000, 0x102000)),
                       min_size=5, max_size=5),
       flags=st.sampled_from([0, KLUDGE, KLUDGE | 3, KLUDGE | 4, 8]))
def test_hostile_headers_load_inside_ram_or_fail_in_one_line(data, at, fields, flags):
    image = bytearray(data) + bytes(max(0, at + 48 - len(data)))
    image[at:at + 32] = header(flags, *fields)
    memory = GuestMemory.with_size(2 * MiB)
    try:
        loaded = load_multiboot(memory, bytes(image))
    except LoaderError as err:
        assert "\n" not in str(err)
        return
    for segment in loaded.segments:
        assert memory.contains(segment.address, max(1, segment.mem_size))
    assert any(segment.address <= loaded.entry < segment.address + segment.file_size
               for segment in loaded.segments)


# -- under KVM ------------------------------------------------------------------------------


@pytest.mark.kvm
def test_the_c_kernel_gets_the_magic_and_reports_what_it_was_given(guests, tmp_path):
    from minikvm.machine import Machine, MachineConfig

    module = tmp_path / "notes.txt"
    module.write_bytes(b"NOTEhello from a module")
    kernel = str(guests / "multiboot.elf")
    config = MachineConfig(guest=kernel, mem_size=16 * MiB, irqchip=True,
                           append="root=none quiet", initrd=(str(module),))
    output = bytearray()
    with Machine.from_config(config, output=output.extend) as machine:
        regs = machine.vcpu.get_regs()
        assert (regs.rax, regs.rbx) == (BOOTLOADER_MAGIC, INFO_ADDR)
        assert machine.fw_cfg.item(0x15) == b"root=none quiet\0"
        stop = machine.run(timeout=30)
        words = struct.unpack("<10I", machine.memory.read(0x60000, 40))
    text = output.decode()
    assert stop.status == 0, text
    assert f"cmdline: {kernel} root=none quiet\n" in text
    assert "loaded by minikvm" in text
    assert f'"{module}": NOTEhello from a module' in text
    marker, flags, lower, upper, entries, usable, mods, start, end, first = words
    assert marker == 0x4B4F424D and mods == 1 and first == int.from_bytes(b"NOTE", "little")
    assert (lower, upper, entries) == (640, 15 * 1024, 3)
    assert usable == 640 + 15 * 1024
    assert end - start == module.stat().st_size


def minikvm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "minikvm", *args], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)


@pytest.mark.kvm
def test_run_detects_a_multiboot_kernel_and_passes_append_and_initrd(guests, tmp_path):
    module = tmp_path / "m.txt"
    module.write_text("module text")
    result = minikvm("run", str(guests / "multiboot.elf"), "--append", "-v 2",
                     "--initrd", f"{module},{module}", "--mem", "256M")
    assert result.returncode == 0, result.stderr
    assert f"cmdline: {guests / 'multiboot.elf'} -v 2\n" in result.stdout
    assert "modules: 2\n" in result.stdout
    assert "upper 261120 KiB" in result.stdout


@pytest.mark.parametrize("make, extra, words", slow_except([
    (lambda p: p.write_bytes(header(0, checksum=7) + bytes(64)), [], "bad checksum"),
    (lambda p: p.write_bytes(header(1 << 5) + bytes(64)), [], "flag bit 5"),
    (lambda p: p.write_bytes(aout_kernel(load_addr=0x40000000)), [], "does not fit in guest RAM"),
    (lambda p: p.write_bytes(aout_kernel()), ["--initrd", "no/such/file"], "no such module"),
    (lambda p: p.write_bytes(aout_kernel()), ["--load-addr", "0x1000"], "Multiboot kernel"),
    (lambda p: p.write_bytes(b"\xf4" * 16), ["--initrd", "README.md"], "no Multiboot header"),
], "bad checksum"))
def test_bad_multiboot_input_is_one_line_and_status_2(tmp_path, make, extra, words):
    path = tmp_path / "kernel"
    make(path)
    result = minikvm("run", str(path), *extra)
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert words in result.stderr


def test_ram_beyond_3_gib_goes_above_4_gib_and_the_map_says_so():
    from minikvm.core.board import ram_regions

    assert ram_regions(256 * MiB) == ((0, 256 * MiB),)
    assert ram_regions(5 << 30) == ((0, 3 << 30), (4 << 30, 2 << 30))
    memory = GuestMemory()
    for base, size in ram_regions(5 << 30):
        memory.add_region(base, size)
    load_multiboot(memory, aout_kernel())
    mbi = mbi_fields(memory)
    entries = [struct.unpack("<IQQI", memory.read(mbi["mmap_addr"] + 24 * i, 24))[1:]
               for i in range(mbi["mmap_length"] // 24)]
    assert entries == [(0, 0xA0000, 1), (0xA0000, 0x60000, 2), (MiB, (3 << 30) - MiB, 1),
                       (4 << 30, 2 << 30, 1)]
    assert mbi["upper"] == ((3 << 30) - MiB) // 1024, "mem_upper stops at the first hole"
    memory.close()


def test_the_quick_look_for_the_magic_searches_what_the_loader_searches():
    """Machine.load_guest imports the Multiboot loader only when the magic is
    in the bytes it read (loaders.find_multiboot_header): the two constants
    of that look must be the loader's."""
    from minikvm import loaders

    assert loaders.MULTIBOOT_SEARCH_LIMIT == SEARCH_LIMIT
    assert loaders.MULTIBOOT_MAGIC == HEADER_MAGIC.to_bytes(4, "little")
