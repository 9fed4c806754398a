"""The dashboard page in a real headless Chromium, against real uvicorn and gunicorn servers."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Dialog, Page, Request, expect, sync_playwright

from hindsight_web.stats import RequestRecord, Stats
from hindsight_web.stats_view import StatsView, decode, encode

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
SCREENSHOT_WINDOW = REPO / "tests" / "artifacts" / "dashboard-window.png"
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


ORDERS_APP = """
import logging
import sys

from fastapi import FastAPI, Header
from fastapi.responses import PlainTextResponse

from hindsight_web import HindsightMiddleware, set_user

logging.basicConfig(level=logging.INFO, stream=sys.stderr, format={FORMAT})
log = logging.getLogger("orders")

app = FastAPI()


@app.get("/orders/{order_id}")
async def order(order_id: int, x_user: str | None = Header(default=None)) -> PlainTextResponse:
    if x_user:
        set_user(x_user)
    log.debug("loading order %d for %s", order_id, x_user)
    log.debug("order %d has 3 lines", order_id)
    return PlainTextResponse("ok")


@app.get("/pay")
async def pay(x_user: str | None = Header(default=None)) -> PlainTextResponse:
    if x_user:
        set_user(x_user)
    log.debug("card declined by the bank")
    return PlainTextResponse("declined", status_code=500)


app.add_middleware(HindsightMiddleware, admin_token={TOKEN}, slow_ms=5000)
"""
# The traffic the orders server has when its tests start: (user, path, status).
ORDERS_TRAFFIC = [
    ("carol", "/orders/1", 200),
    ("carol", "/orders/2", 200),
    ("dave", "/orders/7", 200),
    ("erin", "/pay", 500),
    (None, "/orders/3", 200),
    (None, "/orders/4", 200),
]


@dataclass
class Tab:
    """A browser page and what it did: the URLs it requested, its errors, its dialogs.

    A dialog is an error unless `answer` says how to answer it (True: accept, False:
    dismiss); then its text is kept in `dialogs`.
    """

    page: Page
    base_url: str
    requests: list[Request] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    answer: bool | None = None

    def on_dialog(self, dialog: Dialog) -> None:
        if self.answer is None:
            self.errors.append(f"dialog: {dialog.message}")
        else:
            self.dialogs.append(dialog.message)
        if self.answer:
            dialog.accept()
        else:
            dialog.dismiss()

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
        context = browser.new_context(
            viewport={"width": 1400, "height": 1000}, locale="en-GB", timezone_id="UTC"
        )
        contexts.append(context)
        tab = Tab(context.new_page(), server.base_url)
        tab.page.on("request", lambda request: tab.requests.append(request))
        tab.page.on("pageerror", lambda exc: tab.errors.append(f"page error: {exc}"))
        tab.page.on("dialog", tab.on_dialog)
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
        tab.answer = True
        row.get_by_test_id("remove").click()
        expect(page.get_by_test_id("notice")).to_have_text("Removed rule dash-remove-me.")
        expect(row).to_have_count(0)
        assert tab.dialogs == ["Remove rule dash-remove-me?"]
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

    # the chart merges the minutes of every worker that served requests
    expect(page.get_by_test_id("chart-caption")).to_contain_text(f": 4 requests in {covered}.")
    counts = page.get_by_test_id("chart-bar").evaluate_all(
        "bars => bars.map(b => Number(b.dataset.requests))"
    )
    assert sum(counts) == 4
    expect(page.get_by_test_id("chart-point")).not_to_have_count(0)

    # the window of every worker: the recent 500, a search, its release
    broken_row = page.locator("#recent tbody tr").filter(has_text="/broken")
    expect(broken_row).to_contain_text("500")
    expect(broken_row).to_contain_text("released (status)")
    search(page, path="/hello/*")
    expect(page.locator("#found tbody tr")).to_have_count(3)
    # the workers that served requests answer (one that served none has nothing to say)
    expect(page.get_by_test_id("search-summary")).to_have_text(
        f"3 requests found in the window of {covered}; 3 not released."
    )
    hello = window_requests(server, path="/hello/*")
    page.locator("#found [data-testid=open-request]").first.click()
    expect(page.locator("#records tbody td:nth-child(4)")).to_have_text(["hello 2"])
    tab.answer = True
    page.get_by_test_id("release").click()
    expect(page.get_by_test_id("release-answer")).to_have_text(f"released 3 in {covered}")
    assert tab.dialogs == [
        "Release 3 requests that this search found? "
        "Their records are written to the application's log now."
    ]
    wanted = {r["request_id"]: "DEBUG app hello " + r["path"].rsplit("/", 1)[1] for r in hello}
    server.wait_for(
        lambda: all(line in texts(server, rid) for rid, line in wanted.items()),
        "the records of the requests released",
    )
    tab.check_clean()


# -- the window: search, one request, release, recent errors, the chart ----------------


def window_requests(server: Server, **filters: str) -> list[dict[str, Any]]:
    """What ``GET /requests`` finds in the window with `filters`, newest first."""
    response = admin(server, "GET", "/requests", params={**filters, "limit": "1000"})
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["requests"]
    return found


def wait_in_window(server: Server, count: int, **filters: str) -> list[dict[str, Any]]:
    """A request is in the window once it ended, just after its answer was sent."""
    server.wait_for(
        lambda: len(window_requests(server, **filters)) == count,
        f"{count} requests in the window with {filters}",
    )
    return window_requests(server, **filters)


def texts(server: Server, rid: str) -> list[str]:
    """The lines of the app's log format the server wrote for request `rid`."""
    return [line.text for line in server.lines_of(rid)]


