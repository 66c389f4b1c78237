"""KVM ioctl request numbers, computed the way ``<asm-generic/ioctl.h>`` does.

An ioctl request number is not arbitrary: Linux packs four fields into
32 bits so that the number itself says which way data flows and how much:

====== ===== =================================================================
bits   name  meaning
====== ===== =================================================================
0-7    nr    command number within its driver (``KVM_RUN`` is 0x80)
8-15   type  the driver's "magic" byte; KVM's is ``KVMIO`` = 0xAE
16-29  size  ``sizeof`` the structure the argument points at (14 bits)
30-31  dir   ``_IOC_WRITE`` (1): user space writes, the kernel reads;
             ``_IOC_READ`` (2): the kernel writes back; both (3); none (0)
====== ===== =================================================================

So ``KVM_GET_REGS = _IOR(KVMIO, 0x81, struct kvm_regs)`` is
``(2 << 30) | (144 << 16) | (0xAE << 8) | 0x81``: changing the struct's size
changes the number, and an old binary asking with the old size is refused
rather than misread. "Read" and "write" are from user space's point of view.
x86 uses these generic widths (PowerPC, MIPS and SPARC differ; we are x86-64).

KVM has three kinds of file descriptor, and each accepts its own ioctls
(Documentation/virt/kvm/api.rst, section 4 gives the "Type:" of each):
``/dev/kvm`` itself (system ioctls), a VM fd from ``KVM_CREATE_VM`` and a
vCPU fd from ``KVM_CREATE_VCPU``. The tables below are grouped the same way.
"""

from __future__ import annotations

import ctypes
from typing import NamedTuple

from minikvm.kvm.uapi import (
    kvm_clock_data,
    kvm_cpuid2,
    kvm_debugregs,
    kvm_dirty_log,
    kvm_enable_cap,
    kvm_fpu,
    kvm_guest_debug,
    kvm_interrupt,
    kvm_irq_level,
    kvm_irqchip,
    kvm_lapic_state,
    kvm_mp_state,
    kvm_msr_list,
    kvm_msrs,
    kvm_pit_config,
    kvm_pit_state2,
    kvm_regs,
    kvm_sregs,
    kvm_translation,
    kvm_userspace_memory_region,
    kvm_vcpu_events,
    kvm_xcrs,
    kvm_xsave,
)

__all__ = [
    "_IOC", "_IO", "_IOR", "_IOW", "_IOWR",
    "_IOC_NONE", "_IOC_WRITE", "_IOC_READ",
    "_IOC_NRBITS", "_IOC_TYPEBITS", "_IOC_SIZEBITS", "_IOC_DIRBITS",
    "_IOC_NRSHIFT", "_IOC_TYPESHIFT", "_IOC_SIZESHIFT", "_IOC_DIRSHIFT",
    "IoctlFields", "decode_ioctl", "ioctl_name",
    "KVMIO",
    "SYSTEM_IOCTLS", "VM_IOCTLS", "VCPU_IOCTLS", "ALL_IOCTLS",
    # /dev/kvm
    "KVM_GET_API_VERSION", "KVM_CREATE_VM", "KVM_GET_MSR_INDEX_LIST",
    "KVM_CHECK_EXTENSION", "KVM_GET_VCPU_MMAP_SIZE", "KVM_GET_SUPPORTED_CPUID",
    "KVM_GET_EMULATED_CPUID", "KVM_GET_MSR_FEATURE_INDEX_LIST",
    # VM fd
    "KVM_CREATE_VCPU", "KVM_GET_DIRTY_LOG", "KVM_SET_USER_MEMORY_REGION",
    "KVM_SET_TSS_ADDR", "KVM_SET_IDENTITY_MAP_ADDR", "KVM_CREATE_IRQCHIP",
    "KVM_IRQ_LINE", "KVM_GET_IRQCHIP", "KVM_SET_IRQCHIP", "KVM_IRQ_LINE_STATUS",
    "KVM_CREATE_PIT2", "KVM_GET_PIT2", "KVM_SET_PIT2", "KVM_SET_CLOCK",
    "KVM_GET_CLOCK", "KVM_ENABLE_CAP",
    # vCPU fd
    "KVM_RUN", "KVM_GET_REGS", "KVM_SET_REGS", "KVM_GET_SREGS", "KVM_SET_SREGS",
    "KVM_TRANSLATE", "KVM_INTERRUPT", "KVM_GET_MSRS", "KVM_SET_MSRS",
    "KVM_GET_FPU", "KVM_SET_FPU", "KVM_GET_LAPIC", "KVM_SET_LAPIC",
    "KVM_SET_CPUID2", "KVM_GET_CPUID2", "KVM_GET_MP_STATE", "KVM_SET_MP_STATE",
    "KVM_NMI", "KVM_SET_GUEST_DEBUG", "KVM_GET_VCPU_EVENTS", "KVM_SET_VCPU_EVENTS",
    "KVM_GET_DEBUGREGS", "KVM_SET_DEBUGREGS", "KVM_SET_TSC_KHZ", "KVM_GET_TSC_KHZ",
    "KVM_KVMCLOCK_CTRL", "KVM_SMI", "KVM_GET_XSAVE", "KVM_SET_XSAVE", "KVM_GET_XSAVE2",
    "KVM_GET_XCRS", "KVM_SET_XCRS", "KVM_GET_STATS_FD",
]

