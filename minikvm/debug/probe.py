"""Find out, by trying, which debug features this host's KVM really has.

``KVM_CHECK_EXTENSION`` tells what KVM *claims*; it does not say whether an
``int3`` inside the guest really exits to the VMM, or whether a debug
register set to watch a write fires. On hardware KVM (VT-x, AMD-V) all of it
works. Under software nested virtualization such as kvm-pvm, where guest
ring-0 code is emulated, some of it does not: the emulator delivers ``int3``
to the guest's own handler and ignores data breakpoints. A debugger that
trusted the capability bits would wait forever for a stop that never comes.

So each feature is tried once per process: a throwaway VM with 64 KiB of RAM
runs a few real-mode instructions (hand-assembled below, with the bytes
spelled out) and we look at what exit comes back. Every byte of RAM that the
test does not use holds ``hlt`` (0xF4), so a guest that goes astray halts
instead of running off, and the core :class:`~minikvm.core.runner.Watchdog`
times each run out after a second in any case (every ``KVM_RUN`` goes through
a :class:`~minikvm.core.runner.VcpuRunner`, here as everywhere). The results
are cached per KVM device path.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from minikvm.core.runner import VcpuRunner, Watchdog
from minikvm.debug.breakpoints import (
    DR6_B,
    DR6_BS,
    DR7_FIXED,
    DR_RW_EXECUTE,
    DR_RW_READ_WRITE,
    DR_RW_WRITE,
    dr7_slot_bits,
)
from minikvm.kvm.errors import KvmError, KvmUnavailableError
from minikvm.kvm.exits import Debug, Hlt, VmExit
from minikvm.kvm.system import DEFAULT_KVM_PATH, Kvm
from minikvm.kvm.uapi import (
    KVM_GUESTDBG_BLOCKIRQ,
    KVM_GUESTDBG_ENABLE,
    KVM_GUESTDBG_SINGLESTEP,
    KVM_GUESTDBG_USE_HW_BP,
    KVM_GUESTDBG_USE_SW_BP,
    KvmCap,
)
from minikvm.memory import GuestMemory

__all__ = ["DebugSupport", "clear_probe_cache", "probe_debug_support", "probe_rows"]

_PROBE_RAM = 0x10000
_CODE = 0x1000          # where each probe's instructions start (CS=0, IP=0x1000)
_DATA = 0x2000          # the word the watchpoint probes touch
_HANDLER = 0x1100       # the guest's own #DB/#BP handler: out 0x99; hlt
_HANDLER_PORT = 0x99
_HLT = 0xF4
_NOP = 0x90
_TIME_OUT_AFTER = 1.0   # seconds for one probe run

# Real-mode machine code used by the probes (16-bit encodings, Intel SDM vol. 2).
_NOPS_HLT = bytes([_NOP, _NOP, _NOP, _HLT])                 # nop; nop; nop; hlt
_INT3_HLT = bytes([_NOP, 0xCC, _HLT])                        # nop; int3; hlt
_WRITE_WORD = bytes([0xC7, 0x06, 0x00, 0x20, 0x34, 0x12,     # mov word [0x2000], 0x1234
                     _HLT])
_READ_WORD = bytes([0xA1, 0x00, 0x20, _HLT])                 # mov ax, [0x2000]; hlt
_GUEST_HANDLER = bytes([0xE6, _HANDLER_PORT, _HLT])          # out 0x99, al; hlt


@dataclass(frozen=True)
class DebugSupport:
    """What guest debugging this KVM really offers (each field tried, not assumed).

    ``reasons`` explains each missing feature in a sentence.
    """

    single_step: bool = False
    #: Single-stepping ``hlt`` ends in a HLT exit (hardware KVM). Where it
    #: does not (kvm-pvm reports a #DB after ``hlt`` and the vCPU runs on),
    #: the debugger recognises a stepped ``hlt`` itself.
    step_reports_hlt: bool = False
    hw_breakpoints: bool = False
    sw_breakpoints: bool = False
    hw_write_watch: bool = False
    hw_rw_watch: bool = False
    block_irq: bool = False
    readonly_memory: bool = False
    reasons: dict[str, str] = field(default_factory=dict, compare=False)

    def without(self, *names: str) -> DebugSupport:
        """A copy with the named features turned off: how tests force a fallback."""
        reasons = dict(self.reasons)
        for name in names:
            reasons[name] = "turned off by the caller"
        return dataclasses.replace(self, reasons=reasons, **{name: False for name in names})

    def rows(self) -> list[tuple[str, str, str]]:
        """(what, value, meaning) rows for ``minikvm info``: what works, and
        for what does not, why and which fallback the debugger uses instead."""
        entries = [
            ("single-step", "single_step",
             "KVM_GUESTDBG_SINGLESTEP stops after every guest instruction",
             "no stepping: breakpoints and watchpoints need it or the debug registers"),
            ("single-step of hlt", "step_reports_hlt",
             "a stepped hlt exits as HLT", ""),
            ("hw breakpoints", "hw_breakpoints",
             "DR0-DR3 execute breakpoints exit to the debugger",
             "breakpoints use int3 or single-stepping"),
            ("int3 breakpoints", "sw_breakpoints",
             "KVM_GUESTDBG_USE_SW_BP: int3 exits to the debugger",
             "software breakpoints use a free DR slot, else single-step and compare RIP"),
            ("hw write watchpoints", "hw_write_watch",
             "a DR write breakpoint fires on a guest write",
             "write watchpoints single-step and compare the watched bytes"),
            ("hw read/write watchpoints", "hw_rw_watch",
             "a DR read/write breakpoint fires on a guest read",
             "read/write watchpoints single-step and decode each instruction's operands"),
            ("block IRQs while stepping", "block_irq",
             "KVM_GUESTDBG_BLOCKIRQ keeps a step out of interrupt handlers",
             "a step may enter an interrupt handler"),
            ("read-only memory slots", "readonly_memory",
             "KVM_MEM_READONLY: writes to such RAM become MMIO exits", "not used"),
        ]
        rows = []
        for label, name, works, fallback in entries:
            if getattr(self, name):
                rows.append((f"debug: {label}", "yes", works))
            else:
                why = self.reasons.get(name, "not offered by this KVM")
                instead = f". In use instead: {fallback}" if fallback else ""
                rows.append((f"debug: {label}", "no", why + instead))
        return rows


_cache: dict[str, DebugSupport] = {}
_cache_lock = threading.Lock()


def clear_probe_cache() -> None:
    with _cache_lock:
        _cache.clear()


def probe_debug_support(kvm_path: str = DEFAULT_KVM_PATH, kvm: Kvm | None = None,
                        refresh: bool = False) -> DebugSupport:
    """Try each debug feature once (cached per ``kvm_path``). Raises only
    when KVM itself cannot be opened (:class:`KvmUnavailableError`)."""
    with _cache_lock:
        if not refresh and kvm_path in _cache:
            return _cache[kvm_path]
    owned = kvm is None
    kvm = kvm if kvm is not None else Kvm(kvm_path)
    try:
        support = _probe_all(kvm)
    finally:
        if owned:
            kvm.close()
    with _cache_lock:
        _cache[kvm_path] = support
    return support


def probe_rows(kvm_path: str = DEFAULT_KVM_PATH) -> list[tuple[str, str, str]]:
    """Rows for ``minikvm info`` (see :mod:`minikvm.cli.info`)."""
    try:
        return probe_debug_support(kvm_path).rows()
    except (KvmError, KvmUnavailableError, OSError) as err:
        return [("debug features", "unknown", f"could not probe: {err}")]


# -- the probes -------------------------------------------------------------------------

class _ProbeVm:
    """A 64 KiB real-mode VM full of ``hlt``, with ``code`` at 0x1000."""

    def __init__(self, kvm: Kvm, code: bytes) -> None:
        from minikvm.x86 import layout
        self.vm = kvm.create_vm()
        try:
            # Intel VT-x without "unrestricted guest" needs both for real mode.
            self.vm.set_tss_addr(layout.KVM_TSS_ADDR)
            self.vm.set_identity_map_addr(layout.KVM_IDENTITY_MAP_ADDR)
            self.memory = GuestMemory.with_size(_PROBE_RAM)
            self.memory.fill(0, _PROBE_RAM, _HLT)
            self.memory.write(_CODE, code)
            self.memory.write(_HANDLER, _GUEST_HANDLER)
            self.memory.write_u16(_DATA, 0)
            for vector in (1, 3):   # real-mode IVT: offset, segment
                self.memory.write_u16(vector * 4, _HANDLER)
                self.memory.write_u16(vector * 4 + 2, 0)
            for region in self.memory.regions:
                self.vm.set_user_memory_region(region.slot, region.guest_phys_addr, region.size,
                                               region.host_address)
            self.vcpu = self.vm.create_vcpu(0)
            sregs = self.vcpu.get_sregs()
            for segment in (sregs.cs, sregs.ds, sregs.es, sregs.ss):
                segment.base = 0
                segment.selector = 0
            self.vcpu.set_sregs(sregs)
            regs = self.vcpu.get_regs()
            regs.rip, regs.rflags, regs.rsp = _CODE, 0x2, 0x8000
            self.vcpu.set_regs(regs)
            self.runner = VcpuRunner(self.vcpu)
        except BaseException:
            self.vm.close()
            raise

    def run(self) -> VmExit:
        """One ``KVM_RUN``, cut short (``Interrupted``) after a second."""
        with Watchdog([self.runner], _TIME_OUT_AFTER):
            return self.runner.run()

    def close(self) -> None:
        self.vm.close()


def _try(kvm: Kvm, code: bytes, control: int, debugreg: list[int] | None,
         check: Callable[[_ProbeVm], tuple[bool, str]]) -> tuple[bool, str]:
    try:
        probe = _ProbeVm(kvm, code)
    except (KvmError, OSError) as err:
        return False, f"could not create a probe VM: {err}"
    try:
        probe.runner.set_guest_debug((control, tuple(debugreg or (0,) * 8)))
        return check(probe)
    except KvmError as err:
        return False, f"KVM refused: {err}"
    finally:
        probe.close()


def _debugreg(slot_bits: int, address: int) -> list[int]:
    return [address, 0, 0, 0, 0, 0, 0, slot_bits | DR7_FIXED]


def _describe(exit: VmExit) -> str:
    if isinstance(exit, Hlt):
        return "the guest ran on to its hlt without a debug exit"
    if isinstance(exit, Debug):
        return f"a debug exit came with pc={exit.pc:#x} dr6={exit.dr6:#x}"
    return f"a {exit.reason_name} exit came instead of a debug exit"


def _probe_single_step(kvm: Kvm) -> tuple[tuple[bool, str], tuple[bool, str]]:
    """Step three nops and the hlt after them; returns (single-step, hlt)."""
    steps: list[tuple[bool, str]] = []

    def check(probe: _ProbeVm) -> tuple[bool, str]:
        for n in range(1, 4):
            exit = probe.run()
            if not (isinstance(exit, Debug) and exit.dr6 & DR6_BS and exit.pc == _CODE + n):
                return False, f"stepping a nop: {_describe(exit)}"
        exit = probe.run()
        if isinstance(exit, Hlt):
            steps.append((True, "a stepped hlt exits as HLT"))
        else:
            steps.append((False, "a stepped hlt is reported as a #DB after it and the vCPU "
                                 "does not halt; the debugger recognises hlt itself"))
        return True, "every instruction stops"

    stepping = _try(kvm, _NOPS_HLT, KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP, None, check)
    hlt = steps[0] if steps else (False, "single-stepping does not work")
    return stepping, hlt


def _expect_slot0(expected_pc: int, what: str) -> Callable[[_ProbeVm], tuple[bool, str]]:
    def check(probe: _ProbeVm) -> tuple[bool, str]:
        exit = probe.run()
        if isinstance(exit, Debug) and exit.dr6 & DR6_B[0] and exit.pc == expected_pc:
            return True, f"{what} fires"
        return False, f"{what} did not fire: {_describe(exit)}"
    return check


def _check_int3(probe: _ProbeVm) -> tuple[bool, str]:
    exit = probe.run()
    if isinstance(exit, Debug) and exit.exception == 3 and exit.pc == _CODE + 1:
        return True, "int3 exits to the debugger"
    if not isinstance(exit, Debug) and getattr(exit, "port", None) == _HANDLER_PORT:
        return False, ("int3 went to the guest's own #BP handler instead of exiting "
                       "(typical of emulated ring 0, as under PVM nested virtualization)")
    return False, f"int3 did not exit to the debugger: {_describe(exit)}"


def _probe_all(kvm: Kvm) -> DebugSupport:
    reasons: dict[str, str] = {}

    def note(name: str, outcome: tuple[bool, str]) -> bool:
        ok, why = outcome
        if not ok:
            reasons[name] = why
        return ok

    enable = KVM_GUESTDBG_ENABLE
    stepping, hlt = _probe_single_step(kvm)
    hw_bp = _try(kvm, _NOPS_HLT, enable | KVM_GUESTDBG_USE_HW_BP,
                 _debugreg(dr7_slot_bits(0, DR_RW_EXECUTE, 1), _CODE + 2),
                 _expect_slot0(_CODE + 2, "an execute breakpoint in DR0"))
    sw_bp = _try(kvm, _INT3_HLT, enable | KVM_GUESTDBG_USE_SW_BP, None, _check_int3)
    write_watch = _try(kvm, _WRITE_WORD, enable | KVM_GUESTDBG_USE_HW_BP,
                       _debugreg(dr7_slot_bits(0, DR_RW_WRITE, 2), _DATA),
                       _expect_slot0(_CODE + 6, "a write watchpoint in DR0"))
    rw_watch = _try(kvm, _READ_WORD, enable | KVM_GUESTDBG_USE_HW_BP,
                    _debugreg(dr7_slot_bits(0, DR_RW_READ_WRITE, 2), _DATA),
                    _expect_slot0(_CODE + 3, "a read/write watchpoint in DR0"))
    try:
        debug_flags = kvm.check_extension(KvmCap.KVM_CAP_SET_GUEST_DEBUG2)
        readonly = kvm.check_extension(KvmCap.KVM_CAP_READONLY_MEM) > 0
    except KvmError:
        debug_flags, readonly = 0, False
    block_irq = bool(debug_flags & KVM_GUESTDBG_BLOCKIRQ)
    if not block_irq:
        reasons["block_irq"] = ("KVM_CAP_SET_GUEST_DEBUG2 does not list BLOCKIRQ: an interrupt "
                                "may be taken during a step")
    if not readonly:
        reasons["readonly_memory"] = "KVM_CAP_READONLY_MEM is not offered"
    return DebugSupport(
        single_step=note("single_step", stepping),
        step_reports_hlt=note("step_reports_hlt", hlt),
        hw_breakpoints=note("hw_breakpoints", hw_bp),
        sw_breakpoints=note("sw_breakpoints", sw_bp),
        hw_write_watch=note("hw_write_watch", write_watch),
        hw_rw_watch=note("hw_rw_watch", rw_watch),
        block_irq=block_irq,
        readonly_memory=readonly,
        reasons=reasons,
    )
