"""The stand-in itself: does it catch every trap the stock client falls into?

A scripted, misbehaving DeviceService on a real grpc.aio server does to the
stand-in what the hub must never do; each trap has to be recorded. Without
this, the hub tests' "no traps" would prove nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import pytest
import pytest_asyncio
from chat_helpers import eventually
from stock_device import MODE, OWN_LED, StockDevice

from hub.audio.opus import OpusSettings, encode_blocks, silence_packet
from hub.audio.testing import tone
from hub.proto import comms_pb2, comms_pb2_grpc

pytestmark = pytest.mark.asyncio

SETTINGS = OpusSettings()
SILENCE = silence_packet(SETTINGS)
TONE = list(encode_blocks([tone(440.0, 0.1)], SETTINGS))
Packet = comms_pb2.AudioPacket


@dataclass
class Script:
    """What the fake server sends, and what it saw."""

    status: list[comms_pb2.DeviceStatusRequest] = field(default_factory=list)
    audio: list[comms_pb2.AudioPacket] = field(default_factory=list)
    end_audio: bool = False
    acks_per_event: int = 1
    answers: list[comms_pb2.DeviceStatusResponse] = field(default_factory=list)


class FakeDeviceService(comms_pb2_grpc.DeviceServiceServicer):
    def __init__(self, script: Script) -> None:
        self.script = script

    async def StatusStream(
        self,
        responses: AsyncIterator[comms_pb2.DeviceStatusResponse],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[comms_pb2.DeviceStatusRequest]:
        for request in self.script.status:
            yield request
            self.script.answers.append(await anext(responses))
        await asyncio.Future()  # open until the device goes

    async def EventStream(
        self, events: AsyncIterator[comms_pb2.DeviceEvent], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[comms_pb2.DeviceEventResponse]:
        async for _ in events:
            for _ in range(self.script.acks_per_event):
                yield comms_pb2.DeviceEventResponse(ack=True)

    async def ServerAudioStream(
        self, request: comms_pb2.AudioStreamRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[comms_pb2.AudioPacket]:
        for packet in self.script.audio:
            yield packet
        if not self.script.end_audio:
            await asyncio.Future()


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[tuple[Script, StockDevice]]:
    """A scripted server and a stand-in for it, connected once the script is set."""
    script = Script()
    server = grpc.aio.server()
    comms_pb2_grpc.add_DeviceServiceServicer_to_server(FakeDeviceService(script), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    device = StockDevice(f"127.0.0.1:{port}", "fake")
    yield script, device
    await device.disconnect()
    await server.stop(0)


def full_set(*rgba: int) -> comms_pb2.DeviceStatusRequest:
    frame = comms_pb2.DeviceStatusSet()
    for index, value in enumerate(rgba):
        getattr(frame, f"led_{index}").rgba = value
    return comms_pb2.DeviceStatusRequest(set=frame)


def wav(*packets: bytes) -> list[comms_pb2.AudioPacket]:
    """A well-formed stream of ``packets``."""
    last = len(packets) - 1
    return [Packet(is_start=i == 0, is_end=i == last, data=p) for i, p in enumerate(packets)]


async def test_a_full_frame_is_painted_and_a_get_answered(
    fake: tuple[Script, StockDevice],
) -> None:
    script, device = fake
    script.status = [
        full_set(0xFF0000FF, 0x11223344, 0, 0x55667788, 0, 0xAABBCCFF),
        comms_pb2.DeviceStatusRequest(get=True),
    ]
    await device.connect()
    await device.wait_for(lambda: device.gets == 1)
    await eventually(lambda: len(script.answers) == 2, "the answers at the server")
    assert device.leds == [OWN_LED, 0x112233, 0, 0x556677, 0, 0xAABBCC]  # led_0 is its own
    assert script.answers[0].status == "success"
    state = script.answers[1].state
    assert [state.led_1.rgba >> 8, state.led_3.rgba >> 8, state.led_0.rgba >> 8] == [
        0x112233,
        0x556677,
        OWN_LED,
    ]
    device.check()


async def test_a_partial_frame_paints_the_missing_leds_black(
    fake: tuple[Script, StockDevice],
) -> None:
    script, device = fake
    partial = comms_pb2.DeviceStatusSet()
    partial.led_1.rgba = 0x00FF00FF
    script.status = [
        full_set(0, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF),
        comms_pb2.DeviceStatusRequest(set=partial),
        comms_pb2.DeviceStatusRequest(),  # neither get nor set: taken as a set
    ]
    await device.connect()
    await device.wait_for(lambda: len(device.frames) == 3)
    await eventually(lambda: len(script.answers) == 3, "the answers at the server")
    assert {a.status for a in script.answers} == {"success"}
    assert device.leds[1:] == [0, 0, 0, 0, 0]
    assert device.frames[1] == (None, 0x00FF00FF, None, None, None, None)
    assert device.traps == [
        "partial LED frame: led_2, led_3, led_4, led_5 painted black",
        "partial LED frame: led_1, led_2, led_3, led_4, led_5 painted black",
    ]


async def test_a_well_formed_stream_is_played(fake: tuple[Script, StockDevice]) -> None:
    script, device = fake
    script.audio = wav(*TONE, SILENCE)
    await device.connect()
    await device.wait_for(lambda: len(device.streams) == 1)
    assert device.streams[0].data == [*TONE, SILENCE]
    assert len(device.streams[0].pcm) == 960 * (len(TONE) + 1)
    device.check()


@pytest.mark.parametrize(
    ("audio", "dead", "trap"),
    [
        (
            [Packet(is_start=True, data=TONE[0]), Packet(data=b"\xff\xff\xff\xff")],
            "Opus decode error",
            "Opus decode error",
        ),
        ([Packet(is_end=True, data=SILENCE)], "is_end with no open stream", "is_end with no"),
        (
            [Packet(data=TONE[0]), Packet(is_end=True, data=SILENCE)],
            "is_end with no open stream",
            "outside any stream",
        ),
    ],
    ids=["garbage", "end-without-start", "no-start-at-all"],
)
async def test_what_kills_the_audio_thread(
    fake: tuple[Script, StockDevice], audio: list[comms_pb2.AudioPacket], dead: str, trap: str
) -> None:
    script, device = fake
    # After the fatal packet, a good stream: the dead thread hears none of it.
    script.audio = [*audio, *wav(*TONE, SILENCE)]
    await device.connect()
    await device.wait_for(lambda: len(device.packets) == len(script.audio))
    assert device.audio_dead is not None and device.audio_dead.startswith(dead)
    assert device.streams == []
    assert trap in device.traps[0]


async def test_empty_data_is_concealment_noise(fake: tuple[Script, StockDevice]) -> None:
    script, device = fake
    script.audio = wav(TONE[0], b"", SILENCE)
    await device.connect()
    await device.wait_for(lambda: len(device.streams) == 1)
    assert device.concealed == 1
    assert device.traps == ["empty AudioPacket.data: decoded as concealment noise"]
    assert len(device.streams[0].pcm) == 960 * 2 + 5760  # 120 ms of noise in the middle


async def test_a_second_start_drops_the_unfinished_stream(
    fake: tuple[Script, StockDevice],
) -> None:
    script, device = fake
    script.audio = [Packet(is_start=True, data=TONE[0]), *wav(TONE[1], SILENCE)]
    await device.connect()
    await device.wait_for(lambda: len(device.streams) == 1)
    assert len(device.dropped) == 1
    assert device.streams[0].data == [TONE[1], SILENCE]
    assert device.audio_dead is None
    assert "dropped unplayed" in device.traps[0]


async def test_an_ended_audio_stream_leaves_the_device_deaf(
    fake: tuple[Script, StockDevice],
) -> None:
    script, device = fake
    script.audio = wav(*TONE, SILENCE)
    script.end_audio = True
    await device.connect()
    await device.wait_for(lambda: device.deaf is not None)
    assert device.streams[0].data == [*TONE, SILENCE]
    assert device.traps == ["the server ended ServerAudioStream"]


async def test_an_unanswered_event_hangs_the_buttons(fake: tuple[Script, StockDevice]) -> None:
    script, device = fake
    script.acks_per_event = 0
    await device.connect()
    with pytest.raises(AssertionError, match="no response"):
        await device.press(MODE, timeout=0.3)
    assert device.traps == ["an event got no DeviceEventResponse: the buttons hang"]


async def test_two_answers_to_one_event_are_caught(fake: tuple[Script, StockDevice]) -> None:
    script, device = fake
    script.acks_per_event = 2
    await device.connect()
    assert await device.press(MODE) is True
    await device.wait_for(lambda: device.unclaimed_acks == 1)
    assert await device.press(MODE) is True
    assert device.traps == ["a DeviceEventResponse came before its event"]
