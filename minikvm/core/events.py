"""One VM exit and what it meant: dispatch to the buses, and words for it.

:func:`dispatch_exit` is the whole of "emulating a device access": an I/O or
MMIO exit goes to its bus, and a read is completed for the guest before the
next ``KVM_RUN``. :class:`ExitEvent` is what the machine hands its
listeners (the trace, the TUI): the exit, the bus access it became, the
vCPU it came from, and one sentence (:func:`describe_exit`).
"""

from __future__ import annotations

from minikvm.bus import Access, Bus, Mapping
from minikvm.core.stop import StopKind
from minikvm.kvm.exits import (
    Debug,
    FailEntry,
    Hlt,
    InternalError,
    Interrupted,
    IoIn,
    IoOut,
    MmioRead,
    MmioWrite,
    Shutdown,
    SystemEvent,
    VmExit,
)
from minikvm.record import Record

__all__ = ["ExitEvent", "PioEvent", "describe_exit", "dispatch_exit", "lazy_pio_event",
           "wants_words"]


class ExitEvent(Record):
    """One VM exit and what it meant.

    ``access`` is the bus access an I/O or MMIO exit turned into (device,
    register, value, description); ``stop`` is set when this exit ended the
    run. ``guest_time`` is how long the guest ran before exiting (seconds).
    ``vcpu`` is the index of the vCPU that exited.

    A :class:`~minikvm.record.Record` rather than a dataclass: the run loop
    makes one per exit while someone listens, and every command imports
    this module (a dataclass here alone pulls in ``dataclasses`` and
    ``inspect``: ~15 ms of each start, benchmarks/README.md).
    """

    __slots__ = ("seq", "time", "guest_time", "exit", "access", "accesses", "stop",
                 "description", "rip", "vcpu")
    seq: int
    time: float
    guest_time: float
    exit: VmExit
    access: Access | None
    accesses: int
    stop: object
    description: str
    rip: int | None
    vcpu: int

    def __init__(self, seq: int, time: float, guest_time: float, exit: VmExit,
                 access: Access | None = None, accesses: int = 1, stop: object = None,
                 description: str = "", rip: int | None = None, vcpu: int = 0) -> None:
        self.seq = seq
        self.time = time
        self.guest_time = guest_time
        self.exit = exit
        self.access = access
        self.accesses = accesses
        self.stop = stop
        self.description = description
        self.rip = rip
        self.vcpu = vcpu

    @property
    def reason(self) -> str:
        """Exit reason, with I/O and MMIO split by direction (``IO_OUT``...)."""
        ex = self.exit
        if isinstance(ex, IoOut):
            return "IO_OUT"
        if isinstance(ex, IoIn):
            return "IO_IN"
        if isinstance(ex, MmioWrite):
            return "MMIO_WRITE"
        if isinstance(ex, MmioRead):
            return "MMIO_READ"
        return ex.reason_name

    @property
    def device(self) -> str:
        return self.access.device_name if self.access is not None else ""

    @property
    def register(self) -> str:
        return self.access.register if self.access is not None else ""

    @property
    def value(self) -> int | None:
        return self.access.value if self.access is not None else None


#: The slots of :class:`ExitEvent` that :class:`PioEvent` fills on first read.
_EXIT_SLOT = ExitEvent.exit
_ACCESS_SLOT = ExitEvent.access


