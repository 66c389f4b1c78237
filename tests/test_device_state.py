"""Device save()/restore(): a restored copy is the same device from then on.

Each device is driven into a non-trivial state through its registers, as a
guest would; its state is saved, sent through JSON, restored into a *fresh*
device, and then both get the same accesses: every read, every interrupt
line level and every byte of output must match, and the copy must save the
same state. Hostile states (wrong types, out of range, oversized FIFOs,
unknown or missing fields) are refused with one DeviceStateError each and
leave the device as it was.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minikvm.bus import Bus
from minikvm.devices.acpi_pm import PM1_CNT, PM1_EN, PM1_STS, PM_TIMER_HZ, PM_TMR, RTC_EN, SCI_EN, AcpiPm
from minikvm.devices.base import Device, DeviceStateError, RecordingLine
from minikvm.devices.debug_exit import DebugExit
from minikvm.devices.debugcon import DebugCon
from minikvm.devices.fw_cfg import DATA, SELECTOR, FwCfg
from minikvm.devices.i8042 import I8042, I8042_COMMAND
from minikvm.devices.state import device_key, restore_devices, save_devices
from minikvm.devices.rtc import REG_B, REG_C, REG_MINUTES, REG_SECONDS_ALARM, Rtc
from minikvm.devices.testdev import IOMEM_SIZE, PcTestdevIomem, PcTestdevIrq, PcTestdevPorts
from minikvm.devices.uart import (
    UART_FCR,
    UART_IER,
    UART_LCR,
    UART_MCR,
    UART_RX,
    UART_SCR,
    Uart16550,
)
from minikvm.devices.virtio.blk import VIRTIO_BLK_T_IN, VirtioBlk
from minikvm.devices.virtio.console import VirtioConsole
from minikvm.devices.virtio.mmio import (
    VIRTIO_MMIO_INTERRUPT_ACK,
    VIRTIO_MMIO_INTERRUPT_STATUS,
    VIRTIO_MMIO_QUEUE_NOTIFY,
    VIRTIO_MMIO_QUEUE_READY,
    VIRTIO_MMIO_QUEUE_SEL,
    VIRTIO_MMIO_STATUS,
)
from minikvm.devices.virtio.mock import MockDevice, mock_device
from minikvm.devices.virtio.rng import VirtioRng
from minikvm.hostio import HostInput

# -- twins: an original and a copy restored from its saved state ----------------------------


def json_trip(state: dict[str, Any]) -> dict[str, Any]:
    """What a snapshot file gives back: the state through JSON."""
    return json.loads(json.dumps(state))


@dataclass
class Twin:
    """A device under test, with whatever it talks to on the host side."""

    device: Device
    line: RecordingLine = field(default_factory=RecordingLine)
    output: bytearray = field(default_factory=bytearray)

    def access(self, op: tuple) -> tuple:
        """One access as a guest (or the host side) makes it; what it gave,
        and the interrupt line's level after it."""
        kind, *args = op
        if kind == "read":
            result = self.device.read(*args)
        elif kind == "write":
            result = self.device.write(*args)
        else:  # "receive": bytes from the host on the serial input pin
            result = self.device.receive(*args)
        return result, self.line.level, bytes(self.output)


def uart(line: RecordingLine, output: bytearray) -> Uart16550:
    return Uart16550(line, output.extend, name="com1")


def busy_uart(twin: Twin) -> None:
    """8N1 at 115200, FIFOs on with a trigger of 4, interrupts on, bytes waiting."""
    for offset, value in ((UART_LCR, 0x80), (UART_RX, 1), (UART_IER, 0), (UART_LCR, 0x03),
                          (UART_FCR, 0x47), (UART_MCR, 0x0B), (UART_IER, 0x0F),
                          (UART_SCR, 0x5A), (UART_RX, ord("A"))):
        twin.device.write(offset, 1, value)
    twin.device.receive(b"xy")


def busy_fw_cfg(twin: Twin) -> None:
    twin.device.write(SELECTOR, 2, 0x15)
    for _ in range(5):
        twin.device.read(DATA, 1)


def fw_cfg(line: RecordingLine, output: bytearray) -> FwCfg:
    device = FwCfg()
    device.set_machine(64 << 20, 2)
    device.set_cmdline("console=ttyS0 quiet")
    device.add_file("opt/minikvm/answer", b"42")
    return device


