"""fw_cfg: QEMU's firmware configuration device, port interface (0x510, 0x511).

Firmware and test kernels that run under QEMU ask it about the machine
through this device rather than probing hardware: how much RAM, how many
CPUs, the kernel command line. kvm-unit-tests, for one, reads the number of
CPUs it must start from here. The interface is two registers (QEMU's
``docs/specs/fw_cfg.rst``, "Guest-side Hardware Interface"; the keys are
those of Linux's ``include/uapi/linux/qemu_fw_cfg.h``):

* the **selector** register, port 0x510, 16 bits, write-only: a write picks
  an *item* by its key and rewinds the data offset to 0 (bit 14, the old
  "write channel", and bit 15, "architecture-specific", are part of the
  key as the spec's "Ranges" table says: bit 14 names the same item);
* the **data** register, port 0x511, 8 bits: each read returns the next
  byte of the selected item and moves the offset on; past the end of the
  item (or for a key nobody filled in) a read returns 0x00. Writes are
  ignored, as QEMU has ignored them since v2.4 ("writes ... only through
  the DMA interface", which this device does not offer: ``FW_CFG_ID`` says
  so with bit 1 clear).

Items here: ``FW_CFG_SIGNATURE`` ("QEMU"), ``FW_CFG_ID`` (1: the port
interface only), ``FW_CFG_RAM_SIZE`` (little-endian 64 bits),
``FW_CFG_NB_CPUS`` and ``FW_CFG_MAX_CPUS`` (16 bits), the kernel command line
(``FW_CFG_CMDLINE_SIZE``: its length with the NUL, 32 bits;
``FW_CFG_CMDLINE_DATA``: the bytes and the NUL), and the file directory
(``FW_CFG_FILE_DIR``) of named items from key 0x20 on, in its big-endian
format. Only the guest reads anything, and reads change nothing but the
offset, so a hostile guest can do no more than read what the host put here.
The device knows nothing of KVM or of ports: it sees offsets 0 and 1.
"""

from __future__ import annotations

import re
import struct
from typing import Any

from minikvm.devices.base import Device, DeviceStateError, Row, all_ones
from minikvm.devices.state import MAX_U64, SavedState, hex_bytes

__all__ = [
    "FW_CFG_ARCH_LOCAL",
    "FW_CFG_CMDLINE_DATA",
    "FW_CFG_CMDLINE_SIZE",
    "FW_CFG_FILE_DIR",
    "FW_CFG_FILE_FIRST",
    "FW_CFG_ID",
    "FW_CFG_MAX_CPUS",
    "FW_CFG_MAX_FILE_PATH",
    "FW_CFG_NB_CPUS",
    "FW_CFG_RAM_SIZE",
    "FW_CFG_SIGNATURE",
    "FW_CFG_VERSION",
    "FW_CFG_WRITE_CHANNEL",
    "FwCfg",
    "SELECTOR",
    "DATA",
]

# Register offsets inside the device's two ports (selector at 0x510).
SELECTOR = 0    #: selector register: a 16-bit write picks the item
DATA = 1        #: data register: each 8-bit read gives the next byte

# Keys (include/uapi/linux/qemu_fw_cfg.h).
FW_CFG_SIGNATURE = 0x00     #: "QEMU": the device is there
FW_CFG_ID = 0x01            #: feature bitmap, 32 bits: bit 0 port interface, bit 1 DMA
FW_CFG_RAM_SIZE = 0x03      #: guest RAM in bytes, 64 bits
FW_CFG_NB_CPUS = 0x05       #: CPUs present at boot, 16 bits
FW_CFG_MAX_CPUS = 0x0F      #: CPUs the machine may ever have, 16 bits
FW_CFG_CMDLINE_SIZE = 0x14  #: length of the kernel command line with its NUL, 32 bits
FW_CFG_CMDLINE_DATA = 0x15  #: the kernel command line, NUL-terminated
FW_CFG_FILE_DIR = 0x19      #: the directory of named items (big-endian)
FW_CFG_FILE_FIRST = 0x20    #: first key of a named item
FW_CFG_WRITE_CHANNEL = 0x4000  #: selector bit 14: the same item, "for writing"
FW_CFG_ARCH_LOCAL = 0x8000     #: selector bit 15: an architecture-specific item

