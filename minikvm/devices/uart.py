"""The 16550A UART: the PC serial port (COM1) as a guest's driver sees it.

A UART turns bytes into a serial bit stream and back. The PC's serial port is
National Semiconductor's 16550A (datasheet: *PC16550D Universal Asynchronous
Receiver/Transmitter with FIFOs*, June 1995; section numbers below refer to
it), an 8250/16450 with two 16-byte FIFOs added. It has eight registers at
eight consecutive ports (0x3F8-0x3FF for COM1); some offsets mean different
registers for reads and writes (RBR/THR, IIR/FCR), and the divisor latch
access bit (LCR.DLAB) swaps offsets 0 and 1 for the baud-rate divisor.

What this model does, and why:

* **Transmission is instantaneous.** A byte written to THR goes to the
  ``output`` sink at once, so THR and the transmitter are empty again
  immediately: LSR.THRE and LSR.TEMT always read 1 and the TX FIFO is always
  empty. Nothing is lost by this: a guest cannot tell a fast line from a slow
  one except by timing.
* **The THR-empty interrupt still follows the 16550 rules** (section 8.4,
  table IV): it is an event latch, not a copy of LSR.THRE. It is raised when
  THR *becomes* empty (after each byte written, which here is at once) and when
  IER.THRI is switched on while THR is empty; it is cleared by reading IIR
  while it is the source IIR reports, or by writing THR. Linux relies on both
  halves: its start-up test (``UART_BUG_THRE``) checks that re-enabling THRI
  re-raises the interrupt after an IIR read cleared it, and its transmit path
  writes bytes on each THR-empty interrupt and expects another one.
* **Receiving.** :meth:`Uart16550.receive` is the serial input pin: bytes
  arriving from the host. With FIFOs on they queue in a 16-byte RX FIFO; with
  FIFOs off (16450 mode) there is one receive buffer register. A byte that
  finds no room is an *overrun* (section 8.6.3, LSR bit 1): LSR.OE is set
  and, with FIFOs on, the new byte is lost (it stays in the shift register and
  is overwritten); in 16450 mode the new byte replaces the unread one. Either
  way memory stays bounded. The host side should offer only
  :meth:`Uart16550.rx_space` bytes at a time, so that nothing is lost; that
  is 0 until the driver has set the chip up and asked for input (MCR.RTS or
  IER.RDI: :attr:`Uart16550.receiver_ready`), so that bytes typed or piped
  before then wait on the host instead of being cleared by the driver's FCR
  write.
* **Character timeout** (IIR 0x0C). A real 16550 raises it when the RX FIFO
  holds fewer bytes than the trigger level and nothing has arrived or been
  read for four character times, so that a driver waiting for interrupts
  collects the tail of a message. This model has no clock. Its rule: the VMM
  delivers host input in bursts (each :meth:`receive` call is one burst,
  complete before the guest runs again), so from the guest's point of view the
  line is always idle by the time it can look. Hence the timeout is pending
  whenever FIFOs are on, IER.RDI is set and the RX FIFO holds at least one
  byte but fewer than the trigger level. It is cleared, as on the chip, by
  reading enough of RBR (here: until the FIFO is empty). Data below the
  trigger level therefore never waits unseen.
* **Loopback** (MCR.LOOP, section 8.6.4): the transmitter output is wired to
  the receiver input inside the chip; the serial input pin is disconnected
  (host bytes are refused: :meth:`rx_space` is 0 and :meth:`receive` drops and
  counts them), the serial output pin idles (nothing reaches ``output``), and
  the modem inputs follow the modem outputs: DTR->DSR, RTS->CTS, OUT1->RI,
  OUT2->DCD. Linux's probe uses this to count the FIFO and to see that a UART
  is really there.
* **The interrupt wire.** The chip's INTR pin is high while IIR bit 0 is clear.
  On a PC the pin reaches the interrupt controller (IRQ 4 for COM1) only
  through a buffer enabled by the OUT2 modem output; in loopback the OUT2 pin
  is forced inactive, so no interrupt reaches the PIC. So the line is
  ``interrupt pending and MCR.OUT2 and not MCR.LOOP``. One function,
  :meth:`Uart16550._update_irq`, recomputes it after every access and calls
  ``set_level`` only when the level changes.
* **Modem inputs** (CTS, DSR, RI, DCD) outside loopback are those of a
  connected, ready terminal: CTS, DSR and DCD asserted, RI not. The host side
  may change them with :meth:`set_modem_inputs`.
* **Accesses.** Offsets 0-7 are the registers; other offsets read all-ones and
  ignore writes. The UART is an 8-bit device: wider accesses use the low byte.
  Nothing a guest does can raise.

Register and bit names are those of Linux's ``include/uapi/linux/serial_reg.h``
so that a reader can grep a driver for them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from minikvm.devices import serial_reg
from minikvm.devices.base import Device, InterruptLine, all_ones
from minikvm.devices.state import MAX_U64, SavedState, hex_bytes
from minikvm.devices.serial_reg import *  # noqa: F403 - the register names, as the model's own

__all__ = [
    # the registers and their bits (minikvm.devices.serial_reg), re-exported
    *serial_reg.__all__,
    # the model
    "FIFO_SIZE", "UART_CLOCK_HZ", "RESET_DIVISOR", "Uart16550", "describe_lcr",
]

#: Depth of each FIFO on a 16550A.
FIFO_SIZE = 16
#: The PC's UART clock (1.8432 MHz); baud = clock / (16 * divisor).
UART_CLOCK_HZ = 1_843_200
#: Divisor after power-on. The chip leaves it undefined; a PC BIOS sets 12
#: (9600 baud). We have no BIOS, so the model plays its part.
RESET_DIVISOR = 12

_TRIGGER_BYTES = {
    UART_FCR_R_TRIG_00: 1,
    UART_FCR_R_TRIG_01: 4,
    UART_FCR_R_TRIG_10: 8,
    UART_FCR_R_TRIG_11: 14,
}

_IIR_WORDS = {
    UART_IIR_NO_INT: "no interrupt pending",
    UART_IIR_RLSI: "receiver line status interrupt",
    UART_IIR_RDI: "received data available interrupt",
    UART_IIR_RX_TIMEOUT: "character timeout interrupt",
    UART_IIR_THRI: "THR empty interrupt",
    UART_IIR_MSI: "modem status interrupt",
}

_HOST_MODEM_INPUTS = UART_MSR_DCD | UART_MSR_DSR | UART_MSR_CTS
#: Counters kept for the curious, saved with the state (a restored TUI shows the same).
_COUNTERS = ("tx_count", "rx_count", "loopback_count", "overruns", "rx_refused")
#: Register fields whose saved value is any byte.
_BYTE_FIELDS = ("dll", "dlm", "lcr", "scr", "rbr_last")
#: Every field of a saved state, in the order save() writes them.
_SAVED_FIELDS = (*_BYTE_FIELDS, "ier", "mcr", "fifo_enabled", "fcr_trigger", "fcr_dma",
                 "rx_fifo", "tx_fifo", "lsr_errors", "msr_delta", "modem_inputs",
                 "thre_pending", "irq_level", *_COUNTERS)
_TX_HISTORY = 256  # recent transmitted bytes kept for state() (the TUI shows them)


def _char(byte: int) -> str:
    """How a byte is shown next to its hex value: 'H', '\\n', or nothing."""
    if 0x20 <= byte < 0x7F:
        return f" {chr(byte)!r}"
    named = {0x0A: "'\\n'", 0x0D: "'\\r'", 0x09: "'\\t'", 0x08: "'\\b'", 0x1B: "ESC"}
    return f" {named[byte]}" if byte in named else ""


def _bits(value: int, words: list[tuple[int, str]]) -> list[str]:
    return [word for bit, word in words if value & bit]


_IER_WORDS = [(UART_IER_RDI, "received data"), (UART_IER_THRI, "THR empty"),
              (UART_IER_RLSI, "line status"), (UART_IER_MSI, "modem status")]
_LSR_WORDS = [(UART_LSR_DR, "data ready"), (UART_LSR_OE, "overrun error"),
              (UART_LSR_PE, "parity error"), (UART_LSR_FE, "framing error"),
              (UART_LSR_BI, "break"), (UART_LSR_THRE, "THR empty"),
              (UART_LSR_TEMT, "transmitter empty"), (UART_LSR_FIFOE, "error in RX FIFO")]
_MCR_WORDS = [(UART_MCR_DTR, "DTR"), (UART_MCR_RTS, "RTS"), (UART_MCR_OUT1, "OUT1"),
              (UART_MCR_OUT2, "OUT2 (IRQ gate open)"), (UART_MCR_LOOP, "loopback")]
_MSR_WORDS = [(UART_MSR_DCTS, "CTS changed"), (UART_MSR_DDSR, "DSR changed"),
              (UART_MSR_TERI, "ring ended"), (UART_MSR_DDCD, "DCD changed"),
              (UART_MSR_CTS, "CTS"), (UART_MSR_DSR, "DSR"), (UART_MSR_RI, "RI"),
              (UART_MSR_DCD, "DCD")]

# Bits by the suffix of their Linux name (UART_LSR_THRE -> "THRE"): short
# enough for a panel row, and greppable in serial_reg.h.
_IER_BITS = [(UART_IER_RDI, "RDI"), (UART_IER_THRI, "THRI"), (UART_IER_RLSI, "RLSI"),
             (UART_IER_MSI, "MSI")]
_LSR_BITS = [(UART_LSR_DR, "DR"), (UART_LSR_OE, "OE"), (UART_LSR_PE, "PE"),
             (UART_LSR_FE, "FE"), (UART_LSR_BI, "BI"), (UART_LSR_THRE, "THRE"),
             (UART_LSR_TEMT, "TEMT"), (UART_LSR_FIFOE, "FIFOE")]
_MCR_BITS = [(UART_MCR_DTR, "DTR"), (UART_MCR_RTS, "RTS"), (UART_MCR_OUT1, "OUT1"),
             (UART_MCR_OUT2, "OUT2"), (UART_MCR_LOOP, "LOOP")]
_MSR_BITS = [(UART_MSR_DCTS, "DCTS"), (UART_MSR_DDSR, "DDSR"), (UART_MSR_TERI, "TERI"),
             (UART_MSR_DDCD, "DDCD"), (UART_MSR_CTS, "CTS"), (UART_MSR_DSR, "DSR"),
             (UART_MSR_RI, "RI"), (UART_MSR_DCD, "DCD")]


def _bit_row(value: int, names: list[tuple[int, str]]) -> str:
    """``0x60 THRE TEMT``: a register's value and its set bits ("-" when none)."""
    return f"{value:#04x} {' '.join(_bits(value, names)) or '-'}"


