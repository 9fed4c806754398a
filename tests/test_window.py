"""The hindsight window in one process, on both adapters: find what was discarded, release it
later (once), backfill a user's detail, and every bad question refused by name."""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hindsight_web import Hindsight, HindsightMiddleware
from hindsight_web.fanout import LIVE_S
from hindsight_web.release import MAX_QUEUED
from hindsight_web.search import parse_release
from hindsight_web.window import STATE_BYTES

from .admin_apps import TOKEN, AppClient, make_client
from .conftest import ListHandler

Make = Callable[..., AppClient]


@pytest.fixture(params=["fastapi", "flask"])
def make(request: pytest.FixtureRequest) -> Iterator[Make]:
    made: list[AppClient] = []

    def build(**options: Any) -> AppClient:
        options.setdefault("admin_token", TOKEN)
        client = make_client(request.param, Hindsight(**options))
        made.append(client)
        return client

    yield build
    for client in made:
        client.close()
        if client.hs is not None:
            client.hs.close()


def search(client: AppClient, **query: str) -> dict[str, Any]:
    params = "&".join(f"{k.replace('__', '.')}={v}" for k, v in query.items())
    response = client.admin("GET", f"/requests?{params}")
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def release(client: AppClient, body: dict[str, Any]) -> dict[str, Any]:
    response = client.admin("POST", "/release", json_body=body)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def app_lines(out: ListHandler) -> list[str]:
    return [r.getMessage() for r in out.records if r.name in ("app", "hindsight_web")]


def test_a_discarded_request_is_found_by_user_path_and_time_and_released_once_in_order(
    make: Make, out: ListHandler
) -> None:
    client = make()
    client.get("/user/alice")
    client.get("/user/bob")
    client.get("/fast")
    out.records.clear()
    found = search(client, user_id="alice", path="/user/*", since="-1m")
    assert found["processes"] == 1
    assert found["complete"] is True
    (alice,) = found["requests"]
    assert alice["path"] == "/user/alice"
    assert alice["status"] == 200
    assert alice["user_id"] == "alice"
    assert alice["released"] is False
    assert alice["records"] == 2
    assert search(client, user_id="alice", since="now")["requests"] == []

    assert release(client, {"match": {"user_id": "alice"}, "since": "-1m", "note": "ticket 9"}) == {
        "released": 1,
        "processes": 1,
        "complete": True,
    }
    summary, *records, audited = [r for r in out.records if r.name in ("app", "hindsight_web")]
    assert "reason: retro" in summary.getMessage()
    assert audited.getMessage().startswith("hindsight window released: count=1")
    assert summary.request_id == alice["request_id"]  # type: ignore[attr-defined]
    assert [r.getMessage() for r in records] == ["before-set_user alice", "after-set_user alice"]
    assert {r.request_id for r in records} == {alice["request_id"]}  # type: ignore[attr-defined]
    assert [r.user_id for r in records] == ["alice", "alice"]  # type: ignore[attr-defined]
    # Original times and callers: the records the app made a moment ago.
    assert records[0].created <= records[1].created < summary.created + 60
    assert records[0].funcName == "log_user_request"

    out.records.clear()
    assert release(client, {"match": {"user_id": "alice"}, "since": "-1m"})["released"] == 0
    (line,) = app_lines(out)  # the audit line only
    assert line.startswith("hindsight window released: count=0 query={'match': {'user_id'")
    assert search(client, user_id="alice")["requests"][0]["released"] is True
    released = client.audit()[0]
    assert released["action"] == "released"
    assert released["count"] == 0
    assert client.audit()[1]["count"] == 1
    assert client.audit()[1]["note"] == "ticket 9"
    assert client.audit()[1]["query"]["match"] == {"user_id": "alice"}


