/* calls64: the kind of code a person single-steps -- calls, pushes and pops,
 * one-byte instructions next to long ones -- in a loop that never halts
 * until it is done. The single-step benchmark steps it.
 *
 * One pass of the loop runs 19 instructions, 9 of them one byte long (push,
 * pop, nop, cld, ret). After each one-byte step that lands on the next byte
 * (all of them but ret) the stepper checks whether the byte it stepped over
 * was `hlt`: 8 checks a pass. The other 10 are 2 to 10 bytes long (movabs,
 * call, inc, rol, mov to memory, sub, jnz).
 *
 * `count` (at 0x1008, the host may patch it before the run) says how many
 * passes to run; each pass stores the pass number in `counter`, and RDX
 * accumulates a value that depends on every pass, so two runs that stepped
 * the same instructions end with the same RAX and RDX.
 * Long mode, linked and loaded at 0x1000; the stack is the VMM's.
 */
    .code64
    .text
    .globl _start, count, counter, loop, work, done
_start:
    jmp     begin
    .balign 8
count:
    .quad   3
counter:
    .quad   0
begin:
    mov     count(%rip), %rcx
    xor     %eax, %eax
    xor     %edx, %edx
loop:
    push    %rcx                            /* 1 byte */
    movabs  $0x0123456789abcdef, %rbx       /* 10 bytes */
    call    work                            /* 5 bytes */
    pop     %rcx                            /* 1 byte */
    nop                                     /* 1 byte */
    inc     %rax                            /* 3 bytes */
    mov     %rax, counter(%rip)             /* 7 bytes */
    sub     $1, %rcx
    jnz     loop
done:
    mov     $0x2e, %al
    out     %al, $0xe9                      /* '.' when the loop is over */
    cli
    hlt

work:
    push    %rbp                            /* 1 byte */
    mov     %rsp, %rbp
    push    %rbx                            /* 1 byte */
    xor     %rax, %rbx
    rol     $7, %rbx
    add     %rbx, %rdx
    pop     %rbx                            /* 1 byte */
    cld                                     /* 1 byte */
    pop     %rbp                            /* 1 byte */
    ret                                     /* 1 byte */
