"""A hostile guest against the virtio devices: every input ends in a defined outcome.

The guest owns the descriptor tables and rings, so it can write anything
there. Whatever it writes, a kick must end in one of:

* the request **completed** (for virtio-blk: with status OK or UNSUPP),
* the request completed with **IOERR**, or
* the device in **NEEDS_RESET** (with a configuration interrupt, since the
  driver is live), serving nothing more until a reset;

and never in an exception, a hang, a write anywhere but device-writable
buffers and the used ring, or an attempt to touch memory outside guest RAM.
After a reset the device works again.

Guest memory of every scenario (64 KiB, queues of 8 entries)::

    0x1000  rings (descriptor table, available ring, used ring)
    0x2000  up to three indirect tables        } the only places indirect
    0x3000  zeros                              } descriptors point into
    0x4000  readable data: virtio-blk request headers of every kind
    0x8000  the only place device-writable descriptors point into

Keeping writable buffers away from everything the device reads as
descriptors is what makes "nothing outside the writable buffers changed" a
sharp check even for random tables.

Example counts per run: 200 random queues plus 13 classes of 28 examples
(564 hostile examples, about 3 s); tests/test_virtio_mmio.py and
tests/test_virtio_status.py add register and status-machine traffic.
The long run (``pytest -m slow --hypothesis-profile long``,
tests/test_hostile_long.py) drives the random queues and the register
traffic tens of thousands of times each.
"""

from __future__ import annotations

import enum
import itertools

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from minikvm.devices.virtio.blk import (
    SECTOR_SIZE,
    VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
    VirtioBlk,
    blk_request_header,
)
from minikvm.devices.virtio.features import (
    VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC,
    bit,
)
from minikvm.devices.virtio.mmio import (
    VIRTIO_MMIO_INT_CONFIG,
    VIRTIO_MMIO_STATUS,
)
from minikvm.devices.virtio.mock import mock_device
from minikvm.devices.virtio.queue import (
    MAX_CHAIN_BYTES,
    VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
    Descriptor,
    used_ring_size,
)
from minikvm.devices.virtio.rng import VirtioRng
from minikvm.devices.virtio.status import DeviceStatus
from minikvm.memory import GuestMemoryError

NEXT, WRITE, INDIRECT = VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VIRTQ_DESC_F_INDIRECT
SIZE = 8
RAM = 64 * 1024
TABLES = (0x2000, 0x2080, 0x2100)
ZEROS = (0x3000, 0x4000)
READABLE = 0x4000
WRITABLE = (0x8000, RAM)
DISK_SECTORS = 64
RNG_CAP = 2048
HEADER_TYPES = (VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID,
                3, 0xFFFF_FFFF)
HEADER_SECTORS = (0, 1, DISK_SECTORS - 1, DISK_SECTORS, 2**63, 2**64 - 1)
HEADERS = {READABLE + 16 * i: blk_request_header(t, s)
           for i, (t, s) in enumerate(itertools.product(HEADER_TYPES, HEADER_SECTORS))}


class Outcome(enum.Enum):
    COMPLETED = "completed"
    IOERR = "IOERR"
    NEEDS_RESET = "NEEDS_RESET"


def counting_source(n):
    return bytes((i * 7 + 1) & 0xFF for i in range(n))


