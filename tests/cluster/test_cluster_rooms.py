"""Device rooms across hub processes on one real Redis: one room, one sound, one driver.

Stock-device stand-ins and raw TCP clients connect to different hubs of one
room; every hub is a real process (``--redis``), killed with SIGKILL where a
test says so.
"""

from __future__ import annotations

import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
import pytest_asyncio
from chat_helpers import login, timeout, watch_room
from cluster_helpers import Cluster, ClusterHub, RedisServer
from raw_client import RawClient, publish_paced
from stock_device import StockDevice, wait_all

from hub.audio.opus import OpusSettings, encode_blocks
from hub.audio.testing import best_correlation, decode_packets, tone
from hub.core import leds
from hub.core.roomstate import RoomState
from hub.tcp import codec as proto

pytestmark = pytest.mark.asyncio

ROOM = "kitchen"
IDLE, PLAYING = RoomState.IDLE, RoomState.PLAYING
# The bundled sounds, by mode: what a stream's STREAM_START is titled.
TITLES = ["chord", "arpeggio", "bells", "rain", "melody"]
DRIVES = rf".*room {ROOM}: this hub drives it.*"


class Opened:
    """What a test opens at the hubs, closed (and checked) at its end."""

    def __init__(self) -> None:
        self.devices: list[StockDevice] = []
        self.clients: list[RawClient] = []

    async def device(self, hub: ClusterHub) -> StockDevice:
        device = StockDevice(hub.address, ROOM)
        await device.connect()
        self.devices.append(device)
        await device.wait_ready(5)
        return device

    async def listener(self, hub: ClusterHub, name: str = "listener") -> RawClient:
        client = await RawClient.connect(hub.stream_address, name=name)
        self.clients.append(client)
        await client.hello()
        client.send(proto.Join(ROOM))
        await client.next(proto.Joined)
        return client


@pytest_asyncio.fixture
async def opened() -> AsyncIterator[Opened]:
    things = Opened()
    try:
        yield things
    finally:
        for device in things.devices:
            await device.disconnect()
        for client in things.clients:
            client.close()


async def watch(hub: ClusterHub, cluster: Cluster) -> grpc.aio.UnaryStreamCall:  # type: ignore[type-arg]
    channel = await cluster.channel(hub)
    token = await login(channel, "watcher")
    call = watch_room(channel, token, ROOM)
    await call.read()  # the room as it is: the watch is in place
    return call  # type: ignore[no-any-return]


async def notice(call: grpc.aio.UnaryStreamCall, text: str) -> str:  # type: ignore[type-arg]
    """The next notice that contains ``text``."""
    while True:
        event = await call.read()
        assert event is not grpc.aio.EOF
        if text in event.text:
            return str(event.text)


def shows(state: RoomState, mode: int) -> object:
    return lambda d: d.shows(leds.frame(state, mode))


@dataclass(frozen=True)
class Driven:
    """A room that hub ``a`` drives, playing ``mode``, heard at hub ``b``."""

    a: ClusterHub
    b: ClusterHub
    at_a: StockDevice
    on_b: StockDevice
    listener: RawClient
    mode: int
    first: proto.StreamStart


async def driven_by_a_heard_at_b(
    cluster: Cluster, opened: Opened, *, mode: int, packets: int
) -> Driven:
    """Two hubs; a device at ``a`` opens the room first (``a`` drives it), a
    device at ``b`` sets ``mode`` and presses Play, and a listener at ``b`` has
    heard ``packets`` packets of the stream."""
    a, b = cluster.hub("--log-level", "info"), cluster.hub("--log-level", "info")
    at_a = await opened.device(a)
    a.proc.expect(DRIVES, seconds=timeout())
    on_b = await opened.device(b)
    listener = await opened.listener(b)
    for _ in range(mode):
        assert await on_b.mode() is True
    await wait_all([at_a, on_b], shows(IDLE, mode), 5, f"mode {mode + 1} at both hubs")
    assert await on_b.play() is True
    first = await listener.skip_to(proto.StreamStart, 5)
    assert first.title == TITLES[mode]
    await listener.wait_for(lambda: len(listener.audio(first.stream_id)) >= packets, 5)
    return Driven(a, b, at_a, on_b, listener, mode, first)


