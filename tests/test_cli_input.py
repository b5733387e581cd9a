"""What people type or paste into the `hub` client: real processes, real hub.

Lines the server would refuse (control characters, too long) are refused by
the client itself, one line saying why, and the session goes on; a paste
longer than the rate limit's burst is paced out, not cut off; no keystroke
prints a traceback; a half-typed line is not lost without a word. In pipe
mode and on a pseudo-terminal, against a hub server process.
"""

from __future__ import annotations

import asyncio
import re
import signal
import termios
import threading
import time
from typing import Any

import pytest
from cli_helpers import Proc, Procs, Terminal, timeout
from fake_clock import FakeClock
from prompt_toolkit import PromptSession
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.output import DummyOutput

from clients.py_cli.outbox import Pacer, preview, refusal
from clients.py_cli.terminal import PromptLines

# A paste or a file of 100 lines: more than twice the server's default burst
# of 40, with lines the server would refuse among them.
BAD_LINES = {
    3: ("\x1b[31mred 3\x1b[0m", "message must not contain control characters"),
    17: ("bell 17\x07", "message must not contain control characters"),
    42: ("x" * 5000, "message must be at most 4096 bytes"),
    64: ("cr 64\rover", "message must not contain control characters"),
    88: ("\x1b", "message must not contain control characters"),
}


def hundred_lines(bad: dict[int, tuple[str, str]]) -> list[str]:
    return [bad[n][0] if n in bad else f"line {n}" for n in range(100)]


def shown(line: str) -> str:
    """How a client prints a line it received: a tab is a visible ``\\x09``."""
    return line.replace("\t", "\\x09")


def pipe_into_client(procs: Procs, port: int, lines: list[str]) -> Proc:
    writer = procs.client(port, "writer")
    assert writer.popen.stdin is not None
    writer.popen.stdin.write("".join(f"{line}\n" for line in lines).encode())
    writer.close_stdin()
    return writer


def test_a_piped_burst_is_paced_to_the_rate_limit(procs: Procs) -> None:
    _, port = procs.server()
    watcher = procs.client(port, "watcher")
    watcher.join("watcher")

    lines = hundred_lines({})
    writer = pipe_into_client(procs, port, lines)
    assert writer.wait(30) == 0
    for line in lines:
        watcher.expect_line(f"writer: {line}")
    assert not any("stream error" in line for line in writer.lines), writer.lines
    assert writer.transcript()[-1] == "[TIME] <<Client>>: logging out"


def test_piped_lines_the_server_would_refuse_are_reported_and_the_rest_sent(
    procs: Procs,
) -> None:
    _, port = procs.server()
    watcher = procs.client(port, "watcher")
    watcher.join("watcher")

    lines = hundred_lines(BAD_LINES)
    lines[50] = "a tab\tis no control character to refuse"
    writer = pipe_into_client(procs, port, lines)
    assert writer.wait(30) == 0

    good = [line for n, line in enumerate(lines) if n not in BAD_LINES]
    for line in good:
        watcher.expect_line(f"writer: {shown(line)}")
    watcher.send("done")
    watcher.expect_line("watcher: done")
    seen = [line.removeprefix("[TIME] writer: ") for line in watcher.transcript()]
    sent = [shown(line) for line in lines]
    assert [line for line in seen if line in sent] == [shown(line) for line in good]

    refusals = [line for line in writer.transcript() if "not sent" in line]
    assert refusals == [
        "[TIME] <<Client>>: not sent (message must not contain control characters):"
        " \\x1b[31mred 3\\x1b[0m",
        "[TIME] <<Client>>: not sent (message must not contain control characters): bell 17\\x07",
        "[TIME] <<Client>>: not sent (message must be at most 4096 bytes): "
        + "x" * 59
        + "… (5000 bytes)",
        "[TIME] <<Client>>: not sent (message must not contain control characters): cr 64\\x0dover",
        "[TIME] <<Client>>: not sent (message must not contain control characters): \\x1b",
    ]
    assert not any("stream error" in line for line in writer.lines), writer.lines
    assert writer.transcript()[-1] == "[TIME] <<Client>>: logging out"


