"""Admin tokens: who may call the admin API, under which name, and failed attempts slowed down.

Each token has a name, which the audit trail records as the author of every change
it makes, and an access: ``read-write``, or ``read-only`` (GET calls only). The
``admin_token`` option is the read-write token named ``admin``, ``admin_read_token``
the read-only token named ``read``; ``admin_tokens`` names more.

A token is at least `MIN_LENGTH` characters of printable ASCII without spaces, so
that every token can be sent in a header as it is configured and none is short
enough to guess. A client that sends a wrong token is logged at most once a minute,
and after `MAX_FAILURES` wrong tokens within `WINDOW_S` seconds it is answered 429
until that minute is over, whatever it sends: at most `MAX_FAILURES` guesses a
minute per client address (an IPv6 address counts by its /64). Behind a proxy, let the
server take the client's address from the proxy's header (uvicorn and gunicorn
``--forwarded-allow-ips``), or every client shares the proxy's.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ._sync import new_lock

__all__ = [
    "MAX_FAILURES",
    "MIN_LENGTH",
    "WINDOW_S",
    "Caller",
    "Failures",
    "Tokens",
    "parse_tokens",
]

logger = logging.getLogger("hindsight_web")

MIN_LENGTH = 16
"""The fewest characters of a token."""

MAX_FAILURES = 10
"""Wrong tokens one client may send within `WINDOW_S` before it is refused (429)."""

WINDOW_S = 60.0
"""Seconds over which a client's wrong tokens are counted (and logged once)."""

MAX_CLIENTS = 10_000
"""Clients whose failures are remembered at once (the least recent are forgotten)."""

READ_WRITE = "read-write"
READ_ONLY = "read-only"

_TOKEN = re.compile(r"[\x21-\x7e]+")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class Caller:
    """Who made an admin call: the name of the token sent, and whether it may only read."""

    name: str
    read_only: bool

    @property
    def access(self) -> str:
        return READ_ONLY if self.read_only else READ_WRITE


class Tokens:
    """The admin tokens of one `Hindsight`, by name (see the module's docstring)."""

    def __init__(self, named: Mapping[str, tuple[str, bool]]) -> None:
        self._named = {
            name: (token.encode(), read_only) for name, (token, read_only) in named.items()
        }

    def __bool__(self) -> bool:
        return bool(self._named)

    def names(self) -> dict[str, str]:
        """Each token's name and access (``read-write`` or ``read-only``)."""
        return {name: READ_ONLY if ro else READ_WRITE for name, (_, ro) in self._named.items()}

    def identify(self, given: bytes) -> Caller | None:
        """The caller whose token is `given`, or None; compares with every token, each in
        constant time."""
        found = None
        for name, (token, read_only) in self._named.items():
            if hmac.compare_digest(given, token) and found is None:
                found = Caller(name, read_only)
        return found


def parse_tokens(admin_token: object, admin_read_token: object, admin_tokens: object) -> Tokens:
    """The tokens the options give (with the ``HINDSIGHT_ADMIN_TOKEN``,
    ``HINDSIGHT_ADMIN_READ_TOKEN`` and ``HINDSIGHT_ADMIN_TOKENS`` environment variables
    standing in for options left None).

    `admin_tokens` maps names to a token (read-write) or to ``{"token": ..., "access":
    "read-only" | "read-write"}``; the environment variable holds that mapping as JSON.

    Raises:
        ValueError: a token too short, with spaces or other characters than printable
            ASCII, given twice, a name that is not 1 to 64 of ``A-Z a-z 0-9 . _ -``
            (or taken twice), a read-only token without a read-write one; the message
            names the option.
    """
    named: dict[str, tuple[str, bool]] = {}
    if admin_token is None:
        admin_token = os.environ.get("HINDSIGHT_ADMIN_TOKEN") or None
    if admin_read_token is None:
        admin_read_token = os.environ.get("HINDSIGHT_ADMIN_READ_TOKEN") or None
    if admin_tokens is None:
        admin_tokens = _from_environment()
    if admin_token is not None:
        named["admin"] = (_token("'admin_token'", admin_token), False)
    if admin_read_token is not None:
        named["read"] = (_token("'admin_read_token'", admin_read_token), True)
    if admin_tokens is not None:
        if not isinstance(admin_tokens, Mapping):
            raise ValueError(
                f"invalid 'admin_tokens' (a {type(admin_tokens).__name__}): expected a mapping "
                'of names to tokens, e.g. {"support-desk": "<token>", "sre-oncall": '
                '{"token": "<token>", "access": "read-only"}}'
            )
        for name, value in admin_tokens.items():
            field = f"admin_tokens[{name!r}]"
            if not isinstance(name, str) or not _NAME.fullmatch(name):
                raise ValueError(
                    f"invalid {field}: a name is 1 to 64 of A-Z a-z 0-9 . _ - "
                    "(starting with a letter or a digit)"
                )
            if name in named:
                raise ValueError(
                    f"invalid {field}: the name {name!r} is taken "
                    "('admin' is admin_token's, 'read' admin_read_token's)"
                )
            named[name] = _named_token(field, value)
    tokens = [token for token, _ in named.values()]
    if len(set(tokens)) != len(tokens):
        raise ValueError("invalid admin tokens: the same token is given under two names")
    if named and all(read_only for _, read_only in named.values()):
        raise ValueError(
            "invalid admin tokens: read-only tokens need a read-write one too "
            "('admin_token', or an 'admin_tokens' entry)"
        )
    return Tokens(named)


