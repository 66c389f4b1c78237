"""Frames of the TUI, rendered without a terminal and read as a person would.

The first half builds states by hand (no KVM); the second steps the real
hello guest with a Session and reads the frames it produces.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minikvm.bus import Bus
from minikvm.debug.inspect import RegisterSnapshot
from minikvm.devices.debugcon import DebugCon
from minikvm.devices.uart import Uart16550
from minikvm.devices.virtio.mock import mock_device
from minikvm.devices.virtio.rng import VirtioRng
from minikvm.tui.render import (
    console_lines,
    export_screen,
    layout_tier,
    render_text,
    sparkline,
)
from minikvm.tui.state import (
    BreakpointRow,
    DeviceView,
    DisasmLine,
    ExitRow,
    Focus,
    MemoryView,
    PromptView,
    RegistersView,
    RunStatus,
    SideView,
    StatsView,
    TuiState,
)
from minikvm.tui.views import device_views

LONG_MODE = RegisterSnapshot(
    rax=0x2880067194370816120 & (2**64 - 1), rbx=0, rcx=0xFFFFFFFC, rdx=0x1001AF, rsi=0, rdi=0,
    rsp=0x6F000, rbp=0, r8=0, r9=0, r10=0, r11=0, r12=0, r13=0, r14=0, r15=0,
    rip=0x10013A, rflags=0x246, cs=0x8, ds=0x18, es=0x18, fs=0x18, gs=0x18, ss=0x18,
    fs_base=0, gs_base=0, cr0=0x80010033, cr2=0, cr3=0x106000, cr4=0x620, efer=0x500)


def long_mode_state(**changes) -> TuiState:
    state = TuiState(
        guest="long.elf",
        status=RunStatus.PAUSED,
        message="stepped 'add rdi, rdx' at 0x100013",
        registers=RegistersView(LONG_MODE, frozenset({"rax", "rip"}), "long", 64),
        disassembly=(
            DisasmLine(0x100138, b"\xfa", "cli"),
            DisasmLine(0x100139, b"\xf4", "hlt", breakpoint=1),
            DisasmLine(0x10013A, b"\xeb\xfc", "jmp 0x100138", current=True),
        ),
        breakpoints=(BreakpointRow(1, 0x100139, "hw DR0", True, 0),),
        exits=(ExitRow(7, "IO_OUT", 0x100145, "port 0xe9", "debugcon", "data", 0x30,
                       "debug console: the guest prints '0'"),
               ExitRow(8, "MMIO_WRITE", 0x100150, "0xd0000070", "virtio0-rng", "Status", 0xF,
                       "Status write 0x0f: DRIVER_OK")),
        stats=StatsView(total=8, by_reason=(("IO_OUT", 7), ("MMIO_WRITE", 1)),
                        by_device=(("debugcon", 7), ("virtio0-rng", 1)),
                        timeline=(0, 3, 10, 2), rate=8.0, steps=4),
        console="long mode: fib(90)=0x27f80ddaa1ba7878\n",
        console_total=37,
        devices=(DeviceView("com1 (port 0x3f8) 16550A UART", (("LSR", "0x60 THRE TEMT"),
                                                             ("RX FIFO", "0/16 bytes"))),),
        memory=MemoryView(0x150000, False, b"\x78\x56\x34\x12\xde\xc0\xfe\x5a" * 4, "",
                          0x150000),
    )
    return dataclasses.replace(state, **changes)


# -- hand-made states --------------------------------------------------------------------

def test_long_mode_registers_show_all_sixteen_and_the_mode():
    text = render_text(long_mode_state(), 120, 40)
    assert "long mode (64-bit)" in text
    assert "r15 0000000000000000" in text
    assert "rip 000000000010013a*" in text        # changed: marked
    assert "rbx 0000000000000000 " in text        # unchanged: not marked


def test_control_register_bits_are_named():
    text = render_text(long_mode_state(), 120, 40)
    assert "cr0  80010033 PG|WP|NE|ET|MP|PE" in text
    assert "cr4  00000620 OSXMMEXCPT|OSFXSR|PAE" in text
    assert "efer 00000500 LMA|LME" in text


def test_rflags_are_decoded_set_ones_first():
    text = render_text(long_mode_state(), 120, 40)
    assert "flags PF ZF IF · cf af sf tf df of" in text


def test_real_mode_shows_the_32_bit_register_names():
    real = dataclasses.replace(LONG_MODE, rip=0x1011, cr0=0x10, efer=0, cr4=0)
    state = long_mode_state(registers=RegistersView(real, frozenset(), "real", 16))
    text = render_text(state, 100, 30)
    assert "real mode (16-bit)" in text
    assert "eip 00001011" in text and "r15" not in text
    assert "cr0  00000010 ET" in text and "efer 00000000 -" in text


def test_the_current_instruction_and_breakpoints_are_marked():
    text = render_text(long_mode_state(), 100, 30)
    assert "→ 10013a" in text
    assert "●  100139" in text
    assert "breakpoint 1:0x100139" in text


def test_exit_log_gives_reason_rip_and_meaning():
    text = render_text(long_mode_state(), 140, 36)
    assert "IO_OUT" in text and "0x100145" in text
    assert "debug console: the guest prints '0'" in text
    # the device is named where its sentence does not say it
    assert "virtio0-rng: Status write 0x0f: DRIVER_OK" in text


def test_statistics_count_by_reason_and_device_with_a_timeline():
    text = render_text(long_mode_state(side=SideView.STATS), 120, 36)
    assert "exit statistics" in text
    assert "IO_OUT" in text and "debugcon" in text
    assert sparkline((0, 3, 10, 2), 40) in text


def test_80x24_shows_registers_code_output_and_exits():
    text = render_text(long_mode_state(), 80, 24)
    lines = text.splitlines()
    assert len(lines) == 24 and all(len(line) <= 80 for line in lines)
    for words in ("registers", "code at RIP", "guest output", "VM exits", "efer",
                  "fib(90)", "s step n next c cont"):
        assert words in text, words


def test_80x24_side_slot_cycles_to_devices_and_memory():
    devices = render_text(long_mode_state(side=SideView.DEVICES), 80, 24)
    assert "com1 (port 0x3f8) 16550A UART" in devices and "THRE TEMT" in devices
    memory = render_text(long_mode_state(side=SideView.MEMORY), 80, 24)
    assert "memory at 0x150000" in memory
    assert "78 56 34 12 de c0 fe 5a" in memory


def test_the_device_panel_lists_what_is_on_the_buses_in_each_devices_words():
    pio, mmio = Bus("pio"), Bus("mmio")
    pio.register(0xE9, 1, DebugCon())
    pio.register(0x3F8, 8, Uart16550(name="com1"))
    rng = mock_device(VirtioRng(), ram_size=64 * 1024)
    rng.driver.init()
    mmio.register(0xD000_0000, 0x1000, rng.transport)
    pio.read(0x80, 1)                      # nobody there
    views = device_views(SimpleNamespace(pio=pio, mmio=mmio))
    # richest first; the one-row debug console last; unclaimed accesses counted
    assert [view.name for view in views] == [
        "com1 (port 0x3f8) 16550A UART",
        "virtio-rng (0xd0000000) virtio-mmio entropy source",
        "debugcon (port 0xe9) Bochs debug console",
        "unclaimed"]
    assert dict(views[0].rows)["LSR"] == "0x60 THRE TEMT"
    assert dict(views[1].rows)["status"].endswith("DRIVER_OK")
    assert views[3].rows == (("accesses", "1 (reads return all-ones)"),)
    text = render_text(long_mode_state(side=SideView.DEVICES, devices=views), 100, 40)
    assert "com1 (port 0x3f8) 16550A UART" in text and "LSR      0x60 THRE TEMT" in text


def test_a_device_that_fails_to_report_does_not_break_the_panel():
    class Broken(DebugCon):
        def state_rows(self):
            raise RuntimeError("caught mid-update")

    pio = Bus("pio")
    pio.register(0xE9, 1, Broken())
    views = device_views(SimpleNamespace(pio=pio, mmio=Bus("mmio")))
    assert views[0].rows == (("state", "unavailable"),)


def test_a_wide_terminal_shows_every_panel_at_once():
    assert layout_tier(160, 45) == "wide"
    text = render_text(long_mode_state(), 160, 45)
    for title in ("registers", "code at RIP", "VM exits", "guest output", "exit statistics",
                  "devices", "memory at"):
        assert title in text, title


def test_the_footer_lists_the_keys_and_becomes_a_prompt():
    text = render_text(long_mode_state(), 120, 36)
    assert "step" in text and "continue" in text and "quit" in text
    prompting = render_text(long_mode_state(prompt=PromptView("breakpoint at", "0x10")), 120, 36)
    assert "breakpoint at: 0x10" in prompting.splitlines()[-1]


def test_console_focus_says_where_keys_go():
    text = render_text(long_mode_state(focus=Focus.CONSOLE), 100, 30)
    assert "TYPING GOES TO THE GUEST" in text
    assert "Ctrl-]" in text.splitlines()[-1]


def test_running_frames_say_registers_are_from_the_last_stop():
    registers = RegistersView(LONG_MODE, frozenset(), "long", 64, stale=True)
    text = render_text(long_mode_state(status=RunStatus.RUNNING, registers=registers), 100, 30)
    assert "RUNNING" in text and "at the last stop" in text
    assert " p pause" in text.replace("p  pause", "p pause")


def test_a_crash_is_shown_in_the_message_line():
    state = long_mode_state(status=RunStatus.CRASHED,
                            message="guest crashed: triple fault (shutdown) at RIP 0x1000")
    lines = render_text(state, 100, 30).splitlines()
    assert "CRASHED" in lines[0]
    assert "triple fault" in lines[1]


def test_help_replaces_the_panels():
    text = render_text(long_mode_state(show_help=True), 100, 30)
    assert "help (any key closes)" in text and "single-step" in text


def test_rendering_is_a_pure_function_of_the_state():
    state = long_mode_state()
    assert render_text(state, 100, 30) == render_text(state, 100, 30)


def test_export_writes_svg_html_and_text(tmp_path):
    state = long_mode_state()
    svg = export_screen(state, tmp_path / "screen.svg", 100, 30).read_text()
    assert svg.startswith("<svg") and "long.elf" in svg
    assert "<html" in export_screen(state, tmp_path / "s.html", 100, 30).read_text().lower()
    assert "efer" in export_screen(state, tmp_path / "s.txt", 100, 30).read_text()
    with pytest.raises(ValueError):
        export_screen(state, tmp_path / "s.png")


def test_console_lines_follow_cr_lf_and_backspace():
    assert console_lines("ab\r\ncd\n", 10) == ["ab", "cd", ""]
    assert console_lines("abc\rX", 10) == ["Xbc"]
    assert console_lines("abc\bd", 10) == ["abd"]
    assert console_lines("abcdef", 4) == ["abcd", "ef"]
    assert console_lines("a\x1bb", 10) == ["a·b"]


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E) | st.just("\n"),
               max_size=200), st.integers(1, 50))
def test_console_lines_wrap_without_losing_text(text, width):
    lines = console_lines(text, width)
    assert all(len(line) <= width for line in lines)
    assert "".join(lines) == text.replace("\n", "")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 10**6), max_size=80), st.integers(1, 60))
def test_sparkline_is_as_long_as_the_room_and_ordered_like_the_values(values, width):
    line = sparkline(values, width)
    shown = values[-width:]
    assert len(line) == len(shown)
    levels = " ▁▂▃▄▅▆▇█"
    for (a, ca), (b, cb) in zip(zip(shown, line), zip(shown[1:], line[1:])):
        if a <= b:
            assert levels.index(ca) <= levels.index(cb)
    if shown and max(shown) > 0:
        assert "█" in line


# -- frames of the real hello guest ------------------------------------------------------

@pytest.fixture(scope="module")
def hello_frames(guests):
    """States of the hello guest: at the start, after 3 steps, after 2 exits,
    and at its end."""
    from minikvm.hostio import BufferSink
    from minikvm.machine import Machine
    from minikvm.tui.session import Session

    sink = BufferSink()
    with Machine(output=sink, irqchip=True) as machine:
        machine.load_guest(guests / "hello.bin")
        session = Session(machine, guest="hello.bin", console=sink)
        frames = {"start": session.snapshot()}
        for _ in range(3):
            session.run_action("step")
        frames["stepped"] = session.snapshot()
        for _ in range(2):
            session.run_action("next", timeout=10)
        frames["exits"] = session.snapshot()
        session.run_action("continue", timeout=10)
        frames["end"] = session.snapshot()
        session.close()
    return frames


@pytest.mark.kvm
def test_hello_starts_at_its_load_address_in_real_mode(hello_frames):
    text = render_text(hello_frames["start"], 100, 30)
    assert "real mode (16-bit)" in text and "PAUSED" in text
    assert "eip 00001000" in text
    assert "→ 1000 fc" in text and "cld" in text


@pytest.mark.kvm
def test_steps_mark_the_registers_they_changed(hello_frames):
    text = render_text(hello_frames["stepped"], 80, 24)
    assert "eip 00001005*" in text            # cld; xor ax,ax; mov ds,ax
    assert "stepped 'mov ds, ax' at 0x1003" in text


@pytest.mark.kvm
@pytest.mark.parametrize("width,height", [(80, 24), (120, 36)])
def test_next_exit_shows_the_explanation_and_the_output(hello_frames, width, height):
    text = render_text(hello_frames["exits"], width, height)
    assert "debug console: the guest prints 'H'" in text
    assert "debug console: the guest prints 'e'" in text
    assert "IO_OUT" in text and "0x1011" in text
    assert "He" in text.split("guest output")[1]
    assert "eax 00000065*" in text            # 'e' is in AL


@pytest.mark.kvm
def test_the_end_of_the_guest_is_said_plainly(hello_frames):
    text = render_text(hello_frames["end"], 120, 36)
    assert "FINISHED" in text
    assert "the guest halted (hlt with interrupts off)" in text
    assert "Hello from a KVM guest, driven entirely from Python!" in text


# -- nothing a person must read is cut (issue 16) ---------------------------------------

def panel_text(screen: str, title: str) -> str:
    """The words inside the panel titled ``title`` on a rendered screen,
    its rows joined: what a person reads in that box, wrapped or not."""
    lines = screen.splitlines()
    for top, line in enumerate(lines):
        left = line.find("╭─ " + title)
        if left != -1:
            break
    else:
        raise AssertionError(f"no panel {title!r} on the screen:\n{screen}")
    right = lines[top].index("╮", left)
    inside = []
    for line in lines[top + 1:]:
        if line[left] == "╰":
            break
        inside.append(line[left + 1:right])
    return " ".join(" ".join(inside).split())


UART_EXITS = (
    ExitRow(5, "IO_OUT", 0x1023, "port 0x3fa", "com1", "FCR", 0x07,
            "FCR write 0x07: FIFOs on, RX FIFO cleared, TX FIFO cleared, RX trigger 1 byte"),
    ExitRow(6, "IO_OUT", 0x1029, "port 0x3fc", "com1", "MCR", 0x03,
            "MCR write 0x03: DTR, RTS, IRQ gated off (OUT2 clear)"),
    ExitRow(7, "IO_OUT", 0x1004, "port 0xf4", "debug-exit", "", 0x2A,
            "debug exit: the guest ends the run with value 0x2a, exit status "
            "(0x2a << 1) | 1 = 85", stop="the guest wrote 0x2a to the debug-exit port: status 85"),
)


@pytest.mark.parametrize("width,height", [(80, 24), (120, 36)])
def test_long_explanations_wrap_in_the_exit_log_instead_of_being_cut(width, height):
    state = long_mode_state(exits=UART_EXITS)
    text = render_text(state, width, height)
    assert all(len(line) <= width for line in text.splitlines())
    log = panel_text(text, "VM exits")
    # An exit is shown whole or not at all: older ones give way to the newest.
    for row in UART_EXITS:
        if f"{row.rip:#x}" in log:
            assert row.description in log, row.description
    assert "=> the guest wrote 0x2a to the debug-exit port: status 85" in log
    if height >= 36:
        assert all(f"{row.rip:#x}" in log for row in UART_EXITS)


@pytest.mark.parametrize("width,height", [(80, 24), (120, 36)])
def test_a_long_message_wraps_instead_of_being_cut(width, height):
    message = ("breakpoint 1 at 0x100140 <puthex_e9.constprop.0> (hit 1, by single-stepping: "
               "this KVM ignores int3 interception and the debug registers are all in use) "
               "-- stepped 'out 0xe9, al' at 0x10014b")
    lines = render_text(long_mode_state(message=message), width, height).splitlines()
    assert len(lines) == height and "s step" in lines[-1].replace("  ", " ")
    said = " ".join(" ".join(lines[1:4]).split())
    assert message in said
    assert "VM exits" in "\n".join(lines) or width < 100


def test_a_short_message_keeps_one_row():
    lines = render_text(long_mode_state(), 80, 24).splitlines()
    assert lines[1].strip() == "stepped 'add rdi, rdx' at 0x100013"
    assert lines[2].startswith("╭─ registers")


def test_statistics_fit_80x24_with_every_reason_and_device():
    stats = StatsView(total=1234, by_reason=(("IO_OUT", 900), ("IO_IN", 300), ("MMIO_WRITE", 30),
                                             ("HLT", 4)),
                      by_device=(("com1", 1100), ("virtio0-rng", 34), ("debugcon", 100)),
                      timeline=(5, 50, 500), rate=2000.0, steps=3, kicks=12)
    text = render_text(long_mode_state(side=SideView.STATS, stats=stats), 80, 24)
    panel = panel_text(text, "exit statistics")
    for name, count in stats.by_reason + stats.by_device:
        assert f"{name} {count:,}" in panel, name
    assert "1,234 guest exits" in panel and "more row" not in panel
    assert "not counted: 12 kicks" in panel


def test_statistics_that_cannot_fit_say_how_many_rows_are_left_out():
    stats = StatsView(total=99, by_reason=tuple((f"REASON{i}", 10 - i) for i in range(9)),
                      by_device=(("com1", 99),))
    text = render_text(long_mode_state(side=SideView.STATS, stats=stats), 80, 24)
    panel = panel_text(text, "exit statistics")
    assert "REASON0" in panel and "more rows (a taller terminal shows them)" in panel


def test_every_changed_register_gets_a_star_as_the_help_says():
    changed = frozenset({"rflags", "cr3", "cr0", "ss", "cs", "efer"})
    text = render_text(long_mode_state(registers=RegistersView(LONG_MODE, changed, "long", 64)),
                       160, 45)
    assert "rflags 00000246*" in text
    assert "cr3  0000000000106000*" in text and "cr0  80010033* PG|WP" in text
    assert "cs 0008*" in text and "ss 0018*" in text and "ds 0018 " in text
    assert "efer 00000500* LMA|LME" in text and "cr4  00000620 OSXMMEXCPT" in text
    from minikvm.tui.keys import HELP_TEXT
    assert "changed registers get a *" in HELP_TEXT


def test_one_vcpu_is_not_named_and_several_are():
    single = render_text(long_mode_state(), 120, 36)
    assert "vCPU" not in single and " cpu " not in single
    rows = tuple(dataclasses.replace(row, vcpu=i % 2) for i, row in
                 enumerate(long_mode_state().exits))
    text = render_text(long_mode_state(exits=rows, vcpu=1, vcpus=2), 120, 36)
    assert "vCPU 1 of 2" in text.splitlines()[0]
    log = panel_text(text, "VM exits")
    assert log.startswith("# cpu exit")
    assert "8 1 MMIO_WRITE" in log
