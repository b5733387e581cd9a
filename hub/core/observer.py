"""What the core tells whoever watches it (metrics), without knowing who.

The core imports no metrics library: it calls an ``Observer`` at a few narrow
points, once per publication or per packet, never once per subscriber. The
default, ``Unobserved``, does nothing; ``hub.metrics`` implements it for
Prometheus.
"""

from __future__ import annotations

from typing import Protocol

from hub.core.events import LeaveReason


class Observer(Protocol):
    def delivered(self, channel: str, count: int) -> None:
        """One publication on ``channel`` was handed to ``count`` local subscribers."""

    def session_ended(self, reason: LeaveReason) -> None: ...

    def paced(self, source: str, lateness: float) -> None:
        """A pacer released one audio packet, ``lateness`` seconds after it was due.

        ``source`` is ``room`` (a room's player) or ``music`` (one listener's track).
        """

    # The backplane (a broker shared by several hubs) reports these.

    def backplane_reconnected(self) -> None: ...

    def backplane_lag(self, seconds: float) -> None:
        """A publication came back through the backplane ``seconds`` after it was sent."""


class Unobserved:
    """An Observer that does nothing: the hub without metrics."""

    def delivered(self, channel: str, count: int) -> None:
        pass

    def session_ended(self, reason: LeaveReason) -> None:
        pass

    def paced(self, source: str, lateness: float) -> None:
        pass

    def backplane_reconnected(self) -> None:
        pass

    def backplane_lag(self, seconds: float) -> None:
        pass
