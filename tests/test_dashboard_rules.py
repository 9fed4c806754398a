"""The dashboard's rule form, its remove buttons, the name signed in and the URL the page
was opened at, in a real headless Chromium against real uvicorn and gunicorn servers."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Page, Route, expect

from hindsight_web import dashboard

from .servers import REPO, Server, free_port, gunicorn_argv, uvicorn_argv, write_app
from .test_dashboard import Tab, browser, tab_for

__all__ = ["browser", "tab_for"]

pytestmark = [pytest.mark.server, pytest.mark.timeout(120)]

DESK = "desk-token-9c41e7a2b5"  # support-desk, read-write
VIEWER = "viewer-token-3d8f60c1"  # viewer, read-only
TOKENS = {"support-desk": DESK, "viewer": {"token": VIEWER, "access": "read-only"}}
SCREENSHOT = REPO / "tests" / "artifacts" / "dashboard-rule-form.png"
HOSTILE = '<img src=x onerror="window.pwned = 1">'
HOSTILE_SCRIPT = "<script>window.pwned = 2</script>"

FASTAPI_APP = """
import logging
import sys

from fastapi import FastAPI, Header
from fastapi.responses import PlainTextResponse

from hindsight_web import HindsightMiddleware, set_user

logging.basicConfig(level=logging.INFO, stream=sys.stderr, format={FORMAT})

app = FastAPI()


@app.get("/orders/{order_id}")
async def order(order_id: int, x_user: str | None = Header(default=None)) -> PlainTextResponse:
    if x_user:
        set_user(x_user)
    logging.getLogger("orders").debug("order %d", order_id)
    return PlainTextResponse("ok")


app.add_middleware(HindsightMiddleware, admin_tokens={TOKENS})
"""

FLASK_APP = """
import logging
import sys

from flask import Flask, request

from hindsight_web import HindsightWSGIMiddleware, set_user

logging.basicConfig(level=logging.INFO, stream=sys.stderr, format={FORMAT})

app = Flask(__name__)
app.wsgi_app = HindsightWSGIMiddleware(
    app.wsgi_app, admin_tokens={TOKENS}, store={STORE}, stats_flush_s=0.2
)


@app.get("/orders/<int:order_id>")
def order(order_id):
    if request.headers.get("x-user"):
        set_user(request.headers["x-user"])
    logging.getLogger("orders").debug("order %d", order_id)
    return "ok"
"""


def admin(server: Server, method: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {DESK}", "Connection": "close"}
    return httpx.request(
        method, f"{server.base_url}/_hindsight{path}", headers=headers, timeout=10, **kwargs
    )


def rules(server: Server) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = admin(server, "GET", "/rules").json()["rules"]
    return found


def remove_all_rules(server: Server) -> None:
    for rule in rules(server):
        admin(server, "DELETE", f"/rules/{rule['id']}")


def started(server: Server, port: int) -> Server:
    """`server` started, after two requests of a user (so that there is data to show)."""
    server.start(port)
    for n in (1, 2):
        response = httpx.get(
            f"{server.base_url}/orders/{n}",
            headers={"X-User": "carol", "Connection": "close"},
            timeout=10,
        )
        assert response.status_code == 200
    server.wait_for(
        lambda: admin(server, "GET", "/requests", params={"user_id": "carol"}).json()["requests"],
        "carol's requests in the window",
    )
    return server


@pytest.fixture(scope="module")
def uvicorn_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("named-uvicorn")
    write_app(workdir, "named_app", FASTAPI_APP.replace("{TOKENS}", repr(TOKENS)))
    port = free_port()
    server = Server(uvicorn_argv(workdir, "named_app")(port), workdir, "uvicorn")
    try:
        yield started(server, port)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def gunicorn_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Flask under gunicorn, two workers sharing their rules in SQLite."""
    workdir = tmp_path_factory.mktemp("named-gunicorn")
    store = f"sqlite:///{workdir}/hindsight.db"
    source = FLASK_APP.replace("{TOKENS}", repr(TOKENS)).replace("{STORE}", repr(store))
    write_app(workdir, "named_wsgi", source)
    port = free_port()
    server = Server(gunicorn_argv(workdir, "named_wsgi", workers=2)(port), workdir, "gunicorn")
    try:
        yield started(server, port)
    finally:
        server.stop()


