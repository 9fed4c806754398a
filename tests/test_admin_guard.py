"""The admin as a control plane: who made each change (named tokens), wrong tokens slowed down,
and no body or path that can take it down or make two things one.

Logic on both adapters in process; the bodies and paths that are the point on real uvicorn
and gunicorn through raw sockets (nothing between the bytes sent and the server).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hindsight_web import Hindsight
from hindsight_web.tokens import MAX_FAILURES, WINDOW_S, Caller, Failures, parse_tokens

from .admin_apps import AppClient, make_client, raw_request
from .conftest import ListHandler
from .servers import Server, free_port, gunicorn_argv, uvicorn_argv, write_app

Make = Callable[..., AppClient]

DESK = "desk-token-0123456789abcdef"
VIEWER = "viewer-token-0123456789abc"
ADMIN_T = "admin-token-0123456789abcd"
NAMED = {"support-desk": DESK, "viewer": {"token": VIEWER, "access": "read-only"}}


@pytest.fixture(autouse=True)
def _no_tokens_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HINDSIGHT_ADMIN_TOKEN", "HINDSIGHT_ADMIN_READ_TOKEN", "HINDSIGHT_ADMIN_TOKENS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(params=["fastapi", "flask"])
def make(request: pytest.FixtureRequest) -> Iterator[Make]:
    made: list[AppClient] = []

    def build(**options: Any) -> AppClient:
        client = make_client(request.param, Hindsight(**options))
        made.append(client)
        return client

    yield build
    for client in made:
        client.close()


def rule(rule_id: str, **more: Any) -> dict[str, Any]:
    return {"id": rule_id, "action": "release", "match": {"path": f"/{rule_id}"}, **more}


# -- named tokens --------------------------------------------------------------------------


def test_each_change_is_audited_under_the_name_of_the_token_that_made_it(make: Make) -> None:
    client = make(admin_token=ADMIN_T, admin_tokens=NAMED)
    assert client.admin("POST", "/rules", token=DESK, json_body=rule("a")).status_code == 201
    assert client.admin("POST", "/rules", token=ADMIN_T, json_body=rule("b")).status_code == 201
    assert client.admin("POST", "/users/u1/detail", token=DESK).status_code == 201
    assert client.admin("DELETE", "/rules/a", token=ADMIN_T).status_code == 204
    released = client.admin("POST", "/release", token=DESK, json_body={"match": {"path": "/x"}})
    assert released.status_code == 200, released.text
    events = client.admin("GET", "/audit", token=VIEWER).json()["events"]
    assert [(e["action"], e["by"]) for e in events] == [
        ("released", "support-desk"),
        ("removed", "admin"),
        ("added", "support-desk"),
        ("added", "admin"),
        ("added", "support-desk"),
    ]


def test_the_audit_filters_by_name_action_and_time(make: Make) -> None:
    client = make(admin_tokens={"support-desk": DESK, "sre-oncall": ADMIN_T})
    client.admin("POST", "/rules", token=DESK, json_body=rule("a"))
    client.admin("POST", "/rules", token=ADMIN_T, json_body=rule("b"))
    client.admin("DELETE", "/rules/a", token=ADMIN_T)

    def audit(query: str) -> list[tuple[str, str, str]]:
        response = client.admin("GET", f"/audit?{query}", token=DESK)
        assert response.status_code == 200, response.text
        return [(e["action"], e["rule"]["id"], e["by"]) for e in response.json()["events"]]

    assert audit("by=sre-oncall") == [("removed", "a", "sre-oncall"), ("added", "b", "sre-oncall")]
    assert audit("action=added") == [("added", "b", "sre-oncall"), ("added", "a", "support-desk")]
    assert audit("by=support-desk&action=removed") == []
    assert len(audit("since=-1m")) == 3
    assert audit("until=-1h") == []
    assert audit("action=added&limit=1") == [("added", "b", "sre-oncall")]
    for query, field in (("action=deleted", "action"), ("since=soon", "since")):
        response = client.admin("GET", f"/audit?{query}", token=DESK)
        assert response.status_code == 400, response.text
        assert response.json()["details"][0]["field"] == field


def test_whoami_names_the_token_and_a_read_only_one_may_not_change_anything(make: Make) -> None:
    client = make(admin_tokens=NAMED)
    me = client.admin("GET", "/whoami", token=DESK).json()
    assert me == {"name": "support-desk", "access": "read-write"}
    viewer = client.admin("GET", "/whoami", token=VIEWER).json()
    assert viewer == {"name": "viewer", "access": "read-only"}
    refused = client.admin("POST", "/rules", token=VIEWER, json_body=rule("a"))
    assert refused.status_code == 403
    assert "'viewer'" in refused.json()["error"]
    assert client.admin("GET", "/rules", token=DESK).json()["rules"] == []


def test_the_single_admin_token_keeps_working_as_the_name_admin(make: Make) -> None:
    client = make(admin_token=ADMIN_T, admin_read_token=VIEWER)
    assert client.admin("GET", "/whoami", token=ADMIN_T).json()["name"] == "admin"
    assert client.admin("GET", "/whoami", token=VIEWER).json() == {
        "name": "read",
        "access": "read-only",
    }


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"admin_token": "short"}, "'admin_token': 5 characters; a token has at least 16"),
        ({"admin_token": " " + ADMIN_T}, "'admin_token': a token is printable ASCII"),
        ({"admin_token": ADMIN_T + "é"}, "'admin_token': a token is printable ASCII"),
        ({"admin_token": "with space 0123456789"}, "printable ASCII without spaces"),
        ({"admin_read_token": VIEWER}, "read-only tokens need a read-write one"),
        ({"admin_tokens": {"a b": DESK}}, "admin_tokens['a b']: a name is"),
        ({"admin_tokens": {"admin": DESK}, "admin_token": ADMIN_T}, "the name 'admin' is taken"),
        ({"admin_tokens": {"x": DESK, "y": DESK}}, "the same token is given under two names"),
        ({"admin_tokens": {"x": {"token": DESK, "access": "all"}}}, "expected 'read-write'"),
        ({"admin_tokens": {"x": 42}}, "admin_tokens['x']: expected a token"),
        ({"admin_tokens": ["x"]}, "invalid 'admin_tokens'"),
    ],
)
def test_bad_tokens_are_refused_at_start_by_name(options: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=named.replace("[", r"\[").replace("(", r"\(")):
        Hindsight(**options)


def test_named_tokens_come_from_the_environment_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HINDSIGHT_ADMIN_TOKENS", json.dumps(NAMED))
    tokens = parse_tokens(None, None, None)
    assert tokens.identify(DESK.encode()) == Caller("support-desk", False)
    assert tokens.identify(VIEWER.encode()) == Caller("viewer", True)
    assert tokens.identify(b"x" * 20) is None
    monkeypatch.setenv("HINDSIGHT_ADMIN_TOKENS", "{not json")
    with pytest.raises(ValueError, match="HINDSIGHT_ADMIN_TOKENS"):
        parse_tokens(None, None, None)


# -- wrong tokens ----------------------------------------------------------------------------


def test_repeated_wrong_tokens_are_logged_once_and_then_refused(
    make: Make, out: ListHandler
) -> None:
    client = make(admin_token=ADMIN_T)
    for i in range(MAX_FAILURES):
        wrong = client.admin("GET", "/rules", token=f"guess-{i:016d}")
        assert wrong.status_code == 401
    refused = client.admin("GET", "/rules", token=ADMIN_T)  # even the right one, for a while
    assert refused.status_code == 429
    assert 0 < int(refused.headers["retry-after"]) <= WINDOW_S
    warnings = [r for r in out.records if "wrong admin token" in r.getMessage()]
    assert len(warnings) == 1
    assert "203.0.113.7" in warnings[0].getMessage()  # the client's address


def test_missing_tokens_are_not_counted_as_guesses(make: Make) -> None:
    client = make(admin_token=ADMIN_T)
    for _ in range(2 * MAX_FAILURES):
        assert client.admin("GET", "/rules", token=None).status_code == 401
    assert client.admin("GET", "/rules", token=ADMIN_T).status_code == 200


def test_a_clients_failures_are_forgotten_after_a_minute_and_never_grow_without_bound() -> None:
    now = [1000.0]
    failures = Failures(clock=lambda: now[0])
    for _ in range(MAX_FAILURES):
        failures.failed("10.0.0.1")
    assert failures.refused_for("10.0.0.1") == pytest.approx(WINDOW_S)
    assert failures.refused_for("10.0.0.2") == 0
    now[0] += WINDOW_S
    assert failures.refused_for("10.0.0.1") == 0
    for i in range(50_000):  # a scan from many addresses
        failures.failed(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}")
    assert len(failures._clients) <= 10_000


def test_the_dashboard_page_allows_only_its_own_script(make: Make) -> None:
    client = make(admin_token=ADMIN_T)
    page = client.admin("GET", "/", token=None)
    assert page.status_code == 200
    policy = page.headers["content-security-policy"]
    script = policy.split("script-src")[1].split(";")[0].strip()
    assert script.startswith("'sha256-")
    assert "unsafe" not in script
    assert "frame-ancestors 'none'" in policy
    assert "connect-src 'self'" in policy


# -- bodies and paths ----------------------------------------------------------------------------


def nested(depth: int) -> bytes:
    return b'{"action": "release", "note": ' + b"[" * depth + b"]" * depth + b"}"


JSON_CALLS = [("POST", "/rules"), ("POST", "/users/u1/detail"), ("POST", "/release")]


@pytest.mark.parametrize("depth", [33, 100, 960, 975, 990, 5000])
def test_every_json_call_refuses_deep_nesting_with_a_400_and_changes_nothing(
    make: Make, depth: int
) -> None:
    client = make(admin_token=ADMIN_T)
    for method, path in JSON_CALLS:
        response = client.admin(method, path, token=ADMIN_T, content=nested(depth))
        assert response.status_code == 400, (path, response.text)
        assert response.json()["details"] == [
            {"field": "body", "error": "nested deeper than 32 levels"}
        ]
    assert client.admin("GET", "/rules", token=ADMIN_T).json()["rules"] == []


def test_nesting_up_to_the_bound_is_answered_with_the_fields_error(make: Make) -> None:
    client = make(admin_token=ADMIN_T)
    response = client.admin("POST", "/rules", token=ADMIN_T, content=nested(31))
    assert response.status_code in (400, 422), response.text
    assert response.json()["details"][0]["field"] == "note"


def test_bodies_that_are_not_utf8_or_hide_their_nesting_are_refused(make: Make) -> None:
    client = make(admin_token=ADMIN_T)
    deep = '{"note": "\u5c00", "action": "release", "ttl_s": ' + "[" * 985 + "]" * 985 + "}"
    for encoding in ("utf-16-le", "utf-16", "utf-32"):
        response = client.admin("POST", "/rules", token=ADMIN_T, content=deep.encode(encoding))
        assert response.status_code == 400, (encoding, response.text)
        # read as UTF-8 (NUL bytes and all), never guessed: not JSON, or not UTF-8
        [detail] = response.json()["details"]
        assert detail["field"] == "body"
        assert detail["error"] in ("not UTF-8", "malformed JSON")
    latin = client.admin("POST", "/rules", token=ADMIN_T, content=b'{"note": "caf\xe9"}')
    assert latin.json()["details"] == [{"field": "body", "error": "not UTF-8"}]
    unclosed = b'"' + b'\\"' * 20_000  # a string that never ends: scanned once
    response = client.admin("POST", "/rules", token=ADMIN_T, content=unclosed)
    assert response.status_code == 400, response.text
    assert client.admin("GET", "/rules", token=ADMIN_T).json()["rules"] == []


@pytest.mark.parametrize(
    ("body", "key"),
    [
        (b'{"id": "a", "id": "b", "action": "release"}', "id"),
        (b'{"action": "release", "match": {"path": "/a", "path": "/b"}}', "path"),
        (b'{"ttl_s": 60, "ttl_s": 600}', "ttl_s"),
    ],
)
def test_duplicate_keys_are_refused_naming_the_key(make: Make, body: bytes, key: str) -> None:
    client = make(admin_token=ADMIN_T)
    path = "/users/u1/detail" if b"ttl_s" in body else "/rules"
    response = client.admin("POST", path, token=ADMIN_T, content=body)
    assert response.status_code == 400, response.text
    assert response.json()["details"] == [{"field": key, "error": "given twice"}]
    assert client.admin("GET", "/rules", token=ADMIN_T).json()["rules"] == []


@pytest.mark.parametrize("ttl", [1e-6, 0.001, 0.5])
def test_a_rule_that_would_expire_at_once_is_refused(make: Make, ttl: float) -> None:
    client = make(admin_token=ADMIN_T)
    for path, body in (("/rules", rule("a", ttl_s=ttl)), ("/users/u1/detail", {"ttl_s": ttl})):
        response = client.admin("POST", path, token=ADMIN_T, json_body=body)
        assert response.status_code == 422, response.text
        assert response.json()["details"][0]["field"] == "ttl_s"
    expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time()))
    response = client.admin(
        "POST", "/rules", token=ADMIN_T, json_body=rule("b", expires_at=expires)
    )
    assert response.status_code == 422
    assert response.json()["details"][0]["field"] == "expires_at"


# -- on real servers -------------------------------------------------------------------------

SERVER_APPS = {
    "uvicorn": """
