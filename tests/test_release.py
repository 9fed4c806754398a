"""The release path under pressure (DESIGN.md, "The life of one request" step 7 and "Release
limits"): releases are written off the request path, through a bounded queue, at a bounded
rate in storms, within a shared budget that loses no small request, as lines that cannot be
forged, without recursion in detail mode, and counted.

Releases are written by a background thread: `flush(hs)` waits for them before a test looks
at what was written.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest

import hindsight_web
from hindsight_web import Hindsight, HindsightMiddleware, HindsightWSGIMiddleware
from hindsight_web.options import DEFAULTS

from .admin_apps import TOKEN, make_client
from .apps import call_asgi, call_wsgi, log, run_asgi
from .conftest import ListHandler
from .servers import LOG_FORMAT, REPO, Server, launch, uvicorn_argv, write_app

__all__ = ["launch"]

SUMMARY = re.compile(
    r"hindsight release: (?P<method>\S+) (?P<path>.*) -> (?P<outcome>.+?) in [0-9.]+ ms "
    r"\(reason: (?P<reason>[^)]+)\) request_id=(?P<rid>\S+) records=(?P<records>\d+) "
    r"dropped=(?P<dropped>\d+)(?: suppressed=(?P<suppressed>\d+))?"
)
Launch = Callable[..., Server]
View = Callable[[], int]


# -- helpers -------------------------------------------------------------------------------


def flush(hs: Hindsight) -> None:
    """Wait until every release handed over so far is written (when they are written in the
    background)."""
    wait = getattr(hs, "flush", None)
    if wait is not None:
        assert wait(timeout_s=5.0), "releases were still being written after 5 s"


def make_hindsight(**options: Any) -> Hindsight:
    """A Hindsight with `options`, leaving out the release-limit options a Hindsight does not
    take, so that a test fails on the behaviour it checks rather than on a keyword."""
    accepted = DEFAULTS
    return Hindsight(**{name: value for name, value in options.items() if name in accepted})


NO_RATE_LIMIT = {"max_releases_per_s": 1_000_000}
"""Where a test releases many requests on purpose and checks something else than the limit."""


def summaries(records: list[logging.LogRecord]) -> dict[str, re.Match[str]]:
    """The release summaries among `records`, by request id."""
    found = {}
    for record in records:
        if record.name == "hindsight_web":
            m = SUMMARY.fullmatch(record.getMessage())
            if m:
                assert m["rid"] not in found, f"two summaries for {m['rid']}"
                found[m["rid"]] = m
    return found


def serve(adapter: str, view: View, hs: Hindsight) -> Callable[[str], dict[str, Any]]:
    """`request(path)` through `view` (logs, returns the status) behind the ASGI or WSGI
    middleware."""
    if adapter == "asgi":

        async def asgi(scope: Any, receive: Any, send: Any) -> None:
            status = view()
            await send({"type": "http.response.start", "status": status, "headers": []})
            await send({"type": "http.response.body", "body": b"done"})

        app: Any = HindsightMiddleware(asgi, hindsight=hs)
        return lambda path: run_asgi(app, unquote(path), flush=False)

    def wsgi(environ: Any, start_response: Any) -> list[bytes]:
        status = view()
        start_response(f"{status} X", [("Content-Type", "text/plain")])
        return [b"done"]

    wrapped = HindsightWSGIMiddleware(wsgi, hindsight=hs)
    # A WSGI server hands over the path as latin-1 decoded bytes (PEP 3333).
    return lambda path: call_wsgi(wrapped, unquote(path, encoding="latin-1"), flush=False)


def failing(lines: int) -> View:
    """A view that logs `lines` DEBUG records and answers 500."""

    def view() -> int:
        for i in range(lines):
            log.debug("step %d", i)
        return 500

    return view


class Gate(logging.Handler):
    """A handler that holds up the thread writing a record of the `app` logger until `opened`
    is set, or `timeout_s` passed (it then stays open, and says so in `timed_out`); other
    records pass. Keeps the logger and the start of the message of each record it handled."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__()
        self.opened = threading.Event()
        self.timeout_s = timeout_s
        self.timed_out = False
        self.handled: list[tuple[str, str]] = []

    def handle(self, record: logging.LogRecord) -> bool:
        # Waits before taking the handler's lock: a record of another logger is not held up.
        if record.name == "app" and not self.opened.wait(self.timeout_s):
            self.timed_out = True
            self.opened.set()
        return bool(super().handle(record))

    def emit(self, record: logging.LogRecord) -> None:
        self.handled.append((record.name, record.getMessage()[:40]))

    def messages(self, logger: str) -> list[str]:
        return [message for name, message in self.handled if name == logger]