async def handed_over_to_b(driven: Driven, how: str) -> proto.StreamStart:
    """Once ``a`` has gone (``how``): ``b`` drives the room, which keeps its
    mode, and the listener's stream stays well formed (the old stream's end, a
    new start, its audio from seq 0); the gap in the audio is printed, with a
    sanity bound. The new start."""
    listener, first = driven.listener, driven.first
    driven.b.proc.expect(DRIVES, seconds=timeout())
    end = await listener.skip_to(proto.StreamEnd, 5)
    assert end.stream_id == first.stream_id
    second = await listener.next(proto.StreamStart, 5)
    assert second.stream_id != first.stream_id
    assert second.title == TITLES[driven.mode]  # the room kept its mode
    resumed = await listener.next(proto.Audio, 5)
    assert resumed.stream_id == second.stream_id and resumed.seq == 0
    times = {id(r.event): r.time for r in listener.received}
    gap = times[id(resumed)] - times[id(listener.audio(first.stream_id)[-1])]
    print(f"\naudio gap at a listener on the other hub, driver {how}: {gap * 1000:.0f} ms")
    assert gap < timeout(2.0) + 0.5  # a sanity bound; the note gives the figure
    return second


async def test_devices_on_two_hubs_are_one_room_with_one_sound(
    cluster: Cluster, opened: Opened
) -> None:
    a, b = cluster.hub(), cluster.hub()
    on_a, on_b = await opened.device(a), await opened.device(b)
    listener = await opened.listener(b)
    watcher = await watch(b, cluster)

    assert await on_b.mode() is True  # a press at b is the room's, at a too
    await wait_all([on_a, on_b], shows(IDLE, 1), 5, "mode 2 at both hubs")
    pressed = time.monotonic()
    assert await on_a.play() is True
    await notice(watcher, f"playing {TITLES[1]}")  # published at a, watched at b
    await wait_all([on_a, on_b], shows(PLAYING, 1), 5, "playing at both hubs")
    await wait_all([on_a, on_b], lambda d: len(d.packets) >= 50, 5, "a second of sound")
    assert await on_b.stop() is True
    await wait_all([on_a, on_b], lambda d: len(d.streams) == 1, 5, "the stream's end")
    await wait_all([on_a, on_b], shows(IDLE, 1), 5, "idle at both hubs")

    # One stream, encoded and paced once: the very same packets at both hubs,
    # each decoded as one Opus packet by the device (a bad one is a trap).
    played_a, played_b = on_a.streams[0], on_b.streams[0]
    reach = (played_b.started - pressed) * 1000
    print(f"\nPlay pressed at one hub, the first packet at a device on the other: {reach:.1f} ms")
    assert played_a.data == played_b.data and len(played_a.data) > 50
    assert best_correlation(played_a.pcm, played_b.pcm) > 0.99
    start = await listener.skip_to(proto.StreamStart, 5)
    assert start.title == TITLES[1]
    end = await listener.skip_to(proto.StreamEnd, 5)
    assert (end.stream_id, end.reason) == (start.stream_id, proto.StreamEndReason.STOPPED)
    assert [p.packet for p in listener.audio(start.stream_id)] == played_b.data[:-1]
    for device in (on_a, on_b):
        device.check()
    listener.check()

    # A room is empty only when it is empty at every hub.
    listener.send(proto.Leave())
    await listener.next(proto.Left, 5)
    assert await on_b.play() is True
    await on_a.wait_for(lambda: len(on_a.packets) > len(played_a.packets) + 10, 5)
    await on_a.disconnect()
    heard = len(on_b.packets)
    await on_b.wait_for(lambda: len(on_b.packets) > heard + 25, 5, "the sound plays on")
    await on_b.disconnect()
    await notice(watcher, "stopped")  # emptied everywhere: stopped, as on one hub
    watcher.cancel()


