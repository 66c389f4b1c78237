"""The check of exercise 13: undo one recorded instruction, by hand.

Reverse execution in minikvm is an undo log (docs/reverse.md): recording,
each single-stepped instruction leaves an entry with what it changed, old
and new. The learner writes ``undo(step, regs, memory)``, the part that
puts one instruction's *old* values back. The check records a small
real-mode guest (:data:`COUNTER_CODE`) on a real machine, then undoes its
instructions newest first with the learner's function -- on the real vCPU
(``KVM_SET_REGS``) and the real guest RAM -- and compares, after each one,
with the state the recording saw before that instruction ran. When all are
undone the guest is run on, live, from where the learner's undo left it:
it must do its work again and end as the recorded run did.

The learner sees plain data (:class:`Step`), not the packed
:class:`~minikvm.debug.history.Entry`: registers by ``kvm_regs`` name with
(old, new), memory changes as (address, old bytes, new bytes).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from minikvm.lessons.learner import learner_function, their_error
from minikvm.lessons.verdict import Verdict, not_yet, passed

__all__ = ["CODE_ADDR", "COUNTER_CODE", "COUNTER_DATA", "REG_NAMES", "Step", "check_13",
           "step_of"]

#: Where the guest's code is loaded and starts, in real mode.
CODE_ADDR = 0x1000
#: Where it stores its counts.
COUNTER_DATA = 0x2000
#: The guest, hand-assembled (16-bit)::
#:
#:     0x1000  mov bx, 0x2000
#:     0x1003  inc ax              ; loop: count
#:     0x1004  mov [bx], ax        ;       store the count
#:     0x1006  add bx, 2
#:     0x1009  cmp bx, 0x2008      ;       four words
#:     0x100d  jne 0x1003
#:     0x100f  hlt
COUNTER_CODE = bytes([0xBB, 0x00, 0x20, 0x40, 0x89, 0x07, 0x83, 0xC3, 0x02,
                      0x81, 0xFB, 0x08, 0x20, 0x75, 0xF4, 0xF4])
#: The words it leaves at COUNTER_DATA.
COUNTER_RESULT = struct.pack("<4H", 1, 2, 3, 4)
#: Instructions recorded: everything before the final hlt (1 + 4 x 5).
STEPS = 21
#: The kvm_regs fields, in the order of the structure (and of a word diff).
REG_NAMES = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10",
             "r11", "r12", "r13", "r14", "r15", "rip", "rflags")
_INSTRUCTIONS = {0x1000: "mov bx, 0x2000", 0x1003: "inc ax", 0x1004: "mov [bx], ax",
                 0x1006: "add bx, 2", 0x1009: "cmp bx, 0x2008", 0x100D: "jne 0x1003",
                 0x100F: "hlt"}


@dataclass
class Step:
    """One recorded instruction, as the learner's ``undo`` sees it."""

    #: Where the instruction is (the RIP before it ran) and what it is.
    rip: int
    text: str
    #: The registers it changed: name -> (value before, value after).
    regs: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: The memory it changed: (guest-physical address, bytes before, bytes after).
    memory: list[tuple[int, bytes, bytes]] = field(default_factory=list)


def step_of(entry: Any) -> Step:
    """A history :class:`~minikvm.debug.history.Entry` as a :class:`Step`.

    ``entry.regs`` is a word diff: a 32-bit mask of the changed ``kvm_regs``
    words, then (old, new) for each, 64 bits apiece (history.word_diff)."""
    mask = struct.unpack_from("<I", entry.regs)[0]
    values = struct.unpack_from(f"<{(len(entry.regs) - 4) // 8}Q", entry.regs, 4)
    regs: dict[str, tuple[int, int]] = {}
    at = 0
    for index, name in enumerate(REG_NAMES):
        if mask >> index & 1:
            regs[name] = (values[at], values[at + 1])
            at += 2
    rip = regs["rip"][0] if "rip" in regs else 0
    return Step(rip, _INSTRUCTIONS.get(rip, "?"), regs,
                [(address, bytes(old), bytes(new)) for address, old, new in entry.memory])


class LearnerMemory:
    """Guest RAM as the learner's ``undo`` gets it: ``read``/``write`` by
    guest-physical address, bounds-checked (a wrong address is the
    learner's mistake to hear about, never a crash)."""

    def __init__(self, memory: Any) -> None:
        self._memory = memory
        self.writes: list[tuple[int, bytes]] = []

    def read(self, address: int, size: int) -> bytes:
        return self._memory.read(int(address), int(size))

    def write(self, address: int, data: bytes) -> None:
        data = bytes(data)
        self._memory.write(int(address), data)
        self.writes.append((int(address), data))


def _record(machine: Any) -> tuple[list[tuple[dict[str, int], bytes]], list[Any]]:
    """Step the guest STEPS instructions, recording; the state before each
    (registers by name, the counter words) and the entries, newest first."""
    from minikvm.debug.debugger import Debugger

    debugger = Debugger(machine)
    debugger.record()
    before = []
    for _ in range(STEPS):
        before.append((_regs(machine), machine.memory.read(COUNTER_DATA, 8)))
        debugger.step()
    history = debugger.history
    entries = []
    while (entry := history.undo()) is not None:
        entries.append(entry)
    debugger.record(False)   # the machine stays at the end of the recording
    return before, entries