@pytest.fixture(params=["uvicorn", "gunicorn"])
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    """Each server in turn, with no rule before and after the test."""
    server: Server = request.getfixturevalue(f"{request.param}_server")
    remove_all_rules(server)
    yield server
    remove_all_rules(server)


def signed_in(tab_for: Callable[[Server], Tab], server: Server, token: str = DESK) -> Page:
    tab = tab_for(server)
    tab.open()
    tab.log_in(token)
    expect(tab.page.get_by_test_id("who")).not_to_have_text("")
    return tab.page


def fill_rule(page: Page, **fields: str) -> None:
    """Fill the rule form (text fields not given are emptied, action is release unless
    given) and submit it."""
    page.get_by_test_id("rule-action").select_option(fields.pop("action", "release"))
    if "level" in fields:
        page.get_by_test_id("rule-level").select_option(fields.pop("level"))
    for name in ("ttl_s", "note", "id", "path", "method", "user_id", "session_id"):
        page.get_by_test_id(f"rule-{name}").fill(fields.pop(name, ""))
    for name in ("client_ip", "header", "status", "duration_ms"):
        page.get_by_test_id(f"rule-{name}").fill(fields.pop(name, ""))
    assert not fields, f"no such rule field: {fields}"
    page.get_by_test_id("rule-submit").click()


def api_error(server: Server, rule: dict[str, Any]) -> dict[str, str]:
    """What the API says of `rule`, field by field (it refuses it, so nothing is made)."""
    answer = admin(server, "POST", "/rules", json=rule)
    assert answer.status_code in (400, 422), answer.text
    return {d["field"]: d["error"] for d in answer.json()["details"]}


# -- the URL the page was opened at ---------------------------------------------------

OPENED_AT = [
    "//_hindsight/",
    "///_hindsight/",
    "/_hindsight//",
    "//_hindsight//?next=//evil.example/x#//evil.example/",
    "/./_hindsight/./",
    "/orders/../_hindsight/",
    "/%5Fhindsight/",
    "//%5fhindsight",
]


@pytest.mark.parametrize("path", OPENED_AT)
def test_the_page_calls_its_own_origin_whatever_url_it_was_opened_at(
    server: Server, tab_for: Callable[[Server], Tab], path: str
) -> None:
    tab = tab_for(server)
    tab.open(path)
    tab.log_in(DESK)
    page = tab.page
    expect(page.get_by_test_id("who")).to_have_text("signed in as support-desk (read-write)")
    expect(page.get_by_test_id("total-requests")).to_have_text(re.compile(r"^[1-9]\d*$"))
    expect(page.locator("#sessions tr[data-user=carol]")).to_have_count(1)

    # a rule added and removed: token-carrying calls of every method
    fill_rule(page, path="/orders/*", note="from " + path)
    expect(page.get_by_test_id("rule-answer")).to_contain_text("Added release rule")
    tab.answer = True
    page.get_by_test_id("remove").click()
    expect(page.get_by_test_id("notice")).to_contain_text("Removed rule")
    assert rules(server) == []

    origin = urlsplit(server.base_url)
    carrying = [r for r in tab.requests if "authorization" in r.headers]
    assert {r.method for r in carrying} >= {"GET", "POST", "DELETE"}
    for request in carrying:
        url = urlsplit(request.url)
        assert (url.scheme, url.netloc) == (origin.scheme, origin.netloc), request.url
        assert url.path.startswith("/_hindsight/"), request.url
        assert "//" not in url.path, request.url
        assert request.headers["authorization"] == f"Bearer {DESK}"
    tab.check_clean()


# -- the rule form ---------------------------------------------------------------------