class PioEvent(ExitEvent):
    """The :class:`ExitEvent` of a single ``in``/``out`` whose ``exit`` and
    ``access`` are made when a listener first reads them.

    The run loop makes one per exit while someone listens
    (:func:`lazy_pio_event`); a listener
    that reads only ``rip`` or ``seq`` (a counter, a profiler) would
    otherwise pay for two records it never looks at. ``_io`` keeps what
    they are made from: ``(is_write, port, size, buffer, bus, mapping,
    value)`` -- the bus the access went over, the mapping it went to
    (None: unclaimed) and the value written or read, as
    :meth:`Bus.write_value <minikvm.bus.Bus.write_value>` and
    :meth:`~minikvm.bus.Bus.read_mapped` returned them; ``buffer`` is the
    view of the run page an ``in`` was completed through (None for an
    ``out``: its bytes are ``value``'s).

    Nothing else tells it from the eager event: each is made once and
    kept (a property here shadows the slot of :class:`ExitEvent`, which
    then holds the record), it shows and compares as the
    :class:`ExitEvent` it stands for, and :meth:`replace` gives one. Only
    events without words are lazy: words describe a device as it is when
    the exit happens (see :func:`~minikvm.runloop.pio_event`).
    """

    __slots__ = ("_io",)
    _io: tuple[bool, int, int, memoryview | None, Bus, Mapping | None, int]

    @property   # type: ignore[override]
    def exit(self) -> VmExit:
        try:
            return _EXIT_SLOT.__get__(self)
        except AttributeError:   # not made yet
            pass
        is_write, port, size, buffer, _, _, value = self._io
        exit: VmExit = (IoOut(port, size, 1, value.to_bytes(size, "little")) if is_write
                        else IoIn(port, size, 1, buffer))   # type: ignore[arg-type]
        _EXIT_SLOT.__set__(self, exit)
        return exit

    @exit.setter
    def exit(self, exit: VmExit) -> None:
        _EXIT_SLOT.__set__(self, exit)

    @property   # type: ignore[override]
    def access(self) -> Access | None:
        try:
            return _ACCESS_SLOT.__get__(self)
        except AttributeError:
            pass
        is_write, port, size, _, bus, mapping, value = self._io
        # What Bus.write/read make, without words (a PioEvent has none).
        if mapping is None:
            access = Access(bus.space, port, size, is_write, value)
        else:
            access = Access(bus.space, port, size, is_write, value, mapping.device,
                            port - mapping.base)
        _ACCESS_SLOT.__set__(self, access)
        return access

    @access.setter
    def access(self, access: Access | None) -> None:
        _ACCESS_SLOT.__set__(self, access)

    def eager(self) -> ExitEvent:
        """The :class:`ExitEvent` with the same fields."""
        return ExitEvent(self.seq, self.time, self.guest_time, self.exit, self.access,
                         self.accesses, self.stop, self.description, self.rip, self.vcpu)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PioEvent):
            other = other.eager()
        return self.eager().__eq__(other)

    def __repr__(self) -> str:
        return repr(self.eager())

    def replace(self, **changes: object) -> ExitEvent:  # type: ignore[override]
        return self.eager().replace(**changes)


_new = object.__new__


def lazy_pio_event(seq: int, time: float, guest_time: float, rip: int | None, vcpu: int,
                   io: tuple[bool, int, int, memoryview | None, Bus, Mapping | None, int]
                   ) -> PioEvent:
    """The :class:`PioEvent` of ``io``, made without a class call: a class
    with an ``__init__`` written in Python is called through C
    (``type_call``, then a fresh interpreter frame); these stores are the
    least an event can cost. (``PioEvent(...)`` is the eager
    :class:`ExitEvent`'s constructor.)"""
    event = _new(PioEvent)
    event.seq = seq
    event.time = time
    event.guest_time = guest_time
    event.accesses = 1
    event.stop = None
    event.description = ""
    event.rip = rip
    event.vcpu = vcpu
    event._io = io
    return event


def wants_words(listeners: list) -> bool:
    """Whether any of ``listeners`` reads the words of an event
    (``description``, and ``register``/``description`` of its access).

    Words cost more than the rest of an event (the device is asked for a
    sentence, an f-string is built), and only a person reads them: a trace,
    the TUI's log. A listener that only counts exits or reads their RIP may
    say so with an attribute ``words = False`` (on the function or the
    object); when every listener says so the machine leaves the words
    empty. Without the attribute a listener gets them. The machine's run
    loop asks again only when the list of listeners changes, so the
    attribute is a listener's fixed property, not a switch.
    """
    for listener in listeners:
        if getattr(listener, "words", True):
            return True
    return False


