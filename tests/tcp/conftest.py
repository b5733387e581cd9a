"""Fixtures for tests/tcp: defined in tcp_helpers.py, which the tests import
by that unique name (two folders' `conftest` modules would collide)."""

from chat_helpers import no_errors_logged  # noqa: F401
from tcp_helpers import (  # noqa: F401
    connect,
    music,
    new_device,
    room_library,
    serve,
)
