"""The 16550A UART, register by register (PC16550D datasheet behaviour)."""

from __future__ import annotations

import pytest

from minikvm.devices.base import RecordingLine
from minikvm.devices.uart import (
    UART_DLL, UART_DLM, UART_FCR, UART_FCR_CLEAR_RCVR, UART_FCR_CLEAR_XMIT,
    UART_FCR_ENABLE_FIFO, UART_FCR_R_TRIG_00, UART_FCR_R_TRIG_01, UART_FCR_R_TRIG_10,
    UART_FCR_R_TRIG_11, UART_IER, UART_IER_MSI, UART_IER_RDI, UART_IER_RLSI, UART_IER_THRI,
    UART_IIR, UART_IIR_MSI, UART_IIR_NO_INT, UART_IIR_RDI, UART_IIR_RLSI,
    UART_IIR_RX_TIMEOUT, UART_IIR_THRI, UART_LCR, UART_LCR_DLAB, UART_LCR_WLEN8, UART_LSR,
    UART_LSR_DR, UART_LSR_OE, UART_LSR_TEMT, UART_LSR_THRE, UART_MCR, UART_MCR_DTR,
    UART_MCR_LOOP, UART_MCR_OUT1, UART_MCR_OUT2, UART_MCR_RTS, UART_MSR, UART_MSR_CTS,
    UART_MSR_DCD, UART_MSR_DCTS, UART_MSR_DDCD, UART_MSR_DDSR, UART_MSR_DSR, UART_MSR_RI,
    UART_MSR_TERI, UART_RX, UART_SCR, UART_TX, Uart16550,
)


class CountingLine:
    """An interrupt line that records every set_level call, changed or not."""

    def __init__(self) -> None:
        self.calls: list[bool] = []

    def set_level(self, level: bool) -> None:
        self.calls.append(level)


def make() -> tuple[Uart16550, RecordingLine, list[bytes]]:
    line = RecordingLine()
    sent: list[bytes] = []
    return Uart16550(irq=line, output=sent.append), line, sent


def rd(uart: Uart16550, offset: int) -> int:
    return uart.read(offset, 1)


def wr(uart: Uart16550, offset: int, value: int) -> None:
    uart.write(offset, 1, value)


# --- reset and plain registers ------------------------------------------------------------

def test_reset_values_lsr_0x60_iir_0x01():
    uart, line, _ = make()
    assert rd(uart, UART_LSR) == 0x60
    assert rd(uart, UART_IIR) == 0x01
    assert rd(uart, UART_IER) == 0
    assert rd(uart, UART_LCR) == 0
    assert rd(uart, UART_MCR) == 0
    assert rd(uart, UART_MSR) == UART_MSR_CTS | UART_MSR_DSR | UART_MSR_DCD
    assert line.level is False


def test_reset_method_restores_power_on_values_but_keeps_divisor_and_scratch():
    uart, _, _ = make()
    wr(uart, UART_LCR, UART_LCR_DLAB)
    wr(uart, UART_DLL, 0x01)
    wr(uart, UART_LCR, UART_LCR_WLEN8)
    wr(uart, UART_SCR, 0x5A)
    wr(uart, UART_IER, 0x0F)
    wr(uart, UART_FCR, UART_FCR_ENABLE_FIFO)
    uart.receive(b"xyz")
    uart.reset()
    assert (rd(uart, UART_LSR), rd(uart, UART_IIR), rd(uart, UART_IER)) == (0x60, 0x01, 0)
    assert rd(uart, UART_LCR) == 0
    assert rd(uart, UART_SCR) == 0x5A
    assert uart.divisor == 1


def test_scratch_register_holds_any_byte():
    uart, _, _ = make()
    for value in (0x00, 0xA5, 0x5A, 0xFF):
        wr(uart, UART_SCR, value)
        assert rd(uart, UART_SCR) == value


def test_ier_reads_back_low_nibble_only():
    uart, _, _ = make()
    wr(uart, UART_IER, 0xFF)
    assert rd(uart, UART_IER) == 0x0F
    wr(uart, UART_IER, 0x40)  # XScale's UUE bit does not exist on a 16550A
    assert rd(uart, UART_IER) == 0


