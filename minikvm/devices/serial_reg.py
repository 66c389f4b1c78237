"""The 16550A's registers and their bits, by the names Linux gives them.

The names and values follow Linux's ``include/uapi/linux/serial_reg.h`` (so
a reader can grep the kernel's 8250 driver for each), with the PC16550D
datasheet's register names (RBR, THR, IER, ...) in the comments and what a
driver uses each one for. :mod:`minikvm.devices.uart` is the model that
gives them behaviour.
"""

from __future__ import annotations

__all__ = [
    "UART_RX",
    "UART_TX",
    "UART_DLL",
    "UART_DLM",
    "UART_IER",
    "UART_IIR",
    "UART_FCR",
    "UART_EFR",
    "UART_LCR",
    "UART_MCR",
    "UART_LSR",
    "UART_MSR",
    "UART_SCR",
    "UART_IER_RDI",
    "UART_IER_THRI",
    "UART_IER_RLSI",
    "UART_IER_MSI",
    "UART_IER_ALL_INTR",
    "UART_IER_UUE",
    "UART_IIR_NO_INT",
    "UART_IIR_ID",
    "UART_IIR_MSI",
    "UART_IIR_THRI",
    "UART_IIR_RDI",
    "UART_IIR_RLSI",
    "UART_IIR_RX_TIMEOUT",
    "UART_IIR_64BYTE_FIFO",
    "UART_IIR_FIFO_ENABLED",
    "UART_IIR_FIFO_ENABLED_8250",
    "UART_IIR_FIFO_ENABLED_16550",
    "UART_IIR_FIFO_ENABLED_16550A",
    "UART_FCR_ENABLE_FIFO",
    "UART_FCR_CLEAR_RCVR",
    "UART_FCR_CLEAR_XMIT",
    "UART_FCR_DMA_SELECT",
    "UART_FCR7_64BYTE",
    "UART_FCR_TRIGGER_MASK",
    "UART_FCR_R_TRIG_00",
    "UART_FCR_R_TRIG_01",
    "UART_FCR_R_TRIG_10",
    "UART_FCR_R_TRIG_11",
    "UART_FCR_TRIGGER_1",
    "UART_FCR_TRIGGER_4",
    "UART_FCR_TRIGGER_8",
    "UART_FCR_TRIGGER_14",
    "UART_LCR_WLEN5",
    "UART_LCR_WLEN6",
    "UART_LCR_WLEN7",
    "UART_LCR_WLEN8",
    "UART_LCR_STOP",
    "UART_LCR_PARITY",
    "UART_LCR_EPAR",
    "UART_LCR_SPAR",
    "UART_LCR_SBC",
    "UART_LCR_DLAB",
    "UART_LCR_CONF_MODE_A",
    "UART_LCR_CONF_MODE_B",
    "UART_MCR_DTR",
    "UART_MCR_RTS",
    "UART_MCR_OUT1",
    "UART_MCR_OUT2",
    "UART_MCR_LOOP",
    "UART_MCR_WRITABLE",
    "UART_LSR_DR",
    "UART_LSR_OE",
    "UART_LSR_PE",
    "UART_LSR_FE",
    "UART_LSR_BI",
    "UART_LSR_BRK_ERROR_BITS",
    "UART_LSR_THRE",
    "UART_LSR_TEMT",
    "UART_LSR_FIFOE",
    "UART_MSR_DCTS",
    "UART_MSR_DDSR",
    "UART_MSR_TERI",
    "UART_MSR_DDCD",
    "UART_MSR_ANY_DELTA",
    "UART_MSR_CTS",
    "UART_MSR_DSR",
    "UART_MSR_RI",
    "UART_MSR_DCD",
    "UART_MSR_STATUS_BITS",
]

