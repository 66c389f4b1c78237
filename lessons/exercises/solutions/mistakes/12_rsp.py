"""Exercise 12, a WRONG solution the tests use: "}" itself is not escaped.

The checker calls ``write_packet(address, data)`` to set the guest's global
``answer`` to bytes that include ``#`` and ``}``, frames it with your
``frame()``, and sends it to minikvm's gdb stub -- exactly as gdb sends
``set var answer = ...`` on the wire. Then it lets the guest run: it prints
twice(answer) and exits with it. The task (12_rsp.md): the stub must answer
``+`` and ``OK``, and the guest must print what you wrote.
Check with:  minikvm lesson check 12
"""


def frame(data: bytes) -> bytes:
    """A packet: ``$``, the data, ``#``, the checksum in two hex digits
    (the sum of the data bytes modulo 256)."""
    return b"$" + data + b"#" + b"%02x" % (sum(data) % 256)


def escape(data: bytes) -> bytes:
    """Binary data made safe to travel inside a packet.

    Four bytes cannot appear as themselves: ``$`` starts a packet, ``#``
    ends it, ``}`` starts an escape and ``*`` means "repeat" in replies.
    The framing bytes are escaped -- but not the escape byte itself.
    """
    out = bytearray()
    for byte in data:
        if byte in b"$#*":
            out += bytes((0x7D, byte ^ 0x20))
        else:
            out.append(byte)
    return bytes(out)


def write_packet(address: int, data: bytes) -> bytes:
    """gdb's ``X`` packet: write ``data`` (binary) at ``address``."""
    return b"X%x,%x:" % (address, len(data)) + escape(data)
