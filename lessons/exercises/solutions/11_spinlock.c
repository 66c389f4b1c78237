/* Exercise 11, a reference solution: a test-and-set spinlock.
 *
 * spin_lock swaps 1 into the lock word with `xchg` (GCC's
 * __atomic_exchange_n), which reads the old value and writes the new one in
 * one indivisible step (Intel SDM vol. 3, 8.1.2.1: XCHG with a memory
 * operand is always locked). Whoever gets 0 back took the lock; everyone
 * else got 1 and spins -- reading only, so the waiting CPUs share the cache
 * line instead of fighting for it -- until the word looks free, then tries
 * the swap again. spin_unlock stores 0 with release ordering: every write
 * made inside the critical section is visible before the lock looks free.
 * Check with:  minikvm lesson check 11
 */
#include "lock_exercise.h"

void spin_lock(volatile u32 *lock)
{
    while (__atomic_exchange_n(lock, 1, __ATOMIC_ACQUIRE))
        while (*lock)
            __asm__ volatile("pause");
}

void spin_unlock(volatile u32 *lock)
{
    __atomic_store_n(lock, 0, __ATOMIC_RELEASE);
}