def test_mcr_keeps_bits_4_to_0_only():
    uart, _, _ = make()
    wr(uart, UART_MCR, 0xFF)
    assert rd(uart, UART_MCR) == 0x1F


def test_lsr_and_msr_writes_are_ignored():
    uart, _, _ = make()
    wr(uart, UART_LSR, 0x00)
    wr(uart, UART_MSR, 0x00)
    assert rd(uart, UART_LSR) == 0x60
    assert rd(uart, UART_MSR) == 0xB0


# --- transmit -----------------------------------------------------------------------------

def test_thr_write_emits_exactly_that_byte():
    uart, _, sent = make()
    for byte in b"Hi\n\x00\xff":
        wr(uart, UART_TX, byte)
    assert b"".join(sent) == b"Hi\n\x00\xff"
    assert uart.tx_count == 5


def test_lsr_thre_set_after_thr_write():
    uart, _, _ = make()
    wr(uart, UART_TX, ord("H"))
    lsr = rd(uart, UART_LSR)
    assert lsr & UART_LSR_THRE
    assert lsr & UART_LSR_TEMT


def test_thr_write_uses_low_byte_of_wider_access():
    uart, _, sent = make()
    uart.write(UART_TX, 2, 0x1241)
    assert sent == [b"A"]


# --- divisor latch ------------------------------------------------------------------------

def test_dlab_routes_offsets_0_1_to_divisor():
    uart, _, sent = make()
    wr(uart, UART_IER, UART_IER_RDI)
    uart.receive(b"Q")
    wr(uart, UART_LCR, UART_LCR_DLAB | UART_LCR_WLEN8)
    wr(uart, UART_DLL, 0x34)
    wr(uart, UART_DLM, 0x12)
    assert rd(uart, UART_DLL) == 0x34
    assert rd(uart, UART_DLM) == 0x12
    assert sent == []                        # the DLL write transmitted nothing
    assert uart.state()["rx_fifo"] == [ord("Q")]  # the DLL read popped nothing
    wr(uart, UART_LCR, UART_LCR_WLEN8)
    assert rd(uart, UART_IER) == UART_IER_RDI  # IER untouched by the DLM write
    assert uart.divisor == 0x1234
    assert rd(uart, UART_RX) == ord("Q")


def test_divisor_sets_baud_rate():
    uart, _, _ = make()
    wr(uart, UART_LCR, UART_LCR_DLAB)
    wr(uart, UART_DLL, 1)
    wr(uart, UART_DLM, 0)
    assert uart.state()["baud"] == 115200


# --- receive and FIFOs --------------------------------------------------------------------

def test_received_byte_sets_dr_and_reading_rbr_takes_it():
    uart, _, _ = make()
    assert uart.receive(b"k") == 1
    assert rd(uart, UART_LSR) & UART_LSR_DR
    assert rd(uart, UART_RX) == ord("k")
    assert not rd(uart, UART_LSR) & UART_LSR_DR


def test_rbr_read_when_empty_repeats_last_byte():
    uart, _, _ = make()
    uart.receive(b"z")
    rd(uart, UART_RX)
    assert rd(uart, UART_RX) == ord("z")


def test_fifo_preserves_order():
    uart, _, _ = make()
    wr(uart, UART_FCR, UART_FCR_ENABLE_FIFO)
    assert uart.receive(b"0123456789abcdef") == 16
    assert bytes(rd(uart, UART_RX) for _ in range(16)) == b"0123456789abcdef"


def test_rx_holds_16_bytes_with_fifos_and_1_without():
    uart, _, _ = make()
    wr(uart, UART_MCR, UART_MCR_RTS)  # host input is offered once the driver asks (RTS)
    assert uart.rx_space() == 1
    uart.receive(b"ab")
    assert uart.state()["rx_level"] == 1
    wr(uart, UART_FCR, UART_FCR_ENABLE_FIFO)  # mode change empties RX
    assert uart.rx_space() == 16
    uart.receive(bytes(range(40)))
    assert uart.state()["rx_level"] == 16


