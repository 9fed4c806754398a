"""Statistics through the admin API, on known traffic, for FastAPI and Flask."""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

import hindsight_web
from hindsight_web import Hindsight, HindsightMiddleware, HindsightWSGIMiddleware
from hindsight_web.histogram import RELATIVE_ERROR
from hindsight_web.stats import hash_session

TOKEN = "stats-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

Get = Callable[..., httpx.Response]


def fastapi_app(hs: Hindsight) -> FastAPI:
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: int, request: Request) -> dict[str, int]:
        user = request.headers.get("x-user")
        if user:
            hindsight_web.set_user(user)
        await asyncio.sleep(int(request.query_params.get("ms", "0")) / 1000)
        if item_id == 500:
            raise ValueError("boom")
        return {"item": item_id}

    app.add_middleware(HindsightMiddleware, hindsight=hs)
    return app


def flask_app(hs: Hindsight) -> Flask:
    app = Flask("stats")

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> tuple[str, int]:
        from flask import request

        user = request.headers.get("x-user")
        if user:
            hindsight_web.set_user(user)
        import time

        time.sleep(int(request.args.get("ms", "0")) / 1000)
        return "ok", 500 if item_id == 500 else 200

    app.wsgi_app = HindsightWSGIMiddleware(app.wsgi_app, hindsight=hs)  # type: ignore[method-assign]
    return app


ROUTES = {"fastapi": "/items/{item_id}", "flask": "/items/<int:item_id>"}


@pytest.fixture(params=["fastapi", "flask"])
def served(request: pytest.FixtureRequest) -> Callable[..., tuple[Hindsight, Get, str]]:
    """Builds the app of the parameter around a new Hindsight; returns it and a `get`."""
    clients: list[Any] = []

    def make(**options: Any) -> tuple[Hindsight, Get, str]:
        hs = Hindsight(admin_token=TOKEN, **options)
        if request.param == "flask":
            client = httpx.Client(
                transport=httpx.WSGITransport(app=flask_app(hs)), base_url="http://t"
            )
            clients.append(client)
            return hs, client.get, request.param
        app = fastapi_app(hs)

        def get(url: str, **kwargs: Any) -> httpx.Response:
            async def call() -> httpx.Response:
                transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
                async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                    return await c.get(url, **kwargs)

            return asyncio.run(call())

        return hs, get, request.param

    yield make
    for client in clients:
        client.close()


