"""Start-up: what ``minikvm run hello.bin`` costs as a whole process, against
Python's own start and a C program that runs the same guest, in one run.

Each round starts, in this order, one process of each:

  (py)  ``python3 -c pass`` -- Python's own start and exit, the floor of any
        Python command;
  (m)   ``python3 -m minikvm run guests/build/hello.bin`` -- the defaults,
        in-kernel irqchip on: the guest prints a line, then ``cli; hlt``;
  (c)   ``startup.c``: the same guest, same VM set-up (irqchip, PIT, CPUID,
        sync regs), halt noticed after 1 ms of quiet as minikvm's watchdog
        does without KVM's ``blocking`` statistic (with it, minikvm notices
        ~1 ms sooner: ``--tail``), the debug console written byte by byte;
  (mt)  (m) with a terminal on stdin, as typed at a shell;
and, for information,
  (m0)  (m) with no ``.pyc`` to be found (``PYTHONPYCACHEPREFIX`` set to an
        empty directory): what this environment's PYTHONDONTWRITEBYTECODE=1
        costs when nobody compiled the package;
  (c-r) a study of the kernel's cost, not what minikvm does: (c) with the
        PIT's tick reinjection turned off right after ``KVM_CREATE_PIT2``
        (``startup.c reinject-off``). Closing a VM whose PIT reinjects waits
        for two SRCU grace periods back to back, the second often a normal
        one of a few jiffies (``startup.c`` says why, with the kernel files); with
        reinjection off the close is short and the ``KVM_REINJECT_CONTROL``
        ioctl waits instead. minikvm keeps reinjection on: the PIT's default,
        and QEMU's (``lost_tick_policy=delay``).

Per process we take wall time (spawn to ``wait4``), CPU time and peak RSS
(``wait4``'s rusage of the child), and for (m) and (c) the *tail*: from the
arrival of the guest's last output byte on our pipe (the guest's last
instruction but ``cli; hlt``) to the process's exit. The tail holds the halt
detection, closing the VM -- the kernel's teardown, which (c) reports on its
own (``teardown_ns``) -- and the interpreter's exit.

**.pyc files.** This environment sets PYTHONDONTWRITEBYTECODE=1, so Python
would compile every module of minikvm at every start unless the ``.pyc``
files exist. An installed package has them, so we first run
``python -m compileall -q minikvm`` (into ``minikvm/**/__pycache__``, which
git ignores); (m0) shows the cost without them. Python itself is
``sys.executable`` (the real binary: a pyenv shim adds ~100 ms of bash).

**The spawner.** Each process is started by ``spawn.c``, a small C
program that forks, execs, reads the output as it comes and takes the
child's rusage: Linux carries a parent's peak RSS into its child at
``exec`` (``exec_mmap`` records the old mm's high-water mark), so the
parent of a measured process must be small, and a small parent also reads
the pipe without delay. (mt) gives the command a pseudo-terminal as stdin,
as an interactive shell does (``minikvm run`` then reads the keyboard).

Targets: (m) wall <= 120 ms, (m) RSS <= 20 MiB, (m) tail <= 5 ms.

**Where the process sleeps** (``--where N``, needs ``perf`` and root): N
runs each of (c), (c-r) and (m) under ``perf record -a -e
sched:sched_switch -g``; every sleep of the process over 0.2 ms is put
down to the kernel code it slept in (:func:`where_it_slept`), e.g. the
PIT's IRQ-mask notifier at the close. Sleeps are longer on a loaded machine
(the wake-up waits for a CPU); how many sleeps, and where, say more.

**Where the tail goes** (``--tail N``): N runs of (m) with KVM's
``blocking`` statistic and N without (the runner made to find none), each
timed from inside (:data:`TAIL_PROBE`): the last output byte to the halt
noticed, the machine's close (the kernel's VM teardown), and the tail
measured outside: minikvm's code after the last byte (the close left
out), the close, and the kernel ending the process after ``os._exit``.

    python benchmarks/startup.py [--repeat R] [--phases] [--tail N] [--where N]
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import build_c, load_average  # noqa: E402

GUEST = ROOT / "guests" / "build" / "hello.bin"
EXPECTED = b"Hello from a KVM guest, driven entirely from Python!\n"
TARGET_WALL = 0.120
TARGET_RSS_MIB = 20
TARGET_TAIL = 0.005
#: A VM teardown longer than this waited for an SRCU grace period (see spread).
SLOW_TEARDOWN = 0.005

#: The phases of one ``minikvm run`` inside the process (--phases).
PHASES = r"""
import sys, time
t0 = time.perf_counter()
from minikvm.cli import build_parser, command, command_named
from minikvm.cli.options import config_from_args
from minikvm.machine import Machine
command("run")
t1 = time.perf_counter()
argv = ["run", sys.argv[1]]
args = build_parser(command_named(argv)).parse_args(argv)   # as minikvm.cli.main does
machine = Machine.from_config(config_from_args(args), output=lambda data: None)
t2 = time.perf_counter()
stop = machine.run()
t3 = time.perf_counter()
machine.close()
t4 = time.perf_counter()
print(f"{t1 - t0} {t2 - t1} {t3 - t2} {t4 - t3} {stop.kind.value}")
"""


#: ``minikvm run`` with its tail timed from inside (--tail): the last byte
#: the output thread wrote, the run's end (the watchdog closed: the halt
#: noticed), the machine's close (the kernel's VM teardown) and the
#: ``os._exit`` that ends it, as seconds after the last byte, on stderr.
#: ``--no-stats`` makes the runner find no ``blocking`` statistic, as on a
#: kernel without one.
TAIL_PROBE = r"""
import os, sys, time
import minikvm.core.runner as runner
import minikvm.machine as machine
marks = {}
def timed(cls, name, label):
    original = getattr(cls, name)
    def wrapper(self, *args, **kwargs):
        marks.setdefault(label + ">", time.perf_counter())
        try:
            return original(self, *args, **kwargs)
        finally:
            marks[label + "<"] = time.perf_counter()
    setattr(cls, name, wrapper)
