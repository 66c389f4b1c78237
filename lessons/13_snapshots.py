"""Lesson 13: what a VM is made of -- saved piece by piece, resumed elsewhere, and run backwards.

Run it: ``python lessons/13_snapshots.py`` (``--quiet``: checkpoints only).
Exercise: ``lessons/exercises/13_undo.md``.
"""

from __future__ import annotations

import ctypes
import json
import os
import struct
import tempfile
from collections.abc import Sequence

from _common import Lesson, run_lesson

from minikvm.core.config import MachineConfig
from minikvm.debug.debugger import Debugger
from minikvm.devices.state import restore_devices, save_devices
from minikvm.kvm import ioctls
from minikvm.kvm.fd import ioctl
from minikvm.kvm.uapi import (
    KvmMpState,
    kvm_debugregs,
    kvm_irqchip,
    kvm_lapic_state,
    kvm_mp_state,
    kvm_pit_state2,
    kvm_regs,
    kvm_sregs,
    kvm_vcpu_events,
)
from minikvm.lessons.checks_reverse import (
    CODE_ADDR,
    COUNTER_CODE,
    COUNTER_DATA,
    REG_NAMES,
    step_of,
)
from minikvm.machine import Machine
from minikvm.snapshot.info import describe
from minikvm.snapshot.machine_state import load_machine, save_machine
from minikvm.snapshot.vcpu_state import probe_parts, read_msrs
from minikvm.snapshot.vm_state import CHIPS

#: A real-mode guest at 0x1000 that reads two bytes from COM1 and prints them
#: on the debug console (hand-assembled):
#:     0x1000  mov dx, 0x3fa ; mov al, 1 ; out dx, al   ; FCR: FIFOs on
#:     0x1006  mov dx, 0x3f8
#:     0x1009  in al, dx                               ; RBR: the first byte
#:     0x100a  out 0xe9, al
#:     0x100c  in al, dx                               ; RBR: the second byte
#:     0x100d  out 0xe9, al
#:     0x100f  hlt
READER_CODE = bytes([0xBA, 0xFA, 0x03, 0xB0, 0x01, 0xEE, 0xBA, 0xF8, 0x03,
                     0xEC, 0xE6, 0xE9, 0xEC, 0xE6, 0xE9, 0xF4])
IN_ADDR = 0x1009
#: What arrives on COM1's input pin once the guest has turned its FIFO on.
SENT = b"AB"


def reader(irqchip: bool = False, output=None) -> Machine:
    """A machine running READER_CODE, stopped at the exit of its first ``in``
    (the FIFO switched on, SENT waiting in it)."""
    machine = Machine(irqchip=irqchip, output=output)
    machine.memory.write(CODE_ADDR, READER_CODE)
    machine.set_mode("real", CODE_ADDR)
    machine.step()                 # out dx, al: FCR, FIFOs on
    machine.uart.receive(SENT)     # two bytes arrive on the input pin
    machine.step()                 # in al, dx: an exit, RBR read -> 'A'
    return machine


def main(argv: Sequence[str] | None = None) -> int:
    lesson = Lesson("13", "What a VM is made of: snapshots and time travel", argv)
    lesson.narrate("""
        A virtual machine is a process that can be stopped. Stop it, write down *everything*
        that decides what it does next, and you can continue it later, in another process or
        on another host: a **snapshot**. Firecracker starts microVMs from snapshots in a few
        milliseconds; live migration is a snapshot sent over the network while the guest runs.
        Keep many small snapshots -- one per instruction, holding only what changed -- and
        you can go **backwards**.

        The hard part is "everything". A VM's state is in three places: the kernel's KVM
        objects (vCPUs and the chips KVM emulates), the VMM's device models (ours, in Python),
        and guest RAM. This lesson reads each piece from a stopped guest, shows a piece
        nobody can read, saves a machine to a file and resumes it in a fresh one, and then
        steps a guest backwards. docs/snapshots.md and docs/reverse.md have the whole story.
    """)
    pieces(lesson)
    pending_io(lesson)
    to_a_file(lesson)
    time_travel(lesson)
    lesson.narrate("""
        That is a machine's state: a dozen KVM structures per vCPU, three chips and a clock
        per VM, every device model's registers and queues, and the pages of RAM that are
        not zero -- taken when no instruction is half done. Save it all and a fresh process
        continues the guest; keep what each instruction changed and you can take it back.

        **Exercise 13** (`lessons/exercises/13_undo.md`): write the undo of one recorded
        instruction. `minikvm lesson check 13`.
    """)
    return lesson.finish()


