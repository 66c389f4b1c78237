"""Exercise 13, a WRONG solution the tests use: registers get the value *after*.

While recording, minikvm keeps one entry per instruction: the registers it
changed and the memory it changed, each with its value *before* and
*after*. The checker records a small guest on a real machine, then calls
``undo(step, regs, memory)`` once per instruction, newest first, and
checks that after each call the vCPU and guest RAM are exactly as they were
before that instruction ran. The task (13_undo.md).
Check with:  minikvm lesson check 13
"""


def undo(step, regs, memory):
    """Put back what ``step`` changed -- but with the new values: a redo."""
    for name, (before, after) in step.regs.items():
        regs[name] = after
    for address, before, after in step.memory:
        memory.write(address, before)
