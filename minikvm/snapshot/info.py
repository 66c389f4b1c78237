"""What a snapshot file holds, as lines of text (``minikvm snapshot info``).

Reading checks the whole file as :func:`~minikvm.snapshot.format.read_sections`
does, so ``info`` also tells whether a file would be accepted by ``resume``
(as far as the file goes: the host must still match).
"""

from __future__ import annotations

from collections import Counter

from minikvm.kvm.uapi import KvmMpState
from minikvm.snapshot.format import VERSION, read_sections
from minikvm.snapshot.machine_state import read_meta
from minikvm.snapshot.memory_image import PAGE_SIZE, RegionImage
from minikvm.snapshot.vcpu_state import VcpuState

__all__ = ["describe"]


def _size(n: int) -> str:
    for shift, unit in ((30, "GiB"), (20, "MiB"), (10, "KiB")):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n} bytes"


def _mode(state: VcpuState) -> str:
    from minikvm.x86.modes import cpu_mode_of

    try:
        return cpu_mode_of(state.sregs_struct()).value
    except (ValueError, AttributeError):
        return "unknown"


def _names(value: object) -> str:
    """A list of names from META's ``parts``, which only informs a person
    (nothing is restored from it): anything else shows as unreadable."""
    if not isinstance(value, list):
        return "(unreadable)" if value is not None else ""
    return ", ".join(f"{item:.80}" if isinstance(item, str) and item.isprintable()
                     else f"{item!r:.80}" for item in value[:256])


def describe(path: str) -> list[str]:
    """The lines ``minikvm snapshot info`` prints for ``path``."""
    sections = read_sections(path)
    meta = read_meta(sections)
    config = meta["config"]
    lines = [f"minikvm snapshot, format version {VERSION}",
             f"guest: {meta.get('guest') or '(not recorded)'}",
             f"saved after {meta['exit_count']} exits, on an {meta['vendor']} host",
             f"config: {_size(config['mem_size'])} RAM, {config['vcpus']} vCPU(s), irqchip "
             f"{'on' if config['irqchip'] else 'off'}"
             + "".join(f", virtio-{v.get('kind')} {v.get('path') or ''}".rstrip()
                       for v in config["virtio"])
             + (f", append {config['append']!r}" if config.get("append") else "")]
    parts = meta.get("parts") or {}
    if isinstance(parts, dict):
        lines.append("parts saved per vCPU: " + _names(parts.get("vcpu")))
        lines.append("VM parts: " + (_names(parts.get("vm")) or "none (no irqchip)"))
        lines.append("devices: " + _names(parts.get("devices")))
    for section in sections:
        if section.tag == b"VCPU":
            raw = {s.tag: s for s in sections if s.index == section.index
                   and s.tag in (b"XSAV", b"FPU ", b"LAPC")}
            state = VcpuState.from_sections(section, raw, meta["xsave_size"])
            mp = ("" if state.mp_state is None
                  else f", {KvmMpState(state.mp_state).name.removeprefix('KVM_MP_STATE_')}")
            lines.append(f"vCPU {state.index}: rip {state.rip:#x}, {_mode(state)} mode{mp}, "
                         f"{len(state.msrs)} MSRs")
    for section in sections:
        if section.tag == b"MEMR":
            image = RegionImage.from_section(section)
            lines.append(f"RAM region {image.slot} at {image.base:#x}: {_size(image.size)}, "
                         f"{image.pages} non-zero pages saved ({_size(image.pages * PAGE_SIZE)})")
    lines.append("sections:")
    totals: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    for section in sections:
        tag = section.tag.decode("ascii").strip()
        totals[tag] += len(section.payload)
        counts[tag] += 1
    for tag, total in totals.items():
        lines.append(f"  {tag:<5} x{counts[tag]:<3} {_size(total):>10}")
    return lines