# ---------------------------------------------------------------------------
# The generic encoding (asm-generic/ioctl.h)
# ---------------------------------------------------------------------------

_IOC_NRBITS = 8
_IOC_TYPEBITS = 8
_IOC_SIZEBITS = 14
_IOC_DIRBITS = 2

_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS        # 8
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS    # 16
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS     # 30

_IOC_NONE = 0   # no argument data, or a plain integer argument
_IOC_WRITE = 1  # user space -> kernel
_IOC_READ = 2   # kernel -> user space


def _IOC(dir: int, type: int, nr: int, size: int) -> int:  # noqa: A002 - kernel's names
    """Pack direction, type, number and argument size into a request number.

    Each field must fit its width; the kernel's macro would silently
    truncate, here a mistake raises ``ValueError``.
    """
    for value, bits, what in ((dir, _IOC_DIRBITS, "dir"), (type, _IOC_TYPEBITS, "type"),
                              (nr, _IOC_NRBITS, "nr"), (size, _IOC_SIZEBITS, "size")):
        if not 0 <= value < (1 << bits):
            raise ValueError(f"ioctl {what} {value!r} does not fit in {bits} bits")
    return ((dir << _IOC_DIRSHIFT) | (type << _IOC_TYPESHIFT)
            | (nr << _IOC_NRSHIFT) | (size << _IOC_SIZESHIFT))


def _IO(type: int, nr: int) -> int:  # noqa: A002
    """A request with no data behind the argument (it may be a plain int)."""
    return _IOC(_IOC_NONE, type, nr, 0)


def _IOR(type: int, nr: int, argtype: type) -> int:  # noqa: A002
    """The kernel fills in an ``argtype`` structure for us."""
    return _IOC(_IOC_READ, type, nr, ctypes.sizeof(argtype))


def _IOW(type: int, nr: int, argtype: type) -> int:  # noqa: A002
    """The kernel reads an ``argtype`` structure we filled in."""
    return _IOC(_IOC_WRITE, type, nr, ctypes.sizeof(argtype))


def _IOWR(type: int, nr: int, argtype: type) -> int:  # noqa: A002
    """The kernel reads the ``argtype`` structure and writes results back into it."""
    return _IOC(_IOC_READ | _IOC_WRITE, type, nr, ctypes.sizeof(argtype))


#: KVM's ioctl "type" byte.
KVMIO = 0xAE

# ---------------------------------------------------------------------------
# System ioctls: on the /dev/kvm fd
# ---------------------------------------------------------------------------

KVM_GET_API_VERSION = _IO(KVMIO, 0x00)
KVM_CREATE_VM = _IO(KVMIO, 0x01)  # returns a VM fd
KVM_GET_MSR_INDEX_LIST = _IOWR(KVMIO, 0x02, kvm_msr_list)
KVM_CHECK_EXTENSION = _IO(KVMIO, 0x03)  # also on VM fds
KVM_GET_VCPU_MMAP_SIZE = _IO(KVMIO, 0x04)
KVM_GET_SUPPORTED_CPUID = _IOWR(KVMIO, 0x05, kvm_cpuid2)
KVM_GET_EMULATED_CPUID = _IOWR(KVMIO, 0x09, kvm_cpuid2)
KVM_GET_MSR_FEATURE_INDEX_LIST = _IOWR(KVMIO, 0x0A, kvm_msr_list)

# ---------------------------------------------------------------------------
# VM ioctls: on the fd KVM_CREATE_VM returned
# ---------------------------------------------------------------------------