def test_search_filters_newest_first_and_limit(make: Make) -> None:
    client = make(slow_ms=None)
    for uid in ("a", "b", "c"):
        client.get(f"/user/{uid}")
    client.get("/fail")
    client.get("/fast")
    paths = [r["path"] for r in search(client)["requests"]]
    assert paths == ["/fast", "/fail", "/user/c", "/user/b", "/user/a"]
    assert [r["path"] for r in search(client, limit="2")["requests"]] == ["/fast", "/fail"]
    assert [r["path"] for r in search(client, status="5xx")["requests"]] == ["/fail"]
    assert [r["path"] for r in search(client, status="200-299", path="/user/*")["requests"]] == [
        "/user/c",
        "/user/b",
        "/user/a",
    ]
    assert [r["path"] for r in search(client, message="after-set_user b")["requests"]] == [
        "/user/b"
    ]
    failed = search(client, released="true")["requests"]
    assert [(r["path"], r["reason"]) for r in failed] == [("/fail", "status")]
    assert [
        r["path"] for r in search(client, method="GET", client_ip="203.0.113.0/24")["requests"]
    ][:1] == ["/fast"]
    one = search(client, request_id=failed[0]["request_id"])["requests"]
    assert [r["path"] for r in one] == ["/fail"]
    assert search(client, until="-1h")["requests"] == []
    assert search(client, min_duration_ms="60000")["requests"] == []


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("status=5yy", "status"),
        ("status=499-400", "status"),
        ("since=yesterday", "since"),
        ("until=2026-13-01T00:00:00Z", "until"),
        ("since=-1m&until=-2m", "until"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("min_duration_ms=-1", "min_duration_ms"),
        ("client_ip=not-an-address", "client_ip"),
        ("released=maybe", "released"),
        ("usr_id=alice", "usr_id"),
        ("field.1x=a", "field.1x"),
        ("status=", "status"),
        ("user_id=", "user_id"),
        ("since=", "since"),
        ("limit=", "limit"),
        ("since=0001-01-01T00:00:00%2B01:00", "since"),
        ("until=9999-12-31T23:00:00-05:00", "until"),
        ("since=-99999999d", "since"),
    ],
)
def test_a_bad_filter_is_a_400_that_names_the_parameter(make: Make, query: str, field: str) -> None:
    client = make()
    response = client.admin("GET", f"/requests?{query}")
    assert response.status_code == 400, response.text
    assert field in response.json()["error"]
    assert [d["field"] for d in response.json()["details"]][:1] == [field]


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ([], 400, "body"),
        ({"match": {"pth": "/x"}}, 422, "match.pth"),
        ({"match": {"status": "five"}}, 400, "match.status"),
        ({"match": {"status": [500, 9999]}}, 422, "match.status[1]"),
        ({"match": {}, "since": "soon"}, 400, "since"),
        ({"match": {}, "note": 5}, 422, "note"),
        ({"match": {}, "by": "me"}, 422, "by"),
        ({"match": {}, "until": 1e308}, 400, "until"),
        ({"match": {}, "since": -1e20}, 400, "since"),
        ({"match": {}, "since": "0001-01-01T00:00:00+01:00"}, 400, "since"),
    ],
)
def test_a_bad_release_is_refused_naming_the_field_and_releases_nothing(
    make: Make, out: ListHandler, body: Any, status: int, field: str
) -> None:
    client = make()
    client.get("/fast")
    out.records.clear()
    response = client.admin("POST", "/release", json_body=body)
    assert response.status_code == status, response.text
    assert response.json()["details"][0]["field"] == field
    assert app_lines(out) == []
    assert search(client)["requests"][0]["released"] is False


def test_one_request_with_its_records_as_json(make: Make, out: ListHandler) -> None:
    client = make()
    client.get("/user/carol")
    (found,) = search(client, user_id="carol")["requests"]
    shown = client.admin("GET", f"/requests/{found['request_id']}")
    assert shown.status_code == 200, shown.text
    body = shown.json()
    assert body["path"] == "/user/carol"
    assert body["processes"] == 1
    assert [(r["level"], r["logger"], r["message"]) for r in body["records"]] == [
        ("DEBUG", "app", "before-set_user carol"),
        ("DEBUG", "app", "after-set_user carol"),
    ]
    record = body["records"][0]
    assert record["func"] == "log_user_request"
    assert record["pathname"].endswith("admin_apps.py")
    assert record["time"].endswith("Z")
    assert record["exc_text"] is None
    missing = client.admin("GET", "/requests/no-such-id")
    assert missing.status_code == 404
    assert "no-such-id" in missing.json()["error"]


def test_backfill_writes_the_users_recent_requests_then_detail_goes_on_live(
    make: Make, out: ListHandler
) -> None:
    client = make()
    for _ in range(3):
        client.get("/user/dave")
    client.get("/user/erin")
    out.records.clear()
    made = client.admin("POST", "/users/dave/detail", json_body={"backfill_s": 600})
    assert made.status_code == 201, made.text
    assert made.json()["backfill"] == {"released": 3, "processes": 1, "complete": True}
    client.get("/user/dave")
    audited = ("hindsight rule added", "hindsight window released")
    lines = [line for line in app_lines(out) if not line.startswith(audited)]
    summaries = [i for i, line in enumerate(lines) if "(reason: retro)" in line]
    assert len(summaries) == 3
    assert all("reason: retro" in lines[i] for i in summaries)
    backfilled = [line for line in lines[: summaries[-1] + 3] if "set_user" in line]
    assert backfilled == ["before-set_user dave", "after-set_user dave"] * 3
    # then live, after what was backfilled: once the app says who the user is, the request's
    # DEBUG lines are written at once
    assert lines[summaries[-1] + 3 :][:4] == [
        "pre-info dave",
        "before-set_user dave",
        "after-set_user dave",
        "post-info dave",
    ]
    assert "erin" not in " ".join(lines)


