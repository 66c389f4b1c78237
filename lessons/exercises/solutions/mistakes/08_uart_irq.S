/* Exercise 08, a WRONG solution the tests use: lesson 08's echo guest, with one byte changed.
 *
 * It sets up the IVT, the PIC and the UART like guests/asm/serial_echo.S --
 * but type to it and nothing comes back. The task (08_uart_irq.md): find
 * why the UART's interrupt never reaches the PIC, and fix the value written
 * to MCR. Check with:  minikvm lesson check 08
 *
 * What follows is the original's description.
 *
 * It shows every piece of a PC interrupt path:
 *   - the UART raises its interrupt when received data is available
 *     (IER.RDI) and MCR.OUT2 connects its interrupt pin to IRQ 4;
 *   - the 8259 PIC turns IRQ 4 into vector 0x0C (we program it with base
 *     0x08, as the PC BIOS does, and unmask only IRQ 4);
 *   - the real-mode interrupt vector table (IVT) at address 0 holds, for
 *     vector 0x0C, the segment:offset of our handler;
 *   - the main loop sits in `sti; hlt`: with the in-kernel irqchip the vCPU
 *     sleeps inside KVM until the interrupt arrives.
 * The handler drains the RX FIFO (LSR.DR), echoing each byte to THR after
 * LSR.THRE, and acknowledges the PIC with an EOI. A received 0x04 byte
 * (Ctrl-D) is echoed too and then ends the run through the debug-exit
 * port with value 0 (status 1), so tests and people have a way out.
 */
    .code16
    .text
    .globl _start
    .set COM1, 0x3f8
    .set PIC1_CMD, 0x20
    .set PIC1_DATA, 0x21
    .set PIC2_CMD, 0xa0
    .set PIC2_DATA, 0xa1
    .set IRQ4_VECTOR, 0x0c
_start:
    cli
    xor     %ax, %ax
    mov     %ax, %ds
    mov     %ax, %ss
    mov     $0x7c00, %sp

    /* IVT entry for vector 0x0C: offset, then segment */
    movw    $handler, (IRQ4_VECTOR * 4)
    movw    $0, (IRQ4_VECTOR * 4 + 2)

    /* 8259 PICs: ICW1 (edge, cascade, ICW4 follows), ICW2 (vector base),
     * ICW3 (slave on IRQ 2), ICW4 (8086 mode); then mask all but IRQ 4. */
    mov     $0x11, %al
    out     %al, $PIC1_CMD
    out     %al, $PIC2_CMD
    mov     $0x08, %al
    out     %al, $PIC1_DATA
    mov     $0x70, %al
    out     %al, $PIC2_DATA
    mov     $0x04, %al
    out     %al, $PIC1_DATA
    mov     $0x02, %al
    out     %al, $PIC2_DATA
    mov     $0x01, %al
    out     %al, $PIC1_DATA
    out     %al, $PIC2_DATA
    mov     $0xef, %al          /* unmask IRQ 4 only */
    out     %al, $PIC1_DATA
    mov     $0xff, %al
    out     %al, $PIC2_DATA

    /* UART: 115200 8N1, FIFOs on with a 1-byte trigger, OUT2 + DTR + RTS,
     * interrupt on received data. */
    mov     $COM1+3, %dx
    mov     $0x80, %al
    out     %al, %dx
    mov     $COM1+0, %dx
    mov     $1, %al
    out     %al, %dx
    mov     $COM1+1, %dx
    xor     %al, %al
    out     %al, %dx
    mov     $COM1+3, %dx
    mov     $0x03, %al
    out     %al, %dx
    mov     $COM1+2, %dx
    mov     $0x07, %al
    out     %al, %dx
    mov     $COM1+4, %dx
    mov     $0x07, %al          /* a plausible mistake: OUT1 (bit 2) instead of OUT2 (bit 3) */
    out     %al, %dx
    mov     $COM1+1, %dx        /* IER: received data available */
    mov     $0x01, %al
    out     %al, %dx

idle:
    sti
    hlt                         /* sleep until an interrupt */
    jmp     idle

handler:
    push    %ax
    push    %bx
    push    %dx
    mov     $COM1+2, %dx        /* IIR: which source? (reading it is part of the protocol) */
    in      %dx, %al
drain:
    mov     $COM1+5, %dx        /* LSR */
    in      %dx, %al
    test    $0x01, %al          /* DR: a byte is waiting */
    jz      eoi
    mov     $COM1+0, %dx        /* RBR */
    in      %dx, %al
    mov     %al, %bl
    mov     $COM1+5, %dx
1:  in      %dx, %al
    test    $0x20, %al          /* THRE */
    jz      1b
    mov     $COM1+0, %dx        /* THR: echo */
    mov     %bl, %al
    out     %al, %dx
    cmp     $0x04, %bl          /* Ctrl-D ends the run */
    jne     drain
    xor     %al, %al
    out     %al, $0xf4
eoi:
    mov     $0x20, %al          /* non-specific EOI to the master PIC */
    out     %al, $PIC1_CMD
    pop     %dx
    pop     %bx
    pop     %ax
    iret
