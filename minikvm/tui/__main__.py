"""``python -m minikvm.tui GUEST ...``: the same as ``minikvm tui GUEST ...``."""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    from minikvm.cli import UsageError
    from minikvm.kvm.errors import KvmError
    from minikvm.tui.cli import add_tui_arguments, cmd_tui

    parser = argparse.ArgumentParser(prog="minikvm tui",
                                     description="Step through a guest in a full-screen debugger.")
    parser.add_argument("--kvm", default=os.environ.get("MINIKVM_KVM", "/dev/kvm"),
                        metavar="PATH", help="the KVM device (default /dev/kvm)")
    add_tui_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return cmd_tui(args)
    except UsageError as err:
        print(f"minikvm: {err}", file=sys.stderr)
        return 2
    except KvmError as err:
        print(f"minikvm: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