# -- 1. the pieces -----------------------------------------------------------------------------

def pieces(lesson: Lesson) -> None:
    lesson.section("1. A stopped vCPU, piece by piece")
    lesson.narrate(f"""
        Our guest is sixteen bytes of real-mode code that turns on COM1's FIFO, reads two
        bytes from it (`in al, dx` on port 0x3F8, the receive buffer) and prints each on the
        debug console. The machine has the in-kernel irqchip, so KVM holds a local APIC per
        vCPU and a PIC, IOAPIC and PIT per VM. The host sends {SENT!r}; we run the guest to
        the exit of its first `in` and look.

        By hand first. Every piece of a vCPU is a `KVM_GET_*` ioctl on the vCPU's file
        descriptor that fills a structure of the kernel's ABI (include/uapi/linux/kvm.h,
        arch/x86/include/uapi/asm/kvm.h):
    """)
    lesson.code("""
        regs = kvm_regs();           ioctl(vcpu.fd, KVM_GET_REGS, regs)
        mp = kvm_mp_state();         ioctl(vcpu.fd, KVM_GET_MP_STATE, mp)
        lapic = kvm_lapic_state();   ioctl(vcpu.fd, KVM_GET_LAPIC, lapic)
    """)
    with reader(irqchip=True) as machine:
        vcpu = machine.vcpu
        regs = kvm_regs()
        ioctl(vcpu.fd, ioctls.KVM_GET_REGS, regs)
        mp = kvm_mp_state()
        ioctl(vcpu.fd, ioctls.KVM_GET_MP_STATE, mp)
        lapic = kvm_lapic_state()
        ioctl(vcpu.fd, ioctls.KVM_GET_LAPIC, lapic)
        apic_id = struct.unpack_from("<I", bytes(lapic.regs), 0x20)[0] >> 24
        version = struct.unpack_from("<I", bytes(lapic.regs), 0x30)[0] & 0xFF
        lesson.result("KVM_GET_REGS", f"RIP {regs.rip:#x}, RAX {regs.rax:#x}, "
                                      f"RFLAGS {regs.rflags:#x}")
        lesson.result("KVM_GET_MP_STATE", KvmMpState(mp.mp_state).name)
        lesson.result("KVM_GET_LAPIC", f"{ctypes.sizeof(lapic)} bytes: the APIC's register "
                                       f"page; ID {apic_id}, version {version:#x}")
        lesson.checkpoint("MP state at the exit", KvmMpState(mp.mp_state).name,
                          "KVM_MP_STATE_RUNNABLE")

        parts = probe_parts(machine.kvm, machine.vm, True)
        msr_list = machine.kvm.msr_index_list()
        msrs = read_msrs(vcpu, msr_list)
        sregs = vcpu.get_sregs()
        xsave = vcpu.get_xsave(parts.xsave_size) if parts.xsave_size else bytes(vcpu.get_fpu())
        events = vcpu.get_vcpu_events()
        chips = [vm_chip for vm_chip in (machine.vm.get_irqchip(c) for c in CHIPS)]
        pit = machine.vm.get_pit2()
        clock = machine.vm.get_clock()
        devices = save_devices((machine.pio, machine.mmio))
        used = [page for page in range(0, machine.memory.size, 4096)
                if any(machine.memory.read(page, 4096))]
        nonzero = len(used)
        rows = [
            ("regs", "KVM_GET_REGS", ctypes.sizeof(kvm_regs),
             "RAX..R15, RIP, RFLAGS"),
            ("sregs", "KVM_GET_SREGS", ctypes.sizeof(kvm_sregs),
             f"CS..SS with hidden parts, GDT/IDT, CR0 {sregs.cr0:#x}, EFER, APIC base"),
            ("FPU/SSE/AVX", "KVM_GET_XSAVE2" if parts.xsave_size else "KVM_GET_FPU",
             len(xsave), "x87, XMM, YMM... (the size is this host's)"),
            ("XCR0", "KVM_GET_XCRS", 8 * len(vcpu.get_xcrs()) if parts.xcrs else 0,
             "which XSAVE components are on"),
            ("MSRs", "KVM_GET_MSRS", 16 * len(msrs),
             f"{len(msrs)} of the {len(msr_list)} KVM lists: TSC, SYSCALL targets, PAT..."),
            ("LAPIC", "KVM_GET_LAPIC", ctypes.sizeof(kvm_lapic_state),
             "the local APIC's registers, its timer"),
            ("events", "KVM_GET_VCPU_EVENTS", ctypes.sizeof(kvm_vcpu_events),
             f"exception/interrupt/NMI in flight, interrupt shadow "
             f"({events.interrupt.shadow})"),
            ("mp_state", "KVM_GET_MP_STATE", ctypes.sizeof(kvm_mp_state),
             "running, halted, waiting for SIPI"),
            ("debug regs", "KVM_GET_DEBUGREGS", ctypes.sizeof(kvm_debugregs), "DR0-DR3, DR6, DR7"),
            ("PIC x2, IOAPIC", "KVM_GET_IRQCHIP", sum(ctypes.sizeof(c) for c in chips),
             "masks, requests, the redirection table (VM)"),
            ("PIT", "KVM_GET_PIT2", ctypes.sizeof(pit), "three 8254 channels (VM)"),
            ("clock", "KVM_GET_CLOCK", 8, f"kvmclock: {clock.clock / 1e9:.3f} s of guest time (VM)"),
            ("devices", "save()", len(json.dumps(devices)), f"{len(devices)} device models (ours)"),
            ("RAM", "our mmap", nonzero * 4096,
             f"{nonzero} non-zero page(s) of {machine.memory.size // 4096}"),
        ]
    lesson.table("the pieces of this machine", ("piece", "read with", "bytes", "what"), rows)
    lesson.narrate(f"""
        The MSRs are the list `KVM_GET_MSR_INDEX_LIST` gives (`msrs_to_save` and
        `emulated_msrs` in arch/x86/kvm/x86.c), {len(msr_list)} here; `KVM_GET_MSRS` stops at
        the first one it cannot read (`msr_io`, x86.c), so minikvm skips that one and asks
        again. The XSAVE area is {len(xsave)} bytes on this host; its size comes from
        `KVM_CAP_XSAVE2`, and on a CPU with AVX-512 or AMX it is larger -- one reason a
        snapshot only loads on a host like the one that made it. The host KVM is
        `kvm-pvm` here (`minikvm info`): it has every one of these ioctls, so nothing in this
        lesson is missing on it.

        Two of these rows are not the vCPU's: the chips and the clock belong to the VM, and
        the devices and RAM to us. A VM without the in-kernel irqchip has none of the chips,
        and no LAPIC: then the PIC is ours, a device model like the UART.
    """)
    lesson.checkpoint("ABI sizes (regs, sregs, lapic, events, irqchip, pit2)",
                      f"{ctypes.sizeof(kvm_regs)}, {ctypes.sizeof(kvm_sregs)}, "
                      f"{ctypes.sizeof(kvm_lapic_state)}, {ctypes.sizeof(kvm_vcpu_events)}, "
                      f"{ctypes.sizeof(kvm_irqchip)}, {ctypes.sizeof(kvm_pit_state2)}",
                      "144, 312, 1024, 64, 520, 112")
    lesson.checkpoint("device models saved", ", ".join(sorted(key.rsplit(":", 1)[1]
                                                              for key in devices)))
    lesson.narrate("""
        And RAM: 2 MiB, of which two pages are not zero -- the page at 0x1000 with our code,
        and page 0, where minikvm's `set_mode` put a small GDT (at 0x500) that a guest
        switching to protected mode could use. Everything else is zeros.
    """)
    lesson.checkpoint("non-zero RAM pages", ", ".join(f"{page:#x}" for page in used),
                      "0x0, 0x1000")


