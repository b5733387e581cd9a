"""One configuration surface, through the real `hub` process: flags, HUB_*
variables and a TOML file reach the hub with flag > env > file > default;
unknown keys and bad values are refused naming the key; `hub config` shows
the effective values with secrets masked; the README's table is the table.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

from cli_helpers import PASSWORD, SECRET, TIME, Proc, Procs, free_port, hub_env, timeout

from hub.config import MASK, OPTIONS, markdown_table, version

ROOT = Path(__file__).resolve().parents[1]
PROCESS_LINE = re.compile(rf"{TIME} <<Process>>: bad configuration: (?P<why>.*)")


def hub(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``hub ARGS`` to completion (configuration is refused before anything starts)."""
    return subprocess.run(
        [sys.executable, "-m", "hub", *args],
        env=hub_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout(30),
    )


def effective(*args: str, **env: str) -> dict[str, object]:
    """What `hub config` says, read back as the TOML it is."""
    shown = hub("config", *args, **env)
    assert shown.returncode == 0, shown.stderr
    return tomllib.loads(shown.stdout)


def sources(*args: str, **env: str) -> dict[str, str]:
    shown = hub("config", *args, **env)
    return {
        m["key"]: m["source"]
        for m in re.finditer(r"^(?P<key>\w+) += .*  # (?P<source>.*)$", shown.stdout, re.M)
    }


def stop(server: Proc) -> list[str]:
    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    return server.lines


# -- the configuration reaches the serving hub --------------------------------------


def test_the_environment_places_every_door(procs: Procs) -> None:
    chat, devices, stream = free_port(), free_port(), free_port()
    server = procs.start(
        "-s",
        "-p",
        PASSWORD,
        env=hub_env(
            HUB_HOST=f"127.0.0.1:{chat}",
            HUB_DEVICE_ADDRESS=f"127.0.0.1:{devices}",
            HUB_STREAM_ADDRESS=f"127.0.0.1:{stream}",
        ),
    )
    server.expect(rf'{TIME} <<Server>>: starting on 127\.0\.0\.1:{chat} with password ".*"', 20)
    server.expect_line(f"<<Server>>: serving chat, rooms and devices (gRPC) on 127.0.0.1:{chat}")
    server.expect_line(f"<<Server>>: serving chat, rooms and devices (gRPC) on 127.0.0.1:{devices}")
    server.expect_line(f"<<Server>>: serving music and room streaming (TCP) on 127.0.0.1:{stream}")
    for port in (chat, devices, stream):  # each door is really open
        socket.create_connection(("127.0.0.1", port), timeout=timeout(5)).close()
    stop(server)


def test_port_zero_for_both_grpc_doors_binds_two_free_ports(procs: Procs) -> None:
    server = procs.start(
        "-s", "-p", PASSWORD, "-h", "127.0.0.1:0", "--device-address", "127.0.0.1:0",
        "--stream-address", "none", env=hub_env(),
    )  # fmt: skip
    server.expect(rf'{TIME} <<Server>>: starting on 127\.0\.0\.1:\d+ with password ".*"', 20)
    serving = rf"{TIME} <<Server>>: serving chat, rooms and devices \(gRPC\) on 127\.0\.0\.1:(\d+)"
    ports = {int(server.expect(serving, 5).group(1)) for _ in range(2)}
    assert len(ports) == 2, ports
    stop(server)


def test_a_config_file_places_the_hub_and_sets_its_password(procs: Procs, tmp_path: Path) -> None:
    stream = free_port()
    config = tmp_path / "hub.toml"
    config.write_text(
        'password = "from-the-file"\n'
        'host = "127.0.0.1:0"\n'
        'device_address = "none"\n'
        f'stream_address = "127.0.0.1:{stream}"\n'
        "queue = 16\n"
        'token_rooms = ["kitchen", "hall"]\n'
    )
    server = procs.start("-s", "--config", str(config))
    server.expect(rf'{TIME} <<Server>>: starting on 127\.0\.0\.1:\d+ with password "from-the-file"')
    server.expect_line(f"<<Server>>: serving music and room streaming (TCP) on 127.0.0.1:{stream}")
    lines = stop(server)
    assert sum("(gRPC)" in line for line in lines) == 1  # device_address = "none"


def test_the_serving_hub_takes_the_environment_over_the_file_and_a_flag_over_both(
    procs: Procs, tmp_path: Path
) -> None:
    in_file, in_env = free_port(), free_port()
    config = tmp_path / "hub.toml"
    config.write_text(f'stream_address = "127.0.0.1:{in_file}"\ndevice_address = "none"\n')
    env = hub_env(HUB_CONFIG=str(config), HUB_STREAM_ADDRESS=f"127.0.0.1:{in_env}")
    server = procs.start("-s", "-h", "127.0.0.1:0", env=env)
    server.expect_line(f"<<Server>>: serving music and room streaming (TCP) on 127.0.0.1:{in_env}")
    stop(server)

    shut = procs.start("-s", "-h", "127.0.0.1:0", "--stream-address", "none", env=env)
    shut.expect(rf"{TIME} <<Server>>: starting on .*", 20)
    assert not any("(TCP)" in line for line in stop(shut))


