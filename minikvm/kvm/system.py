"""``Kvm``: the system file descriptor, ``/dev/kvm``.

Opening ``/dev/kvm`` gives a handle on the hypervisor itself. It answers
questions about KVM (API version, capabilities, the size of the per-vCPU
shared page, which CPUID bits and MSRs it can virtualize) and creates VMs.
"""

from __future__ import annotations

import errno
import os

from minikvm.kvm import ioctls
from minikvm.kvm.errors import KvmError, KvmUnavailableError
from minikvm.kvm.fd import KvmFd
from minikvm.kvm.uapi import KVM_API_VERSION, make_kvm_cpuid2, make_kvm_msr_list
from minikvm.kvm.vm import Vm

__all__ = ["DEFAULT_KVM_PATH", "Kvm"]

DEFAULT_KVM_PATH = "/dev/kvm"


def _open_device(path: str) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        raise KvmUnavailableError(
            f"{path} does not exist: KVM is not available here (load the kvm_intel or kvm_amd "
            "module, or enable virtualization (VT-x/AMD-V) in the firmware or the host VM)"
        ) from None
    except PermissionError:
        raise KvmUnavailableError(
            f"no permission to open {path}: add yourself to its group "
            f"(usually 'kvm': sudo usermod -aG kvm $USER, then log in again)"
        ) from None
    except IsADirectoryError:
        raise KvmUnavailableError(f"{path} is a directory, not the KVM device") from None
    except OSError as err:
        raise KvmUnavailableError(f"cannot open {path}: {os.strerror(err.errno)}") from None


class Kvm(KvmFd):
    """The hypervisor, through ``/dev/kvm``.

    >>> kvm = Kvm()                    # doctest: +SKIP
    >>> vm = kvm.create_vm()           # doctest: +SKIP
    """

    def __init__(self, path: str = DEFAULT_KVM_PATH) -> None:
        super().__init__(_open_device(path))
        self.path = path
        try:
            version = self.api_version()
        except KvmError as err:
            self.close()
            raise KvmUnavailableError(f"{path} is not a KVM device ({err})") from None
        if version != KVM_API_VERSION:
            self.close()
            raise KvmUnavailableError(
                f"{path} speaks KVM API version {version}, but minikvm needs {KVM_API_VERSION}"
            )

    def api_version(self) -> int:
        """``KVM_GET_API_VERSION``: 12 on every kernel since 2.6.22."""
        return self._ioctl(ioctls.KVM_GET_API_VERSION)

    def check_extension(self, cap: int) -> int:
        """``KVM_CHECK_EXTENSION``: 0 when ``cap`` is absent, else >0 (often a count)."""
        return self._ioctl(ioctls.KVM_CHECK_EXTENSION, int(cap))

    def require(self, cap: int, why: str) -> int:
        """Like :meth:`check_extension`, but a missing capability is an error
        saying what needed it."""
        value = self.check_extension(cap)
        if value <= 0:
            name = getattr(cap, "name", str(cap))
            raise KvmUnavailableError(f"this KVM lacks {name}, which {why} needs")
        return value

    def vcpu_mmap_size(self) -> int:
        """``KVM_GET_VCPU_MMAP_SIZE``: bytes to mmap from each vCPU fd (the
        ``kvm_run`` page plus room for string I/O data and more)."""
        return self._ioctl(ioctls.KVM_GET_VCPU_MMAP_SIZE)

    def create_vm(self, machine_type: int = 0) -> Vm:
        """``KVM_CREATE_VM``: a new, empty virtual machine (no memory, no vCPU)."""
        fd = self._ioctl(ioctls.KVM_CREATE_VM, machine_type)
        return Vm(self, fd)

    def supported_cpuid(self, max_entries: int = 256):
        """``KVM_GET_SUPPORTED_CPUID``: the CPUID leaves KVM can present."""
        cpuid = make_kvm_cpuid2(max_entries)
        cpuid.nent = max_entries
        self._ioctl(ioctls.KVM_GET_SUPPORTED_CPUID, cpuid)
        return cpuid

    def msr_index_list(self, max_entries: int = 1024) -> list[int]:
        """``KVM_GET_MSR_INDEX_LIST``: the MSRs a VMM may save and restore."""
        msr_list = make_kvm_msr_list(max_entries)
        msr_list.nmsrs = max_entries
        try:
            self._ioctl(ioctls.KVM_GET_MSR_INDEX_LIST, msr_list)
        except KvmError as err:
            if err.errno != errno.E2BIG:
                raise
            return []
        return list(msr_list.indices[:msr_list.nmsrs])


