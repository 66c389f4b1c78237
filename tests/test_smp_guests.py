"""Several vCPUs with the in-kernel irqchip: APs parked until INIT/SIPI,
each vCPU's own APIC id, how the machine ends, and the SMP guest that
starts its APs itself (guests/c/smp.c), from Python and from the CLI.
"""

from __future__ import annotations

import collections
import re
import struct
import subprocess
import sys

import pytest

from minikvm.core.config import ConfigError, MachineConfig
from minikvm.core.runner import PARKED_STATES
from minikvm.kvm.uapi import KvmMpState
from minikvm.machine import Machine, StopKind
from minikvm.x86.cpuid import apic_id_of
from tests.conftest import ROOT, slow_except

pytestmark = pytest.mark.kvm

#: vCPU 0, real mode at 0x1000:  mov al, 'A' (B0 41); out 0xE9, al (E6 E9); cli; hlt (FA F4)
PRINT_AND_HALT = bytes([0xB0, 0x41, 0xE6, 0xE9, 0xFA, 0xF4])
TRAMPOLINE = 0x8000
#: vCPU 0, protected mode at 0x1000: INIT then SIPI (vector 0x08) to all but
#: itself through the ICR at 0xFEE00300, then spin:
#:     mov dword [0xFEE00300], 0x000C4500   (C7 05 disp32 imm32)
#:     mov dword [0xFEE00300], 0x000C4608
#:     jmp $                                (EB FE)
WAKE_APS_AND_SPIN = (bytes([0xC7, 0x05]) + struct.pack("<II", 0xFEE00300, 0x000C4500)
                     + bytes([0xC7, 0x05]) + struct.pack("<II", 0xFEE00300, 0x000C4608)
                     + bytes([0xEB, 0xFE]))
#: An AP at 0x8000 (real mode): mov al, 0x21; out 0xF4, al (the debug-exit port)
AP_DEBUG_EXIT = bytes([0xB0, 0x21, 0xE6, 0xF4, 0xFA, 0xF4])
#: An AP at 0x8000 that crashes: lidt [0x8010] (an IDT of limit 0, 0F 01 1E
#: disp16); mov eax, cr0; or al, 1; mov cr0, eax (protected mode); int3 (CC):
#: no gate, #GP, no gate: a triple fault on hardware KVM. (kvm-pvm's
#: emulator gives up earlier, an internal error: a crash all the same.)
AP_CRASH = (bytes([0x0F, 0x01, 0x1E, 0x10, 0x80, 0x0F, 0x20, 0xC0, 0x0C, 0x01,
                   0x0F, 0x22, 0xC0, 0xCC]) + bytes(2) + bytes(6))


def bare_machine(vcpus: int, bsp: bytes, ap: bytes | None = None, mode: str = "real",
                 output=None) -> Machine:
    machine = Machine(vcpus=vcpus, irqchip=True, output=output)
    machine.memory.write(0x1000, bsp)
    if ap is not None:
        machine.memory.write(TRAMPOLINE, ap)
    machine.set_mode(mode, 0x1000)
    return machine


def test_aps_start_parked_and_each_vcpu_has_its_own_apic_id_in_cpuid():
    with Machine(vcpus=4, irqchip=True) as machine:
        states = [KvmMpState(vcpu.get_mp_state()) for vcpu in machine.vcpus]
        ids = [apic_id_of(vcpu.get_cpuid2()) for vcpu in machine.vcpus]
    assert states[0] == KvmMpState.KVM_MP_STATE_RUNNABLE
    assert all(state in PARKED_STATES for state in states[1:])
    assert ids == [0, 1, 2, 3]


def test_vcpu_0_halting_while_the_aps_were_never_started_ends_the_machine():
    output = []
    with bare_machine(4, PRINT_AND_HALT, output=output.append) as machine:
        stop = machine.run(timeout=20)
        parked = [runner.parked for runner in machine.runners]
    assert stop.kind is StopKind.HALT and stop.status == 0
    assert b"".join(output) == b"A"
    assert parked == [False, True, True, True]
    assert "vCPU 1, 2, 3 never started (waiting for INIT/SIPI)" in stop.message


