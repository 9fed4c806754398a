"""Redaction: what hindsight keeps and writes holds no secret, what the app writes at once is
unchanged, and session ids are shown only hashed.

The last test runs the whole product on a real `uvicorn --workers 2` with a real SQLite
store and greps every output for the secrets: the server's output (releases, detail mode,
retroactive releases), every admin answer (search, request view, statistics, rules,
metrics, audit) and every byte of the store's files.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

import hindsight_web
from hindsight_web import Hindsight, HindsightMiddleware, hash_session
from hindsight_web.buffer import ARGS, MORE, MSG
from hindsight_web.context import RequestState, _current
from hindsight_web.redact import BUILT_IN_KEYS, CLEAN, REDACTED, Redactor

from .admin_apps import TOKEN as ADMIN_TOKEN
from .conftest import ListHandler
from .servers import Server, launch, uvicorn_argv, write_app

__all__ = ["launch"]  # a fixture

log = logging.getLogger("app.redact")


# -- the redactor on its own ------------------------------------------------------------


@pytest.mark.parametrize(
    ("msg", "args", "shown"),
    [
        ("login user=%s password=%s", ("a", "hunter2"), "login user=a password=[redacted]"),
        ("body %s", ("user=a&password=hunter2&x=1",), "body user=a&password=[redacted]&x=1"),
        (
            'payload {"token": "abc", "user": "bob"}',
            (),
            'payload {"token": "[redacted]", "user": "bob"}',
        ),
        ("payload %s", ({"Api-Key": "abc", "n": 1},), "payload {'Api-Key': '[redacted]', 'n': 1}"),
        ("Authorization: Bearer abc.def\nnext", (), "Authorization: [redacted]\nnext"),
        ("cookie: a=1; b=2", (), "cookie: [redacted]"),
        ("apiKey=%s, x=%s", ("k", "c"), "apiKey=[redacted], x=c"),
        ("X-API-KEY = '%s' ok", ("k",), "X-API-KEY = '[redacted]' ok"),
        (
            "url https://h/cb?access_token=abc&a=1",
            (),
            "url https://h/cb?access_token=[redacted]&a=1",
        ),
        ("user_password=hunter2 done", (), "user_password=[redacted] done"),
        ("%(user)s %(password)s", ({"user": "u", "password": "p"},), "u [redacted]"),
        ("token refreshed for %s", ("bob",), "token refreshed for bob"),
        ("%s=%s", ("password", "hunter2"), "password=[redacted]"),
        ("header %s: %s", ("Authorization", "Bearer abc"), "header Authorization: [redacted]"),
        ("charge cvv=%d pin=%04d", (123, 42), "charge cvv=[redacted] pin=0042"),
        (
            "data %s",
            (collections.OrderedDict(password="x"),),
            "data {'password': '[redacted]'}",
        ),
        (
            "headers %s",
            ([("Authorization", "Bearer x")],),
            "headers [('Authorization', '[redacted]')]",
        ),
        ("body %s", ('{\\"password\\": \\"x\\"}',), 'body {\\"password\\": \\"[redacted]\\"}'),
        ("db postgres://app:pw@db/x", (), "db postgres://app:[redacted]@db/x"),
        ("sent Bearer abcdef123", (), "sent Bearer [redacted]"),
        ("password=", (), "password="),
        ("step %d of %s: value=%r", (1, "request", 42), "step 1 of request: value=42"),
    ],
)
def test_key_shapes_and_fields_are_redacted_in_messages_and_arguments(
    msg: str, args: Any, shown: str
) -> None:
    redactor = Redactor()
    kept_msg, kept_args = redactor.call(msg, args)  # as a logger keeps them: args a tuple
    record = logging.LogRecord("app", logging.DEBUG, __file__, 1, kept_msg, kept_args, None)
    assert record.getMessage() == shown


def test_a_message_that_cannot_be_formatted_keeps_no_argument_of_a_secret_shape() -> None:
    # str.format style: "%" formatting fails, and its error text would show the arguments
    _, args = Redactor().call("token={}", ("x",))
    assert args == (REDACTED,)


def test_a_format_string_is_kept_apart_from_its_arguments_when_only_arguments_are_secret() -> None:
    redactor = Redactor()
    assert redactor.call("login user=%s password=%s", ("a", "x")) == (
        "login user=%s password=%s",
        ("a", REDACTED),
    )
    assert redactor.plan("step %d of %s") is CLEAN  # no key: one dict lookup from now on
    assert redactor.plans["step %d of %s"] is CLEAN


def test_every_built_in_key_is_redacted_whatever_its_case_and_separators() -> None:
    redactor = Redactor()
    for key in BUILT_IN_KEYS:
        for name in (
            key,
            key.upper(),
            "x_" + key,
            key.replace("_", "-"),
            key.title().replace("_", ""),
        ):
            assert redactor.secret(name), name
            assert redactor.text(f"{name}=v1") == f"{name}={REDACTED}", name
    assert not redactor.secret("user")
    assert not redactor.secret("route")


def test_redact_keys_and_patterns_add_to_the_built_in_list() -> None:
    redactor = Redactor(
        keys=["pin", "account-no"], patterns=[r"\b\d{16}\b", "sk_live_[A-Za-z0-9]+"]
    )
    assert redactor.text("pin=1234 accountNo=5 ok") == "pin=[redacted] accountNo=[redacted] ok"
    kept = redactor.call("card %s key %s", ("4111111111111111", "sk_live_abc"))
    assert kept == ("card %s key %s", (REDACTED, REDACTED))
    across = redactor.call("card 4111%s", ("111111111111",))  # the format and its argument
    assert across == ("card [redacted]", ())
    assert redactor.fields({"Account_No": 1, "n": "4111111111111111"}) == {
        "Account_No": REDACTED,
        "n": REDACTED,
    }


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"redact": "yes"}, "'redact'"),
        ({"redact_keys": "password"}, "'redact_keys'"),
        ({"redact_keys": ["pin", ""]}, "'redact_keys[1]'"),
        ({"redact_keys": [3]}, "'redact_keys[0]'"),
        ({"redact_patterns": ["ok", "(unclosed"]}, "'redact_patterns[1]'"),
        ({"redact_patterns": [None]}, "'redact_patterns[0]'"),
    ],
)
def test_bad_redaction_options_are_refused_by_name(options: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=named.replace("[", r"\[").replace("]", r"\]")):
        Hindsight(admin_path=None, **options)


# -- what a request keeps -----------------------------------------------------------------


@pytest.fixture
def request_state() -> Iterator[tuple[Hindsight, RequestState]]:
    hs = Hindsight(slow_ms=None, admin_path=None, window_s=0)
    state = hs.begin("GET", "/login")
    token = _current.set(state)
    try:
        yield hs, state
    finally:
        _current.reset(token)
        hs.finish(state)
        hs.close()


def secrets_logged() -> None:
    """Every way the issue names of putting a secret into a kept record."""
    log.debug("login user=%s password=%s", "alice", "hunter2")
    log.debug("calling the bank", extra={"api_key": "k-SECRET-1", "bank": "acme"})
    log.debug("request body %s", "user=alice&password=hunter2")
    log.debug('upstream answered {"session": "s-SECRET-4", "ok": true}')
    try:
        raise ValueError("bad header Authorization: Bearer b-SECRET-3")
    except ValueError:
        log.debug("upstream refused", exc_info=True)
    log.debug("stack here, cookie: c-SECRET-5", stack_info=True)


SECRETS = ("hunter2", "k-SECRET-1", "b-SECRET-3", "s-SECRET-4", "c-SECRET-5")


def test_nothing_secret_sits_in_a_requests_buffer(
    request_state: tuple[Hindsight, RequestState],
) -> None:
    _, state = request_state
    log.setLevel(logging.INFO)
    secrets_logged()
    kept = list(state.records)
    assert len(kept) == 6
    held = repr([(e[MSG], e[ARGS], e[MORE]) for e in kept])
    for secret in SECRETS:
        assert secret not in held, secret
    assert kept[0][MSG] == "login user=%s password=%s"  # the format is kept, the argument not
    assert kept[0][ARGS] == ("alice", REDACTED)
    assert kept[1][MORE][2] == {"api_key": REDACTED, "bank": "acme"}
    exc_text, _, _, exc_info = kept[4][MORE]
    assert "Authorization: [redacted]" in exc_text
    assert exc_info is None  # the traceback is written from its redacted text


def test_bound_fields_and_session_ids_are_kept_redacted_and_hashed(
    request_state: tuple[Hindsight, RequestState],
) -> None:
    _, state = request_state
    hindsight_web.set_user("alice", session_id="sess-raw-9")
    hindsight_web.bind(token="t-SECRET-2", plan="pro")
    assert state.session_id == hash_session("sess-raw-9")
    assert state.fields == {"token": REDACTED, "plan": "pro"}
    assert "t-SECRET-2" not in repr(state.tags)
    assert "sess-raw-9" not in repr(state.tags)


def test_redaction_applies_to_what_hindsight_writes_never_to_what_the_app_writes_at_once(
    out: ListHandler,
) -> None:
    hs = Hindsight(slow_ms=None, admin_path=None, window_s=0, release_on_status=500)
    own = logging.getLogger("app.own")
    own.setLevel(logging.DEBUG)  # the app's own configuration writes these at once
    log.setLevel(logging.INFO)
    try:
        state = hs.begin("GET", "/login")
        token = _current.set(state)
        own.debug("own line password=%s", "visible-to-the-app")
        secrets_logged()
        _current.reset(token)
        state.status = 500
        assert hs.finish(state) == "status"
        assert hs.flush()
    finally:
        hs.close()
        own.setLevel(logging.NOTSET)
        log.setLevel(logging.NOTSET)
    text = "\n".join(out.lines)
    assert "own line password=visible-to-the-app" in text
    assert "login user=alice password=[redacted]" in text
    assert "request body user=alice&password=[redacted]" in text
    assert "Authorization: [redacted]" in text
    for secret in SECRETS:
        assert secret not in text, secret


def test_redact_false_keeps_records_as_they_were_logged(out: ListHandler) -> None:
    hs = Hindsight(slow_ms=None, admin_path=None, window_s=0, redact=False)
    log.setLevel(logging.INFO)
    try:
        state = hs.begin("GET", "/login")
        token = _current.set(state)
        log.debug("login user=%s password=%s", "alice", "hunter2")
        assert next(iter(state.records))[ARGS] == ("alice", "hunter2")
        _current.reset(token)
        hs.finish(state)
    finally:
        hs.close()
        log.setLevel(logging.NOTSET)


def test_a_session_is_found_and_scoped_by_its_id_or_its_hash() -> None:
    hs = Hindsight(admin_token=ADMIN_TOKEN, slow_ms=None)
    app = FastAPI()

    @app.get("/cart")
    async def cart() -> dict[str, bool]:
        hindsight_web.set_user("alice", session_id="sess-raw-7")
        return {"ok": True}

    app.add_middleware(HindsightMiddleware, hindsight=hs)
    auth = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    hashed = hash_session("sess-raw-7")

    async def run() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            assert (await client.get("/cart")).status_code == 200
            for given in ("sess-raw-7", hashed):
                answer = await client.get(f"/_hindsight/requests?session_id={given}", headers=auth)
                assert [r["session_id"] for r in answer.json()["requests"]] == [hashed]
            rule = {"action": "drop", "match": {"session_id": "sess-raw-7"}}
            added = await client.post("/_hindsight/rules", json=rule, headers=auth)
            assert added.status_code == 201, added.text
            assert added.json()["match"] == {"session_id": hashed}
            assert "sess-raw-7" not in (await client.get("/_hindsight/rules", headers=auth)).text
            stats = await client.get("/_hindsight/stats/sessions", headers=auth)
            assert [s["session"] for s in stats.json()["sessions"]] == [hashed]

    try:
        asyncio.run(run())
    finally:
        hs.close()


# -- every output of a real server ------------------------------------------------------

TOKEN = "redact-admin-token-0123456789"

APP = """
import json, logging, os, sys
from fastapi import FastAPI
from fastapi.responses import JSONResponse
import hindsight_web
from hindsight_web import HindsightMiddleware

