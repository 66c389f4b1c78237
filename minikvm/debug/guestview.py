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
view the registers it already has after a step (:meth:`GuestView.stepped`),
so a single step costs one ``KVM_GET_REGS`` and nothing more.

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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from minikvm.debug.disasm import MAX_INSTRUCTION_LENGTH, Instruction, disassemble
from minikvm.debug.errors import DebuggerError
from minikvm.debug.inspect import RegisterSnapshot
from minikvm.kvm.uapi import kvm_regs, kvm_sregs
from minikvm.memory import GuestMemoryError
from minikvm.x86.modes import code_bitness
from minikvm.x86.paging import Translation, translate

if TYPE_CHECKING:
    from minikvm.machine import Machine

__all__ = ["GuestView", "LinearRead", "MAX_ACCESS", "MAX_LISTING", "PAGE_SIZE", "linear_rip"]

#: The unit of translation: a linear range is walked page by page.
PAGE_SIZE = 4096
#: Most bytes one read or write moves (a debugger shows pages, not RAM).
MAX_ACCESS = 16 << 20
#: Most instructions one disassemble() call lists on either side of its address.
MAX_LISTING = 256
#: "Not read yet": no runner count equals it.
_NEVER = -1


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


class GuestView:
    """Registers, memory, symbols and disassembly of one vCPU at a stop.

    ``vcpu`` is the index of the vCPU in ``machine`` (0 boots the guest).
    """

    def __init__(self, machine: Machine, vcpu: int = 0) -> None:
        self.machine = machine
        self.runner = machine.runners[vcpu]
        self.vcpu = self.runner.vcpu
        self.memory = machine.memory
        self._regs: kvm_regs | None = None
        self._sregs: kvm_sregs | None = None
        self._pc = 0
        # The runner's KVM_RUN count when each was read (see the module docstring).
        self._regs_at = _NEVER
        self._sregs_at = _NEVER
        self._pc_at = _NEVER

    # -- the registers of this stop ------------------------------------------------

    @property
    def current(self) -> bool:
        """Whether the cached registers still describe the vCPU (it has not
        run since they were read)."""
        return self._regs_at == self.runner.runs

    def invalidate(self) -> None:
        """Forget the registers: the next question reads them again. For
        whoever changed them behind the runner's back (``KVM_SET_REGS``)."""
        self._regs_at = self._sregs_at = self._pc_at = _NEVER

    def stepped(self, regs: kvm_regs, pc: int | None = None) -> None:
        """The vCPU just ran and ``regs`` were read after it: take them as
        this stop's, with ``pc`` (the linear RIP, when a debug exit told it).
        The segment registers are read again only if someone asks."""
        runs = self.runner.runs
        self._regs, self._regs_at = regs, runs
        if pc is not None:
            self._pc, self._pc_at = pc, runs

    def regs(self) -> kvm_regs:
        """``KVM_GET_REGS``, once per stop. The structure is the cache itself:
        whoever changes it must ``KVM_SET_REGS`` it and :meth:`invalidate`."""
        runs = self.runner.runs
        if self._regs_at != runs:
            self._regs = self.vcpu.get_regs()
            self._regs_at = runs
        return self._regs  # type: ignore[return-value]

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
        if self._regs_at == runs and self._pc_at == runs:
            return self._regs, self._pc  # type: ignore[return-value]
        return self.regs(), self.pc

    @property
    def rip(self) -> int:
        return self.regs().rip

    @property
    def pc(self) -> int:
        """The linear address of the next instruction (see :func:`linear_rip`)."""
        if self._pc_at != self.runner.runs:
            self._pc = linear_rip(self.regs(), self.sregs())
            self._pc_at = self.runner.runs
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
        return self._regs

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
        it, or (when a piece is outside RAM) nothing."""
        pieces = self._pieces(address, len(data), physical)
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
