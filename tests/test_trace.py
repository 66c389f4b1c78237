"""The exit trace: every exit recorded with its meaning, bounded in memory,
optionally written as JSON Lines, summed up by reason, device and port."""

from __future__ import annotations

import argparse
import io
import json

import pytest
from rich.console import Console

from minikvm.cli import main
from minikvm.cli.trace import (
    DEFAULT_CAPACITY,
    add_trace_arguments,
    attach_trace_file,
    render_log,
    render_stats,
    trace_machine,
)
from minikvm.debug import trace
from minikvm.debug.trace import Tracer, TraceRecord, record_from_event
from minikvm.kvm.exits import Hlt, IoOut
from minikvm.machine import ExitEvent, Machine

GREETING = "Hello from a KVM guest, driven entirely from Python!\n"


def render(table) -> str:
    console = Console(file=io.StringIO(), width=200, record=True)
    console.print(table)
    return console.export_text()


# -- pure: records, statistics, tables ---------------------------------------------------

def fake_event(seq, exit, time, guest_time=0.001):
    return ExitEvent(seq, time, guest_time, exit, description=f"event {seq}", rip=0x1000 + seq)


def test_ring_buffer_keeps_the_most_recent_records_and_counts_the_rest():
    tracer = Tracer(capacity=3)
    for seq in range(1, 6):
        tracer(fake_event(seq, Hlt(False), float(seq)))
    assert [r.seq for r in tracer.records] == [3, 4, 5]
    assert tracer.seen == 5 and tracer.dropped == 2
    assert tracer.stats.total.count == 5   # statistics cover every exit


def test_vmm_time_is_the_gap_until_the_next_run():
    tracer = Tracer()
    tracer(fake_event(1, Hlt(False), time=1.0, guest_time=0.5))
    tracer(fake_event(2, Hlt(False), time=2.0, guest_time=0.25))   # next run began at 1.75
    entry = tracer.stats.by_reason["HLT"]
    assert entry.count == 2 and entry.guest_time == pytest.approx(0.75)
    assert entry.vmm_time == pytest.approx(0.75)


def test_include_leaves_out_other_reasons():
    tracer = Tracer(include={"HLT"})
    tracer(fake_event(1, IoOut(0x80, 1, 1, b"\0"), 1.0))
    tracer(fake_event(2, Hlt(False), 2.0))
    assert [r.reason for r in tracer.records] == ["HLT"]


def test_capacity_must_be_positive():
    with pytest.raises(ValueError):
        Tracer(capacity=0)


def test_record_without_a_description_gets_one_from_the_exit():
    event = ExitEvent(1, 0.0, 0.0, Hlt(False))
    assert "hlt" in record_from_event(event).description


def test_log_and_statistics_render_as_tables():
    records = [TraceRecord(1, 1.0, 0.0, 0x1000, "IO_OUT", "pio", 0xE9, 1, "out", 0x48, 1,
                           "debugcon", "data", "prints 'H'", "H")]
    text = render(render_log(records))
    assert "IO_OUT" in text and "out 0xe9/1" in text and "debugcon" in text
    assert "0x48 'H'" in text
    tracer = Tracer()
    tracer(fake_event(1, IoOut(0xE9, 1, 1, b"H"), 1.0))
    tables = [render(t) for t in render_stats(tracer)]
    assert "exits by reason" in tables[0] and "IO_OUT" in tables[0]
    assert any("port 0xe9" in t for t in tables)


def test_trace_arguments_parse():
    parser = argparse.ArgumentParser()
    parser.add_argument("guest")
    add_trace_arguments(parser)
    args = parser.parse_args(["g.bin", "--limit", "5", "--jsonl", "t.jsonl"])
    assert (args.limit, args.jsonl, args.capacity) == (5, "t.jsonl", 10_000)


def test_the_commands_default_capacity_is_the_tracers():
    # Written twice so that building the parser does not import the debugger.
    assert DEFAULT_CAPACITY == trace.DEFAULT_CAPACITY


# -- with KVM -----------------------------------------------------------------------------