# -- 2. an instruction half done ---------------------------------------------------------------

def pending_io(lesson: Lesson) -> None:
    lesson.section("2. A piece nobody can read: the IN that is half done")
    output: list[bytes] = []
    with reader(output=output.append) as machine:
        regs = machine.vcpu.get_regs()
        lesson.result("after the exit of the first in", f"RIP {regs.rip:#x}, AL {regs.rax & 0xFF:#x}")
        lesson.narrate(f"""
            We answered the `in`: the UART gave its first byte, 'A' (0x41), and the VMM wrote it
            into the `kvm_run` page. But the vCPU's RIP still points **at** the `in`
            ({IN_ADDR:#x}), and AL still holds the 1 the guest wrote to the FCR. KVM takes the
            answer only at the *next* `KVM_RUN`: when it saw the `in`, `kvm_fast_pio_in`
            (arch/x86/kvm/x86.c) left a note for itself, `vcpu->arch.complete_userspace_io =
            complete_fast_pio_in`, and that function -- run first thing in the next
            `KVM_RUN` -- copies the data into RAX and only then moves RIP past the
            instruction (`kvm_skip_emulated_instruction`). MMIO reads work the same way
            (`complete_emulated_mmio`).

            That note is kernel memory. No `KVM_GET_*` returns it. Copy the machine now --
            registers, devices, RAM -- into a fresh one, by hand, and see:
        """)
        lesson.checkpoint("at the exit", f"RIP {regs.rip:#x}, AL {regs.rax & 0xFF:#x}",
                          f"RIP {IN_ADDR:#x}, AL 0x1")
        regs_bytes = bytes(regs)
        sregs_bytes = bytes(machine.vcpu.get_sregs())
        device_state = save_devices((machine.pio, machine.mmio))
        ram = machine.memory.read(0, 0x2000)
        copy_output: list[bytes] = []
        with Machine(output=copy_output.append) as copy:
            copy.memory.write(0, ram)
            restore_devices((copy.pio, copy.mmio), device_state)
            copy.vcpu.set_sregs(kvm_sregs.from_buffer_copy(sregs_bytes))
            copy.vcpu.set_regs(kvm_regs.from_buffer_copy(regs_bytes))
            copy.run(timeout=5)
        lost = b"".join(copy_output)
        lesson.code("""
            copy.memory.write(0, machine.memory.read(0, 0x2000))
            restore_devices((copy.pio, copy.mmio), save_devices((machine.pio, machine.mmio)))
            copy.vcpu.set_sregs(machine.vcpu.get_sregs())
            copy.vcpu.set_regs(machine.vcpu.get_regs())
            copy.run()
        """)
        lesson.result("the copy printed", lost)
        lesson.narrate("""
            The copy starts at the `in` again and reads the UART again -- whose 'A' is gone,
            taken by the first read. It prints 'B', then reads an empty FIFO (which gives the
            last byte again). The 'A' is lost; with a device whose reads do nothing it would
            merely have been read twice, which is just as wrong for a disk or a network card.

            The cure: let KVM finish the instruction before saving, without running the
            guest any further. `KVM_RUN` with `kvm_run.immediate_exit = 1` does exactly that:
            `kvm_arch_vcpu_ioctl_run` (x86.c) calls the pending `complete_userspace_io` first
            and only then looks at `immediate_exit`, returning `EINTR` before it enters the
            guest (Documentation/virt/kvm/api.rst, "immediate_exit"). QEMU does this before it
            saves a vCPU, KVM's selftests too (`vcpu_run_complete_io`); minikvm's
            `save_machine` does it for every vCPU (`VcpuRunner.finish`).
        """)
        lesson.checkpoint("a copy made at the exit prints", repr(lost.decode()), "'BB'")
        lesson.code("""
            vcpu.immediate_exit = True; KVM_RUN; vcpu.immediate_exit = False
        """)
        finished = machine.runner.finish()
        regs = machine.vcpu.get_regs()
        lesson.result("KVM_RUN with immediate_exit", type(finished).__name__)
        lesson.result("then", f"RIP {regs.rip:#x}, AL {regs.rax & 0xFF:#x} "
                              f"({chr(regs.rax & 0xFF)!r})")
        lesson.checkpoint("after immediate_exit", f"RIP {regs.rip:#x}, AL {regs.rax & 0xFF:#x}",
                          f"RIP {IN_ADDR + 1:#x}, AL 0x41")
        machine.run(timeout=5)
    lesson.checkpoint("the machine itself prints", repr(b"".join(output).decode()), "'AB'")


