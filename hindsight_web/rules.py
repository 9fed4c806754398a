"""The rule format: parsing and validation, matching, and the lookup index.

A rule is a decoded JSON object (see DESIGN.md, "Rules"). :func:`parse_rule`
validates it, collecting every problem into one :class:`RuleError`, and
compiles it into a :class:`Rule`. A :class:`RuleSet` holds the rules of one
process and answers the two lookups of a request: :meth:`RuleSet.detail_for`
when it starts (or learns its user) and :meth:`RuleSet.decide` when it ends.

Why the index: operators scope most rules to one user or session, and a
process may hold thousands of them. Each rule sits in one bucket, keyed by its
most selective exact key (user, session, single client address, route, exact path,
method, exact status); a lookup reads only the buckets of the request's own values and the
general list, so ten thousand rules of other users cost a few dict lookups.

Why no snapshot copies: lookups run on every request and must not wait on a
lock, and adding one rule to ten thousand must not copy the ten thousand.
Changes take the set's lock and replace one bucket (an immutable tuple) at a
time; a lookup reads one dict entry or attribute at a time and works on what
it got.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import heapq
import ipaddress
import itertools
import json
import logging
import math
import operator
import os
import random
import re
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import NamedTuple, Protocol, TypeVar

from ._sync import new_lock
from .context import RESERVED
from .redact import Redactor, hash_session

__all__ = [
    "COUNT_KEYS",
    "Count",
    "RequestFacts",
    "Rule",
    "RuleError",
    "RuleSet",
    "Then",
    "count_key",
    "iso_moment",
    "parse_rule",
    "restore_rule",
]

_T = TypeVar("_T")
_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ACTIONS = ("detail", "release", "drop", "retain", "count", "tag")
DEFAULT_RETAIN_S = 30 * 86400
MAX_RETAIN_S = 10 * 366 * 86400
_TOP_KEYS = (
    "action",
    "dry_run",
    "expires_at",
    "id",
    "key",
    "level",
    "match",
    "max_keys",
    "note",
    "priority",
    "retain_s",
    "sample_rate",
    "sinks",
    "starts_at",
    "tags",
    "then",
    "threshold",
    "ttl_s",
    "window_s",
)
_STORED_KEYS = (*_TOP_KEYS, "created_at", "hits")
# Known when the request starts (or once the app calls set_user()).
_START_KEYS = ("client_ip", "header", "method", "path", "session_id", "user_id")
# Known only at the end: route is set once the framework has routed the request.
_END_KEYS = ("duration_ms", "message", "route", "status")
_MATCH_KEYS = tuple(sorted(_START_KEYS + _END_KEYS))
_RANGE_OPS = ("gt", "gte", "lt", "lte")
# Index keys, most selective first; a rule sits in the bucket of the first it has.
_INDEX_ORDER = ("user_id", "session_id", "client_ip", "route", "path", "method", "status")

_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token: methods, header names
_MAX_ITEMS = 1000
_MAX_TEXT = 1000
_MAX_IDENTITY = 256
_HASHED_SESSION = re.compile(r"[0-9a-f]{16}")  # as `redact.hash_session` makes them
_HASHED_HEADER = re.compile(r"sha256:[0-9a-f]{64}")  # as `_hashed_header` makes them
_SECRETS = Redactor()  # which header names are secret: the built-in keys
_MAX_HEADERS = 20
_MAX_PROBLEMS = 100
_MIN_TTL_S = 1.0  # the shortest a rule may live: one that expires at once never acts
_MAX_TTL_S = 10 * 365 * 86400.0
_MAX_PRIORITY = 1_000_000_000
_MAX_LEVEL = 1000
_SLACK_S = 0.001  # times are kept to the microsecond; do not refuse a ttl for rounding
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_FIRST_YEAR, _LAST_YEAR = 1970, 9000
_SECOND = timedelta(seconds=1)
_order = itertools.count()  # creation order: "newest" among rules made in the same microsecond


class RuleError(ValueError):
    """A refused rule, with every problem found in it.

    Attributes:
        status: 400 when a value has the wrong JSON type (the body is not an
            object, a string where a number belongs, ...), else 422 (valid
            types that break the rule format).
        details: one ``{"field": "match.duration_ms.gt", "error": "expected a
            number"}`` per problem, naming the offending field.

    ``str(err)`` is one sentence naming the first problem's field, its value
    and what is allowed.
    """

    def __init__(self, message: str, *, status: int, details: list[dict[str, str]]) -> None:
        super().__init__(message)
        self.status = status
        self.details = details


class _Problems:
    """Collects what is wrong with a rule, so one answer names every offending field."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str, int, str]] = []  # field, error, status, sentence
        self.more = 0

    def wrong_type(self, field: str, value: object, expected: str) -> None:
        self._add(field, expected, 400, f"invalid {field!r} {_show(value)}: {expected}")

    def wrong_value(self, field: str, value: object, expected: str) -> None:
        self._add(field, expected, 422, f"invalid {field!r} {_show(value)}: {expected}")

    def missing(self, field: str, expected: str) -> None:
        self._add(field, f"required: {expected}", 422, f"missing {field!r}: required, {expected}")

    def unknown(self, field: str, allowed: Iterable[str], hint: str | None = None) -> None:
        allowed = list(allowed)
        close = difflib.get_close_matches(field.rsplit(".", 1)[-1], allowed, n=1)
        error = "unknown key; allowed keys: " + ", ".join(allowed)
        if hint or close:
            error += f" (did you mean {hint or close[0]!r}?)"
        self._add(field, error, 422, f"unknown key {field!r}: {error}")

    def _add(self, field: str, error: str, status: int, sentence: str) -> None:
        if len(self.items) < _MAX_PROBLEMS:
            self.items.append((field, error, status, sentence))
        else:
            self.more += 1

    def check(self) -> None:
        """Raise the RuleError for what was collected, if anything."""
        if self.items:
            raise self.error()

    def error(self) -> RuleError:
        """The RuleError for what was collected (at least one problem)."""
        others = len(self.items) - 1 + self.more
        message = self.items[0][3]
        if others:
            message += f" (and {others} more problem{'s' if others > 1 else ''}, see details)"
        status = 400 if any(item[2] == 400 for item in self.items) else 422
        details = [{"field": f, "error": e} for f, e, _, _ in self.items]
        return RuleError(message, status=status, details=details)


def _show(value: object) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=True)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- what a lookup reads from a request ------------------------------------------------


