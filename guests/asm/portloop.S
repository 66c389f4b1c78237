/* portloop: writes to an unclaimed port N times, then halts.
 *
 * The exit-latency benchmark's guest: every `out` is one VM exit that no
 * device claims, so the time per exit is the VMM's round trip and nothing
 * else. N is a 32-bit count the host patches in at offset 4 (`count:`)
 * before running it; 1000 by default.
 */
    .code16
    .text
    .globl _start
_start:
    jmp     begin
    .balign 4
count:
    .long   1000
begin:
    xor     %ax, %ax
    mov     %ax, %ds
    mov     %cs:count, %ecx
    mov     $0x80, %dx          /* port 0x80: nobody decodes it here */
1:  out     %al, %dx
    dec     %ecx
    jnz     1b
    cli
    hlt
