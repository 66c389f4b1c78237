"""How a machine runs its vCPUs: the loop of one vCPU, and several on threads.

:meth:`Machine.run` picks one of the two. Both stand on the vCPUs' runners
(only a runner calls ``KVM_RUN``) and hand every exit to
:meth:`Machine.handle_exit` -- except the commonest one, a single ``in`` or
``out``, which is read straight from the run page: while nobody listens
:func:`run_vcpu` calls the bus and builds no objects; with listeners
:func:`pio_event` builds the event ``handle_exit`` would (same rules, same
fields). :func:`next_event` is one exit of that kind: :meth:`Machine.step`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from minikvm.core.events import ExitEvent, describe_exit, lazy_pio_event, wants_words
from minikvm.core.runner import VcpuRunner
from minikvm.core.stop import Stop, StopKind
from minikvm.kvm.exits import IoIn, IoOut, read_io
from minikvm.kvm.uapi import KVM_EXIT_IO_OUT, KVM_SYNC_X86_REGS, KvmExit
from minikvm.kvm.vcpu import SYNC_RIP_INDEX

if TYPE_CHECKING:
    from minikvm.machine import Machine

__all__ = ["guest_kicks", "held_pio_event", "next_event", "pio_event", "run_all", "run_vcpu"]

_KVM_EXIT_IO = int(KvmExit.KVM_EXIT_IO)
#: The data of every one-byte ``out``, made once: an exit object for the
#: commonest exit then needs no slice of the run page and no new bytes.
_ONE_BYTE = tuple(bytes((value,)) for value in range(256))


def run_vcpu(machine: Machine, runner: VcpuRunner, max_exits: int | None,
              until: Callable[[], bool] | None) -> Stop:
    """The run loop of one vCPU (on the calling thread).

    The commonest exit -- one ``in``/``out`` -- takes a fast path: the
    port, size and data are read straight from the run page. While nobody
    listens the bus is called without building an exit object, an
    :class:`~minikvm.bus.Access` or an :class:`ExitEvent`; with listeners,
    :func:`pio_event` builds the same event :meth:`Machine.handle_exit`
    would, without decoding the page through ctypes. Both follow the rules
    of :meth:`Machine.handle_exit` (host input first, the lock, a device's
    stop request), which handles every other exit. With one vCPU the loop
    owns the lock (:meth:`DeviceLock.own
    <minikvm.core.devicelock.DeviceLock.own>`): no mutex per exit while no
    other thread asks for the devices.
    """
    listeners = machine.listeners
    pio = machine.pio
    page = runner.vcpu.page
    page_size = len(page)
    queued = machine.serial_input.queued   # host input waiting (a bytearray)
    handle = machine.handle_exit
    decode = runner.decode
    index = runner.index
    # max_exits counts the guest's exits: the machine's count, less the
    # kicks of every vCPU (an Interrupted exit is the VMM's doing).
    runners = machine.runners
    limit = None if max_exits is None else machine.exit_count - guest_kicks(runners) + max_exits
    checks = limit is not None or until is not None
    # Whether the listeners read words, worked out again when they change.
    heard: list = []
    words = False
    # Nobody listening: no event is made, so no clock is read (an ExitEvent
    # of another exit, made then, only carries the stop here). A listener
    # added while the vCPU is in such a run gets its first event with the
    # times of an earlier run.
    # One vCPU: this loop owns the devices (no mutex while nobody else
    # wants them); a loop of several vCPUs' shares them with the owner.
    devices = machine.lock
    mutex = devices.mutex
    owner = sharing = False
    exits = runner.exits(listeners)
    try:
        # Inside the try: a signal handler that raises while share() waits
        # must not leave the devices announced for ever.
        owner = devices.own()
        if not owner:
            devices.share()
            sharing = True
        for reason, direction, size, port, count, offset in exits:
            # KVM chooses size and data offset, but a size of 0 or a slice
            # out of the page would be silently wrong here: decode_exit
            # checks both (and makes such an exit Unknown).
            if (reason != _KVM_EXIT_IO or count != 1 or size == 0
                    or offset + size > page_size):
                stop = handle(decode(reason), runner, explain=wants_words(listeners),
                              capture_rip=bool(listeners)).stop
            else:
                # The devices: this loop's own while nobody else wants them
                # (it owns them: core/devicelock.py), else under the mutex.
                # busy first, then the look at wanted: Dekker's order.
                if owner:
                    devices.busy = True
                    shared = devices.wanted
                    if shared:
                        devices.busy = False
                else:
                    shared = 1
                if shared:
                    mutex.acquire()   # not ``with``: ~0.1 µs less per exit
                try:
                    if listeners:
                        if listeners != heard:
                            heard = listeners.copy()
                            words = wants_words(heard)
                        stop = held_pio_event(machine, runner, page, direction, size, port,
                                              offset, words, True).stop
                    else:
                        if queued:
                            machine.deliver_host_input()
                        # One byte (the commonest: a console, port 0x80) is read
                        # and written by index, without a slice object.
                        if direction == KVM_EXIT_IO_OUT:
                            pio.write_value(port, size, page[offset] if size == 1 else
                                            int.from_bytes(page[offset:offset + size], "little"))
                        elif size == 1:
                            page[offset] = pio.read_mapped(port, 1)[1]
                        else:
                            page[offset:offset + size] = pio.read_mapped(
                                port, size)[1].to_bytes(size, "little")
                        machine.exit_count += 1
                        # A device's stop request is rare: looked at, taken only when there.
                        stop = machine.device_stop
                        if stop is not None:
                            machine.device_stop = None
                            stop = stop.but(vcpu=index)
                finally:
                    if shared:
                        mutex.release()
                    else:
                        devices.busy = False
            if stop is not None:
                return stop  # type: ignore[return-value]
            if checks:
                if limit is not None and machine.exit_count - guest_kicks(runners) >= limit:
                    return _limit_stop(runner, max_exits)
                if until is not None and until():
                    return _until_stop(runner)
    finally:
        exits.close()
        if owner:
            devices.disown()
        elif sharing:
            devices.unshare()
    raise AssertionError("VcpuRunner.exits() ended")  # it runs until closed


def next_event(machine: Machine, runner: VcpuRunner, explain: bool,
               capture_rip: bool) -> ExitEvent:
    """Run ``runner``'s vCPU to its next exit and handle it: what
    :meth:`Machine.step` does (and the debugger's free run, exit by exit),
    a single ``in``/``out`` through :func:`pio_event`."""
    reason = runner.run_reason()
    if reason == _KVM_EXIT_IO:
        page = runner.vcpu.page
        direction, size, port, count, offset = read_io(page)
        if count == 1 and 0 < size and offset + size <= len(page):   # as in run_vcpu
            return pio_event(machine, runner, page, direction, size, port, offset, explain,
                             capture_rip)
    return machine.handle_exit(runner.decode(reason), runner, explain=explain,
                               capture_rip=capture_rip)


def pio_event(machine: Machine, runner: VcpuRunner, page: memoryview, direction: int,
              size: int, port: int, offset: int, explain: bool,
              capture_rip: bool) -> ExitEvent:
    """What :meth:`Machine.handle_exit` does with a single ``in``/``out``
    (``count`` 1), from the fields :func:`read_io` read off the run page:
    the same exit object, bus access, stop, words and RIP, the same
    listeners called in the same order -- without ctypes. ``page`` is the
    vCPU's run page (``runner.vcpu.page``, which the caller holds).

    The words are made here, before the next exit, because a device
    describes its state *now* (a UART's "LSR read: data ready" is wrong
    once the guest has read the byte). Without words the event is a
    :class:`PioEvent`: its exit and access are made from what the bus
    returned when a listener first reads them, and a listener that reads
    only ``rip`` pays for neither.
    """
    devices = machine.lock
    mutex = devices.mutex
    # DeviceLock.acquire inline (the debugger's free run comes here for
    # every exit): while no run loop owns the devices, the mutex is all.
    mutex.acquire()
    try:
        if devices.owner is None:
            return held_pio_event(machine, runner, page, direction, size, port, offset,
                                  explain, capture_rip)
    finally:
        mutex.release()
    with devices:   # a run loop owns them: announce, wait for it (core/devicelock.py)
        return held_pio_event(machine, runner, page, direction, size, port, offset, explain,
                              capture_rip)


def held_pio_event(machine: Machine, runner: VcpuRunner, page: memoryview, direction: int,
                   size: int, port: int, offset: int, explain: bool,
                   capture_rip: bool) -> ExitEvent:
    """:func:`pio_event` for a caller that holds the devices (``Machine.lock``,
    or the run loop that owns them: :func:`run_vcpu`)."""
    if machine.serial_input.queued:
        machine.deliver_host_input()
    pio = machine.pio
    # With words, the records are made now (the words speak of them);
    # without, what makes them is kept for a PioEvent.
    if direction == KVM_EXIT_IO_OUT:
        value = page[offset] if size == 1 else int.from_bytes(page[offset:offset + size],
                                                              "little")
        if explain:
            exit: IoOut | IoIn = IoOut(port, size, 1, _ONE_BYTE[value] if size == 1
                                       else value.to_bytes(size, "little"))
            access = pio.write(port, size, value, True)
        else:
            buffer = None
            mapping = pio.write_value(port, size, value)
    else:
        buffer = page[offset:offset + size]
        if explain:
            exit = IoIn(port, size, 1, buffer)
            access = pio.read(port, size, True)
            value = access.value
        else:
            mapping, value = pio.read_mapped(port, size)
        buffer[:] = value.to_bytes(size, "little")
    machine.exit_count += 1
    if capture_rip:
        # Vcpu.get_rip() without its two calls: the synced copy when the
        # device access left it current, else what the runner reads.
        vcpu = runner.vcpu
        rip = (vcpu.qwords[SYNC_RIP_INDEX] if vcpu.synced and vcpu.sync_mask & KVM_SYNC_X86_REGS
               else runner.rip())
    else:
        rip = None
    returned = runner.returned
    if explain:
        # Positional: faster than keywords.
        event: ExitEvent = ExitEvent(machine.exit_count, returned, returned - runner.started,
                                     exit, access, 1, None, "", rip, runner.index)
    else:
        # Nobody reads words: the exit and the access are made when a
        # listener first reads them, if one does (PioEvent).
        event = lazy_pio_event(machine.exit_count, returned, returned - runner.started, rip,
                               runner.index, (buffer is None, port, size, buffer, pio, mapping,
                                              value))
    device_stop = machine.device_stop
    if device_stop is not None:   # decide_stop: I/O goes on unless a device asked
        machine.device_stop = None
        event.stop = device_stop.but(vcpu=runner.index)
    if explain:
        event.description = describe_exit(exit, access, 1, event.stop)
    for listener in machine.listeners:
        listener(event)
    return event


def guest_kicks(runners: list[VcpuRunner]) -> int:
    """The kicks (``KVM_EXIT_INTR``) ``runners`` handed to their run loops so
    far: what the machine's exit count holds beyond the guest's own exits."""
    if len(runners) == 1:
        return runners[0].kicks
    return sum(runner.kicks for runner in runners)


def _limit_stop(runner: VcpuRunner, max_exits: int | None) -> Stop:
    return Stop(StopKind.EXIT_LIMIT, None, f"stopped after {max_exits} exits", runner.rip(),
                runner.index)


def _until_stop(runner: VcpuRunner) -> Stop:
    return Stop(StopKind.PAUSED, None, "the condition asked for was met", runner.rip(),
                runner.index)


def run_all(machine: Machine, max_exits: int | None, until: Callable[[], bool] | None) -> Stop:
    """Every vCPU on its own thread (vCPU 0 on the caller's) until the guest ends.

    Without the in-kernel irqchip a vCPU's ``hlt`` exit ends that vCPU's
    thread and leaves the others running (nothing could wake it); the
    machine stops when all have halted. With the irqchip a halted vCPU
    sleeps on inside ``KVM_RUN`` (another vCPU may wake it with an IPI),
    and a HALT stop comes only when the run's
    :class:`~minikvm.core.runner.HaltGroup` found *every* vCPU halted with
    interrupts off or parked waiting for INIT/SIPI; it says which.

    Any other stop on one vCPU (debug-exit, crash, reset, power-off,
    timeout, pause, a limit) pauses the others, and the first such stop
    is the machine's. An error in the VMM on any vCPU's thread pauses the
    others and is raised on the caller's thread, as with one vCPU.
    """
    decided: list[Stop | None] = []
    lock = threading.Lock()

    def end_the_others(runner: VcpuRunner, stop: Stop | None) -> None:
        with lock:
            if decided:
                return
            decided.append(stop)
        for other in machine.runners:
            if other is not runner:
                other.pause()

    def work(runner: VcpuRunner) -> Stop:
        try:
            stop = run_vcpu(machine, runner, max_exits, until)
        except BaseException:
            end_the_others(runner, None)
            raise
        if stop.kind is StopKind.HALT and runner.halt_check:
            # The run's HaltGroup decided: every vCPU is done; say which way.
            group = runner.group
            if group is not None:
                stop = stop.but(message=f"the guest halted: {group.summary()}")
            end_the_others(runner, stop)
        elif stop.kind is not StopKind.HALT:
            end_the_others(runner, stop)
        return stop

    jobs = [runner.spawn(lambda runner=runner: work(runner)) for runner in machine.runners[1:]]
    try:
        first = work(machine.runners[0])
    finally:
        for job in jobs:
            job.wait()
        for runner in machine.runners:
            runner.pause_requested = False
    for job in jobs:
        job.result()   # an error on another vCPU's thread is raised here
    stop = decided[0] if decided else None
    return stop if stop is not None else first
