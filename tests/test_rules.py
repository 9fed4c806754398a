"""The rule format: parsing, validation errors, matching, the index, expiry, sampling."""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from typing import Any

import pytest

from hindsight_web.redact import hash_session
from hindsight_web.rules import RequestFacts, Rule, RuleError, RuleSet, parse_rule, restore_rule

NOW = 1_795_442_400.0  # 2026-11-23T14:00:00Z
COMPUTED = ("created_at", "ttl_s", "hits")


@dataclass
class Facts:
    """A request as a lookup sees it."""

    method: str = "GET"
    path: str = "/"
    route: str | None = None
    user_id: str | None = None
    session_id: str | None = None
    client: str | None = "192.0.2.10"
    status: int | None = 200
    headers: dict[str, str] = field(default_factory=dict)
    logs: list[str] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def mentions(self, needle: str) -> bool:
        return any(needle in text for text in self.logs)


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Draws:
    """An rng that returns the given numbers in turn and counts the draws."""

    def __init__(self, *values: float) -> None:
        self.values = itertools.cycle(values)
        self.count = 0

    def __call__(self) -> float:
        self.count += 1
        return next(self.values)


def make(action: str = "release", *, now: float = NOW, **fields: Any) -> Rule:
    return parse_rule({"action": action, **fields}, now=now)


def ruleset(*rules: Rule, clock: Clock | None = None, rng: Draws | None = None) -> RuleSet:
    rs = RuleSet(clock=clock or Clock(), rng=rng or Draws(0.0))
    for rule in rules:
        rs.add(rule)
    return rs


def matches(match: dict[str, Any], facts: RequestFacts, duration_ms: float = 0.0) -> bool:
    """Whether a release rule with this match applies at the end of the request."""
    return ruleset(make(match=match)).decide(facts, duration_ms) is not None


def detail_matches(match: dict[str, Any], facts: RequestFacts) -> bool:
    return ruleset(make("detail", match=match)).detail_for(facts) is not None


def refusal(obj: object, **options: Any) -> RuleError:
    with pytest.raises(RuleError) as info:
        parse_rule(obj, now=options.pop("now", NOW), **options)
    return info.value


def stored(rule: Rule, now: float = NOW) -> dict[str, Any]:
    """The stored form without the fields a server computes."""
    return {k: v for k, v in rule.to_json(now).items() if k not in COMPUTED}


# -- the format --------------------------------------------------------------------------


def test_the_design_example_parses_into_its_stored_form() -> None:
    rule = parse_rule(
        {
            "id": "checkout-slow",
            "action": "release",
            "match": {"method": "POST", "path": "/checkout/*", "duration_ms": {"gt": 300}},
            "level": "DEBUG",
            "ttl_s": 3600,
            "priority": 0,
            "sample_rate": 1.0,
            "note": "ticket 4711",
        },
        now=NOW,
    )
    assert rule.to_json(NOW + 600) == {
        "id": "checkout-slow",
        "action": "release",
        "match": {"method": "POST", "path": "/checkout/*", "duration_ms": {"gt": 300}},
        "level": "DEBUG",
        "priority": 0,
        "sample_rate": 1.0,
        "dry_run": False,
        "note": "ticket 4711",
        "created_at": "2026-11-23T14:00:00Z",
        "starts_at": None,
        "expires_at": "2026-11-23T15:00:00Z",
        "ttl_s": 3000.0,
        "hits": 0,
    }
    assert (rule.id, rule.action, rule.level, rule.priority) == ("checkout-slow", "release", 10, 0)
    assert (rule.created_at, rule.expires_at, rule.starts_at) == (NOW, NOW + 3600, None)


def test_defaults_and_generated_id() -> None:
    a, b = make(), make()
    assert a.id != b.id
    assert len(a.id) == 12
    assert int(a.id, 16) >= 0
    assert (a.level, a.priority, a.sample_rate, a.dry_run, a.note) == (10, 0, 1.0, False, None)
    assert a.expires_at is None  # release and drop rules may live until removed
    assert a.to_json(NOW)["ttl_s"] is None
    assert a.to_json(NOW)["match"] == {}


def test_null_optional_fields_mean_absent() -> None:
    rule = parse_rule(
        {
            "action": "drop",
            "id": None,
            "match": None,
            "level": None,
            "ttl_s": None,
            "expires_at": None,
            "starts_at": None,
            "priority": None,
            "sample_rate": None,
            "dry_run": None,
            "note": None,
        },
        now=NOW,
    )
    assert rule == parse_rule({"action": "drop", "id": rule.id}, now=NOW)


def test_secret_header_values_are_kept_only_hashed() -> None:
    rule = make(match={"header": {"Authorization": "Bearer hunter2", "X-Tenant": "acme"}})
    shown = rule.to_json(NOW)["match"]["header"]
    assert shown["x-tenant"] == "acme"
    assert shown["authorization"].startswith("sha256:")
    assert "hunter2" not in repr(rule.to_json(NOW))
    again = make(match={"header": shown})  # the stored form, given back, means the same
    assert again.to_json(NOW)["match"]["header"] == shown


def test_match_is_normalised_in_the_stored_form() -> None:
    rule = make(
        match={
            "method": ["get", "Post"],
            "user_id": 42,
            "session_id": [7, "s"],
            "header": {"X-Tenant": "acme"},
            "client_ip": ["10.0.0.1/8", "::ffff:192.0.2.1", "2001:db8::1/128"],
            "status": [500, 502],
        }
    )
    assert rule.to_json(NOW)["match"] == {
        "method": ["GET", "POST"],
        "user_id": "42",
        "session_id": [hash_session("7"), hash_session("s")],
        "header": {"x-tenant": "acme"},
        "client_ip": ["10.0.0.0/8", "192.0.2.1", "2001:db8::1"],
        "status": [500, 502],
    }


@pytest.mark.parametrize(
    ("level", "number", "shown"),
    [
        ("DEBUG", 10, "DEBUG"),
        ("info", 20, "INFO"),
        (30, 30, "WARNING"),
        (5, 5, 5),
        (0, 0, "NOTSET"),
    ],
)
def test_level_names_and_numbers(level: object, number: int, shown: object) -> None:
    rule = make(level=level)
    assert rule.level == number
    assert rule.to_json(NOW)["level"] == shown