def test_the_form_adds_a_release_rule_that_shows_in_the_list(
    server: Server, tab_for: Callable[[Server], Tab]
) -> None:
    page = signed_in(tab_for, server)
    expect(page.get_by_test_id("who")).to_have_text("signed in as support-desk (read-write)")
    expect(page.get_by_test_id("rule-level")).to_be_hidden()  # for detail rules only
    fill_rule(
        page,
        path="/orders/*",
        method="post",
        status="5xx",
        duration_ms="> 250",
        client_ip="10.0.0.0/8",
        header="X-Tenant: acme",
        ttl_s="600",
        note="ticket 4711",
    )
    answer = page.get_by_test_id("rule-answer")
    expect(answer).to_contain_text("Added release rule ")
    (rule,) = rules(server)
    expect(answer).to_have_text(f"Added release rule {rule['id']}.")
    assert rule["action"] == "release"
    assert rule["match"] == {
        "path": "/orders/*",
        "method": "POST",
        "client_ip": "10.0.0.0/8",
        "header": {"x-tenant": "acme"},
        "status": {"gte": 500, "lte": 599},
        "duration_ms": {"gt": 250},
    }
    assert 0 < rule["ttl_s"] <= 600
    assert rule["note"] == "ticket 4711"

    row = page.locator(f'#rules tr[data-rule-id="{rule["id"]}"]')
    expect(row).to_contain_text("ticket 4711")
    expect(row).to_contain_text('"path":"/orders/*"')
    expect(row).to_contain_text("min left")
    # the match fields are emptied for the next rule; the error places stay empty
    expect(page.get_by_test_id("rule-path")).to_have_value("")
    expect(page.get_by_test_id("rule-ttl_s")).to_have_value("600")
    expect(page.get_by_test_id("rule-error")).to_have_text("")
    (event, *_) = admin(server, "GET", "/audit").json()["events"]
    assert (event["action"], event["by"]) == ("added", "support-desk")


def test_the_form_adds_drop_and_detail_rules(
    server: Server, tab_for: Callable[[Server], Tab]
) -> None:
    page = signed_in(tab_for, server)
    fill_rule(page, action="drop", path="/health", id="no-health")
    expect(page.locator('#rules tr[data-rule-id="no-health"]')).to_contain_text("drop")

    page.get_by_test_id("rule-action").select_option("detail")
    expect(page.get_by_test_id("rule-level")).to_be_visible()
    fill_rule(page, action="detail", level="INFO", user_id="carol", ttl_s="1800")
    expect(page.get_by_test_id("rule-answer")).to_contain_text("Added detail rule ")
    made = {rule["action"]: rule for rule in rules(server)}
    assert made["drop"]["id"] == "no-health"
    assert made["drop"]["match"] == {"path": "/health"}
    assert made["drop"]["expires_at"] is None  # no ttl_s: until removed
    assert made["detail"]["match"] == {"user_id": "carol"}
    assert made["detail"]["level"] == "INFO"
    expect(page.locator(f'#rules tr[data-rule-id="{made["detail"]["id"]}"]')).to_contain_text(
        '{"user_id":"carol"}'
    )


def test_a_refused_rule_shows_the_apis_error_next_to_the_field(
    server: Server, tab_for: Callable[[Server], Tab]
) -> None:
    page = signed_in(tab_for, server)

    def error(name: str) -> Any:
        return page.get_by_test_id(f"rule-error-{name}")

    fill_rule(page, path="/orders/*", ttl_s="-1")
    expected = api_error(server, {"action": "release", "match": {"path": "/orders/*"}, "ttl_s": -1})
    expect(error("ttl_s")).to_have_text(expected["ttl_s"])
    expect(page.get_by_test_id("rule-ttl_s")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_test_id("rule-path")).not_to_have_attribute("aria-invalid", "true")
    expect(page.get_by_test_id("rule-answer")).to_have_text("")
    expect(page.get_by_test_id("rule-error")).to_have_text(
        "The rule was not added: see the fields marked."
    )
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert rules(server) == []

    # a detail rule may not use an end-time key: the status field says so
    fill_rule(page, action="detail", user_id="carol", status="500")
    expected = api_error(server, {"action": "detail", "match": {"user_id": "carol", "status": 500}})
    expect(error("status")).to_have_text(expected["match.status"])
    expect(error("status")).to_contain_text("not allowed in a 'detail' rule")
    expect(error("ttl_s")).to_have_text("")
    expect(page.get_by_test_id("rule-ttl_s")).not_to_have_attribute("aria-invalid", "true")

    # what the page cannot read goes as typed, and the API names the field
    fill_rule(page, path="/x", duration_ms="> fast", client_ip="nowhere", ttl_s="soon")
    expect(error("duration_ms")).to_have_text("expected a number")
    expect(error("client_ip")).to_contain_text("expected an IP address or CIDR network")
    expect(error("ttl_s")).not_to_have_text("")
    fill_rule(page, path="/x", status="abc")
    expect(error("status")).to_have_text("expected an HTTP status (an integer)")
    assert rules(server) == []

    # an id that is taken: 409, next to the id
    assert (
        admin(server, "POST", "/rules", json={"id": "taken", "action": "drop"}).status_code == 201
    )
    fill_rule(page, path="/x", id="taken")
    expect(error("id")).to_have_text("already taken")
    assert [rule["id"] for rule in rules(server)] == ["taken"]

    # once right, the errors go away
    fill_rule(page, path="/x", ttl_s="60")
    expect(page.get_by_test_id("rule-answer")).to_contain_text("Added release rule")
    for name in ("ttl_s", "status", "duration_ms", "client_ip", "id"):
        expect(error(name)).to_have_text("")
    expect(page.locator("#rule-form [aria-invalid]")).to_have_count(0)
    assert len(rules(server)) == 2


