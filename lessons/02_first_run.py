"""Lesson 02: a VM, a memory slot, a vCPU, and the first KVM_RUN.

Run it: ``python lessons/02_first_run.py`` (``--quiet``: checkpoints only).
"""

from __future__ import annotations

import ctypes
import mmap
import os
from collections.abc import Sequence

from _common import Lesson, hexdump, run_lesson

from minikvm.kvm import ioctls
from minikvm.kvm.fd import ioctl
from minikvm.kvm.system import Kvm
from minikvm.kvm.uapi import (
    KVM_EXIT_IO_OUT,
    KvmExit,
    kvm_regs,
    kvm_run,
    kvm_sregs,
    kvm_userspace_memory_region,
)
from minikvm.machine import Machine
from minikvm.memory import GuestMemory
from minikvm.x86.layout import KVM_TSS_ADDR

RAM_SIZE = 0x10000     # 64 KiB of guest RAM, at guest-physical 0
CODE_ADDR = 0x1000     # where we put the guest's code
#: The whole guest, assembled by hand (Intel SDM vol. 2 gives each encoding):
CODE = bytes([
    0xB0, 0x4B,        # mov al, 0x4b      ; 'K'
    0xE6, 0xE9,        # out 0xe9, al      ; write AL to I/O port 0xE9
    0xF4,              # hlt               ; stop the CPU
])


