"""virtio-blk: a disk backed by a host file (virtio 1.2 §5.2).

One queue ("requestq"). Each request is a chain holding, in order:

* a 16-byte device-readable header ``le32 type, le32 reserved, le64 sector``;
* the data: device-readable for a write (``VIRTIO_BLK_T_OUT``),
  device-writable for a read (``VIRTIO_BLK_T_IN``) or an ID query;
* one device-writable status byte: ``VIRTIO_BLK_S_OK``, ``_IOERR`` or
  ``_UNSUPP``.

The device must not assume how those bytes are split into descriptors
(§2.7.4 "message framing"), so this model treats the readable bytes and the
writable bytes as two streams: the header is the first 16 readable bytes,
the status the last writable byte.

Sectors are always 512 bytes (§5.2.4: capacity is in 512-byte sectors,
whatever the block size).

**The image may change size under the running guest** (another program
truncates or extends it). The device looks at the file's size at every
read and write request and at every read of its configuration space (one
``fstat``), and does two things when it changed:

* it reports the new capacity with a *configuration change notification*
  (§2.3; the configuration generation changes, §2.5, and virtio-mmio
  interrupts a live driver, §4.2.3.4). That is the spec's own answer to a
  disk that changes size: §5.2.6.1 "the driver SHOULD check if the content
  of the capacity field has changed upon receiving a configuration change
  notification" (§2.5.4 names the capacity as a field that changes);
* it answers every request that reaches past the file's current end with
  ``VIRTIO_BLK_S_IOERR``, checked against the size *now*, not the size the
  driver was last told. A notification only helps drivers that listen
  (the bundled guest does not take config interrupts) and cannot recall
  requests already queued; a read past the end must not complete OK with
  zeros the disk never held, and a write there must not grow the file back.

So neither alone: the notification keeps a good driver's view right, the
check keeps every answer true. Reads go straight from the file into guest memory
with ``os.preadv`` on zero-copy views, and writes straight out with
``os.pwritev``: no intermediate Python bytes, which is what lets a Python
device move more than a gigabyte per second.
"""

from __future__ import annotations

import os
import struct
from typing import Any

from minikvm.devices.state import MAX_U64, SavedState, hex_bytes
from minikvm.devices.virtio.device import VIRTIO_ID_BLOCK, VirtioDevice
from minikvm.devices.virtio.features import has_feature
from minikvm.devices.virtio.queue import DescriptorChain, VirtqueueError

__all__ = [
    "SECTOR_SIZE",
    "VIRTIO_BLK_F_BLK_SIZE",
    "VIRTIO_BLK_F_FLUSH",
    "VIRTIO_BLK_F_RO",
    "VIRTIO_BLK_F_SEG_MAX",
    "VIRTIO_BLK_F_SIZE_MAX",
    "VIRTIO_BLK_ID_BYTES",
    "VIRTIO_BLK_S_IOERR",
    "VIRTIO_BLK_S_OK",
    "VIRTIO_BLK_S_UNSUPP",
    "VIRTIO_BLK_T_DISCARD",
    "VIRTIO_BLK_T_FLUSH",
    "VIRTIO_BLK_T_GET_ID",
    "VIRTIO_BLK_T_IN",
    "VIRTIO_BLK_T_OUT",
    "VIRTIO_BLK_T_WRITE_ZEROES",
    "VirtioBlk",
    "blk_request_header",
]

# Feature bits (§5.2.3).
VIRTIO_BLK_F_SIZE_MAX = 1   # size_max: largest single segment
VIRTIO_BLK_F_SEG_MAX = 2    # seg_max: most data segments in one request
VIRTIO_BLK_F_RO = 5         # the disk is read-only
VIRTIO_BLK_F_BLK_SIZE = 6   # blk_size: the optimal block size
VIRTIO_BLK_F_FLUSH = 9      # VIRTIO_BLK_T_FLUSH exists (write cache)

# Request types (§5.2.6).
VIRTIO_BLK_T_IN = 0             # read sectors into the data buffer
VIRTIO_BLK_T_OUT = 1            # write the data buffer to sectors
VIRTIO_BLK_T_FLUSH = 4          # make completed writes stable
VIRTIO_BLK_T_GET_ID = 8         # the device's serial number, 20 bytes
VIRTIO_BLK_T_GET_LIFETIME = 10
VIRTIO_BLK_T_DISCARD = 11
VIRTIO_BLK_T_WRITE_ZEROES = 13
VIRTIO_BLK_T_SECURE_ERASE = 14

# Request status (§5.2.6).
VIRTIO_BLK_S_OK = 0
VIRTIO_BLK_S_IOERR = 1
VIRTIO_BLK_S_UNSUPP = 2

