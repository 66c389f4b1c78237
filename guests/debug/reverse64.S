/* reverse64: a guest to step forwards and backwards through.
 *
 * Everything an undo log must put back: one-byte instructions (nop, push,
 * pop, ret), long ones (movabs, 10 bytes), calls and pushes on its own
 * stack, stores to other pages and a `rep stosq` (one step per iteration),
 * a write to the UART's scratch register (device state to rewind), port
 * I/O to the debug console (must not
 * print twice when steps are redone), and long-mode paging of its own: it
 * builds page tables (as ownpages64.S does), switches CR3 (a change of the
 * control registers) and stores through a linear address only they map.
 * Long mode, linked and loaded at 0x1000 (the VMM's identity map).
 */
    .code64
    .text
    .globl _start, loop, work, done, counter, far_data, buffer, VIRTUAL
    .set    PML4, 0x20000
    .set    PDPT, 0x21000
    .set    PD, 0x22000
    .set    PT, 0x23000
    .set    FRAME, 0x30000
    .set    VIRTUAL, 0x8000005000       /* PML4[1] PDPT[0] PD[0] PT[5] */
    .set    PRESENT_RW, 0x3
_start:
    lea     stack_top(%rip), %rsp
    mov     %cr3, %rsi
    mov     (%rsi), %rax
    mov     %rax, PML4                  /* PML4[0]: the VMM's identity map */
    movq    $(PDPT + PRESENT_RW), PML4 + 8
    movq    $(PD + PRESENT_RW), PDPT
    movq    $(PT + PRESENT_RW), PD
    movq    $(FRAME + PRESENT_RW), PT + 5 * 8
    mov     $PML4, %rax
    mov     %rax, %cr3                  /* our own tables from here */
    movabs  $VIRTUAL, %rbx
    mov     $0x5a, %al
    mov     $0x3ff, %dx
    out     %al, (%dx)                  /* COM1's scratch register: device state */
    mov     $3, %ecx
loop:
    nop
    push    %rcx
    call    work
    pop     %rcx
    movabs  $0x1122334455667788, %rax
    add     %rcx, %rax
    mov     %rax, far_data(%rip)        /* another page */
    mov     %rax, (%rbx)                /* through the guest's own mapping */
    push    %rcx
    lea     buffer(%rip), %rdi
    mov     $4, %ecx
    rep stosq                           /* 32 bytes, one step per iteration */
    pop     %rcx
    mov     $0x30, %al
    add     %cl, %al
    out     %al, $0xe9                  /* '3', '2', '1' */
    dec     %rcx
    jnz     loop
done:
    cli
    hlt

work:
    push    %rbp
    mov     %rsp, %rbp
    incq    counter(%rip)
    pop     %rbp
    ret

    .balign 8
counter:
    .quad   0
    .balign 4096
far_data:
    .quad   0
buffer:
    .fill   32, 1, 0
    .balign 4096
stack:
    .fill   1024, 1, 0
stack_top:
