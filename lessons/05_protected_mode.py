"""Lesson 05: protected mode and the GDT.

Run it: ``python lessons/05_protected_mode.py`` (``--quiet``: checkpoints only).
Exercise: ``lessons/exercises/05_gdt.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

from _common import Lesson, hexdump, run_lesson

from minikvm.loaders.elf import load_elf
from minikvm.machine import Machine
from minikvm.x86.flags import Cr0, flag_names
from minikvm.x86.gdt import FLAT_CODE32, FLAT_DATA, SegmentDescriptor, flat_gdt
from minikvm.x86.layout import GDT_ADDR, SEL_CODE32, SEL_DATA, STACK_TOP
from minikvm.x86.modes import code_bitness, cpu_mode_of

# 32-bit code: load DS with selector 0x18, then halt (encodings from `as --32`).
LOAD_DS = bytes([
    0x66, 0xB8, 0x18, 0x00,   # mov ax, 0x18      ; GDT index 3, table GDT, RPL 0
    0x8E, 0xD8,               # mov ds, ax        ; the CPU reads descriptor 3 now
    0xF4,                     # hlt
])


def pack_by_hand(base: int, limit: int, access: int, flags: int) -> int:
    """A segment descriptor, field by field (Intel SDM vol. 3A, 3.4.5, figure 3-8)."""
    return ((limit & 0xFFFF)                 # bits 15:0   limit 15:0
            | (base & 0xFFFFFF) << 16        # bits 39:16  base 23:0
            | access << 40                   # bits 47:40  P, DPL, S, type
            | (limit >> 16 & 0xF) << 48      # bits 51:48  limit 19:16
            | flags << 52                    # bits 55:52  G, D/B, L, AVL
            | (base >> 24 & 0xFF) << 56)     # bits 63:56  base 31:24


def load_segment_by_hand(segment, selector: int, base: int, limit: int, type_: int,
                         db: int) -> None:
    """Fill a kvm_segment's visible and hidden parts, as a selector load would."""
    segment.selector = selector
    segment.base, segment.limit, segment.type = base, limit, type_
    segment.s, segment.dpl, segment.present = 1, 0, 1
    segment.db, segment.g, segment.l, segment.avl, segment.unusable = db, 1, 0, 0, 0


