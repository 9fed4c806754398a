"""The admin HTTP API (DESIGN.md, "Admin HTTP API" and "Rules"), through both adapters.

Every in-process test runs twice: a FastAPI app behind HindsightMiddleware (httpx.ASGITransport)
and a Flask app behind HindsightWSGIMiddleware (httpx.WSGITransport). The path tricks run
against real uvicorn and gunicorn processes, since httpx would normalise the paths.
"""

from __future__ import annotations

import base64
import io
import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from flask import Flask
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.test import Client as WerkzeugClient

import hindsight_web
from hindsight_web import Hindsight, HindsightMiddleware, HindsightWSGIMiddleware, hash_session
from hindsight_web.asgi import AdminASGIApp
from hindsight_web.wsgi import AdminWSGIApp

from .admin_apps import (
    ADMIN,
    GUNICORN_APP,
    READ_TOKEN,
    TOKEN,
    UNSET,
    UVICORN_APP,
    AppClient,
    chunks_of,
    log,
    make_client,
    raw_request,
)
from .conftest import ListHandler
from .servers import Server, free_port, gunicorn_argv, uvicorn_argv, write_app

Make = Callable[..., AppClient]


@pytest.fixture(autouse=True)
def _no_token_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HINDSIGHT_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("HINDSIGHT_ADMIN_READ_TOKEN", raising=False)


