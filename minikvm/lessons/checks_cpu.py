"""The checks of the CPU exercises (03 to 07): ports, CR0, a GDT entry, a
page walk, the debug registers.

Each check builds or imports the learner's answer, puts it in front of the
real CPU through KVM, and compares what happened with what the task asked,
reading the machine's own state: the exits, KVM_GET_SREGS, KVM_TRANSLATE,
``KVM_EXIT_DEBUG``'s DR6. A check returns a :class:`Verdict`; anything the
learner's code does wrong is a sentence in it.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from minikvm.core.stop import StopKind
from minikvm.guestbuild import GUESTS_DIR, assemble
from minikvm.lessons import learner
from minikvm.lessons.learner import learner_function, run_flat, their_error
from minikvm.lessons.verdict import Verdict, not_yet, passed, printable, stop_words

__all__ = ["check_03", "check_04", "check_05", "check_06", "check_07"]


def check_03(path: Path, work: Path) -> Verdict:
    """Read port 0xE9, print the answer in hex, debug-exit with value 1."""
    run = run_flat(assemble(path, work, bits=16).flat)
    stop, output = run.stop, run.output
    reads = [e for e in run.events if e.reason == "IO_IN" and e.exit.port == 0xE9]
    lines = output.decode("latin-1").splitlines()
    last = lines[-1].strip().lower() if lines else ""
    printed = f"Your guest printed {printable(output)} and {stop_words(stop, run.timeout)}."
    if stop.crashed or stop.kind is StopKind.TIMEOUT:
        return not_yet(f"Your guest did not finish: {stop_words(stop, run.timeout)}.",
                       f"Before that, it printed {printable(output)}.")
    if not reads:
        return not_yet("Your guest never read port 0xE9: there was no KVM_EXIT_IO in the "
                       "'in' direction on that port. Use `in $0xe9, %al`.", printed)
    if last != "e9":
        return not_yet(f"Your guest read port 0xE9 and the debug console answered 0xe9, "
                       f"but the last line it printed is {last!r}, not 'e9'. Call "
                       "print_hex_al right after the `in`, while AL still holds the answer.",
                       printed)
    if stop.kind is not StopKind.DEBUG_EXIT:
        return not_yet("Your guest printed 'e9', but then it halted instead of writing to "
                       "the debug-exit port: `mov $1, %al` and `out %al, $0xf4` end the run "
                       "with status (1 << 1) | 1 = 3.", printed)
    if stop.status != 3:
        value = run.exit_value
        return not_yet(f"Your guest wrote {value:#x} to the debug-exit port, so the run "
                       f"ended with status ({value:#x} << 1) | 1 = {stop.status}; the task "
                       "asks for value 1 (status 3).", printed)
    return passed("Your guest asked the debug console for a byte (an IN exit on port 0xE9), "
                  "printed the answer, 'e9', and ended the run with status 3.")


def _bit_words(value: int, flags_type) -> str:
    from minikvm.x86.flags import flag_names
    return f"{value:#010x} ({flag_names(flags_type(value))})"


def check_04(path: Path, work: Path) -> Verdict:
    """Print the guest's own CR0; compared with KVM_GET_SREGS after the run."""
    from minikvm.x86.flags import Cr0

    run = run_flat(assemble(path, work, bits=16).flat)
    stop, output, cr0 = run.stop, run.output, run.cr0
    text = output.decode("latin-1")
    printed = f"Your guest printed {printable(output)} and {stop_words(stop, run.timeout)}."
    if stop.kind not in (StopKind.HALT, StopKind.DEBUG_EXIT):
        return not_yet(f"Your guest did not finish: {stop_words(stop, run.timeout)}.",
                       f"Before that, it printed {printable(output)}.")
    found = re.search(r"CR0=0x([0-9a-fA-F]+)", text)
    if found is None:
        return not_yet("Your guest did not print a line like 'CR0=0x00000010'.", printed)
    digits = found.group(1)
    shown = int(digits, 16)
    width_mask = (1 << (4 * len(digits))) - 1 if len(digits) < 8 else 0xFFFF_FFFF
    actual = cr0 & width_mask
    if shown != actual:
        wrong = shown ^ actual
        hints = []
        if wrong & Cr0.PE:
            hints.append("PE (bit 0) is clear in real mode: setting it is what enters "
                         "protected mode.")
        if actual and not shown:
            hints.append("0 is what EAX held before: the value must come from CR0 itself "
                         "(`mov %cr0, %eax`, or `smsw %ax` for the low 16 bits).")
        return not_yet(f"Your guest printed CR0=0x{digits}, but its CR0 is "
                       f"{_bit_words(cr0, Cr0)} (KVM_GET_SREGS after the run); the bits "
                       f"{wrong:#x} differ.", *hints, printed)
    width = "its low 16 bits, as smsw gives them" if len(digits) < 8 else "all 32 bits"
    return passed(f"Your guest printed CR0=0x{digits}: {width} of the CR0 that KVM reports, "
                  f"{_bit_words(cr0, Cr0)}. PE is clear: real mode.")


