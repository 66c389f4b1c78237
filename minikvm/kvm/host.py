"""Which KVM the host runs, and what that means for a learner.

``/dev/kvm`` is the same API everywhere, but what sits behind it differs:
``kvm_intel`` (VT-x) and ``kvm_amd`` (AMD-V) run the guest on the CPU's
virtualization extensions; ``kvm_pvm`` ("PVM") is a software scheme used
for nested virtualization in clouds, where guest kernel (ring 0) code is
emulated one instruction at a time and some debug features are missing.
The loaded kernel module tells which one we have.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["HostKvm", "detect_host"]

_MEANINGS = {
    "kvm_intel": "hardware virtualization (Intel VT-x): guest code runs natively on the CPU",
    "kvm_amd": "hardware virtualization (AMD-V/SVM): guest code runs natively on the CPU",
    "kvm_pvm": ("software nested virtualization (PVM): guest ring-0 code is emulated one "
                "instruction at a time (slow, about 5 us each), ring 3 runs natively; "
                "int3 breakpoints, data watchpoints and 32-bit paging are not available"),
}


@dataclass(frozen=True)
class HostKvm:
    """The KVM flavour (``kvm_intel``, ``kvm_amd``, ``kvm_pvm``, ``unknown``)."""

    flavour: str

    @property
    def meaning(self) -> str:
        return _MEANINGS.get(self.flavour, "an unrecognised KVM implementation")

    @property
    def is_pvm(self) -> bool:
        return self.flavour == "kvm_pvm"


def detect_host(sys_module: str = "/sys/module") -> HostKvm:
    """Look at the loaded kernel modules (``/sys/module/kvm_*``)."""
    for flavour in ("kvm_pvm", "kvm_intel", "kvm_amd"):
        if os.path.isdir(os.path.join(sys_module, flavour)):
            return HostKvm(flavour)
    return HostKvm("unknown")
