"""The admin API as plain functions: a request in, (status, headers, body) out.

The ASGI and WSGI adapters only find out whether a path is the admin's, read
the body (bounded) and hand over an `AdminRequest`; everything else, from the
bearer token to the JSON error bodies, happens here, once for both.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from . import errors
from ._version import __version__
from .rules import RuleError

if TYPE_CHECKING:
    from .core import Hindsight

__all__ = ["AdminRequest", "AdminResponse", "admin_segments", "handle"]

AdminResponse = tuple[int, list[tuple[str, str]], bytes]

JSON_HEADERS = [("content-type", "application/json"), ("cache-control", "no-store")]
MAX_LIMIT = 1000
PAGE_HEADERS = [
    ("content-type", "text/html; charset=utf-8"),
    ("cache-control", "no-store"),
    # The page runs only its own inline script and talks only to its own origin.
    (
        "content-security-policy",
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
]


@dataclass
class AdminRequest:
    """One call to the admin API, as the adapters hand it over."""

    method: str
    segments: list[str]  # the path below admin_path, decoded, e.g. ["rules", "checkout-slow"]
    query: dict[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names
    body: bytes = b""
    client: str | None = None


class AdminError(Exception):
    """An answer other than success: status, message and the offending fields."""

    def __init__(
        self,
        status: int,
        message: str,
        details: list[dict[str, str]] | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.details = details or []
        self.headers = headers or []


def admin_segments(path: str, admin: list[str], *, encoded: bool) -> list[str] | None:
    """The segments of `path` below the admin path, or None if `path` is not the admin's.

    The path is normalised first (empty and "." segments dropped, ".." applied,
    percent-escapes decoded when `encoded`), so that `//_hindsight/rules` or
    `/%5Fhindsight/rules` cannot reach an admin action without the token.
    """
    parts: list[str] = []
    for raw in path.split("/"):
        part = unquote(raw, errors="replace") if encoded else raw
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    if parts[: len(admin)] != admin:
        return None
    return parts[len(admin) :]


def handle(hs: Hindsight, request: AdminRequest) -> AdminResponse:
    """Answer one admin call. Never raises: a bug becomes a JSON 500 and is reported."""
    try:
        return _route(hs, request)
    except AdminError as exc:
        return _error(exc.status, str(exc), exc.details, exc.headers)
    except Exception as exc:
        errors.report("admin", exc)
        return _error(500, "internal error in the admin API; see the application's log", [])


def too_large(limit: int) -> AdminResponse:
    """The answer to a body over `limit` bytes."""
    return _error(
        413, f"request body larger than {limit} bytes", [{"field": "body", "error": "too large"}]
    )


# -- routing -----------------------------------------------------------------------

Action = Callable[["Hindsight", AdminRequest], AdminResponse]


def _route(hs: Hindsight, request: AdminRequest) -> AdminResponse:
    segments = request.segments
    if not segments and request.method in ("GET", "HEAD"):
        return 200, list(PAGE_HEADERS), hs.dashboard_page()
    _authorize(hs, request)
    methods = _table(segments)
    if methods is None:
        raise AdminError(404, f"no admin call at /{'/'.join(segments)}")
    method = "GET" if request.method == "HEAD" else request.method  # the adapters drop the body
    action = methods.get(method)
    if action is None:
        allowed = ", ".join(sorted(methods))
        raise AdminError(
            405,
            f"method {request.method} not allowed here; allowed: {allowed}",
            headers=[("allow", allowed)],
        )
    return action(hs, request)


def _table(segments: list[str]) -> dict[str, Action] | None:
    n = len(segments)
    head = segments[0] if segments else ""
    if n == 1 and head == "health":
        return {"GET": _health}
    if n == 1 and head == "rules":
        return {"GET": _list_rules, "POST": _add_rule}
    if n == 2 and head == "rules":
        return {"GET": _get_rule, "DELETE": _remove_rule}
    if n == 3 and head == "users" and segments[2] == "detail":
        return {"POST": _add_detail, "DELETE": _remove_detail}
    if n == 1 and head == "audit":
        return {"GET": _audit}
    if (n == 1 and head in ("stats", "metrics")) or (n == 2 and head == "stats"):
        return _stats_table(segments)
    return None


def _stats_table(segments: list[str]) -> dict[str, Action] | None:
    """The statistics calls (answered by the Hindsight's stats, when it keeps them)."""

    def answer(hs: Hindsight, request: AdminRequest) -> AdminResponse:
        try:
            result = hs.stats_answer(segments, request.query)
        except ValueError as exc:  # "invalid 'limit' 'x': expected an integer"
            named = re.match(r"invalid '(\w+)'.*?: (.*)", str(exc))
            field, error = named.groups() if named else ("query", str(exc))
            raise AdminError(400, str(exc), [{"field": field, "error": error}]) from None
        if result is None:
            raise AdminError(404, f"no admin call at /{'/'.join(segments)}")
        content_type, body = result
        return 200, [("content-type", content_type), ("cache-control", "no-store")], body

    return {"GET": answer}


def _authorize(hs: Hindsight, request: AdminRequest) -> None:
    given = _bearer(request.headers.get("authorization", ""))
    if given is not None:
        token = hs.admin_token
        if token is not None and hmac.compare_digest(given, token.encode()):
            return
        read_token = hs.admin_read_token
        if read_token is not None and hmac.compare_digest(given, read_token.encode()):
            if request.method in ("GET", "HEAD"):
                return
            raise AdminError(403, "the read-only token may only make GET calls")
    raise AdminError(
        401,
        "missing or wrong bearer token: send 'Authorization: Bearer <admin token>'",
        headers=[("www-authenticate", 'Bearer realm="hindsight"')],
    )


def _bearer(value: str) -> bytes | None:
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip().encode("utf-8", "replace")


# -- actions -------------------------------------------------------------------------


def _health(hs: Hindsight, request: AdminRequest) -> AdminResponse:
    return _json(200, {"status": "ok", "version": __version__, "store": hs.store})


def _list_rules(hs: Hindsight, request: AdminRequest) -> AdminResponse:
    hs.expire_rules()
    return _json(200, {"rules": [rule.to_json() for rule in hs.rules.rules()]})


def _add_rule(hs: Hindsight, request: AdminRequest) -> AdminResponse:
    body = _body(request)
    try:
        rule = hs.add_rule(body, by=request.client)
    except RuleError as exc:
        raise AdminError(exc.status, str(exc), exc.details) from None
    except KeyError:
        rule_id = body.get("id") if isinstance(body, dict) else None
        raise AdminError(
            409,
            f"a rule with id {rule_id!r} exists already; remove it first or choose another id",
            [{"field": "id", "error": "already taken"}],
        ) from None
    return _json(201, rule.to_json())


def _get_rule(hs: Hindsight, request: AdminRequest) -> AdminResponse:
    rule = hs.rules.get(request.segments[1])
    if rule is None:
        raise AdminError(404, f"no rule with id {request.segments[1]!r}")
    return _json(200, rule.to_json())


def _remove_rule(hs: Hindsight, request: AdminRequest) -> AdminResponse:
    if hs.remove_rule(request.segments[1], by=request.client) is None:
        raise AdminError(404, f"no rule with id {request.segments[1]!r}")
    return 204, [("cache-control", "no-store")], b""


_DETAIL_KEYS = ("ttl_s", "level", "note")


def _add_detail(hs: Hindsight, request: AdminRequest) -> AdminResponse:
    body = _body(request, optional=True)
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise AdminError(
            400,
            'invalid body: expected a JSON object such as {"ttl_s": 1800, "level": "DEBUG"}',
            [{"field": "body", "error": "expected an object"}],
        )
    unknown = sorted(set(body) - set(_DETAIL_KEYS))
    if unknown:
        raise AdminError(
            422,
            f"unknown field {unknown[0]!r}: allowed fields are {', '.join(_DETAIL_KEYS)}",
            [
                {"field": name, "error": f"unknown; allowed: {', '.join(_DETAIL_KEYS)}"}
                for name in unknown
            ],
        )
    user_id = request.segments[1]
    rule = {"action": "detail", "match": {"user_id": user_id}, **body}
    try:
        made = hs.add_rule(rule, by=request.client)
    except RuleError as exc:
        raise AdminError(exc.status, str(exc), exc.details) from None
    return _json(201, made.to_json())


def _remove_detail(hs: Hindsight, request: AdminRequest) -> AdminResponse:
    user_id = request.segments[1]
    removed = 0
    for rule in hs.rules.rules():
        mine = rule.action == "detail" and rule.to_json()["match"] in _user_match(user_id)
        if mine and hs.remove_rule(rule.id, by=request.client) is not None:
            removed += 1
    if not removed:
        raise AdminError(404, f"no detail rule for user {user_id!r}")
    return 204, [("cache-control", "no-store")], b""


def _user_match(user_id: str) -> list[dict[str, object]]:
    return [{"user_id": user_id}, {"user_id": [user_id]}]


def _audit(hs: Hindsight, request: AdminRequest) -> AdminResponse:
    hs.expire_rules()
    limit = query_limit(request.query, default=100)
    return _json(200, {"events": hs.audit.events(limit)})


# -- helpers -------------------------------------------------------------------------


def query_limit(query: Mapping[str, str], default: int) -> int:
    """The `limit` query parameter: an integer from 1 to MAX_LIMIT."""
    text = query.get("limit")
    if text is None:
        return default
    try:
        limit = int(text)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        raise AdminError(
            400,
            f"invalid 'limit' {text!r}: expected an integer from 1 to {MAX_LIMIT}",
            [{"field": "limit", "error": f"expected an integer from 1 to {MAX_LIMIT}"}],
        )
    return limit


def _body(request: AdminRequest, optional: bool = False) -> Any:
    if not request.body.strip():
        if optional:
            return None
        raise AdminError(
            400, "missing body: expected a JSON object", [{"field": "body", "error": "missing"}]
        )
    try:
        return json.loads(request.body, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
        raise AdminError(
            400, f"malformed JSON: {exc}", [{"field": "body", "error": "malformed JSON"}]
        ) from None


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _json(status: int, payload: object) -> AdminResponse:
    return status, list(JSON_HEADERS), json.dumps(payload).encode()


def _error(
    status: int,
    message: str,
    details: list[dict[str, str]],
    headers: list[tuple[str, str]] | None = None,
) -> AdminResponse:
    status_, base, body = _json(status, {"error": message, "details": details})
    return status_, base + (headers or []), body