def test_a_backfill_that_cannot_be_made_changes_nothing(make: Make, out: ListHandler) -> None:
    client = make()
    client.get("/user/frank")
    for bad in (0, -5, 86401, "900", True):
        response = client.admin("POST", "/users/frank/detail", json_body={"backfill_s": bad})
        assert response.status_code == 422, response.text
        assert response.json()["details"][0]["field"] == "backfill_s"
    assert client.rules() == []
    assert search(client, user_id="frank")["requests"][0]["released"] is False


def test_a_release_the_limit_held_back_is_released_later_from_the_window(
    make: Make, out: ListHandler
) -> None:
    client = make(max_releases_per_s=1)  # bursts of 2
    for _ in range(4):
        client.get("/fail")
    held = search(client, status="500", released="false")["requests"]
    assert len(held) == 2
    assert all(r["suppressed"] == 1 for r in held)
    assert sum("suppressed=1" in line for line in app_lines(out)) == 2
    out.records.clear()
    assert release(client, {"match": {"status": 500}})["released"] == 2
    lines = app_lines(out)
    assert lines.count("fail-debug") == 2
    assert sum("reason: retro" in x for x in lines) == 2
    assert search(client, status="500", released="false")["requests"] == []


def test_the_window_keeps_window_s_and_window_bytes_and_counts_what_it_evicts(make: Make) -> None:
    client = make(window_bytes=5_000)  # room for a few requests of ~1 KB
    for n in range(20):
        client.get(f"/user/u{n}")
    hs = client.hs
    assert hs is not None
    assert hs.window is not None
    counters = hs.counters()
    assert counters["window_evicted"] >= 14
    assert counters["window_bytes"] <= 5_000
    assert 1 <= counters["window_requests"] <= 6
    metrics = client.admin("GET", "/metrics").text
    evicted = re.search(r"^hindsight_window_evicted_total (\d+)", metrics, re.MULTILINE)
    assert evicted is not None
    assert int(evicted.group(1)) == counters["window_evicted"]
    assert re.search(r"^hindsight_window_bytes \d+", metrics, re.MULTILINE)
    newest = search(client)["requests"]
    assert newest[0]["path"] == "/user/u19"
    assert len(newest) == counters["window_requests"]
    hs.window.settle(now=time.time() + 301)  # window_s later
    assert search(client)["requests"] == []
    assert hs.counters()["window_bytes"] == 0


def test_no_window_when_it_is_off(make: Make, out: ListHandler) -> None:
    client = make(window_s=0)
    client.get("/user/gina")
    assert search(client)["requests"] == []
    assert release(client, {"match": {}})["released"] == 0
    assert client.hs is not None
    assert client.hs.counters()["window_requests"] == 0


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("window_s", -1),
        ("window_s", float("inf")),
        ("window_bytes", -1),
        ("window_bytes", 1.5),
        ("window_bytes", True),
        ("search_timeout_s", 0),
    ],
)
def test_bad_window_options_are_named(option: str, value: object) -> None:
    with pytest.raises(ValueError, match=option):
        Hindsight(**{option: value})


def test_settled_records_hold_no_context_nor_traceback_and_still_release(
    make: Make, out: ListHandler
) -> None:
    client = make()
    client.get("/user/hank")
    hs = client.hs
    assert hs is not None
    assert hs.window is not None
    hs.window.settle()
    (state,) = hs.window.states()
    assert all(entry[9] == [None] for entry in state.records)  # buffer.CONTEXT: let go
    out.records.clear()
    assert release(client, {"match": {"user_id": "hank"}})["released"] == 1
    assert [line for line in app_lines(out) if "set_user" in line] == [
        "before-set_user hank",
        "after-set_user hank",
    ]


