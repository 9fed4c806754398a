"""The admin API as plain functions: a request in, (status, headers, body) out.

The ASGI and WSGI adapters only find out whether a path is the admin's (`Admin.route`),
read the body (bounded) and hand over an `AdminRequest`; everything else, from the
bearer token to the JSON error bodies, happens here, once for both. Calls may
wait on the store (rules and statistics are read from it, so that every process
answers the same): the ASGI adapter runs them in a thread, off the event loop.
A store that cannot be used gives 503 for changes (nothing is changed) and
answers marked ``"stale": true`` for reads.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote

from . import _build, audit, dashboard, errors, metrics, search
from ._version import __version__
from .rules import RuleError, iso_moment
from .stats import iso
from .store import AUDIT_KEPT, StoreError
from .tokens import Caller

if TYPE_CHECKING:
    from .core import Hindsight

__all__ = ["Admin", "AdminRequest", "AdminResponse", "admin_segments", "too_large"]

AdminResponse = tuple[int, list[tuple[str, str]], bytes]
_T = TypeVar("_T")

JSON_HEADERS = [("content-type", "application/json"), ("cache-control", "no-store")]
PAGE_HEADERS = [
    ("content-type", "text/html; charset=utf-8"),
    ("cache-control", "no-store"),
    # The page runs only its own script (by its hash) and talks only to its own origin.
    ("content-security-policy", dashboard.CSP + "; frame-ancestors 'none'"),
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
    caller: Caller | None = None  # who sent it, once the token is checked


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
    `/%5Fhindsight/rules` cannot reach an admin action without the token. Escapes of
    bytes that are not UTF-8 become lone surrogates, which the admin refuses.
    """
    parts: list[str] = []
    for raw in path.split("/"):
        part = unquote(raw, errors="surrogateescape") if encoded else raw
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


class Admin:
    """The admin API of one `Hindsight`, as the adapters serve it.

    Args:
        hs: the Hindsight whose rules and statistics it serves.
        mounted: True when it answers at its own root (`AdminASGIApp`,
            `AdminWSGIApp`), False when it answers under ``hs.admin_path``.

    Attributes:
        marker: a text every path of the admin has (the last segment of
            `admin_path`), or None when the adapter serves no admin paths: the
            adapters look closer only at a path that has it.
        max_body: the largest request body accepted, in bytes.

    Raises:
        ValueError: `mounted` without an ``admin_token``.
    """

    def __init__(self, hs: Hindsight, *, mounted: bool = False) -> None:
        if mounted and not hs.tokens:
            raise ValueError(
                "the admin app needs an 'admin_token' or 'admin_tokens' (or HINDSIGHT_ADMIN_TOKEN)"
            )
        self.hs = hs
        self.max_body = hs.admin_max_body
        self._segments = [part for part in (hs.admin_path or "").split("/") if part]
        served = bool(hs.tokens) and self._segments and not mounted
        self.marker = self._segments[-1] if served else None

    def route(self, path: str, *, encoded: bool = False) -> list[str] | None:
        """The admin call a request path names (segments below `admin_path`), or None.

        None also when the admin sub-app is off (no `admin_token`).
        """
        if self.marker is None:
            return None
        return admin_segments(path, self._segments, encoded=encoded)

    def handle(self, request: AdminRequest) -> AdminResponse:
        """Answer one admin call. Never raises: a bug becomes a JSON 500 and is reported.

        May block on the store: adapters call it off the event loop.
        """
        try:
            return _route(self.hs, request)
        except AdminError as exc:
            return _error(exc.status, str(exc), exc.details, exc.headers)
        except StoreError as exc:
            return _error(
                503,
                f"the store cannot be used now ({exc}); try again once GET /health answers ok",
                [{"field": "store", "error": "unavailable"}],
            )
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
    for segment in segments:
        if not _is_utf8(segment):  # two different ids must never become the same one
            raise AdminError(
                400,
                "the path has percent-escapes that are not UTF-8: escape each character's "
                "UTF-8 bytes (e.g. é is %C3%A9)",
                [{"field": "path", "error": "not UTF-8"}],
            )
    if not segments and request.method in ("GET", "HEAD"):
        return 200, list(PAGE_HEADERS), dashboard.page(hs.admin_path or "")
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
    if n == 1 and head == "whoami":
        return {"GET": _whoami}
    if n == 1 and head == "rules":
        return {"GET": _list_rules, "POST": _add_rule}
    if n == 2 and head == "rules":
        return {"GET": _get_rule, "DELETE": _remove_rule}
    if n == 3 and head == "users" and segments[2] == "detail":
        return {"POST": _add_detail, "DELETE": _remove_detail}
    if n == 1 and head == "audit":
        return {"GET": _audit}
    if n == 1 and head == "requests":
        return {"GET": _search}
    if n == 2 and head == "requests":
        return {"GET": _show}
    if n == 1 and head == "release":
        return {"POST": _release}
    if n == 1 and head == "sinks":
        return {"GET": _sinks}
    if n == 1 and head == "alerts":
        return {"GET": _alerts}
    if (n == 1 and head in ("stats", "metrics")) or (n == 2 and head == "stats"):
        return _stats_table(segments)
    return None


