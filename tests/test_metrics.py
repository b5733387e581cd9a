"""Prometheus metrics, scraped over real HTTP from a running App (real ports).

Each test drives the hub through its real doors (gRPC chat and rooms, raw
TCP) and reads ``/metrics`` before and after: every figure must move as the
clients act, and only as far as they acted.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass

import grpc
import pytest
import pytest_asyncio
from chat_helpers import (
    PASSWORD,
    SECRET,
    OpenChannel,
    ServedHub,
    Stream,
    eventually,
    kind,
    login,
    logout,
    rpc_error,
    timeout,
    wait_subscribers,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc
from scrape import Scrape, scrape
from stock_device import StockDevice
from tcp.raw_client import RawClient

from hub.app import Addresses, App
from hub.audio.library import SoundLibrary, default_sounds_folder
from hub.audio.music import MusicFolder
from hub.config import load
from hub.probe import probe
from hub.proto import chat_pb2, chat_pb2_grpc
from hub.settings import ChatSettings, OperatorSettings, Settings
from hub.tcp.codec import ErrorCode, Join, Joined, Play, StreamStart

pytestmark = pytest.mark.asyncio

METRICS = OperatorSettings(metrics_address="127.0.0.1:0")


@dataclass(frozen=True, slots=True)
class Running:
    app: App
    grpc: list[str]
    stream: str
    metrics: str | None  # the /metrics URL

    async def scrape(self) -> Scrape:
        assert self.metrics is not None
        return await scrape(self.metrics)


StartApp = Callable[..., Awaitable[Running]]


@pytest_asyncio.fixture
async def start_app() -> AsyncIterator[StartApp]:
    """``await start_app(chat=ChatSettings(...), operator=..., grpc_ports=1)``:
    an App serving every door on 127.0.0.1, free ports, until teardown."""
    async with AsyncExitStack() as stack:

        async def start(
            chat: ChatSettings | None = None,
            operator: OperatorSettings = METRICS,
            grpc_ports: int = 1,
        ) -> Running:
            settings = Settings(chat=chat or ChatSettings(password=PASSWORD), operator=operator)
            app = App(
                settings,
                Addresses(grpc=["127.0.0.1:0"] * grpc_ports, stream="127.0.0.1:0"),
                secret=SECRET,
                library=SoundLibrary.from_folder(),
                music=MusicFolder(default_sounds_folder()),
            )
            started: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()

            async def on_started(bound: list[str]) -> None:
                started.set_result(bound)

            task = asyncio.create_task(app.run(on_started))

            async def stop() -> None:
                app.request_stop()
                await asyncio.wait_for(task, timeout(10))

            stack.push_async_callback(stop)
            done, _ = await asyncio.wait(
                (started, task), timeout=timeout(20), return_when="FIRST_COMPLETED"
            )
            assert started in done, task.exception() if task.done() else "App did not start"
            bound = started.result()
            grpc_addresses, rest = bound[:grpc_ports], bound[grpc_ports:]
            url = f"http://{rest[1]}/metrics" if operator.metrics_address else None
            return Running(app, grpc_addresses, rest[0], url)

        yield start


async def test_chat_activity_moves_the_counters(
    start_app: StartApp, open_channel: OpenChannel
) -> None:
    running = await start_app()
    hub = running.app.hub
    channel = open_channel(running.grpc[0])
    before = await running.scrape()
    assert before.value("hub_sessions") == 0
    assert before.value("hub_logins_total") == 0

    token = await login(channel, "alice")
    wrong = await rpc_error(
        chat_pb2_grpc.ChatStub(channel).Login(  # type: ignore[no-untyped-call]
            chat_pb2.LoginRequest(name="mallory", password="guess")
        )
    )
    assert wrong.code() == grpc.StatusCode.UNAUTHENTICATED
    missing = Stream(channel, None)
    assert (await missing.end()).code == grpc.StatusCode.UNAUTHENTICATED
    forged = Stream(channel, token[:-4] + "AAAA")
    assert (await forged.end()).code == grpc.StatusCode.UNAUTHENTICATED

    stream = Stream(channel, token)
    await wait_subscribers(hub, 1)
    during = await running.scrape()
    assert during.value("hub_logins_total", outcome="ok") == 1
    assert during.value("hub_logins_total", outcome="wrong_password") == 1
    assert during.value("hub_auth_failures_total", door="chat", reason="wrong_password") == 1
    assert during.value("hub_auth_failures_total", door="chat", reason="missing_token") == 1
    assert during.value("hub_auth_failures_total", door="chat", reason="invalid_token") == 1
    assert during.value("hub_sessions") == 1
    assert during.value("hub_open_streams", door="chat") == 1

    for n in range(3):
        await stream.send(f"line {n}")
    for n in range(3):
        assert await stream.next_message() == ("alice", f"line {n}")
    after = await running.scrape()
    assert after.value("hub_chat_lines_total") == 3
    delivered = after.value("hub_events_delivered_total", channel="chat")
    assert delivered - during.value("hub_events_delivered_total", channel="chat") >= 3
    # Sampled, but a stream's first event is always measured.
    assert after.value("hub_publish_to_write_seconds_count", door="chat") >= 1

    await logout(channel, token)
    ended = await stream.end()
    assert ended.code == grpc.StatusCode.OK
    await wait_subscribers(hub, 0)
    gone = await running.scrape()
    assert gone.value("hub_logouts_total", outcome="ok") == 1
    assert gone.value("hub_sessions_ended_total", reason="logout") == 1
    assert gone.value("hub_sessions") == 0
    assert gone.value("hub_open_streams", door="chat") == 0


async def test_a_stream_cut_as_slow_is_counted(
    start_app: StartApp, open_channel: OpenChannel
) -> None:
    running = await start_app(chat=ChatSettings(password=PASSWORD, queue_max=8, rate_per_second=0))
    hub = running.app.hub
    publisher_channel = open_channel(running.grpc[0])
    publisher = Stream(publisher_channel, await login(publisher_channel, "publisher"))
    # No BDP probe: the stalled reader's flow-control window stays small.
    stalled_channel = open_channel(running.grpc[0], options=[("grpc.http2.bdp_probe", 0)])
    stalled = Stream(stalled_channel, await login(stalled_channel, "stalled"))
    await wait_subscribers(hub, 2)
    # 4 KB lines, each read back by the publisher before the next: only
    # the stalled stream falls behind, far past any window and its 8 events.
    n = 0
    while hub.subscriber_count("chat") == 2:
        assert n < 500, "the stalled stream was never cut"
        await publisher.send(f"{n:08d}".ljust(4000, "x"))
        await publisher.skip_to(lambda e: kind(e) == "client_message")
        n += 1
    ended = await stalled.end()
    assert ended.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    after = await running.scrape()
    assert after.value("hub_slow_consumer_disconnects_total", door="chat") == 1
    assert after.value("hub_open_streams", door="chat") == 1  # the publisher's


async def test_rate_limit_refusals_are_counted(
    start_app: StartApp, open_channel: OpenChannel
) -> None:
    running = await start_app(
        chat=ChatSettings(password=PASSWORD, rate_per_second=0.01, rate_burst=1)
    )
    channel = open_channel(running.grpc[0])
    stream = Stream(channel, await login(channel, "flooder"))
    await stream.send("one")
    await stream.send("two")
    ended = await stream.end()
    assert ended.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    after = await running.scrape()
    assert after.value("hub_rate_limited_total", door="chat") == 1
    assert after.value("hub_chat_lines_total") == 1


async def test_tcp_connections_and_protocol_errors_are_counted(start_app: StartApp) -> None:
    running = await start_app()
    before = await running.scrape()
    assert before.value("hub_tcp_connections_total") == 0
    client = await RawClient.connect(running.stream, name="metrics")
    try:
        await client.hello()
        during = await running.scrape()
        assert during.value("hub_tcp_connections_total") == 1
        assert during.value("hub_open_streams", door="tcp") == 1
        # A frame of an unknown type: the server names the violation and closes.
        client.send_raw(b"\x00\x00\x00\x01\x7f")
        error = await client.fatal_error()
        assert error.code is ErrorCode.BAD_FRAME
        await client.wait_closed()
    finally:
        client.close()
    stream_server = running.app.stream
    assert stream_server is not None
    await eventually(lambda: not stream_server.clients, "the connection gone")
    after = await running.scrape()
    assert after.value("hub_tcp_protocol_errors_total", code="bad_frame") == 1
    assert after.value("hub_tcp_protocol_errors_total") == 1
    assert after.value("hub_open_streams", door="tcp") == 0


async def test_rooms_listeners_and_audio_are_counted(
    start_app: StartApp, open_channel: OpenChannel
) -> None:
    running = await start_app()
    listener = await RawClient.connect(running.stream, name="listener")
    player = await RawClient.connect(running.stream, name="player")
    device = StockDevice(running.grpc[0], "kitchen")
    try:
        await listener.hello()
        listener.send(Join("kitchen"))
        await listener.next(Joined)
        await device.connect()
        await device.wait_ready()
        channel = open_channel(running.grpc[0])
        token = await login(channel, "dj")
        rooms = chat_pb2_grpc.RoomsStub(channel)  # type: ignore[no-untyped-call]
        watch = rooms.Watch(
            chat_pb2.WatchRequest(room="kitchen"), metadata=(("x-chat-token", token),)
        )
        await asyncio.wait_for(watch.read(), timeout())
        joined = await running.scrape()
        assert joined.value("hub_rooms") == 1
        assert joined.value("hub_room_members") == 2  # the TCP listener and the device
        assert joined.value("hub_room_listeners") == 2
        assert joined.value("hub_open_streams", door="devices") == 3  # status, events, audio
        assert joined.value("hub_open_streams", door="rooms") == 1
        assert joined.value("hub_audio_packets_sent_total") == 0

        await asyncio.wait_for(
            rooms.Press(
                chat_pb2.PressRequest(room="kitchen", button=chat_pb2.PressRequest.PLAY),
                metadata=(("x-chat-token", token),),
            ),
            timeout(),
        )
        start = await listener.next(StreamStart)
        await listener.wait_for(lambda: len(listener.audio(start.stream_id)) >= 10, timeout=10)
        await device.wait_for(lambda: len(device.packets) >= 10, timeout=10)

        await player.hello()
        player.send(Play(1))
        track = await player.next(StreamStart)
        await player.wait_for(lambda: len(player.audio(track.stream_id)) >= 10, timeout=10)
        playing = await running.scrape()
        assert playing.value("hub_audio_packets_sent_total", source="room") >= 10
        assert playing.value("hub_audio_packets_sent_total", source="music") >= 10
        assert playing.value("hub_events_delivered_total", channel="room_audio") >= 20
        assert playing.value("hub_publish_to_write_seconds_count", door="devices") >= 1
        assert playing.value("hub_publish_to_write_seconds_count", door="rooms") >= 1
        assert playing.value("hub_pacer_lateness_seconds_count") >= 20
        # Lateness is a sanity bound here: a loaded machine may run late, never by minutes.
        assert playing.value("hub_pacer_lateness_seconds_sum") < 60
        watch.cancel()
        assert device.traps == []
    finally:
        await device.disconnect()
        listener.close()
        player.close()


async def test_the_backplane_hook_reaches_metrics_and_health(
    start_app: StartApp, open_channel: OpenChannel, capsys: pytest.CaptureFixture[str]
) -> None:
    running = await start_app()
    stub = health_pb2_grpc.HealthStub(open_channel(running.grpc[0]))
    watch = stub.Watch(health_pb2.HealthCheckRequest(service="chat.Chat"))
    serving = health_pb2.HealthCheckResponse.SERVING
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    assert (await asyncio.wait_for(watch.read(), timeout())).status == serving
    assert (await running.scrape()).value("hub_backplane_up") == 1

    running.app.set_backplane(False)
    assert (await asyncio.wait_for(watch.read(), timeout())).status == not_serving
    check = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout())
    assert check.status == not_serving
    # The probe command says so too, and fails.
    config = load(["-h", running.grpc[0]], {})
    assert await asyncio.to_thread(probe, config) == 1
    assert capsys.readouterr().out == f"unhealthy: {running.grpc[0]} NOT_SERVING\n"
    assert (await running.scrape()).value("hub_backplane_up") == 0

    running.app.set_backplane(True)
    assert (await asyncio.wait_for(watch.read(), timeout())).status == serving
    # Back up after being down: a reconnection. The broker reports each
    # publication's lag (Backplane.on_lag) straight to the metrics.
    running.app.metrics.backplane_lag(0.003)
    after = await running.scrape()
    assert after.value("hub_backplane_up") == 1
    assert after.value("hub_backplane_reconnects_total") == 1
    assert after.value("hub_backplane_lag_seconds_count") == 1
    assert after.value("hub_backplane_lag_seconds_bucket", le="0.005") == 1
    watch.cancel()


async def test_without_a_metrics_address_nothing_is_served_or_counted(start_app: StartApp) -> None:
    running = await start_app(operator=OperatorSettings())
    assert running.metrics is None
    assert running.app.metrics_server is None
    assert running.app.metrics.registry is None


# -- health, in process --------------------------------------------------------------------

SERVICES = ["", "chat.Chat", "chat.Rooms", "com.opalcamera.test.DeviceService"]


async def test_health_is_serving_on_every_grpc_port_for_every_service(
    start_app: StartApp, open_channel: OpenChannel
) -> None:
    running = await start_app(grpc_ports=2)
    assert len(set(running.grpc)) == 2
    for address in running.grpc:
        stub = health_pb2_grpc.HealthStub(open_channel(address))
        for service in SERVICES:
            check = await stub.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout()
            )
            assert check.status == health_pb2.HealthCheckResponse.SERVING, (address, service)
        unknown = await rpc_error(stub.Check(health_pb2.HealthCheckRequest(service="chat.Nope")))
        assert unknown.code() == grpc.StatusCode.NOT_FOUND


async def test_health_is_not_serving_until_ready(
    hub_server: ServedHub, channel: grpc.aio.Channel
) -> None:
    # A server whose App has not said every door is bound (here: none will).
    stub = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest(service="chat.Chat")
    before = await stub.Check(request, timeout=timeout())
    assert before.status == health_pb2.HealthCheckResponse.NOT_SERVING
    await hub_server.server.health.ready()
    after = await stub.Check(request, timeout=timeout())
    assert after.status == health_pb2.HealthCheckResponse.SERVING


async def test_health_says_not_serving_as_soon_as_shutdown_starts(
    start_app: StartApp, open_channel: OpenChannel
) -> None:
    running = await start_app()
    channel = open_channel(running.grpc[0])
    stream = Stream(channel, await login(channel, "alice"))
    await wait_subscribers(running.app.hub, 1)
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
    serving = await asyncio.wait_for(watch.read(), timeout())
    assert serving.status == health_pb2.HealthCheckResponse.SERVING
    running.app.request_stop()
    going = await asyncio.wait_for(watch.read(), timeout())
    assert going.status == health_pb2.HealthCheckResponse.NOT_SERVING
    # The chat stream still ends the usual way, with the shutdown event.
    ended = await stream.end()
    assert [kind(e) for e in ended.events] == ["server_shutdown"]
