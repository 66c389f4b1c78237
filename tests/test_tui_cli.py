"""``minikvm tui`` options without a terminal: scripted actions and --record."""

from __future__ import annotations

import pytest

from minikvm.cli import main as minikvm_main
from minikvm.cli.tui import parse_screen_size

pytestmark = pytest.mark.kvm


def main(argv: list[str]) -> int:
    """``minikvm tui ARGV...``, in this process."""
    return minikvm_main(["tui", *argv])


def test_screen_sizes_are_columns_by_rows():
    import argparse
    assert parse_screen_size("120x36") == (120, 36)
    for bad in ("120", "10x10", "axb", "1000x40"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_screen_size(bad)


def test_record_saves_the_screen_after_the_actions_in_order(guests, tmp_path, capsys):
    out = tmp_path / "screen.txt"
    status = main([str(guests / "hello.bin"), "--step", "2", "--next", "3",
                   "--record", str(out), "--size", "100x30"])
    assert status == 0
    text = out.read_text()
    assert "steps 2" in text and "exits 3" in text
    assert "debug console: the guest prints 'l'" in text
    assert "saved the screen" in capsys.readouterr().out


def test_record_svg_of_a_guest_run_to_a_breakpoint(guests, tmp_path):
    out = tmp_path / "screen.svg"
    assert main([str(guests / "hello.bin"), "--break", "0x1013", "--cont",
                 "--record", str(out)]) == 0
    svg = out.read_text()
    assert svg.startswith("<svg") and "breakpoint" in svg


@pytest.mark.slow
def test_the_docs_picture_can_be_regenerated(tmp_path):
    from minikvm.tui.record import main as record
    out = tmp_path / "tui.svg"
    assert record([str(out)]) == 0
    assert "hello.bin" in out.read_text()


@pytest.mark.parametrize("extra,message", [
    (["--record", "x.png"], "can be saved as .svg, .html or .txt"),
    (["--break", "nowhere", "--record", "x.svg"], "--break nowhere"),
    (["--memory", "p:zz", "--record", "x.svg"], "--memory p:zz"),
    (["--vcpu", "1", "--record", "x.svg"], "--vcpu 1: no vCPU 1: this machine has vCPU 0 to 0"),
    ([], "tui needs a terminal"),
])
def test_mistakes_are_one_line_and_status_2(guests, capsys, monkeypatch, extra, message):
    import io
    monkeypatch.setattr("sys.stdin", io.StringIO())      # never a terminal here
    assert main([str(guests / "hello.bin"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_a_missing_guest_file_is_said_before_anything_else(capsys, tmp_path):
    assert main([str(tmp_path / "missing.bin")]) == 2
    assert "no such file" in capsys.readouterr().err


@pytest.mark.slow
def test_record_the_ap_of_the_smp_guest_after_vcpu_0_woke_it(guests, tmp_path):
    out = tmp_path / "smp.txt"
    assert main([str(guests / "smp.elf"), "--smp", "2", "--cont", "--timeout", "1",
                 "--vcpu", "1", "--step", "1", "--record", str(out)]) == 0
    text = out.read_text()
    assert "vCPU 1 of 2" in text and "vCPU 1/2 (runnable) registers" in text
    assert "stepped 'cli' at 0x8000" in text
