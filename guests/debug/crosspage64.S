/* crosspage64: stores that one step spreads over two pages, for reverse execution.
 *
 * An undo log keeps, per instruction, the bytes each dirty page changed
 * (KVM_GET_DIRTY_LOG names the pages). Here one instruction writes two
 * pages at once: an unaligned 8-byte store across a page boundary; a
 * `rep movsb` and a `rep stosb` run over a boundary (one step per
 * iteration); and a store to a page far up in RAM that neither the
 * loader nor the VMM ever touched. Long mode, loaded at 0x1000.
 */
    .code64
    .text
    .globl _start, edge, copy_to, fill_to, done
    .set    FAR_PAGE, 0x7F000           /* high in 512 KiB of RAM, never loaded */
_start:
    lea     edge(%rip), %rdi
    movabs  $0x1122334455667788, %rax
    mov     %rax, (%rdi)                /* bytes 0xffd..0x1004 of the page pair */
    lea     source(%rip), %rsi
    lea     copy_to(%rip), %rdi
    mov     $12, %ecx
    rep movsb                           /* across the next boundary */
    lea     fill_to(%rip), %rdi
    mov     $0xA5, %al
    mov     $10, %ecx
    rep stosb                           /* and the one after */
    movq    $0x5a5a, FAR_PAGE
    mov     %rax, FAR_PAGE + 0xFFC      /* the far page's last bytes */
done:
    cli
    hlt

source:
    .ascii  "crosspage64!"
    .balign 4096
    .fill   4096 - 3, 1, 0
edge:                                   /* 3 bytes before a page boundary */
    .fill   4096 - 5, 1, 0
copy_to:                                /* 5 before the next */
    .fill   4096 - 4, 1, 0
fill_to:                                /* 4 before the next */
    .fill   16, 1, 0