def make_testdev_irq(line: RecordingLine, output: bytearray) -> PcTestdevIrq:
    return PcTestdevIrq([line, RecordingLine(), RecordingLine()])


#: name -> (make a fresh device, drive it into a state, accesses to compare after)
SIMPLE_DEVICES: dict[str, tuple[Callable, Callable, list[tuple]]] = {
    "debugcon": (lambda line, out: DebugCon(out.extend),
                 lambda t: [t.device.write(0, 1, b) for b in b"hi"],
                 [("write", 0, 1, 0x21), ("read", 0, 1)]),
    "debug-exit": (lambda line, out: DebugExit(),
                   lambda t: t.device.write(0, 4, 0x31),
                   [("read", 0, 4)]),
    "i8042": (lambda line, out: I8042(),
              lambda t: t.device.write(I8042_COMMAND, 1, 0xFE),
              [("read", I8042_COMMAND, 1), ("write", I8042_COMMAND, 1, 0xAA)]),
    "com1": (uart, busy_uart,
             [("read", 2, 1), ("read", 5, 1), ("read", 0, 1), ("read", 2, 1), ("read", 0, 1),
              ("read", 2, 1), ("receive", b"z" * 20), ("read", 5, 1), ("read", 6, 1),
              ("write", 4, 1, 0x1B), ("write", 0, 1, 0x42), ("read", 0, 1), ("read", 7, 1)]),
    "fw_cfg": (fw_cfg, busy_fw_cfg,
               [("read", DATA, 1)] * 16 + [("write", SELECTOR, 2, 0x19)]
               + [("read", DATA, 1)] * 8),
    "testdev": (lambda line, out: PcTestdevPorts(),
                lambda t: (t.device.write(0, 4, 0xCAFEF00D), t.device.write(4, 4, 0x1000)),
                [("read", 0, 4), ("read", 2, 2), ("write", 1, 1, 0x77), ("read", 0, 4)]),
    "testdev-irq": (make_testdev_irq, lambda t: t.device.write(0, 1, 1),
                    [("write", 1, 1, 1), ("write", 0, 1, 0)]),
    "rtc": (lambda line, out: Rtc(clock=lambda: 1_700_000_000.25),
            lambda t: [t.device.write(*op) for op in (
                (0, 1, REG_MINUTES), (1, 1, 0x42), (0, 1, REG_SECONDS_ALARM), (1, 1, 0x30),
                (0, 1, 0x40), (1, 1, 0x5A), (0, 1, REG_B))],
            [("read", 1, 1), ("write", 0, 1, REG_MINUTES), ("read", 1, 1),
             ("write", 0, 1, 0x40), ("read", 1, 1), ("write", 0, 1, REG_C), ("read", 1, 1)]),
    "acpi-pm": (lambda line, out: AcpiPm(clock=lambda: 50.0),
                lambda t: (t.device.write(PM1_EN, 2, RTC_EN), t.device.write(PM1_CNT, 2, SCI_EN)),
                [("read", PM1_STS, 4), ("read", PM1_CNT, 2), ("read", PM_TMR, 4),
                 ("write", PM1_EN, 2, 0), ("read", PM1_STS, 4)]),
    "testdev-iomem": (lambda line, out: PcTestdevIomem(),
                      lambda t: t.device.write(IOMEM_SIZE - 8, 8, 0x1122334455667788),
                      [("read", IOMEM_SIZE - 8, 8), ("read", IOMEM_SIZE - 4, 4)]),
}


def fresh(name: str) -> Twin:
    make = SIMPLE_DEVICES[name][0]
    twin = Twin(RecordingLine())  # placeholder device, replaced below
    twin.device = make(twin.line, twin.output)
    return twin


def restored_copy(name: str, original: Twin) -> Twin:
    """A fresh device of the same kind, restored from ``original``'s state via JSON."""
    twin = fresh(name)
    twin.device.restore(json_trip(original.device.save()))
    twin.output[:] = original.output  # the host has seen the same output so far
    return twin


def check_restored_copy_answers_alike(name: str, before: Callable[[Twin], Any],
                                      after: list[tuple]) -> None:
    """Drive a fresh device with ``before``, restore a copy from its saved
    state, then both must answer every access of ``after`` alike."""
    original = fresh(name)
    before(original)
    twin = restored_copy(name, original)
    assert twin.device.save() == original.device.save()
    assert twin.line.level == original.line.level
    for op in after:
        assert twin.access(op) == original.access(op), op
    assert twin.device.save() == original.device.save()