def dispatch_exit(exit: VmExit, pio: Bus, mmio: Bus, explain: bool = False) -> tuple[Access | None, int]:
    """Send an I/O or MMIO exit to its bus and complete reads for the guest.

    Returns the (first) bus access and the number of accesses (string I/O
    such as ``rep insb`` moves ``count`` items in one exit). Other exits
    return ``(None, 0)``.
    """
    if isinstance(exit, IoOut):
        size = exit.size
        first = None
        for i in range(exit.count):
            value = int.from_bytes(exit.data[i * size:(i + 1) * size], "little")
            access = pio.write(exit.port, size, value, explain)
            if first is None:
                first = access
        return first, exit.count
    if isinstance(exit, IoIn):
        values = []
        first = None
        for _ in range(exit.count):
            access = pio.read(exit.port, exit.size, explain)
            values.append(access.value)
            if first is None:
                first = access
        exit.complete(values)
        return first, exit.count
    if isinstance(exit, MmioWrite):
        return mmio.write(exit.address, exit.length, exit.value, explain), 1
    if isinstance(exit, MmioRead):
        access = mmio.read(exit.address, exit.length, explain)
        exit.complete(access.value)
        return access, 1
    return None, 0


def describe_exit(exit: VmExit, access: Access | None, accesses: int,
                  stop: object = None) -> str:
    """One sentence on what an exit was, for the trace and the TUI.

    ``stop`` is the :class:`~minikvm.core.stop.Stop` the exit led to, if
    any (``ExitEvent.stop``). It matters for ``Interrupted``: the guest did
    nothing there, the VMM cut ``KVM_RUN`` short, and only the stop says
    why -- most often the halt check (with the in-kernel irqchip ``hlt``
    never exits, so the watchdog kicks a vCPU that has been quiet for a
    millisecond or more and the runner asks KVM whether it sleeps with
    interrupts off).
    """
    if access is not None:
        text = access.description   # the device's own words, when it has some
        if not text:
            where = (f"port {access.address:#06x}" if access.space == "pio"
                     else f"{access.address:#x}")
            verb = "write" if access.is_write else "read"
            text = f"{access.size}-byte {verb} at {where}"
        if accesses > 1:
            text += f" (string I/O: {accesses} items in one exit)"
        return text
    if isinstance(exit, Hlt):
        if exit.if_flag:
            return "hlt with interrupts on: the guest waits for an interrupt"
        return "hlt with interrupts off: the guest has stopped for good"
    if isinstance(exit, Debug):
        return f"debug exception {exit.exception} at {exit.pc:#x} (dr6={exit.dr6:#x})"
    if isinstance(exit, Shutdown):
        return "shutdown: the CPU met a fault while handling a double fault (triple fault)"
    if isinstance(exit, FailEntry):
        return (f"VM entry failed: the CPU refused the guest state "
                f"(hardware reason {exit.hardware_entry_failure_reason:#x})")
    if isinstance(exit, InternalError):
        return f"KVM internal error: {exit.suberror_name}"
    if isinstance(exit, SystemEvent):
        return f"system event: the guest asks for {exit.type_name}"
    if isinstance(exit, Interrupted):
        return _describe_kick(stop)
    return f"exit {exit.reason_name}"


def _describe_kick(stop: object) -> str:
    """Why the VMM interrupted ``KVM_RUN`` (a signal: ``EINTR``), from the stop it led to."""
    kind = getattr(stop, "kind", None)
    if kind is StopKind.HALT:
        return ("halt check: no exit for a while, so the watchdog kicked the vCPU out of "
                "KVM_RUN; KVM says it sleeps in hlt with interrupts off: the guest is done")
    if kind is StopKind.TIMEOUT:
        return "timeout: the watchdog kicked the vCPU out of KVM_RUN because the run's time is up"
    if kind is StopKind.PAUSED:
        return "pause: the vCPU was kicked out of KVM_RUN because a pause was asked for"
    if stop is None:
        return ("kick: the watchdog interrupted KVM_RUN to look at the vCPU (halt check, "
                "timeout or pause); the guest is intact")
    return f"KVM_RUN interrupted by a signal: {getattr(stop, 'message', stop)}"
