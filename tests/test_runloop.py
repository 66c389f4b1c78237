"""The run loop (``minikvm/runloop.py``): what ``Machine.run`` counts and stops on."""

from __future__ import annotations

import pytest

from minikvm.cli.snapshot_options import GuestExits
from minikvm.machine import Machine, StopKind

pytestmark = pytest.mark.kvm

PORTLOOP_COUNT = 0x1000 + 4   # where guests/asm/portloop.S keeps how many times to write


def _portloop(guests, writes: int) -> Machine:
    machine = Machine()
    machine.load_flat(guests / "portloop.bin", 0x1000)
    machine.memory.write_u32(PORTLOOP_COUNT, writes)
    return machine


def test_max_exits_counts_the_guests_exits_not_the_vmms_kicks(guests):
    """A kick waiting before the run (``immediate_exit``) makes the first
    ``KVM_RUN`` an ``Interrupted`` exit: the machine handles it, but the
    limit of 5 is still 5 port writes by the guest."""
    with _portloop(guests, 100) as machine:
        machine.vcpu.kick()
        stop = machine.run(timeout=30, max_exits=5)
        assert stop.kind is StopKind.EXIT_LIMIT
        assert machine.pio.unclaimed_count == 5     # port 0x80: nobody claims it
        assert machine.exit_count == 6 and machine.runner.kicks == 1


def test_guest_exits_stops_after_the_guests_exits_without_a_listener(guests):
    """``--snapshot-after-exits``' counter: the same count as ``max_exits``,
    and no listener (the run keeps its fast path)."""
    with _portloop(guests, 100) as machine:
        machine.vcpu.kick()
        counted = GuestExits(machine, 7)
        stop = machine.run(timeout=30, until=counted.reached)
        assert stop.kind is StopKind.PAUSED and counted.count == 7
        assert machine.pio.unclaimed_count == 7 and machine.listeners == []


def test_a_run_nested_in_an_exit_handler_leaves_the_loop_kickable(guests):
    """A device that runs the vCPU from its handler (ACPI S3 completes the
    sleeping ``out`` with ``VcpuRunner.finish()``) must hand the vCPU's
    thread back to the run loop: the guest then spins without exits, and
    only the watchdog's signal can end the run at the timeout."""
    from minikvm.core.runner import Job
    from minikvm.devices.base import Device

    class Finisher(Device):
        name = "finisher"

        def write(self, offset: int, size: int, value: int) -> None:
            machine.runner.finish()

    code = bytes([0xB0, 0x01, 0xE6, 0x80,   # mov al, 1; out 0x80, al
                  0xFA, 0xEB, 0xFE])        # cli; jmp $
    with Machine() as machine:
        machine.add_pio_device(0x80, 1, Finisher())
        machine.load_flat(code, 0x1000)
        job = Job(lambda: machine.run(timeout=0.2), "test-run")
        assert job.wait(10), "the watchdog's kick did not reach the vCPU's thread"
        assert job.result().kind is StopKind.TIMEOUT


def test_a_timeout_that_lands_in_an_exit_handler_survives_its_completion_run(guests):
    """The timeout's kick arrives while a device handles an exit, and the
    handler then completes the instruction itself (``finish()``, as ACPI S3
    does after its sleep): that run must not use the kick up. The watchdog
    kicks only once for a timeout, and without the irqchip nothing else
    would ever end a guest that spins without exits."""
    import time

    from minikvm.core.runner import Job
    from minikvm.devices.base import Device

    class SlowFinisher(Device):
        name = "slow-finisher"

        def write(self, offset: int, size: int, value: int) -> None:
            time.sleep(0.15)             # the run's timeout (0.05 s) fires meanwhile
            machine.runner.finish()

    code = bytes([0xB0, 0x01, 0xE6, 0x80,   # mov al, 1; out 0x80, al
                  0xFA, 0xEB, 0xFE])        # cli; jmp $
    with Machine(irqchip=False) as machine:
        machine.add_pio_device(0x80, 1, SlowFinisher())
        machine.load_flat(code, 0x1000)
        job = Job(lambda: machine.run(timeout=0.05), "test-run")
        try:
            assert job.wait(5), "the timeout was swallowed by the handler's completion run"
        finally:
            machine.pause()              # frees the thread if the assertion failed
            job.wait(5)
        assert job.result().kind is StopKind.TIMEOUT


def test_a_kvm_run_that_fails_raises_its_errno_out_of_the_run_loop(guests):
    """A ``KVM_RUN`` that fails other than by a kick (EINTR) or an INIT
    (EAGAIN) ends ``Machine.run`` with a ``KvmError`` naming the ioctl and
    its errno: here EINVAL, for a register set KVM does not know asked for
    in ``kvm_valid_regs`` (kvm_arch_vcpu_ioctl_run, arch/x86/kvm/x86.c)."""
    import errno

    from minikvm.kvm.errors import KvmError

    with _portloop(guests, 100) as machine:
        machine.vcpu.run_page.kvm_valid_regs = 1 << 10
        with pytest.raises(KvmError, match="KVM_RUN") as raised:
            machine.run(timeout=30)
        assert raised.value.errno == errno.EINVAL
        assert machine.exit_count == 0 and machine.lock.owner is None