def _stats_table(segments: list[str]) -> dict[str, Action] | None:
    """The statistics calls, answered from every process's statistics merged."""
    call = "/".join(segments)
    if call == "metrics":
        return {"GET": _metrics}
    if call == "stats":
        return {"GET": _stats, "DELETE": _reset_stats}
    if call in ("stats/slow", "stats/sessions", "stats/timeline", "stats/tags"):
        return {"GET": _stats}
    return None


def _authorize(hs: Hindsight, request: AdminRequest) -> None:
    """Find who calls (`request.caller`), or refuse: 401 without a known token, 403 for
    a change with a read-only one, 429 once a client sent too many wrong tokens."""
    wait_s = hs.failures.refused_for(request.client)
    if wait_s > 0:
        raise AdminError(
            429,
            f"too many wrong tokens from this client: try again in {math.ceil(wait_s)} s",
            [{"field": "authorization", "error": "too many wrong tokens"}],
            headers=[("retry-after", str(math.ceil(wait_s)))],
        )
    given = _bearer(request.headers.get("authorization", ""))
    caller = None if given is None else hs.tokens.identify(given)
    if caller is None:
        if given is not None:
            hs.failures.failed(request.client)
        raise AdminError(
            401,
            "missing or wrong bearer token: send 'Authorization: Bearer <admin token>'",
            headers=[("www-authenticate", 'Bearer realm="hindsight"')],
        )
    if caller.read_only and request.method not in ("GET", "HEAD"):
        raise AdminError(403, f"the read-only token {caller.name!r} may only make GET calls")
    request.caller = caller


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _by(request: AdminRequest) -> str | None:
    """The name the audit trail gives the author of a change: the caller's token's."""
    return None if request.caller is None else request.caller.name


def _bearer(value: str) -> bytes | None:
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip().encode("utf-8", "replace")


# -- actions -------------------------------------------------------------------------


def _health(hs: Hindsight, request: AdminRequest) -> AdminResponse:
    answer: dict[str, object] = {
        "status": "ok",
        "version": __version__,
        "build": _build.running(),
        "store": hs.store.url,
    }
    health = hs.health
    try:
        health.checked(hs.store.state)
        # SQLite: reads go on while another writer holds the file, and this process
        # may have written nothing for a while (or nothing since a write failed).
        health.probed(hs.store.probe_write)
    except StoreError:
        pass  # noted in `health`
    if not health.up:  # this read, or a write (probed, else the last one)
        answer.update(status="degraded", error=health.error, since=iso(health.since))
        return _json(503, answer)
    return _json(200, answer)


def _whoami(hs: Hindsight, request: AdminRequest) -> AdminResponse:
    caller = request.caller
    assert caller is not None  # authorized
    return _json(200, {"name": caller.name, "access": caller.access})