def test_overrun_sets_oe_and_drops_byte():
    uart, _, _ = make()
    wr(uart, UART_FCR, UART_FCR_ENABLE_FIFO)
    stored = uart.receive(bytes(range(17)))
    assert stored == 16
    assert uart.overruns == 1
    assert rd(uart, UART_LSR) & UART_LSR_OE
    assert bytes(rd(uart, UART_RX) for _ in range(16)) == bytes(range(16))  # 16 was lost
    assert not rd(uart, UART_LSR) & UART_LSR_DR


def test_overrun_in_16450_mode_replaces_unread_byte():
    uart, _, _ = make()
    assert uart.receive(b"ab") == 1
    assert rd(uart, UART_LSR) & UART_LSR_OE
    assert rd(uart, UART_RX) == ord("b")


def test_reading_lsr_clears_error_bits():
    uart, _, _ = make()
    uart.receive(b"ab")
    assert rd(uart, UART_LSR) & UART_LSR_OE
    assert rd(uart, UART_LSR) & 0x1E == 0


def test_fcr_clear_rcvr_empties_rx_fifo():
    uart, _, _ = make()
    wr(uart, UART_FCR, UART_FCR_ENABLE_FIFO)
    uart.receive(b"abc")
    wr(uart, UART_FCR, UART_FCR_ENABLE_FIFO | UART_FCR_CLEAR_RCVR | UART_FCR_CLEAR_XMIT)
    assert not rd(uart, UART_LSR) & UART_LSR_DR


def test_fcr_other_bits_ignored_while_fifo_enable_clear():
    uart, _, _ = make()
    wr(uart, UART_FCR, UART_FCR_R_TRIG_11)  # enable bit clear: nothing is programmed
    wr(uart, UART_FCR, UART_FCR_ENABLE_FIFO | UART_FCR_R_TRIG_11)
    assert uart.rx_trigger == 14
    wr(uart, UART_FCR, 0)
    wr(uart, UART_FCR, UART_FCR_R_TRIG_01)
    assert uart.rx_trigger == 14
    assert rd(uart, UART_IIR) & 0xC0 == 0


def test_iir_fifo_bits_set_exactly_when_fifos_on():
    uart, _, _ = make()
    assert rd(uart, UART_IIR) == 0x01
    wr(uart, UART_FCR, UART_FCR_ENABLE_FIFO)
    assert rd(uart, UART_IIR) == 0xC1
    wr(uart, UART_FCR, 0)
    assert rd(uart, UART_IIR) == 0x01


@pytest.mark.parametrize("fcr_bits, level", [
    (UART_FCR_R_TRIG_00, 1), (UART_FCR_R_TRIG_01, 4),
    (UART_FCR_R_TRIG_10, 8), (UART_FCR_R_TRIG_11, 14),
])
def test_rx_trigger_levels_1_4_8_14(fcr_bits, level):
    uart, _, _ = make()
    wr(uart, UART_FCR, UART_FCR_ENABLE_FIFO | fcr_bits)
    wr(uart, UART_IER, UART_IER_RDI)
    if level > 1:
        uart.receive(b"x" * (level - 1))
        assert rd(uart, UART_IIR) == 0xC0 | UART_IIR_RX_TIMEOUT
        uart.receive(b"x")
    else:
        uart.receive(b"x")
    assert rd(uart, UART_IIR) == 0xC0 | UART_IIR_RDI


def test_character_timeout_reports_data_below_trigger_until_rx_is_empty():
    uart, _, _ = make()
    wr(uart, UART_FCR, UART_FCR_ENABLE_FIFO | UART_FCR_R_TRIG_11)
    wr(uart, UART_IER, UART_IER_RDI)
    uart.receive(b"hi")
    assert rd(uart, UART_IIR) == 0xCC
    assert rd(uart, UART_IIR) == 0xCC  # reading IIR does not clear it
    rd(uart, UART_RX)
    assert rd(uart, UART_IIR) == 0xCC
    rd(uart, UART_RX)
    assert rd(uart, UART_IIR) == 0xC1


def test_rdi_in_16450_mode_is_data_available_never_timeout():
    uart, _, _ = make()
    wr(uart, UART_IER, UART_IER_RDI)
    uart.receive(b"a")
    assert rd(uart, UART_IIR) == UART_IIR_RDI
    rd(uart, UART_RX)
    assert rd(uart, UART_IIR) == UART_IIR_NO_INT