timed(runner.Watchdog, "close", "run end")
timed(machine.Machine, "close", "close")
if sys.argv[2] == "--no-stats":
    runner.VcpuRunner._find_blocking = lambda self: None
write = os.write
def counted(fd, data):
    done = write(fd, data)
    if fd == 1:
        marks["last byte"] = time.perf_counter()
    return done
os.write = counted
leave = os._exit
def report_and_leave(status):
    last = marks["last byte"]
    parts = (marks["run end>"] - last, marks["close<"] - marks["close>"],
             time.perf_counter() - last)
    write(2, ("tailprobe " + " ".join(str(part) for part in parts) + "\n").encode())
    leave(status)
os._exit = report_and_leave
from minikvm.cli import entry
sys.argv = ["minikvm", "run", sys.argv[1]]
entry()   # as `python -m minikvm run` does, to its os._exit
"""


@dataclass(frozen=True)
class Sample:
    """One process: wall and CPU seconds, peak RSS in MiB, the tail (seconds
    from the last output byte to the exit; None without output), its
    output, stderr and exit status."""

    wall: float
    cpu: float
    rss_mib: float
    tail: float | None
    output: bytes
    stderr: bytes
    status: int


def spawn(spawner: Path, argv: list[str], env: dict[str, str], terminal: bool = False) -> Sample:
    """Run ``argv`` to its end under ``spawn.c`` (see there: fork, exec,
    stdout read as it comes, wait4), stdin /dev/null or a fresh terminal."""
    result = subprocess.run([str(spawner), *(["-t"] if terminal else []), *argv], env=env,
                            capture_output=True, check=True)
    lines = result.stderr.splitlines()
    if not lines or not lines[-1].startswith(b"spawn "):
        raise RuntimeError(f"spawn failed: {result.stderr!r}")
    wall, cpu, rss, tail, status = (int(word) for word in lines[-1].split()[1:])
    return Sample(wall / 1e9, cpu / 1e9, rss / 1024, None if tail < 0 else tail / 1e9,
                  result.stdout, b"\n".join(lines[:-1]), status)


def reported(sample: Sample, name: str) -> float:
    """The seconds the C program reported on its ``NAME_ns N`` line."""
    for line in sample.stderr.decode(errors="replace").splitlines():
        if line.startswith(f"{name}_ns "):
            return int(line.split()[1]) / 1e9
    raise RuntimeError(f"the C program did not report {name}: {sample.stderr!r}")


def teardown_of(sample: Sample) -> float:
    """The seconds the C program reported for closing its VM."""
    return reported(sample, "teardown")


def check(name: str, sample: Sample) -> Sample:
    if sample.status != 0:
        raise RuntimeError(f"{name} exited with {sample.status}: {sample.stderr.decode()}")
    return sample


def median(values) -> float:
    return statistics.median(values)


def spread(seconds: list[float]) -> str:
    """Median, min and max of teardown times, and how many were slow.

    The kernel's VM teardown is bimodal here (both in the C program and in
    minikvm, with the same ioctls in the same order): it is fast (~1 ms)
    unless it waits for a normal, not expedited, SRCU grace period, a few
    jiffies (~13-17 ms at HZ=250). Two such waits are known (kernel 6.18):
    freeing the PIT removes its IRQ notifiers with two
    ``synchronize_srcu(&kvm->irq_srcu)`` back to back, and SRCU expedites
    only the first (row (c-r) and ``startup.c`` study it; ``--where`` finds
    it at the close); and ``kvm_destroy_vm`` ends with
    ``srcu_barrier(&kvm->srcu)`` (virt/kvm/kvm_main.c), which waits for the
    ``call_srcu`` that ``kvm_io_bus_register_dev`` queued to free each
    replaced bus (seen in round 5, in no ``--where`` run since). The count
    of slow ones says more than a median."""
    slow = sum(1 for value in seconds if value > SLOW_TEARDOWN)
    return (f"median {median(seconds) * 1e3:.1f} ms (min {min(seconds) * 1e3:.1f}, "
            f"max {max(seconds) * 1e3:.1f}); {slow} of {len(seconds)} over "
            f"{SLOW_TEARDOWN * 1e3:.0f} ms")


def where_it_slept(stack: list[str]) -> str:
    """The kernel code a sleep was in, from the functions on its stack
    (innermost first, as ``perf script`` prints them), in the words of the
    kernel files: ``close:`` when it was closing the VM (``kvm_vm_release``).

    ``kvm_unregister_irq_mask_notifier`` (arch/x86/kvm/ioapic.c in 6.18,
    moved there from irq_comm.c in 2025) ends by calling
    ``synchronize_srcu``, a tail call: its own frame is gone, and
    ``__synchronize_srcu`` sits right under ``kvm_pit_set_reinject``."""
    phase = "close: " if "kvm_vm_release" in stack else ""
    if "srcu_barrier" in stack:
        return phase + "srcu_barrier(&kvm->srcu): call_srcu of replaced I/O buses (kvm_main.c)"
    if "__synchronize_srcu" in stack:
        caller = stack[stack.index("__synchronize_srcu") + 1:][:1] or ["?"]
        named = {"kvm_pit_set_reinject": "PIT IRQ-mask notifier (ioapic.c)",
                 "kvm_unregister_irq_ack_notifier": "PIT IRQ-ack notifier (eventfd.c)"}
        return f"{phase}synchronize_srcu: {named.get(caller[0], caller[0])}"
    if "kvm_vcpu_block" in stack:
        return "guest halted in KVM_RUN (until the watchdog's halt check)"
    kvm = [name for name in stack if name.startswith("kvm_")]
    return phase + (kvm[0] if kvm else "elsewhere (page faults, pipes, threads)")


def sleeps(perf_script: str, pid: int) -> list[tuple[float, str]]:
    """Each sleep of thread ``pid`` in the text of ``perf script`` over a
    system-wide ``sched:sched_switch -g`` record: (seconds from its switch
    out in state D or S to its next switch in, :func:`where_it_slept`)."""
    events = []
    for block in perf_script.split("\n\n"):
        lines = block.strip().splitlines()
        match = re.search(r"\s(\d+\.\d+): sched:sched_switch: .*prev_pid=(\d+) .*"
                          r"prev_state=(\S+) ==> .*next_pid=(\d+)", lines[0]) if lines else None
        if match:
            stack = [line.split()[1].split("+")[0] for line in lines[1:] if len(line.split()) > 1]
            events.append((float(match[1]), int(match[2]), match[3], int(match[4]), stack))
    events.sort(key=lambda event: event[0])
    found = []
    for i, (time, prev, state, _, stack) in enumerate(events):
        if prev == pid and state[:1] in ("D", "S"):
            back = next((e[0] for e in events[i + 1:] if e[3] == pid), None)
            if back is not None:
                found.append((back - time, where_it_slept(stack)))
    return found


def where(commands: dict[str, list[str]], runs: int, env: dict[str, str]) -> None:
    """Run each command ``runs`` times under ``perf record -a``; print its
    sleeps over 0.2 ms by place: how many, median, min-max."""
    with tempfile.TemporaryDirectory() as scratch:
        data, pidfile = f"{scratch}/perf.data", f"{scratch}/pid"
        for label, command in commands.items():
            found: dict[str, list[float]] = {}
            for _ in range(runs):
                # the shell writes its pid, then becomes the command (same pid)
                script = f"echo $$ > {pidfile}; exec " + " ".join(map(shlex.quote, command))
                subprocess.run(["perf", "record", "-q", "-a", "-o", data, "-e",
                                "sched:sched_switch", "-g", "--", "sh", "-c", script], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
                text = subprocess.run(["perf", "script", "-i", data], capture_output=True,
                                      text=True, check=True).stdout
                for seconds, place in sleeps(text, int(Path(pidfile).read_text())):
                    if seconds > 0.0002:
                        found.setdefault(place, []).append(seconds * 1e3)
            print(f"{label}: sleeps over 0.2 ms in {runs} runs (how many, median, min-max ms)")
            for place, values in sorted(found.items()):
                print(f"  {len(values):3d} {median(values):6.1f} {min(values):5.1f}-"
                      f"{max(values):5.1f}  {place}")


def tail_study(spawner: Path, python: str, env: dict[str, str],
               rounds: int) -> dict[str, list[tuple[float, float, float, float]]]:
    """``--tail N``: where the tail of ``minikvm run`` goes, with KVM's
    ``blocking`` statistic and without, alternated. Per run, in seconds:
    the last output byte to the halt noticed (the watchdog), the machine's
    close (the kernel's VM teardown, timed inside), the last byte to the
    ``os._exit`` (inside), and the tail measured outside (to the exit seen
    by ``spawn.c``). Printed as medians: the halt noticed; the close; the
    Python side of the tail less the close (everything minikvm's code does
    after the last byte); and what comes after ``os._exit`` (the kernel
    ending the process: its memory, its last fds, ``wait4``). Returns the
    runs."""
    parts: dict[str, list[tuple[float, float, float, float]]] = {"with": [], "without": []}
    for _ in range(rounds):
        for key, flag in (("with", "--stats"), ("without", "--no-stats")):
            sample = check(f"tail probe {key}", spawn(
                spawner, [python, "-c", TAIL_PROBE, str(GUEST), flag], env))
            line = next((line for line in sample.stderr.decode().splitlines()
                         if line.startswith("tailprobe ")), None)
            if line is None or sample.tail is None or sample.output != EXPECTED:
                raise RuntimeError(f"the tail probe failed: {sample.stderr!r}")
            noticed, close, inside = (float(word) for word in line.split()[1:])
            parts[key].append((noticed, close, inside, sample.tail))
    print(f"where the tail of (m) goes, {rounds} runs each, alternated (median ms):")
    for key, rows in parts.items():
        ms = lambda index: median(row[index] for row in rows) * 1e3  # noqa: E731
        python_side = median(row[2] - row[1] for row in rows) * 1e3
        after_exit = median(row[3] - row[2] for row in rows) * 1e3
        print(f"  {key:<7} 'blocking': halt noticed {ms(0):5.2f}, Python side less the close "
              f"{python_side:5.2f}, after os._exit {after_exit:5.2f}; close "
              f"{spread([row[1] for row in rows])}; whole tail {ms(3):5.1f} "
              f"(target <= {TARGET_TAIL * 1e3:.0f})")
    return parts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--phases", action="store_true",
                        help="also time the phases inside one minikvm run (import, set-up, "
                             "run, close)")
    parser.add_argument("--tail", type=int, default=0, metavar="N",
                        help="then run (m) N times with KVM's 'blocking' statistic and N "
                             "without, timing its tail from inside: the halt noticed, the "
                             "VM's close, the rest")
    parser.add_argument("--where", type=int, default=0, metavar="N",
                        help="then run (c), (c-r) and (m) N times each under perf (root) and "
                             "say where in the kernel each process slept")
    args = parser.parse_args(argv)
    subprocess.run(["make", "-s", "-C", str(ROOT / "guests")], check=True)
    binary = build_c("startup")
    spawner = build_c("spawn")
    python = sys.executable
    subprocess.run([python, "-m", "compileall", "-q", str(ROOT / "minikvm")], check=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with tempfile.TemporaryDirectory() as empty:
        cold_env = dict(env, PYTHONPYCACHEPREFIX=empty, PYTHONDONTWRITEBYTECODE="1")
        minikvm_run = [python, "-m", "minikvm", "run", str(GUEST)]
        variants = {
            "py": ([python, "-c", "pass"], env, False),
            "m": (minikvm_run, env, False),
            "c": ([str(binary), str(GUEST)], env, False),
            "mt": (minikvm_run, env, True),
            "m0": (minikvm_run, cold_env, False),
            "cr": ([str(binary), str(GUEST), "reinject-off"], env, False),
        }
        samples: dict[str, list[Sample]] = {key: [] for key in variants}
        for _ in range(args.repeat):
            for key, (command, environment, terminal) in variants.items():
                sample = check(key, spawn(spawner, command, environment, terminal))
                if key != "py" and sample.output != EXPECTED:
                    raise RuntimeError(f"{key} printed {sample.output!r}")
                samples[key].append(sample)

    print(f"start-up: {args.repeat} interleaved rounds (median); {load_average()}")
    labels = {"py": "(py) python3 -c pass", "m": "(m)  minikvm run hello.bin",
              "c": "(c)  C, same guest", "mt": "(mt) (m), stdin a terminal",
              "m0": "(m0) (m) without .pyc files",
              "cr": "(c-r) (c), PIT reinjection off"}
    for key, label in labels.items():
        rows = samples[key]
        tail = [s.tail for s in rows if s.tail is not None]
        tail_text = f"  tail {median(tail) * 1e3:6.1f} ms" if tail else ""
        print(f"  {label:<30} wall {median(s.wall for s in rows) * 1e3:6.1f} ms  "
              f"CPU {median(s.cpu for s in rows) * 1e3:6.1f} ms  "
              f"RSS {median(s.rss_mib for s in rows):5.1f} MiB{tail_text}")
    teardowns = [teardown_of(s) for s in samples["c"]]
    teardown = median(teardowns)
    print(f"  kernel VM teardown (C, close of vCPU/VM fds): {spread(teardowns)}")
    study = samples["cr"]
    print("  (c-r), a study of the kernel's cost, not what minikvm does (it keeps the PIT's\n"
          "  reinjection on, as QEMU does): with reinjection turned off after KVM_CREATE_PIT2,\n"
          f"    teardown {spread([teardown_of(s) for s in study])}\n"
          f"    KVM_REINJECT_CONTROL {spread([reported(s, 'reinject') for s in study])}")
    m, py, c = samples["m"], samples["py"], samples["c"]
    wall_m, cpu_m = median(s.wall for s in m), median(s.cpu for s in m)
    print(f"(m)/(py)   CPU {cpu_m / median(s.cpu for s in py):5.2f}  "
          f"wall {wall_m / median(s.wall for s in py):5.2f}")
    print(f"(m)/(c)    CPU {cpu_m / median(s.cpu for s in c):5.2f}  "
          f"wall {wall_m / median(s.wall for s in c):5.2f}")
    rss = median(s.rss_mib for s in m)
    tail_m, tail_c = median(s.tail for s in m), median(s.tail for s in c)
    verdict = lambda ok: "met" if ok else "MISSED"  # noqa: E731
    print(f"(m) wall {wall_m * 1e3:.1f} ms, target <= {TARGET_WALL * 1e3:.0f} ms: "
          f"{verdict(wall_m <= TARGET_WALL)}")
    print(f"(m) RSS {rss:.1f} MiB, target <= {TARGET_RSS_MIB} MiB: "
          f"{verdict(rss <= TARGET_RSS_MIB)}")
    print(f"(m) tail {tail_m * 1e3:.1f} ms, target <= {TARGET_TAIL * 1e3:.0f} ms: "
          f"{verdict(tail_m <= TARGET_TAIL)}; (c) tail {tail_c * 1e3:.1f} ms; "
          f"(m) tail less the kernel teardown {(tail_m - teardown) * 1e3:.1f} ms")
    if args.phases:
        phases = []
        for _ in range(args.repeat):
            out = subprocess.run([python, "-c", PHASES, str(GUEST)], env=env, check=True,
                                 capture_output=True, text=True).stdout.split()
            phases.append([float(word) for word in out[:4]])
        names = ("import", "machine set-up + load", "run to the halt", "close (VM teardown)")
        print("phases inside one minikvm run (median):")
        for i, name in enumerate(names):
            print(f"  {name:<24} {median(p[i] for p in phases) * 1e3:6.1f} ms")
        print(f"  close, all runs: {spread([p[3] for p in phases])}")
    if args.tail:
        tail_study(spawner, python, env, args.tail)
    if args.where:
        where({"(c)": [str(binary), str(GUEST)],
               "(c-r)": [str(binary), str(GUEST), "reinject-off"],
               "(m)": minikvm_run}, args.where, env)
    print(load_average())
    return 0


if __name__ == "__main__":
    sys.exit(main())