# -- 3. a file, and a fresh machine ----------------------------------------------------------

def to_a_file(lesson: Lesson) -> None:
    lesson.section("3. Save to a file, resume in a fresh machine")
    lesson.narrate("""
        `save_machine` does all of the above: finishes every vCPU, reads each piece in an
        order that keeps them consistent (MP state before the LAPIC, since reading it
        accepts pending INIT/SIPI), every device's `save()`, the non-zero pages of RAM, and
        the board's configuration, into one file with a versioned header and a CRC per
        section. `load_machine` checks the *whole* file, builds a fresh machine of the saved
        board, and restores in an order KVM accepts: devices, RAM, the chips, then each vCPU
        -- CPUID first (it decides which MSRs are valid: `kvm_vcpu_after_set_cpuid`,
        arch/x86/kvm/cpuid.c), sregs before regs, the LAPIC before the TSC deadline MSR
        (`kvm_set_lapic_tscdeadline_msr`, arch/x86/kvm/lapic.c ignores it otherwise), vCPU
        events last.

        First the reader: saved at its `in`, resumed in a new machine.
    """)
    folder = tempfile.mkdtemp(prefix="minikvm-lesson13-")
    path = os.path.join(folder, "reader.snap")
    with reader() as machine:
        save_machine(machine, path, MachineConfig())
    resumed: list[bytes] = []
    fresh, _config = load_machine(path, output=resumed.append)
    with fresh:
        fresh.run(timeout=5)
    lesson.code("""
        save_machine(machine, "reader.snap", config)     # stopped at the exit of the in
        fresh, config = load_machine("reader.snap")      # a new VM, new vCPU, new devices
        fresh.run()
    """)
    lesson.result("the resumed machine printed", b"".join(resumed))
    lesson.checkpoint("resumed from the in", repr(b"".join(resumed).decode()), "'AB'")

    lesson.narrate("""
        Now a guest with more state: `guests/build/long.elf` switches to long mode with its
        own page tables, computes fib(90) and prints it. We give it 256 MiB of RAM, stop it
        after 20 exits (in the middle of printing), save, and resume in a fresh machine; then
        we run it once more without a break, and compare.
    """)
    config = MachineConfig(guest=str(lesson.guest("long.elf")), mem_size=256 << 20)
    path = os.path.join(folder, "long.snap")
    before: list[bytes] = []
    with Machine.from_config(config, output=before.append) as machine:
        machine.run(max_exits=20)
        saved = save_machine(machine, path, config)
    after: list[bytes] = []
    fresh, _config = load_machine(path, output=after.append)
    with fresh:
        end = fresh.run(timeout=10)
    whole: list[bytes] = []
    with Machine.from_config(config, output=whole.append) as machine:
        uninterrupted = machine.run(timeout=10)
    first, second, once = (b"".join(part) for part in (before, after, whole))
    lesson.result("before the snapshot", first)
    lesson.result("after resuming", second)
    lesson.result("one uninterrupted run", once)
    lesson.checkpoint("run + resume == one run", first + second == once and
                      end.kind == uninterrupted.kind, True)
    lesson.checkpoint("the guest printed", once.decode().strip(),
                      "long mode: fib(90)=0x27f80ddaa1ba7878 alias write read back "
                      "0x5afec0de12345678")
    lesson.block("\n".join(describe(path)))
    lesson.narrate(f"""
        That is `minikvm snapshot info long.snap`. The guest has 256 MiB of RAM, but the file
        is {saved.size // 1024} KiB: only the {saved.memory_pages} pages that are not zero are
        in it (code, page tables, stack, data). A fresh machine's RAM is zero-filled, so a
        zero page needs no saving; and to find the others without touching all 256 MiB (a
        read of an untouched page would allocate it), minikvm asks `/proc/self/pagemap`
        which pages of its mapping exist at all (minikvm/snapshot/memory_image.py). Most of
        what remains is the vCPU: the XSAVE area and the MSRs. Firecracker's *diff
        snapshots* ask KVM instead, with the dirty-page log -- which is what comes next.

        The same works from the command line: `minikvm run GUEST --snapshot FILE
        --snapshot-after-exits N`, then `minikvm resume FILE` in another process.
    """)
    lesson.checkpoint("non-zero pages of 65536 saved", saved.memory_pages, 17)
    for name in os.listdir(folder):
        os.unlink(os.path.join(folder, name))
    os.rmdir(folder)


