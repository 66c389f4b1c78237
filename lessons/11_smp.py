"""Lesson 11: several CPUs -- application processors, INIT and SIPI, and a lock.

Run it: ``python lessons/11_smp.py`` (``--quiet``: checkpoints only).
Exercise: ``lessons/exercises/11_spinlock.md``.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence

from _common import Lesson, run_lesson

from minikvm.core.config import MachineConfig
from minikvm.kvm.exits import IoOut
from minikvm.kvm.uapi import KvmMpState
from minikvm.machine import Machine
from minikvm.x86.cpuid import apic_id_of

TRAMPOLINE = 0x8000
ICR_LOW = 0xFEE00300
#: vCPU 0, protected mode at 0x1000 (hand-assembled):
#:     mov dword [0xFEE00300], 0x000C4500   ; ICR: INIT, assert, all excluding self
#:     out 0xE9, al                         ; an exit, so we can look
#:     mov dword [0xFEE00300], 0x000C4608   ; ICR: start-up, vector 0x08
#:     out 0xE9, al
#:     cli; hlt
BSP_CODE = (bytes([0xC7, 0x05]) + struct.pack("<II", ICR_LOW, 0x000C4500) + bytes([0xE6, 0xE9])
            + bytes([0xC7, 0x05]) + struct.pack("<II", ICR_LOW, 0x000C4608) + bytes([0xE6, 0xE9])
            + bytes([0xFA, 0xF4]))
#: The AP's first instructions, at 0x8000 in real mode:
#:     mov al, 'A'; out 0xE9, al; cli; hlt
AP_CODE = bytes([0xB0, 0x41, 0xE6, 0xE9, 0xFA, 0xF4])


def state_name(vcpu) -> str:
    return KvmMpState(vcpu.get_mp_state()).name


def main(argv: Sequence[str] | None = None) -> int:
    lesson = Lesson("11", "Several CPUs: INIT, SIPI and a spinlock", argv)
    lesson.narrate("""
        Every machine so far had one CPU. A real PC has several, and they do not all start
        at once: at power-on one of them, the **bootstrap processor** (BSP), runs the
        firmware and the kernel; the others, the **application processors** (APs), wait
        until the BSP wakes them (Intel SDM vol. 3, 8.4 "Multiple-Processor (MP)
        Initialization"). In KVM each CPU is a vCPU with its own file descriptor, its own
        `KVM_RUN`, and -- in minikvm -- its own host thread.
    """)
    waiting(lesson)
    identity(lesson)
    init_and_sipi(lesson)
    the_lock(lesson)
    lesson.narrate("""
        That is SMP from the bottom: vCPUs that KVM keeps parked until an INIT and a SIPI,
        an APIC id each, a real-mode trampoline, and a lock built on one atomic
        instruction. Linux starts its APs the same way (`arch/x86/kernel/smpboot.c`,
        `do_boot_cpu`), and kvm-unit-tests too (`lib/x86/smp.c`, `x86/trampolines.S`):
        `minikvm run x86/smptest.flat --smp 4` runs its SMP test.

        **Exercise 11** (`lessons/exercises/11_spinlock.md`): write the spinlock.
        `minikvm lesson check 11`.
    """)
    return lesson.finish()


def waiting(lesson: Lesson) -> None:
    lesson.section("1. The APs wait: KVM_GET_MP_STATE")
    lesson.narrate("""
        With the in-kernel irqchip each vCPU gets a local APIC in the kernel, and KVM
        decides who may run: vCPU 0 is the BSP and starts **runnable**; every other vCPU
        starts **uninitialized**, and a `KVM_RUN` on it just sleeps in the kernel
        (`kvm_arch_vcpu_create` and `kvm_arch_vcpu_ioctl_run` in arch/x86/kvm/x86.c).
        `KVM_GET_MP_STATE` says which state a vCPU is in:
    """)
    lesson.code("""
        machine = Machine(vcpus=4, irqchip=True)
        [KvmMpState(vcpu.get_mp_state()).name for vcpu in machine.vcpus]
    """)
    with Machine(vcpus=4, irqchip=True) as machine:
        states = [state_name(vcpu) for vcpu in machine.vcpus]
    for index, state in enumerate(states):
        lesson.result(f"vCPU {index}", state)
    lesson.checkpoint("MP states", " ".join(name.removeprefix("KVM_MP_STATE_") for name in states),
                      "RUNNABLE UNINITIALIZED UNINITIALIZED UNINITIALIZED")
    lesson.narrate("""
        So a guest that never wakes its APs runs on one CPU, whatever the VMM created. When
        vCPU 0 then halts for good, minikvm counts a parked AP as done, and the machine ends
        ("vCPU 1, 2, 3 never started"). Without the irqchip there is nobody to hold the APs
        back: every vCPU would start at the reset vector at once, so `--smp` needs it.
    """)


def identity(lesson: Lesson) -> None:
    lesson.section("2. Who am I? The APIC id")
    lesson.narrate("""
        Each local APIC has an id, in bits 31:24 of its ID register at offset 0x20; it is
        the address another CPU sends interrupts to. KVM gives vCPU *n* the id *n*
        (`kvm_lapic_reset`, arch/x86/kvm/lapic.c). A CPU also reads its id from CPUID leaf 1,
        EBX bits 31:24 -- but that value is whatever the VMM put in that vCPU's CPUID table
        (`KVM_SET_CPUID2` is per vCPU), so minikvm writes each vCPU its own
        (`minikvm/x86/cpuid.py`, `with_apic_id`). The two must agree:
    """)
    with Machine(vcpus=4, irqchip=True) as machine:
        pairs = []
        for index, vcpu in enumerate(machine.vcpus):
            lapic = struct.unpack_from("<I", bytes(vcpu.get_lapic().regs), 0x20)[0] >> 24
            cpuid = apic_id_of(vcpu.get_cpuid2())
            lesson.result(f"vCPU {index}", f"LAPIC ID register {lapic}, CPUID leaf 1 {cpuid}")
            pairs.append(f"{lapic}/{cpuid}")
    lesson.checkpoint("APIC ids (LAPIC/CPUID)", " ".join(pairs), "0/0 1/1 2/2 3/3")


def init_and_sipi(lesson: Lesson) -> None:
    lesson.section("3. Waking an AP: INIT, then SIPI, one exit at a time")
    lesson.narrate("""
        The BSP wakes an AP by writing its local APIC's **interrupt command register** (ICR,
        offset 0x300, SDM 10.6.1): first an **INIT** (delivery mode 5), which resets the AP
        and puts it in *wait-for-SIPI*; then a **start-up IPI** (SIPI, delivery mode 6)
        whose vector byte says where to start: real mode, CS = vector << 8, IP = 0, so
        vector 0x08 starts the AP at physical 0x8000. `0x000C4500` is INIT to "all
        excluding self"; `0x000C4608` the SIPI with vector 0x08.

        Our BSP does just that, with an `out` after each write so that we get an exit and
        can look at the AP in between. We run **only vCPU 0** (`machine.step(vcpu=0)`); the
        AP is not running at all, so we may ask KVM about it at any time.
    """)
    output: list[bytes] = []
    with Machine(vcpus=2, irqchip=True, output=output.append) as machine:
        machine.memory.write(0x1000, BSP_CODE)
        machine.memory.write(TRAMPOLINE, AP_CODE)
        machine.set_mode("protected", 0x1000)
        ap = machine.vcpus[1]
        before = state_name(ap)
        machine.step(vcpu=0)
        after_init = state_name(ap)
        lesson.result("the AP before", before)
        lesson.result("after the INIT", after_init)
        lesson.narrate("""
            The ICR write never left the kernel: KVM's LAPIC (`__apic_accept_irq` in
            arch/x86/kvm/lapic.c, case `APIC_DM_INIT`) only marked an INIT pending for the
            AP and kicked it. The AP takes it itself, in `kvm_apic_accept_events`: its
            registers are reset and its state becomes INIT_RECEIVED -- wait-for-SIPI.
            (`KVM_GET_MP_STATE` runs `kvm_apic_accept_events` first, so we see it even
            though the AP never ran.)
        """)
        lesson.checkpoint("after INIT", after_init.removeprefix("KVM_MP_STATE_"),
                          "INIT_RECEIVED")
        machine.step(vcpu=0)
        after_sipi = state_name(ap)
        sregs, regs = ap.get_sregs(), ap.get_regs()
        lesson.result("after the SIPI", after_sipi)
        lesson.result("the AP's CS selector, CS base, IP",
                      f"{sregs.cs.selector:#06x}, {sregs.cs.base:#x}, {regs.rip:#x}")
        lesson.narrate("""
            Case `APIC_DM_STARTUP` stored the vector and marked a SIPI pending; in
            `kvm_apic_accept_events`, an AP in INIT_RECEIVED takes it:
            `kvm_vcpu_deliver_sipi_vector` (arch/x86/kvm/x86.c) sets CS.selector =
            vector << 8, CS.base = vector << 12, RIP = 0, and the AP becomes runnable. A
            SIPI to a CPU that is not waiting for one is dropped -- which is why the SDM's
            sequence can send two SIPIs safely.
        """)
        lesson.checkpoint("after SIPI", f"{after_sipi.removeprefix('KVM_MP_STATE_')}, "
                          f"CS={sregs.cs.selector:#06x} base={sregs.cs.base:#x} "
                          f"IP={regs.rip:#x}", "RUNNABLE, CS=0x0800 base=0x8000 IP=0x0")
        event = machine.step(vcpu=1)
        first = event.exit
        lesson.result("the AP's first exit", event.description)
        lesson.checkpoint("AP's first exit", f"vCPU {event.vcpu} "
                          f"{'out' if isinstance(first, IoOut) else first} "
                          f"{getattr(first, 'data', b'')!r}", "vCPU 1 out b'A'")
    lesson.narrate("""
        Real code starting at 0x8000 is a **trampoline**: a few 16-bit instructions below
        1 MiB that load a GDT, set CR0.PE and jump to the kernel's 32- or 64-bit code, each
        AP on a stack of its own. `guests/include/smp_start.h` has one, commented line by
        line, and `start_aps()`, the INIT-SIPI-SIPI sequence of the SDM.
    """)


def the_lock(lesson: Lesson) -> None:
    lesson.section("4. Counting together: a spinlock")
    lesson.narrate("""
        `guests/c/smp.c` puts it together: it asks fw_cfg how many CPUs there are (`NB_CPUS`,
        ports 0x510/0x511, as kvm-unit-tests does), starts the APs, and each CPU reports
        its APIC id and then adds 1 to a shared counter 50 times. `counter = counter + 1`
        is a read and a write: two CPUs doing it at once can both read 5 and both write 6.
        So each increment happens under a **spinlock**:
    """)
    lesson.code("""
        static void spin_lock(volatile u32 *l)
        {
            while (__atomic_exchange_n(l, 1, __ATOMIC_ACQUIRE))   /* xchg */
                while (*l)
                    __asm__ volatile("pause");
        }
        static void spin_unlock(volatile u32 *l) { __atomic_store_n(l, 0, __ATOMIC_RELEASE); }
    """, "c")
    lesson.narrate("""
        `xchg` with memory swaps in one indivisible step (SDM vol. 3, 8.1.2.1: it is always
        locked): the CPU that gets 0 back owns the lock, the others got 1 and spin --
        reading only, with `pause` -- until it looks free. Each vCPU is a host thread, so
        with two host cores two vCPUs really do run at the same moment; KVM keeps the
        atomic instructions atomic across them, even where it emulates them. Four vCPUs:
    """)
    output = bytearray()
    config = MachineConfig(guest=str(lesson.guest("smp.elf")), vcpus=4, irqchip=True)
    with Machine.from_config(config, output=output.extend) as machine:
        stop = machine.run(timeout=60)
    text = output.decode()
    lesson.block(text.rstrip("\n"))
    ids = sorted(int(found) for found in re.findall(r"APIC id (\d+), CPUID says \1\b", text))
    lesson.result("how the machine ended", stop.message)
    lesson.checkpoint("APIC ids reported", " ".join(map(str, ids)), "0 1 2 3")
    lesson.checkpoint("count", text.strip().splitlines()[-1],
                      "smp: 4 of 4 CPUs counted to 200 (expected 200): ok")
    lesson.checkpoint("stop", stop.kind.value, "halt")
    lesson.narrate("""
        The lines of the APs come in whatever order the host scheduled their threads; the
        total does not. Every CPU ended in `cli; hlt`, and minikvm ends the machine only when
        all of them are halted (or parked): a halted CPU could still be woken by another
        one's INIT or NMI, so no single vCPU may decide alone.
    """)


if __name__ == "__main__":
    run_lesson(main)
