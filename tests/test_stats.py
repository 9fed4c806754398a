"""Request statistics: exact counts, percentiles, bounded routes and sessions, the window."""

from __future__ import annotations

import gc
import hashlib
import json
import math
import random
import threading
import tracemalloc
from collections import defaultdict
from collections.abc import Callable
from itertools import pairwise
from typing import Any

import pytest

from hindsight_web.histogram import BOUNDS_MS, RELATIVE_ERROR
from hindsight_web.stats import (
    OTHER,
    SESSION_RELATIVE_ERROR,
    UNMATCHED,
    RequestRecord,
    Stats,
    hash_session,
    route_of,
)

T0 = 1_700_000_030.0  # not on a slot edge


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def req(duration_ms: float, **fields: Any) -> RequestRecord:
    values: dict[str, Any] = {
        "request_id": fields.pop("request_id", f"r{random.getrandbits(64):016x}"),
        "method": "GET",
        "path": "/items/1",
        "route": "/items/{item_id}",
        "status": 200,
        "duration_ms": duration_ms,
        "at": T0,
    }
    values.update(fields)
    return RequestRecord(**values)


def true_quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def close(estimate: float, true: float, bound: float = RELATIVE_ERROR) -> bool:
    """Within the relative bound, plus the rounding of the JSON answer to 0.001 ms."""
    return abs(estimate - true) <= bound * true + 0.0005


def route_row(overview: dict[str, Any], method: str, route: str) -> dict[str, Any]:
    rows: list[dict[str, Any]] = overview["routes"]
    (row,) = [r for r in rows if (r["method"], r["route"]) == (method, route)]
    return row


# -- known traffic, exact counts --------------------------------------------------------


def known_traffic() -> tuple[Stats, list[RequestRecord]]:
    rng = random.Random(42)
    stats = Stats(clock=Clock())
    records = []
    routes = [("GET", "/items/{item_id}"), ("POST", "/checkout"), ("GET", "/health")]
    for i in range(3000):
        method, route = routes[i % 3]
        ms = rng.lognormvariate({"/checkout": 5, "/health": 0}.get(route, 3), 1)
        status = 500 if i % 97 == 0 else 200
        raised = "KeyError" if i % 101 == 0 else None
        errored = status >= 500 or raised is not None
        slow = ms >= 1000
        reason = "exception" if raised else "status" if status >= 500 else "slow" if slow else None
        if reason is None and route == "/checkout" and ms > 300:
            reason = "rule:checkout-slow"
        records.append(
            req(
                ms,
                method=method,
                route=route,
                path=route.replace("{item_id}", str(i)),
                status=status,
                raised=raised,
                errored=errored,
                slow=slow,
                released=reason is not None,
                reason=reason,
            )
        )
    for r in records:
        stats.record(r)
    return stats, records


def test_counts_are_exact() -> None:
    stats, records = known_traffic()
    o = stats.overview()
    assert o["window"] == "all"
    assert o["requests"] == len(records)
    assert o["errors"] == sum(r.errored for r in records)
    assert o["slow"] == sum(r.slow for r in records)
    assert o["releases"] == sum(r.released for r in records)
    reasons: dict[str, int] = defaultdict(int)
    for r in records:
        if r.released:
            reasons[r.reason or ""] += 1
    assert o["releases_by_reason"] == dict(sorted(reasons.items()))
    assert set(reasons) == {"exception", "status", "slow", "rule:checkout-slow"}
    assert o["routes_overflow"] == 0
    for method, route in {(r.method, r.route) for r in records}:
        mine = [r for r in records if (r.method, r.route) == (method, route)]
        row = route_row(o, method, route or "")
        assert row["count"] == len(mine)
        assert row["errors"] == sum(r.errored for r in mine)
        assert row["slow"] == sum(r.slow for r in mine)
        assert row["releases"] == sum(r.released for r in mine)
    assert o == stats.overview("all")
    assert stats.overview("recent")["requests"] == len(records)


def test_route_percentiles_are_within_the_histogram_error() -> None:
    stats, records = known_traffic()
    o = stats.overview()
    for row in o["routes"]:
        values = [
            r.duration_ms for r in records if (r.method, r.route) == (row["method"], row["route"])
        ]
        for name, q in (("p50_ms", 0.5), ("p95_ms", 0.95), ("p99_ms", 0.99)):
            assert close(row[name], true_quantile(values, q)), (row, name)
        assert row["max_ms"] == round(max(values), 3)
        assert row["mean_ms"] == pytest.approx(sum(values) / len(values), abs=0.001)