def main(argv: Sequence[str] | None = None) -> int:
    lesson = Lesson("05", "Protected mode and the GDT", argv)
    lesson.narrate("""
        In real mode a segment register's base is just `selector * 16`. In **protected
        mode** (CR0.PE = 1) the selector is an *index*: bits 15:3 pick an 8-byte *descriptor*
        in the global descriptor table, the **GDT**, which lives in ordinary memory at the
        address GDTR holds. The descriptor gives the segment's base, its limit, whether it is
        code or data, its privilege level, and whether code is 16-, 32- or 64-bit. Loading a
        segment register makes the CPU read the descriptor and copy it into the register's
        hidden part (lesson 04). Every modern OS makes all segments *flat* -- base 0, limit
        4 GiB -- so that segmentation changes nothing and paging does the real work.
    """)

    # -- 1. a descriptor by hand ----------------------------------------------------------
    lesson.section("1. A descriptor, bit by bit")
    lesson.narrate("""
        The layout is a fossil of the 286, whose descriptors had a 24-bit base and a 16-bit
        limit: the 386 squeezed the extra bits in where there was room (SDM vol. 3A, 3.4.5):
    """)
    lesson.block("""\
 63      56 55 54  53 52  51   48 47 46 45 44 43  40 39          16 15         0
 base 31:24  G D/B  L AVL lim19:16 P  DPL  S   type   base 23:0     limit 15:0""")
    lesson.narrate("""
        For a flat 32-bit code segment: base 0; limit `0xFFFFF` with G = 1, so it counts
        4 KiB pages and reaches 4 GiB; P = 1 present; DPL = 0 (ring 0); S = 1 (code or data,
        not a system descriptor); type `0xB` = executable, readable, accessed; D/B = 1
        (32-bit operands and addresses). The *access byte* P|DPL|S|type is `0x9B`, the
        flags nibble G|D/B|L|AVL is `0xC`:
    """)
    lesson.code("""
        def pack_by_hand(base, limit, access, flags):
            return ((limit & 0xFFFF)                 # bits 15:0   limit 15:0
                    | (base & 0xFFFFFF) << 16        # bits 39:16  base 23:0
                    | access << 40                   # bits 47:40  P, DPL, S, type
                    | (limit >> 16 & 0xF) << 48      # bits 51:48  limit 19:16
                    | flags << 52                    # bits 55:52  G, D/B, L, AVL
                    | (base >> 24 & 0xFF) << 56)     # bits 63:56  base 31:24

        code32 = pack_by_hand(base=0, limit=0xFFFFF, access=0x9B, flags=0xC)
        data = pack_by_hand(base=0, limit=0xFFFFF, access=0x93, flags=0xC)  # type 3
    """)
    code32 = pack_by_hand(base=0, limit=0xFFFFF, access=0x9B, flags=0xC)
    data = pack_by_hand(base=0, limit=0xFFFFF, access=0x93, flags=0xC)
    lesson.result("code32", f"{code32:#018x}")
    lesson.result("data", f"{data:#018x}")
    lesson.result("minikvm's FLAT_CODE32.pack(), FLAT_DATA.pack()",
                  f"{FLAT_CODE32.pack():#018x}, {FLAT_DATA.pack():#018x}")
    lesson.checkpoint("flat code32 descriptor", f"{code32:#018x}", f"{FLAT_CODE32.pack():#018x}")
    lesson.checkpoint("flat data descriptor", f"{data:#018x}", f"{FLAT_DATA.pack():#018x}")

    # -- 2. entering protected mode by hand ------------------------------------------------
    lesson.section("2. Starting a guest in protected mode, by hand")
    lesson.narrate(f"""
        A boot loader enters protected mode itself: `lgdt`, set CR0.PE, far jump to load CS.
        A VMM can skip that climb, because `KVM_SET_SREGS` writes control registers *and*
        the hidden parts of the segment registers directly. What it cannot skip is the GDT
        in guest memory: the guest's next segment load (a far jump, an `iret`, a
        `mov ds, ax`) reads it. So, by hand:

        1. write the GDT -- null, 64-bit code, 32-bit code, data -- at `{GDT_ADDR:#x}`, and
           point GDTR at it;
        2. give CS the hidden part of selector `{SEL_CODE32:#x}` (index 2) and DS, ES, SS ...
           that of `{SEL_DATA:#x}` (index 3) -- the same values as the descriptors;
        3. set CR0 = PE | ET: protected mode, no paging;
        4. load the ELF guest `guests/c/protected.c` and start at its entry.
    """)
    lesson.code("""
        machine.memory.write(0x500, gdt_bytes)                            # 1
        sregs = machine.vcpu.get_sregs()
        sregs.gdt.base, sregs.gdt.limit = 0x500, len(gdt_bytes) - 1
        sregs.cs.selector, sregs.cs.base, sregs.cs.limit = 0x10, 0, 0xFFFFFFFF
        sregs.cs.type, sregs.cs.db, sregs.cs.g = 0xB, 1, 1                # 2
        # ... the same for DS, ES, FS, GS, SS with selector 0x18, type 0x3
        sregs.cr0 = CR0_PE | CR0_ET                                       # 3
        machine.vcpu.set_sregs(sregs)
        image = load_elf(machine.memory, "guests/build/protected.elf")   # 4
        regs.rip, regs.rsp, regs.rflags = image.entry, 0x6F000, 0x2
    """)
    output: list[bytes] = []
    with Machine(output=output.append) as machine:
        table = b"".join(entry.to_bytes() for entry in flat_gdt())
        machine.memory.write(GDT_ADDR, table)
        image = load_elf(machine.memory, lesson.guest("protected.elf"))
        sregs = machine.vcpu.get_sregs()
        sregs.gdt.base, sregs.gdt.limit = GDT_ADDR, len(table) - 1
        load_segment_by_hand(sregs.cs, SEL_CODE32, 0, 0xFFFFFFFF, 0xB, db=1)
        for name in ("ds", "es", "fs", "gs", "ss"):
            load_segment_by_hand(getattr(sregs, name), SEL_DATA, 0, 0xFFFFFFFF, 0x3, db=1)
        sregs.cr0 = Cr0.PE | Cr0.ET
        machine.vcpu.set_sregs(sregs)
        regs = machine.vcpu.get_regs()
        regs.rip, regs.rsp, regs.rflags = image.entry, STACK_TOP, 0x2
        machine.vcpu.set_regs(regs)
        stop = machine.run(timeout=5)
        after = machine.vcpu.get_sregs()
    lesson.block(f"the GDT at {GDT_ADDR:#x} (little-endian: the lowest byte first):\n"
                 + hexdump(table, GDT_ADDR, 8))
    text = b"".join(output).decode().strip()
    lesson.result("the guest printed", text)
    lesson.result("the run", stop.message)
    lesson.narrate("""
        The guest read CR0 itself (`mov %cr0, %eax`), its CS selector (`mov %cs, %ax`), and
        the DS limit by finding its own descriptor in the GDT with `sgdt`: everything agrees
        with what we wrote by hand. 0x11 is PE | ET.
    """)
    lesson.checkpoint("protected.c says", text,
                      "protected mode: CR0=0x00000011 CS=0x0010 DS limit=0xffffffff")
    lesson.checkpoint("mode after the run", cpu_mode_of(after).value, "protected")

    # -- 3. the GDT matters at the next segment load ------------------------------------------
    lesson.section("3. The descriptor is read when a selector is loaded")
    lesson.narrate("""
        To see the GDT at work, this snippet loads DS with selector `0x18` and halts. First
        with the GDT as it is; then with descriptor 3 marked *not present* (P = 0). Loading
        a not-present segment raises `#NP`, exception 11 (SDM vol. 3A, 6.15). Our guest has
        no IDT (IDTR limit 0), so delivering `#NP` fails with `#GP`, that becomes a *double
        fault*, and a fault while delivering a double fault is a **triple fault**: the CPU
        shuts down. KVM reports it as `KVM_EXIT_SHUTDOWN`, and minikvm says "crashed".
    """)
    lesson.code("""
        mov ax, 0x18
        mov ds, ax        ; reads GDT entry 3
        hlt
    """, "nasm")
    outcomes = {}
    for present in (1, 0):
        with Machine() as machine:
            machine.load_flat(LOAD_DS, 0x1000, mode="protected")
            descriptor = FLAT_DATA.replace(present=present)   # a copy, P changed
            machine.memory.write(GDT_ADDR + SEL_DATA, descriptor.to_bytes())
            stop = machine.run(timeout=5)
            outcomes[present] = stop
        lesson.result(f"P={present}", f"{stop.message}")
    lesson.narrate("""
        RIP 0x1004 is the `mov ds, ax`: the faulting instruction did not complete. The hidden
        parts the VMM set up were fine; what broke was the copy in memory -- the CPU reads it
        exactly when a selector is loaded.
    """)
    lesson.checkpoint("P=1", outcomes[1].kind.value, "halt")
    lesson.checkpoint("P=0", f"{outcomes[0].kind.value} at RIP {outcomes[0].rip:#x}",
                      "shutdown at RIP 0x1004")

    # -- 4. the project's API -------------------------------------------------------------------
    lesson.section("4. The same with minikvm: SegmentDescriptor and setup_protected_mode")
    lesson.narrate("""
        `minikvm.x86.gdt.SegmentDescriptor` packs and unpacks descriptors and describes them
        in words; `setup_protected_mode` does step 2 (plus MP and NE in CR0, the modern x87
        setup, and TR the way VM entry wants it). `Machine.load_guest` picks it for an ELF32.
    """)
    output = []
    with Machine(output=output.append) as machine:
        machine.load_guest(lesson.guest("protected.elf"))
        raw = machine.memory.read(GDT_ADDR, 32)
        entries = [SegmentDescriptor.unpack(int.from_bytes(raw[i:i + 8], "little"))
                   for i in range(0, 32, 8)]
        stop = machine.run(timeout=5)
        sregs = machine.vcpu.get_sregs()
        regs = machine.vcpu.get_regs()
    rows = [(f"{8 * i:#04x}", entry.describe()) for i, entry in enumerate(entries)]
    lesson.table("the machine's GDT, decoded", ("selector", "descriptor"), rows)
    for selector, words in rows:
        lesson.checkpoint(f"GDT {selector}", words)
    text = b"".join(output).decode().strip()
    lesson.result("the guest printed", text)
    lesson.result("CR0", flag_names(Cr0(sregs.cr0)))
    lesson.checkpoint("protected.c, set up by minikvm", text,
                      "protected mode: CR0=0x00000033 CS=0x0010 DS limit=0xffffffff")
    lesson.checkpoint("mode", f"{cpu_mode_of(sregs).value} {code_bitness(sregs, regs.rflags)}",
                      "protected 32")
    lesson.narrate("""
        **Exercise 05** (`lessons/exercises/05_gdt.md`): write a data descriptor by hand --
        base 0x10000, limit 64 KiB -- so that a guest's write through it lands where it
        should. `minikvm lesson check 05`.
    """)
    return lesson.finish()


if __name__ == "__main__":
    run_lesson(main)