# --- Register offsets (from the base port; DLAB = LCR bit 7) ---------------------------
UART_RX = 0   # in, DLAB=0: receive buffer (RBR); a driver reads received bytes here
UART_TX = 0   # out, DLAB=0: transmit holding register (THR); a driver writes bytes to send
UART_DLL = 0  # in/out, DLAB=1: divisor latch low byte; a driver sets the baud rate here
UART_DLM = 1  # in/out, DLAB=1: divisor latch high byte
UART_IER = 1  # in/out, DLAB=0: interrupt enable; a driver picks which events interrupt
UART_IIR = 2  # in: interrupt identification; an interrupt handler asks "why?" here
UART_FCR = 2  # out: FIFO control; a driver enables/clears FIFOs and sets the RX trigger
UART_EFR = 2  # in/out with LCR=0xBF on 16650+ chips only; Linux probes it to tell chips apart
UART_LCR = 3  # in/out: line control; a driver sets word length, parity, stop bits, DLAB
UART_MCR = 4  # in/out: modem control; a driver drives DTR/RTS, OUT2 (IRQ gate), loopback
UART_LSR = 5  # in: line status; a driver polls "data ready" and "THR empty" here
UART_MSR = 6  # in: modem status; a driver reads CTS/DSR/RI/DCD and their changes
UART_SCR = 7  # in/out: scratch; no function, Linux uses it to tell a 16450 from an 8250

# --- IER: interrupt enable ------------------------------------------------------------
UART_IER_RDI = 0x01   # interrupt when received data is available (or character timeout)
UART_IER_THRI = 0x02  # interrupt when the transmit holding register is empty
UART_IER_RLSI = 0x04  # interrupt on a receiver line status error (overrun, parity, ...)
UART_IER_MSI = 0x08   # interrupt when a modem input (CTS, DSR, RI, DCD) changes
UART_IER_ALL_INTR = 0x0F  # all four; Linux's probe writes this and expects it back
UART_IER_UUE = 0x40   # XScale "unit enable"; absent on a 16550A (reads 0), Linux probes it

# --- IIR: interrupt identification --------------------------------------------------
UART_IIR_NO_INT = 0x01       # bit 0 set: no interrupt pending (a handler stops here)
UART_IIR_ID = 0x0E           # mask of the interrupt source bits
UART_IIR_MSI = 0x00          # modem status changed (lowest priority; cleared by reading MSR)
UART_IIR_THRI = 0x02         # THR empty (cleared by reading IIR or writing THR)
UART_IIR_RDI = 0x04          # received data at/above the trigger level (cleared by reading RBR)
UART_IIR_RLSI = 0x06         # receiver line status error (highest; cleared by reading LSR)
UART_IIR_RX_TIMEOUT = 0x0C   # character timeout: data below the trigger level is waiting
UART_IIR_64BYTE_FIFO = 0x20  # 16750 only: 64-byte FIFO on; always 0 here, Linux probes it
UART_IIR_FIFO_ENABLED = 0xC0  # bits 7:6: FIFO state; a driver's probe tells chip types by them
UART_IIR_FIFO_ENABLED_8250 = 0x00    # no FIFO (8250/16450)
UART_IIR_FIFO_ENABLED_16550 = 0x80   # FIFO present but broken (original 16550)
UART_IIR_FIFO_ENABLED_16550A = 0xC0  # FIFOs enabled and working (16550A)

# --- FCR: FIFO control (write-only) ---------------------------------------------------
UART_FCR_ENABLE_FIFO = 0x01  # enable both FIFOs; changing it empties them
UART_FCR_CLEAR_RCVR = 0x02   # empty the RX FIFO (self-clearing)
UART_FCR_CLEAR_XMIT = 0x04   # empty the TX FIFO (self-clearing)
UART_FCR_DMA_SELECT = 0x08   # DMA mode 1 (RXRDY/TXRDY pins); no effect without a DMA engine
UART_FCR7_64BYTE = 0x20      # 16750 only: 64-byte FIFOs; ignored by a 16550A
UART_FCR_TRIGGER_MASK = 0xC0  # bits 7:6: RX FIFO trigger level for the data interrupt
UART_FCR_R_TRIG_00 = 0x00    # trigger at 1 byte
UART_FCR_R_TRIG_01 = 0x40    # trigger at 4 bytes
UART_FCR_R_TRIG_10 = 0x80    # trigger at 8 bytes (Linux's default for a 16550A)
UART_FCR_R_TRIG_11 = 0xC0    # trigger at 14 bytes
UART_FCR_TRIGGER_1 = UART_FCR_R_TRIG_00   # the same four, named by level
UART_FCR_TRIGGER_4 = UART_FCR_R_TRIG_01
UART_FCR_TRIGGER_8 = UART_FCR_R_TRIG_10
UART_FCR_TRIGGER_14 = UART_FCR_R_TRIG_11