class Everything(logging.Formatter):
    # Every attribute of every record: whatever a record carries is in the output.
    def format(self, record):
        shown = {k: v for k, v in record.__dict__.items() if k not in ("args", "exc_info")}
        shown["message"] = record.getMessage()
        if record.exc_info:
            shown["exc"] = self.formatException(record.exc_info)
        return "LINE " + json.dumps(shown, default=repr)

handler = logging.StreamHandler(sys.stderr)
handler.setFormatter(Everything())
logging.basicConfig(level=logging.INFO, handlers=[handler])
log = logging.getLogger("shop")
app = FastAPI()
app.add_middleware(
    HindsightMiddleware, store=os.environ["HS_STORE"], admin_token=os.environ["HS_TOKEN"],
    slow_ms=None, stats_flush_s=0.3,
    rules=[{"id": "keep-logins", "action": "retain", "match": {"path": "/login"},
            "retain_s": 3600}],
    sinks=[{"id": "file", "type": "jsonl", "path": os.environ["HS_JSONL"]}],
)

@app.post("/login")
def login(fail: int = 0):
    hindsight_web.set_user("alice", session_id="sess-raw-SECRET-9")
    hindsight_web.bind(token="t-SECRET-2", plan="pro")
    log.debug("login user=%s password=%s", "alice", "hunter2")
    log.debug("calling the bank", extra={"api_key": "k-SECRET-1"})
    try:
        raise ValueError("bad header Authorization: Bearer b-SECRET-3")
    except ValueError:
        log.debug("upstream refused", exc_info=True)
    log.info("login handled")
    return JSONResponse({"ok": not fail}, status_code=500 if fail else 200)