def test_routes_come_slowest_first_by_p95() -> None:
    stats, _ = known_traffic()
    rows = stats.overview()["routes"]
    assert [r["route"] for r in rows] == ["/checkout", "/items/{item_id}", "/health"]
    p95 = [r["p95_ms"] for r in rows]
    assert p95 == sorted(p95, reverse=True)


def test_overview_histogram_counts_every_request_exactly() -> None:
    stats, records = known_traffic()
    for extra in BOUNDS_MS:  # values right on the bounds count under them
        stats.record(req(float(extra)))
        records.append(req(float(extra)))
    h = stats.overview()["histogram"]
    assert h["bounds_ms"] == [float(b) for b in BOUNDS_MS]
    edges = [-math.inf, *BOUNDS_MS, math.inf]
    expected = [
        sum(1 for r in records if low < r.duration_ms <= high) for low, high in pairwise(edges)
    ]
    assert h["counts"] == expected
    assert sum(h["counts"]) == len(records)


def test_answers_are_json_ready() -> None:
    stats, _ = known_traffic()
    stats.record(req(5.0, session_id="s1", user_id="u1"))
    for answer in (stats.overview(), stats.slowest(), stats.sessions(), stats.overview("recent")):
        json.dumps(answer, allow_nan=False)


# -- route grouping -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/", "/"),
        ("", "/"),
        ("/items", "/items"),
        ("/items/42", "/items/{id}"),
        ("/items/42/", "/items/{id}/"),
        ("/users/42/orders/7", "/users/{id}/orders/{id}"),
        ("/o/0f8fad5b-d9cb-469f-a165-70867728950e", "/o/{id}"),
        ("/o/0F8FAD5BD9CB469FA16570867728950E", "/o/{id}"),
        ("/commits/4b825dc642cb6eb9a060e54bf8d69288fbee4904", "/commits/{id}"),
        ("/objects/507f1f77bcf86cd799439011", "/objects/{id}"),
        ("/c/a1b2c3d4", "/c/{id}"),
        ("/t/eyJhbGciOiJIUzI1NiJ9abc123", "/t/{id}"),
        ("/u/bob@example.com/profile", "/u/{id}/profile"),
        ("/items/42?page=2", "/items/{id}"),
        ("/api/v1/items", "/api/v1/items"),
        ("/static/app.js", "/static/app.js"),
        ("/blog/deadbeef", "/blog/deadbeef"),  # hex letters only, short: a word
        ("/blog/my-first-post", "/blog/my-first-post"),
        ("/a42/b", "/a42/b"),
    ],
)
def test_route_of_folds_id_like_segments(path: str, route: str) -> None:
    assert route_of(path) == route


def test_route_of_caps_the_length() -> None:
    folded = route_of("/x" + "/segment" * 200)
    assert len(folded) <= 203
    assert folded.endswith("...")


def test_the_framework_template_is_used_when_given_else_the_folded_path() -> None:
    stats = Stats()
    stats.record(req(10.0, path="/items/5", route="/items/<int:item_id>"))
    stats.record(req(20.0, path="/orders/17", route=None))
    routes = {r["route"] for r in stats.overview()["routes"]}
    assert routes == {"/items/<int:item_id>", "/orders/{id}"}
    slow = {r["path"]: r["route"] for r in stats.slowest()["requests"]}
    assert slow == {"/items/5": "/items/<int:item_id>", "/orders/17": "/orders/{id}"}


def test_routes_beyond_max_routes_go_to_one_overflow_route_per_method() -> None:
    rng = random.Random(3)
    stats = Stats(max_routes=50)
    words = ["alpha", "beta", "gamma", "delta", "omega", "kappa", "sigma"]
    paths = [f"/{rng.choice(words)}/{rng.choice(words)}{rng.choice(words)}" for _ in range(5000)]
    for i, path in enumerate(paths):
        stats.record(
            req(1.0 + i % 50, method="POST" if i % 10 == 0 else "GET", path=path, route=None)
        )
    o = stats.overview()
    keys = {(r["method"], r["route"]) for r in o["routes"]}
    overflow = {k for k in keys if k[1] == "(other)"}
    assert overflow == {("GET", "(other)"), ("POST", "(other)")}
    assert len(keys) <= 50 + len(overflow)
    assert o["routes_tracked"] == 50
    assert o["requests"] == 5000
    assert o["routes_overflow"] == sum(r["count"] for r in o["routes"] if r["route"] == "(other)")
    assert o["routes_overflow"] > 0
    assert (
        o["routes_overflow"] + sum(r["count"] for r in o["routes"] if r["route"] != "(other)")
        == 5000
    )
    assert stats.snapshot().routes_tracked == 50