def test_a_rule_is_immutable_apart_from_its_hits() -> None:
    rule = make()
    with pytest.raises(AttributeError, match="immutable"):
        rule.priority = 5
    with pytest.raises(AttributeError):
        rule.hits = 3  # type: ignore[misc]


# -- matching: start-time keys (both detail and release rules) -------------------------

START_CASES = [
    ({}, Facts(), True),
    ({"method": "GET"}, Facts(method="GET"), True),
    ({"method": "get"}, Facts(method="GET"), True),
    ({"method": "GET"}, Facts(method="get"), True),
    ({"method": "GET"}, Facts(method="POST"), False),
    ({"method": ["POST", "PUT"]}, Facts(method="PUT"), True),
    ({"method": ["POST", "PUT"]}, Facts(method="GET"), False),
    ({"path": "/health"}, Facts(path="/health"), True),
    ({"path": "/health"}, Facts(path="/healthz"), False),
    ({"path": ["/a", "/b/*"]}, Facts(path="/b/c/d"), True),
    ({"path": ["/a", "/b/*"]}, Facts(path="/c"), False),
    ({"user_id": "alice"}, Facts(user_id="alice"), True),
    ({"user_id": "alice"}, Facts(user_id="bob"), False),
    ({"user_id": "alice"}, Facts(user_id=None), False),
    ({"user_id": 42}, Facts(user_id="42"), True),
    ({"user_id": ["alice", 7]}, Facts(user_id="7"), True),
    ({"session_id": "s1"}, Facts(session_id=hash_session("s1")), True),
    ({"session_id": "s1"}, Facts(session_id=hash_session("s2")), False),
    ({"session_id": [1, 2]}, Facts(session_id=hash_session("2")), True),
    ({"client_ip": "192.0.2.10"}, Facts(client="192.0.2.10"), True),
    ({"client_ip": "192.0.2.10"}, Facts(client="192.0.2.11"), False),
    ({"client_ip": "192.0.2.0/24"}, Facts(client="192.0.2.200"), True),
    ({"client_ip": "192.0.2.0/24"}, Facts(client="192.0.3.1"), False),
    ({"client_ip": "2001:db8::1"}, Facts(client="2001:db8:0::1"), True),
    ({"client_ip": "2001:db8::/32"}, Facts(client="2001:db8:ab::7"), True),
    ({"client_ip": "2001:db8::/32"}, Facts(client="2001:db9::7"), False),
    ({"client_ip": "192.0.2.10"}, Facts(client="::ffff:192.0.2.10"), True),
    ({"client_ip": "192.0.2.0/24"}, Facts(client="::ffff:192.0.2.99"), True),
    ({"client_ip": "::ffff:192.0.2.10"}, Facts(client="192.0.2.10"), True),
    ({"client_ip": "::ffff:192.0.2.0/120"}, Facts(client="192.0.2.7"), True),
    ({"client_ip": "0.0.0.0/0"}, Facts(client="::1"), False),
    ({"client_ip": "::/0"}, Facts(client="10.0.0.1"), False),
    ({"client_ip": ["10.0.0.0/8", "192.0.2.10"]}, Facts(client="192.0.2.10"), True),
    ({"client_ip": "10.0.0.0/8"}, Facts(client=None), False),
    ({"client_ip": "10.0.0.0/8"}, Facts(client="not an address"), False),
    ({"method": "GET"}, Facts(method="GET", client="garbage"), True),
    ({"header": {"X-Tenant": "acme"}}, Facts(headers={"x-tenant": "acme"}), True),
    ({"header": {"x-tenant": "acme"}}, Facts(headers={"x-tenant": "acme"}), True),
    ({"header": {"X-TENANT": "acme"}}, Facts(headers={"x-tenant": "Acme"}), False),
    ({"header": {"X-Tenant": "acme"}}, Facts(headers={}), False),
    ({"header": {"X-Tenant": ["a", "b"]}}, Facts(headers={"x-tenant": "b"}), True),
    (
        {"header": {"Authorization": "Bearer t1"}},
        Facts(headers={"authorization": "Bearer t1"}),
        True,
    ),
    (
        {"header": {"Authorization": "Bearer t1"}},
        Facts(headers={"authorization": "Bearer t2"}),
        False,
    ),
    (
        {"header": {"X-Api-Key": ["k1", "k2"], "X-Tenant": "acme"}},
        Facts(headers={"x-api-key": "k2", "x-tenant": "acme"}),
        True,
    ),
    ({"header": {"A": "1", "B": "2"}}, Facts(headers={"a": "1", "b": "2"}), True),
    ({"header": {"A": "1", "B": "2"}}, Facts(headers={"a": "1"}), False),
    ({"method": "POST", "user_id": "u"}, Facts(method="POST", user_id="u"), True),
    ({"method": "POST", "user_id": "u"}, Facts(method="GET", user_id="u"), False),
    ({"user_id": "u", "path": "/a/*"}, Facts(user_id="u", path="/b"), False),
    (
        {"session_id": "s", "client_ip": "10.0.0.1"},
        Facts(session_id=hash_session("s"), client="10.0.0.2"),
        False,
    ),
]


@pytest.mark.parametrize(("match", "facts", "expected"), START_CASES)
def test_start_time_keys_in_release_rules(
    match: dict[str, Any], facts: Facts, expected: bool
) -> None:
    assert matches(match, facts) is expected


@pytest.mark.parametrize(("match", "facts", "expected"), START_CASES)
def test_start_time_keys_in_detail_rules(
    match: dict[str, Any], facts: Facts, expected: bool
) -> None:
    assert detail_matches(match, facts) is expected


# -- matching: end-time keys -------------------------------------------------------------


