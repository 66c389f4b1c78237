"""Single-stepping: one guest instruction per step, registers as the instruction says.

The guest ``guests/debug/steps64.S`` is a straight line of 64-bit
instructions; capstone's decoding of its bytes is the specification of the
RIP sequence, and each instruction's effect is checked on the registers
captured after its step.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from minikvm.core.board import ExitStatus
from minikvm.debug.debugger import Debugger, ExitFilter
from minikvm.debug.events import StepRecord
from minikvm.debug.disasm import disassemble
from minikvm.guestbuild import assemble, tools_available
from minikvm.kvm.uapi import kvm_sregs
from minikvm.machine import Machine, StopKind

pytestmark = [pytest.mark.kvm,
              pytest.mark.skipif(not tools_available(), reason="needs binutils (as, ld)")]

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "tests" / "build" / "debug"
ZF, IF = 1 << 6, 1 << 9


@pytest.fixture(scope="module")
def steps64() -> Path:
    return assemble(ROOT / "guests" / "debug" / "steps64.S", BUILD).elf


@pytest.fixture(scope="module")
def loop64() -> Path:
    return assemble(ROOT / "guests" / "debug" / "loop64.S", BUILD).elf


@pytest.fixture
def session(steps64):
    output: list[bytes] = []
    with Machine(output=output.append) as machine:
        machine.load_elf(steps64)
        debugger = Debugger(machine)
        debugger.set_registers(rdx=0x1234, rdi=0, rsi=0)
        yield machine, debugger, output
        debugger.close()


def expected_instructions(machine, debugger):
    """capstone's view of the guest from _start to its hlt."""
    start = debugger.address_of("_start")
    listing = disassemble(machine.memory.read(start, 0x38), start, 64)
    end = next(i for i, insn in enumerate(listing) if insn.mnemonic == "hlt")
    return listing[:end + 1]


def test_rip_sequence_equals_capstone_decoding(session):
    machine, debugger, _ = session
    expected = expected_instructions(machine, debugger)
    records = []
    for _ in range(len(expected) + 5):
        records.append(debugger.step_instruction())
        if records[-1].stop is not None:
            break
    assert [r.old_rip for r in records] == [i.address for i in expected]
    assert [r.new_rip for r in records] == [i.next_address for i in expected]


def test_registers_after_each_step_match_the_instruction(session):
    machine, debugger, output = session
    by_text = {}
    for insn in expected_instructions(machine, debugger):
        record = debugger.step_instruction()
        assert record.old_rip == insn.address
        by_text[insn.text] = record
        r = record.after
        match insn.text:
            case "mov eax, 5":
                assert r.rax == 5 and record.changed == ("rax", "rip")
            case "mov ebx, 7":
                assert r.rbx == 7
            case "add rax, rbx":
                assert r.rax == 12
            case "lea rcx, [rax + rbx*2 + 3]":
                assert r.rcx == 29 and "rflags" not in record.changed  # lea sets no flags
            case "shl rcx, 4":
                assert r.rcx == 29 << 4
            case "xor edx, edx":
                assert r.rdx == 0 and r.rflags & ZF
            case "mov al, 0x41":
                assert r.rax == 0x41
            case "out 0xe9, al":
                assert record.changed == ("rip",)
                assert [e.reason for e in record.exits] == ["IO_OUT"]
                assert record.exits[0].value == 0x41 and record.exits[0].device == "debugcon"
                assert output == [b"A"]   # the device saw the byte during the step
            case "push rcx":
                assert r.rsp == record.before.rsp - 8
                assert machine.memory.read_u64(r.rsp) == 29 << 4
            case "pop rsi":
                assert r.rsi == 29 << 4 and r.rsp == record.before.rsp + 8
            case "mov r8d, 0xd0000000":
                assert r.r8 == 0xD000_0000
            case "mov edi, dword ptr [r8]":
                assert r.rdi == 0xFFFF_FFFF   # nobody decodes it: the bus floats to all-ones
                assert [e.reason for e in record.exits] == ["MMIO_READ"]
            case "dec rbx":
                assert r.rbx == 6
            case "cli":
                assert not r.rflags & IF
            case "hlt":
                assert record.stop is not None and record.stop.kind is StopKind.HALT
    store = by_text["mov qword ptr [rip + 0x15], rax"]
    assert store.changed == ("rip",)
    assert machine.memory.read_u64(debugger.address_of("data")) == 0x41


