"""Count rules on real servers: uvicorn and `gunicorn -w 4` on a SQLite file or a real
redis-server, alerts to a real local webhook receiver.

The rules and the alert targets come from a rules file, as an operator ships them.
Under uvicorn, client addresses come from ``X-Forwarded-For``, which it trusts from
127.0.0.1, so that one test plays many addresses; under gunicorn (which keeps the peer's
address) the rules count per user.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from .redis_server import RedisServer
from .servers import Server, gunicorn_argv, launch, uvicorn_argv, write_app
from .sink_servers import Receiver

pytestmark = pytest.mark.server
__all__ = ["launch"]  # a fixture

TOKEN = "counting-servers-token-0123"
ADMIN = "/_hindsight"
SYNC_S = 0.2  # store_sync_s of these apps: counts reach the store this often

FASTAPI_APP = """
import logging, os, sys
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from hindsight_web import HindsightMiddleware, set_user

logging.basicConfig(level=logging.INFO, format={FORMAT}, stream=sys.stderr)
log = logging.getLogger("shop")
app = FastAPI()
app.add_middleware(
    HindsightMiddleware, store=os.environ["HS_STORE"], admin_token=os.environ["HS_TOKEN"],
    slow_ms=None, release_on_status=None, store_sync_s=0.2, rules=os.environ["HS_RULES"],
)

@app.post("/login")
async def login(request: Request):
    set_user(request.query_params.get("user"))
    log.debug("checking the password of %s", request.query_params.get("user"))
    status = 200 if request.query_params.get("password") == "right" else 401
    return JSONResponse({"pid": os.getpid()}, status_code=status)
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
    slow_ms=None, release_on_status=None, store_sync_s=0.2, rules=os.environ["HS_RULES"],
)

@app.post("/login")
def login():
    set_user(request.args.get("user"))
    log.debug("checking the password of %s", request.args.get("user"))
    status = 200 if request.args.get("password") == "right" else 401
    return jsonify(pid=os.getpid()), status