def stats(get: Get, call: str = "stats", **params: Any) -> Any:
    response = get(f"/_hindsight/{call}", headers=AUTH, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def test_counts_are_exact_and_percentiles_within_the_stated_error(served: Any) -> None:
    hs, get, kind = served(slow_ms=30)
    delays = [0, 0, 0, 0, 5, 5, 10, 10, 15, 20, 40, 45, 0, 0, 5]
    for ms in delays:
        get(f"/items/1?ms={ms}")
    assert get("/items/500").status_code == 500
    get("/_hindsight/health", headers=AUTH)  # the admin's own requests are not counted

    overview = stats(get)
    assert overview["window"] == "all"
    assert overview["requests"] == len(delays) + 1
    assert overview["errors"] == 1
    assert overview["slow"] == 2
    assert overview["releases"] == 3  # the two slow ones and the failure
    (route,) = overview["routes"]
    assert (route["method"], route["route"]) == ("GET", ROUTES[kind])
    assert route["count"] == len(delays) + 1

    slow = stats(get, "stats/slow", limit=50, window="all")["requests"]
    assert len(slow) == len(delays) + 1
    durations = [row["duration_ms"] for row in slow]
    assert durations == sorted(durations, reverse=True)
    assert (slow[0]["route"], slow[0]["path"]) == (ROUTES[kind], "/items/1")
    assert (slow[0]["released"], slow[0]["reason"]) == (True, "slow")
    for q, key in ((0.5, "p50_ms"), (0.95, "p95_ms"), (0.99, "p99_ms")):
        true = nearest_rank(durations, q)
        assert abs(route[key] - true) <= true * RELATIVE_ERROR + 0.01, (key, route[key], true)
    assert route["max_ms"] == pytest.approx(max(durations), abs=0.001)
    assert hs.counters()["requests"] == len(delays) + 1


def test_recent_window_says_which(served: Any) -> None:
    _, get, _ = served()
    get("/items/1")
    assert stats(get, window="recent")["window"] == "recent"
    assert stats(get, "stats/slow")["window"] == "recent"
    assert stats(get, "stats/sessions", window="all")["window"] == "all"
    bad = get("/_hindsight/stats", headers=AUTH, params={"window": "week"})
    assert bad.status_code == 400
    assert bad.json()["details"][0]["field"] == "window"


def test_unmatched_paths_share_one_row_and_leave_the_routes_to_the_app(served: Any) -> None:
    _, get, kind = served(max_routes=20)
    get("/users/123/orders/9f1c2d3e-0000-4000-8000-000000000000")
    overview = stats(get)
    assert [(r["method"], r["route"]) for r in overview["routes"]] == [("GET", "(unmatched)")]
    rng = random.Random(7)
    for _ in range(5000):
        get(f"/{rng.choice('abcdefghij')}{rng.randrange(10**9):x}/x")
    get("/items/1")
    overview = stats(get)
    assert overview["requests"] == 5002
    counts = {(r["method"], r["route"]): r["count"] for r in overview["routes"]}
    assert counts == {("GET", "(unmatched)"): 5001, ("GET", ROUTES[kind]): 1}
    assert overview["routes_tracked"] == 1
    assert overview["routes_overflow"] == 0


def test_sessions_stay_bounded_and_the_slowest_come_first(served: Any) -> None:
    _, get, _ = served(max_sessions=50)
    for i in range(5000):
        get("/items/1", headers={"X-User": f"user-{i}"})
    # Slower than any pause of the machine or of the collector (5,000 requests fill
    # the window): the slowest session is this one.
    get("/items/1?ms=200", headers={"X-User": "slow-user"})
    sessions = stats(get, "stats/sessions", limit=1000, window="all")
    assert len(sessions["sessions"]) == 50
    assert sessions["evicted"] == 4951
    assert sessions["sessions"][0]["user_id"] == "slow-user"
    assert sessions["sessions"][0]["max_ms"] >= 200


def test_a_session_cookie_is_kept_only_as_a_hash(served: Any) -> None:
    _, get, _ = served(session_cookie="sid")
    get("/items/1", headers={"Cookie": "theme=dark; sid=secret-value-123"})
    body = get("/_hindsight/stats/sessions", headers=AUTH).text
    assert "secret-value-123" not in body
    assert hash_session("secret-value-123") in body
    assert "secret-value-123" not in get("/_hindsight/metrics", headers=AUTH).text


def test_metrics_parse_with_the_official_parser_and_match_the_stats(served: Any) -> None:
    _, get, kind = served(slow_ms=30)
    for ms in (0, 0, 40):
        get(f"/items/1?ms={ms}")
    get("/items/500")
    response = get("/_hindsight/metrics", headers=AUTH)
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    labels = {"method": "GET", "route": ROUTES[kind]}

    def value(family: str, sample: str, **extra: str) -> float:
        for s in families[family].samples:
            if s.name == sample and s.labels == {**labels, **extra}:
                return float(s.value)
        raise AssertionError(f"no {sample} {extra} in {families[family].samples}")

    assert value("hindsight_requests", "hindsight_requests_total") == 4
    assert value("hindsight_errors", "hindsight_errors_total") == 1
    duration = "hindsight_request_duration_seconds"
    assert value(duration, duration + "_count") == 4
    assert value(duration, duration + "_bucket", le="+Inf") == 4
    assert value(duration, duration + "_bucket", le="0.025") == 3
    releases = {s.labels["reason"]: s.value for s in families["hindsight_releases"].samples}
    assert releases == {"slow": 1, "status" if kind == "flask" else "exception": 1}


def test_stats_need_the_token(served: Any) -> None:
    _, get, _ = served()
    for call in ("stats", "stats/slow", "stats/sessions", "metrics"):
        assert get(f"/_hindsight/{call}").status_code == 401
