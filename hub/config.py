"""The hub's one configuration surface: every option once, in ``OPTIONS``.

From that table come the command-line flags, the ``HUB_*`` environment
variables, the keys of a ``--config`` TOML file, the README's table
(``python -m hub.config`` prints it; a test checks the README holds it) and
what ``hub config`` prints. Precedence: flag > environment > file > default.

Unknown file keys, ``HUB_*`` variables that name no option, and values of the
wrong kind are refused before anything starts, naming the key and what it
expects (``ConfigError``). A new option is one more ``Option(...)`` line.
"""

from __future__ import annotations

import argparse
import difflib
import importlib.metadata
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from hub.audio.opus import ALLOWED_FRAME_MS, OpusSettings
from hub.logs import MASK  # a secret shows as the same mask here as in the log
from hub.settings import ChatSettings, DeviceSettings, OperatorSettings, StreamSettings

ENV_PREFIX = "HUB_"
# HUB_* names that belong to the test suite and the benchmarks, not to the
# hub: passed through to the processes they start, never refused.
FOREIGN_ENV_PREFIXES = ("HUB_TEST_", "HUB_BENCH_")
CONFIG_ENV = "HUB_CONFIG"


class ConfigError(ValueError):
    """A configuration value the hub refuses, with where it came from."""


# -- kinds of value -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Kind:
    """How one kind of value is read from text (flags, environment) and from
    TOML, and what it is called in an error message."""

    expects: str
    from_text: Callable[[str], Any]
    from_toml: Callable[[object], Any]
    metavar: str = "VALUE"


def _refuse() -> Any:
    raise ValueError


def _text_kind(expects: str = "text", metavar: str = "TEXT") -> Kind:
    def from_toml(value: object) -> str:
        return value if isinstance(value, str) else _refuse()

    return Kind(expects, str, from_toml, metavar)


def _number_kind(minimum: float, *, whole: bool, maximum: float | None = None) -> Kind:
    noun = "a whole number" if whole else "a number"
    bound = f"from {minimum:g}" + (f" to {maximum:g}" if maximum is not None else "")

    def check(value: float) -> Any:
        if not minimum <= value <= (maximum if maximum is not None else value):
            raise ValueError
        return value

    def from_text(text: str) -> Any:
        return check(int(text) if whole else float(text))

    def from_toml(value: object) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError
        if whole and not isinstance(value, int):
            raise ValueError
        return check(value if whole else float(value))

    return Kind(f"{noun} {bound}", from_text, from_toml, "N")


def _choice_kind(choices: Sequence[Any], convert: Callable[[str], Any] = str) -> Kind:
    def pick(value: Any) -> Any:
        if value not in choices:
            raise ValueError
        return value

    def from_text(text: str) -> Any:
        return pick(convert(text.strip().lower()))

    def from_toml(value: object) -> Any:
        if isinstance(value, bool):
            raise ValueError
        return pick(convert(value) if isinstance(value, str) else value)

    listed = ", ".join(f"{c:g}" if isinstance(c, float) else str(c) for c in choices)
    return Kind(f"one of {listed}", from_text, from_toml, "{" + ",".join(map(str, choices)) + "}")


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _bool_text(text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError


def _bool_toml(value: object) -> bool:
    return value if isinstance(value, bool) else _refuse()


def _address_text(text: str, *, may_be_none: bool) -> str:
    if may_be_none and text.strip().lower() == "none":
        return "none"
    host, colon, port = text.rpartition(":")
    if not colon or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError
    return text


def _address_kind(*, may_be_none: bool) -> Kind:
    expects = "HOST:PORT" + (" or none" if may_be_none else "")

    def from_text(text: str) -> str:
        return _address_text(text, may_be_none=may_be_none)

    def from_toml(value: object) -> str:
        return from_text(value) if isinstance(value, str) else _refuse()

    return Kind(expects, from_text, from_toml, "HOST:PORT")


def _names_toml(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) and "," not in v for v in value):
        return ",".join(value)
    raise ValueError


TEXT = _text_kind()
SECRET = _text_kind("text (a secret)", "SECRET")
PATH = _text_kind("a path", "PATH")
NAMES = Kind("names separated by commas (or a TOML list)", str, _names_toml, "NAME,NAME")
BOOL = Kind("true or false", _bool_text, _bool_toml)
ADDRESS = _address_kind(may_be_none=False)
ADDRESS_OR_NONE = _address_kind(may_be_none=True)
SECONDS = _number_kind(0, whole=False)
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOOPS = ("uvloop", "asyncio")


