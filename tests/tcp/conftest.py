"""Fixtures for tests/tcp: defined in tcp_helpers.py, which the tests import
by that unique name (two folders' `conftest` modules would collide)."""

from tcp_helpers import (  # noqa: F401
    connect,
    music,
    new_device,
    no_errors_logged,
    room_library,
    serve,
)
