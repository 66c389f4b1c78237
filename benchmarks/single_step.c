/* single_step.c: the C baseline for benchmarks/single_step.py.
 *
 * Single-steps the same long-mode guest the Python debugger steps, doing per
 * instruction what the debugger does at the least: KVM_RUN with
 * KVM_GUESTDBG_SINGLESTEP (and BLOCKIRQ where offered), check that the exit
 * is KVM_EXIT_DEBUG, KVM_GET_REGS (the full register capture).
 *
 * It does not set up long mode itself: the Python side writes the vCPU state
 * it created (kvm_regs, kvm_sregs and guest RAM, in the kernel's own struct
 * layouts) to a file, and this program loads it. So both loops step exactly
 * the same guest from exactly the same state.
 *
 * usage: single_step STATE_FILE STEPS BLOCKIRQ(0|1)
 * state file: u64 memory size, struct kvm_regs, struct kvm_sregs, memory.
 * prints: steps nanoseconds final_rip final_rax
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

#ifndef KVM_GUESTDBG_BLOCKIRQ
#define KVM_GUESTDBG_BLOCKIRQ 0x00100000
#endif

static void die(const char *what) { perror(what); exit(1); }

int main(int argc, char **argv)
{
    if (argc != 4) { fprintf(stderr, "usage: %s STATE STEPS BLOCKIRQ\n", argv[0]); return 2; }
    unsigned long steps = strtoul(argv[2], NULL, 0);
    int blockirq = atoi(argv[3]);

    FILE *f = fopen(argv[1], "rb");
    if (!f) die(argv[1]);
    uint64_t mem_size;
    struct kvm_regs regs;
    struct kvm_sregs sregs;
    if (fread(&mem_size, sizeof mem_size, 1, f) != 1 || fread(&regs, sizeof regs, 1, f) != 1 ||
        fread(&sregs, sizeof sregs, 1, f) != 1 || mem_size == 0 || mem_size > (1ull << 30)) {
        fprintf(stderr, "bad state file\n");
        return 2;
    }
    uint8_t *mem = mmap(NULL, mem_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
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
    int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    if (vcpu < 0) die("KVM_CREATE_VCPU");
    int size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    struct kvm_run *run = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    if (run == MAP_FAILED) die("mmap vcpu");
    if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0) die("KVM_SET_SREGS");
    if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0) die("KVM_SET_REGS");

    struct kvm_guest_debug debug = {
        .control = KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP |
                   (blockirq ? KVM_GUESTDBG_BLOCKIRQ : 0),
    };
    if (ioctl(vcpu, KVM_SET_GUEST_DEBUG, &debug) < 0) die("KVM_SET_GUEST_DEBUG");

    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (unsigned long i = 0; i < steps; i++) {
        if (ioctl(vcpu, KVM_RUN, 0) < 0) die("KVM_RUN");
        if (run->exit_reason != KVM_EXIT_DEBUG) {
            fprintf(stderr, "step %lu: unexpected exit %u\n", i, run->exit_reason);
            return 3;
        }
        if (ioctl(vcpu, KVM_GET_REGS, &regs) < 0) die("KVM_GET_REGS");
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long long ns = (t1.tv_sec - t0.tv_sec) * 1000000000LL + (t1.tv_nsec - t0.tv_nsec);
    printf("%lu %lld %llu %llu\n", steps, ns, (unsigned long long)regs.rip,
           (unsigned long long)regs.rax);
    return 0;
}
