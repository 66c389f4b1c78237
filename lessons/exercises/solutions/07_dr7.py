"""Exercise 07, a reference solution: the debug registers for one breakpoint.

The checker loads guests/debug/steps64.S, calls
``debug_registers(address)`` with the address of its label ``after_out``,
and hands your eight values to KVM:

    vcpu.set_guest_debug(KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW_BP, debug_registers(address))

Then it runs the guest. The task (07_dr7.md): the guest must stop with a
KVM_EXIT_DEBUG *before* executing the instruction at ``address``.
Check with:  minikvm lesson check 07
"""

DR7_FIXED = 1 << 10        # bit 10 of DR7 always reads 1


def debug_registers(address: int) -> list[int]:
    """DR0, DR1, DR2, DR3, DR4, DR5, DR6, DR7 for KVM_SET_GUEST_DEBUG."""
    # Slot 0 enabled (G0, bit 1); R/W0 = 00 (instruction execution) and
    # LEN0 = 00 (an instruction breakpoint must say length 1).
    dr7 = DR7_FIXED | 1 << 1 | 0b00 << 16 | 0b00 << 18
    return [address, 0, 0, 0, 0, 0, 0, dr7]
