"""Exercise 13, starting point: take one instruction back, from its undo entry.

While recording, minikvm keeps one entry per instruction: the registers it
changed and the memory it changed, each with its value *before* and
*after*. The checker records a small guest on a real machine, then calls
``undo(step, regs, memory)`` once per instruction, newest first, and
checks that after each call the vCPU and guest RAM are exactly as they were
before that instruction ran. The task (13_undo.md).
Check with:  minikvm lesson check 13
"""


def undo(step, regs, memory):
    """Put back what ``step`` changed, as it was before the instruction ran.

    step.regs    {name: (before, after)} for each register it changed ("rip", "rax", ...)
    step.memory  [(address, before, after)] for each run of bytes it changed
    regs         {name: value}: the vCPU's registers now; change them in place
    memory       guest RAM: memory.read(address, size), memory.write(address, data)
    """
    for name, (before, after) in step.regs.items():
        regs[name] = before
    # TODO: memory too.