@pytest.mark.parametrize(
    ("match", "facts", "duration_ms", "expected"),
    [
        ({"route": "/items/{id}"}, Facts(route="/items/{id}"), 0, True),
        ({"route": "/items/{id}"}, Facts(route="/users/{id}"), 0, False),
        ({"route": "/items/{id}"}, Facts(route=None), 0, False),
        ({"route": ["/a", "/b"]}, Facts(route="/b"), 0, True),
        ({"status": 503}, Facts(status=503), 0, True),
        ({"status": 503}, Facts(status=500), 0, False),
        ({"status": 503}, Facts(status=None), 0, False),
        ({"status": [500, 503]}, Facts(status=500), 0, True),
        ({"status": [500, 503]}, Facts(status=404), 0, False),
        ({"status": {"gte": 500}}, Facts(status=500), 0, True),
        ({"status": {"gte": 400, "lt": 500}}, Facts(status=404), 0, True),
        ({"status": {"gte": 400, "lt": 500}}, Facts(status=500), 0, False),
        ({"status": {"gte": 400}}, Facts(status=None), 0, False),
        ({"duration_ms": 300}, Facts(), 300.0, True),  # a bare number means "at least"
        ({"duration_ms": 300}, Facts(), 299.9, False),
        ({"duration_ms": {"gt": 300}}, Facts(), 300.5, True),
        ({"duration_ms": {"gt": 300}}, Facts(), 300.0, False),
        ({"message": "timeout"}, Facts(logs=["a", "db timeout after 3s"]), 0, True),
        ({"message": "timeout"}, Facts(logs=["a", "b"]), 0, False),
        ({"message": "timeout"}, Facts(logs=[]), 0, False),
        ({"message": ["deadlock", "retry"]}, Facts(logs=["will retry"]), 0, True),
        ({"message": "Timeout"}, Facts(logs=["timeout"]), 0, False),
        (
            {"method": "POST", "path": "/checkout/*", "duration_ms": {"gt": 300}},
            Facts(method="POST", path="/checkout/pay"),
            301,
            True,
        ),
        (
            {"method": "POST", "path": "/checkout/*", "duration_ms": {"gt": 300}},
            Facts(method="POST", path="/checkout/pay"),
            299,
            False,
        ),
        ({"route": "/r", "status": 500}, Facts(route="/r", status=200), 0, False),
    ],
)
def test_end_time_keys(
    match: dict[str, Any], facts: Facts, duration_ms: float, expected: bool
) -> None:
    assert matches(match, facts, duration_ms) is expected


@pytest.mark.parametrize(
    ("bounds", "value", "expected"),
    [
        ({"gt": 10}, 10, False),
        ({"gt": 10}, 10.001, True),
        ({"gte": 10}, 10, True),
        ({"gte": 10}, 9.999, False),
        ({"lt": 10}, 10, False),
        ({"lt": 10}, 9.999, True),
        ({"lte": 10}, 10, True),
        ({"lte": 10}, 10.001, False),
        ({"gt": 10, "lt": 20}, 15, True),
        ({"gt": 10, "lt": 20}, 20, False),
        ({"gte": 10, "lte": 10}, 10, True),
        ({"gt": 10, "gte": 10}, 10, False),  # both lower bounds: the stricter holds
        ({"gt": 5, "gte": 10}, 7, False),
        ({"lt": 20, "lte": 15}, 17, False),
        ({"gte": 0.5}, 0.5, True),
        ({"lt": 0}, -1, True),
    ],
)
def test_range_operators(bounds: dict[str, float], value: float, expected: bool) -> None:
    assert matches({"duration_ms": bounds}, Facts(), value) is expected


# -- path globs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("/checkout/*", "/checkout/", True),
        ("/checkout/*", "/checkout/pay/card", True),  # `*` crosses `/`
        ("/checkout/*", "/checkout", False),
        ("/exact", "/exact", True),
        ("/exact", "/exact/", False),
        ("/a.b", "/aXb", False),  # no regex: `.` is literal
        ("/a?b", "/a?b", True),
        ("/[x]", "/[x]", True),
        ("*", "", True),
        ("*", "/anything/at/all", True),
        ("*/edit", "/users/7/edit", True),
        ("*/edit", "/users/7/edit/x", False),
        ("/users/*/edit", "/users/7/9/edit", True),
        ("/users/*/edit", "/users/edit", False),
        ("/a*a", "/a", False),  # head and tail may not overlap
        ("/a*a", "/aa", True),
        ("*.json", "/static/x.json", True),
        ("/x/*/y/*/z", "/x/1/y/2/z", True),
        ("/x/*/y/*/z", "/x/1/z/2/y", False),
        ("**", "/", True),
        ("/a**b", "/ab", True),
        ("*ab*ab*", "/xabyab", True),
        ("*ab*ab*", "/xaby", False),
        ("*aba*", "/ab", False),
    ],
)
def test_path_globs(pattern: str, path: str, expected: bool) -> None:
    assert matches({"path": pattern}, Facts(path=path)) is expected


class CountingPath(str):
    """A path that counts the string searches done on it."""

    calls = 0

    def find(self, *args: Any) -> int:
        CountingPath.calls += 1
        return super().find(*args)

    def startswith(self, *args: Any) -> bool:
        CountingPath.calls += 1
        return super().startswith(*args)

    def endswith(self, *args: Any) -> bool:
        CountingPath.calls += 1
        return super().endswith(*args)


LONG_A = "/" + "a" * 10_000  # a 10 kB path
LONG_AB = "/" + "ab" * 5_000


@pytest.mark.parametrize(
    ("pattern", "path", "expected", "pieces"),
    [
        ("*" * 200, LONG_A, True, 0),
        ("/" + "*" * 200 + "a", LONG_A, True, 0),
        ("/" + "*a" * 200 + "*", LONG_A, True, 200),
        # a backtracking matcher retries every split of the 200 pieces before giving up here
        ("/" + "*ab" * 200 + "*x*b", LONG_AB, False, 201),
        ("/" + "*a*" * 200 + "b", LONG_A, False, 0),  # the tail fails first
        ("*" + "a" * 999, LONG_AB, False, 0),
    ],
)
def test_pathological_globs_search_once_per_piece(
    pattern: str, path: str, expected: bool, pieces: int
) -> None:
    counted = CountingPath(path)
    CountingPath.calls = 0
    assert matches({"path": pattern}, Facts(path=counted)) is expected
    # at most one startswith, one endswith, and one find per literal piece between stars
    assert CountingPath.calls <= 2 + pieces


def test_many_pieces_still_match_correctly_on_a_long_path() -> None:
    pattern = "/" + "*x" * 400 + "*"
    assert matches({"path": pattern}, Facts(path="/" + "yx" * 5000))
    assert not matches({"path": pattern}, Facts(path="/" + "yx" * 399))