def test_a_signal_during_a_paced_burst_says_what_was_not_sent(procs: Procs) -> None:
    _, port = procs.server()
    watcher = procs.client(port, "watcher")
    watcher.join("watcher")

    writer = procs.client(port, "writer")
    assert writer.popen.stdin is not None
    writer.popen.stdin.write("".join(f"line {n}\n" for n in range(100)).encode())
    writer.popen.stdin.flush()  # and left open
    watcher.expect_line("writer: line 30")  # past the burst: paced
    writer.signal(signal.SIGTERM)
    assert writer.wait() == 0

    unsent = [line for line in writer.transcript() if "not sent" in line]
    assert len(unsent) == 6, writer.transcript()
    first = int(unsent[0].rsplit(" ", 1)[1])
    assert first > 30
    assert unsent[:5] == [f"[TIME] <<Client>>: not sent: line {n}" for n in range(first, first + 5)]
    more = re.fullmatch(r"\[TIME\] <<Client>>: not sent: (\d+) more lines", unsent[5])
    assert more is not None and first + 5 + int(more[1]) <= 100
    assert writer.transcript()[-1] == "[TIME] <<Client>>: logging out"


# -- on a terminal ----------------------------------------------------------------


def prompt_up(terminal: Terminal) -> int:
    mark = terminal.wait_for(r"<<Client>>: connected to stream")
    return terminal.wait_for(r"\n>", mark)


def bob_and_alice_at_a_terminal(procs: Procs) -> tuple[Proc, Terminal, int]:
    """A hub; bob in its room (piped); alice at a terminal, her prompt up; where her screen is."""
    _, port = procs.server()
    bob = procs.client(port, "bob")
    bob.join("bob")
    alice = procs.terminal(port, "alice")
    return bob, alice, prompt_up(alice)


def test_a_long_paste_at_the_prompt_is_paced_and_its_refused_lines_reported(
    procs: Procs,
) -> None:
    bob, alice, mark = bob_and_alice_at_a_terminal(procs)

    # A bracketed paste (what a terminal sends for a paste) of 60 lines, one
    # of them coloured: each pasted line is a line; the coloured one is refused.
    lines = [f"pasted {n}" for n in range(60)]
    lines[30] = "\x1b[32mgreen\x1b[0m"
    alice.type("\x1b[200~" + "\n".join(lines) + "\x1b[201~\r")
    for n, line in enumerate(lines):
        if n != 30:
            bob.expect_line(f"alice: {line}")
    alice.wait_for(
        r"<<Client>>: not sent \(message must not contain control characters\): "
        r"\\x1b\[32mgreen\\x1b\[0m",
        mark,
    )
    alice.type("still here\r")
    bob.expect_line("alice: still here")
    alice.type("\x04")
    assert alice.wait() == 0
    assert "stream error" not in alice.screen_text()


def test_ctrl_c_during_a_long_paste_leaves_at_once_and_says_what_was_not_sent(
    procs: Procs,
) -> None:
    bob, alice, mark = bob_and_alice_at_a_terminal(procs)

    alice.type("\x1b[200~" + "\n".join(f"pasted {n}" for n in range(400)) + "\x1b[201~\r")
    bob.expect_line("alice: pasted 30")  # 20 a second: most of it is still to go
    started = time.monotonic()
    alice.type("\x03")
    assert alice.wait(1.0) == 0
    assert time.monotonic() - started < timeout(1.0)
    mark = alice.wait_for(r"<<Client>>: not sent: pasted \d+\r?\n", mark)
    mark = alice.wait_for(r"<<Client>>: not sent: \d+ more lines\r?\n", mark)
    alice.wait_for(r"<<Client>>: logging out", mark)


def test_the_terminal_stays_raw_between_prompts(procs: Procs) -> None:
    """Keys typed just after Enter wait for the next prompt.

    Were the terminal given back its own mode between two prompts, a key
    typed then would go to its driver: echoed over the screen, Ctrl-C as
    SIGINT, Ctrl-D swallowed (it later reads as a NUL, and the client stays).
    (The same holds while a line prints above the prompt: ``PromptInput``;
    test_a_half_typed_line_survives_incoming_messages caught that one, a
    Ctrl-D typed as a line printed, about one run in three.)
    """
    bob, alice, _ = bob_and_alice_at_a_terminal(procs)

    cooked: list[int] = []
    done = threading.Event()

    def watch_the_mode() -> None:
        while not done.wait(0.0002):
            if termios.tcgetattr(alice.master)[3] & termios.ICANON:
                cooked.append(1)

    watcher = threading.Thread(target=watch_the_mode)
    watcher.start()
    try:
        for n in range(10):
            alice.type(f"line {n}\r")
            bob.expect_line(f"alice: line {n}")
    finally:
        done.set()
        watcher.join()
    assert cooked == []
    alice.type("last\r")
    alice.type("\x04")
    assert alice.wait() == 0
    bob.expect_line("alice: last")


