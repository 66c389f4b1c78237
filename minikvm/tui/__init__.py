"""``minikvm tui``: a full-screen debugger for a guest, built on rich.

* :mod:`~minikvm.tui.state` -- :class:`TuiState`, the plain snapshot one frame
  shows, and :class:`RunStatus`, what the TUI is doing with the guest;
* :mod:`~minikvm.tui.session` -- :class:`Session`: the machine, its debugger, the
  vCPU thread (a job of the debugger's runner), and snapshots;
* :mod:`~minikvm.tui.actions` -- step, next exit, continue on the vCPU thread, and
  what they ended in (from the core ``Stop``);
* :mod:`~minikvm.tui.frames` -- the picture of a stop, read once; what frames read live;
* :mod:`~minikvm.tui.monitor` -- the exit listener and the timeline: what is counted;
* :mod:`~minikvm.tui.views` -- exit rows, device panels, addresses typed at a prompt;
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