# --- interrupt identification -------------------------------------------------------------

def test_iir_priority_line_status_over_rx():
    uart, _, _ = make()
    wr(uart, UART_IER, UART_IER_RDI | UART_IER_RLSI | UART_IER_THRI)
    uart.receive(b"ab")  # overrun in 16450 mode
    assert rd(uart, UART_IIR) == UART_IIR_RLSI
    rd(uart, UART_LSR)  # clears the line status interrupt
    assert rd(uart, UART_IIR) == UART_IIR_RDI
    rd(uart, UART_RX)
    assert rd(uart, UART_IIR) == UART_IIR_THRI


def test_iir_priority_thre_over_modem_status():
    uart, _, _ = make()
    uart.set_modem_inputs(0)  # the terminal hangs up: CTS, DSR, DCD change
    wr(uart, UART_IER, UART_IER_THRI | UART_IER_MSI)
    assert rd(uart, UART_IIR) == UART_IIR_THRI
    assert rd(uart, UART_IIR) == UART_IIR_MSI
    assert rd(uart, UART_MSR) & 0x0F == UART_MSR_DCTS | UART_MSR_DDSR | UART_MSR_DDCD
    assert rd(uart, UART_IIR) == UART_IIR_NO_INT


def test_disabled_sources_do_not_show_in_iir():
    uart, _, _ = make()
    uart.receive(b"ab")
    uart.set_modem_inputs(0)
    assert rd(uart, UART_IIR) == UART_IIR_NO_INT


def test_thre_interrupt_raised_when_thri_enabled_with_thr_empty():
    uart, _, _ = make()
    wr(uart, UART_IER, UART_IER_THRI)
    assert rd(uart, UART_IIR) == UART_IIR_THRI


def test_thre_interrupt_cleared_by_reading_iir():
    uart, _, _ = make()
    wr(uart, UART_IER, UART_IER_THRI)
    rd(uart, UART_IIR)
    assert rd(uart, UART_IIR) == UART_IIR_NO_INT
    assert rd(uart, UART_LSR) & UART_LSR_THRE  # THR is still empty: only the interrupt went


def test_thre_interrupt_survives_iir_read_that_reported_a_higher_source():
    uart, _, _ = make()
    wr(uart, UART_IER, UART_IER_THRI | UART_IER_RDI)
    uart.receive(b"a")
    assert rd(uart, UART_IIR) == UART_IIR_RDI
    rd(uart, UART_RX)
    assert rd(uart, UART_IIR) == UART_IIR_THRI


def test_thre_interrupt_raised_again_after_each_thr_write():
    uart, _, sent = make()
    wr(uart, UART_IER, UART_IER_THRI)
    rd(uart, UART_IIR)
    wr(uart, UART_TX, ord("x"))
    assert sent == [b"x"]
    assert rd(uart, UART_IIR) == UART_IIR_THRI


def test_thre_interrupt_raised_again_when_thri_reenabled():
    # Linux's UART_BUG_THRE test in serial8250_do_startup.
    uart, _, _ = make()
    wr(uart, UART_IER, UART_IER_THRI)
    assert rd(uart, UART_IIR) == UART_IIR_THRI
    wr(uart, UART_IER, 0)
    wr(uart, UART_IER, UART_IER_THRI)
    assert rd(uart, UART_IIR) == UART_IIR_THRI


def test_thre_interrupt_not_raised_again_by_rewriting_same_ier():
    uart, _, _ = make()
    wr(uart, UART_IER, UART_IER_THRI)
    rd(uart, UART_IIR)
    wr(uart, UART_IER, UART_IER_THRI)
    assert rd(uart, UART_IIR) == UART_IIR_NO_INT


# --- modem lines and loopback ---------------------------------------------------------------

def test_loopback_returns_tx_to_rx():
    uart, _, sent = make()
    wr(uart, UART_MCR, UART_MCR_LOOP)
    wr(uart, UART_TX, ord("L"))
    assert sent == []
    assert rd(uart, UART_LSR) & UART_LSR_DR
    assert rd(uart, UART_RX) == ord("L")


