"""One paced player for every stream of an encoded sound.

A device room's sound and a TCP client's track play the same way: the packet
cache's reader, paced on the hub's clock (``hub.audio.pacer``), each packet
handed to a sink with a flag on the first. Only the sink differs: the room
publishes into its audio channel, the TCP client writes to its socket.
Stopping is cancelling the task that plays; the sink is never called again.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import soundfile as sf

from hub.audio.cache import EncodedSound
from hub.audio.pacer import pace
from hub.clock import Clock
from hub.errors import HubError

log = logging.getLogger(__name__)

# ``sink(seq, packet, is_start)``: packet ``seq`` of the stream, its first
# with ``is_start``; awaited before the next packet is paced.
PacketSink = Callable[[int, bytes, bool], Awaitable[None]]


async def play(
    encoded: EncodedSound,
    clock: Clock,
    sink: PacketSink,
    *,
    who: str,
    on_release: Callable[[float], None] | None = None,
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger] = log,
) -> bool:
    """Hand ``encoded``'s packets to ``sink`` as they play; whether it played to its end.

    A failure ends the stream early and is logged on ``logger`` as ``who``'s:
    a file gone or changed since it was listed, or a sink the hub cannot serve
    now (a ``HubError``: the backplane out of reach), is news (a warning);
    anything else is the hub's bug (with its traceback).
    ``on_release`` is the pacer's: how late each packet left, for metrics.
    """
    title = encoded.sound.title
    try:
        async for seq, packet in pace(
            encoded.reader(), encoded.settings.frame_seconds, clock, on_release=on_release
        ):
            await sink(seq, packet, seq == 0)
    except (OSError, sf.SoundFileError, HubError) as error:
        logger.warning("%s: cannot play %r: %s", who, title, error)
        return False
    except Exception:
        logger.exception("%s: cannot play %r", who, title)
        return False
    return True
