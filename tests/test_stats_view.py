"""Statistics of several processes: export, encode and decode, merge, the recent window, retire."""

from __future__ import annotations

import json
import math
import random
import zlib
from typing import Any

import pytest

from hindsight_web.stats import RequestRecord, Stats
from hindsight_web.stats_view import (
    FORMAT,
    MAX_ENCODED,
    SESSIONS_EXPORTED,
    Export,
    StatsView,
    decode,
    encode,
    retire,
)

T0 = 1_700_000_030.0  # not on a slot edge
COUNTERS = {"records_captured": 10, "internal_errors": 1, "buffer_bytes": 2048, "store_up": 1}


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def traffic(seed: int, n: int) -> list[RequestRecord]:
    """Requests over four routes, a few hundred sessions (some in every process)."""
    rng = random.Random(seed)
    routes = ["/items/{item_id}", "/checkout", "/health", f"/only-{seed % 2}"]
    records = []
    for i in range(n):
        route = routes[i % 4]
        ms = rng.lognormvariate({"/checkout": 5, "/health": 0}.get(route, 3), 1)
        status = 500 if rng.random() < 0.02 else 200
        slow = ms >= 1000
        reason = "status" if status >= 500 else "slow" if slow else None
        user = rng.randrange(300)
        records.append(
            RequestRecord(
                request_id=f"{seed}-{i}",
                method="POST" if route == "/checkout" else "GET",
                path=route.replace("{item_id}", str(i)),
                route=route,
                status=status,
                duration_ms=ms,
                at=T0 + i / 1000,
                user_id=f"u{user}" if user % 3 else None,
                session_id=f"s{user}" if user % 5 else None,
                errored=status >= 500,
                slow=slow,
                released=reason is not None,
                reason=reason,
            )
        )
    return records


def fed(records: list[RequestRecord], clock: Clock, **options: Any) -> Stats:
    stats = Stats(clock=clock, **options)
    for r in records:
        stats.record(r)
    return stats


def streams(clock: Clock) -> tuple[list[Stats], Stats]:
    """Three processes, each with its own traffic, and one Stats fed all of it."""
    parts = [traffic(seed, n) for seed, n in ((1, 3000), (2, 2000), (3, 500))]
    return [fed(p, clock) for p in parts], fed([r for p in parts for r in p], clock)


def without(answer: dict[str, Any], *names: str) -> dict[str, Any]:
    return {k: v for k, v in answer.items() if k not in names}


def same_rows(merged: list[dict[str, Any]], single: list[dict[str, Any]]) -> None:
    """Equal row for row; a mean may differ in the last float bits of its sum."""
    assert [without(r, "mean_ms") for r in merged] == [without(r, "mean_ms") for r in single]
    for a, b in zip(merged, single, strict=True):
        assert a["mean_ms"] == pytest.approx(b["mean_ms"], abs=0.0011)


# -- export, encode, decode ---------------------------------------------------------------


def test_an_export_is_json_and_survives_encode_and_decode() -> None:
    clock = Clock()
    records = traffic(1, 2000)
    stats = fed(records, clock)
    exported = stats.export(COUNTERS)
    sessions = {r.session_id or (r.user_id,) for r in records if r.session_id or r.user_id}
    assert json.loads(json.dumps(exported, allow_nan=False)) == exported
    assert exported["format"] == FORMAT
    assert (exported["at"], exported["started"], exported["processes"]) == (T0, T0, 1)
    assert exported["counters"] == COUNTERS
    assert exported["sizes"] == {
        "routes_tracked": 4,
        "sessions_tracked": len(sessions),
        "sessions_evicted": 0,
    }
    body = encode(exported)
    assert isinstance(body, bytes)
    assert len(body) < len(json.dumps(exported)) / 3
    assert decode(body) == exported
    view = StatsView([decode(body)], now=T0)
    for window in ("all", "recent"):
        assert view.overview(window) == stats.overview(window)
        assert view.slowest(50, window) == stats.slowest(50, window)
        assert view.sessions(1000, window) == stats.sessions(1000, window)
    assert view.counters() == COUNTERS
    assert Export.parse(exported).to_json() == exported
    assert Export.from_bytes(body).to_json() == exported
    assert StatsView([Export.from_bytes(body)], now=T0).overview() == view.overview()


def test_answers_say_how_many_processes_they_cover() -> None:
    stats = fed(traffic(1, 100), Clock())
    for answer in (stats.overview(), stats.slowest(), stats.sessions(), stats.overview("recent")):
        assert answer["processes"] == 1
    empty = StatsView([], now=T0)
    assert empty.overview()["processes"] == 0
    assert empty.overview()["requests"] == 0
    assert empty.sessions()["sessions"] == []
    assert empty.slowest()["requests"] == []
    assert empty.counters() == {}


