"""The VM's own state: the in-kernel interrupt controllers, timer and clock.

With ``KVM_CREATE_IRQCHIP`` and ``KVM_CREATE_PIT2`` the kernel emulates
board chips for us, and their state lives in the kernel, not in our
device models:

* the two 8259 PICs and the IOAPIC (``KVM_GET_IRQCHIP`` with
  ``KVM_IRQCHIP_PIC_MASTER``, ``_PIC_SLAVE``, ``_IOAPIC``): masks, requests
  in service, the redirection table (arch/x86/kvm/i8259.c, ioapic.c);
* the 8254 PIT's three channels (``KVM_GET_PIT2``, arch/x86/kvm/i8254.c);
* the VM's kvmclock, the nanosecond clock the PIT, the LAPIC timers and
  a paravirtual guest count on (``KVM_GET_CLOCK``).

Saved as the raw structures (bit-exact); restored with the matching SET
ioctls. A machine without the irqchip has none of them.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

from minikvm.kvm.uapi import (
    KVM_IRQCHIP_IOAPIC,
    KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
    kvm_irqchip,
    kvm_pit_state2,
)
from minikvm.snapshot.format import JsonFields, Section, SnapshotError, json_payload, parse_json

__all__ = ["CHIPS", "VmState", "capture_vm", "restore_vm"]

#: The in-kernel chips, by the id KVM_GET_IRQCHIP takes (the section index).
CHIPS = (KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQCHIP_IOAPIC)


@dataclass
class VmState:
    """The irqchip structures by chip id, the PIT's, and kvmclock in ns."""

    irqchip: dict[int, bytes]
    pit2: bytes
    clock_ns: int

    def sections(self) -> list[Section]:
        out = [Section(b"IRQC", chip, blob) for chip, blob in self.irqchip.items()]
        out.append(Section(b"PIT2", 0, self.pit2))
        out.append(Section(b"CLCK", 0, json_payload({"clock_ns": self.clock_ns})))
        return out

    @classmethod
    def from_sections(cls, sections: list[Section]) -> VmState | None:
        """The VM state in ``sections`` (None when it has none), checked."""
        chips = {s.index: s for s in sections if s.tag == b"IRQC"}
        pit = [s for s in sections if s.tag == b"PIT2"]
        clock = [s for s in sections if s.tag == b"CLCK"]
        if not chips and not pit and not clock:
            return None
        if set(chips) != set(CHIPS) or len(pit) != 1 or len(clock) != 1:
            raise SnapshotError("the irqchip state is incomplete: it needs IRQC[0-2], "
                                "one PIT2 and one CLCK section")
        for section in chips.values():
            if len(section.payload) != ctypes.sizeof(kvm_irqchip):
                raise SnapshotError(f"section {section.name} is not a kvm_irqchip")
            if kvm_irqchip.from_buffer_copy(section.payload).chip_id != section.index:
                raise SnapshotError(f"section {section.name} holds another chip's state")
        if len(pit[0].payload) != ctypes.sizeof(kvm_pit_state2):
            raise SnapshotError("section PIT2[0] is not a kvm_pit_state2")
        doc = JsonFields(parse_json(clock[0]), "CLCK[0]")
        return cls({chip: chips[chip].payload for chip in CHIPS}, pit[0].payload,
                   doc.integer("clock_ns"))


def capture_vm(vm: Any) -> VmState:
    """Read the irqchip, the PIT and kvmclock of a VM with the irqchip."""
    return VmState({chip: bytes(vm.get_irqchip(chip)) for chip in CHIPS},
                   bytes(vm.get_pit2()), vm.get_clock().clock)


def restore_vm(vm: Any, state: VmState) -> None:
    """Load the chips, then the PIT, then the clock. The clock goes last so
    that it reads the saved time when the vCPUs start; the PIT's timer is
    re-armed from its saved count by KVM_SET_PIT2 (kvm_vm_ioctl_set_pit2,
    arch/x86/kvm/x86.c)."""
    for chip in CHIPS:
        vm.set_irqchip(kvm_irqchip.from_buffer_copy(state.irqchip[chip]))
    vm.set_pit2(kvm_pit_state2.from_buffer_copy(state.pit2))
    vm.set_clock(state.clock_ns)
