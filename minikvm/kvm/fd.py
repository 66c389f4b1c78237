"""The one place that issues ``ioctl(2)`` on KVM file descriptors.

Every KVM object -- the system (``/dev/kvm``), a VM, a vCPU -- is a file
descriptor, and everything one asks of it is an ioctl. We call libc's
``ioctl`` through ctypes rather than ``fcntl.ioctl``: ctypes releases the GIL
for the call (another thread can pause the guest meanwhile) and it does not
retry on ``EINTR``, which is how a signal gets the vCPU thread out of
``KVM_RUN``.
"""

from __future__ import annotations

import ctypes
import os

from minikvm.kvm.errors import KvmError
from minikvm.kvm.ioctls import ioctl_name

__all__ = ["KvmFd", "ioctl"]

_libc = ctypes.CDLL(None, use_errno=True)
_ioctl = _libc.ioctl
_ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
_ioctl.restype = ctypes.c_int
_BY_REFERENCE = (ctypes.Structure, ctypes.Array, ctypes.Union, ctypes._SimpleCData)


def ioctl(fd: int, request: int, arg: object = None) -> int:
    """Issue one ioctl; ``arg`` is an int, a ctypes object (passed by
    reference) or None. Returns the non-negative result or raises KvmError."""
    # ``arg`` keeps the ctypes object alive across the call; only its address
    # goes to the kernel.
    if isinstance(arg, _BY_REFERENCE):
        result = _ioctl(fd, request, ctypes.addressof(arg))
    else:
        result = _ioctl(fd, request, arg)
    if result < 0:
        raise KvmError(ioctl_name(request), ctypes.get_errno())
    return result


class KvmFd:
    """A file descriptor that owns itself: closed once, by close() or GC."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def _ioctl(self, request: int, arg: object = None) -> int:
        return ioctl(self.fd, request, arg)

    def close(self) -> None:
        fd, self.fd = getattr(self, "fd", -1), -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except OSError:
            pass