FW_CFG_VERSION = 0x01       #: FW_CFG_ID bit 0: the traditional (port) interface
FW_CFG_MAX_FILE_PATH = 56   #: bytes of a name in a directory entry, NUL included
#: How many named items fit below the write-channel bit.
MAX_FILES = FW_CFG_WRITE_CHANNEL - FW_CFG_FILE_FIRST
#: The largest item the host may add (a guest reads one byte per exit).
MAX_ITEM_SIZE = 16 << 20
#: An item's key as a saved state spells it.
_ITEM_KEY = re.compile(r"0x[0-9a-f]{4}")

_NAMES = {
    FW_CFG_SIGNATURE: "SIGNATURE", FW_CFG_ID: "ID", 0x02: "UUID", FW_CFG_RAM_SIZE: "RAM_SIZE",
    0x04: "NOGRAPHIC", FW_CFG_NB_CPUS: "NB_CPUS", 0x06: "MACHINE_ID", 0x07: "KERNEL_ADDR",
    0x08: "KERNEL_SIZE", 0x09: "KERNEL_CMDLINE", 0x0A: "INITRD_ADDR", 0x0B: "INITRD_SIZE",
    0x0C: "BOOT_DEVICE", 0x0D: "NUMA", 0x0E: "BOOT_MENU", FW_CFG_MAX_CPUS: "MAX_CPUS",
    0x10: "KERNEL_ENTRY", 0x11: "KERNEL_DATA", 0x12: "INITRD_DATA", 0x13: "CMDLINE_ADDR",
    FW_CFG_CMDLINE_SIZE: "CMDLINE_SIZE", FW_CFG_CMDLINE_DATA: "CMDLINE_DATA",
    0x16: "SETUP_ADDR", 0x17: "SETUP_SIZE", 0x18: "SETUP_DATA", FW_CFG_FILE_DIR: "FILE_DIR",
}


def item_key(selector: int) -> int:
    """The item a selector value names: bit 14 (the write channel) names the
    same item as without it (fw_cfg.rst, "Ranges")."""
    return selector & 0xFFFF & ~FW_CFG_WRITE_CHANNEL


