/* single_step.c: the C baseline for benchmarks/single_step.py.
 *
 * Single-steps the same long-mode guest the Python debugger steps, from the
 * same state, doing per instruction what Debugger.step_instruction() and
 * record.changed do:
 *   - KVM_RUN with KVM_GUESTDBG_SINGLESTEP (and BLOCKIRQ where offered),
 *     check that the exit is KVM_EXIT_DEBUG with DR6.BS;
 *   - take the registers KVM left in the run page (KVM_CAP_SYNC_REGS with
 *     kvm_valid_regs = KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS, as the
 *     Python machine asks for), a copy of struct kvm_regs;
 *   - "changed": compare the 18 u64 of kvm_regs with those before the step;
 *   - after a one-byte step, the hlt check: translate the instruction's
 *     linear address through the guest's page tables (CR0/CR3/CR4/EFER from
 *     the synced sregs) and look whether the byte there is 0xF4.
 * With IRQCHIP=1 the VM has the in-kernel irqchip and PIT (KVM_CREATE_IRQCHIP,
 * KVM_CREATE_PIT2, as the minikvm CLI's default board); where BLOCKIRQ is on
 * too the byte is read before each step instead, as the Python stepper then
 * does (its steps may let interrupts into a hlt): a hlt with IF set
 * would let interrupts in, an iret (0xCF, or 0x66/REX then 0xCF: a second
 * byte) would be stepped under a watchdog; after a one-byte step the same byte
 * is the hlt check.
 * With SYNC=0 it does what the old baseline did instead: KVM_GET_REGS after
 * each step, no sync regs, no changed, no hlt check.
 *
 * It does not set up long mode itself: the Python side writes the vCPU state
 * it created (kvm_regs, kvm_sregs and guest RAM, in the kernel's own struct
 * layouts) to a file, and this program loads it. One untimed step first (the
 * Python loop makes one too, to issue KVM_SET_GUEST_DEBUG), then STEPS timed.
 *
 * A study, not a baseline: with TOUCH_KB the loop also reads and writes one
 * byte in every 64-byte cache line of a TOUCH_KB buffer before each KVM_RUN,
 * as a stand-in for the memory an interpreter touches between two steps; it
 * shows how the kernel's part of a step grows with that footprint
 * (single_step.py --footprint).
 *
 * usage: single_step STATE_FILE STEPS BLOCKIRQ(0|1) SYNC(0|1) IRQCHIP(0|1) [TOUCH_KB]
 * state file: u64 memory size, struct kvm_regs, struct kvm_sregs, memory.
 * prints: steps wall_ns cpu_ns final_rip final_rax final_rdx changed_total hlt_checks
 *         (bytes read for the hlt check; with IRQCHIP=1 and BLOCKIRQ=1 one per step and
 *         the iret's second after a prefix)
 *         system_ns (the kernel's part of cpu_ns, getrusage's estimate)
 */
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#ifndef KVM_GUESTDBG_BLOCKIRQ
#define KVM_GUESTDBG_BLOCKIRQ 0x00100000
#endif
#define DR6_BS (1u << 14)
#define CR0_PG (1ull << 31)
#define CR4_PSE (1ull << 4)
#define EFER_LMA (1ull << 10)
#define PTE_P 1ull
#define PTE_PS (1ull << 7)
#define ADDR_MASK 0x000ffffffffff000ull
#define RFLAGS_IF (1ull << 9)
#define NREGS 18 /* struct kvm_regs: 16 GPRs, rip, rflags, all u64 */
_Static_assert(sizeof(struct kvm_regs) == NREGS * 8, "kvm_regs is 18 u64");

static uint8_t *mem;
static uint64_t mem_size;

static void die(const char *what) { perror(what); exit(1); }

