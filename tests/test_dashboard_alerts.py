"""The dashboard's Alerts panel, the alert targets, the count and tag rules in the rules
panel and the Tags table, in a real headless Chromium against a real uvicorn whose app
sends its alerts to real webhook receivers (one takes them, one refuses them).

The client addresses that count rules count come from X-Forwarded-For (uvicorn trusts
it from 127.0.0.1); each test uses its own rules and addresses.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from playwright.sync_api import Route, expect

from .servers import Server
from .sink_servers import Receiver, alerting_app
from .test_dashboard import AUTH, TOKEN, Tab, browser, tab_for

__all__ = ["browser", "tab_for"]

pytestmark = [pytest.mark.server, pytest.mark.timeout(120)]

HOSTILE = '<img src=x onerror="window.pwned = 1">'


@dataclass
class Watched:
    """The app's server and the receivers behind its alert targets."""

    server: Server
    security: Receiver  # takes every alert
    pager: Receiver  # refuses every alert (404: failed at once)

    def admin(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        url = f"{self.server.base_url}/_hindsight{path}"
        return httpx.request(method, url, headers=AUTH, timeout=10, **kwargs)

    def add_rule(self, rule: dict[str, Any]) -> None:
        response = self.admin("POST", "/rules", json=rule)
        assert response.status_code == 201, response.text

    def get(self, client: str, rid: str | None = None, **query: str | int) -> None:
        """GET /login from `client`, answered with ``status`` (200); `query` may also give
        ``user``, ``delay_ms``, ``case`` (sent as X-Case, for rules to match on)."""
        headers = {"X-Forwarded-For": client}
        if rid is not None:
            headers["X-Request-ID"] = rid
        if "case" in query:
            headers["X-Case"] = str(query.pop("case"))
        url = f"{self.server.base_url}/login"
        response = httpx.get(url, params=query, headers=headers, timeout=10)
        assert response.status_code == int(query.get("status", 200))

    def wait_until(self, path: str, done: Callable[[Any], bool], what: str) -> Any:
        """The answer of ``GET path`` once `done` holds: a count fires within
        ``store_sync_s``, an alert is posted from a thread."""
        deadline = time.monotonic() + 10
        while True:
            answer = self.admin("GET", path).json()
            if done(answer):
                return answer
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}: {answer}")
            time.sleep(0.1)


@pytest.fixture(scope="module")
def watched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Watched]:
    with alerting_app(tmp_path_factory.mktemp("alerts"), TOKEN) as (server, security, pager):
        yield Watched(server, security, pager)


def signed_in(tab_for: Callable[[Server], Tab], watched: Watched) -> Tab:
    tab = tab_for(watched.server)
    tab.open()
    tab.log_in()
    expect(tab.page.get_by_test_id("who")).not_to_have_text("")
    return tab


def firing(answer: dict[str, Any], rule_id: str) -> dict[str, Any] | None:
    found = [fired for fired in answer["alerts"] if fired["rule"] == rule_id]
    return found[0] if found else None


