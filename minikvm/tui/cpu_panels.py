"""The CPU panels: the registers and the code around RIP.

The register panel shows what a person reading the SDM looks for: the
general registers under the names the current code can use (``eax`` in
16/32-bit code, ``rax``..``r15`` in 64-bit), RIP and RFLAGS with the set
flags named, segment selectors and the control registers with their bits
named. Every value that changed since the last stop -- general register,
RIP, RFLAGS, segment selector, control register -- is highlighted and
followed by a ``*`` (the mark survives a terminal without colours and a
text export). When the panel is short the least telling lines give way
first.

The disassembly panel is an objdump-style listing around RIP: ``<symbol>:``
where a function starts, ``→`` at the next instruction, ``●`` at breakpoints.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

from rich.panel import Panel
from rich.text import Text

from minikvm.tui.panel import CHANGED, DIM, bordered
from minikvm.tui.state import DisasmLine, RegistersView, TuiState
from minikvm.x86.flags import Cr0, Cr4, Efer, flag_names

__all__ = [
    "disassembly_inputs",
    "disassembly_window",
    "register_lines",
    "registers_height",
    "registers_inputs",
    "render_disassembly",
    "render_registers",
]

#: The status flags a person reads most, in the order the SDM lists them (vol. 1, 3.4.3).
_FLAG_ORDER = (("CF", 0), ("PF", 2), ("AF", 4), ("ZF", 6), ("SF", 7), ("TF", 8), ("IF", 9),
               ("DF", 10), ("OF", 11))


_GPR_64 = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
           "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
_GPR_32 = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp")


def _reg_label(name: str, bitness: int) -> str:
    """``eax`` for 16/32-bit code (the register the code can name), ``rax`` in 64-bit."""
    if bitness == 64 or not name.startswith("r"):
        return name
    return "e" + name[1:]


def _reg_cell(name: str, label: str, value: int, digits: int, changed: frozenset[str]) -> Text:
    cell = Text()
    cell.append(f"{label:<3} ", style="bold" if name in changed else DIM)
    _value(cell, name, f"{value:0{digits}x}", changed)
    return cell


def _value(line: Text, name: str, text: str, changed: frozenset[str], pad: bool = True) -> None:
    """Append a register's value, highlighted and starred when it changed
    (with ``pad``, a space instead of the star keeps the columns in place)."""
    if name in changed:
        line.append(text, style=CHANGED)
        line.append("*", style="bold yellow")
    else:
        line.append(text)
        if pad:
            line.append(" ")


def _bit_names(flags: type, value: int) -> str:
    """``PG|ET|PE``: the set bits by their SDM names; ``-`` when none is set."""
    names = flag_names(flags(value & 0xFFFF_FFFF))
    return "-" if names == "0" else names


def _register_sections(view: RegistersView) -> list[tuple[int, str, Text]]:
    """(priority, key, line) in display order; lower priorities give way first
    when the panel is short."""
    values = view.values
    bits = view.bitness
    digits = 16 if bits == 64 else 8
    changed = view.changed
    names = _GPR_64 if bits == 64 else _GPR_32
    lines: list[tuple[int, str, Text]] = []
    for index, (left, right) in enumerate(zip(names[0::2], names[1::2])):
        line = _reg_cell(left, _reg_label(left, bits), getattr(values, left), digits, changed)
        line.append(" ")
        line.append(_reg_cell(right, _reg_label(right, bits), getattr(values, right), digits,
                              changed))
        lines.append((10 if index < 4 else 5, "gpr-high" if index >= 4 else "gpr", line))
    ip = _reg_cell("rip", _reg_label("rip", bits), values.rip, digits, changed)
    ip.append(" ")
    flags_label = "rflags" if bits == 64 else "eflags"
    ip.append(f"{flags_label} ", style="bold" if "rflags" in changed else DIM)
    _value(ip, "rflags", f"{values.rflags:08x}", changed)
    lines.append((10, "ip", ip))
    flags = Text("flags ", style=DIM)
    for name, bit in _FLAG_ORDER:
        if values.rflags >> bit & 1:
            flags.append(name + " ", style="bold green")
    iopl = (values.rflags >> 12) & 3
    if iopl:
        flags.append(f"IOPL={iopl} ", style="bold green")
    clear = [name.lower() for name, bit in _FLAG_ORDER if not values.rflags >> bit & 1]
    flags.append("· " + " ".join(clear), style=DIM)
    lines.append((9, "flags", flags))
    if values.cs is not None:
        for priority, group in ((4, ("cs", "ds", "es")), (3, ("ss", "fs", "gs"))):
            segs = Text()
            for name in group:
                segs.append(f"{name} ", style="bold" if name in changed else DIM)
                _value(segs, name, f"{getattr(values, name):04x}", changed)
                segs.append("  ")
            lines.append((priority, "segments", segs))
    if values.cr0 is not None:
        def control(name: str, value: int, decode: Callable[[int], str]) -> Text:
            line = Text(f"{name:<4} ", style="bold" if name in changed else DIM)
            _value(line, name, f"{value:08x}", changed, pad=False)
            line.append(f" {decode(value)}", style="cyan")
            return line
        lines.append((8, "cr0", control("cr0", values.cr0, lambda v: _bit_names(Cr0, v))))
        cr3 = Text("cr3  ", style="bold" if "cr3" in changed else DIM)
        _value(cr3, "cr3", f"{values.cr3:0{digits}x}", changed)
        cr3.append(" cr2 ", style="bold" if "cr2" in changed else DIM)
        _value(cr3, "cr2", f"{values.cr2:x}", changed)
        lines.append((6, "cr3", cr3))
        lines.append((7, "cr4", control("cr4", values.cr4, lambda v: _bit_names(Cr4, v))))
        lines.append((8, "efer", control("efer", values.efer, lambda v: _bit_names(Efer, v))))
    return lines


def register_lines(view: RegistersView, rows: int | None = None) -> list[Text]:
    """The register panel's lines: GPRs two per line, RIP/RFLAGS, flags,
    segment selectors, CR0/CR3/CR4/EFER with their bits named.

    With ``rows`` set and too little room, r8-r15 fold into one line when
    they are all zero, then the least telling lines (segments, CR3) go.
    """
    sections = _register_sections(view)
    if rows is None or len(sections) <= rows:
        return [line for _, _, line in sections]
    values = view.values
    high = [f"r{n}" for n in range(8, 16)]
    if view.bitness == 64 and not any(getattr(values, name) for name in high) and not (
            view.changed & set(high)):
        first = next(i for i, (_, key, _) in enumerate(sections) if key == "gpr-high")
        folded = Text("r8-r15 ", style=DIM)
        folded.append("all zero")
        sections = (sections[:first] + [(5, "gpr-high", folded)]
                    + [item for item in sections[first:] if item[1] != "gpr-high"])
    while len(sections) > rows and sections:
        lowest = min(priority for priority, _, _ in sections)
        index = max(i for i, (priority, _, _) in enumerate(sections) if priority == lowest)
        del sections[index]
    return [line for _, _, line in sections]


@lru_cache(maxsize=4)
def registers_height(view: RegistersView | None) -> int:
    """Rows the register panel wants, borders included.

    Kept per view: the layout asks every frame, and while the guest runs
    the view is the last stop's."""
    if view is None:
        return 3
    return len(_register_sections(view)) + 2