# -- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "status", "field", "message"),
    [
        ([1, 2], 400, "rule", "invalid 'rule' [1, 2]: expected a JSON object"),
        ("release", 400, "rule", "expected a JSON object"),
        ({}, 422, "action", "missing 'action': required, one of 'detail', 'release', 'drop'"),
        ({"action": 1}, 400, "action", "invalid 'action' 1: expected one of"),
        ({"action": "keep"}, 422, "action", "invalid 'action' \"keep\": expected one of"),
        ({"action": "drop", "id": 5}, 400, "id", "invalid 'id' 5: expected 1 to 128 characters"),
        ({"action": "drop", "id": "a b"}, 422, "id", "invalid 'id' \"a b\""),
        ({"action": "drop", "id": ""}, 422, "id", "invalid 'id'"),
        ({"action": "drop", "id": "x" * 129}, 422, "id", "invalid 'id'"),
        ({"action": "drop", "match": []}, 400, "match", "expected an object of match keys"),
        ({"action": "drop", "level": "LOUD"}, 422, "level", "expected a level name (NOTSET, DEB"),
        ({"action": "drop", "level": -1}, 422, "level", "or a number from 0 to 1000"),
        ({"action": "drop", "level": 1.5}, 400, "level", "invalid 'level' 1.5"),
        ({"action": "drop", "level": True}, 400, "level", "invalid 'level' true"),
        ({"action": "drop", "ttl_s": 0}, 422, "ttl_s", "expected a number of seconds from 1 to"),
        ({"action": "drop", "ttl_s": 1e-6}, 422, "ttl_s", "could never act"),
        (
            {"action": "drop", "ttl_s": 0.999},
            422,
            "ttl_s",
            "expected a number of seconds from 1 to",
        ),
        ({"action": "drop", "ttl_s": -5}, 422, "ttl_s", "invalid 'ttl_s' -5"),
        (
            {"action": "drop", "ttl_s": "1h"},
            400,
            "ttl_s",
            "invalid 'ttl_s' \"1h\": expected a number",
        ),
        (
            {"action": "drop", "ttl_s": True},
            400,
            "ttl_s",
            "invalid 'ttl_s' true: expected a number",
        ),
        ({"action": "drop", "ttl_s": float("nan")}, 422, "ttl_s", "expected a finite number"),
        ({"action": "drop", "ttl_s": 10**400}, 422, "ttl_s", "expected a finite number"),
        ({"action": "drop", "ttl_s": 1e12}, 422, "ttl_s", "to 315360000"),
        (
            {"action": "drop", "ttl_s": 60, "expires_at": "2026-11-24T00:00:00Z"},
            422,
            "ttl_s",
            "give either 'ttl_s' or 'expires_at', not both",
        ),
        ({"action": "drop", "expires_at": "tomorrow"}, 422, "expires_at", "expected an ISO 8601"),
        ({"action": "drop", "expires_at": "2026-13-01"}, 422, "expires_at", "ISO 8601"),
        ({"action": "drop", "expires_at": 1795442400}, 400, "expires_at", "ISO 8601"),
        ({"action": "drop", "expires_at": "x" * 100}, 422, "expires_at", "ISO 8601"),
        (
            {"action": "drop", "expires_at": "2026-11-23T13:59:59Z"},
            422,
            "expires_at",
            "expected a time at least 1 s after now (2026-11-23T14:00:00Z)",
        ),
        (
            {"action": "drop", "expires_at": "2026-11-23T14:00:00Z"},
            422,
            "expires_at",
            "expected a time at least 1 s after now",
        ),
        (
            {"action": "drop", "expires_at": "2026-11-23T14:00:00.5Z"},
            422,
            "expires_at",
            "expected a time at least 1 s after now",
        ),
        (
            {
                "action": "drop",
                "starts_at": "2026-11-25T00:00:00Z",
                "expires_at": "2026-11-24T00:00:00Z",
            },
            422,
            "expires_at",
            "expected a time at least 1 s after 'starts_at'",
        ),
        ({"action": "drop", "starts_at": "soon"}, 422, "starts_at", "ISO 8601"),
        ({"action": "drop", "starts_at": []}, 400, "starts_at", "ISO 8601"),
        ({"action": "drop", "starts_at": "9999-12-31T23:59:59"}, 422, "starts_at", "1970 to 9000"),
        ({"action": "drop", "expires_at": "1969-12-31"}, 422, "expires_at", "1970 to 9000"),
        ({"action": "drop", "priority": 1.5}, 400, "priority", "expected an integer"),
        ({"action": "drop", "priority": "1"}, 400, "priority", "expected an integer"),
        ({"action": "drop", "priority": False}, 400, "priority", "expected an integer"),
        ({"action": "drop", "priority": 10**10}, 422, "priority", "from -1000000000 to"),
        ({"action": "drop", "sample_rate": 0}, 422, "sample_rate", "expected a number > 0"),
        ({"action": "drop", "sample_rate": 1.5}, 422, "sample_rate", "and <= 1"),
        ({"action": "drop", "sample_rate": -0.1}, 422, "sample_rate", "and <= 1"),
        ({"action": "drop", "sample_rate": "all"}, 400, "sample_rate", "expected a number"),
        ({"action": "drop", "sample_rate": True}, 400, "sample_rate", "expected a number"),
        ({"action": "drop", "dry_run": "yes"}, 400, "dry_run", "expected true or false"),
        ({"action": "drop", "dry_run": 1}, 400, "dry_run", "expected true or false"),
        ({"action": "drop", "note": 7}, 400, "note", "invalid 'note' 7: expected a string"),
        ({"action": "drop", "note": "n" * 1001}, 422, "note", "at most 1000 characters"),
        ({"action": "drop", "name": "x"}, 422, "name", "unknown key 'name': unknown key; allowed"),
        ({"action": "drop", "user_id": "u"}, 422, "user_id", "did you mean 'match.user_id'?"),
        ({"action": "drop", "ttl": 5}, 422, "ttl", "did you mean 'ttl_s'?"),
        ({"action": "drop", "match": {"usr_id": "u"}}, 422, "match.usr_id", "'user_id'?"),
        ({"action": "drop", "match": {"x": 1}}, 422, "match.x", "allowed keys: client_ip, dura"),
        ({"action": "drop", "match": {"method": 1}}, 400, "match.method", "an HTTP method"),
        ({"action": "drop", "match": {"method": "GE T"}}, 422, "match.method", "HTTP method"),
        ({"action": "drop", "match": {"method": []}}, 422, "match.method", "a non-empty list"),
        ({"action": "drop", "match": {"method": ["GET", 2]}}, 400, "match.method[1]", "method"),
        ({"action": "drop", "match": {"path": ""}}, 422, "match.path", "1 to 1000 characters"),
        ({"action": "drop", "match": {"path": "/" * 1001}}, 422, "match.path", "1 to 1000"),
        ({"action": "drop", "match": {"path": {"a": 1}}}, 400, "match.path", "a path or a glob"),
        (
            {"action": "drop", "match": {"path": ["/a"] * 1001}},
            422,
            "match.path",
            "expected at most 1000 items, got 1001",
        ),
        ({"action": "drop", "match": {"route": 3}}, 400, "match.route", "a route template"),
        ({"action": "drop", "match": {"user_id": True}}, 400, "match.user_id", "string or an int"),
        ({"action": "drop", "match": {"user_id": 1.5}}, 400, "match.user_id", "string or an int"),
        ({"action": "drop", "match": {"user_id": ""}}, 422, "match.user_id", "1 to 256"),
        ({"action": "drop", "match": {"session_id": "s" * 257}}, 422, "match.session_id", "256"),
        ({"action": "drop", "match": {"client_ip": "10.0.0.300"}}, 422, "match.client_ip", "CIDR"),
        ({"action": "drop", "match": {"client_ip": "10.0.0.0/33"}}, 422, "match.client_ip", "IP"),
        ({"action": "drop", "match": {"client_ip": 10}}, 400, "match.client_ip", "IP address"),
        ({"action": "drop", "match": {"header": "x"}}, 400, "match.header", "header names"),
        ({"action": "drop", "match": {"header": {}}}, 422, "match.header", "1 to 20 header"),
        (
            {"action": "drop", "match": {"header": {f"h{i}": "v" for i in range(21)}}},
            422,
            "match.header",
            "1 to 20 header names",
        ),
        ({"action": "drop", "match": {"header": {"a b": "v"}}}, 422, "match.header.a b", "name"),
        ({"action": "drop", "match": {"header": {"X": 1}}}, 400, "match.header.X", "header value"),
        (
            {"action": "drop", "match": {"header": {"X-A": "1", "x-a": "2"}}},
            422,
            "match.header.x-a",
            "given twice: header names are case-insensitive",
        ),
        ({"action": "drop", "match": {"status": "500"}}, 400, "match.status", "HTTP status"),
        ({"action": "drop", "match": {"status": 42}}, 422, "match.status", "from 100 to 999"),
        ({"action": "drop", "match": {"status": True}}, 400, "match.status", "HTTP status"),
        ({"action": "drop", "match": {"status": [500, 1000]}}, 422, "match.status[1]", "999"),
        ({"action": "drop", "match": {"status": {}}}, 422, "match.status", "a range object"),
        ({"action": "drop", "match": {"status": {"ge": 5}}}, 422, "match.status.ge", "'gte'?"),
        (
            {"action": "drop", "match": {"duration_ms": {"gt": "fast"}}},
            400,
            "match.duration_ms.gt",
            "invalid 'match.duration_ms.gt' \"fast\": expected a number",
        ),
        (
            {"action": "drop", "match": {"duration_ms": {"lt": True}}},
            400,
            "match.duration_ms.lt",
            "",
        ),
        ({"action": "drop", "match": {"duration_ms": "slow"}}, 400, "match.duration_ms", "range"),
        ({"action": "drop", "match": {"duration_ms": True}}, 400, "match.duration_ms", "number"),
        ({"action": "drop", "match": {"duration_ms": -1}}, 422, "match.duration_ms", ">= 0"),
        (
            {"action": "drop", "match": {"duration_ms": {"gt": 500, "lt": 100}}},
            422,
            "match.duration_ms",
            "the range matches no number",
        ),
        ({"action": "drop", "match": {"message": ""}}, 422, "match.message", "1 to 1000"),
        ({"action": "drop", "match": {"message": [None]}}, 400, "match.message[0]", "substring"),
        (
            {"action": "detail", "match": {"status": 500}},
            422,
            "match.status",
            "not allowed in a 'detail' rule, which is looked up when the request starts; "
            "allowed: client_ip, header, method, path, session_id, user_id",
        ),
        ({"action": "detail", "match": {"duration_ms": 5}}, 422, "match.duration_ms", "detail"),
        ({"action": "detail", "match": {"message": "x"}}, 422, "match.message", "'detail' rule"),
        (
            {"action": "detail", "match": {"route": "/items/{id}"}},
            422,
            "match.route",
            "the route is known only once the framework has routed the request",
        ),
        (
            {"action": "detail", "ttl_s": 86401},
            422,
            "ttl_s",
            "expected a number of seconds > 0 and <= 86400 for a 'detail' rule",
        ),
        (
            {"action": "detail", "expires_at": "2026-11-25T14:00:00Z"},
            422,
            "expires_at",
            "a 'detail' rule may last at most 86400 seconds: expected a time up to "
            "2026-11-24T14:00:00Z",
        ),
    ],
)
def test_validation_errors_name_the_field(
    obj: object, status: int, field: str, message: str
) -> None:
    err = refusal(obj)
    assert isinstance(err, ValueError)
    assert err.status == status
    assert err.details[0]["field"] == field
    assert err.details[0]["error"]
    assert message in str(err)
    assert str(err).startswith(("invalid ", "missing ", "unknown key "))


