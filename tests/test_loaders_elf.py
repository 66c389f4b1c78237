"""The ELF loader: what gets loaded where, every refusal, corrupt files, a real toolchain.

ELF images are assembled here byte by byte with ``struct`` from the gABI
layouts (``build_elf``), independently of the loader's parser; the last
tests load what gcc and ld produce and compare with binutils (``objcopy``,
``nm``) as the reference.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minikvm.loaders import LoaderError, load_elf
from minikvm.loaders.elf import parse_elf
from minikvm.memory import GuestMemory
from minikvm.x86.modes import CpuMode

MIB = 1 << 20
PF_X, PF_W, PF_R = 1, 2, 4
PT_LOAD, PT_INTERP, PT_NOTE = 1, 3, 4
STT_NOTYPE, STT_OBJECT, STT_FUNC, STT_SECTION, STT_FILE = 0, 1, 2, 3, 4
STB_LOCAL, STB_GLOBAL = 0, 1

TEXT = 0x10_0000
DATA = 0x10_1000
CODE = bytes(range(0x40))
DATA_BYTES = b"DATA" * 4


@dataclass
class Seg:
    vaddr: int
    data: bytes
    memsz: int | None = None
    flags: int = PF_R | PF_X
    paddr: int | None = None
    type: int = PT_LOAD


# (name, value, size, type, bind, section index)
DEFAULT_SYMBOLS = [
    ("_start", TEXT, 0x10, STT_FUNC, STB_GLOBAL, 1),
    ("main", TEXT + 0x10, 0x20, STT_FUNC, STB_GLOBAL, 1),
    ("loop", TEXT + 0x30, 0, STT_NOTYPE, STB_LOCAL, 1),
    ("counter", DATA, 4, STT_OBJECT, STB_GLOBAL, 2),
    ("guest.c", 0, 0, STT_FILE, STB_LOCAL, 0xFFF1),
    ("", TEXT, 0, STT_SECTION, STB_LOCAL, 1),
    ("undefined_thing", 0, 0, STT_NOTYPE, STB_GLOBAL, 0),
]


def default_segments():
    return [Seg(TEXT, CODE), Seg(DATA, DATA_BYTES, memsz=0x2000, flags=PF_R | PF_W)]


def build_elf(bits=64, segments=None, entry=TEXT + 0x10, symbols=None, *, machine=None,
              e_type=2, sections=True, symtab_link=2):
    """An ELF executable as bytes, and where its parts lie in the file."""
    segments = default_segments() if segments is None else segments
    symbols = DEFAULT_SYMBOLS if symbols is None else symbols
    if bits == 64:
        ehdr, phdr, shdr, sym = "<16sHHIQQQIHHHHHH", "<IIQQQQQQ", "<IIQQQQIIQQ", "<IBBHQQ"
        machine = 62 if machine is None else machine
    else:
        ehdr, phdr, shdr, sym = "<16sHHIIIIIHHHHHH", "<8I", "<10I", "<IIIBBH"
        machine = 3 if machine is None else machine
    ehsize, phentsize, shentsize, symsize = (struct.calcsize(f) for f in (ehdr, phdr, shdr, sym))
    where = {"phoff": ehsize}
    body = bytearray(ehsize + len(segments) * phentsize)
    offsets = []
    for seg in segments:
        body += bytes(-len(body) % 16)
        offsets.append(len(body))
        body += seg.data
    phdrs = b""
    for seg, offset in zip(segments, offsets):
        memsz = len(seg.data) if seg.memsz is None else seg.memsz
        paddr = seg.vaddr if seg.paddr is None else seg.paddr
        if bits == 64:
            phdrs += struct.pack(phdr, seg.type, seg.flags, offset, seg.vaddr, paddr,
                                 len(seg.data), memsz, 0x1000)
        else:
            phdrs += struct.pack(phdr, seg.type, offset, seg.vaddr, paddr, len(seg.data),
                                 memsz, seg.flags, 0x1000)
    body[ehsize:ehsize + len(phdrs)] = phdrs
    shoff, shnum = 0, 0
    if sections:
        strtab, symtab = b"\0", bytes(symsize)
        for name, value, size, kind, bind, shndx in symbols:
            name_off = 0
            if name:
                name_off, strtab = len(strtab), strtab + name.encode() + b"\0"
            info = bind << 4 | kind
            if bits == 64:
                symtab += struct.pack(sym, name_off, info, 0, shndx, value, size)
            else:
                symtab += struct.pack(sym, name_off, value, size, info, 0, shndx)
        shstrtab = b"\0.symtab\0.strtab\0.shstrtab\0"
        body += bytes(-len(body) % 8)
        where["symtab"] = symtab_off = len(body)
        body += symtab
        where["strtab"] = strtab_off = len(body)
        body += strtab
        shstrtab_off = len(body)
        body += shstrtab
        body += bytes(-len(body) % 8)
        where["shoff"] = shoff = len(body)
        shnum = 4
        body += bytes(shentsize)  # section 0
        body += struct.pack(shdr, 1, 2, 0, 0, symtab_off, len(symtab), symtab_link, 1, 8, symsize)
        body += struct.pack(shdr, 9, 3, 0, 0, strtab_off, len(strtab), 0, 0, 1, 0)
        body += struct.pack(shdr, 17, 3, 0, 0, shstrtab_off, len(shstrtab), 0, 0, 1, 0)
    ident = b"\x7fELF" + bytes([2 if bits == 64 else 1, 1, 1]) + bytes(9)
    header = struct.pack(ehdr, ident, e_type, machine, 1, entry, ehsize, shoff, 0, ehsize,
                         phentsize, len(segments), shentsize, shnum, 3 if shnum else 0)
    body[:ehsize] = header
    return bytes(body), where


@pytest.fixture
def mem() -> GuestMemory:
    memory = GuestMemory.with_size(2 * MIB)
    memory.fill(TEXT, 0x4000, 0xAA)  # stale bytes: the BSS must come out zero
    return memory


# -- what a good image does ------------------------------------------------------------


@pytest.mark.parametrize("bits, mode", [(64, CpuMode.LONG), (32, CpuMode.PROTECTED)])
def test_elf_class_picks_the_cpu_mode(mem, bits, mode):
    image = load_elf(mem, build_elf(bits)[0])
    assert (image.kind, image.mode, image.entry) == (f"elf{bits}", mode, TEXT + 0x10)


@pytest.mark.parametrize("bits", [64, 32])
def test_segments_are_copied_and_bss_zeroed(mem, bits):
    image = load_elf(mem, build_elf(bits)[0])
    assert mem.read(TEXT, len(CODE)) == CODE
    assert mem.read(DATA, len(DATA_BYTES)) == DATA_BYTES
    assert mem.read(DATA + len(DATA_BYTES), 0x2000 - len(DATA_BYTES)) == bytes(0x2000 - 16)
    assert mem.read_u8(DATA + 0x2000) == 0xAA  # nothing past p_memsz is touched
    text, data = image.segments
    assert (text.address, text.file_size, text.mem_size, text.executable, text.writable) == (
        TEXT, len(CODE), len(CODE), True, False)
    assert (data.address, data.file_size, data.mem_size, data.executable, data.writable) == (
        DATA, 16, 0x2000, False, True)
    assert (image.start, image.end) == (TEXT, DATA + 0x2000)


def test_segments_load_at_their_physical_address(mem):
    segs = [Seg(0xFFFF_FFFF_8010_0000, CODE, paddr=TEXT)]
    image = load_elf(mem, build_elf(64, segs, entry=0xFFFF_FFFF_8010_0004, symbols=[])[0])
    assert mem.read(TEXT, len(CODE)) == CODE
    assert image.entry == TEXT + 4  # the vCPU starts with identity maps: physical
    assert image.segments[0].virtual == 0xFFFF_FFFF_8010_0000


@pytest.mark.parametrize("bits", [64, 32])
def test_symbols_name_addresses_for_the_debugger(mem, bits):
    image = load_elf(mem, build_elf(bits)[0])
    assert image.symbol_at(TEXT) == "_start"
    assert image.symbol_at(TEXT + 0x14) == "main+0x4"
    assert image.symbol_at(TEXT + 0x38) == "loop+0x8"
    assert image.symbol_at(DATA + 2) == "counter+0x2"
    assert image.symbol_at(DATA + 4) is None  # past the end of a sized symbol
    assert image.symbol_at(TEXT - 1) is None
    assert image.symbols.lookup("main").address == TEXT + 0x10
    names = {symbol.name for symbol in image.symbols}
    assert names == {"_start", "main", "loop", "counter"}  # no file, section, undefined


def test_image_without_sections_loads_without_symbols(mem):
    image = load_elf(mem, build_elf(64, sections=False)[0])
    assert len(image.symbols) == 0 and image.symbol_at(TEXT) is None


def test_other_program_headers_are_ignored(mem):
    segs = default_segments() + [Seg(0, b"note", type=PT_NOTE)]
    assert len(load_elf(mem, build_elf(64, segs)[0]).segments) == 2


def test_loading_from_a_path(mem, tmp_path):
    path = tmp_path / "guest.elf"
    path.write_bytes(build_elf(64)[0])
    image = load_elf(mem, path)
    assert image.source == str(path) and image.entry == TEXT + 0x10


# -- refusals -----------------------------------------------------------------------------


def patched(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value):]


GOOD64 = build_elf(64)[0]

REFUSALS = {
    "empty": (b"", "too short"),
    "no magic": (patched(GOOD64, 0, b"\x7fELV"), "not an ELF file"),
    "class 3": (patched(GOOD64, 4, b"\x03"), "unknown ELF class 3"),
    "big-endian": (patched(GOOD64, 5, b"\x02"), "not little-endian"),
    "ident version": (patched(GOOD64, 6, b"\x02"), "unknown ELF version 2"),
    "short header": (GOOD64[:40], "header needs 64 bytes"),
    "ET_DYN": (build_elf(64, e_type=3)[0], "position-independent"),
    "ET_REL": (build_elf(64, e_type=1)[0], "not an executable"),
    "ELF64 for i386": (build_elf(64, machine=3)[0], "machine 3"),
    "AArch64": (build_elf(64, machine=183)[0], "AArch64"),
    "ELF32 for x86-64": (build_elf(32, machine=62)[0], "machine 62"),
    "no program headers": (build_elf(64, [])[0], "no program headers"),
    "phoff past the end": (patched(GOOD64, 32, struct.pack("<Q", len(GOOD64))),
                           "program header table"),
    "phentsize too small": (patched(GOOD64, 54, struct.pack("<H", 8)), "entry size 8"),
    "too many phdrs": (patched(GOOD64, 56, struct.pack("<H", 0xFFFF)), "more than the 128"),
    "filesz > memsz": (build_elf(64, [Seg(TEXT, CODE, memsz=4)])[0], "p_filesz"),
    "segment data past the end": (build_elf(64, sections=False)[0][:-4], "truncated"),
    "segment outside RAM": (build_elf(64, [Seg(0x1F_F000, CODE, memsz=0x2000)], 0x1F_F000)[0],
                            "does not fit in guest RAM"),
    "segment over the page tables": (build_elf(64, [Seg(0x7_0000, CODE)], 0x7_0000)[0],
                                     "overlaps the page tables"),
    "segment over the GDT": (build_elf(64, [Seg(0x500, CODE)], 0x500)[0], "overlaps the GDT"),
    "overlapping segments": (build_elf(64, [Seg(TEXT, CODE), Seg(TEXT + 0x20, CODE)])[0],
                             "overlap"),
    "entry outside": (build_elf(64, entry=0x18_0000)[0], "outside every loaded segment"),
    "entry in data": (build_elf(64, entry=DATA + 4)[0], "not executable"),
    "entry in BSS": (build_elf(64, [Seg(TEXT, CODE, memsz=0x1000)], TEXT + 0x800)[0], "BSS"),
    "only empty segments": (build_elf(64, [Seg(TEXT, b"")])[0], "nothing to load"),
    "interpreter": (build_elf(64, default_segments() + [Seg(0, b"/lib/ld.so", type=PT_INTERP)])[0],
                    "dynamically linked"),
    "wraps 32-bit space": (build_elf(32, [Seg(0xFFFF_F000, CODE, memsz=0x2000)], 0xFFFF_F000)[0],
                           "wraps"),
    "symtab links to itself": (build_elf(64, symtab_link=1)[0], "not a string table"),
    "section table past the end": (build_elf(64)[0][:-8], "section header table"),
}


@pytest.mark.parametrize("name", sorted(REFUSALS))
def test_bad_images_are_refused_with_a_one_line_reason(mem, name):
    data, fragment = REFUSALS[name]
    before = mem.read(0, 2 * MIB)
    with pytest.raises(LoaderError) as info:
        load_elf(mem, data)
    message = str(info.value)
    assert fragment in message and "\n" not in message
    assert mem.read(0, 2 * MIB) == before  # nothing is loaded from a refused image


def test_symbol_name_outside_the_string_table_is_refused(mem):
    data, where = build_elf(64)
    bad = patched(data, where["symtab"] + 24, struct.pack("<I", 0x10000))  # symbol 1's name
    with pytest.raises(LoaderError, match="outside the string table"):
        load_elf(mem, bad)


def test_refusal_from_a_file_names_the_file(mem, tmp_path):
    path = tmp_path / "broken.elf"
    path.write_bytes(GOOD64[:40])
    with pytest.raises(LoaderError, match=r"broken\.elf: truncated"):
        load_elf(mem, path)


def test_missing_file_is_a_loader_error(mem, tmp_path):
    with pytest.raises(LoaderError, match="No such file"):
        load_elf(mem, tmp_path / "absent.elf")


def test_parse_elf_describes_without_loading():
    elf = parse_elf(GOOD64)
    assert (elf.bits, elf.entry, elf.entry_physical, elf.mode) == (64, TEXT + 0x10,
                                                                   TEXT + 0x10, CpuMode.LONG)
    assert [ph.paddr for ph in elf.load_segments] == [TEXT, DATA]


# -- corrupt files: load, or refuse with LoaderError, nothing else ------------------------

BASES = [build_elf(64)[0], build_elf(32)[0]]


def _check_outcome(data: bytes) -> None:
    mem = GuestMemory.with_size(2 * MIB)
    try:
        image = load_elf(mem, data)
    except LoaderError as err:
        assert "\n" not in str(err)
        return
    assert any(image.entry in segment for segment in image.segments)
    assert all(mem.contains(s.address, s.mem_size) for s in image.segments if s.mem_size)


@settings(max_examples=200, deadline=None)
@given(base=st.sampled_from(BASES), data=st.data())
def test_truncated_or_flipped_elf_loads_or_raises_loader_error(base, data):
    if data.draw(st.booleans(), label="truncate"):
        mutated = base[:data.draw(st.integers(0, len(base) - 1), label="length")]
    else:
        mutated = bytearray(base)
        # Headers and tables are at both ends; aim there more often than at the code.
        position = st.one_of(st.integers(0, 0xC0), st.integers(0, len(base) - 1),
                             st.integers(len(base) - 0x100, len(base) - 1))
        for pos, xor in data.draw(st.lists(st.tuples(position, st.integers(1, 255)),
                                           min_size=1, max_size=8), label="flips"):
            mutated[pos] ^= xor
        mutated = bytes(mutated)
    _check_outcome(mutated)


# ELF64 header fields: (offset, struct format) of e_entry, e_phoff, e_shoff, e_ehsize,
# e_phentsize, e_phnum, e_shentsize, e_shnum.
HEADER_FIELDS_64 = [(24, "<Q"), (32, "<Q"), (40, "<Q"), (52, "<H"), (54, "<H"), (56, "<H"),
                    (58, "<H"), (60, "<H")]


@settings(max_examples=100, deadline=None)
@given(field=st.sampled_from(HEADER_FIELDS_64), data=st.data())
def test_any_header_field_value_loads_or_raises_loader_error(field, data):
    offset, fmt = field
    bits = struct.calcsize(fmt) * 8
    value = data.draw(st.one_of(st.integers(0, 2**bits - 1), st.integers(0, 0x200)))
    _check_outcome(patched(GOOD64, offset, struct.pack(fmt, value)))


# -- against the real toolchain -------------------------------------------------------------

C_SOURCE = r"""
int counter;                       /* .bss */
int table[4] = {1, 2, 3, 4};       /* .data */
static int helper(int x) { return x * 3 + table[x & 3]; }
void _start(void)
{
    counter = helper(counter);
    for (;;)
        __asm__ volatile("hlt");
}
"""

LINKER_SCRIPT = """
ENTRY(_start)
SECTIONS
{
    . = 0x100000;
    .text : { *(.text .text.*) }
    .rodata : { *(.rodata .rodata.*) }
    .data : { *(.data .data.*) }
    .bss : { *(.bss .bss.*) *(COMMON) }
    /DISCARD/ : { *(.note*) *(.comment) *(.eh_frame*) }
}
"""


def compile_guest(tmp_path, flag: str):
    if not all(shutil.which(tool) for tool in ("gcc", "objcopy", "nm")):
        pytest.skip("needs gcc, objcopy and nm")
    (tmp_path / "guest.c").write_text(C_SOURCE)
    (tmp_path / "guest.ld").write_text(LINKER_SCRIPT)
    elf = tmp_path / "guest.elf"
    result = subprocess.run(
        ["gcc", flag, "-O1", "-ffreestanding", "-nostdlib", "-static", "-fno-pic", "-no-pie",
         "-fno-asynchronous-unwind-tables", "-fno-stack-protector", "-Wl,--build-id=none",
         "-T", str(tmp_path / "guest.ld"), "-o", str(elf), str(tmp_path / "guest.c")],
        capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"gcc {flag} cannot build here: {result.stderr.strip()[:200]}")
    flat = tmp_path / "guest.bin"
    subprocess.run(["objcopy", "-O", "binary", str(elf), str(flat)], check=True)
    nm = subprocess.run(["nm", "--defined-only", str(elf)], check=True, capture_output=True,
                        text=True).stdout
    symbols = {}
    for line in nm.splitlines():
        address, kind, name = line.split()
        symbols[name] = (int(address, 16), kind)
    return elf, flat.read_bytes(), symbols


@pytest.mark.parametrize("flag, bits", [("-m64", 64), ("-m32", 32)])
def test_gcc_guest_loads_as_objcopy_and_nm_say(tmp_path, flag, bits):
    elf, flat, symbols = compile_guest(tmp_path, flag)
    mem = GuestMemory.with_size(2 * MIB)
    mem.fill(0x10_0000, 0x10_0000, 0xAA)
    image = load_elf(mem, elf)
    assert image.kind == f"elf{bits}"
    assert image.entry == symbols["_start"][0] == 0x10_0000
    assert mem.read(0x10_0000, len(flat)) == flat  # the bytes objcopy extracts
    counter = symbols["counter"][0]
    assert symbols["counter"][1] in "bB" and mem.read_u32(counter) == 0  # BSS zeroed
    for name, (address, kind) in symbols.items():
        if kind in "TtDdBbRr":
            assert image.symbols.lookup(name).address == address, name
    assert image.symbol_at(symbols["table"][0] + 4) == "table+0x4"
