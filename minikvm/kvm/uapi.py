"""ctypes mirrors of the KVM user-space ABI: ``<linux/kvm.h>`` and x86's ``<asm/kvm.h>``.

Every ioctl on ``/dev/kvm`` passes a pointer to a C structure whose layout is
fixed by the kernel headers (Documentation/virt/kvm/api.rst describes each
one). Python speaks that ABI through :mod:`ctypes`: a ``ctypes.Structure``
with the same field types in the same order has the same size, alignment
and offsets as the C struct, so ``fcntl.ioctl(fd, request, struct)`` hands
the kernel exactly the bytes it expects.

Rules of this module:

* x86-64 only. Structure, field and constant names are the kernel's own, so
  that ``grep`` in the kernel finds every one of them.
* Padding fields are mirrored too (``padding1``, ``pad``, ``reserved``):
  the kernel often requires them to be zero, and they keep the offsets right.
* No behaviour: only layouts, numbers and tiny constructors.
* C declares some structs/unions inline, without a tag. Their Python
  classes get a made-up name (``kvm_run_io`` for ``kvm_run.io``) and a
  ``_c_parent_ = (name of the Python class holding it, member)`` marker. A
  member C does not even name (``kvm_run``'s union of exit details) is a
  ctypes field with a ``_`` name listed in the holder's ``_anonymous_``, so
  its fields are reached straight through the parent, as in C: ``run.io.port``.
* Structures that end in a flexible array (``kvm_msrs``, ``kvm_msr_list``,
  ``kvm_cpuid2``) mirror only the header and name the array in
  ``_flexible_array_``; ``make_kvm_msrs(n)`` and friends build an instance
  with room for ``n`` entries.
* Every command loads this module, and an enum costs ~25 us per member to
  create (``KvmCap`` alone ~3 ms). The enums a run needs (``KvmExit``,
  ``KvmMpState``) are built at import; the others -- ``KvmCap``,
  ``KvmGuestDbg``, ``KvmVcpuEventValid``, ``KvmMemFlag``, ``KvmSystemEvent``,
  ``KvmInternalError`` and their module-level ``KVM_*`` aliases -- where they
  stand, in a function that the module's ``__getattr__`` (PEP 562,
  :mod:`minikvm.kvm.lazy`) calls on first use: ``uapi.KvmCap`` and
  ``from minikvm.kvm.uapi import KvmCap`` work as before. The two capabilities every machine asks for are plain
  numbers too (``KVM_CAP_SYNC_REGS``, ``KVM_CAP_MAX_VCPUS``).
* ``tests/test_abi_conformance.py`` compiles a C program against the
  installed header and checks every size, offset and constant here. The
  layouts follow the Linux 6.1 UAPI headers; where a later kernel renamed a
  field, only the part common to both is mirrored (see ``kvm_run_hypercall``).
"""

from __future__ import annotations

import ctypes
from ctypes import (
    c_int16,
    c_int32,
    c_int64,
    c_uint8,
    c_uint16,
    c_uint32,
    c_uint64,
    c_void_p,
)
from enum import IntEnum, IntFlag
from functools import lru_cache

from minikvm.kvm.lazy import lazy_enums

__all__ = [
    # structures
    "kvm_regs", "kvm_segment", "kvm_dtable", "kvm_sregs", "kvm_fpu",
    "kvm_msr_entry", "kvm_msrs", "kvm_msr_list", "kvm_cpuid_entry2", "kvm_cpuid2",
    "kvm_userspace_memory_region", "kvm_debug_exit_arch", "kvm_guest_debug_arch",
    "kvm_guest_debug", "kvm_irq_level", "kvm_pit_config", "kvm_translation",
    "kvm_dirty_log", "kvm_lapic_state", "kvm_debugregs",
    "kvm_vcpu_events", "kvm_vcpu_events_exception", "kvm_vcpu_events_interrupt",
    "kvm_vcpu_events_nmi", "kvm_vcpu_events_smi", "kvm_vcpu_events_triple_fault",
    "kvm_interrupt", "kvm_mp_state", "kvm_pic_state", "kvm_ioapic_state",
    "kvm_ioapic_redirtbl", "kvm_ioapic_redirtbl_fields", "kvm_irqchip",
    "kvm_irqchip_chip", "kvm_enable_cap", "kvm_clock_data",
    "kvm_pit_channel_state", "kvm_pit_state2", "kvm_sync_regs",
    "kvm_run", "kvm_run_exit", "kvm_run_hw", "kvm_run_fail_entry", "kvm_run_ex",
    "kvm_run_io", "kvm_run_debug", "kvm_run_mmio", "kvm_run_hypercall",
    "kvm_run_tpr_access", "kvm_run_internal", "kvm_run_emulation_failure",
    "kvm_run_system_event", "kvm_run_eoi", "kvm_run_msr", "kvm_run_notify",
    "kvm_run_s", "kvm_xsave", "kvm_xcr", "kvm_xcrs", "kvm_stats_header", "kvm_stats_desc",
    "ALL_STRUCTS",
    # variable-length structures
    "make_kvm_msrs", "make_kvm_msr_list", "make_kvm_cpuid2", "make_kvm_xsave",
    # enumerations
    "KvmExit", "KvmCap", "KvmSystemEvent", "KvmInternalError", "KvmMpState",
    "KvmGuestDbg", "KvmMemFlag", "KvmVcpuEventValid",
    # plain constants
    "KVM_API_VERSION", "KVM_NR_INTERRUPTS", "KVM_APIC_REG_SIZE", "KVM_IOAPIC_NUM_PINS",
    "KVM_EXIT_IO_IN", "KVM_EXIT_IO_OUT",
    "KVM_GUESTDBG_ENABLE", "KVM_GUESTDBG_SINGLESTEP", "KVM_GUESTDBG_USE_SW_BP",
    "KVM_GUESTDBG_USE_HW_BP", "KVM_GUESTDBG_INJECT_DB", "KVM_GUESTDBG_INJECT_BP",
    "KVM_GUESTDBG_BLOCKIRQ",
    "KVM_MEM_LOG_DIRTY_PAGES", "KVM_MEM_READONLY",
    "KVM_SYSTEM_EVENT_SHUTDOWN", "KVM_SYSTEM_EVENT_RESET", "KVM_SYSTEM_EVENT_CRASH",
    "KVM_SYSTEM_EVENT_WAKEUP", "KVM_SYSTEM_EVENT_SUSPEND", "KVM_SYSTEM_EVENT_SEV_TERM",
    "KVM_INTERNAL_ERROR_EMULATION", "KVM_INTERNAL_ERROR_SIMUL_EX",
    "KVM_INTERNAL_ERROR_DELIVERY_EV", "KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON",
    "KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES",
    "KVM_MP_STATE_RUNNABLE", "KVM_MP_STATE_UNINITIALIZED", "KVM_MP_STATE_INIT_RECEIVED",
    "KVM_MP_STATE_HALTED", "KVM_MP_STATE_SIPI_RECEIVED", "KVM_MP_STATE_STOPPED",
    "KVM_MP_STATE_CHECK_STOP", "KVM_MP_STATE_OPERATING", "KVM_MP_STATE_LOAD",
    "KVM_MP_STATE_AP_RESET_HOLD", "KVM_MP_STATE_SUSPENDED",
    "KVM_IRQCHIP_PIC_MASTER", "KVM_IRQCHIP_PIC_SLAVE", "KVM_IRQCHIP_IOAPIC",
    "KVM_NR_IRQCHIPS", "KVM_PIT_SPEAKER_DUMMY",
    "KVM_PIT_FLAGS_HPET_LEGACY", "KVM_PIT_FLAGS_SPEAKER_DATA_ON",
    "KVM_VCPUEVENT_VALID_NMI_PENDING", "KVM_VCPUEVENT_VALID_SIPI_VECTOR",
    "KVM_VCPUEVENT_VALID_SHADOW", "KVM_VCPUEVENT_VALID_SMM",
    "KVM_VCPUEVENT_VALID_PAYLOAD", "KVM_VCPUEVENT_VALID_TRIPLE_FAULT",
    "KVM_X86_SHADOW_INT_MOV_SS", "KVM_X86_SHADOW_INT_STI",
    "KVM_CPUID_FLAG_SIGNIFCANT_INDEX", "KVM_CPUID_FLAG_STATEFUL_FUNC",
    "KVM_CPUID_FLAG_STATE_READ_NEXT",
    "KVM_SYNC_X86_REGS", "KVM_SYNC_X86_SREGS", "KVM_SYNC_X86_EVENTS",
    "KVM_RUN_X86_SMM", "KVM_RUN_X86_BUS_LOCK",
    "KVM_MSR_EXIT_REASON_INVAL", "KVM_MSR_EXIT_REASON_UNKNOWN",
    "KVM_MSR_EXIT_REASON_FILTER",
    "KVM_PIO_PAGE_OFFSET", "KVM_COALESCED_MMIO_PAGE_OFFSET",
    "KVM_MAX_XCRS", "KVM_CAP_SYNC_REGS", "KVM_CAP_MAX_VCPUS",
    "KVM_STATS_TYPE_SHIFT", "KVM_STATS_TYPE_MASK", "KVM_STATS_TYPE_CUMULATIVE",
    "KVM_STATS_TYPE_INSTANT", "KVM_STATS_TYPE_PEAK", "KVM_STATS_TYPE_LINEAR_HIST",
    "KVM_STATS_TYPE_LOG_HIST", "KVM_STATS_UNIT_SHIFT", "KVM_STATS_UNIT_MASK",
    "KVM_STATS_UNIT_NONE", "KVM_STATS_UNIT_BYTES", "KVM_STATS_UNIT_SECONDS",
    "KVM_STATS_UNIT_CYCLES", "KVM_STATS_UNIT_BOOLEAN", "KVM_STATS_BASE_SHIFT",
    "KVM_STATS_BASE_MASK", "KVM_STATS_BASE_POW10", "KVM_STATS_BASE_POW2",
]

