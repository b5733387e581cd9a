import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LoginRequest(_message.Message):
    __slots__ = ("password", "name")
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    password: str
    name: str
    def __init__(self, password: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class LoginResponse(_message.Message):
    __slots__ = ("token",)
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: str
    def __init__(self, token: _Optional[str] = ...) -> None: ...

class LogoutRequest(_message.Message):
    __slots__ = ("token",)
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: str
    def __init__(self, token: _Optional[str] = ...) -> None: ...

class LogoutResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StreamRequest(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: str
    def __init__(self, message: _Optional[str] = ...) -> None: ...

class StreamResponse(_message.Message):
    __slots__ = ("timestamp", "client_login", "client_logout", "client_message", "server_shutdown")
    class Login(_message.Message):
        __slots__ = ("name",)
        NAME_FIELD_NUMBER: _ClassVar[int]
        name: str
        def __init__(self, name: _Optional[str] = ...) -> None: ...
    class Logout(_message.Message):
        __slots__ = ("name",)
        NAME_FIELD_NUMBER: _ClassVar[int]
        name: str
        def __init__(self, name: _Optional[str] = ...) -> None: ...
    class Message(_message.Message):
        __slots__ = ("name", "message")
        NAME_FIELD_NUMBER: _ClassVar[int]
        MESSAGE_FIELD_NUMBER: _ClassVar[int]
        name: str
        message: str
        def __init__(self, name: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...
    class Shutdown(_message.Message):
        __slots__ = ()
        def __init__(self) -> None: ...
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    CLIENT_LOGIN_FIELD_NUMBER: _ClassVar[int]
    CLIENT_LOGOUT_FIELD_NUMBER: _ClassVar[int]
    CLIENT_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SERVER_SHUTDOWN_FIELD_NUMBER: _ClassVar[int]
    timestamp: _timestamp_pb2.Timestamp
    client_login: StreamResponse.Login
    client_logout: StreamResponse.Logout
    client_message: StreamResponse.Message
    server_shutdown: StreamResponse.Shutdown
    def __init__(self, timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., client_login: _Optional[_Union[StreamResponse.Login, _Mapping]] = ..., client_logout: _Optional[_Union[StreamResponse.Logout, _Mapping]] = ..., client_message: _Optional[_Union[StreamResponse.Message, _Mapping]] = ..., server_shutdown: _Optional[_Union[StreamResponse.Shutdown, _Mapping]] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("room",)
    ROOM_FIELD_NUMBER: _ClassVar[int]
    room: str
    def __init__(self, room: _Optional[str] = ...) -> None: ...

class RoomEvent(_message.Message):
    __slots__ = ("timestamp", "room", "text")
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    ROOM_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    timestamp: _timestamp_pb2.Timestamp
    room: str
    text: str
    def __init__(self, timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., room: _Optional[str] = ..., text: _Optional[str] = ...) -> None: ...

class PressRequest(_message.Message):
    __slots__ = ("room", "button")
    class Button(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        MODE: _ClassVar[PressRequest.Button]
        PLAY: _ClassVar[PressRequest.Button]
        STOP: _ClassVar[PressRequest.Button]
    MODE: PressRequest.Button
    PLAY: PressRequest.Button
    STOP: PressRequest.Button
    ROOM_FIELD_NUMBER: _ClassVar[int]
    BUTTON_FIELD_NUMBER: _ClassVar[int]
    room: str
    button: PressRequest.Button
    def __init__(self, room: _Optional[str] = ..., button: _Optional[_Union[PressRequest.Button, str]] = ...) -> None: ...

class PressResponse(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: str
    def __init__(self, state: _Optional[str] = ...) -> None: ...
