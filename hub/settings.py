"""Every tunable of the hub in one place, with the reason for each default."""

from __future__ import annotations

from dataclasses import dataclass, field

from hub.audio.opus import OpusSettings


@dataclass(frozen=True, slots=True)
class ChatSettings:
    password: str = ""
    # Hours, not days: a stolen token is useful for a working day at most,
    # and a client simply logs in again.
    token_ttl: float = 12 * 3600.0
    # How long a session outlives its last stream before the hub declares it
    # gone and tells everyone. Long enough to ride out a reconnect after a
    # network blip, short enough that people learn of a departure promptly.
    grace: float = 30.0
    # Names are shown on every screen: short, printable, one line.
    name_max_chars: int = 32
    # Chat lines, not file transfers: 4 KiB is pages of text, and bounds what
    # one line costs when fanned out to hundreds of streams.
    message_max_bytes: int = 4096
    # A person types well under one line a second; 20/s sustained with bursts
    # of 40 admits pasted text and bots while keeping a flooder from taking
    # the room. 0 disables the limit (benchmarks).
    rate_per_second: float = 20.0
    rate_burst: float = 40.0
    # Per-stream queue bound. A stream that falls this far behind is cut with
    # RESOURCE_EXHAUSTED rather than silently fed less. 1,024 lines of at most
    # 4 KiB bound one stream's backlog at 4 MiB, and at the default rate limit
    # it takes dozens of busy senders for a healthy client to get near it.
    queue_max: int = 1024
    # Failed logins per peer address (IPv6: per /64, what one host is given):
    # 10 free, then one more every 2 s, and while a peer is over, every Login
    # from it is refused RESOURCE_EXHAUSTED before its password is checked.
    # That cuts guessing from about 1,000 tries a second to one every 2 s,
    # while a person who mistypes a few times never notices. Successful
    # logins spend nothing, so honest clients, however many behind one
    # address, are never held back. 0 disables the throttle.
    login_failure_rate: float = 0.5
    login_failure_burst: float = 10.0
    # Peers remembered, the least recently failed forgotten first: bounds the
    # memory a flood of addresses can take (about 200 bytes each).
    login_peers_max: int = 10_000


@dataclass(frozen=True, slots=True)
class DeviceSettings:
    # The stock device client sends no token, so rooms are open by default:
    # anyone who can reach the port can join any room, hear it and press its
    # buttons. With require_token, a device must send a valid x-chat-token
    # (from chat Login) — in every room, or only in ``token_rooms`` if given.
    require_token: bool = False
    token_rooms: frozenset[str] = frozenset()
    # How long an empty room keeps its mode (seconds).
    linger: float = 600.0
    opus: OpusSettings = field(default_factory=OpusSettings)

    def requires_token(self, room_id: str) -> bool:
        return self.require_token and (not self.token_rooms or room_id in self.token_rooms)


@dataclass(frozen=True, slots=True)
class StreamSettings:
    """The raw-TCP streaming front door (docs/protocol.md)."""

    # Listening needs no token by default (a music folder on a home network);
    # rooms keep the device policy either way (DeviceSettings), and a token
    # that is given must be valid.
    require_token: bool = False
    # A client that sends nothing for this long is closed; clients PING at a
    # third of it while they only listen.
    idle_timeout: float = 60.0
    # Audio frames are skipped while this many bytes wait in a client's send
    # buffer: 8 KiB is about a second of 64 kb/s audio, so a client that falls
    # that far behind skips ahead instead of hearing ever older sound.
    send_high_water: int = 8 * 1024
    # Frames that may not be skipped (stream start and end, replies) still
    # queue; past this the client is hopeless and is closed with `slow`.
    send_buffer_max: int = 256 * 1024
    # Requests (list, play, join...) a second per connection, with bursts:
    # people click, scripts loop; neither needs more.
    request_rate: float = 20.0
    request_burst: float = 40.0
    # One open file descriptor each; past this, new clients get `unavailable`.
    max_connections: int = 4096
    # Added for the handshake bound (issue 11): from connect to WELCOME a
    # client has this long, however it trickles its bytes (the idle timer is
    # reset by every byte, so it alone lets a peer dripping one byte at a time
    # hold a connection for ever). A HELLO is one small frame: 5 s is ample on
    # a slow mobile link and frees a stranger's slot quickly.
    handshake_timeout: float = 5.0
    # Added with it: connections from one peer address (IPv6: per /64) at once; past this a
    # new one is refused at connect with `unavailable`. A household or an
    # office behind one NAT address runs a few players each; 64 leaves them
    # room while one host cannot take more than 64 of the max_connections.
    max_connections_per_peer: int = 64


