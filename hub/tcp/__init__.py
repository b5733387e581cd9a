"""The third front door: streaming over raw TCP with the hub's own protocol.

``codec`` is the whole protocol as a sans-I/O state machine (bytes in, events
out, bytes to send); ``docs/protocol.md`` is its specification. The asyncio
server and the client are thin shims that feed a ``codec.Connection`` with the
bytes they read and write the bytes it returns. The server's connection
hands what a client listens to to its ``downlink.Downlink`` and what it
publishes to its ``uplink.Uplink``; both see it as a ``peer.Peer``.
"""