# -- the options ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Option:
    """One option: its flag is ``--NAME`` (underscores as dashes), its
    environment variable ``HUB_NAME``, its file key ``NAME``."""

    name: str
    kind: Kind
    default: Any
    help: str
    group: str
    short: str = ""
    secret: bool = False  # masked wherever the configuration is shown
    # False keeps it off the command line, where every user of the machine
    # can read it (ps): a secret that is not the reference's -p.
    as_flag: bool = True
    env_name: str = ""  # the variable's name where HUB_NAME would not say enough

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return self.env_name or ENV_PREFIX + self.name.upper()

    @property
    def key(self) -> str:
        return self.name


REFERENCE = "reference flags"
CLIENT = "client"
SERVER = "server"
STREAMING = "streaming over TCP (docs/protocol.md)"
DEVICES = "devices"
OPERATOR = "operating it (health is always on)"
LOGS = "logs"

_chat = ChatSettings()
_devices = DeviceSettings()
_opus = OpusSettings()
_stream = StreamSettings()
_operator = OperatorSettings()

# Defaults: a setting's own, from hub/settings.py (or OpusSettings) where the
# reason for it is written; the addresses are where each door's clients look
# (the reference's 6262, the stock device client's 50051, 8080 for streaming).
OPTIONS: tuple[Option, ...] = (
    Option(
        "password",
        SECRET,
        _chat.password,
        "the server's password",
        REFERENCE,
        short="-p",
        secret=True,
    ),
    Option(
        "host",
        ADDRESS,
        "0.0.0.0:6262",
        "server: address to bind (chat, rooms, devices over gRPC); client: server to dial",
        REFERENCE,
        short="-h",
    ),
    Option("name", TEXT, "", "client: your name", REFERENCE, short="-n"),
    Option("room", TEXT, "", "client: watch this device room; /mode, /play, /stop", CLIENT),
    Option(
        "device_address",
        ADDRESS_OR_NONE,
        "0.0.0.0:50051",
        "a second gRPC address, where the stock device client dials (none: only --host)",
        SERVER,
    ),
    Option("grace", SECONDS, _chat.grace, "seconds a session outlives its last stream", SERVER),
    Option("token_ttl", SECONDS, _chat.token_ttl, "token lifetime in seconds", SERVER),
    Option(
        "token_secret",
        SECRET,
        "",
        "token signing secret, 32 bytes or more ('' for a random one per process)",
        SERVER,
        secret=True,
        as_flag=False,
    ),
    Option(
        "token_secret_file",
        PATH,
        "",
        "file holding the token signing secret, read when token_secret is ''",
        SERVER,
    ),
    Option(
        "redis",
        TEXT,
        "",
        "act as one hub with every hub on this Redis (redis://, rediss://; a password "
        "in the URL); needs the shared token_secret or token_secret_file",
        SERVER,
        secret=True,  # the URL may hold Redis's password
        env_name="HUB_REDIS_URL",
    ),
    Option(
        "rate",
        SECONDS,
        _chat.rate_per_second,
        "chat lines a second per session, 0 for no limit",
        SERVER,
    ),
    Option("burst", _number_kind(1, whole=False), _chat.rate_burst, "line burst", SERVER),
    Option(
        "login_failure_rate",
        SECONDS,
        _chat.login_failure_rate,
        "failed logins a second per peer address once its burst is spent, 0 for no throttle",
        SERVER,
    ),
    Option(
        "login_failure_burst",
        _number_kind(1, whole=False),
        _chat.login_failure_burst,
        "failed logins per peer address before the throttle",
        SERVER,
    ),
    Option(
        "max_message_bytes",
        _number_kind(1, whole=True),
        _chat.message_max_bytes,
        "largest chat line",
        SERVER,
    ),
    Option(
        "max_name_chars",
        _number_kind(1, whole=True),
        _chat.name_max_chars,
        "longest user name",
        SERVER,
    ),
    Option(
        "queue",
        _number_kind(1, whole=True),
        _chat.queue_max,
        "events a stream may fall behind before it is cut",
        SERVER,
    ),
    Option(
        "loop",
        _choice_kind(LOOPS),
        "uvloop",
        "the server's event loop (uvloop: more lines a second per core)",
        SERVER,
    ),
    Option(
        "workers",
        _number_kind(1, whole=True),
        1,
        "server processes sharing the ports (SO_REUSEPORT), one per core; more than 1 needs redis",
        SERVER,
    ),
    Option(
        "stream_address",
        ADDRESS_OR_NONE,
        "0.0.0.0:8080",
        "where to serve streaming over TCP (none: shut)",
        STREAMING,
    ),
    Option(
        "music",
        PATH,
        "",
        "the music folder listeners list and play ('': the bundled hub/sounds/)",
        STREAMING,
    ),
    Option(
        "stream_token",
        BOOL,
        _stream.require_token,
        "listeners must send a valid token in HELLO",
        STREAMING,
    ),
    Option(
        "handshake_timeout",
        SECONDS,
        _stream.handshake_timeout,
        "seconds a TCP client has to complete HELLO, however it sends its bytes",
        STREAMING,
    ),
    Option(
        "max_connections_per_peer",
        _number_kind(1, whole=True),
        _stream.max_connections_per_peer,
        "TCP connections one peer address (IPv6: one /64) may hold",
        STREAMING,
    ),
    Option(
        "sounds",
        PATH,
        "",
        "folder of mode sounds, one mode per file in name order ('': the bundled ones)",
        DEVICES,
    ),
    Option("long_sound", BOOL, False, "add the 20-minute generated sound as a mode", DEVICES),
    Option(
        "device_token",
        BOOL,
        _devices.require_token,
        "devices must send a valid x-chat-token (the stock client cannot)",
        DEVICES,
    ),
    Option("token_rooms", NAMES, "", "with device_token: require it only in these rooms", DEVICES),
    Option(
        "room_linger", SECONDS, _devices.linger, "seconds an empty room keeps its mode", DEVICES
    ),
    Option(
        "opus_bitrate",
        _number_kind(6000, whole=True, maximum=510_000),
        _opus.bitrate,
        "bits a second",
        DEVICES,
    ),
    Option(
        "opus_complexity",
        _number_kind(0, whole=True, maximum=10),
        _opus.complexity,
        "encoder effort",
        DEVICES,
    ),
    Option(
        "opus_frame_ms",
        _choice_kind(ALLOWED_FRAME_MS, float),
        _opus.frame_ms,
        "packet duration in ms; shorter is lower latency, more packets",
        DEVICES,
    ),
    Option(
        "metrics_address",
        ADDRESS_OR_NONE,
        _operator.metrics_address or "none",
        "serve Prometheus metrics at http://HOST:PORT/metrics (none: off, nothing counted)",
        OPERATOR,
    ),
    Option(
        "reflection",
        BOOL,
        _operator.reflection,
        "serve gRPC reflection, for grpcurl list and describe",
        OPERATOR,
    ),
    Option("log_format", _choice_kind(LOG_FORMATS), "text", "text, or JSON one a line", LOGS),
    # warning: per-session records are for -v; the <<Server>> lines say enough.
    Option(
        "log_level", _choice_kind(LOG_LEVELS), "warning", "least level logged (-v: debug)", LOGS
    ),
)
BY_NAME = {option.name: option for option in OPTIONS}
BY_ENV = {option.env: option for option in OPTIONS}


