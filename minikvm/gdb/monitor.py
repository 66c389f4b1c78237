"""``monitor`` commands: what gdb cannot see, said by the VMM.

gdb passes ``monitor TEXT`` to the stub untouched, hex-encoded in a
``qRcmd`` packet, and prints whatever comes back (GDB manual, "Remote
Protocol", "General Query Packets": ``qRcmd``). gdb knows the guest as a
program: registers, memory, symbols. The VMM knows the machine under it,
and these commands show it:

* ``monitor exits [N]`` -- the last VM exits, each explained (what the guest
  touched, which device answered): the stop gdb shows was preceded by them;
* ``monitor cpu`` -- the CPU mode and the control registers with their bits
  named (CR0, CR4, EFER), the code segment;
* ``monitor translate ADDR`` -- the page walk for a virtual address, level
  by level, as the vCPU would do it;
* ``monitor breakpoints`` -- how each of gdb's breakpoints and watchpoints is
  really caught on this KVM (an ``int3``, a debug register, single-stepping),
  and the debug registers the last run was given;
* ``monitor support`` -- what this KVM's guest debugging really offers;
* ``monitor record on [N] | off | status`` -- record every instruction of
  the current thread, so gdb's ``reverse-stepi`` and ``reverse-continue``
  (the ``bs``/``bc`` packets) can go back over them (docs/reverse.md).
"""

from __future__ import annotations

import collections
import shlex
from collections.abc import Callable

from minikvm.core.events import ExitEvent
from minikvm.debug.breakpoints import decode_dr7
from minikvm.debug.debugger import DebuggerError
from minikvm.debug.history import DEFAULT_MAX_ENTRIES
from minikvm.debug.inspect import describe_control_registers, describe_rflags, describe_segment
from minikvm.x86.modes import cpu_mode_of

__all__ = ["COMMANDS", "ExitLog", "run_monitor"]

#: Exits ``monitor exits`` can show.
EXIT_LOG_SIZE = 64


class ExitLog:
    """A machine listener keeping the last exits as lines of text.

    Listeners run on the vCPU threads under the machine lock; a bounded deque
    takes one line per exit, so the log costs the same however long the
    guest runs.
    """

    def __init__(self, capacity: int = EXIT_LOG_SIZE) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=capacity)

    def __call__(self, event: ExitEvent) -> None:
        rip = "" if event.rip is None else f" rip={event.rip:#x}"
        self.lines.append(f"#{event.seq} vcpu{event.vcpu}{rip} {event.reason}: "
                          f"{event.description}")


def _exits(target, vcpu: int, args: list[str]) -> str:
    count = int(args[0], 0) if args else 10
    lines = list(target.exit_log.lines)[-count:] if count > 0 else []
    if not lines:
        return "no exits yet: the guest has not touched a device since gdb attached\n"
    return (f"the last {len(lines)} exits (oldest first):\n" + "\n".join(lines) + "\n")


def _cpu(target, vcpu: int, args: list[str]) -> str:
    debugger = target.debuggers[vcpu]
    sregs = debugger.sregs()
    regs = debugger.view.regs()
    mode = cpu_mode_of(sregs)
    lines = [f"vCPU {vcpu}: {mode.value} mode, {debugger.bitness()}-bit code "
             f"(gdb's registers: {target.layout().architecture})"]
    lines += [f"{name:<5}{text}" for name, text in describe_control_registers(sregs).items()]
    lines.append(f"rflags {describe_rflags(regs.rflags)}")
    lines.append(describe_segment("cs", sregs.cs))
    return "\n".join(lines) + "\n"


