"""Count rules, their firing, and tag rules, in one process (real stores, a real webhook).

The window is checked with the times given to `Counting.add` and `Counting.flush`, so
that "ten within a minute" and "ten over two minutes" take no minutes; the same
counting runs against ``memory://``, a SQLite file and a real redis-server.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import sqlite3
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from hindsight_web import Hindsight, HindsightMiddleware, bind, set_user
from hindsight_web.counting import SLOTS, Counting, Firing, counter_name
from hindsight_web.rules import RuleError, RuleSet, parse_rule
from hindsight_web.store import Store, StoreError, open_store
from hindsight_web.store.health import Health
from hindsight_web.store.memory import MemoryStore

from .conftest import ListHandler
from .redis_server import RedisServer
from .sink_servers import Receiver

TOKEN = "counting-admin-token-0123"
AUTH = {"authorization": f"Bearer {TOKEN}"}
BRUTE = {
    "id": "brute-force",
    "action": "count",
    "match": {"status": [401, 403]},
    "key": "client_ip",
    "threshold": 10,
    "window_s": 60,
    "then": [{"action": "detail", "ttl_s": 900}, {"alert": "security"}],
}

log = logging.getLogger("shop")


# -- the rule format ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "field", "error"),
    [
        ({"action": "count"}, "key", "required"),
        ({**BRUTE, "key": "ip"}, "key", "expected one of client_ip, user_id"),
        ({**BRUTE, "key": "field.not a name"}, "key", "field.NAME"),
        ({**BRUTE, "threshold": 0}, "threshold", "from 1 to"),
        ({**BRUTE, "threshold": True}, "threshold", "integer"),
        ({**BRUTE, "window_s": 0.5}, "window_s", "1 to 604800"),
        ({**BRUTE, "window_s": "60"}, "window_s", "a number"),
        ({**BRUTE, "max_keys": 0}, "max_keys", "from 1 to 1000000"),
        ({**BRUTE, "then": []}, "then", "1 to 10 actions"),
        ({**BRUTE, "then": {"action": "detail"}}, "then", "a list of actions"),
        ({**BRUTE, "then": [{"action": "page"}]}, "then[0].action", "'detail', 'release'"),
        ({**BRUTE, "then": [{"alert": "pager"}]}, "then[0].alert", "known: security"),
        ({**BRUTE, "then": [{"action": "release", "ttl_s": 5}]}, "then[0].ttl_s", "unknown"),
        ({**BRUTE, "then": [{"action": "detail", "ttl_s": 0}]}, "then[0].ttl_s", "1 to"),
        ({**BRUTE, "then": [{"action": "detail", "level": "LOUD"}]}, "then[0].level", "level"),
        (
            {**BRUTE, "key": "route", "then": [{"action": "detail"}]},
            "then[0].action",
            "cannot scope a 'detail' rule",
        ),
        (
            {**BRUTE, "key": "field.tenant", "then": [{"action": "tag", "tags": {"a": "b"}}]},
            "then[0].action",
            "cannot scope a 'tag' rule",
        ),
        ({**BRUTE, "tags": {"a": "b"}}, "tags", "only a 'tag' rule"),
        ({"action": "release", "threshold": 3}, "threshold", "only a 'count' rule"),
        ({"action": "tag"}, "tags", "required"),
        ({"action": "tag", "tags": {}}, "tags", "1 to 20 fields"),
        ({"action": "tag", "tags": {"levelname": "x"}}, "tags.levelname", "LogRecord"),
        ({"action": "tag", "tags": {"_x": "y"}}, "tags._x", "identifier"),
        ({"action": "tag", "tags": {"pci": 1}}, "tags.pci", "a text"),
        ({"action": "tag", "tags": {"pci": "x" * 201}}, "tags.pci", "1 to 200"),
    ],
)
def test_a_bad_count_or_tag_rule_is_refused_naming_the_field(
    rule: dict[str, Any], field: str, error: str
) -> None:
    with pytest.raises(RuleError) as refused:
        parse_rule(rule, now=time.time(), alerts=["security"])
    fields = {d["field"]: d["error"] for d in refused.value.details}
    assert field in fields, refused.value.details
    assert error in fields[field] or error in str(refused.value)


def test_a_count_rule_round_trips_through_its_stored_form() -> None:
    from hindsight_web.rules import restore_rule

    now = time.time()
    rule = parse_rule(BRUTE, now=now, alerts=["security"])
    shown = rule.to_json(now)
    assert shown["key"] == "client_ip"
    assert shown["threshold"] == 10
    assert shown["window_s"] == 60
    assert shown["then"] == [{"action": "detail", "ttl_s": 900.0}, {"alert": "security"}]
    assert shown["max_keys"] == 10_000
    stored = {k: v for k, v in shown.items() if k != "ttl_s"}
    assert restore_rule(stored, now=now) == rule
    tag = parse_rule({"action": "tag", "tags": {"compliance": "pci"}}, now=now)
    assert tag.to_json(now)["tags"] == {"compliance": "pci"}


# -- the window, on every store -------------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "memory":
        url = "memory://"
    elif request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/counts.db"
    else:
        redis: RedisServer = request.getfixturevalue("redis_server")
        url = redis.url(prefix=f"counting-{time.time_ns()}")
    opened = open_store(url)
    yield opened
    opened.close()


class Counted:
    """A Counting over `store` of one count rule, and what it fired."""

    def __init__(self, store: Store, rule: dict[str, Any]) -> None:
        self.rules = RuleSet()
        self.rule = parse_rule(rule, now=time.time())
        self.rules.add(self.rule)
        self.fired: list[Firing] = []
        self.counting = Counting(
            store,
            Health(store.url),
            rules=self.rules,
            interval_s=3600,
            fire=self.fired.append,
            thread=False,
        )

    def request(self, key: str, at: float, rid: str = "r") -> list[Firing]:
        self.counting.add(self.rule, key, at, rid)
        return self.counting.flush(now=at)


def test_ten_within_a_minute_fire_once_with_count_and_samples(store: Store) -> None:
    counted = Counted(store, {**BRUTE, "then": [{"action": "release"}]})
    t0 = 1_800_000_000.0
    for i in range(9):
        assert counted.request("203.0.113.9", t0 + i * 5, f"r{i}") == []
    [firing] = counted.request("203.0.113.9", t0 + 50, "r9")
    assert (firing.key, firing.total) == ("203.0.113.9", 10)
    assert firing.first == t0
    assert firing.last == t0 + 50
    assert [rid for _, rid in firing.samples] == [f"r{i}" for i in range(10)]
    # More of the same key within the window: no second firing.
    for i in range(10, 25):
        assert counted.request("203.0.113.9", t0 + 51 + i, f"r{i}") == []
    assert counted.fired == [firing]
    # Once its window is over, a key that goes on reaching the threshold fires again.
    later = t0 + 200
    for i in range(9):
        assert counted.request("203.0.113.9", later + i) == []
    assert len(counted.request("203.0.113.9", later + 9)) == 1


def test_nine_fire_nothing_and_other_keys_count_apart(store: Store) -> None:
    counted = Counted(store, BRUTE)
    t0 = 1_800_000_000.0
    for i in range(9):
        for key in ("203.0.113.9", "198.51.100.7", "2001:db8::1"):
            assert counted.request(key, t0 + i) == []
    assert counted.fired == []


def test_ten_spread_over_two_minutes_with_a_60_s_window_fire_nothing(store: Store) -> None:
    counted = Counted(store, BRUTE)
    t0 = 1_800_000_000.0
    for i in range(10):  # one every 13 s: at most 6 are ever within 66 s (window + slot)
        assert counted.request("203.0.113.9", t0 + i * 13) == []
    assert counted.fired == []


def test_many_requests_counted_between_two_flushes_fire_once(store: Store) -> None:
    counted = Counted(store, BRUTE)
    t0 = time.time()
    for i in range(25):
        counted.counting.add(counted.rule, "203.0.113.9", t0 + i * 0.01, f"r{i}")
    [firing] = counted.counting.flush(now=t0 + 1)
    assert firing.total == 25
    assert [rid for _, rid in firing.samples] == [f"r{i}" for i in range(15, 25)]


def test_the_window_counts_at_most_one_slot_more_than_window_s(store: Store) -> None:
    counted = Counted(store, {**BRUTE, "threshold": 2})
    t0 = 1_800_000_000.0  # a slot boundary of a 60 s window (slots of 6 s)
    assert t0 % (60 / SLOTS) == 0
    assert counted.request("k", t0) == []
    # 66 s later the first request's slot has left the window: not counted.
    assert counted.request("k", t0 + 66) == []
    assert counted.request("other", t0) == []
    # 65 s later it is still within the window and the slot before: counted.
    assert len(counted.request("other", t0 + 65)) == 1


def test_two_countings_sharing_a_store_fire_once_in_all(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/shared.db"
    stores = [open_store(url), open_store(url)]
    rules = RuleSet()
    rule = parse_rule(BRUTE, now=time.time())
    rules.add(rule)
    fired: list[Firing] = []
    countings = [
        Counting(s, Health(s.url), rules=rules, interval_s=3600, fire=fired.append, thread=False)
        for s in stores
    ]
    now = time.time()
    for i in range(10):  # five each
        countings[i % 2].add(rule, "203.0.113.9", now, f"r{i}")
    countings[0].flush(now)
    assert fired == []
    countings[1].flush(now)
    assert [(f.key, f.total) for f in fired] == [("203.0.113.9", 10)]
    assert sorted(rid for _, rid in fired[0].samples) == sorted(f"r{i}" for i in range(10))
    for s in stores:
        s.close()


def test_a_million_distinct_keys_stay_within_the_bound_and_are_counted_evicted() -> None:
    max_keys = 1000
    store = open_store("memory://")
    counted = Counted(store, {**BRUTE, "threshold": 2, "max_keys": max_keys})
    counting, rule = counted.counting, counted.rule
    t0 = time.time()
    traced = 200_000  # memory is traced over the first 200,000 keys (tracing is slow)
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        peak = 0
        for n in range(1_000_000):
            ip = f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"
            counting.add(rule, ip, t0, "0123456789abcdef0123456789abcdef")
            if n % 2000 == 1999:  # more keys than max_keys between two flushes
                counting.flush(now=t0)
                if n < traced:
                    peak = max(peak, tracemalloc.get_traced_memory()[0] - base)
                elif tracemalloc.is_tracing():
                    tracemalloc.stop()
        counting.flush(now=t0)
    finally:
        tracemalloc.stop()
    # The stated bound (counting.py): under 1.5 KB per key of max_keys, however many keys.
    assert peak < max_keys * 1500, peak
    counters = counting.counters()
    assert counters["count_keys_dropped"] == 1_000_000 // 2000 * (2000 - max_keys)
    assert counters["count_keys_evicted"] == 1_000_000 // 2 - max_keys
    assert len(store.read_counts(counter_name(rule), 10 * max_keys)) == max_keys
    assert counted.fired == []


def test_what_a_locked_store_did_not_take_is_counted_at_the_next_flush(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/locked.db"
    store = open_store(url, timeout_s=0.2)
    counted = Counted(store, BRUTE)
    locker = sqlite3.connect(f"{tmp_path}/locked.db", isolation_level=None)
    now = time.time()
    for i in range(6):
        counted.counting.add(counted.rule, "203.0.113.9", now, f"a{i}")
    locker.execute("BEGIN EXCLUSIVE")
    assert counted.counting.flush(now) == []  # the store refused: kept for the next flush
    locker.execute("ROLLBACK")
    for i in range(4):
        counted.counting.add(counted.rule, "203.0.113.9", now, f"b{i}")
    [firing] = counted.counting.flush(now)
    assert firing.total == 10
    store.close()


def test_a_removed_rule_stops_counting_and_one_changed_starts_from_nothing() -> None:
    store = open_store("memory://")
    counted = Counted(store, {**BRUTE, "threshold": 3})
    now = time.time()
    for _ in range(2):
        counted.counting.add(counted.rule, "k", now, "r")
    counted.rules.discard(counted.rule.id)
    counted.counting.add(counted.rule, "k", now, "r")
    assert counted.counting.flush(now) == []
    again = parse_rule({**BRUTE, "threshold": 3, "window_s": 120}, now=now + 1)
    counted.rules.add(again)
    for _ in range(2):
        counted.counting.add(again, "k", now, "r")
    assert counted.counting.flush(now) == []  # the old rule's two do not count for the new
    counted.rules.discard(again.id)
    same = parse_rule({**BRUTE, "threshold": 3, "window_s": 120}, now=now + 2)
    counted.rules.add(same)  # the same rule, read again (from the store, by another process)
    counted.counting.add(again, "k", now, "r")
    assert len(counted.counting.flush(now)) == 1


# -- firing, in a Hindsight ---------------------------------------------------------------------


async def login(request: Request) -> PlainTextResponse:
    user = request.query_params.get("user")
    if user:
        set_user(user)
    tenant = request.query_params.get("tenant")
    if tenant:
        bind(tenant=tenant)
    log.debug("login attempt for %s", user)
    status = int(request.query_params.get("status", "200"))
    return PlainTextResponse("answer", status_code=status)


async def report(request: Request) -> PlainTextResponse:
    log.error("Database Connection Failed")
    return PlainTextResponse("ok")


def make_app(hs: Hindsight) -> Starlette:
    app = Starlette(routes=[Route("/login", login), Route("/report", report)])
    app.add_middleware(HindsightMiddleware, hindsight=hs)
    return app


class Shop:
    """An app with a Hindsight on `memory://`, called in process from chosen addresses."""

    def __init__(self, **options: Any) -> None:
        self.hs = Hindsight(admin_token=TOKEN, store_sync_s=0.1, slow_ms=None, **options)
        self.app = make_app(self.hs)

    def get(self, path: str, client: str = "203.0.113.9", **headers: str) -> httpx.Response:
        async def run() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app, client=(client, 4321))
            async with httpx.AsyncClient(transport=transport, base_url="http://shop") as c:
                return await c.get(path, headers=headers)

        return asyncio.run(run())

    def admin(self, path: str) -> Any:
        answer = self.get(f"/_hindsight{path}", **AUTH)
        assert answer.status_code == 200, answer.text
        return answer.json()

    def fired(self) -> list[dict[str, Any]]:
        self.hs.counting.settle(5)
        alerts: list[dict[str, Any]] = self.admin("/alerts")["alerts"]
        return alerts


def debug_lines(records: list[logging.LogRecord], rid: str) -> list[str]:
    return [
        r.getMessage()
        for r in records
        if r.levelno == logging.DEBUG and getattr(r, "request_id", None) == rid
    ]


def test_firing_makes_a_detail_rule_for_the_key_and_audits_both(out: ListHandler) -> None:
    handler = out
    receiver = Receiver().start()
    try:
        shop = Shop(alerts=[{"id": "security", "type": "webhook", "url": receiver.url}])
        shop.hs.add_rule(BRUTE, by="ops")
        for _ in range(9):
            shop.get("/login?status=401")
        assert shop.fired() == []
        assert shop.admin("/rules")["rules"][0]["top_keys"] == [{"key": "203.0.113.9", "count": 9}]
        shop.get("/login?status=403")
        [fired] = shop.fired()
        assert (fired["rule"], fired["key_name"], fired["key"]) == (
            "brute-force",
            "client_ip",
            "203.0.113.9",
        )
        assert (fired["count"], fired["threshold"], fired["window_s"]) == (10, 10, 60.0)
        assert len(fired["samples"]) == 10
        assert all(s["link"].startswith("/_hindsight/requests/") for s in fired["samples"])
        made = "brute-force.detail.203.0.113.9"
        assert fired["made"] == [made]

        rules = {r["id"]: r for r in shop.admin("/rules")["rules"]}
        assert rules[made]["match"] == {"client_ip": "203.0.113.9"}
        assert 890 < rules[made]["ttl_s"] <= 900
        events = shop.admin("/audit?by=rule:brute-force")["events"]
        assert [e["action"] for e in events] == ["added", "fired"]
        assert events[0]["rule"]["id"] == made

        # The address's next request is detailed; another address's is not.
        shop.hs.flush()
        handler.records.clear()
        rid = shop.get("/login?user=mallory").headers["x-request-id"]
        other = shop.get("/login?user=alice", client="198.51.100.7").headers["x-request-id"]
        shop.hs.flush()
        assert debug_lines(handler.records, rid) == ["login attempt for mallory"]
        assert debug_lines(handler.records, other) == []

        receiver.wait_for(lambda: len(receiver.bodies) == 1)
        [alert] = receiver.bodies
        assert alert["alert"] == "security"
        assert alert["key"] == "203.0.113.9"
        assert alert["count"] == 10
        assert len(alert["samples"]) == 10
        assert "brute-force" in alert["text"]
        # Nothing more within the window, whatever comes.
        for _ in range(15):
            shop.get("/login?status=401")
        assert len(shop.fired()) == 1
        shop.hs.flush()
        assert len(receiver.bodies) == 1
        counters = shop.admin("/stats")["counters"]
        assert counters["count_firings"] == 1
        assert counters["alert_sent:security"] == 1
    finally:
        receiver.stop()


def test_a_release_action_releases_the_keys_requests_of_the_window_only(out: ListHandler) -> None:
    handler = out
    shop = Shop()
    shop.hs.add_rule(
        {
            "id": "fraud",
            "action": "count",
            "match": {"status": 402},
            "key": "field.tenant",
            "threshold": 3,
            "window_s": 600,
            "then": [{"action": "release"}],
        }
    )
    mine = [shop.get("/login?status=402&tenant=acme").headers["x-request-id"] for _ in range(2)]
    theirs = shop.get("/login?status=402&tenant=globex").headers["x-request-id"]
    fine = shop.get("/login?tenant=acme").headers["x-request-id"]
    mine.append(shop.get("/login?status=402&tenant=acme").headers["x-request-id"])
    [fired] = shop.fired()
    assert (fired["key_name"], fired["key"]) == ("field.tenant", "acme")
    shop.hs.flush()
    for rid in mine:
        assert debug_lines(handler.records, rid) == ["login attempt for None"]
    assert debug_lines(handler.records, theirs) == []
    assert debug_lines(handler.records, fine) == []  # not a matching request
    [released] = shop.admin("/audit?action=released")["events"]
    assert released["count"] == 3
    assert released["by"] == "rule:fraud"


def test_a_dry_run_count_rule_audits_its_firing_and_does_nothing_else() -> None:
    receiver = Receiver().start()
    try:
        shop = Shop(alerts=[{"id": "security", "type": "webhook", "url": receiver.url}])
        shop.hs.add_rule({**BRUTE, "threshold": 2, "dry_run": True})
        for _ in range(2):
            shop.get("/login?status=401")
        [fired] = shop.fired()
        assert fired["dry_run"] is True
        assert fired["made"] == []
        assert [r["id"] for r in shop.admin("/rules")["rules"]] == ["brute-force"]
        shop.hs.flush()
        assert receiver.posts == 0
    finally:
        receiver.stop()


def test_a_message_rule_fires_on_the_first_request_that_logs_it() -> None:
    receiver = Receiver().start()
    try:
        shop = Shop(alerts=[{"id": "oncall", "type": "webhook", "url": receiver.url}])
        shop.hs.add_rule(
            {
                "id": "db-down",
                "action": "count",
                "match": {"message": "Database Connection Failed"},
                "key": "route",
                "threshold": 1,
                "window_s": 300,
                "then": [{"alert": "oncall"}],
            }
        )
        shop.get("/login")
        assert shop.fired() == []
        shop.get("/report")
        [fired] = shop.fired()
        assert fired["key"] == "/report"
        receiver.wait_for(lambda: len(receiver.bodies) == 1)
    finally:
        receiver.stop()


def test_a_session_count_rule_details_that_session(out: ListHandler) -> None:
    handler = out

    async def page(request: Request) -> PlainTextResponse:
        set_user(request.query_params["user"], session_id=request.query_params["session"])
        log.debug("rendering for %s", request.query_params["user"])
        return PlainTextResponse("ok", status_code=int(request.query_params.get("status", "200")))

    hs = Hindsight(admin_token=TOKEN, store_sync_s=0.1, slow_ms=None)
    app = Starlette(routes=[Route("/page", page)])
    app.add_middleware(HindsightMiddleware, hindsight=hs)
    hs.add_rule(
        {
            "id": "slow-session",
            "action": "count",
            "match": {"status": 504},
            "key": "session_id",
            "threshold": 3,
            "window_s": 600,
            "then": [{"action": "detail", "ttl_s": 1800}],
        }
    )

    async def run() -> list[str]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://shop") as c:
            for _ in range(3):
                await c.get("/page?user=ann&session=s-ann-1&status=504")
            hs.counting.settle(5)
            rids = []
            for user, session in (("ann", "s-ann-1"), ("ann", "s-ann-2"), ("bob", "s-bob")):
                answer = await c.get(f"/page?user={user}&session={session}")
                rids.append(answer.headers["x-request-id"])
            return rids

    same, other_session, other_user = asyncio.run(run())
    hs.flush()
    assert debug_lines(handler.records, same) == ["rendering for ann"]
    assert debug_lines(handler.records, other_session) == []
    assert debug_lines(handler.records, other_user) == []
    [made] = [r for r in hs.book.active.rules() if r.action == "detail"]
    assert made.to_json()["match"]["session_id"] not in ("s-ann-1",)  # kept as its hash


# -- tags ----------------------------------------------------------------------------------------


def test_a_tag_rule_adds_its_fields_to_records_summary_and_stats(
    out: ListHandler, tmp_path: Path
) -> None:
    handler = out
    jsonl = tmp_path / "out.jsonl"
    shop = Shop(sinks=[{"id": "audit", "type": "jsonl", "path": str(jsonl)}])
    shop.hs.add_rule(
        {"id": "pci", "action": "tag", "match": {"path": "/login"}, "tags": {"compliance": "pci"}}
    )
    shop.hs.add_rule(
        {
            "id": "pci-fail",
            "action": "tag",
            "match": {"path": "/login", "status": {"gte": 500}},
            "tags": {"severity": "high"},
        }
    )
    shop.get("/login")
    failed = shop.get("/login?status=503").headers["x-request-id"]
    shop.get("/report")
    shop.hs.flush()
    mine = [r for r in handler.records if getattr(r, "request_id", None) == failed]
    assert mine
    assert all(getattr(r, "compliance", None) == "pci" for r in mine)
    assert all(getattr(r, "severity", None) == "high" for r in mine)
    summary = [r for r in mine if r.name == "hindsight_web"]
    assert len(summary) == 1
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert {line["fields"].get("compliance") for line in lines} == {"pci"}
    time.sleep(0.05)
    tags = shop.admin("/stats/tags")["tags"]
    assert {(t["tag"], t["value"], t["requests"], t["errors"]) for t in tags} == {
        ("compliance", "pci", 2, 1),
        ("severity", "high", 1, 1),
    }
    found = shop.admin("/requests?field.compliance=pci")["requests"]
    assert len(found) == 2


# -- what a review of the firing found ---------------------------------------------------------


def test_a_store_down_for_many_windows_holds_no_more_than_one_window(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/down.db", timeout_s=0.02)
    counted = Counted(store, {**BRUTE, "window_s": 10, "threshold": 10**6})
    locker = sqlite3.connect(f"{tmp_path}/down.db", isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    t0 = 1_800_000_000.0
    sizes = []
    gc.collect()
    tracemalloc.start()
    try:
        for second in range(0, 300, 5):  # five minutes down, thirty windows of 10 s
            for key in range(200):
                counted.counting.add(counted.rule, f"10.0.0.{key}", t0 + second, "r" * 32)
            assert counted.counting.flush(now=t0 + second) == []
            sizes.append(tracemalloc.get_traced_memory()[0])
    finally:
        tracemalloc.stop()
        locker.execute("ROLLBACK")
    # After the first window, what is held stays flat however long the outage lasts.
    assert sizes[-1] < sizes[5] * 1.3, (sizes[5], sizes[-1])
    store.close()


def test_a_rule_changed_under_its_id_counts_afresh_and_loses_nothing_of_the_new_one() -> None:
    counted = Counted(open_store("memory://"), {**BRUTE, "threshold": 3})
    now = time.time()
    counted.counting.add(counted.rule, "k", now, "old")
    counted.rules.discard(counted.rule.id)
    changed = parse_rule({**BRUTE, "threshold": 3, "window_s": 120}, now=now)
    counted.rules.add(changed)
    for i in range(3):
        counted.counting.add(changed, "k", now, f"new{i}")
    [firing] = counted.counting.flush(now)
    assert [rid for _, rid in firing.samples] == ["new0", "new1", "new2"]


def test_a_count_rules_id_taken_by_another_action_costs_the_other_rules_nothing() -> None:
    store = open_store("memory://")
    counted = Counted(store, {**BRUTE, "id": "x", "threshold": 1})
    other = parse_rule({**BRUTE, "id": "y", "threshold": 1}, now=time.time())
    counted.rules.add(other)
    now = time.time()
    counted.counting.add(counted.rule, "k", now, "r1")
    counted.counting.add(other, "k", now, "r2")
    counted.rules.discard("x")
    counted.rules.add(parse_rule({"id": "x", "action": "release"}, now=now))
    assert [f.rule.id for f in counted.counting.flush(now)] == ["y"]


def test_rules_made_by_count_rules_leave_operators_room_and_made_says_what_was_made() -> None:
    shop = Shop(max_rules=10)
    shop.hs.add_rule({**BRUTE, "threshold": 1, "then": [{"action": "detail", "ttl_s": 600}]})
    for n in range(8):
        shop.get("/login?status=401", client=f"198.51.100.{n}")
    fired = shop.fired()
    assert len(fired) == 8
    made = [f["made"] for f in fired]
    assert sum(len(m) for m in made) == 5  # half of max_rules
    rules = shop.admin("/rules")["rules"]
    assert sorted(i for m in made for i in m) == sorted(
        r["id"] for r in rules if "detail" in r["id"]
    )
    # An operator's own rules still fit.
    added = shop.hs.add_rule({"id": "ops", "action": "drop", "match": {"path": "/healthz"}})
    assert added.id == "ops"


def test_a_firing_says_when_this_process_lacks_its_alert_target(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/two.db"
    receiver = Receiver().start()
    try:
        with_target = Shop(
            store=url, alerts=[{"id": "security", "type": "webhook", "url": receiver.url}]
        )
        with_target.hs.add_rule({**BRUTE, "threshold": 2, "then": [{"alert": "security"}]})
        without = Shop(store=url)
        without.hs.book.sync()
        for _ in range(2):
            without.get("/login?status=401")
        [fired] = without.fired()
        assert fired["alerts"] == {"security": "unknown target"}
        assert without.admin("/stats")["counters"]["alerts_unknown"] == 1
        assert receiver.posts == 0
    finally:
        receiver.stop()


def test_a_session_known_only_by_its_cookie_is_not_counted() -> None:
    shop = Shop(session_cookie="sid")
    shop.hs.add_rule(
        {
            "id": "s",
            "action": "count",
            "match": {"status": 401},
            "key": "session_id",
            "threshold": 2,
            "window_s": 60,
            "then": [{"action": "detail"}],
        }
    )
    for _ in range(3):
        shop.get("/login?status=401", cookie="sid=abc")
    assert shop.fired() == []


def test_a_then_detail_ttl_beyond_max_detail_ttl_s_is_refused() -> None:
    shop = Shop(max_detail_ttl_s=3600)
    rule = {**BRUTE, "then": [{"action": "detail", "ttl_s": 7200}]}
    with pytest.raises(RuleError) as refused:
        shop.hs.add_rule(rule)
    assert refused.value.details[0]["field"] == "then[0].ttl_s"
    assert "3600" in refused.value.details[0]["error"]


@pytest.mark.parametrize("attempt", range(3))
def test_a_release_finds_the_request_that_made_the_rule_fire(
    out: ListHandler, attempt: int
) -> None:
    shop = Shop()
    shop.hs.add_rule({**BRUTE, "threshold": 1, "then": [{"action": "release"}]})
    rid = shop.get("/login?status=401&user=eve").headers["x-request-id"]
    shop.hs.flush()
    assert debug_lines(out.records, rid) == ["login attempt for eve"]


def test_a_field_value_longer_than_an_identity_is_not_counted() -> None:
    shop = Shop()
    rule = {**BRUTE, "key": "field.tenant", "threshold": 1, "then": [{"action": "release"}]}
    shop.hs.add_rule(rule)
    shop.get("/login?status=401&tenant=" + "x" * 300)
    assert shop.fired() == []
    shop.get("/login?status=401&tenant=" + "x" * 256)
    assert len(shop.fired()) == 1


@pytest.mark.parametrize("url", ["memory://", "sqlite"])
def test_the_counts_of_a_removed_rule_are_purged_once_past_their_time(
    url: str, tmp_path: Path
) -> None:
    store = open_store(url if url == "memory://" else f"sqlite:///{tmp_path}/purge.db")
    counted = Counted(store, BRUTE)
    t0 = time.time()
    for key in range(100):
        counted.counting.add(counted.rule, f"k{key}", t0, "r")
    counted.counting.flush(now=t0)
    name = counter_name(counted.rule)
    assert len(store.read_counts(name, 1000)) == 100
    counted.rules.discard(counted.rule.id)  # removed: nothing counts for it any more
    store.expire_counts(t0 + 30)  # within its window (and two slots): kept
    assert len(store.read_counts(name, 1000)) == 100
    store.expire_counts(t0 + 3600)
    assert store.read_counts(name, 1000) == {}


def test_a_release_action_with_the_window_off_says_so() -> None:
    shop = Shop(window_s=0)
    shop.hs.add_rule({**BRUTE, "threshold": 1, "then": [{"action": "release"}]})
    shop.get("/login?status=401")
    [fired] = shop.fired()
    assert "window_s=0" in fired["release"]


class LostReplyStore(MemoryStore):
    """A store that applies an update and then fails to say so, `lost` times (as a Redis
    whose reply to EXEC is lost)."""

    def __init__(self, lost: int) -> None:
        super().__init__()
        self.lost = lost

    def update_counts(self, *args: Any, **kwargs: Any) -> int:
        evicted = super().update_counts(*args, **kwargs)
        if self.lost:
            self.lost -= 1
            raise StoreError("store memory://: ConnectionError: the reply was lost")
        return evicted


@pytest.mark.parametrize("lost", [1, 2])
def test_a_firing_whose_update_lost_its_answer_still_runs_once(lost: int) -> None:
    store = LostReplyStore(lost)
    counted = Counted(store, {**BRUTE, "threshold": 3})
    now = time.time()
    for i in range(3):
        counted.counting.add(counted.rule, "203.0.113.9", now, f"r{i}")
    for _ in range(lost):
        assert counted.counting.flush(now) == []  # applied, marked fired, answer lost
    [firing] = counted.counting.flush(now + 1)  # the mark is found: the firing runs
    assert firing.key == "203.0.113.9"
    assert counted.counting.flush(now + 2) == []
    counted.counting.add(counted.rule, "203.0.113.9", now + 3, "r9")
    assert counted.counting.flush(now + 3) == []  # fired for this window already
    assert len(counted.fired) == 1
