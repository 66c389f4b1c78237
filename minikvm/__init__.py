"""minikvm: a pure-Python hypervisor on the Linux KVM ioctls, made to teach.

The layers, from the bottom (see DESIGN.md): ``minikvm.kvm`` (the ABI and one
object per KVM file descriptor), ``minikvm.memory`` and ``minikvm.bus``,
``minikvm.devices``, ``minikvm.x86`` and ``minikvm.loaders``,
``minikvm.machine``, ``minikvm.debug``, and the front ends.
"""

__version__ = "0.1.0"
