"""One admin, every worker: real `uvicorn --workers 4` and `gunicorn -w 4` on a shared store.

Each test starts a real server of four worker processes on a real SQLite file or a
real redis-server, makes its admin calls through whichever worker answers, and
checks what every worker does: which requests write their DEBUG lines, which are
released, what `/stats` and `/metrics` count.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from .redis_server import RedisServer
from .servers import Server, gunicorn_argv, launch, uvicorn_argv, write_app

pytestmark = pytest.mark.server
__all__ = ["launch"]  # a fixture

TOKEN = "shared-admin-token-0123456789"
ADMIN = "/_hindsight"
PROPAGATION_S = 1.0  # the documented bound: a change is in force everywhere within 1 s
WORKERS = 4
# A worker's requests reach the others' statistics within stats_flush_s (0.3 s in these
# apps), published at the next tick of its sync thread (every store_sync_s, 0.5 s).
PUBLISHED_S = 1.0
ITEMS = {"uvicorn": "/items/{item_id}", "gunicorn": "/items/<int:item_id>"}  # route templates
STORE_TIMEOUT_S = 1.0  # the stores' default timeout for one operation

FASTAPI_APP = """
import logging, os, sys
from fastapi import FastAPI, Header
from fastapi.responses import JSONResponse
from hindsight_web import HindsightMiddleware, set_user

logging.basicConfig(level=logging.INFO, format={FORMAT}, stream=sys.stderr)
log = logging.getLogger("shop")
app = FastAPI()
app.add_middleware(
    HindsightMiddleware, store=os.environ["HS_STORE"], admin_token=os.environ["HS_TOKEN"],
    slow_ms=None, stats_flush_s=0.3, rules=os.environ.get("HS_RULES") or None,
)

@app.get("/items/{item_id}")
async def item(item_id: int, x_user: str | None = Header(None)):
    if x_user:
        set_user(x_user)
    log.debug("looking up item %d", item_id)
    log.info("served item %d", item_id)
    return {"pid": os.getpid()}

@app.get("/fail")
async def fail():
    log.debug("about to fail")
    return JSONResponse({"pid": os.getpid()}, status_code=500)
"""

FLASK_APP = """
import logging, os, sys
from flask import Flask, jsonify, request
from hindsight_web import HindsightWSGIMiddleware, set_user

logging.basicConfig(level=logging.INFO, format={FORMAT}, stream=sys.stderr)
log = logging.getLogger("shop")
app = Flask(__name__)
app.wsgi_app = HindsightWSGIMiddleware(
    app.wsgi_app, store=os.environ["HS_STORE"], admin_token=os.environ["HS_TOKEN"],
    slow_ms=None, stats_flush_s=0.3, rules=os.environ.get("HS_RULES") or None,
)

@app.get("/items/<int:item_id>")
def item(item_id):
    if request.headers.get("X-User"):
        set_user(request.headers["X-User"])
    log.debug("looking up item %d", item_id)
    log.info("served item %d", item_id)
    return {"pid": os.getpid()}

@app.get("/fail")
def fail():
    log.debug("about to fail")
    return jsonify(pid=os.getpid()), 500
