"""minikvm.kvm: the KVM ABI (uapi, ioctls) and one Python object per KVM file descriptor."""
