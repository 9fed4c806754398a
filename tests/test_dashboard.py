"""The dashboard page in a real headless Chromium, against real uvicorn and gunicorn servers."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, Request, expect, sync_playwright

from .servers import REPO, Server, free_port, gunicorn_argv, launch, uvicorn_argv, write_app

__all__ = ["launch"]

pytestmark = [pytest.mark.server, pytest.mark.timeout(120)]

TOKEN = "dash-token-5f2e9c"
WRONG = "not-the-token-71aa"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = REPO / "tests" / "artifacts" / "dashboard.png"
HOSTILE_USER = '<img src=x onerror="document.title=1">'
FAST = 5  # fast /items/1 requests; plus one slow /checkout and one failing /fail
FAST_USERS = [HOSTILE_USER, ".."]  # ".." cannot be a path segment: the page must cope

FLASK_APP = """
import logging
import os
import sys

from flask import Flask

from hindsight_web import HindsightWSGIMiddleware

logging.basicConfig(level=logging.INFO, stream=sys.stderr, format={FORMAT})
log = logging.getLogger("app")

app = Flask(__name__)
app.wsgi_app = HindsightWSGIMiddleware(
    app.wsgi_app, admin_token={TOKEN}, slow_ms=200, store={STORE}, stats_flush_s=0.2
)


@app.get("/hello/<int:n>")
def hello(n):
    log.debug("hello %d", n)
    return str(os.getpid())


@app.after_request
def pid(response):
    response.headers["x-pid"] = str(os.getpid())
    return response


@app.get("/broken")
def broken():
    log.debug("about to fail")
    return "broken", 500
"""


@dataclass
class Tab:
    """A browser page and what it did: the URLs it requested, its errors."""

    page: Page
    base_url: str
    requests: list[Request] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def open(self, path: str = "/_hindsight/") -> None:
        response = self.page.goto(self.base_url + path)
        assert response is not None
        assert response.status == 200
        assert response.headers["content-type"].startswith("text/html")

    def log_in(self, token: str = TOKEN) -> None:
        self.page.get_by_test_id("token").fill(token)
        self.page.get_by_test_id("token-submit").click()

    def check_clean(self) -> None:
        """No token in any URL, nothing fetched from elsewhere, no script or CSP errors."""
        assert self.requests, "the page requested nothing"
        for request in self.requests:
            assert TOKEN not in request.url
            assert WRONG not in request.url
            assert request.url.startswith(self.base_url + "/"), request.url
        assert self.errors == []


def admin(server: Server, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(
        method, f"{server.base_url}/_hindsight{path}", headers=AUTH, timeout=10, **kwargs
    )


def wait_for_requests(server: Server, count: int) -> None:
    """Statistics are recorded as each request ends: wait until all of them are in."""
    server.wait_for(
        lambda: admin(server, "GET", "/stats").json()["requests"] == count,
        f"{count} requests in /stats",
    )


def wait_for_published(server: Server, count: int) -> None:
    """On a shared store, wait until every worker's ``/stats`` counts `count` requests.

    A worker's ``/stats`` merges its own live statistics with the others' as last
    published (each worker publishes at a tick of its sync thread, every
    ``stats_flush_s``): the worker that served requests counts them at once, the
    others only once it has published them. ``/metrics`` counts only what every worker
    published, whichever answers it: when it counts `count`, so does the ``/stats`` of
    any worker, the one that answers the page included.
    """
    server.wait_for(
        lambda: published_requests(server) == count, f"{count} published requests in /metrics"
    )


def published_requests(server: Server) -> int:
    text = admin(server, "GET", "/metrics").text
    found = re.findall(r"^hindsight_requests_total\{[^}]*\} (\S+)$", text, re.MULTILINE)
    return sum(int(float(n)) for n in found)


def with_env(argv: Callable[[int], list[str]], **env: str) -> Callable[[int], list[str]]:
    """`argv` run through env(1): Server drops HINDSIGHT_ADMIN_TOKEN from its own env."""
    return lambda port: ["env", *(f"{k}={v}" for k, v in env.items()), *argv(port)]


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The FastAPI example app under uvicorn, after known traffic."""
    argv = with_env(
        uvicorn_argv(REPO, "examples.fastapi_app.app"),
        HINDSIGHT_ADMIN_TOKEN=TOKEN,
        HINDSIGHT_SLOW_MS="200",
    )
    port = free_port()
    server = Server(argv(port), tmp_path_factory.mktemp("shop"), "uvicorn")
    try:
        server.start(port)
        with httpx.Client(base_url=server.base_url, timeout=10) as client:
            for i in range(FAST):
                user = {"X-User": FAST_USERS[i]} if i < len(FAST_USERS) else {}
                assert client.get("/items/1", headers=user).status_code == 200
            slow = client.get("/checkout", params={"delay_ms": 400}, headers={"X-User": "alice"})
            assert slow.status_code == 200
            assert client.get("/fail", headers={"X-User": "bob"}).status_code == 500
        wait_for_requests(server, FAST + 2)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def tab_for(browser: Browser) -> Iterator[Callable[[Server], Tab]]:
    """A fresh browser context (empty sessionStorage) per tab, closed after the test."""
    contexts = []

    def make(server: Server) -> Tab:
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        contexts.append(context)
        tab = Tab(context.new_page(), server.base_url)
        tab.page.on("request", lambda request: tab.requests.append(request))
        tab.page.on("pageerror", lambda exc: tab.errors.append(f"page error: {exc}"))
        tab.page.on("dialog", lambda dialog: tab.errors.append(f"dialog: {dialog.message}"))
        tab.page.on(
            "console",
            lambda msg: tab.errors.append(msg.text) if "Security Policy" in msg.text else None,
        )
        return tab

    yield make
    for context in contexts:
        context.close()


