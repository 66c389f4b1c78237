"""The target description: the XML that tells gdb which registers we have.

Without one, gdb guesses the registers from the program file it was given,
and a 64-bit gdb looking at a vCPU in real mode guesses wrong. With
``qXfer:features:read+`` in our ``qSupported`` reply, gdb asks for the
annex ``target.xml`` instead (GDB manual, "Target Descriptions" and
"Remote Protocol", section "General Query Packets": ``qXfer``) and learns
every register's name, size, type and number from it -- the numbers that
``g``, ``p`` and ``P`` then use.

The XML is built from a :class:`~minikvm.gdb.registers.Layout`, grouped in
the features gdb knows for x86 ("i386 Features": ``org.gnu.gdb.i386.core``,
``.sse``, ``.segments``) plus one of ours for CR0-CR4 and EFER. The types
gdb needs defined besides its predefined ones are made here too: the
RFLAGS bits come from :class:`minikvm.x86.flags.Rflags`, so ``info
registers eflags`` names the flags exactly as the rest of minikvm does.
"""

from __future__ import annotations

from minikvm.gdb.packets import escape_binary
from minikvm.gdb.registers import Layout
from minikvm.x86.flags import Rflags

__all__ = ["ANNEX", "read_chunk", "target_xml"]

#: The one annex we serve (``qXfer:features:read:target.xml:...``).
ANNEX = "target.xml"

#: MXCSR, the SSE control and status register (SDM vol. 1, 10.2.3): the six
#: exception flags, denormals-are-zero, the six masks, flush-to-zero.
_MXCSR_BITS = (("IE", 0), ("DE", 1), ("ZE", 2), ("OE", 3), ("UE", 4), ("PE", 5),
               ("DAZ", 6), ("IM", 7), ("DM", 8), ("ZM", 9), ("OM", 10), ("UM", 11),
               ("PM", 12), ("FZ", 15))

#: The views of a 128-bit SSE register gdb offers (``p $xmm0.v4_int32``).
_VECTORS = (("v4f", "ieee_single", 4, "v4_float"), ("v2d", "ieee_double", 2, "v2_double"),
            ("v16i8", "int8", 16, "v16_int8"), ("v8i16", "int16", 8, "v8_int16"),
            ("v4i32", "int32", 4, "v4_int32"), ("v2i64", "int64", 2, "v2_int64"))


def _flags(name: str, bits: tuple[tuple[str, int], ...]) -> list[str]:
    lines = [f'  <flags id="{name}" size="4">']
    lines += [f'    <field name="{field}" start="{bit}" end="{bit}"/>' for field, bit in bits]
    lines.append("  </flags>")
    return lines


def _eflags_bits() -> tuple[tuple[str, int], ...]:
    """The one-bit RFLAGS flags, named as :class:`Rflags` names them
    (IOPL is two bits wide and the bit that is always 1 has no name)."""
    return tuple((flag.name, flag.value.bit_length() - 1) for flag in Rflags
                 if flag.name not in ("FIXED", "IOPL") and flag.value.bit_count() == 1)


def _types(feature: str) -> list[str]:
    if feature == "org.gnu.gdb.i386.core":
        return _flags("i386_eflags", _eflags_bits())
    if feature == "org.gnu.gdb.i386.sse":
        lines = [f'  <vector id="{vid}" type="{element}" count="{count}"/>'
                 for vid, element, count, _ in _VECTORS]
        lines.append('  <union id="vec128">')
        lines += [f'    <field name="{field}" type="{vid}"/>' for vid, _, _, field in _VECTORS]
        lines.append('    <field name="uint128" type="uint128"/>')
        lines.append("  </union>")
        return lines + _flags("i386_mxcsr", _MXCSR_BITS)
    return []


def target_xml(layout: Layout) -> bytes:
    """The complete description of ``layout``, one file (no includes)."""
    lines = ['<?xml version="1.0"?>', '<!DOCTYPE target SYSTEM "gdb-target.dtd">',
             "<target>", f"  <architecture>{layout.architecture}</architecture>"]
    feature = None
    for number, spec in enumerate(layout.registers):
        if spec.feature != feature:
            if feature is not None:
                lines.append("</feature>")
            feature = spec.feature
            lines.append(f'<feature name="{feature}">')
            lines += _types(feature)
        group = f' group="{spec.group}"' if spec.group else ""
        lines.append(f'  <reg name="{spec.name}" bitsize="{spec.bits}" type="{spec.type}" '
                     f'regnum="{number}"{group}/>')
    lines += ["</feature>", "</target>", ""]
    return "\n".join(lines).encode()


def read_chunk(document: bytes, offset: int, length: int) -> bytes:
    """A ``qXfer`` read reply: ``m`` + a piece when more follows, ``l`` + the
    last piece (possibly empty) otherwise; binary-escaped."""
    piece = document[offset:offset + length]
    more = offset + length < len(document)
    return (b"m" if more else b"l") + escape_binary(piece)