def registers_inputs(state: TuiState) -> tuple[object, ...]:
    """Everything :func:`render_registers` reads: while the guest runs it
    is the last stop's, so the panel is drawn once per stop (see
    :class:`~minikvm.tui.panel.Fit`)."""
    return state.registers, state.vcpu, state.vcpus, state.vcpu_state


def render_registers(state: TuiState, width: int, height: int) -> Panel:
    view = state.registers
    if view is None:
        return bordered([Text("(no registers yet)", style=DIM)], "registers", width, height)
    title = "registers"
    if state.vcpus > 1:
        # "parked: waiting for SIPI" -> "parked": the panel is narrow.
        title = f"vCPU {state.vcpu}/{state.vcpus} ({state.vcpu_state.split(':')[0]}) registers"
    subtitle = "at the last stop" if view.stale else (
        "* = changed" if view.changed else None)
    return bordered(register_lines(view, max(height - 2, 1)), title, width, height,
                    subtitle=subtitle)


# -- disassembly --------------------------------------------------------------------

def disassembly_window(lines: tuple[DisasmLine, ...], rows: int) -> tuple[DisasmLine, ...]:
    """``rows`` instructions with the current one a third of the way down."""
    if rows <= 0:
        return ()
    current = next((i for i, line in enumerate(lines) if line.current), 0)
    start = max(0, min(current - rows // 3, len(lines) - rows))
    return lines[start:start + rows]


def _is_function_start(symbol: str) -> bool:
    return bool(symbol) and "+" not in symbol


def _instruction_text(line: DisasmLine, digits: int, show_bytes: bool, busy: bool,
                      inner: int) -> Text:
    text = Text()
    if line.breakpoint is not None:
        text.append("●" if line.breakpoint_enabled else "○", style="bold red")
    else:
        text.append(" ")
    text.append("→ " if line.current and not busy else "  ", style="bold green")
    text.append(f"{line.address:>{digits}x} ", style="bold green" if line.current else DIM)
    if show_bytes:
        raw = line.raw[:7].hex(" ") + ("…" if len(line.raw) > 7 else "")
        text.append(f"{raw:<21}", style=DIM)
    style = "bold reverse green" if line.current and not busy else (
        "bold" if line.current else "")
    text.append(f" {line.text} ", style=style)
    if line.current and line.symbol and not _is_function_start(line.symbol) and (
            inner - text.cell_len > len(line.symbol) + 3):
        text.append(f" <{line.symbol}>", style="magenta")
    return text


def disassembly_inputs(state: TuiState) -> tuple[object, ...]:
    """Everything :func:`render_disassembly` reads (the listing of the last
    stop, the breakpoints, whether the guest runs)."""
    return state.disassembly, state.breakpoints, state.busy


def render_disassembly(state: TuiState, width: int, height: int) -> Panel:
    """The listing around RIP, objdump-style: a ``<symbol>:`` line where a
    function starts, ``→`` at the next instruction, ``●`` at breakpoints."""
    inner = width - 4
    rows = max(height - 2, 0)
    show_bytes = inner >= 52
    digits = max((len(f"{line.address:x}") for line in state.disassembly), default=4)
    # Display rows: labels and instructions; the window keeps RIP a third down.
    display: list[tuple[Text, bool]] = []
    for line in state.disassembly:
        if _is_function_start(line.symbol):
            display.append((Text(f"<{line.symbol}>:", style="magenta"), False))
        display.append((_instruction_text(line, digits, show_bytes, state.busy, inner),
                        line.current))
    current = next((i for i, (_, is_current) in enumerate(display) if is_current), 0)
    start = max(0, min(current - rows // 3, len(display) - rows))
    shown = [text for text, _ in display[start:start + rows]]
    if not shown:
        shown.append(Text("(nothing to show)", style=DIM))
    subtitle = None
    if state.breakpoints:
        subtitle = "● breakpoint " + " ".join(f"{bp.number}:{bp.address:#x}"
                                              for bp in state.breakpoints)
    title = "code at RIP" if not state.busy else "code (at the last stop)"
    return bordered(shown, title, width, height, subtitle=subtitle)