def test_a_debug_exit_on_an_ap_ends_the_spinning_bsp_too():
    with bare_machine(2, WAKE_APS_AND_SPIN, AP_DEBUG_EXIT, mode="protected") as machine:
        stop = machine.run(timeout=20)
    assert stop.kind is StopKind.DEBUG_EXIT and stop.status == (0x21 << 1) | 1, stop
    assert stop.vcpu == 1


def test_a_reset_request_from_an_ap_ends_the_machine():
    ap_reset = bytes([0xB0, 0xFE, 0xE6, 0x64, 0xFA, 0xF4])   # mov al, 0xFE; out 0x64, al
    with bare_machine(2, WAKE_APS_AND_SPIN, ap_reset, mode="protected") as machine:
        stop = machine.run(timeout=20)
    assert stop.kind is StopKind.RESET and stop.status == 0 and stop.vcpu == 1, stop


def test_a_crash_on_an_ap_ends_the_spinning_bsp_too():
    with bare_machine(2, WAKE_APS_AND_SPIN, AP_CRASH, mode="protected") as machine:
        stop = machine.run(timeout=20)
    assert stop.crashed and stop.status == 3, stop
    assert stop.vcpu == 1


def test_the_host_limits_refuse_a_machine_with_too_many_vcpus():
    with pytest.raises(ConfigError, match="1 to 64"):
        MachineConfig(vcpus=65)
    with pytest.raises(ConfigError, match="1 to 64"):
        MachineConfig(vcpus=0)


def smp_run(guests, vcpus: int, append: str | None = None, timeout: float = 60):
    config = MachineConfig(guest=str(guests / "smp.elf"), vcpus=vcpus, irqchip=True,
                           append=append)
    debugcon, com1 = bytearray(), bytearray()
    with Machine.from_config(config, output=debugcon.extend) as machine:
        machine.uart.output = com1.extend
        stop = machine.run(timeout=timeout)
        words = struct.unpack("<8I", machine.memory.read(0x60000, 32))
    return stop, bytes(debugcon), bytes(com1), words


def apic_ids_reported(text: str) -> list[int]:
    found = re.findall(r"(?:BSP|AP): APIC id (\d+), CPUID says (\d+)", text)
    assert all(lapic == cpuid for lapic, cpuid in found), found
    return sorted(int(lapic) for lapic, _ in found)


@pytest.mark.parametrize("vcpus", slow_except([1, 2, 4, 8], 1))
def test_the_smp_guest_starts_every_ap_and_counts_under_a_lock(guests, vcpus):
    stop, debugcon, _, words = smp_run(guests, vcpus)
    text = debugcon.decode()
    assert stop.kind is StopKind.HALT and stop.status == 0, (stop, text)
    assert apic_ids_reported(text) == list(range(vcpus))
    marker, cpus, started, total, expected, seen_lo, seen_hi, failures = words
    assert (marker, cpus, started, failures) == (0x4B504D53, vcpus, vcpus - 1, 0)
    assert total == expected == vcpus * 50
    assert seen_lo | seen_hi << 32 == (1 << vcpus) - 1
    if vcpus > 1:
        assert "every vCPU halted" in stop.message


def test_vcpus_hammering_com1_and_debugcon_lose_no_byte(guests):
    vcpus, each = 4, 300
    stop, debugcon, com1, _ = smp_run(guests, vcpus, append=f"hammer={each}")
    assert stop.status == 0, stop
    for stream in (debugcon, com1):
        counts = collections.Counter(byte for byte in stream if byte >= 0x80)
        assert counts == {0x80 + cpu: each for cpu in range(vcpus)}
    assert set(com1) <= {0x80 + cpu for cpu in range(vcpus)}, "COM1 got only the hammer bytes"


def minikvm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "minikvm", *args], capture_output=True,
                          timeout=120, cwd=ROOT)


@pytest.mark.parametrize("vcpus", slow_except([1, 2, 4, 8], 2))
def test_cli_smp_reports_each_apic_id_once(guests, vcpus):
    result = minikvm("run", str(guests / "smp.elf"), "--smp", str(vcpus), "--timeout", "60")
    text = result.stdout.decode()
    assert result.returncode == 0, (text, result.stderr)
    assert apic_ids_reported(text) == list(range(vcpus))
    assert f"{vcpus} of {vcpus} CPUs counted to {vcpus * 50} (expected {vcpus * 50}): ok" in text