def test_changed_registers_reports_the_last_step(session):
    _, debugger, _ = session
    debugger.step_instruction()
    assert debugger.changed_registers() == ("rax", "rip")


def test_step_count_stops_early_when_the_guest_halts(session):
    _, debugger, _ = session
    records = debugger.step(100)
    assert records[-1].stop is not None and len(records) < 100
    assert records[-1].stop.kind is StopKind.HALT


def test_step_exit_runs_to_the_next_vm_exit(session):
    _, debugger, output = session
    first = debugger.step_exit(timeout=10)
    assert first.kind is StopKind.EXIT_MATCHED and first.event.reason == "IO_OUT"
    assert output == [b"A"]
    second = debugger.step_exit(timeout=10)
    assert second.event.reason == "MMIO_READ"
    third = debugger.step_exit(timeout=10)
    assert third.kind is StopKind.HALT
    assert third.finished and third.status == ExitStatus.OK   # the machine's own stop
    assert third.event.reason == "HLT" and third.steps == 0


def test_cont_until_an_exit_filter_matches(session):
    _, debugger, _ = session
    stop = debugger.cont(until=ExitFilter(reason="MMIO_READ", address=0xD000_0000), timeout=10)
    assert stop.kind is StopKind.EXIT_MATCHED
    assert stop.event.exit.address == 0xD000_0000
    assert debugger.registers().rdi == 0xFFFF_FFFF


def test_exit_filter_fields():
    from minikvm.kvm.exits import IoOut, MmioWrite
    from minikvm.machine import ExitEvent
    out = ExitEvent(1, 0.0, 0.0, IoOut(0xE9, 1, 1, b"A"))
    mmio = ExitEvent(2, 0.0, 0.0, MmioWrite(0xD000_0010, 4, b"\0\0\0\0"))
    assert ExitFilter(reason="IO")(out) and ExitFilter(port=0xE9)(out)
    assert not ExitFilter(port=0x80)(out) and not ExitFilter(reason="MMIO")(out)
    assert ExitFilter(address=0xD000_0012)(mmio) and not ExitFilter(address=0xD000_0014)(mmio)
    assert ExitFilter()(out) and ExitFilter()(mmio)


def test_disassembly_around_rip_uses_the_elf_symbols(session):
    _, debugger, _ = session
    for _ in range(8):
        debugger.step_instruction()
    assert debugger.bitness() == 64
    listing = debugger.disassemble(count=2, before=2)
    assert [i.address for i in listing][2] == debugger.rip
    assert listing[2].symbol == "after_out" and listing[2].text.startswith("mov qword ptr")
    assert listing[0].symbol.startswith("_start+")


def test_set_registers_changes_what_the_guest_runs(session):
    _, debugger, _ = session
    start = debugger.address_of("_start")
    debugger.set_registers(rip=start + 5)   # skip mov eax, 5
    record = debugger.step_instruction()
    assert record.old_rip == start + 5 and record.after.rbx == 7


def test_a_step_after_set_registers_starts_from_the_registers_set(session):
    """The stepper starts a step from the stop the last step made
    (GuestView.last_step) only while nothing changed the registers since."""
    _, debugger, _ = session
    start = debugger.address_of("_start")
    assert debugger.step_instruction().new_rip == start + 5   # mov eax, 5
    debugger.set_registers(rip=start, rax=0)   # run it again
    record = debugger.step_instruction()
    assert (record.old_rip, record.before.rax, record.after.rax) == (start, 0, 5)
    assert record.changed == ("rax", "rip")


