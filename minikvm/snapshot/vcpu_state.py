"""One vCPU's whole state: what KVM holds for it, read out and put back.

A vCPU is more than its registers. KVM keeps, per vCPU (``struct
kvm_vcpu_arch``, arch/x86/include/asm/kvm_host.h):

* the general registers, RIP and RFLAGS (``KVM_GET_REGS``);
* segments, descriptor tables, CR0-CR4, CR8, EFER, APIC base and a
  pending external interrupt (``KVM_GET_SREGS``);
* the x87/SSE/AVX... state (``KVM_GET_XSAVE``, or ``KVM_GET_FPU`` without
  XSAVE) and XCR0, which says which of those components are enabled
  (``KVM_GET_XCRS``);
* the model-specific registers KVM lists as saveable
  (``KVM_GET_MSR_INDEX_LIST``): SYSENTER/SYSCALL targets, FS/GS base, PAT,
  the TSC, the TSC deadline, kvmclock's...;
* the local APIC's register page (``KVM_GET_LAPIC``) with the in-kernel irqchip;
* exceptions, interrupts and NMIs in flight, the interrupt shadow of a
  ``sti``/``mov ss`` (``KVM_GET_VCPU_EVENTS``);
* whether it runs, sleeps in ``hlt`` or waits for INIT/SIPI (``KVM_GET_MP_STATE``);
* DR0-DR3, DR6, DR7 (``KVM_GET_DEBUGREGS``);
* the CPUID table it was given (``KVM_GET_CPUID2``).

:func:`restore_vcpu` puts them back in an order KVM accepts and that loses
nothing; docs/snapshots.md explains the order with the kernel's source.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from typing import Any

from minikvm.kvm.uapi import (
    KvmCap,
    KvmMpState,
    kvm_debugregs,
    kvm_fpu,
    kvm_lapic_state,
    kvm_regs,
    kvm_sregs,
    kvm_vcpu_events,
    make_kvm_cpuid2,
)
from minikvm.snapshot.format import JsonFields, Section, SnapshotError, json_payload, parse_json
from minikvm.statecheck import MAX_U32, MAX_U64, is_uint

__all__ = ["MSR_IA32_TSC", "MSR_IA32_TSC_DEADLINE", "VcpuParts", "VcpuState", "capture_vcpu",
           "probe_parts", "read_msrs", "restore_vcpu"]

#: The time-stamp counter (Intel SDM vol. 4, table 2-2).
MSR_IA32_TSC = 0x10
#: The LAPIC timer's deadline in TSC-deadline mode. Written only after the
#: LAPIC (whose LVT timer register selects that mode): before it, KVM
#: ignores the write (kvm_set_lapic_tscdeadline_msr, arch/x86/kvm/lapic.c).
MSR_IA32_TSC_DEADLINE = 0x6E0
#: The most MSRs and CPUID leaves a snapshot may list for one vCPU.
MAX_MSRS = 4096
MAX_CPUID = 256
_REGS = [name for name, _ in kvm_regs._fields_]


@dataclass(frozen=True)
class VcpuParts:
    """Which parts of a vCPU's state this KVM can save (``KVM_CHECK_EXTENSION``)."""

    xsave_size: int     # bytes of XSAVE area (KVM_CAP_XSAVE2), 0: no XSAVE -> KVM_GET_FPU
    xcrs: bool          # KVM_CAP_XCRS
    debugregs: bool     # KVM_CAP_DEBUGREGS
    events: bool        # KVM_CAP_VCPU_EVENTS
    mp_state: bool      # KVM_CAP_MP_STATE
    lapic: bool         # the machine has the in-kernel irqchip

    def names(self) -> list[str]:
        """The parts, in words (``snapshot info``, ``minikvm info``)."""
        words = ["regs", "sregs", f"xsave ({self.xsave_size} bytes)" if self.xsave_size else "fpu",
                 "msrs", "cpuid"]
        words += [name for name, have in (("xcrs", self.xcrs), ("lapic", self.lapic),
                                          ("vcpu events", self.events),
                                          ("mp_state", self.mp_state),
                                          ("debugregs", self.debugregs)) if have]
        return words


def probe_parts(kvm: Any, vm: Any, irqchip: bool) -> VcpuParts:
    """Ask KVM what it can save. ``KVM_CAP_XSAVE2`` answers with the size of
    the area on the VM fd (Documentation/virt/kvm/api.rst, 4.42)."""
    xsave_size = 0
    if kvm.check_extension(KvmCap.KVM_CAP_XSAVE) > 0:
        xsave_size = max(4096, vm.check_extension(KvmCap.KVM_CAP_XSAVE2))
    return VcpuParts(xsave_size,
                     kvm.check_extension(KvmCap.KVM_CAP_XCRS) > 0,
                     kvm.check_extension(KvmCap.KVM_CAP_DEBUGREGS) > 0,
                     kvm.check_extension(KvmCap.KVM_CAP_VCPU_EVENTS) > 0,
                     kvm.check_extension(KvmCap.KVM_CAP_MP_STATE) > 0 and irqchip,
                     irqchip)