@pytest.mark.parametrize("args, words", [
    (["--smp", "65"], "1 to 64 vCPUs"),
    (["--smp", "0"], "1 to 64 vCPUs"),
    (["--smp", "2", "--no-irqchip"], "needs the in-kernel irqchip"),
])
def test_cli_refuses_bad_smp_in_one_line(guests, args, words):
    result = minikvm("run", str(guests / "smp.elf"), *args)
    stderr = result.stderr.decode()
    assert result.returncode == 2 and words in stderr
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr


@pytest.mark.slow
def test_trace_names_the_vcpu_of_each_exit_and_shows_parked_aps(tmp_path):
    guest = tmp_path / "halt.bin"
    guest.write_bytes(PRINT_AND_HALT)
    result = minikvm("trace", str(guest), "--smp", "3", "--limit", "0")
    text = result.stdout.decode()
    assert result.returncode == 0, result.stderr
    words = " ".join(text.split())   # rich wraps long lines
    assert "vCPU 1, 2 never started" in words
    assert "1 waiting for INIT/SIPI (KVM_MP_STATE_UNINITIALIZED)" in words


#: Long mode at 0x1000: identity-map 2 MiB user-accessible, load a GDT with
#: ring-3 segments, iretq to ring 3 (IOPL 3), run CPUID leaves 1 and 0 there,
#: store EBX of each at 0x9000/0x9004 and leave through the debug-exit port.
RING3_CPUID = """
    .code64
    .globl _start
_start:
    movq $0x11007, 0x10000
    movq $0x12007, 0x11000
    movq $0x87, 0x12000
    mov $0x10000, %rax
    mov %rax, %cr3
    lgdt gdtr
    pushq $0x1b
    pushq $0x80000
    pushq $0x3002
    pushq $0x23
    pushq $user
    iretq
user:
    mov $1, %eax
    cpuid
    mov %ebx, 0x9000
    xor %eax, %eax
    cpuid
    mov %ebx, 0x9004
    mov $0, %al
    out %al, $0xf4
1:  jmp 1b
    .p2align 3
gdt:
    .quad 0, 0x00AF9A000000FFFF, 0x00CF92000000FFFF, 0x00CFF2000000FFFF, 0x00AFFA000000FFFF
gdtr:
    .word 5 * 8 - 1
    .quad gdt
"""


def test_what_cpuid_in_ring_3_sees_depends_on_the_host(tmp_path):
    """Ring-0 CPUID is KVM's (it follows KVM_SET_CPUID2; the SMP guest's
    "CPUID says" lines prove it per vCPU). Ring 3 is KVM's on hardware
    virtualization too, but kvm-pvm runs guest ring 3 natively, so there
    CPUID answers from the host CPU: its vendor, its APIC id. We mark our
    table (vendor EBX "AAAA", APIC id 0x42) and look which one ring 3 saw."""
    from minikvm.guestbuild import assemble, tools_available
    from minikvm.kvm.host import detect_host

    if not tools_available():
        pytest.skip("needs binutils")
    source = tmp_path / "ring3_cpuid.S"
    source.write_text(RING3_CPUID)
    flat = assemble(source, tmp_path, bits=64).flat
    with Machine(irqchip=True) as machine:
        table = machine.cpuid
        for entry in table.entries[:table.nent]:
            if entry.function == 0:
                entry.ebx = 0x41414141
            elif entry.function == 1:
                entry.ebx = (entry.ebx & 0xFFFFFF) | 0x42 << 24
        machine.vcpu.set_cpuid2(table)
        machine.load_flat(flat, 0x1000, mode="long")
        stop = machine.run(timeout=20)
        leaf1, leaf0 = struct.unpack("<II", machine.memory.read(0x9000, 8))
    assert stop.status == 1, stop
    ours = (leaf1 >> 24, leaf0) == (0x42, 0x41414141)
    if detect_host().flavour == "kvm_pvm":
        assert not ours and leaf0 != 0x41414141, "kvm-pvm: ring 3 asks the host CPU"
    else:
        assert ours, "hardware KVM intercepts CPUID in every ring"
