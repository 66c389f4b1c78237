/* hello: the smallest useful guest. Real mode, loaded and started at 0x1000.
 *
 * It prints a greeting one byte at a time to the debug console (port 0xE9):
 * each `out` is a VM exit that the VMM turns into a byte on the host. Then it
 * disables interrupts and halts, which ends the run with status 0.
 */
    .code16
    .text
    .globl _start
_start:
    cld
    xor     %ax, %ax
    mov     %ax, %ds            /* data segment 0: addresses are physical */
    mov     $message, %si
    mov     $0xe9, %dx          /* debug console port */
1:  lodsb                       /* al = *si++ */
    test    %al, %al
    jz      2f
    out     %al, %dx            /* one VM exit per byte */
    jmp     1b
2:  cli                         /* no interrupt may wake us ... */
    hlt                         /* ... so this halt is final */
    jmp     2b

message:
    .asciz  "Hello from a KVM guest, driven entirely from Python!\n"
