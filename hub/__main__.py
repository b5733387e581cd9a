"""The hub's entry points: ``python -m hub`` and the ``hub`` and ``hub-music``
scripts (pyproject.toml). Each readies the process, then imports the command
line (hub/cli.py), which imports grpc.

gRPC's C core writes log lines of its own to standard error (a failed bind
comes out twice, once in its format, before ours); the reference prints only
its lines. Core reads GRPC_VERBOSITY once, when grpc loads: so it is set here,
before anything imports grpc, and not as a side effect of importing a module.
An explicit GRPC_VERBOSITY (e.g. debug) still wins.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence


def _quiet_grpc_core() -> None:
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")


def main(argv: Sequence[str] | None = None) -> int:
    """``hub``: the chat program's command line and the hub's (hub/cli.py)."""
    _quiet_grpc_core()
    from hub import cli

    return cli.main(argv)


def music_main(argv: Sequence[str] | None = None) -> int:
    """``hub-music PORT FOLDER``: only the streaming door (hub/cli.py)."""
    _quiet_grpc_core()
    from hub import cli

    return cli.music_main(argv)


if __name__ == "__main__":
    sys.exit(main())