@pytest.fixture(scope="module")
def disk(tmp_path_factory):
    path = tmp_path_factory.mktemp("virtio") / "disk.img"
    path.write_bytes(bytes(range(256)) * (DISK_SECTORS * SECTOR_SIZE // 256))
    return path


class Scenario:
    """One device, initialised by the mock driver, in the memory layout above."""

    def __init__(self, kind, disk, features=None, start=0, max_chain_bytes=MAX_CHAIN_BYTES,
                 driver_ok=True):
        self.kind = kind
        if kind == "rng":
            backend = VirtioRng(source=counting_source, request_cap=RNG_CAP,
                                queue_max_size=SIZE)
        else:
            backend = VirtioBlk(disk, read_only=(kind == "blk-ro"), queue_max_size=SIZE)
        self.backend = backend
        self.dev = mock_device(backend, ram_size=RAM, max_chain_bytes=max_chain_bytes)
        self.memory = self.dev.memory
        self.transport = self.dev.transport
        self.driver = self.dev.driver
        wanted = None if features is None else features | bit(VIRTIO_F_VERSION_1)
        self.driver.init(features=wanted, driver_ok=driver_ok)
        self.queue = self.driver.queues[0]
        for addr, header in HEADERS.items():
            self.memory.write(addr, header)
        self._start_at(start)
        self.memory_errors = []
        self._watch_memory()

    def _start_at(self, index):
        """As if ``index`` requests had already been served."""
        device_queue = self.transport.queues[0]
        device_queue.last_avail_idx = device_queue.next_used_idx = index
        device_queue.signalled_used = index
        self.queue.avail_idx = self.queue.last_used_idx = index
        self.memory.write_u16(self.queue.avail_ring + 2, index)
        self.memory.write_u16(self.queue.used_ring + 2, index)
        self.start = index

    def _watch_memory(self):
        """Record every out-of-RAM access the device *attempts* (not the
        `contains` checks, which are how it asks)."""
        names = ("read", "write", "fill", "view", "read_u8", "read_u16", "read_u32",
                 "read_u64", "write_u8", "write_u16", "write_u32", "write_u64")
        for name in names:
            original = getattr(self.memory, name)

            def watched(*args, _original=original, _name=name):
                try:
                    return _original(*args)
                except GuestMemoryError as error:
                    self.memory_errors.append((_name, str(error)))
                    raise

            setattr(self.memory, name, watched)

    def close(self):
        if isinstance(self.backend, VirtioBlk):
            self.backend.close()

    # -- building requests ------------------------------------------------------

    def valid_request(self, data_len=None, request_type=VIRTIO_BLK_T_IN, sector=0):
        """Buffers of a request the device completes: (addr, len, writable)."""
        if data_len is None:
            data_len = 64 if self.kind == "rng" else 512
        if self.kind == "rng":
            return [(0x8000, data_len, True)]
        header = next(a for a, h in HEADERS.items() if h == blk_request_header(request_type,
                                                                               sector))
        if request_type == VIRTIO_BLK_T_OUT:
            return [(header, 16, False), (0x4800, data_len, False), (0xF000, 1, True)]
        buffers = [(header, 16, False)]
        if data_len:
            buffers.append((0x8000, data_len, True))
        return buffers + [(0xF000, 1, True)]

    def write_chain(self, descriptors, first=0):
        """Write raw descriptors to consecutive table slots from ``first``."""
        for i, d in enumerate(descriptors):
            self.queue.write_descriptor(first + i, d.addr, d.len, d.flags, d.next)

    @staticmethod
    def linked(buffers, first=0):
        """Descriptors for ``buffers`` linked first, first+1, ..."""
        out = []
        for i, (addr, length, writable) in enumerate(buffers):
            last = i + 1 == len(buffers)
            out.append(Descriptor(addr, length, (WRITE if writable else 0) | (0 if last else NEXT),
                                  0 if last else first + i + 1))
        return out

    # -- running and judging --------------------------------------------------------

    def snapshot(self):
        self.before = self.memory.read(0, RAM)
        self.used_before = self.queue.used_idx()

    def kick(self):
        self.snapshot()
        self.driver.kick(0)

    def outcome(self):
        status = self.driver.status
        if status & DeviceStatus.NEEDS_RESET:
            return Outcome.NEEDS_RESET
        if self.kind != "rng":
            used = self.queue.used_idx()
            if used != self.used_before and self.memory.read_u8(0xF000) == VIRTIO_BLK_S_IOERR:
                return Outcome.IOERR
        return Outcome.COMPLETED

    def check_safety(self, writable_ranges):
        """Only device-writable buffers and the used ring changed; no access
        outside RAM was attempted; the interrupt line tells the truth."""
        assert self.memory_errors == []
        allowed = bytearray(RAM)
        ring = self.queue.used_ring
        allowed[ring:ring + used_ring_size(SIZE)] = b"\1" * used_ring_size(SIZE)
        for addr, length in writable_ranges:
            lo, hi = max(addr, WRITABLE[0]), min(addr + length, RAM)
            if lo < hi:
                allowed[lo:hi] = b"\1" * (hi - lo)
        after = self.memory.read(0, RAM)
        changed = []
        for chunk in range(0, RAM, 256):
            if after[chunk:chunk + 256] != self.before[chunk:chunk + 256]:
                changed += [i for i in range(chunk, chunk + 256)
                            if after[i] != self.before[i] and not allowed[i]]
        assert changed == [], f"device wrote outside writable buffers at {changed[:8]}"
        assert self.dev.irq.level == (self.transport.interrupt_status != 0)

    def check_needs_reset_is_final(self):
        """NEEDS_RESET is announced and the device serves nothing more..."""
        assert self.transport.interrupt_status & VIRTIO_MMIO_INT_CONFIG and self.dev.irq.level
        used = self.queue.used_idx()
        before = self.memory.read(0, RAM)
        self.driver.kick(0)
        assert self.queue.used_idx() == used and self.memory.read(0, RAM) == before

    def check_recovers_after_reset(self):
        """... until the driver resets it: then it works again."""
        self.driver.write_reg(VIRTIO_MMIO_STATUS, 0)
        assert self.driver.status == 0 and not self.dev.irq.level
        self.driver.init()
        queue = self.driver.queues[0]
        if self.kind == "rng":
            queue.add_chain([(0x8000, 16, True)])
        else:
            queue.add_chain([(next(iter(HEADERS)), 16, False), (0xF000, 1, True)])
        self.driver.kick(0)
        assert len(queue.get_used()) == 1
        assert not self.driver.status & DeviceStatus.NEEDS_RESET

    def finish(self, expected, writable_ranges):
        """Judge the kick: the expected outcome, safety, and recovery."""
        outcome = self.outcome()
        event(f"{self.kind}: {outcome.value}")
        self.check_safety(writable_ranges)
        assert outcome in expected, f"{outcome} not in {expected}: {self.transport.last_error}"
        if outcome is Outcome.NEEDS_RESET:
            self.check_needs_reset_is_final()
        self.check_recovers_after_reset()
        return outcome


HOSTILE = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                         HealthCheck.function_scoped_fixture])