def test_loopback_counts_the_fifo():
    # What Linux's size_fifo() does: 256 bytes out, count what comes back.
    uart, _, _ = make()
    wr(uart, UART_FCR, UART_FCR_ENABLE_FIFO | UART_FCR_CLEAR_RCVR | UART_FCR_CLEAR_XMIT)
    wr(uart, UART_MCR, UART_MCR_LOOP)
    for byte in range(256):
        wr(uart, UART_TX, byte)
    count = 0
    while rd(uart, UART_LSR) & UART_LSR_DR and count < 256:
        assert rd(uart, UART_RX) == count
        count += 1
    assert count == 16


def test_loopback_modem_outputs_drive_modem_inputs():
    uart, _, _ = make()
    wr(uart, UART_MCR, UART_MCR_LOOP | UART_MCR_RTS | UART_MCR_OUT2)
    assert rd(uart, UART_MSR) & 0xF0 == UART_MSR_CTS | UART_MSR_DCD
    wr(uart, UART_MCR, UART_MCR_LOOP | UART_MCR_DTR | UART_MCR_OUT1)
    assert rd(uart, UART_MSR) & 0xF0 == UART_MSR_DSR | UART_MSR_RI


def test_loopback_ring_trailing_edge_sets_teri():
    uart, _, _ = make()
    wr(uart, UART_MCR, UART_MCR_LOOP | UART_MCR_OUT1)
    rd(uart, UART_MSR)
    wr(uart, UART_MCR, UART_MCR_LOOP)
    assert rd(uart, UART_MSR) & UART_MSR_TERI
    assert rd(uart, UART_MSR) & 0x0F == 0  # reading MSR cleared the change bits


def test_host_ring_leading_edge_does_not_set_teri():
    uart, _, _ = make()
    uart.set_modem_inputs(UART_MSR_CTS | UART_MSR_DSR | UART_MSR_DCD | UART_MSR_RI)
    assert rd(uart, UART_MSR) & UART_MSR_TERI == 0


def test_loopback_refuses_host_input():
    uart, _, _ = make()
    wr(uart, UART_MCR, UART_MCR_LOOP)
    assert uart.rx_space() == 0
    assert uart.receive(b"host") == 0
    assert uart.rx_refused == 4
    assert not rd(uart, UART_LSR) & UART_LSR_DR


# --- the interrupt line -------------------------------------------------------------------

def test_irq_line_follows_iir_and_out2():
    uart, line, _ = make()
    wr(uart, UART_IER, UART_IER_RDI)
    uart.receive(b"a")
    assert line.level is False          # pending, but OUT2 gates it off
    wr(uart, UART_MCR, UART_MCR_OUT2)
    assert line.level is True
    rd(uart, UART_RX)
    assert line.level is False          # IIR bit 0 set again
    uart.receive(b"b")
    assert line.level is True
    wr(uart, UART_MCR, 0)
    assert line.level is False


def test_loopback_gates_the_irq_line():
    uart, line, _ = make()
    wr(uart, UART_IER, UART_IER_THRI)
    wr(uart, UART_MCR, UART_MCR_OUT2)
    assert line.level is True
    wr(uart, UART_MCR, UART_MCR_OUT2 | UART_MCR_LOOP)  # OUT2's pin is forced off
    assert line.level is False
    assert rd(uart, UART_IIR) == UART_IIR_THRI  # the chip itself still has it pending


def test_line_changes_only_on_level_change():
    counting = CountingLine()
    uart = Uart16550(irq=counting)
    wr(uart, UART_MCR, UART_MCR_OUT2)
    wr(uart, UART_IER, UART_IER_RDI)
    for _ in range(3):
        rd(uart, UART_LSR)
        wr(uart, UART_SCR, 1)
    assert counting.calls == []
    uart.receive(b"a")
    uart.receive(b"")
    rd(uart, UART_LSR)
    assert counting.calls == [True]
    rd(uart, UART_RX)
    rd(uart, UART_RX)
    assert counting.calls == [True, False]


def test_linux_irq_probe_sees_an_edge():
    # autoconfig_irq(): OUT2 on, all interrupts enabled, status read, one byte sent.
    uart, line, _ = make()
    wr(uart, UART_MCR, UART_MCR_DTR | UART_MCR_RTS | UART_MCR_OUT2)
    wr(uart, UART_IER, 0x0F)
    for offset in (UART_LSR, UART_RX, UART_IIR, UART_MSR):
        rd(uart, offset)
    wr(uart, UART_TX, 0xFF)
    assert line.level is True