def test_every_problem_is_collected_and_400_wins_over_422() -> None:
    err = refusal(
        {
            "action": "detail",
            "nme": 1,
            "level": "LOUD",
            "sample_rate": 2,
            "match": {"status": 500, "user_id": [], "duration_ms": {"gt": "x"}},
        }
    )
    assert err.status == 400  # one field had a wrong JSON type
    assert [d["field"] for d in err.details] == [
        "nme",
        "match.status",
        "match.user_id",
        "match.duration_ms",
        "match.duration_ms.gt",
        "level",
        "sample_rate",
    ]
    assert str(err).startswith("unknown key 'nme'")
    assert str(err).endswith("(and 6 more problems, see details)")


def test_only_422_problems_give_422() -> None:
    err = refusal({"action": "drop", "sample_rate": 2, "level": "LOUD"})
    assert err.status == 422
    assert {d["field"] for d in err.details} == {"sample_rate", "level"}


def test_error_details_name_only_field_and_error() -> None:
    err = refusal({"action": "drop", "match": {"duration_ms": {"gt": "fast"}}})
    assert err.details == [{"field": "match.duration_ms.gt", "error": "expected a number"}]
    assert str(err) == "invalid 'match.duration_ms.gt' \"fast\": expected a number"


def test_a_flood_of_bad_items_is_capped() -> None:
    err = refusal({"action": "drop", "match": {"status": ["x"] * 500}})
    assert len(err.details) == 100
    assert "(and 499 more problems, see details)" in str(err)