def hostile(examples):
    return settings(HOSTILE, max_examples=examples)

kinds = st.sampled_from(["rng", "blk", "blk-ro"])
ring_features = st.sampled_from([0, bit(VIRTIO_RING_F_INDIRECT_DESC), bit(VIRTIO_RING_F_EVENT_IDX),
                                 bit(VIRTIO_RING_F_INDIRECT_DESC) | bit(VIRTIO_RING_F_EVENT_IDX)])
starts = st.one_of(st.just(0), st.integers(0xFFF8, 0xFFFF), st.integers(0, 0xFFFF))
with_indirect = bit(VIRTIO_RING_F_INDIRECT_DESC)


def scenario(kind, disk, features, start, **kwargs):
    return Scenario(kind, disk, features, start, **kwargs)


def run_scenario(build, expected):
    """Build, kick, judge; always closes the device."""
    s, writable = build()
    try:
        s.kick()
        return s.finish(expected, writable)
    finally:
        s.close()


def writable_of(buffers):
    return [(a, n) for a, n, w in buffers if w]


# -- random queues -----------------------------------------------------------------

beyond_ram = st.one_of(st.integers(RAM, 2**64 - 1), st.integers(2**64 - 4096, 2**64 - 1),
                       st.integers(RAM, RAM + 64))
small_lengths = st.one_of(st.integers(0, 64), st.sampled_from([0, 1, 16, 511, 512, 1024]),
                          st.integers(0, 8192))
lengths = st.one_of(small_lengths, small_lengths, st.integers(0, 2**32 - 1),
                    st.integers(2**32 - 64, 2**32 - 1))
flag_values = st.one_of(st.sampled_from([0, NEXT, WRITE, NEXT | WRITE, INDIRECT]),
                        st.integers(0, 7), st.integers(0, 0xFFFF))
