"""Options, set_user/bind validation, fail-open behaviour."""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
import uuid
from typing import Any

import pytest

import hindsight_web
from hindsight_web import Hindsight, HindsightMiddleware, HindsightWSGIMiddleware
from hindsight_web.rules import RuleSet
from hindsight_web.tokens import Caller

from .apps import run_asgi
from .conftest import ListHandler


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("slow_ms", "fast", "invalid 'slow_ms' 'fast': expected a number >= 0 or None"),
        ("slow_ms", -1, "invalid 'slow_ms' -1"),
        ("release_on_status", 42, "expected an HTTP status"),
        ("release_on_exception", "yes", "expected True or False"),
        ("capture_level", "LOUD", "invalid 'capture_level' 'LOUD': expected a level name"),
        ("admin_path", "no-slash", "invalid 'admin_path'"),
        ("admin_path", "/a/../b", "invalid 'admin_path'"),
        ("store", "mysql://x", "invalid 'store'"),
        ("store", "sqlite:///no/such/dir/x.db", "invalid 'store'.*does not exist"),
        ("store", "redis://127.0.0.1:notaport/0", "invalid 'store'"),
        ("store_sync_s", 0, "invalid 'store_sync_s' 0: expected a number of seconds > 0"),
        ("stats_flush_s", "5", "invalid 'stats_flush_s'"),
        ("max_rules", 0, "invalid 'max_rules' 0: expected an integer > 0"),
        ("max_records", 0, "invalid 'max_records' 0: expected an integer > 0"),
        ("max_bytes", 1.5, "invalid 'max_bytes'"),
        ("request_id_header", "X Request", "invalid 'request_id_header'"),
        ("admin_token", "", "invalid 'admin_token'"),
    ],
)
def test_bad_options_name_the_field(option: str, value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Hindsight(**{option: value})


def test_unknown_option_is_refused() -> None:
    with pytest.raises(TypeError, match="slowms"):
        Hindsight(slowms=3)  # type: ignore[call-arg]


def test_admin_token_defaults_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HINDSIGHT_ADMIN_TOKEN", "from-env-0123456789")
    assert Hindsight().tokens.identify(b"from-env-0123456789") == Caller("admin", False)
    given = Hindsight(admin_token="given-0123456789ab").tokens
    assert given.identify(b"given-0123456789ab") == Caller("admin", False)
    assert given.identify(b"from-env-0123456789") is None


def test_set_user_and_bind_outside_requests_do_nothing() -> None:
    hindsight_web.set_user("alice")
    hindsight_web.bind(tenant="acme")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: hindsight_web.set_user(["x"]), "invalid 'user_id'"),
        (lambda: hindsight_web.set_user("u", session_id=1.5), "invalid 'session_id'"),
        (lambda: hindsight_web.bind(levelname="x"), "invalid bind\\(\\) field 'levelname'"),
        (lambda: hindsight_web.bind(**{"not an id": 1}), "invalid bind"),
    ],
)
def test_bad_identity_or_field_is_refused(call: Any, message: str) -> None:
    with pytest.raises((TypeError, ValueError), match=message):
        call()


def test_release_triggers_can_be_turned_off(out: ListHandler) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        logging.getLogger("app").debug("detail")
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    run_asgi(HindsightMiddleware(app, release_on_status=None, slow_ms=None))
    assert out.records == []


def test_broken_begin_fails_open(out: ListHandler, monkeypatch: pytest.MonkeyPatch) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"served"})

    mw = HindsightMiddleware(app)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("store down")

    # What `begin` reads of the rules breaks (the compiled core's own methods cannot be
    # replaced on it).
    monkeypatch.setattr(RuleSet, "at_start", property(broken), raising=False)
    for _ in range(3):
        assert run_asgi(mw)["body"] == b"served"
    reports = [r for r in out.records if r.name == "hindsight_web"]
    assert len(reports) == 1
    assert "internal error in begin" in reports[0].getMessage()
    assert hindsight_web.errors.count() == 3