def test_an_unknown_method_beyond_max_routes_goes_to_other_other() -> None:
    stats = Stats(max_routes=1)
    stats.record(req(1.0, method="GET", route="/a"))
    stats.record(req(1.0, method="BREW", route="/pot"))
    stats.record(req(1.0, method="GET", route="/b"))
    keys = {(r["method"], r["route"]): r["count"] for r in stats.overview()["routes"]}
    assert keys == {("GET", "/a"): 1, ("(other)", "(other)"): 1, ("GET", "(other)"): 1}


# -- sessions -----------------------------------------------------------------------------


def test_session_stats() -> None:
    rng = random.Random(11)
    stats = Stats(clock=Clock())
    durations: dict[str, list[float]] = defaultdict(list)
    errors: dict[str, int] = defaultdict(int)
    for i in range(4000):
        sid = f"s{i % 4}"
        ms = rng.lognormvariate(2 + i % 4, 0.8)
        durations[sid].append(ms)
        errors[sid] += i % 50 == 0
        stats.record(
            req(ms, session_id=sid, user_id=f"u{i % 4}", slow=ms > 200, errored=i % 50 == 0)
        )
    answer = stats.sessions(limit=10)
    assert answer["window"] == "recent"
    rows = answer["sessions"]
    assert [r["session"] for r in rows] == sorted(durations, key=lambda s: -max(durations[s]))
    for row in rows:
        values = durations[row["session"]]
        assert row["user_id"] == "u" + row["session"][1:]
        assert row["requests"] == len(values)
        assert row["slow"] == sum(1 for v in values if v > 200)
        assert row["errors"] == errors[row["session"]]
        assert row["mean_ms"] == pytest.approx(sum(values) / len(values), abs=0.001)
        assert row["max_ms"] == round(max(values), 3)
        assert close(row["p95_ms"], true_quantile(values, 0.95), SESSION_RELATIVE_ERROR)
        assert row["last_seen"] == "2023-11-14T22:13:50.000Z"


def test_sessions_are_keyed_by_session_else_user_and_never_mix_the_two() -> None:
    stats = Stats()
    stats.record(req(1.0, session_id="42"))
    stats.record(req(2.0, user_id="42"))
    stats.record(req(3.0, user_id="42"))
    stats.record(req(4.0))  # neither: not in the table
    rows = {(r["session"], r["user_id"]): r["requests"] for r in stats.sessions()["sessions"]}
    assert rows == {("42", None): 1, (None, "42"): 2}


def test_a_session_learns_its_user_later() -> None:
    stats = Stats()
    stats.record(req(1.0, session_id="s"))
    stats.record(req(1.0, session_id="s", user_id="alice"))
    stats.record(req(1.0, session_id="s"))
    (row,) = stats.sessions()["sessions"]
    assert (row["user_id"], row["requests"]) == ("alice", 3)


def test_sessions_stay_bounded_and_keep_the_most_recent() -> None:
    rng = random.Random(17)
    stats = Stats(max_sessions=100)
    users = [f"user-{rng.randrange(3000)}" for _ in range(5000)]
    for user in users:
        stats.record(req(rng.uniform(1, 100), user_id=user))
    answer = stats.sessions(limit=1000, window="all")
    most_recent: list[str] = []
    for user in reversed(users):
        if user not in most_recent:
            most_recent.append(user)
    assert len(answer["sessions"]) == answer["tracked"] == 100
    assert {r["user_id"] for r in answer["sessions"]} == set(most_recent[:100])
    assert answer["evicted"] >= len(set(users)) - 100
    assert stats.snapshot().sessions_tracked == 100


