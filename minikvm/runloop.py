"""How a machine runs its vCPUs: the loop of one vCPU, and several on threads.

:meth:`Machine.run` picks one of the two. Both stand on the vCPUs' runners
(only a runner calls ``KVM_RUN``) and hand every exit to
:meth:`Machine.handle_exit` -- except the commonest one, a single ``in`` or
``out`` while nobody listens, which :func:`run_vcpu` handles straight from
the run page (same rules, no objects; see its docstring).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from minikvm.core.runner import VcpuRunner
from minikvm.core.stop import Stop, StopKind
from minikvm.kvm.exits import read_io
from minikvm.kvm.uapi import KVM_EXIT_IO_OUT, KvmExit

if TYPE_CHECKING:
    from minikvm.machine import Machine

__all__ = ["run_all", "run_vcpu"]

_KVM_EXIT_IO = int(KvmExit.KVM_EXIT_IO)


def run_vcpu(machine: Machine, runner: VcpuRunner, max_exits: int | None,
              until: Callable[[], bool] | None) -> Stop:
    """The run loop of one vCPU (on the calling thread).

    While nobody listens, the commonest exit -- one ``in``/``out`` --
    takes a fast path: the port, size and data are read straight from
    the run page and the bus is called without building an exit object,
    an :class:`~minikvm.bus.Access` or an :class:`ExitEvent`. It follows
    the same rules as :meth:`Machine.handle_exit` (host input first, the lock, a
    device's stop request). Every other exit, and every exit while a
    listener is attached, goes through :meth:`Machine.handle_exit`.
    """
    listeners = machine.listeners
    lock = machine.lock
    pio = machine.pio
    page = runner.vcpu.page
    serial_input = machine.serial_input
    run_reason = runner.run_reason
    handle = machine.handle_exit
    limit = None if max_exits is None else machine.exit_count + max_exits
    while True:
        if listeners:
            stop = handle(runner.run(), runner, explain=True, capture_rip=True).stop
        else:
            reason = run_reason()
            fast = False
            if reason == _KVM_EXIT_IO:
                direction, size, port, count, offset = read_io(page)
                fast = count == 1
            if fast:
                with lock:
                    if serial_input.waiting:
                        machine.deliver_host_input()
                    if direction == KVM_EXIT_IO_OUT:
                        pio.write_value(port, size, int.from_bytes(
                            page[offset:offset + size], "little"))
                    else:
                        page[offset:offset + size] = pio.read_value(
                            port, size).to_bytes(size, "little")
                    machine.exit_count += 1
                    device_stop, machine.device_stop = machine.device_stop, None
                stop = None if device_stop is None else device_stop.but(vcpu=runner.index)
            else:
                stop = handle(runner.decode(reason), runner, explain=False).stop
        if stop is not None:
            return stop  # type: ignore[return-value]
        if limit is not None and machine.exit_count >= limit:
            return _limit_stop(runner, max_exits)
        if until is not None and until():
            return _until_stop(runner)

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