# -- 4. time travel ----------------------------------------------------------------------------

def _state(machine: Machine) -> tuple[dict[str, int], bytes]:
    regs = machine.vcpu.get_regs()
    return {name: getattr(regs, name) for name in REG_NAMES}, machine.memory.read(COUNTER_DATA, 8)


def time_travel(lesson: Lesson) -> None:
    lesson.section("4. Time travel: record, step forward, step back")
    lesson.narrate("""
        A snapshot per instruction would be far too big. But an instruction changes little:
        RIP, a register or two, a few bytes of memory. So while **recording**, minikvm's
        debugger single-steps the guest (`KVM_GUESTDBG_SINGLESTEP`, lesson 07) and keeps,
        for each instruction, only what it changed, *before and after* -- an **undo log**,
        the design of gdb's `record full`. The registers come from comparing `kvm_regs`
        before and after the step; the memory from KVM's **dirty-page log**: with
        `KVM_MEM_LOG_DIRTY_PAGES` on a memory slot, `KVM_GET_DIRTY_LOG` names the pages the
        guest wrote since the last call (`kvm_get_dirty_log_protect`, virt/kvm/kvm_main.c),
        and minikvm compares just those with a copy. kvm-pvm has the dirty log, so this works
        here as on hardware KVM.

        The guest counts to 4 and stores each count in a word at 0x2000:
    """)
    lesson.code("""
        0x1000  mov bx, 0x2000
        0x1003  inc ax              ; loop
        0x1004  mov [bx], ax
        0x1006  add bx, 2
        0x1009  cmp bx, 0x2008
        0x100d  jne 0x1003
        0x100f  hlt
    """, "nasm")
    with Machine() as machine:
        machine.memory.write(CODE_ADDR, COUNTER_CODE)
        machine.set_mode("real", CODE_ADDR)
        debugger = Debugger(machine)
        debugger.record()
        seen = []
        for _ in range(21):
            seen.append(_state(machine))
            debugger.step()
        end = _state(machine)
        lesson.code("""
            debugger = Debugger(machine)
            debugger.record()
            debugger.step()    # 21 times, up to the hlt
        """)
        lesson.result("history", debugger.history)
        lesson.result("RIP, counters", f"{end[0]['rip']:#x}, {end[1].hex(' ')}")
        lesson.checkpoint("after 21 recorded steps", f"RIP {end[0]['rip']:#x}, counters "
                          f"{end[1].hex(' ')}", "RIP 0x100f, counters 01 00 02 00 03 00 04 00")

        history = debugger.history
        entry = history.undo()     # look at the newest entry without applying it...
        history.redo()             # ...and leave the position where it was
        step = step_of(entry)
        older = history_entry(history, 3)
        lesson.narrate("""
            Each entry is tiny. The newest, the last `jne`, changed only RIP; the `mov [bx],
            ax` of the fourth pass changed RIP and memory -- one byte of it, in fact: it stored
            0x0004 over 0x0000, and only the byte that differs is kept, before and after:
        """)
        lesson.result("entry 21 (jne)", _words_of(step))
        lesson.result(f"entry 18 ({older.text})", _words_of(older))

        lesson.narrate("""
            **By hand**, undoing entry 21 is writing its "before" values back. Let us compute
            the state that gives, then ask the debugger to step back and compare:
        """)
        by_hand = dict(end[0])
        for name, (old, _new) in step.regs.items():
            by_hand[name] = old
        debugger.step_back()
        now = _state(machine)
        lesson.result("by hand", f"RIP {by_hand['rip']:#x}")
        lesson.result("debugger.step_back()", f"RIP {now[0]['rip']:#x}")
        lesson.checkpoint("step_back() == the entry undone by hand", now[0] == by_hand, True)

        same = 0
        for back in range(20, -1, -1):
            if back != 20:
                debugger.step_back()
            if _state(machine) == seen[back]:
                same += 1
        lesson.narrate("""
            Then the other twenty, one at a time, comparing every register and the counters
            with what the recording saw before each instruction:
        """)
        lesson.checkpoint("states equal to the recorded ones, going back", f"{same} of 21",
                          "21 of 21")
        stop = debugger.step_back()
        lesson.result("one more step_back()", stop.message)
        lesson.checkpoint("past the first entry", stop.kind.name, "HISTORY_START")
        debugger.step(21)
        lesson.checkpoint("forwards again (redo)", f"RIP {_state(machine)[0]['rip']:#x}, "
                          f"counters {_state(machine)[1].hex(' ')}",
                          "RIP 0x100f, counters 01 00 02 00 03 00 04 00")
        lesson.narrate("""
            Forwards through the past nothing ran: each entry's "after" values were written
            back. And the log serves `reverse_cont()` (gdb's `reverse-continue`) too: it undoes
            entries until RIP is back at a breakpoint, or until an undo changes a watched
            variable. Who wrote the second counter?
        """)
        debugger.watch(COUNTER_DATA + 2, 2)
        lesson.code("""
            debugger.watch(0x2002, 2)
            debugger.reverse_cont()
        """)
        stop = debugger.reverse_cont()
        lesson.result("reverse_cont()", stop.message)
        lesson.narrate("""
            It stopped *before* the store, as gdb expects: the next forward step is the
            instruction that writes. That was a comparison of the watched value after each
            undo, not a debug register -- so reverse watchpoints work on kvm-pvm too, where
            DR data watchpoints never fire (lesson 07). With gdb (lesson 12): `minikvm run
            GUEST --gdb 127.0.0.1:1234 --reverse` records from the first instruction, and
            gdb's `reverse-stepi` and `reverse-continue` become the `bs` and `bc` packets; the
            TUI steps back with `S` and `C`.
        """)
        lesson.checkpoint("reverse_cont to the write of 0x2002",
                          f"{stop.kind.name}, RIP {_state(machine)[0]['rip']:#x}, counters "
                          f"{_state(machine)[1].hex(' ')}",
                          "WATCHPOINT, RIP 0x1004, counters 01 00 00 00 00 00 00 00")
    replay(lesson)


