"""``MachineConfig``: everything that describes a machine, as one value.

The CLI's options, the TUI, ``minikvm trace``, the lessons' checker and the
tests all say what machine they want with a :class:`MachineConfig` and get
it from :meth:`minikvm.machine.Machine.from_config`: one way to build a
machine, so that ``run``, ``trace`` and ``tui`` of the same options see the
same guest.
"""

from __future__ import annotations

from minikvm.core.board import DEFAULT_MEM_SIZE
from minikvm.kvm.system import DEFAULT_KVM_PATH
from minikvm.record import FrozenRecord

__all__ = ["ConfigError", "MAX_VCPUS", "MachineConfig", "VIRTIO_KINDS", "VirtioSpec", "check_vcpu_count"]

#: The most vCPUs a machine may have (``--smp``): each is a host thread and,
#: under kvm-pvm, a guest whose ring-0 code is emulated; APIC ids then fit
#: in CPUID leaf 1 and in the 8-bit xAPIC destination field alike.
MAX_VCPUS = 64

#: The virtio devices a config can name, in the words of the CLI options.
VIRTIO_KINDS = ("rng", "blk", "console")


class ConfigError(ValueError):
    """A machine that cannot be built as asked (one line for a person)."""


def check_vcpu_count(count: int, host_max: int | None = None) -> None:
    """Refuse a vCPU count outside 1..:data:`MAX_VCPUS`, or above what the
    host's KVM allows (``KVM_CAP_MAX_VCPUS``, when given), in one line."""
    if not 1 <= count <= MAX_VCPUS:
        raise ConfigError(f"{count} vCPUs: a machine has 1 to {MAX_VCPUS}")
    if host_max is not None and host_max > 0 and count > host_max:
        raise ConfigError(f"{count} vCPUs: this host's KVM allows at most {host_max} "
                         "(KVM_CAP_MAX_VCPUS)")


class VirtioSpec(FrozenRecord):
    """One virtio-mmio device: ``rng``, ``blk`` (backed by ``path``,
    optionally read-only) or ``console``. Devices take board windows in the
    order they are listed (:func:`minikvm.core.board.virtio_window`).
    A frozen record (:mod:`minikvm.record`)."""

    __slots__ = ("kind", "path", "read_only")
    kind: str
    path: str | None
    read_only: bool

    def __init__(self, kind: str, path: str | None = None, read_only: bool = False) -> None:
        self._set(kind=kind, path=path, read_only=read_only)
        self._check()

    def _check(self) -> None:
        if self.kind not in VIRTIO_KINDS:
            raise ValueError(f"unknown virtio device {self.kind!r} (one of {', '.join(VIRTIO_KINDS)})")
        if self.kind == "blk" and not self.path:
            raise ValueError("a virtio-blk device needs a disk image path")


class MachineConfig(FrozenRecord):
    """A machine and the guest it boots.

    ``guest`` is a file: an ELF image is loaded by its program headers and
    started in the mode its class implies; anything else is a flat binary
    loaded at ``load_addr`` (default 0x1000) and started at ``entry`` in
    ``mode`` (default real); a file with a Multiboot header is loaded as a
    Multiboot kernel with ``initrd`` as its modules. ``irqchip`` adds KVM's
    in-kernel PIC, IOAPIC, LAPIC and PIT. ``vcpus`` vCPUs are created
    (vCPU 0 starts the guest; with the irqchip the others wait for
    INIT/SIPI). ``append`` is the kernel command line (``--append``):
    fw_cfg's CMDLINE items, and for a Multiboot kernel its command line
    after the file name; ``initrd`` the module files of a Multiboot kernel
    (``--initrd``), one module each. A frozen record (:mod:`minikvm.record`):
    ``config.replace(guest=...)`` is a changed copy.
    """

    __slots__ = ("guest", "mem_size", "vcpus", "irqchip", "kvm_path", "load_addr", "entry",
                 "mode", "virtio", "append", "initrd")
    guest: str | None
    mem_size: int
    vcpus: int
    irqchip: bool
    kvm_path: str
    load_addr: int | None
    entry: int | None
    mode: str | None
    virtio: tuple[VirtioSpec, ...]
    append: str | None
    initrd: tuple[str, ...]

    def __init__(self, guest: str | None = None, mem_size: int = DEFAULT_MEM_SIZE,
                 vcpus: int = 1, irqchip: bool = False, kvm_path: str = DEFAULT_KVM_PATH,
                 load_addr: int | None = None, entry: int | None = None,
                 mode: str | None = None, virtio: tuple[VirtioSpec, ...] = (),
                 append: str | None = None, initrd: tuple[str, ...] = ()) -> None:
        self._set(guest=guest, mem_size=mem_size, vcpus=vcpus, irqchip=irqchip,
                  kvm_path=kvm_path, load_addr=load_addr, entry=entry, mode=mode,
                  virtio=virtio, append=append, initrd=initrd)
        self._check()

    def _check(self) -> None:
        check_vcpu_count(self.vcpus)
        if self.mem_size <= 0 or self.mem_size % 4096:
            raise ValueError(f"memory size {self.mem_size:#x} is not a positive multiple of 4 KiB")