def traffic(ops: list[tuple]) -> Callable[[Twin], None]:
    def play(twin: Twin) -> None:
        for op in ops:
            twin.access(op)
    return play


@pytest.mark.parametrize("name", list(SIMPLE_DEVICES))
def test_a_restored_copy_answers_every_later_access_like_the_original(name):
    _, drive, after = SIMPLE_DEVICES[name]
    check_restored_copy_answers_alike(name, drive, after)


def test_a_restored_uart_drives_its_line_to_the_saved_level_at_once():
    original = fresh("com1")
    busy_uart(original)
    assert original.line.level  # data below the trigger, RDI on, OUT2 on: timeout pending
    twin = restored_copy("com1", original)
    assert twin.line.level and list(twin.line.edges) == [True]


def test_save_is_plain_json_data_for_every_device():
    for name in SIMPLE_DEVICES:
        twin = fresh(name)
        SIMPLE_DEVICES[name][1](twin)
        state = twin.device.save()
        assert json_trip(state) == state, name


# -- virtio: transport, queues and device types -----------------------------------------------

def rng_backend() -> VirtioRng:
    """An entropy device whose "randomness" depends on the request size only:
    the source is a host resource, outside the saved state."""
    return VirtioRng(source=lambda n: bytes((7 * i + n) & 0xFF for i in range(n)),
                     queue_max_size=8)


def virtio_twin(dev: MockDevice, backend) -> MockDevice:
    """A fresh device over ``backend`` with a copy of ``dev``'s RAM (a snapshot
    saves RAM itself), restored from ``dev``'s state, and a copy of its driver."""
    twin = mock_device(backend, ram_size=dev.memory.size)
    twin.memory.write(0, dev.memory.read(0, dev.memory.size))
    twin.transport.restore(json_trip(dev.transport.save()))
    memo = {id(dev.memory): twin.memory, id(dev.transport): twin.transport}
    twin.driver = copy.deepcopy(dev.driver, memo)
    return twin


def post_rng_request(dev: MockDevice, length: int = 8) -> None:
    buffer = dev.driver.alloc(length)
    dev.driver.queues[0].add_chain([(buffer, length, True)])
    dev.driver.kick(0)


def virtio_view(dev: MockDevice) -> tuple:
    """What the driver can see: completions, the interrupt, the RAM."""
    used = [(e.id, e.len) for e in dev.driver.queues[0].get_used()]
    return (used, dev.irq.level, dev.transport.read(VIRTIO_MMIO_INTERRUPT_STATUS, 4),
            dev.transport.read(VIRTIO_MMIO_STATUS, 4), dev.memory.read(0, dev.memory.size))


def test_a_restored_virtio_rng_serves_the_next_requests_like_the_original():
    original = mock_device(rng_backend(), ram_size=64 * 1024)
    original.driver.init()
    post_rng_request(original)
    twin = virtio_twin(original, rng_backend())
    assert twin.transport.save() == original.transport.save()
    assert twin.irq.level and list(twin.irq.edges) == [True]
    for dev in (original, twin):
        dev.driver.ack_interrupts()
        post_rng_request(dev, 16)
        post_rng_request(dev, 4)
    assert virtio_view(twin) == virtio_view(original)
    assert twin.transport.save() == original.transport.save()


def test_a_restored_virtio_console_keeps_its_pending_input_and_room(tmp_path):
    outputs: list[bytearray] = [bytearray(), bytearray()]
    original = mock_device(VirtioConsole(outputs[0].extend, input_limit=64,
                                         queue_max_size=8), ram_size=64 * 1024)
    original.driver.init()
    original.transport.backend.receive(b"typed before any buffer")
    state = original.transport.save()
    assert bytes.fromhex(state["backend"]["pending"]) == b"typed before any buffer"
    assert state["backend"]["rx_space"] == 64 - len(b"typed before any buffer")
    twin = virtio_twin(original, VirtioConsole(outputs[1].extend, input_limit=64,
                                               queue_max_size=8))
    for dev in (original, twin):
        buffer = dev.driver.alloc(32)
        dev.driver.queues[0].add_chain([(buffer, 32, True)])
        dev.driver.kick(0)
        assert dev.transport.backend.rx_space() == 64
    assert virtio_view(twin) == virtio_view(original)


