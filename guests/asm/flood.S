/* flood: prints the same 32-byte line to the debug console, forever.
 *
 * The hostile-output guest of the tests: it never stops writing, so a host
 * whose stdout stalls (`minikvm run flood.bin | sleep 20`) or goes away
 * (`| head -c 10`) must still be able to end the run. Every `out` is one VM
 * exit; the debug console has no flow control (no status register a guest
 * could poll), so the VMM can only keep or drop what it cannot write.
 *
 * The line is fixed so a test can check what arrived: a stream that kept
 * up is whole lines, in order.
 */
    .code16
    .text
    .globl _start
_start:
    cld
    xor     %ax, %ax
    mov     %ax, %ds
    mov     $0xe9, %dx          /* debug console port */
again:
    mov     $line, %si
    mov     $(line_end - line), %cx
1:  lodsb                       /* al = *si++ */
    out     %al, %dx            /* one VM exit per byte */
    loop    1b
    jmp     again

line:
    .ascii  "flood: 0123456789abcdefghijklm\r\n"
line_end:
