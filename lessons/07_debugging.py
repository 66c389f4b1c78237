"""Lesson 07: single-stepping, breakpoints and watchpoints.

Run it: ``python lessons/07_debugging.py`` (``--quiet``: checkpoints only).
Exercise: ``lessons/exercises/07_dr7.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

from _common import LESSONS_DIR, ROOT, Lesson, run_lesson

from minikvm.debug.breakpoints import DR6_B, DR6_BS, DR7_FIXED, decode_dr7
from minikvm.core.stop import Stop, StopKind
from minikvm.debug.debugger import Debugger
from minikvm.debug.disasm import disassemble
from minikvm.guestbuild import assemble
from minikvm.kvm.exits import Debug, Hlt
from minikvm.kvm.host import detect_host
from minikvm.kvm.uapi import KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP, KVM_GUESTDBG_USE_HW_BP
from minikvm.machine import Machine, dispatch_exit

STEPS64 = ROOT / "guests" / "debug" / "steps64.S"


def build_steps64() -> bytes:
    """``guests/debug/steps64.S`` assembled into an ELF that keeps its symbols
    (in lessons/build/, which git ignores), linked at 0x1000."""
    return assemble(STEPS64, LESSONS_DIR / "build" / "07", bits=64).elf.read_bytes()


def said(stop: Stop) -> str:
    """A stop in the lesson's words: its kind, or ``guest-stopped`` when the
    guest itself ended (halt, debug-exit, crash: the stop has a status)."""
    return "guest-stopped" if stop.ended else stop.kind.value


def main(argv: Sequence[str] | None = None) -> int:
    lesson = Lesson("07", "Single-stepping, breakpoints and watchpoints", argv)
    lesson.narrate("""
        A VMM sees the guest only at exits. A *debugger* wants more: stop after every
        instruction, stop at an address, stop when a variable changes. KVM offers the tools a
        hardware debugger would have, through `KVM_SET_GUEST_DEBUG`: single-stepping (KVM
        sets the trap flag behind the guest's back and catches the debug exception, `#DB`;
        `__kvm_set_rflags` and `kvm_get_rflags` in `arch/x86/kvm/x86.c` add and hide TF),
        and the CPU's four *debug address registers* DR0-DR3 with their control register DR7
        (Intel SDM vol. 3B, chapter 17). Each debug event comes back as `KVM_EXIT_DEBUG`.

        The guest is `guests/debug/steps64.S`: a straight line of 64-bit instructions with
        known effects, an `out` in the middle (label `after_out` follows it) and a store to
        the quadword `data`.
    """)
    elf = build_steps64()
    with Machine() as machine:
        image = machine.load_elf(elf)
        symbols = {name: image.symbols.lookup(name).address
                   for name in ("_start", "after_out", "data")}
        code = machine.memory.read(symbols["_start"], symbols["data"] - symbols["_start"])
    listing = disassemble(code, symbols["_start"], 64, None,
                          lambda a: {v: k for k, v in symbols.items()}.get(a, ""))
    listing = listing[:next(i for i, insn in enumerate(listing) if insn.mnemonic == "hlt") + 1]
    lesson.block("guests/debug/steps64.S, as capstone decodes it (long mode, at 0x1000):\n"
                 + "\n".join(str(insn) for insn in listing))

    # -- 1. single-step by hand ------------------------------------------------------------
    lesson.section("1. Single-stepping by hand: KVM_GUESTDBG_SINGLESTEP")
    lesson.code("""
        machine.vcpu.set_guest_debug(KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP)
        exit = machine.vcpu.run()     # Debug(exception=1, pc=<next instruction>, ...)
    """)
    with Machine() as machine:
        machine.load_elf(elf)
        vcpu = machine.vcpu
        vcpu.set_guest_debug(KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP)
        pcs = [symbols["_start"]]
        for _ in range(4):
            exit = vcpu.run()
            assert isinstance(exit, Debug), exit
            pcs.append(exit.pc)
            lesson.result(f"step {pcs[-2]:#x} -> {exit.pc:#x}",
                          f"#DB (exception {exit.exception}), DR6.BS "
                          f"{'set' if exit.dr6 & DR6_BS else 'clear'}")
        rax, rbx = vcpu.get_regs().rax, vcpu.get_regs().rbx
    lesson.narrate("""
        Each `KVM_RUN` ran exactly one instruction: the four at the top of the listing. The
        `#DB` (debug exception, vector 1) says why in DR6: BS (bit 14) means "single step".
    """)
    lesson.checkpoint("single-step PCs", " ".join(f"{pc:#x}" for pc in pcs),
                      "0x1000 0x1005 0x100a 0x100d 0x1012")
    lesson.checkpoint("after 4 steps", f"rax={rax} rbx={rbx}", "rax=12 rbx=7")

    # -- 2. a hardware breakpoint by hand ---------------------------------------------------
    lesson.section("2. A hardware breakpoint by hand: DR0 and DR7")
    dr7 = DR7_FIXED | 1 << 1          # G0: slot 0 enabled; R/W0 = 00, LEN0 = 00: execute
    lesson.narrate(f"""
        DR0 gets the address, `after_out` = `{symbols['after_out']:#x}`. DR7 says what slot 0
        watches: the enable bit G0 (bit 1), R/W0 (bits 17:16) = `00` "instruction
        execution", LEN0 (bits 19:18) = `00` (an instruction breakpoint must say length 1);
        bit 10 always reads 1. So DR7 = `{dr7:#x}`. `KVM_GUESTDBG_USE_HW_BP` makes KVM load
        our DR0-DR7 while the guest runs (the guest's own values are kept aside:
        `kvm_arch_vcpu_ioctl_set_guest_debug` in `arch/x86/kvm/x86.c`).
        (`minikvm.debug.breakpoints.decode_dr7({dr7:#x})` reads it back: slot 0
        {"enabled" if decode_dr7(dr7)[0].enabled else "off"}, condition
        "{decode_dr7(dr7)[0].condition}", {decode_dr7(dr7)[0].size} byte.)
    """)
    lesson.code(f"""
        vcpu.set_guest_debug(KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW_BP,
                             [{symbols['after_out']:#x}, 0, 0, 0, 0, 0, 0, {dr7:#x}])   # DR0..DR7
    """)
    with Machine() as machine:
        machine.load_elf(elf)
        machine.vcpu.set_guest_debug(KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW_BP,
                                     [symbols["after_out"], 0, 0, 0, 0, 0, 0, dr7])
        seen = []
        for _ in range(10):
            exit = machine.vcpu.run()
            dispatch_exit(exit, machine.pio, machine.mmio)
            seen.append(exit)
            if isinstance(exit, (Debug, Hlt)):
                break
        data_then = machine.memory.read_u64(symbols["data"])
    for exit in seen:
        if isinstance(exit, Debug):
            lesson.result("vcpu.run()", f"Debug(exception={exit.exception}, pc={exit.pc:#x}, "
                          f"dr6={exit.dr6:#x})")
        else:
            lesson.result("vcpu.run()", exit)
    hit = seen[-1]
    lesson.narrate("""
        First the `out` exits to us as usual; then `#DB` with DR6.B0 (bit 0) set: slot 0's
        condition was met. An instruction breakpoint is a *fault*: it is reported before the
        instruction runs, so `data` is still 0 -- the `mov` at `after_out` has not happened.
    """)
    lesson.checkpoint("hardware breakpoint stop",
                      f"pc {hit.pc:#x}, DR6.B0 {'set' if hit.dr6 & DR6_B[0] else 'clear'}"
                      if isinstance(hit, Debug) else repr(hit),
                      f"pc {symbols['after_out']:#x}, DR6.B0 set")
    lesson.checkpoint("data at the breakpoint", data_then, 0)

    # -- 3. the debugger -----------------------------------------------------------------
    lesson.section("3. The same with minikvm's Debugger")
    lesson.narrate("""
        `minikvm.debug.Debugger` wraps all this: `step()` returns what each instruction
        changed, `break_at()` and `watch()` take addresses or symbols, `cont()` runs to the
        next stop and says why: a `Stop`, the same type `Machine.run()` returns, with its
        `kind`, a `message` in words, `rip`, and the breakpoint or watchpoint it hit.
        Not every KVM delivers every debug feature, so the
        debugger *tries* them once (`minikvm.debug.probe`) and serves each breakpoint and
        watchpoint with the best mechanism that works here -- and says which.
    """)
    lesson.code("""
        debugger = Debugger(machine)
        debugger.step(3)                                  # three StepRecords
        debugger.break_at("after_out", kind="hardware")   # a symbol of the ELF
        debugger.cont()                                   # -> Stop: breakpoint
        debugger.watch("data", size=8, kind="write")
        debugger.cont()                                   # -> Stop: watchpoint
        debugger.cont()                                   # -> the guest halts
    """)
    with Machine() as machine:
        machine.load_elf(elf)
        debugger = Debugger(machine)
        records = debugger.step(3)
        for record in records:
            lesson.result(f"step {record.old_rip:#x} -> {record.new_rip:#x}",
                          f"changed {', '.join(record.changed)}")
        bp = debugger.break_at("after_out", kind="hardware")
        first = debugger.cont(timeout=10)
        lesson.result("break_at('after_out') by", bp.mechanism)
        lesson.result("cont()", first.message)
        listing = debugger.disassemble(count=2)
        lesson.block("\n".join(str(insn) for insn in listing))
        wp = debugger.watch("data", size=8, kind="write")
        second = debugger.cont(timeout=10)
        lesson.result("watch('data') by", wp.mechanism + (f" ({wp.note})" if wp.note else ""))
        lesson.result("cont()", second.message)
        third = debugger.cont(timeout=10)
        lesson.result("cont()", third.message)
    support = debugger.support
    host = detect_host()
    lesson.narrate(f"""
        On this host (`{host.flavour}`): instruction breakpoints in debug registers
        {"work" if support.hw_breakpoints else "do not work"}; data watchpoints in debug
        registers {"work" if support.hw_write_watch else "do not fire"}; `int3`
        {"exits to the debugger" if support.sw_breakpoints else "goes to the guest's own handler"}.
        Where a debug-register watchpoint does not fire (kvm-pvm emulates guest ring-0 code
        and ignores data breakpoints), the debugger single-steps and compares the watched
        bytes after every instruction: slower, same answer. A data watchpoint is a *trap*:
        it stops after the write, so RIP is the next instruction.
    """)
    lesson.checkpoint("debugger steps", " ".join(f"{r.new_rip:#x}:{','.join(r.changed)}"
                                                 for r in records),
                      "0x1005:rax,rip 0x100a:rbx,rip 0x100d:rax,rip,rflags")
    lesson.checkpoint("cont() to the breakpoint",
                      f"{said(first)} at {first.rip:#x}", "breakpoint at 0x101c")
    lesson.checkpoint("cont() to the watchpoint",
                      f"{said(second)} at {second.rip:#x}, data "
                      f"{second.old_value:#x} -> {second.new_value:#x}",
                      "watchpoint at 0x1023, data 0x0 -> 0x41")
    lesson.checkpoint("cont() to the end", f"{said(third)}: {third.message}",
                      "guest-stopped: the guest halted (hlt with interrupts off)")
    assert first.kind is StopKind.BREAKPOINT
    lesson.narrate("""
        **Exercise 07** (`lessons/exercises/07_dr7.md`): a DR7 value is wrong in a small
        debugger of your own; fix it so the guest stops where asked.
        `minikvm lesson check 07`.
    """)
    return lesson.finish()


if __name__ == "__main__":
    run_lesson(main)