class FwCfg(Device):
    """The fw_cfg port interface: a selector, a data offset, and the items.

    The host fills items with :meth:`set_item`, :meth:`set_machine`,
    :meth:`set_cmdline` and :meth:`add_file`; the guest selects and reads.
    """

    name = "fw_cfg"
    model = "QEMU fw_cfg (ports)"

    def __init__(self) -> None:
        self._items: dict[int, bytes] = {}
        self._files: list[tuple[str, int]] = []   # (name, key), in the order added
        #: The selector the guest last wrote, and the data offset within it.
        self.selector = FW_CFG_SIGNATURE
        self.offset = 0
        self.reads = 0
        self._last_index: int | None = None   # the byte the last data read returned
        self.set_item(FW_CFG_SIGNATURE, b"QEMU")
        self.set_item(FW_CFG_ID, struct.pack("<I", FW_CFG_VERSION))
        self._update_directory()

    # -- the host's side ------------------------------------------------------------

    def set_item(self, key: int, data: bytes) -> None:
        """Put ``data`` under ``key`` (0..0xFFFF, without the write-channel bit)."""
        if not 0 <= key <= 0xFFFF or key & FW_CFG_WRITE_CHANNEL:
            raise ValueError(f"fw_cfg key {key:#x} is not an item key")
        if len(data) > MAX_ITEM_SIZE:
            raise ValueError(f"fw_cfg item {key:#x}: {len(data)} bytes is more than "
                             f"{MAX_ITEM_SIZE}")
        self._items[key] = bytes(data)

    def item(self, key: int) -> bytes:
        """The bytes under ``key`` (empty when nothing is there)."""
        return self._items.get(item_key(key), b"")

    def set_machine(self, ram_size: int, nb_cpus: int, max_cpus: int | None = None) -> None:
        """RAM size in bytes and the number of CPUs, as QEMU gives them."""
        max_cpus = nb_cpus if max_cpus is None else max_cpus
        if not 1 <= nb_cpus <= max_cpus <= 0xFFFF:
            raise ValueError(f"fw_cfg: {nb_cpus} CPUs of {max_cpus} do not make a machine")
        self.set_item(FW_CFG_RAM_SIZE, struct.pack("<Q", ram_size))
        self.set_item(FW_CFG_NB_CPUS, struct.pack("<H", nb_cpus))
        self.set_item(FW_CFG_MAX_CPUS, struct.pack("<H", max_cpus))

    def set_cmdline(self, cmdline: str | bytes) -> None:
        """The kernel command line: CMDLINE_DATA ends in a NUL, CMDLINE_SIZE counts it."""
        data = cmdline.encode() if isinstance(cmdline, str) else bytes(cmdline)
        if b"\0" in data:
            raise ValueError("a command line cannot hold a NUL byte")
        data += b"\0"
        self.set_item(FW_CFG_CMDLINE_SIZE, struct.pack("<I", len(data)))
        self.set_item(FW_CFG_CMDLINE_DATA, data)

    def add_file(self, name: str, data: bytes) -> int:
        """A named item, listed in the file directory; returns its key."""
        raw = name.encode("ascii", "strict")
        if not raw or len(raw) >= FW_CFG_MAX_FILE_PATH or b"\0" in raw:
            raise ValueError(f"fw_cfg file name {name!r}: 1 to {FW_CFG_MAX_FILE_PATH - 1} "
                             "ASCII characters")
        if any(existing == name for existing, _ in self._files):
            raise ValueError(f"fw_cfg already has a file {name!r}")
        if len(self._files) >= MAX_FILES:
            raise ValueError("fw_cfg has no key left for another file")
        key = FW_CFG_FILE_FIRST + len(self._files)
        self.set_item(key, data)
        self._files.append((name, key))
        self._update_directory()
        return key

    def _update_directory(self) -> None:
        """FW_CFG_FILE_DIR: a big-endian count, then per file its size (be32),
        key (be16), two reserved bytes and its name in 56 NUL-padded bytes."""
        entries = b"".join(struct.pack(">IHH56s", len(self._items[key]), key, 0, name.encode())
                           for name, key in self._files)
        self.set_item(FW_CFG_FILE_DIR, struct.pack(">I", len(self._files)) + entries)

    # -- the guest's side -----------------------------------------------------------

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == SELECTOR and size == 2:
            self.selector = value & 0xFFFF
            self.offset = 0
        # Anything else -- data writes (ignored since QEMU 2.4), a selector
        # write of the wrong width -- changes nothing.

    def read(self, offset: int, size: int) -> int:
        if offset != DATA or size != 1:
            return all_ones(size)   # the selector is write-only; the data port is 8 bits
        data = self._items.get(item_key(self.selector), b"")
        self.reads += 1
        if self.offset >= len(data):
            self._last_index = None
            return 0
        value = data[self.offset]
        self._last_index = self.offset
        self.offset += 1
        return value

    # -- save and restore -------------------------------------------------------------

    def save(self) -> dict[str, Any]:
        """The selector/offset state machine, the read count, and every item
        (the machine fills them at build time, but a snapshot must not depend
        on being restored into a machine built the same way): items by key
        (``"0x0015"``) as hex, the named files as ``[name, key]`` pairs.
        Not saved: which byte the last read returned (for words only)."""
        return {"selector": self.selector, "offset": self.offset, "reads": self.reads,
                "items": {f"{key:#06x}": hex_bytes(data)
                          for key, data in sorted(self._items.items())},
                "files": [[name, key] for name, key in self._files]}

    def check_state(self, state: Any) -> None:
        self._checked_items(state)

    def restore(self, state: dict[str, Any]) -> None:
        items = self._checked_items(state)
        self._items = items
        self._files = [(name, key) for name, key in state["files"]]
        self.selector, self.offset, self.reads = (state["selector"], state["offset"],
                                                  state["reads"])
        self._last_index = None

    def _checked_items(self, state: Any) -> dict[int, bytes]:
        """Check ``state`` whole; returns its items, decoded."""
        name = self.name
        fields = SavedState(state, name, ("selector", "offset", "reads", "items", "files"))
        selector = fields.integer("selector", 0, 0xFFFF)
        fields.integer("reads", 0, MAX_U64)
        saved_items = fields.mapping("items")
        if len(saved_items.value) > FW_CFG_WRITE_CHANNEL:
            raise fields.fail("items", f"holds more than {FW_CFG_WRITE_CHANNEL} items")
        items: dict[int, bytes] = {}
        for text in saved_items.value:
            key = int(text, 16) if isinstance(text, str) and _ITEM_KEY.fullmatch(text) else -1
            if key < 0 or key & FW_CFG_WRITE_CHANNEL:
                raise saved_items.fail(text, "is not an item key like '0x0015'")
            items[key] = saved_items.hex_bytes(text, MAX_ITEM_SIZE)
        files = fields.entries("files", MAX_FILES)
        seen: set[str] = set()
        for index, entry in enumerate(files):
            # As add_file() makes them: a unique ASCII name, keys from 0x20 in order.
            ok = isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)
            if ok:
                file_name, key = entry
                ok = (file_name.isascii() and 0 < len(file_name) < FW_CFG_MAX_FILE_PATH
                      and "\0" not in file_name and file_name not in seen
                      and key == FW_CFG_FILE_FIRST + index and key in items)
                seen.add(file_name)
            if not ok:
                raise DeviceStateError(f"{name}: saved file {index} is not [name, key] of a "
                                       "unique ASCII name and its item's key")
        fields.integer("offset", 0, len(items.get(item_key(selector), b"")))
        return items

    # -- words ----------------------------------------------------------------------

    def item_name(self, selector: int) -> str:
        """``NB_CPUS``, ``file opt/x``, ``0x8003 (x86)`` ... for a selector value."""
        key = item_key(selector)
        if key in _NAMES:
            return _NAMES[key]
        for name, file_key in self._files:
            if file_key == key:
                return f"file {name}"
        if key & FW_CFG_ARCH_LOCAL:
            return f"{key:#06x} (architecture-specific)"
        return f"{key:#06x}"

    def register_name(self, offset: int, is_write: bool) -> str:
        return {SELECTOR: "selector", DATA: "data"}.get(offset, f"+{offset:#x}")

    def describe(self, offset: int, size: int, is_write: bool, value: int) -> str:
        if is_write:
            if offset == SELECTOR and size == 2:
                length = len(self._items.get(item_key(value), b""))
                return (f"fw_cfg: select item {value:#06x} {self.item_name(value)} "
                        f"({length} bytes); the data offset goes back to 0")
            if offset == DATA:
                return f"fw_cfg: data write {value:#x} ignored (the port interface is read-only)"
            return f"fw_cfg: {size}-byte write at +{offset} ignored (the selector takes 16 bits)"
        if offset == DATA and size == 1:
            length = len(self._items.get(item_key(self.selector), b""))
            if self._last_index is None:
                where = f"past the end ({length} bytes)" if length else "no such item"
                return f"fw_cfg: {self.item_name(self.selector)} {where} -> 0x00"
            return (f"fw_cfg: {self.item_name(self.selector)} byte {self._last_index} of "
                    f"{length} -> {value:#04x}")
        return f"fw_cfg: {size}-byte read at +{offset} -> {value:#x} (not a register)"

    def state(self) -> dict[str, Any]:
        return {"selector": self.selector, "item": self.item_name(self.selector),
                "offset": self.offset, "reads": self.reads,
                "items": {f"{key:#06x}": len(data) for key, data in sorted(self._items.items())},
                "files": [name for name, _ in self._files]}

    def state_rows(self) -> list[Row]:
        key = item_key(self.selector)
        length = len(self._items.get(key, b""))
        rows = [("selected", f"{self.selector:#06x} {self.item_name(self.selector)}"),
                ("offset", f"{self.offset} of {length} bytes"),
                ("reads", str(self.reads))]
        cpus = self._items.get(FW_CFG_NB_CPUS)
        ram = self._items.get(FW_CFG_RAM_SIZE)
        if cpus and ram:
            rows.append(("machine", f"{struct.unpack('<H', cpus)[0]} CPUs, "
                                    f"{struct.unpack('<Q', ram)[0] >> 20} MiB"))
        cmdline = self._items.get(FW_CFG_CMDLINE_DATA)
        if cmdline is not None:
            rows.append(("cmdline", repr(cmdline[:-1].decode("latin-1"))[:60]))
        if self._files:
            rows.append(("files", ", ".join(name for name, _ in self._files)[:60]))
        return rows
