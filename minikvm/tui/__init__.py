"""``minikvm tui``: a full-screen debugger for a guest, built on rich.

* :mod:`~minikvm.tui.state` -- :class:`TuiState`, the plain snapshot one frame shows;
* :mod:`~minikvm.tui.session` -- :class:`Session`: the machine, its debugger, the
  vCPU thread, the exit listener, and how snapshots are taken safely;
* :mod:`~minikvm.tui.render` -- pure functions from a snapshot to rich panels;
* :mod:`~minikvm.tui.keys` -- terminal bytes to keys, and what the keys do;
* :mod:`~minikvm.tui.app` -- the interactive loop: raw terminal, keys, ``Live``;
* :mod:`~minikvm.tui.record` -- regenerates the picture in ``docs/tui.md``.

The ``minikvm tui`` command (its options, scripted actions, ``--record``) is
:mod:`minikvm.cli.tui`; this package never imports the CLI.

Importing this package touches neither KVM nor the terminal.
"""

from minikvm.tui.state import Focus, RunStatus, SideView, TuiState

__all__ = ["Focus", "RunStatus", "SideView", "TuiState"]
