"""``Vm``: a virtual machine file descriptor.

A VM owns the guest-physical address space (memory slots: which host memory
appears at which guest address), the in-kernel interrupt controllers and
timer when a VMM asks for them, and its vCPUs.
"""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING

from minikvm.kvm import ioctls
from minikvm.kvm.fd import KvmFd
from minikvm.kvm.uapi import (
    KVM_PIT_SPEAKER_DUMMY,
    kvm_dirty_log,
    kvm_irq_level,
    kvm_irqchip,
    kvm_pit_config,
    kvm_pit_state2,
    kvm_userspace_memory_region,
)
from minikvm.kvm.vcpu import Vcpu

if TYPE_CHECKING:
    from minikvm.kvm.system import Kvm

__all__ = ["Vm"]


class Vm(KvmFd):
    """One virtual machine. Create it with :meth:`Kvm.create_vm`."""

    def __init__(self, kvm: Kvm, fd: int) -> None:
        super().__init__(fd)
        self.kvm = kvm
        self.vcpus: list[Vcpu] = []

    def check_extension(self, cap: int) -> int:
        """``KVM_CHECK_EXTENSION`` on the VM fd (answers for this VM)."""
        return self._ioctl(ioctls.KVM_CHECK_EXTENSION, int(cap))

    def set_user_memory_region(self, slot: int, guest_phys_addr: int, memory_size: int,
                               userspace_addr: int, flags: int = 0) -> None:
        """``KVM_SET_USER_MEMORY_REGION``: make ``memory_size`` bytes of host
        memory at ``userspace_addr`` appear at ``guest_phys_addr``. Guest
        accesses there no longer exit: they hit RAM directly. A size of 0
        deletes the slot. ``KVM_MEM_READONLY`` turns guest writes into MMIO exits."""
        region = kvm_userspace_memory_region(
            slot=slot, flags=flags, guest_phys_addr=guest_phys_addr,
            memory_size=memory_size, userspace_addr=userspace_addr)
        self._ioctl(ioctls.KVM_SET_USER_MEMORY_REGION, region)

    def set_tss_addr(self, address: int) -> None:
        """``KVM_SET_TSS_ADDR``: three pages of guest-physical space (outside
        RAM) that Intel VMX needs to emulate real mode with a vm86 task."""
        self._ioctl(ioctls.KVM_SET_TSS_ADDR, address)

    def set_identity_map_addr(self, address: int) -> None:
        """``KVM_SET_IDENTITY_MAP_ADDR``: one page for the identity page
        table Intel VMX uses while the guest runs with paging off."""
        value = ctypes.c_uint64(address)
        self._ioctl(ioctls.KVM_SET_IDENTITY_MAP_ADDR, value)

    def create_irqchip(self) -> None:
        """``KVM_CREATE_IRQCHIP``: emulate the PC's two 8259 PICs, the IOAPIC
        and a local APIC per vCPU in the kernel. Devices then raise interrupts
        with :meth:`irq_line`, and ``hlt`` waits in the kernel."""
        self._ioctl(ioctls.KVM_CREATE_IRQCHIP)

    def create_pit2(self, flags: int = KVM_PIT_SPEAKER_DUMMY) -> None:
        """``KVM_CREATE_PIT2``: an in-kernel 8254 timer on ports 0x40-0x43
        wired to IRQ 0 (needs the irqchip). The dummy speaker claims port 0x61."""
        config = kvm_pit_config(flags=flags)
        self._ioctl(ioctls.KVM_CREATE_PIT2, config)

    def irq_line(self, irq: int, level: bool) -> None:
        """``KVM_IRQ_LINE``: drive global system interrupt ``irq`` high or low.
        GSIs 0-15 reach both the PIC and the IOAPIC, as ISA IRQs do on a PC."""
        request = kvm_irq_level(irq=irq, level=1 if level else 0)
        self._ioctl(ioctls.KVM_IRQ_LINE, request)

    def get_irqchip(self, chip_id: int) -> kvm_irqchip:
        """``KVM_GET_IRQCHIP``: the state of one in-kernel PIC or the IOAPIC."""
        chip = kvm_irqchip(chip_id=chip_id)
        self._ioctl(ioctls.KVM_GET_IRQCHIP, chip)
        return chip

    def set_irqchip(self, chip: kvm_irqchip) -> None:
        """``KVM_SET_IRQCHIP``: load one in-kernel PIC or the IOAPIC (a
        :meth:`get_irqchip` result, changed) -- what firmware's port writes
        would have left, without running firmware."""
        self._ioctl(ioctls.KVM_SET_IRQCHIP, chip)

    def get_pit2(self) -> kvm_pit_state2:
        """``KVM_GET_PIT2``: the in-kernel PIT's three counters."""
        state = kvm_pit_state2()
        self._ioctl(ioctls.KVM_GET_PIT2, state)
        return state

    def set_pit2(self, state: kvm_pit_state2) -> None:
        """``KVM_SET_PIT2``: load the counters; KVM reloads each count in
        its mode, which starts channel 0's timer (arch/x86/kvm/i8254.c)."""
        self._ioctl(ioctls.KVM_SET_PIT2, state)

    def get_dirty_log(self, slot: int, pages: int) -> bytes:
        """``KVM_GET_DIRTY_LOG``: a bitmap of the pages written in ``slot``
        since the last call (the slot needs ``KVM_MEM_LOG_DIRTY_PAGES``)."""
        bitmap = (ctypes.c_uint64 * ((pages + 63) // 64))()
        log = kvm_dirty_log(slot=slot)
        log.dirty_bitmap = ctypes.addressof(bitmap)
        self._ioctl(ioctls.KVM_GET_DIRTY_LOG, log)
        return bytes(bitmap)

    def create_vcpu(self, vcpu_id: int = 0) -> Vcpu:
        """``KVM_CREATE_VCPU``: a virtual CPU, in the state of an x86 CPU
        after reset (real mode, CS:IP = F000:FFF0)."""
        fd = self._ioctl(ioctls.KVM_CREATE_VCPU, vcpu_id)
        vcpu = Vcpu(self, fd, vcpu_id, self.kvm.vcpu_mmap_size())
        self.vcpus.append(vcpu)
        return vcpu

    def close(self) -> None:
        for vcpu in self.vcpus:
            vcpu.close()
        self.vcpus.clear()
        super().close()