next_values = st.one_of(st.integers(0, SIZE - 1), st.integers(0, 0xFFFF))


def address_for(flags):
    """An address for a descriptor with these flags, keeping the layout rules:
    indirect tables only in the table area or the zeros, writable buffers
    only in the writable area (or outside RAM)."""
    if flags & INDIRECT:
        return st.one_of(st.sampled_from(TABLES), st.integers(ZEROS[0], ZEROS[1] - 16 * SIZE),
                         beyond_ram)
    if flags & WRITE:
        return st.one_of(st.integers(*WRITABLE), beyond_ram)
    return st.one_of(st.sampled_from(sorted(HEADERS)), st.integers(0, RAM - 1), beyond_ram)


def length_for(flags):
    if flags & INDIRECT:
        return st.one_of(st.sampled_from([16, 32, 48, 128, 144]), st.integers(0, 16 * SIZE + 32),
                         lengths)
    return st.one_of(st.just(16), lengths)


@st.composite
def random_descriptors(draw):
    """Any descriptor at all (its address chosen by role)."""
    flags = draw(flag_values)
    return Descriptor(draw(address_for(flags)), draw(length_for(flags)), flags,
                      draw(next_values))


@st.composite
def plausible_chain(draw, slots):
    """Descriptors for the table ``slots`` (in chain order) that form one
    well-formed request: readable buffers, then writable ones."""
    readable = draw(st.integers(0, len(slots)))
    out = {}
    for position, slot in enumerate(slots):
        last = position + 1 == len(slots)
        writable = position >= readable
        if writable:
            addr = draw(st.integers(WRITABLE[0], RAM - 1))
            length = draw(st.integers(0, min(2048, RAM - addr)))
        else:
            addr = draw(st.sampled_from(sorted(HEADERS)))
            length = draw(st.sampled_from([16, 16, 32, 512]))
        flags = (WRITE if writable else 0) | (0 if last else NEXT)
        out[slot] = Descriptor(addr, length, flags, 0 if last else slots[position + 1])
    return out


@st.composite
def hostile_queues(draw):
    """Well-formed requests (direct and indirect), then up to four hostile
    mutations: a field changed to a hostile value, or a descriptor replaced
    by a random one. Returns (table, indirect tables, heads)."""
    order = draw(st.permutations(range(SIZE)))
    cuts = sorted(draw(st.sets(st.integers(1, SIZE - 1), max_size=SIZE - 1)))
    chains = [order[a:b] for a, b in zip([0] + cuts, cuts + [SIZE])]
    table = [None] * SIZE
    for chain in chains:
        for slot, d in draw(plausible_chain(chain)).items():
            table[slot] = d
    indirect_tables = []
    for addr in TABLES:
        entries = draw(st.integers(1, SIZE))
        chain = draw(plausible_chain(list(range(entries))))
        indirect_tables.append([chain[i] for i in range(entries)]
                               + [Descriptor(0, 0, 0, 0)] * (SIZE - entries))
        if draw(st.booleans()):  # one of the chains goes through this table
            head = draw(st.sampled_from(chains))[0]
            table[head] = Descriptor(addr, 16 * entries, INDIRECT, 0)
    every = [table] + indirect_tables
    for _ in range(draw(st.integers(0, 4))):
        where = draw(st.sampled_from(every))
        index = draw(st.integers(0, SIZE - 1))
        d = where[index]
        field = draw(st.sampled_from(["addr", "len", "flags", "next", "replace"]))
        if field == "replace":
            where[index] = draw(random_descriptors())
        elif field == "flags":
            flags = draw(flag_values)
            where[index] = Descriptor(draw(address_for(flags)), d.len, flags, d.next)
        elif field == "addr":
            where[index] = Descriptor(draw(address_for(d.flags)), d.len, d.flags, d.next)
        elif field == "len":
            where[index] = Descriptor(d.addr, draw(length_for(d.flags)), d.flags, d.next)
        else:
            where[index] = Descriptor(d.addr, d.len, d.flags, draw(next_values))
    heads = draw(st.lists(st.one_of(st.sampled_from([c[0] for c in chains]),
                                    st.sampled_from([c[0] for c in chains]),
                                    st.integers(0, SIZE - 1), st.integers(0, 0xFFFF)),
                          min_size=1, max_size=SIZE))
    return table, indirect_tables, heads


