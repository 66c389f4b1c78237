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
    MEANING_MIN_WIDTH,
    STATS_SHOWN,
    add_trace_arguments,
    attach_trace_file,
    render_log,
    render_stats,
    trace_machine,
)
from minikvm.core.events import describe_exit
from minikvm.core.stop import Stop, StopKind
from minikvm.debug import trace
from minikvm.debug.trace import StatTable, Tracer, TraceRecord, record_from_event
from minikvm.kvm.exits import Hlt, Interrupted, IoOut
from minikvm.machine import ExitEvent, Machine
from minikvm.x86.layout import RESULT_ADDR

GREETING = "Hello from a KVM guest, driven entirely from Python!\n"


def render(table, width=200) -> str:
    console = Console(file=io.StringIO(), width=width, record=True)
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
    # Written twice so that building the parser does not import the tracer.
    assert DEFAULT_CAPACITY == trace.DEFAULT_CAPACITY


# -- bounded statistics ---------------------------------------------------------------

def port_event(seq, port, time=None):
    return fake_event(seq, IoOut(port, 1, 1, b"\0"), float(seq) if time is None else time)


def test_a_statistics_table_keeps_at_most_twice_its_rows_whatever_the_guest_touches():
    tracer = Tracer(stats_rows=8)
    seq = 0
    for port in range(1000):             # a sweep: a new port with every exit
        seq += 1
        tracer(port_event(seq, 0x1000 + port))
        if port % 10 == 0:               # and one busy port all along
            seq += 1
            tracer(port_event(seq, 0xE9))
    table = tracer.stats.by_port
    assert len(table) <= 16
    assert table.folded >= 1000 - 16
    assert table["port 0xe9"].count == 100        # the busiest row stays, exact
    assert sum(e.count for _, e in table.items()) + table.other.count == seq == 1100
    assert tracer.stats.total.count == 1100


def test_vmm_time_of_a_row_folded_meanwhile_is_charged_to_other():
    table = StatTable(max_rows=1)
    table.entry("a").count += 5
    table.entry("b")
    table.entry("c")                      # folds "b" (and keeps "a")
    table.existing("b").vmm_time += 1.0
    assert "b" not in table and table.other.vmm_time == 1.0


def test_statistics_table_must_keep_a_row():
    with pytest.raises(ValueError):
        StatTable(max_rows=0)


def test_statistics_show_the_busiest_rows_and_sum_the_rest_in_other_with_a_note():
    tracer = Tracer(stats_rows=8)
    for seq in range(1, 501):
        tracer(port_event(seq, 0x1000 + seq))
    text = render(render_stats(tracer)[-1], width=100)
    rows = [line for line in text.splitlines() if line.startswith("port 0x")]
    assert len(rows) == STATS_SHOWN if STATS_SHOWN <= 16 else len(rows) <= 16
    other = next(line for line in text.splitlines() if line.startswith("other"))
    assert other.split()[1] == str(500 - len(rows))
    assert "note: the guest touched more than 16 different ports and addresses" in \
        " ".join(text.split())


def test_few_rows_get_no_other_row_and_no_note():
    tracer = Tracer()
    tracer(port_event(1, 0xE9))
    text = render(render_stats(tracer)[-1])
    assert "other" not in text and "note" not in text


# -- the log at 80 columns and in a pipe ----------------------------------------------------

LONG_MEANING = ("LSR read -> 0x60: transmitter holding register empty, transmitter empty, "
                "no data waiting")


def com1_record(seq):
    return TraceRecord(seq, 1.0 + seq / 1000, 0.0, 0x1000 + seq, "IO_IN", "pio", 0x3FD, 1, "in",
                       0x60, 1, "com1", "LSR", LONG_MEANING)


def test_log_at_80_columns_puts_the_meaning_under_each_exit_instead_of_squeezing_it():
    text = render(render_log([com1_record(i) for i in range(1, 4)]), width=80)
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines)
    # Each exit is its row plus the meaning, wrapped at word boundaries on
    # the full width: two lines of words, not a column 9 characters wide.
    body = lines[lines.index(next(line for line in lines if line.startswith("\u2500"))) + 1:]
    meaning_lines = [line.strip() for line in body if "com1.LSR" not in line]
    assert all(line.startswith("   ") for line in body if "com1.LSR" not in line)
    assert " ".join(meaning_lines) == " ".join([LONG_MEANING] * 3)
    assert len(meaning_lines) == 3 * 2
    assert len(lines) <= 3 + 3 * 3 + 1


