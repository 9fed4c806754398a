"""Sinks: released detail in JSON lines, POSTed to a real local endpoint, as OpenTelemetry
logs, routed by rules; their state in ``GET /sinks`` and ``/metrics``."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from hindsight_web import Hindsight, HindsightMiddleware, bind, set_user

from .apps import run_asgi
from .conftest import ListHandler
from .servers import REPO
from .sink_servers import Receiver, self_signed

TOKEN = "sinks-admin-token-0123456789"
AUTH = [("authorization", f"Bearer {TOKEN}")]
log = logging.getLogger("shop")
RECORD_KEYS = {
    "kind",
    "time",
    "level",
    "logger",
    "message",
    "request_id",
    "user_id",
    "session_id",
    "fields",
    "exc_text",
    "stack_info",
    "pathname",
    "lineno",
    "func",
}
SUMMARY_KEYS = {
    "kind",
    "time",
    "request_id",
    "method",
    "path",
    "status",
    "duration_ms",
    "reason",
    "raised",
    "records",
    "dropped",
    "suppressed",
    "user_id",
    "session_id",
    "fields",
}


def make_app(hs: Hindsight) -> Any:
    """An ASGI app: ``/fail/<n>`` answers 500 after two DEBUG lines, the rest 200."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        path = scope["path"]
        set_user("alice")
        bind(tenant="acme")
        log.debug("looking at %s", path, extra={"step": 1})
        log.debug("second look at %s", path)
        status = 500 if path.startswith("/fail") else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})

    return HindsightMiddleware(app, hindsight=hs)


def hindsight(*sinks: dict[str, Any], **options: Any) -> Hindsight:
    return Hindsight(slow_ms=None, admin_token=TOKEN, sinks=list(sinks), **options)


def admin_get(app: Any, call: str) -> Any:
    answer = run_asgi(app, f"/_hindsight/{call}", headers=AUTH)
    assert answer["status"] == 200, answer
    body = answer["body"].decode()
    return json.loads(body) if call != "metrics" else body


