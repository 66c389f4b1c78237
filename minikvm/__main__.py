"""``python -m minikvm`` is the ``minikvm`` command."""

import sys

from minikvm.cli import main

sys.exit(main())