def test_a_busy_session_does_not_overflow_its_counters() -> None:
    stats = Stats()
    for _ in range(70_000):
        stats.record(req(12.0, session_id="busy"))
    stats.record(req(900.0, session_id="busy"))
    (row,) = stats.sessions()["sessions"]
    assert row["requests"] == 70_001
    assert close(row["p95_ms"], 12.0, SESSION_RELATIVE_ERROR)
    assert row["max_ms"] == 900.0


def test_recent_sessions_are_those_seen_within_the_window() -> None:
    clock = Clock()
    stats = Stats(clock=clock)
    stats.record(req(50.0, session_id="old"))
    clock.now += 600
    stats.record(req(10.0, session_id="new"))
    assert {r["session"] for r in stats.sessions()["sessions"]} == {"old", "new"}
    clock.now = T0 + 900
    assert [r["session"] for r in stats.sessions()["sessions"]] == ["new"]
    assert [r["session"] for r in stats.sessions(window="all")["sessions"]] == ["old", "new"]


def test_hash_session_is_short_stable_and_distinct() -> None:
    a = hash_session("cookie-value")
    assert a == hash_session("cookie-value")
    assert len(a) == 16
    assert int(a, 16) >= 0
    assert a != hash_session("cookie-valuf")
    assert a == hashlib.sha256(b"cookie-value").hexdigest()[:16]
    with pytest.raises(TypeError, match="expected a string"):
        hash_session(b"bytes")  # type: ignore[arg-type]


# -- the recent window -----------------------------------------------------------------


def test_requests_older_than_the_window_leave_recent_but_stay_in_all() -> None:
    clock = Clock()
    stats = Stats(clock=clock, window_s=900)
    for ms in (100.0, 200.0, 300.0):
        stats.record(req(ms, route="/old"))
    clock.now = T0 + 600
    for ms in (1.0, 2.0):
        stats.record(req(ms, route="/new"))

    recent = stats.overview("recent")
    assert (recent["window"], recent["requests"]) == ("recent", 5)
    clock.now = T0 + 839  # younger than window_s minus one slot: still in
    assert stats.overview("recent")["requests"] == 5

    clock.now = T0 + 900
    recent = stats.overview("recent")
    assert recent["requests"] == 2
    assert [r["route"] for r in recent["routes"]] == ["/new"]
    assert recent["since"] > "2023-11-14T22:13:50.000Z"
    everything = stats.overview("all")
    assert everything["requests"] == 5
    assert everything["since"] == "2023-11-14T22:13:50.000Z"
    assert route_row(everything, "GET", "/old")["max_ms"] == 300.0
    assert [r["duration_ms"] for r in stats.slowest(window="recent")["requests"]] == [2.0, 1.0]
    assert [r["duration_ms"] for r in stats.slowest(window="all")["requests"]] == [
        300.0,
        200.0,
        100.0,
        2.0,
        1.0,
    ]

    clock.now = T0 + 10 * 3600  # a long quiet time
    assert stats.overview("recent")["requests"] == 0
    assert stats.overview("recent")["routes"] == []
    assert stats.overview("all")["requests"] == 5
    stats.record(req(7.0, route="/new"))
    assert route_row(stats.overview(), "GET", "/new")["count"] == 3


def test_all_keeps_its_own_slowest_across_many_slots() -> None:
    clock = Clock()
    stats = Stats(clock=clock, slow_kept=3)
    durations = []
    for minute in range(60):
        clock.now = T0 + 60 * minute
        for k in range(5):
            ms = float(minute * 10 + k)
            durations.append(ms)
            stats.record(req(ms))
    assert [r["duration_ms"] for r in stats.slowest(limit=10, window="all")["requests"]] == [
        594.0,
        593.0,
        592.0,
    ]
    assert stats.overview()["requests"] == 300
    recent = stats.overview("recent")
    assert recent["requests"] == 15 * 5  # the last 15 one-minute slots
    assert close(route_row(recent, "GET", "/items/{item_id}")["p50_ms"], 522.0)


def test_a_clock_going_back_keeps_counting() -> None:
    clock = Clock()
    stats = Stats(clock=clock)
    stats.record(req(1.0))
    clock.now -= 3600
    stats.record(req(2.0))
    assert stats.overview("recent")["requests"] == 2


# -- the slowest requests ---------------------------------------------------------------