def _list_rules(hs: Hindsight, request: AdminRequest) -> AdminResponse:
    rules, stale = hs.book.listing()
    stale = _with_top_keys(hs, rules) or stale
    return _json(200, _marked({"rules": rules}, stale))


def _with_top_keys(hs: Hindsight, rules: list[dict[str, Any]]) -> bool:
    """Give each count rule of `rules` (JSON forms) its ``top_keys`` now: ``[{"key",
    "count"}]``, highest count first; True when the store could not be read for them."""
    for body in rules:
        rule = hs.rules.get(body["id"]) if body.get("action") == "count" else None
        if rule is not None:
            try:
                body["top_keys"] = hs.counting.top(rule)
            except StoreError:
                return True
    return False


def _add_rule(hs: Hindsight, request: AdminRequest) -> AdminResponse:
    body = _body(request)
    try:
        rule = hs.book.add(hs.book.parse(body), by=_by(request))
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
    rule, stale = hs.book.lookup(request.segments[1])
    if rule is None:
        raise AdminError(404, f"no rule with id {request.segments[1]!r}")
    stale = _with_top_keys(hs, [rule]) or stale
    return _json(200, _marked(rule, stale))


def _remove_rule(hs: Hindsight, request: AdminRequest) -> AdminResponse:
    if hs.book.remove(request.segments[1], by=_by(request)) is None:
        raise AdminError(404, f"no rule with id {request.segments[1]!r}")
    return 204, [("cache-control", "no-store")], b""


_DETAIL_KEYS = ("ttl_s", "level", "note", "backfill_s")


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
    backfill_s = _backfill_s(body.pop("backfill_s", None))
    rule = {"action": "detail", "match": {"user_id": user_id}, **body}
    try:
        made = hs.book.parse(rule)
        replaced = hs.book.replace_detail(made, user_id, by=_by(request))
    except RuleError as exc:
        raise AdminError(exc.status, str(exc), exc.details) from None
    answer = made.to_json()
    answer["replaced"] = [old.id for old in replaced]  # the user's detail rules before
    if backfill_s is not None:  # what the user did in the last `backfill_s` seconds
        since = time.time() - backfill_s
        spec = search.parse_release({"match": {"user_id": user_id}, "since": since})
        answer["backfill"] = hs.release_everywhere(spec, body.get("note"), _by(request))
    return _json(200 if replaced else 201, answer)


