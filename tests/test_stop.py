"""Whether an exit ends the run: the rules of :func:`decide_stop`, as a table.

Every exit type :mod:`minikvm.kvm.exits` can return meets every request a
runner can carry (none, a device's stop, the timeout, a pause, the halt
check). The exits are built by hand, so no VM is needed. Then the three
questions every front end asks of a :class:`Stop`: has the guest ended,
finished, crashed?
"""

from __future__ import annotations

import inspect

import pytest

from minikvm.core.board import ExitStatus
from minikvm.core.stop import HALTED_MESSAGE, Requests, Stop, StopKind, decide_stop
from minikvm.kvm import exits
from minikvm.kvm.uapi import KvmExit

RIP = 0x7C00
VCPU = 3

#: A stop a device asked for while the exit was handled (the debug-exit port).
DEVICE_STOP = Stop(StopKind.DEBUG_EXIT, (0x2A << 1) | 1,
                   "the guest wrote 0x2a to the debug-exit port")

#: The requests that matter, by name (at most one at a time; their order is tested below).
REQUESTS = {
    "none": Requests(),
    "device_stop": Requests(device_stop=DEVICE_STOP),
    "timed_out": Requests(timed_out=True),
    "pause": Requests(pause=True),
    "halted": Requests(halted=True),
}

# Outcomes in the table: (kind, status), GOES_ON (no stop), DEVICE (the device's stop).
GOES_ON = None
DEVICE = "device"
OK = int(ExitStatus.OK)
CRASH = int(ExitStatus.GUEST_CRASH)
HALT = (StopKind.HALT, OK)
POWER_OFF = (StopKind.POWER_OFF, OK)
RESET = (StopKind.RESET, OK)
TIMEOUT = (StopKind.TIMEOUT, int(ExitStatus.TIMEOUT))
PAUSED = (StopKind.PAUSED, None)
SHUTDOWN = (StopKind.SHUTDOWN, CRASH)
FAIL_ENTRY = (StopKind.FAIL_ENTRY, CRASH)
INTERNAL = (StopKind.INTERNAL_ERROR, CRASH)
UNEXPECTED = (StopKind.UNEXPECTED_EXIT, CRASH)

SYSTEM_EVENT_SHUTDOWN, SYSTEM_EVENT_RESET, SYSTEM_EVENT_CRASH = 1, 2, 3

#: One exit of each type the binding returns (an exit of no type we know is Unknown).
EXITS = {
    "io-out": exits.IoOut(0xE9, 1, 1, b"A"),
    "io-in": exits.IoIn(0x3FD, 1, 1, memoryview(bytearray(1))),
    "mmio-read": exits.MmioRead(0xD000_0000, 4, memoryview(bytearray(8))),
    "mmio-write": exits.MmioWrite(0xD000_0050, 4, b"\0\0\0\0"),
    "debug": exits.Debug(1, RIP, 0xFFFF4FF0, 0x400),
    "interrupted": exits.Interrupted(),
    "hlt-if-clear": exits.Hlt(False),
    "hlt-if-set": exits.Hlt(True),
    "triple-fault": exits.Shutdown(),
    "fail-entry": exits.FailEntry(0x80000021, 1),
    "internal-error": exits.InternalError(1, (0x0F0B,)),
    "power-off": exits.SystemEvent(SYSTEM_EVENT_SHUTDOWN, ()),
    "reset": exits.SystemEvent(SYSTEM_EVENT_RESET, ()),
    "guest-crash": exits.SystemEvent(SYSTEM_EVENT_CRASH, (1, 2)),
    "hypercall": exits.Hypercall(1, (0, 0, 0, 0, 0, 0)),
    "exception": exits.ExceptionExit(13, 0),
    "irq-window": exits.IrqWindowOpen(),
    "unknown": exits.Unknown(KvmExit.KVM_EXIT_X86_RDMSR),
}

