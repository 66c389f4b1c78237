"""Lesson 06: paging and long mode, one level of the page walk at a time.

Run it: ``python lessons/06_paging.py`` (``--quiet``: checkpoints only).
Exercise: ``lessons/exercises/06_walk.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

from _common import Lesson, run_lesson

from minikvm.kvm.host import detect_host
from minikvm.machine import Machine
from minikvm.memory import GuestMemory
from minikvm.x86.flags import Cr0, Cr4, Efer, PageFlag, flag_names
from minikvm.x86.gdt import load_segment, write_gdt, FLAT_CODE64, FLAT_DATA
from minikvm.x86.layout import GDT_ADDR, SEL_CODE64, SEL_DATA, STACK_TOP
from minikvm.x86.modes import cpu_mode_of
from minikvm.x86.paging import PAGE_4K, PAGE_4M, PageTableBuilder, translate, walk_32bit

VIRT = 0x7F00_0000_0000       # a virtual address far above our 2 MiB of RAM
TARGET = 0x150000             # the physical page it will show
MESSAGE = b"read through four page tables\n"
# Our own page tables (one 4 KiB page each), in free RAM:
PML4, PDPT_LOW, PD_LOW, PDPT_HIGH, PD_HIGH, PT_HIGH = (0x10000 + i * 0x1000 for i in range(6))
P, RW, PS = PageFlag.PRESENT, PageFlag.RW, PageFlag.PS
LEVELS = (("PML4", 39), ("PDPT", 30), ("PD", 21), ("PT", 12))

# 64-bit code (encodings from `as --64`): print the string at VIRT on port 0xE9.
PRINT_VIRT = bytes([
    0x48, 0xBE, *VIRT.to_bytes(8, "little"),   # movabs rsi, VIRT
    0xFC,                                      # cld
    0xAC,                                      # 1: lodsb         ; al = [rsi++]
    0x84, 0xC0,                                #    test al, al
    0x74, 0x04,                                #    jz 2f
    0xE6, 0xE9,                                #    out 0xe9, al
    0xEB, 0xF7,                                #    jmp 1b
    0xF4,                                      # 2: hlt
])


def build_tables(memory: GuestMemory) -> None:
    """Identity-map 0..2 MiB with one large page, and VIRT -> TARGET with 4 KiB pages."""
    write = memory.write_u64
    write(PML4 + 8 * 0, PDPT_LOW | P | RW)
    write(PDPT_LOW + 8 * 0, PD_LOW | P | RW)
    write(PD_LOW + 8 * 0, 0x0 | P | RW | PS)                 # 2 MiB page at physical 0
    write(PML4 + 8 * ((VIRT >> 39) & 511), PDPT_HIGH | P | RW)
    write(PDPT_HIGH + 8 * ((VIRT >> 30) & 511), PD_HIGH | P | RW)
    write(PD_HIGH + 8 * ((VIRT >> 21) & 511), PT_HIGH | P | RW)
    write(PT_HIGH + 8 * ((VIRT >> 12) & 511), TARGET | P | RW)


def walk_by_hand(lesson: Lesson, memory: GuestMemory, cr3: int, vaddr: int) -> int | None:
    """The CPU's walk, as plain Python; narrates each level."""
    table = cr3 & ~0xFFF
    for level, shift in LEVELS:
        index = (vaddr >> shift) & 511
        entry = memory.read_u64(table + 8 * index)
        flags = flag_names(PageFlag(entry & 0x1FF))
        if not entry & P:
            lesson.result(f"{level}[{index}] at {table + 8 * index:#x}",
                          f"{entry:#018x}: not present -> page fault")
            return None
        address = entry & 0x000F_FFFF_FFFF_F000
        if level == "PT" or entry & PS:
            size = 1 << shift
            physical = (address & ~(size - 1)) | (vaddr & (size - 1))
            lesson.result(f"{level}[{index}] at {table + 8 * index:#x}",
                          f"{entry:#018x} {flags}: the page at {address:#x}, "
                          f"+ offset {vaddr & (size - 1):#x} = {physical:#x}")
            return physical
        lesson.result(f"{level}[{index}] at {table + 8 * index:#x}",
                      f"{entry:#018x} {flags}: next table at {address:#x}")
        table = address
    return None