async def test_a_sound_goes_on_at_another_hub_when_its_driver_is_killed(
    cluster: Cluster, opened: Opened
) -> None:
    driven = await driven_by_a_heard_at_b(cluster, opened, mode=2, packets=25)
    a, on_b, listener = driven.a, driven.on_b, driven.listener
    a.proc.signal(signal.SIGKILL)
    second = await handed_over_to_b(driven, "SIGKILLed")

    await on_b.wait_for(
        lambda: len(on_b.streams) == 1 and on_b.current is not None,
        5,
        f"the old stream ended, a new one begun: {on_b.streams} {on_b.current} {on_b.traps}",
    )
    await on_b.wait_for(lambda: on_b.shows(leds.frame(PLAYING, 2)), 5)
    assert await on_b.stop() is True
    await on_b.wait_for(lambda: len(on_b.streams) == 2, 5, "the second stream's end")
    assert all(s.packets[0].is_start and s.packets[-1].is_end for s in on_b.streams)
    end = await listener.skip_to(proto.StreamEnd, 5)
    assert (end.stream_id, end.reason) == (second.stream_id, proto.StreamEndReason.STOPPED)
    on_b.check()
    listener.check()
    opened.devices.remove(driven.at_a)  # its hub is gone: nothing to hang up


async def test_a_hub_stopped_with_sigterm_hands_its_room_over_at_once(
    cluster: Cluster, opened: Opened
) -> None:
    driven = await driven_by_a_heard_at_b(cluster, opened, mode=1, packets=10)
    a, on_b, listener = driven.a, driven.on_b, driven.listener
    a.proc.signal(signal.SIGTERM)
    # The lease is given up, not left to lapse: b drives from here on.
    await handed_over_to_b(driven, "stopped by SIGTERM")
    await on_b.wait_for(lambda: on_b.shows(leds.frame(PLAYING, 1)), 5)
    on_b.check()
    listener.check()
    assert a.proc.wait(5) == 0  # (a blocking wait: after the figures are taken)
    opened.devices.remove(driven.at_a)  # its hub is gone: nothing to hang up


async def test_a_tcp_publisher_at_one_hub_is_heard_at_another(
    cluster: Cluster, opened: Opened
) -> None:
    a, b = cluster.hub(), cluster.hub()
    device = await opened.device(b)
    listener = await opened.listener(b)
    publisher = await RawClient.connect(a.stream_address, name="publisher")
    opened.clients.append(publisher)
    await publisher.hello()
    sound = tone(440.0, 1.0, amplitude=0.4, fade=0.01)  # no clicks at the edges
    packets = list(encode_blocks([sound], OpusSettings()))
    publisher.send(proto.PublishStart(7, ROOM, "mic"))
    await publish_paced(publisher, 7, packets)
    publisher.send(proto.PublishEnd(7))

    start = await listener.skip_to(proto.StreamStart, 5)
    assert (start.track_id, start.title) == (None, "mic")
    end = await listener.skip_to(proto.StreamEnd, 5)
    assert (end.stream_id, end.reason) == (start.stream_id, proto.StreamEndReason.FINISHED)
    heard = [a.packet for a in listener.audio(start.stream_id)]
    assert heard == packets
    assert best_correlation(decode_packets(heard), sound) > 0.9
    await device.wait_for(lambda: len(device.streams) == 1, 5, "the device's stream")
    assert device.streams[0].data[:-1] == packets
    device.check()
    listener.check()
    assert not publisher.errors()

    # Music listening is each hub's own, its stream ids unique in the cluster.
    music = [publisher, await RawClient.connect(b.stream_address, name="music")]
    opened.clients.append(music[1])
    await music[1].hello()
    starts = []
    for client in music:
        client.send(proto.ListTracks())
        tracks = (await client.skip_to(proto.ListResult)).tracks
        client.send(proto.Play(tracks[0].track_id))
        starts.append(await client.skip_to(proto.StreamStart))
        await client.wait_for(lambda c=client: len(c.audio(starts[-1].stream_id)) >= 5)
        client.send(proto.Stop())
        client.check()
    assert len({music_start.stream_id for music_start in starts} | {start.stream_id}) == 3