def test_a_refused_rule_changes_nothing() -> None:
    rs = ruleset(make(id="a"))
    with pytest.raises(RuleError):
        parse_rule({"action": "drop", "id": "a", "priority": "high"}, now=NOW)
    assert [r.id for r in rs.rules()] == ["a"]


def test_parse_rule_options_are_checked() -> None:
    with pytest.raises(ValueError, match=r"invalid 'default_detail_ttl_s' 100\.0"):
        parse_rule({"action": "detail"}, now=NOW, max_detail_ttl_s=50, default_detail_ttl_s=100.0)


# -- times -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-23T15:00:00Z", NOW + 3600),
        ("2026-11-23T15:00:00z", NOW + 3600),
        ("2026-11-23T15:00:00+00:00", NOW + 3600),
        ("2026-11-23T16:00:00+01:00", NOW + 3600),
        ("2026-11-23T15:00:00", NOW + 3600),  # naive means UTC
        ("2026-11-23 15:00", NOW + 3600),
        ("2026-11-23T15:00:00.250000Z", NOW + 3600.25),
        ("2026-11-24", NOW + 10 * 3600),
    ],
)
def test_iso_8601_expiry(text: str, expected: float) -> None:
    rule = make(expires_at=text)
    assert rule.expires_at == expected
    assert rule.to_json(NOW)["ttl_s"] == expected - NOW


def test_times_are_shown_in_utc() -> None:
    rule = make(starts_at="2026-11-23T16:00:00+02:00", expires_at="2026-11-23T15:30:00.500Z")
    body = rule.to_json(NOW)
    assert body["starts_at"] == "2026-11-23T14:00:00Z"
    assert body["expires_at"] == "2026-11-23T15:30:00.500000Z"


def test_ttl_counts_from_a_later_start() -> None:
    rule = make(starts_at="2026-11-24T00:00:00Z", ttl_s=60)
    assert rule.expires_at == NOW + 10 * 3600 + 60
    rule = make(starts_at="2026-11-01T00:00:00Z", ttl_s=60)  # a start in the past: from now
    assert rule.expires_at == NOW + 60


def test_detail_rules_get_the_default_ttl() -> None:
    assert make("detail").expires_at == NOW + 1800
    rule = parse_rule({"action": "detail"}, now=NOW, default_detail_ttl_s=60)
    assert rule.expires_at == NOW + 60
    later = make("detail", starts_at="2026-11-24T00:00:00Z")
    assert later.expires_at == NOW + 10 * 3600 + 1800


def test_detail_ttl_limit_is_the_option() -> None:
    assert make("detail", ttl_s=86400).expires_at == NOW + 86400
    err = refusal({"action": "detail", "ttl_s": 120}, max_detail_ttl_s=60, default_detail_ttl_s=30)
    assert err.details == [
        {
            "field": "ttl_s",
            "error": "expected a number of seconds > 0 and <= 60 for a 'detail' rule",
        }
    ]
    # the limit is on how long the rule is in force, however far its start is
    assert make("detail", starts_at="2026-12-01T00:00:00Z", ttl_s=3600).expires_at is not None
    # other actions have no limit
    assert make("release", ttl_s=30 * 86400).expires_at == NOW + 30 * 86400


# -- winners -----------------------------------------------------------------------------


def test_higher_priority_wins_then_release_beats_drop_then_newest() -> None:
    drop = make("drop", id="drop", priority=5)
    release = make("release", id="release", priority=1)
    rs = ruleset(drop, release)
    assert rs.decide(Facts(), 0) is drop
    tie_drop = make("drop", id="tie-drop", priority=9)
    tie_release = make("release", id="tie-release", priority=9, now=NOW - 100)
    rs.add(tie_drop)
    rs.add(tie_release)
    assert rs.decide(Facts(), 0) is tie_release  # release wins a tie even when older
    newer = make("release", id="newer", priority=9, now=NOW + 1)
    rs.add(newer)
    assert rs.decide(Facts(), 0) is newer


def test_newest_wins_a_full_tie_even_in_the_same_instant() -> None:
    first, second = make(id="first"), make(id="second")
    assert ruleset(second, first).decide(Facts(), 0) is second


def test_detail_ties_go_to_more_detail_then_newest() -> None:
    info = make("detail", id="info", level="INFO", now=NOW + 5)
    debug = make("detail", id="debug", level="DEBUG")
    high = make("detail", id="high", level="ERROR", priority=1)
    rs = ruleset(info, debug)
    assert rs.detail_for(Facts()) is debug
    rs.add(high)
    assert rs.detail_for(Facts()) is high
    rs.discard("high")
    newer_debug = make("detail", id="debug2", level="DEBUG", now=NOW + 1)
    rs.add(newer_debug)
    assert rs.detail_for(Facts()) is newer_debug


def test_detail_and_end_rules_are_separate() -> None:
    rs = ruleset(make("detail", id="d"), make("drop", id="x"))
    detail, drop = rs.get("d"), rs.get("x")
    assert rs.detail_for(Facts()) is detail
    assert rs.decide(Facts(), 0) is drop
    assert ruleset(make("release")).detail_for(Facts()) is None
    assert ruleset(make("detail")).decide(Facts(), 0) is None


# -- sampling, dry runs, hits ----------------------------------------------------------------


def test_sample_rate_uses_the_rng_and_counts_hits_of_sampled_requests() -> None:
    rng = Draws(0.1, 0.3, 0.29, 0.9)
    rule = make(sample_rate=0.3)
    rs = ruleset(rule, rng=rng)
    results = [rs.decide(Facts(), 0) is rule for _ in range(8)]
    assert results == [True, False, True, False] * 2
    assert rng.count == 8
    assert rule.hits == 4