"""


class App:
    """A multi-worker server of the test app, and the calls a user makes to it."""

    def __init__(self, server: Server) -> None:
        self.server = server

    def admin(self, method: str, path: str, body: Any = None) -> httpx.Response:
        """One admin call on a new connection: whichever worker takes it answers."""
        with httpx.Client(base_url=self.server.base_url, timeout=10) as client:
            return client.request(
                method,
                ADMIN + path,
                json=body,
                headers={"authorization": f"Bearer {TOKEN}", "connection": "close"},
            )

    def get(self, path: str, n: int, user: str | None = None) -> list[tuple[str, int]]:
        """`n` requests, eight at a time on new connections: (request id, worker pid) each."""

        def one(_: int) -> tuple[str, int]:
            headers = {"connection": "close"}
            if user:
                headers["x-user"] = user
            with httpx.Client(base_url=self.server.base_url, timeout=10) as client:
                response = client.get(path, headers=headers)
            return response.headers["x-request-id"], response.json()["pid"]

        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(one, range(n)))

    def detailed(self, rid: str) -> bool:
        """Whether request `rid` wrote its DEBUG line."""
        return any(
            line.level == "DEBUG" and line.message.startswith(("looking up", "about to"))
            for line in self.server.lines_of(rid)
        )

    def released(self, rid: str) -> bool:
        return bool(self.server.summaries(rid))

    def wait_quiet(self, rids: list[str]) -> None:
        """Wait until every request of `rids` has written its INFO line (or summary)."""
        self.server.wait_for(
            lambda: all(self.server.lines_of(rid) for rid in rids), "the requests' lines"
        )


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/hindsight.db"
    redis: RedisServer = request.getfixturevalue("redis_server")
    return redis.url(prefix=f"shared-{time.time_ns()}")


@pytest.fixture(params=["uvicorn", "gunicorn"])
def server_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def start_app(
    launch: Callable[..., Server], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., App]:
    """`start_app(kind, store, *extra, rules=None)`: the app under uvicorn or gunicorn
    (`kind`) with four workers on `store`; `extra` goes to the server's command line."""

    def start(kind: str, store: str, *extra: str, rules: Path | None = None) -> App:
        monkeypatch.setenv("HS_STORE", store)
        monkeypatch.setenv("HS_TOKEN", TOKEN)
        monkeypatch.setenv("HS_RULES", str(rules) if rules else "")
        if kind == "uvicorn":
            write_app(tmp_path, "shared_app", FASTAPI_APP)
            base = uvicorn_argv(tmp_path, "shared_app")
            argv = lambda port: [*base(port), "--workers", str(WORKERS), *extra]  # noqa: E731
        else:
            write_app(tmp_path, "shared_app", FLASK_APP)
            argv = gunicorn_argv(tmp_path, "shared_app", *extra, workers=WORKERS)
        app = App(launch(argv, kind))
        # Every worker is up once a burst of requests reaches more than one of them.
        deadline = time.monotonic() + 20
        while len({pid for _, pid in app.get("/items/0", 16)}) < 2:
            assert time.monotonic() < deadline, "the requests never reached two workers"
        return app

    return start


def pids(answers: list[tuple[str, int]]) -> set[int]:
    return {pid for _, pid in answers}


# -- the operator's actions reach every worker ----------------------------------------------------


def test_one_detail_reaches_every_worker_and_one_undetail_removes_it_everywhere(
    start_app: Callable[..., App], server_kind: str, store_url: str
) -> None:
    app = start_app(server_kind, store_url)
    made = app.admin("POST", "/users/alice/detail", {"ttl_s": 600})
    assert made.status_code == 201, made.text
    time.sleep(PROPAGATION_S)
    answers = app.get("/items/1", 20, user="alice")
    assert len(pids(answers)) >= 2  # the requests did reach several workers
    app.wait_quiet([rid for rid, _ in answers])
    assert [rid for rid, _ in answers if not app.detailed(rid)] == []

    listings = [app.admin("GET", "/rules").json()["rules"] for _ in range(10)]
    assert all([rule["id"] for rule in rules] == [made.json()["id"]] for rules in listings)

    latest = made.json()["id"]
    for _ in range(8):  # through whichever worker answers: each replaces the one before
        again = app.admin("POST", "/users/alice/detail", {"ttl_s": 600})
        assert again.status_code == 200, again.text
        assert again.json()["replaced"] == [latest]
        latest = again.json()["id"]
    assert [rule["id"] for rule in app.admin("GET", "/rules").json()["rules"]] == [latest]
    assert app.admin("DELETE", "/users/alice/detail").status_code == 204
    time.sleep(PROPAGATION_S)
    answers = app.get("/items/2", 20, user="alice")
    app.wait_quiet([rid for rid, _ in answers])
    assert [rid for rid, _ in answers if app.detailed(rid)] == []
    assert all(app.admin("GET", "/rules").json()["rules"] == [] for _ in range(5))
    events = app.admin("GET", "/audit").json()["events"]
    assert [e["action"] for e in events].count("replaced") == 8  # each rule ended once, in all
    assert [e["rule"]["id"] for e in events if e["action"] == "removed"] == [latest]


