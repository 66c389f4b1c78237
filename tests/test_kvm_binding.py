"""The binding layer against the real /dev/kvm: one object per fd, typed exits."""

from __future__ import annotations

import errno

import pytest

from minikvm.kvm.errors import KvmError, KvmUnavailableError
from minikvm.kvm.exits import Hlt, IoIn, IoOut, MmioRead, MmioWrite
from minikvm.kvm.host import detect_host
from minikvm.kvm.system import Kvm
from minikvm.kvm.uapi import KvmCap
from minikvm.memory import GuestMemory

pytestmark = pytest.mark.kvm


def real_mode_vm(code: bytes, mem_size: int = 0x10000):
    """A VM running ``code`` at 0x1000 in real mode (the kvm-hello-world way)."""
    kvm = Kvm()
    vm = kvm.create_vm()
    vm.set_tss_addr(0xFFFB_D000)
    memory = GuestMemory.with_size(mem_size)
    region = memory.regions[0]
    vm.set_user_memory_region(0, 0, region.size, region.host_address)
    memory.write(0x1000, code)
    vcpu = vm.create_vcpu(0)
    sregs = vcpu.get_sregs()
    sregs.cs.base = 0
    sregs.cs.selector = 0
    vcpu.set_sregs(sregs)
    regs = vcpu.get_regs()
    regs.rip = 0x1000
    regs.rflags = 0x2
    vcpu.set_regs(regs)
    return kvm, vm, vcpu, memory


def test_api_version_is_12():
    with Kvm() as kvm:
        assert kvm.api_version() == 12


def test_vcpu_mmap_size_holds_the_run_page():
    with Kvm() as kvm:
        assert kvm.vcpu_mmap_size() >= 4096


def test_user_memory_capability_is_present():
    with Kvm() as kvm:
        assert kvm.check_extension(KvmCap.KVM_CAP_USER_MEMORY) > 0


def test_missing_device_is_one_clear_sentence(tmp_path):
    with pytest.raises(KvmUnavailableError, match="does not exist: KVM is not available"):
        Kvm(str(tmp_path / "no-kvm"))


def test_a_file_that_is_not_kvm_is_refused(tmp_path):
    fake = tmp_path / "fake"
    fake.write_bytes(b"")
    with pytest.raises(KvmUnavailableError, match="not a KVM device"):
        Kvm(str(fake))


def test_kvm_error_names_ioctl_and_errno_in_words():
    kvm, vm, vcpu, memory = real_mode_vm(b"\xf4")
    with pytest.raises(KvmError) as info:
        vm.create_vcpu(0)  # the same id twice
    assert info.value.ioctl == "KVM_CREATE_VCPU"
    assert info.value.errno == errno.EEXIST
    assert "KVM_CREATE_VCPU failed: File exists (EEXIST)" in str(info.value)


def test_out_exit_carries_port_size_and_data():
    # mov al, 0x41 ; out 0xE9, al ; hlt
    kvm, vm, vcpu, memory = real_mode_vm(b"\xb0\x41\xe6\xe9\xf4")
    exit = vcpu.run()
    assert isinstance(exit, IoOut)
    assert (exit.port, exit.size, exit.count, exit.data) == (0xE9, 1, 1, b"A")
    assert isinstance(vcpu.run(), Hlt)


def test_exit_records_compare_by_value_and_leave_run_page_views_out_of_their_repr():
    # What the exits promised as dataclasses: equal when type and fields are,
    # not hashable, no attributes beyond their fields; a view of the run page
    # (IoIn's, MmioRead's buffer) is not shown, its bytes change at the next run.
    assert IoOut(0xE9, 1, 1, b"A") == IoOut(0xE9, 1, 1, b"A")
    assert IoOut(0xE9, 1, 1, b"A") != IoOut(0xE9, 1, 1, b"B")
    assert Hlt(True) != Hlt(False) and Hlt(True) != True   # noqa: E712
    assert repr(IoOut(0xE9, 1, 1, b"A")) == "IoOut(port=233, size=1, count=1, data=b'A')"
    assert repr(MmioRead(0xD000_0000, 4, memoryview(bytearray(8)))) == (
        "MmioRead(address=3489660928, length=4)")
    with pytest.raises(TypeError):
        hash(Hlt(False))
    with pytest.raises(AttributeError):
        IoIn(0x60, 1, 1, memoryview(bytearray(1))).extra = 1


def test_in_exit_is_completed_with_the_vmm_value():
    # in ax, 0x60 ; hlt
    kvm, vm, vcpu, memory = real_mode_vm(b"\xe5\x60\xf4")
    exit = vcpu.run()
    assert isinstance(exit, IoIn) and (exit.port, exit.size) == (0x60, 2)
    exit.complete([0xBEEF])
    assert isinstance(vcpu.run(), Hlt)
    assert vcpu.get_regs().rax & 0xFFFF == 0xBEEF


