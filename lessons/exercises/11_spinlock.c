/* Exercise 11, starting point: a spinlock for four CPUs.
 *
 * lock_exercise.h (in guests/include) is the whole rest of the guest: a
 * Multiboot kernel that starts every CPU (INIT-SIPI-SIPI, as in lesson 11)
 * and has each add 1 to a shared counter 200 times, like this:
 *
 *     spin_lock(&lock);
 *     value = counter;  outb(0x80, 0);  counter = value + 1;   <- a VM exit in the middle
 *     spin_unlock(&lock);
 *
 * The two functions below are yours. As they are, they do nothing, and the
 * CPUs step on each other's increments. The task (11_spinlock.md): make
 * spin_lock let exactly one CPU in at a time, and spin_unlock let the next
 * one in. Check with:  minikvm lesson check 11
 *
 * The lock word starts at 0 (free). Useful: GCC's __atomic_exchange_n(ptr,
 * value, __ATOMIC_ACQUIRE) compiles to one `xchg`, which swaps a register
 * with memory in one indivisible step; __atomic_store_n(ptr, value,
 * __ATOMIC_RELEASE); and the `pause` instruction, a polite way to spin.
 */
#include "lock_exercise.h"

void spin_lock(volatile u32 *lock)
{
    (void)lock;   /* TODO: wait until the lock is free, and take it -- in one step */
}

void spin_unlock(volatile u32 *lock)
{
    (void)lock;   /* TODO: give the lock back */
}
