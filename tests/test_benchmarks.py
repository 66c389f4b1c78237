"""The benchmarks build and run: their guests, their C baselines, their loops.

Nothing here is timed: a benchmark's figures are ratios measured on a quiet
machine (benchmarks/README.md), never asserted. These tests run each loop
with a small count and check what the benchmarks themselves check -- that
the Python and C loops did the same work (same final registers, same number
of changed registers, same RIPs) -- so a benchmark cannot rot unnoticed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from benchmarks import exit_latency, single_step, startup, virtio_blk
from benchmarks.common import Rounds, Timing, build_c, ratio_line
from minikvm.debug.probe import probe_debug_support
from minikvm.guestbuild import tools_available

pytestmark = [pytest.mark.kvm,
              pytest.mark.skipif(not tools_available() or shutil.which("gcc") is None,
                                 reason="needs gcc and binutils")]


@pytest.fixture(scope="module")
def stepping():
    guests, binary = single_step.build()
    return guests, binary, probe_debug_support().block_irq


def test_rounds_take_medians_and_ratios():
    rounds = Rounds()
    for cpu, wall in ((1, 10), (3, 30), (2, 20)):
        rounds.add("a", Timing(cpu, wall))
        rounds.add("c", Timing(1, 10))
    assert rounds.median("a") == Timing(2, 20)
    assert rounds.ratio("a", "c") == Timing(2, 2)
    assert ratio_line("(a)/(c)", Timing(1.2, 1.4), 1.3).endswith("met on CPU only")


def test_spread_pairs_the_rounds_ratios_not_the_medians():
    # a's rounds: 1, 4, 9; c's: 1, 2, 3. The medians' ratio is 4/2 = 2; round
    # by round the ratios are 1, 2 and 3: median 2, quartiles 1.5 and 2.5.
    rounds = Rounds()
    for a, c in ((1, 1), (4, 2), (9, 3)):
        rounds.add("a", Timing(a, a))
        rounds.add("c", Timing(c, c))
    spread = rounds.spread("a", "c")
    assert (spread.low, spread.median, spread.high, spread.rounds) == (1.5, 2, 2.5, 3)
    line = ratio_line("(a)/(c)", rounds.ratio("a", "c"), 2.5, spread)
    assert "target <= 2.5: met" in line
    assert line.endswith("[CPU per round 2.00 (quartiles 1.50-2.50 of 3)]")


@pytest.mark.parametrize("name", ["calls64", "loop64"])
def test_single_step_python_and_c_step_the_same_instructions(stepping, tmp_path, name):
    guests, binary, blockirq = stepping
    state = tmp_path / "state"
    single_step.write_state(guests[name], state)
    steps = 200
    _, python = single_step.debugger_loop(guests[name], steps)
    _, c = single_step.c_loop(binary, state, steps, blockirq)
    _, c_old = single_step.c_loop(binary, state, steps, blockirq, sync=False)
    _, bare = single_step.bare_loop(guests[name], steps, blockirq)
    assert python == c                              # RIP, RAX, RDX and the changed count
    assert python[:3] == c_old[:3] == bare[:3]
    assert python[3] > steps                        # RIP changes at every step, more besides


def test_single_step_on_the_cli_board_python_and_c_step_the_same_instructions(stepping,
                                                                              tmp_path):
    """``--irqchip``: both sides on the in-kernel irqchip and PIT, the C
    loop reading each instruction's first byte before it runs as the
    stepper then does (one read a step, a second after a prefix)."""
    guests, binary, blockirq = stepping
    state = tmp_path / "state"
    single_step.write_state(guests["calls64"], state)
    steps = 190
    _, python = single_step.debugger_loop(guests["calls64"], steps, irqchip=True)
    _, c = single_step.c_loop(binary, state, steps, blockirq, irqchip=True)
    assert python == c
    out = subprocess.run([str(binary), str(state), str(steps), str(int(blockirq)), "1", "1"],
                         check=True, capture_output=True, text=True).stdout.split()
    if blockirq:   # the stepper reads before each step (without, after one-byte steps)
        # from 0x1018: mov (REX.W), two xors, 9 passes of 19 with 8 REX.W each, then 16 with 6
        assert int(out[7]) == steps + 1 + 9 * 8 + 6  # reads: one a step, two after a prefix


def test_single_step_c_loop_steps_the_same_while_touching_memory(stepping, tmp_path):
    guests, binary, blockirq = stepping
    state = tmp_path / "state"
    single_step.write_state(guests["calls64"], state)
    plain, final = single_step.c_loop(binary, state, 200, blockirq)
    touching, touched_final = single_step.c_loop(binary, state, 200, blockirq, touch_kb=16)
    assert touched_final == final                   # the footprint study steps the same code
    with pytest.raises(subprocess.CalledProcessError):
        single_step.c_loop(binary, state, 200, blockirq, touch_kb=65537)   # over 64 MiB


def test_spread_refuses_rounds_that_do_not_pair():
    rounds = Rounds()
    rounds.add("a", Timing(1, 1))
    rounds.add("a", Timing(2, 2))
    rounds.add("c", Timing(1, 1))
    with pytest.raises(ValueError):
        rounds.spread("a", "c")


def test_calls64_mixes_one_byte_and_long_instructions(stepping):
    from minikvm.debug.debugger import Debugger

    guests, _, _ = stepping
    with single_step._machine(guests["calls64"]) as machine:
        debugger = Debugger(machine)
        lengths = [record.new_pc - record.pc for record in debugger.step(60)][-38:]
        debugger.close()
    # two passes of the loop, 19 instructions each: 9 one byte long, and all
    # but ret land on the next byte (the stepper's hlt check follows those)
    assert sum(1 for n in lengths if n == 1) == 2 * 8
    assert max(lengths) > 5


def test_single_step_breakdown_runs(stepping, capsys):
    guests, binary, blockirq = stepping
    single_step.breakdown("calls64", guests["calls64"], binary, 50, 1, blockirq)
    assert "record.changed" in capsys.readouterr().out


def test_single_step_footprint_study_runs_every_size(stepping, capsys):
    guests, binary, blockirq = stepping
    single_step.footprint("calls64", guests["calls64"], binary, 50, 1, blockirq)
    out = capsys.readouterr().out
    for kb in single_step.FOOTPRINTS:
        assert f"touching {kb} KiB before each step" in out
    assert "user+guest" in out and "kernel" in out


def test_single_step_instructions_reads_callgrinds_total_and_runs_one_rung(stepping, tmp_path):
    out_file = tmp_path / "callgrind.out"
    out_file.write_text("version: 1\nevents: Ir\nfl=x.c\nfn=f\n1 5\ntotals: 123456\n")
    assert single_step.callgrind_total(out_file) == 123456
    out_file.write_text("events: Ir\n")
    with pytest.raises(RuntimeError, match="no instruction total"):
        single_step.callgrind_total(out_file)
    # what --instructions runs under callgrind, twice per rung
    assert single_step.main(["--rung", "changed", "--steps", "20", "--blockirq", "1"]) == 0


def test_exit_latency_loops_see_the_same_exits():
    binary = exit_latency.build()
    exits = 300
    timing, python_rips = exit_latency.machine_timing(exits, listen=True)
    _, c_rips = exit_latency.c_loop(binary, exits, 2)
    assert python_rips == c_rips != 0
    assert exit_latency.machine_timing(exits, listen=True, words=True)[1] == c_rips
    assert timing.cpu > 0 and timing.wall > 0
    for mode in (0, 1):
        assert exit_latency.c_loop(binary, exits, mode)[1] == 0
    assert exit_latency.raw_loop(exits).wall > 0
    assert exit_latency.floor_loop(exits).wall > 0  # it counts the guest's exits itself
    assert exit_latency.machine_loop(exits) > 0     # what tui_overhead.py builds on


def test_startup_c_program_runs_the_guest_and_reports_its_teardown():
    spawner, binary = build_c("spawn"), build_c("startup")
    sample = startup.spawn(spawner, [str(binary), str(startup.GUEST)], dict(os.environ))
    assert sample.status == 0 and sample.output == startup.EXPECTED
    assert startup.teardown_of(sample) > 0
    assert sample.tail is not None and 0 < sample.tail < sample.wall
    assert 0 < sample.rss_mib < 8                   # the spawner's own RSS does not leak in
    study = startup.spawn(spawner, [str(binary), str(startup.GUEST), "reinject-off"],
                          dict(os.environ))
    assert study.status == 0 and study.output == startup.EXPECTED
    assert startup.reported(study, "reinject") > 0 and startup.teardown_of(study) > 0


#: Two events of ``perf script`` over ``perf record -a -e sched:sched_switch -g``
#: (each header is one line; the backslashes join them here): pid 7 sleeps at
#: the close of its VM in the PIT's mask notifier, pid 9 runs, and 7 is
#: switched back in 16 ms later.
PERF_SCRIPT = """\
startup  7 [001] 100.000000: sched:sched_switch: prev_comm=startup prev_pid=7 prev_prio=120 \
prev_state=D ==> next_comm=kworker/1:0 next_pid=9 next_prio=120
\tffffffff82265908 __schedule+0x628 ([kernel.kallsyms])
\tffffffff8140cd97 __synchronize_srcu+0xd7 ([kernel.kallsyms])
\tffffffff812f1111 kvm_pit_set_reinject+0x61 ([kernel.kallsyms])
\tffffffff812f2444 kvm_free_pit+0x44 ([kernel.kallsyms])
\tffffffff81284f00 kvm_destroy_vm+0x30 ([kernel.kallsyms])
\tffffffff81285000 kvm_vm_release+0x20 ([kernel.kallsyms])

