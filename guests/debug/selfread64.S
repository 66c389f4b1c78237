/* selfread64: reads one byte of its own code and prints it to port 0x80.
 *
 * With a software breakpoint on `target` the debugger has patched an int3
 * (0xCC) there while the guest runs; the byte the guest reads shows it. The
 * guest never executes `target`.
 */
    .code64
    .text
    .globl _start, target
_start:
    movzbl  target(%rip), %eax
    out     %al, $0x80
    cli
    hlt
target:
    nop
    hlt
