"""``minikvm resume FILE``: continue a saved machine in a fresh process.

The snapshot says which board to build (RAM, vCPUs, irqchip, virtio
devices, command line); the machine is built, the whole file is checked
and restored (:mod:`minikvm.snapshot.machine_state`), and it runs on as
``minikvm run`` runs a guest: same output, input, statuses, ``--timeout``,
``--gdb``, ``--trace``, and ``--snapshot`` again. A virtio-blk image comes
from the path saved in the snapshot unless ``--virtio-blk PATH`` names
another (once per disk, in order); it must be of the saved size.

A file that is not a snapshot, or a damaged, foreign or future one, is
refused in one line with status 2, before anything runs.
"""

from __future__ import annotations

import argparse

from minikvm.cli.options import (UsageError, add_gdb_option, guest_file_errors, parse_timeout)
from minikvm.cli.snapshot_options import add_snapshot_options, check_snapshot_options

__all__ = ["HELP", "add_arguments", "run"]

HELP = "continue a machine saved with run --snapshot"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="a snapshot written by minikvm run --snapshot")
    parser.add_argument("--timeout", type=parse_timeout, default=None, metavar="S",
                        help="stop the guest after S seconds (exit status 124)")
    parser.add_argument("--virtio-blk", action="append", default=[], metavar="PATH",
                        help="disk image for the snapshot's next virtio-blk device "
                             "(default: the path saved in the snapshot); same size only")
    parser.add_argument("--trace", default=None, metavar="FILE",
                        help="record every VM exit to FILE as JSON Lines")
    add_gdb_option(parser)
    add_snapshot_options(parser)


def run(args: argparse.Namespace) -> int:
    from minikvm.cli.run import drive
    from minikvm.snapshot.format import SnapshotError
    from minikvm.snapshot.machine_state import load_machine

    check_snapshot_options(args)
    args.guest = None

    def build(sink):
        with guest_file_errors(None):
            try:
                machine, config = load_machine(args.file, kvm_path=args.kvm,
                                               disks=tuple(args.virtio_blk), output=sink)
            except SnapshotError as err:
                raise UsageError(f"{args.file}: {err}" if args.file not in str(err)
                                 else str(err)) from None
        args.guest = config.guest
        return machine, config

    return drive(args, build)
