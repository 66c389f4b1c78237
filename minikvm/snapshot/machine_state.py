"""Save a whole :class:`~minikvm.machine.Machine` to a file, and build one back.

Saving (:func:`save_machine`) a stopped machine:

1. every vCPU completes the instruction it exited on: after an ``in`` the
   value we answered is stored only by the next ``KVM_RUN``, so each
   runner makes one with ``immediate_exit`` set (:meth:`VcpuRunner.finish
   <minikvm.core.runner.VcpuRunner.finish>`; QEMU does the same before a
   migration, kvm_cpu_synchronize_state);
2. each vCPU's state (:mod:`.vcpu_state`), the in-kernel chips
   (:mod:`.vm_state`), every device model's ``save()`` and the host input
   not yet delivered, the non-zero pages of RAM (:mod:`.memory_image`),
   and the configuration that rebuilds the same board;
3. one file (:mod:`.format`), written atomically.

Loading (:func:`load_machine`) reads and checks the *whole* file first,
builds a fresh machine from the saved configuration (no guest loaded),
checks every section against it, and only then restores: devices first
(their ``restore()`` drives each interrupt line to its saved level), RAM,
then the chips -- overwriting whatever those line changes did to them --
and last the vCPUs. Any problem -- ours, or a value KVM's ``KVM_SET_*`` refuses -- closes
the fresh machine and raises one :class:`SnapshotError`: nothing
half-restored ever runs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from minikvm.core.board import ram_regions
from minikvm.core.config import ConfigError, MachineConfig, VirtioSpec
from minikvm.kvm.errors import KvmError
from minikvm.snapshot.format import (
    JsonFields,
    Section,
    SnapshotError,
    json_payload,
    parse_json,
    read_sections,
    write_sections,
)
from minikvm.snapshot.memory_image import RegionImage, capture_region
from minikvm.snapshot.vcpu_state import VcpuState, capture_vcpu, probe_parts, restore_vcpu
from minikvm.snapshot.vm_state import VmState, capture_vm, restore_vm

if TYPE_CHECKING:
    from minikvm.machine import Machine

__all__ = ["Saved", "config_of", "cpu_vendor", "load_machine", "read_meta", "save_machine"]


@dataclass(frozen=True)
class Saved:
    """What :func:`save_machine` wrote: the file's size and what is in it."""

    path: str
    size: int
    exit_count: int
    memory_pages: int
    seconds: float


def cpu_vendor(cpuid: Any) -> str:
    """The vendor string of CPUID leaf 0 (``GenuineIntel``, ``AuthenticAMD``):
    XSAVE layouts, MSRs and CPUID differ between vendors, so a snapshot is
    only loaded on a host of the vendor it was made on."""
    for entry in cpuid.entries[:cpuid.nent]:
        if entry.function == 0:
            return b"".join(v.to_bytes(4, "little")
                            for v in (entry.ebx, entry.edx, entry.ecx)).decode("ascii", "replace")
    return "unknown"


def _config_doc(machine: Machine, config: MachineConfig) -> dict[str, Any]:
    virtio = []
    for spec in config.virtio:
        item: dict[str, Any] = {"kind": spec.kind, "path": spec.path, "read_only": spec.read_only}
        if spec.path is not None:
            item["size"] = os.path.getsize(spec.path)
        virtio.append(item)
    return {"mem_size": machine.memory.size, "vcpus": len(machine.vcpus),
            "irqchip": machine.irqchip, "append": config.append, "virtio": virtio}


def save_machine(machine: Machine, path: str, config: MachineConfig) -> Saved:
    """Write the stopped ``machine`` (built from ``config``) to ``path``."""
    from minikvm.devices.state import save_devices

    started = time.perf_counter()
    for runner in machine.runners:
        if runner.runs:
            runner.finish()
    parts = probe_parts(machine.kvm, machine.vm, machine.irqchip)
    msr_indices = machine.kvm.msr_index_list()
    sections: list[Section] = []
    for index, vcpu in enumerate(machine.vcpus):
        sections += capture_vcpu(vcpu, index, parts, msr_indices).sections()
    vm_parts = []
    if machine.irqchip:
        sections += capture_vm(machine.vm).sections()
        vm_parts = ["irqchip (PIC master, PIC slave, IOAPIC)", "pit2", "kvmclock"]
    devices = {"devices": save_devices((machine.pio, machine.mmio)),
               "host_input": machine.serial_input.save()}
    sections.append(Section(b"DEVS", 0, json_payload(devices)))
    pages = 0
    for region in machine.memory.regions:
        image = capture_region(region.slot, region.guest_phys_addr, region.mapping,
                               region.host_address)
        pages += image.pages
        sections.append(image.section())
    meta = {
        "guest": config.guest, "config": _config_doc(machine, config),
        "exit_count": machine.exit_count, "vendor": cpu_vendor(machine.cpuid),
        "xsave_size": parts.xsave_size, "memory_pages": pages,
        "parts": {"vcpu": parts.names(), "vm": vm_parts,
                  "devices": sorted(devices["devices"])},
    }
    size = write_sections(path, [Section(b"META", 0, json_payload(meta)), *sections])
    return Saved(path, size, machine.exit_count, pages, time.perf_counter() - started)