# The requests a runner can only carry on an ``Interrupted`` exit (a kick) are
# ignored on any other exit: they wait for the kick's own exit.
TABLE = [
    # exit             none         device_stop  timed_out    pause        halted
    ("io-out",         GOES_ON,     DEVICE,      GOES_ON,     GOES_ON,     GOES_ON),
    ("io-in",          GOES_ON,     DEVICE,      GOES_ON,     GOES_ON,     GOES_ON),
    ("mmio-read",      GOES_ON,     DEVICE,      GOES_ON,     GOES_ON,     GOES_ON),
    ("mmio-write",     GOES_ON,     DEVICE,      GOES_ON,     GOES_ON,     GOES_ON),
    ("debug",          GOES_ON,     DEVICE,      GOES_ON,     GOES_ON,     GOES_ON),
    ("interrupted",    GOES_ON,     DEVICE,      TIMEOUT,     PAUSED,      HALT),
    ("hlt-if-clear",   HALT,        DEVICE,      HALT,        HALT,        HALT),
    ("hlt-if-set",     HALT,        DEVICE,      HALT,        HALT,        HALT),
    ("triple-fault",   SHUTDOWN,    DEVICE,      SHUTDOWN,    SHUTDOWN,    SHUTDOWN),
    ("fail-entry",     FAIL_ENTRY,  DEVICE,      FAIL_ENTRY,  FAIL_ENTRY,  FAIL_ENTRY),
    ("internal-error", INTERNAL,    DEVICE,      INTERNAL,    INTERNAL,    INTERNAL),
    ("power-off",      POWER_OFF,   DEVICE,      POWER_OFF,   POWER_OFF,   POWER_OFF),
    ("reset",          RESET,       DEVICE,      RESET,       RESET,       RESET),
    ("guest-crash",    SHUTDOWN,    DEVICE,      SHUTDOWN,    SHUTDOWN,    SHUTDOWN),
    ("hypercall",      UNEXPECTED,  DEVICE,      UNEXPECTED,  UNEXPECTED,  UNEXPECTED),
    ("exception",      UNEXPECTED,  DEVICE,      UNEXPECTED,  UNEXPECTED,  UNEXPECTED),
    ("irq-window",     UNEXPECTED,  DEVICE,      UNEXPECTED,  UNEXPECTED,  UNEXPECTED),
    ("unknown",        UNEXPECTED,  DEVICE,      UNEXPECTED,  UNEXPECTED,  UNEXPECTED),
]

CASES = [pytest.param(EXITS[name], REQUESTS[request], expected, id=f"{name}-{request}")
         for name, *outcomes in TABLE
         for request, expected in zip(REQUESTS, outcomes, strict=True)]