@dataclass(frozen=True, slots=True)
class BackplaneSettings:
    """Several hubs as one, through Redis (``--redis``; hub/backplane/)."""

    # Entries each channel's Redis stream keeps (MAXLEN ~). A hub that lost
    # its connection resumes from where it stopped if what it missed is still
    # there: 10,000 lines is over a minute of the busiest chat we measured,
    # and a few MB of Redis memory per channel.
    history: int = 10_000
    # The same, for a channel trimmed by a droppable publication (a room's
    # audio, fifty packets a second): 1,000 entries is 20 s of one room's
    # sound, about 150 KB, where 10,000 would hold 1.5 MB of it per room.
    media_history: int = 1_000
    # A hub refreshes its liveness key this often, and sweeps for sessions due
    # to end (departure, expiry): the precision of the grace period.
    heartbeat: float = 0.5
    # A hub whose key is older than this is dead, and its streams are counted
    # gone: long enough to ride out a pause of a few heartbeats (a GC, a busy
    # machine), short enough that a SIGKILLed hub's users are missed promptly.
    hub_ttl: float = 3.0
    # Connecting and each command: Login while Redis is unreachable must
    # answer UNAVAILABLE at once, not hang; Redis answers in well under 1 ms.
    connect_timeout: float = 1.0
    command_timeout: float = 2.0
    # The one read loop blocks this long for news before asking again.
    block: float = 1.0
    # Reconnecting: first retry after the minimum, doubling up to the maximum.
    backoff_min: float = 0.05
    backoff_max: float = 2.0
    # The lease of the hub that drives a device room (plays its sound), and
    # how often every hub with the room open tries to take or keep it. A
    # driver killed outright is replaced within lease + renew (1.6 s): inside
    # the 2 s a room's audio may stop at failover, while the driver still
    # gets three tries to renew before its lease lapses (a busy machine).
    room_lease: float = 1.2
    room_renew: float = 0.4


@dataclass(frozen=True, slots=True)
class OperatorSettings:
    """What operators' tools see: metrics and gRPC reflection (health is always on)."""

    # Where Prometheus scrapes ``/metrics`` (HOST:PORT); None serves no
    # metrics and counts nothing. Off by default: a port nobody asked for is
    # one more thing to firewall.
    metrics_address: str | None = None
    # gRPC reflection lets ``grpcurl list/describe`` work without the .proto
    # files. On by default: the protos are public, and it costs nothing
    # until asked; turn it off to publish less.
    reflection: bool = True


@dataclass(frozen=True, slots=True)
class Settings:
    chat: ChatSettings = field(default_factory=ChatSettings)
    devices: DeviceSettings = field(default_factory=DeviceSettings)
    stream: StreamSettings = field(default_factory=StreamSettings)
    backplane: BackplaneSettings = field(default_factory=BackplaneSettings)
    operator: OperatorSettings = field(default_factory=OperatorSettings)
    # Share every listening port with other processes (SO_REUSEPORT). Only the
    # workers of `hub -s --workers N` do: the kernel spreads new connections
    # over them. Off otherwise, so that a second hub started on a port in use
    # fails to bind instead of silently taking part of its connections.
    reuse_port: bool = False
