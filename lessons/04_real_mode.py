"""Lesson 04: real mode -- registers and segments.

Run it: ``python lessons/04_real_mode.py`` (``--quiet``: checkpoints only).
Exercise: ``lessons/exercises/04_real_mode.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

from _common import Lesson, run_lesson

from minikvm.kvm.system import Kvm
from minikvm.machine import Machine
from minikvm.x86.flags import Cr0, flag_names
from minikvm.x86.modes import code_bitness, cpu_mode_of

WRITE_ONE = bytes([
    0xC7, 0x06, 0x10, 0x00, 0xEF, 0xBE,   # mov word [ds:0x10], 0xbeef
    0xF4,                                 # hlt
])
RELOAD_DS = bytes([
    0xC7, 0x06, 0x10, 0x00, 0xEF, 0xBE,   # mov word [ds:0x10], 0xbeef
    0x8C, 0xD8,                           # mov ax, ds
    0x8E, 0xD8,                           # mov ds, ax   ; reload DS: base = selector * 16
    0xC7, 0x06, 0x10, 0x00, 0xFE, 0xCA,   # mov word [ds:0x10], 0xcafe
    0xF4,                                 # hlt
])


def main(argv: Sequence[str] | None = None) -> int:
    lesson = Lesson("04", "Real mode: registers and segments", argv)
    lesson.narrate("""
        Every x86 CPU, even today's, wakes up as an 8086: 16-bit registers, 1 MiB of address
        space, and *segments* instead of a page table. That is **real mode**. Firmware and
        boot loaders run there first; our small assembly guests run there all the time. This
        lesson reads the CPU state KVM gives a new vCPU, then shows how real mode turns a
        segment and an offset into an address -- and the hidden part of a segment register
        that makes it work.
    """)

    # -- 1. the state after reset ----------------------------------------------------------
    lesson.section("1. A new vCPU is a CPU just out of reset")
    lesson.code("""
        with Kvm() as kvm, kvm.create_vm() as vm:
            vcpu = vm.create_vcpu(0)
            regs, sregs = vcpu.get_regs(), vcpu.get_sregs()   # KVM_GET_REGS, KVM_GET_SREGS
    """)
    with Kvm() as kvm, kvm.create_vm() as vm:
        vcpu = vm.create_vcpu(0)
        regs, sregs = vcpu.get_regs(), vcpu.get_sregs()
    linear = sregs.cs.base + regs.rip
    lesson.result("CS.selector", f"{sregs.cs.selector:#06x}")
    lesson.result("CS.base (hidden)", f"{sregs.cs.base:#x}")
    lesson.result("RIP", f"{regs.rip:#x}")
    lesson.result("first instruction at linear", f"{sregs.cs.base:#x} + {regs.rip:#x} = "
                  f"{linear:#x}")
    lesson.result("CR0", f"{sregs.cr0:#x} = {flag_names(Cr0(sregs.cr0))}")
    lesson.narrate("""
        This is the reset state of the Intel SDM (vol. 3A, 9.1 and table 9-1): CS:IP =
        F000:FFF0. By the real-mode rule the address would be `0xF000 * 16 + 0xFFF0` =
        `0xFFFF0`, just below 1 MiB -- yet the CPU fetches from `0xFFFFFFF0`, 16 bytes below
        4 GiB, where a PC maps its firmware ROM (SDM 9.1.4 "First Instruction Executed").

        The reason: a segment register has a **visible** part, the 16-bit selector, and a
        **hidden** part the CPU keeps beside it -- base, limit and attributes (SDM 3.4.3). The
        CPU never recomputes the base from the selector on its own; only *loading* the
        register does. After reset the base holds `0xFFFF0000`. KVM shows both parts in
        `struct kvm_segment`, and lets a VMM write both.

        CR0 has PE (bit 0) clear -- that is what "real mode" means -- and CD/NW set: caches
        disabled, as at power-on. ET reads 1 on every CPU since the 486.
    """)
    lesson.checkpoint("reset CS:IP", f"{sregs.cs.selector:04x}:{regs.rip:04x}", "f000:fff0")
    lesson.checkpoint("reset CS.base", f"{sregs.cs.base:#x}", "0xffff0000")
    lesson.checkpoint("first fetch at", f"{linear:#x}", "0xfffffff0")
    lesson.checkpoint("reset CR0", flag_names(Cr0(sregs.cr0)), "CD|NW|ET")

    # -- 2. segment * 16 + offset -------------------------------------------------------------
    lesson.section("2. An address is segment * 16 + offset")
    lesson.narrate("""
        When real-mode code loads a segment register (`mov ds, ax`), the CPU sets the hidden
        base to `selector * 16`. So DS = `0x1234` and offset `0x10` reach
        `0x12340 + 0x10 = 0x12350`: 16-bit numbers, 20-bit addresses, 1 MiB in all.
        Below, the *host* loads DS with `0x1234` the way the CPU would (both parts:
        selector `0x1234`, base `0x12340`) and runs `mov word [ds:0x10], 0xbeef; hlt`:
    """)
    with Machine() as machine:
        machine.load_flat(WRITE_ONE, 0x1000)
        sregs = machine.vcpu.get_sregs()
        sregs.ds.selector, sregs.ds.base = 0x1234, 0x12340
        machine.vcpu.set_sregs(sregs)
        machine.run(timeout=5)
        first = machine.memory.read_u16(0x12350)
    lesson.result("word at 0x12350", f"{first:#x}")
    lesson.checkpoint("DS=0x1234: word at 0x12350", f"{first:#x}", "0xbeef")

    # -- 3. the hidden base is what counts ----------------------------------------------------
    lesson.section("3. The hidden base is what the CPU uses")
    lesson.narrate("""
        Now a longer snippet, and the host loads DS with selector `0x1234` but a base that
        does *not* match: `0x20000`. The first write goes where the hidden base says. The
        `mov ds, ax` then makes the CPU recompute the base from the selector, and the second
        write lands at `0x12350`:
    """)
    lesson.code("""
        mov word [ds:0x10], 0xbeef
        mov ax, ds
        mov ds, ax                 ; reload DS: the CPU sets base = selector * 16
        mov word [ds:0x10], 0xcafe
        hlt
    """, "nasm")
    lesson.narrate("""
        (Firmware uses this on purpose: "unreal mode" keeps a
        4 GiB limit in the hidden part while running real-mode code.)
    """)
    with Machine() as machine:
        machine.load_flat(RELOAD_DS, 0x1000)
        sregs = machine.vcpu.get_sregs()
        sregs.ds.selector, sregs.ds.base = 0x1234, 0x20000
        machine.vcpu.set_sregs(sregs)
        stop = machine.run(timeout=5)
        at_hidden = machine.memory.read_u16(0x20010)
        at_selector = machine.memory.read_u16(0x12350)
        ds_after = machine.vcpu.get_sregs().ds
    lesson.result("word at 0x20010 (hidden base + 0x10)", f"{at_hidden:#x}")
    lesson.result("word at 0x12350 (selector * 16 + 0x10)", f"{at_selector:#x}")
    lesson.result("DS after the reload", f"selector {ds_after.selector:#x}, base "
                  f"{ds_after.base:#x}")
    lesson.checkpoint("first write (base 0x20000)", f"{at_hidden:#x} at 0x20010",
                      "0xbeef at 0x20010")
    lesson.checkpoint("second write (after mov ds, ax)", f"{at_selector:#x} at 0x12350",
                      "0xcafe at 0x12350")
    lesson.checkpoint("DS.base after the reload", f"{ds_after.base:#x}", "0x12340")
    lesson.checkpoint("stop", stop.kind.value, "halt")

    # -- 4. registers as results ---------------------------------------------------------------
    lesson.section("4. Reading the guest's registers (KVM_GET_REGS)")
    lesson.narrate("""
        A VMM can read every register of a stopped vCPU, which is how a test proves what a
        guest computed (kvm-hello-world does exactly this). `guests/asm/result.S` adds,
        multiplies, computes 10! modulo 2^16 in CX, sums 1..100 into memory, and halts:
    """)
    with Machine() as machine:
        machine.load_flat(lesson.guest("result.bin"), 0x1000)
        machine.run(timeout=5)
        regs = machine.vcpu.get_regs()
        beef, total = machine.memory.read_u16(0x5000), machine.memory.read_u16(0x5002)
    lesson.result("AX, BX, CX", f"{regs.rax & 0xFFFF:#06x}, {regs.rbx & 0xFFFF}, "
                  f"{regs.rcx & 0xFFFF:#06x}")
    lesson.result("words at 0x5000, 0x5002", f"{beef:#x}, {total}")
    lesson.narrate("""
        10! = 3628800 = `0x375F00`; a 16-bit register keeps the low 16 bits, `0x5F00`.
    """)
    lesson.checkpoint("AX BX CX", f"{regs.rax & 0xFFFF:#x} {regs.rbx & 0xFFFF} "
                      f"{regs.rcx & 0xFFFF:#x}", "0x5555 42 0x5f00")
    lesson.checkpoint("memory at 0x5000", f"{beef:#x} {total}", "0xbeef 5050")

    # -- 5. the project's API --------------------------------------------------------------------
    lesson.section("5. The same with minikvm: setup_real_mode and a C guest")
    lesson.narrate("""
        `Machine.load_flat(..., mode="real")` calls `minikvm.x86.modes.setup_real_mode`, which
        writes both parts of every segment register (CS = 0, base 0, 64 KiB limit ...), SS:SP =
        0:0x7C00, CR0 = ET only (caches on: the state an OS runs in), and points IDTR at the
        real-mode interrupt vector table at address 0. `cpu_mode_of` reads the mode back from
        CR0 and EFER, `code_bitness` how the CPU decodes instructions now.

        `guests/c/real.c` is C compiled with `gcc -m16`. It reads CR0 with `smsw` (which works
        in every mode), prints it, and stores `0x1616` through ES = `0x0700`, offset `0x10`.
    """)
    output: list[bytes] = []
    with Machine(output=output.append) as machine:
        machine.load_guest(lesson.guest("real.bin"))
        stop = machine.run(timeout=5)
        sregs = machine.vcpu.get_sregs()
        regs = machine.vcpu.get_regs()
        stored = machine.memory.read_u16(0x7010)
    text = b"".join(output).decode()
    lesson.result("the guest printed", text.strip())
    lesson.result("cpu_mode_of(sregs), code_bitness(sregs)",
                  f"{cpu_mode_of(sregs).value}, {code_bitness(sregs, regs.rflags)}-bit")
    lesson.result("word at 0x0700 * 16 + 0x10 = 0x7010", f"{stored:#x}")
    lesson.checkpoint("real.c says", text.strip(), "real mode: CR0=0x0010 (PE clear)")
    lesson.checkpoint("mode", f"{cpu_mode_of(sregs).value} {code_bitness(sregs, regs.rflags)}",
                      "real 16")
    lesson.checkpoint("word at 0x7010", f"{stored:#x}", "0x1616")
    lesson.narrate("""
        **Exercise 04** (`lessons/exercises/04_real_mode.md`): make a guest print its own CR0,
        and have the checker compare it with the CR0 KVM reports. `minikvm lesson check 04`.
    """)
    return lesson.finish()


if __name__ == "__main__":
    run_lesson(main)
