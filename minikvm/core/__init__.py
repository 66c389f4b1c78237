"""The machine's core: the board (the PC platform of the guest contract, as
data), the one stop vocabulary, the exit events and their dispatch, the
machine configuration, and the runner that owns ``KVM_RUN`` for one vCPU.

:class:`minikvm.machine.Machine` wires a VM from these pieces; the debugger,
the TUI, the CLI and the lessons all stand on them (docs/architecture.md).
"""