def test_a_flag_beats_the_environment_which_beats_the_file(tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_text('stream_address = "127.0.0.1:1001"\ngrace = 5.0\nqueue = 7\n')
    env = {"HUB_CONFIG": str(config), "HUB_STREAM_ADDRESS": "127.0.0.1:1002", "HUB_GRACE": "6"}
    shown = effective("--stream-address", "127.0.0.1:1003", **env)
    assert shown["stream_address"] == "127.0.0.1:1003"  # flag over env over file
    assert shown["grace"] == 6.0  # env over file
    assert shown["queue"] == 7  # file over default
    assert shown["rate"] == 20.0  # default
    expected = {option.name: "default" for option in OPTIONS}
    expected |= {
        "stream_address": "flag",
        "grace": "HUB_GRACE",
        "queue": str(config),
        "token_secret": "HUB_TOKEN_SECRET",  # cli_helpers.hub_env sets it
    }
    assert sources("--stream-address", "127.0.0.1:1003", **env) == expected


def test_hub_config_masks_secrets(tmp_path: Path) -> None:
    shown = hub("config", "-p", "the-password", HUB_TOKEN_SECRET=SECRET)
    assert shown.returncode == 0
    assert "the-password" not in shown.stdout + shown.stderr
    assert SECRET not in shown.stdout + shown.stderr
    values = tomllib.loads(shown.stdout)
    assert values["password"] == MASK and values["token_secret"] == MASK


def test_version() -> None:
    shown = hub("--version")
    assert shown.returncode == 0
    assert shown.stdout.strip() == f"hub {version()}" != "hub unknown"


# -- refused, naming the key ---------------------------------------------------------


def refused(*args: str, **env: str) -> str:
    """Run a server that must refuse its configuration: the one reason it gives."""
    done = hub("-s", "-h", "127.0.0.1:0", "--stream-address", "none", *args, **env)
    assert done.returncode == 2, done.stderr  # a usage error, like argparse's
    lines = done.stderr.splitlines()
    assert len(lines) == 1, lines
    match = PROCESS_LINE.fullmatch(lines[0])
    assert match is not None, lines
    return match["why"]


def test_an_unknown_environment_name_is_refused_by_name() -> None:
    why = refused(HUB_STREAM_ADRESS="127.0.0.1:9")
    assert why == "HUB_STREAM_ADRESS: no such option (did you mean HUB_STREAM_ADDRESS?)"


def test_the_test_suites_own_names_pass() -> None:
    assert effective(HUB_TEST_TIMEOUT_FACTOR="3", HUB_BENCH_PROBE="/x")["queue"] == 1024


def test_a_bad_environment_value_is_refused_with_what_it_expects() -> None:
    assert refused(HUB_QUEUE="lots") == "HUB_QUEUE='lots': expected a whole number from 1"
    assert refused(HUB_STREAM_TOKEN="maybe") == "HUB_STREAM_TOKEN='maybe': expected true or false"
    assert refused(HUB_HOST="nowhere") == "HUB_HOST='nowhere': expected HOST:PORT"


def test_an_unknown_file_key_is_refused_by_name(tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_text('pasword = "x"\n')
    assert refused("--config", str(config)) == (
        f"{config}: unknown key 'pasword' (did you mean password?)"
    )


def test_a_bad_file_value_is_refused_with_what_it_expects(tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_text('grace = "soon"\n')
    assert refused("--config", str(config)) == (
        f"{config}: grace = 'soon': expected a number from 0"
    )
    config.write_text("password = 12345\n")  # a secret's value is not shown, even when wrong
    assert refused("--config", str(config)) == (
        f"{config}: password = {MASK}: expected text (a secret)"
    )
    config.write_text("queue = [\n")
    assert refused("--config", str(config)).startswith(f"{config}: not valid TOML")
    assert refused("--config", str(tmp_path / "missing.toml")).startswith(
        f"{tmp_path / 'missing.toml'}: cannot read it"
    )


def test_a_bad_flag_value_is_a_usage_error_naming_the_flag() -> None:
    done = hub("-s", "--queue", "0")
    assert done.returncode == 2
    assert "argument --queue: expected a whole number from 1, got '0'" in done.stderr


def test_the_token_secret_file_still_works(tmp_path: Path) -> None:
    short = tmp_path / "secret"
    short.write_text("too short")
    done = hub(
        "-s",
        "-h",
        "127.0.0.1:0",
        "--stream-address",
        "none",
        HUB_TOKEN_SECRET="",
        HUB_TOKEN_SECRET_FILE=str(short),
    )
    assert done.returncode == 1
    assert f"token secret from HUB_TOKEN_SECRET_FILE ({short}) is shorter than 32" in done.stderr
    assert "too short" not in done.stderr


# -- one table -------------------------------------------------------------------------


def test_the_readme_holds_the_option_table() -> None:
    readme = (ROOT / "README.md").read_text()
    assert markdown_table() in readme, "regenerate it: python -m hub.config"


def test_every_option_has_a_flag_env_and_key_of_its_own() -> None:
    for field in ("env", "key"):
        names = [getattr(option, field) for option in OPTIONS]
        assert len(names) == len(set(names)), field
    flags = [option.flag for option in OPTIONS if option.as_flag]
    assert len(flags) == len(set(flags))
    assert [option.name for option in OPTIONS if not option.as_flag] == ["token_secret"]