def test_a_rule_for_every_request_is_asked_about_first(
    server: Server, tab_for: Callable[[Server], Tab]
) -> None:
    tab = tab_for(server)
    tab.open()
    tab.log_in(DESK)
    page = tab.page
    tab.answer = False
    fill_rule(page, action="drop", ttl_s="60")
    expect(page.get_by_test_id("rule-submit")).to_be_enabled()
    assert tab.dialogs == ["This drop rule matches every request. Add it?"]
    assert not any(r.method == "POST" for r in tab.requests)

    tab.answer = True
    fill_rule(page, action="drop", ttl_s="60")
    expect(page.get_by_test_id("rule-answer")).to_contain_text("Added drop rule")
    (rule,) = rules(server)
    assert rule["match"] == {}
    tab.check_clean()


def test_remove_asks_first_then_removes_the_rule(
    server: Server, tab_for: Callable[[Server], Tab]
) -> None:
    rule = {"id": "remove-me", "action": "release", "match": {"path": "/orders/*"}}
    assert admin(server, "POST", "/rules", json=rule).status_code == 201
    tab = tab_for(server)
    tab.open()
    tab.log_in(DESK)
    page = tab.page
    row = page.locator('#rules tr[data-rule-id="remove-me"]')
    tab.answer = False
    row.get_by_test_id("remove").click()
    expect(row.get_by_test_id("remove")).to_be_enabled()
    assert tab.dialogs == ["Remove rule remove-me?"]
    assert [r["id"] for r in rules(server)] == ["remove-me"]
    assert not any(r.method == "DELETE" for r in tab.requests)

    tab.answer = True
    row.get_by_test_id("remove").click()
    expect(page.get_by_test_id("notice")).to_have_text("Removed rule remove-me.")
    expect(row).to_have_count(0)
    assert rules(server) == []
    (event, *_) = admin(server, "GET", "/audit").json()["events"]
    assert (event["action"], event["by"]) == ("removed", "support-desk")
    tab.check_clean()


def test_a_read_only_token_sees_its_name_and_cannot_change_anything(
    server: Server, tab_for: Callable[[Server], Tab]
) -> None:
    rule = {"id": "look-only", "action": "release", "match": {"path": "/orders/*"}}
    assert admin(server, "POST", "/rules", json=rule).status_code == 201
    tab = tab_for(server)
    tab.open()
    tab.log_in(VIEWER)
    page = tab.page
    expect(page.get_by_test_id("who")).to_have_text("signed in as viewer (read-only)")
    expect(page.get_by_test_id("read-only")).to_be_visible()
    expect(page.get_by_test_id("rule-form")).to_be_hidden()
    row = page.locator('#rules tr[data-rule-id="look-only"]')
    expect(row.get_by_test_id("remove")).to_be_disabled()
    expect(page.locator("#sessions tr[data-user=carol] [data-testid=detail]")).to_be_disabled()
    page.get_by_test_id("search-user_id").fill("carol")
    page.get_by_test_id("search-submit").click()
    expect(page.get_by_test_id("release")).to_be_disabled()
    assert [r["id"] for r in rules(server)] == ["look-only"]
    assert all(r.method == "GET" for r in tab.requests)

    # signed in again with a read-write token: the name changes, the form shows
    page.get_by_test_id("forget").click()
    expect(page.get_by_test_id("who")).to_have_text("")
    tab.log_in(DESK)
    expect(page.get_by_test_id("who")).to_have_text("signed in as support-desk (read-write)")
    expect(page.get_by_test_id("rule-form")).to_be_visible()
    expect(page.get_by_test_id("read-only")).to_be_hidden()
    expect(row.get_by_test_id("remove")).to_be_enabled()
    tab.check_clean()


