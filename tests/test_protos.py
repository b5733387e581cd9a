"""The protos: committed stubs are fresh, and names and numbers match the wire contracts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf.descriptor import (
    Descriptor,
    EnumDescriptor,
    FieldDescriptor,
    FileDescriptor,
    ServiceDescriptor,
)

from hub.proto import chat_pb2, comms_pb2

ROOT = Path(__file__).resolve().parent.parent
STUBS = ROOT / "hub" / "proto"

F = FieldDescriptor
STRING, BOOL, BYTES, FLOAT, FIXED32 = (
    F.TYPE_STRING,
    F.TYPE_BOOL,
    F.TYPE_BYTES,
    F.TYPE_FLOAT,
    F.TYPE_FIXED32,
)
MESSAGE, ENUM = F.TYPE_MESSAGE, F.TYPE_ENUM


def test_committed_stubs_match_the_protos(tmp_path: Path) -> None:
    subprocess.run(
        [str(ROOT / "scripts" / "gen-protos"), str(tmp_path)],
        env={**os.environ, "PYTHON": sys.executable},
        check=True,
        capture_output=True,
        timeout=60,
    )
    generated = {p.name: p.read_bytes() for p in (tmp_path / "hub" / "proto").iterdir()}
    assert set(generated) == {
        f"{name}{suffix}"
        for name in ("chat", "comms")
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
    }
    committed = {p.name for p in STUBS.iterdir() if p.is_file() and p.name != "__init__.py"}
    assert committed == set(generated), "stubs without a proto, or missing stubs"
    stale = [name for name, data in generated.items() if (STUBS / name).read_bytes() != data]
    assert not stale, f"stale stubs {stale}: run scripts/gen-protos"


# -- The contract tables: the reference's and the stock device's wire (docs/devices.md) --
#
# message -> field -> (number, type, message or enum type name, oneof name)

Fields = dict[str, tuple[int, int, str | None, str | None]]

CHAT: dict[str, Fields] = {
    "LoginRequest": {"password": (1, STRING, None, None), "name": (2, STRING, None, None)},
    "LoginResponse": {"token": (1, STRING, None, None)},
    "LogoutRequest": {"token": (1, STRING, None, None)},
    "LogoutResponse": {},
    "StreamRequest": {"message": (2, STRING, None, None)},
    "StreamResponse": {
        "timestamp": (1, MESSAGE, "google.protobuf.Timestamp", None),
        "client_login": (2, MESSAGE, "chat.StreamResponse.Login", "event"),
        "client_logout": (3, MESSAGE, "chat.StreamResponse.Logout", "event"),
        "client_message": (4, MESSAGE, "chat.StreamResponse.Message", "event"),
        "server_shutdown": (5, MESSAGE, "chat.StreamResponse.Shutdown", "event"),
    },
    "StreamResponse.Login": {"name": (1, STRING, None, None)},
    "StreamResponse.Logout": {"name": (1, STRING, None, None)},
    "StreamResponse.Message": {"name": (1, STRING, None, None), "message": (2, STRING, None, None)},
    "StreamResponse.Shutdown": {},
}

COMMS_PACKAGE = "com.opalcamera.test"
RGBA = f"{COMMS_PACKAGE}.RGBAColor"
LEDS: Fields = {f"led_{i}": (i + 1, MESSAGE, RGBA, None) for i in range(6)}
BUTTON_STATUS = f"{COMMS_PACKAGE}.DeviceStatus.ButtonStatus"

COMMS: dict[str, Fields] = {
    "RGBAColor": {"rgba": (1, FIXED32, None, None)},
    "DeviceStatus": {
        **LEDS,
        **{f"button_{i}": (6 + i, ENUM, BUTTON_STATUS, None) for i in range(1, 5)},
        "battery_level": (11, FLOAT, None, None),
    },
    "DeviceStatusSet": LEDS,
    "DeviceStatusRequest": {
        "get": (1, BOOL, None, "request"),
        "set": (2, MESSAGE, f"{COMMS_PACKAGE}.DeviceStatusSet", "request"),
    },
    "DeviceStatusResponse": {
        "state": (1, MESSAGE, f"{COMMS_PACKAGE}.DeviceStatus", "response"),
        "status": (2, STRING, None, "response"),
    },
    "ButtonEvent": {
        "button_id": (1, ENUM, f"{COMMS_PACKAGE}.ButtonEvent.ButtonId", None),
        "event": (2, ENUM, f"{COMMS_PACKAGE}.ButtonEvent.ButtonEventType", None),
    },
    "DeviceEvent": {
        "button_event": (1, MESSAGE, f"{COMMS_PACKAGE}.ButtonEvent", "event"),
    },
    "DeviceEventResponse": {"ack": (1, BOOL, None, None)},
    "AudioStreamRequest": {"start": (1, BOOL, None, None)},
    "AudioPacket": {
        "is_start": (1, BOOL, None, None),
        "is_end": (2, BOOL, None, None),
        "data": (3, BYTES, None, None),
    },
}

ENUMS: dict[str, dict[str, int]] = {
    "DeviceStatus.ButtonStatus": {"PRESSED": 0, "RELEASED": 1},
    "ButtonEvent.ButtonId": {"BUTTON_1": 0, "BUTTON_2": 1, "BUTTON_3": 2, "BUTTON_4": 3},
    "ButtonEvent.ButtonEventType": {"PRESS": 0, "HOLD": 1, "RELEASE": 2},
}

# service -> method -> (input, output, client streams, server streams)
Methods = dict[str, tuple[str, str, bool, bool]]

SERVICES: dict[tuple[str, str], Methods] = {
    ("chat", "Chat"): {
        "Login": ("chat.LoginRequest", "chat.LoginResponse", False, False),
        "Logout": ("chat.LogoutRequest", "chat.LogoutResponse", False, False),
        "Stream": ("chat.StreamRequest", "chat.StreamResponse", True, True),
    },
    ("comms", "DeviceService"): {
        # The device streams the responses; the server streams the requests.
        "StatusStream": (
            f"{COMMS_PACKAGE}.DeviceStatusResponse",
            f"{COMMS_PACKAGE}.DeviceStatusRequest",
            True,
            True,
        ),
        "EventStream": (
            f"{COMMS_PACKAGE}.DeviceEvent",
            f"{COMMS_PACKAGE}.DeviceEventResponse",
            True,
            True,
        ),
        "ServerAudioStream": (
            f"{COMMS_PACKAGE}.AudioStreamRequest",
            f"{COMMS_PACKAGE}.AudioPacket",
            False,
            True,
        ),
    },
}

FILES: dict[str, FileDescriptor] = {"chat": chat_pb2.DESCRIPTOR, "comms": comms_pb2.DESCRIPTOR}


def message(file: FileDescriptor, dotted: str) -> Descriptor:
    first, *nested = dotted.split(".")
    descriptor: Descriptor = file.message_types_by_name[first]
    for name in nested:
        descriptor = descriptor.nested_types_by_name[name]
    return descriptor


def check_fields(descriptor: Descriptor, expected: Fields) -> None:
    for name, (number, type_, type_name, oneof) in expected.items():
        field = descriptor.fields_by_name.get(name)
        assert field is not None, f"{descriptor.full_name}.{name} is missing"
        where = f"{descriptor.full_name}.{name}"
        assert field.number == number, where
        assert field.type == type_, where
        assert not field.is_repeated, where
        if type_ == MESSAGE:
            assert field.message_type is not None
            assert field.message_type.full_name == type_name, where
        elif type_ == ENUM:
            assert field.enum_type is not None
            assert field.enum_type.full_name == type_name, where
        actual_oneof = field.containing_oneof.name if field.containing_oneof else None
        assert actual_oneof == oneof, where
        # No field added since may take a number the contract uses.
        assert descriptor.fields_by_number[number].name == name, where


def test_packages() -> None:
    assert chat_pb2.DESCRIPTOR.package == "chat"
    assert comms_pb2.DESCRIPTOR.package == COMMS_PACKAGE
    assert "google/protobuf/timestamp.proto" in [d.name for d in chat_pb2.DESCRIPTOR.dependencies]


@pytest.mark.parametrize("name", list(CHAT))
def test_chat_messages_match_the_contract(name: str) -> None:
    descriptor = message(chat_pb2.DESCRIPTOR, name)
    assert descriptor.full_name == f"chat.{name}"
    check_fields(descriptor, CHAT[name])


def test_stream_request_has_no_field_1() -> None:
    assert 1 not in message(chat_pb2.DESCRIPTOR, "StreamRequest").fields_by_number
    assert chat_pb2.StreamRequest.MESSAGE_FIELD_NUMBER == 2


def test_stream_response_event_oneof() -> None:
    descriptor = message(chat_pb2.DESCRIPTOR, "StreamResponse")
    oneof = descriptor.oneofs_by_name["event"]
    assert [f.name for f in oneof.fields] == [
        "client_login",
        "client_logout",
        "client_message",
        "server_shutdown",
    ]


@pytest.mark.parametrize("name", list(COMMS))
def test_comms_messages_match_the_contract(name: str) -> None:
    descriptor = message(comms_pb2.DESCRIPTOR, name)
    assert descriptor.full_name == f"{COMMS_PACKAGE}.{name}"
    check_fields(descriptor, COMMS[name])


@pytest.mark.parametrize("name", list(ENUMS))
def test_comms_enums_match_the_contract(name: str) -> None:
    message_name, enum_name = name.split(".")
    enum: EnumDescriptor = message(comms_pb2.DESCRIPTOR, message_name).enum_types_by_name[enum_name]
    assert {v.name: v.number for v in enum.values} == ENUMS[name]


@pytest.mark.parametrize(("file", "service"), list(SERVICES))
def test_services_match_the_contract(file: str, service: str) -> None:
    descriptor: ServiceDescriptor = FILES[file].services_by_name[service]
    expected = SERVICES[(file, service)]
    methods = {m.name: m for m in descriptor.methods}
    assert set(expected) <= set(methods)
    for name, (input_, output, client_streaming, server_streaming) in expected.items():
        method = methods[name]
        assert method.input_type.full_name == input_, name
        assert method.output_type.full_name == output, name
        assert method.client_streaming is client_streaming, name
        assert method.server_streaming is server_streaming, name


def test_wire_bytes_of_a_stream_request() -> None:
    # Field 2, wire type 2 (length-delimited): tag 0x12.
    assert chat_pb2.StreamRequest(message="hi").SerializeToString() == b"\x12\x02hi"
    assert comms_pb2.AudioPacket(is_start=True, is_end=True, data=b"\x01").SerializeToString() == (
        b"\x08\x01\x10\x01\x1a\x01\x01"
    )
    assert comms_pb2.RGBAColor(rgba=0xFF0000FF).SerializeToString() == b"\x0d\xff\x00\x00\xff"