VIRTIO_BLK_ID_BYTES = 20
SECTOR_SIZE = 512

_HEADER = struct.Struct("<IIQ")  # type, reserved, sector
_IOV_MAX = 1024  # Linux's limit on buffers per preadv/pwritev call

_TYPE_NAMES = {
    VIRTIO_BLK_T_IN: "IN", VIRTIO_BLK_T_OUT: "OUT", VIRTIO_BLK_T_FLUSH: "FLUSH",
    VIRTIO_BLK_T_GET_ID: "GET_ID", VIRTIO_BLK_T_GET_LIFETIME: "GET_LIFETIME",
    VIRTIO_BLK_T_DISCARD: "DISCARD", VIRTIO_BLK_T_WRITE_ZEROES: "WRITE_ZEROES",
    VIRTIO_BLK_T_SECURE_ERASE: "SECURE_ERASE",
}
_FEATURE_NAMES = {
    VIRTIO_BLK_F_SIZE_MAX: "BLK_F_SIZE_MAX", VIRTIO_BLK_F_SEG_MAX: "BLK_F_SEG_MAX",
    VIRTIO_BLK_F_RO: "BLK_F_RO", VIRTIO_BLK_F_BLK_SIZE: "BLK_F_BLK_SIZE",
    VIRTIO_BLK_F_FLUSH: "BLK_F_FLUSH",
}


def blk_request_header(request_type: int, sector: int = 0) -> bytes:
    """The 16-byte header a driver puts first in a request."""
    return _HEADER.pack(request_type, 0, sector)


def _preadv_all(fd: int, views: list[memoryview], offset: int) -> bool:
    """Fill ``views`` from the file at ``offset``. Returns False when the file
    ended first (it shrank after the request was checked): the caller answers
    IOERR rather than hand out bytes the disk does not hold."""
    while views:
        batch = views[:_IOV_MAX]
        got = os.preadv(fd, batch, offset)
        if got == 0:
            return False
        offset += got
        while views and got >= len(views[0]):
            got -= len(views[0])
            views.pop(0)
        if got:
            views[0] = views[0][got:]
    return True


def _pwritev_all(fd: int, views: list[memoryview], offset: int) -> None:
    while views:
        done = os.pwritev(fd, views[:_IOV_MAX], offset)
        if done == 0:
            raise OSError("pwritev wrote nothing")
        offset += done
        while views and done >= len(views[0]):
            done -= len(views[0])
            views.pop(0)
        if done:
            views[0] = views[0][done:]


