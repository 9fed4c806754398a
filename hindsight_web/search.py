"""Questions to the window: the filters of ``GET /requests`` and ``POST /release``,
and the JSON of what they find.

A question is checked once, where it is asked, and turned into a *spec*: a JSON
object with its times made absolute, which every process answering it (its own
window) compiles with `Search`. Filters on the request's own keys are rule
``match`` keys, so they are read exactly as rules read them: ``path`` is a
glob, ``client_ip`` an address or a network, ``status`` a number or a range.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

from .buffer import (
    ARGS,
    FUNC,
    LEVEL,
    LINENO,
    LOGGER,
    MORE,
    MSG,
    NO_MORE,
    PATHNAME,
    TIME_NS,
    Entry,
)
from .context import RequestState
from .messages import text
from .rules import Rule, RuleError, iso_moment, parse_rule
from .stats import iso

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "FilterError",
    "Search",
    "facts_json",
    "parse_limit",
    "parse_release",
    "parse_search",
    "parse_time",
    "records_json",
]

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000

# Query parameters that are rule match keys, and the key each one is.
_MATCH_PARAMS = {
    "user_id": "user_id",
    "session_id": "session_id",
    "client_ip": "client_ip",
    "method": "method",
    "path": "path",
    "route": "route",
    "status": "status",
    "min_duration_ms": "duration_ms",
    "message": "message",
}
_OTHER_PARAMS = ("since", "until", "request_id", "released", "limit")
_FIELD = "field."
_RELATIVE = re.compile(r"-\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_LAST = datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc).timestamp()
_STATUS_CLASS = re.compile(r"([1-9])xx")
_STATUS_RANGE = re.compile(r"(\d{3})-(\d{3})")


class FilterError(ValueError):
    """A question that cannot be asked: ``details`` name each offending parameter."""

    def __init__(self, message: str, details: list[dict[str, str]], status: int = 400) -> None:
        super().__init__(message)
        self.details = details
        self.status = status


def parse_time(name: str, value: object, now: float) -> float:
    """A time filter: ISO 8601 (UTC when it has no offset), ``now``, or relative to
    `now` as ``-30s``, ``-15m``, ``-2h``, ``-1d``; epoch seconds.

    Raises:
        FilterError: naming `name` and the forms allowed.
    """
    expected = "expected ISO 8601 (2026-11-30T14:00:00Z), 'now', or relative: -30s, -15m, -2h, -1d"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif not isinstance(value, str) or len(value) > 64:
        raise _bad(name, value, expected)
    else:
        seconds = _seconds(value.strip(), now, expected, name)
    if not 0 <= seconds <= _LAST:
        raise _bad(name, value, "expected a time from 1970 to 9999")
    return seconds


def _seconds(given: str, now: float, expected: str, name: str) -> float:
    if given == "now":
        return now
    relative = _RELATIVE.fullmatch(given)
    if relative:
        return now - float(relative.group(1)) * _UNIT_S[relative.group(2)]
    try:
        return iso_moment(given).timestamp()
    except (OverflowError, OSError, ValueError):
        raise _bad(name, given, expected) from None


def _bad(name: str, value: object, expected: str) -> FilterError:
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    return FilterError(
        f"invalid {name!r} {shown}: {expected}", [{"field": name, "error": expected}]
    )


def _status_match(value: str) -> Any:
    """A ``status`` filter as a rule's match value: ``500``, ``5xx``, ``400-499``, or a
    comma-separated list of numbers."""
    given = value.strip()
    expected = "expected a status (500), a class (5xx) or a range (400-499)"
    klass = _STATUS_CLASS.fullmatch(given)
    if klass:
        low = int(klass.group(1)) * 100
        return {"gte": low, "lte": low + 99}
    span = _STATUS_RANGE.fullmatch(given)
    if span:
        low, high = int(span.group(1)), int(span.group(2))
        if low > high:
            raise _bad("status", value, expected)
        return {"gte": low, "lte": high}
    try:
        numbers = [int(part) for part in given.split(",")]
    except ValueError:
        raise _bad("status", value, expected) from None
    return numbers[0] if len(numbers) == 1 else numbers


def _min_duration(value: str) -> dict[str, float]:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not 0 <= number < math.inf:
        raise _bad("min_duration_ms", value, "expected a number of milliseconds >= 0")
    return {"gte": number}


def parse_limit(value: str | None, default: int = DEFAULT_LIMIT) -> int:
    """A ``limit`` query parameter: an integer from 1 to `MAX_LIMIT`; `default` when
    not given.

    Raises:
        FilterError: anything else, naming ``limit``.
    """
    if value is None:
        return default
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        raise _bad("limit", value, f"expected an integer from 1 to {MAX_LIMIT}")
    return limit


def _released(value: str | None) -> bool | None:
    if value is None:
        return None
    if value in ("true", "false"):
        return value == "true"
    raise _bad("released", value, "expected true or false")


def parse_search(query: Mapping[str, str], now: float | None = None) -> dict[str, Any]:
    """The spec of a ``GET /requests`` query string (decoded parameters).

    Raises:
        FilterError: an unknown parameter, or a value it does not take (400).
    """
    now = time.time() if now is None else now
    unknown = [
        name
        for name in query
        if name not in _MATCH_PARAMS and name not in _OTHER_PARAMS and not _field_name(name)
    ]
    if unknown:
        allowed = ", ".join([*_MATCH_PARAMS, *_OTHER_PARAMS, "field.NAME"])
        raise FilterError(
            f"unknown parameter {unknown[0]!r}: allowed are {allowed}",
            [{"field": name, "error": f"unknown; allowed: {allowed}"} for name in unknown],
        )
    match: dict[str, Any] = {}
    for name, key in _MATCH_PARAMS.items():
        value = query.get(name)
        if value is None:
            continue
        if name == "status":
            match[key] = _status_match(value)
        elif name == "min_duration_ms":
            match[key] = _min_duration(value)
        else:
            match[key] = value
    spec: dict[str, Any] = {
        "match": match,
        "fields": {
            name[len(_FIELD) :]: value for name, value in query.items() if _field_name(name)
        },
        "request_id": query.get("request_id"),
        "released": _released(query.get("released")),
        "limit": parse_limit(query.get("limit")),
    }
    spec.update(_times(query.get("since"), query.get("until"), now))
    _compile(spec, params=True)  # every match value checked now, where it was asked
    return spec


def parse_release(
    body: object, now: float | None = None, sinks: tuple[str, ...] | None = None
) -> dict[str, Any]:
    """The spec of a ``POST /release`` body: ``{"match": {...}, "since", "until", "note",
    "sinks"}`` (``sinks``: the ids the releases go to, of `sinks` when given; by default
    the default sinks).

    Raises:
        FilterError: a body that is not such an object (400), or a match or sinks a
            rule could not have (422).
    """
    now = time.time() if now is None else now
    if not isinstance(body, dict):
        raise FilterError(
            'invalid body: expected a JSON object such as {"match": {"user_id": "alice"}, '
            '"since": "-10m"}',
            [{"field": "body", "error": "expected an object"}],
        )
    allowed = ("match", "since", "until", "note", "sinks")
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise FilterError(
            f"unknown field {unknown[0]!r}: allowed fields are {', '.join(allowed)}",
            [
                {"field": name, "error": f"unknown; allowed: {', '.join(allowed)}"}
                for name in unknown
            ],
            status=422,
        )
    note = body.get("note")
    if note is not None and (not isinstance(note, str) or len(note) > 1000):
        raise FilterError(
            "invalid 'note': expected a string of at most 1000 characters",
            [{"field": "note", "error": "expected a string of at most 1000 characters"}],
            status=422,
        )
    spec: dict[str, Any] = {"match": body.get("match", {}), "note": note}
    spec.update(_times(body.get("since"), body.get("until"), now))
    routed = _compile(spec, params=False, sinks=body.get("sinks"), known=sinks).sinks
    spec["sinks"] = None if routed is None else list(routed)
    return spec


def _times(since: object, until: object, now: float) -> dict[str, float | None]:
    start = None if since is None else parse_time("since", since, now)
    end = None if until is None else parse_time("until", until, now)
    if start is not None and end is not None and end < start:
        raise FilterError(
            "invalid 'until': earlier than 'since'",
            [{"field": "until", "error": "earlier than 'since'"}],
        )
    return {"since": start, "until": end}


def _field_name(name: str) -> bool:
    return name.startswith(_FIELD) and name[len(_FIELD) :].isidentifier()


def _compile(
    spec: Mapping[str, Any],
    *,
    params: bool,
    sinks: object = None,
    known: tuple[str, ...] | None = None,
) -> Rule:
    """The rule whose match is the spec's: what a request must match (and, for a
    release, the `sinks` it goes to, of the `known` ones)."""
    rule: dict[str, Any] = {"action": "release", "match": spec["match"]}
    if sinks is not None:
        rule["sinks"] = sinks
    try:
        return parse_rule(rule, now=time.time(), sinks=known)
    except RuleError as exc:
        if not params:
            raise FilterError(str(exc), exc.details, status=exc.status) from None
        keys = {key: name for name, key in _MATCH_PARAMS.items()}
        details = []
        for detail in exc.details:
            key = detail.get("field", "").removeprefix("match.").split(".")[0].split("[")[0]
            details.append({**detail, "field": keys.get(key, key)})
        first = details[0] if details else {"field": "query", "error": str(exc)}
        raise FilterError(
            f"invalid {first['field']!r}: {first['error']}", details or [first]
        ) from None


class Search:
    """A compiled spec: which kept requests it finds.

    Args:
        spec: what `parse_search` or `parse_release` made (anywhere).
    """

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.rule = _compile(spec, params=False)
        since, until = spec.get("since"), spec.get("until")
        self.since = -math.inf if since is None else float(since)
        self.until = math.inf if until is None else float(until)
        self.fields: dict[str, str] = dict(spec.get("fields") or {})
        self.request_id: str | None = spec.get("request_id")
        self.released: bool | None = spec.get("released")
        self.limit = int(spec.get("limit") or MAX_LIMIT)

    def matches(self, state: RequestState | StoredRequest) -> bool:
        """Whether the request (ended: in the window, or kept in the store) is one the
        spec asks for."""
        if not self.since <= state.at <= self.until:
            return False
        if self.request_id is not None and state.request_id != self.request_id:
            return False
        if self.released is not None and _released_now(state) is not self.released:
            return False
        if self.fields:
            bound = state.fields or {}
            for name, value in self.fields.items():
                if name not in bound or str(bound[name]) != value:
                    return False
        return self.rule.matches(state, state.duration_ms)

    def newest(self, states: list[RequestState]) -> list[RequestState]:
        """The matching requests of `states` (oldest first), newest first, at most `limit`."""
        found = []
        for state in reversed(states):
            if self.matches(state):
                found.append(state)
                if len(found) >= self.limit:
                    break
        return found


class StoredRequest:
    """A request a ``retain`` rule kept in the store (its JSON document, as
    `facts_json` and `records_json` made it), as a `Search` reads it."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.request_id: str = doc["request_id"]
        self.method: str = doc["method"]
        self.path: str = doc["path"]
        self.route: str | None = doc.get("route")
        self.user_id: str | None = doc.get("user_id")
        self.session_id: str | None = doc.get("session_id")
        self.client: str | None = doc.get("client_ip")
        self.status: int | None = doc.get("status")
        self.duration_ms: float = doc.get("duration_ms") or 0.0
        self.at: float = doc["at_s"]
        self.released: bool = bool(doc.get("released"))
        self.suppressed = 0
        self.fields: dict[str, Any] = doc.get("fields") or {}

    def header(self, name: str) -> str | None:
        return None  # request headers are not kept

    def mentions(self, needle: str) -> bool:
        return any(needle in record["message"] for record in self.doc.get("records", ()))


