"""Checks for values read from a snapshot's JSON sections.

A JSON section passed its CRC, but that only proves nobody changed it by
accident. Each value is checked for its type and range before it goes near
an ioctl or an allocation; a wrong one is a :class:`SnapshotError` naming
where it was (``VCPU[0].regs.rip``).
"""

from __future__ import annotations

from typing import Any

from minikvm.snapshot.format import SnapshotError

__all__ = ["U32", "U64", "need_dict", "need_hex", "need_int", "need_list", "need_str"]

U32 = (1 << 32) - 1
U64 = (1 << 64) - 1


def need_dict(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SnapshotError(f"{where} should be an object, not {type(value).__name__}")
    return value


def need_int(obj: dict[str, Any], key: str, where: str, lo: int = 0, hi: int = U64) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise SnapshotError(f"{where}.{key} should be an integer in {lo}..{hi:#x}, not {value!r:.40}")
    return value


def need_str(obj: dict[str, Any], key: str, where: str, optional: bool = False) -> str | None:
    value = obj.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or len(value) > 4096:
        raise SnapshotError(f"{where}.{key} should be a string, not {value!r:.40}")
    if not value.isprintable():
        # It is printed (snapshot info, the gdb attach line): a newline or an
        # escape sequence from a file must not reach the person's terminal.
        raise SnapshotError(f"{where}.{key} holds control characters: {value!r:.40}")
    return value


def need_list(obj: dict[str, Any], key: str, where: str, most: int) -> list[Any]:
    value = obj.get(key)
    if not isinstance(value, list) or len(value) > most:
        raise SnapshotError(f"{where}.{key} should be a list of at most {most} items")
    return value


def need_hex(obj: dict[str, Any], key: str, where: str, size: int) -> bytes:
    """A byte string saved as hex, of exactly ``size`` bytes."""
    value = obj.get(key)
    if not isinstance(value, str) or len(value) != 2 * size:
        raise SnapshotError(f"{where}.{key} should be {size} bytes in hex")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise SnapshotError(f"{where}.{key} is not hex") from None
