/* loop64: a counting loop, for breakpoints hit again and again, watchpoints,
 * and the single-step benchmark.
 *
 * `count` (at 0x1008, the host may patch it before the run) says how many
 * times the loop body runs; each pass stores the running total in `counter`.
 * Long mode, linked and loaded at 0x1000.
 */
    .code64
    .text
    .globl _start, count, counter, loop, body_store, done
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
loop:
    add     $1, %rax
body_store:
    mov     %rax, counter(%rip)
    sub     $1, %rcx
    jnz     loop
done:
    mov     $0x2e, %al
    out     %al, $0xe9              /* '.' when the loop is over */
    cli
    hlt