from fastapi import FastAPI
from hindsight_web import HindsightMiddleware
app = FastAPI()
app.add_middleware(HindsightMiddleware, admin_token={token!r})
""",
    "gunicorn": """
from flask import Flask
from hindsight_web import HindsightWSGIMiddleware
app = Flask(__name__)
app.wsgi_app = HindsightWSGIMiddleware(app.wsgi_app, admin_token={token!r})
""",
}


@pytest.fixture(scope="module", params=["uvicorn", "gunicorn"])
def real_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    kind: str = request.param
    workdir: Path = tmp_path_factory.mktemp(f"guard_{kind}")
    module = f"guard_{kind}"
    write_app(workdir, module, SERVER_APPS[kind].format(token=ADMIN_T))
    if kind == "uvicorn":
        argv = uvicorn_argv(workdir, module)
    else:
        argv = gunicorn_argv(workdir, module, "-k", "sync", workers=1)
    port = free_port()
    server = Server(argv(port), workdir, module)
    try:
        server.start(port)
        yield server
    finally:
        server.stop()


@pytest.mark.server
@pytest.mark.timeout(60)
@pytest.mark.parametrize("depth", [960, 975, 990, 1000])
def test_deep_json_is_a_400_on_real_servers(real_server: Server, depth: int) -> None:
    for path in ("/_hindsight/rules", "/_hindsight/users/u1/detail", "/_hindsight/release"):
        response = raw_request(real_server.port, "POST", path, token=ADMIN_T, body=nested(depth))
        assert response.status == 400, response
    health = raw_request(real_server.port, "GET", "/_hindsight/health", token=ADMIN_T)
    assert health.status == 200, health


@pytest.mark.server
@pytest.mark.timeout(60)
@pytest.mark.parametrize("escape", ["%FF", "%C3", "%C3%28", "%ED%A0%80", "%F0%9F"])
def test_user_ids_with_escapes_that_are_not_utf8_are_refused_on_real_servers(
    real_server: Server, escape: str
) -> None:
    target = f"/_hindsight/users/bob{escape}/detail"
    refused = raw_request(real_server.port, "POST", target, token=ADMIN_T)
    assert refused.status == 400, refused
    assert refused.json()["details"] == [{"field": "path", "error": "not UTF-8"}]
    rules = raw_request(real_server.port, "GET", "/_hindsight/rules", token=ADMIN_T).json()
    assert not [r for r in rules["rules"] if str(r["match"].get("user_id", "")).startswith("bob")]
    fine = raw_request(
        real_server.port, "POST", "/_hindsight/users/jos%C3%A9/detail", token=ADMIN_T
    )
    assert fine.status in (200, 201), fine
    assert fine.json()["match"] == {"user_id": "josé"}


@pytest.mark.server
@pytest.mark.timeout(60)
def test_guessing_a_token_on_a_real_server_is_refused_after_ten(real_server: Server) -> None:
    statuses = [
        raw_request(real_server.port, "GET", "/_hindsight/rules", token=f"guess-{i:016d}").status
        for i in range(3 * MAX_FAILURES)
    ]
    assert statuses[:MAX_FAILURES] == [401] * MAX_FAILURES
    assert set(statuses[MAX_FAILURES:]) == {429}
    assert "wrong admin token from 127.0.0.1" in real_server.output()
    assert real_server.output().count("wrong admin token") == 1