def admin_post(app: Any, call: str, body: Any) -> tuple[int, Any]:
    """POST `body` (as JSON) to an admin call; the status and the decoded answer."""
    sent: list[dict[str, Any]] = []
    data = json.dumps(body).encode()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": data, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "path": f"/_hindsight/{call}",
        "raw_path": f"/_hindsight/{call}".encode(),
        "query_string": b"",
        "headers": [(b"authorization", f"Bearer {TOKEN}".encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    answer = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(answer)


def sink_state(app: Any, sink_id: str) -> dict[str, Any]:
    states = admin_get(app, "sinks")["sinks"]
    found: dict[str, Any] = next(s for s in states if s["id"] == sink_id)
    return found


def lines_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- http ---------------------------------------------------------------------------------


@pytest.fixture
def receiver() -> Any:
    server = Receiver().start()
    yield server
    server.stop()


def test_http_sink_posts_json_batches_with_the_documented_fields_and_headers(
    receiver: Receiver, out: ListHandler
) -> None:
    hs = hindsight(
        {
            "id": "siem",
            "type": "http",
            "url": receiver.url,
            "headers": {"Authorization": "Bearer siem-secret"},
        }
    )
    app = make_app(hs)
    answer = run_asgi(app, "/fail/1")
    assert answer["status"] == 500
    assert hs.flush(10)
    objects = receiver.objects()
    assert [o["kind"] for o in objects] == ["release", "record", "record"]
    summary, first, second = objects
    assert set(summary) == SUMMARY_KEYS
    assert summary["method"] == "GET"
    assert summary["path"] == "/fail/1"
    assert summary["status"] == 500
    assert summary["reason"] == "status"
    assert summary["records"] == 2
    assert summary["user_id"] == "alice"
    assert set(first) == RECORD_KEYS
    assert first["message"] == "looking at /fail/1"
    assert first["level"] == "DEBUG"
    assert first["logger"] == "shop"
    assert first["request_id"] == answer["headers"]["x-request-id"]
    assert first["user_id"] == "alice"
    assert first["fields"] == {"tenant": "acme", "step": 1}
    assert first["time"].endswith("Z")
    assert first["func"] == "app"
    assert first["pathname"] == __file__
    assert second["message"] == "second look at /fail/1"
    assert receiver.headers[0]["authorization"] == "Bearer siem-secret"
    assert receiver.headers[0]["content-type"] == "application/json"
    # The app's handlers still have the release: the default goes to every sink.
    assert any("looking at /fail/1" in line for line in out.lines)
    state = sink_state(app, "siem")
    assert state["sent"] == 3
    assert state["url"] == receiver.url


def test_http_sink_retries_a_5xx_and_delivers_each_record_once(receiver: Receiver) -> None:
    receiver.statuses = [500, 503]
    hs = hindsight({"id": "siem", "type": "http", "url": receiver.url})
    app = make_app(hs)
    for n in range(3):
        assert run_asgi(app, f"/fail/{n}")["status"] == 500
    assert hs.flush(30)
    objects = receiver.objects()
    keys = Counter((o["request_id"], o["kind"], o.get("message")) for o in objects)
    assert len(objects) == 9
    assert set(keys.values()) == {1}
    assert receiver.posts >= 3
    state = sink_state(app, "siem")
    assert state["sent"] == 9
    assert state["retries"] >= 2
    assert state["failed"] == 0
    assert "HTTP 50" in state["last_error"]


@pytest.mark.parametrize("status", [400, 401])
def test_http_sink_drops_a_batch_refused_with_4xx_and_shows_why(
    receiver: Receiver, status: int
) -> None:
    receiver.statuses = [status]
    hs = hindsight({"id": "siem", "type": "http", "url": receiver.url})
    app = make_app(hs)
    run_asgi(app, "/fail/1")
    assert hs.flush(10)
    state = sink_state(app, "siem")
    assert state["failed"] == 3
    assert state["sent"] == 0
    assert state["retries"] == 0
    assert f"HTTP {status}" in state["last_error"]
    assert state["last_error_at"] is not None
    assert receiver.objects() == []
    metrics = admin_get(app, "metrics")
    assert 'hindsight_sink_records_total{sink="siem",outcome="failed"} 3' in metrics
    # The next release goes through.
    run_asgi(app, "/fail/2")
    assert hs.flush(10)
    assert len(receiver.objects()) == 3


def test_http_sink_down_for_30_s_then_back(receiver: Receiver) -> None:
    receiver.stop()
    hs = hindsight({"id": "siem", "type": "http", "url": receiver.url, "timeout_s": 2})
    app = make_app(hs)
    answered = []
    started = time.monotonic()
    while time.monotonic() - started < 30:
        answer = run_asgi(app, f"/fail/{len(answered)}", flush=False)
        answered.append(answer["status"])
        time.sleep(0.25)
    assert answered == [500] * len(answered)
    assert len(answered) >= 30  # each request answered at once, sink or no sink
    state = sink_state(app, "siem")
    assert state["sent"] == 0
    assert state["queued"] == 3 * len(answered)
    assert state["retries"] >= 3
    receiver.start()
    assert hs.flush(30)
    objects = receiver.objects()
    assert len(objects) == 3 * len(answered)
    assert sorted(o["path"] for o in objects if o["kind"] == "release") == sorted(
        f"/fail/{n}" for n in range(len(answered))
    )
    assert sink_state(app, "siem")["sent"] == 3 * len(answered)


def test_http_sink_overflow_is_dropped_and_counted(receiver: Receiver) -> None:
    receiver.stop()
    hs = hindsight(
        {"id": "siem", "type": "http", "url": receiver.url, "max_queued": 10, "batch": 5}
    )
    app = make_app(hs)
    for n in range(10):
        assert run_asgi(app, f"/fail/{n}")["status"] == 500
    state = sink_state(app, "siem")
    assert state["dropped"] >= 15
    assert state["queued"] <= 15  # the queue, and the batch being sent
    assert state["dropped"] + state["queued"] == 30
    metrics = admin_get(app, "metrics")
    dropped = f'hindsight_sink_records_total{{sink="siem",outcome="dropped"}} {state["dropped"]}'
    assert dropped in metrics
    assert f'hindsight_sink_queued{{sink="siem"}} {state["queued"]}' in metrics
    receiver.start()
    assert hs.flush(30)
    assert len(receiver.objects()) == state["queued"]


def test_https_sink_verifies_the_certificate(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server = Receiver(tls=(cert, key)).start()
    try:
        refused = hindsight({"id": "siem", "type": "http", "url": server.url})
        app = make_app(refused)
        run_asgi(app, "/fail/1")
        assert refused.flush(10)
        state = sink_state(app, "siem")
        assert state["failed"] == 3
        assert "certificate" in state["last_error"].lower()
        assert server.objects() == []

        trusted = hindsight({"id": "siem", "type": "http", "url": server.url, "verify": str(cert)})
        app = make_app(trusted)
        run_asgi(app, "/fail/2")
        assert trusted.flush(10)
        assert [o["kind"] for o in server.objects()] == ["release", "record", "record"]
        assert sink_state(app, "siem")["failed"] == 0
    finally:
        server.stop()


def test_sinks_state_hides_url_credentials(receiver: Receiver) -> None:
    url = f"http://user:pw@127.0.0.1:{receiver.port}/ingest?api_key=k"
    hs = hindsight({"id": "siem", "type": "http", "url": url})
    state = sink_state(make_app(hs), "siem")
    assert state["url"] == f"http://127.0.0.1:{receiver.port}/ingest"


# -- jsonl ----------------------------------------------------------------------------------


def test_jsonl_sink_rotates_at_the_size_limit_and_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "released.jsonl"
    hs = hindsight(
        {"id": "file", "type": "jsonl", "path": str(path), "max_bytes": 4000, "backups": 100}
    )
    app = make_app(hs)
    for n in range(40):
        run_asgi(app, f"/fail/{n}")
    assert hs.flush(10)
    files = sorted(tmp_path.glob("released.jsonl*"))
    files = [f for f in files if not f.name.endswith(".lock")]
    assert len(files) > 5
    objects = [obj for f in files for obj in lines_of(f)]
    assert len(objects) == 120
    assert Counter(o["kind"] for o in objects) == {"release": 40, "record": 80}
    for f in files:
        assert f.stat().st_size <= 4000
    # The oldest is the highest number; each file holds whole releases in order.
    ordered = [obj for f in sorted(files, key=_age, reverse=True) for obj in lines_of(f)]
    paths = [o["path"] for o in ordered if o["kind"] == "release"]
    assert paths == [f"/fail/{n}" for n in range(40)]


def _age(path: Path) -> int:
    suffix = path.name.rsplit(".", 1)[-1]
    return int(suffix) if suffix.isdigit() else 0


def test_jsonl_sink_keeps_only_backups(tmp_path: Path) -> None:
    path = tmp_path / "released.jsonl"
    hs = hindsight(
        {"id": "file", "type": "jsonl", "path": str(path), "max_bytes": 2000, "backups": 2}
    )
    app = make_app(hs)
    for n in range(40):
        run_asgi(app, f"/fail/{n}")
    assert hs.flush(10)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "released.jsonl",
        "released.jsonl.1",
        "released.jsonl.2",
        "released.jsonl.lock",
    ]
    last = lines_of(path)[-1]
    assert last["message"] == "second look at /fail/39"


def test_a_sink_that_cannot_write_never_reaches_the_app(tmp_path: Path) -> None:
    directory = tmp_path / "gone"
    directory.mkdir()
    hs = hindsight({"id": "file", "type": "jsonl", "path": str(directory / "out.jsonl")})
    directory.rmdir()  # the disk went away after start
    app = make_app(hs)
    assert [run_asgi(app, f"/fail/{n}")["status"] for n in range(3)] == [500] * 3
    assert hs.flush(10)
    state = sink_state(app, "file")
    assert state["failed"] == 9
    assert state["sent"] == 0
    assert "FileNotFoundError" in state["last_error"]
    assert hs.counters()["internal_errors"] >= 1


# -- otel -------------------------------------------------------------------------------------


@pytest.fixture
def otel_logs() -> Any:
    from opentelemetry import _logs
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor

    exporter = InMemoryLogRecordExporter()
    provider = _logs.get_logger_provider()
    if not isinstance(provider, LoggerProvider):
        provider = LoggerProvider()
        _logs.set_logger_provider(provider)
    processor = SimpleLogRecordProcessor(exporter)
    provider.add_log_record_processor(processor)
    yield exporter
    processor.shutdown()  # no more exports to this exporter


def test_otel_sink_emits_records_with_the_span_of_their_log_call(otel_logs: Any) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("shop")
    spans: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        with tracer.start_as_current_span("checkout") as span:
            spans["checkout"] = span.get_span_context()
            log.debug("in the span")
        log.info("after the span")  # below the root's WARNING: kept
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    hs = hindsight({"id": "otel", "type": "otel"})
    answer = run_asgi(HindsightMiddleware(app, hindsight=hs), "/pay")
    assert hs.flush(10)
    exported = [data.log_record for data in otel_logs.get_finished_logs()]
    bodies = [r.body for r in exported]
    assert bodies[1:] == ["in the span", "after the span"]
    assert bodies[0].startswith("hindsight release: GET /pay -> 500")
    summary, inside, after = exported
    span = spans["checkout"]
    assert inside.trace_id == span.trace_id
    assert inside.span_id == span.span_id
    assert after.trace_id == 0  # logged outside any span
    assert (inside.severity_number.value, inside.severity_text) == (5, "DEBUG")
    assert (after.severity_number.value, after.severity_text) == (9, "INFO")
    assert summary.severity_number.value == 9
    rid = answer["headers"]["x-request-id"]
    assert inside.attributes["request_id"] == rid
    assert inside.attributes["code.function.name"] == "app"
    assert inside.attributes["code.file.path"] == __file__
    assert summary.attributes["http.response.status_code"] == 500


def test_otel_severity_follows_the_log_data_model() -> None:
    from hindsight_web.sinks.otel import severity

    assert [severity(n) for n in (5, 10, 15, 20, 30, 40, 50, 60)] == [1, 5, 5, 9, 13, 17, 21, 21]


# -- routing ----------------------------------------------------------------------------------


def test_a_rule_sends_its_releases_only_to_the_sinks_it_names(
    tmp_path: Path, out: ListHandler
) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    hs = hindsight(
        {"id": "a", "type": "jsonl", "path": str(a)},
        {"id": "b", "type": "jsonl", "path": str(b)},
        release_on_status=None,
    )
    hs.add_rule({"id": "to-a", "action": "release", "match": {"path": "/a/*"}, "sinks": ["a"]})
    hs.add_rule(
        {"id": "to-b-app", "action": "release", "match": {"path": "/b/*"}, "sinks": ["b", "app"]}
    )
    hs.add_rule({"id": "everywhere", "action": "release", "match": {"path": "/all/*"}})
    app = make_app(hs)
    run_asgi(app, "/a/1")
    run_asgi(app, "/b/1")
    run_asgi(app, "/all/1")
    assert hs.flush(10)
    in_a = {o["path"] for o in lines_of(a) if o["kind"] == "release"}
    in_b = {o["path"] for o in lines_of(b) if o["kind"] == "release"}
    assert in_a == {"/a/1", "/all/1"}
    assert in_b == {"/b/1", "/all/1"}
    shown = " ".join(out.lines)
    assert "/a/1" not in shown
    assert "looking at /b/1" in shown
    assert "looking at /all/1" in shown
    assert hs.rules.get("to-a").to_json()["sinks"] == ["a"]  # type: ignore[union-attr]


def test_a_sink_out_of_the_default_gets_only_the_rules_that_name_it(tmp_path: Path) -> None:
    path = tmp_path / "support.jsonl"
    hs = hindsight({"id": "support", "type": "jsonl", "path": str(path), "default": False})
    hs.add_rule({"action": "release", "match": {"path": "/vip/*"}, "sinks": ["support", "app"]})
    app = make_app(hs)
    run_asgi(app, "/fail/1")
    run_asgi(app, "/vip/1")
    assert hs.flush(10)
    assert {o["path"] for o in lines_of(path) if o["kind"] == "release"} == {"/vip/1"}


def test_a_retroactive_release_goes_to_the_sinks_it_names(tmp_path: Path, out: ListHandler) -> None:
    path = tmp_path / "support.jsonl"
    hs = hindsight({"id": "support", "type": "jsonl", "path": str(path), "default": False})
    app = make_app(hs)
    run_asgi(app, "/ok/1")  # discarded: kept in the window
    run_asgi(app, "/ok/2")
    out.records.clear()
    status, body = admin_post(app, "release", {"match": {"path": "/ok/1"}, "sinks": ["nope"]})
    assert status == 422
    assert body["details"][0]["field"] == "sinks"
    status, body = admin_post(app, "release", {"match": {"path": "/ok/1"}, "sinks": ["support"]})
    assert (status, body["released"]) == (200, 1)
    assert hs.flush(10)
    written = lines_of(path)
    assert [(o["kind"], o["path"], o["reason"]) for o in written if o["kind"] == "release"] == [
        ("release", "/ok/1", "retro")
    ]
    assert not [r for r in out.records if r.name == "shop"]  # not to the app's handlers
    status, body = admin_post(app, "release", {"match": {"path": "/ok/2"}})
    assert (status, body["released"]) == (200, 1)
    assert hs.flush(10)
    assert [o["path"] for o in lines_of(path) if o["kind"] == "release"] == ["/ok/1"]
    assert [r.getMessage() for r in out.records if r.name == "shop"]  # the default: app
    query = admin_get(app, "audit")["events"][1]["query"]
    assert query["sinks"] == ["support"]


def test_an_unknown_sink_in_a_rule_is_a_422_naming_sinks(receiver: Receiver) -> None:
    hs = hindsight({"id": "siem", "type": "http", "url": receiver.url})
    app = make_app(hs)
    rule = {"action": "release", "match": {"path": "/x"}, "sinks": ["siem", "nope"]}
    status, body = admin_post(app, "rules", rule)
    assert status == 422
    assert body["details"][0]["field"] == "sinks"
    assert "app, siem" in body["details"][0]["error"]
    assert admin_get(app, "rules")["rules"] == []
    for bad in ([], "siem", [1]):
        rule["sinks"] = bad
        status, body = admin_post(app, "rules", rule)
        assert status in (400, 422)
        assert body["details"][0]["field"] == "sinks"


def test_a_rules_file_holds_sinks_and_rules_that_name_them(tmp_path: Path) -> None:
    out_path = tmp_path / "out.jsonl"
    rules = tmp_path / "rules.json"
    rules.write_text(
        json.dumps(
            {
                "rules": [{"action": "release", "match": {"path": "/r/*"}, "sinks": ["file"]}],
                "sinks": [{"id": "file", "type": "jsonl", "path": str(out_path)}],
            }
        )
    )
    hs = Hindsight(slow_ms=None, release_on_status=None, rules=str(rules))
    run_asgi(make_app(hs), "/r/1")
    assert hs.flush(10)
    assert [o["kind"] for o in lines_of(out_path)] == ["release", "record", "record"]

    rules.write_text(
        json.dumps({"rules": [{"action": "release", "match": {}, "sinks": ["missing"]}]})
    )
    with pytest.raises(ValueError, match=r"sinks.*known sinks: app"):
        Hindsight(rules=str(rules))


def test_a_stored_rule_naming_a_sink_this_process_lacks_releases_to_the_others(
    tmp_path: Path, out: ListHandler
) -> None:
    path = tmp_path / "a.jsonl"
    store = f"sqlite:///{tmp_path / 'hs.db'}"
    other = Hindsight(store=store, sinks=[{"id": "far", "type": "jsonl", "path": str(path)}])
    other.add_rule(
        {"id": "r", "action": "release", "match": {"path": "/x"}, "sinks": ["far", "app"]}
    )
    here = Hindsight(store=store, slow_ms=None, admin_token=TOKEN)
    app = make_app(here)
    deadline = time.monotonic() + 5
    while here.rules.get("r") is None and time.monotonic() < deadline:
        time.sleep(0.05)
    run_asgi(app, "/x")
    assert here.flush(10)
    assert any("looking at /x" in line for line in out.lines)
    assert here.sinks.unknown == 1
    other.close()
    here.close()


# -- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sinks", "field"),
    [
        ("nope", "'sinks'"),
        ([{"id": "x", "type": "kafka"}], "'sinks[0].type'"),
        ([{"id": "x y", "type": "otel"}], "'sinks[0].id'"),
        ([{"id": "x", "type": "otel", "colour": 1}], "'sinks[0].colour'"),
        ([{"id": "x", "type": "http", "url": "ftp://h"}], "'sinks[0].url'"),
        ([{"id": "x", "type": "http", "url": "https://h", "verify": "/no/ca.pem"}], "verify"),
        ([{"id": "x", "type": "http", "url": "https://h", "headers": {"a": "b\nc"}}], "headers"),
        ([{"id": "x", "type": "http", "url": "https://h", "timeout_s": 0}], "timeout_s"),
        ([{"id": "x", "type": "jsonl", "path": "/no/such/dir/f.jsonl"}], "'sinks[0].path'"),
        ([{"id": "x", "type": "jsonl", "path": "f", "backups": -1}], "'sinks[0].backups'"),
        ([{"id": "x", "type": "jsonl", "path": "f", "max_queued": 0}], "max_queued"),
        ([{"id": "x", "type": "otel"}, {"id": "x", "type": "otel"}], "'sinks[1].id'"),
        ([{"id": "mine", "type": "logging"}], "'sinks[0].id'"),
        ([{"id": "app", "type": "otel"}], "'sinks[0].id'"),
        ([{"id": "x", "type": "otel", "default": "yes"}], "'sinks[0].default'"),
    ],
)
def test_a_bad_sink_is_a_value_error_naming_the_field(sinks: Any, field: str) -> None:
    with pytest.raises(ValueError, match=re.escape(field)):
        Hindsight(sinks=sinks)


@pytest.mark.parametrize(
    ("module", "sink", "extra"),
    [
        ("httpx", {"id": "s", "type": "http", "url": "https://example.invalid/"}, "http"),
        ("opentelemetry", {"id": "s", "type": "otel"}, "otel"),
    ],
)
def test_a_missing_extra_names_the_pip_install(module: str, sink: Any, extra: str) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules[{module!r}] = None
        from hindsight_web import Hindsight
        try:
            Hindsight(sinks=[{sink!r}])
        except ImportError as exc:
            print(exc)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert f"pip install 'hindsight-web[{extra}]'" in done.stdout, done.stderr


def test_the_app_sink_is_listed_first_and_counts_what_it_wrote(out: ListHandler) -> None:
    hs = hindsight()
    app = make_app(hs)
    run_asgi(app, "/fail/1")
    assert admin_get(app, "sinks")["sinks"] == [
        {
            "id": "app",
            "type": "logging",
            "default": True,
            "queued": 0,
            "sent": 3,
            "dropped": 0,
            "failed": 0,
            "retries": 0,
            "last_error": None,
            "last_error_at": None,
        }
    ]
    assert "hindsight_sink_records_total" not in admin_get(app, "metrics")