def by_hand(lesson: Lesson) -> None:
    lesson.section("1. Create a VM (KVM_CREATE_VM)")
    kvm_fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    vm_fd = ioctl(kvm_fd, ioctls.KVM_CREATE_VM, 0)
    lesson.code("""
        vm_fd = ioctl(kvm_fd, ioctls.KVM_CREATE_VM, 0)     # 0: the default machine type
    """)
    lesson.result("KVM_CREATE_VM returned a new file descriptor", vm_fd)
    lesson.narrate("""
        A VM starts empty: no memory, no CPU. What it owns is a guest-*physical* address
        space, which the VMM fills with memory slots.
    """)

    lesson.section("2. Give it RAM (KVM_SET_USER_MEMORY_REGION)")
    lesson.narrate("""
        Guest RAM is ordinary memory of the VMM process. We `mmap` 64 KiB and tell KVM, in a
        `struct kvm_userspace_memory_region`, that slot 0 makes it appear at guest-physical
        address 0. From then on the guest reads and writes that host memory directly, without
        exits: it is the same memory seen from two sides. So *loading* a guest is just writing
        bytes into our own mapping.
    """)
    ram = mmap.mmap(-1, RAM_SIZE, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS,
                    prot=mmap.PROT_READ | mmap.PROT_WRITE)
    host_address = ctypes.addressof(ctypes.c_char.from_buffer(ram))
    region = kvm_userspace_memory_region(slot=0, flags=0, guest_phys_addr=0,
                                         memory_size=RAM_SIZE, userspace_addr=host_address)
    ioctl(vm_fd, ioctls.KVM_SET_USER_MEMORY_REGION, region)
    ram[CODE_ADDR:CODE_ADDR + len(CODE)] = CODE
    lesson.code(f"""
        ram = mmap.mmap(-1, {RAM_SIZE:#x}, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
        region = kvm_userspace_memory_region(
            slot=0, flags=0, guest_phys_addr=0, memory_size={RAM_SIZE:#x},
            userspace_addr=<the host address of ram>)
        ioctl(vm_fd, ioctls.KVM_SET_USER_MEMORY_REGION, region)
        ram[{CODE_ADDR:#x}:{CODE_ADDR:#x} + len(CODE)] = CODE        # "loading" the guest
    """)
    lesson.block("guest-physical memory at 0x1000 now:\n" + hexdump(CODE, CODE_ADDR))
    lesson.narrate("""
        Those five bytes are the whole guest, three instructions:
    """)
    lesson.code("""
        b0 4b     mov al, 0x4b     ; 'K'
        e6 e9     out 0xe9, al     ; write AL to I/O port 0xE9
        f4        hlt              ; stop the CPU
    """, "nasm")
    lesson.narrate("""
        One more call, which matters only on Intel CPUs without "unrestricted guest"
        support: `KVM_SET_TSS_ADDR` names three pages of guest-physical space, outside RAM,
        that KVM needs there to run real-mode code as virtual-8086 mode. Other hosts accept
        and ignore it (`vmx_set_tss_addr` in `arch/x86/kvm/vmx/vmx.c` returns at once when
        the CPU has unrestricted guest; AMD's KVM does nothing), so a portable VMM always
        makes it.
    """)
    ioctl(vm_fd, ioctls.KVM_SET_TSS_ADDR, KVM_TSS_ADDR)

    lesson.section("3. Create a vCPU and map its kvm_run page")
    vcpu_fd = ioctl(vm_fd, ioctls.KVM_CREATE_VCPU, 0)
    mmap_size = ioctl(kvm_fd, ioctls.KVM_GET_VCPU_MMAP_SIZE)
    page = mmap.mmap(vcpu_fd, mmap_size, flags=mmap.MAP_SHARED,
                     prot=mmap.PROT_READ | mmap.PROT_WRITE)
    run = kvm_run.from_buffer(page)
    lesson.code("""
        vcpu_fd = ioctl(vm_fd, ioctls.KVM_CREATE_VCPU, 0)     # vCPU number 0
        size = ioctl(kvm_fd, ioctls.KVM_GET_VCPU_MMAP_SIZE)
        page = mmap.mmap(vcpu_fd, size)
        run = kvm_run.from_buffer(page)      # a ctypes view of struct kvm_run
    """)
    lesson.narrate("""
        `struct kvm_run` is how `KVM_RUN` answers: it lives in memory shared between the
        kernel and us, so reading why the guest stopped costs no system call.
    """)

    lesson.section("4. Set the registers (KVM_GET/SET_SREGS, KVM_SET_REGS)")
    sregs = kvm_sregs()
    ioctl(vcpu_fd, ioctls.KVM_GET_SREGS, sregs)
    lesson.narrate(f"""
        A new vCPU is in the state of an x86 CPU just after reset: 16-bit *real mode*, about to
        run the instruction at CS:IP = `F000:FFF0`, where a PC's BIOS would be (lesson 04
        looks closer). KVM says CS = `{sregs.cs.selector:#x}`, CS.base = `{sregs.cs.base:#x}`.
        We have no BIOS: we point CS at segment 0 and the instruction pointer at our code.
        RFLAGS must have bit 1 set (it always reads 1); all other flags clear -- IF (bit 9)
        too, so "interrupts off".
    """)
    sregs.cs.selector = 0
    sregs.cs.base = 0
    ioctl(vcpu_fd, ioctls.KVM_SET_SREGS, sregs)
    regs = kvm_regs(rip=CODE_ADDR, rflags=0x2)
    ioctl(vcpu_fd, ioctls.KVM_SET_REGS, regs)
    lesson.code("""
        sregs = kvm_sregs(); ioctl(vcpu_fd, ioctls.KVM_GET_SREGS, sregs)
        sregs.cs.selector = 0; sregs.cs.base = 0
        ioctl(vcpu_fd, ioctls.KVM_SET_SREGS, sregs)
        regs = kvm_regs(rip=0x1000, rflags=0x2)
        ioctl(vcpu_fd, ioctls.KVM_SET_REGS, regs)
    """)

    lesson.section("5. KVM_RUN")
    lesson.narrate("""
        `KVM_RUN` enters the guest and returns only when the guest does something the kernel
        will not handle by itself. Our `mov` runs inside the guest without anyone noticing;
        the `out` to port 0xE9 reaches a port no kernel device decodes, so KVM stops the
        guest and gives the access to us: a **VM exit**.
    """)
    ioctl(vcpu_fd, ioctls.KVM_RUN)
    reason = KvmExit(run.exit_reason)
    io = run.io
    byte = page[io.data_offset]
    lesson.result("run.exit_reason", f"{reason.name} ({int(reason)})")
    lesson.result("run.io", f"direction={'out' if io.direction == KVM_EXIT_IO_OUT else 'in'} "
                  f"size={io.size} port={io.port:#x} count={io.count} "
                  f"data_offset={io.data_offset}")
    lesson.result("the byte at data_offset in the mapping", f"{byte:#x} ({chr(byte)!r})")
    lesson.narrate("""
        The data of the `out` is not in `struct kvm_run` itself but further on in the same
        mapping, at `data_offset`: a page of its own, room for the many items one exit of a
        `rep insb` can ask for (lesson 03). A VMM that emulates a device on port 0xE9 would
        now act on the byte; we just read it.
    """)
    lesson.checkpoint("first exit", f"{reason.name} ({int(reason)})", "KVM_EXIT_IO (2)")
    lesson.checkpoint("first exit details",
                      f"out port {io.port:#x}, {io.size} byte, value {byte:#x}",
                      "out port 0xe9, 1 byte, value 0x4b")

    lesson.narrate("""
        Run it again:
    """)
    lesson.code("""
        ioctl(vcpu_fd, ioctls.KVM_RUN)
        ioctl(vcpu_fd, ioctls.KVM_GET_REGS, regs)
    """)
    ioctl(vcpu_fd, ioctls.KVM_RUN)
    reason = KvmExit(run.exit_reason)
    ioctl(vcpu_fd, ioctls.KVM_GET_REGS, regs)
    lesson.result("run.exit_reason", f"{reason.name} ({int(reason)})")
    lesson.result("RIP after it (KVM_GET_REGS)", f"{regs.rip:#x}")
    lesson.narrate("""
        The second `KVM_RUN` continues after the `out` and stops at `hlt`. On a real CPU
        `hlt` waits for an interrupt; this VM has no interrupt controller in the kernel
        (lesson 08 adds one), so KVM hands the halt to us (`__kvm_emulate_halt` in
        `arch/x86/kvm/x86.c`). RIP points after the `hlt`: our guest ran all five bytes.
    """)
    lesson.checkpoint("second exit", f"{reason.name} ({int(reason)})", "KVM_EXIT_HLT (5)")
    lesson.checkpoint("RIP after hlt", f"{regs.rip:#x}", f"{CODE_ADDR + len(CODE):#x}")

    del run, io  # ctypes views into the page must go before the page can close
    page.close()
    for fd in (vcpu_fd, vm_fd, kvm_fd):
        os.close(fd)
    ram.close()


