"""Signed, expiring session tokens (JWT, HS256, via pyjwt).

A token names a session and its user. It is accepted only while its signature
holds, it has not expired and its session is still live; the last check is the
session registry's, which makes tokens revocable.

Expiry is checked here against the injected clock rather than by pyjwt (which
reads the system time), so tests can move time instead of waiting for it.
"""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import jwt

from hub.clock import Clock
from hub.errors import TokenExpired, Unauthenticated

log = logging.getLogger(__name__)

ALGORITHM = "HS256"
SECRET_ENV = "HUB_TOKEN_SECRET"
SECRET_FILE_ENV = "HUB_TOKEN_SECRET_FILE"
# HS256 keys shorter than the hash output weaken the MAC; pyjwt warns below this.
MIN_SECRET_BYTES = 32


@dataclass(frozen=True, slots=True)
class TokenClaims:
    session_id: str
    name: str
    expires: float


def load_secret(env: dict[str, str] | None = None) -> bytes:
    """The signing secret from ``HUB_TOKEN_SECRET`` or the file ``HUB_TOKEN_SECRET_FILE``.

    With neither set, a random secret for this process: tokens then die with the
    process, which is right for a single hub but not for several behind one
    login (they must share a secret). The secret's value is never logged.
    """
    env = dict(os.environ) if env is None else env
    if value := env.get(SECRET_ENV):
        secret = value.encode()
        source = SECRET_ENV
    elif path := env.get(SECRET_FILE_ENV):
        secret = Path(path).read_bytes().strip()
        source = f"{SECRET_FILE_ENV} ({path})"
    else:
        log.warning(
            "no %s or %s set: signing tokens with a random per-process secret",
            SECRET_ENV,
            SECRET_FILE_ENV,
        )
        return secrets.token_bytes(MIN_SECRET_BYTES)
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"token secret from {source} is shorter than {MIN_SECRET_BYTES} bytes")
    log.info("signing tokens with the secret from %s", source)
    return secret


class TokenIssuer:
    def __init__(self, secret: bytes, ttl: float, clock: Clock) -> None:
        self._secret = secret
        self._ttl = ttl
        self._clock = clock

    def expiry(self) -> float:
        """The wall time at which a token issued now expires.

        ``exp`` is whole seconds, rounded up; the session ends at that same
        instant, so a token whose session expired is refused as expired.
        """
        return float(int(self._clock.wall() + self._ttl) + 1)

    def issue(self, session_id: str, name: str, expires: float) -> str:
        """A token for the session, valid until ``expires`` (from ``expiry``)."""
        claims = {
            "sid": session_id,
            "sub": name,
            "iat": int(self._clock.wall()),
            "exp": int(expires),
        }
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def verify(self, token: str) -> TokenClaims:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                options={"require": ["sid", "sub", "exp"], "verify_exp": False},
            )
        except jwt.InvalidTokenError:
            raise Unauthenticated("invalid token") from None
        sid, name, exp = claims["sid"], claims["sub"], claims["exp"]
        if not isinstance(sid, str) or not isinstance(name, str) or not isinstance(exp, int):
            raise Unauthenticated("invalid token")
        if self._clock.wall() >= exp:
            raise TokenExpired("token expired")
        return TokenClaims(session_id=sid, name=name, expires=float(exp))