@pytest.fixture
def gate_on_root() -> Iterator[Callable[[float], Gate]]:
    """`gate_on_root(timeout_s)`: the only handler of the root logger (at INFO) is a Gate;
    it is opened when the test ends."""
    gates: list[Gate] = []

    def install(timeout_s: float) -> Gate:
        gate = Gate(timeout_s)
        gates.append(gate)
        root = logging.getLogger()
        root.handlers[:] = [gate]
        root.setLevel(logging.INFO)
        return gate

    yield install
    for gate in gates:
        gate.opened.set()


# -- 1. a slow handler never stalls other requests -----------------------------------------

# A stalled probe waited for at least one call of the slow handler: 1 s. An answered probe
# (a new connection to uvicorn, a FastAPI route) takes a few milliseconds, and rarely more
# than 100-200 ms on a loaded 2-core CI machine. The bound sits halfway: five times the
# 100 ms the issue asked for, so that load never makes it flake, and half a stall.
PROBE_BOUND_S = 0.5

SLOW_HANDLER_APP = """
import logging
import sys
import time

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

from hindsight_web import HindsightMiddleware


class SlowHandler(logging.Handler):
    def emit(self, record):
        if record.levelno == logging.DEBUG:
            time.sleep(1.0)


logging.basicConfig(level=logging.INFO, stream=sys.stderr, format={FORMAT})
logging.getLogger().addHandler(SlowHandler())
log = logging.getLogger("app")
app = FastAPI()


@app.get("/fail")
async def fail():
    for i in range(5):
        log.debug("fail-debug-%d", i)
    return PlainTextResponse("failed", status_code=500)


@app.get("/ok")
async def ok():
    return PlainTextResponse("ok")


app.add_middleware(HindsightMiddleware)
"""


@pytest.mark.server
@pytest.mark.timeout(60)
def test_a_slow_handler_writing_a_release_does_not_stall_other_requests(
    launch: Launch, tmp_path: Path
) -> None:
    write_app(tmp_path, "slow_handler_app", SLOW_HANDLER_APP)
    server = launch(uvicorn_argv(tmp_path, "slow_handler_app"), "uvicorn")

    fail = httpx.get(f"{server.base_url}/fail", timeout=30)
    assert fail.status_code == 500
    rid = fail.headers["x-request-id"]
    # The first released record is written: the slow handler is now busy with it.
    server.wait_for(
        lambda: any(line.message == "fail-debug-0" for line in server.lines_of(rid)),
        "the release of /fail to start",
    )
    started = time.monotonic()
    probe = httpx.get(f"{server.base_url}/ok", timeout=30)  # a new connection
    waited = time.monotonic() - started

    assert probe.status_code == 200
    assert waited < PROBE_BOUND_S, f"GET /ok waited {waited:.2f} s for the release of /fail"
    server.wait_for(
        lambda: len(server.lines_of(rid)) == 1 + 5, "the whole release of /fail", timeout=15
    )
    assert [line.message for line in server.lines_of(rid)[1:]] == [
        f"fail-debug-{i}" for i in range(5)
    ]


@pytest.mark.parametrize("adapter", ["asgi", "wsgi"])
def test_the_middleware_returns_before_a_slow_handler_wrote_the_release(
    adapter: str, gate_on_root: Callable[[float], Gate]
) -> None:
    gate = gate_on_root(1.0)
    hs = Hindsight()
    request = serve(adapter, failing(5), hs)

    result = request("/fail")

    assert result["status"] == 500
    written = gate.messages("app")
    assert written == [], f"the request waited until the handler had written {written}"
    gate.opened.set()
    flush(hs)
    assert gate.messages("app") == [f"step {i}" for i in range(5)]


# -- 2. a bounded queue ----------------------------------------------------------------------

QUEUE_REQUESTS = 10_000
QUEUE_LINES = 4  # of about 6 KB each: about 24 KB per release
QUEUE_CHECKPOINT = 4_000


