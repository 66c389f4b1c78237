/* startup.c: the C baseline for benchmarks/startup.py.
 *
 * Runs a flat real-mode guest (hello.bin) the way `minikvm run` does with its
 * defaults, as one whole process: /dev/kvm, a VM with the in-kernel irqchip
 * and PIT, 2 MiB of RAM, one vCPU with the host-supported CPUID and
 * KVM_CAP_SYNC_REGS, the guest at 0x1000 in real mode. Each byte the guest
 * writes to the debug console (port 0xE9) goes to stdout at once, one write(2)
 * each, as minikvm flushes it.
 *
 * With the irqchip a `hlt` does not exit: the vCPU sleeps inside KVM_RUN.
 * Like minikvm's watchdog, a timer interrupts KVM_RUN when the guest made no
 * exit for 1 ms; then KVM_GET_MP_STATE and RFLAGS.IF say whether it sleeps
 * for good (halted, interrupts off), and the program ends with status 0.
 *
 * To stderr it writes how long closing the VM took (the kernel's teardown:
 * vCPU, irqchip, PIT, memory slots), in ns: "teardown_ns N".
 *
 * With the argument `reinject-off` it is a study of that teardown, not what
 * minikvm does: right after KVM_CREATE_PIT2 it turns the PIT's tick
 * reinjection off (KVM_REINJECT_CONTROL, pit_reinject = 0) and also writes
 * how long that ioctl took: "reinject_ns N". Why it matters (kernel 6.18):
 * closing a VM frees the PIT (kvm_free_pit, arch/x86/kvm/i8254.c), which
 * turns reinjection off if it is on (kvm_pit_set_reinject): that removes the
 * PIT's IRQ-ack notifier (kvm_unregister_irq_ack_notifier,
 * virt/kvm/eventfd.c) and its IRQ-mask notifier
 * (kvm_unregister_irq_mask_notifier, arch/x86/kvm/ioapic.c in 6.18, moved
 * there from irq_comm.c in 2025), and each ends with
 * synchronize_srcu(&kvm->irq_srcu). SRCU expedites a grace period it believes
 * idle, but not one asked for within exp_holdoff (25 us) of the
 * previous one's end (kernel/rcu/srcutree.c), so the second often waits a
 * normal grace period, a few jiffies. With reinjection already off at the close,
 * that pair of waits moves into the REINJECT_CONTROL ioctl instead.
 * Reinjection on is the PIT's default and what QEMU's kvm-pit does with its
 * default lost_tick_policy=delay (hw/i386/kvm/i8254.c), and minikvm keeps it.
 *
 * usage: startup GUEST.bin [reinject-off]
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define MEM_SIZE (2u << 20)
#define LOAD_ADDR 0x1000u
#define DEBUGCON_PORT 0xe9
#define RFLAGS_IF (1u << 9)
#define QUIET_US 1000

static void die(const char *what) { perror(what); exit(1); }

static long long now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}
static void on_alarm(int sig) { (void)sig; }

static void arm(long usec)
{
    struct itimerval t = { .it_value = { .tv_sec = 0, .tv_usec = usec } };
    setitimer(ITIMER_REAL, &t, NULL);
}

int main(int argc, char **argv)
{
    int reinject_off = argc == 3 && strcmp(argv[2], "reinject-off") == 0;
    if (argc != 2 && !reinject_off) {
        fprintf(stderr, "usage: %s GUEST.bin [reinject-off]\n", argv[0]);
        return 2;
    }
    struct sigaction sa = { .sa_handler = on_alarm };
    sigaction(SIGALRM, &sa, NULL);   /* no SA_RESTART: KVM_RUN returns EINTR */

    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0) die("/dev/kvm");
    int vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm < 0) die("KVM_CREATE_VM");
    if (ioctl(vm, KVM_SET_TSS_ADDR, 0xfffbd000ul) < 0) die("KVM_SET_TSS_ADDR");
    uint64_t identity = 0xfffbc000ul;
    if (ioctl(vm, KVM_SET_IDENTITY_MAP_ADDR, &identity) < 0) die("KVM_SET_IDENTITY_MAP_ADDR");
    uint8_t *mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) die("mmap");
    FILE *f = fopen(argv[1], "rb");
    if (!f) die(argv[1]);
    size_t n = fread(mem + LOAD_ADDR, 1, MEM_SIZE - LOAD_ADDR, f);
    fclose(f);
    if (n == 0) { fprintf(stderr, "empty guest\n"); return 2; }
    struct kvm_userspace_memory_region region = {
        .slot = 0, .guest_phys_addr = 0, .memory_size = MEM_SIZE, .userspace_addr = (uint64_t)mem,
    };
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) die("KVM_SET_USER_MEMORY_REGION");
    /* The irqchip and PIT after RAM, as minikvm's Machine does: a memory slot
       added after them waits for an SRCU grace period (~6 ms here). */
    if (ioctl(vm, KVM_CREATE_IRQCHIP, 0) < 0) die("KVM_CREATE_IRQCHIP");
    struct kvm_pit_config pit = { .flags = 0 };
    if (ioctl(vm, KVM_CREATE_PIT2, &pit) < 0) die("KVM_CREATE_PIT2");
    if (reinject_off) {
        struct kvm_reinject_control control = { .pit_reinject = 0 };
        long long took = -now_ns();
        if (ioctl(vm, KVM_REINJECT_CONTROL, &control) < 0) die("KVM_REINJECT_CONTROL");
        took += now_ns();
        fprintf(stderr, "reinject_ns %lld\n", took);
    }

    int nent = 256;
    struct kvm_cpuid2 *cpuid = calloc(1, sizeof *cpuid + nent * sizeof(struct kvm_cpuid_entry2));
    cpuid->nent = nent;
    if (ioctl(kvm, KVM_GET_SUPPORTED_CPUID, cpuid) < 0) die("KVM_GET_SUPPORTED_CPUID");
    int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    if (vcpu < 0) die("KVM_CREATE_VCPU");
    if (ioctl(vcpu, KVM_SET_CPUID2, cpuid) < 0) die("KVM_SET_CPUID2");
    int size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    struct kvm_run *run = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    if (run == MAP_FAILED) die("mmap vcpu");
    run->kvm_valid_regs = KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS;

    struct kvm_sregs sregs;
    if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0) die("KVM_GET_SREGS");
    sregs.cs.base = 0; sregs.cs.selector = 0;
    if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0) die("KVM_SET_SREGS");
    struct kvm_regs regs = { .rip = LOAD_ADDR, .rflags = 2 };
    if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0) die("KVM_SET_REGS");

    int status = 0;
    for (;;) {
        arm(QUIET_US);
        int rc = ioctl(vcpu, KVM_RUN, 0);
        if (rc < 0 && errno == EINTR) {
            struct kvm_mp_state mp;
            if (ioctl(vcpu, KVM_GET_MP_STATE, &mp) < 0) die("KVM_GET_MP_STATE");
            if (mp.mp_state == KVM_MP_STATE_HALTED && !(run->s.regs.regs.rflags & RFLAGS_IF))
                break;   /* halted for good */
            continue;
        }
        if (rc < 0) die("KVM_RUN");
        if (run->exit_reason == KVM_EXIT_IO && run->io.port == DEBUGCON_PORT &&
            run->io.direction == KVM_EXIT_IO_OUT) {
            uint8_t *data = (uint8_t *)run + run->io.data_offset;
            if (write(1, data, (size_t)run->io.size * run->io.count) < 0) die("write");
            continue;
        }
        if (run->exit_reason == KVM_EXIT_IO) continue;   /* other ports: ignored */
        fprintf(stderr, "unexpected exit %u\n", run->exit_reason);
        status = 3;
        break;
    }
    arm(0);
    long long t0 = now_ns();
    munmap(run, size);
    close(vcpu);
    close(vm);
    close(kvm);
    munmap(mem, MEM_SIZE);
    fprintf(stderr, "teardown_ns %lld\n", now_ns() - t0);
    return status;
}