class RequestFacts(Protocol):
    """What a lookup reads from a request (the core's RequestState satisfies it)."""

    @property
    def method(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def route(self) -> str | None: ...
    @property
    def user_id(self) -> str | None: ...
    @property
    def session_id(self) -> str | None: ...
    @property
    def client(self) -> str | None:
        """The client address text; None or garbage matches only rules without client_ip."""

    @property
    def status(self) -> int | None: ...
    def header(self, name: str) -> str | None:
        """The value of request header `name` (given lower-case), or None."""

    def mentions(self, needle: str) -> bool:
        """Whether a record of the request has `needle` in its message (read at the end only)."""


StartCheck = Callable[[RequestFacts], bool]
EndCheck = Callable[[RequestFacts, float], bool]


# -- matching ----------------------------------------------------------------------------


class _Glob:
    """A path pattern where `*` matches any run of characters (including `/`).

    Matching is linear: the literal pieces between stars are found left to
    right with `str.find`, so no pattern or path can make it backtrack.
    """

    __slots__ = ("head", "middle", "min_len", "tail")

    def __init__(self, pattern: str) -> None:
        parts = pattern.split("*")
        self.head = parts[0]
        self.tail = parts[-1]
        self.middle = tuple(part for part in parts[1:-1] if part)
        self.min_len = len(self.head) + len(self.tail) + sum(map(len, self.middle))

    def __call__(self, path: str) -> bool:
        if (
            len(path) < self.min_len
            or not path.startswith(self.head)
            or not path.endswith(self.tail)
        ):
            return False
        pos = len(self.head)
        end = len(path) - len(self.tail)
        for part in self.middle:
            found = path.find(part, pos, end)
            if found < 0:
                return False
            pos = found + len(part)
        return True


class _Range:
    """A number range from a ``{"gt"|"gte"|"lt"|"lte": n}`` object."""

    __slots__ = ("hi", "hi_open", "lo", "lo_open")

    def __init__(self, lo: float, lo_open: bool, hi: float, hi_open: bool) -> None:
        self.lo, self.lo_open, self.hi, self.hi_open = lo, lo_open, hi, hi_open

    def __call__(self, x: float) -> bool:
        if x < self.lo or (self.lo_open and x == self.lo):
            return False
        return not (x > self.hi or (self.hi_open and x == self.hi))

    def empty(self) -> bool:
        return self.lo > self.hi or (self.lo == self.hi and (self.lo_open or self.hi_open))


@lru_cache(maxsize=4096)
def _client_text(text: str | None) -> str | None:
    """The client's address as rules compare it (`_client_address`, as text), or None."""
    address = _client_address(text)
    return None if address is None else str(address)


@lru_cache(maxsize=4096)
def _client_address(text: str | None) -> _IPAddress | None:
    """The client's address, IPv4-mapped IPv6 folded to IPv4; None when not an address."""
    if text is None:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _client_key(facts: RequestFacts) -> str | None:
    return _client_text(facts.client)


def _method_key(facts: RequestFacts) -> str | None:
    return facts.method.upper()


_KEY_OF: dict[str, Callable[[RequestFacts], object]] = {
    "user_id": lambda facts: facts.user_id,
    "session_id": lambda facts: facts.session_id,
    "client_ip": _client_key,
    "route": lambda facts: facts.route,
    "path": lambda facts: facts.path,
    "method": _method_key,
    "status": lambda facts: facts.status,
}


def _check_method(values: frozenset[str]) -> StartCheck:
    return lambda facts: facts.method.upper() in values


def _check_path(values: list[str]) -> StartCheck:
    exact = frozenset(v for v in values if "*" not in v)
    globs = tuple(_Glob(v) for v in values if "*" in v)
    # The common shapes get a closure without a generator: this runs on every request.
    if not globs:
        return lambda facts: facts.path in exact
    if not exact and len(globs) == 1:
        glob = globs[0]
        return lambda facts: glob(facts.path)
    return lambda facts: facts.path in exact or any(glob(facts.path) for glob in globs)


def _check_attr(name: str, values: frozenset[str]) -> StartCheck:
    return lambda facts: getattr(facts, name) in values


def _check_client(values: list[str]) -> StartCheck:
    networks = [ipaddress.ip_network(v) for v in values]
    exact = frozenset(n.network_address for n in networks if n.num_addresses == 1)
    # (version, network, mask) as ints: `address in network` is slow, and across IP
    # versions it is not reliably False on every Python.
    ranges = tuple(
        (n.version, int(n.network_address), int(n.netmask)) for n in networks if n.num_addresses > 1
    )

    def check(facts: RequestFacts) -> bool:
        address = _client_address(facts.client)
        if address is None:
            return False
        if address in exact:
            return True
        version, number = address.version, int(address)
        return any(v == version and number & mask == net for v, net, mask in ranges)

    return check


def _check_headers(headers: dict[str, frozenset[str]]) -> StartCheck:
    items = tuple((name, values, _SECRETS.secret(name)) for name, values in headers.items())

    def value(facts: RequestFacts, name: str, secret: bool) -> str | None:
        given = facts.header(name)
        return _hashed_header(given) if secret and given is not None else given

    if len(items) == 1:
        ((name, values, secret),) = items
        if not secret:
            return lambda facts: facts.header(name) in values
    return lambda facts: all(value(facts, n, secret) in v for n, v, secret in items)


def _header_kept(value: str) -> str:
    return value if _HASHED_HEADER.fullmatch(value) else _hashed_header(value)


def _hashed_header(value: str) -> str:
    """How a rule keeps the value of a secret header (``authorization``, ``cookie``...):
    its hash, so that neither the store, nor ``GET /rules``, nor the audit trail holds it."""
    return "sha256:" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def _check_status(values: frozenset[int] | _Range) -> EndCheck:
    if isinstance(values, _Range):
        bounds = values
        return lambda facts, duration_ms: facts.status is not None and bounds(facts.status)
    return lambda facts, duration_ms: facts.status in values


def _check_duration(bounds: _Range) -> EndCheck:
    return lambda facts, duration_ms: bounds(duration_ms)


def _check_message(needles: tuple[str, ...]) -> EndCheck:
    def check(facts: RequestFacts, duration_ms: float) -> bool:
        return any(facts.mentions(needle) for needle in needles)

    return check


# -- parsing the values of match keys --------------------------------------------------


def _one_or_many(
    p: _Problems,
    field: str,
    value: object,
    item: Callable[[_Problems, str, object], _T | None],
    what: str,
) -> tuple[object, list[_T]] | None:
    """Parse one item or a non-empty list of them; returns (normalised JSON, items)."""
    if not isinstance(value, (list, tuple)):
        one = item(p, field, value)
        return None if one is None else (one, [one])
    if not value:
        p.wrong_value(field, value, f"expected {what}, or a non-empty list of them")
        return None
    if len(value) > _MAX_ITEMS:
        p.wrong_value(field, value, f"expected at most {_MAX_ITEMS} items, got {len(value)}")
        return None
    items = [item(p, f"{field}[{i}]", v) for i, v in enumerate(value)]
    good = [v for v in items if v is not None]
    return (list(good), good) if len(good) == len(items) else None


def _text(
    limit: int, what: str, token: bool = False
) -> Callable[[_Problems, str, object], str | None]:
    def parse(p: _Problems, field: str, value: object) -> str | None:
        if not isinstance(value, str):
            p.wrong_type(field, value, f"expected {what}")
            return None
        if not value or len(value) > limit or (token and not _TOKEN.fullmatch(value)):
            p.wrong_value(field, value, f"expected {what} of 1 to {limit} characters")
            return None
        return value

    return parse


_method_text = _text(32, "an HTTP method such as 'GET'", token=True)


def _method_item(p: _Problems, field: str, value: object) -> str | None:
    text = _method_text(p, field, value)
    return None if text is None else text.upper()


def _identity_item(p: _Problems, field: str, value: object) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        p.wrong_type(field, value, "expected a string or an integer")
        return None
    if not value or len(value) > _MAX_IDENTITY:
        p.wrong_value(field, value, f"expected 1 to {_MAX_IDENTITY} characters")
        return None
    return value


def _session_item(p: _Problems, field: str, value: object) -> str | None:
    """A session id as hindsight keeps it: its hash (`redact.hash_session`), unless it is
    one already (16 hex digits)."""
    given = _identity_item(p, field, value)
    if given is None or _HASHED_SESSION.fullmatch(given):
        return given
    return hash_session(given)


def _session_values(values: list[str]) -> list[str]:
    # A session id of 16 hex digits may be a hash or the id itself: the rule has both.
    return [*values, *(hash_session(v) for v in values if _HASHED_SESSION.fullmatch(v))]


def _client_item(p: _Problems, field: str, value: object) -> str | None:
    expected = "expected an IP address or CIDR network such as '10.0.0.0/8' or '2001:db8::/32'"
    if not isinstance(value, str):
        p.wrong_type(field, value, expected)
        return None
    try:
        network: _IPNetwork = ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        p.wrong_value(field, value, expected)
        return None
    if isinstance(network, ipaddress.IPv6Network):
        mapped = network.network_address.ipv4_mapped
        if mapped is not None and network.prefixlen >= 96:
            network = ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    if network.num_addresses == 1:
        return str(network.network_address)
    return str(network)


def _status_item(p: _Problems, field: str, value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        p.wrong_type(field, value, "expected an HTTP status (an integer)")
        return None
    if not 100 <= value <= 999:
        p.wrong_value(field, value, "expected an HTTP status from 100 to 999")
        return None
    return value


def _number(p: _Problems, field: str, value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        p.wrong_type(field, value, "expected a number")
        return None
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        p.wrong_value(field, value, "expected a finite number")
        return None
    return number


def _range(p: _Problems, field: str, value: Mapping[object, object]) -> _Range | None:
    allowed = "a range object with one or more of 'gt', 'gte', 'lt', 'lte'"
    if not value:
        p.wrong_value(field, value, f"expected {allowed}")
        return None
    lo, lo_open, hi, hi_open = -math.inf, False, math.inf, False
    ok = True
    for op, bound in value.items():
        if op not in _RANGE_OPS:
            p.unknown(f"{field}.{op}", _RANGE_OPS)
            ok = False
            continue
        number = _number(p, f"{field}.{op}", bound)
        if number is None:
            ok = False
        elif op in ("gt", "gte") and (number > lo or (number == lo and op == "gt")):
            lo, lo_open = number, op == "gt"
        elif op in ("lt", "lte") and (number < hi or (number == hi and op == "lt")):
            hi, hi_open = number, op == "lt"
    if not ok:
        return None
    bounds = _Range(lo, lo_open, hi, hi_open)
    if bounds.empty():
        p.wrong_value(field, value, "the range matches no number: its bounds exclude each other")
        return None
    return bounds


class _Match:
    """The parsed `match` object: its normalised JSON, its checks, and its index keys."""

    def __init__(self) -> None:
        self.json: dict[str, object] = {}
        self.start: dict[str, StartCheck] = {}
        self.end: dict[str, EndCheck] = {}
        self.keys: dict[str, tuple[object, ...]] = {}  # exact values of indexable keys
        self.needles: tuple[str, ...] = ()  # the substrings `message` looks for


def _parse_match(p: _Problems, value: object, action: str) -> _Match:
    match = _Match()
    if value is None:
        return match
    if not isinstance(value, Mapping):
        p.wrong_type("match", value, "expected an object of match keys: " + ", ".join(_MATCH_KEYS))
        return match
    for key, item in value.items():
        field = f"match.{key}"
        if key not in _MATCH_KEYS:
            p.unknown(field, _MATCH_KEYS)
            continue
        if action == "detail" and key in _END_KEYS:
            _refuse_end_key(p, field, item)
        _MATCH_PARSERS[key](p, field, item, match)
    return match


def _refuse_end_key(p: _Problems, field: str, value: object) -> None:
    allowed = ", ".join(_START_KEYS)
    if field == "match.route":
        why = (
            "not allowed in a 'detail' rule: the route is known only once the framework has "
            f"routed the request, after detail mode is decided; use 'path' instead (allowed: "
            f"{allowed})"
        )
    else:
        why = (
            "not allowed in a 'detail' rule, which is looked up when the request starts; "
            f"allowed: {allowed}"
        )
    p.wrong_value(field, value, why)


def _exact_key(
    name: str,
    item: Callable[[_Problems, str, object], str | None],
    what: str,
    check: Callable[[frozenset[str]], StartCheck] | None = None,
    also: Callable[[list[str]], list[str]] | None = None,
) -> Callable[[_Problems, str, object, _Match], None]:
    """The parser of a key matched exactly against the request attribute of the same name
    (`also`: the values it matches, from those given)."""

    def parse(p: _Problems, field: str, value: object, match: _Match) -> None:
        parsed = _one_or_many(p, field, value, item, what)
        if parsed is not None:
            match.json[name], values = parsed
            if also is not None:
                values = also(values)
            exact = frozenset(values)
            match.start[name] = check(exact) if check else _check_attr(name, exact)
            match.keys[name] = tuple(dict.fromkeys(values))

    return parse


def _parse_path(p: _Problems, field: str, value: object, match: _Match) -> None:
    item = _text(_MAX_TEXT, "a path or a glob such as '/checkout/*'")
    parsed = _one_or_many(p, field, value, item, "a path glob")
    if parsed is not None:
        match.json["path"], values = parsed
        match.start["path"] = _check_path(values)
        if all("*" not in v for v in values):
            match.keys["path"] = tuple(dict.fromkeys(values))


def _parse_client(p: _Problems, field: str, value: object, match: _Match) -> None:
    parsed = _one_or_many(p, field, value, _client_item, "an IP address or CIDR network")
    if parsed is not None:
        match.json["client_ip"], values = parsed
        match.start["client_ip"] = _check_client(values)
        if all("/" not in v for v in values):
            match.keys["client_ip"] = tuple(dict.fromkeys(values))


def _parse_header(p: _Problems, field: str, value: object, match: _Match) -> None:
    if not isinstance(value, Mapping):
        p.wrong_type(field, value, 'expected an object of header names and values: {"x-name": "v"}')
        return
    if not value or len(value) > _MAX_HEADERS:
        p.wrong_value(field, value, f"expected 1 to {_MAX_HEADERS} header names")
        return
    item = _text(_MAX_TEXT, "a header value")
    headers: dict[str, frozenset[str]] = {}
    normalised: dict[str, object] = {}
    for name, given in value.items():
        name_field = f"{field}.{name}"
        if not isinstance(name, str) or not _TOKEN.fullmatch(name) or len(name) > 128:
            p.wrong_value(name_field, name, "expected a header name (letters, digits and '-')")
            continue
        if name.lower() in headers:
            p.wrong_value(name_field, name, "given twice: header names are case-insensitive")
            continue
        parsed = _one_or_many(p, name_field, given, item, "a header value")
        if parsed is not None:
            if _SECRETS.secret(name):  # kept hashed; a hash given is kept as it is
                hashed = [
                    v if _HASHED_HEADER.fullmatch(v) else _hashed_header(v) for v in parsed[1]
                ]
                parsed = (hashed if isinstance(parsed[0], list) else hashed[0], hashed)
            normalised[name.lower()], values = parsed
            headers[name.lower()] = frozenset(values)
    if len(headers) == len(value):
        match.json["header"] = normalised
        match.start["header"] = _check_headers(headers)


def _parse_status(p: _Problems, field: str, value: object, match: _Match) -> None:
    if isinstance(value, Mapping):
        bounds = _range(p, field, value)
        if bounds is not None:
            match.json["status"] = dict(value)
            match.end["status"] = _check_status(bounds)
        return
    parsed = _one_or_many(p, field, value, _status_item, "an HTTP status or a range object")
    if parsed is not None:
        match.json["status"], values = parsed
        match.end["status"] = _check_status(frozenset(values))
        match.keys["status"] = tuple(dict.fromkeys(values))


def _parse_duration(p: _Problems, field: str, value: object, match: _Match) -> None:
    if isinstance(value, Mapping):
        bounds = _range(p, field, value)
        if bounds is not None:
            match.json["duration_ms"] = dict(value)
            match.end["duration_ms"] = _check_duration(bounds)
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        p.wrong_type(field, value, 'expected a number of milliseconds or a range like {"gt": 300}')
        return
    at_least = _number(p, field, value)
    if at_least is not None and at_least < 0:
        p.wrong_value(field, value, "expected a number of milliseconds >= 0")
    elif at_least is not None:
        # A bare number means "at least", like the slow_ms option: an exact float never matches.
        match.json["duration_ms"] = value
        match.end["duration_ms"] = _check_duration(_Range(at_least, False, math.inf, False))


def _parse_message(p: _Problems, field: str, value: object, match: _Match) -> None:
    item = _text(_MAX_TEXT, "a substring of a log message")
    parsed = _one_or_many(p, field, value, item, "a substring")
    if parsed is not None:
        match.json["message"], values = parsed
        match.needles = tuple(dict.fromkeys(values))
        match.end["message"] = _check_message(match.needles)


_MATCH_PARSERS: dict[str, Callable[[_Problems, str, object, _Match], None]] = {
    "method": _exact_key("method", _method_item, "an HTTP method", _check_method),
    "path": _parse_path,
    "route": _exact_key(
        "route", _text(_MAX_TEXT, "a route template such as '/items/{item_id}'"), "a route"
    ),
    "user_id": _exact_key("user_id", _identity_item, "a user id"),
    "session_id": _exact_key("session_id", _session_item, "a session id", also=_session_values),
    "client_ip": _parse_client,
    "header": _parse_header,
    "status": _parse_status,
    "duration_ms": _parse_duration,
    "message": _parse_message,
}
# Cheap checks first, messages (a scan of every record) last.
_CHECK_ORDER = (
    "method",
    "route",
    "user_id",
    "session_id",
    "header",
    "path",
    "client_ip",
    "status",
    "duration_ms",
    "message",
)


# -- parsing the top-level fields -------------------------------------------------------


def _to_time(seconds: float) -> datetime:
    return _EPOCH + timedelta(seconds=seconds)


def _from_time(moment: datetime) -> float:
    return (moment - _EPOCH) / _SECOND


def _canonical(seconds: float) -> float:
    """`seconds` rounded to the microsecond that its ISO 8601 form keeps."""
    return _from_time(_to_time(seconds))


def _iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return _to_time(seconds).replace(tzinfo=None).isoformat() + "Z"


def iso_moment(text: str) -> datetime:
    """An ISO 8601 date and time of at most 64 characters, ``Z`` or an offset for its
    zone (a time without one is UTC), as an aware datetime.

    Raises:
        ValueError: `text` is not one.
    """
    text = text.strip()
    if len(text) > 64:
        raise ValueError(text)
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:  # a naive time means UTC
        moment = moment.replace(tzinfo=timezone.utc)
    return moment


def _parse_time(p: _Problems, field: str, value: object) -> float | None:
    expected = "expected an ISO 8601 date and time such as '2026-11-23T14:00:00Z'"
    if not isinstance(value, str):
        p.wrong_type(field, value, expected)
        return None
    try:
        moment = iso_moment(value)
    except ValueError:
        p.wrong_value(field, value, expected + " (a time without an offset is UTC)")
        return None
    if not _FIRST_YEAR <= moment.year <= _LAST_YEAR:  # keeps expiry arithmetic in range
        p.wrong_value(field, value, f"expected a time in the years {_FIRST_YEAR} to {_LAST_YEAR}")
        return None
    return _canonical(_from_time(moment))


def _parse_level(p: _Problems, value: object, field: str = "level") -> int:
    levels: dict[str, int] = logging._nameToLevel
    names = ", ".join(sorted(levels, key=lambda name: (levels[name], name)))
    expected = f"expected a level name ({names}) or a number from 0 to {_MAX_LEVEL}"
    if value is None:
        return logging.DEBUG
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value <= _MAX_LEVEL:
            return value
        p.wrong_value(field, value, expected)
    elif isinstance(value, str):
        if value.upper() in levels:
            return levels[value.upper()]
        p.wrong_value(field, value, expected)
    else:
        p.wrong_type(field, value, expected)
    return logging.DEBUG


def _level_json(level: int) -> str | int:
    name = logging.getLevelName(level)
    return name if isinstance(name, str) and not name.startswith("Level ") else level


def _choice(p: _Problems, obj: Mapping[str, object]) -> str:
    """The action, or "" when it is refused (a problem is recorded then)."""
    expected = "expected one of " + ", ".join(map(repr, ACTIONS))
    value = obj.get("action")
    if value is None:
        p.missing("action", expected[9:])
    elif not isinstance(value, str):
        p.wrong_type("action", value, expected)
    elif value not in ACTIONS:
        p.wrong_value("action", value, expected)
    else:
        return value
    return ""


def _parse_id(p: _Problems, value: object) -> str:
    expected = "expected 1 to 128 characters among letters, digits and '.', '_', ':', '-'"
    if value is None:
        return os.urandom(6).hex()
    if not isinstance(value, str):
        p.wrong_type("id", value, expected)
    elif not _ID.fullmatch(value) or not value.strip("."):  # "." and ".." are not path segments
        p.wrong_value("id", value, expected + ", not only dots")
    else:
        return value
    return ""


def _parse_int(p: _Problems, field: str, value: object, low: int, high: int) -> int:
    """An integer from `low` to `high`; 0 when absent or refused."""
    expected = f"expected an integer from {low} to {high}"
    default = 0
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        p.wrong_type(field, value, expected)
    elif not low <= value <= high:
        p.wrong_value(field, value, expected)
    else:
        return value
    return default


def _parse_sample_rate(p: _Problems, value: object) -> float:
    if value is None:
        return 1.0
    rate = _number(p, "sample_rate", value)
    if rate is not None and not 0 < rate <= 1:
        p.wrong_value(
            "sample_rate",
            value,
            "expected a number > 0 and <= 1 (the share of matching requests the rule acts on)",
        )
    return 1.0 if rate is None else rate


def _parse_bool(p: _Problems, field: str, value: object) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        p.wrong_type(field, value, "expected true or false")
        return False
    return value


def _parse_note(p: _Problems, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        p.wrong_type("note", value, "expected a string")
    elif len(value) > _MAX_TEXT:
        p.wrong_value("note", value, f"expected at most {_MAX_TEXT} characters")
    else:
        return value
    return None


def _parse_ttl(p: _Problems, value: object) -> float | None:
    if value is None:
        return None
    ttl = _number(p, "ttl_s", value)
    if ttl is not None and not _MIN_TTL_S <= ttl <= _MAX_TTL_S:
        p.wrong_value(
            "ttl_s",
            value,
            f"expected a number of seconds from {_MIN_TTL_S:g} to {_MAX_TTL_S:.0f} (a rule that "
            "expires at once could never act)",
        )
        return None
    return ttl


def _window(
    p: _Problems,
    obj: Mapping[str, object],
    *,
    action: str,
    now: float,
    max_detail_ttl_s: float,
    default_detail_ttl_s: float,
    stored: bool,
) -> tuple[float | None, float | None]:
    """When the rule applies: (starts_at, expires_at), checked against each other and `now`.

    A ttl counts from when the rule starts (now, or a later `starts_at`).
    """
    raw_starts, raw_expires = obj.get("starts_at"), obj.get("expires_at")
    starts = None if raw_starts is None else _parse_time(p, "starts_at", raw_starts)
    expires = None if raw_expires is None else _parse_time(p, "expires_at", raw_expires)
    # In the stored form ttl_s is what was left when it was written: expires_at is the truth.
    ttl = None if stored and raw_expires is not None else _parse_ttl(p, obj.get("ttl_s"))
    begin = now if starts is None else max(now, starts)
    if ttl is not None and raw_expires is not None:
        p.wrong_value("ttl_s", obj["ttl_s"], "give either 'ttl_s' or 'expires_at', not both")
    elif ttl is not None:
        expires = _canonical(begin + ttl)
    elif expires is not None and not stored and expires < now + _MIN_TTL_S:
        p.wrong_value(
            "expires_at",
            raw_expires,
            f"expected a time at least {_MIN_TTL_S:g} s after now ({_iso(now)})",
        )
    elif (
        expires is not None and not stored and starts is not None and expires < starts + _MIN_TTL_S
    ):
        p.wrong_value(
            "expires_at",
            raw_expires,
            f"expected a time at least {_MIN_TTL_S:g} s after 'starts_at'",
        )
    if action != "detail":
        return starts, expires
    if expires is None and raw_expires is None:  # detail rules must end: the default ttl
        expires = _canonical(begin + default_detail_ttl_s)
    if expires is not None and not stored and expires - begin > max_detail_ttl_s + _SLACK_S:
        if ttl is not None:
            p.wrong_value(
                "ttl_s",
                obj["ttl_s"],
                f"expected a number of seconds > 0 and <= {max_detail_ttl_s:g} for a 'detail' rule",
            )
        else:
            p.wrong_value(
                "expires_at",
                raw_expires,
                f"a 'detail' rule may last at most {max_detail_ttl_s:g} seconds: expected a time "
                f"up to {_iso(begin + max_detail_ttl_s)}",
            )
    return starts, expires


# -- count and tag rules ------------------------------------------------------------------

COUNT_KEYS = ("client_ip", "user_id", "session_id", "route", "field.NAME")
"""What a ``count`` rule counts per value of (``field.NAME``: a field given to ``bind()``)."""
DEFAULT_MAX_KEYS = 10_000
MAX_KEYS = 1_000_000
MAX_THRESHOLD = 1_000_000_000
MAX_WINDOW_S = 7 * 86400.0
DEFAULT_THEN_TTL_S = 1800.0
_THEN_ACTIONS = ("detail", "release", "alert", "tag")
_THEN_KEYS = {
    "detail": ("action", "ttl_s", "level"),
    "release": ("action",),
    "alert": ("action", "alert"),
    "tag": ("action", "tags", "ttl_s"),
}
_MAX_THEN = 10
_MAX_TAGS = 20
_MAX_TAG_VALUE = 200
# The keys a rule scoped to one key value can match on: detail rules only start-time keys.
_SCOPED = {"detail": ("client_ip", "user_id", "session_id"), "tag": COUNT_KEYS[:4]}


class Then(NamedTuple):
    """One action a ``count`` rule runs when a key reaches its threshold.

    Attributes:
        action: ``"detail"`` (a detail rule for that key), ``"release"`` (that key's
            matching requests in the window), ``"alert"`` or ``"tag"`` (a tag rule for
            that key).
        alert: the alert target's id (``"alert"`` only).
        ttl_s: how long the rule it makes lives, in seconds (``"detail"``, ``"tag"``).
        level: the level a ``"detail"`` rule writes from.
        tags: the fields a ``"tag"`` rule adds.
    """

    action: str
    alert: str | None = None
    ttl_s: float | None = None
    level: int | None = None
    tags: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> dict[str, object]:
        if self.action == "alert":
            return {"alert": self.alert}
        shown: dict[str, object] = {"action": self.action}
        if self.ttl_s is not None:
            shown["ttl_s"] = self.ttl_s
        if self.level is not None:
            shown["level"] = _level_json(self.level)
        if self.tags:
            shown["tags"] = dict(self.tags)
        return shown


class Count(NamedTuple):
    """What a ``count`` rule counts and does (see DESIGN.md, "Counting rules").

    Attributes:
        key: the request attribute counted per value (one of `COUNT_KEYS`).
        threshold: the count of one key within `window_s` that fires the rule.
        window_s: the sliding window, in seconds.
        max_keys: key values counted at once, at most (the least recently seen go).
        then: what runs once per key and window when it fires.
    """

    key: str
    threshold: int
    window_s: float
    max_keys: int
    then: tuple[Then, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "key": self.key,
            "threshold": self.threshold,
            "window_s": self.window_s,
            "max_keys": self.max_keys,
            "then": [then.to_json() for then in self.then],
        }


def count_key(key: str, facts: RequestFacts, fields: Mapping[str, object] | None) -> str | None:
    """The value of count key `key` for a request (None: it has none, it is not counted).

    A client address is normalised as rules match it; a field is its ``str()``, when
    that has at most 256 characters.
    """
    if key == "client_ip":
        return _client_key(facts)
    if key == "user_id":
        return facts.user_id
    if key == "session_id":
        return facts.session_id
    if key == "route":
        return facts.route
    value = None if fields is None else fields.get(key[6:])
    if value is None:
        return None
    text = str(value)
    return text if len(text) <= _MAX_IDENTITY else None


def _parse_count(
    p: _Problems, obj: Mapping[str, object], alerts: tuple[str, ...] | None, max_detail_s: float
) -> Count | None:
    key = obj.get("key")
    if key is None:
        p.missing("key", "the attribute counted per value: " + ", ".join(COUNT_KEYS))
    elif not isinstance(key, str):
        p.wrong_type("key", key, "expected one of " + ", ".join(COUNT_KEYS))
        key = None
    elif key not in COUNT_KEYS[:4] and not (
        key.startswith("field.") and key[6:].isidentifier() and len(key) <= 134
    ):
        p.wrong_value("key", key, "expected one of " + ", ".join(COUNT_KEYS))
        key = None
    threshold = obj.get("threshold")
    if threshold is None:
        p.missing("threshold", "the count of one key that fires the rule, from 1")
    else:
        threshold = _parse_int(p, "threshold", threshold, 1, MAX_THRESHOLD) or None
    window_s = obj.get("window_s")
    if window_s is None:
        p.missing("window_s", "the sliding window the count covers, in seconds")
    else:
        window_s = _number(p, "window_s", window_s)
        if window_s is not None and not 1 <= window_s <= MAX_WINDOW_S:
            p.wrong_value("window_s", obj["window_s"], f"expected 1 to {MAX_WINDOW_S:.0f} seconds")
            window_s = None
    max_keys = DEFAULT_MAX_KEYS
    if obj.get("max_keys") is not None:
        max_keys = _parse_int(p, "max_keys", obj["max_keys"], 1, MAX_KEYS)
    then = _parse_then(p, obj.get("then"), key, alerts, max_detail_s)
    if key is None or threshold is None or window_s is None or then is None:
        return None
    return Count(key, threshold, float(window_s), max_keys, then)


def _parse_then(
    p: _Problems,
    value: object,
    key: str | None,
    alerts: tuple[str, ...] | None,
    max_detail_s: float,
) -> tuple[Then, ...] | None:
    expected = 'expected a list of actions such as [{"action": "detail", "ttl_s": 900}, ' + (
        '{"alert": "security"}]'
    )
    if value is None:
        p.missing("then", "what runs when a key reaches the threshold: " + expected[9:])
        return None
    if not isinstance(value, list):
        p.wrong_type("then", value, expected)
        return None
    if not 1 <= len(value) <= _MAX_THEN:
        p.wrong_value("then", value, f"expected 1 to {_MAX_THEN} actions")
        return None
    parsed = [
        _parse_one_then(p, f"then[{i}]", item, key, alerts, max_detail_s)
        for i, item in enumerate(value)
    ]
    good = tuple(then for then in parsed if then is not None)
    return good if len(good) == len(parsed) else None


def _parse_one_then(
    p: _Problems,
    field: str,
    item: object,
    key: str | None,
    alerts: tuple[str, ...] | None,
    max_detail_s: float,
) -> Then | None:
    if not isinstance(item, Mapping):
        p.wrong_type(field, item, 'expected an object such as {"action": "release"}')
        return None
    action = item.get("action", "alert" if "alert" in item else None)
    if action not in _THEN_ACTIONS:
        p.wrong_value(
            f"{field}.action", action, "expected one of " + ", ".join(map(repr, _THEN_ACTIONS))
        )
        return None
    ok = True
    for name in item:
        if name not in _THEN_KEYS[action]:
            p.unknown(f"{field}.{name}", _THEN_KEYS[action])
            ok = False
    scoped = _SCOPED.get(action)
    if scoped is not None and key is not None and key not in scoped:
        p.wrong_value(
            f"{field}.action",
            action,
            f"a count rule whose key is {key!r} cannot scope a {action!r} rule to one key: "
            f"expected a 'key' among {', '.join(scoped)}",
        )
        ok = False
    ttl_s = level = None
    if action in ("detail", "tag"):
        longest = max_detail_s if action == "detail" else _MAX_TTL_S
        ttl_s = min(DEFAULT_THEN_TTL_S, longest)
        if item.get("ttl_s") is not None:
            ttl_s = _number(p, f"{field}.ttl_s", item["ttl_s"])
            if ttl_s is not None and not _MIN_TTL_S <= ttl_s <= longest + _SLACK_S:
                p.wrong_value(
                    f"{field}.ttl_s",
                    item["ttl_s"],
                    f"expected {_MIN_TTL_S:g} to {longest:g} seconds"
                    + (" (max_detail_ttl_s)" if action == "detail" else ""),
                )
                ttl_s = None
            ok = ok and ttl_s is not None
    if action == "detail" and item.get("level") is not None:
        level = _parse_level(p, item["level"], f"{field}.level")
    tags: tuple[tuple[str, str], ...] = ()
    if action == "tag":
        parsed = _parse_tags(p, f"{field}.tags", item.get("tags"))
        ok = ok and parsed is not None
        tags = parsed or ()
    alert = None
    if action == "alert":
        alert = item.get("alert")
        if not isinstance(alert, str) or not alert:
            p.wrong_type(f"{field}.alert", alert, "expected the id of an alert target")
            return None
        if alerts is not None and alert not in alerts:
            known = ", ".join(alerts) if alerts else "none are configured ('alerts' option)"
            p.wrong_value(f"{field}.alert", alert, f"no alert target has this id; known: {known}")
            return None
    return Then(action, alert, ttl_s, level, tags) if ok else None


def _parse_tags(p: _Problems, field: str, value: object) -> tuple[tuple[str, str], ...] | None:
    """A tag rule's ``tags``: 1 to 20 field names (identifiers that a LogRecord does not
    already have) and their text values."""
    expected = 'expected an object of field names and texts such as {"compliance": "pci"}'
    if value is None:
        p.missing(field, expected[9:])
        return None
    if not isinstance(value, Mapping):
        p.wrong_type(field, value, expected)
        return None
    if not 1 <= len(value) <= _MAX_TAGS:
        p.wrong_value(field, value, f"expected 1 to {_MAX_TAGS} fields")
        return None
    tags = []
    for name, text in value.items():
        if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
            p.wrong_value(f"{field}.{name}", name, "expected an identifier not starting with '_'")
        elif name in RESERVED:
            p.wrong_value(f"{field}.{name}", name, "a LogRecord attribute: choose another name")
        elif not isinstance(text, str):
            p.wrong_type(f"{field}.{name}", text, "expected a text")
        elif not 1 <= len(text) <= _MAX_TAG_VALUE:
            p.wrong_value(f"{field}.{name}", text, f"expected 1 to {_MAX_TAG_VALUE} characters")
        else:
            tags.append((name, text))
    return tuple(tags) if len(tags) == len(value) else None


def _only_for(p: _Problems, obj: Mapping[str, object], action: str) -> None:
    """Refuse the fields of count and tag rules on the rules of other actions."""
    for name, owner in _OWNED_BY.items():
        if owner != action and obj.get(name) is not None:
            p.wrong_value(name, obj[name], f"only a {owner!r} rule has {name!r}")


_OWNED_BY = {
    "key": "count",
    "threshold": "count",
    "window_s": "count",
    "max_keys": "count",
    "then": "count",
    "tags": "tag",
}


# -- rules -----------------------------------------------------------------------------


class _Hits:
    __slots__ = ("n",)

    def __init__(self, n: int = 0) -> None:
        self.n = n


class Rule:
    """One compiled rule: immutable apart from its hit counter.

    Made by :func:`parse_rule` (or :func:`restore_rule` from the stored form);
    ``to_json()`` gives the stored form.

    Attributes:
        id: the rule's id (given, or 12 random hex digits).
        action: ``"detail"``, ``"release"``, ``"drop"`` or ``"retain"``.
        retain_s: for a ``retain`` rule, the seconds a matching request is kept in
            the store; None for the other actions.
        level: the logging level (a number) detail mode writes from.
        priority: higher wins among matching rules.
        sample_rate: the share of matching requests the rule acts on (0 < x <= 1).
        dry_run: True when the rule only counts the requests it would act on.
        note: free text for the humans, or None.
        sinks: the ids of the sinks its releases go to, or None (the default sinks).
        count: what a ``count`` rule counts and does; None for the other actions.
        tags: the fields a ``tag`` rule adds, as ``(name, value)`` pairs; () for the others.
        created_at, starts_at, expires_at: epoch seconds (the last two may be None).
        hits: requests the rule matched (after sampling), counted by the RuleSet.
    """

    __slots__ = (
        "_bucket",
        "_decide_key",
        "_detail_key",
        "_end_checks",
        "_from",
        "_hits",
        "_match",
        "_needles",
        "_start_checks",
        "_until",
        "action",
        "count",
        "created_at",
        "dry_run",
        "expires_at",
        "id",
        "level",
        "note",
        "priority",
        "retain_s",
        "sample_rate",
        "sinks",
        "starts_at",
        "tags",
    )

    id: str
    action: str
    level: int
    priority: int
    retain_s: int | None
    sample_rate: float
    dry_run: bool
    note: str | None
    sinks: tuple[str, ...] | None
    count: Count | None
    tags: tuple[tuple[str, str], ...]
    created_at: float
    starts_at: float | None
    expires_at: float | None
    _match: dict[str, object]
    _start_checks: tuple[StartCheck, ...]
    _end_checks: tuple[EndCheck, ...]
    _needles: tuple[str, ...]
    _bucket: tuple[str, tuple[object, ...]] | None
    _from: float
    _until: float
    _detail_key: tuple[float, ...]
    _decide_key: tuple[float, ...]
    _hits: _Hits

    def __init__(
        self,
        *,
        id: str,
        action: str,
        match: _Match,
        level: int,
        priority: int,
        sample_rate: float,
        dry_run: bool,
        note: str | None,
        created_at: float,
        starts_at: float | None,
        expires_at: float | None,
        hits: int = 0,
        retain_s: int | None = None,
        sinks: tuple[str, ...] | None = None,
        count: Count | None = None,
        tags: tuple[tuple[str, str], ...] = (),
    ) -> None:
        put = object.__setattr__
        for name, value in (
            ("id", id),
            ("action", action),
            ("level", level),
            ("priority", priority),
            ("sample_rate", sample_rate),
            ("dry_run", dry_run),
            ("note", note),
            ("created_at", created_at),
            ("starts_at", starts_at),
            ("expires_at", expires_at),
            ("retain_s", retain_s),
            ("sinks", sinks),
            ("count", count),
            ("tags", tags),
        ):
            put(self, name, value)
        bucket = next((key for key in _INDEX_ORDER if key in match.keys), None)
        put(self, "_bucket", None if bucket is None else (bucket, match.keys[bucket]))
        put(self, "_match", match.json)
        put(self, "_needles", match.needles)
        # The bucket the rule is found through already proves its key matched.
        checks = [key for key in _CHECK_ORDER if key != bucket]
        put(self, "_start_checks", tuple(match.start[k] for k in checks if k in match.start))
        put(self, "_end_checks", tuple(match.end[k] for k in checks if k in match.end))
        put(self, "_from", -math.inf if starts_at is None else starts_at)
        put(self, "_until", math.inf if expires_at is None else expires_at)
        order = next(_order)
        put(self, "_detail_key", (priority, -level, created_at, order))
        put(self, "_decide_key", (priority, action == "release", created_at, order))
        put(self, "_hits", _Hits(hits))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"a Rule is immutable: parse a new rule instead of setting {name!r}")

    @property
    def hits(self) -> int:
        """Requests the rule matched and sampled in (for a dry-run rule: would have acted on)."""
        return self._hits.n

    def live(self, now: float) -> bool:
        """Whether the rule has not expired at `now` (it may not have started yet)."""
        return now < self._until

    def matches(self, facts: RequestFacts, duration_ms: float) -> bool:
        """Whether every key of the rule's match holds for a request that ended (its
        time window and sample rate aside): the search of the window uses it."""
        if self._bucket is not None:
            kind, keys = self._bucket
            if _KEY_OF[kind](facts) not in keys:
                return False
        return _matches(self, facts, duration_ms)

    def to_json(self, now: float | None = None) -> dict[str, object]:
        """The stored form: the rule as a JSON object, with times in ISO 8601 UTC.

        Args:
            now: the time ``ttl_s`` (the seconds left) is counted from;
                defaults to ``time.time()``.
        """
        if now is None:
            now = time.time()
        left = None if self.expires_at is None else round(max(0.0, self.expires_at - now), 3)
        return {
            "id": self.id,
            "action": self.action,
            "match": copy.deepcopy(self._match),
            "level": _level_json(self.level),
            "priority": self.priority,
            "sample_rate": self.sample_rate,
            "dry_run": self.dry_run,
            "note": self.note,
            "created_at": _iso(self.created_at),
            "starts_at": _iso(self.starts_at),
            "expires_at": _iso(self.expires_at),
            "ttl_s": left,
            "hits": self.hits,
            **({} if self.retain_s is None else {"retain_s": self.retain_s}),
            **({} if self.sinks is None else {"sinks": list(self.sinks)}),
            **({} if self.count is None else self.count.to_json()),
            **({"tags": dict(self.tags)} if self.tags else {}),
        }

    def _identity(self) -> tuple[object, ...]:
        return (
            self.id,
            self.action,
            json.dumps(self._match, sort_keys=True),
            self.level,
            self.priority,
            self.sample_rate,
            self.dry_run,
            self.note,
            self.sinks,
            self.count,
            self.tags,
            self.created_at,
            self.starts_at,
            self.expires_at,
        )

    def __eq__(self, other: object) -> bool:
        """Rules are equal when every field but the hit counter is."""
        if not isinstance(other, Rule):
            return NotImplemented
        return self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash((self.id, self.created_at))

    def __repr__(self) -> str:
        return (
            f"Rule(id={self.id!r}, action={self.action!r}, match={self._match!r}, "
            f"priority={self.priority}, expires_at={_iso(self.expires_at)!r})"
        )


def parse_rule(
    obj: object,
    *,
    now: float,
    max_detail_ttl_s: float = 86400.0,
    default_detail_ttl_s: float = 1800.0,
    sinks: Iterable[str] | None = None,
    alerts: Iterable[str] | None = None,
) -> Rule:
    """Validate a decoded JSON rule and compile it.

    Every problem is collected, not just the first, and nothing global is
    changed: the rule takes effect only once added to a :class:`RuleSet`.

    Args:
        obj: the rule, as decoded from JSON (see DESIGN.md, "Rules").
        now: the current time (epoch seconds): the rule's ``created_at`` and
            the time ``ttl_s`` counts from.
        max_detail_ttl_s: the longest a ``detail`` rule may last.
        default_detail_ttl_s: how long a ``detail`` rule given no ``ttl_s`` nor
            ``expires_at`` lasts.
        sinks: the ids of the sinks a rule's ``"sinks"`` may name (None: any id).
        alerts: the ids of the alert targets a count rule's ``then`` may name (None:
            any id).

    Raises:
        RuleError: the rule is refused; its ``status`` (400 or 422) and
            ``details`` name every offending field.

    Example::

        rule = parse_rule(
            {"action": "release", "match": {"path": "/checkout/*", "duration_ms": {"gt": 300}}},
            now=time.time(),
        )
        rules.add(rule)
    """
    known = None if sinks is None else tuple(sinks)
    targets = None if alerts is None else tuple(alerts)
    return _parse(
        obj,
        now,
        max_detail_ttl_s,
        default_detail_ttl_s,
        stored=False,
        sinks=known,
        alerts=targets,
    )


def restore_rule(
    obj: object,
    *,
    now: float,
    max_detail_ttl_s: float = 86400.0,
    default_detail_ttl_s: float = 1800.0,
) -> Rule:
    """Rebuild a rule from its stored form (what :meth:`Rule.to_json` gave).

    Unlike :func:`parse_rule`, it keeps ``created_at`` and ``hits``, ignores
    ``ttl_s`` when ``expires_at`` is given (that holds the expiry), and
    accepts an expiry that has passed (a :class:`RuleSet` then expires the
    rule): a store reloads its rules with it.

    Raises:
        RuleError: as :func:`parse_rule`.
    """
    return _parse(obj, now, max_detail_ttl_s, default_detail_ttl_s, stored=True)


def _parse(
    obj: object,
    now: float,
    max_detail_ttl_s: float,
    default_detail_ttl_s: float,
    *,
    stored: bool,
    sinks: tuple[str, ...] | None = None,
    alerts: tuple[str, ...] | None = None,
) -> Rule:
    if not 0 < default_detail_ttl_s <= max_detail_ttl_s:
        raise ValueError(
            f"invalid 'default_detail_ttl_s' {default_detail_ttl_s!r}: expected a number > 0 "
            f"and <= max_detail_ttl_s ({max_detail_ttl_s!r})"
        )
    p = _Problems()
    if not isinstance(obj, Mapping):
        p.wrong_type("rule", obj, "expected a JSON object with at least an 'action' key")
        raise p.error()
    allowed = _STORED_KEYS if stored else _TOP_KEYS
    for key in obj:
        if key not in allowed:
            # A match key at the top level is a common slip: point at where it belongs.
            p.unknown(str(key), allowed, f"match.{key}" if key in _MATCH_KEYS else None)
    action = _choice(p, obj)
    rule_id = _parse_id(p, obj.get("id"))
    match = _parse_match(p, obj.get("match"), action)
    level = _parse_level(p, obj.get("level"))
    priority = _parse_int(p, "priority", obj.get("priority"), -_MAX_PRIORITY, _MAX_PRIORITY)
    sample_rate = _parse_sample_rate(p, obj.get("sample_rate"))
    dry_run = _parse_bool(p, "dry_run", obj.get("dry_run"))
    note = _parse_note(p, obj.get("note"))
    routed = _parse_sinks(p, obj.get("sinks"), sinks)
    retain_s = _parse_retain_s(p, action, obj.get("retain_s"))
    _only_for(p, obj, action)
    count = _parse_count(p, obj, alerts, max_detail_ttl_s) if action == "count" else None
    tags = (_parse_tags(p, "tags", obj.get("tags")) or ()) if action == "tag" else ()
    starts_at, expires_at = _window(
        p,
        obj,
        action=action,
        now=now,
        max_detail_ttl_s=max_detail_ttl_s,
        default_detail_ttl_s=default_detail_ttl_s,
        stored=stored,
    )
    created_at, hits = _canonical(now), 0
    if stored:
        if obj.get("created_at") is not None:
            created_at = _parse_time(p, "created_at", obj["created_at"]) or created_at
        hits = _parse_int(p, "hits", obj.get("hits"), 0, 2**62)
    p.check()
    return Rule(
        id=rule_id,
        action=action,
        match=match,
        level=level,
        priority=priority,
        sample_rate=sample_rate,
        dry_run=dry_run,
        note=note,
        created_at=created_at,
        starts_at=starts_at,
        expires_at=expires_at,
        hits=hits,
        retain_s=retain_s,
        sinks=routed,
        count=count,
        tags=tags,
    )


def _parse_sinks(
    p: _Problems, value: object, known: tuple[str, ...] | None
) -> tuple[str, ...] | None:
    """A rule's ``sinks``: a non-empty list of sink ids (of `known`, when given)."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        p.wrong_type("sinks", value, 'expected a list of sink ids such as ["app", "support"]')
        return None
    if not value or len(value) > 100:
        p.wrong_value("sinks", value, "expected 1 to 100 sink ids")
        return None
    if known is not None:
        unknown = [item for item in value if item not in known]
        if unknown:
            p.wrong_value(
                "sinks", unknown[0], "no sink has this id; known sinks: " + ", ".join(known)
            )
            return None
    return tuple(dict.fromkeys(value))


def _parse_retain_s(p: _Problems, action: str, value: object) -> int | None:
    """A retain rule's ``retain_s`` (whole seconds, default 30 days); no other rule has one."""
    if action != "retain":
        if value is not None:
            p.wrong_value("retain_s", value, "only a 'retain' rule has 'retain_s'")
        return None
    if value is None:
        return DEFAULT_RETAIN_S
    return _parse_int(p, "retain_s", value, 1, MAX_RETAIN_S)


# -- the rule set and its index -----------------------------------------------------------


_Bucket = tuple["Rule", ...]
_Lookup = tuple[Callable[[RequestFacts], object], dict[object, _Bucket]]


class _Index:
    """The lookup structure over rules of one kind (detail, or release/drop).

    Changed in place by its `RuleSet` under the set's lock, one bucket at a time,
    so that adding a rule costs the size of its own bucket, not of the set.
    Lookups read it without a lock: each reads one dict entry or one attribute,
    and every bucket is an immutable tuple that a change replaces whole.
    """

    __slots__ = ("general", "lookups", "size", "tables")

    def __init__(self) -> None:
        self.general: _Bucket = ()
        self.tables: dict[str, dict[object, _Bucket]] = {}
        self.lookups: tuple[_Lookup, ...] = ()
        self.size = 0

    def add(self, rule: Rule) -> None:
        self.size += 1
        if rule._bucket is None:
            self.general = (*self.general, rule)
            return
        kind, keys = rule._bucket
        table = self.tables.get(kind)
        if table is None:
            table = self.tables[kind] = {}
            # The lookup order is the index order, whatever order kinds arrive in.
            self.lookups = tuple(
                (_KEY_OF[name], self.tables[name]) for name in _INDEX_ORDER if name in self.tables
            )
        for key in keys:
            table[key] = (*table.get(key, ()), rule)

    def remove(self, rule: Rule) -> None:
        self.size -= 1
        if rule._bucket is None:
            self.general = tuple(r for r in self.general if r is not rule)
            return
        kind, keys = rule._bucket
        table = self.tables[kind]
        for key in keys:
            bucket = tuple(r for r in table.get(key, ()) if r is not rule)
            if bucket:
                table[key] = bucket
            else:
                table.pop(key, None)

    def candidates(self, facts: RequestFacts) -> list[tuple[Rule, ...]]:
        """The non-empty buckets the request's own values select, and the general list."""
        general = self.general
        found = [general] if general else []
        for key_of, table in self.lookups:
            key = key_of(facts)
            if key is not None:
                bucket = table.get(key)
                if bucket:
                    found.append(bucket)
        return found


class RuleSet:
    """The rules held by one process, indexed for the per-request lookups.

    Thread-safe: changes take a lock; lookups take none (see `_Index`). Adding or
    removing a rule costs about the size of its bucket (the rules of the same user,
    say) and a heap operation, not the size of the set.

    Args:
        clock: the current time in epoch seconds (tests inject their own).
        rng: a random number in [0, 1), drawn once per matching rule whose
            ``sample_rate`` is below 1.

    Example::

        rules = RuleSet()
        rules.add(parse_rule({"action": "detail", "match": {"user_id": "42"}}, now=time.time()))
        winner = rules.detail_for(state)   # at the start of a request
        winner = rules.decide(state, duration_ms)   # at its end
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._clock = clock
        self._rng = rng
        self._lock = new_lock()  # re-made in a forked child (gunicorn --preload)
        self._by_id: dict[str, Rule] = {}
        self._detail: _Index | None = None
        self._end: _Index | None = None
        self._retain: _Index | None = None
        self._count: _Index | None = None
        self._tag: _Index | None = None
        # (expires_at, order, rule) of the rules that expire; entries of rules removed
        # since stay until they come up (or the heap is rebuilt when mostly stale).
        self._expiry: list[tuple[float, int, Rule]] = []
        self._needles: dict[str, int] = {}
        self.empty = True
        """True when no rule is held at all: the per-request lookups can be skipped."""
        self.kinds: frozenset[str] = frozenset()
        """The actions of the rules held: the lookups of the others can be skipped."""
        self.at_start = False
        """True when a request is looked up as it starts: detail rules, or rules on
        messages (whose requests note what their records say), are held."""
        self.needles: tuple[str, ...] = ()
        """The substrings that rules matching on `message` look for, in every rule held."""
        _rule_sets.add(self)

    # -- changes ---------------------------------------------------------------------

    def add(self, rule: Rule) -> None:
        """Add a rule, taking the place of an expired one with its id.

        Raises:
            KeyError: a live rule already has this id (the admin API answers 409).
        """
        with self._lock:
            held = self._by_id.get(rule.id)
            if held is not None and held.live(self._clock()):
                raise KeyError(rule.id)
            if held is not None:
                self._drop(held)
            self._put(rule)

    def put(self, rule: Rule) -> None:
        """Add a rule, or replace the one with its id (as a store says it is now)."""
        with self._lock:
            held = self._by_id.get(rule.id)
            if held is not None:
                self._drop(held)
            self._put(rule)

    def discard(self, rule_id: str) -> Rule | None:
        """Remove and return the rule with this id, live or expired; None when absent."""
        with self._lock:
            held = self._by_id.get(rule_id)
            if held is not None:
                self._drop(held)
            return held

    def replace(self, rules: list[Rule]) -> None:
        """Swap every rule for `rules` (loaded from a file or a store).

        Raises:
            ValueError: two rules share an id; nothing is changed.
        """
        ids = [rule.id for rule in rules]
        if len(set(ids)) != len(ids):
            twice = next(rule_id for rule_id in ids if ids.count(rule_id) > 1)
            raise ValueError(f"invalid rules: id {twice!r} is given twice; ids are unique")
        with self._lock:
            for held in list(self._by_id.values()):
                self._drop(held)
            self._expiry = []
            for rule in rules:
                self._put(rule)

    def due(self) -> list[Rule]:
        """The rules held whose expiry has passed (still held: their owner removes them).

        Cheap when nothing is due: the earliest expiry is on top of a heap, and
        the entries of rules removed meanwhile are dropped as they come up.
        """
        now = self._clock()
        expiry = self._expiry
        if not expiry or expiry[0][0] > now:
            return []
        with self._lock:
            held = self._by_id
            while expiry and expiry[0][0] <= now and held.get(expiry[0][2].id) is not expiry[0][2]:
                heapq.heappop(expiry)
            return [e[2] for e in expiry if e[0] <= now and held.get(e[2].id) is e[2]]

    def _put(self, rule: Rule) -> None:
        self._by_id[rule.id] = rule
        name = _INDEX_OF[rule.action]
        index = getattr(self, name)
        if index is None:
            index = _Index()
            setattr(self, name, index)
        index.add(rule)
        if rule.expires_at is not None:
            # The order (unique) settles ties: rules themselves are never compared.
            entry = (rule._until, int(rule._detail_key[-1]), rule)
            heapq.heappush(self._expiry, entry)
        for needle in rule._needles:
            self._needles[needle] = self._needles.get(needle, 0) + 1
        self._changed(bool(rule._needles))

    def _drop(self, rule: Rule) -> None:
        del self._by_id[rule.id]
        name = _INDEX_OF[rule.action]
        index = getattr(self, name)
        if index is not None:
            index.remove(rule)
            if not index.size:  # the lookups of that kind can be skipped again
                setattr(self, name, None)
        for needle in rule._needles:
            left = self._needles[needle] - 1
            if left:
                self._needles[needle] = left
            else:
                del self._needles[needle]
        if len(self._expiry) > 2 * len(self._by_id) + 64:  # mostly removed rules: rebuild
            self._expiry = [e for e in self._expiry if self._by_id.get(e[2].id) is e[2]]
            heapq.heapify(self._expiry)
        self._changed(bool(rule._needles))

    def _changed(self, needles: bool) -> None:
        self.empty = not self._by_id
        if needles:
            self.needles = tuple(self._needles)
        self.kinds = frozenset(a for a, name in _INDEX_OF.items() if getattr(self, name))
        self.at_start = "detail" in self.kinds or bool(self.needles)

    # -- reading ---------------------------------------------------------------------

    def get(self, rule_id: str) -> Rule | None:
        """The rule with this id; None when absent or expired."""
        rule = self._by_id.get(rule_id)
        return rule if rule is not None and rule.live(self._clock()) else None

    def held(self, rule_id: str) -> Rule | None:
        """The rule with this id, live or expired; None when absent."""
        return self._by_id.get(rule_id)

    def rules(self) -> list[Rule]:
        """The live rules (including ones not started yet), oldest first."""
        now = self._clock()
        with self._lock:
            held = list(self._by_id.values())
        live = [r for r in held if r.live(now)]
        live.sort(key=lambda r: (r.created_at, r._detail_key[-1]))
        return live

    def __len__(self) -> int:
        """How many live rules are held."""
        now = self._clock()
        expiry = self._expiry
        if not expiry or expiry[0][0] > now:
            return len(self._by_id)
        with self._lock:
            return sum(1 for r in self._by_id.values() if r.live(now))

    # -- the per-request lookups -----------------------------------------------------

    def detail_for(self, facts: RequestFacts) -> Rule | None:
        """The `detail` rule that applies when a request starts, or None.

        Among the started, unexpired detail rules whose keys match and whose
        sample draws the request, the highest priority wins; on a tie the
        lower level (more detail), then the newest. Every such rule counts a
        hit; dry-run rules only count.
        """
        index = self._detail
        return None if index is None else self._lookup(index, facts, 0.0, _DETAIL_ORDER)

    def decide(self, facts: RequestFacts, duration_ms: float) -> Rule | None:
        """The `release` or `drop` rule that applies when a request ends, or None.

        Among the started, unexpired release/drop rules whose keys match and
        whose sample draws the request, the highest priority wins; on a tie
        `release` beats `drop`, then the newest wins. Every such rule counts a
        hit; dry-run rules only count.
        """
        index = self._end
        return None if index is None else self._lookup(index, facts, duration_ms, _DECIDE_ORDER)

    def retain_for(self, facts: RequestFacts, duration_ms: float) -> Rule | None:
        """The `retain` rule that applies when a request ends (the one keeping it longest,
        then the highest priority), or None; cheap when no retain rule is held."""
        index = self._retain
        return None if index is None else self._lookup(index, facts, duration_ms, _RETAIN_ORDER)

    def counting(self, facts: RequestFacts, duration_ms: float) -> list[Rule]:
        """The ``count`` rules that count a request that ended (dry-run ones too: they
        count, and their firing is only audited); cheap when none is held."""
        index = self._count
        return [] if index is None else self._every(index, facts, duration_ms, dry_run=True)

    def tags_for(self, facts: RequestFacts, duration_ms: float) -> dict[str, str] | None:
        """The fields the ``tag`` rules matching a request that ended add to it (on a
        name given by several, the highest priority, then the newest wins), or None."""
        index = self._tag
        if index is None:
            return None
        found = self._every(index, facts, duration_ms, dry_run=False)
        if not found:
            return None
        found.sort(key=_DECIDE_ORDER)
        return {name: value for rule in found for name, value in rule.tags}

    def _every(
        self, index: _Index, facts: RequestFacts, duration_ms: float, *, dry_run: bool
    ) -> list[Rule]:
        """Every started, unexpired rule of `index` that matches and draws the request
        (each counts a hit); dry-run rules only when `dry_run`."""
        found = index.candidates(facts)
        if not found:
            return []
        now = self._clock()
        every = []
        for bucket in found:
            for rule in bucket:
                if not rule._from <= now < rule._until or not _matches(rule, facts, duration_ms):
                    continue
                if rule.sample_rate < 1.0 and not self._rng() < rule.sample_rate:
                    continue
                rule._hits.n += 1
                if dry_run or not rule.dry_run:
                    every.append(rule)
        return every

    def _lookup(
        self,
        index: _Index,
        facts: RequestFacts,
        duration_ms: float,
        order: Callable[[Rule], tuple[float, ...]],
    ) -> Rule | None:
        """The rule of `index` that wins by `order` among those `_every` finds, or None."""
        found = self._every(index, facts, duration_ms, dry_run=False)
        if not found:
            return None
        return found[0] if len(found) == 1 else max(found, key=order)


_rule_sets: weakref.WeakSet[RuleSet] = weakref.WeakSet()


def _before_fork() -> None:
    # A fork while another thread changes a set would copy it half changed into the
    # child: each set's lock is held across the fork (the child's is made anew).
    for rules in list(_rule_sets):
        rules._lock.acquire()


def _after_fork_in_parent() -> None:
    for rules in list(_rule_sets):
        rules._lock.release()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent)


_DETAIL_ORDER: Callable[[Rule], tuple[float, ...]] = operator.attrgetter("_detail_key")
_DECIDE_ORDER: Callable[[Rule], tuple[float, ...]] = operator.attrgetter("_decide_key")


def _RETAIN_ORDER(rule: Rule) -> tuple[float, ...]:
    return (rule.retain_s or 0, *rule._decide_key)


# The index of the RuleSet each action's rules are looked up in.
_INDEX_OF = {
    "detail": "_detail",
    "release": "_end",
    "drop": "_end",
    "retain": "_retain",
    "count": "_count",
    "tag": "_tag",
}


def _matches(rule: Rule, facts: RequestFacts, duration_ms: float) -> bool:
    """Whether every key of the rule but its index key matches (plain loops: no generators)."""
    for check in rule._start_checks:
        if not check(facts):
            return False
    for end_check in rule._end_checks:  # noqa: SIM110 (all() of a generator costs more)
        if not end_check(facts, duration_ms):
            return False
    return True
