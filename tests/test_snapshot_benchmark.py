"""benchmarks/snapshot.py runs: it saves, restores and resumes both guests.

Nothing is timed here (benchmarks/README.md); one round of the smaller
guest checks the benchmark has not rotted, and that a restored machine
runs on to its next exit.
"""

from __future__ import annotations

import pytest

from benchmarks import snapshot

pytestmark = [pytest.mark.kvm, pytest.mark.slow]


def test_the_snapshot_benchmark_runs_one_round(guests, tmp_path, capsys):
    snapshot.measure("2 MiB", snapshot.SIZES["2 MiB"], 1, str(tmp_path))
    out = capsys.readouterr().out
    assert "2 MiB guest, hello.bin after 5 exits: file" in out
    assert "(r)/(b)" in out and "(f) restore + run to the first exit" in out