def test_a_released_exception_keeps_its_traceback_text_in_the_window(
    make: Make, out: ListHandler
) -> None:
    client = make()
    hs = client.hs
    assert hs is not None
    assert hs.window is not None
    log = logging.getLogger("app")
    state = hs.begin("GET", "/boom", "127.0.0.1")
    from hindsight_web.context import _current

    token = _current.set(state)
    try:
        try:
            raise RuntimeError("inner detail")
        except RuntimeError:
            log.debug("caught", exc_info=True)
    finally:
        _current.reset(token)
    state.status = 200
    hs.finish(state)
    hs.window.settle()
    shown = client.admin("GET", f"/requests/{state.request_id}").json()
    assert "RuntimeError: inner detail" in shown["records"][0]["exc_text"]
    out.records.clear()
    assert release(client, {"match": {"path": "/boom"}})["released"] == 1
    (written,) = [line for line in out.lines if "caught" in line]
    assert written.endswith("RuntimeError: inner detail")


# -- retain rules: kept in the store after the window ---------------------------------------------


def wait_retained(client: AppClient, n: int) -> None:
    hs = client.hs
    assert hs is not None
    deadline = time.monotonic() + 5
    while hs.counters()["retained"] < n:
        assert time.monotonic() < deadline, hs.counters()
        time.sleep(0.02)


def test_a_retain_rule_keeps_its_requests_in_the_store_after_the_window(
    make: Make, tmp_path: Path, out: ListHandler
) -> None:
    client = make(store=f"sqlite:///{tmp_path / 'kept.db'}")
    rule = {"id": "audit-users", "action": "retain", "match": {"path": "/user/*"}, "retain_s": 3600}
    made = client.admin("POST", "/rules", json_body=rule)
    assert made.status_code == 201, made.text
    assert made.json()["retain_s"] == 3600
    client.get("/user/ivy")
    client.get("/fast")
    wait_retained(client, 1)
    hs = client.hs
    assert hs is not None
    assert hs.window is not None
    hs.window.settle(now=time.time() + 301)  # the window has forgotten them
    (found,) = search(client, user_id="ivy")["requests"]
    assert found["retained"] is True
    assert found["retained_by"] == "audit-users"
    assert (found["path"], found["records"]) == ("/user/ivy", 2)
    assert search(client, path="/fast")["requests"] == []
    shown = client.admin("GET", f"/requests/{found['request_id']}").json()
    assert [r["message"] for r in shown["records"]] == ["before-set_user ivy", "after-set_user ivy"]
    assert (
        search(client, message="after-set_user ivy")["requests"][0]["request_id"]
        == found["request_id"]
    )
    assert client.rules()[0]["hits"] == 1


def test_a_request_in_the_window_and_kept_is_listed_once(make: Make, tmp_path: Path) -> None:
    client = make(store=f"sqlite:///{tmp_path / 'kept.db'}")
    client.admin("POST", "/rules", json_body={"action": "retain", "match": {}})
    client.get("/user/jay")
    wait_retained(client, 1)
    (found,) = search(client, user_id="jay")["requests"]
    assert "retained" not in found  # the window's (with its records to release)


def test_retained_requests_go_when_their_time_is_up_or_for_room(make: Make, tmp_path: Path) -> None:
    client = make(store=f"sqlite:///{tmp_path / 'kept.db'}", retain_max_bytes=3000, window_s=0.5)
    client.admin("POST", "/rules", json_body={"action": "retain", "match": {}, "retain_s": 2})
    for n in range(6):
        client.get(f"/user/k{n}")
    wait_retained(client, 6)
    hs = client.hs
    assert hs is not None
    assert hs.counters()["retain_evicted"] >= 2
    time.sleep(0.6)  # out of the window
    kept = [r["user_id"] for r in search(client)["requests"]]
    assert 1 <= len(kept) <= 4
    assert kept == [f"k{n}" for n in range(5, 5 - len(kept), -1)]  # the newest stayed
    time.sleep(2)
    assert search(client)["requests"] == []


@pytest.mark.parametrize(
    ("rule", "status", "field"),
    [
        ({"action": "retain", "retain_s": 0}, 422, "retain_s"),
        ({"action": "retain", "retain_s": 10**10}, 422, "retain_s"),
        ({"action": "retain", "retain_s": "1d"}, 400, "retain_s"),
        ({"action": "release", "retain_s": 60}, 422, "retain_s"),
        ({"action": "keep"}, 422, "action"),
    ],
)
def test_bad_retain_rules_are_refused_by_name(
    make: Make, rule: dict[str, Any], status: int, field: str
) -> None:
    client = make()
    response = client.admin("POST", "/rules", json_body=rule)
    assert response.status_code == status, response.text
    assert response.json()["details"][0]["field"] == field
    assert client.rules() == []


