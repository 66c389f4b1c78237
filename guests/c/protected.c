/* protected.c: a C guest in 32-bit protected mode (ELF32, no paging).
 *
 * The VMM wrote a flat GDT and loaded CS/DS/... with its selectors before
 * starting us. We prove the mode from the inside:
 *   - CR0.PE is set and CR0.PG clear;
 *   - CS holds the VMM's 32-bit code selector (read with `mov %cs`);
 *   - the data segment's limit, decoded from its descriptor in the GDT
 *     (found with `sgdt`): 20 limit bits scaled by 4 KiB granularity, so a
 *     flat 4 GiB segment reports 0xffffffff. (`lsl` would do this in one
 *     instruction, but kvm-pvm's instruction emulator does not know it.)
 *   - 32-bit arithmetic wraps at 2^32.
 * Results go to RESULT_ADDR as u32 words, in this order.
 */
#include "guest.h"

void __attribute__((section(".text.start"), noreturn)) _start(void)
{
    volatile u32 *result = (volatile u32 *)RESULT_ADDR;
    u32 cr0, limit;
    u16 cs, ds;

    __asm__ volatile("mov %%cr0, %0" : "=r"(cr0));
    __asm__ volatile("mov %%cs, %0" : "=r"(cs));
    __asm__ volatile("mov %%ds, %0" : "=r"(ds));
    struct { u16 limit; u32 base; } __attribute__((packed)) gdtr;
    __asm__ volatile("sgdt %0" : "=m"(gdtr));
    const volatile u8 *d = (const volatile u8 *)(uptr)(gdtr.base + (ds & ~7u));
    limit = d[0] | (d[1] << 8) | ((u32)(d[6] & 0x0f) << 16);
    if (d[6] & 0x80)                 /* G: the limit counts 4 KiB pages */
        limit = (limit << 12) | 0xfff;

    u32 wrap = 0xfffffff0u;
    for (int i = 0; i < 0x20; i++)
        wrap++;                      /* 0xfffffff0 + 0x20 = 0x10 (mod 2^32) */

    result[0] = 0x50524f54;          /* "PROT" marker */
    result[1] = cr0;
    result[2] = cs;
    result[3] = limit;
    result[4] = wrap;

    puts_e9("protected mode: CR0=");
    puthex_e9(cr0, 8);
    puts_e9(" CS=");
    puthex_e9(cs, 4);
    puts_e9(" DS limit=");
    puthex_e9(limit, 8);
    puts_e9("\n");
    halt();
}