# ---------------------------------------------------------------------------
# Sizes fixed by the headers
# ---------------------------------------------------------------------------

#: The only API version there has ever been in mainline (since Linux 2.6.22).
#: ``KVM_GET_API_VERSION`` must return it; anything else is not the ABI below.
KVM_API_VERSION = 12

#: x86 has 256 interrupt vectors; ``kvm_sregs.interrupt_bitmap`` has one bit each.
KVM_NR_INTERRUPTS = 256

#: The local APIC's register page as KVM saves it: the first 1 KiB of the
#: 4 KiB xAPIC MMIO page (Intel SDM vol. 3, 10.4.1, "Local APIC register address map").
KVM_APIC_REG_SIZE = 0x400

#: Pins of the emulated 82093AA I/O APIC.
KVM_IOAPIC_NUM_PINS = 24

#: Page offsets (in pages) inside the vCPU mmap area. String I/O data sits in
#: the page after ``kvm_run``; ``kvm_run.io.data_offset`` points there.
KVM_PIO_PAGE_OFFSET = 1
KVM_COALESCED_MMIO_PAGE_OFFSET = 2


# ---------------------------------------------------------------------------
# Registers (KVM_GET/SET_REGS, _SREGS, _FPU, _DEBUGREGS)
# ---------------------------------------------------------------------------

class kvm_regs(ctypes.Structure):
    """General-purpose registers, RIP and RFLAGS (``KVM_GET_REGS``/``KVM_SET_REGS``)."""

    _fields_ = [(name, c_uint64) for name in (
        "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
        "rip", "rflags",
    )]


class kvm_segment(ctypes.Structure):
    """A segment register with its hidden part (base, limit, attributes).

    The CPU caches a descriptor when a selector is loaded (Intel SDM vol. 3,
    3.4.3 "Segment Registers"); KVM exposes that cache, so a VMM can enter
    protected or long mode without running the guest code that loads it.
    ``type``/``s``/``dpl``/``present``/``avl``/``l``/``db``/``g`` are the
    descriptor's attribute bits one per byte; ``unusable`` is VMX's "segment
    unusable" flag (a null selector).
    """

    _fields_ = [
        ("base", c_uint64),
        ("limit", c_uint32),
        ("selector", c_uint16),
        ("type", c_uint8),
        ("present", c_uint8),
        ("dpl", c_uint8),
        ("db", c_uint8),
        ("s", c_uint8),
        ("l", c_uint8),
        ("g", c_uint8),
        ("avl", c_uint8),
        ("unusable", c_uint8),
        ("padding", c_uint8),
    ]


class kvm_dtable(ctypes.Structure):
    """A descriptor-table register (GDTR or IDTR): linear base and limit."""

    _fields_ = [
        ("base", c_uint64),
        ("limit", c_uint16),
        ("padding", c_uint16 * 3),
    ]