def with_the_api(lesson: Lesson) -> None:
    lesson.section("6. The same with minikvm's Kvm, Vm, Vcpu and GuestMemory")
    lesson.code("""
        with Kvm() as kvm, kvm.create_vm() as vm:
            memory = GuestMemory.with_size(0x10000)  # mmap, every access checked
            region = memory.regions[0]
            vm.set_user_memory_region(0, 0, region.size, region.host_address)
            vm.set_tss_addr(KVM_TSS_ADDR)
            memory.write(0x1000, CODE)
            vcpu = vm.create_vcpu(0)                 # also maps kvm_run
            sregs = vcpu.get_sregs()
            sregs.cs.selector = sregs.cs.base = 0
            vcpu.set_sregs(sregs)
            regs = vcpu.get_regs()
            regs.rip, regs.rflags = 0x1000, 0x2
            vcpu.set_regs(regs)
            vcpu.run()      # -> IoOut(...)
            vcpu.run()      # -> Hlt(...)
    """)
    with Kvm() as kvm, kvm.create_vm() as vm:
        memory = GuestMemory.with_size(RAM_SIZE)
        region = memory.regions[0]
        vm.set_user_memory_region(0, 0, region.size, region.host_address)
        vm.set_tss_addr(KVM_TSS_ADDR)
        memory.write(CODE_ADDR, CODE)
        vcpu = vm.create_vcpu(0)
        sregs = vcpu.get_sregs()
        sregs.cs.selector = sregs.cs.base = 0
        vcpu.set_sregs(sregs)
        regs = vcpu.get_regs()
        regs.rip = CODE_ADDR
        regs.rflags = 0x2
        vcpu.set_regs(regs)
        first = vcpu.run()
        second = vcpu.run()
    lesson.result("first vcpu.run()", first)
    lesson.result("second vcpu.run()", second)
    lesson.narrate("""
        `Vcpu.run()` decodes `struct kvm_run` into a typed exit and *copies out* what the guest
        wrote, because the next `KVM_RUN` reuses the page. (Port 233 is 0xE9.)
    """)
    lesson.checkpoint("vcpu.run() #1", f"{type(first).__name__} port={first.port:#x} "
                      f"data={first.data!r}", "IoOut port=0xe9 data=b'K'")
    lesson.checkpoint("vcpu.run() #2", repr(second), "Hlt(if_flag=False)")

    lesson.section("7. And with the Machine, which does all of it")
    lesson.narrate("""
        `Machine` wires a whole VM: RAM, a vCPU, the buses and devices, the loader, the CPU
        mode. Its `step()` runs to the next exit, hands I/O to the device that decodes the
        port (here the *debug console* on 0xE9, lesson 03) and says in words what happened.
        `run()` is the VMM's main loop: step until the guest stops.
    """)
    lesson.code("""
        with Machine() as machine:
            machine.load_flat(CODE, 0x1000)     # real mode, CS:IP = 0000:1000
            machine.step()                      # an ExitEvent, explained
            machine.step()
    """)
    text = []
    with Machine(output=text.append) as machine:
        machine.load_flat(CODE, CODE_ADDR)
        first_event = machine.step()
        second_event = machine.step()
    lesson.result("step 1", f"{first_event.reason}: {first_event.description}")
    lesson.result("step 2", f"{second_event.reason}: {second_event.description}")
    lesson.result("stop", second_event.stop.message if second_event.stop else None)
    lesson.checkpoint("Machine step 1", first_event.description,
                      "debug console: the guest prints 'K'")
    lesson.checkpoint("Machine step 2", second_event.description,
                      "hlt with interrupts off: the guest has stopped for good")
    lesson.checkpoint("debug console output", repr(b"".join(text)), "b'K'")


def main(argv: Sequence[str] | None = None) -> int:
    lesson = Lesson("02", "A VM, a memory slot, a vCPU and the first KVM_RUN", argv)
    lesson.narrate("""
        This lesson builds the smallest possible virtual machine by hand, with raw ioctls on
        the three kinds of KVM file descriptor: a VM with 64 KiB of RAM, one vCPU, a five-byte
        program. It runs it with `KVM_RUN` and reads back why the guest stopped, twice. Then
        it does the same with minikvm's classes, which are a thin skin over the same calls.
    """)
    by_hand(lesson)
    with_the_api(lesson)
    return lesson.finish()


if __name__ == "__main__":
    run_lesson(main)
