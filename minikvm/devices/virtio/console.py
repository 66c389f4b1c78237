"""virtio-console: one serial port made of two queues (virtio 1.2 §5.3).

Without VIRTIO_CONSOLE_F_MULTIPORT the device is a single port and has two
queues: ``receiveq`` (0), where the driver posts empty device-writable
buffers that the device fills with input from the host, and ``transmitq``
(1), where the driver posts device-readable buffers holding output.
Linux drives it as ``/dev/hvc0`` (``console=hvc0``).

Input is asynchronous: bytes arrive from the host when they arrive, not when
the guest asks. :meth:`VirtioConsole.receive` keeps them in a bounded
buffer and hands them over whenever the driver has posted receive buffers
(at once, or on the next kick of the receiveq, or when the driver sets
DRIVER_OK). Call it on the thread that runs the VM, between exits.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable
from typing import Any

from minikvm.devices.state import SavedState, hex_bytes
from minikvm.devices.virtio.device import VIRTIO_ID_CONSOLE, VirtioDevice
from minikvm.devices.virtio.queue import DescriptorChain

__all__ = [
    "CONSOLE_INPUT_LIMIT",
    "VIRTIO_CONSOLE_F_EMERG_WRITE",
    "VIRTIO_CONSOLE_F_MULTIPORT",
    "VIRTIO_CONSOLE_F_SIZE",
    "VIRTIO_CONSOLE_RECEIVEQ",
    "VIRTIO_CONSOLE_TRANSMITQ",
    "VirtioConsole",
]

# Feature bits (§5.3.3); none are offered: one port, no size, no emergency write.
VIRTIO_CONSOLE_F_SIZE = 0
VIRTIO_CONSOLE_F_MULTIPORT = 1
VIRTIO_CONSOLE_F_EMERG_WRITE = 2

#: Queue indices of port 0 (§5.3.2).
VIRTIO_CONSOLE_RECEIVEQ = 0
VIRTIO_CONSOLE_TRANSMITQ = 1

#: Host input kept while the guest has no receive buffer posted; more is dropped.
CONSOLE_INPUT_LIMIT = 64 * 1024
_HISTORY = 4096
_TAIL = 40  # bytes of recent output a panel row shows


def _stdout(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


class VirtioConsole(VirtioDevice):
    """A one-port console; guest output goes to ``output`` (host stdout by default)."""

    device_id = VIRTIO_ID_CONSOLE
    name = "console"
    model = "console"
    num_queues = 2

    def __init__(self, output: Callable[[bytes], None] | None = None,
                 input_limit: int = CONSOLE_INPUT_LIMIT, queue_max_size: int = 256) -> None:
        super().__init__()
        self.output = output if output is not None else _stdout
        self.input_limit = input_limit
        self.queue_max_size = queue_max_size
        self.pending = bytearray()
        self.recent_output = bytearray()
        self.counters = {"bytes_out": 0, "bytes_in": 0, "input_dropped": 0}

    def config_bytes(self) -> bytes:
        """struct virtio_console_config: cols, rows, max_nr_ports, emerg_wr (§5.3.4).
        All zero: the features that give them meaning are not offered."""
        return struct.pack("<HHII", 0, 0, 0, 0)

    # -- host to guest -------------------------------------------------------

    def rx_space(self) -> int:
        """Bytes of host input the console can still hold (the host-input
        receiver interface, as a UART's receiver FIFO has it)."""
        return max(0, self.input_limit - len(self.pending))

    def receive(self, data: bytes) -> int:
        """Host input for the guest; returns how many bytes were kept."""
        kept = data[:self.rx_space()]
        self.pending += kept
        self.counters["input_dropped"] += len(data) - len(kept)
        self._deliver()
        return len(kept)

    def _deliver(self) -> None:
        if self.context is not None and self.pending:
            self.context.serve(VIRTIO_CONSOLE_RECEIVEQ, self._fill,
                               more=lambda: bool(self.pending))

    def _fill(self, chain: DescriptorChain) -> int:
        written = chain.write(self.pending[:chain.writable_len])
        del self.pending[:written]
        self.counters["bytes_in"] += written
        return written

    # -- guest to host -------------------------------------------------------

    def _transmit(self, chain: DescriptorChain) -> int:
        data = chain.read()
        if data:
            self.counters["bytes_out"] += len(data)
            self.recent_output += data
            del self.recent_output[:-_HISTORY]
            self.output(data)
        return 0  # the device writes nothing into transmit buffers

    # -- transport hooks ---------------------------------------------------------

    def queue_notify(self, queue_index: int) -> None:
        if self.context is None:
            return
        if queue_index == VIRTIO_CONSOLE_TRANSMITQ:
            self.context.serve(queue_index, self._transmit)
        elif queue_index == VIRTIO_CONSOLE_RECEIVEQ:
            self._deliver()  # new empty buffers: hand over waiting input

    def activate(self) -> None:
        self._deliver()

    # -- save and restore ----------------------------------------------------------

    def save(self) -> dict[str, Any]:
        """Host input waiting for a receive buffer (hex), the room left for
        more (``rx_space``: what the host may still send), and the counters.
        Not saved: the output sink (a host resource), the recent output
        (kept for the TUI only)."""
        return {"pending": hex_bytes(self.pending), "rx_space": self.rx_space(),
                "counters": dict(self.counters)}

    def check_state(self, state: Any) -> None:
        name = self.name
        fields = SavedState(state, name, ("pending", "rx_space", "counters"))
        pending = fields.hex_bytes("pending", self.input_limit)
        space = fields.integer("rx_space", 0, self.input_limit)
        if len(pending) + space != self.input_limit:
            raise fields.fail("rx_space", f"= {space} with {len(pending)} bytes pending: not "
                                          f"this console's {self.input_limit}-byte input buffer")
        fields.counters("counters", self.counters.keys())

    def restore(self, state: dict[str, Any]) -> None:
        self.check_state(state)
        self.pending[:] = bytes.fromhex(state["pending"])
        self.counters = dict(state["counters"])

    def state(self) -> dict[str, Any]:
        return {"pending_input": len(self.pending), "counters": dict(self.counters),
                "recent_output": self.recent_output.decode("latin-1")}

    def state_rows(self) -> list[tuple[str, str]]:
        counters = self.counters
        received = (f"{counters['bytes_in']} bytes delivered, {len(self.pending)} waiting "
                    "for a receive buffer")
        if counters["input_dropped"]:
            received += f", {counters['input_dropped']} dropped"
        rows = [("output", f"{counters['bytes_out']} bytes"), ("input", received)]
        if self.recent_output:
            tail = self.recent_output[-_TAIL:].decode("latin-1")
            rows.append(("last", tail.encode("unicode_escape").decode("ascii")))
        return rows
