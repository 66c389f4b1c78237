"""Exercise 06, a reference solution: a 4-level page walk of your own.

The checker runs guests/c/long.c on a real machine until it halts (its CR3
then points at the page tables it built itself: a 2 MiB page for the first
2 MiB, and 4 KiB pages for its alias at 0x7f0000000000), and calls
``walk(memory, cr3, vaddr)`` for a dozen addresses, comparing each answer
with KVM_TRANSLATE's.

The task (06_walk.md): this walker only knows 4 KiB pages. Make it handle
a PD entry with PS (bit 7) set -- a 2 MiB page -- too.
Check with:  minikvm lesson check 06
"""

PRESENT = 1 << 0
PS = 1 << 7                                # "page size": this entry maps a page itself
ADDRESS_MASK = 0x000F_FFFF_FFFF_F000       # bits 51:12 of an entry: a physical address
LEVELS = (("PML4", 39), ("PDPT", 30), ("PD", 21), ("PT", 12))


def walk(memory, cr3: int, vaddr: int) -> int | None:
    """The guest-physical address of ``vaddr``, or None when it is not mapped.

    ``memory.read_u64(address)`` reads 8 bytes of guest RAM (little-endian).
    """
    table = cr3 & ADDRESS_MASK
    for level, shift in LEVELS:
        index = (vaddr >> shift) & 0x1FF            # 9 bits of the address per level
        entry = memory.read_u64(table + 8 * index)
        if not entry & PRESENT:
            return None
        if entry & PS and level in ("PDPT", "PD"):
            size = 1 << shift                       # 1 GiB or 2 MiB
            return (entry & ADDRESS_MASK & ~(size - 1)) | (vaddr & (size - 1))
        table = entry & ADDRESS_MASK
    return table | (vaddr & 0xFFF)                  # after the PT: a 4 KiB page