#: The exercise 05 guest (32-bit code, encodings from ``as --32``).
_GDT_GUEST = bytes([
    0x66, 0xB8, 0x20, 0x00,                         # 0x1000 mov ax, 0x20
    0x8E, 0xC0,                                     # 0x1004 mov es, ax
    0x26, 0xC7, 0x05, 0x00, 0x00, 0x00, 0x00,       # 0x1006 mov dword es:[0], 0x600dc0de
    0xDE, 0xC0, 0x0D, 0x60,
    0xF4,                                           # 0x1011 hlt
])
_GDT_LOAD_RIP, _GDT_WRITE_RIP = 0x1004, 0x1006
_GDT_MARKER = (0x600DC0DE).to_bytes(4, "little")
_GDT_BASE, _GDT_LIMIT = 0x10000, 0xFFFF


def _descriptor_problems(desc) -> list[str]:
    """What differs from the descriptor the task asks for, in words."""
    from minikvm.x86.flags import SegmentType

    problems = []
    if desc.base != _GDT_BASE:
        problems.append(f"its base is {desc.base:#x}, the task asks for {_GDT_BASE:#x} "
                        "(base 23:0 is bits 39:16, base 31:24 bits 63:56)")
    if desc.byte_limit != _GDT_LIMIT:
        problems.append(f"its limit is {desc.byte_limit:#x} bytes (limit field "
                        f"{desc.limit:#x}, G={desc.g}), the task asks for {_GDT_LIMIT:#x} "
                        "(limit 15:0 is bits 15:0, limit 19:16 bits 51:48, G bit 55)")
    if not desc.present:
        problems.append("P (bit 47) is 0: not present")
    if not desc.s:
        problems.append("S (bit 44) is 0: that makes it a system descriptor (TSS, LDT, "
                        "gate), not code or data")
    if desc.type & SegmentType.EXECUTABLE:
        problems.append(f"its type {desc.type:#x} has bit 3 set: a code segment, and code "
                        "is never writable (type 0x3 is data, read/write, accessed)")
    elif not desc.type & SegmentType.RW:
        problems.append(f"its type {desc.type:#x} has bit 1 clear: read-only data")
    if desc.dpl != 0:
        problems.append(f"its DPL (bits 46:45) is {desc.dpl}, the task asks for ring 0")
    if desc.db != 1 or desc.l:
        problems.append(f"D/B (bit 54) is {desc.db} and L (bit 53) {desc.l}: a 32-bit "
                        "segment has D/B=1, L=0")
    return problems


