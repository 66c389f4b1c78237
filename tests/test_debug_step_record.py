"""A StepRecord made from register values says what one made from kvm_regs says.

The stepper's fast path hands a record the 18 registers as tuples read from
the run page; the recorder and the slow path hand it ``kvm_regs``. Whoever
reads the record (the TUI, the trace, the recorder, the gdb stub) must not
be able to tell the difference. No KVM needed.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from minikvm.debug.events import StepRecord, stepped_record
from minikvm.debug.inspect import (
    GPR_NAMES,
    RegisterSnapshot,
    changed_registers,
    regs_from_values,
    values_of,
)

u64 = st.integers(min_value=0, max_value=(1 << 64) - 1)
registers = st.lists(u64, min_size=18, max_size=18).map(tuple)
NAMES = GPR_NAMES + ("rip", "rflags")


def as_seen(record: StepRecord) -> tuple:
    """Everything a reader of a plain step record can look at."""
    return (bytes(record.before), bytes(record.after), record.old_rip, record.new_rip,
            record.changed, record.registers, record.values_before, record.values_after,
            record.pc, record.new_pc, record.exits, record.stop, record.hit)


@settings(max_examples=40, deadline=None)
@given(before=registers, after=registers, same=st.sets(st.sampled_from(range(18))))
def test_a_record_of_values_reads_as_the_record_of_kvm_regs(before, after, same):
    after = tuple(before[i] if i in same else value for i, value in enumerate(after))
    of_regs = StepRecord(regs_from_values(before), regs_from_values(after), 0x1000, 0x1001)
    of_values = StepRecord(before, after, 0x1000, 0x1001)
    fast = stepped_record(before, after, 0x1000, 0x1001, None)  # type: ignore[arg-type]
    assert as_seen(of_values) == as_seen(of_regs) == as_seen(fast)
    assert of_values.changed == changed_registers(regs_from_values(before),
                                                  regs_from_values(after))
    assert set(of_values.changed) == {NAMES[i] for i in range(18) if before[i] != after[i]}


@settings(max_examples=20, deadline=None)
@given(values=registers)
def test_values_and_kvm_regs_convert_both_ways(values):
    regs = regs_from_values(values)
    assert values_of(regs) == values
    assert RegisterSnapshot.capture(regs) == RegisterSnapshot(*values)


@settings(max_examples=25, deadline=None)
@given(before=registers, after=registers, same=st.sets(st.sampled_from(range(18))))
def test_changed_is_every_register_that_differs_in_register_order(before, after, same):
    after = tuple(before[i] if i in same else value for i, value in enumerate(after))
    expected = tuple(name for name, old, new in zip(NAMES, before, after) if old != new)
    for record in (stepped_record(before, after, 0x1000, 0x1001, None),  # type: ignore[arg-type]
                   StepRecord(regs_from_values(before), after, 0x1000, 0x1001),
                   StepRecord(before, regs_from_values(after), 0x1000, 0x1001)):
        assert type(record.changed) is tuple
        assert record.changed == expected