KVM_CREATE_VCPU = _IO(KVMIO, 0x41)  # argument: vCPU id; returns a vCPU fd
KVM_GET_DIRTY_LOG = _IOW(KVMIO, 0x42, kvm_dirty_log)
KVM_SET_USER_MEMORY_REGION = _IOW(KVMIO, 0x46, kvm_userspace_memory_region)
KVM_SET_TSS_ADDR = _IO(KVMIO, 0x47)  # argument: guest-physical address (int)
KVM_SET_IDENTITY_MAP_ADDR = _IOW(KVMIO, 0x48, ctypes.c_uint64)
KVM_CREATE_IRQCHIP = _IO(KVMIO, 0x60)
KVM_IRQ_LINE = _IOW(KVMIO, 0x61, kvm_irq_level)
KVM_GET_IRQCHIP = _IOWR(KVMIO, 0x62, kvm_irqchip)
# The header spells KVM_SET_IRQCHIP with _IOR although the kernel reads the
# struct: a historical slip that is now ABI and must be copied as is.
KVM_SET_IRQCHIP = _IOR(KVMIO, 0x63, kvm_irqchip)
KVM_IRQ_LINE_STATUS = _IOWR(KVMIO, 0x67, kvm_irq_level)
KVM_CREATE_PIT2 = _IOW(KVMIO, 0x77, kvm_pit_config)
KVM_SET_CLOCK = _IOW(KVMIO, 0x7B, kvm_clock_data)
KVM_GET_CLOCK = _IOR(KVMIO, 0x7C, kvm_clock_data)
KVM_GET_PIT2 = _IOR(KVMIO, 0x9F, kvm_pit_state2)
KVM_SET_PIT2 = _IOW(KVMIO, 0xA0, kvm_pit_state2)
KVM_ENABLE_CAP = _IOW(KVMIO, 0xA3, kvm_enable_cap)  # also on vCPU fds

# ---------------------------------------------------------------------------
# vCPU ioctls: on the fd KVM_CREATE_VCPU returned
# ---------------------------------------------------------------------------

KVM_RUN = _IO(KVMIO, 0x80)
KVM_GET_REGS = _IOR(KVMIO, 0x81, kvm_regs)
KVM_SET_REGS = _IOW(KVMIO, 0x82, kvm_regs)
KVM_GET_SREGS = _IOR(KVMIO, 0x83, kvm_sregs)
KVM_SET_SREGS = _IOW(KVMIO, 0x84, kvm_sregs)
KVM_TRANSLATE = _IOWR(KVMIO, 0x85, kvm_translation)
KVM_INTERRUPT = _IOW(KVMIO, 0x86, kvm_interrupt)
KVM_GET_MSRS = _IOWR(KVMIO, 0x88, kvm_msrs)
KVM_SET_MSRS = _IOW(KVMIO, 0x89, kvm_msrs)
KVM_GET_FPU = _IOR(KVMIO, 0x8C, kvm_fpu)
KVM_SET_FPU = _IOW(KVMIO, 0x8D, kvm_fpu)
KVM_GET_LAPIC = _IOR(KVMIO, 0x8E, kvm_lapic_state)
KVM_SET_LAPIC = _IOW(KVMIO, 0x8F, kvm_lapic_state)
KVM_SET_CPUID2 = _IOW(KVMIO, 0x90, kvm_cpuid2)
KVM_GET_CPUID2 = _IOWR(KVMIO, 0x91, kvm_cpuid2)
KVM_GET_MP_STATE = _IOR(KVMIO, 0x98, kvm_mp_state)
KVM_SET_MP_STATE = _IOW(KVMIO, 0x99, kvm_mp_state)
KVM_NMI = _IO(KVMIO, 0x9A)
KVM_SET_GUEST_DEBUG = _IOW(KVMIO, 0x9B, kvm_guest_debug)
KVM_GET_VCPU_EVENTS = _IOR(KVMIO, 0x9F, kvm_vcpu_events)
KVM_SET_VCPU_EVENTS = _IOW(KVMIO, 0xA0, kvm_vcpu_events)
KVM_GET_DEBUGREGS = _IOR(KVMIO, 0xA1, kvm_debugregs)
KVM_SET_DEBUGREGS = _IOW(KVMIO, 0xA2, kvm_debugregs)
KVM_SET_TSC_KHZ = _IO(KVMIO, 0xA2)  # argument: frequency in kHz (int)
KVM_GET_TSC_KHZ = _IO(KVMIO, 0xA3)
KVM_KVMCLOCK_CTRL = _IO(KVMIO, 0xAD)
KVM_SMI = _IO(KVMIO, 0xB7)
# XSAVE state (KVM_CAP_XSAVE). The number encodes sizeof(struct kvm_xsave),
# 4 KiB; KVM_GET_XSAVE2 (KVM_CAP_XSAVE2) may write more than that: as many
# bytes as KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) said, and KVM_SET_XSAVE then
# reads as many.
KVM_GET_XSAVE = _IOR(KVMIO, 0xA4, kvm_xsave)
KVM_SET_XSAVE = _IOW(KVMIO, 0xA5, kvm_xsave)
KVM_GET_XCRS = _IOR(KVMIO, 0xA6, kvm_xcrs)
KVM_SET_XCRS = _IOW(KVMIO, 0xA7, kvm_xcrs)
KVM_GET_XSAVE2 = _IOR(KVMIO, 0xCF, kvm_xsave)
# Binary statistics (KVM_CAP_BINARY_STATS_FD): returns a new fd to read them
# from (minikvm/kvm/stats.py). Accepted by VM fds too.
KVM_GET_STATS_FD = _IO(KVMIO, 0xCE)