def check_05(path: Path, work: Path) -> Verdict:
    """data_descriptor(): base 0x10000, 64 KiB, writable, used by a real guest."""
    from minikvm.machine import Machine
    from minikvm.x86.gdt import SegmentDescriptor
    from minikvm.x86.layout import GDT_ADDR

    function, problem = learner_function(path, "data_descriptor")
    if problem is not None:
        return problem
    try:
        value = function()
    except Exception as err:  # noqa: BLE001
        return not_yet(f"data_descriptor() raised {their_error(err, path)}")
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 64:
        return not_yet(f"data_descriptor() returned {value!r}: it must be an int that fits "
                       "in 64 bits (a descriptor is 8 bytes)")
    desc = SegmentDescriptor.unpack(value)
    decoded = (f"Your descriptor {value:#018x} decodes as: {desc.describe()} "
               f"(D/B={desc.db}, L={desc.l}, S={desc.s}).")
    problems = _descriptor_problems(desc)
    timeout = learner.GUEST_TIMEOUT
    # A hand-made guest (bytes, not a file) and a GDT entry of the learner's:
    # built on a plain Machine rather than from a MachineConfig.
    with Machine() as machine:
        machine.load_flat(_GDT_GUEST, 0x1000, mode="protected")
        machine.memory.write(GDT_ADDR + 0x20, value.to_bytes(8, "little"))
        sregs = machine.vcpu.get_sregs()
        sregs.gdt.limit = 0x27          # five entries: the machine's four and yours
        machine.vcpu.set_sregs(sregs)
        stop = machine.run(timeout=timeout)
        es = machine.vcpu.get_sregs().es
        ram = bytearray(machine.memory.read(0, machine.memory.size))
        unclaimed = [a.address for a in machine.mmio.unclaimed if a.is_write]
    ram[0x1000:0x1000 + len(_GDT_GUEST)] = bytes(len(_GDT_GUEST))  # the marker in the code
    landed = ram.find(_GDT_MARKER)
    hints = [f"- {problem}." for problem in problems]
    if stop.kind is StopKind.SHUTDOWN:
        if stop.rip == _GDT_LOAD_RIP:
            return not_yet("The CPU refused to load selector 0x20 into ES (`mov %ax, %es` "
                           "faulted, and with no IDT the fault became a triple fault).",
                           decoded, *(hints or ["Loading a data segment needs P=1 and S=1."]))
        if stop.rip == _GDT_WRITE_RIP:
            return not_yet("ES was loaded, but the write through it faulted (#GP, then a "
                           "triple fault).", decoded,
                           *(hints or ["A write needs a writable data type and a limit of "
                                       "at least 3."]))
        return not_yet(f"The guest crashed: {stop.message}.", decoded, *hints)
    if stop.kind is not StopKind.HALT:
        return not_yet(f"The guest did not finish: {stop_words(stop, timeout)}.", decoded,
                       *hints)
    cached = f"After `mov %ax, %es`, KVM_GET_SREGS shows ES.base={es.base:#x}, " \
             f"ES.limit={es.limit:#x}: the CPU copied your descriptor into the hidden part."
    if landed != _GDT_BASE:
        where = (f"at physical {landed:#x}" if landed >= 0 else
                 f"outside RAM (an MMIO write nobody claimed, at "
                 f"{', '.join(hex(a) for a in unclaimed) or 'an unknown address'})")
        return not_yet(f"The guest's write landed {where}, not at {_GDT_BASE:#x}.",
                       decoded, cached, *hints)
    if problems:
        return not_yet(f"The write landed at {_GDT_BASE:#x}, but the descriptor is not the "
                       "one asked for.", decoded, *hints)
    return passed("The guest loaded selector 0x20, the CPU read your descriptor from the GDT, "
                  f"and the write through ES landed at {_GDT_BASE:#x}.", cached)


_ALIAS = 0x7F00_0000_0000
#: Addresses the walker is tried on, with long.c's own tables in CR3: its 2 MiB
#: identity page, its 4 KiB alias page, and holes at each level.
_WALK_ADDRESSES = (0x1000, 0x100ABC, 0x1FFFF8, 0x60008, _ALIAS, _ALIAS + 0xFF8, _ALIAS + 0x123,
                   0x200000, _ALIAS + 0x1000, _ALIAS + 0x200000, 0x4000_0000, 0x0000_7E00_0000_0000)


def _hex_or_none(value: int | None) -> str:
    return "not mapped" if value is None else f"{value:#x}"