def test_slowest_are_ordered_and_limited() -> None:
    stats = Stats(slow_kept=50)
    durations = list(range(1, 201))
    random.Random(2).shuffle(durations)
    for ms in durations:
        stats.record(
            req(
                float(ms),
                request_id=f"r{ms}",
                ttfb_ms=ms / 2,
                user_id="u",
                session_id="s",
                status=503,
                errored=True,
                released=True,
                reason="status",
                raised=None,
            )
        )
    answer = stats.slowest(limit=10)
    assert answer["window"] == "recent"
    rows = answer["requests"]
    assert [r["duration_ms"] for r in rows] == [float(ms) for ms in range(200, 190, -1)]
    assert rows[0] == {
        "request_id": "r200",
        "method": "GET",
        "path": "/items/1",
        "route": "/items/{item_id}",
        "status": 503,
        "duration_ms": 200.0,
        "ttfb_ms": 100.0,
        "user_id": "u",
        "session_id": "s",
        "at": "2023-11-14T22:13:50.000Z",
        "released": True,
        "reason": "status",
        "errored": True,
        "raised": None,
    }
    assert len(stats.slowest(limit=1000)["requests"]) == 50
    assert len(stats.slowest(limit=1)["requests"]) == 1


def test_a_kept_slow_request_has_a_bounded_path() -> None:
    stats = Stats()
    stats.record(req(5.0, path="/x" * 5000, route=None))
    (row,) = stats.slowest()["requests"]
    assert len(row["path"]) <= 1003


@pytest.mark.parametrize("limit", [0, -1, 1001, "5", True, 2.5, None])
def test_limit_is_validated(limit: object) -> None:
    stats = Stats()
    with pytest.raises(ValueError, match=r"invalid 'limit' .*: expected an integer from 1 to 1000"):
        stats.slowest(limit=limit)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="invalid 'limit'"):
        stats.sessions(limit=limit)  # type: ignore[arg-type]