class kvm_sregs(ctypes.Structure):
    """Segment, control and system registers (``KVM_GET_SREGS``/``KVM_SET_SREGS``).

    ``interrupt_bitmap`` has one bit per vector for an interrupt that is
    pending injection; a VMM normally leaves it zero.
    """

    _fields_ = [
        ("cs", kvm_segment), ("ds", kvm_segment), ("es", kvm_segment),
        ("fs", kvm_segment), ("gs", kvm_segment), ("ss", kvm_segment),
        ("tr", kvm_segment), ("ldt", kvm_segment),
        ("gdt", kvm_dtable), ("idt", kvm_dtable),
        ("cr0", c_uint64), ("cr2", c_uint64), ("cr3", c_uint64),
        ("cr4", c_uint64), ("cr8", c_uint64),
        ("efer", c_uint64),
        ("apic_base", c_uint64),
        ("interrupt_bitmap", c_uint64 * ((KVM_NR_INTERRUPTS + 63) // 64)),
    ]


class kvm_fpu(ctypes.Structure):
    """x87 and SSE state in FXSAVE layout (Intel SDM vol. 1, 10.5.1).

    ``fpr`` are the eight 80-bit x87 registers, each in a 16-byte slot;
    ``ftwx`` is the abridged tag word FXSAVE uses.
    """

    _fields_ = [
        ("fpr", (c_uint8 * 16) * 8),
        ("fcw", c_uint16),
        ("fsw", c_uint16),
        ("ftwx", c_uint8),
        ("pad1", c_uint8),
        ("last_opcode", c_uint16),
        ("last_ip", c_uint64),
        ("last_dp", c_uint64),
        ("xmm", (c_uint8 * 16) * 16),
        ("mxcsr", c_uint32),
        ("pad2", c_uint32),
    ]


class kvm_debugregs(ctypes.Structure):
    """Debug registers DR0-DR3, DR6, DR7 (``KVM_GET/SET_DEBUGREGS``)."""

    _fields_ = [
        ("db", c_uint64 * 4),
        ("dr6", c_uint64),
        ("dr7", c_uint64),
        ("flags", c_uint64),
        ("reserved", c_uint64 * 9),
    ]


# ---------------------------------------------------------------------------
# MSRs and CPUID: structures that end in a flexible array
# ---------------------------------------------------------------------------

class kvm_msr_entry(ctypes.Structure):
    """One model-specific register: its index (the ECX of RDMSR) and value."""

    _fields_ = [
        ("index", c_uint32),
        ("reserved", c_uint32),
        ("data", c_uint64),
    ]


class kvm_msrs(ctypes.Structure):
    """Header of the ``KVM_GET_MSRS``/``KVM_SET_MSRS`` argument.

    In C the header is followed by a flexible array ``entries[]`` of
    ``nmsrs`` :class:`kvm_msr_entry`. ctypes cannot size an array at run
    time, so :func:`make_kvm_msrs` builds a subclass with room for ``n``.
    """

    _fields_ = [
        ("nmsrs", c_uint32),
        ("pad", c_uint32),
    ]
    #: The C flexible array member that follows this header: (name, element type).
    _flexible_array_ = ("entries", kvm_msr_entry)


class kvm_msr_list(ctypes.Structure):
    """Header of the ``KVM_GET_MSR_INDEX_LIST`` argument: ``nmsrs`` then
    ``indices[]`` (MSR numbers). See :func:`make_kvm_msr_list`."""

    _fields_ = [
        ("nmsrs", c_uint32),
    ]
    _flexible_array_ = ("indices", c_uint32)


class kvm_cpuid_entry2(ctypes.Structure):
    """One CPUID leaf (``function`` = EAX input, ``index`` = ECX input) and
    the EAX..EDX it returns. ``flags`` has ``KVM_CPUID_FLAG_SIGNIFCANT_INDEX``
    (sic, the kernel's spelling) when the leaf depends on ECX."""

    _fields_ = [
        ("function", c_uint32),
        ("index", c_uint32),
        ("flags", c_uint32),
        ("eax", c_uint32),
        ("ebx", c_uint32),
        ("ecx", c_uint32),
        ("edx", c_uint32),
        ("padding", c_uint32 * 3),
    ]


class kvm_cpuid2(ctypes.Structure):
    """Header of the ``KVM_SET_CPUID2``/``KVM_GET_SUPPORTED_CPUID`` argument:
    ``nent`` then ``entries[]``. See :func:`make_kvm_cpuid2`."""

    _fields_ = [
        ("nent", c_uint32),
        ("padding", c_uint32),
    ]
    _flexible_array_ = ("entries", kvm_cpuid_entry2)


KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1 << 0
KVM_CPUID_FLAG_STATEFUL_FUNC = 1 << 1
KVM_CPUID_FLAG_STATE_READ_NEXT = 1 << 2


@lru_cache(maxsize=64)
def _with_flexible_array(header: type[ctypes.Structure], n: int) -> type[ctypes.Structure]:
    """A subclass of ``header`` whose flexible array has room for ``n`` elements.

    ctypes appends a subclass's fields after the base's, which is exactly
    where C puts a flexible array member (the header sizes here are already
    multiples of the element alignment, so no gap appears). Cached so that
    asking twice for the same ``n`` gives the same class.
    """
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"number of entries must be a non-negative int, not {n!r}")
    name, element = header._flexible_array_
    return type(f"{header.__name__}_{n}", (header,), {"_fields_": [(name, element * n)]})


def make_kvm_msrs(n: int) -> kvm_msrs:
    """A zeroed ``kvm_msrs`` instance with ``entries[n]`` and ``nmsrs = n``.

    It is a :class:`kvm_msrs` subclass instance; pass it straight to
    ``KVM_GET_MSRS``/``KVM_SET_MSRS`` after filling ``entries[i].index``.
    """
    msrs = _with_flexible_array(kvm_msrs, n)()
    msrs.nmsrs = n
    return msrs


def make_kvm_msr_list(n: int) -> kvm_msr_list:
    """A zeroed ``kvm_msr_list`` instance with ``indices[n]`` and ``nmsrs = n``.

    ``KVM_GET_MSR_INDEX_LIST`` writes back the real count; if ``n`` is too
    small it fails with ``E2BIG`` and still writes the count needed.
    """
    msr_list = _with_flexible_array(kvm_msr_list, n)()
    msr_list.nmsrs = n
    return msr_list


def make_kvm_cpuid2(n: int) -> kvm_cpuid2:
    """A zeroed ``kvm_cpuid2`` instance with ``entries[n]`` and ``nent = n``.

    ``KVM_GET_SUPPORTED_CPUID`` lowers ``nent`` to the number it filled in
    (``E2BIG`` if ``n`` is too small); ``KVM_SET_CPUID2`` reads ``nent`` entries.
    """
    cpuid = _with_flexible_array(kvm_cpuid2, n)()
    cpuid.nent = n
    return cpuid


# ---------------------------------------------------------------------------
# Memory (KVM_SET_USER_MEMORY_REGION, KVM_GET_DIRTY_LOG, KVM_TRANSLATE)
# ---------------------------------------------------------------------------

class kvm_userspace_memory_region(ctypes.Structure):
    """One memory slot: guest-physical ``[guest_phys_addr, +memory_size)``
    is backed by host memory at ``userspace_addr``. A ``memory_size`` of 0
    deletes the slot. ``flags`` takes ``KVM_MEM_*``."""

    _fields_ = [
        ("slot", c_uint32),
        ("flags", c_uint32),
        ("guest_phys_addr", c_uint64),
        ("memory_size", c_uint64),
        ("userspace_addr", c_uint64),
    ]


KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1


def _kvm_mem_flag() -> type[IntFlag]:
    class KvmMemFlag(IntFlag):
        """``kvm_userspace_memory_region.flags``."""

        #: Track guest writes; read them back with ``KVM_GET_DIRTY_LOG``.
        KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
        #: Guest writes to the slot become ``KVM_EXIT_MMIO`` writes (ROM, flash).
        KVM_MEM_READONLY = 1 << 1
    return KvmMemFlag


class _kvm_dirty_log_bitmap(ctypes.Union):
    """The unnamed union in ``kvm_dirty_log``: a user pointer widened to 64 bits."""

    _fields_ = [
        ("dirty_bitmap", c_void_p),
        ("padding2", c_uint64),
    ]
    _c_parent_ = ("kvm_dirty_log", "_u")


class kvm_dirty_log(ctypes.Structure):
    """``KVM_GET_DIRTY_LOG``: ``dirty_bitmap`` points at one bit per page of
    the slot; KVM fills it and clears its own record."""

    _fields_ = [
        ("slot", c_uint32),
        ("padding1", c_uint32),
        ("_u", _kvm_dirty_log_bitmap),
    ]
    _anonymous_ = ("_u",)


class kvm_translation(ctypes.Structure):
    """``KVM_TRANSLATE``: walk the guest's page tables for ``linear_address``."""

    _fields_ = [
        ("linear_address", c_uint64),
        ("physical_address", c_uint64),
        ("valid", c_uint8),
        ("writeable", c_uint8),
        ("usermode", c_uint8),
        ("pad", c_uint8 * 5),
    ]


# ---------------------------------------------------------------------------
# Interrupts: KVM_IRQ_LINE, KVM_INTERRUPT, irqchip and PIT state
# ---------------------------------------------------------------------------

class _kvm_irq_level_u(ctypes.Union):
    """The unnamed union in ``kvm_irq_level``: ``irq`` going in; with
    ``KVM_IRQ_LINE_STATUS`` the kernel writes ``status`` back over it."""

    _fields_ = [
        ("irq", c_uint32),
        ("status", c_int32),
    ]
    _c_parent_ = ("kvm_irq_level", "_u")


class kvm_irq_level(ctypes.Structure):
    """``KVM_IRQ_LINE``: drive interrupt line ``irq`` (a GSI: PIC pins 0-15,
    I/O APIC pins 0-23) to ``level``."""

    _fields_ = [
        ("_u", _kvm_irq_level_u),
        ("level", c_uint32),
    ]
    _anonymous_ = ("_u",)


class kvm_interrupt(ctypes.Structure):
    """``KVM_INTERRUPT``: inject vector ``irq`` (only without an in-kernel irqchip)."""

    _fields_ = [("irq", c_uint32)]


class kvm_pic_state(ctypes.Structure):
    """One 8259A PIC as KVM emulates it (the Intel 8259A data sheet names
    the registers: IRR, IMR, ISR; ``elcr`` is the PIIX edge/level register)."""

    _fields_ = [(name, c_uint8) for name in (
        "last_irr", "irr", "imr", "isr", "priority_add", "irq_base",
        "read_reg_select", "poll", "special_mask", "init_state", "auto_eoi",
        "rotate_on_auto_eoi", "special_fully_nested_mode", "init4", "elcr",
        "elcr_mask",
    )]


class kvm_ioapic_redirtbl_fields(ctypes.Structure):
    """One I/O APIC redirection entry split into its bits (82093AA data
    sheet, 3.2.4 "IOREDTBL"). C declares the bits as ``__u8`` bit-fields, and
    ctypes lays ``c_uint8`` bit-fields out the same way GCC does."""

    _fields_ = [
        ("vector", c_uint8),
        ("delivery_mode", c_uint8, 3),
        ("dest_mode", c_uint8, 1),
        ("delivery_status", c_uint8, 1),
        ("polarity", c_uint8, 1),
        ("remote_irr", c_uint8, 1),
        ("trig_mode", c_uint8, 1),
        ("mask", c_uint8, 1),
        ("reserve", c_uint8, 7),
        ("reserved", c_uint8 * 4),
        ("dest_id", c_uint8),
    ]
    _c_parent_ = ("kvm_ioapic_redirtbl", "fields")


class kvm_ioapic_redirtbl(ctypes.Union):
    """One I/O APIC redirection entry: the raw 64 bits or the named fields."""

    _fields_ = [
        ("bits", c_uint64),
        ("fields", kvm_ioapic_redirtbl_fields),
    ]
    _c_parent_ = ("kvm_ioapic_state", "redirtbl[0]")


class kvm_ioapic_state(ctypes.Structure):
    """The emulated I/O APIC: its registers and 24 redirection entries."""

    _fields_ = [
        ("base_address", c_uint64),
        ("ioregsel", c_uint32),
        ("id", c_uint32),
        ("irr", c_uint32),
        ("pad", c_uint32),
        ("redirtbl", kvm_ioapic_redirtbl * KVM_IOAPIC_NUM_PINS),
    ]


class kvm_irqchip_chip(ctypes.Union):
    """``kvm_irqchip.chip``: the state of the chip ``chip_id`` names, in 512 bytes."""

    _fields_ = [
        ("dummy", c_uint8 * 512),
        ("pic", kvm_pic_state),
        ("ioapic", kvm_ioapic_state),
    ]
    _c_parent_ = ("kvm_irqchip", "chip")


class kvm_irqchip(ctypes.Structure):
    """``KVM_GET_IRQCHIP``/``KVM_SET_IRQCHIP``: ``chip_id`` is one of
    ``KVM_IRQCHIP_PIC_MASTER``, ``KVM_IRQCHIP_PIC_SLAVE``, ``KVM_IRQCHIP_IOAPIC``."""

    _fields_ = [
        ("chip_id", c_uint32),
        ("pad", c_uint32),
        ("chip", kvm_irqchip_chip),
    ]


KVM_IRQCHIP_PIC_MASTER = 0
KVM_IRQCHIP_PIC_SLAVE = 1
KVM_IRQCHIP_IOAPIC = 2
KVM_NR_IRQCHIPS = 3


class kvm_pit_config(ctypes.Structure):
    """``KVM_CREATE_PIT2``: ``flags`` may hold ``KVM_PIT_SPEAKER_DUMMY``."""

    _fields_ = [
        ("flags", c_uint32),
        ("pad", c_uint32 * 15),
    ]


#: Emulate a dummy PC speaker at port 0x61 so that guests probing it do not
#: cause an exit for every access.
KVM_PIT_SPEAKER_DUMMY = 1


class kvm_pit_channel_state(ctypes.Structure):
    """One counter of the emulated 8254 PIT (Intel 8254 data sheet names)."""

    _fields_ = [
        ("count", c_uint32),
        ("latched_count", c_uint16),
        ("count_latched", c_uint8),
        ("status_latched", c_uint8),
        ("status", c_uint8),
        ("read_state", c_uint8),
        ("write_state", c_uint8),
        ("write_latch", c_uint8),
        ("rw_mode", c_uint8),
        ("mode", c_uint8),
        ("bcd", c_uint8),
        ("gate", c_uint8),
        ("count_load_time", c_int64),
    ]


class kvm_pit_state2(ctypes.Structure):
    """``KVM_GET_PIT2``/``KVM_SET_PIT2``: the three PIT counters and flags."""

    _fields_ = [
        ("channels", kvm_pit_channel_state * 3),
        ("flags", c_uint32),
        ("reserved", c_uint32 * 9),
    ]


KVM_PIT_FLAGS_HPET_LEGACY = 0x00000001
KVM_PIT_FLAGS_SPEAKER_DATA_ON = 0x00000002


class kvm_lapic_state(ctypes.Structure):
    """``KVM_GET_LAPIC``/``KVM_SET_LAPIC``: the local APIC register page.

    A register at xAPIC MMIO offset ``o`` is the 32-bit little-endian value
    at ``regs[o:o+4]`` (C declares ``char regs[]``; bytes are easier here).
    """

    _fields_ = [("regs", c_uint8 * KVM_APIC_REG_SIZE)]


class kvm_mp_state(ctypes.Structure):
    """``KVM_GET/SET_MP_STATE``: a ``KVM_MP_STATE_*`` value."""

    _fields_ = [("mp_state", c_uint32)]


class KvmMpState(IntEnum):
    """Multiprocessor state of a vCPU (``kvm_mp_state.mp_state``).

    On x86 an application processor waits in "wait-for-SIPI" until the boot
    processor sends INIT and a startup IPI (Intel SDM vol. 3, 8.4 "MP
    initialization"); ``HALTED`` is a vCPU sleeping in ``HLT``.
    """

    KVM_MP_STATE_RUNNABLE = 0
    KVM_MP_STATE_UNINITIALIZED = 1
    KVM_MP_STATE_INIT_RECEIVED = 2
    KVM_MP_STATE_HALTED = 3
    KVM_MP_STATE_SIPI_RECEIVED = 4
    KVM_MP_STATE_STOPPED = 5
    KVM_MP_STATE_CHECK_STOP = 6
    KVM_MP_STATE_OPERATING = 7
    KVM_MP_STATE_LOAD = 8
    KVM_MP_STATE_AP_RESET_HOLD = 9
    KVM_MP_STATE_SUSPENDED = 10


KVM_MP_STATE_RUNNABLE = KvmMpState.KVM_MP_STATE_RUNNABLE
KVM_MP_STATE_UNINITIALIZED = KvmMpState.KVM_MP_STATE_UNINITIALIZED
KVM_MP_STATE_INIT_RECEIVED = KvmMpState.KVM_MP_STATE_INIT_RECEIVED
KVM_MP_STATE_HALTED = KvmMpState.KVM_MP_STATE_HALTED
KVM_MP_STATE_SIPI_RECEIVED = KvmMpState.KVM_MP_STATE_SIPI_RECEIVED
KVM_MP_STATE_STOPPED = KvmMpState.KVM_MP_STATE_STOPPED
KVM_MP_STATE_CHECK_STOP = KvmMpState.KVM_MP_STATE_CHECK_STOP
KVM_MP_STATE_OPERATING = KvmMpState.KVM_MP_STATE_OPERATING
KVM_MP_STATE_LOAD = KvmMpState.KVM_MP_STATE_LOAD
KVM_MP_STATE_AP_RESET_HOLD = KvmMpState.KVM_MP_STATE_AP_RESET_HOLD
KVM_MP_STATE_SUSPENDED = KvmMpState.KVM_MP_STATE_SUSPENDED


# ---------------------------------------------------------------------------
# vCPU events (KVM_GET/SET_VCPU_EVENTS)
# ---------------------------------------------------------------------------

class kvm_vcpu_events_exception(ctypes.Structure):
    """``kvm_vcpu_events.exception``: an exception being delivered or pending."""

    _fields_ = [
        ("injected", c_uint8),
        ("nr", c_uint8),
        ("has_error_code", c_uint8),
        ("pending", c_uint8),
        ("error_code", c_uint32),
    ]
    _c_parent_ = ("kvm_vcpu_events", "exception")


class kvm_vcpu_events_interrupt(ctypes.Structure):
    """``kvm_vcpu_events.interrupt``: an external interrupt being injected;
    ``shadow`` holds ``KVM_X86_SHADOW_INT_*`` (blocking by STI or MOV SS)."""

    _fields_ = [
        ("injected", c_uint8),
        ("nr", c_uint8),
        ("soft", c_uint8),
        ("shadow", c_uint8),
    ]
    _c_parent_ = ("kvm_vcpu_events", "interrupt")


class kvm_vcpu_events_nmi(ctypes.Structure):
    """``kvm_vcpu_events.nmi``: NMI injected, pending, or blocked (``masked``)."""

    _fields_ = [
        ("injected", c_uint8),
        ("pending", c_uint8),
        ("masked", c_uint8),
        ("pad", c_uint8),
    ]
    _c_parent_ = ("kvm_vcpu_events", "nmi")


class kvm_vcpu_events_smi(ctypes.Structure):
    """``kvm_vcpu_events.smi``: system-management mode state."""

    _fields_ = [
        ("smm", c_uint8),
        ("pending", c_uint8),
        ("smm_inside_nmi", c_uint8),
        ("latched_init", c_uint8),
    ]
    _c_parent_ = ("kvm_vcpu_events", "smi")


class kvm_vcpu_events_triple_fault(ctypes.Structure):
    """``kvm_vcpu_events.triple_fault``: a pending triple fault (shutdown)."""

    _fields_ = [("pending", c_uint8)]
    _c_parent_ = ("kvm_vcpu_events", "triple_fault")


class kvm_vcpu_events(ctypes.Structure):
    """Events in flight between instructions: what a VMM must save so that a
    paused vCPU resumes exactly (an exception half-delivered, an interrupt
    shadow after STI, a pending NMI). ``flags`` says which optional parts are
    valid (``KVM_VCPUEVENT_VALID_*``)."""

    _fields_ = [
        ("exception", kvm_vcpu_events_exception),
        ("interrupt", kvm_vcpu_events_interrupt),
        ("nmi", kvm_vcpu_events_nmi),
        ("sipi_vector", c_uint32),
        ("flags", c_uint32),
        ("smi", kvm_vcpu_events_smi),
        ("triple_fault", kvm_vcpu_events_triple_fault),
        ("reserved", c_uint8 * 26),
        ("exception_has_payload", c_uint8),
        ("exception_payload", c_uint64),
    ]


def _kvm_vcpu_event_valid() -> type[IntFlag]:
    class KvmVcpuEventValid(IntFlag):
        """``kvm_vcpu_events.flags``: which optional fields ``KVM_SET_VCPU_EVENTS`` applies."""

        KVM_VCPUEVENT_VALID_NMI_PENDING = 0x00000001
        KVM_VCPUEVENT_VALID_SIPI_VECTOR = 0x00000002
        KVM_VCPUEVENT_VALID_SHADOW = 0x00000004
        KVM_VCPUEVENT_VALID_SMM = 0x00000008
        KVM_VCPUEVENT_VALID_PAYLOAD = 0x00000010
        KVM_VCPUEVENT_VALID_TRIPLE_FAULT = 0x00000020
    return KvmVcpuEventValid


KVM_X86_SHADOW_INT_MOV_SS = 0x01
KVM_X86_SHADOW_INT_STI = 0x02


# ---------------------------------------------------------------------------
# Guest debugging (KVM_SET_GUEST_DEBUG) and KVM_ENABLE_CAP, KVM_GET/SET_CLOCK
# ---------------------------------------------------------------------------

class kvm_debug_exit_arch(ctypes.Structure):
    """Why a ``KVM_EXIT_DEBUG`` happened: ``exception`` is 1 (#DB: single
    step, hardware breakpoint) or 3 (#BP: ``int3``); ``pc`` the guest RIP;
    ``dr6`` says which debug condition fired (Intel SDM vol. 3, 17.2.3)."""

    _fields_ = [
        ("exception", c_uint32),
        ("pad", c_uint32),
        ("pc", c_uint64),
        ("dr6", c_uint64),
        ("dr7", c_uint64),
    ]


class kvm_guest_debug_arch(ctypes.Structure):
    """DR0-DR7 as the debugger wants them while ``KVM_GUESTDBG_USE_HW_BP`` is on."""

    _fields_ = [("debugreg", c_uint64 * 8)]


class kvm_guest_debug(ctypes.Structure):
    """``KVM_SET_GUEST_DEBUG``: ``control`` is a ``KVM_GUESTDBG_*`` mask."""

    _fields_ = [
        ("control", c_uint32),
        ("pad", c_uint32),
        ("arch", kvm_guest_debug_arch),
    ]


def _kvm_guest_dbg() -> type[IntFlag]:
    class KvmGuestDbg(IntFlag):
        """``kvm_guest_debug.control`` bits. The low bits are generic, the
        high ones x86's."""

        #: Debugging on; without it the other bits are ignored.
        KVM_GUESTDBG_ENABLE = 0x00000001
        #: Exit after every guest instruction (KVM sets RFLAGS.TF behind the guest's back).
        KVM_GUESTDBG_SINGLESTEP = 0x00000002
        #: ``int3`` (#BP) exits to us instead of reaching the guest's IDT.
        KVM_GUESTDBG_USE_SW_BP = 0x00010000
        #: Load ``arch.debugreg`` into DR0-DR7; their hits exit to us.
        KVM_GUESTDBG_USE_HW_BP = 0x00020000
        #: Deliver a #DB to the guest on entry.
        KVM_GUESTDBG_INJECT_DB = 0x00040000
        #: Deliver a #BP to the guest on entry.
        KVM_GUESTDBG_INJECT_BP = 0x00080000
        #: Keep interrupts blocked while single-stepping, so a step stays in the same code.
        KVM_GUESTDBG_BLOCKIRQ = 0x00100000
    return KvmGuestDbg


# ---------------------------------------------------------------------------
# Extended processor state (KVM_GET/SET_XSAVE, KVM_GET_XSAVE2, KVM_GET/SET_XCRS)
# ---------------------------------------------------------------------------

class kvm_xsave(ctypes.Structure):
    """``KVM_GET_XSAVE``/``KVM_SET_XSAVE``/``KVM_GET_XSAVE2``: the vCPU's
    XSAVE area (x87, SSE, AVX, ... state; Intel SDM vol. 1, 13.4 "XSAVE Area").

    The first 4 KiB are always there; ``KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2)``
    on the VM fd says how big the whole area is (4096 unless a dynamically
    enabled feature such as AMX makes it bigger), and ``extra[]`` holds the
    rest: see :func:`make_kvm_xsave`. The layout of the area inside follows
    the host's CPUID leaf 0xD, so it only means the same on a like host.
    """

    _fields_ = [("region", c_uint32 * 1024)]
    _flexible_array_ = ("extra", c_uint32)


def make_kvm_xsave(n: int = 0) -> kvm_xsave:
    """A zeroed ``kvm_xsave`` with ``extra[n]``: ``4096 + 4 * n`` bytes in all
    (``n = (size - 4096) // 4`` for the size ``KVM_CAP_XSAVE2`` reports)."""
    return _with_flexible_array(kvm_xsave, n)()


#: How many entries ``kvm_xcrs`` has room for.
KVM_MAX_XCRS = 16


class kvm_xcr(ctypes.Structure):
    """One extended control register: ``xcr`` is its number (0: XCR0, which
    says which state components XSAVE manages), ``value`` its contents."""

    _fields_ = [
        ("xcr", c_uint32),
        ("reserved", c_uint32),
        ("value", c_uint64),
    ]


class kvm_xcrs(ctypes.Structure):
    """``KVM_GET_XCRS``/``KVM_SET_XCRS``: ``nr_xcrs`` valid entries of ``xcrs``."""

    _fields_ = [
        ("nr_xcrs", c_uint32),
        ("flags", c_uint32),
        ("xcrs", kvm_xcr * KVM_MAX_XCRS),
        ("padding", c_uint64 * 16),
    ]


class kvm_stats_header(ctypes.Structure):
    """The start of a binary statistics file (``KVM_GET_STATS_FD``): where
    its id string, descriptors and data lie, as byte offsets into the file,
    how many statistics it has and how many bytes each name takes
    (Documentation/virt/kvm/api.rst, "KVM_GET_STATS_FD"). ``flags`` is 0."""

    _fields_ = [
        ("flags", c_uint32),
        ("name_size", c_uint32),
        ("num_desc", c_uint32),
        ("id_offset", c_uint32),
        ("desc_offset", c_uint32),
        ("data_offset", c_uint32),
    ]


class kvm_stats_desc(ctypes.Structure):
    """One statistic of a binary statistics file: ``flags`` holds its type
    (counter, instant value, peak, histogram), unit and base, ``exponent``
    the power of that base its values carry, ``size`` how many u64 values
    it has, ``offset`` where they start in the data block. Its name follows
    it in the file, ``name_size`` bytes (a flexible array in C, left out
    here: ``sizeof`` is the fixed part's)."""

    _fields_ = [
        ("flags", c_uint32),
        ("exponent", c_int16),
        ("size", c_uint16),
        ("offset", c_uint32),
        ("bucket_size", c_uint32),
    ]


# ``kvm_stats_desc.flags``: three 4-bit fields (Documentation/virt/kvm/api.rst,
# "KVM_GET_STATS_FD"). Bits 0-3, the type: how the value behaves over time.
KVM_STATS_TYPE_SHIFT = 0
KVM_STATS_TYPE_MASK = 0xF << KVM_STATS_TYPE_SHIFT
KVM_STATS_TYPE_CUMULATIVE = 0x0 << KVM_STATS_TYPE_SHIFT   # only grows: a count of events
KVM_STATS_TYPE_INSTANT = 0x1 << KVM_STATS_TYPE_SHIFT      # the value now, up or down
KVM_STATS_TYPE_PEAK = 0x2 << KVM_STATS_TYPE_SHIFT         # the largest value seen so far
KVM_STATS_TYPE_LINEAR_HIST = 0x3 << KVM_STATS_TYPE_SHIFT  # ``size`` buckets of ``bucket_size``
KVM_STATS_TYPE_LOG_HIST = 0x4 << KVM_STATS_TYPE_SHIFT     # ``size`` buckets, each twice as wide
# Bits 4-7, the unit of the values.
KVM_STATS_UNIT_SHIFT = 4
KVM_STATS_UNIT_MASK = 0xF << KVM_STATS_UNIT_SHIFT
KVM_STATS_UNIT_NONE = 0x0 << KVM_STATS_UNIT_SHIFT         # a plain number
KVM_STATS_UNIT_BYTES = 0x1 << KVM_STATS_UNIT_SHIFT
KVM_STATS_UNIT_SECONDS = 0x2 << KVM_STATS_UNIT_SHIFT
KVM_STATS_UNIT_CYCLES = 0x3 << KVM_STATS_UNIT_SHIFT
KVM_STATS_UNIT_BOOLEAN = 0x4 << KVM_STATS_UNIT_SHIFT      # always 0 or 1
# Bits 8-11, the base that ``exponent`` raises: the unit times base ** exponent
# (SECONDS, POW10, -9: nanoseconds).
KVM_STATS_BASE_SHIFT = 8
KVM_STATS_BASE_MASK = 0xF << KVM_STATS_BASE_SHIFT
KVM_STATS_BASE_POW10 = 0x0 << KVM_STATS_BASE_SHIFT
KVM_STATS_BASE_POW2 = 0x1 << KVM_STATS_BASE_SHIFT


class kvm_enable_cap(ctypes.Structure):
    """``KVM_ENABLE_CAP``: turn on capability ``cap`` with up to four arguments."""

    _fields_ = [
        ("cap", c_uint32),
        ("flags", c_uint32),
        ("args", c_uint64 * 4),
        ("pad", c_uint8 * 64),
    ]


class kvm_clock_data(ctypes.Structure):
    """``KVM_GET_CLOCK``/``KVM_SET_CLOCK``: the guest's kvmclock in nanoseconds."""

    _fields_ = [
        ("clock", c_uint64),
        ("flags", c_uint32),
        ("pad0", c_uint32),
        ("realtime", c_uint64),
        ("host_tsc", c_uint64),
        ("pad", c_uint32 * 4),
    ]


class kvm_sync_regs(ctypes.Structure):
    """Registers KVM can share through ``kvm_run.s.regs`` (with ``KVM_CAP_SYNC_REGS``)
    instead of separate ``KVM_GET_REGS``-style ioctls."""

    _fields_ = [
        ("regs", kvm_regs),
        ("sregs", kvm_sregs),
        ("events", kvm_vcpu_events),
    ]


KVM_SYNC_X86_REGS = 1 << 0
KVM_SYNC_X86_SREGS = 1 << 1
KVM_SYNC_X86_EVENTS = 1 << 2

#: Two ``KvmCap`` members as plain numbers: ``Machine`` asks for them at every
#: start, and ``KvmCap`` is built only on first use (see the module docstring).
KVM_CAP_MAX_VCPUS = 66
KVM_CAP_SYNC_REGS = 74


# ---------------------------------------------------------------------------
# kvm_run: the page shared between KVM and the VMM
# ---------------------------------------------------------------------------

class KvmExit(IntEnum):
    """``kvm_run.exit_reason``: why ``KVM_RUN`` returned to user space."""

    KVM_EXIT_UNKNOWN = 0
    KVM_EXIT_EXCEPTION = 1
    KVM_EXIT_IO = 2
    KVM_EXIT_HYPERCALL = 3
    KVM_EXIT_DEBUG = 4
    KVM_EXIT_HLT = 5
    KVM_EXIT_MMIO = 6
    KVM_EXIT_IRQ_WINDOW_OPEN = 7
    KVM_EXIT_SHUTDOWN = 8
    KVM_EXIT_FAIL_ENTRY = 9
    KVM_EXIT_INTR = 10
    KVM_EXIT_SET_TPR = 11
    KVM_EXIT_TPR_ACCESS = 12
    KVM_EXIT_S390_SIEIC = 13
    KVM_EXIT_S390_RESET = 14
    KVM_EXIT_DCR = 15
    KVM_EXIT_NMI = 16
    KVM_EXIT_INTERNAL_ERROR = 17
    KVM_EXIT_OSI = 18
    KVM_EXIT_PAPR_HCALL = 19
    KVM_EXIT_S390_UCONTROL = 20
    KVM_EXIT_WATCHDOG = 21
    KVM_EXIT_S390_TSCH = 22
    KVM_EXIT_EPR = 23
    KVM_EXIT_SYSTEM_EVENT = 24
    KVM_EXIT_S390_STSI = 25
    KVM_EXIT_IOAPIC_EOI = 26
    KVM_EXIT_HYPERV = 27
    KVM_EXIT_ARM_NISV = 28
    KVM_EXIT_X86_RDMSR = 29
    KVM_EXIT_X86_WRMSR = 30
    KVM_EXIT_DIRTY_RING_FULL = 31
    KVM_EXIT_AP_RESET_HOLD = 32
    KVM_EXIT_X86_BUS_LOCK = 33
    KVM_EXIT_XEN = 34
    KVM_EXIT_RISCV_SBI = 35
    KVM_EXIT_RISCV_CSR = 36
    KVM_EXIT_NOTIFY = 37


#: ``kvm_run.io.direction``: the guest executed IN / OUT (or INS / OUTS).
KVM_EXIT_IO_IN = 0
KVM_EXIT_IO_OUT = 1


def _kvm_system_event() -> type[IntEnum]:
    class KvmSystemEvent(IntEnum):
        """``kvm_run.system_event.type`` for ``KVM_EXIT_SYSTEM_EVENT``."""

        KVM_SYSTEM_EVENT_SHUTDOWN = 1
        KVM_SYSTEM_EVENT_RESET = 2
        KVM_SYSTEM_EVENT_CRASH = 3
        KVM_SYSTEM_EVENT_WAKEUP = 4
        KVM_SYSTEM_EVENT_SUSPEND = 5
        KVM_SYSTEM_EVENT_SEV_TERM = 6
    return KvmSystemEvent


def _kvm_internal_error() -> type[IntEnum]:
    class KvmInternalError(IntEnum):
        """``kvm_run.internal.suberror`` for ``KVM_EXIT_INTERNAL_ERROR``."""

        #: The instruction emulator met an instruction it cannot emulate.
        KVM_INTERNAL_ERROR_EMULATION = 1
        #: An exception occurred while delivering another one, in a way KVM cannot model.
        KVM_INTERNAL_ERROR_SIMUL_EX = 2
        #: A VM exit happened while an event was being delivered (e.g. a bad IDT).
        KVM_INTERNAL_ERROR_DELIVERY_EV = 3
        #: The hardware reported an exit reason KVM does not know.
        KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON = 4
    return KvmInternalError


#: ``kvm_run.emulation_failure.flags``: ``insn_size``/``insn_bytes`` are valid.
KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES = 1 << 0

#: ``kvm_run.flags``: the vCPU was in system-management mode / hit a bus lock.
KVM_RUN_X86_SMM = 1 << 0
KVM_RUN_X86_BUS_LOCK = 1 << 1

#: ``kvm_run.msr.reason`` for ``KVM_EXIT_X86_RDMSR``/``_WRMSR``.
KVM_MSR_EXIT_REASON_INVAL = 1 << 0
KVM_MSR_EXIT_REASON_UNKNOWN = 1 << 1
KVM_MSR_EXIT_REASON_FILTER = 1 << 2


class kvm_run_hw(ctypes.Structure):
    """``KVM_EXIT_UNKNOWN``: the hardware's own exit reason (VMX/SVM code)."""

    _fields_ = [("hardware_exit_reason", c_uint64)]
    _c_parent_ = ("kvm_run_exit", "hw")


class kvm_run_fail_entry(ctypes.Structure):
    """``KVM_EXIT_FAIL_ENTRY``: VM entry failed; the reason is VMX/SVM specific
    (for VMX, "invalid guest state" is 0x80000021)."""

    _fields_ = [
        ("hardware_entry_failure_reason", c_uint64),
        ("cpu", c_uint32),
    ]
    _c_parent_ = ("kvm_run_exit", "fail_entry")


class kvm_run_ex(ctypes.Structure):
    """``KVM_EXIT_EXCEPTION``: an exception vector and its error code."""

    _fields_ = [
        ("exception", c_uint32),
        ("error_code", c_uint32),
    ]
    _c_parent_ = ("kvm_run_exit", "ex")


class kvm_run_io(ctypes.Structure):
    """``KVM_EXIT_IO``: the guest ran IN/OUT/INS/OUTS on a port nobody in
    the kernel handles. ``count`` items of ``size`` bytes sit in the vCPU
    mmap area at ``data_offset`` from the start of ``kvm_run``: write them
    there for an IN before the next ``KVM_RUN``."""

    _fields_ = [
        ("direction", c_uint8),
        ("size", c_uint8),
        ("port", c_uint16),
        ("count", c_uint32),
        ("data_offset", c_uint64),
    ]
    _c_parent_ = ("kvm_run_exit", "io")


class kvm_run_debug(ctypes.Structure):
    """``KVM_EXIT_DEBUG``: see :class:`kvm_debug_exit_arch`."""

    _fields_ = [("arch", kvm_debug_exit_arch)]
    _c_parent_ = ("kvm_run_exit", "debug")


class kvm_run_mmio(ctypes.Structure):
    """``KVM_EXIT_MMIO``: a load or store of ``len`` bytes to a guest-physical
    address with no memory slot. For a read, put the value in ``data``
    before the next ``KVM_RUN``; KVM then finishes the instruction."""

    _fields_ = [
        ("phys_addr", c_uint64),
        ("data", c_uint8 * 8),
        ("len", c_uint32),
        ("is_write", c_uint8),
    ]
    _c_parent_ = ("kvm_run_exit", "mmio")


class kvm_run_hypercall(ctypes.Structure):
    """``KVM_EXIT_HYPERCALL``: a VMCALL/VMMCALL KVM passes to user space.

    The 4 bytes after ``longmode`` are ``__u32 pad`` in Linux 6.1 headers and
    the high half of a ``__u64 flags`` union member in later ones; both
    spell the same bytes, so they are left out here and only the common
    fields are mirrored (the structure keeps its C size of 72 bytes).
    """

    _fields_ = [
        ("nr", c_uint64),
        ("args", c_uint64 * 6),
        ("ret", c_uint64),
        ("longmode", c_uint32),
    ]
    _c_parent_ = ("kvm_run_exit", "hypercall")


class kvm_run_tpr_access(ctypes.Structure):
    """``KVM_EXIT_TPR_ACCESS``: the guest touched the APIC TPR (with TPR reporting on)."""

    _fields_ = [
        ("rip", c_uint64),
        ("is_write", c_uint32),
        ("pad", c_uint32),
    ]
    _c_parent_ = ("kvm_run_exit", "tpr_access")


class kvm_run_internal(ctypes.Structure):
    """``KVM_EXIT_INTERNAL_ERROR``: ``suberror`` is ``KVM_INTERNAL_ERROR_*``;
    ``data[:ndata]`` is debug information (with ``KVM_CAP_INTERNAL_ERROR_DATA``)."""

    _fields_ = [
        ("suberror", c_uint32),
        ("ndata", c_uint32),
        ("data", c_uint64 * 16),
    ]
    _c_parent_ = ("kvm_run_exit", "internal")


class _kvm_run_emulation_failure_insn(ctypes.Structure):
    """The unnamed struct inside the unnamed union of ``emulation_failure``."""

    _fields_ = [
        ("insn_size", c_uint8),
        ("insn_bytes", c_uint8 * 15),
    ]
    _c_parent_ = ("_kvm_run_emulation_failure_u", "_s")


class _kvm_run_emulation_failure_u(ctypes.Union):
    """The unnamed union inside ``emulation_failure`` (room for later formats)."""

    _fields_ = [("_s", _kvm_run_emulation_failure_insn)]
    _anonymous_ = ("_s",)
    _c_parent_ = ("kvm_run_emulation_failure", "_u")


class kvm_run_emulation_failure(ctypes.Structure):
    """``KVM_EXIT_INTERNAL_ERROR`` with ``KVM_INTERNAL_ERROR_EMULATION``: the
    same first words as ``internal``, then (when ``flags`` has
    ``KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES``) the bytes of the
    instruction the emulator could not handle."""

    _fields_ = [
        ("suberror", c_uint32),
        ("ndata", c_uint32),
        ("flags", c_uint64),
        ("_u", _kvm_run_emulation_failure_u),
    ]
    _anonymous_ = ("_u",)
    _c_parent_ = ("kvm_run_exit", "emulation_failure")


class _kvm_run_system_event_u(ctypes.Union):
    """The unnamed union in ``system_event``: old ``flags`` or new ``data[]``."""

    _fields_ = [
        ("flags", c_uint64),
        ("data", c_uint64 * 16),
    ]
    _c_parent_ = ("kvm_run_system_event", "_u")


class kvm_run_system_event(ctypes.Structure):
    """``KVM_EXIT_SYSTEM_EVENT``: the guest asked for a shutdown, reset or
    reported a crash through firmware (PSCI, ...); ``type`` is
    ``KVM_SYSTEM_EVENT_*`` and ``data[:ndata]`` its details."""

    _fields_ = [
        ("type", c_uint32),
        ("ndata", c_uint32),
        ("_u", _kvm_run_system_event_u),
    ]
    _anonymous_ = ("_u",)
    _c_parent_ = ("kvm_run_exit", "system_event")


class kvm_run_eoi(ctypes.Structure):
    """``KVM_EXIT_IOAPIC_EOI``: the guest ended interrupt ``vector`` (split irqchip)."""

    _fields_ = [("vector", c_uint8)]
    _c_parent_ = ("kvm_run_exit", "eoi")


class kvm_run_msr(ctypes.Structure):
    """``KVM_EXIT_X86_RDMSR``/``_WRMSR``: an MSR access sent to user space.
    Set ``error`` to inject #GP, or ``data`` with the value for a read."""

    _fields_ = [
        ("error", c_uint8),
        ("pad", c_uint8 * 7),
        ("reason", c_uint32),
        ("index", c_uint32),
        ("data", c_uint64),
    ]
    _c_parent_ = ("kvm_run_exit", "msr")


class kvm_run_notify(ctypes.Structure):
    """``KVM_EXIT_NOTIFY``: the guest stayed in a non-interruptible window too long."""

    _fields_ = [("flags", c_uint32)]
    _c_parent_ = ("kvm_run_exit", "notify")


class kvm_run_exit(ctypes.Union):
    """The unnamed union of per-exit details in ``kvm_run``.

    Which member is valid depends on ``exit_reason``. Members for other
    architectures (s390, PowerPC, RISC-V, Arm) and the Hyper-V/Xen exits are
    not mirrored; ``padding`` fixes the size at 256 bytes as in C.
    """

    _fields_ = [
        ("hw", kvm_run_hw),
        ("fail_entry", kvm_run_fail_entry),
        ("ex", kvm_run_ex),
        ("io", kvm_run_io),
        ("debug", kvm_run_debug),
        ("mmio", kvm_run_mmio),
        ("hypercall", kvm_run_hypercall),
        ("tpr_access", kvm_run_tpr_access),
        ("internal", kvm_run_internal),
        ("emulation_failure", kvm_run_emulation_failure),
        ("system_event", kvm_run_system_event),
        ("eoi", kvm_run_eoi),
        ("msr", kvm_run_msr),
        ("notify", kvm_run_notify),
        ("padding", c_uint8 * 256),
    ]
    _c_parent_ = ("kvm_run", "_exit")


class kvm_run_s(ctypes.Union):
    """``kvm_run.s``: registers shared without extra ioctls, padded to 2048 bytes."""

    _fields_ = [
        ("regs", kvm_sync_regs),
        ("padding", c_uint8 * 2048),
    ]
    _c_parent_ = ("kvm_run", "s")


class kvm_run(ctypes.Structure):
    """The ``kvm_run`` area: mmap it from the vCPU fd at offset 0.

    It is how ``KVM_RUN`` talks back: ``exit_reason`` says why the guest
    stopped and the anonymous union (``run.io``, ``run.mmio``, ...) holds
    the details. Some fields go the other way: set ``immediate_exit`` to
    make the next ``KVM_RUN`` return at once (``EINTR``), or
    ``request_interrupt_window`` to get ``KVM_EXIT_IRQ_WINDOW_OPEN`` when the
    guest can take an interrupt (``ready_for_interrupt_injection``, ``if_flag``).
    """

    _fields_ = [
        ("request_interrupt_window", c_uint8),
        ("immediate_exit", c_uint8),
        ("padding1", c_uint8 * 6),
        ("exit_reason", c_uint32),
        ("ready_for_interrupt_injection", c_uint8),
        ("if_flag", c_uint8),
        ("flags", c_uint16),
        ("cr8", c_uint64),
        ("apic_base", c_uint64),
        ("_exit", kvm_run_exit),
        ("kvm_valid_regs", c_uint64),
        ("kvm_dirty_regs", c_uint64),
        ("s", kvm_run_s),
    ]
    _anonymous_ = ("_exit",)


# ---------------------------------------------------------------------------
# Capabilities (KVM_CHECK_EXTENSION, KVM_ENABLE_CAP)
# ---------------------------------------------------------------------------

def _kvm_cap() -> type[IntEnum]:
    class KvmCap(IntEnum):
        """``KVM_CHECK_EXTENSION`` arguments: does this kernel have feature X?

        The answer is 0 for "no", and otherwise often a number (for
        ``KVM_CAP_NR_MEMSLOTS`` the count of slots). Those for x86 and generic
        features are listed; other architectures' are left out.
        """

        KVM_CAP_IRQCHIP = 0
        KVM_CAP_HLT = 1
        KVM_CAP_MMU_SHADOW_CACHE_CONTROL = 2
        KVM_CAP_USER_MEMORY = 3
        KVM_CAP_SET_TSS_ADDR = 4
        KVM_CAP_VAPIC = 6
        KVM_CAP_EXT_CPUID = 7
        KVM_CAP_CLOCKSOURCE = 8
        KVM_CAP_NR_VCPUS = 9
        KVM_CAP_NR_MEMSLOTS = 10
        KVM_CAP_PIT = 11
        KVM_CAP_NOP_IO_DELAY = 12
        KVM_CAP_PV_MMU = 13
        KVM_CAP_MP_STATE = 14
        KVM_CAP_COALESCED_MMIO = 15
        KVM_CAP_SYNC_MMU = 16
        KVM_CAP_IOMMU = 18
        KVM_CAP_DESTROY_MEMORY_REGION_WORKS = 21
        KVM_CAP_USER_NMI = 22
        KVM_CAP_SET_GUEST_DEBUG = 23
        KVM_CAP_REINJECT_CONTROL = 24
        KVM_CAP_IRQ_ROUTING = 25
        KVM_CAP_IRQ_INJECT_STATUS = 26
        KVM_CAP_ASSIGN_DEV_IRQ = 29
        KVM_CAP_JOIN_MEMORY_REGIONS_WORKS = 30
        KVM_CAP_MCE = 31
        KVM_CAP_IRQFD = 32
        KVM_CAP_PIT2 = 33
        KVM_CAP_SET_BOOT_CPU_ID = 34
        KVM_CAP_PIT_STATE2 = 35
        KVM_CAP_IOEVENTFD = 36
        KVM_CAP_SET_IDENTITY_MAP_ADDR = 37
        KVM_CAP_XEN_HVM = 38
        KVM_CAP_ADJUST_CLOCK = 39
        KVM_CAP_INTERNAL_ERROR_DATA = 40
        KVM_CAP_VCPU_EVENTS = 41
        KVM_CAP_HYPERV = 44
        KVM_CAP_HYPERV_VAPIC = 45
        KVM_CAP_HYPERV_SPIN = 46
        KVM_CAP_PCI_SEGMENT = 47
        KVM_CAP_INTR_SHADOW = 49
        KVM_CAP_DEBUGREGS = 50
        KVM_CAP_X86_ROBUST_SINGLESTEP = 51
        KVM_CAP_ENABLE_CAP = 54
        KVM_CAP_XSAVE = 55
        KVM_CAP_XCRS = 56
        KVM_CAP_ASYNC_PF = 59
        KVM_CAP_TSC_CONTROL = 60
        KVM_CAP_GET_TSC_KHZ = 61
        KVM_CAP_MAX_VCPUS = 66
        KVM_CAP_ONE_REG = 70
        KVM_CAP_TSC_DEADLINE_TIMER = 72
        KVM_CAP_SYNC_REGS = 74
        KVM_CAP_PCI_2_3 = 75
        KVM_CAP_KVMCLOCK_CTRL = 76
        KVM_CAP_SIGNAL_MSI = 77
        KVM_CAP_READONLY_MEM = 81
        KVM_CAP_IRQFD_RESAMPLE = 82
        KVM_CAP_DEVICE_CTRL = 89
        KVM_CAP_EXT_EMUL_CPUID = 95
        KVM_CAP_HYPERV_TIME = 96
        KVM_CAP_IOAPIC_POLARITY_IGNORED = 97
        KVM_CAP_ENABLE_CAP_VM = 98
        KVM_CAP_IOEVENTFD_NO_LENGTH = 100
        KVM_CAP_VM_ATTRIBUTES = 101
        KVM_CAP_CHECK_EXTENSION_VM = 105
        KVM_CAP_DISABLE_QUIRKS = 116
        KVM_CAP_X86_SMM = 117
        KVM_CAP_MULTI_ADDRESS_SPACE = 118
        KVM_CAP_GUEST_DEBUG_HW_BPS = 119
        KVM_CAP_GUEST_DEBUG_HW_WPS = 120
        KVM_CAP_SPLIT_IRQCHIP = 121
        KVM_CAP_IOEVENTFD_ANY_LENGTH = 122
        KVM_CAP_HYPERV_SYNIC = 123
        KVM_CAP_VCPU_ATTRIBUTES = 127
        KVM_CAP_MAX_VCPU_ID = 128
        KVM_CAP_X2APIC_API = 129
        KVM_CAP_MSI_DEVID = 131
        KVM_CAP_IMMEDIATE_EXIT = 136
        KVM_CAP_X86_DISABLE_EXITS = 143
        KVM_CAP_GET_MSR_FEATURES = 153
        KVM_CAP_NESTED_STATE = 157
        KVM_CAP_MSR_PLATFORM_INFO = 159
        KVM_CAP_COALESCED_PIO = 162
        KVM_CAP_EXCEPTION_PAYLOAD = 164
        KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 = 168
        KVM_CAP_PMU_EVENT_FILTER = 173
        KVM_CAP_HALT_POLL = 182
        KVM_CAP_ASYNC_PF_INT = 183
        KVM_CAP_LAST_CPU = 184
        KVM_CAP_SMALLER_MAXPHYADDR = 185
        KVM_CAP_STEAL_TIME = 187
        KVM_CAP_X86_USER_SPACE_MSR = 188
        KVM_CAP_X86_MSR_FILTER = 189
        KVM_CAP_ENFORCE_PV_FEATURE_CPUID = 190
        KVM_CAP_SYS_HYPERV_CPUID = 191
        KVM_CAP_DIRTY_LOG_RING = 192
        KVM_CAP_X86_BUS_LOCK_EXIT = 193
        KVM_CAP_SET_GUEST_DEBUG2 = 195
        KVM_CAP_SGX_ATTRIBUTE = 196
        KVM_CAP_HYPERV_ENFORCE_CPUID = 199
        KVM_CAP_SREGS2 = 200
        KVM_CAP_EXIT_HYPERCALL = 201
        KVM_CAP_BINARY_STATS_FD = 203
        KVM_CAP_EXIT_ON_EMULATION_FAILURE = 204
        KVM_CAP_VM_GPA_BITS = 207
        KVM_CAP_XSAVE2 = 208
        KVM_CAP_SYS_ATTRIBUTES = 209
        KVM_CAP_PMU_CAPABILITY = 212
        KVM_CAP_DISABLE_QUIRKS2 = 213
        KVM_CAP_VM_TSC_CONTROL = 214
        KVM_CAP_SYSTEM_EVENT_DATA = 215
        KVM_CAP_X86_TRIPLE_FAULT_EVENT = 218
        KVM_CAP_X86_NOTIFY_VMEXIT = 219
        KVM_CAP_VM_DISABLE_NX_HUGE_PAGES = 220
        KVM_CAP_DIRTY_LOG_RING_ACQ_REL = 223
    return KvmCap


# ---------------------------------------------------------------------------
# Every structure mirrored here, for tests and tools that walk them.
# ---------------------------------------------------------------------------

#: Every structure and union class in this module, nested ones included.
#: A class with a ``_c_parent_`` attribute has no tag in C (the conformance
#: test reaches it through its parent); every other one is ``struct <name>``.
ALL_STRUCTS: tuple[type, ...] = (
    kvm_regs, kvm_segment, kvm_dtable, kvm_sregs, kvm_fpu, kvm_debugregs,
    kvm_msr_entry, kvm_msrs, kvm_msr_list, kvm_cpuid_entry2, kvm_cpuid2,
    kvm_userspace_memory_region, _kvm_dirty_log_bitmap, kvm_dirty_log, kvm_translation,
    _kvm_irq_level_u, kvm_irq_level, kvm_interrupt,
    kvm_pic_state, kvm_ioapic_redirtbl_fields, kvm_ioapic_redirtbl, kvm_ioapic_state,
    kvm_irqchip_chip, kvm_irqchip, kvm_pit_config, kvm_pit_channel_state, kvm_pit_state2,
    kvm_lapic_state, kvm_mp_state,
    kvm_vcpu_events_exception, kvm_vcpu_events_interrupt, kvm_vcpu_events_nmi,
    kvm_vcpu_events_smi, kvm_vcpu_events_triple_fault, kvm_vcpu_events,
    kvm_debug_exit_arch, kvm_guest_debug_arch, kvm_guest_debug,
    kvm_enable_cap, kvm_clock_data, kvm_sync_regs, kvm_xsave, kvm_xcr, kvm_xcrs,
    kvm_stats_header, kvm_stats_desc,
    kvm_run_hw, kvm_run_fail_entry, kvm_run_ex, kvm_run_io, kvm_run_debug,
    kvm_run_mmio, kvm_run_hypercall, kvm_run_tpr_access, kvm_run_internal,
    _kvm_run_emulation_failure_insn, _kvm_run_emulation_failure_u,
    kvm_run_emulation_failure, _kvm_run_system_event_u, kvm_run_system_event,
    kvm_run_eoi, kvm_run_msr, kvm_run_notify, kvm_run_exit, kvm_run_s, kvm_run,
)


# ---------------------------------------------------------------------------
# Enumerations built on first use (PEP 562; see the module docstring)
# ---------------------------------------------------------------------------

__getattr__, __dir__ = lazy_enums(
    globals(),
    {"KvmMemFlag": _kvm_mem_flag, "KvmVcpuEventValid": _kvm_vcpu_event_valid,
     "KvmGuestDbg": _kvm_guest_dbg, "KvmSystemEvent": _kvm_system_event,
     "KvmInternalError": _kvm_internal_error, "KvmCap": _kvm_cap},
    # The module-level aliases of members: KVM_GUESTDBG_ENABLE is KvmGuestDbg.KVM_GUESTDBG_ENABLE.
    (("KVM_GUESTDBG_", "KvmGuestDbg", ""), ("KVM_VCPUEVENT_VALID_", "KvmVcpuEventValid", ""),
     ("KVM_SYSTEM_EVENT_", "KvmSystemEvent", ""), ("KVM_INTERNAL_ERROR_", "KvmInternalError", "")))