def _regs(machine: Any) -> dict[str, int]:
    regs = machine.vcpu.get_regs()
    return {name: getattr(regs, name) for name in REG_NAMES}


def _words(data: bytes) -> str:
    return " ".join(f"{word:#06x}" for word in struct.unpack("<4H", data))


def _difference(step: Step, want: tuple[dict[str, int], bytes], regs: dict[str, int],
                counters: bytes) -> list[str]:
    """In words, what is not as it was before ``step`` ran."""
    said = []
    for name in REG_NAMES:
        if regs[name] != want[0][name]:
            changed = name in step.regs
            said.append(f"{name.upper()} is {regs[name]:#x}; before the instruction it was "
                        f"{want[0][name]:#x}" + ("" if changed else
                                                 " (and the step did not even change it)"))
    if counters != want[1]:
        said.append(f"the counters at {COUNTER_DATA:#x} are {_words(counters)}; before the "
                    f"instruction they were {_words(want[1])}")
    return said


def check_13(path: Path, work: Path) -> Verdict:
    """undo(step, regs, memory): 21 instructions undone on a real vCPU, newest first."""
    from minikvm.core.stop import StopKind
    from minikvm.kvm.uapi import kvm_regs
    from minikvm.machine import Machine

    undo, problem = learner_function(path, "undo")
    if problem is not None:
        return problem
    with Machine() as machine:
        machine.memory.write(CODE_ADDR, COUNTER_CODE)
        machine.set_mode("real", CODE_ADDR)
        before, entries = _record(machine)
        memory = LearnerMemory(machine.memory)
        for done, entry in enumerate(entries):
            step = step_of(entry)
            number = STEPS - done
            regs = _regs(machine)
            memory.writes.clear()
            try:
                result = undo(step, regs, memory)
            except Exception as err:  # noqa: BLE001 - the learner's code may raise anything
                return not_yet(f"undo() raised {their_error(err, path)} while undoing "
                               f"instruction {number} ({step.text} at {step.rip:#x}).")
            if result is not None and not isinstance(result, dict):
                return not_yet(f"undo() returned {type(result).__name__}: it should change "
                               "the regs dict it is given (and return nothing).")
            bad = [name for name in REG_NAMES
                   if not isinstance(regs.get(name), int) or not 0 <= regs[name] < 1 << 64]
            if bad:
                return not_yet(f"After undo(), regs[{bad[0]!r}] is {regs.get(bad[0])!r}: every "
                               "register must stay a number of 64 bits.")
            machine.vcpu.set_regs(kvm_regs(**{name: regs[name] for name in REG_NAMES}))
            now = (_regs(machine), machine.memory.read(COUNTER_DATA, 8))
            said = _difference(step, before[-1 - done], *now)
            if said:
                return not_yet(f"Undoing instruction {number} of {STEPS} ({step.text} at "
                               f"{step.rip:#x}) did not bring the machine back to before it: "
                               + "; ".join(said) + ".",
                               _what_the_step_held(step),
                               _hint(step, said, memory.writes))
        # All undone: the machine should be where the guest started.
        output_before = machine.memory.read(COUNTER_DATA, 8)
        stop = machine.run(timeout=5)
        counters = machine.memory.read(COUNTER_DATA, 8)
    ran = (f"Then the guest ran on, live, from where your undo left it: {stop.message}, the "
           f"counters went from {_words(output_before)} to {_words(counters)}.")
    if counters != COUNTER_RESULT or stop.kind is not StopKind.HALT:
        return not_yet("Every undo matched, but the guest did not end as the recording did.",
                       ran)
    return passed(f"Your undo() took all {STEPS} instructions back on a real vCPU, newest first, "
                  "each to exactly the registers and memory it started from.", ran,
                  "Nothing ran backwards: an undo log keeps the values each instruction "
                  "overwrote, so going back is writing them again.")


def _what_the_step_held(step: Step) -> str:
    regs = ", ".join(f"{name} {old:#x} -> {new:#x}" for name, (old, new) in step.regs.items())
    mem = "; ".join(f"{address:#x}: {old.hex(' ')} -> {new.hex(' ')}"
                    for address, old, new in step.memory)
    return (f"The step held: registers {regs or 'none'}; memory {mem or 'none'} "
            "(each as before -> after).")


def _hint(step: Step, said: list[str], writes: list[tuple[int, bytes]]) -> str:
    memory_wrong = any(line.startswith("the counters") for line in said)
    if memory_wrong and step.memory and not writes:
        return ("This instruction stored to memory, and your undo wrote nothing back: the "
                "store was not undone. Put each memory change's *before* bytes back at its "
                "address (memory.write(address, before)).")
    if memory_wrong:
        return ("Memory must get each change's bytes from *before* the instruction: the "
                "first of the two byte strings.")
    return ("Each register the step changed goes back to the value it had *before* the "
            "instruction: the first of its (before, after) pair. Registers it did not "
            "change are already right.")
