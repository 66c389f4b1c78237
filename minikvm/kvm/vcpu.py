"""``Vcpu``: a virtual CPU file descriptor and its shared ``kvm_run`` page.

A vCPU is a thread of guest execution. The VMM calls ``KVM_RUN`` on it; the
kernel enters the guest and returns when the guest needs the VMM (an exit).
The kernel and the VMM talk through the ``kvm_run`` page, mapped from the
vCPU fd: the exit reason and its details come back there, and the VMM
leaves answers (data for an ``in``) and requests (``immediate_exit``) there.

Getting a running vCPU back -- to pause it, or because a guest loops forever
-- is done the way QEMU and kvmtool do it: set ``immediate_exit`` and send a
signal to the vCPU's thread. The signal makes a ``KVM_RUN`` in progress
return ``EINTR``; ``immediate_exit`` catches the race where the signal
arrives just before ``KVM_RUN`` starts.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import signal
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING

from minikvm.kvm import ioctls
from minikvm.kvm.errors import KvmError
from minikvm.kvm.exits import Interrupted, VmExit, decode_exit
from minikvm.kvm.uapi import (
    KVM_SYNC_X86_REGS,
    KVM_SYNC_X86_SREGS,
    KvmExit,
    kvm_run_s,
    kvm_sync_regs,
)
from minikvm.kvm.fd import KvmFd
from minikvm.kvm.stats import KvmStats
from minikvm.kvm.uapi import (
    kvm_debugregs,
    kvm_fpu,
    kvm_guest_debug,
    kvm_interrupt,
    kvm_lapic_state,
    kvm_mp_state,
    kvm_regs,
    kvm_run,
    kvm_sregs,
    kvm_translation,
    kvm_vcpu_events,
    kvm_xcrs,
    make_kvm_cpuid2,
    make_kvm_msrs,
    make_kvm_xsave,
)

if TYPE_CHECKING:
    from minikvm.kvm.vm import Vm

__all__ = ["KICK_SIGNAL", "SYNC_RIP_INDEX", "Vcpu", "install_kick_handler"]

_KVM_RUN = int(ioctls.KVM_RUN)
#: ``KVM_RUN`` goes through the standard library's ``fcntl.ioctl`` rather
#: than ctypes: with no argument (``KVM_RUN`` takes 0, which it passes) it is
#: one C call that converts two ints and releases the GIL around the
#: system call, and a failure comes back as ``OSError`` with its errno
#: (``EINTR`` is not retried, so a kick ends the run). ctypes prepares a
#: libffi call and saves errno on every call: a bare loop of ``KVM_RUN`` on
#: exits costs 3,500 user-space instructions per exit through ctypes and
#: 1,600 through fcntl (callgrind). (An integer argument would be tried as
#: a buffer first, twice, each failure an exception: leave it out.)
#: CPython's Modules/fcntlmodule.c has no EINTR retry loop for ioctl (PEP 475
#: retries fcntl, flock and lockf only), and the ``OSError`` is made by
#: ``PyErr_SetFromErrno`` (Python/errors.c), which on EINTR first runs the
#: pending Python signal handlers: on the main thread a handler runs *inside*
#: this call, and one that raises (``hostio.TerminationSignals``, Ctrl-C)
#: comes out of ``KVM_RUN`` in the OSError's place.
_run_ioctl = fcntl.ioctl

#: The signal used to get a vCPU thread out of ``KVM_RUN``.
KICK_SIGNAL = signal.SIGUSR1

_KVM_EXIT_INTR = int(KvmExit.KVM_EXIT_INTR)
#: ``kvm_run.exit_reason``, read straight from the page (no ctypes objects).
_EXIT_REASON = struct.Struct("<I")
_EXIT_REASON_OFFSET = kvm_run.exit_reason.offset
#: Where KVM_CAP_SYNC_REGS leaves the registers in the run page.
_SYNC_REGS_OFFSET = kvm_run.s.offset + kvm_run_s.regs.offset + kvm_sync_regs.regs.offset
_SYNC_SREGS_OFFSET = kvm_run.s.offset + kvm_run_s.regs.offset + kvm_sync_regs.sregs.offset
#: RIP in the synced registers, as an index into :attr:`Vcpu.qwords`: what
#: :meth:`Vcpu.get_rip` reads when :attr:`Vcpu.synced` (and the machine's
#: run loop, without the call). The registers are 8-byte aligned in the page.
SYNC_RIP_INDEX, _misaligned = divmod(_SYNC_REGS_OFFSET + kvm_regs.rip.offset, 8)
assert not _misaligned


def _ignore_kick(signum: int, frame: object) -> None:
    """The kick needs a handler (not SIG_IGN, not SIG_DFL) to interrupt KVM_RUN."""


def install_kick_handler() -> bool:
    """Install a no-op handler for :data:`KICK_SIGNAL` (main thread only).

    A signal whose action is 'ignore' is dropped before it can interrupt a
    system call, and the default action of SIGUSR1 kills the process, so the
    vCPU kick needs a real handler. Returns False when it could not be
    installed (called off the main thread with none in place).
    """
    current = signal.getsignal(KICK_SIGNAL)
    if current not in (signal.SIG_DFL, signal.SIG_IGN, None):
        return True
    if threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(KICK_SIGNAL, _ignore_kick)
    return True


class Vcpu(KvmFd):
    """One virtual CPU. Create it with :meth:`Vm.create_vcpu`."""

    def __init__(self, vm: Vm, fd: int, vcpu_id: int, mmap_size: int) -> None:
        super().__init__(fd)
        self.vm = vm
        self.id = vcpu_id
        self._page = mmap.mmap(fd, mmap_size, flags=mmap.MAP_SHARED,
                               prot=mmap.PROT_READ | mmap.PROT_WRITE)
        self._view = memoryview(self._page)
        #: The run page's mapping itself: a slice of it is ``bytes`` (one
        #: copy), where a slice of :attr:`page` is another memoryview.
        self.mapping = self._page
        #: The run page as native 64-bit words: ``qwords[SYNC_RIP_INDEX]`` is
        #: the synced RIP, one index with no call or tuple (host byte order,
        #: as KVM stores it).
        self.qwords = self._view.cast("Q")
        #: The shared ``kvm_run`` structure, a ctypes view of the mapping.
        self.run_page = kvm_run.from_buffer(self._page)
        #: The thread a :meth:`kick` signals while it runs this vCPU: set
        #: around each ``KVM_RUN`` by :meth:`run_reason`, by
        #: :meth:`hold_thread` for a loop, and by the debugger's stepper,
        #: which writes :meth:`run_reason` out (debug/stepper.py).
        self._thread_id: int | None = None
        self._kick_lock = threading.Lock()
        #: How many times :meth:`kick` was called (see :meth:`immediate`).
        self.kicks_sent = 0
        #: Register sets KVM copies into the run page at every exit
        #: (KVM_CAP_SYNC_REGS), and whether the copy there is current.
        self.sync_mask = 0
        #: Whether the run page holds the registers as they are now: set by
        #: whoever runs ``KVM_RUN`` (it stores them on every way out, EINTR
        #: included: kvm_arch_vcpu_ioctl_run, arch/x86/kvm/x86.c), cleared
        #: while it runs and by anything that sets registers.
        self.synced = False
        self._stats: KvmStats | None = None
        install_kick_handler()

    # -- running -----------------------------------------------------------

    def run(self) -> VmExit:
        """``KVM_RUN``: enter the guest until the next exit; return it typed.

        ``EINTR`` (a kick or another signal) is returned as
        :class:`Interrupted`, not raised, and clears ``immediate_exit``.
        """
        if self.run_reason() == _KVM_EXIT_INTR:
            return Interrupted()
        return self.decode()

    def run_reason(self) -> int:
        """``KVM_RUN`` without decoding: the raw ``exit_reason`` (and
        ``KVM_EXIT_INTR`` for ``EINTR``). The details stay in the run page
        (:attr:`page`) until the next run; :meth:`decode` types them.
        For a VMM's hot loop, which looks at a few bytes only."""
        previous = self._thread_id   # a run nested in a loop's exit handler (ACPI S3)
        self._thread_id = threading.get_ident()
        self.synced = False
        try:
            _run_ioctl(self.fd, _KVM_RUN)
        except OSError as err:
            # KVM stores the synced registers on every way out of KVM_RUN,
            # EINTR included (kvm_arch_vcpu_ioctl_run, arch/x86/kvm/x86.c).
            self.synced = self.sync_mask != 0
            return self.run_failed(err.errno)
        finally:
            self._thread_id = previous
        self.synced = self.sync_mask != 0
        return _EXIT_REASON.unpack_from(self._view, _EXIT_REASON_OFFSET)[0]

    # -- the pieces of run_reason, for a loop that runs exit after exit ------

    def entry(self) -> Callable[[], int]:
        """``KVM_RUN`` as a bare callable, for the loop that runs this
        vCPU exit after exit (:meth:`VcpuRunner.exits
        <minikvm.core.runner.VcpuRunner.exits>`) and the debugger's stepper,
        which runs it once per instruction: it returns 0, or raises
        ``OSError`` and then :meth:`run_failed` with its ``errno`` says what
        happened; it does nothing else. What :meth:`run_reason` does around
        the ioctl is left to that loop, which does the per-loop parts once
        (:meth:`hold_thread`) and the per-exit parts (:attr:`synced`, the
        page) itself. Per exit that saves ~1 µs of Python on kvm-pvm."""
        return partial(_run_ioctl, self.fd, _KVM_RUN)

    def hold_thread(self) -> int | None:
        """The calling thread runs this vCPU from now on until
        :meth:`release_thread`, between ioctls included: :meth:`kick` then
        signals it. A signal that lands outside ``KVM_RUN`` is harmless:
        ``immediate_exit``, set first, ends the next ``KVM_RUN`` at once (a
        completion run an exit handler makes meanwhile leaves it set for the
        loop: :meth:`immediate`), and the blocking calls a device makes meanwhile (``os.write``,
        ``time.sleep``, a lock) are retried by Python after ``EINTR``
        (PEP 475). Returns the holder before, for :meth:`release_thread`."""
        previous = self._thread_id
        self._thread_id = threading.get_ident()
        return previous

    def release_thread(self, previous: int | None) -> None:
        """End :meth:`hold_thread` (``previous``: what it returned)."""
        self._thread_id = previous

    def run_failed(self, code: int) -> int:
        """After ``KVM_RUN`` failed with errno ``code``: ``KVM_EXIT_INTR``
        for ``EINTR`` (a kick, another signal; ``immediate_exit`` is cleared
        for the next run), else :class:`KvmError` with the errno (``EAGAIN``
        included, which the runner retries)."""
        if code == errno.EINTR:
            self.run_page.immediate_exit = 0
            return _KVM_EXIT_INTR
        if code == errno.EFAULT:
            raise KvmError("KVM_RUN", code, "the guest touched memory KVM could not map")
        raise KvmError("KVM_RUN", code)

    def decode(self) -> VmExit:
        """The exit the last ``KVM_RUN`` left in the run page, typed."""
        return decode_exit(self.run_page, self._view)

    @property
    def page(self) -> memoryview:
        """The ``kvm_run`` page as bytes (answers to IN/MMIO reads go here)."""
        return self._view

    def kick(self) -> None:
        """Make the current (or next) :meth:`run` return :class:`Interrupted`.

        Safe to call from any thread; this is how a debugger pauses a
        free-running guest and how a timeout stops a runaway one.
        """
        with self._kick_lock:
            self.kicks_sent += 1
            self.run_page.immediate_exit = 1
            thread_id = self._thread_id
            if (thread_id is not None and thread_id != threading.get_ident()
                    and signal.getsignal(KICK_SIGNAL) not in (signal.SIG_DFL, signal.SIG_IGN, None)):
                try:
                    signal.pthread_kill(thread_id, KICK_SIGNAL)
                except (ProcessLookupError, OSError):
                    pass

    @contextmanager
    def immediate(self) -> Iterator[None]:
        """``immediate_exit`` set for the runs inside the ``with``: each
        completes the pending I/O or MMIO instruction and returns at once
        (what :meth:`VcpuRunner.finish
        <minikvm.core.runner.VcpuRunner.finish>` does). A :meth:`kick` that
        came before the ``with`` and was not yet seen by a run, or that comes
        during it, is not used up by these runs: ``immediate_exit`` stays set
        afterwards, so the next run returns at once and its ``Interrupted``
        carries the kick's request (a timeout, a pause) to whoever loops --
        an exit handler that completes an instruction itself (ACPI S3) must
        not swallow the run's timeout."""
        with self._kick_lock:
            pending = self.run_page.immediate_exit
            sent = self.kicks_sent
            self.run_page.immediate_exit = 1
        try:
            yield
        finally:
            with self._kick_lock:
                self.run_page.immediate_exit = 1 if pending or self.kicks_sent != sent else 0

    @property
    def immediate_exit(self) -> bool:
        return bool(self.run_page.immediate_exit)

    @immediate_exit.setter
    def immediate_exit(self, value: bool) -> None:
        self.run_page.immediate_exit = 1 if value else 0

    # -- registers -----------------------------------------------------------

    def sync_regs(self, mask: int) -> int:
        """Ask KVM to copy register sets into the run page at every exit
        (``KVM_CAP_SYNC_REGS``: ``kvm_run.kvm_valid_regs``, Documentation/
        virt/kvm/api.rst). ``mask`` is ``KVM_SYNC_X86_REGS`` and/or
        ``KVM_SYNC_X86_SREGS``; only those two are used here. Returns the
        mask in force. From then on :meth:`get_regs` and :meth:`get_sregs`
        read the copy instead of making an ioctl whenever it is current:
        after a ``KVM_RUN`` and before anyone set registers."""
        mask &= KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS
        self.run_page.kvm_valid_regs = mask
        self.sync_mask = mask
        self.synced = False
        return mask

    def get_regs(self) -> kvm_regs:
        """``KVM_GET_REGS``: general-purpose registers, RIP and RFLAGS.

        Served from the run page when KVM synced them there at the last exit
        (:meth:`sync_regs`): the same values, without a system call."""
        if self.synced and self.sync_mask & KVM_SYNC_X86_REGS:
            return kvm_regs.from_buffer_copy(self._view, _SYNC_REGS_OFFSET)
        regs = kvm_regs()
        self._ioctl(ioctls.KVM_GET_REGS, regs)
        return regs

    def get_rip(self) -> int:
        """RIP alone: eight bytes of the run page when synced, else ``KVM_GET_REGS``."""
        if self.synced and self.sync_mask & KVM_SYNC_X86_REGS:
            return self.qwords[SYNC_RIP_INDEX]
        return self.get_regs().rip

    def set_regs(self, regs: kvm_regs) -> None:
        """``KVM_SET_REGS``."""
        self.synced = False
        self._ioctl(ioctls.KVM_SET_REGS, regs)

    def get_sregs(self) -> kvm_sregs:
        """``KVM_GET_SREGS``: segment, descriptor-table and control registers,
        EFER (from the run page when synced, as :meth:`get_regs`)."""
        if self.synced and self.sync_mask & KVM_SYNC_X86_SREGS:
            return kvm_sregs.from_buffer_copy(self._view, _SYNC_SREGS_OFFSET)
        sregs = kvm_sregs()
        self._ioctl(ioctls.KVM_GET_SREGS, sregs)
        return sregs

    def set_sregs(self, sregs: kvm_sregs) -> None:
        """``KVM_SET_SREGS``."""
        self.synced = False
        self._ioctl(ioctls.KVM_SET_SREGS, sregs)

    def get_fpu(self) -> kvm_fpu:
        """``KVM_GET_FPU``: x87 and SSE state (FXSAVE layout)."""
        fpu = kvm_fpu()
        self._ioctl(ioctls.KVM_GET_FPU, fpu)
        return fpu

    def set_fpu(self, fpu: kvm_fpu) -> None:
        """``KVM_SET_FPU``."""
        self._ioctl(ioctls.KVM_SET_FPU, fpu)

    def get_msrs(self, indices: list[int]) -> dict[int, int]:
        """``KVM_GET_MSRS``: the values of the model-specific registers asked for."""
        msrs = make_kvm_msrs(len(indices))
        msrs.nmsrs = len(indices)
        for entry, index in zip(msrs.entries, indices):
            entry.index = index
        count = self._ioctl(ioctls.KVM_GET_MSRS, msrs)
        return {msrs.entries[i].index: msrs.entries[i].data for i in range(count)}

    def set_msrs(self, values: dict[int, int]) -> int:
        """``KVM_SET_MSRS``; returns how many were set."""
        self.synced = False   # may change what the synced copy shows
        msrs = make_kvm_msrs(len(values))
        msrs.nmsrs = len(values)
        for entry, (index, data) in zip(msrs.entries, values.items()):
            entry.index = index
            entry.data = data
        return self._ioctl(ioctls.KVM_SET_MSRS, msrs)

    def set_cpuid2(self, cpuid) -> None:
        """``KVM_SET_CPUID2``: what the guest's CPUID instruction returns."""
        self._ioctl(ioctls.KVM_SET_CPUID2, cpuid)

    def get_cpuid2(self, max_entries: int = 256):
        """``KVM_GET_CPUID2``: the CPUID table set on this vCPU."""
        cpuid = make_kvm_cpuid2(max_entries)
        cpuid.nent = max_entries
        self._ioctl(ioctls.KVM_GET_CPUID2, cpuid)
        return cpuid

    def get_debugregs(self) -> kvm_debugregs:
        """``KVM_GET_DEBUGREGS``: DR0-DR3, DR6, DR7."""
        debugregs = kvm_debugregs()
        self._ioctl(ioctls.KVM_GET_DEBUGREGS, debugregs)
        return debugregs

    def set_debugregs(self, debugregs: kvm_debugregs) -> None:
        """``KVM_SET_DEBUGREGS``."""
        self._ioctl(ioctls.KVM_SET_DEBUGREGS, debugregs)

    def get_vcpu_events(self) -> kvm_vcpu_events:
        """``KVM_GET_VCPU_EVENTS``: pending exceptions, interrupts, NMIs."""
        events = kvm_vcpu_events()
        self._ioctl(ioctls.KVM_GET_VCPU_EVENTS, events)
        return events

    def set_vcpu_events(self, events: kvm_vcpu_events) -> None:
        """``KVM_SET_VCPU_EVENTS``."""
        self._ioctl(ioctls.KVM_SET_VCPU_EVENTS, events)

    def get_lapic(self) -> kvm_lapic_state:
        """``KVM_GET_LAPIC``: the local APIC's 1 KiB register page."""
        lapic = kvm_lapic_state()
        self._ioctl(ioctls.KVM_GET_LAPIC, lapic)
        return lapic

    def set_lapic(self, lapic: kvm_lapic_state) -> None:
        """``KVM_SET_LAPIC``: load the local APIC's register page (its timer
        restarts from the current-count register: kvm_apic_set_state,
        arch/x86/kvm/lapic.c)."""
        self._ioctl(ioctls.KVM_SET_LAPIC, lapic)

    def set_mp_state(self, mp_state: int) -> None:
        """``KVM_SET_MP_STATE``: runnable, halted, waiting for INIT/SIPI..."""
        self._ioctl(ioctls.KVM_SET_MP_STATE, kvm_mp_state(mp_state=int(mp_state)))

    def get_xsave(self, size: int = 4096) -> bytes:
        """The XSAVE area, ``size`` bytes: ``KVM_GET_XSAVE2`` when ``size``
        comes from ``KVM_CAP_XSAVE2`` (it may exceed 4 KiB), else
        ``KVM_GET_XSAVE`` (exactly 4 KiB)."""
        if size < 4096 or size % 4:
            raise ValueError(f"an XSAVE area is a multiple of 4 bytes, at least 4096, not {size}")
        xsave = make_kvm_xsave((size - 4096) // 4)
        request = ioctls.KVM_GET_XSAVE if size == 4096 else ioctls.KVM_GET_XSAVE2
        self._ioctl(request, xsave)
        return bytes(xsave)

    def set_xsave(self, area: bytes) -> None:
        """``KVM_SET_XSAVE``: load an XSAVE area of the size KVM reported
        (``KVM_CAP_XSAVE2``); x87 and SSE state are part of it."""
        if len(area) < 4096 or len(area) % 4:
            raise ValueError(f"an XSAVE area is a multiple of 4 bytes, at least 4096, not {len(area)}")
        xsave = make_kvm_xsave((len(area) - 4096) // 4)
        ctypes.memmove(ctypes.addressof(xsave), area, len(area))
        self._ioctl(ioctls.KVM_SET_XSAVE, xsave)

    def get_xcrs(self) -> dict[int, int]:
        """``KVM_GET_XCRS``: the extended control registers (XCR0), by number."""
        xcrs = kvm_xcrs()
        self._ioctl(ioctls.KVM_GET_XCRS, xcrs)
        count = min(xcrs.nr_xcrs, len(xcrs.xcrs))
        return {xcrs.xcrs[i].xcr: xcrs.xcrs[i].value for i in range(count)}

    def set_xcrs(self, values: dict[int, int]) -> None:
        """``KVM_SET_XCRS``."""
        xcrs = kvm_xcrs()
        if len(values) > len(xcrs.xcrs):
            raise ValueError(f"{len(values)} XCRs: KVM takes at most {len(xcrs.xcrs)}")
        xcrs.nr_xcrs = len(values)
        for entry, (number, value) in zip(xcrs.xcrs, values.items()):
            entry.xcr = number
            entry.value = value
        self._ioctl(ioctls.KVM_SET_XCRS, xcrs)

    def get_mp_state(self) -> int:
        """``KVM_GET_MP_STATE``: runnable, halted, waiting for INIT/SIPI..."""
        state = kvm_mp_state()
        self._ioctl(ioctls.KVM_GET_MP_STATE, state)
        return state.mp_state

    def stats(self) -> KvmStats:
        """The vCPU's binary statistics (``KVM_GET_STATS_FD``:
        minikvm/kvm/stats.py), opened on first use (again if someone closed
        them) and closed with the vCPU. Once open they can be read from
        another thread while the vCPU is inside ``KVM_RUN``, which no ioctl
        here can do; but opening them *is* an ioctl on the vCPU fd, which
        waits for the vCPU's mutex like every other (``kvm_vcpu_ioctl``,
        virt/kvm/kvm_main.c): open them while the vCPU is not running (the
        runner does, when it is made). The fd holds a reference to the VM
        (``kvm_vcpu_ioctl_get_stats_fd``): a leaked one keeps the whole VM
        alive. Raises :class:`KvmError` where the kernel has none
        (``KVM_CAP_BINARY_STATS_FD``, Linux 5.14)."""
        stats = self._stats
        if stats is None or stats.fd < 0:
            stats = self._stats = KvmStats(self._ioctl(ioctls.KVM_GET_STATS_FD))
        return stats

    def interrupt(self, vector: int) -> None:
        """``KVM_INTERRUPT``: inject an external interrupt (no in-kernel irqchip only)."""
        self._ioctl(ioctls.KVM_INTERRUPT, kvm_interrupt(irq=vector))

    # -- debugging -----------------------------------------------------------

    def set_guest_debug(self, control: int, debugreg: list[int] | None = None) -> None:
        """``KVM_SET_GUEST_DEBUG``: single-step and breakpoints for the VMM.

        ``control`` is a mask of ``KVM_GUESTDBG_*``; ``debugreg`` gives the
        values of DR0-DR7 the VMM wants while debugging.
        """
        self.synced = False   # may change what the synced copy shows
        debug = kvm_guest_debug(control=control)
        if debugreg is not None:
            for i, value in enumerate(debugreg[:8]):
                debug.arch.debugreg[i] = value
        self._ioctl(ioctls.KVM_SET_GUEST_DEBUG, debug)

    def translate(self, linear_address: int) -> kvm_translation:
        """``KVM_TRANSLATE``: walk the guest's current page tables for an address."""
        translation = kvm_translation(linear_address=linear_address)
        self._ioctl(ioctls.KVM_TRANSLATE, translation)
        return translation

    def close(self) -> None:
        stats, self._stats = getattr(self, "_stats", None), None
        if stats is not None:
            stats.close()
        if self.fd >= 0:
            try:
                del self.run_page
                self.qwords.release()
                self._view.release()
                self._page.close()
            except (AttributeError, BufferError, ValueError):
                pass
        super().close()
