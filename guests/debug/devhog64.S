/* devhog64: a hostile guest for the reverse-execution history's byte cap.
 *
 * It writes the last byte of pc-testdev's 64 KiB of scratch memory (MMIO at
 * 0xFF00_0000, in the VMM's 4 GiB identity map), so that device's saved
 * state grows to its whole 64 KiB, then makes an exit at every other step
 * (`out` to a port nobody claims). While recording, every step with an exit
 * keeps the state of every device before and after it: a history that
 * counted a device state as a small constant would hold far more than its
 * cap. Long mode, loaded at 0x1000.
 */
    .code64
    .text
    .globl _start, spin
_start:
    mov     $0xFF00FFFF, %edi
    movb    $0xA5, (%rdi)
    xor     %eax, %eax
spin:
    out     %al, $0x80
    jmp     spin
