"""One C guest per CPU mode, run from Python and from the CLI, each proving
from the inside that it runs in that mode; the host checks registers, sregs
and memory."""

from __future__ import annotations

import subprocess
import sys

import pytest

from minikvm.kvm.host import detect_host
from minikvm.machine import Machine, StopKind
from minikvm.x86.flags import CR0_PE, CR0_PG, CR4_PAE, CR4_PSE, EFER_LMA, EFER_LME
from minikvm.x86.layout import RESULT_ADDR, SEL_CODE32, SEL_CODE64
from minikvm.x86.modes import CpuMode, cpu_mode_of
from tests.conftest import ROOT

pytestmark = pytest.mark.kvm

FIB_90 = 2880067194370816120


def run_guest(path, **load):
    output = []
    machine = Machine(output=output.append)
    machine.load_guest(path, **load)
    stop = machine.run(timeout=60)
    return machine, stop, b"".join(output).decode()


def test_real_mode_guest_sees_pe_clear_and_segment_arithmetic(guests):
    machine, stop, text = run_guest(guests / "real.bin")
    with machine:
        sregs = machine.vcpu.get_sregs()
        assert stop.kind is StopKind.HALT
        assert not sregs.cr0 & CR0_PE
        assert cpu_mode_of(sregs) is CpuMode.REAL
        assert text.startswith("real mode: CR0=0x") and "(PE clear)" in text
        # es = 0x0700, es:[0x10] -> physical 0x7000 + 0x10
        assert machine.memory.read_u16(0x7010) == 0x1616


def test_protected_mode_guest_reads_its_selector_and_segment_limit(guests):
    machine, stop, text = run_guest(guests / "protected.elf")
    with machine:
        sregs = machine.vcpu.get_sregs()
        words = [machine.memory.read_u32(RESULT_ADDR + 4 * i) for i in range(5)]
        assert stop.kind is StopKind.HALT
        assert machine.image.kind == "elf32"
        assert cpu_mode_of(sregs) is CpuMode.PROTECTED
        assert sregs.cr0 & CR0_PE and not sregs.cr0 & CR0_PG
        assert sregs.cs.selector == SEL_CODE32 and sregs.cs.db == 1
        assert words[0] == 0x50524F54              # the guest ran to the end
        assert words[1] & CR0_PE                   # CR0 as the guest saw it
        assert words[2] == SEL_CODE32              # mov %cs
        assert words[3] == 0xFFFFFFFF              # lsl of the flat data segment
        assert words[4] == 0x10                    # 32-bit wrap-around
        assert "DS limit=0xffffffff" in text


def test_long_mode_guest_computes_in_64_bits_and_writes_through_its_own_tables(guests):
    machine, stop, text = run_guest(guests / "long.elf")
    with machine:
        sregs = machine.vcpu.get_sregs()
        result = [machine.memory.read_u64(RESULT_ADDR + 8 * i) for i in range(5)]
        assert stop.kind is StopKind.HALT
        assert machine.image.kind == "elf64"
        assert cpu_mode_of(sregs) is CpuMode.LONG
        assert sregs.cr0 & CR0_PG and sregs.cr4 & CR4_PAE
        assert sregs.efer & EFER_LME and sregs.efer & EFER_LMA
        assert sregs.cs.l == 1 and sregs.cs.selector == SEL_CODE64
        assert result[0] == 0x4C4F4E474D4F4445
        assert result[1] == FIB_90 and FIB_90 >= 1 << 61
        mix = (0x0123456789ABCDEF * 0x9E3779B97F4A7C15) % (1 << 64)
        assert result[2] == ((mix << 17) | (mix >> 47)) % (1 << 64)
        # the guest switched CR3 to its own PML4 ...
        assert sregs.cr3 == result[3] != 0x70000
        # ... and its write to virtual 0x7f0000000000 landed at physical 0x150000
        assert machine.memory.read_u64(0x150000) == 0x5AFEC0DE12345678 == result[4]
        translation = machine.vcpu.translate(0x7F00_0000_0000)
        assert translation.valid and translation.physical_address == 0x150000


@pytest.mark.skipif(detect_host().is_pvm,
                    reason="32-bit paging is unavailable on this host's software nested "
                           "virtualization (PVM): the guest would end in a shutdown; this test "
                           "runs on hardware virtualization (VT-x/AMD-V)")
def test_paged_mode_guest_writes_through_its_own_32bit_tables(guests):
    machine, stop, text = run_guest(guests / "paged.elf", mode="paged")
    with machine:
        sregs = machine.vcpu.get_sregs()
        assert stop.kind is StopKind.HALT
        assert cpu_mode_of(sregs) is CpuMode.PAGED
        assert sregs.cr0 & CR0_PG and sregs.cr4 & CR4_PSE and not sregs.cr4 & CR4_PAE
        assert machine.memory.read_u32(RESULT_ADDR) == 0x50414745
        assert machine.memory.read_u32(0x150000) == 0xC0FFEE32


def test_elf_class_decides_the_mode_unless_told(guests):
    with Machine() as machine:
        image = machine.load_guest(guests / "protected.elf")
        assert image.mode is CpuMode.PROTECTED
        assert cpu_mode_of(machine.vcpu.get_sregs()) is CpuMode.PROTECTED
    with Machine() as machine:
        machine.load_guest(guests / "long.elf")
        assert cpu_mode_of(machine.vcpu.get_sregs()) is CpuMode.LONG


def test_flat_binary_in_long_mode_from_python():
    # mov rax, 0x1122334455667788 ; hlt   (needs 64-bit code to assemble so)
    code = bytes.fromhex("48b88877665544332211") + b"\xfa\xf4"
    with Machine() as machine:
        machine.load_flat(code, 0x1000, mode="long")
        assert machine.run(timeout=30).kind is StopKind.HALT
        assert machine.vcpu.get_regs().rax == 0x1122334455667788


@pytest.mark.slow
@pytest.mark.parametrize("guest, args, expected", [
    ("real.bin", [], "real mode: CR0="),
    ("protected.elf", [], "protected mode: CR0="),
    ("long.elf", [], "long mode: fib(90)=0x27f80ddaa1ba7878"),
])
def test_each_mode_guest_runs_from_the_cli(guests, guest, args, expected):
    result = subprocess.run([sys.executable, "-m", "minikvm", "run", str(guests / guest), *args,
                             "--timeout", "60"], capture_output=True, text=True, cwd=ROOT,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout


@pytest.mark.slow
def test_flat_binary_with_mode_option_from_the_cli(tmp_path):
    guest = tmp_path / "long.bin"
    guest.write_bytes(bytes.fromhex("48b88877665544332211") + b"\xb0\x07\xe6\xf4")  # out 0xf4, 7
    result = subprocess.run([sys.executable, "-m", "minikvm", "run", str(guest), "--mode", "long"],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == (7 << 1) | 1, result.stderr


@pytest.mark.slow
def test_corrupt_elf_is_one_line_and_status_2(tmp_path, guests):
    data = bytearray((guests / "long.elf").read_bytes())
    data[0x20:0x28] = (0xFFFF_FFFF_0000).to_bytes(8, "little")   # e_phoff far past the end
    bad = tmp_path / "bad.elf"
    bad.write_bytes(bytes(data))
    result = subprocess.run([sys.executable, "-m", "minikvm", "run", str(bad)],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    truncated = tmp_path / "short.elf"
    truncated.write_bytes(bytes((guests / "long.elf").read_bytes()[:40]))
    result = subprocess.run([sys.executable, "-m", "minikvm", "run", str(truncated)],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
