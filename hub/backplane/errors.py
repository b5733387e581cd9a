"""What a peer is told when Redis does not answer: one sentence, the cause in the log.

The cause (a host and port, a redis-py message) is the operator's business,
not the peer's, so it goes to the log and the peer gets ``UNAVAILABLE``.
"""

from __future__ import annotations

import logging

from hub.errors import Unavailable

log = logging.getLogger(__name__)


def unreachable(what: str, error: Exception) -> Unavailable:
    """Log why ``what`` failed, and return the error to raise for the peer."""
    log.warning("cannot %s: redis: %s", what, error)
    return Unavailable("the backplane (Redis) is out of reach")
