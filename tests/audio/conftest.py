"""Shared fixtures for the audio path tests."""

from __future__ import annotations

import pytest

from hub.audio.library import SoundLibrary


@pytest.fixture(scope="session")
def library() -> SoundLibrary:
    """The committed mode sounds (``hub/sounds/``), as the hub loads them."""
    return SoundLibrary.from_folder()