def check_06(path: Path, work: Path) -> Verdict:
    """walk(memory, cr3, vaddr) against KVM_TRANSLATE, on long.c's own tables."""
    from minikvm.core.config import MachineConfig
    from minikvm.machine import Machine
    from minikvm.memory import GuestMemoryError
    from minikvm.x86.paging import walk_4level

    function, problem = learner_function(path, "walk")
    if problem is not None:
        return problem
    subprocess.run(["make", "-s", "-C", str(GUESTS_DIR), "build/long.elf"],
                   capture_output=True, timeout=300)
    config = MachineConfig(guest=str(GUESTS_DIR / "build" / "long.elf"))
    with Machine.from_config(config) as machine:
        machine.run(timeout=learner.GUEST_TIMEOUT)
        cr3 = machine.vcpu.get_sregs().cr3
        results = []
        for vaddr in _WALK_ADDRESSES:
            kvm = machine.vcpu.translate(vaddr)
            expected = kvm.physical_address if kvm.valid else None
            try:
                got = function(machine.memory, cr3, vaddr)
            except GuestMemoryError as err:
                return not_yet(f"walk(memory, {cr3:#x}, {vaddr:#x}) read outside guest RAM: "
                               f"{err}. An entry's bits 51:12 are the next table's address; "
                               "mask off the flag bits (ADDRESS_MASK).")
            except Exception as err:  # noqa: BLE001
                return not_yet(f"walk(memory, {cr3:#x}, {vaddr:#x}) raised "
                               f"{their_error(err, path)}")
            reference = walk_4level(machine.memory, cr3, vaddr, gbpages=False, maxphyaddr=36)
            results.append((vaddr, expected, got, reference))
    wrong = [r for r in results if r[1] != r[2]]
    if not wrong:
        return passed(f"All {len(results)} addresses agree with KVM_TRANSLATE, 2 MiB pages, "
                      "4 KiB pages and holes alike.",
                      *(f"  {vaddr:#x} -> {_hex_or_none(expected)}"
                     for vaddr, expected, _, _ in results))
    vaddr, expected, got, reference = wrong[0]
    message = (f"{len(results) - len(wrong)} of {len(results)} addresses agree with "
               f"KVM_TRANSLATE. The first that does not: {vaddr:#x}, which KVM translates "
               f"to {_hex_or_none(expected)} and your walk to {_hex_or_none(got)}.")
    details = ["The walk, level by level (minikvm.x86.paging.walk_4level):",
               *("  " + line for line in reference.describe().splitlines()[1:])]
    leaf = reference.levels[-1] if reference.levels else None
    if expected is not None and leaf is not None and leaf.large:
        if got is None:
            details.append(f"The {leaf.level} entry has PS (bit 7) set: it maps a "
                           f"{reference.page_size >> 20} MiB page itself. The walk ends there; "
                           "it does not point to another table.")
        elif (got ^ expected) & ~0x1FFFFF == 0:
            details.append("Right page, wrong offset: inside a 2 MiB page the offset is bits "
                           "20:0 of the address, not 11:0.")
    if expected is None and got is not None:
        details.append(f"KVM says the address is not mapped: {reference.fault_reason}.")
    return not_yet(message, *details)


def _dr7_words(dr7: int, debugreg: list[int]) -> list[str]:
    from minikvm.debug.breakpoints import decode_dr7

    words = []
    for slot in decode_dr7(dr7):
        if slot.enabled:
            words.append(f"slot {slot.slot}: enabled ({'G' if slot.global_ else 'L'}"
                         f"{slot.slot}), watches {slot.condition} of {slot.size} byte(s) at "
                         f"DR{slot.slot} = {debugreg[slot.slot]:#x}")
    return words or ["no slot is enabled: slot n needs its L (bit 2n) or G (bit 2n+1) bit"]