def describe_lcr(lcr: int) -> str:
    """LCR in words, e.g. ``8N1`` plus break and DLAB."""
    data_bits = 5 + (lcr & 0x03)
    if not lcr & UART_LCR_PARITY:
        parity = "N"
    elif lcr & UART_LCR_SPAR:
        parity = "S" if lcr & UART_LCR_EPAR else "M"  # stick 0 ("space") or 1 ("mark")
    else:
        parity = "E" if lcr & UART_LCR_EPAR else "O"
    if lcr & UART_LCR_STOP:
        stop = "1.5" if data_bits == 5 else "2"
    else:
        stop = "1"
    words = [f"{data_bits}{parity}{stop}"]
    if lcr & UART_LCR_SBC:
        words.append("sending break")
    if lcr & UART_LCR_DLAB:
        words.append("DLAB on (offsets 0-1 are the divisor latch)")
    return ", ".join(words)


class Uart16550(Device):
    """A 16550A UART. See the module docstring for the rules it follows.

    ``irq`` is the interrupt wire (GSI 4 for COM1); ``output`` receives each
    transmitted byte (see :mod:`minikvm.hostio` for sinks); host input comes
    in through :meth:`receive`, no more than :meth:`rx_space` bytes at a time.
    """

    model = "16550A UART"

    def __init__(self, irq: InterruptLine | None = None,
                 output: Callable[[bytes], None] | None = None,
                 name: str = "uart0") -> None:
        self.name = name
        self.irq = irq
        self.output = output
        # Not touched by a chip reset (the datasheet's MR pin leaves them alone).
        self.divisor = RESET_DIVISOR
        self.scr = 0
        self._host_msr = _HOST_MODEM_INPUTS
        # Counters for the curious (the TUI, tests).
        self.tx_count = 0          # bytes sent to ``output``
        self.rx_count = 0          # bytes that arrived on the input pin (host or loopback)
        self.loopback_count = 0    # bytes that went TX -> RX in loopback
        self.overruns = 0          # bytes lost to overrun
        self.rx_refused = 0        # host bytes offered while in loopback (input pin cut)
        self.tx_recent = bytearray()
        self._line_level = False
        self._last: tuple[int, bool, int, str, str] | None = None
        self.ier = 0
        self.lcr = 0
        self.mcr = 0
        self.fifo_enabled = False
        self.fcr_trigger = UART_FCR_R_TRIG_00
        self.fcr_dma = 0
        self._rx: deque[int] = deque()
        self._rbr_last = 0
        self._lsr_errors = 0
        self._thre_pending = False
        self._msr_delta = 0
        self._reset_registers()

    # --- reset ----------------------------------------------------------------------

    def reset(self) -> None:
        """A master reset (the MR pin, table III): registers back to power-on values.

        IER, LCR, MCR, FCR are 0, LSR reads 0x60, IIR 0x01, MSR deltas clear;
        the FIFOs are emptied. The divisor latch and SCR keep their values.
        """
        self._reset_registers()
        self._update_irq()

    def _reset_registers(self) -> None:
        self.ier = 0
        self.lcr = 0
        self.mcr = 0
        self.fifo_enabled = False
        self.fcr_trigger = UART_FCR_R_TRIG_00
        self.fcr_dma = 0
        self._rx.clear()
        self._rbr_last = 0
        self._lsr_errors = 0
        self._thre_pending = False
        self._msr_delta = 0

    # --- what the rest of the VMM calls ---------------------------------------------------

    @property
    def loopback(self) -> bool:
        return bool(self.mcr & UART_MCR_LOOP)

    @property
    def dlab(self) -> bool:
        return bool(self.lcr & UART_LCR_DLAB)

    @property
    def rx_capacity(self) -> int:
        """16 with FIFOs on, 1 (the RBR alone) with FIFOs off."""
        return FIFO_SIZE if self.fifo_enabled else 1

    @property
    def rx_trigger(self) -> int:
        """The RX FIFO trigger level in bytes (1, 4, 8 or 14)."""
        return _TRIGGER_BYTES[self.fcr_trigger]

    @property
    def irq_level(self) -> bool:
        """The level this UART drives on its interrupt line now."""
        return self._line_level

    @property
    def receiver_ready(self) -> bool:
        """Does the driver want host input now? While not, the host holds it back.

        A 16550A has no "receiver enable" bit: its receiver samples SIN all the
        time, and a byte that arrives while the driver is still setting the chip
        up is lost to the FCR write that clears the FIFOs (section 8.5) or to an
        overrun. On a real line the other end holds it back by *flow control*:
        a terminal set for RTS/CTS handshaking sends only while the UART drives
        RTS (MCR bit 1; the datasheet's pin description: RTS "informs the
        MODEM or data set that the UART is ready to exchange data"). The host
        end here is such a terminal. It also takes IER.RDI ("interrupt me when
        data is received") as the same promise, for drivers that never write
        MCR. Linux's 8250 driver does both only after clearing the FIFOs and
        reading RBR to discard stale bytes (``serial8250_do_startup``, then
        ``uart_port_dtr_rts``), so input that waits for them survives set-up.
        In loopback the input pin is cut: never ready.
        """
        if self.loopback:
            return False
        return bool(self.mcr & UART_MCR_RTS or self.ier & UART_IER_RDI)

    def rx_space(self) -> int:
        """How many host bytes :meth:`receive` can take now without an overrun.

        0 while the receiver is not ready (:attr:`receiver_ready`: no RTS, no
        IER.RDI, or loopback): the host keeps its bytes until the driver asks
        for them, as a terminal with hardware flow control would.
        """
        if not self.receiver_ready:
            return 0
        return self.rx_capacity - len(self._rx)

    def rx_pending(self) -> int:
        """Received bytes the driver has not read yet (RBR / the RX FIFO)."""
        return len(self._rx)

    def receive(self, data: bytes) -> int:
        """Bytes arriving on the serial input pin from the host, as one burst.

        Returns how many were stored without an overrun. Bytes beyond the
        room left set LSR.OE and are lost (see the module docstring). In
        loopback nothing arrives: the bytes are dropped and counted in
        ``rx_refused``.
        """
        data = bytes(data)
        if self.loopback:
            self.rx_refused += len(data)
            return 0
        stored = 0
        for byte in data:
            stored += self._arrive(byte)
        self._update_irq()
        return stored

    def set_modem_inputs(self, msr_bits: int) -> None:
        """Set the modem input levels (UART_MSR_CTS/DSR/RI/DCD) the host side drives.

        Changes set the MSR change bits (and may raise the modem status
        interrupt). In loopback the new levels are remembered but invisible.
        """
        before = self._modem_inputs()
        self._host_msr = msr_bits & UART_MSR_STATUS_BITS
        self._note_input_change(before, self._modem_inputs())
        self._update_irq()

    # --- the bus side -------------------------------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        if not (isinstance(offset, int) and 0 <= offset <= 7):
            self._last = None
            return all_ones(size) if size in (1, 2, 4, 8) else 0xFF  # nothing decodes here
        if offset == UART_RX and self.dlab:
            value, detail = self.divisor & 0xFF, self._divisor_words()
        elif offset == UART_DLM and self.dlab:
            value, detail = self.divisor >> 8, self._divisor_words()
        elif offset == UART_RX:
            value, detail = self._read_rbr()
        elif offset == UART_IER:
            value, detail = self.ier, self._ier_words(self.ier)
        elif offset == UART_IIR:
            value, detail = self._read_iir()
        elif offset == UART_LCR:
            value, detail = self.lcr, describe_lcr(self.lcr)
        elif offset == UART_MCR:
            value, detail = self.mcr, self._mcr_words(self.mcr)
        elif offset == UART_LSR:
            value, detail = self._read_lsr()
        elif offset == UART_MSR:
            value, detail = self._read_msr()
        else:
            value, detail = self.scr, "scratch register"
        self._last = (offset, False, value, self.register_name(offset, False), detail)
        self._update_irq()
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        if not (isinstance(offset, int) and 0 <= offset <= 7):
            self._last = None
            return
        try:
            value = int(value) & 0xFF  # an 8-bit device: only the low byte counts
        except (TypeError, ValueError):
            value = 0
        name = self.register_name(offset, True)
        if offset == UART_DLL and self.dlab:
            self.divisor = (self.divisor & 0xFF00) | value
            detail = self._divisor_words()
        elif offset == UART_DLM and self.dlab:
            self.divisor = (self.divisor & 0x00FF) | (value << 8)
            detail = self._divisor_words()
        elif offset == UART_TX:
            detail = self._write_thr(value)
        elif offset == UART_IER:
            detail = self._write_ier(value)
        elif offset == UART_FCR:
            detail = self._write_fcr(value)
        elif offset == UART_LCR:
            self.lcr = value
            detail = describe_lcr(value)
        elif offset == UART_MCR:
            detail = self._write_mcr(value)
        elif offset in (UART_LSR, UART_MSR):
            # Both are status registers; the datasheet reserves LSR writes for
            # factory testing. We ignore them.
            detail = "ignored (read-only status register)"
        else:
            self.scr = value
            detail = "scratch register"
        self._last = (offset, True, value, name, detail)
        self._update_irq()

    # --- register behaviour -----------------------------------------------------------------

    def _read_rbr(self) -> tuple[int, str]:
        if not self._rx:
            # The holding register keeps the last byte; reading it again is harmless.
            return self._rbr_last, "RX empty (the last byte again)"
        value = self._rx.popleft()
        self._rbr_last = value
        left = len(self._rx)
        if self.fifo_enabled:
            return value, f"received; {left} byte{'s' if left != 1 else ''} left in RX FIFO"
        return value, "received"

    def _read_iir(self) -> tuple[int, str]:
        source = self._interrupt_id()
        value = source | (UART_IIR_FIFO_ENABLED_16550A if self.fifo_enabled else 0)
        detail = _IIR_WORDS[source]
        if source == UART_IIR_THRI:
            # Reading IIR acknowledges the THR-empty interrupt (only when it is
            # the source reported; a higher-priority one hides it).
            self._thre_pending = False
            detail += " (cleared by this read)"
        return value, detail

    def _read_lsr(self) -> tuple[int, str]:
        value = self._lsr()
        self._lsr_errors = 0  # reading LSR clears OE/PE/FE/BI (section 8.6.3)
        words = _bits(value, _LSR_WORDS)
        return value, ", ".join(words) if words else "nothing to report"

    def _read_msr(self) -> tuple[int, str]:
        value = self._msr()
        self._msr_delta = 0  # reading MSR clears the change bits
        words = _bits(value, _MSR_WORDS)
        return value, ", ".join(words) if words else "all modem inputs off"

    def _write_thr(self, value: int) -> str:
        self._thre_pending = False  # writing THR acknowledges THR-empty ...
        if self.loopback:
            self.loopback_count += 1
            stored = self._arrive(value)
            detail = "looped back into RX" if stored else "looped back: RX full, overrun"
        else:
            self.tx_count += 1
            self.tx_recent.append(value)
            if len(self.tx_recent) > _TX_HISTORY:
                del self.tx_recent[:-_TX_HISTORY]
            if self.output is not None:
                self.output(bytes((value,)))
            detail = "transmitted"
        # ... and the byte leaves THR at once, so THR becomes empty again.
        self._thre_pending = True
        return detail

    def _write_ier(self, value: int) -> str:
        before = self.ier
        self.ier = value & UART_IER_ALL_INTR  # bits 7:4 are always 0 on a 16550A
        detail = self._ier_words(self.ier)
        if self.ier & UART_IER_THRI and not before & UART_IER_THRI:
            # Enabling THRI while THR is empty (always, here) raises THR-empty.
            self._thre_pending = True
            detail += " (THR is empty: THR empty interrupt raised)"
        return detail

    def _write_fcr(self, value: int) -> str:
        enable = bool(value & UART_FCR_ENABLE_FIFO)
        words = []
        if enable != self.fifo_enabled:
            # Switching between FIFO and 16450 mode empties both FIFOs.
            self._rx.clear()
            self.fifo_enabled = enable
            words.append("FIFOs on" if enable else "FIFOs off (16450 mode)")
        if not enable:
            # With FCR0 clear the other FCR bits are not written (section 8.5).
            return ", ".join(words) if words else "FIFOs stay off"
        if value & UART_FCR_CLEAR_RCVR:
            self._rx.clear()
            words.append("RX FIFO cleared")
        if value & UART_FCR_CLEAR_XMIT:
            words.append("TX FIFO cleared")  # it is always empty here
        self.fcr_trigger = value & UART_FCR_TRIGGER_MASK
        self.fcr_dma = value & UART_FCR_DMA_SELECT
        words.append(f"RX trigger {self.rx_trigger} byte{'s' if self.rx_trigger > 1 else ''}")
        return ", ".join(words)

    def _write_mcr(self, value: int) -> str:
        before = self._modem_inputs()
        self.mcr = value & UART_MCR_WRITABLE
        self._note_input_change(before, self._modem_inputs())
        return self._mcr_words(self.mcr)

    # --- internal state ------------------------------------------------------------------------

    def _arrive(self, byte: int) -> int:
        """One byte completes in the receiver shift register. 1 if stored cleanly."""
        self.rx_count += 1
        if len(self._rx) < self.rx_capacity:
            self._rx.append(byte)
            return 1
        self._lsr_errors |= UART_LSR_OE
        self.overruns += 1
        if not self.fifo_enabled:
            # 16450 mode: the new byte overwrites the unread one in RBR.
            self._rx[0] = byte
        # FIFO mode: the new byte stays in the shift register and is lost.
        return 0

    def _modem_inputs(self) -> int:
        """The levels of CTS/DSR/RI/DCD as MSR bits 7:4 show them."""
        if not self.loopback:
            return self._host_msr
        inputs = 0
        if self.mcr & UART_MCR_DTR:
            inputs |= UART_MSR_DSR
        if self.mcr & UART_MCR_RTS:
            inputs |= UART_MSR_CTS
        if self.mcr & UART_MCR_OUT1:
            inputs |= UART_MSR_RI
        if self.mcr & UART_MCR_OUT2:
            inputs |= UART_MSR_DCD
        return inputs

    def _note_input_change(self, before: int, after: int) -> None:
        changed = before ^ after
        if changed & UART_MSR_CTS:
            self._msr_delta |= UART_MSR_DCTS
        if changed & UART_MSR_DSR:
            self._msr_delta |= UART_MSR_DDSR
        if changed & UART_MSR_DCD:
            self._msr_delta |= UART_MSR_DDCD
        if before & UART_MSR_RI and not after & UART_MSR_RI:
            self._msr_delta |= UART_MSR_TERI  # only the trailing edge of RI counts

    def _lsr(self) -> int:
        value = UART_LSR_THRE | UART_LSR_TEMT | self._lsr_errors
        if self._rx:
            value |= UART_LSR_DR
        return value

    def _msr(self) -> int:
        return self._modem_inputs() | self._msr_delta

    def _interrupt_id(self) -> int:
        """IIR bits 3:0: the highest-priority enabled source (table IV)."""
        if self.ier & UART_IER_RLSI and self._lsr_errors:
            return UART_IIR_RLSI
        if self.ier & UART_IER_RDI and self._rx:
            if not self.fifo_enabled or len(self._rx) >= self.rx_trigger:
                return UART_IIR_RDI
            return UART_IIR_RX_TIMEOUT
        if self.ier & UART_IER_THRI and self._thre_pending:
            return UART_IIR_THRI
        if self.ier & UART_IER_MSI and self._msr_delta:
            return UART_IIR_MSI
        return UART_IIR_NO_INT

    def _iir(self) -> int:
        """IIR as a read would return it, without the read's side effect."""
        fifo_bits = UART_IIR_FIFO_ENABLED_16550A if self.fifo_enabled else 0
        return self._interrupt_id() | fifo_bits

    def _wire_level(self) -> bool:
        """The level the registers put on the interrupt wire.

        INTR is high while an enabled source is pending; on a PC it reaches
        the PIC only while OUT2 is on, and loopback forces OUT2's pin off.
        """
        return (self._interrupt_id() != UART_IIR_NO_INT
                and bool(self.mcr & UART_MCR_OUT2)
                and not self.loopback)

    def _update_irq(self) -> None:
        """Recompute the interrupt wire from state; drive it only on a change."""
        level = self._wire_level()
        if level != self._line_level:
            self._line_level = level
            if self.irq is not None:
                self.irq.set_level(level)

    # --- save and restore -----------------------------------------------------------------------

    def save(self) -> dict[str, Any]:
        """Every register and latch as the chip holds it, the RX FIFO, the
        modem inputs the host drives, the interrupt wire's level and the
        counters. The TX FIFO is saved for the record and is always empty
        (transmission is instantaneous). Not saved: the ``output`` sink (a
        host resource), ``tx_recent`` and the last access's words (for the
        TUI and trace only)."""
        registers = {"dll": self.divisor & 0xFF, "dlm": self.divisor >> 8, "lcr": self.lcr,
                     "scr": self.scr, "rbr_last": self._rbr_last, "ier": self.ier,
                     "mcr": self.mcr, "fifo_enabled": self.fifo_enabled,
                     "fcr_trigger": self.fcr_trigger, "fcr_dma": self.fcr_dma,
                     "rx_fifo": hex_bytes(bytes(self._rx)), "tx_fifo": "",
                     "lsr_errors": self._lsr_errors, "msr_delta": self._msr_delta,
                     "modem_inputs": self._host_msr, "thre_pending": self._thre_pending,
                     "irq_level": self._line_level}
        return registers | {name: getattr(self, name) for name in _COUNTERS}

    def check_state(self, state: Any) -> None:
        self._checked_copy(state)

    def restore(self, state: dict[str, Any]) -> None:
        """Take ``state`` (checked whole first), then drive the wire to its level."""
        self._checked_copy(state)
        self._assign(state)
        self._line_level = state["irq_level"]
        if self.irq is not None:
            self.irq.set_level(self._line_level)

    def _checked_copy(self, state: Any) -> Uart16550:
        """A scratch UART holding ``state``, every field checked: ranges, bits
        that exist, the FIFO no deeper than the chip's, and a wire level that
        the registers really produce."""
        name = self.name
        fields = SavedState(state, name, _SAVED_FIELDS)
        for key in _BYTE_FIELDS:
            fields.integer(key, 0, 0xFF)
        for key in _COUNTERS:
            fields.integer(key, 0, MAX_U64)
        fields.bits("ier", UART_IER_ALL_INTR)
        fields.bits("mcr", UART_MCR_WRITABLE)
        fields.bits("lsr_errors", UART_LSR_BRK_ERROR_BITS)
        fields.bits("msr_delta", UART_MSR_ANY_DELTA)
        fields.bits("modem_inputs", UART_MSR_STATUS_BITS)
        fields.choice("fcr_trigger", _TRIGGER_BYTES)
        fields.choice("fcr_dma", (0, UART_FCR_DMA_SELECT))
        fifo_on = fields.boolean("fifo_enabled")
        fields.hex_bytes("rx_fifo", FIFO_SIZE if fifo_on else 1)
        fields.hex_bytes("tx_fifo", 0)
        fields.boolean("thre_pending")
        level = fields.boolean("irq_level")
        scratch = Uart16550(name=name)
        scratch._assign(state)
        if scratch._wire_level() != level:
            raise fields.fail("irq_level", f"= {level} is not the level the saved registers "
                                           "drive")
        return scratch

    def _assign(self, state: dict[str, Any]) -> None:
        """Set every saved field (``state`` is already checked)."""
        self.divisor = state["dll"] | state["dlm"] << 8
        self.lcr, self.scr, self._rbr_last = state["lcr"], state["scr"], state["rbr_last"]
        self.ier, self.mcr = state["ier"], state["mcr"]
        self.fifo_enabled = state["fifo_enabled"]
        self.fcr_trigger, self.fcr_dma = state["fcr_trigger"], state["fcr_dma"]
        self._rx = deque(bytes.fromhex(state["rx_fifo"]))
        self._lsr_errors, self._msr_delta = state["lsr_errors"], state["msr_delta"]
        self._host_msr = state["modem_inputs"]
        self._thre_pending = state["thre_pending"]
        for name in _COUNTERS:
            setattr(self, name, state[name])

    # --- words ---------------------------------------------------------------------------------

    def _divisor_words(self) -> str:
        if self.divisor == 0:
            return "divisor 0x0000 (no baud clock)"
        baud = UART_CLOCK_HZ // (16 * self.divisor)
        return f"divisor {self.divisor:#06x} ({baud} baud)"

    @staticmethod
    def _ier_words(ier: int) -> str:
        words = _bits(ier, _IER_WORDS)
        if not words:
            return "all interrupts disabled"
        return "enable " + ", ".join(words) + " interrupt" + ("s" if len(words) > 1 else "")

    @staticmethod
    def _mcr_words(mcr: int) -> str:
        words = _bits(mcr, _MCR_WORDS)
        if not mcr & UART_MCR_OUT2:
            words.append("IRQ gated off (OUT2 clear)")
        return ", ".join(words)

    def register_name(self, offset: int, is_write: bool) -> str:
        if offset in (UART_DLL, UART_DLM) and self.dlab:
            return "DLL" if offset == UART_DLL else "DLM"
        names = {
            UART_RX: "THR" if is_write else "RBR",
            UART_IER: "IER",
            UART_IIR: "FCR" if is_write else "IIR",
            UART_LCR: "LCR",
            UART_MCR: "MCR",
            UART_LSR: "LSR",
            UART_MSR: "MSR",
            UART_SCR: "SCR",
        }
        return names.get(offset, super().register_name(offset, is_write))

    def describe(self, offset: int, size: int, is_write: bool, value: int) -> str:
        """The access just performed, in words: ``LSR read -> 0x60: THR empty, ...``."""
        byte = value & 0xFF
        last = self._last
        if last is not None and last[:3] == (offset, is_write, byte):
            name, detail = last[3], last[4]
        else:
            name = self.register_name(offset, is_write)
            detail = "no register here" if not 0 <= offset <= 7 else ""
        if is_write:
            text = f"{name} write {byte:#04x}"
            if name == "THR":
                text += _char(byte)
        else:
            text = f"{name} read -> {value:#04x}"
            if name == "RBR":
                text += _char(byte)
        return f"{text}: {detail}" if detail else text

    def state(self) -> dict[str, Any]:
        """Every register (IIR/LSR/MSR as a read would show them, without the
        read's side effects), FIFO levels, the interrupt line and counters."""
        return {
            "rbr_last": self._rbr_last,
            "ier": self.ier,
            "iir": self._iir(),
            "fcr_trigger": self.fcr_trigger,
            "fifo_enabled": self.fifo_enabled,
            "rx_trigger": self.rx_trigger,
            "lcr": self.lcr,
            "line": describe_lcr(self.lcr),
            "mcr": self.mcr,
            "lsr": self._lsr(),
            "msr": self._msr(),
            "scr": self.scr,
            "dll": self.divisor & 0xFF,
            "dlm": self.divisor >> 8,
            "divisor": self.divisor,
            "baud": UART_CLOCK_HZ // (16 * self.divisor) if self.divisor else 0,
            "dlab": self.dlab,
            "loopback": self.loopback,
            "rx_fifo": list(self._rx),
            "rx_level": len(self._rx),
            "tx_level": 0,  # transmission is instantaneous
            "thre_pending": self._thre_pending,
            "interrupt": _IIR_WORDS[self._interrupt_id()],
            "irq_level": self._line_level,
            "tx_count": self.tx_count,
            "rx_count": self.rx_count,
            "loopback_count": self.loopback_count,
            "overruns": self.overruns,
            "rx_refused": self.rx_refused,
            "tx_recent": self.tx_recent.decode("latin-1"),
        }

    def state_rows(self) -> list[tuple[str, str]]:
        """The registers with their bits named, the baud rate, the FIFO and
        the interrupt line, for the TUI's device panel."""
        state = self.state()
        fifo = (f"{state['rx_level']}/{FIFO_SIZE} bytes, trigger {state['rx_trigger']}, "
                f"FIFOs {'on' if state['fifo_enabled'] else 'off'}")
        counts = f"sent {state['tx_count']}, received {state['rx_count']}"
        if state["overruns"]:
            counts += f", overruns {state['overruns']}"
        return [
            ("LSR", _bit_row(state["lsr"], _LSR_BITS)),
            ("IER", _bit_row(state["ier"], _IER_BITS)),
            ("IIR", f"{state['iir']:#04x} {state['interrupt']}"),
            ("LCR", f"{state['lcr']:#04x} {state['line']}"),
            ("MCR", _bit_row(state["mcr"], _MCR_BITS)),
            ("MSR", _bit_row(state["msr"], _MSR_BITS)),
            ("divisor", f"{state['divisor']} ({state['baud']} baud)"),
            ("RX FIFO", fifo),
            ("IRQ line", "high" if state["irq_level"] else "low"),
            ("bytes", counts),
        ]