# --- robustness and words -------------------------------------------------------------------

@pytest.mark.parametrize("size", [1, 2, 4, 8, 0, 3, -1])
@pytest.mark.parametrize("offset", [-1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0x1000])
def test_any_access_never_raises(offset, size):
    uart, _, _ = make()
    value = uart.read(offset, size)
    assert isinstance(value, int)
    uart.write(offset, size, 0xFFFF_FFFF_FFFF)
    assert isinstance(uart.describe(offset, size, True, 0xFF), str)
    assert isinstance(uart.describe(offset, size, False, value), str)


def test_reads_outside_the_eight_registers_float_to_all_ones():
    uart, _, _ = make()
    assert uart.read(8, 1) == 0xFF
    assert uart.read(9, 2) == 0xFFFF


def test_register_names_follow_dlab_and_direction():
    uart, _, _ = make()
    assert [uart.register_name(o, False) for o in range(8)] == [
        "RBR", "IER", "IIR", "LCR", "MCR", "LSR", "MSR", "SCR"]
    assert uart.register_name(0, True) == "THR"
    assert uart.register_name(2, True) == "FCR"
    wr(uart, UART_LCR, UART_LCR_DLAB)
    assert (uart.register_name(0, True), uart.register_name(1, False)) == ("DLL", "DLM")


def test_describe_says_what_each_access_did():
    uart, _, _ = make()
    value = rd(uart, UART_LSR)
    assert uart.describe(UART_LSR, 1, False, value) == \
        "LSR read -> 0x60: THR empty, transmitter empty"
    wr(uart, UART_TX, 0x48)
    assert uart.describe(UART_TX, 1, True, 0x48) == "THR write 0x48 'H': transmitted"
    wr(uart, UART_FCR, 0xC7)
    wr(uart, UART_IER, UART_IER_THRI)
    value = rd(uart, UART_IIR)
    assert uart.describe(UART_IIR, 1, False, value) == \
        "IIR read -> 0xc2: THR empty interrupt (cleared by this read)"
    wr(uart, UART_LCR, 0x83)
    assert "DLAB on" in uart.describe(UART_LCR, 1, True, 0x83)
    wr(uart, UART_DLL, 0x01)
    assert uart.describe(UART_DLL, 1, True, 0x01) == "DLL write 0x01: divisor 0x0001 (115200 baud)"


def test_state_exports_registers_without_side_effects():
    uart, _, _ = make()
    wr(uart, UART_IER, UART_IER_THRI | UART_IER_RLSI)
    uart.receive(b"ab")
    before = uart.state()
    assert before["iir"] == UART_IIR_RLSI
    assert before["lsr"] == 0x60 | UART_LSR_DR | UART_LSR_OE
    assert uart.state() == before  # looking does not clear anything
    assert before["rx_fifo"] == [ord("b")]
    assert before["overruns"] == 1
    assert before["irq_level"] is False


def test_state_rows_name_the_set_bits_by_their_linux_names():
    uart, _, _ = make()
    wr(uart, UART_LCR, UART_LCR_WLEN8)
    wr(uart, UART_FCR, UART_FCR_ENABLE_FIFO | UART_FCR_R_TRIG_10)
    wr(uart, UART_IER, UART_IER_RDI)
    wr(uart, UART_MCR, UART_MCR_DTR | UART_MCR_RTS | UART_MCR_OUT2)
    uart.receive(b"ls")
    rows = dict(uart.state_rows())
    assert rows["LSR"] == "0x61 DR THRE TEMT"
    assert rows["IER"] == "0x01 RDI"
    assert rows["MCR"] == "0x0b DTR RTS OUT2"
    assert rows["LCR"] == "0x03 8N1"
    assert rows["divisor"] == "12 (9600 baud)"
    assert rows["RX FIFO"] == "2/16 bytes, trigger 8, FIFOs on"
    assert rows["IRQ line"] == "high"        # below the trigger: a character timeout
    assert rows["bytes"] == "sent 0, received 2"
    assert uart.state()["rx_level"] == 2     # looking took nothing