def check_07(path: Path, work: Path) -> Verdict:
    """debug_registers(address): an execute breakpoint that stops steps64 there."""
    from minikvm.core.config import MachineConfig
    from minikvm.core.events import dispatch_exit
    from minikvm.debug.breakpoints import DR6_B, decode_dr7
    from minikvm.kvm.exits import Debug, Hlt, Shutdown
    from minikvm.kvm.uapi import KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_USE_HW_BP
    from minikvm.machine import Machine

    function, problem = learner_function(path, "debug_registers")
    if problem is not None:
        return problem
    guest = assemble(GUESTS_DIR / "debug" / "steps64.S", work, bits=64)
    with Machine.from_config(MachineConfig(guest=str(guest.elf))) as machine:
        image = machine.image
        address = image.symbols.lookup("after_out").address
        data = image.symbols.lookup("data").address
        try:
            values = function(address)
        except Exception as err:  # noqa: BLE001
            return not_yet(f"debug_registers({address:#x}) raised {their_error(err, path)}")
        if (not isinstance(values, (list, tuple)) or len(values) != 8
                or not all(isinstance(v, int) and 0 <= v < 1 << 64 for v in values)):
            return not_yet(f"debug_registers() returned {values!r}: it must be eight integers, "
                           "DR0 to DR7")
        values = list(values)
        dr7 = values[7]
        words = _dr7_words(dr7, values)
        # The learner's DR0-DR7 go to KVM as they are: no Debugger between
        # them and the CPU. The exits are answered but nothing else is done.
        runner = machine.runner
        runner.set_guest_debug((KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW_BP, tuple(values)))
        stopped = None
        for _ in range(100):
            exit = runner.run()
            dispatch_exit(exit, machine.pio, machine.mmio)
            if isinstance(exit, (Debug, Hlt, Shutdown)):
                stopped = exit
                break
        written = machine.memory.read_u64(data)
    described = f"Your DR7 = {dr7:#x}: " + "; ".join(words) + "."
    execute_slots = [s for s in decode_dr7(dr7) if s.enabled and s.condition == "execute"]
    if isinstance(stopped, Debug) and stopped.pc == address:
        slots = [n for n in range(4) if stopped.dr6 & DR6_B[n]]
        long_ones = [s for s in execute_slots if s.size != 1]
        if long_ones:
            return not_yet(f"The guest stopped at {address:#x}, but slot "
                           f"{long_ones[0].slot} says length {long_ones[0].size}: an "
                           "instruction breakpoint must have LEN = 00 (SDM vol. 3B, 17.2.5; "
                           "other lengths are undefined behaviour).", described)
        return passed(f"The guest stopped with KVM_EXIT_DEBUG at {address:#x} (after_out), "
                      f"DR6 reporting slot {', '.join(map(str, slots)) or '?'}; data is still "
                      f"{written:#x}: the breakpoint fired before the instruction ran.", described)
    if isinstance(stopped, Debug):
        return not_yet(f"The guest stopped at {stopped.pc:#x}, not at after_out "
                       f"({address:#x}) (DR6 = {stopped.dr6:#x}).", described)
    if isinstance(stopped, Shutdown):
        return not_yet("The guest crashed (triple fault) instead of stopping.", described)
    hints = []
    if not any(slot.enabled for slot in decode_dr7(dr7)):
        hints.append("Nothing is switched on: set G0 (bit 1) or L0 (bit 0) to enable slot 0.")
    elif not execute_slots:
        hints.append("An instruction breakpoint needs R/W = 00 (\"break on instruction "
                     "execution\") and LEN = 00 in its slot's bits of DR7: R/W0 is bits "
                     "17:16, LEN0 bits 19:18.")
    elif all(values[s.slot] != address for s in execute_slots):
        hints.append(f"The enabled execute slot's address register does not hold "
                     f"{address:#x}.")
    elif any(s.size != 1 for s in execute_slots):
        hints.append("An instruction breakpoint must have LEN = 00; with another length "
                     "the CPU's behaviour is undefined (SDM vol. 3B, 17.2.5), and this one "
                     "did not stop.")
    return not_yet(f"The guest ran to its hlt without stopping at after_out ({address:#x}).",
                   described, *hints)


