/* smp_start.h: how a BSP starts the other CPUs (the APs) of a PC.
 *
 * At power-on only the bootstrap processor (BSP) runs; every application
 * processor (AP) waits in "wait-for-SIPI" until the BSP sends it, through
 * its local APIC, an INIT and then a startup IPI (SIPI) whose 8-bit vector
 * says where to begin: at vector * 4 KiB, in real mode, CS = vector << 8,
 * IP = 0 (Intel SDM vol. 3, 8.4 "Multiple-Processor (MP) Initialization";
 * 10.6 "Issuing Interprocessor Interrupts" for the ICR). So an AP needs a
 * *trampoline*: a few 16-bit instructions below 1 MiB that load a GDT,
 * switch to protected mode and call C.
 *
 * A guest including this file defines `void ap_main(void)` (where each AP
 * lands, on a stack of its own) and calls start_aps(cpus) on the BSP.
 * Also here: the local APIC registers, the APIC id two ways (the LAPIC's
 * ID register, CPUID leaf 1), the number of CPUs from fw_cfg.
 */
#ifndef MINIKVM_SMP_START_H
#define MINIKVM_SMP_START_H

#include "guest.h"

#define MAX_CPUS 64
#define WAIT_SPINS 20000000u       /* a bound on every wait, so a lost AP fails, not hangs */

/* The local APIC, memory-mapped at its reset base (SDM 10.4.1). */
#define LAPIC_BASE      0xFEE00000u
#define LAPIC_ID        0x020      /* bits 31:24: this CPU's APIC id */
#define LAPIC_SVR       0x0F0      /* spurious-interrupt vector; bit 8 enables the APIC */
#define LAPIC_ICR_LOW   0x300      /* writing it sends the IPI */
#define LAPIC_ICR_HIGH  0x310      /* bits 31:24: destination (unused with a shorthand) */
#define SVR_ENABLE      0x100
#define ICR_INIT        (5u << 8)  /* delivery mode INIT */
#define ICR_STARTUP     (6u << 8)  /* delivery mode start-up (SIPI) */
#define ICR_PENDING     (1u << 12) /* delivery status: the IPI is not sent yet */
#define ICR_ASSERT      (1u << 14) /* level: assert */
#define ICR_ALL_BUT_SELF (3u << 18)  /* destination shorthand */

#define TRAMPOLINE      0x8000u    /* the APs start here: SIPI vector 0x08 */

/* fw_cfg (QEMU docs/specs/fw_cfg.rst): select with a 16-bit write, read bytes. */
#define FW_CFG_SELECTOR 0x510
#define FW_CFG_DATA     0x511
#define FW_CFG_SIGNATURE 0x00
#define FW_CFG_NB_CPUS   0x05

void ap_main(void);                /* the including guest's */

/* Named from the trampoline (assembly), so neither static nor optimised away. */
volatile u32 ap_next_stack __attribute__((used));  /* the trampoline takes stacks in order */
u8 ap_stacks[MAX_CPUS][4096] __attribute__((aligned(16), used));

/* -- the AP trampoline -------------------------------------------------------------
 * Assembled into the kernel, copied to TRAMPOLINE by the BSP. Addresses
 * inside it are computed for TRAMPOLINE ("label - trampoline_start +
 * 0x8000"), since it runs there, not where the linker put it; for the same
 * reason it calls ap_main through a register (a relative call would count
 * from the wrong place). It loads its own GDT (an AP shares nothing with the
 * BSP's setup but memory), sets CR0.PE, far-jumps to 32-bit code, takes a
 * stack and calls ap_main. */