def version() -> str:
    try:
        return importlib.metadata.version("hub")
    except importlib.metadata.PackageNotFoundError:  # a checkout that is not installed
        return "unknown"


# -- flags --------------------------------------------------------------------------


def _argparse_type(option: Option) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return option.kind.from_text(text)
        except ValueError:
            shown = MASK if option.secret else repr(text)
            raise argparse.ArgumentTypeError(
                f"expected {option.kind.expects}, got {shown}"
            ) from None

    convert.__name__ = option.name
    return convert


def masked(option: Option, value: Any) -> Any:
    """``value`` as it may be shown: a secret that is set is masked."""
    return MASK if option.secret and value else value


class _FlagGroup(Protocol):
    """What a flag is added to: a parser's argument group (argparse exports
    no public type for one)."""

    def add_argument(self, *names: str, **options: Any) -> argparse.Action: ...


def _add_flag(group: _FlagGroup, option: Option) -> None:
    names = [option.short, option.flag] if option.short else [option.flag]
    help = f"{option.help} (default {masked(option, option.default)!r}; env {option.env})"
    if option.kind is BOOL:
        group.add_argument(
            *names, dest=option.name, action=argparse.BooleanOptionalAction, help=help
        )
    else:
        group.add_argument(
            *names,
            dest=option.name,
            type=_argparse_type(option),
            metavar=option.kind.metavar,
            help=help,
        )


def build_parser(prog: str = "hub") -> argparse.ArgumentParser:
    """Flags for every option; absent flags are absent from the result
    (``SUPPRESS``), so the environment and the file can fill them in."""
    parser = argparse.ArgumentParser(
        prog=prog,
        add_help=False,  # -h is the reference's host
        argument_default=argparse.SUPPRESS,
        description="Real-time hub: gRPC chat (reference-compatible), devices, streaming. "
        "`hub config` prints the effective configuration; `hub health` probes a server.",
    )
    general = parser.add_argument_group("general")
    general.add_argument("--help", action="help", help="show this help and exit")
    general.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    general.add_argument(
        "--config",
        metavar="FILE",
        help=f"a TOML file of options (keys as in the README's table; env {CONFIG_ENV})",
    )
    groups = {option.group: parser.add_argument_group(option.group) for option in OPTIONS}
    groups[REFERENCE].add_argument(
        "-s", "--server", action="store_true", default=False, help="run the server"
    )
    for option in OPTIONS:
        if option.as_flag:
            _add_flag(groups[option.group], option)
    groups[REFERENCE].add_argument(
        "-v",
        "--verbose",
        dest="log_level",
        action="store_const",
        const="debug",
        help="debug log (the same as --log-level debug)",
    )
    return parser


