"""The virtio device status machine and feature negotiation (virtio 1.2 §2.1, §2.2, §3.1).

The stateful test keeps its own model of the spec's rules -- bits are set
one at a time in the order ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK;
FAILED may be set at any time and sticks; 0 resets; FEATURES_OK stays only
when the accepted features include VERSION_1; DriverFeatures is written only
between DRIVER and FEATURES_OK and keeps only offered bits -- and checks the
transport against it after every step.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from minikvm.devices.virtio.features import (
    VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC,
    bit,
)
from minikvm.devices.virtio.mmio import (
    VIRTIO_MMIO_DEVICE_FEATURES,
    VIRTIO_MMIO_DEVICE_FEATURES_SEL,
    VIRTIO_MMIO_DRIVER_FEATURES,
    VIRTIO_MMIO_DRIVER_FEATURES_SEL,
    VIRTIO_MMIO_INT_CONFIG,
    VIRTIO_MMIO_INTERRUPT_ACK,
    VIRTIO_MMIO_INTERRUPT_STATUS,
    VIRTIO_MMIO_STATUS,
)
from minikvm.devices.virtio.mock import mock_device
from minikvm.devices.virtio.rng import VirtioRng
from minikvm.devices.virtio.status import (
    STATUS_TRANSITIONS,
    VIRTIO_CONFIG_S_ACKNOWLEDGE,
    VIRTIO_CONFIG_S_DRIVER,
    VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED,
    VIRTIO_CONFIG_S_FEATURES_OK,
    VIRTIO_CONFIG_S_NEEDS_RESET,
    DeviceStatus,
    describe_status,
    status_after_write,
)

A = VIRTIO_CONFIG_S_ACKNOWLEDGE
D = VIRTIO_CONFIG_S_DRIVER
F = VIRTIO_CONFIG_S_FEATURES_OK
O = VIRTIO_CONFIG_S_DRIVER_OK
ORDER = [A, D, F, O]  # §3.1.1 steps 2, 3, 5, 8


def test_status_bits_have_the_kernel_values():
    assert (A, D, O, F) == (1, 2, 4, 8)
    assert VIRTIO_CONFIG_S_NEEDS_RESET == 0x40
    assert VIRTIO_CONFIG_S_FAILED == 0x80


def test_transition_table_is_the_initialisation_order():
    state = DeviceStatus(0)
    for step in ORDER:
        assert STATUS_TRANSITIONS[state] == state | step
        state |= step
    assert STATUS_TRANSITIONS[state] is None


def test_status_write_zero_is_a_reset_from_any_state():
    for current in (0, A, A | D | F | O, A | D | VIRTIO_CONFIG_S_FAILED):
        change = status_after_write(DeviceStatus(current), 0)
        assert change.reset and change.status == 0


def test_skipping_a_step_is_refused():
    change = status_after_write(DeviceStatus(0), A | D)
    assert not change.allowed and change.status == 0


def test_clearing_a_bit_is_refused():
    change = status_after_write(DeviceStatus(A | D), A)
    assert not change.allowed and change.status == A | D


def test_failed_can_be_set_from_any_state_and_sticks():
    change = status_after_write(DeviceStatus(A), A | VIRTIO_CONFIG_S_FAILED)
    assert change.status == A | VIRTIO_CONFIG_S_FAILED
    again = status_after_write(change.status, A | D)
    assert not again.allowed and again.status == A | VIRTIO_CONFIG_S_FAILED


def test_needs_reset_in_a_written_value_is_neither_set_nor_cleared_by_the_driver():
    assert status_after_write(DeviceStatus(A), A | D | VIRTIO_CONFIG_S_NEEDS_RESET).status == A | D
    sticky = DeviceStatus(A | D | VIRTIO_CONFIG_S_NEEDS_RESET)
    assert status_after_write(sticky, A | D | F).status == A | D | F | VIRTIO_CONFIG_S_NEEDS_RESET


def test_describe_status_lists_bits_in_the_order_drivers_set_them():
    assert describe_status(0x0F) == "ACKNOWLEDGE|DRIVER|FEATURES_OK|DRIVER_OK"
    assert describe_status(0) == "reset"


def _rng():
    return mock_device(VirtioRng(source=bytes), ram_size=64 * 1024)


def test_features_ok_is_refused_without_version_1():
    dev = _rng()
    driver = dev.driver
    for step in (A, D):
        driver.add_status(step)
    driver.write_driver_features(bit(VIRTIO_RING_F_EVENT_IDX))
    driver.write_reg(VIRTIO_MMIO_STATUS, A | D | F)
    words = dev.transport.describe(VIRTIO_MMIO_STATUS, 4, True, A | D | F)
    assert words.startswith("Status write 0xb: FEATURES_OK refused") and "VERSION_1" in words
    assert driver.status == A | D


def test_unoffered_feature_bits_are_masked():
    dev = _rng()
    dev.driver.add_status(A)
    dev.driver.add_status(D)
    dev.driver.write_driver_features((1 << 64) - 1)
    assert dev.transport.driver_features == dev.transport.device_features


def test_every_device_offers_version_1_indirect_and_event_idx():
    dev = _rng()
    offered = dev.driver.read_device_features()
    for feature in (VIRTIO_F_VERSION_1, VIRTIO_RING_F_INDIRECT_DESC, VIRTIO_RING_F_EVENT_IDX):
        assert offered & bit(feature)


class StatusMachine(RuleBasedStateMachine):
    """Random register traffic against a model of §2.1/§2.2/§3.1."""

    def __init__(self) -> None:
        super().__init__()
        self.dev = _rng()
        self.offered = self.dev.transport.device_features
        self.status = 0
        self.features = 0
        self.features_sel = 0
        self.interrupts = 0

    # -- the model -------------------------------------------------------------

    def _model_status_write(self, value: int) -> None:
        value &= 0xFF
        if value == 0:
            self.status, self.features, self.interrupts = 0, 0, 0
            return
        if value & VIRTIO_CONFIG_S_FAILED:
            self.status |= VIRTIO_CONFIG_S_FAILED
            return
        if self.status & VIRTIO_CONFIG_S_FAILED or value & 0x30:
            return
        steps = self.status & 0x0F
        wanted = value & 0x0F
        prefixes = [sum(ORDER[:k]) for k in range(5)]
        if steps in prefixes[:4] and wanted == prefixes[prefixes.index(steps) + 1]:
            added = wanted & ~steps
            if added == F and not self.features & bit(VIRTIO_F_VERSION_1):
                return  # refused: FEATURES_OK does not stick
            self.status = (self.status & ~0x0F) | wanted

    # -- rules -----------------------------------------------------------------

    @rule(step=st.sampled_from(ORDER))
    def add_next_status_bit(self, step):
        value = self.dev.driver.status | step
        self.dev.driver.write_reg(VIRTIO_MMIO_STATUS, value)
        self._model_status_write(value)

    @rule()
    def driver_takes_the_next_step(self):
        missing = [step for step in ORDER if not self.status & step]
        if missing:
            self.add_next_status_bit(missing[0])

    @rule(low=st.integers(0, 0xFFFF_FFFF))
    def driver_accepts_version_1(self, low):
        self.write_driver_features(0, low)
        self.write_driver_features(1, 1)

    @rule(value=st.integers(0, 0xFF) | st.integers(0, 0xFFFF_FFFF))
    def write_any_status(self, value):
        self.dev.driver.write_reg(VIRTIO_MMIO_STATUS, value)
        self._model_status_write(value)

    @rule()
    def reset(self):
        self.dev.driver.write_reg(VIRTIO_MMIO_STATUS, 0)
        self._model_status_write(0)

    @rule(sel=st.integers(0, 3))
    def read_device_features(self, sel):
        self.dev.driver.write_reg(VIRTIO_MMIO_DEVICE_FEATURES_SEL, sel)
        word = self.dev.driver.read_reg(VIRTIO_MMIO_DEVICE_FEATURES)
        assert word == ((self.offered >> (32 * sel)) & 0xFFFF_FFFF if sel < 2 else 0)

    @rule(sel=st.integers(0, 3), value=st.integers(0, 0xFFFF_FFFF) | st.just(1))
    def write_driver_features(self, sel, value):
        self.dev.driver.write_reg(VIRTIO_MMIO_DRIVER_FEATURES_SEL, sel)
        self.dev.driver.write_reg(VIRTIO_MMIO_DRIVER_FEATURES, value)
        writable = (self.status & 0x0F) == A | D and not self.status & VIRTIO_CONFIG_S_FAILED
        if writable and sel < 2:
            shift = 32 * sel
            kept = value & (self.offered >> shift) & 0xFFFF_FFFF
            self.features = (self.features & ~(0xFFFF_FFFF << shift)) | (kept << shift)

    @precondition(lambda self: self.status != 0)
    @rule(chance=st.integers(0, 3))
    def device_hits_an_error(self, chance):
        if chance:
            return  # errors are rarer than driver steps, so live states get explored
        self.dev.transport.needs_reset("test: the device broke")
        if self.status & O:
            self.interrupts |= VIRTIO_MMIO_INT_CONFIG
        self.status |= VIRTIO_CONFIG_S_NEEDS_RESET

    @rule(bits=st.integers(0, 3))
    def acknowledge_interrupts(self, bits):
        self.dev.driver.write_reg(VIRTIO_MMIO_INTERRUPT_ACK, bits)
        self.interrupts &= ~bits

    # -- invariants -------------------------------------------------------------

    @invariant()
    def status_matches_the_model(self):
        assert self.dev.driver.status == self.status

    @invariant()
    def accepted_features_match_the_model_and_were_offered(self):
        assert self.dev.transport.driver_features == self.features
        assert self.features & ~self.offered == 0

    @invariant()
    def features_ok_implies_version_1(self):
        if self.status & F:
            assert self.dev.transport.driver_features & bit(VIRTIO_F_VERSION_1)

    @invariant()
    def interrupt_line_follows_interrupt_status(self):
        pending = self.dev.driver.read_reg(VIRTIO_MMIO_INTERRUPT_STATUS)
        assert pending == self.interrupts
        assert self.dev.irq.level == (pending != 0)


TestStatusMachine = StatusMachine.TestCase
TestStatusMachine.settings = settings(max_examples=40, stateful_step_count=30, deadline=None,
                                      suppress_health_check=[HealthCheck.too_slow])
