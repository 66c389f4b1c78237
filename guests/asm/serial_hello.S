/* serial_hello: prints a greeting through the 16550A UART at COM1 (0x3F8),
 * polling, the way a boot loader or early kernel console does.
 *
 * 1. Program the line: LCR.DLAB=1 to reach the divisor latch, divisor 1
 *    (115200 baud), then LCR = 8 data bits, no parity, 1 stop (0x03).
 * 2. Enable and clear the FIFOs (FCR = 0x07), raise DTR and RTS (MCR).
 * 3. For each byte: wait until LSR.THRE says the transmitter can take one,
 *    then write it to THR. Every access is a VM exit the UART model answers.
 */
    .code16
    .text
    .globl _start
    .set COM1, 0x3f8
_start:
    cld
    xor     %ax, %ax
    mov     %ax, %ds
    mov     $COM1+3, %dx        /* LCR */
    mov     $0x80, %al          /* DLAB: offsets 0/1 are now the divisor */
    out     %al, %dx
    mov     $COM1+0, %dx        /* DLL */
    mov     $1, %al
    out     %al, %dx
    mov     $COM1+1, %dx        /* DLM */
    xor     %al, %al
    out     %al, %dx
    mov     $COM1+3, %dx        /* LCR: 8N1, DLAB off */
    mov     $0x03, %al
    out     %al, %dx
    mov     $COM1+2, %dx        /* FCR: enable FIFOs, clear RX and TX */
    mov     $0x07, %al
    out     %al, %dx
    mov     $COM1+4, %dx        /* MCR: DTR | RTS */
    mov     $0x03, %al
    out     %al, %dx

    mov     $message, %si
next:
    lodsb
    test    %al, %al
    jz      done
    mov     %al, %bl
    mov     $COM1+5, %dx        /* LSR */
wait:
    in      %dx, %al
    test    $0x20, %al          /* THRE: THR can take a byte */
    jz      wait
    mov     $COM1+0, %dx        /* THR */
    mov     %bl, %al
    out     %al, %dx
    jmp     next
done:
    cli
    hlt
    jmp     done

message:
    .asciz  "Hello from the 16550A UART!\r\n"
