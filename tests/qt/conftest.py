"""Fixtures for tests/qt: defined in qt_helpers.py, which the tests import
by that unique name (two folders' `conftest` modules would collide)."""

from qt_helpers import (  # noqa: F401
    loop_thread,
    make_device,
    qapp,
    server,
    start_server,
    wait_until,
)