@pytest.fixture(params=["fastapi", "flask"])
def adapter(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def make(adapter: str) -> Iterator[Make]:
    """`make(**options)`: the adapter's app with a Hindsight(admin_token=TOKEN, **options)."""
    made: list[AppClient] = []

    def build(**options: Any) -> AppClient:
        options.setdefault("admin_token", TOKEN)
        client = make_client(adapter, Hindsight(**options))
        made.append(client)
        return client

    yield build
    for client in made:
        client.close()


# -- helpers ---------------------------------------------------------------------------------------


def names_field(details: list[dict[str, str]], field: str | set[str]) -> bool:
    """Whether a detail names `field` (or one of them), or a part of it (`field.x`, `field[0]`)."""
    wanted = {field} if isinstance(field, str) else field
    return any(
        d["field"] == f or d["field"].startswith((f + ".", f + "["))
        for d in details
        for f in wanted
    )


def assert_error(
    response: httpx.Response, status: int, field: str | set[str] | None = None
) -> dict[str, Any]:
    """An error answer: `status`, a JSON body {"error": str, "details": [...]} naming `field`."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    assert b"<html" not in response.content.lower()
    body: dict[str, Any] = response.json()
    assert set(body) == {"error", "details"}, body
    assert isinstance(body["error"], str)
    assert body["error"]
    assert isinstance(body["details"], list)
    for detail in body["details"]:
        assert isinstance(detail, dict)
        assert isinstance(detail.get("field"), str)
        assert isinstance(detail.get("error"), str)
    if field is not None:
        assert names_field(body["details"], field), body
    return body


def summaries(out: ListHandler) -> list[str]:
    return [m for m in out.messages() if m.startswith("hindsight release:")]


def app_lines(out: ListHandler) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in out.records if r.name == "app"]


def released(out: ListHandler, rid: str) -> tuple[str, list[str]]:
    """The one summary of request `rid`, and the messages written after it for that request."""
    index = [
        i
        for i, r in enumerate(out.records)
        if r.name == "hindsight_web" and f"request_id={rid} " in r.getMessage()
    ]
    assert len(index) == 1, out.messages()
    after = [
        r.getMessage() for r in out.records[index[0] + 1 :] if getattr(r, "request_id", None) == rid
    ]
    return out.records[index[0]].getMessage(), after


def epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def lifetime(rule: dict[str, Any]) -> float:
    return epoch(rule["expires_at"]) - epoch(rule["created_at"])


def post_rule(client: AppClient, rule: dict[str, Any]) -> dict[str, Any]:
    response = client.admin("POST", "/rules", json_body=rule)
    assert response.status_code == 201, response.text
    stored: dict[str, Any] = response.json()
    return stored


def without_ttl(rule: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in rule.items() if k != "ttl_s"}


# -- GET /health -----------------------------------------------------------------------------------


def test_health(make: Make) -> None:
    client = make()
    response = client.admin("GET", "/health")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {
        "status": "ok",
        "version": hindsight_web.__version__,
        "build": "compiled" if hindsight_web.__compiled__ else "pure",
        "store": "memory://",
    }


# -- rules: add, read, remove ----------------------------------------------------------------------

FULL_RULE: dict[str, Any] = {
    "id": "full-1",
    "action": "release",
    "match": {
        "method": ["POST", "PUT"],
        "path": "/checkout/*",
        "route": "/checkout/{step}",
        "user_id": "u1",
        "session_id": hash_session("s1"),
        "client_ip": "10.0.0.0/8",
        "header": {"x-tenant": "acme"},
        "status": {"gte": 500},
        "duration_ms": {"gt": 300},
        "message": "timeout",
    },
    "level": "INFO",
    "starts_at": "2098-01-01T00:00:00Z",
    "expires_at": "2099-01-01T00:00:00Z",
    "priority": 5,
    "sample_rate": 0.25,
    "dry_run": True,
    "note": "ticket 4711",
}


def test_post_rule_accepts_every_key_and_returns_the_stored_form(make: Make) -> None:
    client = make()
    before = time.time()
    response = client.admin("POST", "/rules", json_body=FULL_RULE)
    after = time.time()
    assert response.status_code == 201, response.text
    assert response.headers["content-type"].startswith("application/json")
    stored = response.json()
    for key, value in FULL_RULE.items():
        assert stored[key] == value, key
    assert before - 1 <= epoch(stored["created_at"]) <= after + 1
    assert without_ttl(client.admin("GET", "/rules/full-1").json()) == without_ttl(stored)
    assert client.rules() == [without_ttl(stored)]


def test_post_rule_with_ttl_gets_an_id_and_an_expiry(make: Make) -> None:
    client = make()
    with_ttl = post_rule(client, {"action": "drop", "match": {"path": "/health"}, "ttl_s": 3600})
    assert isinstance(with_ttl["id"], str)
    assert with_ttl["id"]
    assert lifetime(with_ttl) == pytest.approx(3600, abs=0.01)
    assert with_ttl["level"] == "DEBUG"
    assert with_ttl["priority"] == 0
    assert with_ttl["sample_rate"] == 1.0
    assert with_ttl["dry_run"] is False
    assert with_ttl["note"] is None
    forever = post_rule(client, {"action": "release"})
    assert forever["expires_at"] is None
    assert forever["match"] == {}
    assert forever["id"] != with_ttl["id"]
    assert client.admin("GET", f"/rules/{with_ttl['id']}").json()["id"] == with_ttl["id"]
    assert [r["id"] for r in client.rules()] == [with_ttl["id"], forever["id"]]


def test_taken_id_is_refused_with_409_and_nothing_changes(make: Make) -> None:
    client = make()
    first = post_rule(client, {"id": "dup", "action": "release", "note": "first"})
    rules, audit = client.rules(), client.audit()
    response = client.admin(
        "POST", "/rules", json_body={"id": "dup", "action": "drop", "note": "second"}
    )
    assert_error(response, 409, "id")
    assert client.rules() == rules == [without_ttl(first)]
    assert client.audit() == audit


def test_get_and_delete_a_rule(make: Make) -> None:
    client = make()
    post_rule(client, {"id": "gone-soon", "action": "release"})
    post_rule(client, {"id": "stays", "action": "drop"})
    assert client.admin("GET", "/rules/gone-soon").status_code == 200
    response = client.admin("DELETE", "/rules/gone-soon")
    assert response.status_code == 204
    assert response.content == b""
    assert_error(client.admin("GET", "/rules/gone-soon"), 404)
    assert_error(client.admin("DELETE", "/rules/gone-soon"), 404)
    assert_error(client.admin("GET", "/rules/never-was"), 404)
    assert [r["id"] for r in client.rules()] == ["stays"]


def _long(n: int) -> str:
    return "/" + "x" * (n - 1)


BAD_RULES = [
    # 400: not JSON, not an object, wrong JSON types
    pytest.param(b'{"action": "release",', 400, "body", id="malformed-json"),
    pytest.param(b'{"action": "release"} trailing', 400, "body", id="trailing-garbage"),
    pytest.param(b'{"action": "release", "priority": NaN}', 400, "body", id="nan"),
    pytest.param(b"", 400, "body", id="empty-body"),
    pytest.param(b'[{"action": "release"}]', 400, {"body", "rule"}, id="list"),
    pytest.param(b'"release"', 400, {"body", "rule"}, id="string"),
    pytest.param(b"42", 400, {"body", "rule"}, id="number"),
    pytest.param(b"null", 400, {"body", "rule"}, id="null"),
    pytest.param({"action": 5}, 400, "action", id="action-number"),
    pytest.param({"action": "release", "id": 7}, 400, "id", id="id-number"),
    pytest.param({"action": "release", "priority": "high"}, 400, "priority", id="priority-str"),
    pytest.param({"action": "release", "sample_rate": "half"}, 400, "sample_rate", id="rate-str"),
    pytest.param({"action": "release", "dry_run": "yes"}, 400, "dry_run", id="dry-run-str"),
    pytest.param({"action": "release", "note": 5}, 400, "note", id="note-number"),
    pytest.param({"action": "release", "ttl_s": "1h"}, 400, "ttl_s", id="ttl-str"),
    pytest.param({"action": "release", "expires_at": 5}, 400, "expires_at", id="expires-num"),
    pytest.param({"action": "release", "match": "all"}, 400, "match", id="match-str"),
    pytest.param(
        {"action": "release", "match": {"duration_ms": {"gt": "fast"}}},
        400,
        "match.duration_ms",
        id="range-bound-str",
    ),
    pytest.param(
        {"action": "release", "match": {"status": "500"}}, 400, "match.status", id="status-str"
    ),
    pytest.param(
        {"action": "release", "match": {"header": ["x-a"]}}, 400, "match.header", id="header-list"
    ),
    # 422: valid JSON that breaks the rule format
    pytest.param({}, 422, "action", id="no-action"),
    pytest.param({"action": "explode"}, 422, "action", id="bad-action"),
    pytest.param({"action": "release", "colour": "red"}, 422, "colour", id="unknown-top-key"),
    pytest.param(
        {"action": "release", "match": {"colour": "red"}}, 422, "match.colour", id="unknown-match"
    ),
    pytest.param(
        {"action": "detail", "match": {"status": 500}}, 422, "match.status", id="detail-status"
    ),
    pytest.param(
        {"action": "detail", "match": {"duration_ms": {"gt": 300}}},
        422,
        "match.duration_ms",
        id="detail-duration",
    ),
    pytest.param(
        {"action": "detail", "match": {"message": "boom"}}, 422, "match.message", id="detail-msg"
    ),
    pytest.param(
        {"action": "detail", "match": {"route": "/items/{id}"}}, 422, "match.route", id="detail-rt"
    ),
    pytest.param({"action": "release", "match": {"path": ""}}, 422, "match.path", id="glob-empty"),
    pytest.param(
        {"action": "release", "match": {"path": _long(1001)}}, 422, "match.path", id="glob-long"
    ),
    pytest.param({"action": "release", "match": {"path": []}}, 422, "match.path", id="glob-none"),
    pytest.param(
        {"action": "release", "match": {"client_ip": "10.0.0.300"}},
        422,
        "match.client_ip",
        id="client-ip-octet",
    ),
    pytest.param(
        {"action": "release", "match": {"client_ip": "not-an-ip"}},
        422,
        "match.client_ip",
        id="client-ip-text",
    ),
    pytest.param(
        {"action": "release", "match": {"client_ip": ["10.0.0.1", "10.0.0.0/33"]}},
        422,
        "match.client_ip",
        id="client-ip-list",
    ),
    pytest.param(
        {"action": "release", "match": {"duration_ms": {"between": 3}}},
        422,
        "match.duration_ms",
        id="range-unknown-op",
    ),
    pytest.param(
        {"action": "release", "match": {"status": {"eq": 500}}},
        422,
        "match.status",
        id="status-range-unknown-op",
    ),
    pytest.param(
        {"action": "release", "match": {"duration_ms": {}}},
        422,
        "match.duration_ms",
        id="range-empty",
    ),
    pytest.param(
        {"action": "release", "match": {"method": "GE T"}}, 422, "match.method", id="bad-method"
    ),
    pytest.param({"action": "release", "sample_rate": 0}, 422, "sample_rate", id="rate-zero"),
    pytest.param({"action": "release", "sample_rate": 1.5}, 422, "sample_rate", id="rate-above"),
    pytest.param({"action": "release", "sample_rate": -0.5}, 422, "sample_rate", id="rate-neg"),
    pytest.param(
        {"action": "release", "ttl_s": 60, "expires_at": "2099-01-01T00:00:00Z"},
        422,
        "ttl_s",
        id="ttl-and-expires",
    ),
    pytest.param({"action": "release", "ttl_s": 0}, 422, "ttl_s", id="ttl-zero"),
    pytest.param({"action": "release", "ttl_s": -5}, 422, "ttl_s", id="ttl-negative"),
    pytest.param(
        {"action": "release", "expires_at": "2000-01-01T00:00:00Z"},
        422,
        "expires_at",
        id="expires-past",
    ),
    pytest.param(
        {"action": "release", "expires_at": "tomorrow"}, 422, "expires_at", id="expires-text"
    ),
    pytest.param({"action": "release", "starts_at": "soon"}, 422, "starts_at", id="starts-text"),
    pytest.param(
        {
            "action": "release",
            "starts_at": "2099-01-01T00:00:00Z",
            "expires_at": "2098-01-01T00:00:00Z",
        },
        422,
        "expires_at",
        id="expires-before-starts",
    ),
    pytest.param({"action": "release", "id": "has space"}, 422, "id", id="bad-id"),
    pytest.param({"action": "release", "level": "LOUD"}, 422, "level", id="bad-level"),
    pytest.param({"action": "release", "priority": 10**10}, 422, "priority", id="priority-big"),
]


@pytest.mark.parametrize(("body", "status", "field"), BAD_RULES)
def test_refused_rule_names_the_field_and_changes_nothing(
    make: Make, body: Any, status: int, field: str | set[str]
) -> None:
    client = make()
    post_rule(client, {"id": "keep", "action": "release", "match": {"path": "/keep"}})
    rules, audit = client.rules(), client.audit()
    if isinstance(body, bytes):
        response = client.admin(
            "POST", "/rules", content=body, headers={"Content-Type": "application/json"}
        )
    else:
        response = client.admin("POST", "/rules", json_body=body)
    assert_error(response, status, field)
    assert client.rules() == rules
    assert client.audit() == audit


# -- users/{id}/detail -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "ttl", "level", "note"),
    [
        pytest.param(UNSET, 1800, "DEBUG", None, id="no-body"),
        pytest.param({}, 1800, "DEBUG", None, id="empty-object"),
        pytest.param({"ttl_s": 60}, 60, "DEBUG", None, id="ttl"),
        pytest.param({"level": "INFO"}, 1800, "INFO", None, id="level"),
        pytest.param(
            {"ttl_s": 90, "level": "WARNING", "note": "support call"},
            90,
            "WARNING",
            "support call",
            id="all",
        ),
    ],
)
def test_post_user_detail_makes_a_detail_rule(
    make: Make, body: Any, ttl: float, level: str, note: str | None
) -> None:
    client = make()
    response = client.admin("POST", "/users/u1/detail", json_body=body)
    assert response.status_code == 201, response.text
    rule = response.json()
    assert rule.pop("replaced") == []
    assert rule["action"] == "detail"
    assert rule["match"] == {"user_id": "u1"}
    assert rule["level"] == level
    assert rule["note"] == note
    assert lifetime(rule) == pytest.approx(ttl, abs=0.01)
    assert without_ttl(client.admin("GET", f"/rules/{rule['id']}").json()) == without_ttl(rule)
    event = client.audit()[0]
    assert (event["action"], event["rule"]["id"], event["by"]) == ("added", rule["id"], "admin")


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        pytest.param({"colour": "red"}, 422, "colour", id="unknown-key"),
        pytest.param({"match": {"path": "/x"}}, 422, "match", id="match-key"),
        pytest.param({"action": "drop"}, 422, "action", id="action-key"),
        pytest.param({"ttl_s": 3601}, 422, "ttl_s", id="ttl-above-max"),
        pytest.param({"ttl_s": 0}, 422, "ttl_s", id="ttl-zero"),
        pytest.param({"ttl_s": "long"}, 400, "ttl_s", id="ttl-str"),
        pytest.param({"level": "LOUD"}, 422, "level", id="bad-level"),
        pytest.param(b"[]", 400, {"body", "rule"}, id="list"),
        pytest.param(b'"detail"', 400, {"body", "rule"}, id="string"),
        pytest.param(b'{"ttl_s": ', 400, "body", id="malformed"),
    ],
)
def test_post_user_detail_refused(make: Make, body: Any, status: int, field: Any) -> None:
    client = make(max_detail_ttl_s=3600)
    post_rule(client, {"id": "keep", "action": "release"})
    rules, audit = client.rules(), client.audit()
    if isinstance(body, bytes):
        response = client.admin("POST", "/users/u1/detail", content=body)
    else:
        response = client.admin("POST", "/users/u1/detail", json_body=body)
    assert_error(response, status, field)
    assert client.rules() == rules
    assert client.audit() == audit


def test_post_user_detail_again_replaces_that_users_detail_rule_and_says_so(make: Make) -> None:
    client = make()
    first = client.admin("POST", "/users/u1/detail", json_body={"ttl_s": 60})
    assert first.status_code == 201, first.text
    other = client.admin("POST", "/users/u2/detail").json()["id"]
    again = client.admin("POST", "/users/u1/detail", json_body={"ttl_s": 900, "level": "INFO"})
    assert again.status_code == 200, again.text
    assert again.json()["replaced"] == [first.json()["id"]]
    assert lifetime(again.json()) == pytest.approx(900, abs=0.01)
    details = {r["id"]: r for r in client.rules() if r["action"] == "detail"}
    assert sorted(details) == sorted([again.json()["id"], other])
    events = client.audit()
    assert [(e["action"], e["rule"]["id"]) for e in events[:2]] == [
        ("added", again.json()["id"]),
        ("replaced", first.json()["id"]),
    ]


def test_max_detail_ttl_below_the_default_detail_ttl_still_accepts_rules(make: Make) -> None:
    client = make(max_detail_ttl_s=100)
    post_rule(client, {"id": "rel", "action": "release", "match": {"path": "/fast"}})
    response = client.admin("POST", "/users/u1/detail", json_body={"ttl_s": 60})
    assert response.status_code == 201, response.text
    assert lifetime(response.json()) == pytest.approx(60, abs=0.01)
    assert_error(client.admin("POST", "/users/u1/detail", json_body={"ttl_s": 101}), 422, "ttl_s")


def test_delete_user_detail_removes_every_detail_rule_of_that_user(make: Make) -> None:
    client = make()
    first = client.admin("POST", "/users/u1/detail").json()["id"]
    second = "u1-second"
    post_rule(client, {"id": second, "action": "detail", "match": {"user_id": "u1"}, "ttl_s": 60})
    other = client.admin("POST", "/users/u2/detail").json()["id"]
    post_rule(client, {"id": "u1-release", "action": "release", "match": {"user_id": "u1"}})
    response = client.admin("DELETE", "/users/u1/detail")
    assert response.status_code == 204
    assert response.content == b""
    assert sorted(r["id"] for r in client.rules()) == sorted([other, "u1-release"])
    events = client.audit()
    assert {(e["action"], e["rule"]["id"], e["by"]) for e in events[:2]} == {
        ("removed", first, "admin"),
        ("removed", second, "admin"),
    }
    assert_error(client.admin("DELETE", "/users/u1/detail"), 404)
    assert_error(client.admin("DELETE", "/users/nobody/detail"), 404)
    assert client.audit() == events


# -- GET /audit ------------------------------------------------------------------------------------


def test_audit_lists_changes_newest_first_with_caller_and_note(make: Make) -> None:
    client = make()
    post_rule(client, {"id": "r1", "action": "release", "note": "first"})
    post_rule(client, {"id": "r2", "action": "drop", "note": "second"})
    assert client.admin("DELETE", "/rules/r1").status_code == 204
    events = client.audit()
    assert [(e["action"], e["rule"]["id"]) for e in events] == [
        ("removed", "r1"),
        ("added", "r2"),
        ("added", "r1"),
    ]
    assert {e["by"] for e in events} == {"admin"}  # the token's name
    assert [e["rule"]["note"] for e in events] == ["first", "second", "first"]
    assert all(set(e) >= {"at", "action", "rule", "by"} for e in events)
    stamps = [epoch(e["at"]) for e in events]
    assert stamps == sorted(stamps, reverse=True)


def test_audit_is_bounded_by_limit(make: Make) -> None:
    client = make()
    for i in range(5):
        post_rule(client, {"id": f"r{i}", "action": "release"})
    everything = client.audit()
    assert [e["rule"]["id"] for e in everything] == ["r4", "r3", "r2", "r1", "r0"]
    response = client.admin("GET", "/audit?limit=2")
    assert response.status_code == 200
    assert response.json()["events"] == everything[:2]
    assert client.admin("GET", "/audit?limit=1000").json()["events"] == everything


@pytest.mark.parametrize("limit", ["0", "-1", "abc", "1.5", "1001"])
def test_audit_bad_limit_is_400(make: Make, limit: str) -> None:
    client = make()
    assert_error(client.admin("GET", f"/audit?limit={limit}"), 400, "limit")


# -- authentication --------------------------------------------------------------------------------

# (method, path, body, status with the admin token)
CALLS: list[tuple[str, str, Any, int]] = [
    ("GET", "/health", UNSET, 200),
    ("GET", "/rules", UNSET, 200),
    ("POST", "/rules", {"id": "new", "action": "release"}, 201),
    ("GET", "/rules/keep", UNSET, 200),
    ("DELETE", "/rules/keep", UNSET, 204),
    ("POST", "/users/u1/detail", {"ttl_s": 60}, 201),
    ("DELETE", "/users/u9/detail", UNSET, 204),
    ("GET", "/audit", UNSET, 200),
]


def seeded(make: Make, **options: Any) -> AppClient:
    """A client whose Hindsight holds a rule `keep` and a detail rule of user u9."""
    client = make(**options)
    post_rule(client, {"id": "keep", "action": "release", "match": {"path": "/keep"}})
    assert client.admin("POST", "/users/u9/detail").status_code == 201
    return client


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(None, id="no-header"),
        pytest.param("Bearer wrong", id="wrong-token"),
        pytest.param(f"Bearer {TOKEN}x", id="token-plus-one"),
        pytest.param(f"Bearer {TOKEN[:-1]}", id="token-prefix"),
        pytest.param("Basic " + base64.b64encode(f"admin:{TOKEN}".encode()).decode(), id="basic"),
        pytest.param(f"Basic {TOKEN}", id="basic-raw-token"),
        pytest.param(TOKEN, id="no-scheme"),
        pytest.param("Bearer", id="empty-bearer"),
    ],
)
def test_missing_or_wrong_token_is_401_and_changes_nothing(
    make: Make, authorization: str | None
) -> None:
    client = seeded(make)
    rules, audit = client.rules(), client.audit()
    headers = {} if authorization is None else {"Authorization": authorization}
    for method, path, body, _ in [*CALLS, ("GET", "/nope", UNSET, 404)]:
        response = client.admin(method, path, token=None, headers=headers, json_body=body)
        assert_error(response, 401)
        assert response.headers["www-authenticate"].startswith("Bearer"), (method, path)
    assert client.rules() == rules
    assert client.audit() == audit


def test_right_token_makes_every_call(make: Make) -> None:
    client = seeded(make)
    for method, path, body, status in CALLS:
        response = client.admin(method, path, json_body=body)
        assert response.status_code == status, (method, path, response.text)
        assert "www-authenticate" not in response.headers
    ids = [r["id"] for r in client.rules()]
    assert "new" in ids
    assert "keep" not in ids
    lower = client.admin("GET", "/health", token=None, headers={"Authorization": f"bearer {TOKEN}"})
    assert lower.status_code == 200


def test_read_only_token_may_only_read(make: Make) -> None:
    client = seeded(make, admin_read_token=READ_TOKEN)
    rules, audit = client.rules(), client.audit()
    for method, path, body, status in CALLS:
        response = client.admin(method, path, token=READ_TOKEN, json_body=body)
        if method == "GET":
            assert response.status_code == status, (method, path, response.text)
        else:
            assert_error(response, 403)
    assert client.rules() == rules
    assert client.audit() == audit


def test_token_from_the_environment_turns_the_admin_on(
    make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HINDSIGHT_ADMIN_TOKEN", "from-env-0123456789")
    client = make(admin_token=None)
    assert client.admin("GET", "/health", token="from-env-0123456789").status_code == 200
    assert_error(client.admin("GET", "/health", token=None), 401)


def test_without_admin_token_admin_paths_go_to_the_app(make: Make) -> None:
    client = make(admin_token=None)
    assert client.hs is not None
    own = client.admin("GET", "/health")
    assert own.status_code == 200
    assert own.text == "the app's own route"
    assert "x-request-id" in own.headers
    missing = client.admin("GET", "/rules")
    assert missing.status_code == 404
    assert "x-request-id" in missing.headers
    assert "error" not in missing.text  # the app's own 404, not the admin's JSON
    posted = client.admin("POST", "/rules", json_body={"id": "r", "action": "release"})
    assert posted.status_code in (404, 405)
    assert "x-request-id" in posted.headers
    assert len(client.hs.rules) == 0
    assert client.hs.counters()["requests"] == 3


def test_admin_path_none_passes_admin_paths_to_the_app(make: Make) -> None:
    client = make(admin_path=None)
    own = client.admin("GET", "/health")
    assert own.status_code == 200
    assert own.text == "the app's own route"
    assert "x-request-id" in own.headers


# -- body limit ------------------------------------------------------------------------------------


def rule_of_size(size: int) -> bytes:
    """A valid rule whose JSON is exactly `size` bytes."""
    empty = json.dumps({"id": "big", "action": "release", "note": ""}).encode()
    body = json.dumps({"id": "big", "action": "release", "note": "n" * (size - len(empty))})
    assert len(body) == size
    return body.encode()


def test_body_over_the_limit_is_413_and_changes_nothing(make: Make) -> None:
    client = make(admin_max_body=256)
    post_rule(client, {"id": "keep", "action": "release"})
    rules, audit = client.rules(), client.audit()
    big = client.admin("POST", "/rules", content=rule_of_size(257))
    assert_error(big, 413, "body")
    detail = json.dumps({"note": "n" * 300}).encode()
    assert_error(client.admin("POST", "/users/u1/detail", content=detail), 413, "body")
    assert client.rules() == rules
    assert client.audit() == audit
    exact = client.admin("POST", "/rules", content=rule_of_size(256))
    assert exact.status_code == 201, exact.text


@pytest.mark.parametrize("adapter", ["fastapi"], indirect=True)
def test_streamed_body_without_content_length(make: Make) -> None:
    client = make(admin_max_body=256)
    rules, audit = client.rules(), client.audit()
    big = client.admin("POST", "/rules", content=chunks_of(rule_of_size(1000), 64))
    assert "content-length" not in big.request.headers
    assert_error(big, 413, "body")
    assert client.rules() == rules
    assert client.audit() == audit
    small = client.admin("POST", "/rules", content=chunks_of(rule_of_size(200), 64))
    assert "content-length" not in small.request.headers
    assert small.status_code == 201, small.text


# -- unknown paths, wrong methods ------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/nope", "/rules/a/b", "/users/u1", "/users/u1/other", "/health/x", "/audit/x"]
)
def test_unknown_admin_path_is_json_404(make: Make, path: str) -> None:
    client = make()
    assert_error(client.admin("GET", path), 404)
    assert_error(client.admin("GET", path, token=None), 401)


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("DELETE", "/health", {"GET"}),
        ("POST", "/health", {"GET"}),
        ("PUT", "/rules", {"GET", "POST"}),
        ("DELETE", "/rules", {"GET", "POST"}),
        ("PATCH", "/rules/x", {"GET", "DELETE"}),
        ("POST", "/rules/x", {"GET", "DELETE"}),
        ("GET", "/users/u1/detail", {"POST", "DELETE"}),
        ("POST", "/audit", {"GET"}),
    ],
)
def test_wrong_method_is_405_with_allow(
    make: Make, method: str, path: str, allowed: set[str]
) -> None:
    client = make()
    response = client.admin(method, path)
    assert_error(response, 405)
    assert {m.strip() for m in response.headers["allow"].split(",")} == allowed
    assert client.rules() == []


# -- admin requests are not captured ---------------------------------------------------------------


def test_admin_requests_are_not_captured_nor_counted(make: Make, out: ListHandler) -> None:
    client = make(slow_ms=0)  # every captured request is released
    assert client.hs is not None
    app = client.get("/fast")
    assert "x-request-id" in app.headers
    assert len(summaries(out)) == 1  # the control: a captured request shows
    assert client.hs.counters()["requests"] == 1
    out.records.clear()
    calls: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", "/health", {}),
        (
            "POST",
            "/rules",
            {"json_body": {"id": "c1", "action": "release", "match": {"path": "/n"}}},
        ),
        ("GET", "/rules", {}),
        ("GET", "/rules/c1", {}),
        ("POST", "/rules", {"json_body": {"action": "explode"}}),
        ("POST", "/rules", {"content": b"{"}),
        ("GET", "/rules", {"token": None}),
        ("GET", "/nope", {}),
        ("PUT", "/rules", {}),
        ("POST", "/users/u1/detail", {}),
        ("DELETE", "/users/u1/detail", {}),
        ("DELETE", "/rules/c1", {}),
        ("GET", "/audit", {}),
    ]
    for method, path, kwargs in calls:
        response = client.admin(method, path, **kwargs)
        assert "x-request-id" not in response.headers, (method, path)
    assert client.hs.counters()["requests"] == 1
    assert summaries(out) == []
    assert app_lines(out) == []


# -- rules act on requests -------------------------------------------------------------------------


def test_release_rule_releases_a_fast_request(make: Make, out: ListHandler) -> None:
    client = make()
    client.get("/fast")
    assert summaries(out) == []  # the control: a fast 200 is quiet
    post_rule(client, {"id": "rel-fast", "action": "release", "match": {"path": "/fast"}})
    response = client.get("/fast")
    assert response.status_code == 200
    summary, after = released(out, response.headers["x-request-id"])
    assert "(reason: rule:rel-fast)" in summary
    assert after == ["fast-debug-1", "fast-debug-2"]
    assert len(summaries(out)) == 1


def test_drop_rule_silences_a_failure(make: Make, out: ListHandler) -> None:
    client = make()
    control = client.get("/fail")
    summary, after = released(out, control.headers["x-request-id"])
    assert "(reason: status)" in summary
    assert after == ["fail-debug"]
    out.records.clear()
    post_rule(client, {"id": "quiet", "action": "drop", "match": {"path": "/fail"}})
    assert client.get("/fail").status_code == 500
    assert summaries(out) == []
    assert app_lines(out) == []


@pytest.mark.parametrize(
    ("path", "release_priority", "drop_priority", "released_expected"),
    [
        pytest.param("/fail", 1, 5, False, id="drop-higher"),
        pytest.param("/fast", 5, 1, True, id="release-higher"),
        pytest.param("/fail", -1, 0, False, id="drop-higher-negative"),
        pytest.param("/fast", 3, 3, True, id="tie-fast"),
        pytest.param("/fail", 0, 0, True, id="tie-fail"),
    ],
)
def test_priority_decides_between_release_and_drop(
    make: Make,
    out: ListHandler,
    path: str,
    release_priority: int,
    drop_priority: int,
    released_expected: bool,
) -> None:
    client = make()
    post_rule(
        client,
        {"id": "rel", "action": "release", "match": {"path": path}, "priority": release_priority},
    )
    post_rule(
        client, {"id": "drp", "action": "drop", "match": {"path": path}, "priority": drop_priority}
    )
    response = client.get(path)
    if released_expected:
        summary, after = released(out, response.headers["x-request-id"])
        assert "(reason: rule:rel)" in summary
        assert after == (["fast-debug-1", "fast-debug-2"] if path == "/fast" else ["fail-debug"])
    else:
        assert summaries(out) == []
        assert app_lines(out) == []


def test_dry_run_rule_counts_hits_but_does_not_act(make: Make, out: ListHandler) -> None:
    client = make()
    post_rule(
        client, {"id": "dry-drop", "action": "drop", "match": {"path": "/fail"}, "dry_run": True}
    )
    post_rule(
        client, {"id": "dry-rel", "action": "release", "match": {"path": "/fast"}, "dry_run": True}
    )
    for _ in range(3):
        client.get("/fail")
    client.get("/fast")
    client.get("/fast")
    released_reasons = [m.split("(reason: ")[1].split(")")[0] for m in summaries(out)]
    assert released_reasons == ["status"] * 3
    hits = {r["id"]: r["hits"] for r in client.rules()}
    assert hits == {"dry-drop": 3, "dry-rel": 2}


def test_sample_rate_acts_on_some_matching_requests(make: Make, out: ListHandler) -> None:
    client = make()
    post_rule(
        client, {"id": "half", "action": "release", "match": {"path": "/fast"}, "sample_rate": 0.5}
    )
    for _ in range(200):
        assert client.get("/fast").status_code == 200
    found = summaries(out)
    assert all("(reason: rule:half)" in m for m in found)
    assert 0 < len(found) < 200
    assert client.admin("GET", "/rules/half").json()["hits"] == len(found)


def test_user_detail_writes_earlier_lines_at_set_user_and_later_lines_live(
    make: Make, out: ListHandler
) -> None:
    client = make()
    assert client.admin("POST", "/users/u1/detail").status_code == 201
    response = client.get("/user/u1")
    assert response.status_code == 200
    assert app_lines(out) == [
        ("INFO", "pre-info u1"),
        ("DEBUG", "before-set_user u1"),
        ("DEBUG", "after-set_user u1"),
        ("INFO", "post-info u1"),
    ]
    rid = response.headers["x-request-id"]
    assert {getattr(r, "request_id", None) for r in out.records if r.name == "app"} == {rid}

    out.records.clear()
    client.get("/user/u2")
    assert app_lines(out) == [("INFO", "pre-info u2"), ("INFO", "post-info u2")]
    assert summaries(out) == []

    assert client.admin("DELETE", "/users/u1/detail").status_code == 204
    out.records.clear()
    client.get("/user/u1")
    assert app_lines(out) == [("INFO", "pre-info u1"), ("INFO", "post-info u1")]
    assert summaries(out) == []


def test_rule_with_ttl_expires_without_restart(make: Make, out: ListHandler) -> None:
    client = make()
    post_rule(client, {"id": "short", "action": "release", "match": {"path": "/fast"}, "ttl_s": 1})
    client.get("/fast")
    assert len(summaries(out)) == 1  # the rule acts while it lives
    time.sleep(1.2)
    out.records.clear()
    client.get("/fast")
    assert summaries(out) == []
    assert_error(client.admin("GET", "/rules/short"), 404)
    assert client.rules() == []
    # Written down by the background thread within store_sync_s (0.5 s).
    deadline = time.monotonic() + 2.0
    while (events := client.audit())[0]["action"] != "expired":
        assert time.monotonic() < deadline, events
        time.sleep(0.05)
    assert (events[0]["action"], events[0]["rule"]["id"]) == ("expired", "short")
    assert [e["action"] for e in events] == ["expired", "added"]
    assert_error(client.admin("DELETE", "/rules/short"), 404)


# -- the standalone admin apps ---------------------------------------------------------------------


def mounted_starlette(hs: Hindsight) -> AppClient:
    async def fast(request: Request) -> PlainTextResponse:
        log.debug("fast-debug-1")
        return PlainTextResponse("ok")

    inner = Starlette(routes=[Route("/fast", fast), Mount("/ops", app=AdminASGIApp(hs))])
    return AppClient(HindsightMiddleware(inner, hindsight=hs), asgi=True, hs=hs)


def mounted_flask(hs: Hindsight) -> AppClient:
    app = Flask("mounted_admin")

    @app.get("/fast")
    def fast() -> str:
        log.debug("fast-debug-1")
        return "ok"

    dispatcher = DispatcherMiddleware(app.wsgi_app, {"/ops": AdminWSGIApp(hs)})
    app.wsgi_app = HindsightWSGIMiddleware(dispatcher, hindsight=hs)  # type: ignore[method-assign]
    return AppClient(app, asgi=False, hs=hs)


@pytest.mark.parametrize("mount", [mounted_starlette, mounted_flask], ids=["starlette", "werkzeug"])
def test_admin_app_mounted_under_ops(
    mount: Callable[[Hindsight], AppClient], out: ListHandler
) -> None:
    hs = Hindsight(admin_path=None, admin_token=TOKEN)
    client = mount(hs)
    try:
        health = client.get("/ops/health", token=TOKEN)
        assert health.status_code == 200, health.text
        assert health.json()["status"] == "ok"
        anon = client.get("/ops/health")
        assert_error(anon, 401)
        assert anon.headers["www-authenticate"].startswith("Bearer")
        assert_error(client.get("/ops/rules", token="wrong"), 401)
        rule = {"id": "m1", "action": "release", "match": {"path": "/fast"}}
        assert_error(client.request("POST", "/ops/rules", json_body=rule), 401)
        assert client.get("/ops/rules", token=TOKEN).json() == {"rules": []}
        posted = client.request("POST", "/ops/rules", token=TOKEN, json_body=rule)
        assert posted.status_code == 201, posted.text
        assert [r["id"] for r in client.get("/ops/rules", token=TOKEN).json()["rules"]] == ["m1"]
        assert_error(client.get("/ops/nope", token=TOKEN), 404)
        response = client.get("/fast")
        summary, after = released(out, response.headers["x-request-id"])
        assert "(reason: rule:m1)" in summary
        assert after == ["fast-debug-1"]
        # admin_path=None: the middleware hands /_hindsight/... to the app
        passed = client.get(f"{ADMIN}/health", token=TOKEN)
        assert passed.status_code == 404
        assert "x-request-id" in passed.headers
    finally:
        client.close()


def test_admin_app_needs_a_token() -> None:
    hs = Hindsight(admin_token=None)
    with pytest.raises(ValueError, match="admin_token"):
        AdminASGIApp(hs)
    with pytest.raises(ValueError, match="admin_token"):
        AdminWSGIApp(hs)


# -- real servers: path tricks and streamed bodies -------------------------------------------------

TRICKS = [
    "/_hindsight/rules",
    "//_hindsight/rules",
    "/%5Fhindsight/rules",
    "/%5fhindsight/rules",
    "/_%68indsight/rules",
    "/_hindsight/./rules",
    "/_hindsight/%2E/rules",
    "/x/../_hindsight/rules",
    "/x/%2E%2E/_hindsight/rules",
    "/./_hindsight/rules",
    "/_hindsight//rules",
    "/_hindsight/x/../rules",
    "/_hindsight/rules/",
    "/_hindsight/rules?x=1",
]


def start_server(
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    source: str,
    argv: Callable[[Path, str], Callable[[int], list[str]]],
) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp(name)
    write_app(workdir, name, source)
    port = free_port()
    server = Server(argv(workdir, name)(port), workdir, name)
    try:
        server.start(port)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def uvicorn_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from start_server(tmp_path_factory, "admin_uvicorn", UVICORN_APP, uvicorn_argv)


@pytest.fixture(scope="module")
def gunicorn_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    def argv(workdir: Path, module: str) -> Callable[[int], list[str]]:
        return gunicorn_argv(workdir, module, "-k", "sync", workers=1)

    yield from start_server(tmp_path_factory, "admin_gunicorn", GUNICORN_APP, argv)


SERVERS = ["uvicorn_server", "gunicorn_server"]


@pytest.mark.server
@pytest.mark.timeout(60)
@pytest.mark.parametrize("server_name", SERVERS)
@pytest.mark.parametrize("target", TRICKS)
def test_path_tricks_reach_the_admin_only_with_the_token(
    request: pytest.FixtureRequest, server_name: str, target: str
) -> None:
    server: Server = request.getfixturevalue(server_name)
    control = raw_request(server.port, "GET", "/elsewhere")
    assert control.status == 200, control  # whatever reaches the app gets a 200
    assert control.json() == {"app": "/elsewhere"}
    anon = raw_request(server.port, "GET", target)
    assert anon.status == 401, anon
    assert anon.headers["www-authenticate"].startswith("Bearer"), anon
    assert set(anon.json()) == {"error", "details"}
    authed = raw_request(server.port, "GET", target, token=TOKEN)
    assert authed.status == 200, authed
    assert isinstance(authed.json()["rules"], list)


@pytest.mark.server
@pytest.mark.timeout(60)
@pytest.mark.parametrize("server_name", SERVERS)
@pytest.mark.parametrize(
    "target", ["//_hindsight/rules", "/%5Fhindsight/rules", "/x/../_hindsight/rules"]
)
def test_path_tricks_cannot_post_a_rule_without_the_token(
    request: pytest.FixtureRequest, server_name: str, target: str
) -> None:
    server: Server = request.getfixturevalue(server_name)
    rule = json.dumps({"id": "sneaky", "action": "release"}).encode()
    posted = raw_request(server.port, "POST", target, body=rule)
    assert posted.status == 401, posted
    listed = raw_request(server.port, "GET", "/_hindsight/rules", token=TOKEN)
    assert "sneaky" not in [r["id"] for r in listed.json()["rules"]]


@pytest.mark.server
@pytest.mark.timeout(60)
@pytest.mark.parametrize("server_name", SERVERS)
def test_chunked_body_over_the_limit_is_413(
    request: pytest.FixtureRequest, server_name: str
) -> None:
    server: Server = request.getfixturevalue(server_name)
    big = json.dumps({"id": "chunked-big", "action": "release", "note": "n" * 2000}).encode()
    response = raw_request(
        server.port, "POST", "/_hindsight/rules", token=TOKEN, body=big, chunked=True
    )
    assert response.status == 413, response
    listed = raw_request(server.port, "GET", "/_hindsight/rules", token=TOKEN)
    assert "chunked-big" not in [r["id"] for r in listed.json()["rules"]]


@pytest.mark.server
@pytest.mark.timeout(60)
@pytest.mark.parametrize("server_name", SERVERS)
def test_chunked_body_within_the_limit_is_read(
    request: pytest.FixtureRequest, server_name: str
) -> None:
    server: Server = request.getfixturevalue(server_name)
    rule_id = f"chunked-{server_name}"
    small = json.dumps({"id": rule_id, "action": "release", "match": {"path": "/nowhere"}}).encode()
    response = raw_request(
        server.port, "POST", "/_hindsight/rules", token=TOKEN, body=small, chunked=True
    )
    assert response.status == 201, response
    assert response.json()["id"] == rule_id


LONG_T = "t-0123456789abcdef"


def test_absurdly_nested_json_is_a_400_not_a_500() -> None:
    hs = Hindsight(admin_token=LONG_T)
    app = HindsightWSGIMiddleware(lambda environ, start_response: [], hindsight=hs)
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://t") as client:
        response = client.post(
            "/_hindsight/rules", headers={"Authorization": f"Bearer {LONG_T}"}, content=b"[" * 30000
        )
    assert response.status_code == 400
    assert response.json()["details"] == [
        {"field": "body", "error": "nested deeper than 32 levels"}
    ]


def test_a_non_ascii_user_id_survives_the_wsgi_path() -> None:
    hs = Hindsight(admin_token=LONG_T)
    client = WerkzeugClient(AdminWSGIApp(hs))  # sends REQUEST_URI / RAW_URI, as servers do
    auth = {"Authorization": f"Bearer {LONG_T}"}
    response = client.post("/users/jos%C3%A9/detail", headers=auth)
    assert response.status_code == 201
    assert response.get_json()["match"] == {"user_id": "josé"}


@pytest.mark.parametrize("raw", ["bob\xff", "bob\xc3", "bob\xed\xa0\x80"])
def test_wsgi_paths_that_are_not_utf8_are_refused_without_the_raw_uri(raw: str) -> None:
    hs = Hindsight(admin_token=LONG_T)
    app = AdminWSGIApp(hs)
    environ = {  # PEP 3333: PATH_INFO holds the bytes sent, decoded as latin-1
        "REQUEST_METHOD": "POST",
        "PATH_INFO": f"/users/{raw}/detail",
        "HTTP_AUTHORIZATION": f"Bearer {LONG_T}",
        "wsgi.input": io.BytesIO(b""),
        "CONTENT_LENGTH": "0",
        "SERVER_NAME": "t",
        "SERVER_PORT": "80",
        "wsgi.url_scheme": "http",
    }
    statuses: list[str] = []
    body = b"".join(app(environ, lambda status, headers, exc_info=None: statuses.append(status)))
    assert statuses[0].startswith("400"), (statuses, body)
    assert json.loads(body)["details"] == [{"field": "path", "error": "not UTF-8"}]
    assert hs.book.listing()[0] == []


# -- a store that cannot be used ---------------------------------------------------------------


def test_a_store_that_is_down_refuses_changes_answers_stale_and_hides_its_password(
    make: Make, out: ListHandler
) -> None:
    secret = "s3cret-store-password"
    url = f"redis://:{secret}@127.0.0.1:{free_port()}/0"  # nothing listens there
    client = make(store=url)  # the app starts all the same
    assert client.get("/fast").status_code == 200  # and serves
    health = client.admin("GET", "/health")
    assert health.status_code == 503
    assert health.json()["status"] == "degraded"
    assert health.json()["store"] == "redis://:***@127.0.0.1:" + url.rsplit(":", 1)[1]
    refused = client.admin("POST", "/rules", json_body={"id": "x", "action": "drop"})
    assert_error(refused, 503, "store")
    listed = client.admin("GET", "/rules")
    assert listed.status_code == 200
    assert listed.json() == {"rules": [], "stale": True}
    stats = client.admin("GET", "/stats")
    assert stats.status_code == 200
    assert stats.json()["stale"] is True
    assert stats.json()["processes"] == 1
    everything = [health.text, refused.text, listed.text, stats.text, *out.messages()]
    assert not [text for text in everything if secret in text]
    assert sum("cannot be used" in m for m in out.messages()) == 1


def test_a_sqlite_file_locked_by_another_writer_is_degraded_in_a_process_that_wrote_nothing(
    make: Make, tmp_path: Path
) -> None:
    # No request recorded, no change made: this process has no write of its own that
    # failed (WAL: its reads go on), and GET /health is degraded all the same.
    path = tmp_path / "locked.db"
    client = make(store=f"sqlite:///{path}")
    assert client.admin("GET", "/health").status_code == 200
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        health = client.admin("GET", "/health")
        assert health.status_code == 503, health.text
        assert health.json()["status"] == "degraded"
        assert "locked" in health.json()["error"]
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert client.admin("GET", "/health").status_code == 200


def test_a_process_with_nothing_to_write_notes_that_a_locked_sqlite_file_is_released(
    make: Make, tmp_path: Path, out: ListHandler
) -> None:
    # Its one failed write was a refused change; with no other write to make, it finds out
    # by itself that the store answers again, and GET /health says so.
    path = tmp_path / "locked.db"
    client = make(store=f"sqlite:///{path}", store_sync_s=0.1)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        refused = client.admin("POST", "/rules", json_body={"id": "x", "action": "drop"})
        assert_error(refused, 503, "store")
    finally:
        other.execute("ROLLBACK")
        other.close()
    deadline = time.monotonic() + 10
    while not any("answers again" in m for m in out.messages()):
        assert time.monotonic() < deadline, out.messages()
        time.sleep(0.05)
    assert client.admin("GET", "/health").status_code == 200


def test_more_rules_than_max_rules_are_refused_with_a_422_and_nothing_changes(make: Make) -> None:
    client = make(max_rules=2)
    for n in range(2):
        post_rule(client, {"id": f"r{n}", "action": "drop", "match": {"path": f"/{n}"}})
    refused = client.admin("POST", "/rules", json_body={"id": "r2", "action": "drop"})
    assert_error(refused, 422, "rules")
    assert "max_rules" in refused.json()["error"]
    detail = client.admin("POST", "/users/u1/detail")
    assert_error(detail, 422, "rules")
    assert [rule["id"] for rule in client.rules()] == ["r0", "r1"]
    assert client.admin("DELETE", "/rules/r0").status_code == 204
    post_rule(client, {"id": "r2", "action": "drop"})  # room again