def _backfill_s(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 86400:
        raise AdminError(
            422,
            f"invalid 'backfill_s' {value!r}: expected a number of seconds from 0 to 86400",
            [{"field": "backfill_s", "error": "expected a number of seconds > 0, at most 86400"}],
        )
    return float(value)


# -- the window -------------------------------------------------------------------


def _search(hs: Hindsight, request: AdminRequest) -> AdminResponse:
    spec = _checked(search.parse_search, request.query)
    answers, processes, complete = hs.ask({"kind": "search", "spec": spec})
    found = [found for answer in answers for found in answer.get("requests", [])]
    seen = {facts["request_id"] for facts in found}
    try:
        kept = hs.search_retained(search.Search(spec))
    except StoreError:
        kept, complete = [], False
    found += [facts for facts in kept if facts["request_id"] not in seen]
    found.sort(key=lambda facts: facts["at"], reverse=True)
    return _json(
        200,
        {"requests": found[: spec["limit"]], "processes": processes, "complete": complete},
    )


def _show(hs: Hindsight, request: AdminRequest) -> AdminResponse:
    request_id = request.segments[1]
    answers, processes, complete = hs.ask({"kind": "show", "request_id": request_id})
    for answer in answers:
        if answer.get("request") is not None:
            return _json(200, {**answer["request"], "processes": processes, "complete": complete})
    try:
        kept = hs.retained_request(request_id)
    except StoreError:
        kept, complete = None, False
    if kept is not None:
        return _json(200, {**kept, "processes": processes, "complete": complete})
    where = "the window" if complete else f"the windows of the {processes} processes that answered"
    raise AdminError(404, f"no request {request_id!r} in {where}")


def _release(hs: Hindsight, request: AdminRequest) -> AdminResponse:
    body = _body(request)
    spec = _checked(lambda given: search.parse_release(given, sinks=hs.sinks.ids), body)
    return _json(200, hs.release_everywhere(spec, spec.get("note"), _by(request)))


def _checked(parse: Callable[[Any], _T], given: Any) -> _T:
    """`parse(given)`, a question's refusal (`search.FilterError`) answered as it says."""
    try:
        return parse(given)
    except search.FilterError as exc:
        raise AdminError(exc.status, str(exc), exc.details) from None


def _remove_detail(hs: Hindsight, request: AdminRequest) -> AdminResponse:
    user_id = request.segments[1]
    if not hs.book.remove_detail(user_id, by=_by(request)):
        raise AdminError(404, f"no detail rule for user {user_id!r}")
    return 204, [("cache-control", "no-store")], b""


def _audit(hs: Hindsight, request: AdminRequest) -> AdminResponse:
    """The audit trail, newest first: ``limit`` events (100) of those kept, filtered by
    ``by`` (a token's name), ``action`` and ``since`` / ``until``."""
    query = request.query
    limit = query_limit(query, default=100)
    now = time.time()
    since = _checked(lambda t: search.parse_time("since", t, now), query.get("since", 0))
    until = _checked(lambda t: search.parse_time("until", t, now), query.get("until", "now"))
    by = query.get("by")
    action = query.get("action")
    if action is not None and action not in audit.ACTIONS:
        allowed = ", ".join(audit.ACTIONS)
        raise AdminError(
            400,
            f"invalid 'action' {action!r}: expected one of {allowed}",
            [{"field": "action", "error": f"expected one of {allowed}"}],
        )
    if since > until:
        raise AdminError(
            400,
            "invalid 'since': after 'until'",
            [{"field": "since", "error": "after 'until'"}],
        )
    filtered = by is not None or action is not None or "since" in query or "until" in query
    events, stale = hs.book.audit(AUDIT_KEPT if filtered else limit)
    if filtered:
        events = [
            e
            for e in events
            if (by is None or e.get("by") == by)
            and (action is None or e.get("action") == action)
            and since <= _epoch(e.get("at")) <= until
        ][:limit]
    return _json(200, _marked({"events": events}, stale))


def _epoch(at: object) -> float:
    try:
        return iso_moment(at).timestamp() if isinstance(at, str) else -1.0
    except ValueError:
        return -1.0


def _sinks(hs: Hindsight, request: AdminRequest) -> AdminResponse:
    """This process's sinks: ``{"sinks": [{"id", "type", "default", "queued", "sent",
    "dropped", "failed", "retries", "last_error", "last_error_at", ...}, ...]}``."""
    return _json(200, {"sinks": hs.sinks.state()})


def _alerts(hs: Hindsight, request: AdminRequest) -> AdminResponse:
    """The recent firings of count rules, newest first (``limit``, default 50, of those
    the audit trail keeps), and this process's alert targets: ``{"alerts": [{"at",
    "rule", "key_name", "key", "count", "threshold", "window_s", "first", "last",
    "samples", "made", ...}], "targets": [{"id", "type", "url", "queued", "sent",
    "dropped", "failed", "retries", "last_error", ...}]}``."""
    limit = query_limit(request.query, default=50)
    events, stale = hs.book.audit(AUDIT_KEPT)
    fired = [
        {"at": e.get("at"), **e["firing"], "made": e.get("made", [])}
        for e in events
        if e.get("action") == "fired" and isinstance(e.get("firing"), dict)
    ][:limit]
    return _json(200, _marked({"alerts": fired, "targets": hs.alerts.state()}, stale))


def _stats(hs: Hindsight, request: AdminRequest) -> AdminResponse:
    call = "/".join(request.segments)
    query = request.query
    view, stale = hs.shared.view()
    try:
        if call == "stats":
            answer = view.overview(query.get("window") or "all")
            answer["counters"] = view.counters()
        elif call == "stats/slow":
            answer = view.slowest(_query_int(query, "limit", 20), query.get("window") or "recent")
        elif call == "stats/timeline":
            answer = view.timeline()
        elif call == "stats/tags":
            answer = view.tags()
        else:
            answer = view.sessions(_query_int(query, "limit", 20), query.get("window") or "recent")
    except ValueError as exc:  # "invalid 'limit' 'x': expected an integer"
        named = re.match(r"invalid '(\w+)'.*?: (.*)", str(exc))
        field, error = named.groups() if named else ("query", str(exc))
        raise AdminError(400, str(exc), [{"field": field, "error": error}]) from None
    return _json(200, _marked(answer, stale))


def _reset_stats(hs: Hindsight, request: AdminRequest) -> AdminResponse:
    hs.shared.reset()
    return 204, [("cache-control", "no-store")], b""


def _metrics(hs: Hindsight, request: AdminRequest) -> AdminResponse:
    view, _ = hs.shared.view(host_only=True)
    body = metrics.render(view).encode()
    return 200, [("content-type", metrics.CONTENT_TYPE), ("cache-control", "no-store")], body


def _marked(answer: dict[str, Any], stale: bool) -> dict[str, Any]:
    """`answer`, marked ``"stale": true`` when the store could not be read for it."""
    return {**answer, "stale": True} if stale else answer


# -- helpers -------------------------------------------------------------------------


def query_limit(query: Mapping[str, str], default: int) -> int:
    """The `limit` query parameter: an integer from 1 to `search.MAX_LIMIT`."""
    return _checked(lambda text: search.parse_limit(text, default), query.get("limit"))


def _body(request: AdminRequest, optional: bool = False) -> Any:
    if not request.body.strip():
        if optional:
            return None
        raise AdminError(
            400, "missing body: expected a JSON object", [{"field": "body", "error": "missing"}]
        )
    try:
        body = request.body.decode("utf-8")  # as JSON's own rule says, and as scanned below
    except UnicodeDecodeError:
        raise AdminError(
            400,
            "the body is not UTF-8: send JSON encoded as UTF-8",
            [{"field": "body", "error": "not UTF-8"}],
        ) from None
    deepest = _nesting(body)
    if deepest > MAX_DEPTH:
        raise AdminError(
            400,
            f"JSON nested {deepest} levels deep: at most {MAX_DEPTH} are accepted",
            [{"field": "body", "error": f"nested deeper than {MAX_DEPTH} levels"}],
        )
    try:
        return json.loads(body, parse_constant=_refuse_constant, object_pairs_hook=_unique_keys)
    except _DuplicateKey as exc:
        raise AdminError(
            400,
            f"duplicate key {exc.key!r} in a JSON object: give each key once",
            [{"field": exc.key, "error": "given twice"}],
        ) from None
    except (ValueError, RecursionError) as exc:
        raise AdminError(
            400, f"malformed JSON: {exc}", [{"field": "body", "error": "malformed JSON"}]
        ) from None


MAX_DEPTH = 32
"""The deepest nesting of arrays and objects an admin body may have."""

# The parts of a JSON text that nest, and strings (skipped: brackets in them do not;
# one left open runs to the end, so that no text makes the search go back).
_NESTING = re.compile(r'"(?:[^"\\]|\\.)*"?|[\[\]{}]')


def _nesting(body: str) -> int:
    """How deeply the arrays and objects of JSON text `body` nest (read without parsing,
    so that no depth can exhaust the parser's stack), in one pass."""
    depth = deepest = 0
    for found in _NESTING.finditer(body):
        token = found.group()
        if token in ("[", "{"):
            depth += 1
            deepest = max(deepest, depth)
        elif token in ("]", "}"):
            depth -= 1
    return deepest


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise _DuplicateKey(key)
        found[key] = value
    return found


def _query_int(query: Mapping[str, str], name: str, default: int) -> int:
    text = query.get(name)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"invalid {name!r} {text!r}: expected an integer") from None


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
