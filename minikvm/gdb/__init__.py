"""A gdb remote stub: debug a minikvm guest with GNU gdb.

``minikvm run GUEST --gdb 127.0.0.1:1234`` waits for ``gdb GUEST -ex
'target remote 127.0.0.1:1234'`` before the guest's first instruction; gdb
then steps, stops at breakpoints and watchpoints, reads and writes
registers and memory, and ``monitor`` asks the VMM what gdb cannot see.
The stub speaks the GDB Remote Serial Protocol (the GDB manual's appendix
"Remote Protocol") and translates it to :mod:`minikvm.debug`: it is a front
end of the debugger, as the TUI is.

One concept per module, from the wire up:

* :mod:`~minikvm.gdb.packets` -- framing: ``$data#cs``, checksums, acks,
  binary escapes, the Ctrl-C byte; a parser that never raises;
* :mod:`~minikvm.gdb.registers` -- gdb's x86-64 and i386 register numbering,
  and where KVM keeps each register (``kvm_regs``, ``kvm_sregs``, ``kvm_fpu``);
* :mod:`~minikvm.gdb.tdesc` -- the target description XML built from it;
* :mod:`~minikvm.gdb.points` -- ``Z``/``z``: gdb's breakpoints and
  watchpoints on every vCPU's debugger;
* :mod:`~minikvm.gdb.target` -- the machine as gdb sees it: a thread per
  vCPU, all-stop resumption, which stop to report;
* :mod:`~minikvm.gdb.monitor` -- ``monitor`` commands (exits, cpu, translate...);
* :mod:`~minikvm.gdb.commands` -- the dispatcher: a packet in, a reply out;
* :mod:`~minikvm.gdb.session` -- one connection: acks, running, stop replies;
* :mod:`~minikvm.gdb.serve` -- TCP: listen, accept one client, serve it,
  and return the guest's :class:`~minikvm.core.stop.Stop`.

Nothing here touches KVM or the network when imported.
"""

from minikvm.gdb.serve import serve_gdb

__all__ = ["serve_gdb"]