@dataclass
class VcpuState:
    """Everything :func:`capture_vcpu` read from one vCPU. Structures are
    kept as the bytes KVM gave (bit-exact); registers by name (readable)."""

    index: int
    regs: dict[str, int]
    sregs: bytes
    msrs: dict[int, int]
    cpuid: list[list[int]]
    fpu: bytes | None = None
    xsave: bytes | None = None
    xcrs: dict[int, int] = field(default_factory=dict)
    lapic: bytes | None = None
    events: bytes | None = None
    mp_state: int | None = None
    debugregs: bytes | None = None

    @property
    def rip(self) -> int:
        return self.regs["rip"]

    def sregs_struct(self) -> kvm_sregs:
        return kvm_sregs.from_buffer_copy(self.sregs)

    # -- to and from sections ------------------------------------------------

    def sections(self) -> list[Section]:
        """A JSON ``VCPU`` section and raw ``XSAV``/``FPU``/``LAPC`` ones."""
        doc: dict[str, Any] = {
            "regs": self.regs, "sregs": self.sregs.hex(),
            "msrs": [[index, value] for index, value in self.msrs.items()],
            "cpuid": self.cpuid, "xcrs": [[n, v] for n, v in self.xcrs.items()],
            "events": None if self.events is None else self.events.hex(),
            "mp_state": self.mp_state,
            "debugregs": None if self.debugregs is None else self.debugregs.hex(),
        }
        out = [Section(b"VCPU", self.index, json_payload(doc))]
        for tag, blob in ((b"XSAV", self.xsave), (b"FPU ", self.fpu), (b"LAPC", self.lapic)):
            if blob is not None:
                out.append(Section(tag, self.index, blob))
        return out

    @classmethod
    def from_sections(cls, main: Section, raw: dict[bytes, Section],
                      xsave_size: int) -> VcpuState:
        """Rebuild and check a vCPU's state from its sections: every value's
        type, range and size, before any is used."""
        where = main.name
        doc = JsonFields(parse_json(main), where)
        regs_doc = doc.mapping("regs").exactly(_REGS)
        regs = {name: regs_doc.integer(name) for name in _REGS}
        msrs = {}
        for item in doc.entries("msrs", MAX_MSRS):
            pair = _pair(item, f"{where}.msrs")
            msrs[pair[0]] = pair[1]
        xcrs = dict(_pair(item, f"{where}.xcrs") for item in doc.entries("xcrs", 16))
        cpuid = []
        for entry in doc.entries("cpuid", MAX_CPUID):
            if (not isinstance(entry, list) or len(entry) != 7
                    or not all(is_uint(v, MAX_U32) for v in entry)):
                raise SnapshotError(f"{where}.cpuid entries should be 7 numbers of 32 bits")
            cpuid.append(entry)
        state = cls(main.index, regs,
                    doc.hex_bytes("sregs", ctypes.sizeof(kvm_sregs), exact=True),
                    msrs, cpuid, xcrs=xcrs)
        state.events = doc.hex_bytes("events", ctypes.sizeof(kvm_vcpu_events), exact=True,
                                     optional=True)
        state.debugregs = doc.hex_bytes("debugregs", ctypes.sizeof(kvm_debugregs), exact=True,
                                        optional=True)
        state.mp_state = doc.integer("mp_state", 0, max(KvmMpState), optional=True)
        state.xsave = _blob(raw, b"XSAV", main.index, xsave_size or None)
        state.fpu = _blob(raw, b"FPU ", main.index, ctypes.sizeof(kvm_fpu))
        state.lapic = _blob(raw, b"LAPC", main.index, ctypes.sizeof(kvm_lapic_state))
        if state.xsave is None and state.fpu is None:
            raise SnapshotError(f"{where}: neither XSAVE nor FPU state is saved")
        if state.xsave is not None and not xsave_size:
            raise SnapshotError(f"{where} has XSAVE state, which this KVM cannot load")
        return state


def _pair(item: Any, where: str) -> tuple[int, int]:
    if (not isinstance(item, list) or len(item) != 2
            or not is_uint(item[0], MAX_U32) or not is_uint(item[1], MAX_U64)):
        raise SnapshotError(f"{where} entries should be [number, 64-bit value]")
    return item[0], item[1]


def _blob(raw: dict[bytes, Section], tag: bytes, index: int, size: int | None) -> bytes | None:
    section = raw.get(tag)
    if section is None:
        return None
    if size is None or len(section.payload) != size:
        raise SnapshotError(f"section {section.name} is {len(section.payload)} bytes; "
                            f"this KVM's is {size or 'not available'}")
    return section.payload


# -- reading a vCPU ---------------------------------------------------------------

def read_msrs(vcpu: Any, indices: list[int]) -> dict[int, int]:
    """The MSRs of ``indices`` that read back. ``KVM_GET_MSRS`` stops at the
    first MSR it cannot read and returns how many it did (msr_io,
    arch/x86/kvm/x86.c); that one is skipped and the rest asked again --
    the list KVM reports may name MSRs this CPU lacks."""
    values: dict[int, int] = {}
    pending = list(indices)
    while pending:
        got = vcpu.get_msrs(pending)
        values.update(got)
        pending = pending[len(got) + 1:]
    return values