def test_a_drop_rule_holds_in_every_worker(
    start_app: Callable[..., App], server_kind: str, store_url: str
) -> None:
    app = start_app(server_kind, store_url)
    before = app.get("/fail", 8)
    app.server.wait_for(lambda: all(app.released(rid) for rid, _ in before), "releases")
    rule = {"id": "quiet-fail", "action": "drop", "match": {"path": "/fail"}}
    assert app.admin("POST", "/rules", rule).status_code == 201
    time.sleep(PROPAGATION_S)
    answers = app.get("/fail", 20)
    assert len(pids(answers)) >= 2
    time.sleep(0.5)  # a release would be written at the end of its request
    assert [rid for rid, _ in answers if app.released(rid)] == []
    hits = app.admin("GET", "/rules/quiet-fail").json()["hits"]
    assert hits >= 20  # counted by every worker (flushed with the statistics)


def test_stats_and_metrics_count_every_worker(
    start_app: Callable[..., App], server_kind: str, store_url: str
) -> None:
    app = start_app(server_kind, store_url)
    assert app.admin("DELETE", "/stats").status_code == 204
    time.sleep(PROPAGATION_S)
    answers = app.get("/items/3", 20)
    served = pids(answers)
    assert len(served) >= 2

    def counted() -> bool:
        stats = app.admin("GET", "/stats").json()
        return stats["requests"] == 20 and stats["processes"] == len(served)

    app.server.wait_for(counted, "/stats to count the 20 requests of every worker", timeout=10)
    time.sleep(PUBLISHED_S)  # every worker has published its last requests
    for _ in range(10):  # whichever worker answers, the same numbers
        stats = app.admin("GET", "/stats").json()
        assert stats["requests"] == 20
        assert [(r["route"], r["count"]) for r in stats["routes"]] == [(ITEMS[server_kind], 20)]

    scrapes = [_requests_total(app.admin("GET", "/metrics").text) for _ in range(10)]
    assert scrapes == [20] * 10  # one host: every worker's requests in every scrape

    # Under traffic, scrapes answered by different workers never go back (a counter
    # that went down would read as a reset to Prometheus).
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            app.get("/items/4", 4)

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        scrapes = []
        for _ in range(30):
            scrapes.append(_requests_total(app.admin("GET", "/metrics").text))
            time.sleep(0.05)
    finally:
        stop.set()
        worker.join()
    assert scrapes == sorted(scrapes)
    assert scrapes[-1] > 20


def _requests_total(text: str) -> int:
    return sum(
        int(float(m.group(1)))
        for m in re.finditer(
            r'^hindsight_requests_total\{[^}]*route="/items[^"]*"\} (\S+)$', text, re.M
        )
    )


# -- start-up and recycling ------------------------------------------------------------------------


