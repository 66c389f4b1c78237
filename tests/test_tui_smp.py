"""The TUI with several vCPUs: ``t`` picks the vCPU whose registers and code
are shown; ``s``, ``n`` and ``c`` run that vCPU alone while the others stay
where they are; breakpoints (addresses in guest memory) stop any vCPU.

The guest is the SMP guest (guests/c/smp.c) at ``--smp 2``: vCPU 0 starts
at the multiboot entry, vCPU 1 waits for INIT/SIPI in the in-kernel LAPIC
until vCPU 0 sends them (then it starts in real mode at 0x8000).
"""

from __future__ import annotations

import dataclasses
import io

import pytest
from rich.console import Console

from minikvm.core.config import MachineConfig
from minikvm.hostio import BufferSink
from minikvm.machine import Machine
from minikvm.tui.app import App
from minikvm.tui.keys import parse_keys
from minikvm.tui.render import render_text
from minikvm.tui.session import Session
from minikvm.tui.state import RunStatus, TuiState

#: The real-mode trampoline the SMP guest copies below 1 MiB (SIPI vector 0x08).
TRAMPOLINE = 0x8000
#: How long vCPU 0 runs alone: long enough to send INIT, SIPI, SIPI and spin
#: in its (bounded) wait for the APs, which cannot come while it runs alone.
BSP_RUN = 1.0


@pytest.fixture
def smp_session(guests, request):
    """A Session on the SMP guest with ``vcpus`` vCPUs, closed after the test."""

    def make(vcpus: int = 2) -> Session:
        sink = BufferSink()
        config = MachineConfig(guest=str(guests / "smp.elf"), vcpus=vcpus, irqchip=True)
        machine = Machine.from_config(config, output=sink)
        session = Session(machine, guest="smp.elf", console=sink)

        def close() -> None:
            session.close()
            if not session.busy:            # a thread still in KVM_RUN keeps its VM
                machine.close()

        request.addfinalizer(close)
        return session

    return make


def counting_runs(runner) -> list[str]:
    """Record the calls of ``runner``'s entry points to KVM_RUN. The
    debugger's stepper makes its run itself (debug/stepper.py), so the
    tests compare :attr:`VcpuRunner.runs`, which every run counts, too."""
    calls: list[str] = []
    for name in ("run", "run_reason", "exits"):
        original = getattr(runner, name)

        def spy(*args, _original=original, _name=name, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)

        setattr(runner, name, spy)
    return calls


# -- without KVM: the footer and the panel title -----------------------------------------

def minimal_state(**changes) -> TuiState:
    return dataclasses.replace(TuiState(guest="smp.elf", status=RunStatus.PAUSED), **changes)


def test_the_vcpu_key_is_in_the_footer_only_when_there_is_a_choice():
    one = render_text(minimal_state(), 200, 40).splitlines()[-1]
    two = render_text(minimal_state(vcpu=1, vcpus=2), 200, 40).splitlines()[-1]
    assert "next vCPU" not in one
    assert " t  next vCPU " in two


# -- with KVM ------------------------------------------------------------------------------

@pytest.mark.kvm
def test_picking_a_parked_ap_shows_its_reset_registers_and_refuses_to_step_it(smp_session):
    session = smp_session(2)
    bsp = session.snapshot()
    assert (bsp.vcpu, bsp.vcpu_state) == (0, "runnable")
    assert session.select_vcpu(1).startswith("vCPU 1 of 2 (parked")
    ap = session.snapshot()
    assert (ap.vcpu, ap.vcpus) == (1, 2)
    assert ap.registers.values.rip == 0xFFF0 and ap.registers.values.cs == 0xF000  # reset
    assert bsp.registers.values.rip != ap.registers.values.rip
    text = render_text(ap, 120, 36)
    assert "vCPU 1/2 (parked) registers" in text
    # KVM_RUN on a parked AP would sleep until a SIPI that only vCPU 0 can send.
    calls = counting_runs(session.machine.runners[1])
    runs = session.machine.runners[1].runs
    session.run_action("step")
    assert calls == [] and session.machine.runners[1].runs == runs
    assert session.status is RunStatus.PAUSED and not session.ended
    assert session.message.startswith("vCPU 1 waits for INIT/SIPI")


@pytest.mark.kvm
def test_while_recording_the_tui_keeps_to_the_recorded_vcpu(smp_session):
    """The undo log is one vCPU's: letting another vCPU run would change
    memory behind the history's back."""
    session = smp_session(2)
    session.debugger.record()
    assert session.select_vcpu(1).startswith("recording follows this vCPU")
    assert session.snapshot().vcpu == 0
    session.debugger.record(False)
    assert session.select_vcpu(1).startswith("vCPU 1 of 2")


@pytest.mark.kvm
@pytest.mark.slow
def test_a_step_of_the_picked_ap_moves_only_its_rip(smp_session):
    session = smp_session(2)
    session.run_action("continue", timeout=BSP_RUN)    # vCPU 0 wakes the APs, then waits
    assert session.status is RunStatus.PAUSED, session.message
    bsp_rip = session.snapshot().registers.values.rip

    session.select_vcpu(1)
    ap = session.snapshot()
    assert ap.vcpu_state == "runnable"                   # the SIPI was delivered
    assert ap.registers.values.cs == TRAMPOLINE >> 4 and ap.registers.values.rip == 0
    bsp_runs = counting_runs(session.machine.runners[0])
    bsp_count = session.machine.runners[0].runs
    session.run_action("step")
    after = session.snapshot()
    assert after.registers.values.rip == 1                # 'cli' at 0x8000
    assert session.message == f"stepped 'cli' at {TRAMPOLINE:#x}"
    assert bsp_runs == [] and session.machine.runners[0].runs == bsp_count   # vCPU 0 did not run

    session.select_vcpu(0)
    assert session.snapshot().registers.values.rip == bsp_rip


@pytest.mark.kvm
@pytest.mark.slow
def test_a_breakpoint_set_on_vcpu_0_stops_the_ap_that_reaches_it(smp_session):
    session = smp_session(2)
    assert "caught by" in session.toggle_breakpoint("ap_main")
    session.run_action("continue", timeout=BSP_RUN)
    session.select_vcpu(1)
    session.run_action("continue", timeout=10)
    stop = session.last_stop
    assert stop.kind.name == "BREAKPOINT" and stop.vcpu == 1
    assert stop.rip == session.debugger.address_of("ap_main")
    assert session.message.startswith("vCPU 1: breakpoint 1 at")


@pytest.mark.kvm
@pytest.mark.slow
def test_the_t_key_cycles_through_the_vcpus(smp_session):
    session = smp_session(3)
    app = App(session, input_fd=0,
              console=Console(file=io.StringIO(), width=100, height=30, force_terminal=True))
    seen = []
    for key in parse_keys(b"ttt"):
        app.handle(key)
        seen.append(session.snapshot().vcpu)
    assert seen == [1, 2, 0]
