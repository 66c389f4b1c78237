"""The x86 side of the machine: CPU modes, descriptors, page tables, the memory map.

KVM runs guest code on the real CPU, but the VMM decides in which state the
vCPU starts and must lay out in guest memory what that state refers to. The
modules here, each small enough to read in one sitting:

* :mod:`~minikvm.x86.flags` -- named bits of CR0, CR4, EFER, RFLAGS,
  segment descriptors and page-table entries.
* :mod:`~minikvm.x86.layout` -- the guest-physical memory map: where the GDT,
  stacks, page tables and images go.
* :mod:`~minikvm.x86.gdt` -- segment descriptors and the flat GDT.
* :mod:`~minikvm.x86.paging` -- building page tables and walking them
  (guest-virtual to guest-physical), level by level.
* :mod:`~minikvm.x86.modes` -- one function per CPU mode (real, protected,
  paged, long) filling ``kvm_sregs``/``kvm_regs``.

Nothing here calls KVM: register structures are used by their attribute
names, so everything can be tested with plain stand-in objects.
"""

__all__ = ["flags", "layout", "gdt", "paging", "modes"]
