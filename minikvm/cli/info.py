"""``minikvm info``: what this host's KVM offers, as a table.

The rows are plain data (:func:`info_rows`), so tests and other front ends
can use them without rich; only printing the table imports rich.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from minikvm.kvm.system import Kvm

__all__ = ["RELIED_ON", "add_arguments", "halt_detection", "info_rows", "print_info", "run"]

HELP = "what this host's KVM offers"

#: Capabilities minikvm uses, and for what.
RELIED_ON: tuple[tuple[str, str], ...] = (
    ("KVM_CAP_USER_MEMORY", "guest RAM from host memory (KVM_SET_USER_MEMORY_REGION)"),
    ("KVM_CAP_IMMEDIATE_EXIT", "stopping a running vCPU for pauses and timeouts"),
    ("KVM_CAP_SET_TSS_ADDR", "real mode on Intel VT-x"),
    ("KVM_CAP_IRQCHIP", "in-kernel PIC/IOAPIC/LAPIC for device interrupts"),
    ("KVM_CAP_PIT2", "in-kernel 8254 timer"),
    ("KVM_CAP_SET_GUEST_DEBUG", "single-stepping and breakpoints"),
    ("KVM_CAP_DEBUGREGS", "reading and writing DR0-DR7"),
    ("KVM_CAP_VCPU_EVENTS", "seeing pending exceptions and interrupts"),
    ("KVM_CAP_READONLY_MEM", "read-only memory slots (writes become MMIO exits)"),
    ("KVM_CAP_EXT_CPUID", "choosing the CPUID the guest sees"),
    ("KVM_CAP_NR_MEMSLOTS", "number of memory slots"),
    ("KVM_CAP_MAX_VCPUS", "largest number of vCPUs per VM"),
    ("KVM_CAP_BINARY_STATS_FD", "halt detection: a vCPU's 'blocking' statistic, read while it "
                                "runs, shows that it sleeps in hlt (see 'halt detection')"),
    ("KVM_CAP_SYNC_REGS", "registers at every exit in the run page: regs (1) and sregs (2) "
                          "are read there instead of KVM_GET_REGS/KVM_GET_SREGS; without it, "
                          "the ioctls"),
    # What a snapshot (minikvm run --snapshot) can save on this host: the
    # parts it finds missing are left out and listed by `snapshot info`.
    ("KVM_CAP_XSAVE", "snapshots: x87/SSE/AVX state (KVM_GET_XSAVE; without it KVM_GET_FPU)"),
    ("KVM_CAP_XSAVE2", "snapshots: the XSAVE area's size in bytes (KVM_GET_XSAVE2)"),
    ("KVM_CAP_XCRS", "snapshots: XCR0 (KVM_GET_XCRS)"),
    ("KVM_CAP_MP_STATE", "snapshots: running, halted or waiting for SIPI (KVM_GET_MP_STATE)"),
    ("KVM_CAP_PIT_STATE2", "snapshots: the in-kernel PIT (KVM_GET_PIT2)"),
    ("KVM_CAP_ADJUST_CLOCK", "snapshots: the VM's kvmclock (KVM_GET_CLOCK/KVM_SET_CLOCK)"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``info`` has no options of its own (``--kvm`` is the command's)."""


def info_rows(kvm: Kvm) -> list[tuple[str, str, str]]:
    """(name, value, what for) rows; pure data for tests and the TUI."""
    from minikvm.kvm.host import detect_host
    from minikvm.kvm.uapi import KvmCap

    host = detect_host()
    rows = [
        ("KVM device", kvm.path, ""),
        ("API version", str(kvm.api_version()), "must be 12"),
        ("vCPU mmap size", f"{kvm.vcpu_mmap_size()} bytes", "the kvm_run page and its data area"),
        ("host KVM", host.flavour, host.meaning),
    ]
    for name, why in RELIED_ON:
        cap = getattr(KvmCap, name, None)
        value = kvm.check_extension(cap) if cap is not None else 0
        shown = "no" if value <= 0 else ("yes" if value == 1 else f"yes ({value})")
        rows.append((name, shown, why))
    rows.append(("halt detection", halt_detection(kvm),
                 "how soon a guest's 'cli; hlt' ends a run when the irqchip is in the kernel"))
    return rows


def halt_detection(kvm: Kvm) -> str:
    """How the watchdog sees a vCPU asleep in ``hlt`` on this host: at its
    next wake-up through the vCPU's ``blocking`` statistic, or after a quiet spell
    (core/runner.py, ``Watchdog``). Asks a throwaway vCPU."""
    from minikvm.kvm.errors import KvmError

    try:
        with kvm.create_vm() as vm, vm.create_vcpu(0) as vcpu:
            found = vcpu.stats().reader("blocking") is not None
    except (KvmError, OSError, ValueError):
        found = False
    if found:
        return ("the check starts at the watchdog's first wake-up after the guest's last "
                "exit (usually within 1 ms): the vCPU's 'blocking' statistic "
                "(KVM_GET_STATS_FD); else as without it")
    return ("after 1-2 ms without exits (up to 50 ms after a long computation): "
            "no 'blocking' statistic here")


def print_info(kvm_path: str, console: Console | None = None) -> int:
    """Print the capability rows and the debugger's probe as one table."""
    from rich.console import Console
    from rich.table import Table

    from minikvm.debug.history import info_row
    from minikvm.debug.probe import probe_rows
    from minikvm.kvm.system import Kvm

    console = console or Console()
    with Kvm(kvm_path) as kvm:
        rows = info_rows(kvm)
    extra = probe_rows(kvm_path) + [info_row()]
    table = Table(title="minikvm info: this host's KVM", title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_column("meaning / used for", overflow="fold")
    for row in rows + extra:
        table.add_row(*row)
    console.print(table)
    return 0


def run(args: argparse.Namespace) -> int:
    return print_info(args.kvm)
