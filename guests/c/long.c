/* long.c: a C guest in 64-bit long mode (ELF64).
 *
 * The VMM enabled paging with identity-mapped 2 MiB pages (CR4.PAE,
 * EFER.LME, CR0.PG, a 64-bit code segment) and jumped here. We prove it:
 *   1. 64-bit arithmetic that needs all 64 bits: fib(90) and a 64-bit
 *      multiply-rotate mix;
 *   2. our own page tables: we build a new PML4 that identity-maps the first
 *      2 MiB and also maps the virtual page VIRT_ALIAS to the physical page
 *      PHYS_TARGET, switch CR3 to it, and write MAGIC through VIRT_ALIAS.
 *      The host finds MAGIC at PHYS_TARGET, which proves the write went
 *      through our translation.
 * Results at RESULT_ADDR (u64 words): marker, fib(90), mix, CR3 we loaded,
 * the value read back through the identity mapping of PHYS_TARGET.
 */
#include "guest.h"

#define VIRT_ALIAS  0x00007f0000000000ull   /* canonical, far above RAM */
#define PHYS_TARGET 0x150000ull             /* a page inside 2 MiB of RAM */
#define MAGIC       0x5afec0de12345678ull

#define PTE_P  (1ull << 0)   /* present */
#define PTE_W  (1ull << 1)   /* writable */
#define PTE_PS (1ull << 7)   /* this PD entry maps a 2 MiB page */

static u64 pml4[512] __attribute__((aligned(4096)));
static u64 pdpt_low[512] __attribute__((aligned(4096)));
static u64 pd_low[512] __attribute__((aligned(4096)));
static u64 pdpt_alias[512] __attribute__((aligned(4096)));
static u64 pd_alias[512] __attribute__((aligned(4096)));
static u64 pt_alias[512] __attribute__((aligned(4096)));

static unsigned index_of(u64 va, int level) { return (va >> (12 + 9 * level)) & 511; }

void __attribute__((section(".text.start"), noreturn)) _start(void)
{
    volatile u64 *result = (volatile u64 *)RESULT_ADDR;

    u64 a = 0, b = 1;
    for (int i = 1; i < 90; i++) {   /* b = fib(i + 1): fib(90) = 2880067194370816120 */
        u64 t = a + b;
        a = b;
        b = t;
    }
    u64 mix = 0x0123456789abcdefull * 0x9e3779b97f4a7c15ull;
    mix = (mix << 17) | (mix >> 47);

    /* identity map 0 .. 2 MiB with one large page (code, stack, tables) */
    pd_low[0] = 0 | PTE_P | PTE_W | PTE_PS;
    pdpt_low[0] = (u64)(uptr)pd_low | PTE_P | PTE_W;
    pml4[0] = (u64)(uptr)pdpt_low | PTE_P | PTE_W;
    /* VIRT_ALIAS -> PHYS_TARGET through four levels of 4 KiB tables */
    pt_alias[index_of(VIRT_ALIAS, 0)] = PHYS_TARGET | PTE_P | PTE_W;
    pd_alias[index_of(VIRT_ALIAS, 1)] = (u64)(uptr)pt_alias | PTE_P | PTE_W;
    pdpt_alias[index_of(VIRT_ALIAS, 2)] = (u64)(uptr)pd_alias | PTE_P | PTE_W;
    pml4[index_of(VIRT_ALIAS, 3)] = (u64)(uptr)pdpt_alias | PTE_P | PTE_W;

    u64 cr3 = (u64)(uptr)pml4;
    __asm__ volatile("mov %0, %%cr3" : : "r"(cr3) : "memory");

    *(volatile u64 *)VIRT_ALIAS = MAGIC;
    u64 back = *(volatile u64 *)PHYS_TARGET;   /* identity view of the same page */

    result[0] = 0x4c4f4e474d4f4445ull;  /* "LONGMODE" marker */
    result[1] = b;
    result[2] = mix;
    result[3] = cr3;
    result[4] = back;

    puts_e9("long mode: fib(90)=");
    puthex_e9(b, 16);
    puts_e9(" alias write read back ");
    puthex_e9(back, 16);
    puts_e9("\n");
    halt();
}