def test_log_at_80_columns_moves_a_long_register_name_under_the_row_too():
    record = TraceRecord(7, 1.0, 0.0, 0x10012A, "MMIO_WRITE", "mmio", 0xD0000014, 4, "write",
                         1, 1, "virtio0-blk", "DeviceFeaturesSel",
                         "DeviceFeaturesSel write 0x1: DeviceFeatures now shows bits 32-63")
    lines = render(render_log([record]), width=80).splitlines()
    assert all(len(line) <= 80 for line in lines)
    row = next(i for i, line in enumerate(lines) if "MMIO_WRITE" in line)
    assert "write 0xd0000014/4" in lines[row]
    assert lines[row + 1].strip().startswith("[virtio0-blk.DeviceFeaturesSel] DeviceFeaturesSel")


def test_log_on_a_wide_screen_keeps_the_meaning_in_its_own_column():
    text = render(render_log([com1_record(i) for i in range(1, 4)]), width=200)
    rows = [line for line in text.splitlines() if "com1.LSR" in line]
    assert len(rows) == 3 and all(line.endswith(LONG_MEANING) for line in rows)


def test_log_wraps_a_long_meaning_inside_its_column_when_the_column_is_wide_enough():
    width = 66 + MEANING_MIN_WIDTH + 2
    text = render(render_log([com1_record(1)]), width=width)
    lines = text.splitlines()
    assert all(len(line) <= width for line in lines)
    row = lines.index(next(line for line in lines if "com1.LSR" in line))
    column = lines[row].index("LSR read")
    assert lines[row + 1][:column].strip() == ""          # the continuation is in the column
    assert lines[row + 1][column:].strip()


def test_log_lines_carry_no_trailing_blanks():
    text = render(render_log([com1_record(1)]), width=80)
    assert all(line == line.rstrip() for line in text.splitlines())


def test_a_newline_is_shown_the_same_way_in_the_value_and_the_meaning():
    record = TraceRecord(1, 1.0, 0.0, 0x1011, "IO_OUT", "pio", 0xE9, 1, "out", 0x0A, 1,
                         "debugcon", "data", "debug console: the guest prints '\\n'", "\\n")
    text = render(render_log([record]))
    assert "0xa '\\n'" in text and "prints '\\n'" in text
    assert "\\\\n" not in text


def test_ms_column_counts_from_the_start_of_the_run_even_when_earlier_exits_are_not_shown():
    records = [com1_record(i) for i in range(1, 4)]
    text = render(render_log(records[2:], start=1.0))
    assert "3.000" in text


def test_an_interrupted_run_that_found_the_guest_halted_is_called_the_halt_check():
    halted = Stop(StopKind.HALT, 0, "the guest halted (hlt with interrupts off)")
    text = describe_exit(Interrupted(), None, 0, halted)
    assert text.startswith("halt check") and "watchdog" in text and "interrupts off" in text
    timeout = Stop(StopKind.TIMEOUT, 124, "timeout")
    assert describe_exit(Interrupted(), None, 0, timeout).startswith("timeout")
    assert describe_exit(Interrupted(), None, 0).startswith("kick")
    assert "pause or timeout" not in describe_exit(Interrupted(), None, 0, halted)


def test_the_trace_describes_an_interrupted_exit_by_its_stop():
    event = ExitEvent(7, 1.0, 0.5, Interrupted(), description="KVM_RUN interrupted")
    event.stop = Stop(StopKind.HALT, 0, "the guest halted (hlt with interrupts off)")
    assert record_from_event(event).description.startswith("halt check")


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


