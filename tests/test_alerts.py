"""Alerts: webhook targets checked at start, alerts POSTed alone to a real local endpoint,
retried, dropped, failed and counted; ``send`` never blocks."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hindsight_web.alerts import Alerts, parse_alerts

from .conftest import ListHandler
from .sink_servers import Receiver, self_signed

PAYLOAD = {
    "rule": "brute-force",
    "key_name": "client_ip",
    "key": "203.0.113.9",
    "count": 10,
    "window_s": 60,
    "request_ids": ["r1", "r2"],
}
TEXT = "hindsight: rule brute-force fired for client_ip=203.0.113.9 (10 in 60 s)"


def target(url: str, **options: Any) -> dict[str, Any]:
    return {"id": "security", "type": "webhook", "url": url, **options}


def state_of(alerts: Alerts) -> dict[str, Any]:
    (state,) = alerts.state()
    return state


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def reported(out: ListHandler) -> list[str]:
    """The errors hindsight reported through its own logger."""
    return [
        r.getMessage()
        for r in out.records
        if r.name == "hindsight_web" and r.levelno >= logging.ERROR
    ]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver().start()
    yield server
    server.gate.set()
    server.stop()


# -- configuration ------------------------------------------------------------------------


def test_a_target_gets_the_documented_defaults() -> None:
    assert parse_alerts(None) == []
    assert parse_alerts([target("https://hooks.example.com/T0")]) == [
        {
            "id": "security",
            "type": "webhook",
            "url": "https://hooks.example.com/T0",
            "headers": {},
            "verify": True,
            "timeout_s": 10.0,
            "retry_s": 300.0,
            "max_queued": 1000,
        }
    ]


URL = "https://hooks.example.com/T0"


@pytest.mark.parametrize(
    ("alerts", "field", "expected"),
    [
        ("nope", "'alerts'", "a list of alert target objects"),
        ({"id": "security"}, "'alerts'", "a list of alert target objects"),
        (["security"], "'alerts[0]'", "an object"),
        ([{"id": "security", "type": "webhook"}], "'alerts[0].url'", "http:// or https://"),
        ([target("ftp://hooks.example.com/")], "'alerts[0].url'", "http:// or https://"),
        ([target(URL, headers={"bad name": "x"})], "'alerts[0].headers'", "a header name"),
        ([target(URL, headers={"X-Key": "a\nb"})], "'alerts[0].headers.X-Key'", "line breaks"),
        ([target(URL, colour="red")], "'alerts[0].colour'", "allowed keys: id, type, url"),
        ([target(URL), target(URL)], "'alerts[1].id'", "another alert target"),
        ([target(URL, retry_s=-1)], "'alerts[0].retry_s'", "a number >= 0"),
        ([target(URL, retry_s="soon")], "'alerts[0].retry_s'", "a number >= 0"),
        ([target(URL, timeout_s=0)], "'alerts[0].timeout_s'", "a number > 0"),
        ([target(URL, max_queued=0)], "'alerts[0].max_queued'", "from 1 to 1000000"),
        ([target(URL, max_queued=1_000_001)], "'alerts[0].max_queued'", "from 1 to 1000000"),
        ([target(URL, type="slack")], "'alerts[0].type'", "'webhook'"),
        ([{"id": "security", "url": URL}], "'alerts[0].type'", "'webhook'"),
        ([target(URL, id="two words")], "'alerts[0].id'", "letters, digits"),
        ([target(URL, verify="/no/ca.pem")], "'alerts[0].verify'", "CA bundle"),
    ],
)
def test_a_bad_target_is_a_value_error_naming_the_field(
    alerts: Any, field: str, expected: str
) -> None:
    pattern = rf"{re.escape(field)}.*{re.escape(expected)}"
    with pytest.raises(ValueError, match=pattern):
        parse_alerts(alerts)
    with pytest.raises(ValueError, match=pattern):
        Alerts(alerts)


def test_errors_name_the_place_the_targets_came_from() -> None:
    with pytest.raises(ValueError, match=re.escape("'rules.json alerts[0].url'")):
        parse_alerts([target("mailto:x")], "rules.json alerts")


def test_a_target_that_does_not_verify_tls_is_warned_about(out: ListHandler) -> None:
    Alerts([target("https://u:pw@hooks.example.com/T0?k=1", verify=False)])
    assert out.messages() == [
        "alert target 'security' sends to hooks.example.com/T0 without verifying its TLS "
        "certificate ('verify': false)"
    ]


# -- delivery -----------------------------------------------------------------------------


def test_an_alert_is_posted_alone_as_an_object_with_a_text_line(receiver: Receiver) -> None:
    alerts = Alerts([target(receiver.url, headers={"Authorization": "Bearer hook-secret"})])
    assert alerts.ids == ("security",)
    payload = dict(PAYLOAD)
    assert alerts.send("security", payload)
    assert alerts.flush(10)
    assert receiver.bodies == [{**PAYLOAD, "text": TEXT}]
    assert payload == PAYLOAD  # the caller's object is left as it was
    assert receiver.headers[0]["authorization"] == "Bearer hook-secret"
    assert receiver.headers[0]["content-type"] == "application/json"
    assert alerts.state() == [
        {
            "id": "security",
            "type": "webhook",
            "url": receiver.url,
            "queued": 0,
            "sent": 1,
            "dropped": 0,
            "failed": 0,
            "retries": 0,
            "last_error": None,
            "last_error_at": None,
        }
    ]
    assert alerts.counters() == {
        "alert_sent:security": 1,
        "alert_dropped:security": 0,
        "alert_failed:security": 0,
        "alert_queued:security": 0,
        "alerts_unknown": 0,
    }


@pytest.mark.parametrize(
    ("payload", "text"),
    [
        ({"text": "Own words", "rule": "r"}, "Own words"),
        ({"rule": "r"}, "hindsight: rule r fired"),
        ({"rule": "r", "key": "alice", "count": 3}, "hindsight: rule r fired for alice (3)"),
        ({"rule": "r", "count": 5, "window_s": 0.5}, "hindsight: rule r fired (5 in 0.5 s)"),
        (
            {"rule": "r", "key_name": "field.x", "key": "a\nb"},
            "hindsight: rule r fired for field.x=a b",
        ),
        ({}, "hindsight: alert"),
    ],
)
def test_the_text_line_says_what_fired(
    receiver: Receiver, payload: dict[str, Any], text: str
) -> None:
    alerts = Alerts([target(receiver.url)])
    assert alerts.send("security", payload)
    assert alerts.flush(10)
    assert receiver.bodies == [{**payload, "text": text}]


def test_a_5xx_is_retried_and_the_alert_delivered_once(receiver: Receiver) -> None:
    receiver.statuses = [500]
    alerts = Alerts([target(receiver.url)])
    assert alerts.send("security", PAYLOAD)
    assert alerts.flush(30)
    assert receiver.posts == 2
    assert receiver.bodies == [{**PAYLOAD, "text": TEXT}]
    state = state_of(alerts)
    assert (state["sent"], state["retries"], state["failed"]) == (1, 1, 0)
    assert "HTTP 500" in state["last_error"]


def test_a_4xx_fails_the_alert_at_once(receiver: Receiver) -> None:
    receiver.statuses = [400]
    alerts = Alerts([target(receiver.url)])
    assert alerts.send("security", {"n": 1})
    assert alerts.flush(10)
    state = state_of(alerts)
    assert (state["sent"], state["retries"], state["failed"]) == (0, 0, 1)
    assert "HTTP 400" in state["last_error"]
    assert state["last_error_at"] is not None
    assert receiver.bodies == []
    assert alerts.send("security", {"n": 2})  # the next one goes through
    assert alerts.flush(10)
    assert [body["n"] for body in receiver.bodies] == [2]


def test_a_target_down_then_back_within_retry_s_gets_the_alert(receiver: Receiver) -> None:
    receiver.stop()
    alerts = Alerts([target(receiver.url, retry_s=60, timeout_s=2)])
    assert alerts.send("security", PAYLOAD)
    wait_until(lambda: state_of(alerts)["retries"] >= 1)
    assert state_of(alerts)["sent"] == 0
    receiver.start()
    assert alerts.flush(30)
    assert receiver.bodies == [{**PAYLOAD, "text": TEXT}]
    state = state_of(alerts)
    assert (state["sent"], state["failed"], state["queued"]) == (1, 0, 0)


def test_a_target_down_beyond_retry_s_fails_the_alert_without_blocking_send(
    receiver: Receiver, out: ListHandler
) -> None:
    receiver.stop()
    alerts = Alerts([target(receiver.url, retry_s=1.5, timeout_s=1)])
    for n in range(2):
        started = time.perf_counter()
        assert alerts.send("security", {"n": n})
        assert time.perf_counter() - started < 0.05
    assert alerts.flush(30)
    state = state_of(alerts)
    assert (state["sent"], state["failed"], state["queued"]) == (0, 2, 0)
    assert "gave up after 1.5 s" in state["last_error"]
    assert state["last_error_at"] is not None
    assert alerts.counters()["alert_failed:security"] == 2
    lines = reported(out)
    assert len(lines) == 1  # reported once, then only counted
    assert "alert:security" in lines[0]


def test_an_overflowing_queue_drops_counts_and_reports_once(
    receiver: Receiver, out: ListHandler
) -> None:
    receiver.gate.clear()  # the receiver holds every POST
    alerts = Alerts([target(receiver.url, max_queued=2, timeout_s=30)])
    assert alerts.send("security", {"n": 0})
    wait_until(lambda: receiver.posts == 1)  # the first is on its way, two more fit
    sent = [alerts.send("security", {"n": n}) for n in range(1, 10)]
    assert sent == [True, True] + [False] * 7
    state = state_of(alerts)
    assert (state["dropped"], state["queued"], state["sent"]) == (7, 3, 0)
    counters = alerts.counters()
    assert (counters["alert_dropped:security"], counters["alert_queued:security"]) == (7, 3)
    lines = reported(out)
    assert len(lines) == 1
    assert "alert:security" in lines[0]
    receiver.gate.set()
    assert alerts.flush(30)
    assert [body["n"] for body in receiver.bodies] == [0, 1, 2]
    assert state_of(alerts)["sent"] == 3


def test_an_unknown_target_is_refused_and_counted(receiver: Receiver, out: ListHandler) -> None:
    alerts = Alerts([target(receiver.url)])
    assert alerts.send("nope", PAYLOAD) is False
    assert alerts.send("nope", PAYLOAD) is False
    assert alerts.flush(10)
    assert alerts.counters()["alerts_unknown"] == 2
    assert state_of(alerts)["sent"] == 0
    assert receiver.posts == 0
    lines = reported(out)
    assert len(lines) == 1
    assert "alerts" in lines[0]
    none = Alerts()
    assert none.ids == ()
    assert none.send("security", PAYLOAD) is False
    assert none.counters() == {"alerts_unknown": 1}
    assert none.state() == []


def test_a_payload_that_cannot_be_encoded_is_refused_not_raised(receiver: Receiver) -> None:
    alerts = Alerts([target(receiver.url)])
    assert alerts.send("security", {("a", "tuple"): "key"}) is False  # type: ignore[dict-item]
    assert alerts.send("security", None) is False  # type: ignore[arg-type]
    assert alerts.flush(10)
    assert receiver.posts == 0


def test_flush_waits_until_the_alert_is_settled(receiver: Receiver) -> None:
    receiver.gate.clear()
    alerts = Alerts([target(receiver.url, timeout_s=30)])
    assert alerts.send("security", PAYLOAD)
    started = time.monotonic()
    assert not alerts.flush(0.3)
    assert time.monotonic() - started >= 0.25
    assert state_of(alerts)["queued"] == 1
    receiver.gate.set()
    assert alerts.flush(10)
    assert len(receiver.bodies) == 1
    assert state_of(alerts)["queued"] == 0


def test_the_alert_threads_requests_stay_out_of_the_apps_log(
    receiver: Receiver, out: ListHandler
) -> None:
    alerts = Alerts([target(receiver.url)])
    assert alerts.send("security", PAYLOAD)
    assert alerts.flush(10)
    assert len(receiver.bodies) == 1
    assert out.lines == []  # httpx logs each POST at INFO, the root logs INFO


def test_state_hides_url_credentials_and_query(receiver: Receiver) -> None:
    url = f"http://user:pw@127.0.0.1:{receiver.port}/ingest?token=secret"
    alerts = Alerts([target(url)])
    assert state_of(alerts)["url"] == f"http://127.0.0.1:{receiver.port}/ingest"


def test_https_targets_verify_the_certificate(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server = Receiver(tls=(cert, key)).start()
    try:
        alerts = Alerts(
            [
                {"id": "strict", "type": "webhook", "url": server.url},
                {"id": "trusted", "type": "webhook", "url": server.url, "verify": str(cert)},
            ]
        )
        assert alerts.send("strict", {"to": "strict"})
        assert alerts.send("trusted", {"to": "trusted"})
        assert alerts.flush(10)
        strict, trusted = alerts.state()
        assert (strict["failed"], strict["retries"]) == (1, 0)
        assert "certificate" in strict["last_error"].lower()
        assert (trusted["sent"], trusted["failed"]) == (1, 0)
        assert [body["to"] for body in server.bodies] == ["trusted"]
    finally:
        server.stop()


def test_a_forked_child_starts_with_a_queue_of_its_own(receiver: Receiver) -> None:
    receiver.gate.clear()
    alerts = Alerts([target(receiver.url, timeout_s=30)])
    assert alerts.send("security", {"from": "parent"})
    wait_until(lambda: receiver.posts == 1)  # the parent's alert is in flight
    pid = os.fork()
    if pid == 0:  # the child: report by exit code only
        code = 1
        try:
            code = 2 if state_of(alerts)["queued"] else 3
            if code == 3 and alerts.send("security", {"from": "child"}) and alerts.flush(30):
                state = state_of(alerts)
                code = 0 if (state["sent"], state["queued"]) == (1, 0) else 4
        finally:
            os._exit(code)
    receiver.gate.set()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert alerts.flush(10)
    assert sorted(body["from"] for body in receiver.bodies) == ["child", "parent"]
    assert state_of(alerts)["sent"] == 1