def test_an_export_holds_the_slowest_sessions_of_the_window_and_of_the_table() -> None:
    clock = Clock()
    stats = Stats(clock=clock, window_s=900)
    for i in range(SESSIONS_EXPORTED + 500):  # old and slow
        stats.record(RequestRecord("r", "GET", "/", "/", 200, 1000.0 + i, T0, session_id=f"o{i}"))
    clock.now = T0 + 1000
    for i in range(SESSIONS_EXPORTED + 500):  # recent and fast
        stats.record(RequestRecord("r", "GET", "/", "/", 200, 1.0 + i / 10, T0, session_id=f"n{i}"))
    sessions = stats.export()["sessions"]
    assert len(sessions) == 2 * SESSIONS_EXPORTED
    names = {s["session"] for s in sessions}
    assert {f"o{i}" for i in range(500, SESSIONS_EXPORTED + 500)} <= names
    assert {f"n{i}" for i in range(500, SESSIONS_EXPORTED + 500)} <= names


def test_counters_must_be_numbers() -> None:
    stats = Stats()
    with pytest.raises(TypeError, match="invalid counter 'x' 'many'"):
        stats.export({"x": "many"})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="invalid counter 'x' nan"):
        stats.export({"x": math.nan})


# -- decode refuses what is not an export --------------------------------------------------


def good() -> dict[str, Any]:
    stats = fed(traffic(2, 300), Clock())
    return stats.export(COUNTERS)