@pytest.mark.kvm
def test_hello_trace_at_80_columns_is_two_lines_an_exit_and_ends_with_the_halt_check(
        guests, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["trace", str(guests / "hello.bin"), "--timeout", "30"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert all(len(line) <= 80 for line in lines)
    # 54 exits, or a few more when a halt check found the guest still busy.
    exits = int(lines[0].removeprefix("exits (").split()[0])
    assert exits >= len(GREETING) + 1
    # About two lines per exit (its row, its meaning) and a few dozen around
    # them; squeezed into a 9-character column the same trace took 245-299.
    assert len(lines) <= 2 * exits + 40, len(lines)
    last = next(i for i, line in enumerate(lines) if line.startswith(f"{exits} "))
    assert "INTR" in lines[last] and lines[last + 1].strip().startswith("halt check")
    assert any(line.startswith("ms: milliseconds") for line in lines)
    assert "0xa '\\n'" in "\n".join(lines)


# -- a guest that sweeps what nobody decodes --------------------------------------------------

SWEEP_PARAMS = RESULT_ADDR + 0x800
SWEEP_MAGIC = 0x5357454550


def sweep_machine(guests, mmio=0, ports=0, flood=0, mmio_base=0x4000_0000):
    """A machine with guests/c/sweep.c told how much to sweep (its parameter block)."""
    machine = Machine(output=lambda data: None)
    machine.load_guest(guests / "sweep.elf")
    for i, value in enumerate((SWEEP_MAGIC, mmio, mmio_base, 8, ports, 0x1000, flood)):
        machine.memory.write_u64(SWEEP_PARAMS + 8 * i, value)
    return machine


@pytest.mark.kvm
def test_a_guest_sweeping_unclaimed_addresses_and_ports_leaves_the_statistics_bounded(guests):
    with sweep_machine(guests, mmio=600, ports=600) as machine:
        with Tracer.attach(machine, stats_rows=32) as tracer:
            stop = machine.run(timeout=60)
        not_floating = machine.memory.read_u64(RESULT_ADDR + 32)
    assert stop.kind is StopKind.HALT, stop
    assert not_floating == 0                       # every unclaimed read floats to all ones
    stats = tracer.stats
    assert len(stats.by_port) <= 64 and stats.by_port.folded > 1200 - 64
    def counted(table):
        return sum(entry.count for _, entry in table.items()) + table.other.count

    # Totals stay exact: every exit is in a row or in "other".
    assert counted(stats.by_reason) == stats.total.count == tracer.seen
    assert counted(stats.by_port) == sum(1 for r in tracer.records if r.address is not None)
    assert counted(stats.by_device) == sum(1 for r in tracer.records if r.device)
    assert stats.by_device["unclaimed"].count == 2 * 600 + 2 * 600
    text = "".join(render(table, width=100) for table in render_stats(tracer))
    assert len(text.splitlines()) < 3 * (STATS_SHOWN + 10)


@pytest.mark.slow
@pytest.mark.kvm
def test_minikvm_trace_of_a_sweeping_guest_prints_a_bounded_report_and_a_full_jsonl(
        guests, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    jsonl = tmp_path / "sweep.jsonl"
    assert main(["trace", str(guests / "sweep.elf"), "--limit", "0", "--jsonl", str(jsonl),
                 "--timeout", "60"]) == 0
    out = capsys.readouterr().out
    # 2048 MMIO addresses and 2048 ports (the guest's defaults) would be
    # 4096 rows, one per address: the report stays a page long.
    assert len(out.splitlines()) < 80 and len(out) < 8000, out
    assert "note: the guest touched more than 512 different ports and addresses" in \
        " ".join(out.split())
    # The JSON Lines file is not summarised: one object per exit.
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    mmio = {line["address"] for line in lines if line["space"] == "mmio"}
    ports = {line["address"] for line in lines if line["space"] == "pio"
             and line["device"] == "unclaimed"}
    assert len(mmio) == 2048 and len(ports) == 2048
    assert sum(1 for line in lines if line["device"] == "unclaimed") == 4 * 2048


@pytest.mark.slow
@pytest.mark.kvm
def test_minikvm_run_trace_of_a_sweeping_guest_writes_every_exit(guests, tmp_path, capfd):
    path = tmp_path / "run.jsonl"
    assert main(["run", str(guests / "sweep.elf"), "--trace", str(path),
                 "--timeout", "60"]) == 0
    out = capfd.readouterr().out
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["seq"] for line in lines] == list(range(1, len(lines) + 1))
    assert sum(1 for line in lines if line["reason"] in ("MMIO_READ", "MMIO_WRITE")) == 2 * 2048
    printed = "".join(chr(line["value"]) for line in lines if line["device"] == "debugcon")
    assert printed == out