# --- LCR: line control ------------------------------------------------------------------
UART_LCR_WLEN5 = 0x00  # 5 data bits
UART_LCR_WLEN6 = 0x01  # 6 data bits
UART_LCR_WLEN7 = 0x02  # 7 data bits
UART_LCR_WLEN8 = 0x03  # 8 data bits (what every console uses: "8N1")
UART_LCR_STOP = 0x04   # 2 stop bits (1.5 with 5-bit words) instead of 1
UART_LCR_PARITY = 0x08  # parity bit on
UART_LCR_EPAR = 0x10   # even parity (else odd)
UART_LCR_SPAR = 0x20   # "stick" parity: the parity bit is constant
UART_LCR_SBC = 0x40    # send break: hold the output line low
UART_LCR_DLAB = 0x80   # divisor latch access: offsets 0-1 become DLL/DLM
UART_LCR_CONF_MODE_A = UART_LCR_DLAB  # Linux's name for "DLAB on" when probing
UART_LCR_CONF_MODE_B = 0xBF  # magic LCR value that opens the EFR on 16650+ chips

# --- MCR: modem control -----------------------------------------------------------------
UART_MCR_DTR = 0x01   # data terminal ready output (loopback: read back as DSR)
UART_MCR_RTS = 0x02   # request to send output (loopback: read back as CTS)
UART_MCR_OUT1 = 0x04  # user output 1 (loopback: read back as RI)
UART_MCR_OUT2 = 0x08  # user output 2; on a PC it gates the IRQ line (loopback: DCD)
UART_MCR_LOOP = 0x10  # loopback diagnostic mode: TX feeds RX inside the chip
UART_MCR_WRITABLE = 0x1F  # bits a driver can set; 7:5 always read 0 on a 16550A

# --- LSR: line status -------------------------------------------------------------------
UART_LSR_DR = 0x01    # data ready: at least one received byte waits in RBR/the RX FIFO
UART_LSR_OE = 0x02    # overrun error: a received byte was lost (cleared by reading LSR)
UART_LSR_PE = 0x04    # parity error (never happens on our virtual wire)
UART_LSR_FE = 0x08    # framing error (never happens here)
UART_LSR_BI = 0x10    # break interrupt (never happens here)
UART_LSR_BRK_ERROR_BITS = 0x1E  # the four error bits; reading LSR clears them
UART_LSR_THRE = 0x20  # THR empty: a driver may write the next byte (always 1 here)
UART_LSR_TEMT = 0x40  # transmitter empty: THR and shift register idle (always 1 here)
UART_LSR_FIFOE = 0x80  # an error byte is in the RX FIFO (never here)

# --- MSR: modem status ------------------------------------------------------------------
UART_MSR_DCTS = 0x01  # CTS changed since MSR was last read
UART_MSR_DDSR = 0x02  # DSR changed since MSR was last read
UART_MSR_TERI = 0x04  # RI went from on to off (trailing edge of a ring)
UART_MSR_DDCD = 0x08  # DCD changed since MSR was last read
UART_MSR_ANY_DELTA = 0x0F  # the four change bits; reading MSR clears them
UART_MSR_CTS = 0x10   # clear to send input
UART_MSR_DSR = 0x20   # data set ready input
UART_MSR_RI = 0x40    # ring indicator input
UART_MSR_DCD = 0x80   # data carrier detect input
UART_MSR_STATUS_BITS = 0xF0  # the four input levels
