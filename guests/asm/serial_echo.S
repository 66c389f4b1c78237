/* serial_echo: an interrupt-driven echo over COM1, in real mode.
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
 * LSR.THRE, and acknowledges the PIC with an EOI.
 *
 * Two bytes are special, as on a terminal:
 *   - CR (0x0d) is echoed as CR LF. A terminal's Enter key sends CR alone;
 *     a plain echo would return the cursor to the start of the same line and
 *     the next line would overwrite it. Linux's tty layer does the same for a
 *     serial console (ICRNL turns the CR into a newline, ONLCR prints the
 *     newline as CR LF); a bare-metal guest has to do it itself.
 *   - Ctrl-D (0x04) is echoed, then the guest halts with interrupts off:
 *     the session is over, and the run ends with status 0, as at the end of
 *     piped input.
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
    mov     $0x0b, %al          /* OUT2 | RTS | DTR */
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
    call    putc                /* echo */
    cmp     $0x0d, %bl          /* Enter: CR, then LF */
    jne     1f
    mov     $0x0a, %bl
    call    putc
1:  cmp     $0x04, %bl          /* Ctrl-D ends the session */
    jne     drain
done:
    cli                         /* nothing can wake us now: status 0 */
    hlt
    jmp     done
eoi:
    mov     $0x20, %al          /* non-specific EOI to the master PIC */
    out     %al, $PIC1_CMD
    pop     %dx
    pop     %bx
    pop     %ax
    iret

/* putc: send the byte in %bl once LSR.THRE says THR can take it. */
putc:
    mov     $COM1+5, %dx        /* LSR */
1:  in      %dx, %al
    test    $0x20, %al          /* THRE */
    jz      1b
    mov     $COM1+0, %dx        /* THR */
    mov     %bl, %al
    out     %al, %dx
    ret
