/* result: leaves known values in registers and memory for the host to check.
 *
 * Like kvm-hello-world, this proves the guest really ran: it computes a few
 * values, stores them, and halts. The host then reads the registers
 * (KVM_GET_REGS) and guest memory and compares with what this code must
 * produce:
 *   ax = 0x1234 + 0x4321 = 0x5555, bx = 6 * 7 = 42, cx = 10! mod 2^16 = 0x5f00,
 *   word at 0x5000 = 0xbeef, word at 0x5002 = sum 1..100 = 5050 (0x13ba).
 */
    .code16
    .text
    .globl _start
_start:
    xor     %ax, %ax
    mov     %ax, %ds

    mov     $0x1234, %ax
    add     $0x4321, %ax        /* ax = 0x5555 */

    mov     $6, %bx
    imul    $7, %bx, %bx        /* bx = 42 */

    mov     $1, %cx             /* cx = 10! mod 65536 */
    mov     $1, %si
1:  imul    %si, %cx
    inc     %si
    cmp     $10, %si
    jbe     1b

    movw    $0xbeef, (0x5000)

    xor     %di, %di            /* di = 1 + 2 + ... + 100 */
    mov     $100, %si
2:  add     %si, %di
    dec     %si
    jnz     2b
    mov     %di, (0x5002)

    cli
    hlt