def test_workers_starting_together_with_a_rules_file_make_no_duplicates(
    start_app: Callable[..., App], server_kind: str, store_url: str, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.json"
    rules.write_text(
        json.dumps(
            [
                {"id": "quiet-fail", "action": "drop", "match": {"path": "/fail"}},
                {"id": "items", "action": "release", "match": {"path": "/items/7"}},
            ]
        )
    )
    app = start_app(server_kind, store_url, rules=rules)
    listed = app.admin("GET", "/rules").json()["rules"]
    assert sorted(rule["id"] for rule in listed) == ["items", "quiet-fail"]
    added = [e for e in app.admin("GET", "/audit").json()["events"] if e["action"] == "added"]
    assert sorted(e["rule"]["id"] for e in added) == ["items", "quiet-fail"]
    assert {e["by"] for e in added} == {"startup"}
    answers = app.get("/fail", 12)
    time.sleep(0.5)
    assert [rid for rid, _ in answers if app.released(rid)] == []


@pytest.mark.parametrize("preload", [False, True], ids=["import-per-worker", "preload"])
def test_a_recycled_gunicorn_worker_comes_back_with_every_rule(
    start_app: Callable[..., App], store_url: str, preload: bool
) -> None:
    # With --preload the workers are forked from a master that made the Hindsight (and
    # ran its sync thread): each worker must run its own, with its own connection.
    extra = ("--max-requests", "3", *(["--preload"] if preload else []))
    app = start_app("gunicorn", store_url, *extra)
    assert app.admin("POST", "/users/bob/detail", {"ttl_s": 600}).status_code == 201
    rule = {"id": "quiet-fail", "action": "drop", "match": {"path": "/fail"}}
    assert app.admin("POST", "/rules", rule).status_code == 201
    time.sleep(PROPAGATION_S)
    answers = app.get("/items/4", 30, user="bob") + app.get("/fail", 30)
    assert len(pids(answers)) > WORKERS  # workers were recycled meanwhile
    app.wait_quiet([rid for rid, _ in answers[:30]])
    assert [rid for rid, _ in answers[:30] if not app.detailed(rid)] == []
    assert [rid for rid, _ in answers[30:] if app.released(rid)] == []


# -- the store fails: requests go on, writes refused, everything heals -----------------------------


def test_redis_killed_during_traffic_then_restarted(
    start_app: Callable[..., App], server_kind: str, tmp_path: Path
) -> None:
    redis = RedisServer(tmp_path / "redis", persist=True).start()
    app = start_app(server_kind, redis.url())
    rule = {"id": "quiet-fail", "action": "drop", "match": {"path": "/fail"}}
    assert app.admin("POST", "/rules", rule).status_code == 201
    time.sleep(PROPAGATION_S)
    try:
        _during_outage(app, redis.kill, redis.start, reads_fail=True)
    finally:
        redis.stop()


def test_sqlite_locked_by_another_writer_then_released(
    start_app: Callable[..., App], server_kind: str, tmp_path: Path
) -> None:
    store_url = f"sqlite:///{tmp_path}/locked.db"
    app = start_app(server_kind, store_url)
    rule = {"id": "quiet-fail", "action": "drop", "match": {"path": "/fail"}}
    assert app.admin("POST", "/rules", rule).status_code == 201
    time.sleep(PROPAGATION_S)
    path = store_url.removeprefix("sqlite:///")
    locker: list[sqlite3.Connection] = []

    def lock() -> None:
        connection = sqlite3.connect(path, timeout=5, check_same_thread=False)
        connection.execute("BEGIN EXCLUSIVE")
        locker.append(connection)

    def unlock() -> None:
        locker.pop().rollback()

    _during_outage(app, lock, unlock, reads_fail=False)  # WAL: reads go on


def _during_outage(
    app: App, fail: Callable[[], None], heal: Callable[[], None], *, reads_fail: bool
) -> None:
    """Traffic through `fail()` and `heal()`: requests keep their latency and the rules;
    rule listings say they are stale when the store cannot be read (`reads_fail`)."""
    latencies: list[float] = []
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(base_url=app.server.base_url, timeout=10) as client:
            while not stop.is_set():
                began = time.monotonic()
                assert client.get("/items/5").status_code == 200
                latencies.append(time.monotonic() - began)

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        time.sleep(0.5)
        fail()
        time.sleep(PROPAGATION_S)
        refused = app.admin("POST", "/rules", {"id": "new", "action": "drop", "match": {}})
        assert refused.status_code == 503, refused.text
        assert "store" in refused.json()["error"]
        health = app.admin("GET", "/health")
        assert health.status_code == 503
        assert health.json()["status"] == "degraded"
        listed = app.admin("GET", "/rules").json()
        assert listed.get("stale", False) is reads_fail
        assert [rule["id"] for rule in listed["rules"]] == ["quiet-fail"]
        answers = app.get("/fail", 12)
        time.sleep(0.5)
        assert [rid for rid, _ in answers if app.released(rid)] == []  # the last rules hold
        heal()
        app.server.wait_for(
            lambda: app.admin("GET", "/health").status_code == 200, "the store to heal", 15
        )
        app.server.wait_for(
            lambda: (
                app.admin(
                    "POST", "/rules", {"id": "after", "action": "drop", "match": {"path": "/x"}}
                ).status_code
                == 201
            ),
            "writes to work again",
        )
    finally:
        stop.set()
        worker.join()
    assert latencies
    # A request that waited on the store would have taken its whole timeout (1 s).
    assert max(latencies) < STORE_TIMEOUT_S
    lines = app.server.raw_lines()
    down = [line for line in lines if "cannot be used" in line]
    back = [line for line in lines if "answers again" in line]
    assert 1 <= len(down) <= WORKERS  # once per process at most
    assert 1 <= len(back) <= WORKERS
    assert "new" not in [r["id"] for r in app.admin("GET", "/rules").json()["rules"]]