@pytest.mark.kvm
def test_hello_trace_lists_each_debug_console_write_with_its_character(guests):
    with Machine(output=lambda data: None) as machine:
        machine.load_flat(guests / "hello.bin", 0x1000)
        with Tracer.attach(machine) as tracer:
            machine.run(timeout=30)
    writes = [r for r in tracer.records if r.reason == "IO_OUT"]
    assert [r.address for r in writes] == [0xE9] * len(GREETING)
    assert [r.value for r in writes] == list(GREETING.encode())
    assert "".join(r.char for r in writes) == GREETING.replace("\n", "\\n")
    assert all(r.device == "debugcon" and r.register == "data" and r.direction == "out"
               and r.size == 1 and r.rip is not None for r in writes)
    assert "'H'" in writes[0].description
    assert tracer.records[-1].reason == "HLT"
    assert [r.seq for r in tracer.records] == list(range(1, len(GREETING) + 2))
    assert tracer.stats.by_port["port 0xe9"].count == len(GREETING)
    assert tracer.stats.by_device["debugcon"].count == len(GREETING)
    assert tracer not in machine.listeners   # closing detached it


@pytest.mark.kvm
def test_trace_file_has_one_json_object_per_exit(guests, tmp_path):
    path = tmp_path / "trace.jsonl"
    with Machine(output=lambda data: None) as machine:
        machine.load_flat(guests / "hello.bin", 0x1000)
        tracer = attach_trace_file(machine, path)
        machine.run(timeout=30)
        tracer.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == len(GREETING) + 1
    assert lines[0]["reason"] == "IO_OUT" and lines[0]["char"] == "H"
    assert lines[0]["address"] == 0xE9 and lines[0]["device"] == "debugcon"
    assert lines[-1]["reason"] == "HLT"


@pytest.mark.kvm
def test_minikvm_trace_prints_the_log_and_the_statistics(guests, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "220")
    status = main(["trace", str(guests / "hello.bin"), "--limit", "5",
                   "--jsonl", str(tmp_path / "t.jsonl"), "--no-irqchip", "--timeout", "30"])
    text = capsys.readouterr().out
    assert status == 0
    assert f"exits ({len(GREETING) + 1} in all, first {len(GREETING) + 1 - 5} not shown)" in text
    assert "exits by reason" in text and "exits by device" in text and "port 0xe9" in text
    assert "guest halted" in text
    assert (tmp_path / "t.jsonl").read_text().count("\n") == len(GREETING) + 1


@pytest.mark.kvm
def test_minikvm_trace_refuses_a_missing_guest(tmp_path, capsys):
    assert main(["trace", str(tmp_path / "nope.bin")]) == 2
    assert "no such file" in capsys.readouterr().err


@pytest.mark.kvm
def test_exits_inside_single_steps_reach_the_trace(guests):
    from minikvm.debug.debugger import Debugger
    with Machine(output=lambda data: None) as machine:
        machine.load_flat(guests / "hello.bin", 0x1000)
        tracer = Tracer.attach(machine)
        debugger = Debugger(machine)
        records = debugger.step(60)
        debugger.close()
    writes = [r for r in tracer.records if r.reason == "IO_OUT"]
    assert writes and writes[0].char == "H"
    stepped_outs = [r for r in records if r.exits]
    assert stepped_outs[0].exits[0].rip == writes[0].rip == stepped_outs[0].old_rip


@pytest.mark.kvm
def test_minikvm_trace_refuses_an_unwritable_trace_file(guests, tmp_path, capsys):
    assert main(["trace", str(guests / "hello.bin"),
                 "--jsonl", str(tmp_path / "missing-dir" / "t.jsonl")]) == 2
    assert "No such file" in capsys.readouterr().err


@pytest.mark.kvm
def test_minikvm_run_trace_writes_json_lines(guests, tmp_path, capsys):
    path = tmp_path / "run.jsonl"
    assert main(["run", str(guests / "hello.bin"), "--trace", str(path)]) == 0
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert "".join(chr(line["value"]) for line in lines if line["device"] == "debugcon") == GREETING


@pytest.mark.kvm
def test_trace_machine_traces_a_machine_built_by_hand(guests):
    output = bytearray()
    console = Console(file=io.StringIO(), width=200, record=True)
    with Machine(output=output.extend) as machine:
        machine.load_flat(guests / "hello.bin", 0x1000)
        assert trace_machine(machine, limit=0, capacity=10, output=output, console=console) == 0
    text = console.export_text()
    assert "Hello from a KVM guest" in text and "exits by reason" in text
