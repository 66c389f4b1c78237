"""Errors raised by the KVM binding, worded for a person, not a programmer."""

from __future__ import annotations

import errno
import os

__all__ = ["KvmError", "KvmUnavailableError", "errno_words"]


def errno_words(err: int) -> str:
    """``EINVAL`` -> ``"Invalid argument (EINVAL)"``."""
    name = errno.errorcode.get(err, f"errno {err}")
    return f"{os.strerror(err)} ({name})"


class KvmError(Exception):
    """An ioctl on a KVM file descriptor failed.

    ``ioctl`` is the kernel's name of the request (``KVM_RUN``), ``errno`` the
    error number it returned; ``str()`` gives both in words.
    """

    def __init__(self, ioctl: str, err: int, hint: str = "") -> None:
        self.ioctl = ioctl
        self.errno = err
        self.hint = hint
        message = f"{ioctl} failed: {errno_words(err)}"
        if hint:
            message += f"; {hint}"
        super().__init__(message)


class KvmUnavailableError(Exception):
    """KVM cannot be used here at all: one sentence saying what to do."""
