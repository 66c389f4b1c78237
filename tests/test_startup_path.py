"""What ``minikvm run`` loads at its start: no class that costs time to
create and that a run does not use (issue 12: start-up)."""

import pickle
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

LOADED = """
import sys
from minikvm.cli import build_parser, command
command("run")
build_parser("run").parse_args(["run", "guest.bin"])
import minikvm.machine
from minikvm.kvm import uapi
from minikvm.x86 import flags
print(sorted(name for name in ("dataclasses", "inspect") if name in sys.modules))
import dataclasses
print(sorted(f"{m.__name__}.{name}" for m in list(sys.modules.values())
             if m is not None and m.__name__.startswith("minikvm")
             for name, obj in vars(m).items()
             if isinstance(obj, type) and dataclasses.is_dataclass(obj)
             and obj.__module__ == m.__name__))
print(sorted(name for name in ("KvmCap", "KvmGuestDbg", "KvmMemFlag", "KvmSystemEvent",
                               "KvmInternalError", "KvmVcpuEventValid") if name in vars(uapi))
      + sorted(name for name in ("Cr4", "Efer", "PageFlag") if name in vars(flags)))
"""


def test_the_run_path_creates_no_dataclass_and_no_rarely_used_enum():
    """``dataclasses`` (with ``inspect``, ``ast``, ``dis``) is not even
    imported: its classes compile their methods with ``exec`` at import."""
    result = subprocess.run([sys.executable, "-c", LOADED], capture_output=True, text=True,
                            timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    modules_loaded, dataclasses_seen, enums_built = (eval(line)
                                                     for line in result.stdout.splitlines())
    assert modules_loaded == []
    assert dataclasses_seen == []
    assert enums_built == []


UNUSED_STDLIB = """
import sys
from minikvm.cli import build_parser, command
command("run")
build_parser("run").parse_args(["run", "guest.bin"])
import minikvm.machine
print(sorted(name for name in ("pathlib", "urllib.parse", "ipaddress") if name in sys.modules))
"""


def test_the_run_path_does_not_import_pathlib():
    """``pathlib`` (which brings ``urllib.parse`` and ``ipaddress``) costs ~8 ms
    where nothing else at start-up loads it; the machine names ``Path`` only
    in annotations. Run without ``site`` (-S), whose ``.pth`` files may load it."""
    result = subprocess.run([sys.executable, "-S", "-c", UNUSED_STDLIB], capture_output=True,
                            text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def test_an_enum_built_on_first_use_is_the_module_s_own_and_pickles():
    from minikvm.kvm import uapi
    from minikvm.kvm.uapi import KVM_GUESTDBG_SINGLESTEP, KvmCap
    from minikvm.x86 import flags
    from minikvm.x86.flags import CR4_PAE, Cr4

    assert uapi.KvmCap is KvmCap and KvmCap.__qualname__ == "KvmCap"
    assert KVM_GUESTDBG_SINGLESTEP is uapi.KvmGuestDbg.KVM_GUESTDBG_SINGLESTEP
    assert CR4_PAE is Cr4.PAE is flags.Cr4.PAE and "Efer" in dir(flags)
    assert pickle.loads(pickle.dumps(KvmCap.KVM_CAP_SYNC_REGS)) is KvmCap.KVM_CAP_SYNC_REGS
    assert uapi.KVM_CAP_SYNC_REGS == KvmCap.KVM_CAP_SYNC_REGS
    assert uapi.KVM_CAP_MAX_VCPUS == KvmCap.KVM_CAP_MAX_VCPUS
    assert not hasattr(flags, "CR4_NO_SUCH_BIT") and not hasattr(uapi, "KvmNoSuchEnum")


RACE = """
import sys, threading
sys.setswitchinterval(1e-6)
from minikvm.kvm import uapi
barrier = threading.Barrier(8)
seen = []
def first_use():
    barrier.wait()
    seen.append(uapi.KvmCap)
threads = [threading.Thread(target=first_use) for _ in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(len({id(cls) for cls in seen}), all(cls is uapi.KvmCap for cls in seen))
"""


def test_threads_using_a_lazy_enum_first_at_once_all_get_the_module_s_one():
    """Built on first use must not mean built once per thread: members of
    a second class would fail ``isinstance`` against the module's."""
    result = subprocess.run([sys.executable, "-c", RACE], capture_output=True, text=True,
                            timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["1", "True"]
