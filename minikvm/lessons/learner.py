"""The learner's code, treated as a guest: imported, built, run, contained.

An exercise answer is either a guest (assembly or C, built with
:mod:`minikvm.guestbuild` in a temporary folder and run with a timeout) or
a Python function the checker imports and calls. Either way it may do
anything -- not build, loop forever, raise -- and each of those must come
back as a sentence. This module does the importing and the running; the
checks (:mod:`~minikvm.lessons.checks_cpu`,
:mod:`~minikvm.lessons.checks_devices`) say what the results mean.
"""

from __future__ import annotations

import importlib.util
import re
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from minikvm.core.stop import Stop
from minikvm.lessons.verdict import Verdict, not_yet

__all__ = ["FlatRun", "GUEST_TIMEOUT", "learner_function", "run_flat", "their_error"]

#: How long a learner's guest may run before the checker calls it stuck.
#: Read at each run (a test shortens it).
GUEST_TIMEOUT = 10.0


def _load_python(path: Path) -> ModuleType:
    """Import the learner's Python file (raises what its code raises)."""
    name = f"minikvm_exercise_{re.sub(r'[^0-9A-Za-z_]', '_', path.stem)}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def their_error(err: BaseException, path: Path) -> str:
    """``ValueError: ... (05_gdt.py line 12)``: the learner's own frame."""
    frames = [f for f in traceback.extract_tb(err.__traceback__)
              if Path(f.filename).resolve() == path.resolve()]
    where = f" ({path.name} line {frames[-1].lineno})" if frames else ""
    return f"{type(err).__name__}: {err}{where}"


def learner_function(path: Path, name: str) -> tuple[Callable[..., Any] | None, Verdict | None]:
    """The learner's function ``name`` from ``path``, or a verdict saying why not."""
    try:
        module = _load_python(path)
    except SyntaxError as err:
        return None, not_yet(f"{path.name} is not valid Python: {err.msg} (line {err.lineno})")
    except Exception as err:  # noqa: BLE001 - the learner's code may raise anything
        return None, not_yet(f"importing {path.name} failed: {their_error(err, path)}")
    function = getattr(module, name, None)
    if not callable(function):
        return None, not_yet(f"{path.name} has no function {name}(): keep the name of the "
                             "starting file's function")
    return function, None


@dataclass
class FlatRun:
    """What a run of a flat real-mode guest left behind."""

    stop: Stop
    output: bytes
    events: list
    cr0: int
    exit_value: int | None
    #: The seconds the run was given.
    timeout: float


def run_flat(binary: Path) -> FlatRun:
    """Run a flat real-mode binary at 0x1000 on a fresh machine (no irqchip),
    every exit recorded, for at most :data:`GUEST_TIMEOUT` seconds."""
    from minikvm.core.config import MachineConfig
    from minikvm.machine import Machine

    output: list[bytes] = []
    events: list = []
    timeout = GUEST_TIMEOUT
    config = MachineConfig(guest=str(binary), load_addr=0x1000, mode="real")
    with Machine.from_config(config, output=output.append) as machine:
        machine.listeners.append(events.append)
        stop = machine.run(timeout=timeout)
        return FlatRun(stop, b"".join(output), events, machine.vcpu.get_sregs().cr0,
                       machine.debug_exit.last_value, timeout)