def test_string_out_reports_every_item():
    # mov si, 0x1100 ; mov cx, 3 ; mov dx, 0xe9 ; rep outsb ; hlt
    code = b"\xbe\x00\x11\xb9\x03\x00\xba\xe9\x00\xf3\x6e\xf4"
    kvm, vm, vcpu, memory = real_mode_vm(code)
    memory.write(0x1100, b"xyz")
    data = b""
    while not isinstance(exit := vcpu.run(), Hlt):
        assert isinstance(exit, IoOut)
        data += exit.data
    assert data == b"xyz"


def test_mmio_read_and_write_exits_outside_ram():
    # mov ax, 0xd000 ; mov ds, ax ; mov word [0], 0x1234 ; mov bx, [2] ; hlt
    code = b"\xb8\x00\xd0\x8e\xd8\xc7\x06\x00\x00\x34\x12\x8b\x1e\x02\x00\xf4"
    kvm, vm, vcpu, memory = real_mode_vm(code)
    exit = vcpu.run()
    assert isinstance(exit, MmioWrite)
    assert (exit.address, exit.length, exit.value) == (0xD0000, 2, 0x1234)
    exit = vcpu.run()
    assert isinstance(exit, MmioRead) and (exit.address, exit.length) == (0xD0002, 2)
    exit.complete(0xCAFE)
    assert isinstance(vcpu.run(), Hlt)
    assert vcpu.get_regs().rbx & 0xFFFF == 0xCAFE


def test_registers_round_trip():
    kvm, vm, vcpu, memory = real_mode_vm(b"\xf4")
    regs = vcpu.get_regs()
    regs.rax, regs.r15 = 0x1122334455667788, 7
    vcpu.set_regs(regs)
    again = vcpu.get_regs()
    assert (again.rax, again.r15) == (0x1122334455667788, 7)


def test_kick_before_run_returns_interrupted_without_entering_the_guest():
    from minikvm.kvm.exits import Interrupted
    kvm, vm, vcpu, memory = real_mode_vm(b"\xeb\xfe")  # jmp $
    vcpu.kick()
    assert isinstance(vcpu.run(), Interrupted)
    assert not vcpu.immediate_exit


def test_kick_from_another_thread_stops_a_spinning_guest():
    import threading
    from minikvm.kvm.exits import Interrupted
    kvm, vm, vcpu, memory = real_mode_vm(b"\xfa\xeb\xfe")  # cli ; jmp $
    timer = threading.Timer(0.2, vcpu.kick)
    timer.start()
    assert isinstance(vcpu.run(), Interrupted)
    timer.join()


def test_detect_host_reads_the_loaded_module(tmp_path):
    (tmp_path / "kvm_amd").mkdir()
    assert detect_host(str(tmp_path)).flavour == "kvm_amd"
    assert detect_host(str(tmp_path / "none")).flavour == "unknown"


def test_ioctl_keeps_a_struct_built_in_the_call_alive():
    from minikvm.kvm import ioctls
    from minikvm.kvm.fd import ioctl
    from minikvm.kvm.uapi import kvm_userspace_memory_region
    kvm = Kvm()
    vm = kvm.create_vm()
    memory = GuestMemory.with_size(0x10000)
    ioctl(vm.fd, ioctls.KVM_SET_USER_MEMORY_REGION, kvm_userspace_memory_region(
        slot=0, guest_phys_addr=0, memory_size=0x10000,
        userspace_addr=memory.regions[0].host_address))


@pytest.mark.kvm
def test_synced_registers_at_an_exit_equal_what_the_ioctls_return(guests):
    """KVM_CAP_SYNC_REGS: after an exit the run page holds regs and sregs;
    get_regs/get_sregs/get_rip read them there, and they are the ioctls' values."""
    from minikvm.kvm.uapi import KVM_SYNC_X86_REGS, KVM_SYNC_X86_SREGS
    from minikvm.machine import Machine
    with Machine() as machine:
        machine.load_flat(guests / "hello.bin", 0x1000)
        vcpu = machine.vcpu
        assert vcpu.sync_mask == KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS
        assert not vcpu.synced            # nothing ran yet: the page holds nothing
        machine.step()
        assert vcpu.synced
        regs, sregs, rip = vcpu.get_regs(), vcpu.get_sregs(), vcpu.get_rip()
        vcpu.sync_regs(0)                 # from now on, the ioctls
        assert bytes(vcpu.get_regs()) == bytes(regs)
        assert bytes(vcpu.get_sregs()) == bytes(sregs)
        assert vcpu.get_rip() == rip == regs.rip


@pytest.mark.kvm
def test_setting_registers_makes_the_synced_copy_stale(guests):
    from minikvm.machine import Machine
    with Machine() as machine:
        machine.load_flat(guests / "hello.bin", 0x1000)
        vcpu = machine.vcpu
        machine.step()
        regs = vcpu.get_regs()
        regs.rax = 0x1234
        vcpu.set_regs(regs)
        assert not vcpu.synced
        assert vcpu.get_regs().rax == 0x1234