def history_entry(history, count: int):
    """The entry ``count`` back from the newest, as a Step (the position is kept)."""
    entries = [history.undo() for _ in range(count + 1)]
    for _ in entries:
        history.redo()
    return step_of(entries[-1])


def _words_of(step) -> str:
    regs = ", ".join(f"{name} {old:#x}->{new:#x}" for name, (old, new) in step.regs.items())
    memory = "; ".join(f"[{address:#x}] {old.hex(' ')}->{new.hex(' ')}"
                       for address, old, new in step.memory)
    return regs + (f"; memory {memory}" if memory else "")


def replay(lesson: Lesson) -> None:
    lesson.section("5. Why an undo log, and not replay")
    lesson.narrate("""
        Going back over an `in` shows the difference. Record the reader of section 2 through
        both `in`s and `out`s, step back four instructions, and forward four again:
    """)
    output: list[bytes] = []
    with Machine(output=output.append) as machine:
        machine.memory.write(CODE_ADDR, READER_CODE)
        machine.set_mode("real", CODE_ADDR)
        debugger = Debugger(machine)
        debugger.step(4)                       # FIFOs on, DX = 0x3f8: not recorded
        machine.uart.receive(SENT)
        debugger.record()
        debugger.step(4)                       # in, out, in, out
        exits = machine.exit_count
        debugger.step_back(4)
        back = _state(machine)[0]
        debugger.step(4)
        lesson.result("after 4 back", f"RIP {back['rip']:#x}")
        lesson.result("after 4 forward", f"RIP {_state(machine)[0]['rip']:#x}, "
                                         f"AL {_state(machine)[0]['rax'] & 0xFF:#x}")
        lesson.result("guest output", b"".join(output))
        lesson.result("VM exits", f"{exits} before going back, {machine.exit_count} after")
        lesson.checkpoint("back 4, forward 4", f"output {b''.join(output).decode()!r}, "
                          f"exits {machine.exit_count - exits} more", "output 'AB', exits 0 more")
    lesson.narrate("""
        Forwards in the past nothing runs: each entry's "after" values are written back. The
        UART is not read again, the console does not print twice, and there are no new VM
        exits. The log is exact on any KVM because it never asks the guest to do anything
        a second time.

        The other way to go back -- keep a snapshot every so often, and to step back one
        instruction restore the last snapshot and *re-execute* forward to one instruction
        short -- is cheaper in memory but needs **determinism**: the re-execution must see
        exactly what the first one saw. Every value the VMM handed the guest (each `in`,
        each MMIO read, the key pressed, the packet received) must be logged and fed back;
        and every interrupt must arrive at the *same instruction* as before. The in-kernel
        PIT and LAPIC timer inject interrupts on host time, and KVM gives no exact count of
        guest instructions to say "after instruction 1,234,567" (QEMU's record/replay gets
        one from TCG, its own translator, not from KVM). An undo log needs none of that: an
        interrupt that arrived during a step is just more changed registers and stack.

        What an undo log does *not* rewind is what it does not record: the in-kernel chips
        and timers, MSRs, pending events, other vCPUs, and what the guest already printed
        (docs/reverse.md, "What is not rewound"). Stepping back costs the same at any depth
        -- one entry written back -- and recording costs a few times a plain single-step:
        `benchmarks/reverse.py` measures both.
    """)


if __name__ == "__main__":
    run_lesson(main)