"""

SERVER_SECRETS = ("hunter2", "k-SECRET-1", "t-SECRET-2", "b-SECRET-3", "sess-raw-SECRET-9")


@pytest.mark.server
def test_no_secret_reaches_any_output_of_a_real_server(
    launch: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "hindsight.db"
    monkeypatch.setenv("HS_STORE", f"sqlite:///{db}")
    monkeypatch.setenv("HS_TOKEN", TOKEN)
    jsonl = tmp_path / "released.jsonl"
    monkeypatch.setenv("HS_JSONL", str(jsonl))
    app_dir = write_app(tmp_path, "redact_app", APP)
    server: Server = launch(
        lambda port: [*uvicorn_argv(app_dir, "redact_app")(port), "--workers", "2"]
    )
    auth = {"authorization": f"Bearer {TOKEN}"}
    answers: list[str] = []

    def admin(method: str, path: str, body: Any = None) -> Any:
        response = httpx.request(
            method, f"{server.base_url}/_hindsight{path}", headers=auth, json=body, timeout=10
        )
        assert response.status_code < 300, (path, response.text)
        answers.append(response.text)
        return response.json() if "json" in response.headers.get("content-type", "") else None

    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        for _ in range(4):
            assert client.post("/login").status_code == 200
        assert client.post("/login?fail=1").status_code == 500  # released
        server.wait_for(lambda: "hindsight release:" in server.output(), "the release")

        found = admin("GET", "/requests?user_id=alice&limit=100")
        assert len(found["requests"]) == 5
        assert {r["session_id"] for r in found["requests"]} == {hash_session("sess-raw-SECRET-9")}
        by_session = admin(
            "GET", f"/requests?session_id={hash_session('sess-raw-SECRET-9')}&limit=100"
        )
        assert len(by_session["requests"]) == 5
        one = found["requests"][-1]["request_id"]
        shown = admin("GET", f"/requests/{one}")
        messages = [r["message"] for r in shown["records"]]
        assert "login user=alice password=[redacted]" in messages

        admin("POST", "/release", {"match": {"path": "/login"}})  # retroactive: to the output
        admin("POST", "/users/alice/detail", {"ttl_s": 60})  # detail mode: written live
        time.sleep(1.5)  # the rule reaches both workers (store_sync_s)
        for _ in range(2):
            assert client.post("/login").status_code == 200

    server.wait_for(
        lambda: server.output().count("login user=alice password=[redacted]") >= 7, "the writes"
    )
    time.sleep(1.0)  # the statistics and the retained requests reach the store
    sessions = admin("GET", "/stats/sessions")
    assert [s["session"] for s in sessions["sessions"]] == [hash_session("sess-raw-SECRET-9")]
    for path in (
        "/stats",
        "/stats/slow",
        "/rules",
        "/audit",
        "/metrics",
        "/requests?limit=1000",
        "/",
    ):
        admin("GET", path)
    retained = admin("GET", "/requests?path=/login&since=-1h&limit=1000")
    assert retained["requests"]

    output = server.output()
    assert "Authorization: [redacted]" in output
    assert '"token": "[redacted]"' in output  # the bound field, on the app's own INFO line too
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("hindsight.db*"))
    with sqlite3.connect(db) as connection:
        dump = "\n".join(connection.iterdump())
    assert "keep-logins" in dump
    sink_lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    sunk = [
        line for line in sink_lines if line.get("message") == "login user=alice password=[redacted]"
    ]
    assert len(sunk) >= 5  # the status release and the retroactive ones
    assert {line["session_id"] for line in sunk} == {hash_session("sess-raw-SECRET-9")}
    everything = {
        "server output": output,
        "admin answers": "\n".join(answers),
        "store": dump,
        "jsonl sink": jsonl.read_text(),
    }
    for where, text in everything.items():
        for secret in SERVER_SECRETS:
            assert secret not in text, (secret, where)
    for secret in SERVER_SECRETS:
        assert secret.encode() not in stored, (secret, "store files")
    lines = [json.loads(line[5:]) for line in output.splitlines() if line.startswith("LINE ")]
    assert any(line.get("api_key") == REDACTED for line in lines)