def capture_vcpu(vcpu: Any, index: int, parts: VcpuParts, msr_indices: list[int]) -> VcpuState:
    """Read every part of one stopped vCPU. ``KVM_GET_MP_STATE`` comes first
    and the LAPIC after it, as QEMU's kvm_arch_get_registers does: reading
    the MP state first takes INIT/SIPI events the LAPIC holds
    (kvm_apic_accept_events), so the LAPIC read next agrees with it."""
    mp_state = vcpu.get_mp_state() if parts.mp_state else None
    regs = vcpu.get_regs()
    cpuid = vcpu.get_cpuid2()
    state = VcpuState(
        index, {name: getattr(regs, name) for name in _REGS}, bytes(vcpu.get_sregs()),
        read_msrs(vcpu, msr_indices),
        [[e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx]
         for e in cpuid.entries[:cpuid.nent]],
        mp_state=mp_state)
    if parts.xsave_size:
        state.xsave = vcpu.get_xsave(parts.xsave_size)
    else:
        state.fpu = bytes(vcpu.get_fpu())
    if parts.xcrs:
        state.xcrs = vcpu.get_xcrs()
    if parts.lapic:
        state.lapic = bytes(vcpu.get_lapic())
    if parts.events:
        state.events = bytes(vcpu.get_vcpu_events())
    if parts.debugregs:
        state.debugregs = bytes(vcpu.get_debugregs())
    return state


# -- putting it back ----------------------------------------------------------------

def restore_vcpu(vcpu: Any, state: VcpuState) -> None:
    """Load ``state`` into a fresh vCPU (never run), in this order:

    1. CPUID: it decides which MSRs and CR4/XCR0 bits are valid
       (kvm_vcpu_after_set_cpuid, arch/x86/kvm/cpuid.c).
    2. sregs, then regs: CR0/CR4/EFER set the mode the other registers
       mean something in (kvm_arch_vcpu_ioctl_set_sregs, x86.c).
    3. XSAVE (or FPU), then XCRs.
    4. MSRs, after sregs: EFER and the APIC base there are checked against
       them; the TSC write sets the guest's TSC offset
       (kvm_synchronize_tsc). Not the TSC deadline yet.
    5. MP state, then the LAPIC (kvm_apic_set_state, lapic.c re-arms its
       timer), then the TSC deadline, which only a LAPIC in TSC-deadline
       mode takes.
    6. vCPU events last: a pending interrupt or NMI is injected relative
       to the LAPIC state just loaded (kvm_vcpu_ioctl_x86_set_vcpu_events).
    7. debug registers.
    """
    if state.cpuid:
        table = make_kvm_cpuid2(len(state.cpuid))
        for entry, values in zip(table.entries, state.cpuid):
            (entry.function, entry.index, entry.flags, entry.eax, entry.ebx, entry.ecx,
             entry.edx) = values
        vcpu.set_cpuid2(table)
    vcpu.set_sregs(kvm_sregs.from_buffer_copy(state.sregs))
    vcpu.set_regs(kvm_regs(**state.regs))
    if state.xsave is not None:
        vcpu.set_xsave(state.xsave)
    elif state.fpu is not None:
        vcpu.set_fpu(kvm_fpu.from_buffer_copy(state.fpu))
    if state.xcrs:
        vcpu.set_xcrs(state.xcrs)
    msrs = {i: v for i, v in state.msrs.items() if i != MSR_IA32_TSC_DEADLINE}
    _set_msrs(vcpu, msrs)
    if state.mp_state is not None:
        vcpu.set_mp_state(state.mp_state)
    if state.lapic is not None:
        vcpu.set_lapic(kvm_lapic_state.from_buffer_copy(state.lapic))
    if MSR_IA32_TSC_DEADLINE in state.msrs:
        _set_msrs(vcpu, {MSR_IA32_TSC_DEADLINE: state.msrs[MSR_IA32_TSC_DEADLINE]})
    if state.events is not None:
        vcpu.set_vcpu_events(kvm_vcpu_events.from_buffer_copy(state.events))
    if state.debugregs is not None:
        vcpu.set_debugregs(kvm_debugregs.from_buffer_copy(state.debugregs))


def _set_msrs(vcpu: Any, values: dict[int, int]) -> None:
    """``KVM_SET_MSRS``. It stops at the first MSR KVM refuses and returns
    how many it set. Some MSRs read back but cannot be written in every
    configuration -- ``MSR_KVM_ASYNC_PF_INT`` needs the in-kernel LAPIC
    (kvm_pv_enable_async_pf_int, x86.c) -- so a refused MSR that already
    holds the saved value is passed over; any other refusal is an error."""
    pending = list(values.items())
    while pending:
        done = vcpu.set_msrs(dict(pending))
        if done >= len(pending):
            return
        index, value = pending[done]
        if vcpu.get_msrs([index]).get(index) != value:
            raise SnapshotError(f"this KVM refused MSR {index:#x} = {value:#x} from the snapshot")
        pending = pending[done + 1:]