def test_the_window_counts_its_bytes_right_when_a_release_races_its_evictions(
    make: Make,
) -> None:
    client = make(window_bytes=8_000)
    for n in range(4):
        client.get(f"/user/m{n}")
    hs = client.hs
    assert hs is not None
    window = hs.window
    assert window is not None
    snapshot = window.states()
    for n in range(10):  # push the snapshot's requests out
        client.get(f"/user/n{n}")
    for state in snapshot:
        window.take(state)
    held = sum(state.nbytes + STATE_BYTES for state in window.states())
    assert window.used == held


def test_a_release_that_finds_the_writer_full_leaves_the_rest_for_the_next(
    out: ListHandler,
) -> None:
    hs = Hindsight(admin_token=TOKEN, search_timeout_s=0.2, max_releases_per_s=1e6)
    written: list[str] = []
    go = threading.Event()

    class Slow(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            go.wait(30)
            if record.name == "app":
                written.append(record.getMessage())

    async def app(scope: Any, receive: Any, send: Any) -> None:
        logging.getLogger("app").debug("one %s", scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    logging.getLogger("app").addHandler(Slow())
    client = AppClient(HindsightMiddleware(app, hindsight=hs), asgi=True, hs=hs)
    try:
        total = MAX_QUEUED + 500
        scopes = [f"/r/{n}" for n in range(total)]

        async def many() -> None:
            async def receive() -> dict[str, Any]:
                return {"type": "http.request"}

            async def send(message: Any) -> None:
                pass

            middleware = HindsightMiddleware(app, hindsight=hs)
            for path in scopes:
                scope = {"type": "http", "method": "GET", "path": path, "headers": []}
                await middleware(scope, receive, send)

        asyncio.run(many())
        first = hs.ask({"kind": "release", "spec": parse_release({"match": {}}), "reason": "retro"})
        released = first[0][0]["released"]
        assert MAX_QUEUED <= released < total  # the writer's queue was full for the rest
        go.set()
        assert hs.flush(60)
        second = hs.ask(
            {"kind": "release", "spec": parse_release({"match": {}}), "reason": "retro"}
        )
        assert released + second[0][0]["released"] == total
        assert hs.flush(60)
        assert sorted(written) == sorted(f"one {path}" for path in scopes)  # each once
        assert hs.counters()["releases_dropped"] == 0
    finally:
        go.set()
        client.close()
        hs.close()


def test_processes_that_served_before_a_stats_reset_are_still_asked(
    tmp_path: Path,
) -> None:
    store = f"sqlite:///{tmp_path / 'two.db'}"
    one = make_client("fastapi", Hindsight(admin_token=TOKEN, store=store))
    two = make_client("fastapi", Hindsight(admin_token=TOKEN, store=store))
    try:
        one.get("/user/p1")
        two.get("/user/p2")
        assert one.admin("DELETE", "/stats").status_code == 204
        time.sleep(LIVE_S + 1.0)  # the reset reached both; their heartbeats went on
        found = search(one)
        assert found["complete"] is True
        assert found["processes"] == 2
        assert sorted(r["user_id"] for r in found["requests"]) == ["p1", "p2"]
    finally:
        for client in (one, two):
            client.close()
            if client.hs is not None:
                client.hs.close()


def test_a_locked_store_holds_up_neither_the_window_nor_its_expiry(
    make: Make, tmp_path: Path
) -> None:
    path = tmp_path / "locked.db"
    client = make(store=f"sqlite:///{path}", window_s=1)
    client.admin("POST", "/rules", json_body={"action": "retain", "match": {}})
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        for n in range(10):
            client.get(f"/user/q{n}")
        hs = client.hs
        assert hs is not None
        deadline = time.monotonic() + 6
        while hs.counters()["window_requests"]:  # forgotten after window_s, lock or not
            assert time.monotonic() < deadline, hs.counters()
            time.sleep(0.1)
    finally:
        other.execute("ROLLBACK")
        other.close()


def test_a_kept_request_is_found_by_its_id_after_the_window(make: Make, tmp_path: Path) -> None:
    client = make(store=f"sqlite:///{tmp_path / 'kept.db'}", window_s=0.3)
    client.admin("POST", "/rules", json_body={"action": "retain", "match": {}})
    client.get("/user/lee")
    client.get("/user/max")
    wait_retained(client, 2)
    time.sleep(0.5)  # out of the window
    everything = search(client)["requests"]
    assert [r["user_id"] for r in everything] == ["max", "lee"]
    (one,) = search(client, request_id=everything[1]["request_id"])["requests"]
    assert one["user_id"] == "lee"
    assert one["retained"] is True
    assert search(client, request_id="nope")["requests"] == []
