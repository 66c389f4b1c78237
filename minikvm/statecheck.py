"""Checking saved state read back from a source nobody vouches for.

Two parts of minikvm read state back: a device's ``restore()`` (from a
snapshot, or from the reverse debugger's history) and the snapshot reader
(the sections of a file anyone may have edited). Both must check *every*
value -- its type, its range, its length -- before it goes near a register,
an ioctl or an allocation, and say in one printable line which value was
wrong. The checks are the same; only two things differ:

* the error raised (:class:`~minikvm.devices.base.DeviceStateError`,
  :class:`~minikvm.snapshot.format.SnapshotError`), and
* how the value is named: a snapshot names it by its JSON path
  (``VCPU[0].regs.rip``), a device by itself and the field
  (``com1: saved field 'ier'``).

So a :class:`Fields` wraps one saved dict with a name; its subclasses
choose the error and the wording, and each check returns the value it
checked. This module imports nothing of minikvm: every layer may use it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

__all__ = ["Fields", "MAX_U16", "MAX_U32", "MAX_U64", "is_uint", "shown"]

MAX_U16 = 0xFFFF
MAX_U32 = 0xFFFF_FFFF
MAX_U64 = 0xFFFF_FFFF_FFFF_FFFF
#: A saved string is at most this long (a path, a message).
MAX_TEXT = 4096

_LOWER_HEX = re.compile(r"[0-9a-f]*")


def is_uint(value: Any, most: int) -> bool:
    """``value`` is an integer in ``0..most``. JSON's ``true`` arrives as
    Python's ``True``, an ``int`` too: it is not a number here."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= most


def _number(value: int) -> str:
    """A number for a message: small ones in decimal, large ones (limits,
    addresses) in hex, and never thousands of digits."""
    text = str(value) if abs(value) < 1 << 16 else f"{value:#x}"
    return text if len(text) <= 40 else text[:37] + "..."


def shown(value: Any) -> str:
    """A saved value as a message shows it: a scalar itself (``'0x1000'``,
    ``None``, ``True``), a container by its type. Always one printable line
    (``repr`` escapes control characters) of bounded length."""
    if isinstance(value, int) and not isinstance(value, bool):
        return _number(value)
    if value is None or isinstance(value, bool | float | str):
        return f"{value!r:.40}"
    return f"a {type(value).__name__}"


