"""What the hub counts, for Prometheus: ``/metrics`` on ``--metrics-address``.

Two implementations of one interface. ``Metrics`` counts nothing: the hub
without a metrics address pays a no-op call at each counting point and
nothing more. ``PrometheusMetrics`` counts into a registry of its own (never
prometheus_client's module-global default), served by ``MetricsServer``.

The core reports through its ``Observer`` protocol (``hub.core.observer``);
the front doors call the rest. Nothing is counted once per subscriber on the
fan-out path: deliveries are counted per publication, and the publish→write
latency of a stream is measured on one event in ``LATENCY_SAMPLE_EVERY``.
Gauges of the hub's state (sessions, rooms, members, listeners) are read
when scraped, so keeping them costs nothing in between.

Labels are bounded words: a door, an outcome, a reason, a channel kind;
never a session, a room or a user.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import start_http_server
from prometheus_client.gc_collector import GCCollector
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from hub.core.events import LeaveReason
from hub.core.observer import Unobserved
from hub.errors import HubError, Unauthenticated

if TYPE_CHECKING:
    from hub.core.hub import Hub

log = logging.getLogger(__name__)

# Doors, the label of everything counted per front door.
CHAT = "chat"  # chat.Chat Stream
ROOMS = "rooms"  # chat.Rooms Watch
DEVICES = "devices"  # com.opalcamera.test.DeviceService, any of its three streams
TCP = "tcp"  # the raw-TCP streaming door

# One event in this many, per stream, has its publish→write latency measured.
# A histogram observation costs about a microsecond (a lock and a bucket
# search), a few per cent of what one delivery costs the server (bench.chat:
# tens of microseconds); one in 16 brings that near 0.2 %. Each stream's first
# event is measured, so even a quiet stream contributes.
LATENCY_SAMPLE_EVERY = 16

# Seconds. Pacer lateness: 0 when the loop keeps up; the pacer re-anchors its
# schedule past a second late. Publish→write: a chat line within a few ms on
# an idle hub, tens of ms at hundreds of streams.
LATENESS_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BACKPLANE_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


def outcome_of(error: HubError) -> str:
    """A refusal as a label: the reason of an authentication failure, else its code."""
    return error.reason if isinstance(error, Unauthenticated) else error.code.value


def channel_kind(channel: str) -> str:
    """A channel as a bounded label: ``chat``, ``room_status``, ``room_audio``,
    ``control`` (sessions' ends between hubs)."""
    if channel.startswith("room:"):
        return "room_" + channel.rpartition(":")[2]
    return channel if channel in ("chat", "control") else "other"


class WriteLatency:
    """Publish→write latency of one stream, measured on a sample of its events."""

    __slots__ = ("_histogram", "_skip")

    def __init__(self, histogram: Histogram | None) -> None:
        self._histogram = histogram
        self._skip = 0

    def written(self, published: float) -> None:
        """An event published at wall time ``published`` was just handed to the wire."""
        if self._skip:
            self._skip -= 1
            return
        if self._histogram is not None:
            self._skip = LATENCY_SAMPLE_EVERY - 1
            self._histogram.observe(time.time() - published)


_NOT_MEASURED = WriteLatency(None)


class Metrics(Unobserved):
    """Counts nothing (no ``--metrics-address``); ``PrometheusMetrics`` counts."""

    registry: CollectorRegistry | None = None

    def watch(self, hub: Hub) -> None:
        """Report the gauges of ``hub``'s state (sessions, rooms...) when scraped."""

    def login(self, outcome: str) -> None:
        """``ok``, or the refusal's outcome_of."""

    def logout(self, outcome: str) -> None:
        pass

    def auth_failed(self, door: str, reason: str) -> None:
        pass

    def refused(self, door: str, error: HubError) -> None:
        """A request of ``door`` was refused with ``error``: count what it says."""
        if isinstance(error, Unauthenticated):
            self.auth_failed(door, error.reason)

    def chat_line(self) -> None:
        """A chat line was accepted and published."""

    def rate_limited(self, door: str) -> None:
        pass

    def slow_consumer(self, door: str) -> None:
        pass

    def audio_skipped(self, door: str, count: int = 1) -> None:
        pass

    def stream_opened(self, door: str) -> None:
        pass

    def stream_closed(self, door: str) -> None:
        pass

    @contextlib.contextmanager
    def stream_open(self, door: str) -> Iterator[None]:
        """Counts a stream of ``door`` as open for as long as the context lasts."""
        self.stream_opened(door)
        try:
            yield
        finally:
            self.stream_closed(door)

    def write_latency(self, door: str) -> WriteLatency:
        """A sampler for one stream of ``door``: call ``written`` per event."""
        return _NOT_MEASURED

    def tcp_connected(self) -> None:
        pass

    def protocol_error(self, code: str) -> None:
        """A TCP client broke the protocol; ``code`` is the error code's label."""

    def backplane_up(self, up: bool) -> None:
        pass


class PrometheusMetrics(Metrics):
    """Every metric of the hub, on a registry owned by this object."""

    def __init__(self) -> None:
        self.registry = registry = self._registry = CollectorRegistry()
        # The process's CPU, memory and file descriptors, and the collector's
        # work: what a dashboard shows beside the hub's own figures.
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)

        def counter(name: str, doc: str, labels: Iterable[str] = ()) -> Counter:
            return Counter(name, doc, list(labels), registry=registry)

        self._logins = counter("hub_logins", "Chat logins, by outcome.", ["outcome"])
        self._logouts = counter("hub_logouts", "Chat logouts, by outcome.", ["outcome"])
        self._sessions_ended = counter(
            "hub_sessions_ended", "Sessions ended, by reason (logout, gone, expired).", ["reason"]
        )
        self._auth_failures = counter(
            "hub_auth_failures",
            "Authentication failures, by door and reason "
            "(wrong_password, missing_token, invalid_token, token_expired).",
            ["door", "reason"],
        )
        self._chat_lines = counter("hub_chat_lines", "Chat lines accepted and published.")
        self._delivered = counter(
            "hub_events_delivered",
            "Events handed to local subscribers, by channel kind.",
            ["channel"],
        )
        self._slow = counter(
            "hub_slow_consumer_disconnects",
            "Streams and connections cut for falling behind, by door.",
            ["door"],
        )
        self._rate_limited = counter(
            "hub_rate_limited", "Requests refused by a rate limit, by door.", ["door"]
        )
        self._audio_sent = counter(
            "hub_audio_packets_sent",
            "Audio packets released by the pacers, by source: once per packet for a "
            "room (however many listen), once per listener for a music track.",
            ["source"],
        )
        self._audio_skipped = counter(
            "hub_audio_packets_skipped",
            "Audio packets a lagging listener skipped, by door.",
            ["door"],
        )
        self._tcp_connections = counter(
            "hub_tcp_connections", "TCP streaming connections accepted."
        )
        self._protocol_errors = counter(
            "hub_tcp_protocol_errors", "TCP clients that broke the protocol, by code.", ["code"]
        )
        self._open_streams = Gauge(
            "hub_open_streams", "Streams open now, by door.", ["door"], registry=registry
        )
        self._lateness = Histogram(
            "hub_pacer_lateness_seconds",
            "How late the audio pacers released packets.",
            buckets=LATENESS_BUCKETS,
            registry=registry,
        )
        self._latency = Histogram(
            "hub_publish_to_write_seconds",
            f"From publication to a stream's write, by door (1 event in "
            f"{LATENCY_SAMPLE_EVERY} per stream).",
            ["door"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        # The backplane (Redis, for several hubs): reported by the broker.
        self._backplane_up = Gauge(
            "hub_backplane_up",
            "1 while the backplane is reachable (always 1 without one).",
            registry=registry,
        )
        self._backplane_up.set(1)
        self._backplane_reconnects = counter(
            "hub_backplane_reconnects", "Times the backplane connection was re-established."
        )
        self._backplane_lag = Histogram(
            "hub_backplane_lag_seconds",
            "From publication to its return through the backplane.",
            buckets=BACKPLANE_LAG_BUCKETS,
            registry=registry,
        )
        # Known label values start at 0, so that rate() sees their first count.
        self._logins.labels("ok")
        for outcome in ("ok", "not_found"):
            self._logouts.labels(outcome)
        for reason in LeaveReason:
            self._sessions_ended.labels(reason.value)
        for door in (CHAT, ROOMS, TCP):
            self._slow.labels(door)
        for door in (CHAT, TCP, "tcp_audio"):
            self._rate_limited.labels(door)
        for door in (DEVICES, TCP):
            self._audio_skipped.labels(door)
        # Children bound once: labels() costs a lock and a dict look-up per call.
        self._delivered_to = {
            kind: self._delivered.labels(kind)
            for kind in ("chat", "room_status", "room_audio", "control", "other")
        }
        self._paced = {source: self._audio_sent.labels(source) for source in ("room", "music")}
        self._open = {door: self._open_streams.labels(door) for door in (CHAT, ROOMS, DEVICES, TCP)}

    def watch(self, hub: Hub) -> None:
        self._registry.register(HubState(hub))

    # -- the core's Observer ---------------------------------------------

    def delivered(self, channel: str, count: int) -> None:
        self._delivered_to[channel_kind(channel)].inc(count)

    def session_ended(self, reason: LeaveReason) -> None:
        self._sessions_ended.labels(reason.value).inc()

    def paced(self, source: str, lateness: float) -> None:
        self._paced[source].inc()
        self._lateness.observe(lateness)

    def backplane_reconnected(self) -> None:
        self._backplane_reconnects.inc()

    def backplane_lag(self, seconds: float) -> None:
        self._backplane_lag.observe(seconds)

    # -- the front doors ---------------------------------------------------

    def login(self, outcome: str) -> None:
        self._logins.labels(outcome).inc()

    def logout(self, outcome: str) -> None:
        self._logouts.labels(outcome).inc()

    def auth_failed(self, door: str, reason: str) -> None:
        self._auth_failures.labels(door, reason).inc()

    def chat_line(self) -> None:
        self._chat_lines.inc()

    def rate_limited(self, door: str) -> None:
        self._rate_limited.labels(door).inc()

    def slow_consumer(self, door: str) -> None:
        self._slow.labels(door).inc()

    def audio_skipped(self, door: str, count: int = 1) -> None:
        self._audio_skipped.labels(door).inc(count)

    def stream_opened(self, door: str) -> None:
        self._open[door].inc()

    def stream_closed(self, door: str) -> None:
        self._open[door].dec()

    def write_latency(self, door: str) -> WriteLatency:
        return WriteLatency(self._latency.labels(door))

    def tcp_connected(self) -> None:
        self._tcp_connections.inc()

    def protocol_error(self, code: str) -> None:
        self._protocol_errors.labels(code).inc()

    def backplane_up(self, up: bool) -> None:
        self._backplane_up.set(1 if up else 0)


class HubState(Collector):
    """Gauges read from the hub when scraped: nothing to keep up to date.

    Scrapes run on the HTTP server's thread. Each figure is a length, or a
    sum over a snapshot of the rooms taken by one C-level call, so the GIL
    makes it consistent with the event loop's changes.
    """

    def __init__(self, hub: Hub) -> None:
        self._hub = hub

    def collect(self) -> Iterable[Metric]:
        hub = self._hub
        rooms = hub.rooms.snapshot()
        yield GaugeMetricFamily("hub_sessions", "Live chat sessions.", len(hub.sessions))
        yield GaugeMetricFamily("hub_rooms", "Device rooms open.", len(rooms))
        yield GaugeMetricFamily(
            "hub_room_members",
            "Present in rooms: devices, TCP listeners and publishers.",
            sum(room.members for room in rooms),
        )
        yield GaugeMetricFamily(
            "hub_room_listeners",
            "Audio streams subscribed to rooms: devices' and TCP listeners'.",
            sum(hub.subscriber_count(room.audio_channel) for room in rooms),
        )


class MetricsServer:
    """``/metrics`` over HTTP on a thread of its own (prometheus_client's server).

    A thread, not the event loop: a scrape costs a few milliseconds of
    formatting that would otherwise delay every stream's next write.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry
        self._httpd: WSGIServer | None = None

    async def start(self, address: str) -> str:
        """Listen on ``host:port`` (port 0: any free one); returns it with the real port."""
        host, _, port = address.rpartition(":")
        host = host.strip("[]") or "0.0.0.0"
        httpd, _thread = start_http_server(int(port), host, registry=self._registry)
        self._httpd = httpd
        where = f"{host}:{httpd.server_port}"
        log.info("metrics on http://%s/metrics", where)
        return where

    async def close(self) -> None:
        httpd = self._httpd
        if httpd is None:
            return
        self._httpd = None
        # shutdown() waits for serve_forever's next poll (up to half a second).
        await asyncio.to_thread(httpd.shutdown)
        httpd.server_close()