def _patch_count(machine, debugger, passes):
    machine.memory.write_u64(debugger.address_of("count"), passes)


def test_pause_from_another_thread_stops_a_free_running_guest(loop64):
    with Machine() as machine:
        machine.load_elf(loop64)
        debugger = Debugger(machine)
        _patch_count(machine, debugger, 1 << 40)   # never ends by itself
        timer = threading.Timer(0.3, debugger.pause)
        timer.start()
        started = time.monotonic()
        stop = debugger.cont(timeout=20)
        timer.join()
        assert stop.kind is StopKind.PAUSED
        assert time.monotonic() - started < 10
        assert debugger.address_of("loop") <= stop.rip < debugger.address_of("done")


@pytest.mark.slow
def test_pause_also_stops_a_stepping_run(loop64):
    with Machine() as machine:
        machine.load_elf(loop64)
        debugger = Debugger(machine, support=_no_debug_registers())
        _patch_count(machine, debugger, 1 << 40)
        debugger.watch(0x9100, 8)   # never written; served by stepping and comparing
        timer = threading.Timer(0.3, debugger.pause)
        timer.start()
        stop = debugger.cont(timeout=20)
        timer.join()
        assert stop.kind is StopKind.PAUSED and stop.steps > 0


@pytest.mark.slow
def test_timeout_stops_a_guest_that_never_exits(loop64):
    with Machine() as machine:
        machine.load_elf(loop64)
        debugger = Debugger(machine)
        _patch_count(machine, debugger, 1 << 40)
        stop = debugger.cont(timeout=0.3)
        assert stop.kind is StopKind.TIMEOUT
        assert stop.status == ExitStatus.TIMEOUT and stop.ended   # as `minikvm run` exits


def test_max_steps_limits_a_stepping_run(loop64):
    with Machine() as machine:
        machine.load_elf(loop64)
        debugger = Debugger(machine, support=_no_debug_registers())
        debugger.break_at(0x9000)
        stop = debugger.cont(max_steps=5, timeout=20)
        assert stop.kind is StopKind.STEP_LIMIT and stop.steps == 5
        assert debugger.steps == 5


def _no_debug_registers():
    from minikvm.debug.probe import probe_debug_support
    return probe_debug_support().without("hw_breakpoints", "sw_breakpoints", "hw_write_watch",
                                         "hw_rw_watch")


def test_with_the_irqchip_a_halt_with_interrupts_off_ends_a_free_run(steps64):
    # hlt waits inside KVM with the in-kernel irqchip; nothing exits to us.
    with Machine(irqchip=True, output=lambda data: None) as machine:
        machine.load_elf(steps64)
        debugger = Debugger(machine)
        stop = debugger.cont(timeout=20)
        assert stop.kind is StopKind.HALT


def test_with_the_irqchip_a_stepped_halt_with_interrupts_off_stops(steps64):
    with Machine(irqchip=True, output=lambda data: None) as machine:
        machine.load_elf(steps64)
        debugger = Debugger(machine)
        records = debugger.step(100)
        assert records[-1].stop is not None and records[-1].stop.kind is StopKind.HALT
        assert records[-1].old_rip == debugger.address_of("after_out") + 0x16   # the hlt


@pytest.mark.kvm
def test_machine_run_after_stepping_runs_freely_to_the_end(guests):
    from minikvm.machine import Machine, StopKind
    from minikvm.debug import Debugger
    output = []
    with Machine(output=output.append) as machine:
        machine.load_flat(guests / "hello.bin", 0x1000)
        debugger = Debugger(machine)
        debugger.break_at(0x1011, "hardware")
        debugger.step(3)
        assert machine.runner.guest_debug[0] != 0      # single-stepping was on
        stop = machine.run(timeout=30)   # a free run turns guest debugging off
        assert machine.runner.guest_debug[0] == 0
        assert stop.kind is StopKind.HALT
        assert b"".join(output).endswith(b"Python!\n")
        debugger.close()


