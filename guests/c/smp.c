/* smp.c: a Multiboot kernel that starts the other CPUs itself.
 *
 * At power-on only one CPU runs: the bootstrap processor (BSP). The others,
 * the application processors (APs), wait in "wait-for-SIPI" until the BSP
 * sends them, through its local APIC, an INIT and then a startup IPI (SIPI)
 * whose vector says where to begin: at vector * 4 KiB, in real mode (Intel
 * SDM vol. 3, 8.4 "Multiple-Processor (MP) Initialization", and 10.6
 * "Issuing Interprocessor Interrupts" for the ICR). So an AP needs a
 * *trampoline*: a few 16-bit instructions below 1 MiB that switch it to
 * protected mode and jump to C (include/smp_start.h). This guest:
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
#include "smp_start.h"

MULTIBOOT_HEADER(MULTIBOOT_PAGE_ALIGN | MULTIBOOT_MEMORY_INFO);
MULTIBOOT_ENTRY(bsp_main, 0x6f000);

#define COUNT 50                   /* increments per CPU: small, kvm-pvm emulates each one */
#define COM1 0x3F8

static volatile u32 lock;          /* 0 free, 1 taken */
static volatile u32 counter;       /* the shared count, only touched under the lock */
static volatile u32 started;       /* APs that reported */
static volatile u32 finished;      /* APs that counted */
static volatile u32 seen[MAX_CPUS];
static volatile u32 hammer;        /* bytes each CPU writes unlocked (0: none) */

/* The lock: xchg swaps 1 into the lock word and returns what was there, in
 * one indivisible step (SDM vol. 3, 8.1.2.1: XCHG with memory is always
 * locked). Whoever got 0 back owns the lock; the others spin, reading
 * only, until it looks free (a read does not fight for the cache line). */
static void spin_lock(volatile u32 *l)
{
    while (__atomic_exchange_n(l, 1, __ATOMIC_ACQUIRE))
        while (*l)
            __asm__ volatile("pause");
}

static void spin_unlock(volatile u32 *l) { __atomic_store_n(l, 0, __ATOMIC_RELEASE); }

/* Say who I am, once, under the lock; note my id. */
static void report(const char *who)
{
    u32 id = lapic_id();
    u32 from_cpuid = cpuid_apic_id();
    spin_lock(&lock);
    puts_e9(who);
    puts_e9(": APIC id ");
    putdec_e9(id);
    puts_e9(", CPUID says ");
    putdec_e9(from_cpuid);
    puts_e9("\n");
    if (id < MAX_CPUS)
        seen[id]++;
    spin_unlock(&lock);
}

static void hammer_ports(void)
{
    u8 mark = (u8)(0x80 + lapic_id());
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

void __attribute__((used)) bsp_main(u32 magic, const struct multiboot_info *info)
{
    volatile u32 *result = (volatile u32 *)RESULT_ADDR;
    u32 failures = 0, code = 0;

    if (magic == MULTIBOOT_BOOTLOADER_MAGIC && (info->flags & MBI_CMDLINE))
        hammer = parse_hammer((const char *)(uptr)info->cmdline);
    u32 cpus = fw_cfg_cpus();
    puts_e9("smp: ");
    putdec_e9(cpus);
    puts_e9(" CPUs (fw_cfg)\n");

    report("BSP");

    if (cpus > 1) {
        start_aps();                          /* INIT-SIPI-SIPI: smp_start.h */
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
    putdec_e9(1 + started);
    puts_e9(" of ");
    putdec_e9(cpus);
    puts_e9(" CPUs counted to ");
    putdec_e9(total);
    puts_e9(" (expected ");
    putdec_e9(expected);
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
