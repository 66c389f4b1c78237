"""The README's Python example runs as printed (a reader's first program)."""

from __future__ import annotations

import contextlib
import io
import os
import re

import pytest

from tests.conftest import ROOT


def python_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def test_the_readme_has_a_python_example():
    assert python_blocks()


@pytest.mark.kvm
def test_the_readme_python_example_runs_and_ends_in_a_halt(guests, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for block in python_blocks():
            exec(compile(block, "README.md", "exec"), {"__name__": "readme"})   # noqa: S102
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("IO_OUT debugcon"), lines
    assert lines[-1] == "StopKind.HALT 0 the guest halted (hlt with interrupts off)", lines
    assert os.getcwd() == str(ROOT)
