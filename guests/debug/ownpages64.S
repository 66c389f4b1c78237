/* ownpages64: a long-mode guest that builds its own page tables.
 *
 * It starts on the VMM's identity map, builds a new PML4 at 0x20000 whose
 * entry 0 is copied from the VMM's (so code, data and stack stay where they
 * are) and whose entry 1 maps linear 0x80_0000_5000 to the physical page
 * 0x30000 through its own PDPT, PD and PT; loads it into CR3 and writes a
 * pattern through the new linear address. The test then reads the pattern
 * by linear address (page walk) and by physical address.
 */
    .code64
    .text
    .globl _start, VIRTUAL
    .set    PML4, 0x20000
    .set    PDPT, 0x21000
    .set    PD, 0x22000
    .set    PT, 0x23000
    .set    FRAME, 0x30000
    .set    VIRTUAL, 0x8000005000       /* PML4[1] PDPT[0] PD[0] PT[5] */
    .set    PRESENT_RW, 0x3
_start:
    mov     %cr3, %rsi
    mov     (%rsi), %rax
    mov     %rax, PML4                  /* PML4[0]: the VMM's identity map */
    movq    $(PDPT + PRESENT_RW), PML4 + 8
    movq    $(PD + PRESENT_RW), PDPT
    movq    $(PT + PRESENT_RW), PD
    movq    $(FRAME + PRESENT_RW), PT + 5 * 8
    mov     $PML4, %rax
    mov     %rax, %cr3                  /* switch to our tables */
    movabs  $VIRTUAL, %rbx
    movabs  $0x1122334455667788, %rax
    mov     %rax, (%rbx)
    movl    $0xcafebabe, 8(%rbx)
    cli
    hlt
