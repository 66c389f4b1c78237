/* smp.c: a Multiboot kernel that starts the other CPUs itself.
 *
 * At power-on only one CPU runs: the bootstrap processor (BSP). The others,
 * the application processors (APs), wait in "wait-for-SIPI" until the BSP
 * sends them, through its local APIC, an INIT and then a startup IPI (SIPI)
 * whose vector says where to begin: at vector * 4 KiB, in real mode (Intel
 * SDM vol. 3, 8.4 "Multiple-Processor (MP) Initialization", and 10.6
 * "Issuing Interprocessor Interrupts" for the ICR). So an AP needs a
 * *trampoline*: a few 16-bit instructions below 1 MiB that switch it to
 * protected mode and jump to C. This guest:
 *
 *   1. asks fw_cfg how many CPUs the machine has (NB_CPUS, as kvm-unit-tests
 *      does; 1 when there is no fw_cfg);
 *   2. software-enables its local APIC and copies the trampoline to 0x8000;
 *   3. sends INIT, SIPI, SIPI to "all excluding self" (vector 0x08 = 0x8000);
 *   4. each AP takes a stack, reads its APIC id from the LAPIC's ID register
 *      and from CPUID leaf 1 EBX[31:24], and reports under a spinlock;
 *   5. every CPU then adds 1 to a shared counter COUNT times, under the same
 *      lock; the BSP waits for all and checks the total is CPUs * COUNT and
 *      that each APIC id 0..CPUs-1 reported exactly once.
 *
 * With "hammer=K" on the command line each CPU also writes the byte
 * 0x80 + its APIC id K times to COM1 and to the debug console, with no lock:
 * the host checks that no byte is lost or garbled.
 *
 * Results at RESULT_ADDR (u32 words): marker "SMPK", CPUs (fw_cfg), APs that
 * started, the counter, the expected total, a bitmap of APIC ids seen
 * (two words), failures. Success: "smp: ok" and every CPU halts (status 0);
 * failure: status (code << 1) | 1 with code 2 (an AP did not come), 3 (the
 * count is wrong) or 4 (an APIC id twice, missing or out of range).
 */
#include "multiboot.h"

MULTIBOOT_HEADER(MULTIBOOT_PAGE_ALIGN | MULTIBOOT_MEMORY_INFO);
MULTIBOOT_ENTRY(bsp_main, 0x6f000);

#define MAX_CPUS 64
#define COUNT 50                   /* increments per CPU: small, kvm-pvm emulates each one */
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

#define COM1 0x3F8

static volatile u32 lock;          /* 0 free, 1 taken */
static volatile u32 counter;       /* the shared count, only touched under the lock */
static volatile u32 started;       /* APs that reported */
static volatile u32 finished;      /* APs that counted */
/* Named from the trampoline (assembly), so neither static nor optimised away. */
volatile u32 ap_next_stack __attribute__((used));  /* the trampoline takes stacks in order */
static volatile u32 seen[MAX_CPUS];
static volatile u32 hammer;        /* bytes each CPU writes unlocked (0: none) */
u8 ap_stacks[MAX_CPUS][4096] __attribute__((aligned(16), used));

/* -- the AP trampoline -------------------------------------------------------------
 * Assembled into this kernel, copied to TRAMPOLINE by the BSP. Addresses
 * inside it are computed for TRAMPOLINE ("label - trampoline_start +
 * 0x8000"), since it runs there, not where the linker put it. It loads its
 * own GDT (the APs share nothing with the BSP's setup but memory), sets
 * CR0.PE, far-jumps to 32-bit code, takes a stack and calls ap_main. */
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
    "    cmpl $64, %eax\n"                 /* MAX_CPUS stacks */
    "    jae 2f\n"
    "    incl %eax\n"
    "    shll $12, %eax\n"
    "    addl $ap_stacks, %eax\n"           /* the top of stack number n */
    "    movl %eax, %esp\n"
    "    movl $ap_main, %eax\n"            /* an absolute call: a relative one */
    "    call *%eax\n"                     /* would count from where we were linked */
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

static void spin_lock(volatile u32 *l)
{
    while (__atomic_exchange_n(l, 1, __ATOMIC_ACQUIRE))   /* xchg: test and set */
        while (*l)
            __asm__ volatile("pause");
}

static void spin_unlock(volatile u32 *l) { __atomic_store_n(l, 0, __ATOMIC_RELEASE); }

static u32 cpuid_apic_id(void)
{
    u32 a = 1, b, c = 0, d;
    __asm__ volatile("cpuid" : "+a"(a), "=b"(b), "+c"(c), "=d"(d));
    return b >> 24;
}

static u32 fw_cfg_u16(u16 key)
{
    outw(FW_CFG_SELECTOR, key);
    u32 lo = inb(FW_CFG_DATA);
    return lo | (u32)inb(FW_CFG_DATA) << 8;
}

static u32 fw_cfg_cpus(void)
{
    outw(FW_CFG_SELECTOR, FW_CFG_SIGNATURE);
    if (inb(FW_CFG_DATA) != 'Q' || inb(FW_CFG_DATA) != 'E' || inb(FW_CFG_DATA) != 'M'
        || inb(FW_CFG_DATA) != 'U')
        return 1;
    u32 n = fw_cfg_u16(FW_CFG_NB_CPUS);
    return n < 1 ? 1 : n > MAX_CPUS ? MAX_CPUS : n;
}

static void putdec(u32 v)
{
    char digits[10];
    int n = 0;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        putc_e9(digits[--n]);
}

static void send_ipi(u32 icr)
{
    lapic_write(LAPIC_ICR_HIGH, 0);
    lapic_write(LAPIC_ICR_LOW, icr);
    for (u32 i = 0; i < WAIT_SPINS && (lapic_read(LAPIC_ICR_LOW) & ICR_PENDING); i++)
        __asm__ volatile("pause");
}

/* Real hardware wants 10 ms after INIT and 200 us after each SIPI; KVM's
 * LAPIC acts at once, so a short spin stands for the wait here. */
static void short_delay(void)
{
    for (volatile u32 i = 0; i < 200; i++)
        __asm__ volatile("pause");
}

/* Say who I am, once, under the lock; note my id. */
static void report(const char *who)
{
    u32 id = lapic_read(LAPIC_ID) >> 24;
    u32 from_cpuid = cpuid_apic_id();
    spin_lock(&lock);
    puts_e9(who);
    puts_e9(": APIC id ");
    putdec(id);
    puts_e9(", CPUID says ");
    putdec(from_cpuid);
    puts_e9("\n");
    if (id < MAX_CPUS)
        seen[id]++;
    spin_unlock(&lock);
}

static void hammer_ports(void)
{
    u8 mark = (u8)(0x80 + (lapic_read(LAPIC_ID) >> 24));
    for (u32 i = 0; i < hammer; i++) {
        outb(COM1, mark);
        outb(DEBUGCON_PORT, mark);
    }
}

static void count(void)
{
    for (int i = 0; i < COUNT; i++) {
        spin_lock(&lock);
        counter = counter + 1;          /* a read and a write: wrong without the lock */
        spin_unlock(&lock);
    }
}

void __attribute__((used)) ap_main(void)
{
    report("AP");
    __atomic_add_fetch(&started, 1, __ATOMIC_SEQ_CST);
    hammer_ports();
    count();
    __atomic_add_fetch(&finished, 1, __ATOMIC_SEQ_CST);
    halt();
}

static u32 parse_hammer(const char *cmdline)
{
    static const char key[] = "hammer=";
    for (const char *p = cmdline; *p; p++) {
        int i = 0;
        while (key[i] && p[i] == key[i])
            i++;
        if (key[i])
            continue;
        u32 v = 0;
        for (p += i; *p >= '0' && *p <= '9' && v < 100000; p++)
            v = v * 10 + (u32)(*p - '0');
        return v;
    }
    return 0;
}

static int wait_for(volatile u32 *value, u32 target)
{
    for (u32 i = 0; i < WAIT_SPINS; i++) {
        if (*value >= target)
            return 1;
        __asm__ volatile("pause");
    }
    return 0;
}

void __attribute__((used)) bsp_main(u32 magic, const struct multiboot_info *info)
{
    volatile u32 *result = (volatile u32 *)RESULT_ADDR;
    u32 failures = 0, code = 0;

    if (magic == MULTIBOOT_BOOTLOADER_MAGIC && (info->flags & MBI_CMDLINE))
        hammer = parse_hammer((const char *)(uptr)info->cmdline);
    u32 cpus = fw_cfg_cpus();
    puts_e9("smp: ");
    putdec(cpus);
    puts_e9(" CPUs (fw_cfg)\n");

    lapic_write(LAPIC_SVR, SVR_ENABLE | 0xFF);   /* software-enable, spurious vector 0xFF */
    report("BSP");

    if (cpus > 1) {
        const u8 *from = trampoline_start;
        u8 *to = (u8 *)(uptr)TRAMPOLINE;
        while (from < trampoline_end)
            *to++ = *from++;
        send_ipi(ICR_ALL_BUT_SELF | ICR_ASSERT | ICR_INIT);
        short_delay();
        for (int i = 0; i < 2; i++) {         /* the SDM's INIT-SIPI-SIPI */
            send_ipi(ICR_ALL_BUT_SELF | ICR_ASSERT | ICR_STARTUP | (TRAMPOLINE >> 12));
            short_delay();
        }
        if (!wait_for(&started, cpus - 1)) {
            failures++;
            code = 2;
        }
    }
    hammer_ports();
    count();
    if (cpus > 1 && !wait_for(&finished, started)) {
        failures++;
        code = code ? code : 2;
    }

    u32 expected = (1 + started) * COUNT;
    spin_lock(&lock);
    u32 total = counter, seen_lo = 0, seen_hi = 0;
    for (u32 id = 0; id < MAX_CPUS; id++) {
        if (seen[id] > 1 || (id < cpus) != (seen[id] == 1)) {
            failures++;
            code = code ? code : 4;
        }
        if (seen[id]) {
            if (id < 32)
                seen_lo |= 1u << id;
            else
                seen_hi |= 1u << (id - 32);
        }
    }
    if (total != expected) {
        failures++;
        code = code ? code : 3;
    }
    puts_e9("smp: ");
    putdec(1 + started);
    puts_e9(" of ");
    putdec(cpus);
    puts_e9(" CPUs counted to ");
    putdec(total);
    puts_e9(" (expected ");
    putdec(expected);
    puts_e9(failures ? "): FAILED\n" : "): ok\n");
    spin_unlock(&lock);

    result[0] = 0x4b504d53;                   /* "SMPK" */
    result[1] = cpus;
    result[2] = started;
    result[3] = total;
    result[4] = expected;
    result[5] = seen_lo;
    result[6] = seen_hi;
    result[7] = failures;
    if (failures)
        guest_exit((u8)code);
    halt();
}