def _released_now(state: RequestState | StoredRequest) -> bool:
    """Whether the request's records were written (a release the limit held back, whose
    summary only was written, was not)."""
    return state.released and not state.suppressed


def facts_json(state: RequestState) -> dict[str, Any]:
    """What ``GET /requests`` shows of a kept request."""
    return {
        "request_id": state.request_id,
        "method": state.method,
        "path": state.path,
        "route": state.route,
        "status": state.status,
        "duration_ms": round(state.duration_ms, 3),
        "user_id": state.user_id,
        "session_id": state.session_id,
        "client_ip": state.client,
        "at": iso(state.at),
        "records": state.kept,
        "released": _released_now(state),
        "reason": state.reason,
        "suppressed": state.suppressed,
        "raised": state.raised,
        "fields": {name: _plain(value) for name, value in (state.fields or {}).items()},
    }


def records_json(entries: Iterable[Entry]) -> list[dict[str, Any]]:
    """Kept records (a request's buffer, oldest first) as JSON objects."""
    shown = []
    for entry in entries:
        exc_text, stack, extra, _ = entry[MORE] or NO_MORE
        log: logging.Logger = entry[LOGGER]
        shown.append(
            {
                "time": iso(entry[TIME_NS] / 1e9),
                "level": logging.getLevelName(entry[LEVEL]),
                "logger": log.name,
                "message": text(entry[MSG], entry[ARGS]),
                "pathname": entry[PATHNAME],
                "lineno": entry[LINENO],
                "func": entry[FUNC],
                "exc_text": exc_text,
                "stack_info": stack,
                "fields": {name: _plain(value) for name, value in (extra or {}).items()},
            }
        )
    return shown


def _plain(value: object, depth: int = 0) -> Any:
    """`value` as JSON can hold it: containers to 4 levels and 100 items, anything else
    as its ``repr`` (1,000 characters at most)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if depth < 4 and isinstance(value, (list, tuple)):
        return [_plain(v, depth + 1) for v in value[:100]]
    if depth < 4 and isinstance(value, dict):
        return {str(k): _plain(v, depth + 1) for k, v in list(value.items())[:100]}
    try:
        return repr(value)[:1000]
    except Exception as exc:
        return f"<unrepresentable {type(value).__name__}: {type(exc).__name__}>"