def test_full_sample_rate_draws_nothing() -> None:
    rng = Draws(0.99)
    rule = make("detail")
    rs = ruleset(rule, rng=rng)
    for _ in range(5):
        assert rs.detail_for(Facts()) is rule
    assert rng.count == 0
    assert rule.hits == 5


def test_a_rule_that_does_not_match_draws_nothing_and_counts_nothing() -> None:
    rng = Draws(0.0)
    rule = make(match={"path": "/x"}, sample_rate=0.5)
    rs = ruleset(rule, rng=rng)
    assert rs.decide(Facts(path="/y"), 0) is None
    assert (rng.count, rule.hits) == (0, 0)


def test_dry_run_rules_count_and_never_win() -> None:
    dry = make("drop", id="dry", dry_run=True, priority=100)
    real = make("release", id="real", match={"status": 500})
    rs = ruleset(dry, real)
    assert rs.decide(Facts(status=200), 0) is None
    assert rs.decide(Facts(status=500), 0) is real
    assert (dry.hits, real.hits) == (2, 1)
    detail_dry = make("detail", dry_run=True, match={"user_id": "u"})
    rs.add(detail_dry)
    assert rs.detail_for(Facts(user_id="u")) is None
    assert rs.detail_for(Facts(user_id="v")) is None
    assert detail_dry.hits == 1
    assert detail_dry.to_json(NOW)["hits"] == 1


def test_every_matching_rule_counts_a_hit_not_only_the_winner() -> None:
    a, b = make(id="a", priority=1), make(id="b", match={"method": "GET"})
    rs = ruleset(a, b)
    assert rs.decide(Facts(method="GET"), 0) is a
    assert rs.decide(Facts(method="PUT"), 0) is a
    assert (a.hits, b.hits) == (2, 1)


# -- time: start, expiry -------------------------------------------------------------------


def test_rules_start_and_expire_with_the_clock() -> None:
    clock = Clock()
    later = make(id="later", starts_at="2026-11-23T15:00:00Z", ttl_s=60)
    short = make("detail", id="short", ttl_s=10)
    rs = ruleset(later, short, clock=clock)
    assert rs.decide(Facts(), 0) is None  # not started yet
    assert [r.id for r in rs.rules()] == ["later", "short"]  # listed all the same
    assert rs.get("later") is later
    assert rs.detail_for(Facts()) is short
    assert rs.due() == []

    clock.now = NOW + 10
    assert rs.detail_for(Facts()) is None  # expired: skipped before it is removed
    assert rs.get("short") is None
    assert [r.id for r in rs.rules()] == ["later"]
    assert len(rs) == 1
    assert rs.due() == [short]  # still held until its owner removes it
    assert rs.discard("short") is short
    assert rs.due() == []

    clock.now = NOW + 3600
    assert rs.decide(Facts(), 0) is later
    clock.now = NOW + 3660
    assert rs.decide(Facts(), 0) is None
    assert rs.due() == [later]
    rs.discard("later")
    assert rs.empty
    assert len(rs) == 0


def test_due_follows_removals_and_forgets_their_expiry() -> None:
    clock = Clock()
    soon, later = make(id="soon", ttl_s=10), make(id="later", ttl_s=20)
    rs = ruleset(soon, later, make(id="forever"), clock=clock)
    assert rs.discard("soon") is soon
    clock.now = NOW + 15
    assert rs.due() == []
    assert len(rs._expiry) == 1  # the removed rule's entry went when it came up
    assert len(rs) == 2
    clock.now = NOW + 20
    assert rs.due() == [later]


def test_a_rule_in_the_place_of_an_expired_one_is_not_due() -> None:
    clock = Clock()
    old = make(id="x", ttl_s=5)
    rs = ruleset(old, clock=clock)
    with pytest.raises(KeyError, match="'x'"):
        rs.add(make(id="x"))
    clock.now = NOW + 5
    new = make(id="x", now=clock.now, ttl_s=60)
    rs.add(new)
    assert rs.get("x") is new
    assert rs.due() == []


def test_restored_rules_keep_their_history() -> None:
    rule = make("detail", id="d", note="n", match={"user_id": "u"}, ttl_s=600)
    rs = ruleset(rule)
    rs.detail_for(Facts(user_id="u"))
    back = restore_rule(rule.to_json(NOW + 60), now=NOW + 60)
    assert back == rule
    assert back.hits == 1
    assert back.created_at == NOW
    # an expired stored rule loads, and the set expires it
    gone = restore_rule(rule.to_json(NOW + 900), now=NOW + 900)
    rs2 = ruleset(gone, clock=Clock(NOW + 900))
    assert rs2.get("d") is None
    assert rs2.due() == [gone]


def test_restore_rule_uses_ttl_only_without_expires_at() -> None:
    rule = restore_rule(
        {"action": "drop", "ttl_s": 60, "created_at": "2026-11-23T13:00:00Z"}, now=NOW
    )
    assert (rule.created_at, rule.expires_at) == (NOW - 3600, NOW + 60)
    rule = restore_rule(
        {"action": "drop", "ttl_s": 60, "expires_at": "2026-11-23T14:00:30Z"}, now=NOW
    )
    assert rule.expires_at == NOW + 30


def test_restore_rule_still_validates() -> None:
    with pytest.raises(RuleError) as info:
        restore_rule({"action": "drop", "created_at": "yesterday", "hits": -1}, now=NOW)
    err = info.value
    assert {d["field"] for d in err.details} == {"created_at", "hits"}


# -- the set ------------------------------------------------------------------------------