@pytest.mark.parametrize("window", ["", "All", "hour", None])
def test_window_is_validated(window: Any) -> None:
    stats = Stats()
    calls: list[Callable[..., object]] = [
        stats.overview,
        stats.slowest,
        stats.sessions,
        stats.snapshot,
    ]
    for call in calls:
        with pytest.raises(ValueError, match="expected 'all' or 'recent'"):
            call(window=window)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_routes": 0}, "invalid 'max_routes' 0: expected an integer >= 1"),
        ({"max_routes": True}, "invalid 'max_routes' True"),
        ({"max_sessions": -1}, "invalid 'max_sessions' -1: expected an integer >= 0"),
        ({"slow_kept": 0}, "invalid 'slow_kept' 0: expected an integer from 1 to 1000"),
        ({"slow_kept": 5000}, "invalid 'slow_kept' 5000"),
        ({"window_s": 0}, "invalid 'window_s' 0: expected a number of seconds > 0"),
        ({"window_s": math.inf}, "invalid 'window_s' inf"),
        ({"window_s": "900"}, "invalid 'window_s' '900'"),
    ],
)
def test_options_are_validated(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Stats(**options)


def test_clock_must_be_callable() -> None:
    with pytest.raises(TypeError, match="invalid 'clock'"):
        Stats(clock=12.0)  # type: ignore[arg-type]


def test_sessions_can_be_turned_off() -> None:
    stats = Stats(max_sessions=0)
    stats.record(req(1.0, session_id="s"))
    assert stats.sessions()["sessions"] == []
    assert stats.overview()["requests"] == 1


def test_a_bad_duration_is_refused_and_nothing_is_counted() -> None:
    stats = Stats()
    with pytest.raises(ValueError, match="invalid duration"):
        stats.record(req(-5.0))
    with pytest.raises(ValueError, match="invalid duration"):
        stats.record(req(math.nan, route="/new"))
    assert stats.overview()["requests"] == 0
    assert stats.overview()["routes"] == []


def test_release_reasons_are_bounded() -> None:
    stats = Stats()
    for i in range(150):
        stats.record(req(1.0, released=True, reason=f"rule:r{i}"))
    reasons = stats.overview()["releases_by_reason"]
    assert len(reasons) <= 101
    assert sum(reasons.values()) == 150
    assert reasons["(other)"] == 50


# -- threads ---------------------------------------------------------------------------


def test_records_from_threads_are_all_counted() -> None:
    stats = Stats(clock=Clock())
    per_thread = 5000
    start = threading.Barrier(4)

    def work(t: int) -> None:
        rng = random.Random(t)
        start.wait()
        for i in range(per_thread):
            stats.record(
                req(
                    rng.uniform(1, 2000),
                    route=f"/r{i % 7}",
                    session_id=f"s{i % 13}",
                    errored=i % 10 == 0,
                    released=i % 5 == 0,
                    reason="slow",
                )
            )

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    o = stats.overview()
    assert o["requests"] == 4 * per_thread
    assert o["errors"] == 4 * per_thread // 10
    assert o["releases_by_reason"] == {"slow": 4 * per_thread // 5}
    assert sum(r["count"] for r in o["routes"]) == 4 * per_thread
    sessions = stats.sessions(limit=100)["sessions"]
    assert sum(s["requests"] for s in sessions) == 4 * per_thread
    assert sum(o["histogram"]["counts"]) == 4 * per_thread


def test_totals_stay_exact_while_a_slot_that_left_the_window_is_merged() -> None:
    clock = Clock()
    stats = Stats(clock=clock, max_routes=1000)
    for i in range(300):
        stats.record(req(float(i + 1), route=f"/r{i}", released=True, reason="slow"))
    clock.now = T0 + 900  # the first slot leaves the window; its routes merge one per record
    for n in range(1, 400):
        stats.record(req(1.0, route="/r0"))
        if n in (1, 2, 150, 299, 300, 399):
            o = stats.overview()
            assert o["requests"] == 300 + n
            assert len(o["routes"]) == 300
            assert route_row(o, "GET", "/r0")["count"] == 1 + n
            assert route_row(o, "GET", "/r299")["max_ms"] == 300.0
            assert o["releases_by_reason"] == {"slow": 300}
            assert stats.overview("recent")["requests"] == n
    assert [r["duration_ms"] for r in stats.slowest(limit=2, window="all")["requests"]] == [
        300.0,
        299.0,
    ]


def test_readers_and_writers_at_once() -> None:
    clock = Clock()
    stats = Stats(clock=clock, max_routes=100)
    stop = threading.Event()
    failures: list[BaseException] = []

    def read() -> None:
        try:
            while not stop.is_set():
                stats.overview()
                stats.overview("recent")
                stats.slowest(window="all")
                stats.sessions(window="all")
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    readers = [threading.Thread(target=read) for _ in range(2)]
    for thread in readers:
        thread.start()
    try:
        for i in range(20_000):
            if i % 500 == 0:
                clock.now += 61  # a slot leaves the window every few hundred records
            stats.record(req(1.0 + i % 300, route=f"/r{i % 80}", session_id=f"s{i % 9}"))
    finally:
        stop.set()
        for thread in readers:
            thread.join()
    assert failures == []
    assert stats.overview()["requests"] == 20_000


# -- keys a client chooses cannot take the rows of the app's routes --------------------


def probe(i: int, **fields: Any) -> RequestRecord:
    """A scanner's request to an app whose framework is unknown (no route template)."""
    values: dict[str, Any] = {"path": f"/probe-{i}/admin.php", "route": None, "status": 404}
    values.update(fields)
    return req(1.0, **values)


def rows(stats: Stats, window: str = "all") -> dict[tuple[str, str], int]:
    return {(r["method"], r["route"]): r["count"] for r in stats.overview(window)["routes"]}


def test_404_probes_of_an_unknown_framework_share_one_unmatched_row() -> None:
    stats = Stats()  # 500 routes
    for i in range(520):
        stats.record(probe(i))
    stats.record(probe(520, method="POST"))
    stats.record(req(3.0, route="/items/{item_id}"))
    assert rows(stats) == {
        ("GET", UNMATCHED): 520,
        ("POST", UNMATCHED): 1,
        ("GET", "/items/{item_id}"): 1,
    }
    o = stats.overview()
    assert (o["routes_tracked"], o["routes_overflow"], o["requests"]) == (1, 0, 522)
    slow = {r["path"]: r["route"] for r in stats.slowest(limit=1000, window="all")["requests"]}
    assert slow["/probe-3/admin.php"] == UNMATCHED


def test_the_framework_saying_no_route_matched_gives_the_unmatched_row() -> None:
    stats = Stats(max_routes=1)
    stats.record(req(1.0, route="/a"))
    for i in range(100):
        stats.record(req(1.0, path=f"/nope/{i}", route=UNMATCHED, status=405 if i % 2 else 404))
    stats.record(req(1.0, method="BREW", path="/pot", route=UNMATCHED))
    assert rows(stats) == {("GET", "/a"): 1, ("GET", UNMATCHED): 100, (OTHER, UNMATCHED): 1}
    assert stats.overview()["routes_overflow"] == 0


def test_a_template_route_takes_the_row_of_the_least_recently_seen_folded_path() -> None:
    clock = Clock()
    stats = Stats(clock=clock, max_routes=520)
    # An app behind an unknown framework answers 200 to anything: 520 folded paths
    # fill the table, one minute apart for the first ten, so that their order is known.
    for i in range(520):
        clock.now = T0 + 60 * min(i, 10)
        stats.record(probe(i, status=200, path=f"/probe{i}/admin.php"))
    stats.record(probe(0, status=200, path="/probe0/admin.php"))  # seen again: the last
    assert len(rows(stats)) == 520
    clock.now = T0 + 660
    for route in ["/items/{item_id}", "/users/{user_id}", "/checkout"]:
        stats.record(req(5.0, route=route))
        stats.record(req(5.0, route=route, method="POST"))
        assert rows(stats)[("GET", route)] == 1
        assert rows(stats)[("POST", route)] == 1
        assert stats.overview()["routes_tracked"] == 520
    # The six least recently seen folded paths lost their rows (not /probe0, seen last):
    # what they counted stays under their own key, their next requests go to (other).
    stats.record(probe(1, status=200, path="/probe1/admin.php"))
    stats.record(probe(0, status=200, path="/probe0/admin.php"))
    counted = rows(stats)
    assert counted[("GET", "/probe1/admin.php")] == 1
    assert counted[("GET", "/probe0/admin.php")] == 3
    assert counted[("GET", OTHER)] == 1
    o = stats.overview()
    assert o["requests"] == 521 + 6 + 2
    assert o["routes_overflow"] == 1
    assert sum(counted.values()) == o["requests"]


def test_folded_paths_take_only_free_rows_and_templates_keep_theirs() -> None:
    stats = Stats(max_routes=10)
    templates = [f"/t{i}" for i in range(5)]
    for route in templates:
        stats.record(req(1.0, route=route))
    for i in range(1000):
        stats.record(probe(i, status=200, path=f"/p{i}/x"))
    for route in templates:
        stats.record(req(1.0, route=route))
    counted = rows(stats)
    assert all(counted[("GET", route)] == 2 for route in templates)
    assert counted[("GET", OTHER)] == 995  # five folded paths took the five free rows
    assert stats.overview()["routes_tracked"] == 10
    # More templates than rows: a template finds no folded path to take, it is counted
    # under (other); the templates that have rows keep them.
    for i in range(20):
        stats.record(req(1.0, route=f"/more{i}"))
    counted = rows(stats)
    assert all(counted[("GET", route)] == 2 for route in templates)
    assert sum(1 for key in counted if key[1].startswith("/more")) == 5
    assert stats.overview()["requests"] == 5 + 1000 + 5 + 20


def test_made_up_methods_are_counted_under_other() -> None:
    stats = Stats()
    for i in range(1000):
        stats.record(req(1.0, method=f"X{i}", path="/items/1", route="/items/{item_id}"))
        stats.record(probe(i, method=f"Y{i}", status=200, path="/items/1"))
    stats.record(req(2.0, method="M" * 5000, route="/items/{item_id}"))
    assert rows(stats) == {(OTHER, "/items/{item_id}"): 1001, (OTHER, "/items/{id}"): 1000}
    slow = stats.slowest(limit=1)["requests"][0]
    assert slow["method"] == "M" * 16  # the real method, cut


def test_a_route_template_that_is_too_long_goes_to_other() -> None:
    stats = Stats()
    stats.record(req(1.0, route="/" + "x" * 400))
    assert rows(stats) == {("GET", OTHER): 1}


def test_memory_stays_bounded_under_a_flood_of_random_routes() -> None:
    rng = random.Random(5)
    stats = Stats(max_routes=100)

    def flood(n: int) -> None:
        for _ in range(n):
            path = f"/{rng.getrandbits(64):x}z/{rng.choice(['a', 'b'])}{rng.getrandbits(32)}"
            status = rng.choice([200, 404, 302])
            method = rng.choice(["GET", "POST", f"Q{rng.getrandbits(16)}"])
            stats.record(
                req(
                    rng.uniform(1, 50),
                    path=path,
                    route=None,
                    status=status,
                    method=method,
                    session_id=f"{rng.getrandbits(64):x}",
                    session_from_cookie=True,
                )
            )
            if rng.random() < 0.01:
                stats.record(req(1.0, route=f"/real/{rng.randrange(50)}"))

    tracemalloc.start()
    try:
        flood(30_000)  # every table is full, and what it holds is traced: now measure
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        flood(100_000)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # What moves: the cache of folded paths (cleared at 4096 paths, under 1 MB).
    assert grown < 1_000_000, f"grew by {grown} bytes"
    o = stats.overview()
    assert o["routes_tracked"] == 100
    assert len(o["routes"]) <= 2 * 100 + 18
    assert o["requests"] == 130_000 + sum(c for k, c in rows(stats).items() if "/real/" in k[1])
    sessions = stats.sessions(limit=1000, window="all")
    assert sessions["tracked"] <= stats.max_sessions // 2


# -- sessions a client chooses cannot evict the app's ----------------------------------


def test_a_flood_of_cookie_only_sessions_keeps_every_app_identified_session() -> None:
    stats = Stats(max_sessions=1000)
    users = [f"user-{i}" for i in range(400)]
    for user in users:
        stats.record(req(5.0, user_id=user, session_id=f"app-{user}"))
    for i in range(100_000):
        stats.record(req(1.0, session_id=f"{i:016x}", session_from_cookie=True))
        if i % 1000 == 0:
            stats.record(req(5.0, user_id=users[i % 400], session_id=f"app-{users[i % 400]}"))
    answer = stats.sessions(limit=1000, window="all")
    kept = {r["session"] for r in answer["sessions"]}
    assert {f"app-{user}" for user in users} <= kept
    assert answer["tracked"] == 900  # 400 identified, the cookie-only ones at most 500
    assert len(kept) == 900
    assert answer["evicted"] == 100_000 - 500
    assert stats.snapshot().sessions_tracked == 900


def test_an_identified_session_evicts_cookie_only_ones_first() -> None:
    stats = Stats(max_sessions=4)
    for i in range(2):
        stats.record(req(1.0, session_id=f"c{i}", session_from_cookie=True))
    for i in range(4):
        stats.record(req(1.0, user_id=f"u{i}"))
    kept = {(r["session"], r["user_id"]) for r in stats.sessions(window="all")["sessions"]}
    assert kept == {(None, f"u{i}") for i in range(4)}
    stats.record(req(1.0, user_id="u4"))  # no cookie-only left: the oldest identified goes
    kept = {(r["session"], r["user_id"]) for r in stats.sessions(window="all")["sessions"]}
    assert kept == {(None, f"u{i}") for i in range(1, 5)}
    # A cookie-only session finds no row while the app's sessions fill the table.
    stats.record(req(1.0, session_id="c9", session_from_cookie=True))
    answer = stats.sessions(window="all")
    assert len(answer["sessions"]) == 4
    assert answer["evicted"] == 3
    assert stats.overview()["requests"] == 8


def test_a_cookie_only_session_becomes_identified_when_its_user_is_known() -> None:
    stats = Stats(max_sessions=4)  # two cookie-only rows
    stats.record(req(1.0, session_id="c1", session_from_cookie=True))
    stats.record(req(2.0, session_id="c1", session_from_cookie=True, user_id="alice"))
    for i in range(10):
        stats.record(req(1.0, session_id=f"flood{i}", session_from_cookie=True))
    stats.record(req(3.0, session_id="c1", session_from_cookie=True))  # alice, signed out
    rows_ = {r["session"]: r for r in stats.sessions(window="all")["sessions"]}
    assert (rows_["c1"]["user_id"], rows_["c1"]["requests"]) == ("alice", 3)
    assert len(rows_) == 3  # c1 and the two most recent cookie-only ones
    assert {"flood8", "flood9"} < set(rows_)


def test_a_session_the_app_gave_is_identified_even_without_a_user() -> None:
    stats = Stats(max_sessions=2)  # one cookie-only row
    stats.record(req(1.0, session_id="app-session"))  # from set_user(None, session_id=...)
    for i in range(5):
        stats.record(req(1.0, session_id=f"c{i}", session_from_cookie=True))
    kept = {r["session"] for r in stats.sessions(window="all")["sessions"]}
    assert kept == {"app-session", "c4"}