def _from_environment() -> object:
    text = os.environ.get("HINDSIGHT_ADMIN_TOKENS")
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        raise ValueError(
            "invalid HINDSIGHT_ADMIN_TOKENS: expected a JSON object of names to tokens"
        ) from None


def _named_token(field: str, value: object) -> tuple[str, bool]:
    if isinstance(value, str):
        return _token(field, value), False
    if isinstance(value, Mapping) and set(value) <= {"token", "access"} and "token" in value:
        access = value.get("access", READ_WRITE)
        if access not in (READ_WRITE, READ_ONLY):
            raise ValueError(
                f"invalid {field} access {access!r}: expected 'read-write' or 'read-only'"
            )
        return _token(field, value["token"]), access == READ_ONLY
    raise ValueError(
        f"invalid {field}: expected a token, or {{'token': ..., 'access': 'read-only'}}"
    )


def _token(field: str, value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(
            f"invalid {field!r}: expected a string of at least {MIN_LENGTH} characters"
        )
    if not _TOKEN.fullmatch(value):
        raise ValueError(
            f"invalid {field}: a token is printable ASCII without spaces or other whitespace "
            "around it (it is sent as 'Authorization: Bearer <token>', and could never match "
            "otherwise)"
        )
    if len(value) < MIN_LENGTH:
        raise ValueError(
            f"invalid {field}: {len(value)} characters; a token has at least {MIN_LENGTH} "
            "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(24))')"
        )
    return value


class Failures:
    """Wrong tokens per client address: logged once a minute, refused beyond `MAX_FAILURES`.

    Bounded: `MAX_CLIENTS` addresses at most, the least recently failed forgotten first.
    Thread-safe.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = new_lock()
        # client -> [start of its minute, failures in it, whether it was logged]
        self._clients: OrderedDict[str, list[float]] = OrderedDict()

    def refused_for(self, client: str | None) -> float:
        """Seconds `client` must wait before it may try again; 0 when it may now."""
        key = _key(client)
        with self._lock:
            entry = self._clients.get(key)
            if entry is None:
                return 0.0
            left = entry[0] + WINDOW_S - self._now()
            if left <= 0:
                del self._clients[key]
                return 0.0
            return left if entry[1] >= MAX_FAILURES else 0.0

    def failed(self, client: str | None) -> None:
        """Count a wrong token sent by `client`; log it if it is its first this minute."""
        key = _key(client)
        now = self._now()
        with self._lock:
            entry = self._clients.get(key)
            if entry is None or entry[0] + WINDOW_S <= now:
                entry = self._clients[key] = [now, 0.0, 0.0]
            self._clients.move_to_end(key)
            entry[1] += 1
            log = not entry[2]
            entry[2] = 1.0
            while len(self._clients) > MAX_CLIENTS:
                self._clients.popitem(last=False)
        if log:
            logger.warning(
                "hindsight-web: wrong admin token from %s (logged once a minute per "
                "client; after %d in a minute the client is refused until the minute is over)",
                client or "an unknown client",
                MAX_FAILURES,
            )

    def _now(self) -> float:
        return self._clock()


def _key(client: str | None) -> str:
    """Who is counted: the address, an IPv6 one by its /64 (one host may hold them all)."""
    if not client or ":" not in client:
        return client or ""
    try:
        network = ipaddress.IPv6Network(f"{client}/64", strict=False)
    except ValueError:
        return client
    return str(network)
