"""Exercise 07, starting point: the debug registers for one breakpoint.

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
    # Slot 0 enabled (G0, bit 1). R/W0 (bits 17:16) and LEN0 (bits 19:18)
    # say what slot 0 watches -- and this says "a 4-byte data write".
    # TODO: make it an instruction breakpoint (Intel SDM vol. 3B, 17.2.4).
    dr7 = DR7_FIXED | 1 << 1 | 0b01 << 16 | 0b11 << 18
    return [address, 0, 0, 0, 0, 0, 0, dr7]
