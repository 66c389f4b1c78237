/* protected.c: a C guest in 32-bit protected mode (ELF32, no paging).
 *
 * The VMM wrote a flat GDT and loaded CS/DS/... with its selectors before
 * starting us. We prove the mode from the inside:
 *   - CR0.PE is set and CR0.PG clear;
 *   - CS holds the VMM's 32-bit code selector (read with `mov %cs`);
 *   - `lsl` reads the data segment's limit from the GDT: a flat 4 GiB
 *     segment with 4 KiB granularity reports 0xffffffff;
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
    __asm__ volatile("lsl %1, %0" : "=r"(limit) : "r"((u32)ds));

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
