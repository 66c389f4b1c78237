"""``python -m minikvm`` is the ``minikvm`` command."""

from minikvm.cli import entry

entry()
