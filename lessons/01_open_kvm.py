"""Lesson 01: opening /dev/kvm -- the API version and the capabilities.

Run it: ``python lessons/01_open_kvm.py`` (``--quiet``: checkpoints only).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence

from _common import Lesson, run_lesson

from minikvm.kvm import ioctls
from minikvm.kvm.errors import KvmError
from minikvm.kvm.fd import ioctl
from minikvm.kvm.host import detect_host
from minikvm.kvm.system import Kvm
from minikvm.kvm.uapi import KVM_API_VERSION, KvmCap, kvm_run

#: Capabilities worth asking about, and what each is for.
CAPABILITIES = (
    (KvmCap.KVM_CAP_USER_MEMORY, "guest RAM from the VMM's own memory (02)"),
    (KvmCap.KVM_CAP_NR_MEMSLOTS, "how many memory slots a VM may have (02)"),
    (KvmCap.KVM_CAP_IRQCHIP, "interrupt controllers emulated in the kernel (08)"),
    (KvmCap.KVM_CAP_SET_GUEST_DEBUG, "single-stepping and breakpoints (07)"),
    (KvmCap.KVM_CAP_IMMEDIATE_EXIT, "with a signal, stopping a running vCPU (a timeout)"),
    (KvmCap.KVM_CAP_MAX_VCPUS, "the most vCPUs one VM may have"),
)


def main(argv: Sequence[str] | None = None) -> int:
    lesson = Lesson("01", "Opening /dev/kvm: the API version and capabilities", argv)
    lesson.narrate("""
        KVM is a part of the Linux kernel that turns the CPU's virtualization support into
        something a normal program can use. That program -- QEMU, Firecracker, kvmtool, or the
        Python in this repository -- is the *VMM* (virtual machine monitor). It talks to KVM
        through one special file, `/dev/kvm`, and through the file descriptors KVM hands back:
        one for the hypervisor itself, one per virtual machine, one per virtual CPU.

        Every request is an `ioctl(2)` on one of those descriptors. This lesson opens `/dev/kvm`
        by hand and asks it three questions, then shows the same with minikvm's `Kvm` class.
        (The reference for everything here is the kernel's
        `Documentation/virt/kvm/api.rst`.)
    """)

    # -- 1. open ------------------------------------------------------------------
    lesson.section("1. Open the device file")
    lesson.code("""
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    """)
    fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    lesson.result("os.open returned file descriptor", fd)
    lesson.narrate("""
        Nothing happened yet: opening `/dev/kvm` only gives us a handle on the hypervisor. It
        needs read *and* write access (usually: be in the `kvm` group).
    """)

    # -- 2. an ioctl number --------------------------------------------------------
    lesson.section("2. An ioctl request number describes itself")
    lesson.narrate("""
        An ioctl request is a 32-bit number with four fields packed in
        (`<asm-generic/ioctl.h>`): the *direction* of the data (none, to the kernel, from
        the kernel, both), the *size* of the structure the argument points to, the driver's
        *type* byte (KVM's is `KVMIO` = `0xAE`) and a command *number*.
        `KVM_GET_API_VERSION` takes no argument, so it is just `_IO(0xAE, 0x00)`.
        `KVM_GET_REGS` fills in a `struct kvm_regs` of 144 bytes, so the number says
        "read, 144 bytes" (read *by the program*: directions are seen from user space). If
        the structure ever changed size, the number would change with it, and old programs
        would be refused instead of misread.
    """)
    lesson.result("KVM_GET_API_VERSION", f"{ioctls.KVM_GET_API_VERSION:#x}")
    lesson.result("KVM_GET_REGS", f"{ioctls.KVM_GET_REGS:#x} = "
                  f"{ioctls.decode_ioctl(ioctls.KVM_GET_REGS)!r}")
    lesson.checkpoint("KVM_GET_API_VERSION request", f"{ioctls.KVM_GET_API_VERSION:#x}", "0xae00")
    regs_fields = ioctls.decode_ioctl(ioctls.KVM_GET_REGS)
    lesson.checkpoint("KVM_GET_REGS request",
                      f"{ioctls.KVM_GET_REGS:#x} = {regs_fields!r}",
                      "0x8090ae81 = _IOR(type=0xae, nr=0x81, size=144)")

    # -- 3. the API version ---------------------------------------------------------
    lesson.section("3. KVM_GET_API_VERSION")
    lesson.narrate("""
        `ioctl()` here is minikvm's (`minikvm/kvm/fd.py`): it calls the C library's `ioctl(2)`
        through `ctypes` and turns a failure into a `KvmError` that names the request.
    """)
    lesson.code("""
        version = ioctl(fd, ioctls.KVM_GET_API_VERSION)
    """)
    version = ioctl(fd, ioctls.KVM_GET_API_VERSION)
    lesson.result("KVM_GET_API_VERSION returned", version)
    lesson.narrate("""
        The answer is **12**, on every Linux since 2.6.22 (2007). The version was frozen
        then: a VMM checks it once and refuses anything else. Everything added since is
        discovered one feature at a time, with *capabilities*.
    """)
    lesson.checkpoint("API version", version, KVM_API_VERSION)

    # -- 4. capabilities ---------------------------------------------------------------
    lesson.section("4. KVM_CHECK_EXTENSION: what does this KVM offer?")
    lesson.narrate("""
        `KVM_CHECK_EXTENSION` takes a capability number (`KVM_CAP_*`) and answers 0 for
        "absent" or a positive number for "present" -- sometimes a count, such as the number
        of memory slots a VM may have. Asking about a number KVM has never heard of is not an
        error: the answer is simply 0, which is what lets an old kernel and a new VMM get along.
    """)
    rows = []
    for cap, meaning in CAPABILITIES:
        rows.append((cap.name, int(cap), ioctl(fd, ioctls.KVM_CHECK_EXTENSION, int(cap)),
                     meaning))
    lesson.table("KVM_CHECK_EXTENSION on this host",
                 ("capability", "number", "answer", "what it is (lesson)"), rows)
    lesson.narrate("""
        `KVM_CAP_USER_MEMORY` is the one we cannot live without: it lets a VMM give the guest
        ordinary memory of its own process as RAM (lesson 02). The counts (memory slots,
        vCPUs) depend on the kernel and its configuration.
    """)
    user_memory = ioctl(fd, ioctls.KVM_CHECK_EXTENSION, KvmCap.KVM_CAP_USER_MEMORY)
    lesson.checkpoint("KVM_CAP_USER_MEMORY", user_memory, 1)
    unknown = ioctl(fd, ioctls.KVM_CHECK_EXTENSION, 9999)
    lesson.checkpoint("capability 9999 (no such capability)", unknown, 0)

    # -- 5. the vCPU mmap size -----------------------------------------------------------
    lesson.section("5. KVM_GET_VCPU_MMAP_SIZE: the memory KVM shares with each vCPU")
    mmap_size = ioctl(fd, ioctls.KVM_GET_VCPU_MMAP_SIZE)
    lesson.result("KVM_GET_VCPU_MMAP_SIZE returned", f"{mmap_size} bytes")
    lesson.narrate(f"""
        When the guest stops, KVM says why in a `struct kvm_run` that the VMM maps from the
        vCPU's file descriptor (lesson 02). After it come a page for the data of port I/O and
        room for a ring of buffered MMIO writes, so the mapping is larger than the structure
        ({ctypes.sizeof(kvm_run)} bytes). The exact size is the kernel's business, which is
        why we ask.
    """)
    lesson.checkpoint("mmap size holds struct kvm_run",
                      "yes" if mmap_size >= ctypes.sizeof(kvm_run) else "no", "yes")

    # -- 6. each fd has its own ioctls -------------------------------------------------
    lesson.section("6. Each kind of file descriptor answers its own ioctls")
    lesson.narrate("""
        `KVM_RUN` means "run this virtual CPU". Sent to `/dev/kvm`, which is not a vCPU, it
        fails. minikvm's `ioctl()` turns the error number into words and names the request.
    """)
    try:
        ioctl(fd, ioctls.KVM_RUN)
        answer = "accepted?!"
    except KvmError as err:
        answer = str(err)
    lesson.result("KVM_RUN on /dev/kvm", answer)
    lesson.checkpoint("KVM_RUN on /dev/kvm", answer, "KVM_RUN failed: Invalid argument (EINVAL)")
    os.close(fd)

    # -- 7. the same with minikvm's API ------------------------------------------------
    lesson.section("7. The same with minikvm's Kvm class")
    lesson.code("""
        with Kvm() as kvm:           # opens /dev/kvm, insists on API version 12
            kvm.api_version()
            kvm.check_extension(KvmCap.KVM_CAP_USER_MEMORY)
            kvm.require(KvmCap.KVM_CAP_IMMEDIATE_EXIT, "stopping a running guest")
    """)
    with Kvm() as kvm:
        api = kvm.api_version()
        has_user_memory = kvm.check_extension(KvmCap.KVM_CAP_USER_MEMORY)
        kvm.require(KvmCap.KVM_CAP_IMMEDIATE_EXIT, "stopping a running guest")
    lesson.narrate("""
        `Kvm` is one object per file descriptor, like rust-vmm's `kvm-ioctls`: it creates the
        next one (`kvm.create_vm()` gives a `Vm`, `vm.create_vcpu(0)` a `Vcpu`). A missing
        `/dev/kvm`, a permission problem, a wrong API version or a missing capability that
        `require` asks for each become a `KvmUnavailableError` with one sentence saying what
        to do about it.
    """)
    lesson.checkpoint("Kvm().api_version()", api, 12)
    lesson.checkpoint("Kvm().check_extension(KVM_CAP_USER_MEMORY)", has_user_memory, 1)

    host = detect_host()
    lesson.narrate(f"""
        **On this host** the loaded KVM module is `{host.flavour}`: {host.meaning}.
        Later lessons say where that changes what you see. `minikvm info` prints all of this
        as a table.
    """)
    return lesson.finish()


if __name__ == "__main__":
    run_lesson(main)