# -- loading ---------------------------------------------------------------------------

def _single_json(sections: list[Section], tag: bytes) -> JsonFields:
    """The JSON section ``tag``, which a snapshot holds exactly once, named by its tag."""
    found = [s for s in sections if s.tag == tag]
    name = tag.decode("ascii").strip()
    if len(found) != 1:
        raise SnapshotError(f"the snapshot has no {name} section (or several)")
    return JsonFields(parse_json(found[0]), name)


def read_meta(sections: list[Section]) -> dict[str, Any]:
    """The META section, checked for what everything else relies on."""
    meta = _single_json(sections, b"META")
    config = meta.mapping("config")
    config.integer("mem_size", 4096, 1 << 46)
    config.integer("vcpus", 1, 64)
    config.boolean("irqchip")
    config.text("append", optional=True)
    for item in config.entries("virtio", 16):
        virtio = JsonFields(item, "META.config.virtio[]")
        virtio.text("kind")
        virtio.text("path", optional=True)
    meta.integer("exit_count")
    meta.integer("xsave_size", 0, 1 << 20)
    meta.text("vendor")
    meta.text("guest", optional=True)
    return meta.value


def _virtio_specs(doc: dict[str, Any], disks: Sequence[str]) -> tuple[VirtioSpec, ...]:
    """The saved virtio devices; the blk images from ``disks`` where given
    (in order), each of the size the snapshot was made with."""
    specs = []
    disks = list(disks)
    blk_count = sum(1 for item in doc["virtio"] if item.get("kind") == "blk")
    if len(disks) > blk_count:
        raise SnapshotError(f"{len(disks)} disk images given; the snapshot has {blk_count} "
                            "virtio-blk devices")
    for item in doc["virtio"]:
        kind = item.get("kind")
        path = item.get("path")
        if kind == "blk":
            path = disks.pop(0) if disks else path
            size = JsonFields(item, "META.config.virtio[]").integer("size")
            try:
                actual = os.path.getsize(path)
            except (OSError, TypeError) as err:
                raise SnapshotError(f"disk image {path}: {getattr(err, 'strerror', err)}") from None
            if actual != size:
                raise SnapshotError(f"disk image {path} is {actual} bytes; the snapshot's was "
                                    f"{size}: it is not the same disk")
        try:
            specs.append(VirtioSpec(kind, path, bool(item.get("read_only"))))
        except ValueError as err:
            raise SnapshotError(f"META.config.virtio: {err}") from None
    return tuple(specs)


def config_of(meta: dict[str, Any], kvm_path: str, disks: Sequence[str] = ()) -> MachineConfig:
    """The :class:`MachineConfig` that builds the saved board (no guest)."""
    doc = meta["config"]
    try:
        return MachineConfig(guest=None, mem_size=doc["mem_size"], vcpus=doc["vcpus"],
                             irqchip=doc["irqchip"], kvm_path=kvm_path,
                             virtio=_virtio_specs(doc, disks), append=doc.get("append"))
    except (ConfigError, ValueError) as err:
        raise SnapshotError(f"META.config: {err}") from None