def test_a_403_is_shown_under_the_form(server: Server, tab_for: Callable[[Server], Tab]) -> None:
    tab = tab_for(server)

    def claim_read_write(route: Route) -> None:  # as if the token lost its write access
        route.fulfill(
            status=200,
            content_type="application/json",
            body=json.dumps({"name": "viewer", "access": "read-write"}),
        )

    tab.page.route("**/_hindsight/whoami", claim_read_write)
    tab.open()
    tab.log_in(VIEWER)
    page = tab.page
    expect(page.get_by_test_id("rule-form")).to_be_visible()
    fill_rule(page, path="/orders/*")
    expect(page.get_by_test_id("rule-error")).to_have_text(
        "POST /rules: the read-only token 'viewer' may only make GET calls"
    )
    expect(page.get_by_test_id("token-form")).to_be_hidden()  # still signed in
    assert rules(server) == []
    tab.check_clean()


def test_hostile_text_in_a_rule_is_shown_as_text(
    server: Server, tab_for: Callable[[Server], Tab]
) -> None:
    tab = tab_for(server)
    tab.open()
    tab.log_in(DESK)
    page = tab.page
    fill_rule(page, path=HOSTILE, user_id=HOSTILE_SCRIPT, note=HOSTILE + HOSTILE_SCRIPT)
    expect(page.get_by_test_id("rule-answer")).to_contain_text("Added release rule")
    (rule,) = rules(server)
    assert rule["note"] == HOSTILE + HOSTILE_SCRIPT
    row = page.locator(f'#rules tr[data-rule-id="{rule["id"]}"]')
    expect(row.locator("td").nth(5)).to_have_text(HOSTILE + HOSTILE_SCRIPT)
    expect(row.locator("td").nth(2)).to_have_text(json.dumps(rule["match"], separators=(",", ":")))

    # an error that quotes what was typed: as text too
    fill_rule(page, path=HOSTILE, header=HOSTILE)
    expect(page.get_by_test_id("rule-error-header")).not_to_have_text("")
    expect(page.locator("img")).to_have_count(0)
    expect(page.locator("main script, header script")).to_have_count(0)
    page.wait_for_timeout(300)  # an image that failed would have run its handler by now
    assert page.evaluate("window.pwned") is None
    tab.check_clean()


# -- the page's own policy -----------------------------------------------------------


def test_the_pages_policy_allows_its_own_script_by_its_hash() -> None:
    text = dashboard.page("/_hindsight").decode()
    script = text[text.index("<script>") + len("<script>") : text.index("</script>")]
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    (policy,) = re.findall(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)">', text)
    assert policy == dashboard.CSP
    assert f"script-src 'sha256-{digest}';" in policy
    assert "unsafe-inline" not in policy.split("script-src")[1].split(";")[0]


def test_no_other_script_runs_in_the_page(server: Server, tab_for: Callable[[Server], Tab]) -> None:
    page = signed_in(tab_for, server)
    tab_errors: list[str] = []
    page.on("console", lambda msg: tab_errors.append(msg.text))
    page.evaluate(
        """() => {
        const script = document.createElement("script");
        script.textContent = "window.pwned = 3";
        document.body.append(script);
        const img = document.createElement("img");
        img.setAttribute("onerror", "window.pwned = 4");
        img.src = "data:,not-an-image";
        document.body.append(img);
      }"""
    )
    page.wait_for_timeout(300)
    assert page.evaluate("window.pwned") is None
    assert sum("Security Policy" in text for text in tab_errors) >= 2, tab_errors
    expect(page.get_by_test_id("total-requests")).to_have_text(re.compile(r"^[1-9]\d*$"))