@pytest.mark.slow
@pytest.mark.parametrize("path, value, words", [
    (("backend", "rx_space"), 10, "'rx_space'"),
    (("backend", "pending"), "00" * 65, "'pending'"),
    (("backend", "counters", "bytes_in"), -1, "'bytes_in'"),
    (("backend", "counters", "lines"), 1, "'lines'"),
])
def test_a_hostile_virtio_console_state_is_refused(path, value, words):
    def console() -> MockDevice:
        return mock_device(VirtioConsole(bytearray().extend, input_limit=64,
                                         queue_max_size=8), ram_size=64 * 1024)
    original, victim = console(), console()
    original.transport.backend.receive(b"abc")
    before = victim.transport.save()
    with pytest.raises(DeviceStateError, match=words):
        victim.transport.restore(edited(original.transport.save(), path, value))
    assert victim.transport.save() == before


def blk_device(path) -> MockDevice:
    return mock_device(VirtioBlk(path, queue_max_size=8), ram_size=64 * 1024)


def test_a_restored_virtio_blk_reads_the_same_sectors(tmp_path):
    image = tmp_path / "a.img"
    image.write_bytes(bytes(range(256)) * 8)
    original = blk_device(image)
    original.driver.init()
    original.driver.blk_request(original.driver.queues[0], VIRTIO_BLK_T_IN, 1, data_len=512)
    original.driver.kick(0)
    shutil.copy(image, tmp_path / "b.img")
    twin = virtio_twin(original, VirtioBlk(tmp_path / "b.img", queue_max_size=8))
    for dev in (original, twin):
        dev.driver.ack_interrupts()
        dev.driver.blk_request(dev.driver.queues[0], VIRTIO_BLK_T_IN, 3, data_len=1024)
        dev.driver.kick(0)
    assert virtio_view(twin) == virtio_view(original)
    assert twin.transport.save()["backend"]["capacity"] == 4


def test_a_virtio_blk_state_is_refused_over_an_image_of_another_size(tmp_path):
    (tmp_path / "a.img").write_bytes(bytes(4096))
    (tmp_path / "b.img").write_bytes(bytes(8192))
    state = blk_device(tmp_path / "a.img").transport.save()
    other = blk_device(tmp_path / "b.img")
    before = other.transport.save()
    with pytest.raises(DeviceStateError, match="'size'"):
        other.transport.restore(state)
    assert other.transport.save() == before


# -- property tests: random traffic, a snapshot in the middle -----------------------------------

