/* paged.c: a C guest in 32-bit protected mode with 32-bit paging (ELF32).
 *
 * The VMM turned on 32-bit paging (CR0.PG, CR4.PSE, identity-mapped 4 MiB
 * pages) before starting us. We build our own page directory: 4 MiB PSE
 * identity mapping of the first 4 MiB, and the virtual page VIRT_ALIAS
 * mapped through a 4 KiB page table to PHYS_TARGET. After loading CR3 we
 * write MAGIC through VIRT_ALIAS; the host finds it at PHYS_TARGET.
 * Results at RESULT_ADDR (u32 words): marker, CR0, CR4, CR3, read-back.
 *
 * Needs hardware KVM: kvm-pvm cannot run 32-bit paging (the test skips there).
 */
#include "guest.h"

#define VIRT_ALIAS  0xc0000000u
#define PHYS_TARGET 0x150000u
#define MAGIC       0xc0ffee32u

#define PDE_P  (1u << 0)
#define PDE_W  (1u << 1)
#define PDE_PS (1u << 7)     /* 4 MiB page (CR4.PSE) */

static u32 page_dir[1024] __attribute__((aligned(4096)));
static u32 page_table[1024] __attribute__((aligned(4096)));

void __attribute__((section(".text.start"), noreturn)) _start(void)
{
    volatile u32 *result = (volatile u32 *)RESULT_ADDR;
    u32 cr0, cr4;

    page_dir[0] = 0 | PDE_P | PDE_W | PDE_PS;
    page_table[(VIRT_ALIAS >> 12) & 1023] = PHYS_TARGET | PDE_P | PDE_W;
    page_dir[VIRT_ALIAS >> 22] = (u32)(uptr)page_table | PDE_P | PDE_W;

    u32 cr3 = (u32)(uptr)page_dir;
    __asm__ volatile("mov %0, %%cr3" : : "r"(cr3) : "memory");
    *(volatile u32 *)VIRT_ALIAS = MAGIC;
    u32 back = *(volatile u32 *)PHYS_TARGET;

    __asm__ volatile("mov %%cr0, %0" : "=r"(cr0));
    __asm__ volatile("mov %%cr4, %0" : "=r"(cr4));
    result[0] = 0x50414745;   /* "PAGE" marker */
    result[1] = cr0;
    result[2] = cr4;
    result[3] = cr3;
    result[4] = back;
    puts_e9("paged mode: alias write read back ");
    puthex_e9(back, 8);
    puts_e9("\n");
    halt();
}
