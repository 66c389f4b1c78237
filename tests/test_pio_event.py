"""A listener that reads no words gets lazy events (core.events.PioEvent):
the exit and the access of a single in/out are made when first read. Nothing
may tell them from the events Machine.handle_exit makes eagerly."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minikvm.bus import Bus
from minikvm.core.events import ExitEvent, PioEvent
from minikvm.devices.base import Device
from minikvm.kvm.exits import IoIn, IoOut
from minikvm.kvm.uapi import KVM_EXIT_IO_IN, KVM_EXIT_IO_OUT
from minikvm.machine import Machine
from minikvm.runloop import pio_event

pytestmark = pytest.mark.kvm

#: Where the registers device decodes; the ports drawn lie around it too.
BASE, SPAN = 0x3F8, 8
#: Where the fake run page keeps an access's bytes (as KVM's data_offset).
DATA_OFFSET = 16


class Registers(Device):
    """Eight registers: a read gives a value made of its offset, a write is
    logged. Equal to (and shown as) another with the same log, so that the
    accesses of two machines given the same guest accesses compare equal."""

    name = "registers"

    def __init__(self) -> None:
        self.log: list[tuple[int, int, int]] = []

    def read(self, offset: int, size: int) -> int:
        return 0x1122_3344_5566_7788 * (offset + 1)

    def write(self, offset: int, size: int, value: int) -> None:
        self.log.append((offset, size, value))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Registers) and self.log == other.log

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Registers(log={self.log!r})"


def _machine() -> Machine:
    """A machine whose port bus holds only the registers (a stop-free device)."""
    machine = Machine(irqchip=False)
    machine.pio = Bus("pio", unclaimed_history=4)
    machine.pio.register(BASE, SPAN, Registers())
    runner = machine.runners[0]
    runner.started, runner.returned = 1.0, 1.5
    return machine


_ACCESSES = st.lists(
    st.tuples(st.booleans(),                                             # an out?
              st.one_of(st.integers(BASE - 3, BASE + SPAN + 2), st.integers(0, 0xFFFF)),
              st.sampled_from([1, 2, 4]),
              st.binary(min_size=4, max_size=4)),                       # the bytes of an out
    min_size=1, max_size=8)


@settings(max_examples=200, deadline=None)
@given(_ACCESSES, st.data())
def test_a_lazy_event_equals_the_event_handle_exit_makes(accesses, data):
    """The same guest accesses, claimed and unclaimed, in and out, handed to
    two machines: one through Machine.handle_exit (eager, no words), one
    through the run loop's pio_event for a listener without words. Each
    event equals its twin -- whether its exit and access are read at once,
    after later exits, or never before the comparison -- shows the same,
    and keeps what it made; the buses keep the same books."""
    eager_machine, lazy_machine = _machine(), _machine()
    with eager_machine, lazy_machine:
        pairs = []
        for is_write, port, size, raw in accesses:
            page = memoryview(bytearray(64))
            page[DATA_OFFSET:DATA_OFFSET + size] = raw[:size]
            eager_page = memoryview(bytearray(page))
            exit = (IoOut(port, size, 1, bytes(raw[:size])) if is_write
                    else IoIn(port, size, 1, eager_page[DATA_OFFSET:DATA_OFFSET + size]))
            eager = eager_machine.handle_exit(exit, explain=False)
            direction = KVM_EXIT_IO_OUT if is_write else KVM_EXIT_IO_IN
            lazy = pio_event(lazy_machine, lazy_machine.runners[0], page, direction, size,
                             port, DATA_OFFSET, False, False)
            assert type(lazy) is PioEvent and type(eager) is ExitEvent
            assert page == eager_page   # an in completed alike
            pairs.append((eager, lazy))
            if data.draw(st.booleans(), label="read now"):
                assert (lazy.exit, lazy.access) == (eager.exit, eager.access)
        assert eager_machine.pio.unclaimed == lazy_machine.pio.unclaimed
        assert eager_machine.pio.unclaimed_count == lazy_machine.pio.unclaimed_count
        for eager, lazy in pairs:
            assert lazy == eager and eager == lazy and not lazy != eager
            assert repr(lazy) == repr(eager)
            assert (lazy.reason, lazy.device, lazy.register, lazy.value) == \
                (eager.reason, eager.device, eager.register, eager.value)
            assert lazy.exit is lazy.exit and lazy.access is lazy.access
            assert lazy.replace(rip=7) == eager.replace(rip=7)
