/* exitcode: ends the run through the debug-exit port (0xF4).
 *
 * Writing v to port 0xF4 asks the VMM to stop with status (v << 1) | 1, as
 * QEMU's isa-debug-exit device does. This guest writes 0x2a, so the run ends
 * with status (0x2a << 1) | 1 = 85. The hlt after it is never reached.
 */
    .code16
    .text
    .globl _start
_start:
    mov     $0x2a, %al
    out     %al, $0xf4
    cli
    hlt
