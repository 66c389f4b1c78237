"""gdb's reverse execution against the stub: ``reverse-stepi`` and ``reverse-continue``.

GNU gdb in batch mode (as in tests/test_gdb_client.py) against gdbdemo:
``monitor record on`` starts the recording, ``ReverseStep+`` and
``ReverseContinue+`` in ``qSupported`` let gdb send ``bs`` and ``bc``, and
the bounds of the history come back as ``replaylog`` stop replies, which gdb
words "No more reverse-execution history".
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess

import pytest

from tests.test_gdb_client import (  # noqa: F401 - the fixture is used
    GDB_TIMEOUT,
    attach_line,
    demo,
    gdb_command,
    minikvm,
    values,
)

pytestmark = [pytest.mark.kvm,
              pytest.mark.skipif(shutil.which("gdb") is None, reason="needs gdb (apt install gdb)")]

HELLO = b"hello from gdbdemo\n"


def test_reverse_stepi_after_stepis_restores_the_registers(demo):  # noqa: F811
    served = demo(["monitor record on", "print $pc", "print $rsp", "stepi", "stepi", "stepi",
                   "print $pc", "reverse-stepi", "reverse-stepi", "reverse-stepi",
                   "print $pc", "print $rsp", "reverse-stepi", "monitor record status"])
    pc0, rsp0, pc3, pc_back, rsp_back = values(served.output)
    assert pc0.endswith("<_start>") and pc3 != pc0
    assert (pc_back, rsp_back) == (pc0, rsp0)
    assert "No more reverse-execution history." in served.output
    assert "3 instructions recorded, at entry 0" in served.output


@pytest.mark.slow
def test_reverse_continue_stops_at_the_previous_breakpoint_and_replay_prints_nothing(demo):  # noqa: F811
    served = demo(["break count", "break twice", "monitor record on", "continue", "continue",
                   "reverse-continue", "print counter", "continue", "print counter",
                   "reverse-continue", "delete", "continue", "print counter", "continue"])
    hits = re.findall(r"Breakpoint (\d), (count|twice) \(", served.output)
    assert hits == [("1", "count"), ("2", "twice"), ("1", "count"), ("2", "twice"),
                    ("1", "count")]
    assert values(served.output) == ["0", "3", "3"]
    assert "No more reverse-execution history." in served.output     # the replay's end
    assert "exited with code 0125" in served.output                  # then live to the end
    assert served.printed == HELLO + b"twice(answer) = 42\n"         # each byte once


@pytest.mark.slow
def test_minikvm_run_gdb_reverse_lets_gdb_go_back_from_the_first_command(guests):
    elf = guests / "gdbdemo.elf"
    process = minikvm("run", str(elf), "--gdb", "127.0.0.1:0", "--reverse")
    try:
        port = int(re.search(r"127\.0\.0\.1:(\d+)", attach_line(process)).group(1))
        gdb = subprocess.run(gdb_command(elf, port, ["break twice", "continue", "reverse-stepi",
                                                     "monitor record status", "kill"]),
                             capture_output=True, text=True, timeout=GDB_TIMEOUT)
        process.communicate(timeout=GDB_TIMEOUT)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()
    assert "Breakpoint 1, twice" in gdb.stdout
    assert re.search(r"vCPU 0: [\d,]+ instructions recorded, at entry [\d,]+;", gdb.stderr)


@pytest.mark.slow
def test_reverse_without_gdb_is_a_usage_error(guests):
    process = minikvm("run", str(guests / "gdbdemo.elf"), "--reverse")
    out, err = process.communicate(timeout=GDB_TIMEOUT)
    assert process.returncode == 2 and out == ""
    assert err == ("minikvm: --reverse needs --gdb: reverse execution is driven from gdb "
                   "(or from the TUI's r key)\n")
