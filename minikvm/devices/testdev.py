"""QEMU's ``pc-testdev``: the test device kvm-unit-tests expects on a PC.

kvm-unit-tests is run under QEMU with ``-device pc-testdev`` always present
(its ``scripts/arch-run.bash``), and several of its x86 tests lean on it to
poke at KVM from inside the guest: raise and lower an ISA interrupt line to
test the PIC and IOAPIC (``set_irq_line`` in ``lib/x86/apic.c``, the real-mode
test's ``sti; hlt``), or read back what they wrote to a port to test string
I/O emulation. QEMU's device (hw/misc/pc-testdev.c) has five parts; we
model four, in three windows:

* **a scratch register**, ports 0xE0-0xE3 (QEMU has a byte-wide twin at
  0xE8-0xEB, which here would cover the debug console at 0xE9, so the
  board leaves it out): 32 bits that read back what was written; an access
  of *n* bytes at port 0xE0 + *k* covers bytes *k* .. *k*+*n*-1 of it;
* **IRQ lines**, ports 0x2000-0x2017: a one-byte write of *v* to 0x2000 + *n*
  drives ISA interrupt line *n* (GSI *n*) to ``v != 0``;
* **scratch memory**, MMIO 0xFF00_0000-0xFF00_FFFF: 64 KiB that read back.

The fifth, "flush page" at port 0xE4 (a write of an address makes QEMU
unmap and remap that page of guest RAM, so that KVM's next access to it
faults), needs the host's mappings, which a device here never touches:
writes to it are accepted and change nothing (``state()`` counts them).
Everything is bounds-checked: a hostile guest can only flip the lines it
was given and scribble in its own scratch memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from minikvm.devices.base import Device, InterruptLine, Row, all_ones
from minikvm.devices.state import MAX_U32, MAX_U64, SavedState, hex_bytes

__all__ = ["IOMEM_SIZE", "IRQ_LINES", "PcTestdevIomem", "PcTestdevIrq", "PcTestdevPorts"]

#: Ports of the register window, from 0xE0 (QEMU's layout).
SCRATCH = 0x0       #: 0xE0-0xE3: the scratch register
FLUSH = 0x4         #: 0xE4-0xE7: "flush page" (accepted, not emulated)
SCRATCH_BYTES = 0x8  #: 0xE8-0xEB: the same register, byte by byte (if wired)
#: ISA interrupt lines the IRQ window drives (the IOAPIC's 24 pins).
IRQ_LINES = 24
#: Bytes of scratch memory in the MMIO window.
IOMEM_SIZE = 0x10000


def _register_bytes(offset: int, size: int) -> tuple[int, int] | None:
    """(first byte, byte count) of the scratch register an access covers,
    or None when it falls outside the two register views."""
    for base in (SCRATCH, SCRATCH_BYTES):
        if base <= offset < base + 4:
            first = offset - base
            return first, max(0, min(size, 4 - first))
    return None


class PcTestdevPorts(Device):
    """Ports 0xE0-0xE7 (0xEB with the byte view): the scratch register and
    the flush-page port."""

    name = "testdev"
    model = "QEMU pc-testdev registers"

    def __init__(self) -> None:
        self.value = 0
        self.flushes = 0

    def read(self, offset: int, size: int) -> int:
        covered = _register_bytes(offset, size)
        if covered is None:
            return all_ones(size)
        first, count = covered
        return (self.value >> (8 * first)) & ((1 << (8 * count)) - 1)

    def write(self, offset: int, size: int, value: int) -> None:
        if FLUSH <= offset < FLUSH + 4:
            self.flushes += 1
            return
        covered = _register_bytes(offset, size)
        if covered is None:
            return
        first, count = covered
        mask = ((1 << (8 * count)) - 1) << (8 * first)
        self.value = (self.value & ~mask) | ((value << (8 * first)) & mask)

    def register_name(self, offset: int, is_write: bool) -> str:
        if FLUSH <= offset < FLUSH + 4:
            return "flush-page"
        return "scratch" if _register_bytes(offset, 1) is not None else f"+{offset:#x}"

    def describe(self, offset: int, size: int, is_write: bool, value: int) -> str:
        if FLUSH <= offset < FLUSH + 4:
            return (f"pc-testdev: flush page {value:#x} (accepted; this VMM does not unmap "
                    "guest pages)")
        if _register_bytes(offset, size) is None:
            return f"pc-testdev: nothing at +{offset:#x}"
        verb = "write" if is_write else "read"
        return f"pc-testdev: scratch register {verb} {value:#x}; it holds {self.value:#010x}"

    def state(self) -> dict[str, Any]:
        return {"scratch": self.value, "flushes": self.flushes}

    def save(self) -> dict[str, Any]:
        return {"scratch": self.value, "flushes": self.flushes}

    def check_state(self, state: Any) -> None:
        fields = SavedState(state, self.name, ("scratch", "flushes"))
        fields.integer("scratch", 0, MAX_U32)
        fields.integer("flushes", 0, MAX_U64)

    def restore(self, state: dict[str, Any]) -> None:
        self.check_state(state)
        self.value, self.flushes = state["scratch"], state["flushes"]

    def state_rows(self) -> list[Row]:
        return [("scratch", f"{self.value:#010x}"), ("flushes", f"{self.flushes} (ignored)")]


class PcTestdevIrq(Device):
    """Ports 0x2000-0x2017: a byte written to 0x2000 + n sets ISA line n."""

    name = "testdev-irq"
    model = "QEMU pc-testdev IRQ lines"

    def __init__(self, lines: Sequence[InterruptLine]) -> None:
        self.lines = list(lines)[:IRQ_LINES]
        self.levels = [False] * len(self.lines)
        self.writes = 0

    def write(self, offset: int, size: int, value: int) -> None:
        if not 0 <= offset < len(self.lines):
            return
        self.writes += 1
        level = bool(value & 0xFF)
        self.levels[offset] = level
        self.lines[offset].set_level(level)

    def register_name(self, offset: int, is_write: bool) -> str:
        return f"irq{offset}"

    def describe(self, offset: int, size: int, is_write: bool, value: int) -> str:
        if not is_write:
            return f"pc-testdev: IRQ line {offset} is write-only -> {value:#x}"
        if not 0 <= offset < len(self.lines):
            return f"pc-testdev: there is no IRQ line {offset}"
        state = "high" if value & 0xFF else "low"
        return f"pc-testdev: the guest drives ISA interrupt line {offset} {state}"

    def state(self) -> dict[str, Any]:
        return {"high": [n for n, level in enumerate(self.levels) if level],
                "writes": self.writes}

    def save(self) -> dict[str, Any]:
        """The level the guest last set on each line, and the write count."""
        return {"levels": list(self.levels), "writes": self.writes}

    def check_state(self, state: Any) -> None:
        fields = SavedState(state, self.name, ("levels", "writes"))
        fields.booleans("levels", len(self.lines))
        fields.integer("writes", 0, MAX_U64)

    def restore(self, state: dict[str, Any]) -> None:
        """Also drives every line to its restored level, so the wires match."""
        self.check_state(state)
        self.levels = list(state["levels"])
        self.writes = state["writes"]
        for line, level in zip(self.lines, self.levels):
            line.set_level(level)

    def state_rows(self) -> list[Row]:
        high = [str(n) for n, level in enumerate(self.levels) if level]
        return [("lines high", ", ".join(high) or "none"), ("writes", str(self.writes))]


class PcTestdevIomem(Device):
    """MMIO 0xFF00_0000: 64 KiB of scratch memory behind MMIO exits."""

    name = "testdev-iomem"
    model = "QEMU pc-testdev memory"

    def __init__(self) -> None:
        self.buffer = bytearray(IOMEM_SIZE)

    def read(self, offset: int, size: int) -> int:
        if not 0 <= offset <= IOMEM_SIZE - size:
            return all_ones(size)
        return int.from_bytes(self.buffer[offset:offset + size], "little")

    def write(self, offset: int, size: int, value: int) -> None:
        if 0 <= offset <= IOMEM_SIZE - size:
            self.buffer[offset:offset + size] = value.to_bytes(size, "little")

    def describe(self, offset: int, size: int, is_write: bool, value: int) -> str:
        verb = "write" if is_write else "read"
        return f"pc-testdev memory: {size}-byte {verb} at +{offset:#x}: {value:#x}"

    def save(self) -> dict[str, Any]:
        """The 64 KiB up to the last non-zero byte, as hex: the rest is
        zeros, and a snapshot should not carry 128 KiB of them."""
        return {"memory": hex_bytes(self.buffer.rstrip(b"\0"))}

    def check_state(self, state: Any) -> None:
        fields = SavedState(state, self.name, ("memory",))
        fields.hex_bytes("memory", IOMEM_SIZE)

    def restore(self, state: dict[str, Any]) -> None:
        self.check_state(state)
        data = bytes.fromhex(state["memory"])
        self.buffer[:] = data + bytes(IOMEM_SIZE - len(data))

    def state_rows(self) -> list[Row]:
        used = sum(1 for byte in self.buffer if byte)
        return [("bytes", f"{IOMEM_SIZE} ({used} not zero)")]