# -- the hlt check after one-byte steps, through the view's TLB ---------------------------------

NOPS_THEN_HLT = bytes([0x90, 0x90, 0xF4])     # nop; nop; hlt
FORGED_FRAME = 0x12_0000                      # RAM nothing else uses


@pytest.fixture
def nops():
    with Machine(output=lambda data: None) as machine:
        machine.load_flat(NOPS_THEN_HLT, 0x1000, mode="long")
        debugger = Debugger(machine)
        yield machine, debugger
        debugger.close()


def test_one_byte_steps_check_for_hlt_with_one_page_walk(nops, monkeypatch):
    machine, debugger = nops
    walks = []
    walk = debugger.view._walk
    monkeypatch.setattr(debugger.view, "_walk", lambda *args: walks.append(1) or walk(*args))
    first, second = debugger.step_instruction(), debugger.step_instruction()
    assert first.stop is None and second.stop is None
    assert len(walks) == 1                              # the second nop was a TLB hit
    last = debugger.step_instruction()                  # the hlt: confirmed by a fresh walk
    assert last.stop is not None and last.stop.kind is StopKind.HALT
    assert last.old_rip == 0x1002


def test_a_stale_tlb_entry_never_invents_a_hlt(nops):
    machine, debugger = nops
    view = debugger.view
    machine.memory.write(FORGED_FRAME, b"\xf4")
    region = machine.memory.region_at(FORGED_FRAME)
    cr3, mode = view.paging_context()
    # As if the guest had moved its code page since: the cached frame holds a hlt.
    view.tlb.fill((cr3, mode, 0x1000 >> 12),
                  (FORGED_FRAME, region.mapping, FORGED_FRAME - region.guest_phys_addr))
    record = debugger.step_instruction()                # the nop at 0x1000
    assert record.stop is None and record.exits == ()


def test_an_exit_met_during_a_step_has_the_time_of_its_own_kvm_run(session):
    machine, debugger, output = session
    events = []
    machine.listeners.append(events.append)
    out_rip = debugger.address_of("after_out") - 2
    while debugger.rip != out_rip:
        debugger.step_instruction()
    before = time.monotonic()
    record = debugger.step_instruction()                # out 0xe9: an exit inside the step
    assert [event.reason for event in record.exits] == ["IO_OUT"]
    event = events[-1]
    assert before <= event.time - event.guest_time <= event.time <= time.monotonic()


# -- the hot path: a plain step made in place (debug/stepper.py) ---------------------------------


def as_seen(record: StepRecord) -> tuple:
    """Everything a reader of a step record can look at."""
    return (bytes(record.before), bytes(record.after), record.old_rip, record.new_rip,
            record.changed, record.registers, record.values_before, record.values_after,
            record.pc, record.new_pc, record.exits, record.stop, record.hit)


def test_a_plain_step_record_reads_as_the_one_init_makes(nops):
    machine, debugger = nops
    record = debugger.step_instruction()                # the first nop: the hot path
    made = StepRecord(record.values_before, record.values_after, record.pc, record.new_pc,
                      view=debugger.view)
    assert as_seen(record) == as_seen(made)
    assert record.changed == ("rip",) and record.new_pc == record.pc + 1 == 0x1001
    assert record.after is debugger.view.regs()         # one structure for the stop, as before
    assert debugger.view.values() is record.values_after


def test_a_one_byte_step_on_the_page_of_the_last_finds_its_byte_in_the_last_translation(
        nops, monkeypatch):
    """The second nop's hlt check hits the translation the first one left
    (``Tlb.last``): no TLB look-up and no walk (its key and the run page's
    bytes must agree, or every step would go the long way)."""
    machine, debugger = nops
    view = debugger.view
    debugger.step_instruction()                         # the first nop fills tlb.last
    calls = []
    for name in ("_tlb_entry", "cached_byte"):
        original = getattr(view, name)
        monkeypatch.setattr(view, name, lambda *a, _o=original: calls.append(a) or _o(*a))
    hits = view.tlb.hits
    assert debugger.step_instruction().stop is None     # the second nop
    assert calls == [] and view.tlb.hits == hits + 1