def get_as(
    server: Server, path: str, user: str | None, request_id: str | None = None
) -> httpx.Response:
    headers = {"X-User": user} if user is not None else {}
    if request_id is not None:
        headers["X-Request-ID"] = request_id
    return httpx.get(server.base_url + path, headers=headers, timeout=10)


@pytest.fixture(scope="module")
def orders(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A FastAPI app under uvicorn whose window holds `ORDERS_TRAFFIC`."""
    workdir = tmp_path_factory.mktemp("orders")
    write_app(workdir, "orders_app", ORDERS_APP.replace("{TOKEN}", repr(TOKEN)))
    port = free_port()
    server = Server(uvicorn_argv(workdir, "orders_app")(port), workdir, "uvicorn")
    try:
        server.start(port)
        for user, path, status in ORDERS_TRAFFIC:
            assert get_as(server, path, user).status_code == status
        wait_in_window(server, len(ORDERS_TRAFFIC))
        yield server
    finally:
        server.stop()


def search(page: Page, **filters: str) -> None:
    """Fill the search form (fields not given are emptied) and submit it."""
    for name in ("user_id", "path", "status", "message", "since", "until"):
        page.get_by_test_id(f"search-{name}").fill(filters.pop(name, ""))
    assert not filters, f"no such search field: {filters}"
    page.get_by_test_id("search-submit").click()


def row_cells(page: Page, row: str) -> dict[str, str]:
    """The cells of a row of the found or recent requests, by column."""
    columns = ["time", "request id", "method", "path", "status", "duration", "user", "records"]
    texts = page.locator(f"{row} td").all_text_contents()
    return dict(zip([*columns, "released"], texts, strict=True))


def test_search_by_user_finds_the_request_and_shows_its_records(
    orders: Server, tab_for: Callable[[Server], Tab]
) -> None:
    (dave,) = window_requests(orders, user_id="dave")
    tab = tab_for(orders)
    tab.open()
    tab.log_in()
    page = tab.page
    search(page, user_id="dave")
    expect(page.get_by_test_id("search-summary")).to_have_text(
        "1 request found in the window of 1 process; 1 not released."
    )
    rows = page.locator("#found tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-request-id", dave["request_id"])
    cells = row_cells(page, "#found tbody tr")
    assert cells["path"] == "/orders/7"
    assert cells["status"] == "200"
    assert cells["user"] == "dave"
    assert cells["records"] == "2"
    assert cells["released"] == "no"
    expect(page.get_by_test_id("release")).to_have_text("release 1 request")
    assert any("/_hindsight/requests?user_id=dave&" in r.url for r in tab.requests)

    rows.first.get_by_test_id("open-request").click()
    expect(page.get_by_test_id("request-title")).to_have_text(f"Request {dave['request_id']}")
    facts = page.get_by_test_id("request-facts")
    expect(facts).to_contain_text("/orders/{order_id}")
    expect(facts).to_contain_text("dave")
    records = page.locator("#records tbody tr")
    expect(records).to_have_count(2)
    messages = page.locator("#records tbody td:nth-child(4)").all_text_contents()
    assert messages == ["loading order 7 for dave", "order 7 has 3 lines"]
    assert page.locator("#records tbody td:nth-child(2)").all_text_contents() == ["DEBUG"] * 2
    assert page.locator("#records tbody td:nth-child(3)").all_text_contents() == ["orders"] * 2
    where = page.locator("#records tbody td:nth-child(5)").all_text_contents()
    assert all(re.fullmatch(r".*orders_app\.py:\d+ in order", w) for w in where), where

    # the other filters: a glob path and a status class, a substring of a message
    search(page, path="/orders/*", status="2xx", since="-10m")
    orders_found = window_requests(orders, path="/orders/*", status="2xx", since="-10m")
    assert len(orders_found) >= 4
    expect(page.locator("#found tbody tr")).to_have_count(len(orders_found))
    search(page, message="order 7 has")
    expect(page.locator("#found tbody tr")).to_have_count(1)
    expect(page.locator("#found tbody tr").first).to_have_attribute(
        "data-request-id", dave["request_id"]
    )
    search(page, user_id="nobody")
    expect(page.get_by_test_id("search-summary")).to_have_text(
        "0 requests found in the window of 1 process."
    )
    expect(page.locator("#found tbody td")).to_have_text("no request in the window matches")
    expect(page.get_by_test_id("release")).to_be_hidden()

    search(page, user_id="dave")
    page.locator("#found [data-testid=open-request]").click()
    expect(records).to_have_count(2)
    SCREENSHOT_WINDOW.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT_WINDOW), full_page=True)
    tab.check_clean()


def test_a_request_whose_id_is_no_plain_path_segment_opens_too(
    orders: Server, tab_for: Callable[[Server], Tab]
) -> None:
    # X-Request-ID is trusted: a client may send an id with "/" in it, or ".."
    assert get_as(orders, "/orders/11", "frank", request_id="trace/11").status_code == 200
    assert get_as(orders, "/orders/12", "gina", request_id="..").status_code == 200
    wait_in_window(orders, 1, user_id="frank")
    wait_in_window(orders, 1, user_id="gina")
    tab = tab_for(orders)
    tab.open()
    tab.log_in()
    page = tab.page

    search(page, user_id="frank")  # "/" travels escaped in one segment (uvicorn keeps it)
    page.locator('#found tr[data-request-id="trace/11"] [data-testid=open-request]').click()
    expect(page.get_by_test_id("request-title")).to_have_text("Request trace/11")
    expect(page.locator("#records tbody td:nth-child(4)")).to_have_text(
        ["loading order 11 for frank", "order 11 has 3 lines"]
    )

    search(page, user_id="gina")  # ".." cannot be a path segment: the facts only
    page.locator('#found tr[data-request-id=".."] [data-testid=open-request]').click()
    expect(page.get_by_test_id("request-title")).to_have_text("Request ..")
    expect(page.get_by_test_id("request-facts")).to_contain_text("/orders/12")
    expect(page.get_by_test_id("request-note")).to_have_text(
        "Its records cannot be shown: its id cannot be part of a path to this server."
    )
    expect(page.get_by_test_id("records")).to_be_hidden()
    tab.check_clean()


def test_release_button_releases_what_the_search_found(
    orders: Server, tab_for: Callable[[Server], Tab]
) -> None:
    found = window_requests(orders, user_id="carol")
    assert [r["path"] for r in found] == ["/orders/2", "/orders/1"]
    tab = tab_for(orders)
    tab.open()
    tab.log_in()
    page = tab.page
    search(page, user_id="carol")
    expect(page.get_by_test_id("search-summary")).to_have_text(
        "2 requests found in the window of 1 process; 2 not released."
    )
    # a request of carol's after the search is not one that the search found
    assert get_as(orders, "/orders/9", "carol").status_code == 200
    (late, *_) = wait_in_window(orders, 3, user_id="carol")
    assert late["path"] == "/orders/9"

    tab.answer = True
    page.get_by_test_id("release").click()
    expect(page.get_by_test_id("release-answer")).to_have_text("released 2 in 1 process")
    assert tab.dialogs == [
        "Release 2 requests that this search found? "
        "Their records are written to the application's log now."
    ]

    # each one's records and its summary (reason: retro) in the server's output
    rids = [request["request_id"] for request in found]
    orders.wait_for(lambda: all(orders.summaries(rid) for rid in rids), "the summaries")
    for request in found:
        rid = request["request_id"]
        (summary,) = orders.summaries(rid)
        assert summary["reason"] == "retro"
        assert summary["path"] == request["path"]
        number = request["path"].rsplit("/", 1)[1]
        lines = texts(orders, rid)
        assert f"DEBUG orders loading order {number} for carol" in lines
        assert f"DEBUG orders order {number} has 3 lines" in lines
    assert orders.lines_of(late["request_id"]) == []
    assert [r["released"] for r in window_requests(orders, user_id="carol")] == [
        False,
        True,
        True,
    ]
    (event, *_) = admin(orders, "GET", "/audit").json()["events"]
    assert event["action"] == "released"
    assert event["count"] == 2
    assert event["query"]["match"] == {"user_id": "carol"}

    # the search, asked again, shows them released, and the later one not
    expect(page.get_by_test_id("search-summary")).to_have_text(
        "3 requests found in the window of 1 process; 1 not released."
    )
    released = page.locator("#found tbody td:nth-child(9)")
    expect(released).to_have_text(["no", "released (retro)", "released (retro)"])
    expect(page.get_by_test_id("release")).to_have_text("release 1 request")
    expect(page.locator("#recent tbody tr").filter(has_text="/orders/1")).to_contain_text(
        "released (retro)"
    )
    post = [r for r in tab.requests if r.method == "POST" and r.url.endswith("/release")]
    assert len(post) == 1
    tab.check_clean()


def test_release_can_be_called_off(orders: Server, tab_for: Callable[[Server], Tab]) -> None:
    tab = tab_for(orders)
    tab.open()
    tab.log_in()
    page = tab.page
    search(page, path="/orders/3")
    expect(page.get_by_test_id("release")).to_have_text("release 1 request")
    tab.answer = False
    page.get_by_test_id("release").click()
    expect(page.get_by_test_id("release")).to_be_enabled()
    expect(page.get_by_test_id("release-answer")).to_have_text("")
    assert tab.dialogs == [
        "Release 1 request that this search found? "
        "Their records are written to the application's log now."
    ]
    (request,) = window_requests(orders, path="/orders/3")
    assert request["released"] is False
    assert not any(r.method == "POST" for r in tab.requests)
    tab.check_clean()


def test_bad_filter_shows_the_error_next_to_the_form(
    orders: Server, tab_for: Callable[[Server], Tab]
) -> None:
    tab = tab_for(orders)
    tab.open()
    tab.log_in()
    page = tab.page
    error = page.get_by_test_id("search-error")
    search(page, status="abc")
    expect(error).to_have_text(
        "status: expected a status (500), a class (5xx) or a range (400-499)"
    )
    expect(page.get_by_test_id("search-status")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_test_id("search-user_id")).not_to_have_attribute("aria-invalid", "true")
    expect(page.get_by_test_id("release")).to_be_hidden()
    expect(page.locator("#found tbody tr")).to_have_count(0)

    search(page, since="yesterday")
    expect(error).to_contain_text("since: expected ISO 8601")
    expect(page.get_by_test_id("search-since")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_test_id("search-status")).not_to_have_attribute("aria-invalid", "true")

    search(page, since="-5m", until="-10m")
    expect(error).to_have_text("until: earlier than 'since'")

    search(page, user_id="dave", since="-5m")
    expect(error).to_have_text("")
    expect(page.locator("#found tbody tr")).to_have_count(1)
    expect(page.get_by_test_id("search-since")).not_to_have_attribute("aria-invalid", "true")
    expect(page.get_by_test_id("notice")).to_have_text("")
    tab.check_clean()


def test_recent_errors_and_releases_list_the_500(
    orders: Server, tab_for: Callable[[Server], Tab]
) -> None:
    (pay,) = window_requests(orders, path="/pay")
    tab = tab_for(orders)
    tab.open()
    tab.log_in()
    page = tab.page
    row = page.locator(f'#recent tr[data-request-id="{pay["request_id"]}"]')
    expect(row).to_have_count(1)
    cells = row_cells(page, f'#recent tr[data-request-id="{pay["request_id"]}"]')
    assert cells["path"] == "/pay"
    assert cells["status"] == "500"
    assert cells["user"] == "erin"
    assert cells["released"] == "released (status)"
    expect(page.get_by_test_id("total-errors")).to_have_text("1")
    # the requests that went well and were not released are not in the list
    expect(page.locator("#recent tbody tr").filter(has_text="/orders/4")).to_have_count(0)

    row.get_by_test_id("open-request").click()
    expect(page.get_by_test_id("request-title")).to_have_text(f"Request {pay['request_id']}")
    expect(page.get_by_test_id("request-facts")).to_contain_text("released (status)")
    expect(page.get_by_test_id("request-note")).to_have_text(
        "The window no longer holds its records: they were written to the application's log "
        "when it was released."
    )
    expect(page.get_by_test_id("records")).to_be_hidden()
    page.get_by_test_id("request-close").click()
    expect(page.get_by_test_id("request")).to_be_hidden()
    tab.check_clean()


def test_chart_shows_requests_and_p95_per_minute_on_a_time_axis(
    orders: Server, tab_for: Callable[[Server], Tab]
) -> None:
    tab = tab_for(orders)
    tab.open()
    tab.log_in()
    page = tab.page
    bars = page.get_by_test_id("chart-bar")
    expect(bars).to_have_count(15)
    now = time.time()
    recent = admin(orders, "GET", "/stats", params={"window": "recent"}).json()["requests"]
    counts = [int(n or 0) for n in bars.evaluate_all("bars => bars.map(b => b.dataset.requests)")]
    assert sum(counts) == recent
    expect(page.get_by_test_id("chart-caption")).to_have_text(
        f"Requests (bars) and p95 latency (line) per minute over the last 15 min: "
        f"{recent} requests in 1 process."
    )

    # the time axis: minutes, oldest first, ending with the minute of now (or the one before)
    ticks = page.get_by_test_id("time-tick")
    starts = ticks.evaluate_all("ticks => ticks.map(t => t.dataset.at)")
    labels = ticks.all_text_contents()
    assert len(labels) == 8
    moments = [datetime.fromisoformat(at.replace("Z", "+00:00")) for at in starts]
    assert moments == sorted(moments)
    assert all(m.second == 0 and m.microsecond == 0 for m in moments)
    assert [m.strftime("%H:%M") for m in moments] == labels  # the page shows UTC here
    minute = datetime.fromtimestamp(now - now % 60, timezone.utc)
    assert (minute - moments[-1]).total_seconds() in (0, 60)
    assert (moments[-1] - moments[0]).total_seconds() == 14 * 60

    # a p95 point on every minute that had requests, none on the others
    points = page.get_by_test_id("chart-point")
    busy = sum(1 for n in counts if n)
    expect(points).to_have_count(busy)
    p95 = [float(v) for v in points.evaluate_all("ps => ps.map(p => p.dataset.p95)")]
    assert all(v > 0 for v in p95)
    timeline = admin(orders, "GET", "/stats/timeline").json()
    assert [s["p95_ms"] for s in timeline["slots"] if s["p95_ms"] is not None][-busy:] == p95
    tab.check_clean()


def test_chart_data_merges_every_process_minute_by_minute() -> None:
    """What the chart draws (``GET /stats/timeline``): the minutes of two processes,
    through the store's encoding, are those of one process that served both."""
    start = 60.0 * 29_000_000  # a minute starts here
    now = [start]
    first, second, both = (Stats(clock=lambda: now[0]) for _ in range(3))
    traffic = [  # (minute, process, duration_ms, status)
        (0, first, 12.0, 200),
        (0, second, 40.0, 500),
        (0, first, 18.0, 200),
        (2, second, 250.0, 200),
        (2, first, 7.0, 200),
        (5, first, 90.0, 200),
    ]
    for i, (minute, stats, ms, status) in enumerate(traffic):
        now[0] = start + 60 * minute + 10 + i
        for recorder in (stats, both):
            recorder.record(
                RequestRecord(
                    request_id=f"r{i}",
                    method="GET",
                    path="/x",
                    route="/x",
                    status=status,
                    duration_ms=ms,
                    at=now[0],
                    errored=status >= 500,
                )
            )
    now[0] = start + 60 * 6 + 30  # in the 7th minute, which has no request yet
    exports = [decode(encode(stats.export())) for stats in (first, second)]
    merged = StatsView(exports, now=now[0]).timeline()
    alone = StatsView([both.export()], now=now[0]).timeline()
    assert merged["slots"] == alone["slots"]
    assert merged["processes"] == 2
    assert merged["slot_s"] == 60.0

    slots = merged["slots"]
    assert len(slots) == 15
    moments = [datetime.fromisoformat(s["at"].replace("Z", "+00:00")).timestamp() for s in slots]
    assert moments == [start + 60 * (m - 8) for m in range(15)]  # 14 minutes back, then now's
    assert merged["since"] == slots[0]["at"]
    assert [s["requests"] for s in slots[8:]] == [3, 0, 2, 0, 0, 1, 0]
    assert [s["errors"] for s in slots[8:]] == [1, 0, 0, 0, 0, 0, 0]
    p95 = [s["p95_ms"] for s in slots]
    assert p95[:8] == [None] * 8
    assert [p95[i] is None for i in range(8, 15)] == [False, True, False, True, True, False, True]
    assert p95[8] == pytest.approx(40.0, rel=1 / 32)
    assert p95[10] == pytest.approx(250.0, rel=1 / 32)
    assert slots[13]["max_ms"] == 90.0

    # an export of a version that kept no minutes: still covered, no minutes of its own
    older = decode(encode(first.export()))
    del older["recent"]["slots"]
    without = StatsView([older, exports[1]], now=now[0]).timeline()
    assert without["processes"] == 2
    assert [s["requests"] for s in without["slots"][8:]] == [1, 0, 1, 0, 0, 0, 0]
