"""Log records as operators read them: text for people, one JSON object a line
for log shippers.

Every record may carry the session id, the room and the peer it concerns:
given with ``extra={"session": ...}``, or taken from the context the front
doors set for a call (``set_context``), so a line logged deep in the core
still says whose call it served. These are the server's log records; the
reference's ``<<Server>>`` lines are command-line output (hub/lines.py) and
stay as they are.

No format ever shows a token or a secret: the hub never logs one on purpose,
and as a second line of defence every formatted record has JWT-shaped text
and the secrets ``configure`` was given replaced by a mask.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import json
import logging
import re
import sys
from collections.abc import Iterable, Iterator
from typing import TextIO

CONTEXT_FIELDS = ("session", "room", "peer")
_context: dict[str, contextvars.ContextVar[str | None]] = {
    name: contextvars.ContextVar(f"hub_log_{name}", default=None) for name in CONTEXT_FIELDS
}
MASK = "********"
# header.payload.signature of a JWT: base64url of '{"' starts with eyJ.
JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
# Shorter secrets are not masked inside log text: masking every "ab" would
# garble the log and still say nothing about a secret that weak.
MIN_MASKED_SECRET = 4
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
HANDLER_NAME = "hub.logs"


def set_context(
    *, session: str | None = None, room: str | None = None, peer: str | None = None
) -> None:
    """Name the session, room or peer for every record logged from here on in
    this task (a gRPC call's own task, or a task it spawns)."""
    for name, value in (("session", session), ("room", room), ("peer", peer)):
        if value is not None:
            _context[name].set(value)


@contextlib.contextmanager
def log_context(
    *, session: str | None = None, room: str | None = None, peer: str | None = None
) -> Iterator[None]:
    """``set_context`` for the body of a ``with`` only."""
    tokens = [
        (var, var.set(value))
        for var, value in (
            (_context["session"], session),
            (_context["room"], room),
            (_context["peer"], peer),
        )
        if value is not None
    ]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


class ContextFilter(logging.Filter):
    """Fills ``session``, ``room`` and ``peer`` from the context when the
    record was not given them."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name in CONTEXT_FIELDS:
            if getattr(record, name, None) is None:
                setattr(record, name, _context[name].get())
        return True


class _Redacting(logging.Formatter):
    def __init__(self, secrets: Iterable[str] = (), fmt: str | None = None) -> None:
        super().__init__(fmt)
        self._secrets = sorted(
            {s for s in secrets if len(s) >= MIN_MASKED_SECRET}, key=len, reverse=True
        )

    def redact(self, text: str) -> str:
        text = JWT.sub(MASK, text)
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return text


def _fields(record: logging.LogRecord) -> dict[str, str]:
    return {
        name: str(value)
        for name in CONTEXT_FIELDS
        if (value := getattr(record, name, None)) is not None
    }


class TextFormatter(_Redacting):
    """``TIME LEVEL LOGGER: MESSAGE [session=… room=… peer=…]``."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__(secrets, TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if fields := _fields(record):
            first, newline, rest = text.partition("\n")
            context = " ".join(f"{k}={v}" for k, v in fields.items())
            text = f"{first} [{context}]{newline}{rest}"
        return self.redact(text)


class JsonFormatter(_Redacting):
    """One JSON object a line: time (UTC, ISO 8601), level, logger, event, and
    session, room, peer and exception when the record has them."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, str] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return self.redact(json.dumps(entry, ensure_ascii=False))


def configure(
    level: str = "warning",
    format: str = "text",
    *,
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> None:
    """Send every log record to ``stream`` (standard error) in ``format``
    (``text`` or ``json``) from ``level`` up, masking ``secrets``."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(secrets) if format == "json" else TextFormatter(secrets))
    handler.addFilter(ContextFilter())
    handler.set_name(HANDLER_NAME)
    root = logging.getLogger()
    # Replace only what an earlier call installed: handlers of others (a test
    # harness capturing records) stay.
    for old in root.handlers[:]:
        if old.get_name() == HANDLER_NAME:
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
