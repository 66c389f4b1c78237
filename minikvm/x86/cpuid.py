"""What the guest's CPUID says about paging, for walks that must agree with KVM.

A VMM tells KVM which CPUID the guest sees (``KVM_SET_CPUID2``, usually a
filtered copy of ``KVM_GET_SUPPORTED_CPUID``). KVM's own page walker then
follows that CPUID: 1 GiB pages exist only if leaf 0x80000001 EDX bit 26
(Page1GB) says so, and physical address bits above MAXPHYADDR (leaf
0x80000008 EAX[7:0], 36 when the leaf is absent) are reserved. Our walk in
:mod:`minikvm.x86.paging` takes the same two facts from here.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CPUID_PAGE1GB", "PagingFeatures", "paging_features"]

CPUID_EXT_FEATURES = 0x8000_0001   # extended features: EDX bit 26 = 1 GiB pages
CPUID_ADDRESS_SIZES = 0x8000_0008  # EAX[7:0] physical, EAX[15:8] linear address bits
CPUID_PAGE1GB = 1 << 26
DEFAULT_MAXPHYADDR = 36            # what KVM assumes without leaf 0x80000008


@dataclass(frozen=True)
class PagingFeatures:
    gbpages: bool
    maxphyaddr: int


def paging_features(cpuid) -> PagingFeatures:
    """From a ``kvm_cpuid2`` (as set on the vCPU) to the walker's parameters."""
    entries = {(e.function, e.index): e for e in cpuid.entries[:cpuid.nent]}
    ext = entries.get((CPUID_EXT_FEATURES, 0))
    sizes = entries.get((CPUID_ADDRESS_SIZES, 0))
    return PagingFeatures(
        gbpages=bool(ext is not None and ext.edx & CPUID_PAGE1GB),
        maxphyaddr=(sizes.eax & 0xFF) if sizes is not None and sizes.eax & 0xFF else DEFAULT_MAXPHYADDR,
    )