avail_jumps = st.one_of(st.none(), st.none(), st.none(), st.integers(0, 0xFFFF))


@hostile(200)
@given(kind=kinds, features=ring_features, start=starts, queue=hostile_queues(),
       jump=avail_jumps)
def test_random_queues_end_in_a_defined_outcome(disk, kind, features, start, queue, jump):
    """Random descriptor tables, indirect tables and available rings."""
    check_random_queue(disk, kind, features, start, queue, jump)


def check_random_queue(disk, kind, features, start, queue, jump):
    """Kick one random queue and judge it (also run by tests/test_hostile_long.py)."""
    table, indirect_tables, heads = queue
    s = scenario(kind, disk, features, start)
    try:
        s.write_chain(table)
        for addr, entries in zip(TABLES, indirect_tables):
            s.queue.write_indirect_table(addr, entries)
        for head in heads:
            s.queue.publish(head)
        if jump is not None:
            s.queue.set_avail_idx(jump)
        everything = table + [d for t in indirect_tables for d in t]
        writable = [(d.addr, d.len) for d in everything
                    if d.flags & WRITE and not d.flags & INDIRECT]
        s.kick()
        outcome = s.outcome()
        pending = (s.queue.avail_idx - start) & 0xFFFF
        if pending > SIZE:
            assert outcome is Outcome.NEEDS_RESET
        if outcome is not Outcome.NEEDS_RESET:
            # every chain made available was returned, in order, nothing else
            used = [s.queue.used_element(start + i)
                    for i in range((s.queue.used_idx() - start) & 0xFFFF)]
            published = [s.memory.read_u16(s.queue.avail_ring + 4 + 2 * ((start + i) % SIZE))
                         for i in range(pending)]
            assert [e.id for e in used] == published
            event(f"{kind}: {len(used)} request(s) completed")
        s.finish(set(Outcome), writable)
    finally:
        s.close()


# -- one hostile class at a time ------------------------------------------------------

CLASS_EXAMPLES = 28


@hostile(CLASS_EXAMPLES)
@given(kind=kinds, start=starts, length=st.integers(1, SIZE), back_to=st.data(),
       in_indirect=st.booleans())
def test_a_loop_in_a_chain_needs_reset(disk, kind, start, length, back_to, in_indirect):
    target = back_to.draw(st.integers(0, length - 1))

    def build():
        s = scenario(kind, disk, with_indirect, start)
        loop = [Descriptor(0x8000 + 64 * i, 8, WRITE | NEXT, i + 1) for i in range(length)]
        loop[-1] = Descriptor(loop[-1].addr, 8, WRITE | NEXT, target)
        if in_indirect:
            s.queue.write_indirect_table(TABLES[0], loop)
            s.queue.write_descriptor(0, TABLES[0], 16 * length, INDIRECT)
        else:
            s.write_chain(loop)
        s.queue.publish(0)
        return s, [(d.addr, d.len) for d in loop]

    run_scenario(build, {Outcome.NEEDS_RESET})


@hostile(CLASS_EXAMPLES)
@given(kind=kinds, start=starts, position=st.integers(0, 2), bad_next=st.integers(SIZE, 0xFFFF),
       in_indirect=st.booleans())
def test_next_out_of_range_needs_reset(disk, kind, start, position, bad_next, in_indirect):
    def build():
        s = scenario(kind, disk, with_indirect, start)
        buffers = s.valid_request()
        chain = s.linked(buffers)
        position_ = min(position, len(chain) - 1)
        d = chain[position_]
        chain[position_] = Descriptor(d.addr, d.len, d.flags | NEXT, bad_next)
        if in_indirect:
            # inside a table of len(chain) entries, anything >= len(chain) is out
            s.queue.write_indirect_table(TABLES[0], chain)
            s.queue.write_descriptor(0, TABLES[0], 16 * len(chain), INDIRECT)
        else:
            s.write_chain(chain)
        s.queue.publish(0)
        return s, writable_of(buffers)

    run_scenario(build, {Outcome.NEEDS_RESET})