def test_releases_waiting_for_a_blocked_handler_take_bounded_memory_and_drops_are_counted(
    gate_on_root: Callable[[float], Gate],
) -> None:
    gate = gate_on_root(30.0)
    hs = make_hindsight(**NO_RATE_LIMIT)
    payload = "x" * 6000

    async def app(scope: Any, receive: Any, send: Any) -> None:
        for i in range(QUEUE_LINES):
            log.debug("%s line %d %s", scope["path"], i, payload)
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    wrapped = HindsightMiddleware(app, hindsight=hs)

    async def requests(start: int, stop: int) -> None:
        for i in range(start, stop):
            await call_asgi(wrapped, f"/r/{i}", flush=False)

    tracemalloc.start()
    try:
        asyncio.run(requests(0, QUEUE_CHECKPOINT))
        at_checkpoint = tracemalloc.get_traced_memory()[0]
        asyncio.run(requests(QUEUE_CHECKPOINT, QUEUE_REQUESTS))
        at_end = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert not gate.timed_out, f"the requests waited {gate.timeout_s} s for the blocked handler"
    gate.opened.set()
    flush(hs)

    # Every release queued from then on would hold about 6,000 * 24 KB = 144 MB more.
    grown = at_end - at_checkpoint
    assert grown < 24_000_000, (
        f"memory grew by {grown / 1e6:.0f} MB over the last "
        f"{QUEUE_REQUESTS - QUEUE_CHECKPOINT} requests"
    )
    counters = hs.counters()
    written = len(gate.messages("app"))
    # Bounded by the byte budget (records dropped as they come) or by the queue (whole
    # releases dropped, their records counted as dropped too): every record is written
    # or counted.
    assert counters["records_dropped"] > 0, f"nothing counted as dropped: {counters}"
    assert written + counters["records_dropped"] == QUEUE_REQUESTS * QUEUE_LINES
    reports = [
        message
        for message in gate.messages("hindsight_web")
        if not message.startswith("hindsight release:")
    ]
    assert len(reports) == 1, f"expected one report of the drops, got {reports}"


# -- 3. storms -------------------------------------------------------------------------------

ADMIN_TOKEN = "release-tests-admin-token"
STORM_REQUESTS = 100
STORM_LINES = 3
STORM_RATE = 5