def target(answer: dict[str, Any], target_id: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [t for t in answer["targets"] if t["id"] == target_id]
    assert len(found) == 1, answer
    return found[0]


def rule_of(answer: dict[str, Any], rule_id: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [r for r in answer["rules"] if r["id"] == rule_id]
    assert len(found) == 1, answer
    return found[0]


def test_a_firing_shows_its_key_count_and_sample_requests_that_open(
    watched: Watched, tab_for: Callable[[Server], Tab]
) -> None:
    watched.add_rule(
        {
            "id": "dash-brute",
            "action": "count",
            "match": {"status": 401},
            "key": "client_ip",
            "threshold": 3,
            "window_s": 60,
            "then": [{"action": "detail", "ttl_s": 600}, {"alert": "security"}],
        }
    )
    rids = [f"dash-brute-{n}" for n in range(3)]
    for rid in rids:
        watched.get("203.0.113.9", rid, status=401)
    watched.get("198.51.100.1", status=401)  # another key, below the threshold
    answer = watched.wait_until(
        "/alerts", lambda a: firing(a, "dash-brute") is not None, "the firing"
    )
    fired = firing(answer, "dash-brute")
    assert fired is not None
    assert all(sample.get("link") for sample in fired["samples"])

    tab = signed_in(tab_for, watched)
    page = tab.page
    rows = page.locator('#alerts tr[data-rule="dash-brute"]')
    expect(rows).to_have_count(1)
    cells = rows.locator("td")
    expect(cells).to_have_count(7)
    expect(cells.nth(0).locator("time")).to_have_attribute("datetime", fired["at"])
    assert [cells.nth(i).text_content() for i in range(1, 6)] == [
        "dash-brute",
        "client_ip=203.0.113.9",
        "3 / 3",
        "1 min",
        "dash-brute.detail.203.0.113.9",
    ]
    expect(
        page.locator('#alerts tr[data-rule="dash-brute"][data-key="198.51.100.1"]')
    ).to_have_count(0)
    links = rows.get_by_test_id("open-sample")
    expect(links).to_have_text(rids)
    expect(page.get_by_test_id("alerts-caption")).to_contain_text("The newest firings")

    # a sample opens as any request of the window: its facts and its records
    links.nth(1).click()
    expect(page.get_by_test_id("request-title")).to_have_text("Request dash-brute-1")
    facts = page.get_by_test_id("request-facts")
    expect(facts).to_contain_text("/login")
    expect(facts).to_contain_text("401")
    expect(facts).to_contain_text("203.0.113.9")
    expect(page.locator("#records tbody td:nth-child(4)")).to_have_text(["login attempt"])
    assert any(r.url.endswith("/_hindsight/requests/dash-brute-1") for r in tab.requests)

    # the detail rule it made is in the rules panel
    expect(page.locator('#rules tr[data-rule-id="dash-brute.detail.203.0.113.9"]')).to_contain_text(
        '{"client_ip":"203.0.113.9"}'
    )
    tab.check_clean()


def test_a_failing_target_shows_its_error_and_refresh_updates_it(
    watched: Watched, tab_for: Callable[[Server], Tab]
) -> None:
    rule = {"action": "count", "match": {"status": 403}, "key": "client_ip", "threshold": 1}
    watched.add_rule({"id": "dash-pager", **rule, "window_s": 60, "then": [{"alert": "pager"}]})
    watched.get("192.0.2.7", status=403)
    answer = watched.wait_until(
        "/alerts", lambda a: target(a, "pager")["failed"] == 1, "the pager's failure"
    )
    pager = target(answer, "pager")
    assert "HTTP 404" in pager["last_error"]
    assert watched.pager.posts >= 1

    tab = signed_in(tab_for, watched)
    page = tab.page
    row = page.locator('#alert-targets tr[data-target="pager"]')
    cells = row.locator("td")
    expect(cells).to_have_count(9)
    expect(cells.nth(8)).to_contain_text(pager["last_error"])
    shown = [cells.nth(i).text_content() for i in range(8)]
    assert shown == ["pager", "webhook", watched.pager.url, "0", "0", "1", "0", "0"]
    error = row.get_by_test_id("last-error")
    expect(error).to_have_class("error")
    expect(error.locator("time")).to_have_attribute("datetime", pager["last_error_at"])
    security = page.locator('#alert-targets tr[data-target="security"]')
    expect(security.locator("td").nth(8)).to_have_text("\u2013")
    expect(security.get_by_test_id("last-error")).to_have_count(0)

    # another firing fails too: the next refresh shows it
    watched.get("192.0.2.8", status=403)
    watched.wait_until("/alerts", lambda a: target(a, "pager")["failed"] == 2, "a second failure")
    page.get_by_test_id("refresh").click()
    expect(cells.nth(5)).to_have_text("2")
    expect(page.locator('#alerts tr[data-rule="dash-pager"]')).to_have_count(2)
    keys = page.locator('#alerts tr[data-rule="dash-pager"] td:nth-child(3)')
    expect(keys).to_have_text(["client_ip=192.0.2.8", "client_ip=192.0.2.7"])  # newest first
    tab.check_clean()


def test_the_rules_panel_shows_count_rules_top_keys_and_tag_rules_tags(
    watched: Watched, tab_for: Callable[[Server], Tab]
) -> None:
    watched.add_rule(
        {
            "id": "dash-top",
            "action": "count",
            "match": {"header": {"x-case": "dash-top"}},
            "key": "client_ip",
            "threshold": 100,
            "window_s": 600,
            "then": [{"action": "detail", "ttl_s": 900}, {"alert": "security"}],
        }
    )
    tags = {"compliance": "pci", "team": "payments"}
    watched.add_rule({"id": "dash-pci", "action": "tag", "match": {"path": "/x"}, "tags": tags})
    watched.add_rule({"id": "dash-plain", "action": "release", "match": {"path": "/x"}})
    for client, times in (("198.51.100.4", 4), ("198.51.100.5", 2)):
        for _ in range(times):
            watched.get(client, case="dash-top")
    expected = [{"key": "198.51.100.4", "count": 4}, {"key": "198.51.100.5", "count": 2}]
    watched.wait_until(
        "/rules", lambda a: rule_of(a, "dash-top").get("top_keys") == expected, "the top keys"
    )

    tab = signed_in(tab_for, watched)
    page = tab.page
    top = page.locator('#rules tr[data-rule-id="dash-top"]')
    expect(top.get_by_test_id("rule-counts")).to_have_text(
        "client_ip: 100 in 10 min, then detail 15 min, alert security"
    )
    expect(top.get_by_test_id("top-key")).to_have_text(["198.51.100.4 (4)", "198.51.100.5 (2)"])
    pci = page.locator('#rules tr[data-rule-id="dash-pci"]')
    expect(pci.get_by_test_id("rule-tags")).to_have_text("compliance=pci, team=payments")
    expect(pci.locator("td").nth(6)).to_have_text("compliance=pci, team=payments")
    expect(page.locator('#rules tr[data-rule-id="dash-plain"] td').nth(6)).to_have_text("\u2013")

    # more of one key: the next refresh orders the keys again
    for _ in range(3):
        watched.get("198.51.100.5", case="dash-top")
    watched.wait_until(
        "/rules",
        lambda a: rule_of(a, "dash-top").get("top_keys", [{}])[0].get("count") == 5,
        "the new top key",
    )
    page.get_by_test_id("refresh").click()
    expect(top.get_by_test_id("top-key")).to_have_text(["198.51.100.5 (5)", "198.51.100.4 (4)"])
    tab.check_clean()


def test_the_tags_table_counts_requests_errors_and_slow_ones_per_value(
    watched: Watched, tab_for: Callable[[Server], Tab]
) -> None:
    for plan in ("gold", "silver"):
        match = {"header": {"x-case": f"dash-plan-{plan}"}}
        watched.add_rule(
            {"id": f"dash-{plan}", "action": "tag", "match": match, "tags": {"plan": plan}}
        )
    watched.get("192.0.2.20", case="dash-plan-gold")
    watched.get("192.0.2.20", case="dash-plan-gold", status=503)
    watched.get("192.0.2.20", case="dash-plan-gold", status=503)
    watched.get("192.0.2.20", case="dash-plan-gold", delay_ms=300)
    watched.get("192.0.2.20", case="dash-plan-silver")
    watched.get("192.0.2.20", case="dash-plan-bronze")  # no rule tags it

    def plans(answer: dict[str, Any]) -> dict[str, list[int]]:
        return {
            t["value"]: [t["requests"], t["errors"], t["slow"]]
            for t in answer["tags"]
            if t["tag"] == "plan"
        }

    watched.wait_until(
        "/stats/tags",
        lambda a: plans(a) == {"gold": [4, 2, 1], "silver": [1, 0, 0]},
        "the tag counts",
    )
    tab = signed_in(tab_for, watched)
    page = tab.page
    rows = page.locator('#tags tr[data-tag="plan"]')
    expect(rows).to_have_count(2)
    expect(rows.nth(0).locator("td")).to_have_text(["plan", "gold", "4", "2", "1"])
    expect(rows.nth(1).locator("td")).to_have_text(["plan", "silver", "1", "0", "0"])
    expect(page.get_by_test_id("tags-caption")).to_contain_text("since start, in 1 process.")
    tab.check_clean()


def test_a_hostile_key_and_tag_are_shown_as_text(
    watched: Watched, tab_for: Callable[[Server], Tab]
) -> None:
    case = {"header": {"x-case": "dash-hostile"}}
    watched.add_rule(
        {
            "id": "dash-hostile",
            "action": "count",
            "match": case,
            "key": "user_id",
            "threshold": 2,
            "window_s": 60,
            "then": [{"alert": "security"}],
        }
    )
    watched.add_rule(
        {"id": "dash-hostile-tag", "action": "tag", "match": case, "tags": {"label": HOSTILE}}
    )
    for _ in range(2):
        watched.get("192.0.2.30", case="dash-hostile", user=HOSTILE)
    watched.wait_until("/alerts", lambda a: firing(a, "dash-hostile") is not None, "the firing")

    tab = signed_in(tab_for, watched)
    page = tab.page
    row = page.locator('#alerts tr[data-rule="dash-hostile"]')
    expect(row.locator("td").nth(2)).to_have_text("user_id=" + HOSTILE)
    expect(row).to_have_attribute("data-key", HOSTILE)
    top = page.locator('#rules tr[data-rule-id="dash-hostile"]')
    expect(top.get_by_test_id("top-key")).to_have_text([HOSTILE + " (2)"])
    tagged = page.locator('#tags tr[data-tag="label"]')
    expect(tagged.locator("td").nth(1)).to_have_text(HOSTILE)
    expect(page.locator('#rules tr[data-rule-id="dash-hostile-tag"]')).to_contain_text(
        "label=" + HOSTILE
    )
    expect(page.locator("img")).to_have_count(0)
    page.wait_for_timeout(300)  # an image that failed would have run its handler by now
    assert page.evaluate("window.pwned") is None
    tab.check_clean()


def test_a_sample_out_of_the_window_has_no_link_and_stale_answers_say_so(
    watched: Watched, tab_for: Callable[[Server], Tab]
) -> None:
    """Samples without a ``link`` (the window no longer holds them) are ids only; an
    answer marked stale says so (both made up here: the store of a real app is up)."""
    answer = {
        "alerts": [
            {
                "at": "2026-11-30T14:00:05.000Z",
                "rule": "made-up",
                "note": None,
                "key_name": "session_id",
                "key": "s-1",
                "count": 12,
                "threshold": 10,
                "window_s": 7200.0,
                "first": "2026-11-30T13:00:00.000Z",
                "last": "2026-11-30T14:00:04.000Z",
                "fired_at": "2026-11-30T14:00:05.000Z",
                "samples": [
                    {"request_id": "gone-1", "at": "2026-11-30T13:00:00.000Z"},
                    {"request_id": "kept-2", "at": "2026-11-30T14:00:04.000Z", "link": "/x"},
                ],
                "dry_run": True,
                "made": [],
            }
        ],
        "targets": [],
        "stale": True,
    }

    def made_up(route: Route) -> None:
        route.fulfill(status=200, content_type="application/json", body=json.dumps(answer))

    tab = tab_for(watched.server)
    tab.page.route("**/_hindsight/alerts?*", made_up)
    tab.open()
    tab.log_in()
    page = tab.page
    row = page.locator('#alerts tr[data-rule="made-up"]')
    cells = row.locator("td")
    expect(cells.nth(1)).to_have_text("made-up (dry run: nothing done)")
    expect(cells.nth(3)).to_have_text("12 / 10")
    expect(cells.nth(4)).to_have_text("2 h")
    expect(cells.nth(5)).to_have_text("\u2013")
    expect(row.get_by_test_id("sample")).to_have_text(["gone-1"])
    expect(row.get_by_test_id("open-sample")).to_have_text(["kept-2"])
    expect(page.get_by_test_id("alerts-caption")).to_contain_text("The store cannot be read")
    expect(page.locator("#alert-targets tbody td")).to_have_text(
        "no alert targets: the app's alerts option names none"
    )
    tab.check_clean()
