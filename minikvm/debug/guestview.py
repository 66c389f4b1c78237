"""The guest as a debugger sees it at a stop: registers, memory, symbols, code.

Every question a person asks at a stop -- what is in RAX, what bytes lie at
this virtual address, which function is this, what instruction comes next --
needs the vCPU's registers, and most need its segment and control
registers too (CR3 for the page walk, CS for the code's bitness). Asking
KVM each time (``KVM_GET_REGS``, ``KVM_GET_SREGS``) costs an ioctl per
question. :class:`GuestView` asks once per stop and serves every question
from that answer.

**When the cache is valid.** The registers can only change when the vCPU
runs, or when someone sets them. The view notes the runner's ``KVM_RUN``
count (:attr:`VcpuRunner.runs`) with what it read; when the count has moved
the vCPU ran since, and the next question reads again. The debugger calls
:meth:`GuestView.invalidate` after it sets registers itself, and hands the
view the registers it already has after a step (:meth:`GuestView.stepped`,
or :meth:`GuestView.stepped_values` with the 18 values unpacked from the run
page; the stepper's plain step only stores them in
:attr:`GuestView.last_step`, which the first question after it takes as the
stop's), so a single step costs at most one ``KVM_GET_REGS`` --
none when ``KVM_CAP_SYNC_REGS`` left the registers in the run page: a
``kvm_regs`` is then made only if someone asks :meth:`GuestView.regs`.

**Which thread may ask.** KVM serialises the ioctls of one vCPU with a
mutex held for the whole of ``KVM_RUN``: a ``KVM_GET_REGS`` from another
thread waits until the guest exits, which may be never. So while the guest
runs, only methods that issue no ioctl may be called from another thread:
:attr:`last_regs`, :attr:`last_sregs`, :meth:`read_linear` (which walks the
page tables of the last stop, in RAM that any thread may read),
:meth:`symbol_at` and :meth:`address_of`. Everything else belongs to the
thread that runs the vCPU, or to any thread while the guest is stopped.

**Addresses.** Memory is read by *linear* address (through the guest's own
page tables, walked in Python with the same CPUID paging features KVM uses:
1 GiB pages and MAXPHYADDR, :mod:`minikvm.x86.cpuid`) or by guest-physical
address. A linear read that crosses a page boundary is split, and each page
translated on its own: two neighbouring virtual pages may live in frames far
apart.

**A TLB for the stepper.** The stepper asks which byte each one-byte step
stepped over (was it ``hlt``?) -- with the in-kernel irqchip, where steps
may let interrupts into a ``hlt``, it asks before every step instead what
the instruction starts with (a ``hlt`` that may wait for its interrupt, an
``iret``) -- and a full page walk per step would cost more than the step.
:meth:`GuestView.current_byte` and :meth:`GuestView.cached_byte` answer from a
:class:`Tlb`: linear page -> guest-physical page, as the CPU's translation
lookaside buffer keeps them (SDM vol. 3A, 4.10). Its key is the translation
*context* -- CR3 and the bits of CR0, CR4 and EFER that choose the paging
mode -- with the linear page number, so when the guest loads another CR3 or
switches paging mode it simply misses, as a TLB tagged by address space
would; CR0-EFER come from the run page that ``KVM_CAP_SYNC_REGS`` fills at
every exit (no ioctl). Like a real TLB it does not notice the guest editing a
page-table entry in place: the CPU needs an ``invlpg`` or a CR3 write then,
which we do not see. So the debugger empties it at the start of every
``cont`` and ``step(count)`` and after it writes guest memory or segment
registers itself, and a stale answer can make the stepper miss a ``hlt`` or
an ``iret``, never invent one that lasts: when the cached frame holds 0xF4
it walks the tables afresh before it calls that a ``hlt``, and a stale 0xF4
or 0xCF read before a step only lets interrupts into that step or gives it
a watchdog.
:meth:`physical`, :meth:`translate` and the reads never use it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from minikvm.debug.disasm import MAX_INSTRUCTION_LENGTH, Instruction, disassemble
from minikvm.debug.errors import DebuggerError
from minikvm.debug.inspect import RegisterSnapshot, regs_from_values, values_of
from minikvm.kvm.uapi import (
    KVM_SYNC_X86_REGS,
    KVM_SYNC_X86_SREGS,
    kvm_regs,
    kvm_run,
    kvm_run_s,
    kvm_sregs,
    kvm_sync_regs,
)
from minikvm.memory import GuestMemoryError
from minikvm.x86.flags import Cr0, Cr4, Efer
from minikvm.x86.modes import code_bitness
from minikvm.x86.paging import Translation, translate

if TYPE_CHECKING:
    from minikvm.machine import Machine

__all__ = ["GuestView", "LinearRead", "MAX_ACCESS", "MAX_LISTING", "PAGE_SIZE", "Tlb",
           "linear_rip"]

#: The unit of translation: a linear range is walked page by page.
PAGE_SIZE = 4096
#: Most bytes one read or write moves (a debugger shows pages, not RAM).
MAX_ACCESS = 16 << 20
#: Most instructions one disassemble() call lists on either side of its address.
MAX_LISTING = 256
#: "Not read yet": no runner count equals it.
_NEVER = -1
_PAGE_SHIFT = 12
_OFFSET_MASK = PAGE_SIZE - 1

#: The bits that decide how a linear address is translated (SDM vol. 3A,
#: 4.1.1): CR0.PG (paging at all), CR4.PSE/PAE/LA57 and EFER.LMA (which
#: paging mode, which page sizes), EFER.NXE (whether bit 63 of an entry is
#: NX or reserved). The rest (CR0.WP, SMEP ...) decide permissions only.
_CR0_PAGING = int(Cr0.PG)
_CR4_PAGING = int(Cr4.PSE | Cr4.PAE | Cr4.LA57)
_EFER_PAGING = int(Efer.LMA | Efer.NXE)


def _paging_mode(cr0: int, cr4: int, efer: int) -> int:
    """The bits of CR0, CR4 and EFER that choose the paging mode, packed
    into one int: with CR3, the context a :class:`Tlb` key names."""
    return (cr0 & _CR0_PAGING) | (cr4 & _CR4_PAGING) | (efer & _EFER_PAGING) << 32


def _control_struct() -> tuple[struct.Struct, int]:
    """CR0, CR3, CR4 and EFER as KVM_CAP_SYNC_REGS leaves them in the run
    page: one ``unpack_from`` at the returned offset (the kernel keeps them
    near each other in ``struct kvm_sregs``; the gaps are CR2 and CR8)."""
    names = ("cr0", "cr3", "cr4", "efer")
    offsets = [getattr(kvm_sregs, name).offset for name in names]
    fmt, at = "<", offsets[0]
    for offset in offsets:
        fmt += f"{offset - at}xQ" if offset > at else "Q"
        at = offset + 8
    base = kvm_run.s.offset + kvm_run_s.regs.offset + kvm_sync_regs.sregs.offset
    return struct.Struct(fmt), base + offsets[0]


_SYNCED_CONTROL, _SYNCED_CONTROL_OFFSET = _control_struct()
#: The run page's bytes from CR0 to EFER (CR2 and CR8 among them): the key
#: :attr:`Tlb.last` keeps its translation under. One slice of the mapping
#: (bytes, one ``memcmp`` to compare) costs less than unpacking the four
#: registers, whose values are mostly too large for CPython's cached small
#: ints (callgrind: ~800 instructions against ~2,000). A change of CR2 or
#: CR8 only sends the look-up the long way.
_SYNCED_CONTROL_SPAN = slice(_SYNCED_CONTROL_OFFSET, _SYNCED_CONTROL_OFFSET + _SYNCED_CONTROL.size)


def linear_rip(regs: kvm_regs, sregs: kvm_sregs) -> int:
    """The linear address of the next instruction: CS.base + RIP.

    In 64-bit code the CS base is ignored (SDM vol. 3A, 3.4.4); in 16- and
    32-bit code RIP is truncated to IP or EIP first, and the sum wraps at
    4 GiB.
    """
    bits = code_bitness(sregs, regs.rflags)
    if bits == 64:
        return regs.rip
    mask = 0xFFFF if bits == 16 else 0xFFFF_FFFF
    return (sregs.cs.base + (regs.rip & mask)) & 0xFFFF_FFFF


@dataclass(frozen=True)
class LinearRead:
    """What :meth:`GuestView.read_linear` found: the bytes it could read
    (from the start, up to the first page it could not), the guest-physical
    address of the first byte, and why it stopped short (``""`` when it did
    not)."""

    data: bytes
    physical: int | None
    error: str = ""


class Tlb:
    """Linear page -> guest-physical page, per translation context: a
    software TLB (see the module docstring for when it is emptied).

    Keys are ``(cr3, mode, linear page number)``; ``mode`` packs the paging
    bits of CR0, CR4 and EFER. It holds at most ``capacity`` entries and
    starts afresh when full (a real TLB evicts one; for a debugger stepping
    through a few pages of code this is as good and simpler). ``hits`` and
    ``misses`` count lookups, for the tests and anyone curious.
    """

    __slots__ = ("capacity", "entries", "hits", "misses", "last")

    def __init__(self, capacity: int = 256) -> None:
        self.capacity = capacity
        #: (cr3, mode, linear page number) -> (frame, RAM mapping, offset of
        #: the frame in that mapping): the byte read needs no region search.
        self.entries: dict[tuple[int, int, int], tuple] = {}
        #: The last translation :meth:`GuestView.current_byte` used, as
        #: (the run page's bytes from CR0 to EFER, linear page number, RAM
        #: mapping, base): the byte at linear address ``a`` of that page is
        #: ``mapping[base + a]``. A stepper stays on one page of code for
        #: many steps, and comparing 48 bytes is cheaper than building the
        #: key and looking it up.
        self.last: tuple | None = None
        self.hits = 0
        self.misses = 0

    def flush(self) -> None:
        """Forget every translation."""
        self.entries.clear()
        self.last = None

    def fill(self, key: tuple[int, int, int], entry: tuple) -> None:
        if len(self.entries) >= self.capacity:
            self.flush()
        self.entries[key] = entry

    def __len__(self) -> int:
        return len(self.entries)


class GuestView:
    """Registers, memory, symbols and disassembly of one vCPU at a stop.

    ``vcpu`` is the index of the vCPU in ``machine`` (0 boots the guest).
    """

    def __init__(self, machine: Machine, vcpu: int = 0) -> None:
        self.machine = machine
        self.runner = machine.runners[vcpu]
        self.vcpu = self.runner.vcpu
        self._run_page = self.vcpu.page
        self._run_mapping = self.vcpu.mapping
        self.memory = machine.memory
        self._regs: kvm_regs | None = None
        #: The same registers as 18 values (``inspect.values_of``), when the
        #: stepper handed them over that way or someone asked for them.
        #: While both are set they describe the same moment.
        self._values: tuple[int, ...] | None = None
        self._sregs: kvm_sregs | None = None
        self._pc = 0
        # The runner's KVM_RUN count when each was read (see the module docstring).
        self._regs_at = _NEVER
        self._sregs_at = _NEVER
        self._pc_at = _NEVER
        #: ``(runs, values, pc)`` of the plain step that made this stop
        #: (:meth:`stepped_values` with a pc), or None; it describes the stop
        #: while ``runs`` is the runner's count. The stepper's plain step
        #: sets only this (one store instead of five): the questions below
        #: take it as this stop's registers when they find it current
        #: (:meth:`_adopt`), and the next step starts from it with no call
        #: to :meth:`values_and_pc`. One tuple, replaced whole.
        self.last_step: tuple[int, tuple[int, ...], int] | None = None
        #: Translations for :meth:`current_byte` and :meth:`cached_byte`
        #: (see the module docstring).
        self.tlb = Tlb()

    # -- the registers of this stop ------------------------------------------------

    @property
    def current(self) -> bool:
        """Whether the cached registers still describe the vCPU (it has not
        run since they were read); a plain step's :attr:`last_step` that
        describes it is taken as the cache here (:meth:`_adopt`)."""
        runs = self.runner.runs
        return self._regs_at == runs or self._adopt(runs)

    def _adopt(self, runs: int) -> bool:
        """If the last plain step made the stop of ``runs``, take its
        registers and pc as this stop's (what :meth:`stepped_values` does,
        left to the first question after the step) and say so."""
        last = self.last_step
        if last is None or last[0] != runs:
            return False
        self._regs = None   # first: another thread's last_regs never pairs old and new
        self._values = last[1]
        self._pc = last[2]
        self._regs_at = self._pc_at = runs
        return True

    def invalidate(self) -> None:
        """Forget the registers: the next question reads them again. For
        whoever changed them behind the runner's back (``KVM_SET_REGS``,
        ``KVM_SET_SREGS``). The TLB is emptied too."""
        self._regs_at = self._sregs_at = self._pc_at = _NEVER
        self.last_step = None
        self.tlb.flush()

    def stepped(self, regs: kvm_regs, pc: int | None = None) -> None:
        """The vCPU just ran and ``regs`` were read after it: take them as
        this stop's, with ``pc`` (the linear RIP, when a debug exit told it).
        The segment registers are read again only if someone asks."""
        runs = self.runner.runs
        self.last_step = None
        self._values = None
        self._regs, self._regs_at = regs, runs
        if pc is not None:
            self._pc, self._pc_at = pc, runs

    def stepped_values(self, values: tuple[int, ...], pc: int | None = None) -> None:
        """:meth:`stepped` with the registers as 18 values (the stepper's
        fast path reads them so from the run page): no ``kvm_regs`` is made
        unless someone asks :meth:`regs`."""
        runs = self.runner.runs
        self._regs = None   # first: another thread's last_regs never pairs old and new
        self._values, self._regs_at = values, runs
        if pc is not None:
            self._pc, self._pc_at = pc, runs
            self.last_step = (runs, values, pc)
        else:
            self.last_step = None

    def regs(self) -> kvm_regs:
        """``KVM_GET_REGS``, once per stop. The structure is the cache itself:
        whoever changes it must ``KVM_SET_REGS`` it and :meth:`invalidate`."""
        runs = self.runner.runs
        if self._regs_at != runs and not self._adopt(runs):
            self._regs = self.vcpu.get_regs()
            self._values = None
            self._regs_at = runs
        elif self._regs is None:
            self._regs = self._materialize(self._values)  # type: ignore[arg-type]
        return self._regs  # type: ignore[return-value]

    def _materialize(self, values: tuple[int, ...]) -> kvm_regs:
        """The ``kvm_regs`` of this stop, from values read after the last run:
        the run page's synced copy when it is still current (the same
        values: the vCPU has not run since), else built from the values."""
        vcpu = self.vcpu
        if vcpu.synced and vcpu.sync_mask & KVM_SYNC_X86_REGS:
            return vcpu.get_regs()
        return regs_from_values(values)

    def values(self) -> tuple[int, ...]:
        """:meth:`regs` as the 18 values of ``kvm_regs`` (in its order)."""
        runs = self.runner.runs
        if self._regs_at == runs or self._adopt(runs):
            values = self._values
            if values is None:
                values = self._values = values_of(self._regs)
            return values
        regs = self.regs()
        values = self._values = values_of(regs)
        return values

    def values_and_pc(self) -> tuple[tuple[int, ...], int]:
        """:meth:`values` and :attr:`pc` in one call: the stepper's hot loop
        asks for both before every instruction."""
        runs = self.runner.runs
        last = self.last_step
        if last is not None and last[0] == runs:
            return last[1], last[2]
        if self._regs_at == runs and self._pc_at == runs:
            values = self._values
            if values is not None:
                return values, self._pc
        return self.values(), self.pc

    def regs_of(self, values: tuple[int, ...]) -> kvm_regs:
        """A ``kvm_regs`` holding ``values``: :meth:`regs` itself when they
        are this stop's (the same tuple), so that a step record and the
        view hand out one structure, else a fresh one."""
        if self.current and values is self._values:
            return self.regs()
        return regs_from_values(values)

    def sregs(self) -> kvm_sregs:
        """``KVM_GET_SREGS`` (segments, descriptor tables, CR0-CR4, EFER), once per stop."""
        runs = self.runner.runs
        if self._sregs_at != runs:
            self._sregs = self.vcpu.get_sregs()
            self._sregs_at = runs
        return self._sregs  # type: ignore[return-value]

    def regs_and_pc(self) -> tuple[kvm_regs, int]:
        """:meth:`regs` and :attr:`pc` in one call: the stepper's hot loop
        asks for both before every instruction."""
        runs = self.runner.runs
        if self._regs_at == runs and self._pc_at == runs and self._regs is not None:
            return self._regs, self._pc
        return self.regs(), self.pc

    @property
    def rip(self) -> int:
        return self.regs().rip

    @property
    def pc(self) -> int:
        """The linear address of the next instruction (see :func:`linear_rip`)."""
        runs = self.runner.runs
        if self._pc_at != runs and not self._adopt(runs):
            self._pc = linear_rip(self.regs(), self.sregs())
            self._pc_at = runs
        return self._pc

    def bitness(self) -> int:
        """16, 32 or 64: how the CPU decodes the code at RIP now."""
        return code_bitness(self.sregs(), self.regs().rflags)

    def registers(self, with_sregs: bool = True) -> RegisterSnapshot:
        """An immutable snapshot of the general registers, RIP, RFLAGS and (by
        default) segment selectors, CR0-CR4 and EFER."""
        return RegisterSnapshot.capture(self.regs(), self.sregs() if with_sregs else None)

    @property
    def last_regs(self) -> kvm_regs | None:
        """The registers as last read, however old; no ioctl (any thread)."""
        last = self.last_step
        if last is not None and last[0] > self._regs_at:
            return regs_from_values(last[1])   # a plain step's, not yet adopted
        regs = self._regs
        if regs is None:
            values = self._values
            if values is not None:
                return regs_from_values(values)
        return regs

    @property
    def last_sregs(self) -> kvm_sregs | None:
        """The segment and control registers as last read; no ioctl (any thread)."""
        return self._sregs

    # -- memory ----------------------------------------------------------------------

    def _walk(self, sregs: kvm_sregs, address: int) -> Translation:
        paging = self.machine.paging
        return translate(self.memory, sregs, address, gbpages=paging.gbpages,
                         maxphyaddr=paging.maxphyaddr)

    def translate(self, address: int) -> Translation:
        """Walk the guest's page tables for linear ``address`` the way this
        vCPU would (:func:`minikvm.x86.paging.translate`), every level reported."""
        return self._walk(self.sregs(), address)

    def physical(self, address: int) -> int | None:
        """The guest-physical address of linear ``address``; None when unmapped."""
        result = self._walk(self.sregs(), address)
        return result.physical if result.valid else None

    def paging_context(self) -> tuple[int, int]:
        """``(cr3, mode)``: what decides the translation of every linear
        address now. ``mode`` packs CR0.PG, CR4.PSE/PAE/LA57 and
        EFER.LMA/NXE into one int. Read from the run page when KVM synced
        the segment registers there at the last exit (no ioctl, no copy)."""
        vcpu = self.vcpu
        if (self._sregs_at != self.runner.runs and vcpu.synced
                and vcpu.sync_mask & KVM_SYNC_X86_SREGS):
            cr0, cr3, cr4, efer = _SYNCED_CONTROL.unpack_from(self._run_page,
                                                              _SYNCED_CONTROL_OFFSET)
        else:
            sregs = self.sregs()
            cr0, cr3, cr4, efer = sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer
        return cr3, _paging_mode(cr0, cr4, efer)

    def cached_byte(self, address: int) -> int | None:
        """The byte at linear ``address``, translated through the
        :class:`Tlb`: a dictionary look-up when this page was translated
        before in the same context, a page walk (remembered) when not.
        None when the address is unmapped or outside RAM (never remembered).

        What :meth:`current_byte` falls back to when the run page does not
        show this stop's control registers. The answer may be stale where
        the guest edited its page tables in place (see the module
        docstring)."""
        cr3, mode = self.paging_context()
        return self._tlb_byte((cr3, mode, address >> _PAGE_SHIFT), address)

    def current_byte(self, address: int) -> int | None:
        """The byte at linear ``address`` at this stop, through the
        :class:`Tlb`: the stepper's look at the instruction it steps, before
        the run where steps may let interrupts in, else after a one-byte
        step (debug/stepper.py), so the common case costs one slice and one
        comparison. While the run page holds this stop's control registers
        (KVM synced them at the last exit and nobody set them since:
        :attr:`Vcpu.synced`), the translation used last (:attr:`Tlb.last`)
        answers for an address on its page if the run page's bytes from CR0
        to EFER are those it was made for, and the TLB's entry (or a walk)
        replaces it when not. Without them, :meth:`cached_byte`."""
        vcpu = self.vcpu
        if not (vcpu.synced and vcpu.sync_mask & KVM_SYNC_X86_SREGS):
            return self.cached_byte(address)
        control = self._run_mapping[_SYNCED_CONTROL_SPAN]
        page = address >> _PAGE_SHIFT
        tlb = self.tlb
        last = tlb.last
        if last is not None and last[1] == page and last[0] == control:
            tlb.hits += 1
        else:
            cr0, cr3, cr4, efer = _SYNCED_CONTROL.unpack(control)
            entry = self._tlb_entry((cr3, _paging_mode(cr0, cr4, efer), page), address)
            if entry is None:
                return None
            last = tlb.last = (control, page, entry[1], entry[2] - (page << _PAGE_SHIFT))
        try:
            return last[2][last[3] + address]
        except (IndexError, ValueError):   # the RAM was closed meanwhile
            return None

    def _tlb_byte(self, key: tuple[int, int, int], address: int) -> int | None:
        entry = self._tlb_entry(key, address)
        if entry is None:
            return None
        try:
            return entry[1][entry[2] + (address & _OFFSET_MASK)]
        except (IndexError, ValueError):   # the RAM was closed meanwhile
            return None

    def _tlb_entry(self, key: tuple[int, int, int], address: int) -> tuple | None:
        """The TLB's entry for ``key`` (a walk for ``address``'s page when
        there is none), counted as a hit or a miss; None when unmapped."""
        tlb = self.tlb
        entry = tlb.entries.get(key)
        if entry is None:
            tlb.misses += 1
            return self._tlb_fill(key, address & ~_OFFSET_MASK)
        tlb.hits += 1
        return entry

    def _tlb_fill(self, key: tuple[int, int, int], page: int) -> tuple | None:
        """Walk the tables for linear ``page`` and remember the frame with
        where its bytes are on the host: (frame, RAM mapping, offset in it)."""
        try:
            result = self._walk(self.sregs(), page)
        except (GuestMemoryError, ValueError):
            return None
        if not result.valid:
            return None
        frame = result.physical
        region = self.memory.region_at(frame)
        if region is None or frame + PAGE_SIZE > region.end:
            return None
        entry = (frame, region.mapping, frame - region.guest_phys_addr)
        self.tlb.fill(key, entry)
        return entry

    def _pieces(self, address: int, size: int, physical: bool) -> list[tuple[int, int]]:
        """(guest-physical address, length) for each page of the range."""
        if not 0 <= size <= MAX_ACCESS:
            raise DebuggerError(f"size {size} is outside 0..{MAX_ACCESS}")
        if physical:
            return [(address, size)]
        sregs = self.sregs()
        pieces = []
        done = 0
        while done < size:
            linear = address + done
            chunk = min(size - done, PAGE_SIZE - linear % PAGE_SIZE)
            result = self._walk(sregs, linear)
            if not result.valid:
                raise DebuggerError(f"linear address {linear:#x} is not mapped")
            pieces.append((result.physical, chunk))
            done += chunk
        return pieces

    def read(self, address: int, size: int, physical: bool = False) -> bytes:
        """``size`` bytes at a linear address (through the page tables) or at
        a guest-physical one. Raises DebuggerError outside RAM or the mapping."""
        try:
            return b"".join(self.memory.read(phys, length)
                            for phys, length in self._pieces(address, size, physical))
        except GuestMemoryError as err:
            raise DebuggerError(str(err)) from None

    def write(self, address: int, data: bytes, physical: bool = False) -> None:
        """Write guest memory at a linear or guest-physical address: all of
        it, or (when a piece is outside RAM) nothing. Empties the TLB (the
        bytes may be page-table entries)."""
        pieces = self._pieces(address, len(data), physical)
        self.tlb.flush()
        for phys, length in pieces:
            if not self.memory.contains(phys, length):
                raise DebuggerError(f"{phys:#x}+{length:#x} is outside guest RAM")
        offset = 0
        for phys, length in pieces:
            self.memory.write(phys, data[offset:offset + length])
            offset += length

    def read_code(self, address: int, size: int) -> bytes:
        """As many of ``size`` bytes at linear ``address`` as are mapped (code
        near the end of a mapping is still shown)."""
        result = bytearray()
        while len(result) < size:
            linear = address + len(result)
            chunk = min(size - len(result), PAGE_SIZE - linear % PAGE_SIZE)
            try:
                result += self.read(linear, chunk)
            except DebuggerError:
                break
        return bytes(result)

    def read_linear(self, address: int, size: int) -> LinearRead:
        """``size`` bytes at linear ``address``, translated with the segment and
        control registers *of the last stop*, without a single ioctl.

        This is for drawing a frame while the guest runs (see the module
        docstring): the RAM is live, the page tables are walked as the guest
        keeps them now, but CR3 and the paging mode are those last read. It
        never raises: whatever the guest wrote into its page tables, the
        answer says how far it got and why it stopped.
        """
        sregs = self._sregs
        if sregs is None:
            return LinearRead(b"", None, "no registers were read yet")
        data = bytearray()
        first = None
        while len(data) < size:
            linear = address + len(data)
            chunk = min(size - len(data), PAGE_SIZE - linear % PAGE_SIZE)
            try:
                result = self._walk(sregs, linear)
            except (GuestMemoryError, ValueError) as err:
                return LinearRead(bytes(data), first, f"linear {linear:#x}: {err}")
            if not result.valid:
                return LinearRead(bytes(data), first, f"linear {linear:#x} is not mapped")
            phys = result.physical
            if not self.memory.contains(phys, chunk):
                return LinearRead(bytes(data), first, f"linear {linear:#x} -> physical "
                                                      f"{phys:#x} is outside guest RAM")
            if first is None:
                first = phys
            data += self.memory.read(phys, chunk)
        return LinearRead(bytes(data), first)

    # -- symbols -----------------------------------------------------------------------

    def symbol_at(self, address: int) -> str:
        """``name+0xoff`` from the loaded image's symbol table, or ``""``."""
        image = self.machine.image
        if image is None:
            return ""
        return image.symbol_at(address) or ""

    def address_of(self, symbol: str) -> int:
        """The address of a symbol of the loaded image."""
        image = self.machine.image
        found = image.symbols.lookup(symbol) if image is not None else None
        if found is None:
            raise DebuggerError(f"no symbol {symbol!r} in the loaded image")
        return found.address

    def describe(self, address: int) -> str:
        """`` <name+0xoff>`` after an address in a message, or ``""``."""
        name = self.symbol_at(address)
        return f" <{name}>" if name else ""

    # -- disassembly -------------------------------------------------------------------

    def disassemble(self, address: int | None = None, count: int = 8,
                    before: int = 0) -> list[Instruction]:
        """``count`` instructions from linear ``address`` (default: the next
        one), decoded in the current CPU mode, with symbols; ``before`` adds
        that many instructions ahead of it.

        x86 cannot be decoded backwards reliably; for ``before`` we try start
        points further and further back and keep the first whose decoding
        falls exactly on ``address`` -- a heuristic, as in every debugger.
        """
        if not 0 < count <= MAX_LISTING or not 0 <= before <= MAX_LISTING:
            raise DebuggerError(f"count and before must be within 1..{MAX_LISTING}")
        start = self.pc if address is None else address
        bits = self.bitness()
        forward = disassemble(self.read_code(start, count * MAX_INSTRUCTION_LENGTH), start,
                              bits, count, self.symbol_at)
        if before == 0:
            return forward
        reach = min(before * MAX_INSTRUCTION_LENGTH, start)
        window = self.read_code(start - reach, reach)
        if len(window) != reach:
            return forward   # the bytes before are not all mapped
        for back in range(reach, 0, -1):
            decoded = disassemble(window[reach - back:], start - back, bits, None, self.symbol_at)
            if decoded and decoded[-1].next_address == start and len(decoded) >= before:
                return decoded[-before:] + forward
        return forward