def test_a_plain_step_tells_the_view_through_last_step_alone(nops):
    """The hot path stores one tuple in the view; every question about the
    stop (registers, values, pc, the any-thread last_regs) answers from it."""
    machine, debugger = nops
    view = debugger.view
    record = debugger.step_instruction()                # the first nop
    runs = debugger.runner.runs
    assert view.last_step == (runs, record.values_after, 0x1001)
    assert view.last_regs.rip == 0x1001                  # before any question adopts it
    assert view.current and view.pc == 0x1001
    assert view.values() is record.values_after
    assert view.regs().rip == 0x1001 == machine.vcpu.get_regs().rip


def test_a_kick_before_a_plain_step_is_taken_and_the_step_still_runs_one_instruction(nops):
    """A kick waiting in ``immediate_exit`` ends the step's own ``KVM_RUN``
    with EINTR (the stepper's inline run, the long way out): the step runs
    again and still executes exactly one instruction."""
    machine, debugger = nops
    vcpu, runner = machine.vcpu, debugger.runner
    debugger.step_instruction()
    runs = runner.runs
    vcpu.kick()                          # this thread: no signal, only immediate_exit
    record = debugger.step_instruction()
    assert (record.pc, record.new_pc) == (0x1001, 0x1002)
    assert runner.runs == runs + 2                      # the kicked run, then the step's
    assert vcpu.run_page.immediate_exit == 0
    assert vcpu._thread_id is None                      # no kick signals this thread after the step


def test_a_failed_step_run_raises_and_leaves_the_vcpu_unheld(nops, monkeypatch):
    """``KVM_RUN`` failing with another errno than EINTR/EAGAIN is the
    caller's error (KvmError naming the ioctl), and the thread is let go."""
    import errno

    from minikvm.kvm.errors import KvmError

    machine, debugger = nops
    debugger.step_instruction()

    def fail():
        raise OSError(errno.EFAULT, "Bad address")
    monkeypatch.setattr(debugger.stepper, "_enter", fail)
    runs = debugger.runner.runs
    with pytest.raises(KvmError, match="KVM_RUN"):
        debugger.step_instruction()
    assert machine.vcpu._thread_id is None and debugger.runner.runs == runs


def test_ctrl_c_in_a_step_run_leaves_the_vcpu_unheld(nops, monkeypatch):
    """A signal handler's exception comes out of the ioctl instead of
    EINTR (Ctrl-C's KeyboardInterrupt): later kicks must not signal this
    thread, which no longer runs the vCPU."""
    machine, debugger = nops
    debugger.step_instruction()

    def interrupted():
        raise KeyboardInterrupt
    monkeypatch.setattr(debugger.stepper, "_enter", interrupted)
    with pytest.raises(KeyboardInterrupt):
        debugger.step_instruction()
    assert machine.vcpu._thread_id is None


def test_an_eagain_from_a_step_run_runs_again(nops, monkeypatch):
    """EAGAIN (an INIT woke a parked vCPU: no exit) is entered again, as
    VcpuRunner.run_reason does, and the step ends one instruction on."""
    import errno

    machine, debugger = nops
    debugger.step_instruction()
    runs = debugger.runner.runs

    def woken():
        monkeypatch.undo()
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")
    monkeypatch.setattr(debugger.stepper, "_enter", woken)
    record = debugger.step_instruction()
    assert (record.pc, record.new_pc) == (0x1001, 0x1002)
    assert debugger.runner.runs == runs + 2


