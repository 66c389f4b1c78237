/* Exercise 04, starting point: a real-mode guest loaded and started at 0x1000.
 *
 * It prints "CR0=0x" and then the value in EAX as eight hex digits -- but
 * EAX holds 0, not CR0. The task (04_real_mode.md): put the guest's own CR0
 * in EAX before it is printed. Check with:  minikvm lesson check 04
 */
    .code16
    .text
    .globl _start
_start:
    xor     %ax, %ax
    mov     %ax, %ds
    mov     $prefix, %si
    call    print_string

    xor     %eax, %eax          /* TODO: EAX = CR0 instead of 0 */

    call    print_hex_eax
    mov     $'\n', %al
    out     %al, $0xe9
    cli
    hlt

/* print_string: print the zero-terminated string at DS:SI on port 0xE9. */
print_string:
    lodsb
    test    %al, %al
    jz      1f
    out     %al, $0xe9
    jmp     print_string
1:  ret

/* print_hex_eax: print EAX as eight lowercase hex digits on port 0xE9.
 * (32-bit registers work in real mode: the assembler adds an operand-size
 * prefix, 0x66, to each instruction that uses them.) Uses EAX, EDX, CX. */
print_hex_eax:
    mov     %eax, %edx
    mov     $8, %cx
1:  rol     $4, %edx            /* the next digit moves to the low 4 bits */
    mov     %dl, %al
    and     $0x0f, %al
    cmp     $10, %al
    jb      2f
    add     $('a' - '0' - 10), %al
2:  add     $'0', %al
    out     %al, $0xe9
    loop    1b
    ret

prefix:
    .asciz  "CR0=0x"
