"""The audio path, as pure library code: no gRPC, no sockets.

source -> float32 PCM -> 48 kHz mono (soxr) -> Opus packets (opuslib)
-> shared packet cache -> real-time pacer -> the same bytes to every listener.

Each step lives in its own module (``sources``, ``opus``, ``cache``,
``pacer``, ``library``); ``testing`` holds the helpers the tests share.
See docs/audio.md for the defaults and why.
"""

from hub.audio.cache import EncodedSound, PacketCache
from hub.audio.library import SoundLibrary
from hub.audio.opus import OpusEncoder, OpusSettings, encode_blocks, silence_packet
from hub.audio.pacer import DEFAULT_LEAD, pace
from hub.audio.sources import SAMPLE_RATE, FileSound, GeneratedSound, Sound, long_sound

__all__ = [
    "DEFAULT_LEAD",
    "SAMPLE_RATE",
    "EncodedSound",
    "FileSound",
    "GeneratedSound",
    "OpusEncoder",
    "OpusSettings",
    "PacketCache",
    "Sound",
    "SoundLibrary",
    "encode_blocks",
    "long_sound",
    "pace",
    "silence_packet",
]