class RipReader:
    """The ``rip`` callable of a runner: counts how often a stop asked for RIP."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> int:
        self.calls += 1
        return RIP


@pytest.mark.parametrize("exit, requests, expected", CASES)
def test_decide_stop_follows_the_table(exit, requests, expected):
    rip = RipReader()
    stop = decide_stop(exit, requests, rip, VCPU)
    if expected is GOES_ON:
        assert stop is None
        assert rip.calls == 0, "RIP is read only for a stop that reports it"
    elif expected == DEVICE:
        assert stop == DEVICE_STOP.but(vcpu=VCPU)
    else:
        assert (stop.kind, stop.status) == expected
        assert stop.vcpu == VCPU
        assert stop.rip == RIP
        assert rip.calls == 1, "RIP is read once per stop"


def test_the_table_has_every_exit_type_of_the_binding():
    exit_types = {cls for _, cls in inspect.getmembers(exits, inspect.isclass)
                  if issubclass(cls, exits.VmExit) and cls is not exits.VmExit}
    assert {type(EXITS[row[0]]) for row in TABLE} == exit_types
    assert [row[0] for row in TABLE] == list(EXITS)


def test_the_table_sees_every_request_field_alone():
    fields = set(Requests._fields)
    assert fields == set(REQUESTS) - {"none"}


@pytest.mark.parametrize("requests, kind", [
    (Requests(timed_out=True, pause=True, halted=True), StopKind.HALT),
    (Requests(timed_out=True, pause=True), StopKind.TIMEOUT),
    (Requests(pause=True, halted=True), StopKind.HALT),
])
def test_on_a_kick_the_halt_check_wins_then_the_timeout_then_the_pause(requests, kind):
    assert decide_stop(exits.Interrupted(), requests).kind is kind


def test_a_device_stop_wins_over_a_timeout_and_a_triple_fault():
    both = Requests(device_stop=DEVICE_STOP, timed_out=True, pause=True, halted=True)
    assert decide_stop(exits.Interrupted(), both) == DEVICE_STOP
    assert decide_stop(exits.Shutdown(), Requests(device_stop=DEVICE_STOP)) == DEVICE_STOP


def test_a_stop_without_a_rip_reader_says_no_rip():
    stop = decide_stop(exits.Shutdown(), Requests())
    assert stop.rip is None and stop.vcpu == 0
    assert "triple fault" in stop.message and "RIP" not in stop.message


@pytest.mark.parametrize("exit, words", [
    (exits.Shutdown(), "triple fault"),
    (exits.FailEntry(0x80000021, 1), "0x80000021"),
    (exits.InternalError(1, ()), "emulation failure"),
    (exits.SystemEvent(SYSTEM_EVENT_CRASH, ()), "crash"),
    (exits.Unknown(KvmExit.KVM_EXIT_X86_RDMSR), "X86_RDMSR"),
])
def test_a_crash_message_names_the_reason_and_the_rip(exit, words):
    message = decide_stop(exit, Requests(), lambda: RIP).message
    assert words in message
    assert f"RIP {RIP:#x}" in message


def test_a_halt_with_interrupts_on_says_nothing_could_wake_the_guest():
    assert decide_stop(exits.Hlt(False), Requests()).message == HALTED_MESSAGE
    assert "no interrupt controller" in decide_stop(exits.Hlt(True), Requests()).message


# -- what a stop says about the guest ---------------------------------------------------

#  kind                        status the stop carries   ended  finished crashed
KINDS = [
    (StopKind.HALT,            OK,                       True,  True,  False),
    (StopKind.DEBUG_EXIT,      (0x2A << 1) | 1,          True,  True,  False),
    (StopKind.POWER_OFF,       OK,                       True,  True,  False),
    (StopKind.RESET,           OK,                       True,  True,  False),
    (StopKind.SHUTDOWN,        CRASH,                    True,  False, True),
    (StopKind.FAIL_ENTRY,      CRASH,                    True,  False, True),
    (StopKind.INTERNAL_ERROR,  CRASH,                    True,  False, True),
    (StopKind.UNEXPECTED_EXIT, CRASH,                    True,  False, True),
    (StopKind.TIMEOUT,         int(ExitStatus.TIMEOUT),  True,  False, False),
    (StopKind.PAUSED,          None,                     False, False, False),
    (StopKind.EXIT_LIMIT,      None,                     False, False, False),
    (StopKind.BREAKPOINT,      None,                     False, False, False),
    (StopKind.WATCHPOINT,      None,                     False, False, False),
    (StopKind.EXIT_MATCHED,    None,                     False, False, False),
    (StopKind.STEP_LIMIT,      None,                     False, False, False),
    (StopKind.DEBUG_EXCEPTION, None,                     False, False, False),
    (StopKind.HISTORY_START,   None,                     False, False, False),
    (StopKind.HISTORY_END,     None,                     False, False, False),
]


@pytest.mark.parametrize("kind, status, ended, finished, crashed", KINDS,
                         ids=[row[0].value for row in KINDS])
def test_stop_says_whether_the_guest_ended_finished_or_crashed(kind, status, ended, finished,
                                                               crashed):
    stop = Stop(kind, status, "why")
    assert (stop.ended, stop.finished, stop.crashed) == (ended, finished, crashed)


def test_the_kinds_table_has_every_stop_kind():
    assert [row[0] for row in KINDS] == list(StopKind)


def test_but_changes_only_the_fields_named():
    stop = Stop(StopKind.BREAKPOINT, None, "breakpoint", rip=RIP, vcpu=1)
    moved = stop.but(steps=3, vcpu=2)
    assert (moved.kind, moved.message, moved.rip, moved.steps, moved.vcpu) == (
        StopKind.BREAKPOINT, "breakpoint", RIP, 3, 2)
    assert stop.steps == 0 and stop.vcpu == 1
    assert str(moved) == "breakpoint"
