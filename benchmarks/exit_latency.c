/* exit_latency.c: the C baseline for benchmarks/exit_latency.py.
 *
 * Runs the portloop guest (a real-mode loop of `out` to an unclaimed port)
 * with the bare minimum a VMM must do per exit: KVM_RUN, look at the exit
 * reason, loop. MODE says how much more it does, to match each Python loop:
 *   0  nothing more (no KVM_CAP_SYNC_REGS);
 *   1  KVM_CAP_SYNC_REGS on (kvm_valid_regs = KVM_SYNC_X86_REGS |
 *      KVM_SYNC_X86_SREGS, as the Python machine sets it): KVM copies the
 *      registers into the run page at every exit, nobody reads them;
 *   2  as 1, and RIP read from the synced registers at every exit, the
 *      final HLT included (what a Python listener's ExitEvent.rip costs):
 *      summed, so that the Python side can check it saw the same RIPs.
 * Prints: exits wall_ns cpu_ns rip_sum
 *
 * usage: exit_latency GUEST.bin COUNT [MODE]
 */
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define MEM_SIZE (2u << 20)
#define LOAD_ADDR 0x1000u
#define COUNT_OFFSET 4u /* where portloop keeps its iteration count */

static void die(const char *what) { perror(what); exit(1); }

static long long ns_of(clockid_t clock)
{
    struct timespec t;
    clock_gettime(clock, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

int main(int argc, char **argv)
{
    if (argc != 3 && argc != 4) {
        fprintf(stderr, "usage: %s GUEST.bin COUNT [MODE]\n", argv[0]);
        return 2;
    }
    uint32_t count = (uint32_t)strtoul(argv[2], NULL, 0);
    int mode = argc == 4 ? atoi(argv[3]) : 0;

    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0) die("/dev/kvm");
    int vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm < 0) die("KVM_CREATE_VM");
    if (ioctl(vm, KVM_SET_TSS_ADDR, 0xfffbd000ul) < 0) die("KVM_SET_TSS_ADDR");

    uint8_t *mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) die("mmap");
    FILE *f = fopen(argv[1], "rb");
    if (!f) die(argv[1]);
    size_t n = fread(mem + LOAD_ADDR, 1, MEM_SIZE - LOAD_ADDR, f);
    fclose(f);
    if (n < COUNT_OFFSET + 4) { fprintf(stderr, "guest too small\n"); return 2; }
    memcpy(mem + LOAD_ADDR + COUNT_OFFSET, &count, 4);

    struct kvm_userspace_memory_region region = {
        .slot = 0, .guest_phys_addr = 0, .memory_size = MEM_SIZE, .userspace_addr = (uint64_t)mem,
    };
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) die("KVM_SET_USER_MEMORY_REGION");

    int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    if (vcpu < 0) die("KVM_CREATE_VCPU");
    int size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    struct kvm_run *run = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    if (run == MAP_FAILED) die("mmap vcpu");

    struct kvm_sregs sregs;
    if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0) die("KVM_GET_SREGS");
    sregs.cs.base = 0; sregs.cs.selector = 0;
    if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0) die("KVM_SET_SREGS");
    struct kvm_regs regs = { .rip = LOAD_ADDR, .rflags = 2 };
    if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0) die("KVM_SET_REGS");
    if (mode >= 1) run->kvm_valid_regs = KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS;

    unsigned long exits = 0;
    unsigned long long rip_sum = 0;
    long long wall0 = ns_of(CLOCK_MONOTONIC), cpu0 = ns_of(CLOCK_PROCESS_CPUTIME_ID);
    for (;;) {
        if (ioctl(vcpu, KVM_RUN, 0) < 0) die("KVM_RUN");
        if (run->exit_reason == KVM_EXIT_IO) {
            exits++;
            if (mode == 2) rip_sum += run->s.regs.regs.rip;
            continue;
        }
        if (run->exit_reason == KVM_EXIT_HLT) {
            if (mode == 2) rip_sum += run->s.regs.regs.rip; /* a listener sees it too */
            break;
        }
        fprintf(stderr, "unexpected exit %u\n", run->exit_reason);
        return 3;
    }
    long long wall = ns_of(CLOCK_MONOTONIC) - wall0, cpu = ns_of(CLOCK_PROCESS_CPUTIME_ID) - cpu0;
    printf("%lu %lld %lld %llu\n", exits, wall, cpu, rip_sum);
    return 0;
}
