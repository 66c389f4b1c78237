/* steps64: a straight line of 64-bit instructions whose effects are known.
 *
 * The single-step tests run it one instruction at a time and check, after
 * each step, that RIP is the next instruction capstone decodes and that the
 * registers hold what the instruction computes. Among them: an `out` (a VM
 * exit in the middle of a step), an MMIO read from an address no device
 * decodes (reads all-ones), a push/pop pair and the final `hlt`.
 * Long mode, linked and loaded at 0x1000 (the VMM's identity map).
 */
    .code64
    .text
    .globl _start, after_out, data
_start:
    mov     $5, %eax                /* rax = 5 */
    mov     $7, %ebx                /* rbx = 7 */
    add     %rbx, %rax              /* rax = 12 */
    lea     3(%rax,%rbx,2), %rcx    /* rcx = 12 + 14 + 3 = 29 */
    shl     $4, %rcx                /* rcx = 464 */
    xor     %edx, %edx              /* rdx = 0, ZF set */
    mov     $0x41, %al              /* al = 'A' */
    out     %al, $0xe9              /* a VM exit inside the step */
after_out:
    mov     %rax, data(%rip)        /* data = 0x41 */
    push    %rcx
    pop     %rsi                    /* rsi = 464 */
    mov     $0xd0000000, %r8d       /* r8 = an address no device decodes */
    mov     (%r8), %edi             /* MMIO read, unclaimed: rdi = 0xffffffff */
    dec     %rbx                    /* rbx = 6 */
    cli
    hlt
    .balign 8
data:
    .quad   0
