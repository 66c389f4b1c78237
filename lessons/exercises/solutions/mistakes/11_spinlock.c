/* Exercise 11, a WRONG solution the tests use: the lock is taken properly,
 * but spin_unlock compares instead of storing (`==` for `=`), so the lock
 * is never given back. Check with:  minikvm lesson check 11
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
    (void)(*lock == 0);
}
