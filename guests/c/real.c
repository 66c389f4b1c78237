/* real.c: a C guest in real mode (gcc -m16), loaded flat at 0x1000.
 *
 * Proves the mode: CR0.PE (bit 0) is clear, read with `smsw`, which works in
 * every mode, and a far pointer-style segment:offset store lands at
 * segment * 16 + offset. Result for the host: "real mode: CR0=0x..." on the
 * console, the word 0x1616 at physical 0x7010 (written as 0x0700:0x0010),
 * then a clean halt.
 */
#include "guest.h"

void __attribute__((section(".text.start"), noreturn)) _start(void)
{
    u16 msw;
    __asm__ volatile("smsw %0" : "=r"(msw));
    puts_e9("real mode: CR0=");
    puthex_e9(msw, 4);
    puts_e9(msw & 1 ? " (PE set?!)\n" : " (PE clear)\n");

    /* es = 0x0700; es:[0x10] = 0x1616 -> physical 0x7000 + 0x10 */
    u16 saved_es;
    __asm__ volatile("mov %%es, %0\n\t"
                     "mov %1, %%es\n\t"
                     "movw $0x1616, %%es:0x10\n\t"
                     "mov %0, %%es"
                     : "=&r"(saved_es) : "r"((u16)0x0700) : "memory");
    halt();
}