def storm_app(hs: Hindsight) -> Any:
    """Every request says who it is for (header x-user), logs STORM_LINES DEBUG records and
    answers 500."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        user = dict(scope["headers"])[b"x-user"].decode()
        hindsight_web.set_user(user)
        for i in range(STORM_LINES):
            log.debug("%s step %d", user, i)
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    return HindsightMiddleware(app, hindsight=hs)


def test_a_storm_of_failures_writes_at_most_the_rate_of_releases(out: ListHandler) -> None:
    hs = make_hindsight(max_releases_per_s=STORM_RATE, admin_token=ADMIN_TOKEN)
    hs.add_rule({"id": "vip-detail", "action": "detail", "match": {"user_id": "vip"}})
    app = storm_app(hs)
    users = ["vip" if i % 10 == 0 else f"user-{i}" for i in range(STORM_REQUESTS)]

    async def storm() -> tuple[list[str], float]:
        rids = []
        started = time.perf_counter()
        for user in users:
            result = await call_asgi(app, "/checkout", headers=[("x-user", user)], flush=False)
            assert result["status"] == 500
            rids.append(result["headers"]["x-request-id"])
            await asyncio.sleep(0.01)  # 100 requests in about a second
        return rids, time.perf_counter() - started

    rids, elapsed = asyncio.run(storm())
    flush(hs)

    found = summaries(out.records)
    assert sorted(found) == sorted(rids), "every request has its summary"
    written = Counter(r.request_id for r in out.records if r.name == "app")
    full = []
    suppressed = []
    for user, rid in zip(users, rids, strict=True):
        summary = found[rid]
        if summary["suppressed"] is None:
            assert written[rid] == STORM_LINES, f"{user}: {summary.group(0)}"
            if user != "vip":
                full.append(user)
        else:
            assert user != "vip", f"a detail rule's request was suppressed: {summary.group(0)}"
            assert int(summary["suppressed"]) == STORM_LINES, summary.group(0)
            assert written[rid] == 0, f"{user}: {summary.group(0)}"
            suppressed.append(user)
    bound = STORM_RATE * 2 + STORM_RATE * elapsed
    assert len(full) <= bound, f"{len(full)} releases written in {elapsed:.2f} s (at most {bound})"
    counters = hs.counters()
    assert counters["releases_suppressed"] == len(suppressed)
    assert counters["records_suppressed"] == len(suppressed) * STORM_LINES

    metrics = run_asgi(
        app, "/_hindsight/metrics", headers=[("Authorization", f"Bearer {ADMIN_TOKEN}")]
    )
    assert metrics["status"] == 200
    assert f"hindsight_releases_suppressed_total {len(suppressed)}" in (
        metrics["body"].decode().splitlines()
    )


# -- 4. the shared budget loses no small request ----------------------------------------------

CONCURRENT = 1_500
LINES_EACH = 13  # of about 1 KB each (with the per-record overhead): about 13 KB per request


def test_a_thousand_and_a_half_small_concurrent_requests_all_keep_their_records(
    out: ListHandler,
) -> None:
    hs = make_hindsight(**NO_RATE_LIMIT)  # max_total_bytes: the default 64 MB
    payload = "y" * 800
    all_in = asyncio.Event()
    arrived = 0

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal arrived
        for i in range(LINES_EACH):
            log.debug("line %d %s", i, payload)
        arrived += 1
        if arrived == CONCURRENT:
            all_in.set()
        await all_in.wait()  # every request is in flight, holding its records
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    wrapped = HindsightMiddleware(app, hindsight=hs)

    async def together() -> list[dict[str, Any]]:
        return await asyncio.gather(
            *(call_asgi(wrapped, f"/r/{i}", flush=False) for i in range(CONCURRENT))
        )

    results = asyncio.run(together())
    flush(hs)

    found = summaries(out.records)
    written = Counter(r.request_id for r in out.records if r.name == "app")
    complete = (str(LINES_EACH), "0", LINES_EACH)
    lost = {}
    for result in results:
        rid = result["headers"]["x-request-id"]
        summary = found.get(rid)
        if summary is None or (summary["records"], summary["dropped"], written[rid]) != complete:
            lost[rid] = f"{summary and summary.group(0)} (lines written: {written[rid]})"
    example = next(iter(lost.values()), None)
    assert not lost, f"{len(lost)} of {CONCURRENT} requests lost records, e.g. {example}"


# -- 5. log forging -----------------------------------------------------------------------------

FORGED_USER = "u\nFAKE 2026-01-01 00:00:00 CRITICAL root forged"
FORGED_NOTE = "x\u2028y"
# NEL, LS, PS, RLO and a C1 control (CSI), percent-encoded as UTF-8.
FORGED_PATH = "/cart/%C2%85%E2%80%A8%E2%80%A9%E2%80%AE%C2%9B"
RAW_PATH = unquote(FORGED_PATH)
# Newlines, every C0 and C1 control, line and paragraph separators, the right-to-left override.
UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202e]")
FORMAT_WITH_NOTE = (
    "%(levelname)s %(name)s rid=%(request_id)s uid=%(user_id)s note=%(note)s %(message)s"
)


def escaped(char: str) -> tuple[str, ...]:
    """How `char` may appear escaped: \\xNN or \\uNNNN (and \\n for a newline)."""
    code = ord(char)
    forms = (f"\\x{code:02x}",) if code < 0x100 else (f"\\u{code:04x}",)
    return (*forms, "\\n") if char == "\n" else forms


@pytest.mark.parametrize("adapter", ["asgi", "wsgi"])
def test_request_values_cannot_forge_log_lines(adapter: str, out: ListHandler) -> None:
    out.setFormatter(logging.Formatter(FORMAT_WITH_NOTE, defaults={"note": None}))
    hs = Hindsight()

    def view() -> int:
        hindsight_web.set_user(FORGED_USER)
        hindsight_web.bind(note=FORGED_NOTE)
        log.debug("cart loaded")
        return 500

    result = serve(adapter, view, hs)(FORGED_PATH)
    assert result["status"] == 500
    flush(hs)
    hs.add_rule(
        {
            "id": "forged-note",
            "action": "release",
            "match": {"path": "/never"},
            "note": "ticket 1\nFAKE CRITICAL root forged\u2028",
        },
        by="test",
    )

    unsafe = [line for line in out.lines if UNSAFE.search(line)]
    assert not unsafe, "lines with raw control or separator characters:\n" + "\n".join(
        map(ascii, unsafe)
    )
    summary, record, audit = out.lines
    for char in RAW_PATH[len("/cart/") :]:
        assert any(form in summary for form in escaped(char)), (ascii(char), summary)
    for line in (summary, record):
        assert any(form in line for form in escaped("\n")), line
    assert escaped("\u2028")[0] in record
    assert "rule added" in audit
    assert any(form in audit for form in escaped("\n")), audit
    assert escaped("\u2028")[0] in audit

    summary_record, released = out.records[:2]
    assert released.getMessage() == "cart loaded"
    assert released.hindsight_raw["user_id"] == FORGED_USER
    assert released.hindsight_raw["note"] == FORGED_NOTE
    fields = [
        *vars(summary_record).values(),
        *getattr(summary_record, "hindsight_raw", {}).values(),
    ]
    assert RAW_PATH in fields, "the summary carries the path as it was sent"


# -- 6. detail mode does not recurse --------------------------------------------------------------


class LoggingHandler(logging.Handler):
    """A handler that logs at DEBUG through a library's logger while it handles a record."""

    def __init__(self) -> None:
        super().__init__()
        self.handled: list[str] = []
        self.library = logging.getLogger("library")

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        self.handled.append(message)
        self.library.debug("handling %s", message)


