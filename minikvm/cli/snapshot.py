"""``minikvm snapshot info FILE``: what a snapshot file holds, in words.

The format version, the guest, the board it was saved from, each vCPU's
RIP and CPU mode, and every section with its size: the parts of a
machine's state made visible (:mod:`minikvm.snapshot.info`).
"""

from __future__ import annotations

import argparse

from minikvm.cli.options import UsageError

__all__ = ["HELP", "add_arguments", "run"]

HELP = "look inside a snapshot file (snapshot info FILE)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", parser_class=type(parser))
    sub.required = True
    info = sub.add_parser("info", help="the version, guest, config, vCPUs and parts of FILE")
    info.add_argument("file", metavar="FILE")


def run(args: argparse.Namespace) -> int:
    from minikvm.snapshot.format import SnapshotError
    from minikvm.snapshot.info import describe

    try:
        lines = describe(args.file)
    except SnapshotError as err:
        raise UsageError(str(err)) from None
    print("\n".join(lines))
    return 0