def broken(change: Any) -> bytes:
    data = good()
    change(data)
    return zlib.compress(json.dumps(data).encode())


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "not zlib data|truncated"),
        (b"garbage", "not zlib data"),
        (zlib.compress(b"not json"), "not UTF-8 JSON"),
        (zlib.compress(b"\xff\xfe"), "not UTF-8 JSON"),
        (zlib.compress(b"[1, 2]"), "expected a JSON object"),
        (zlib.compress(b'{"format": "other/1"}'), "invalid export 'format' 'other/1'"),
        (zlib.compress(b"[" * 100_000), "not UTF-8 JSON"),
        (zlib.compress(json.dumps({"a": 1}).encode())[:-3], "truncated"),
        (zlib.compress(b"{}") + b"more", "bytes after its end"),
        ("text", "expected bytes"),
    ],
)
def test_decode_refuses_what_is_not_an_encoded_export(body: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode(body)
    with pytest.raises(ValueError, match=message):
        Export.from_bytes(body)


def test_decode_refuses_a_body_that_inflates_beyond_the_limit() -> None:
    bomb = zlib.compress(b" " * (MAX_ENCODED + 1), 9)
    assert len(bomb) < 100_000
    with pytest.raises(ValueError, match="larger than"):
        decode(bomb)


def set_at(path: str, value: Any) -> Any:
    def change(data: dict[str, Any]) -> None:
        *names, last = path.split(".")
        target: Any = data
        for name in names:
            target = target[int(name)] if name.isdigit() else target[name]
        target[int(last) if last.isdigit() else last] = value

    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (set_at("at", "yesterday"), "invalid export 'at' 'yesterday': expected a number >= 0"),
        (set_at("at", -1), "invalid export 'at'"),
        (set_at("window_s", 0), "invalid export 'window_s' 0: expected a number > 0"),
        (set_at("processes", 0), "invalid export 'processes' 0: expected an integer >= 1"),
        (set_at("processes", True), "invalid export 'processes' True"),
        (set_at("all", None), "invalid export 'all' None: expected a JSON object"),
        (set_at("recent.routes", {}), "invalid export 'recent.routes' {}: expected a JSON array"),
        (set_at("all.routes.0.method", 7), "invalid export 'all.routes\\[0\\].method' 7"),
        (set_at("all.routes.0.counts", [1, -5]), "invalid export 'all.routes\\[0\\]'.*'counts'"),
        (set_at("all.routes.0.layout", "x"), "invalid histogram layout 'x'"),
        (set_at("all.routes.0.errors", 10**9), "invalid route 'errors' 1000000000"),
        (set_at("all.releases_by_reason", {"slow": "3"}), "releases_by_reason.slow' '3'"),
        (set_at("all.slowest.0.released", "yes"), "'all.slowest\\[0\\].released' 'yes'"),
        (set_at("all.slowest.0.duration_ms", None), "'all.slowest\\[0\\].duration_ms' None"),
        (set_at("all.slowest.0.status", "200"), "'all.slowest\\[0\\].status' '200'"),
        (set_at("sessions.0.requests", 0), "'sessions\\[0\\].requests' 0"),
        (set_at("sessions.0.counts", [9999, 1]), "'sessions\\[0\\].counts' entry \\[9999, 1\\]"),
        (set_at("sessions.0.counts", [0, 10**6]), "'sessions\\[0\\].counts': more than"),
        (set_at("sessions.0.session", None), "neither a session nor a user_id|'sessions\\[0\\]"),
        (set_at("sizes.routes_tracked", -1), "'sizes.routes_tracked' -1"),
        (set_at("counters.records_captured", "10"), "'counters.records_captured' '10'"),
        (set_at("counters.records_captured", math.inf), "'counters.records_captured' inf"),
    ],
)
def test_decode_names_the_field_that_is_wrong(change: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode(broken(change))
    data = good()
    change(data)
    with pytest.raises(ValueError, match=message):
        StatsView([data])


def test_a_session_without_session_nor_user_is_refused() -> None:
    def change(data: dict[str, Any]) -> None:
        data["sessions"][0].update(session=None, user_id=None)

    with pytest.raises(ValueError, match="neither a session nor a user_id"):
        decode(broken(change))


# -- merging is exact --------------------------------------------------------------------


@pytest.mark.parametrize("window", ["all", "recent"])
def test_merged_exports_answer_as_one_stats_fed_every_request(window: str) -> None:
    clock = Clock()
    processes, single = streams(clock)
    exports = [decode(encode(stats.export(COUNTERS))) for stats in processes]
    view = StatsView(exports, now=T0)

    merged, alone = view.overview(window), single.overview(window)
    assert merged["processes"] == 3
    ignored = ("routes", "processes", "routes_tracked")
    assert without(merged, *ignored) == without(alone, *ignored)
    # The largest route table of the three: /only-0 is not in the second one.
    assert (merged["routes_tracked"], alone["routes_tracked"]) == (4, 5)
    same_rows(merged["routes"], alone["routes"])
    assert merged["requests"] == 5500
    assert {(r["method"], r["route"]) for r in merged["routes"]} >= {("GET", "/only-0")}

    assert without(view.slowest(50, window), "processes") == without(
        single.slowest(50, window), "processes"
    )
    merged_sessions = view.sessions(1000, window)
    alone_sessions = single.sessions(1000, window)
    assert merged_sessions["tracked"] == sum(s.sessions(window="all")["tracked"] for s in processes)
    same_rows(merged_sessions["sessions"], alone_sessions["sessions"])
    assert len(merged_sessions["sessions"]) == alone_sessions["tracked"]


def test_the_same_session_in_several_processes_is_merged() -> None:
    clock = Clock()
    a, b = Stats(clock=clock), Stats(clock=clock)
    a.record(RequestRecord("1", "GET", "/", "/", 200, 10.0, T0, session_id="s", slow=True))
    clock.now += 5
    b.record(RequestRecord("2", "GET", "/", "/", 500, 30.0, T0, session_id="s", errored=True))
    b.record(RequestRecord("3", "GET", "/", "/", 200, 20.0, T0, session_id="s", user_id="al"))
    clock.now += 5
    a.record(RequestRecord("4", "GET", "/", "/", 200, 40.0, T0, user_id="s"))  # a user "s"
    (user, row) = StatsView([a.export(), b.export()], now=clock.now).sessions()["sessions"]
    assert row == {
        "session": "s",
        "user_id": "al",
        "requests": 3,
        "slow": 1,
        "errors": 1,
        "mean_ms": 20.0,
        "p95_ms": row["p95_ms"],
        "max_ms": 30.0,
        "last_seen": "2023-11-14T22:13:55.000Z",
    }
    assert abs(row["p95_ms"] - 30.0) <= 30.0 / 16
    assert (user["session"], user["user_id"], user["requests"]) == (None, "s", 1)


def test_only_exports_made_within_the_window_cover_the_recent_window() -> None:
    clock = Clock()
    old = fed(traffic(1, 100), clock, window_s=600)
    old_export = old.export({"records_captured": 4})
    clock.now = T0 + 400
    new = fed(traffic(2, 50), clock, window_s=600)
    new_export = new.export({"records_captured": 6})

    view = StatsView([old_export, new_export], now=T0 + 599)
    assert view.overview("recent")["requests"] == 150
    assert view.processes("recent") == 2

    view = StatsView([old_export, new_export], now=T0 + 600)  # the old one is 600 s old
    recent = view.overview("recent")
    assert (recent["requests"], recent["processes"]) == (50, 1)
    assert view.slowest(50, "recent")["processes"] == 1
    assert {r["request_id"][:2] for r in view.slowest(50, "recent")["requests"]} == {"2-"}
    assert view.sessions(1000, "recent")["sessions"] == new.sessions(1000, "recent")["sessions"]
    everything = view.overview("all")
    assert (everything["requests"], everything["processes"]) == (150, 2)
    assert everything["since"] == "2023-11-14T22:13:50.000Z"
    assert view.counters() == {"records_captured": 10}

    view = StatsView([old_export, new_export], now=T0 + 5000)
    assert view.overview("recent")["requests"] == 0
    assert view.overview("recent")["processes"] == 0
    assert view.overview("all")["requests"] == 150


def test_recent_sessions_are_those_seen_within_the_window_of_now() -> None:
    clock = Clock()
    stats = Stats(clock=clock, window_s=900)
    stats.record(RequestRecord("1", "GET", "/", "/", 200, 5.0, T0, session_id="early"))
    clock.now = T0 + 800
    stats.record(RequestRecord("2", "GET", "/", "/", 200, 1.0, T0, session_id="late"))
    exported = stats.export()
    assert len(StatsView([exported], now=T0 + 850).sessions()["sessions"]) == 2
    rows = StatsView([exported], now=T0 + 950).sessions()["sessions"]
    assert [r["session"] for r in rows] == ["late"]


# -- processes that ended --------------------------------------------------------------


def test_retire_keeps_every_since_start_number_of_the_processes_it_replaces() -> None:
    clock = Clock()
    processes, single = streams(clock)
    exports = [p.export({**COUNTERS, "records_captured": 10 * n}) for n, p in enumerate(processes)]
    retired = retire(exports[:2])
    assert decode(encode(retired)) == retired
    assert retired["processes"] == 2
    assert retired["recent"] is None
    assert retired["counters"] == {"records_captured": 10, "internal_errors": 2}

    before = StatsView(exports, now=T0)
    after = StatsView([retired, exports[2]], now=T0)
    assert after.processes("all") == 3
    assert after.processes("recent") == 1
    assert without(after.overview(), "routes") == without(before.overview(), "routes")
    same_rows(after.overview()["routes"], before.overview()["routes"])
    assert after.slowest(50, "all") == before.slowest(50, "all")
    assert after.sessions(1000, "all")["sessions"] == before.sessions(1000, "all")["sessions"]
    assert after.overview("recent")["requests"] == 500
    assert after.counters()["records_captured"] == 30
    assert after.counters()["buffer_bytes"] == COUNTERS["buffer_bytes"]  # the live one only
    # Retiring again, with the retired export in it, still adds up.
    again = StatsView([retire([retired, exports[2]])], now=T0)
    assert again.processes() == 3
    ignored = ("routes", "processes", "routes_tracked")
    assert without(again.overview(), *ignored) == without(single.overview(), *ignored)
    same_rows(again.overview()["routes"], single.overview()["routes"])


def test_retire_keeps_the_slowest_sessions_only() -> None:
    exports = []
    for p in range(3):
        stats = Stats()
        for i in range(SESSIONS_EXPORTED):
            duration = float(p * SESSIONS_EXPORTED + i + 1)
            stats.record(RequestRecord("r", "GET", "/", "/", 200, duration, T0, user_id=f"{p}-{i}"))
        exports.append(stats.export())
    retired = retire(exports)
    assert len(retired["sessions"]) == SESSIONS_EXPORTED
    assert min(s["max_ms"] for s in retired["sessions"]) == 2 * SESSIONS_EXPORTED + 1
    with pytest.raises(ValueError, match="expected at least one export"):
        retire([])


def test_counters_merge_as_sums_and_store_up_as_the_smallest() -> None:
    clock = Clock()
    a = Stats(clock=clock).export({"records_captured": 1, "buffer_bytes": 100, "store_up": 1})
    b = Stats(clock=clock).export({"records_captured": 2.5, "buffer_bytes": 50, "store_up": 0})
    assert StatsView([a, b], now=T0).counters() == {
        "records_captured": 3.5,
        "buffer_bytes": 150,
        "store_up": 0,
    }


@pytest.mark.parametrize(("limit", "window"), [(0, "all"), (1001, "all"), (5, "week")])
def test_the_view_checks_limit_and_window(limit: int, window: str) -> None:
    view = StatsView([Stats().export()])
    with pytest.raises(ValueError, match=r"invalid '(limit|window)'"):
        view.sessions(limit, window)
    with pytest.raises(ValueError, match=r"invalid '(limit|window)'"):
        view.slowest(limit, window)


def test_the_slowest_are_exact_up_to_the_smallest_slow_kept() -> None:
    clock = Clock()
    a = fed(traffic(1, 500), clock, slow_kept=10)
    b = fed(traffic(2, 500), clock, slow_kept=50)
    rows = StatsView([a.export(), b.export()], now=T0).slowest(100, "all")["requests"]
    everything = sorted((r.duration_ms for r in traffic(1, 500) + traffic(2, 500)), reverse=True)
    assert [r["duration_ms"] for r in rows] == [round(ms, 3) for ms in everything[:10]]