def test_records_a_handler_makes_in_detail_mode_are_written_once_without_recursion() -> None:
    handler = LoggingHandler()
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    hs = Hindsight()
    hs.add_rule({"id": "alice-detail", "action": "detail", "match": {"user_id": "alice"}})

    def view() -> int:
        hindsight_web.set_user("alice")
        for i in range(4):
            log.debug("app %d", i)
        return 200

    serve("asgi", view, hs)("/")
    flush(hs)

    # The library's DEBUG records, made while hindsight hands a record to the handler,
    # are never kept nor detailed: they take the stdlib's path, which drops them (root at
    # INFO), as it would without hindsight.
    handled = [m for m in handler.handled if m.startswith(("app", "handling"))]
    assert handled == [f"app {i}" for i in range(4)], f"{len(handled)} records handled"


# -- 7. the admin answers a committed change as committed ----------------------------------------


class FailingAuditHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "hindsight_web" and "hindsight rule added" in record.getMessage():
            raise RuntimeError("the log handler is down")


@pytest.mark.parametrize("adapter", ["fastapi", "flask"])
def test_a_rule_added_is_answered_201_when_a_handler_fails_on_its_audit_line(
    adapter: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HINDSIGHT_ADMIN_TOKEN", raising=False)
    root = logging.getLogger()
    root.handlers[:] = [FailingAuditHandler()]
    root.setLevel(logging.INFO)
    client = make_client(adapter, Hindsight(admin_token=TOKEN))
    try:
        rule = {"id": "checkout", "action": "release", "match": {"path": "/checkout"}}
        added = client.admin("POST", "/rules", json_body=rule)
        assert added.status_code == 201, added.text
        assert [r["id"] for r in client.rules()] == ["checkout"]
    finally:
        client.close()


# -- 8. records written live by a detail rule are counted ----------------------------------------


def test_records_written_live_by_a_detail_rule_are_counted(out: ListHandler) -> None:
    hs = Hindsight()
    hs.add_rule({"id": "alice-detail", "action": "detail", "match": {"user_id": "alice"}})

    def view() -> int:
        log.debug("before 1")
        log.debug("before 2")
        hindsight_web.set_user("alice")
        for i in range(3):
            log.debug("live %d", i)
        return 200

    before = hs.counters()
    serve("asgi", view, hs)("/")
    flush(hs)
    after = hs.counters()

    assert [r.getMessage() for r in out.records if r.name == "app"] == [
        "before 1",
        "before 2",
        "live 0",
        "live 1",
        "live 2",
    ]
    counted = {key: after[key] - before[key] for key in ("records_captured", "records_released")}
    assert counted == {"records_captured": 5, "records_released": 5}


# -- 9. uvicorn's access and error lines carry the request id ------------------------------------

UVICORN_LINES_APP = """
import logging

from fastapi import FastAPI

from hindsight_web import HindsightMiddleware

log = logging.getLogger("app")
inner = FastAPI()


@inner.get("/ok")
async def ok():
    log.info("ok-info")
    return {"ok": True}


@inner.get("/boom")
async def boom():
    raise RuntimeError("boom")


# Around the whole app: the 500 of FastAPI's error middleware carries X-Request-ID.
app = HindsightMiddleware(inner)
"""


def uvicorn_log_config() -> dict[str, Any]:
    """A dictConfig whose formats print the request id for the app and uvicorn's loggers."""
    handler = {"class": "logging.StreamHandler", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {name: {"format": LOG_FORMAT} for name in ("app", "access", "error")},
        "handlers": {name: {**handler, "formatter": name} for name in ("app", "access", "error")},
        "loggers": {
            "uvicorn.error": {"level": "INFO", "handlers": ["error"], "propagate": False},
            "uvicorn.access": {"level": "INFO", "handlers": ["access"], "propagate": False},
        },
        "root": {"level": "INFO", "handlers": ["app"]},
    }


@pytest.mark.server
@pytest.mark.timeout(60)
def test_uvicorn_access_and_error_lines_carry_the_request_id(
    launch: Launch, tmp_path: Path
) -> None:
    write_app(tmp_path, "uvicorn_lines_app", UVICORN_LINES_APP)
    config = tmp_path / "log_config.json"
    config.write_text(json.dumps(uvicorn_log_config()))

    def argv(port: int) -> list[str]:
        return [*uvicorn_argv(tmp_path, "uvicorn_lines_app")(port), "--log-config", str(config)]

    server = launch(argv, "uvicorn")
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        ok = client.get("/ok")
        boom = client.get("/boom")
    assert (ok.status_code, boom.status_code) == (200, 500)
    ok_rid = ok.headers["x-request-id"]
    boom_rid = boom.headers["x-request-id"]
    server.wait_for_line("Exception in ASGI application")

    def rids_of(logger: str, message: str) -> list[str]:
        return [
            line.rid for line in server.lines() if line.logger == logger and message in line.message
        ]

    assert rids_of("app", "ok-info") == [ok_rid], server.output()
    assert rids_of("uvicorn.access", '"GET /ok HTTP/1.1" 200') == [ok_rid], server.output()
    assert rids_of("uvicorn.access", '"GET /boom HTTP/1.1" 500') == [boom_rid], server.output()
    assert rids_of("uvicorn.error", "Exception in ASGI application") == [boom_rid], server.output()


@pytest.mark.server
@pytest.mark.timeout(60)
def test_the_shipped_uvicorn_log_config_prints_request_ids_in_every_process(
    launch: Launch,
) -> None:
    """`examples/logging.json` under two workers: the parent process (which imports
    neither the app nor hindsight) formats its own lines too; the workers' lines carry
    the request id, a release's records the id of their request."""

    def argv(port: int) -> list[str]:
        return [
            *uvicorn_argv(REPO, "examples.fastapi_app.app")(port),
            "--workers",
            "2",
            "--log-config",
            str(REPO / "examples" / "logging.json"),
        ]

    server = launch(argv, "uvicorn")
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        server.wait_for_line("Application startup complete")
        item = client.get("/items/1")
        failed = client.get("/fail", headers={"X-User": "bob"})
    assert (item.status_code, failed.status_code) == (200, 500)
    server.wait_for_line("loyalty service returned an empty body")
    output = server.output()
    assert "Logging error" not in output, output
    lines = [line for line in server.raw_lines() if " pid=" in line]
    assert any(
        "uvicorn.error rid=None user=None | Started parent process" in line for line in lines
    )
    rid = item.headers["x-request-id"]
    assert any(f"shop rid={rid} user=None | served item 1" in line for line in lines), output
    assert any(f"uvicorn.access rid={rid} |" in line for line in lines), output
    (summary,) = [line for line in lines if "hindsight release: GET /fail" in line]
    failed_rid = summary.split("request_id=")[1].split()[0]
    debug = [line for line in lines if " DEBUG " in line]
    assert len(debug) == 3, output
    assert all(f"rid={failed_rid} user=bob |" in line for line in debug), output