def _address(debugger, text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        return debugger.address_of(text)


def _translate(target, vcpu: int, args: list[str]) -> str:
    if len(args) != 1:
        return "usage: monitor translate ADDRESS (a number, or a symbol of the guest)\n"
    debugger = target.debuggers[vcpu]
    address = _address(debugger, args[0])
    result = debugger.translate(address)
    how = {"none": "paging is off: linear = physical",
           "32-bit": "32-bit paging (CR3 -> PD -> PT)",
           "4-level": "4-level paging (CR3 -> PML4 -> PDPT -> PD -> PT)"}.get(result.paging,
                                                                            result.paging)
    return f"{how}; CR3={debugger.sregs().cr3:#x}\n{result.describe()}\n"


def _breakpoints(target, vcpu: int, args: list[str]) -> str:
    lines = []
    for index, debugger in enumerate(target.debuggers):
        items = list(debugger.breakpoints.values()) + list(debugger.watchpoints.values())
        lines.append(f"vCPU {index}:" + ("" if items else " none inserted now (gdb inserts "
                                          "its breakpoints only while the guest runs)"))
        lines += ["  " + item.describe() for item in items]
        control, debugreg = debugger.runner.guest_debug
        used = [slot for slot in decode_dr7(debugreg[7]) if slot.enabled]
        if used:
            lines.append(f"  the guest last ran with DR7={debugreg[7]:#x}: " + ", ".join(
                f"DR{s.slot}={debugreg[s.slot]:#x} ({s.condition}, {s.size} byte(s))"
                for s in used))
    return "\n".join(lines) + "\n"


def _support(target, vcpu: int, args: list[str]) -> str:
    rows = target.debuggers[0].support.rows()
    return "\n".join(f"{what}: {value} -- {meaning}" for what, value, meaning in rows) + "\n"


def _record(target, vcpu: int, args: list[str]) -> str:
    debugger = target.debuggers[vcpu]
    what = args[0] if args else "status"
    if what == "on" and len(args) <= 2:
        limit = int(args[1], 0) if len(args) == 2 else DEFAULT_MAX_ENTRIES
        if limit < 1:
            return "monitor record on N: N must be at least 1\n"
        debugger.record(limit=limit)
        return (f"vCPU {vcpu}: recording every instruction (the last {limit:,} kept); "
                f"'continue' single-steps now; reverse-stepi and reverse-continue go back\n")
    if what == "off" and len(args) == 1:
        debugger.record(False)
        return f"vCPU {vcpu}: not recording; the history is forgotten\n"
    if what == "status" and len(args) == 1:
        history = debugger.history
        if history is None:
            return f"vCPU {vcpu}: not recording ('monitor record on' starts)\n"
        where = "at the end (live)" if history.at_end else f"at entry {history.position}"
        return (f"vCPU {vcpu}: {len(history):,} instructions recorded, {where}; "
                f"{history.bytes:,} bytes; {history.dropped:,} dropped by the cap of "
                f"{history.max_entries:,}\n")
    return "usage: monitor record on [N] | off | status\n"


def _help(target, vcpu: int, args: list[str]) -> str:
    return "\n".join(f"monitor {name:<12} {text}" for name, (_, text) in COMMANDS.items()) + "\n"


#: name -> (function(target, vcpu, args) -> text, one line of help).
COMMANDS: dict[str, tuple[Callable[..., str], str]] = {
    "help": (_help, "this list"),
    "exits": (_exits, "[N] the last N VM exits (default 10), explained"),
    "cpu": (_cpu, "CPU mode, CR0/CR4/EFER with their bits named, RFLAGS, CS"),
    "translate": (_translate, "ADDR the page walk of a virtual address, level by level"),
    "breakpoints": (_breakpoints, "how each breakpoint and watchpoint is caught here"),
    "support": (_support, "which guest-debug features this KVM really has"),
    "record": (_record, "on [N] | off | status: record instructions for reverse-stepi/-continue"),
}


def run_monitor(target, vcpu: int, text: str) -> str:
    """The output of ``monitor TEXT`` for gdb's current thread ``vcpu``.
    Never raises: a mistake is a line of output."""
    try:
        words = shlex.split(text)
    except ValueError as err:
        return f"cannot read that command: {err}\n"
    if not words:
        return _help(target, vcpu, [])
    entry = COMMANDS.get(words[0])
    if entry is None:
        return f"no monitor command {words[0]!r}; try 'monitor help'\n"
    try:
        return entry[0](target, vcpu, words[1:])
    except (DebuggerError, ValueError, OverflowError) as err:
        return f"monitor {words[0]}: {err}\n"