def load_machine(path: str, *, kvm_path: str = "/dev/kvm", disks: Sequence[str] = (),
                 output: Callable[[bytes], None] | None = None
                 ) -> tuple[Machine, MachineConfig]:
    """A machine in the state saved at ``path``, and the configuration it
    was built from (with the saved guest's name: :func:`save_machine` of
    the resumed machine saves it again). Raises :class:`SnapshotError` for
    any file or state it refuses."""
    from minikvm.machine import Machine

    sections = read_sections(path)
    meta = read_meta(sections)
    config = config_of(meta, kvm_path, disks)
    images = memory_images(sections, config.mem_size)
    try:
        machine = Machine.from_config(config, output=output)
    except (OSError, MemoryError) as err:
        # A few bytes of file can claim a terabyte of RAM (zero pages are not
        # stored): the host refusing to map it is the file's problem too.
        why = getattr(err, "strerror", None) or type(err).__name__
        if getattr(err, "filename", None):
            why = f"{err.filename}: {why}"   # a disk image
        raise SnapshotError(f"the snapshot's machine cannot be built here: {config.mem_size} "
                            f"bytes of RAM, {config.vcpus} vCPUs ({why})") from None
    try:
        _restore(machine, sections, meta, images)
    except KvmError as err:
        # The file passed every check we know how to make, yet KVM refused a
        # value in it (a CR4 bit this CPU lacks, an event KVM cannot inject):
        # still a bad file, not a broken KVM.
        machine.close()
        raise SnapshotError(f"KVM refused the snapshot's state: {err}") from None
    except BaseException:
        machine.close()
        raise
    return machine, config.replace(guest=meta.get("guest"))


def _restore(machine: Machine, sections: list[Section], meta: dict[str, Any],
             images: dict[int, RegionImage]) -> None:
    from minikvm.devices.state import DeviceStateError, restore_devices

    vendor = cpu_vendor(machine.cpuid)
    if meta["vendor"] != vendor:
        raise SnapshotError(f"the snapshot was made on an {meta['vendor']} CPU; this host's "
                            f"is {vendor}")
    parts = probe_parts(machine.kvm, machine.vm, machine.irqchip)
    if meta["xsave_size"] != parts.xsave_size:
        raise SnapshotError(f"the snapshot's XSAVE area is {meta['xsave_size']} bytes; this "
                            f"KVM's is {parts.xsave_size}")
    # Check everything before restoring anything.
    by_vcpu: dict[int, dict[bytes, Section]] = {}
    for section in sections:
        if section.tag in (b"VCPU", b"XSAV", b"FPU ", b"LAPC"):
            if section.tag in by_vcpu.setdefault(section.index, {}):
                raise SnapshotError(f"section {section.name} appears twice")
            by_vcpu[section.index][section.tag] = section
    if sorted(by_vcpu) != list(range(len(machine.vcpus))):
        raise SnapshotError(f"the snapshot's vCPU sections ({sorted(by_vcpu)[:8]}) do not "
                            f"match its {len(machine.vcpus)} vCPUs")
    vcpus = []
    for index in range(len(machine.vcpus)):
        raw = by_vcpu[index]
        if b"VCPU" not in raw:
            raise SnapshotError(f"vCPU {index} has no VCPU section")
        vcpus.append(VcpuState.from_sections(raw[b"VCPU"], raw, parts.xsave_size))
    if machine.irqchip and any(v.lapic is None for v in vcpus):
        raise SnapshotError("the machine has the irqchip but a vCPU's LAPIC is missing")
    vm_state = VmState.from_sections(sections)
    if (vm_state is not None) != machine.irqchip:
        raise SnapshotError("the irqchip state does not match the saved configuration")
    doc = _single_json(sections, b"DEVS")
    device_states = doc.mapping("devices").value
    # Restore: devices (validated whole by restore_devices before it changes any).
    try:
        machine.serial_input.check_state(doc.value.get("host_input"))
        restore_devices((machine.pio, machine.mmio), device_states)
        machine.serial_input.restore(doc.value.get("host_input"))
    except (DeviceStateError, ValueError, TypeError) as err:
        raise SnapshotError(f"device state: {err}") from None
    for region in machine.memory.regions:
        images[region.slot].restore(region.mapping)
    if vm_state is not None:
        restore_vm(machine.vm, vm_state)
    for vcpu, state in zip(machine.vcpus, vcpus):
        restore_vcpu(vcpu, state)
    machine.exit_count = meta["exit_count"]


def memory_images(sections: list[Section], mem_size: int) -> dict[int, RegionImage]:
    """The RAM images by slot, checked against the regions the board makes
    of ``mem_size`` bytes -- before any machine (and its RAM) is built, so a
    doctored size cannot make us map memory for nothing."""
    images: dict[int, RegionImage] = {}
    for section in sections:
        if section.tag == b"MEMR":
            if section.index in images:
                raise SnapshotError(f"section {section.name} appears twice")
            images[section.index] = RegionImage.from_section(section)
    expected = [(slot, base, size) for slot, (base, size) in enumerate(ram_regions(mem_size))]
    found = sorted((i.slot, i.base, i.size) for i in images.values())
    if found != expected:
        raise SnapshotError(f"the snapshot's memory regions {found[:4]} are not the board's "
                            f"{expected} for {mem_size} bytes of RAM")
    return images