# ---------------------------------------------------------------------------
# Tables by file descriptor
# ---------------------------------------------------------------------------

#: ioctls accepted by the ``/dev/kvm`` fd.
SYSTEM_IOCTLS: dict[str, int] = {
    "KVM_GET_API_VERSION": KVM_GET_API_VERSION,
    "KVM_CREATE_VM": KVM_CREATE_VM,
    "KVM_GET_MSR_INDEX_LIST": KVM_GET_MSR_INDEX_LIST,
    "KVM_CHECK_EXTENSION": KVM_CHECK_EXTENSION,
    "KVM_GET_VCPU_MMAP_SIZE": KVM_GET_VCPU_MMAP_SIZE,
    "KVM_GET_SUPPORTED_CPUID": KVM_GET_SUPPORTED_CPUID,
    "KVM_GET_EMULATED_CPUID": KVM_GET_EMULATED_CPUID,
    "KVM_GET_MSR_FEATURE_INDEX_LIST": KVM_GET_MSR_FEATURE_INDEX_LIST,
}

#: ioctls accepted by a VM fd. ``KVM_CHECK_EXTENSION`` is answered here too
#: (per VM, with ``KVM_CAP_CHECK_EXTENSION_VM``), under the same number.
VM_IOCTLS: dict[str, int] = {
    "KVM_CHECK_EXTENSION": KVM_CHECK_EXTENSION,
    "KVM_CREATE_VCPU": KVM_CREATE_VCPU,
    "KVM_GET_DIRTY_LOG": KVM_GET_DIRTY_LOG,
    "KVM_SET_USER_MEMORY_REGION": KVM_SET_USER_MEMORY_REGION,
    "KVM_SET_TSS_ADDR": KVM_SET_TSS_ADDR,
    "KVM_SET_IDENTITY_MAP_ADDR": KVM_SET_IDENTITY_MAP_ADDR,
    "KVM_CREATE_IRQCHIP": KVM_CREATE_IRQCHIP,
    "KVM_IRQ_LINE": KVM_IRQ_LINE,
    "KVM_GET_IRQCHIP": KVM_GET_IRQCHIP,
    "KVM_SET_IRQCHIP": KVM_SET_IRQCHIP,
    "KVM_IRQ_LINE_STATUS": KVM_IRQ_LINE_STATUS,
    "KVM_CREATE_PIT2": KVM_CREATE_PIT2,
    "KVM_SET_CLOCK": KVM_SET_CLOCK,
    "KVM_GET_CLOCK": KVM_GET_CLOCK,
    "KVM_GET_PIT2": KVM_GET_PIT2,
    "KVM_SET_PIT2": KVM_SET_PIT2,
    "KVM_ENABLE_CAP": KVM_ENABLE_CAP,
}