def test_broken_rule_decision_releases_nothing_and_fails_open(
    out: ListHandler, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        logging.getLogger("app").debug("kept")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"served"})

    mw = HindsightMiddleware(app, slow_ms=0)
    mw.hindsight.add_rule({"id": "bob", "action": "release", "match": {"user_id": "bob"}})

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("rules broken")

    monkeypatch.setattr(mw.hindsight.rules, "decide", broken)
    assert run_asgi(mw)["body"] == b"served"
    state = mw.hindsight.begin("GET", "/direct")
    assert mw.hindsight.finish(state) is None  # nothing was released, so no reason
    assert [r.getMessage() for r in out.records if r.name == "app"] == []
    assert mw.hindsight.counters()["records_released"] == 0
    reports = [r for r in out.records if r.name == "hindsight_web" and "internal" in r.msg]
    assert len(reports) == 1
    assert "internal error in finish" in reports[0].getMessage()


def test_counters_after_traffic(out: ListHandler) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        logging.getLogger("app").debug("one")
        status = 500 if scope["path"] == "/bad" else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    mw = HindsightMiddleware(app)
    for path in ["/", "/bad", "/", "/bad"]:
        run_asgi(mw, path)
    counts = mw.hindsight.counters()
    assert counts["requests"] == 4
    assert counts["releases"] == 2
    assert counts["records_captured"] == 4
    assert counts["records_released"] == 2
    assert counts["buffer_bytes"] == 0


def test_records_made_before_any_middleware_carry_the_attributes() -> None:
    import subprocess
    import sys

    code = (
        "import logging, sys, hindsight_web;"
        "logging.basicConfig(stream=sys.stdout, format='%(request_id)s %(message)s');"
        "logging.warning('at start-up')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout == "None at start-up\n"
    assert done.stderr == ""


def test_background_threads_end_with_a_hindsight_nobody_holds() -> None:
    def ours() -> set[threading.Thread]:
        names = ("hindsight-sync", "hindsight-rules-poller")
        return {t for t in threading.enumerate() if t.name in names and t.is_alive()}

    before = ours()  # other tests' threads may end meanwhile: these are not counted
    hs = Hindsight(rules_url="http://127.0.0.1:9/rules.json", rules_poll_s=0.05)
    started = ours() - before
    assert sorted(t.name for t in started) == ["hindsight-rules-poller", "hindsight-sync"]
    del hs  # dropped without close()
    gc.collect()
    deadline = time.monotonic() + 5
    while any(t.is_alive() for t in started):
        assert time.monotonic() < deadline, [t.name for t in started if t.is_alive()]
        time.sleep(0.05)


def test_request_ids_are_distinct_uuid4s_and_a_forked_child_makes_its_own() -> None:
    from hindsight_web.core import new_request_id

    ids = [new_request_id() for _ in range(1000)]  # several batches
    assert len(set(ids)) == 1000
    for rid in ids:
        parsed = uuid.UUID(rid)
        assert (parsed.hex, parsed.version, parsed.variant) == (rid, 4, uuid.RFC_4122)
    new_request_id()  # the parent holds ids made ahead
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        os.write(write, " ".join(new_request_id() for _ in range(100)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read().split()
    os.waitpid(pid, 0)
    parent = [new_request_id() for _ in range(100)]
    assert len(child) == 100
    assert not set(child) & set(parent)


@pytest.mark.parametrize("status", ["200 OK", None, 2.5], ids=["text", "none", "float"])
def test_a_response_start_with_a_status_asgi_forbids_reaches_the_server_as_sent(
    status: Any,
) -> None:
    # The server, not hindsight, answers for a malformed message (in both builds).
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"served"})

    result = run_asgi(HindsightMiddleware(app))
    assert result["exception"] is None
    assert result["status"] == status
    assert result["body"] == b"served"
    assert hindsight_web.errors.count() == 0


def test_a_wsgi_app_passing_headers_as_a_tuple_is_served_as_sent() -> None:
    seen: list[Any] = []

    def app(environ: Any, start_response: Any) -> Any:
        start_response("200 OK", (("Content-Type", "text/plain"),))
        return [b"served"]

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        seen.append(headers)

    response = HindsightWSGIMiddleware(app)({"REQUEST_METHOD": "GET"}, start_response)
    assert list(response) == [b"served"]
    response.close()  # type: ignore[attr-defined]
    assert seen[0][0] == ("Content-Type", "text/plain")
    assert seen[0][1][0] == "X-Request-ID"