def test_a_translation_remembered_for_another_cr3_is_not_used_for_the_hlt_check(nops):
    """As if the guest had switched address spaces since the last one-byte
    step: the translation the TLB used last says the code page is a page
    of nops, but for another CR3. The hlt is found all the same."""
    machine, debugger = nops
    view = debugger.view
    debugger.step_instruction()
    assert debugger.step_instruction().stop is None    # the second nop: tlb.last is the code page
    control, page, _, _ = view.tlb.last                 # control: the run page's bytes CR0-EFER
    forged = bytearray(control)
    at = kvm_sregs.cr3.offset - kvm_sregs.cr0.offset
    cr3 = int.from_bytes(control[at:at + 8], "little")
    forged[at:at + 8] = (cr3 ^ 0x1000).to_bytes(8, "little")   # only CR3 differs
    machine.memory.write(FORGED_FRAME, b"\x90" * 0x1000)
    region = machine.memory.region_at(FORGED_FRAME)
    base = FORGED_FRAME - region.guest_phys_addr - (page << 12)
    view.tlb.entries.clear()
    view.tlb.last = (bytes(forged), page, region.mapping, base)
    record = debugger.step_instruction()                # the hlt at 0x1002
    assert record.old_rip == 0x1002
    assert record.stop is not None and record.stop.kind is StopKind.HALT


#: movabs rdi, 0x100c; mov al, 0xf4; stosb (at 0x100c: writes 0xf4 over
#: itself); hlt -- a one-byte step that leaves 0xf4 behind where it ran.
STOSB_OVER_ITSELF = (bytes([0x48, 0xBF]) + (0x100C).to_bytes(8, "little")
                     + bytes([0xB0, 0xF4, 0xAA, 0xF4]))


@pytest.mark.parametrize("irqchip", [False, True], ids=["no-irqchip", "irqchip"])
def test_a_stosb_that_writes_0xf4_over_itself_is_not_a_stepped_hlt(irqchip):
    """The hlt check asks what ran: with the irqchip the byte was read
    before the step (0xaa), without it a 0xf4 read after the step is not
    taken for a hlt when a general-purpose register moved (RDI here)."""
    with Machine(irqchip=irqchip, output=lambda data: None) as machine:
        machine.load_flat(STOSB_OVER_ITSELF, 0x1000, mode="long")
        debugger = Debugger(machine)
        debugger.step(2)
        record = debugger.step_instruction()            # the stosb
        assert (record.pc, record.new_pc) == (0x100C, 0x100D)
        assert machine.memory.read(0x100C, 1) == b"\xf4"
        assert record.stop is None and record.exits == ()
        last = debugger.step_instruction()              # the hlt after it
        assert last.pc == 0x100D and last.stop is not None and last.stop.kind is StopKind.HALT
        debugger.close()


@pytest.fixture
def irqchip_debugger():
    """A debugger on a machine with the in-kernel irqchip, where steps let
    interrupts into a hlt (KVM_GUESTDBG_BLOCKIRQ offered), at code the test
    writes at 0x1000 in long mode."""
    with Machine(irqchip=True, output=lambda data: None) as machine:
        machine.load_flat(b"\x90", 0x1000, mode="long")
        debugger = Debugger(machine)
        if not debugger.stepper.wake_hlts:
            pytest.skip("this KVM offers no KVM_GUESTDBG_BLOCKIRQ: steps never let interrupts in")
        yield machine, debugger
        debugger.close()


@pytest.mark.parametrize("code, watched", [
    (b"\xcf", True),                                  # iret
    (b"\x48\xcf", True),                              # iretq
    (b"\x66\xcf", True),                              # iret with the operand-size prefix
    (b"\x48\x90", False),                             # REX.W nop: a prefix, then no iret
    (b"\x90", False),
], ids=["iret", "iretq", "66-iret", "rex-nop", "nop"])
def test_with_the_irqchip_an_iret_is_stepped_under_a_watchdog_of_its_own(
        irqchip_debugger, monkeypatch, code, watched):
    """kvm-pvm may put the vCPU back to sleep after an iret that returns
    to a hlt's successor; outside a run such a step gets a watchdog
    (Stepper._watched). The iret is known by its first byte, and after a
    prefix by its second."""
    machine, debugger = irqchip_debugger
    machine.memory.write(0x1001, b"\x90" + code)        # nop; nop; the code
    debugger.step(2)                                    # the second nop leaves Tlb.last
    seen, looked_up = [], []
    monkeypatch.setattr(debugger.stepper, "_watched", lambda step: seen.append(step) or "watched")
    entry = debugger.view._tlb_entry
    monkeypatch.setattr(debugger.view, "_tlb_entry", lambda *a: looked_up.append(a) or entry(*a))
    result = debugger.stepper.step()
    assert (result == "watched") is watched and len(seen) == int(watched)
    assert looked_up == []                              # through the last translation alone