def test_add_get_discard_replace() -> None:
    rs = RuleSet(clock=Clock())
    assert rs.empty
    assert len(rs) == 0
    assert rs.detail_for(Facts()) is None
    assert rs.decide(Facts(), 0) is None
    a, b = make(id="a"), make("detail", id="b", now=NOW + 1)
    rs.add(a)
    rs.add(b)
    assert not rs.empty
    assert len(rs) == 2
    with pytest.raises(KeyError) as info:
        rs.add(make(id="a"))
    assert info.value.args == ("a",)
    assert rs.get("a") is a
    assert rs.get("nope") is None
    assert rs.rules() == [a, b]
    assert rs.discard("a") is a
    assert rs.discard("a") is None
    assert rs.decide(Facts(), 0) is None
    assert rs.rules() == [b]

    c, d = make(id="c", match={"path": "/c"}), make("drop", id="d", match={"user_id": "u"})
    rs.replace([d, c])
    assert [r.id for r in rs.rules()] == ["c", "d"]  # by created_at, then creation order
    assert rs.detail_for(Facts()) is None
    assert rs.decide(Facts(user_id="u"), 0) is d
    with pytest.raises(ValueError, match="id 'c' is given twice"):
        rs.replace([make(id="c"), make(id="c")])
    assert [r.id for r in rs.rules()] == ["c", "d"]
    rs.replace([])
    assert rs.empty


def test_rules_are_listed_by_creation_time() -> None:
    rules = [make(id=f"r{i}", now=NOW + t) for i, t in enumerate([5, 1, 3])]
    assert [r.id for r in ruleset(*rules).rules()] == ["r1", "r2", "r0"]


def test_to_json_round_trips() -> None:
    rules = [
        make("detail", id="d", match={"user_id": 7, "header": {"X-Debug": ["1", "yes"]}}),
        make(
            "release",
            id="r",
            match={
                "method": ["post"],
                "path": ["/checkout/*", "/pay"],
                "route": "/checkout/{step}",
                "session_id": "s",
                "client_ip": ["10.1.2.3/8", "::ffff:192.0.2.1", "2001:db8::/48"],
                "status": {"gte": 500, "lt": 600},
                "duration_ms": 250.5,
                "message": ["timeout", "retry"],
            },
            level=15,
            priority=-3,
            sample_rate=0.25,
            dry_run=True,
            note="why",
            starts_at="2026-11-23T18:00:00+02:00",
            ttl_s=12.345678,
        ),
        make("drop", id="x", match={"status": [200, 204]}, now=NOW + 0.123456789),
        make("detail", id="long", ttl_s=86400, now=NOW + 0.7),
    ]
    for rule in rules:
        body = stored(rule, rule.created_at)
        again = parse_rule(body, now=rule.created_at)
        assert again == rule
        assert again.to_json(NOW) == rule.to_json(NOW)
    assert rules[0] != rules[1]
    assert rules[0] != "d"


def test_the_index_finds_user_rules_among_many() -> None:
    users = [
        make("detail", id=f"user-{i}", match={"user_id": f"u{i}"}, ttl_s=60) for i in range(10_000)
    ]
    general = make("detail", id="admins", match={"path": "/admin/*"}, priority=-1)
    rs = RuleSet(clock=Clock())
    rs.replace(users)
    rs.add(general)
    assert rs.detail_for(Facts(user_id="u5000")) is users[5000]
    assert rs.detail_for(Facts(user_id="nobody")) is None
    assert rs.detail_for(Facts(user_id="nobody", path="/admin/x")) is general
    assert rs.detail_for(Facts(user_id="u1", path="/admin/x")) is users[1]  # priority 0 > -1
    assert sum(r.hits for r in users) == 2  # only the request's own user rule was looked at
    rs.discard("user-5000")
    assert rs.detail_for(Facts(user_id="u5000")) is None
    assert rs.detail_for(Facts(user_id="u4999")) is users[4999]


@pytest.mark.parametrize(
    ("match", "hit", "miss"),
    [
        (
            {"user_id": ["a", "b"], "method": "POST"},
            Facts(user_id="b", method="POST"),
            Facts(user_id="b"),
        ),
        (
            {"session_id": "s", "path": "/x"},
            Facts(session_id=hash_session("s"), path="/x"),
            Facts(session_id=hash_session("s")),
        ),
        (
            {"client_ip": ["10.0.0.1", "::ffff:10.0.0.2"], "path": "/x"},
            Facts(client="::ffff:10.0.0.2", path="/x"),
            Facts(client="10.0.0.2"),
        ),
        (
            {"client_ip": ["10.0.0.1", "10.9.0.0/16"]},
            Facts(client="10.9.8.7"),
            Facts(client="10.8.0.1"),
        ),
        ({"route": "/r", "method": "GET"}, Facts(route="/r"), Facts(route="/r", method="PUT")),
        (
            {"method": ["get", "HEAD"], "status": 404},
            Facts(method="HEAD", status=404),
            Facts(status=404, method="PUT"),
        ),
    ],
)
def test_indexed_rules_still_check_every_key(
    match: dict[str, Any], hit: Facts, miss: Facts
) -> None:
    noise = [make(id=f"n{i}", match={"user_id": f"other{i}"}) for i in range(3)]
    rule = make(match=match)
    rs = ruleset(*noise, rule)
    assert rs.decide(hit, 0) is rule
    assert rs.decide(miss, 0) is None
    rs.discard(rule.id)
    assert rs.decide(hit, 0) is None


def test_lookups_run_while_other_threads_add_and_remove() -> None:
    rs = RuleSet(clock=Clock())
    stop = threading.Event()
    failures: list[BaseException] = []
    seen = 0

    def look() -> None:
        nonlocal seen
        try:
            while not stop.is_set():
                for i in range(0, 800, 37):
                    rule = rs.decide(Facts(user_id=f"t{i % 4}-{i}"), 0)
                    seen += rule is not None
                rs.detail_for(Facts(path="/p"))
                rs.rules()
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    def add(thread: int) -> None:
        try:
            for i in range(200):
                n = thread * 200 + i
                rs.add(make(id=f"t{thread}-{n}", match={"user_id": f"t{thread}-{n}"}))
                rs.add(make("detail", id=f"d{thread}-{n}", match={"path": "/p"}))
                if i % 2:
                    assert rs.discard(f"d{thread}-{n}") is not None
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    readers = [threading.Thread(target=look) for _ in range(2)]
    writers = [threading.Thread(target=add, args=(t,)) for t in range(4)]
    for thread in readers + writers:
        thread.start()
    for thread in writers:
        thread.join()
    stop.set()
    for thread in readers:
        thread.join()
    assert failures == []
    assert len(rs) == 800 + 400
    for n in range(800):
        user = f"t{n // 200}-{n}"
        found = rs.decide(Facts(user_id=user), 0)
        assert found is not None
        assert found.id == user
    assert rs.detail_for(Facts(path="/p")) is not None
