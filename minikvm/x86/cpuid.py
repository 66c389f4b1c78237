"""The guest's CPUID: what it says about paging, and each vCPU's APIC id.

A VMM tells KVM which CPUID the guest sees (``KVM_SET_CPUID2``, usually a
filtered copy of ``KVM_GET_SUPPORTED_CPUID``). KVM's own page walker then
follows that CPUID: 1 GiB pages exist only if leaf 0x80000001 EDX bit 26
(Page1GB) says so, and physical address bits above MAXPHYADDR (leaf
0x80000008 EAX[7:0], 36 when the leaf is absent) are reserved. Our walk in
:mod:`minikvm.x86.paging` takes the same two facts from here.

Each vCPU also learns *who it is* from CPUID: its initial APIC id in leaf 1
EBX[31:24] and its x2APIC id in EDX of leaf 0xB (and 0x1F) (Intel SDM vol.
3, 8.4.5 "Identifying Logical Processors in an MP System"; AMD APM vol. 3,
CPUID Fn0000_0001). ``KVM_GET_SUPPORTED_CPUID`` answers with what the host
CPU that ran the ioctl says there (``__do_cpuid_func`` in
arch/x86/kvm/cpuid.c zeroes only EAX-ECX of leaves 0xB/0x1F, "No
topology"), while the in-kernel LAPIC gives vCPU *n* APIC id *n*
(``kvm_lapic_reset``, arch/x86/kvm/lapic.c). So the VMM writes each vCPU
a table of its own: :func:`with_apic_id`.

What the guest really sees depends on the host. On hardware KVM every CPUID
exits to KVM, which answers from the vCPU's table. Under kvm-pvm the guest's
ring-0 code is emulated, and KVM's emulator answers from the table too (the
SMP guest's "CPUID says" equals its LAPIC id); but guest ring 3 runs
natively, and a CPUID there answers from the *host* CPU: its vendor, its
APIC id (tests/test_smp_guests.py probes both).
"""

from __future__ import annotations

from minikvm.record import FrozenRecord

__all__ = ["CPUID_PAGE1GB", "PagingFeatures", "apic_id_of", "paging_features", "with_apic_id"]

CPUID_FEATURES = 0x1               # EBX[31:24]: initial APIC id
CPUID_TOPOLOGY = 0xB               # EDX: x2APIC id (every subleaf)
CPUID_TOPOLOGY_V2 = 0x1F           # the same, extended topology v2
CPUID_EXT_FEATURES = 0x8000_0001   # extended features: EDX bit 26 = 1 GiB pages
CPUID_ADDRESS_SIZES = 0x8000_0008  # EAX[7:0] physical, EAX[15:8] linear address bits
CPUID_PAGE1GB = 1 << 26
DEFAULT_MAXPHYADDR = 36            # what KVM assumes without leaf 0x80000008


class PagingFeatures(FrozenRecord):
    """What KVM's page walker takes from CPUID: 1 GiB pages, and the
    physical address width (a frozen record, :mod:`minikvm.record`)."""

    __slots__ = ("gbpages", "maxphyaddr")
    gbpages: bool
    maxphyaddr: int

    def __init__(self, gbpages: bool, maxphyaddr: int) -> None:
        self._set(gbpages=gbpages, maxphyaddr=maxphyaddr)


def paging_features(cpuid) -> PagingFeatures:
    """From a ``kvm_cpuid2`` (as set on the vCPU) to the walker's parameters."""
    entries = {(e.function, e.index): e for e in cpuid.entries[:cpuid.nent]}
    ext = entries.get((CPUID_EXT_FEATURES, 0))
    sizes = entries.get((CPUID_ADDRESS_SIZES, 0))
    return PagingFeatures(
        gbpages=bool(ext is not None and ext.edx & CPUID_PAGE1GB),
        maxphyaddr=(sizes.eax & 0xFF) if sizes is not None and sizes.eax & 0xFF else DEFAULT_MAXPHYADDR,
    )


def with_apic_id(cpuid, apic_id: int):
    """A copy of ``cpuid`` (a ``kvm_cpuid2``) for the vCPU whose APIC id is
    ``apic_id``: leaf 1 EBX[31:24] and EDX of every leaf 0xB/0x1F subleaf.

    The copy is needed because ``KVM_SET_CPUID2`` is per vCPU and each one
    must hear its own id; leaf 1 holds only 8 bits, so ids above 255 need
    x2APIC (leaf 0xB), which a machine of at most 255 vCPUs never uses.
    """
    if not 0 <= apic_id <= 0xFF:
        raise ValueError(f"APIC id {apic_id} does not fit in CPUID leaf 1 EBX[31:24]")
    copy = type(cpuid).from_buffer_copy(cpuid)
    for entry in copy.entries[:copy.nent]:
        if entry.function == CPUID_FEATURES:
            entry.ebx = (entry.ebx & 0x00FF_FFFF) | (apic_id << 24)
        elif entry.function in (CPUID_TOPOLOGY, CPUID_TOPOLOGY_V2):
            entry.edx = apic_id
    return copy


def apic_id_of(cpuid) -> int | None:
    """The initial APIC id a ``kvm_cpuid2`` gives (leaf 1 EBX[31:24]); None without leaf 1."""
    for entry in cpuid.entries[:cpuid.nent]:
        if entry.function == CPUID_FEATURES:
            return entry.ebx >> 24
    return None