def test_with_the_irqchip_a_step_reads_its_instruction_once_before_it_runs(
        irqchip_debugger, monkeypatch):
    """The first byte, read before the run, is also the hlt check's: a
    one-byte step reads one byte, a prefixed instruction two (is an iret
    behind the prefix?), and nothing is read after either."""
    machine, debugger = irqchip_debugger
    machine.memory.write(0x1000, b"\x90\x48\x89\xc0\xf4")   # nop; mov rax, rax; hlt
    view = debugger.view
    reads = []
    original = view.current_byte
    monkeypatch.setattr(view, "current_byte", lambda a: reads.append(a) or original(a))
    assert debugger.step_instruction().new_pc == 0x1001
    assert reads == [0x1000]
    assert debugger.step_instruction().new_pc == 0x1004
    assert reads == [0x1000, 0x1001, 0x1002]
    last = debugger.step_instruction()                  # the hlt, IF clear: the end
    assert last.stop is not None and last.stop.kind is StopKind.HALT
    assert reads == [0x1000, 0x1001, 0x1002, 0x1004]


def test_an_exit_met_during_a_step_nobody_listens_to_has_the_time_of_its_own_run(session):
    """Without a listener a step reads no clock after its run; an exit met
    on the way is stamped when the step finds it, inside its own run."""
    machine, debugger, output = session
    assert machine.listeners == []
    out_rip = debugger.address_of("after_out") - 2
    while debugger.rip != out_rip:
        debugger.step_instruction()
    before = time.monotonic()
    record = debugger.step_instruction()                # out 0xe9: an exit inside the step
    after = time.monotonic()
    (event,) = record.exits
    assert event.reason == "IO_OUT"
    assert before <= event.time - event.guest_time <= event.time <= after


def test_a_hlt_stepped_with_nobody_listening_makes_an_event_of_its_own_time():
    """The plain step reads no clock after its run while nobody listens; the
    HLT exit the stepper makes of a stepped ``hlt`` still gets the time of
    that run (not the one before it)."""
    with Machine() as machine:
        machine.load_flat(bytes.fromhex("9090fa" "f4"), 0x1000)   # nop; nop; cli; hlt
        debugger = Debugger(machine)
        for _ in range(3):
            debugger.step_instruction()
        record = debugger.step_instruction()
        assert record.stop is not None and record.stop.kind is StopKind.HALT
        event = record.exits[-1]
        assert event.time >= event.guest_time >= 0


def test_a_pause_after_an_in_shows_it_completed():
    """A pause lands, more often than not, right after an ``in`` the device
    answered; the stop must show it done (AL stored, RIP past it), as every
    other stop at an I/O exit does: the next step is the instruction after."""
    code = bytes.fromhex("bafd03" "31c0" "ec" "ebf8")   # mov dx,0x3fd; xor ax,ax; in al,dx; jmp
    in_al_dx = 0x1005
    with Machine() as machine:
        machine.load_flat(code, 0x1000)
        debugger = Debugger(machine)
        for _ in range(8):
            timer = threading.Timer(0.01, debugger.pause)
            timer.start()
            stop = debugger.cont(timeout=20)
            timer.join()
            assert stop.kind is StopKind.PAUSED
            record = debugger.step_instruction()
            if record.old_rip == in_al_dx:   # paused before it ran: the step runs it
                assert record.exits, "the in had been answered but not completed"