@hostile(CLASS_EXAMPLES)
@given(kind=kinds, start=starts, head=st.integers(SIZE, 0xFFFF), valid_before=st.integers(0, 3))
def test_a_head_out_of_range_needs_reset(disk, kind, start, head, valid_before):
    def build():
        s = scenario(kind, disk, 0, start)
        buffers = s.valid_request()
        s.write_chain(s.linked(buffers))
        for _ in range(valid_before):
            s.queue.publish(0)  # the same valid chain, several times
        s.queue.publish(head)
        return s, writable_of(buffers)

    outcome = run_scenario(build, {Outcome.NEEDS_RESET})
    assert outcome is Outcome.NEEDS_RESET


@hostile(CLASS_EXAMPLES)
@given(kind=kinds, start=starts, jump=st.integers(SIZE + 1, 0xFFFF))
def test_avail_index_jumping_more_than_the_queue_size_needs_reset(disk, kind, start, jump):
    def build():
        s = scenario(kind, disk, 0, start)
        buffers = s.valid_request()
        s.write_chain(s.linked(buffers))
        s.queue.set_avail_idx(start + jump)
        return s, writable_of(buffers)

    run_scenario(build, {Outcome.NEEDS_RESET})


@hostile(CLASS_EXAMPLES)
@given(kind=kinds, start=starts, which=st.integers(0, 2), addr=beyond_ram,
       length=st.integers(1, 2**32 - 1), crossing=st.booleans(), indirect=st.booleans())