def cells(page: Page, selector: str) -> list[str]:
    return page.locator(f"{selector} td").all_text_contents()


def test_dashboard_shows_totals_routes_requests_sessions(
    shop: Server, tab_for: Callable[[Server], Tab]
) -> None:
    tab = tab_for(shop)
    tab.open()
    page = tab.page
    expect(page.get_by_test_id("token-form")).to_be_visible()
    expect(page.locator("#dashboard")).to_be_hidden()
    tab.log_in()

    expect(page.get_by_test_id("total-requests")).to_have_text(str(FAST + 2))
    expect(page.get_by_test_id("total-errors")).to_have_text("1")
    expect(page.get_by_test_id("total-slow")).to_have_text("1")
    expect(page.get_by_test_id("total-releases")).to_have_text("2")
    expect(page.get_by_test_id("token-form")).to_be_hidden()

    # routes, slowest p95 first
    routes = page.locator("#routes tbody tr")
    expect(routes).to_have_count(3)
    expect(routes.first.locator("td").nth(1)).to_have_text("/checkout")
    expect(page.locator('#routes th[data-key="p95_ms"]')).to_have_attribute(
        "aria-sort", "descending"
    )

    # slowest requests: /checkout first, by alice, released because slow
    expect(page.locator("#slow tbody tr")).to_have_count(FAST + 2)
    first = cells(page, "#slow tbody tr:first-child")
    assert first[1:4] == ["GET", "/checkout", "/checkout"]
    assert first[4] == "200"
    assert first[7] == "alice"
    assert first[10] == "released (slow)"
    failed = page.locator("#slow tbody tr").filter(has_text="/fail")
    expect(failed.locator("td").nth(4)).to_have_text("raised RuntimeError")
    expect(failed.locator("td").nth(10)).to_have_text("released (exception)")

    # sessions: alice is the slowest, bob and the hostile user id are there as text
    expect(page.locator("#sessions tbody tr").first).to_have_attribute("data-user", "alice")
    expect(page.locator('#sessions tr[data-user="alice"] [data-testid="detail"]')).to_be_visible()
    expect(page.locator('#sessions tr[data-user="bob"]')).to_have_count(1)
    hostile = page.locator("#sessions tbody td").filter(has_text=HOSTILE_USER)
    expect(hostile.first).to_have_text(HOSTILE_USER)
    expect(page.locator("main img")).to_have_count(0)

    # histogram: one bar per bucket, labelled with the bounds, holding every request
    bars = page.get_by_test_id("histogram-bar")
    expect(bars).to_have_count(12)
    labels = page.locator("#histogram .label").all_text_contents()
    assert labels[0] == "\u2264 5 ms"
    assert labels[-1] == "> 10 s"
    counts = page.locator("#histogram .count").all_text_contents()
    assert sum(int(n) for n in counts) == FAST + 2

    # the recent window asks the API for it and shows the same traffic
    with page.expect_request(lambda r: "/stats/slow?limit=20&window=recent" in r.url):
        page.get_by_test_id("window").select_option("recent")
    expect(page.locator("#since")).to_contain_text("window recent")
    expect(page.get_by_test_id("since")).to_contain_text(", 1 process")
    expect(page.get_by_test_id("total-requests")).to_have_text(str(FAST + 2))

    api_calls = [r for r in tab.requests if "/_hindsight/" in r.url and r.resource_type == "fetch"]
    assert api_calls
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in api_calls)
    assert page.title() == "hindsight-web /_hindsight"
    tab.check_clean()


