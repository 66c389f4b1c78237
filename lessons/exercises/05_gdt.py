"""Exercise 05, starting point: a segment descriptor, packed by hand.

The checker calls ``data_descriptor()``, writes the 64-bit value it returns
into entry 4 of the GDT of a protected-mode machine (selector 0x20), and runs
a guest that does

    mov  $0x20, %ax
    mov  %ax, %es                 # the CPU reads your descriptor now
    movl $0x600dc0de, %es:0       # a write through it
    hlt

The task (05_gdt.md): a present, ring-0, 32-bit, writable data segment with
base 0x10000 and a limit of 64 KiB (0xFFFF, byte granularity), so that the
write lands at physical 0x10000. Check with:  minikvm lesson check 05
"""


def data_descriptor() -> int:
    """The descriptor as one 64-bit number (byte 0 of the GDT entry is bits 7:0)."""
    base = 0x10000
    limit = 0xFFFF
    access = 0x93   # P=1, DPL=0, S=1, type=0b0011 (data, read/write, accessed)
    flags = 0x4     # G=0 (limit in bytes), D/B=1 (32-bit), L=0, AVL=0

    # TODO: this puts every field in the wrong place. Pack them as Intel SDM
    # vol. 3A, figure 3-8 shows (see 05_gdt.md).
    return base | limit << 32 | access << 48 | flags << 56
