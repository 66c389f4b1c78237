"""``--snapshot FILE --snapshot-after-exits N``: what ``run`` and ``resume`` share.

The run goes N VM exits of the guest (the exits of all vCPUs count), every
vCPU completes the instruction it exited on, the machine is saved to FILE,
and the process ends with status 0 and one line on stderr; stdout carries
only what the guest wrote. A guest that ends sooner ends as always, with
its own status, and a line saying no snapshot was made.

Only exits the *guest* caused count (:class:`GuestExits`): not the
``KVM_EXIT_INTR`` of the VMM's own kicks -- the watchdog's halt checks
while the guest sleeps in ``hlt``, the input reader's wake-ups. Their
number depends on host timing (how long the guest waited for input), so
counting them would cut the same guest at a different instruction on
every run; without them, N names the same point of a single-vCPU guest
whenever its input is the same.

Only the standard library is imported here: the parser is built for
every command.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from minikvm.cli.options import UsageError, format_size

if TYPE_CHECKING:
    from minikvm.core.config import MachineConfig
    from minikvm.core.events import ExitEvent
    from minikvm.machine import Machine

__all__ = ["GuestExits", "add_snapshot_options", "check_snapshot_options",
           "save_snapshot_words"]


def _positive(text: str) -> int:
    from minikvm.cli.options import parse_int

    value = parse_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: at least one exit")
    return value


def add_snapshot_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--snapshot", default=None, metavar="FILE",
                        help="save the whole machine to FILE after --snapshot-after-exits N "
                             "exits and stop (continue it with: minikvm resume FILE)")
    parser.add_argument("--snapshot-after-exits", type=_positive, default=None, metavar="N",
                        help="how many VM exits (of all vCPUs) to run before --snapshot")


def check_snapshot_options(args: argparse.Namespace) -> None:
    """The two options come together, and not with ``--gdb`` (the debugger
    decides when the guest runs)."""
    if (args.snapshot is None) != (args.snapshot_after_exits is None):
        raise UsageError("--snapshot FILE and --snapshot-after-exits N go together")
    if args.snapshot is not None and getattr(args, "gdb", None) is not None:
        raise UsageError("--snapshot and --gdb cannot be used together")


class GuestExits:
    """Counts the guest's exits on ``machine`` from now on, until ``limit``:
    pass :meth:`reached` as ``Machine.run(until=...)``.

    An ``Interrupted`` exit (``KVM_EXIT_INTR``) is the VMM's kick, not the
    guest's doing, and is not counted: the count is the machine's exit
    count less the kicks its vCPUs' run loops were handed
    (:func:`minikvm.runloop.guest_kicks`, as ``Machine.run(max_exits=)``
    counts). No listener is attached, so the run keeps the run loop's fast
    path (a listener would turn it off).
    """

    def __init__(self, machine: Machine, limit: int) -> None:
        from minikvm.runloop import guest_kicks

        self._kicks = guest_kicks
        self._machine = machine
        self.limit = limit
        self._start = machine.exit_count - guest_kicks(machine.runners)

    @property
    def count(self) -> int:
        """Guest exits since this counter was made."""
        machine = self._machine
        return machine.exit_count - self._kicks(machine.runners) - self._start

    def reached(self) -> bool:
        return self.count >= self.limit


def save_snapshot_words(machine: Machine, config: MachineConfig, path: str,
                        exits: int | None = None) -> str:
    """Save ``machine`` (built from ``config``) to ``path``; the line that
    says so (after ``exits`` guest exits; default: the machine's count)."""
    from minikvm.snapshot.format import SnapshotError
    from minikvm.snapshot.machine_state import save_machine

    try:
        saved = save_machine(machine, path, config)
    except SnapshotError as err:
        raise UsageError(str(err)) from None
    exits = saved.exit_count if exits is None else exits
    return (f"saved snapshot {path} after {exits} exits ({format_size(saved.size)}, "
            f"{saved.memory_pages} pages of RAM, {saved.seconds * 1000:.1f} ms)")