def test_routes_sort_by_clicked_header(shop: Server, tab_for: Callable[[Server], Tab]) -> None:
    tab = tab_for(shop)
    tab.open()
    tab.log_in()
    page = tab.page
    count_header = page.locator('#routes th[data-key="count"]')
    first_count = page.locator("#routes tbody tr:first-child td").nth(2)
    expect(page.locator("#routes tbody tr")).to_have_count(3)

    count_header.click()
    expect(count_header).to_have_attribute("aria-sort", "descending")
    expect(first_count).to_have_text(str(FAST))
    expect(page.locator("#routes tbody tr:first-child td").nth(1)).to_have_text("/items/{item_id}")

    count_header.click()
    expect(count_header).to_have_attribute("aria-sort", "ascending")
    expect(first_count).to_have_text("1")

    page.locator('#routes th[data-key="route"]').click()
    expect(page.locator("#routes tbody tr:first-child td").nth(1)).to_have_text("/checkout")
    tab.check_clean()


def test_detail_button_turns_on_detail_for_the_user(
    shop: Server, tab_for: Callable[[Server], Tab]
) -> None:
    tab = tab_for(shop)
    tab.open()
    tab.log_in()
    page = tab.page
    page.locator('#sessions tr[data-user="alice"] [data-testid="detail"]').click()
    expect(page.get_by_test_id("notice")).to_contain_text(
        "Detail logging on for user alice for 30 min"
    )
    try:
        rules = admin(shop, "GET", "/rules").json()["rules"]
        mine = [r for r in rules if r["action"] == "detail" and r["match"] == {"user_id": "alice"}]
        assert len(mine) == 1
        assert 0 < mine[0]["ttl_s"] <= 1800
        row = page.locator(f'#rules tr[data-rule-id="{mine[0]["id"]}"]')
        expect(row).to_contain_text('{"user_id":"alice"}')
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
        tab.check_clean()
    finally:
        admin(shop, "DELETE", "/users/alice/detail")


def test_detail_button_for_a_user_id_that_is_no_path_segment(
    shop: Server, tab_for: Callable[[Server], Tab]
) -> None:
    tab = tab_for(shop)
    tab.open()
    tab.log_in()
    page = tab.page
    page.locator('#sessions tr[data-user=".."] [data-testid="detail"]').click()
    expect(page.get_by_test_id("notice")).to_contain_text("Detail logging on for user ..")
    try:
        rules = admin(shop, "GET", "/rules").json()["rules"]
        mine = [r for r in rules if r["action"] == "detail" and r["match"] == {"user_id": ".."}]
        assert len(mine) == 1
        assert 0 < mine[0]["ttl_s"] <= 1800
        tab.check_clean()
    finally:
        for rule in admin(shop, "GET", "/rules").json()["rules"]:
            admin(shop, "DELETE", f"/rules/{rule['id']}")


