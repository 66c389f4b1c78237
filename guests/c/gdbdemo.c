/* gdbdemo.c: a small 64-bit guest to debug with gdb (minikvm run --gdb).
 *
 * Built with -g, so gdb knows its functions, globals and source lines.
 * Everything a first gdb session wants to try is here:
 *   - a string to read with `x/s greeting`;
 *   - functions to break at: `break twice`, `break count`;
 *   - `counter`, written three times by count(): `watch counter`;
 *   - `answer`: the guest prints twice(answer) and exits with it, so
 *     `set var answer = 5` changes both what it prints and its exit
 *     status ((v << 1) | 1, the debug-exit port: 85 unchanged, 21 then);
 *   - `spin`: `set var spin = 1` makes the guest loop until gdb stops it
 *     (Ctrl-C) and clears it again;
 *   - ap_main(), where a second vCPU may start (with a stack of its own):
 *     it counts once in `ap_ticks` with ap_count() and halts.
 */
#include "guest.h"

const char greeting[] = "hello from gdbdemo";
volatile u32 answer = 21;
volatile u32 counter;
volatile u32 spin;
volatile u32 ap_ticks;

__attribute__((noinline)) u32 twice(u32 x)
{
    return x + x;
}

__attribute__((noinline)) void count(u32 times)
{
    for (u32 i = 0; i < times; i++)
        counter = counter + 1;
}

static void put_decimal(u32 value)
{
    char digits[10];
    int n = 0;
    do {
        digits[n++] = (char)('0' + value % 10);
        value /= 10;
    } while (value);
    while (n)
        putc_e9(digits[--n]);
}

__attribute__((noinline)) void ap_count(void)
{
    ap_ticks = ap_ticks + 1;
}

void __attribute__((noreturn)) ap_main(void)
{
    ap_count();
    halt();
}

void __attribute__((section(".text.start"), noreturn)) _start(void)
{
    puts_e9(greeting);
    putc_e9('\n');
    count(3);
    while (spin)
        ;
    u32 result = twice(answer);
    puts_e9("twice(answer) = ");
    put_decimal(result);
    putc_e9('\n');
    guest_exit((u8)result);
}