def test_addresses_past_ram_or_wrapping_2_to_the_64_need_reset(disk, kind, start, which, addr,
                                                                length, crossing, indirect):
    def build():
        s = scenario(kind, disk, with_indirect, start)
        buffers = s.valid_request()
        i = min(which, len(buffers) - 1)
        a, n, w = buffers[i]
        if crossing:  # starts inside RAM, ends past it
            n = max(n, 8)
            buffers[i] = (RAM - n // 2, n, w)
        else:
            buffers[i] = (addr, max(length, 2**64 - addr + 1 if addr > 2**64 - 4096 else 1), w)
        s.queue.add_chain(buffers, indirect_table=TABLES[0] if indirect else None)
        return s, writable_of(buffers)

    run_scenario(build, {Outcome.NEEDS_RESET})


@hostile(CLASS_EXAMPLES)
@given(kind=kinds, start=starts, lengths_=st.lists(st.integers(0x2000, 0x8000), min_size=2,
                                                   max_size=SIZE),
       huge=st.booleans())
def test_lengths_summing_past_the_chain_cap_need_reset(disk, kind, start, lengths_, huge):
    """With a 16 KiB cap, overlapping readable buffers inside RAM; or lengths
    near 2**32 that sum past 2**32 (the spec's own limit)."""
    cap = 16 * 1024
    if huge:
        lengths_ = [2**32 - 1] * len(lengths_)
    if sum(lengths_) <= cap:
        lengths_.append(cap)

    def build():
        s = scenario(kind, disk, 0, start, max_chain_bytes=cap)
        buffers = [(0, n, False) for n in lengths_]
        s.queue.add_chain(buffers)
        return s, []

    run_scenario(build, {Outcome.NEEDS_RESET})


@hostile(CLASS_EXAMPLES)
@given(kind=kinds, start=starts, defect=st.sampled_from(
    ["nested", "len not a multiple of 16", "len 0", "table past RAM", "INDIRECT|NEXT",
     "not negotiated", "longer than the queue", "readable after writable inside"]))
def test_malformed_indirect_tables_need_reset(disk, kind, start, defect):
    def build():
        features = 0 if defect == "not negotiated" else with_indirect
        s = scenario(kind, disk, features, start)
        buffers = s.valid_request()
        table = s.linked(buffers)
        length = 16 * len(table)
        addr, flags = TABLES[0], INDIRECT
        if defect == "nested":
            s.queue.write_indirect_table(TABLES[1], table)
            table = [Descriptor(TABLES[1], length, INDIRECT, 0)]
            length = 16
        elif defect == "len not a multiple of 16":
            length += 8
        elif defect == "len 0":
            length = 0
        elif defect == "table past RAM":
            addr = RAM - length + 8
        elif defect == "INDIRECT|NEXT":
            flags |= NEXT
        elif defect == "longer than the queue":
            length = 16 * (SIZE + 1)
        elif defect == "readable after writable inside":
            table = s.linked(buffers + [(0x4000, 4, False)])
            length = 16 * len(table)
        s.queue.write_indirect_table(TABLES[0], table)
        s.queue.write_descriptor(0, addr, length, flags, 1)
        s.queue.publish(0)
        return s, writable_of(buffers)

    run_scenario(build, {Outcome.NEEDS_RESET})


@hostile(CLASS_EXAMPLES)
@given(kind=kinds, start=starts, position=st.integers(0, 3), indirect=st.booleans())
def test_writable_before_readable_needs_reset(disk, kind, start, position, indirect):
    def build():
        s = scenario(kind, disk, with_indirect, start)
        buffers = s.valid_request()
        first_writable = next(i for i, b in enumerate(buffers) if b[2])
        at = min(first_writable + 1 + position, len(buffers))
        buffers.insert(at, (0x4000, 4, False))
        s.queue.add_chain(buffers, indirect_table=TABLES[0] if indirect else None)
        return s, writable_of(buffers)

    run_scenario(build, {Outcome.NEEDS_RESET})


@hostile(CLASS_EXAMPLES)
@given(kind=kinds, start=starts, zeros=st.lists(st.tuples(st.integers(0, 4), st.booleans(),
                                                          st.integers(0, 2**64 - 1)),
                                                min_size=1, max_size=4),
       indirect=st.booleans())
def test_zero_length_buffers_change_nothing(disk, kind, start, zeros, indirect):
    """Zero-length descriptors anywhere (even at wild addresses) are
    skipped; the request completes as it would without them."""
    def serve(with_zeros):
        """Run the request; returns (used len, the writable area afterwards)."""
        s = scenario(kind, disk, with_indirect, start)
        try:
            buffers = s.valid_request()
            plain = writable_of(buffers)
            for position, writable, addr in zeros if with_zeros else ():
                at = min(position, len(buffers))
                # keep readable-before-writable: a zero buffer takes its neighbours' side
                side = buffers[at - 1][2] if at and at == len(buffers) else (
                    buffers[at][2] if at < len(buffers) else writable)
                buffers.insert(at, (addr, 0, side))
            s.queue.add_chain(buffers, indirect_table=TABLES[0] if indirect else None)
            s.kick()
            used = s.queue.used_element(start)
            area = s.memory.read(WRITABLE[0], RAM - WRITABLE[0])
            assert s.finish({Outcome.COMPLETED}, plain) is Outcome.COMPLETED
            return used.len, area
        finally:
            s.close()

    assert serve(with_zeros=True) == serve(with_zeros=False)


@hostile(CLASS_EXAMPLES)
@given(start=starts, sector=st.integers(0, 2**64 - 1), sectors=st.integers(1, 60),
       request_type=st.sampled_from([VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT]),
       read_only=st.booleans())
def test_huge_or_out_of_range_blk_requests_get_ioerr(disk, start, sector, sectors, request_type,
                                                     read_only):
    """Requests reaching past the disk's capacity: IOERR, nothing transferred."""
    if sector + sectors <= DISK_SECTORS:
        sector = DISK_SECTORS - sectors + 1 + sector % 8

    def build():
        s = scenario("blk-ro" if read_only else "blk", disk, 0, start)
        s.memory.write(0x7000, blk_request_header(request_type, sector))
        data = (0x8000, sectors * SECTOR_SIZE, request_type == VIRTIO_BLK_T_IN)
        s.queue.add_chain([(0x7000, 16, False), data, (0xF000, 1, True)])
        return s, [(0xF000, 1)]  # not even the data buffer may change

    assert run_scenario(build, {Outcome.IOERR}) is Outcome.IOERR


@hostile(CLASS_EXAMPLES)
@given(start=starts, length=st.integers(RNG_CAP + 1, 0x7000), pieces=st.integers(1, 4))
def test_huge_rng_requests_are_capped(disk, start, length, pieces):
    def build():
        s = scenario("rng", disk, 0, start)
        step = length // pieces
        buffers = [(0x8000 + i * step, step if i + 1 < pieces else length - i * step, True)
                   for i in range(pieces)]
        s.queue.add_chain(buffers)
        return s, [(0x8000, RNG_CAP)]  # only the first RNG_CAP bytes may change

    s, writable = build()
    try:
        s.kick()
        assert s.finish({Outcome.COMPLETED}, writable) is Outcome.COMPLETED
    finally:
        s.close()


@hostile(CLASS_EXAMPLES)
@given(kind=kinds, start=starts, kicks=st.integers(1, 3), failed=st.booleans())
def test_kicks_before_driver_ok_are_ignored(disk, kind, start, kicks, failed):
    """Before DRIVER_OK (§2.1.2) nothing is consumed and nothing changes;
    after it the same request completes."""
    s = Scenario(kind, disk, 0, start, driver_ok=False)
    try:
        if failed:
            s.driver.write_reg(VIRTIO_MMIO_STATUS, DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER
                               | DeviceStatus.FEATURES_OK | DeviceStatus.FAILED)
        buffers = s.valid_request()
        s.queue.add_chain(buffers)
        s.snapshot()
        for _ in range(kicks):
            s.driver.kick(0)
        assert s.memory.read(0, RAM) == s.before
        assert s.queue.used_idx() == s.used_before and not s.dev.irq.level
        if failed:  # FAILED: only a reset brings it back
            s.check_recovers_after_reset()
            return
        s.driver.add_status(DeviceStatus.DRIVER_OK)
        s.kick()
        assert s.finish({Outcome.COMPLETED, Outcome.IOERR}, writable_of(buffers)) in (
            Outcome.COMPLETED, Outcome.IOERR)
        assert len(s.queue.get_used()) == 1
    finally:
        s.close()


@hostile(CLASS_EXAMPLES)
@given(kind=kinds, features=ring_features, start=starts, count=st.integers(1, SIZE),
       request_type=st.sampled_from([VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_FLUSH,
                                     VIRTIO_BLK_T_GET_ID, 3]))
def test_valid_requests_across_the_index_wrap_all_complete(disk, kind, features, start, count,
                                                           request_type):
    """The control group: well-formed requests, any start index (so the
    16-bit indices wrap), any ring features -- all complete, in order."""
    s = scenario(kind, disk, features, start)
    try:
        data_len = {VIRTIO_BLK_T_GET_ID: 20, VIRTIO_BLK_T_FLUSH: 0}.get(request_type, 512)
        buffers = s.valid_request(data_len=data_len, request_type=request_type)
        use_indirect = bool(features & with_indirect)
        if not use_indirect:
            count = max(1, min(count, SIZE // len(buffers)))
        for i in range(count):
            s.queue.add_chain(buffers, indirect_table=TABLES[i % 3] if use_indirect else None)
        s.kick()
        assert (s.queue.used_idx() - start) & 0xFFFF == count
        status = s.memory.read_u8(0xF000)
        outcome = s.finish({Outcome.COMPLETED, Outcome.IOERR}, writable_of(buffers))
        if kind == "rng":
            assert outcome is Outcome.COMPLETED
        elif request_type == 3:
            assert status == VIRTIO_BLK_S_UNSUPP
        elif request_type == VIRTIO_BLK_T_OUT and kind == "blk-ro":
            assert status == VIRTIO_BLK_S_IOERR
        else:
            assert status == VIRTIO_BLK_S_OK
    finally:
        s.close()