"""


def brute_force(threshold: int, window_s: float, key: str = "client_ip") -> dict[str, Any]:
    return {
        "id": "brute-force",
        "action": "count",
        "match": {"status": [401, 403]},
        "key": key,
        "threshold": threshold,
        "window_s": window_s,
        "then": [{"action": "detail", "ttl_s": 900}, {"alert": "security"}],
    }


class Shop:
    def __init__(self, server: Server) -> None:
        self.server = server

    def login(
        self, address: str, n: int = 1, password: str = "wrong", user: str = "mallory"
    ) -> list[tuple[str, int]]:
        """`n` logins of `user` from `address`, eight at a time on new connections:
        (request id, worker pid) each."""

        def one(_: int) -> tuple[str, int]:
            with httpx.Client(base_url=self.server.base_url, timeout=10) as client:
                answer = client.post(
                    f"/login?user={user}&password={password}",
                    headers={"x-forwarded-for": address, "connection": "close"},
                )
            return answer.headers["x-request-id"], answer.json()["pid"]

        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(one, range(n)))

    def admin(self, path: str) -> Any:
        with httpx.Client(base_url=self.server.base_url, timeout=10) as client:
            answer = client.get(ADMIN + path, headers={"authorization": f"Bearer {TOKEN}"})
        assert answer.status_code == 200, answer.text
        return answer.json()

    def fired(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.admin("/alerts")["alerts"]
        return found

    def detailed(self, rid: str) -> bool:
        return any(
            line.level == "DEBUG" and line.message.startswith("checking the password")
            for line in self.server.lines_of(rid)
        )


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    started = Receiver().start()
    yield started
    started.stop()


@pytest.fixture
def start_shop(
    launch: Callable[..., Server], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Shop]:
    """`start_shop(kind, store, rules, alerts, workers)`: the app under uvicorn or gunicorn."""

    def start(
        kind: str,
        store: str,
        rules: list[dict[str, Any]],
        alerts: list[dict[str, Any]],
        workers: int,
    ) -> Shop:
        path = tmp_path / "rules.json"
        path.write_text(json.dumps({"rules": rules, "alerts": alerts}))
        monkeypatch.setenv("HS_STORE", store)
        monkeypatch.setenv("HS_TOKEN", TOKEN)
        monkeypatch.setenv("HS_RULES", str(path))
        if kind == "uvicorn":
            write_app(tmp_path, "counting_app", FASTAPI_APP)
            base = uvicorn_argv(tmp_path, "counting_app")
            argv = lambda port: [*base(port), "--workers", str(workers)]  # noqa: E731
        else:
            write_app(tmp_path, "counting_app", FLASK_APP)
            extra = ("--forwarded-allow-ips", "*", "--threads", "4")
            argv = gunicorn_argv(tmp_path, "counting_app", *extra, workers=workers)
        return Shop(launch(argv, kind))

    return start


def test_ten_failed_logins_from_one_address_fire_once_nine_do_nothing(
    start_shop: Callable[..., Shop], receiver: Receiver, tmp_path: Path
) -> None:
    shop = start_shop(
        "uvicorn",
        f"sqlite:///{tmp_path}/hindsight.db",
        [brute_force(10, 60)],
        [{"id": "security", "type": "webhook", "url": receiver.url}],
        2,
    )
    attacker = [rid for rid, _ in shop.login("203.0.113.9", 9)]
    shop.login("198.51.100.7", 9)  # another address: counted apart
    shop.login("203.0.113.9", 3, password="right")  # not a failure: not counted
    time.sleep(4 * SYNC_S)
    assert shop.fired() == []
    assert receiver.posts == 0

    attacker += [rid for rid, _ in shop.login("203.0.113.9")]
    shop.server.wait_for(lambda: shop.fired(), "the firing")
    [fired] = shop.fired()
    assert (fired["key"], fired["count"], fired["threshold"]) == ("203.0.113.9", 10, 10)
    assert sorted(s["request_id"] for s in fired["samples"]) == sorted(attacker)
    receiver.wait_for(lambda: len(receiver.bodies) == 1)
    [alert] = receiver.bodies
    assert alert["rule"] == "brute-force"
    assert alert["key"] == "203.0.113.9"
    assert alert["count"] == 10
    assert sorted(s["request_id"] for s in alert["samples"]) == sorted(attacker)
    events = shop.admin("/audit?by=rule:brute-force")["events"]
    assert [e["action"] for e in events] == ["added", "fired"]
    rules = {r["id"]: r for r in shop.admin("/rules")["rules"]}
    assert rules["brute-force.detail.203.0.113.9"]["match"] == {"client_ip": "203.0.113.9"}
    [top] = [r["top_keys"] for r in rules.values() if r["action"] == "count"]
    assert top[:2] == [{"key": "203.0.113.9", "count": 10}, {"key": "198.51.100.7", "count": 9}]

    # The address's next requests are detailed, whichever worker serves them; others not.
    time.sleep(5 * SYNC_S)  # the detail rule reaches the other worker
    after = [rid for rid, _ in shop.login("203.0.113.9", 4, password="right")]
    other = [rid for rid, _ in shop.login("198.51.100.7", 2, password="right")]
    shop.server.wait_for(lambda: all(shop.detailed(rid) for rid in after), "detail")
    assert not any(shop.detailed(rid) for rid in other)
    # Nothing more for the window, however many more come.
    shop.login("203.0.113.9", 12)
    time.sleep(4 * SYNC_S)
    assert len(shop.fired()) == 1
    assert len(receiver.bodies) == 1


def test_ten_failures_spread_over_twice_the_window_fire_nothing(
    start_shop: Callable[..., Shop], receiver: Receiver, tmp_path: Path
) -> None:
    # The 60 s window over two minutes, scaled down: a 3 s window, one failure every 0.7 s.
    shop = start_shop(
        "uvicorn",
        f"sqlite:///{tmp_path}/hindsight.db",
        [brute_force(10, 3)],
        [{"id": "security", "type": "webhook", "url": receiver.url}],
        1,
    )
    for _ in range(10):
        shop.login("203.0.113.9")
        time.sleep(0.7)
    time.sleep(4 * SYNC_S)
    assert shop.fired() == []
    assert receiver.posts == 0


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/hindsight.db"
    redis: RedisServer = request.getfixturevalue("redis_server")
    return redis.url(prefix=f"counting-{time.time_ns()}")


def test_a_threshold_crossed_across_four_gunicorn_workers_fires_once(
    start_shop: Callable[..., Shop], receiver: Receiver, store_url: str
) -> None:
    threshold = 200
    shop = start_shop(
        "gunicorn",
        store_url,
        [brute_force(threshold, 60, key="user_id")],
        [{"id": "security", "type": "webhook", "url": receiver.url}],
        4,
    )
    deadline = time.monotonic() + 30
    while len({pid for _, pid in shop.login("-", 16, password="right")}) < 4:
        assert time.monotonic() < deadline, "the requests never reached all four workers"
    # The failures go on, eight at a time, until every worker has counted some, then up
    # to one short of the threshold (a busy machine may hand one worker fewer at first).
    served: list[tuple[str, int]] = []
    while len({pid for _, pid in served}) < 4:
        assert len(served) < threshold - 8, "the failures never reached all four workers"
        served += shop.login("-", 8)
    served += shop.login("-", threshold - 1 - len(served))
    time.sleep(4 * SYNC_S)
    assert shop.fired() == []
    served += shop.login("-", 1)
    shop.server.wait_for(lambda: shop.fired(), "the firing")
    time.sleep(6 * SYNC_S)  # every worker has flushed its counts meanwhile
    [fired] = shop.fired()
    assert fired["key"] == "mallory"
    assert fired["count"] == threshold
    assert len({pid for _, pid in served}) == 4, "the threshold was not spread over 4 workers"
    assert len(shop.admin("/audit?action=fired")["events"]) == 1
    receiver.wait_for(lambda: len(receiver.bodies) >= 1)
    time.sleep(0.5)
    assert [(b["key"], b["count"]) for b in receiver.bodies] == [("mallory", threshold)]


def test_a_webhook_receiver_down_costs_the_requests_nothing_and_is_counted(
    start_shop: Callable[..., Shop], receiver: Receiver, tmp_path: Path
) -> None:
    receiver.stop()
    shop = start_shop(
        "uvicorn",
        f"sqlite:///{tmp_path}/hindsight.db",
        [brute_force(3, 60)],
        [{"id": "security", "type": "webhook", "url": receiver.url, "retry_s": 2}],
        1,
    )
    shop.login("203.0.113.9", 3)
    shop.server.wait_for(lambda: shop.fired(), "the firing")
    # While the alert is being retried, requests are served as usual.
    answers = shop.login("203.0.113.9", 20, password="right")
    assert len(answers) == 20

    def failed() -> bool:
        [target] = shop.admin("/alerts")["targets"]
        return bool(target["failed"] == 1)

    shop.server.wait_for(failed, "the alert to be given up", timeout=15)
    [target] = shop.admin("/alerts")["targets"]
    assert target["retries"] >= 1
    assert "ConnectError" in target["last_error"]
    assert receiver.posts == 0
    with httpx.Client(base_url=shop.server.base_url) as client:
        metrics = client.get(ADMIN + "/metrics", headers={"authorization": f"Bearer {TOKEN}"})
    line = 'hindsight_alerts_total{alert="security",outcome="failed"} 1'
    shop.server.wait_for(lambda: line in metrics.text or _metrics(shop, line), "the metric")
    assert "internal error in sink alert:security" in shop.server.output()


def _metrics(shop: Shop, line: str) -> bool:
    with httpx.Client(base_url=shop.server.base_url) as client:
        text = client.get(ADMIN + "/metrics", headers={"authorization": f"Bearer {TOKEN}"}).text
    return line in text