def main(argv: Sequence[str] | None = None) -> int:
    lesson = Lesson("06", "Paging and long mode, one level at a time", argv)
    lesson.narrate("""
        With paging on (CR0.PG), every address a program uses is *virtual* (Intel: *linear*),
        and the CPU translates it through tables in guest memory whose root is in CR3. In
        **long mode** -- 64-bit x86 -- paging is not optional. Its tables have 512 entries of
        8 bytes each (one 4 KiB page), and four levels: bits 47:39 of the address index the
        PML4, 38:30 the PDPT, 29:21 the PD, 20:12 the PT, and bits 11:0 are the offset in the
        4 KiB page (SDM vol. 3A, 4.5). An entry either points to the next table or, with PS
        (bit 7) in a PD or PDPT entry, maps a 2 MiB or 1 GiB page itself.

        This lesson builds tables by hand, walks them by hand, runs a 64-bit guest through
        them, and asks KVM to do the same walk (`KVM_TRANSLATE`).
    """)

    # -- 1. tables by hand --------------------------------------------------------------
    lesson.section("1. Building page tables by hand")
    lesson.narrate(f"""
        Two mappings: virtual 0..2 MiB to physical 0..2 MiB with one 2 MiB page (our code
        and stack live there, and must stay reachable once paging is on), and virtual
        `{VIRT:#x}` -- far beyond our 2 MiB of RAM -- to the physical page `{TARGET:#x}`
        with 4 KiB pages. Six tables, at `{PML4:#x}`..`{PT_HIGH:#x}`:
    """)
    lesson.code("""
        write_u64(PML4 + 8*0, PDPT_LOW | P | RW)
        write_u64(PDPT_LOW + 8*0, PD_LOW | P | RW)
        write_u64(PD_LOW + 8*0, 0x0 | P | RW | PS)              # a 2 MiB page at physical 0
        write_u64(PML4 + 8*((VIRT >> 39) & 511), PDPT_HIGH | P | RW)
        write_u64(PDPT_HIGH + 8*((VIRT >> 30) & 511), PD_HIGH | P | RW)
        write_u64(PD_HIGH + 8*((VIRT >> 21) & 511), PT_HIGH | P | RW)
        write_u64(PT_HIGH + 8*((VIRT >> 12) & 511), 0x150000 | P | RW)
    """)
    with Machine() as machine:
        memory = machine.memory
        build_tables(memory)
        memory.write(TARGET, MESSAGE + b"\0")

        # -- 2. the walk by hand --------------------------------------------------------
        lesson.section("2. Walking them by hand")
        lesson.narrate(f"""
            `{VIRT:#x}` in binary splits into indexes 254, 0, 0, 0 and offset 0. The walk
            reads one entry per level, exactly like the CPU's page-miss handler:
        """)
        physical = walk_by_hand(lesson, memory, PML4, VIRT + 0x10)
        lesson.checkpoint(f"walk of {VIRT + 0x10:#x}", f"{physical:#x}", f"{TARGET + 0x10:#x}")
        lesson.narrate("""
            And an address inside the 2 MiB page: the walk stops one level early, at the PD
            entry with PS set, and the offset is bits 20:0 instead of 11:0.
        """)
        physical = walk_by_hand(lesson, memory, PML4, 0x1234)
        lesson.checkpoint("walk of 0x1234", f"{physical:#x}", "0x1234")
        lesson.narrate("""
            And one page further than our alias: the last table has no entry there. The CPU
            would raise a page fault (`#PF`, exception 14) and put the address in CR2.
        """)
        missing = walk_by_hand(lesson, memory, PML4, VIRT + 0x1000)
        lesson.checkpoint(f"walk of {VIRT + 0x1000:#x}", missing, None)

        # -- 3. long mode by hand -------------------------------------------------------------
        lesson.section("3. Entering long mode by hand, and a guest that uses the mapping")
        lesson.narrate(f"""
            Long mode needs four things at once (SDM vol. 3A, 9.8.5): CR4.PAE (8-byte
            entries), EFER.LME (long mode enable), CR0.PG with CR0.PE, and CR3 pointing at a
            PML4. On hardware, setting CR0.PG with LME set makes the CPU set EFER.LMA
            (long mode *active*); `KVM_SET_SREGS` takes the state after that step, so we
            set LMA ourselves (KVM refuses LME and PG without LMA and PAE:
            `kvm_is_valid_sregs` in `arch/x86/kvm/x86.c`). CS needs L = 1 to run 64-bit
            code (the GDT entry `{SEL_CODE64:#x}` from lesson 05). The guest prints the
            string it finds at `{VIRT:#x}`, which the VMM wrote at *physical* `{TARGET:#x}`:
        """)
        lesson.code("""
            sregs.cr3 = 0x10000                      # our PML4
            sregs.cr4 = CR4_PAE
            sregs.efer = EFER_LME | EFER_LMA
            sregs.cr0 = CR0_PE | CR0_ET | CR0_PG
            load_segment(sregs.cs, 0x08, FLAT_CODE64)     # L = 1: 64-bit code
            load_segment(sregs.ds, 0x18, FLAT_DATA)       # ... and ES, FS, GS, SS
        """)
        lesson.code(f"""
                movabs rsi, {VIRT:#x}
                cld
            1:  lodsb                 ; al = byte at virtual rsi
                test al, al
                jz 2f
                out 0xe9, al
                jmp 1b
            2:  hlt
        """, "nasm")
        output: list[bytes] = []
        machine.debugcon.output = output.append
        memory.write(0x1000, PRINT_VIRT)
        sregs = machine.vcpu.get_sregs()
        sregs.gdt.base, sregs.gdt.limit = GDT_ADDR, write_gdt(memory, GDT_ADDR)
        load_segment(sregs.cs, SEL_CODE64, FLAT_CODE64)
        for name in ("ds", "es", "fs", "gs", "ss"):
            load_segment(getattr(sregs, name), SEL_DATA, FLAT_DATA)
        sregs.cr3 = PML4
        sregs.cr4 = Cr4.PAE
        sregs.efer = Efer.LME | Efer.LMA
        sregs.cr0 = Cr0.PE | Cr0.ET | Cr0.PG
        machine.vcpu.set_sregs(sregs)
        regs = machine.vcpu.get_regs()
        regs.rip, regs.rsp, regs.rflags = 0x1000, STACK_TOP, 0x2
        machine.vcpu.set_regs(regs)
        stop = machine.run(timeout=10)
        text = b"".join(output)
        lesson.result("the guest printed", text.decode().strip())
        lesson.result("CPU mode", cpu_mode_of(machine.vcpu.get_sregs()).value)
        lesson.checkpoint("guest read through the alias", repr(text), repr(MESSAGE))
        lesson.checkpoint("stop", stop.kind.value, "halt")

        # -- 4. KVM_TRANSLATE -------------------------------------------------------------------
        lesson.section("4. KVM_TRANSLATE: let KVM walk")
        lesson.narrate("""
            `KVM_TRANSLATE` asks KVM to translate an address with the vCPU's current paging
            state. A debugger uses it to read memory "as the guest sees it". It agrees with
            our walk; an unmapped address comes back with `valid = 0`.
        """)
        answers = {}
        for vaddr in (VIRT + 0x10, 0x1234, VIRT + 0x1000):
            result = machine.vcpu.translate(vaddr)
            answers[vaddr] = f"{result.physical_address:#x}" if result.valid else "invalid"
            lesson.result(f"KVM_TRANSLATE({vaddr:#x})", answers[vaddr])
        lesson.checkpoint(f"KVM_TRANSLATE({VIRT + 0x10:#x})", answers[VIRT + 0x10],
                          f"{TARGET + 0x10:#x}")
        lesson.checkpoint("KVM_TRANSLATE(0x1234)", answers[0x1234], "0x1234")
        lesson.checkpoint(f"KVM_TRANSLATE({VIRT + 0x1000:#x})", answers[VIRT + 0x1000],
                          "invalid")

    # -- 5. the project's API on a C guest's own tables -------------------------------------
    lesson.section("5. The same with minikvm: a C guest that builds its own tables")
    lesson.narrate("""
        `setup_long_mode` identity-maps the first 4 GiB with 2 MiB pages (six tables at
        0x70000) and sets the registers as in step 3; `Machine.load_guest` picks it for an
        ELF64. `guests/c/long.c` then builds tables of its own, loads CR3 with them, and
        writes a magic number through virtual `0x7f0000000000`. After it halts, CR3 still
        points at *its* tables, and `minikvm.x86.paging.translate` walks them level by level
        (the debugger shows the same walk):
    """)
    output = []
    with Machine(output=output.append) as machine:
        machine.load_guest(lesson.guest("long.elf"))
        machine.run(timeout=10)
        sregs = machine.vcpu.get_sregs()
        walk = translate(machine.memory, sregs, VIRT + 8)
        kvm_says = machine.vcpu.translate(VIRT + 8)
        magic = machine.memory.read_u64(TARGET)
    lesson.result("the guest printed", b"".join(output).decode().strip())
    lesson.block(walk.describe())
    lesson.result("KVM_TRANSLATE agrees", f"{kvm_says.physical_address:#x}")
    lesson.narrate("""
        The first line sums up the permissions, which accumulate along the walk (SDM 4.6):
        **W** writable (every entry has R/W; else R, read-only), **S** supervisor-only (some
        entry lacks U/S; else U, user), **X** executable (no entry has NX).
    """)
    lesson.narrate("""
        Notice ACCESSED on every entry of the walk and DIRTY on the last one: the CPU sets
        A in each entry it uses for a translation and D in the leaf of a page written
        through it (SDM 4.8) -- the only time the CPU itself writes to page tables. An OS
        reads them to find pages worth keeping. (The checkpoints below leave them out.)
    """)
    for step in walk.levels:
        flags = PageFlag(step.flags & ~(PageFlag.ACCESSED | PageFlag.DIRTY))
        lesson.checkpoint(f"long.c walk {step.level}", f"index {step.index}, "
                          f"{flag_names(flags)}, {'page' if step.leaf else 'table'}")
    lesson.checkpoint("long.c alias -> physical", f"{walk.physical:#x} = KVM "
                      f"{kvm_says.physical_address:#x}", f"{TARGET + 8:#x} = KVM {TARGET + 8:#x}")
    lesson.checkpoint("magic at 0x150000", f"{magic:#x}", "0x5afec0de12345678")

    # -- 6. 32-bit paging -------------------------------------------------------------------
    lesson.section("6. 32-bit paging, on tables in memory")
    host = detect_host()
    lesson.narrate(f"""
        Before long mode there was 32-bit paging (CR0.PG without CR4.PAE; SDM 4.3): two
        levels of 1024 entries of 4 bytes -- bits 31:22 index the page directory, 21:12 the
        page table -- and, with CR4.PSE, 4 MiB pages mapped directly by a directory entry.
        `guests/c/paged.c` runs a C guest that way.

        This host's KVM is `{host.flavour}`. kvm-pvm cannot run a guest with 32-bit paging:
        it drops CR0.PG from the state the VMM sets, and the guest ends in a shutdown at its
        first instruction. On hardware KVM (VT-x, AMD-V) it runs:
        `minikvm run guests/build/paged.elf --mode paged`. So here the lesson builds
        32-bit tables in plain memory, with no VM at all, and walks them with minikvm's
        walker -- the same code the debugger uses when a guest runs in that mode:
    """)
    memory = GuestMemory.with_size(2 << 20)
    tables = PageTableBuilder(memory, 0x70000, 0x80000, four_level=False)
    tables.map(0x0, 0x0, PAGE_4M, PageFlag.RW)
    tables.map(0xC000_0000, TARGET, PAGE_4K, PageFlag.RW)
    lesson.narrate("""
        `0xC0000123` uses directory entry `0xC0000123 >> 22` = 768 (the 3 GiB line, where
        32-bit Linux kept its kernel), table entry 0, offset `0x123`. `0x123456` lies in the
        first 4 MiB page, which the directory maps itself.
    """)
    for vaddr in (0xC000_0123, 0x0012_3456):
        walk = walk_32bit(memory, tables.cr3, vaddr)
        lesson.block(walk.describe())
        for step in walk.levels:
            lesson.checkpoint(f"32-bit walk of {vaddr:#x} {step.level}",
                              f"index {step.index}, {flag_names(step.flags)}, "
                              f"{'page' if step.leaf else 'table'} {step.address:#x}")
        lesson.checkpoint(f"32-bit walk of {vaddr:#x}", f"{walk.physical:#x}")
    lesson.narrate("""
        **Exercise 06** (`lessons/exercises/06_walk.md`): finish a page walker of your own --
        it must handle 2 MiB pages -- and the checker compares it with `KVM_TRANSLATE` on a
        running guest. `minikvm lesson check 06`.
    """)
    return lesson.finish()


if __name__ == "__main__":
    run_lesson(main)