kworker/1:0  9 [001] 100.016000: sched:sched_switch: prev_comm=kworker/1:0 prev_pid=9 \
prev_prio=120 prev_state=I ==> next_comm=startup next_pid=7 next_prio=120
\tffffffff82265908 __schedule+0x628 ([kernel.kallsyms])
"""


def test_the_tail_probe_times_minikvm_run_from_inside(capsys):
    # One run with KVM's 'blocking' statistic and one without: each prints
    # the guest's line, ends with status 0 and reports its tail's parts.
    spawner = build_c("spawn")
    subprocess.run(["make", "-s", "-C", str(startup.ROOT / "guests")], check=True)
    env = dict(os.environ, PYTHONPATH=str(startup.ROOT))
    runs = startup.tail_study(spawner, sys.executable, env, 1)
    out = capsys.readouterr().out
    assert "with    'blocking': halt noticed" in out
    assert "without 'blocking': halt noticed" in out and "after os._exit" in out
    for noticed, close, inside, tail in runs["with"] + runs["without"]:
        # Measured from the last output byte: the halt noticed before the
        # exit, the exit within the tail seen from outside. The output
        # thread writes that byte, and the CLI waits for it only after the
        # machine's close (cli/run.py, _drain): on a busy machine it comes
        # after the halt was noticed, even after the close, so neither is
        # bounded by it.
        assert noticed <= inside and 0 < close and 0 <= inside <= tail + 0.002


def test_a_sleep_is_put_down_to_the_kernel_code_it_slept_in():
    (seconds, place), = startup.sleeps(PERF_SCRIPT, 7)
    assert seconds == pytest.approx(0.016)
    assert place == "close: synchronize_srcu: PIT IRQ-mask notifier (ioapic.c)"
    assert startup.sleeps(PERF_SCRIPT, 9) == []     # 9 never slept
    assert startup.where_it_slept(["__schedule", "kvm_vcpu_block", "kvm_vcpu_halt"]).startswith(
        "guest halted")


@pytest.mark.slow
def test_startup_benchmark_runs(capsys):
    assert startup.main(["--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "(m)  minikvm run hello.bin" in out and "kernel VM teardown" in out


def test_virtio_blk_device_and_baseline_read_the_same_file(tmp_path):
    path = virtio_blk.make_disk(str(tmp_path / "disk.img"), 1024 * 1024)
    result = virtio_blk.bench_vmm_side(1024 * 1024, 64 * 1024, 4, path=path)
    wall, cpu = virtio_blk.bench_preadv(path, 1024 * 1024, 64 * 1024, 4)
    assert result.requests == 16 and result.device_cpu_seconds > 0
    assert wall > 0 and cpu >= 0


def test_virtio_blk_end_to_end_is_timed_to_the_last_exit():
    result = virtio_blk.bench_end_to_end(4)
    assert result.requests == 4 and result.seconds > 0
    assert result.halt_seconds >= 0