uart_ops = st.one_of(
    st.tuples(st.just("read"), st.integers(0, 8), st.just(1)),
    st.tuples(st.just("write"), st.integers(0, 8), st.just(1), st.integers(0, 255)),
    st.tuples(st.just("receive"), st.binary(max_size=20)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(before=st.lists(uart_ops, max_size=40), after=st.lists(uart_ops, max_size=40))
def test_uart_after_any_traffic_a_restored_copy_answers_alike(before, after):
    check_restored_copy_answers_alike("com1", traffic(before), after)


fw_cfg_ops = st.one_of(
    st.tuples(st.just("read"), st.integers(0, 2), st.sampled_from([1, 2])),
    st.tuples(st.just("write"), st.integers(0, 2), st.sampled_from([1, 2]),
              st.sampled_from([0, 1, 3, 5, 0x14, 0x15, 0x19, 0x20, 0x4015, 0x8000, 0xFFFF])),
)


@settings(max_examples=100, deadline=None)
@given(before=st.lists(fw_cfg_ops, max_size=40), after=st.lists(fw_cfg_ops, max_size=40))
def test_fw_cfg_after_any_traffic_a_restored_copy_answers_alike(before, after):
    check_restored_copy_answers_alike("fw_cfg", traffic(before), after)


virtio_ops = st.one_of(
    st.tuples(st.just("read"), st.sampled_from(
        [VIRTIO_MMIO_STATUS, VIRTIO_MMIO_INTERRUPT_STATUS, VIRTIO_MMIO_QUEUE_READY,
         0x010, 0x034, 0x0FC, 0x100])),
    st.tuples(st.just("write"), st.sampled_from(
        [VIRTIO_MMIO_STATUS, VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_QUEUE_SEL,
         VIRTIO_MMIO_QUEUE_READY, VIRTIO_MMIO_QUEUE_NOTIFY, 0x014, 0x024, 0x020, 0x038]),
        st.integers(0, 0xF)),
    st.tuples(st.just("request"), st.integers(1, 64)),
)


def virtio_access(dev: MockDevice, op: tuple) -> tuple:
    kind, *args = op
    if kind == "read":
        result = dev.transport.read(args[0], 4)
    elif kind == "write":
        result = dev.transport.write(args[0], 4, args[1])
    else:  # the driver posts an entropy request (if it still has descriptors) and kicks
        queue = dev.driver.queues[0]
        if queue.free_descriptors:
            post_rng_request(dev, args[0])
        result = None
    return result, dev.irq.level


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(before=st.lists(virtio_ops, max_size=25), after=st.lists(virtio_ops, max_size=25))
def test_virtio_transport_after_any_traffic_a_restored_copy_answers_alike(before, after):
    original = mock_device(rng_backend(), ram_size=64 * 1024)
    original.driver.init()
    for op in before:
        virtio_access(original, op)
    twin = virtio_twin(original, rng_backend())
    for op in after:
        assert virtio_access(twin, op) == virtio_access(original, op), op
    assert twin.transport.save() == original.transport.save()
    assert twin.memory.read(0, twin.memory.size) == original.memory.read(0, original.memory.size)


# -- hostile states -----------------------------------------------------------------------------

def edited(state: dict[str, Any], path: tuple, value: Any = ...) -> dict[str, Any]:
    """``state`` with the field at ``path`` set to ``value`` (deleted with ``...``)."""
    state = copy.deepcopy(state)
    target = state
    for key in path[:-1]:
        target = target[key]
    if value is ...:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return state


HOSTILE = [
    # (device, field path, bad value, words the error must contain)
    ("com1", ("ier",), "15", "'ier'"),
    ("com1", ("ier",), 0x10, "'ier'"),
    ("com1", ("dll",), 256, "'dll'"),
    ("com1", ("dll",), True, "'dll'"),
    ("com1", ("rx_fifo",), "61" * 17, "'rx_fifo'"),
    ("com1", ("fifo_enabled",), False, "'rx_fifo'"),  # 2 bytes do not fit the 16450's RBR
    ("com1", ("tx_fifo",), "41", "'tx_fifo'"),
    ("com1", ("rx_fifo",), "6G", "'rx_fifo'"),
    ("com1", ("rx_fifo",), "ABCD", "'rx_fifo'"),
    ("com1", ("fcr_trigger",), 0x41, "'fcr_trigger'"),
    ("com1", ("irq_level",), False, "'irq_level'"),
    ("com1", ("tx_count",), -1, "'tx_count'"),
    ("com1", ("ier",), ..., "'ier'"),
    ("com1", ("baud",), 9600, "'baud'"),
    ("fw_cfg", ("selector",), 0x10000, "'selector'"),
    ("fw_cfg", ("offset",), 10_000, "'offset'"),
    ("fw_cfg", ("items", "0x15"), "00", "'0x15'"),
    ("fw_cfg", ("items", "0x4015"), "00", "'0x4015'"),
    ("fw_cfg", ("files",), [["opt/x", 0x21]], "file 0"),
    ("fw_cfg", ("items",), [], "'items'"),
    ("debug-exit", ("last_value",), 1.5, "'last_value'"),
    ("i8042", ("last_command",), 0x100, "'last_command'"),
    ("testdev", ("scratch",), 1 << 32, "'scratch'"),
    ("testdev-irq", ("levels",), [True, False], "'levels'"),
    ("testdev-irq", ("levels",), [1, 0, 0], "'levels'"),
    ("testdev-iomem", ("memory",), "00" * (IOMEM_SIZE + 1), "'memory'"),
    ("debugcon", ("recent",), "", "'recent'"),
    ("rtc", ("cmos",), "00" * 127, "'cmos'"),
    ("rtc", ("index",), 128, "'index'"),
    ("rtc", ("seen",), 1, "'seen'"),
    ("acpi-pm", ("enable",), 0x8000, "'enable'"),
    ("acpi-pm", ("ticks",), -1, "'ticks'"),
]


def cheap_first(cases: list[tuple]) -> list:
    """Each device's first case in the fast run, the others in the full run."""
    seen: set[str] = set()
    params = []
    for case in cases:
        fast = case[0] not in seen
        seen.add(case[0])
        params.append(pytest.param(*case, marks=[] if fast else [pytest.mark.slow]))
    return params


@pytest.mark.parametrize("name, path, value, words", cheap_first(HOSTILE))
def test_a_hostile_state_is_refused_whole_and_changes_nothing(name, path, value, words):
    original = fresh(name)
    SIMPLE_DEVICES[name][1](original)
    victim = fresh(name)
    before = victim.device.save()
    bad = edited(original.device.save(), path, value)
    with pytest.raises(DeviceStateError, match=words) as raised:
        victim.device.restore(bad)
    message = str(raised.value)
    assert "\n" not in message and message.startswith(victim.device.name)
    assert victim.device.save() == before


VIRTIO_HOSTILE = [
    (("status",), 0x10, "'status'"),
    (("driver_features",), 1 << 63, "'driver_features'"),
    (("device_id",), 2, "'device_id'"),
    (("interrupt_status",), 4, "'interrupt_status'"),
    (("irq_level",), False, "'irq_level'"),
    (("queues",), [], "'queues'"),
    (("queues", 0, "max_size"), 256, "queue 0: saved field 'max_size'"),
    (("queues", 0, "used_idx"), 1 << 16, "queue 0: saved field 'used_idx'"),
    (("queues", 0, "desc_table"), 1 << 40, "queue 0: saved as ready"),
    (("queues", 0, "avail_ring"), 1, "queue 0: saved as ready"),
    (("queues", 0, "desc_table"), -16, "queue 0: saved field 'desc_table'"),
    (("counters", "kicks"), "many", "'kicks'"),
    (("backend", "requests"), ..., "backend rng: saved field 'requests'"),
    (("backend", "request_cap"), 1 << 20, "'request_cap'"),
    (("backend",), {"requests": 0, "bytes_given": 0, "request_cap": 65536, "x": 1}, "'x'"),
]


@pytest.mark.parametrize("path, value, words", [
    pytest.param(*case, marks=[] if case[0][0] == "queues" and case[2].endswith("ready")
                 else [pytest.mark.slow]) for case in VIRTIO_HOSTILE])
def test_a_hostile_virtio_state_is_refused_whole_and_changes_nothing(path, value, words):
    original = mock_device(rng_backend(), ram_size=64 * 1024)
    original.driver.init()
    post_rng_request(original)
    victim = mock_device(rng_backend(), ram_size=64 * 1024)
    before = victim.transport.save()
    with pytest.raises(DeviceStateError, match=words):
        victim.transport.restore(edited(original.transport.save(), path, value))
    assert victim.transport.save() == before
    assert not victim.irq.edges


def test_a_state_that_is_not_a_dict_is_refused():
    for state in (None, [], "{}", 3):
        with pytest.raises(DeviceStateError, match="com1: saved state is a"):
            fresh("com1").device.restore(state)
    with pytest.raises(DeviceStateError, match="debugcon"):
        Device.restore(DebugCon(), {"x": 1})


# -- host input, and every device of a machine at once --------------------------------------------

def test_host_input_saves_the_bytes_not_yet_delivered():
    queue = HostInput(capacity=16)
    queue.put(b"hello, guest")
    uart_twin = fresh("com1")
    uart_twin.device.write(UART_MCR, 1, 0x02)  # RTS: the receiver is ready, 1 byte of room
    queue.feed(uart_twin.device)
    copy_ = HostInput(capacity=16)
    copy_.restore(json_trip(queue.save()))
    assert copy_.get(100) == b"ello, guest"
    with pytest.raises(DeviceStateError, match="'queued'"):
        HostInput(capacity=4).restore(queue.save())


def board() -> tuple[Bus, Bus, dict[str, Twin]]:
    pio, mmio = Bus("pio"), Bus("mmio")
    twins = {name: fresh(name) for name in ("com1", "fw_cfg", "testdev")}
    pio.register(0x3F8, 8, twins["com1"].device)
    pio.register(0x510, 2, twins["fw_cfg"].device)
    mmio.register(0xFF00_0000, 0x100, twins["testdev"].device)
    return pio, mmio, twins


def test_save_devices_keys_each_device_by_bus_base_and_name():
    pio, mmio, twins = board()
    busy_uart(twins["com1"])
    states = save_devices([pio, mmio])
    assert list(states) == ["pio:0x3f8:com1", "pio:0x510:fw_cfg", "mmio:0xff000000:testdev"]
    assert device_key("pio", 0x3F8, "com1") == "pio:0x3f8:com1"
    pio2, mmio2, _ = board()
    restore_devices([pio2, mmio2], json_trip(states))
    assert save_devices([pio2, mmio2]) == states


def test_restore_devices_checks_every_device_before_changing_any():
    pio, mmio, twins = board()
    busy_uart(twins["com1"])
    states = save_devices([pio, mmio])
    pio2, mmio2, _ = board()
    before = save_devices([pio2, mmio2])
    bad = edited(states, ("mmio:0xff000000:testdev", "scratch"), -1)
    with pytest.raises(DeviceStateError, match="testdev: saved field 'scratch'"):
        restore_devices([pio2, mmio2], bad)
    assert save_devices([pio2, mmio2]) == before   # com1 came first and was not touched


def test_save_devices_refuses_a_device_that_cannot_save():
    class Bare:
        name = "bare"

        def read(self, offset: int, size: int) -> int:
            return 0

    pio = Bus("pio")
    pio.register(0x80, 1, Bare())
    with pytest.raises(DeviceStateError, match="pio:0x80:bare: the device cannot save"):
        save_devices([pio])


@pytest.mark.parametrize("change", ["missing", "extra", "moved"])
def test_restore_devices_refuses_a_snapshot_of_another_set_of_devices(change):
    pio, mmio, _ = board()
    states = save_devices([pio, mmio])
    if change == "missing":
        del states["pio:0x510:fw_cfg"]
    elif change == "extra":
        states["pio:0xe9:debugcon"] = {"bytes_written": 0}
    else:
        states["pio:0x2f8:com1"] = states.pop("pio:0x3f8:com1")
    with pytest.raises(DeviceStateError, match="devices"):
        restore_devices([pio, mmio], states)


# -- a real guest ---------------------------------------------------------------------------------

@pytest.mark.kvm
def test_the_devices_of_a_running_serial_guest_restore_into_a_second_machine(guests):
    from minikvm.hostio import BufferSink
    from minikvm.machine import Machine, StopKind

    with Machine(irqchip=True, output=BufferSink()) as first:
        first.load_flat(guests / "serial_echo.bin", 0x1000)
        first.send_serial_input(b"hello\n")
        stop = first.run(timeout=30, max_exits=12)
        assert stop.kind is StopKind.EXIT_LIMIT, stop
        states = json_trip(save_devices([first.pio, first.mmio]))
        queued = json_trip(first.serial_input.save())
    assert states["pio:0x3f8:com1"]["mcr"] != 0          # the guest has set COM1 up
    with Machine(irqchip=True, output=BufferSink()) as second:
        restore_devices([second.pio, second.mmio], states)
        second.serial_input.restore(queued)
        again = save_devices([second.pio, second.mmio])
        # The PM timer runs on in real time: it may only have gone forward.
        saved_ticks = states["pio:0x600:acpi-pm"].pop("ticks")
        assert again["pio:0x600:acpi-pm"].pop("ticks") >= saved_ticks
        assert again == states
        assert second.serial_input.save() == queued


def test_testdev_memory_saves_only_up_to_its_last_nonzero_byte():
    device = PcTestdevIomem()
    assert device.save() == {"memory": ""}
    device.write(16, 1, 0xAB)
    assert device.save() == {"memory": "00" * 16 + "ab"}
    copy = PcTestdevIomem()
    copy.write(IOMEM_SIZE - 1, 1, 0xFF)       # restore overwrites the whole 64 KiB
    copy.restore(device.save())
    assert copy.read(16, 1) == 0xAB and copy.read(IOMEM_SIZE - 1, 1) == 0


def test_the_pm_timer_goes_on_from_its_saved_count():
    now = [100.0]
    original = AcpiPm(clock=lambda: now[0])
    now[0] = 101.0                                   # one second of ticks
    state = json_trip(original.save())
    assert state["ticks"] == PM_TIMER_HZ
    now[0] = 5000.0                                  # restored much later, elsewhere
    copy = AcpiPm(clock=lambda: now[0])
    copy.restore(state)
    assert copy.timer() == PM_TIMER_HZ & 0xFFFFFF    # no jump back, no jump ahead


@pytest.mark.kvm
def test_every_device_a_machine_wires_saves_its_own_state():
    """A device left with the base class's empty save() would be silently
    reset by every snapshot: each one on the board must say what it holds."""
    from minikvm.machine import Machine

    with Machine(irqchip=True) as machine:
        for bus in (machine.pio, machine.mmio):
            for mapping in bus:
                device = mapping.device
                assert type(device).save is not Device.save, mapping.device_name