async def heard_at_both_after(pressed_at: StockDevice, devices: list[StockDevice]) -> None:
    """Play pressed at one device is heard at every device (a stream with its
    start, then its end when Stop is pressed at another), and their LEDs follow."""
    before = [len(d.streams) for d in devices]
    assert await pressed_at.play() is True
    await wait_all(
        devices,
        lambda d: d.current is not None and len(d.current.packets) >= 10,
        5,
        "the new stream's first packets",
    )
    await wait_all(devices, shows(PLAYING, 0), 5, "playing at both hubs")
    other = next(d for d in devices if d is not pressed_at)
    assert await other.stop() is True
    await wait_all(
        devices,
        lambda d: len(d.streams) == before[devices.index(d)] + 1 and d.current is None,
        5,
        "the new stream's end",
    )
    await wait_all(devices, shows(IDLE, 0), 5, "idle at both hubs")
    for device in devices:
        device.check()  # never deaf, no end without its start, every packet Opus
        assert device.connections == 1  # nobody pressed Connect again


async def devices_at_two_hubs(cluster: Cluster, opened: Opened, mode: int) -> list[StockDevice]:
    """A device at each of two hubs, in one room in ``mode`` (set at the second)."""
    on_a, on_b = await opened.device(cluster.hub()), await opened.device(cluster.hub())
    for _ in range(mode):
        assert await on_b.mode() is True
    await wait_all([on_a, on_b], shows(IDLE, mode), 5, f"mode {mode + 1} at both hubs")
    return [on_a, on_b]


async def test_a_room_after_redis_restarted_empty_starts_over_and_its_devices_follow(
    cluster: Cluster, redis_server: RedisServer, opened: Opened
) -> None:
    on_a, on_b = await devices_at_two_hubs(cluster, opened, 3)
    restarted = time.monotonic()
    redis_server.restart()
    # The room's record went with Redis: the room starts over, and the
    # devices, still connected, show it (the stock device cannot reconnect
    # by itself: its streams must outlive the loss).
    await wait_all([on_a, on_b], shows(IDLE, 0), 15, "the first mode at both hubs")
    shown = (time.monotonic() - restarted) * 1000
    print(f"\nRedis restarted empty: both devices showed the new room after {shown:.0f} ms")
    for device in (on_a, on_b):
        device.check()
    assert await on_a.mode() is True
    await wait_all([on_a, on_b], shows(IDLE, 1), 5, "mode 2 at both hubs")
    for _ in range(len(TITLES) - 1):  # round to the first mode
        assert await on_b.mode() is True
    await wait_all([on_a, on_b], shows(IDLE, 0), 5, "the first mode again")
    await heard_at_both_after(on_a, [on_a, on_b])
    await heard_at_both_after(on_b, [on_a, on_b])

    # The room's members went with Redis too, and each hub counted its own
    # again: a device leaving one hub leaves the sound on for the other's.
    assert await on_b.play() is True
    await on_a.wait_for(lambda: on_a.current is not None, 5, "the sound at a")
    await on_a.disconnect()
    heard = len(on_b.packets)
    await on_b.wait_for(lambda: len(on_b.packets) > heard + 25, 5, "the sound plays on")
    assert on_b.current is not None and on_b.shows(leds.frame(PLAYING, 0))


async def test_a_stream_playing_when_redis_restarts_empty_ends_at_every_device(
    cluster: Cluster, redis_server: RedisServer, opened: Opened
) -> None:
    on_a, on_b = await devices_at_two_hubs(cluster, opened, 2)
    assert await on_a.play() is True
    await wait_all(
        [on_a, on_b],
        lambda d: d.current is not None and len(d.current.packets) >= 25,
        5,
        "half a second of the sound",
    )
    restarted = time.monotonic()
    redis_server.restart()
    # Every device gets the end of what it was playing (and plays it), and
    # shows the room as Redis has it now: idle, in its first mode.
    await wait_all(
        [on_a, on_b],
        lambda d: d.streams and d.current is None and d.shows(leds.frame(IDLE, 0)),
        15,
        "the stream's end, and the room idle",
    )
    ended = max((d.streams[0].ended or 0.0) - restarted for d in (on_a, on_b)) * 1000
    print(f"\nRedis restarted empty mid-stream: the end at both devices after {ended:.0f} ms")
    for device in (on_a, on_b):
        device.check()
        assert all(s.packets[0].is_start and s.packets[-1].is_end for s in device.streams)
        assert len(device.streams[0].packets) >= 25  # what it had heard, played
    await heard_at_both_after(on_b, [on_a, on_b])
    await heard_at_both_after(on_a, [on_a, on_b])