class VirtioBlk(VirtioDevice):
    """A block device over the file at ``path`` (opened once, kept open).

    ``read_only`` offers VIRTIO_BLK_F_RO and answers every write with
    VIRTIO_BLK_S_IOERR without touching the file. The capacity is the
    file's size in whole 512-byte sectors, looked at again at every request
    (:meth:`refresh_capacity`; the module docstring says why).
    """

    device_id = VIRTIO_ID_BLOCK
    name = "blk"
    model = "block device"
    num_queues = 1
    feature_bit_names = _FEATURE_NAMES

    def __init__(self, path: str | os.PathLike[str], read_only: bool = False,
                 serial: str | None = None, queue_max_size: int = 256) -> None:
        super().__init__()
        self.path = os.fspath(path)
        self.read_only = read_only
        self.queue_max_size = queue_max_size
        self.fd = os.open(self.path, (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC)
        self.capacity = os.fstat(self.fd).st_size // SECTOR_SIZE
        if serial is None:
            serial = os.path.basename(self.path)
        self.serial = serial.encode("ascii", "replace")[:VIRTIO_BLK_ID_BYTES]
        self.counters = {"IN": 0, "OUT": 0, "FLUSH": 0, "GET_ID": 0, "unsupported": 0,
                         "ioerr": 0, "bytes_read": 0, "bytes_written": 0, "resizes": 0}
        self.last_request = ""
        #: What the last change of the image's size was, in words ("" if none).
        self.last_resize = ""

    def close(self) -> None:
        """Close the backing file (the device answers IOERR afterwards)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        if getattr(self, "fd", -1) >= 0:
            self.close()

    # -- what the driver sees ------------------------------------------------

    @property
    def seg_max(self) -> int:
        """Data segments per request: the queue minus header and status."""
        return max(1, self.queue_max_size - 2)

    def device_features(self) -> int:
        features = 1 << VIRTIO_BLK_F_FLUSH | 1 << VIRTIO_BLK_F_SEG_MAX
        if self.read_only:
            features |= 1 << VIRTIO_BLK_F_RO
        return features

    def refresh_capacity(self) -> int:
        """The capacity the backing file has now, in whole sectors.

        When it changed since the last look, the new value is what
        :meth:`config_bytes` reports from now on, and the driver is told
        with a configuration change notification (the transport bumps
        ConfigGeneration, and interrupts a live driver).
        """
        if self.fd < 0:
            return self.capacity
        try:
            capacity = os.fstat(self.fd).st_size // SECTOR_SIZE
        except OSError:
            return self.capacity
        if capacity != self.capacity:
            self.last_resize = (f"the image changed size under the guest: {self.capacity} -> "
                                f"{capacity} sectors; driver notified")
            self.capacity = capacity
            self.counters["resizes"] += 1
            if self.context is not None:
                self.context.config_changed()
        return capacity

    def config_bytes(self) -> bytes:
        """struct virtio_blk_config (§5.2.4) up to the fields we fill in,
        with the capacity the file has now."""
        self.refresh_capacity()
        return struct.pack(
            "<QII HBB I BBHI BBH",
            self.capacity,   # capacity, in 512-byte sectors
            0,               # size_max (VIRTIO_BLK_F_SIZE_MAX not offered)
            self.seg_max,    # seg_max
            0, 0, 0,         # geometry: cylinders, heads, sectors
            0,               # blk_size (not offered)
            0, 0, 0, 0,      # topology
            0, 0,            # writeback, unused0
            0,               # num_queues (VIRTIO_BLK_F_MQ not offered)
        )

    # -- requests ------------------------------------------------------------

    def process(self, queue_index: int, chain: DescriptorChain) -> int:
        writable = chain.writable_len
        if writable == 0:
            raise VirtqueueError("virtio-blk request without a device-writable status byte")
        status_at = writable - 1
        status, data_written = self._execute(chain, status_at)
        if status == VIRTIO_BLK_S_IOERR:
            self.counters["ioerr"] += 1
        elif status == VIRTIO_BLK_S_UNSUPP:
            self.counters["unsupported"] += 1
        chain.write(bytes([status]), status_at)
        return data_written + 1

    def _in_range(self, sector: int, length: int) -> bool:
        """Whether ``length`` bytes from ``sector`` lie inside the disk as the
        file is *now* (it may have shrunk since the driver read capacity)."""
        capacity = self.refresh_capacity()
        return sector <= capacity and length // SECTOR_SIZE <= capacity - sector

    def _execute(self, chain: DescriptorChain, data_in: int) -> tuple[int, int]:
        """Do the request; returns (status, bytes written before the status)."""
        if chain.readable_len < _HEADER.size:
            self.last_request = "request without a 16-byte header: IOERR"
            return VIRTIO_BLK_S_IOERR, 0
        request_type, _, sector = _HEADER.unpack(chain.read(0, _HEADER.size))
        data_out = chain.readable_len - _HEADER.size
        name = _TYPE_NAMES.get(request_type, f"type {request_type}")
        try:
            if request_type == VIRTIO_BLK_T_IN:
                return self._read(chain, sector, data_in)
            if request_type == VIRTIO_BLK_T_OUT:
                return self._write(chain, sector, data_out)
            if request_type == VIRTIO_BLK_T_FLUSH:
                self.counters["FLUSH"] += 1
                if not self.read_only:
                    os.fdatasync(self.fd)
                self.last_request = "FLUSH: OK"
                return VIRTIO_BLK_S_OK, 0
            if request_type == VIRTIO_BLK_T_GET_ID:
                self.counters["GET_ID"] += 1
                if data_in < VIRTIO_BLK_ID_BYTES:
                    self.last_request = f"GET_ID into {data_in} bytes (needs 20): IOERR"
                    return VIRTIO_BLK_S_IOERR, 0
                chain.write(self.serial.ljust(VIRTIO_BLK_ID_BYTES, b"\0"))
                self.last_request = f"GET_ID: {self.serial.decode('ascii')!r}"
                return VIRTIO_BLK_S_OK, VIRTIO_BLK_ID_BYTES
        except OSError as error:
            self.last_request = f"{name} sector {sector}: host error {error.strerror}: IOERR"
            return VIRTIO_BLK_S_IOERR, 0
        self.last_request = f"{name}: UNSUPP"
        return VIRTIO_BLK_S_UNSUPP, 0

    def _read(self, chain: DescriptorChain, sector: int, length: int) -> tuple[int, int]:
        self.counters["IN"] += 1
        if length % SECTOR_SIZE or not self._in_range(sector, length):
            self.last_request = (f"IN sector {sector} x {length} bytes: not whole sectors "
                                 f"inside {self.capacity}: IOERR")
            return VIRTIO_BLK_S_IOERR, 0
        if not _preadv_all(self.fd, chain.writable_views(0, length), sector * SECTOR_SIZE):
            self.refresh_capacity()
            self.last_request = (f"IN sector {sector} x {length} bytes: the image ended "
                                 f"before that (it shrank to {self.capacity} sectors): IOERR")
            return VIRTIO_BLK_S_IOERR, 0
        self.counters["bytes_read"] += length
        self.last_request = f"IN sector {sector}, {length // SECTOR_SIZE} sectors: OK"
        return VIRTIO_BLK_S_OK, length

    def _write(self, chain: DescriptorChain, sector: int, length: int) -> tuple[int, int]:
        self.counters["OUT"] += 1
        if self.read_only:
            # §5.2.6.2: "MUST set the status byte to VIRTIO_BLK_S_IOERR for a
            # write request if the VIRTIO_BLK_F_RO feature is offered".
            self.last_request = f"OUT sector {sector}: read-only disk: IOERR"
            return VIRTIO_BLK_S_IOERR, 0
        if length % SECTOR_SIZE or not self._in_range(sector, length):
            self.last_request = (f"OUT sector {sector} x {length} bytes: not whole sectors "
                                 f"inside {self.capacity}: IOERR")
            return VIRTIO_BLK_S_IOERR, 0
        _pwritev_all(self.fd, chain.readable_views(_HEADER.size, length), sector * SECTOR_SIZE)
        # With FLUSH offered but not negotiated the driver believes there is
        # no write cache, so a completed write must already be stable (§5.2.6.2).
        context = self.context
        if context is not None and not has_feature(context.negotiated_features,
                                                   VIRTIO_BLK_F_FLUSH):
            os.fdatasync(self.fd)
        self.counters["bytes_written"] += length
        self.last_request = f"OUT sector {sector}, {length // SECTOR_SIZE} sectors: OK"
        return VIRTIO_BLK_S_OK, 0

    # -- save and restore ----------------------------------------------------------

    def save(self) -> dict[str, Any]:
        """The capacity the driver was told, the serial GET_ID answers, the
        counters; and, to be checked on restore, the image's path and size
        now and whether it is read-only. The image's *contents* are not
        saved: the caller re-opens (and, if it wants, copies) the file.
        Not saved: the last request's words (for the TUI)."""
        return {"path": self.path, "size": self._image_size(), "read_only": self.read_only,
                "capacity": self.capacity, "serial": hex_bytes(self.serial),
                "counters": dict(self.counters)}

    def _image_size(self) -> int:
        """The backing file's size in bytes now (-1 when it is closed or gone)."""
        try:
            return os.fstat(self.fd).st_size if self.fd >= 0 else -1
        except OSError:
            return -1

    def check_state(self, state: Any) -> None:
        """Refuses a state saved over an image of another size, or with
        another read-only setting: the guest's view of the disk would not
        be the one it saved."""
        name = self.name
        fields = SavedState(state, name, ("path", "size", "read_only", "capacity", "serial",
                                          "counters"))
        fields.text("path", 4096)
        size = self._image_size()
        fields.integer("size", size, size)
        if fields.boolean("read_only") != self.read_only:
            raise fields.fail("read_only", f"= {state['read_only']}, but this disk is "
                                           f"{'' if self.read_only else 'not '}read-only")
        fields.integer("capacity", 0, MAX_U64 // SECTOR_SIZE)
        fields.hex_bytes("serial", VIRTIO_BLK_ID_BYTES)
        fields.counters("counters", self.counters.keys())

    def restore(self, state: dict[str, Any]) -> None:
        self.check_state(state)
        self.capacity = state["capacity"]
        self.serial = bytes.fromhex(state["serial"])
        self.counters = dict(state["counters"])

    def state(self) -> dict[str, Any]:
        return {"path": self.path, "read_only": self.read_only, "capacity": self.capacity,
                "serial": self.serial.decode("ascii"), "counters": dict(self.counters),
                "last_request": self.last_request, "last_resize": self.last_resize}

    def state_rows(self) -> list[tuple[str, str]]:
        counters = self.counters
        disk = f"{os.path.basename(self.path)}, {self.capacity} sectors"
        requests = " ".join(f"{kind} {counters[kind]}" for kind in ("IN", "OUT", "FLUSH",
                                                                     "GET_ID"))
        for kind, status in (("ioerr", "IOERR"), ("unsupported", "UNSUPP")):
            if counters[kind]:
                requests += f", {counters[kind]} {status}"
        rows = [("disk", disk + (", read-only" if self.read_only else "")),
                ("requests", requests),
                ("bytes", f"read {counters['bytes_read']}, written {counters['bytes_written']}")]
        if self.last_resize:
            rows.append(("resized", self.last_resize))
        if self.last_request:
            rows.append(("last", self.last_request))
        return rows
