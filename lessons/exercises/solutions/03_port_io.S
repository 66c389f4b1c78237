/* Exercise 03, a reference solution: a real-mode guest loaded and started at 0x1000.
 *
 * As it is, it prints "Hi" on the debug console (port 0xE9) and halts.
 * The task (03_port_io.md): read one byte from port 0xE9, print it with
 * print_hex_al, and end the run through the debug-exit port (0xF4) with
 * value 1. Check your version with:  minikvm lesson check 03
 */
    .code16
    .text
    .globl _start
_start:
    xor     %ax, %ax
    mov     %ax, %ds
    mov     $'H', %al
    out     %al, $0xe9          /* each out is one VM exit */
    mov     $'i', %al
    out     %al, $0xe9
    mov     $'\n', %al
    out     %al, $0xe9

    in      $0xe9, %al          /* 1. ask the debug console: a KVM_EXIT_IO, direction in */
    call    print_hex_al        /* 2. print the answer */
    mov     $1, %al             /* 3. debug exit with value 1: status (1 << 1) | 1 = 3 */
    out     %al, $0xf4

    cli
    hlt                         /* ends the run with status 0 */

/* print_hex_al: print AL as two lowercase hex digits and a newline on
 * port 0xE9. Uses AX and BX; needs a stack (the machine sets SS:SP = 0:0x7c00). */
print_hex_al:
    mov     %al, %bl
    shr     $4, %al
    call    print_digit
    mov     %bl, %al
    and     $0x0f, %al
    call    print_digit
    mov     $'\n', %al
    out     %al, $0xe9
    ret
print_digit:                    /* AL = 0..15 -> '0'..'9', 'a'..'f' */
    cmp     $10, %al
    jb      1f
    add     $('a' - '0' - 10), %al
1:  add     $'0', %al
    out     %al, $0xe9
    ret