def test_remove_button_removes_the_rule(shop: Server, tab_for: Callable[[Server], Tab]) -> None:
    rule = {"id": "dash-remove-me", "action": "release", "match": {"path": "/items/*"}}
    assert admin(shop, "POST", "/rules", json=rule | {"note": "remove me"}).status_code == 201
    try:
        tab = tab_for(shop)
        tab.open()
        tab.log_in()
        page = tab.page
        row = page.locator('#rules tr[data-rule-id="dash-remove-me"]')
        expect(row).to_contain_text("remove me")
        expect(row).to_contain_text("never")
        row.get_by_test_id("remove").click()
        expect(page.get_by_test_id("notice")).to_have_text("Removed rule dash-remove-me.")
        expect(row).to_have_count(0)
        assert admin(shop, "GET", "/rules/dash-remove-me").status_code == 404
        tab.check_clean()
    finally:
        admin(shop, "DELETE", "/rules/dash-remove-me")


def test_wrong_token_is_refused_and_asked_again(
    shop: Server, tab_for: Callable[[Server], Tab]
) -> None:
    tab = tab_for(shop)
    tab.open()
    page = tab.page
    tab.log_in(WRONG)
    expect(page.get_by_test_id("token-message")).to_contain_text("token was refused")
    expect(page.get_by_test_id("token-form")).to_be_visible()
    expect(page.locator("#dashboard")).to_be_hidden()
    assert page.evaluate("sessionStorage.length") == 0
    refused = [r for r in tab.requests if r.headers.get("authorization") == f"Bearer {WRONG}"]
    assert refused
    responses = [r.response() for r in refused]
    assert all(response is not None and response.status == 401 for response in responses)

    tab.log_in()
    expect(page.get_by_test_id("total-requests")).to_have_text(str(FAST + 2))
    tab.check_clean()


def test_token_kept_for_the_session_until_forgotten(
    shop: Server, tab_for: Callable[[Server], Tab]
) -> None:
    tab = tab_for(shop)
    tab.open()
    tab.log_in()
    page = tab.page
    expect(page.get_by_test_id("total-requests")).to_have_text(str(FAST + 2))

    page.reload()
    expect(page.get_by_test_id("total-requests")).to_have_text(str(FAST + 2))
    expect(page.get_by_test_id("token-form")).to_be_hidden()

    page.get_by_test_id("forget").click()
    expect(page.get_by_test_id("token-form")).to_be_visible()
    expect(page.get_by_test_id("token-message")).to_contain_text("Token forgotten")
    expect(page.locator("#dashboard")).to_be_hidden()
    expect(page.locator("#slow tbody tr")).to_have_count(0)
    assert page.evaluate("sessionStorage.length") == 0
    tab.check_clean()


def test_wsgi_page_under_gunicorn(
    launch: Callable[..., Server], tmp_path: Path, tab_for: Callable[[Server], Tab]
) -> None:
    store = f"sqlite:///{tmp_path}/hindsight.db"  # three workers share their statistics
    source = FLASK_APP.replace("{TOKEN}", repr(TOKEN)).replace("{STORE}", repr(store))
    write_app(tmp_path, "wsgi_app", source)
    server = launch(gunicorn_argv(tmp_path, "wsgi_app", workers=3), "gunicorn")
    served = set()  # the workers that served requests: their statistics are merged
    for n in range(3):
        with httpx.Client(base_url=server.base_url, timeout=10) as client:
            response = client.get(f"/hello/{n}", headers={"connection": "close"})
        assert response.status_code == 200
        served.add(response.text)
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        broken = client.get("/broken", headers={"connection": "close"})
    assert broken.status_code == 500
    served.add(broken.headers["x-pid"])
    wait_for_published(server, 4)  # the page's /stats may be answered by any worker

    tab = tab_for(server)
    tab.open("/_hindsight")  # no trailing slash: the API base is still /_hindsight
    tab.log_in()
    page = tab.page
    expect(page.get_by_test_id("total-requests")).to_have_text("4")
    expect(page.get_by_test_id("total-errors")).to_have_text("1")
    expect(page.get_by_test_id("total-releases")).to_have_text("1")
    expect(page.locator("#routes tbody tr")).to_have_count(2)
    routes = page.locator("#routes tbody td:nth-child(2)").all_text_contents()
    assert sorted(routes) == ["/broken", "/hello/<int:n>"]
    expect(page.locator("#slow tbody tr")).to_have_count(4)
    covered = "1 process" if len(served) == 1 else f"{len(served)} processes"
    expect(page.get_by_test_id("since")).to_contain_text(covered)
    tab.check_clean()