def test_escape_garbage_typed_at_the_prompt_prints_no_traceback_and_loses_no_text(
    procs: Procs,
) -> None:
    bob, alice, mark = bob_and_alice_at_a_terminal(procs)

    # Esc followed quickly by "[31m": the input parser takes it for a mouse
    # report (prompt_toolkit's own handler then failed on it).
    alice.type("abc")
    mark = alice.wait_for(r"abc", mark)
    alice.type("\x1b[31m")
    alice.type("def")
    alice.wait_for(r"def", mark)
    alice.type("\r")
    bob.expect_line("alice: abcdef")

    # More of the same: malformed and stray reports and sequences, each on
    # its own line (their leftovers, if any, are sent as text or refused).
    garbage = [
        "\x1b[0;1;33m",
        "\x1b[;;m",
        "\x1b[M",
        "\x1b[M!!!",
        "\x1b[Mzzz",
        "\x1b[<1;2m",
        "\x1b[<999;99999;99999M",
        "\x1b[9999;9999;9999M",
        "\x1b[12;5R",
        "\x1b]0;title\x07",
        "\x1b[1;5P",
        "\x1b[99~",
        "\x1bO",
        "\x1b\x1b[31m",
    ]
    for keys in garbage:
        alice.type(f"{keys}x\r")
    alice.type("after the garbage\r")
    bob.expect_line("alice: after the garbage")
    alice.type("\x04")
    assert alice.wait() == 0
    screen = alice.screen_text()
    assert "Traceback" not in screen and "Error" not in screen, screen


def test_a_half_typed_line_is_reported_when_the_server_shuts_down(procs: Procs) -> None:
    server, port = procs.server()
    alice = procs.terminal(port, "alice")
    mark = prompt_up(alice)
    alice.type("hello\r")
    mark = alice.wait_for(r"alice: hello", mark)  # in the room

    alice.type("half typed")
    mark = alice.wait_for(r"half typed", mark)
    server.signal(signal.SIGINT)
    assert alice.wait() == 0
    mark = alice.wait_for(r"<<Server>>: the server is shutting down", mark)
    mark = alice.wait_for(r"<<Client>>: not sent: half typed\r?\n", mark)
    alice.wait_for(r"<<Client>>: logging out", mark)
    assert server.wait() == 0


# -- the parts ----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_the_pacer_lets_a_burst_go_then_the_rate() -> None:
    clock = FakeClock(0.0)  # time moves only when the pacer sleeps
    pacer = Pacer(rate=20, burst=20, clock=clock)
    for _ in range(20):
        await pacer.wait()
    assert (clock.now, clock.sleep_calls) == (0.0, 0)
    for _ in range(40):
        await pacer.wait()
    assert clock.now == pytest.approx(2.0)  # 40 more at 20 a second


def test_a_line_is_refused_by_the_servers_own_rule_at_its_default_bounds() -> None:
    assert refusal("hello\tworld é") is None
    assert refusal("x" * 4096) is None
    assert refusal("x" * 4097) == "message must be at most 4096 bytes"
    for control in ("\x1b[31m", "\x07", "a\rb", "\x00", "\x7f", "\x9b"):
        assert refusal(control) == "message must not contain control characters"
    assert preview("short") == "short"
    assert preview("é" * 100) == "é" * 59 + "… (200 bytes)"


async def typed_at_a_prompt(keys: str, bindings: KeyBindings | None = None) -> str | None:
    """What ``PromptLines`` reads when ``keys`` are typed; fails on any loop error."""
    errors: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: errors.append(context))
    try:
        with create_pipe_input() as keyboard:
            session: PromptSession[str] = PromptSession(
                input=keyboard, output=DummyOutput(), key_bindings=bindings
            )
            lines = PromptLines(session)
            keyboard.send_text(keys)
            line = await asyncio.wait_for(lines.read(), timeout(5))
    finally:
        loop.set_exception_handler(None)
    assert errors == []
    return line


@pytest.mark.asyncio
async def test_esc_and_a_colour_code_typed_fast_are_dropped_not_a_crash() -> None:
    assert await typed_at_a_prompt("abc\x1b[31mdef\r") == "abcdef"
    assert await typed_at_a_prompt("a\x1b[;;Mb\x1b[M!!zc\r") == "abc"


@pytest.mark.asyncio
async def test_a_failing_key_binding_costs_a_bell_not_the_prompt() -> None:
    bindings = KeyBindings()

    @bindings.add("c-t")
    def _broken(event: KeyPressEvent) -> None:
        raise ValueError("a broken binding")

    assert await typed_at_a_prompt("ab\x14cd\r", bindings) == "abcd"
