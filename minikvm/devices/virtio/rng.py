"""virtio-rng: entropy from the host for the guest (virtio 1.2 §5.4).

The simplest virtio device: one queue ("requestq"), no features, no
configuration space. The driver posts device-writable buffers; the device
fills them with random bytes from the host and returns them. A guest kernel
uses it to seed its own random number generator (Linux: ``hw_random``
driver ``virtio_rng``).

A request gets at most :data:`RNG_REQUEST_CAP` bytes, whatever its size: the
spec lets the device write fewer bytes than the buffer holds (the used
``len`` says how many), and a guest must not be able to make the host
produce megabytes per request.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from minikvm.devices.state import MAX_U64, SavedState
from minikvm.devices.virtio.device import VIRTIO_ID_RNG, VirtioDevice
from minikvm.devices.virtio.queue import DescriptorChain

__all__ = ["RNG_REQUEST_CAP", "VirtioRng"]

#: Most bytes one request receives.
RNG_REQUEST_CAP = 64 * 1024


class VirtioRng(VirtioDevice):
    """An entropy device; ``source(n)`` returns n random bytes (default ``os.urandom``)."""

    device_id = VIRTIO_ID_RNG
    name = "rng"
    model = "entropy source"
    num_queues = 1

    def __init__(self, source: Callable[[int], bytes] | None = None,
                 request_cap: int = RNG_REQUEST_CAP, queue_max_size: int = 256) -> None:
        super().__init__()
        self.source = source if source is not None else os.urandom
        self.request_cap = request_cap
        self.queue_max_size = queue_max_size
        self.bytes_given = 0
        self.requests = 0

    def process(self, queue_index: int, chain: DescriptorChain) -> int:
        """Fill the writable part of the request (up to the cap) with entropy."""
        self.requests += 1
        wanted = min(chain.writable_len, self.request_cap)
        if wanted == 0:
            return 0  # nothing writable: return the buffer untouched
        data = self.source(wanted)[:wanted]
        written = chain.write(data)
        self.bytes_given += written
        return written

    def save(self) -> dict[str, Any]:
        """The counters, and the cap to be checked (a device setting, not state).
        The entropy source is a host resource: not saved."""
        return {"requests": self.requests, "bytes_given": self.bytes_given,
                "request_cap": self.request_cap}

    def check_state(self, state: Any) -> None:
        fields = SavedState(state, self.name, ("requests", "bytes_given", "request_cap"))
        fields.integer("requests", 0, MAX_U64)
        fields.integer("bytes_given", 0, MAX_U64)
        fields.integer("request_cap", self.request_cap, self.request_cap)

    def restore(self, state: dict[str, Any]) -> None:
        self.check_state(state)
        self.requests, self.bytes_given = state["requests"], state["bytes_given"]

    def state(self) -> dict[str, Any]:
        return {"requests": self.requests, "bytes_given": self.bytes_given,
                "request_cap": self.request_cap}

    def state_rows(self) -> list[tuple[str, str]]:
        plural = "" if self.requests == 1 else "s"
        return [("entropy", f"{self.bytes_given} bytes in {self.requests} request{plural} "
                            f"(at most {self.request_cap} each)")]