#: ioctls accepted by a vCPU fd. (``KVM_ENABLE_CAP`` works on vCPU fds too,
#: for per-vCPU capabilities; it is listed under VM fds.)
VCPU_IOCTLS: dict[str, int] = {
    "KVM_RUN": KVM_RUN,
    "KVM_GET_REGS": KVM_GET_REGS,
    "KVM_SET_REGS": KVM_SET_REGS,
    "KVM_GET_SREGS": KVM_GET_SREGS,
    "KVM_SET_SREGS": KVM_SET_SREGS,
    "KVM_TRANSLATE": KVM_TRANSLATE,
    "KVM_INTERRUPT": KVM_INTERRUPT,
    "KVM_GET_MSRS": KVM_GET_MSRS,
    "KVM_SET_MSRS": KVM_SET_MSRS,
    "KVM_GET_FPU": KVM_GET_FPU,
    "KVM_SET_FPU": KVM_SET_FPU,
    "KVM_GET_LAPIC": KVM_GET_LAPIC,
    "KVM_SET_LAPIC": KVM_SET_LAPIC,
    "KVM_SET_CPUID2": KVM_SET_CPUID2,
    "KVM_GET_CPUID2": KVM_GET_CPUID2,
    "KVM_GET_MP_STATE": KVM_GET_MP_STATE,
    "KVM_SET_MP_STATE": KVM_SET_MP_STATE,
    "KVM_NMI": KVM_NMI,
    "KVM_SET_GUEST_DEBUG": KVM_SET_GUEST_DEBUG,
    "KVM_GET_VCPU_EVENTS": KVM_GET_VCPU_EVENTS,
    "KVM_SET_VCPU_EVENTS": KVM_SET_VCPU_EVENTS,
    "KVM_GET_DEBUGREGS": KVM_GET_DEBUGREGS,
    "KVM_SET_DEBUGREGS": KVM_SET_DEBUGREGS,
    "KVM_SET_TSC_KHZ": KVM_SET_TSC_KHZ,
    "KVM_GET_TSC_KHZ": KVM_GET_TSC_KHZ,
    "KVM_KVMCLOCK_CTRL": KVM_KVMCLOCK_CTRL,
    "KVM_SMI": KVM_SMI,
    "KVM_GET_XSAVE": KVM_GET_XSAVE,
    "KVM_SET_XSAVE": KVM_SET_XSAVE,
    "KVM_GET_XSAVE2": KVM_GET_XSAVE2,
    "KVM_GET_XCRS": KVM_GET_XCRS,
    "KVM_SET_XCRS": KVM_SET_XCRS,
    "KVM_GET_STATS_FD": KVM_GET_STATS_FD,
}

#: Every ioctl above, by name.
ALL_IOCTLS: dict[str, int] = {**SYSTEM_IOCTLS, **VM_IOCTLS, **VCPU_IOCTLS}

# Numbers are unique across the three tables except where one name is listed
# twice; the same number may still mean different things on different fds
# in the kernel, which is why the tables are kept apart.
_NAME_OF: dict[int, str] = {}
for _name, _number in ALL_IOCTLS.items():
    _NAME_OF.setdefault(_number, _name)
del _name, _number


# ---------------------------------------------------------------------------
# Reading a number back
# ---------------------------------------------------------------------------

_DIR_NAMES = {_IOC_NONE: "_IO", _IOC_READ: "_IOR", _IOC_WRITE: "_IOW",
              _IOC_READ | _IOC_WRITE: "_IOWR"}


class IoctlFields(NamedTuple):
    """The four fields of a request number (see the table at the top)."""

    dir: int    # _IOC_NONE, _IOC_WRITE, _IOC_READ or both
    type: int   # the driver's magic byte (KVMIO)
    nr: int     # command number
    size: int   # sizeof the argument structure

    def __repr__(self) -> str:
        return (f"{_DIR_NAMES[self.dir]}(type={self.type:#04x}, nr={self.nr:#04x}, "
                f"size={self.size})")


def decode_ioctl(number: int) -> IoctlFields:
    """Split a request number into its fields (the inverse of :func:`_IOC`)."""
    if not 0 <= number < (1 << 32):
        raise ValueError(f"ioctl request {number!r} is not a 32-bit number")
    return IoctlFields(
        (number >> _IOC_DIRSHIFT) & ((1 << _IOC_DIRBITS) - 1),
        (number >> _IOC_TYPESHIFT) & ((1 << _IOC_TYPEBITS) - 1),
        (number >> _IOC_NRSHIFT) & ((1 << _IOC_NRBITS) - 1),
        (number >> _IOC_SIZESHIFT) & ((1 << _IOC_SIZEBITS) - 1),
    )


def ioctl_name(number: int) -> str:
    """The kernel's name for a request number (``"KVM_RUN"``), for error messages.

    An unknown number comes back in hex with its decoded fields, e.g.
    ``"0xc008ae99 (_IOWR(type=0xae, nr=0x99, size=8))"``.
    """
    name = _NAME_OF.get(number)
    if name is not None:
        return name
    try:
        return f"{number:#010x} ({decode_ioctl(number)!r})"
    except (ValueError, TypeError):
        return repr(number)