static long long ns_of(clockid_t clock)
{
    struct timespec t;
    clock_gettime(clock, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

/* System time so far (the kernel samples the user/system split at its tick). */
static long long system_ns(void)
{
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    return usage.ru_stime.tv_sec * 1000000000LL + usage.ru_stime.tv_usec * 1000LL;
}

static int read_u64(uint64_t phys, uint64_t *value)
{
    if (phys > mem_size - 8) return 0;
    memcpy(value, mem + phys, 8);
    return 1;
}

/* Guest-physical address of a linear one; -1 when unmapped (SDM vol. 3A, 4.3-4.5). */
static int64_t translate(const struct kvm_sregs *s, uint64_t linear)
{
    if (!(s->cr0 & CR0_PG)) return (int64_t)(linear & 0xffffffffull);
    uint64_t entry;
    if (s->efer & EFER_LMA) {
        uint64_t table = s->cr3 & ADDR_MASK;
        for (int level = 3; level >= 0; level--) {
            unsigned index = (linear >> (12 + 9 * level)) & 511;
            if (!read_u64(table + 8 * index, &entry) || !(entry & PTE_P)) return -1;
            if (level == 0 || ((level == 1 || level == 2) && (entry & PTE_PS))) {
                uint64_t size = 1ull << (12 + 9 * level);
                return (int64_t)((entry & ADDR_MASK & ~(size - 1)) | (linear & (size - 1)));
            }
            table = entry & ADDR_MASK;
        }
        return -1;
    }
    uint32_t pde, pte;
    uint64_t dir = (s->cr3 & 0xfffff000ull) + 4 * ((linear >> 22) & 1023);
    if (dir > mem_size - 4) return -1;
    memcpy(&pde, mem + dir, 4);
    if (!(pde & PTE_P)) return -1;
    if ((s->cr4 & CR4_PSE) && (pde & PTE_PS))
        return (int64_t)((pde & 0xffc00000u) | (linear & 0x3fffff));
    uint64_t table = (pde & 0xfffff000u) + 4 * ((linear >> 12) & 1023);
    if (table > mem_size - 4) return -1;
    memcpy(&pte, mem + table, 4);
    if (!(pte & PTE_P)) return -1;
    return (int64_t)((pte & 0xfffff000u) | (linear & 0xfff));
}

/* The byte at a linear address; -1 when unmapped or outside RAM. */
static int byte_at(const struct kvm_sregs *s, uint64_t linear)
{
    int64_t phys = translate(s, linear);
    return phys >= 0 && (uint64_t)phys < mem_size ? mem[phys] : -1;
}

int main(int argc, char **argv)
{
    if (argc != 6 && argc != 7) {
        fprintf(stderr, "usage: %s STATE STEPS BLOCKIRQ SYNC IRQCHIP [TOUCH_KB]\n", argv[0]);
        return 2;
    }
    unsigned long steps = strtoul(argv[2], NULL, 0);
    int blockirq = atoi(argv[3]);
    int sync = atoi(argv[4]);
    int irqchip = atoi(argv[5]);
    unsigned long touch_kb = argc == 7 ? strtoul(argv[6], NULL, 0) : 0;
    if (touch_kb > 65536) { fprintf(stderr, "TOUCH_KB: at most 65536\n"); return 2; }
    unsigned long touch = touch_kb * 1024;
    volatile uint8_t *footprint = NULL;
    if (touch) {
        footprint = malloc(touch);
        if (!footprint) die("malloc");
        memset((void *)footprint, 0, touch);
    }

    FILE *f = fopen(argv[1], "rb");
    if (!f) die(argv[1]);
    struct kvm_regs regs = {0};
    struct kvm_sregs sregs;
    if (fread(&mem_size, sizeof mem_size, 1, f) != 1 || fread(&regs, sizeof regs, 1, f) != 1 ||
        fread(&sregs, sizeof sregs, 1, f) != 1 || mem_size < 8 || mem_size > (1ull << 30)) {
        fprintf(stderr, "bad state file\n");
        return 2;
    }
    mem = mmap(NULL, mem_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) die("mmap");
    if (fread(mem, 1, mem_size, f) != mem_size) { fprintf(stderr, "short state file\n"); return 2; }
    fclose(f);

    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0) die("/dev/kvm");
    int vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm < 0) die("KVM_CREATE_VM");
    if (ioctl(vm, KVM_SET_TSS_ADDR, 0xfffbd000ul) < 0) die("KVM_SET_TSS_ADDR");
    struct kvm_userspace_memory_region region = {
        .slot = 0, .guest_phys_addr = 0, .memory_size = mem_size, .userspace_addr = (uint64_t)mem,
    };
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) die("KVM_SET_USER_MEMORY_REGION");
    if (irqchip) {
        if (ioctl(vm, KVM_CREATE_IRQCHIP, 0) < 0) die("KVM_CREATE_IRQCHIP");
        struct kvm_pit_config pit = {.flags = KVM_PIT_SPEAKER_DUMMY};
        if (ioctl(vm, KVM_CREATE_PIT2, &pit) < 0) die("KVM_CREATE_PIT2");
    }
    int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    if (vcpu < 0) die("KVM_CREATE_VCPU");
    int size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    struct kvm_run *run = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    if (run == MAP_FAILED) die("mmap vcpu");
    if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0) die("KVM_SET_SREGS");
    if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0) die("KVM_SET_REGS");
    if (sync) run->kvm_valid_regs = KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS;

    struct kvm_guest_debug debug = {
        .control = KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP |
                   (blockirq ? KVM_GUESTDBG_BLOCKIRQ : 0),
    };
    if (ioctl(vcpu, KVM_SET_GUEST_DEBUG, &debug) < 0) die("KVM_SET_GUEST_DEBUG");

    unsigned long changed_total = 0, hlt_checks = 0;
    int read_first = irqchip && blockirq; /* before each step: the stepper's wake_hlts */
    long long wall0 = 0, cpu0 = 0, system0 = 0;
    for (unsigned long i = 0; i <= steps; i++) {
        if (i == 1) {
            wall0 = ns_of(CLOCK_MONOTONIC);
            cpu0 = ns_of(CLOCK_PROCESS_CPUTIME_ID);
            system0 = system_ns();
        }
        uint64_t pc = regs.rip; /* 64-bit code: the linear address is RIP */
        for (unsigned long line = 0; line < touch; line += 64)
            footprint[line]++;
        int first = -1; /* the instruction's first byte, read before it runs (IRQCHIP) */
        int iret = 0;
        if (read_first && sync && i > 0) {
            first = byte_at(&run->s.regs.sregs, pc);
            hlt_checks++;
            if (first == 0xf4 && (regs.rflags & RFLAGS_IF)) {
                fprintf(stderr, "a hlt with IF set at %#llx\n", (unsigned long long)pc);
                return 3;
            }
            if (first == 0xcf) {
                iret = 1;
            } else if (first == 0x66 || (first >= 0x40 && first <= 0x4f)) {
                hlt_checks++;
                iret = byte_at(&run->s.regs.sregs, pc + 1) == 0xcf;
            }
            if (iret) {
                fprintf(stderr, "an iret at %#llx\n", (unsigned long long)pc);
                return 3;
            }
        }
        if (ioctl(vcpu, KVM_RUN, 0) < 0) die("KVM_RUN");
        if (run->exit_reason != KVM_EXIT_DEBUG || !(run->debug.arch.dr6 & DR6_BS)) {
            fprintf(stderr, "step %lu: unexpected exit %u\n", i, run->exit_reason);
            return 3;
        }
        if (!sync) {
            if (ioctl(vcpu, KVM_GET_REGS, &regs) < 0) die("KVM_GET_REGS");
            continue;
        }
        uint64_t before[NREGS], after[NREGS];
        memcpy(before, &regs, sizeof before);
        regs = run->s.regs.regs;
        memcpy(after, &regs, sizeof after);
        unsigned changed = 0;
        for (int r = 0; r < NREGS; r++)
            changed |= (unsigned)(before[r] != after[r]) << r;
        if (i > 0) changed_total += (unsigned)__builtin_popcount(changed);
        if (read_first) {
            if (first == 0xf4 && run->debug.arch.pc - pc == 1) {
                fprintf(stderr, "stepped over hlt at %#llx\n", (unsigned long long)pc);
                return 3;
            }
        } else if (run->debug.arch.pc - pc == 1) {
            hlt_checks += i > 0;
            if (byte_at(&run->s.regs.sregs, pc) == 0xf4) {
                fprintf(stderr, "stepped over hlt at %#llx\n", (unsigned long long)pc);
                return 3;
            }
        }
    }
    long long wall = ns_of(CLOCK_MONOTONIC) - wall0, cpu = ns_of(CLOCK_PROCESS_CPUTIME_ID) - cpu0;
    long long system = system_ns() - system0;
    if (!sync && ioctl(vcpu, KVM_GET_REGS, &regs) < 0) die("KVM_GET_REGS");
    printf("%lu %lld %lld %llu %llu %llu %lu %lu %lld\n", steps, wall, cpu,
           (unsigned long long)regs.rip, (unsigned long long)regs.rax,
           (unsigned long long)regs.rdx, changed_total, hlt_checks, system);
    return 0;
}
