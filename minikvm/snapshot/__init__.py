"""Whole-machine snapshots: save a stopped machine to a file, resume it later.

* :mod:`.format` -- the file: a versioned header, typed sections with CRCs;
* :mod:`.vcpu_state`, :mod:`.vm_state`, :mod:`.memory_image` -- the parts;
* :mod:`.machine_state` -- a whole :class:`~minikvm.machine.Machine`;
* :mod:`.info` -- what a file holds, in words (``minikvm snapshot info``).

docs/snapshots.md tells what a VM is made of and why it is restored in
the order it is.
"""