#define T(label) "(" #label " - trampoline_start + 0x8000)"
__asm__(
    ".section .text\n"
    ".globl trampoline_start, trampoline_end\n"
    ".code16\n"
    "trampoline_start:\n"
    "    cli\n"
    "    xorw %ax, %ax\n"
    "    movw %ax, %ds\n"
    "    lgdtl " T(tramp_gdtr) "\n"
    "    movl %cr0, %eax\n"
    "    orl $1, %eax\n"                    /* CR0.PE: protected mode */
    "    movl %eax, %cr0\n"
    "    ljmpl $0x08, $" T(tramp_32) "\n"   /* reload CS from our GDT */
    ".code32\n"
    "tramp_32:\n"
    "    movw $0x10, %ax\n"
    "    movw %ax, %ds\n"
    "    movw %ax, %es\n"
    "    movw %ax, %ss\n"
    "    movw %ax, %fs\n"
    "    movw %ax, %gs\n"
    "    movl $1, %eax\n"
    "    lock xaddl %eax, ap_next_stack\n"  /* my stack number, atomically */
    "    cmpl $64, %eax\n"                  /* MAX_CPUS stacks */
    "    jae 2f\n"
    "    incl %eax\n"
    "    shll $12, %eax\n"
    "    addl $ap_stacks, %eax\n"           /* the top of stack number n */
    "    movl %eax, %esp\n"
    "    movl $ap_main, %eax\n"             /* an absolute call: a relative one */
    "    call *%eax\n"                      /* would count from where we were linked */
    "2:  cli\n"
    "    hlt\n"
    "    jmp 2b\n"
    ".p2align 3\n"
    "tramp_gdt:\n"
    "    .quad 0\n"
    "    .quad 0x00CF9A000000FFFF\n"        /* 0x08: flat 32-bit code, ring 0 */
    "    .quad 0x00CF92000000FFFF\n"        /* 0x10: flat data */
    "tramp_gdtr:\n"
    "    .word 3 * 8 - 1\n"
    "    .long " T(tramp_gdt) "\n"
    "trampoline_end:\n"
    ".previous\n");
extern const u8 trampoline_start[], trampoline_end[];

/* -- helpers -------------------------------------------------------------------------- */

static inline u32 lapic_read(u32 reg) { return mmio_read32(LAPIC_BASE + reg); }
static inline void lapic_write(u32 reg, u32 v) { mmio_write32(LAPIC_BASE + reg, v); }
static inline u32 lapic_id(void) { return lapic_read(LAPIC_ID) >> 24; }

static inline u32 cpuid_apic_id(void)
{
    u32 a = 1, b, c = 0, d;
    __asm__ volatile("cpuid" : "+a"(a), "=b"(b), "+c"(c), "=d"(d));
    return b >> 24;
}

/* How many CPUs the machine has: fw_cfg's NB_CPUS (1 without fw_cfg). */
static inline u32 fw_cfg_cpus(void)
{
    outw(FW_CFG_SELECTOR, FW_CFG_SIGNATURE);
    if (inb(FW_CFG_DATA) != 'Q' || inb(FW_CFG_DATA) != 'E' || inb(FW_CFG_DATA) != 'M'
        || inb(FW_CFG_DATA) != 'U')
        return 1;
    outw(FW_CFG_SELECTOR, FW_CFG_NB_CPUS);
    u32 n = inb(FW_CFG_DATA);
    n |= (u32)inb(FW_CFG_DATA) << 8;
    return n < 1 ? 1 : n > MAX_CPUS ? MAX_CPUS : n;
}

static inline void send_ipi(u32 icr)
{
    lapic_write(LAPIC_ICR_HIGH, 0);
    lapic_write(LAPIC_ICR_LOW, icr);
    for (u32 i = 0; i < WAIT_SPINS && (lapic_read(LAPIC_ICR_LOW) & ICR_PENDING); i++)
        __asm__ volatile("pause");
}

/* Real hardware wants 10 ms after INIT and 200 us after each SIPI; KVM's
 * LAPIC acts at once, so a short spin stands for the wait here. */
static inline void short_delay(void)
{
    for (volatile u32 i = 0; i < 200; i++)
        __asm__ volatile("pause");
}

/* Wait (bounded) until *value reaches target; 0 when it never did. */
static inline int wait_for(volatile u32 *value, u32 target)
{
    for (u32 i = 0; i < WAIT_SPINS; i++) {
        if (*value >= target)
            return 1;
        __asm__ volatile("pause");
    }
    return 0;
}

/* On the BSP: software-enable the local APIC, copy the trampoline below
 * 1 MiB, then INIT, SIPI, SIPI to "all excluding self" -- the SDM's
 * sequence. Each AP ends up in ap_main. */
static inline void start_aps(void)
{
    lapic_write(LAPIC_SVR, SVR_ENABLE | 0xFF);   /* spurious vector 0xFF */
    const u8 *from = trampoline_start;
    u8 *to = (u8 *)(uptr)TRAMPOLINE;
    while (from < trampoline_end)
        *to++ = *from++;
    send_ipi(ICR_ALL_BUT_SELF | ICR_ASSERT | ICR_INIT);
    short_delay();
    for (int i = 0; i < 2; i++) {
        send_ipi(ICR_ALL_BUT_SELF | ICR_ASSERT | ICR_STARTUP | (TRAMPOLINE >> 12));
        short_delay();
    }
}

#endif