class Fields:
    """One saved object (a dict), checked field by field.

    The base class names things as a JSON path: the object is ``name``, its
    field ``key`` is ``name.key``, and it raises :class:`ValueError`.
    Subclasses set :attr:`error` and override the three ``*_name`` methods.
    """

    #: The exception every failed check raises (a ValueError subclass).
    error: type[ValueError] = ValueError
    #: What a field that should not be there is called.
    unknown_field = "is not expected here"

    def __init__(self, value: Any, name: str) -> None:
        self.name = name
        if not isinstance(value, dict):
            raise self.error(f"{self.whole_name()} is a {type(value).__name__}, not a dict")
        self.value: dict[str, Any] = value

    # -- wording -------------------------------------------------------------------------

    def whole_name(self) -> str:
        """The object itself, in a message."""
        return self.name

    def field_name(self, key: str) -> str:
        """One field of it, in a message."""
        return f"{self.name}.{key}"

    def inner_name(self, key: str) -> str:
        """The name of the object held in field ``key``."""
        return f"{self.name}.{key}"

    def fail(self, key: str, why: str) -> ValueError:
        """The error saying that field ``key`` ``why``."""
        return self.error(f"{self.field_name(key)} {why}")

    # -- the object ---------------------------------------------------------------------

    def exactly(self, keys: Iterable[str]) -> Fields:
        """Check that the object has exactly ``keys``: none missing, none
        unknown (a state from another device, or from a later version)."""
        wanted = set(keys)
        missing = sorted(wanted - self.value.keys())
        if missing:
            raise self.fail(missing[0], "is missing")
        unknown = sorted(str(key) for key in self.value.keys() - wanted)
        if unknown:
            raise self.fail(unknown[0], self.unknown_field)
        return self

    def _get(self, key: str, optional: bool = False) -> Any:
        if key not in self.value:
            if optional:
                return None
            raise self.fail(key, "is missing")
        return self.value[key]

    def mapping(self, key: str) -> Fields:
        """The dict held in field ``key``, as :class:`Fields` of the same kind."""
        value = self._get(key)
        if not isinstance(value, dict):
            raise self.fail(key, f"is {shown(value)}, not a dict")
        return type(self)(value, self.inner_name(key))

    # -- numbers ------------------------------------------------------------------------

    def integer(self, key: str, lo: int = 0, hi: int = MAX_U64, *,
                optional: bool = False) -> int | None:
        """An integer (not a bool) in ``lo..hi``; with ``optional``, None too."""
        value = self._get(key, optional)
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"is {shown(value)}, not an integer")
        if not lo <= value <= hi:
            raise self.fail(key, f"= {_number(value)} is outside {_number(lo)}..{_number(hi)}")
        return value

    def bits(self, key: str, mask: int) -> int:
        """A register value with no bit set outside ``mask`` (the bits that exist)."""
        value = self.integer(key)
        if value & ~mask:
            raise self.fail(key, f"= {value:#x} sets bits outside {mask:#x}")
        return value

    def choice(self, key: str, choices: Iterable[int]) -> int:
        """An integer that is one of ``choices``."""
        allowed = sorted(choices)
        value = self.integer(key, allowed[0], allowed[-1])
        if value not in allowed:
            raise self.fail(key, f"= {value:#x} is not one of "
                                 f"{', '.join(f'{choice:#x}' for choice in allowed)}")
        return value

    def counters(self, key: str, names: Iterable[str]) -> dict[str, int]:
        """A dict of exactly the named counters, each a count below 2**64."""
        inner = self.mapping(key).exactly(names)
        return {name: inner.integer(name) for name in inner.value}

    # -- true/false -----------------------------------------------------------------------

    def boolean(self, key: str) -> bool:
        value = self._get(key)
        if not isinstance(value, bool):
            raise self.fail(key, f"is {shown(value)}, not true/false")
        return value

    def booleans(self, key: str, length: int) -> list[bool]:
        """A list of exactly ``length`` true/false values."""
        values = self.entries(key, length)
        if len(values) != length:
            raise self.fail(key, f"has {len(values)} entries, not {length}")
        if not all(isinstance(value, bool) for value in values):
            raise self.fail(key, "holds something that is not true/false")
        return values

    # -- strings, bytes, lists ----------------------------------------------------------------

    def text(self, key: str, most: int = MAX_TEXT, *, optional: bool = False) -> str | None:
        """A string of at most ``most`` characters, all printable: it may be
        shown (``snapshot info``, the TUI), and a newline or an escape
        sequence from a file must not reach the person's terminal."""
        value = self._get(key, optional)
        if value is None and optional:
            return None
        if not isinstance(value, str):
            raise self.fail(key, f"is {shown(value)}, not a string")
        if len(value) > most:
            raise self.fail(key, f"holds {len(value)} characters, more than {most}")
        if not value.isprintable():
            raise self.fail(key, f"holds control characters: {value!r:.40}")
        return value

    def hex_bytes(self, key: str, size: int, *, exact: bool = False,
                  optional: bool = False) -> bytes | None:
        """Bytes saved as lowercase hex: at most ``size`` of them (exactly,
        with ``exact``). The length is checked before anything is decoded,
        and only hex digits pass (``bytes.fromhex`` would skip spaces and
        return fewer bytes than the length promised)."""
        value = self._get(key, optional)
        if value is None and optional:
            return None
        if not isinstance(value, str):
            raise self.fail(key, f"is {shown(value)}, not a hex string")
        if len(value) % 2 or len(value) // 2 > size or (exact and len(value) // 2 != size):
            wanted = f"exactly {size}" if exact else f"at most {size}"
            raise self.fail(key, f"holds {len(value) / 2:g} bytes, {wanted} allowed")
        if not _LOWER_HEX.fullmatch(value):
            raise self.fail(key, "is not lowercase hex")
        return bytes.fromhex(value)

    def entries(self, key: str, most: int) -> list[Any]:
        """A list of at most ``most`` entries (each still to be checked)."""
        value = self._get(key)
        if not isinstance(value, list):
            raise self.fail(key, f"is {shown(value)}, not a list")
        if len(value) > most:
            raise self.fail(key, f"has {len(value)} entries, more than {most}")
        return value
