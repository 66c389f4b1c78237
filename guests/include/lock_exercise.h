/* lock_exercise.h: the guest around exercise 11's spinlock.
 *
 * The learner's file defines two functions and includes this header:
 *
 *     void spin_lock(volatile u32 *lock);
 *     void spin_unlock(volatile u32 *lock);
 *
 * Everything else is here: a Multiboot kernel that starts every CPU fw_cfg
 * announces (smp_start.h), then has each of them add 1 to a shared counter
 * ROUNDS times, each time inside spin_lock(&shared->lock) ...
 * spin_unlock(&shared->lock). The increment is a read, a VM exit (an
 * `outb` to port 0x80, the PC's "I/O delay" port: nothing is there, the VMM
 * just returns) and a write back -- a wide window, so that two CPUs inside
 * at once lose an increment nearly every time. Whether that ever happened
 * is counted too: `inside` goes up on entry and down on exit, atomically.
 *
 * Everything the checker reads lives in the result page (struct shared at
 * RESULT_ADDR), updated as the CPUs go, so that a stuck run still says
 * how far each CPU got. At the end the BSP prints one line and halts with
 * every other CPU; status 0 whether or not the count is right (the checker
 * judges).
 */
#ifndef MINIKVM_LOCK_EXERCISE_H
#define MINIKVM_LOCK_EXERCISE_H

#include "multiboot.h"
#include "smp_start.h"

#define ROUNDS 200
#define IO_DELAY_PORT 0x80
#define SHARED_MARKER 0x4b434f4c          /* "LOCK" */

void spin_lock(volatile u32 *lock);      /* the learner's */
void spin_unlock(volatile u32 *lock);    /* the learner's */

struct shared {
    u32 marker;
    u32 cpus;               /* from fw_cfg */
    u32 lock;               /* the lock word the learner's functions get */
    u32 counter;            /* the count they protect */
    u32 inside;             /* CPUs inside the critical section now */
    u32 overlaps;           /* times a CPU came in while another was inside */
    u32 started;            /* APs that arrived */
    u32 finished;           /* CPUs that did all their rounds */
    u32 done;               /* 1 when the BSP has checked the total */
    u32 progress[MAX_CPUS]; /* rounds done, by APIC id */
};
#define SHARED ((volatile struct shared *)RESULT_ADDR)

MULTIBOOT_HEADER(MULTIBOOT_PAGE_ALIGN | MULTIBOOT_MEMORY_INFO);
MULTIBOOT_ENTRY(exercise_main, 0x6f000);

static inline void count_rounds(u32 id)
{
    volatile struct shared *s = SHARED;
    for (u32 round = 0; round < ROUNDS; round++) {
        spin_lock(&s->lock);
        if (__atomic_add_fetch(&s->inside, 1, __ATOMIC_SEQ_CST) > 1)
            __atomic_add_fetch(&s->overlaps, 1, __ATOMIC_SEQ_CST);
        u32 value = s->counter;
        outb(IO_DELAY_PORT, 0);          /* the window: a whole VM exit */
        s->counter = value + 1;
        __atomic_sub_fetch(&s->inside, 1, __ATOMIC_SEQ_CST);
        spin_unlock(&s->lock);
        if (id < MAX_CPUS)
            s->progress[id] = round + 1;
    }
    __atomic_add_fetch(&s->finished, 1, __ATOMIC_SEQ_CST);
}

void __attribute__((used)) ap_main(void)
{
    __atomic_add_fetch(&SHARED->started, 1, __ATOMIC_SEQ_CST);
    count_rounds(lapic_id());
    halt();
}

void __attribute__((used)) exercise_main(void)
{
    volatile struct shared *s = SHARED;
    u32 cpus = fw_cfg_cpus();
    s->cpus = cpus;
    s->marker = SHARED_MARKER;
    if (cpus > 1) {
        start_aps();
        wait_for(&s->started, cpus - 1);
    }
    count_rounds(lapic_id());
    wait_for(&s->finished, 1 + s->started);
    puts_e9("lock exercise: ");
    putdec_e9(1 + s->started);
    puts_e9(" CPUs, counter ");
    putdec_e9(s->counter);
    puts_e9(" of ");
    putdec_e9((1 + s->started) * ROUNDS);
    puts_e9(", overlaps ");
    putdec_e9(s->overlaps);
    puts_e9("\n");
    s->done = 1;
    halt();
}

#endif