# -- the environment and the file ---------------------------------------------------


def _known(names: Iterable[str], given: str) -> str:
    close = difflib.get_close_matches(given, list(names), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def from_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, text in environ.items():
        if not name.startswith(ENV_PREFIX) or name.startswith(FOREIGN_ENV_PREFIXES):
            continue
        if name == CONFIG_ENV:
            continue
        option = BY_ENV.get(name)
        if option is None:
            raise ConfigError(f"{name}: no such option{_known(BY_ENV, name)}")
        try:
            values[option.name] = option.kind.from_text(text)
        except ValueError:
            shown = MASK if option.secret else repr(text)
            raise ConfigError(f"{name}={shown}: expected {option.kind.expects}") from None
    return values


def from_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as file:
            table = tomllib.load(file)
    except OSError as error:
        raise ConfigError(f"{path}: cannot read it ({error.strerror or error})") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML ({error})") from None
    values: dict[str, Any] = {}
    for key, value in table.items():
        option = BY_NAME.get(key)
        if option is None:
            raise ConfigError(f"{path}: unknown key {key!r}{_known(BY_NAME, key)}")
        try:
            values[key] = option.kind.from_toml(value)
        except ValueError:
            shown = MASK if option.secret else repr(value)
            raise ConfigError(f"{path}: {key} = {shown}: expected {option.kind.expects}") from None
    return values


# -- the effective configuration ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Config:
    """Every option's value and where it came from (flag, env, file, default)."""

    values: Mapping[str, Any]
    sources: Mapping[str, str]
    server: bool = False
    file: str = ""

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None

    def namespace(self) -> argparse.Namespace:
        """The values as the parsed arguments the chat client takes (with the
        reference's ``verbose``, which is ``--log-level debug``)."""
        return argparse.Namespace(
            server=self.server, verbose=self.values["log_level"] == "debug", **self.values
        )

    def as_toml(self) -> str:
        """The effective configuration as a TOML file, secrets masked, each
        line saying where its value came from."""
        lines = [
            "# hub: the effective configuration (flag > HUB_* environment > file > default).",
            "# Secrets are masked.",
        ]
        width = max(len(option.name) for option in OPTIONS)
        for option in OPTIONS:
            value = masked(option, self.values[option.name])
            lines.append(
                f"{option.name:<{width}} = {_toml_value(value)}  # {self.sources[option.name]}"
            )
        return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def resolve(flags: argparse.Namespace, environ: Mapping[str, str], *, prog: str = "hub") -> Config:
    """Flag > environment > file > default, for every option."""
    given = vars(flags)
    env_values = from_environment(environ)
    file = given.get("config") or environ.get(CONFIG_ENV, "")
    file_values = from_file(file) if file else {}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for option in OPTIONS:
        if option.name in given:
            values[option.name], sources[option.name] = given[option.name], "flag"
        elif option.name in env_values:
            values[option.name], sources[option.name] = env_values[option.name], option.env
        elif option.name in file_values:
            values[option.name], sources[option.name] = file_values[option.name], file
        else:
            values[option.name], sources[option.name] = option.default, "default"
    return Config(values, sources, server=bool(given.get("server")), file=file)


def load(argv: Sequence[str], environ: Mapping[str, str]) -> Config:
    """Parse ``argv`` (usage errors exit 2 through argparse) and resolve it;
    raises ``ConfigError`` for a bad environment or file."""
    return resolve(build_parser().parse_args(argv), environ)


# -- the README's table -------------------------------------------------------------


def markdown_table() -> str:
    """The README's option table: the one place a reader finds every option."""
    rows = [
        "| flag | environment | file key | default | value | meaning |",
        "|---|---|---|---|---|---|",
    ]
    for option in OPTIONS:
        if not option.as_flag:
            flag = "none (a secret)"
        elif option.kind is BOOL:
            flag = f"`{option.flag}`, `--no-{option.flag[2:]}`"
        elif option.short:
            flag = f"`{option.short}`, `{option.flag}`"
        else:
            flag = f"`{option.flag}`"
        if option.name == "log_level":
            flag += ", `-v` (debug)"
        rows.append(
            f"| {flag} | `{option.env}` | `{option.key}` | `{_toml_value(option.default)}` "
            f"| {option.kind.expects} | {option.help} |"
        )
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
