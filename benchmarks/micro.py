"""In-process micro benchmarks: apps driven through their ASGI/WSGI callables, no HTTP.

Every measurement runs in a fresh interpreter (`--worker`), so a bare variant never
has hindsight's logging wrappers (or sentry's patches) installed, and rounds of
different variants are interleaved. Each worker checks that its variant did its
job (records captured, lines written, breadcrumbs kept) and fails otherwise.

Usage: python benchmarks/micro.py [--smoke] [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import logging.handlers
import os
import statistics
import sys
import tempfile
import tracemalloc
from collections.abc import Callable
from contextvars import ContextVar
from time import perf_counter
from typing import Any

from common import (
    PURE_ONLY,
    Budget,
    build_compiled,
    build_line,
    interleave,
    machine_line,
    print_verdicts,
    run_worker,
    table,
)

LINES = 10
LOG = logging.getLogger("bench.app")
FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class DevNullHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Formats and writes every record to os.devnull, and counts them."""

    def __init__(self) -> None:
        super().__init__(open(os.devnull, "w"))  # noqa: SIM115
        self.setFormatter(logging.Formatter(FORMAT))
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        super().emit(record)


class NoOpHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def setup_logging() -> DevNullHandler:
    """The app's configuration: INFO and up written (to devnull); DEBUG disabled."""
    out = DevNullHandler()
    LOG.handlers[:] = [out]
    LOG.setLevel(logging.INFO)
    LOG.propagate = False
    root = logging.getLogger()
    root.handlers[:] = [out]
    root.setLevel(logging.INFO)
    return out


def log_lines(lines: int) -> None:
    for i in range(lines):
        LOG.debug("step %d of %s: value=%r", i, "request", 42)


# -- per-request capture the user might write instead -----------------------------

_captured: ContextVar[list[logging.LogRecord] | None] = ContextVar("captured", default=None)


class ContextCaptureHandler(logging.Handler):
    """The logging.Handler way: keep records of the current request in a context list."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seen = 0

    def emit(self, record: logging.LogRecord) -> None:
        buf = _captured.get()
        if buf is not None:
            buf.append(record)
            self.seen += 1


class Discarded:
    count = 0


def capture_asgi(app: Any) -> Any:
    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        token = _captured.set([])
        try:
            await app(scope, receive, send)
        finally:
            buf = _captured.get()
            Discarded.count += len(buf or ())
            _captured.reset(token)

    return wrapped


def capture_wsgi(app: Any) -> Any:
    def wrapped(environ: Any, start_response: Any) -> Any:
        token = _captured.set([])
        try:
            return list(app(environ, start_response))
        finally:
            buf = _captured.get()
            Discarded.count += len(buf or ())
            _captured.reset(token)

    return wrapped


def memory_asgi(app: Any, mh: logging.handlers.MemoryHandler) -> Any:
    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        try:
            await app(scope, receive, send)
        finally:
            Discarded.count += len(mh.buffer)
            mh.buffer.clear()

    return wrapped


def memory_wsgi(app: Any, mh: logging.handlers.MemoryHandler) -> Any:
    def wrapped(environ: Any, start_response: Any) -> Any:
        try:
            return list(app(environ, start_response))
        finally:
            Discarded.count += len(mh.buffer)
            mh.buffer.clear()

    return wrapped


class Minimal:
    """The issue's reference "minimal capture middleware": a ContextVar, a `send` (or
    `start_response`) wrapper that reads the status, and a timer. No buffer, no request
    id, no statistics: the floor under any middleware that watches each request."""

    requests = 0
    var: ContextVar[list[Any] | None] = ContextVar("minimal", default=None)


def minimal_asgi(app: Any) -> Any:
    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        seen = [scope["path"], perf_counter(), None, None]
        token = Minimal.var.set(seen)

        async def send_wrapper(message: Any) -> None:
            if message["type"] == "http.response.start":
                seen[2] = message["status"]
            elif not message.get("more_body", False):
                seen[3] = perf_counter()
            await send(message)

        try:
            await app(scope, receive, send_wrapper)
        finally:
            Minimal.var.reset(token)
            Minimal.requests += seen[2] is not None and seen[3] is not None

    return wrapped


def minimal_wsgi(app: Any) -> Any:
    def wrapped(environ: Any, start_response: Any) -> Any:
        seen = [environ["PATH_INFO"], perf_counter(), None]
        token = Minimal.var.set(seen)

        def observing(status: str, headers: Any, exc_info: Any = None) -> Any:
            seen[2] = int(status[:3])
            return start_response(status, headers, exc_info)

        try:
            return app(environ, observing)
        finally:
            Minimal.var.reset(token)
            Minimal.requests += seen[2] is not None

    return wrapped


# -- apps --------------------------------------------------------------------------


def make_app(framework: str, lines: int, probe: Callable[[], None] | None = None) -> Any:
    if framework == "asgi":

        async def raw(scope: Any, receive: Any, send: Any) -> None:
            log_lines(lines)
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

        return raw
    if framework == "starlette":
        from starlette.applications import Starlette
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route

        async def endpoint(request: Any) -> Any:
            log_lines(lines)
            if probe:
                probe()
            return PlainTextResponse("ok")

        return Starlette(routes=[Route("/", endpoint)])
    if framework == "fastapi":
        from fastapi import FastAPI
        from fastapi.responses import PlainTextResponse

        fa = FastAPI()

        @fa.get("/", response_class=PlainTextResponse)
        async def index() -> str:
            log_lines(lines)
            if probe:
                probe()
            return "ok"

        return fa
    if framework == "flask":
        from flask import Flask

        fl = Flask("bench")

        @fl.get("/")
        def flask_index() -> str:
            log_lines(lines)
            if probe:
                probe()
            return "ok"

        return fl
    raise ValueError(framework)


Tick = Callable[[], None] | None

# The window's background thread settles what was added every 0.1 s: at 1,000 requests
# per second, every 100 requests.
TICK_EVERY = 100


def chunks(n: int, tick: Tick) -> list[int]:
    """The runs of requests between two ticks (one run when there is no tick)."""
    if tick is None:
        return [n]
    return [min(TICK_EVERY, n - done) for done in range(0, n, TICK_EVERY)]


def drive_asgi(app: Any, n: int, statuses: list[int], tick: Tick = None) -> float:
    """Call `app` n times; `tick` (if any) after every `TICK_EVERY` requests."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"bench")],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 80),
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    async def run() -> float:
        t = perf_counter()
        for chunk in chunks(n, tick):
            for _ in range(chunk):
                await app(dict(scope), receive, send)
            if tick is not None:
                tick()
        return perf_counter() - t

    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(run())
    finally:
        loop.close()


def drive_wsgi(app: Any, n: int, statuses: list[int], tick: Tick = None) -> float:
    """Call `app` n times; `tick` (if any) after every `TICK_EVERY` requests."""
    base = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/",
        "QUERY_STRING": "",
        "SERVER_NAME": "bench",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "bench",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        statuses.append(int(status.split()[0]))
        return lambda data: None

    t = perf_counter()
    for chunk in chunks(n, tick):
        for _ in range(chunk):
            environ = dict(base)
            environ["wsgi.input"] = io.BytesIO(b"")
            body = app(environ, start_response)
            for _chunk in body:
                pass
            close = getattr(body, "close", None)
            if close is not None:
                close()
        if tick is not None:
            tick()
    return perf_counter() - t


def bench_store(variant: str) -> str:
    """The store of a hindsight variant: a SQLite file of its own, the Redis that
    HINDSIGHT_BENCH_REDIS names (instructions.py starts one), or memory."""
    if variant == "hindsight-sqlite":
        return f"sqlite:///{tempfile.mkdtemp(prefix='hindsight-bench-')}/bench.db"
    if variant == "hindsight-redis":
        return os.environ["HINDSIGHT_BENCH_REDIS"]
    return "memory://"


def request_worker(framework: str, variant: str, n: int) -> dict[str, Any]:
    """Build `framework` with `variant`, drive it n times; time per request in us."""
    out = setup_logging()
    is_asgi = framework != "flask"
    window = window_variant(variant)
    lines = window[1] if window else LINES if variant in LINE_VARIANTS else 0
    checks: list[Callable[[int], str | None]] = []
    probe = None
    hs = None
    tick: Tick = None

    if variant == "sentry":
        import sentry_sdk
        from sentry_sdk.integrations.logging import LoggingIntegration
        from sentry_sdk.transport import Transport

        class DropTransport(Transport):
            envelopes = 0

            def capture_envelope(self, envelope: Any) -> None:
                DropTransport.envelopes += 1

        sentry_sdk.init(
            dsn="http://public@127.0.0.1:9/1",
            transport=DropTransport(),
            integrations=[LoggingIntegration(level=logging.DEBUG, event_level=None)],
            traces_sample_rate=None,
            default_integrations=True,
        )
        LOG.setLevel(logging.DEBUG)
        out.setLevel(logging.INFO)
        crumbs: list[int] = []

        def sentry_probe() -> None:
            scope = sentry_sdk.get_isolation_scope()
            crumbs.append(sum(1 for b in scope._breadcrumbs if b.get("category") == "bench.app"))

        probe = sentry_probe

        def sentry_check(total: int) -> str | None:
            if len(crumbs) != total or min(crumbs) != LINES or max(crumbs) != LINES:
                return f"breadcrumbs per request {min(crumbs)}-{max(crumbs)} != {LINES}"
            sentry_sdk.capture_message("bench: transport check")
            sentry_sdk.flush()
            if DropTransport.envelopes < 1:
                return "the drop transport received no envelope"
            return None

        checks.append(sentry_check)

    if variant == "correlation-id":
        from asgi_correlation_id import correlation_id

        ids: set[str | None] = set()
        probe = lambda: ids.add(correlation_id.get())  # noqa: E731

        def cid_check(total: int) -> str | None:
            if None in ids or len(ids) != total:
                return f"{len(ids)} distinct correlation ids for {total} requests"
            return None

        checks.append(cid_check)

    rule_count = int(variant.rsplit("-", 1)[1]) if variant.startswith("hindsight-rules-") else None
    if rule_count is not None:
        import hindsight_web

        probe = lambda: hindsight_web.set_user("visitor")  # noqa: E731

    app = make_app(framework, lines, probe)

    if variant.startswith("hindsight") and variant != "hindsight-imported":
        import hindsight_web

        released = variant == "hindsight-10-released"
        # The background threads' work is measured apart (propagation.py, window.py):
        # here each makes only its first tick, so that these rows count the request path
        # alone, however long valgrind makes a run. With a window, the driver settles it
        # every TICK_EVERY requests.
        import hindsight_web.fanout

        hindsight_web.fanout.POLL_S = 3600
        hs = hindsight_web.Hindsight(
            slow_ms=0 if released else 1000,
            max_releases_per_s=1e8,  # every request released: no limit to measure
            store=bench_store(variant),
            store_sync_s=3600,
            stats_flush_s=3600,
            **(window_options(*window) if window else {}),
        )
        prefilled = 0
        if window and hs.window is not None:
            tick = hs.window.settle
            if window[0] == "full":
                prefilled = prefill(hs, lines)
        finished = [0]
        if variant == "hindsight-nostats":  # analysis only: what the statistics cost

            def count_only(state: Any) -> None:
                finished[0] += 1

            hs.stats.record = count_only  # type: ignore[method-assign,assignment]
        if rule_count:
            add_user_rules(hs, rule_count)
            out.count = 0  # the audit lines of the rules added
        counted = add_count_rules(hs, variant)
        if variant in COUNT_VARIANTS:
            out.count = 0  # the audit lines of the rules added
        if framework == "flask":
            app.wsgi_app = hindsight_web.HindsightWSGIMiddleware(app.wsgi_app, hindsight=hs)
        elif framework == "asgi":
            app = hindsight_web.HindsightMiddleware(app, hindsight=hs)
        else:
            app.add_middleware(hindsight_web.HindsightMiddleware, hindsight=hs)

        def hs_check(total: int) -> str | None:
            hs.flush()
            if counted is not None:
                hs.counting.flush()
                top = hs.counting.top(counted)
                if top != [{"key": "127.0.0.1", "count": total}]:
                    return f"the count rule counted {top}, expected {total} requests"
            elif hs.counters()["count_firings"] or hs.counting.dropped:
                return "a count rule counted a request it does not match"
            visitor = hs.rules.get("visitor")
            if rule_count and (visitor is None or visitor.hits != total):
                return f"the visitor rule was hit {visitor and visitor.hits} times"
            c = hs.counters()
            seen = finished[0] if variant == "hindsight-nostats" else c["requests"]
            if seen != total + prefilled:
                return f"hindsight saw {seen} requests, expected {total} + {prefilled}"
            if c["records_captured"] != lines * (total + prefilled):
                return f"captured {c['records_captured']}, expected {lines * (total + prefilled)}"
            want_released = lines * total if released else 0
            if c["records_released"] != want_released:
                return f"released {c['records_released']}, expected {want_released}"
            want_out = (lines + 1) * total if released else 0
            if out.count != want_out:
                return f"handler wrote {out.count} lines, expected {want_out}"
            if window:
                return window_check(hs, window[0], lines, total, prefilled)
            return None

        checks.append(hs_check)
    elif variant in ("handler-capture", "memoryhandler"):
        LOG.setLevel(logging.DEBUG)
        out.setLevel(logging.INFO)
        if variant == "handler-capture":
            LOG.addHandler(ContextCaptureHandler())
            app = _wrap(framework, app, capture_asgi, capture_wsgi)
        else:
            mh = logging.handlers.MemoryHandler(
                capacity=10**9, flushLevel=logging.CRITICAL + 1, target=out, flushOnClose=False
            )
            LOG.addHandler(mh)
            app = _wrap(framework, app, lambda a: memory_asgi(a, mh), lambda a: memory_wsgi(a, mh))

        def capture_check(total: int) -> str | None:
            if Discarded.count != lines * total or out.count != 0:
                return f"kept {Discarded.count} (want {lines * total}), wrote {out.count}"
            return None

        checks.append(capture_check)
    elif variant == "file-debug":
        fd, path = tempfile.mkstemp(prefix="bench-debug-", suffix=".log")
        os.close(fd)
        fh = logging.FileHandler(path)
        fh.setFormatter(logging.Formatter(FORMAT))
        LOG.addHandler(fh)
        LOG.setLevel(logging.DEBUG)
        out.setLevel(logging.INFO)

        def file_check(total: int) -> str | None:
            fh.flush()
            with open(path) as f:
                written = sum(1 for _ in f)
            os.unlink(path)
            if written != lines * total:
                return f"file has {written} lines, expected {lines * total}"
            return None

        checks.append(file_check)
    elif variant == "correlation-id":
        from asgi_correlation_id import CorrelationIdMiddleware

        app.add_middleware(CorrelationIdMiddleware)
    elif variant == "minimal":
        app = _wrap(framework, app, minimal_asgi, minimal_wsgi)

        def minimal_check(total: int) -> str | None:
            if Minimal.requests != total:
                return f"the minimal middleware saw {Minimal.requests} requests, expected {total}"
            return None

        checks.append(minimal_check)
    elif variant == "hindsight-imported":
        import hindsight_web.capture

        def imported_check(total: int) -> str | None:
            if logging.Logger.makeRecord is not hindsight_web.capture._make_record:
                return "hindsight's logging methods are not installed"
            return None

        checks.append(imported_check)
    elif variant in ("bare", "bare-10-off", "sentry"):
        pass
    else:
        raise ValueError(variant)

    if variant in ("bare", "bare-10-off") and "hindsight_web" in sys.modules:
        return {"ok": False, "error": "bare variant has hindsight imported"}

    statuses: list[int] = []
    drive = drive_asgi if is_asgi else drive_wsgi
    warm = max(50, n // 10)
    drive(app, warm, statuses, tick)
    times = [drive(app, n, statuses, tick) for _ in range(3)]
    total = warm + 3 * n
    errors = [msg for check in checks if (msg := check(total))]
    if len(statuses) != total or set(statuses) != {200}:
        errors.append(f"statuses {sorted(set(statuses))} x{len(statuses)}")
    return {
        "ok": not errors,
        "errors": errors,
        "us": statistics.median(times) / n * 1e6,
    }


# -- the hindsight window ------------------------------------------------------------

WINDOW_KINDS = ("off", "filling", "full", "small")
# The `small` window holds about this many requests: full after the warm-up, it evicts
# the oldest for each request after.
SMALL_WINDOW = 100


def window_variant(variant: str) -> tuple[str, int] | None:
    """The window (one of `WINDOW_KINDS`) and the DEBUG lines per request of a
    ``hindsight-window-KIND-LINES`` variant; None for the other variants."""
    if not variant.startswith("hindsight-window-"):
        return None
    kind, lines = variant.removeprefix("hindsight-window-").split("-")
    if kind not in WINDOW_KINDS:
        raise ValueError(variant)
    return kind, int(lines)


def window_options(kind: str, lines: int) -> dict[str, Any]:
    """`off`: ``window_s=0`` (a request's records are freed when it ends); `filling` and
    `full`: the defaults (300 s, 32 MB); `small`: bytes for about `SMALL_WINDOW`
    requests."""
    if kind == "off":
        return {"window_s": 0}
    if kind == "small":
        from hindsight_web.buffer import ENTRY_OVERHEAD
        from hindsight_web.window import RECORDS_BYTES, STATE_BYTES

        held = STATE_BYTES + (RECORDS_BYTES + lines * ENTRY_OVERHEAD if lines else 0)
        return {"window_bytes": SMALL_WINDOW * held}
    return {}


def prefill(hs: Any, lines: int) -> int:
    """Fill the window up to its bytes (its first eviction) with requests like the app's,
    made directly, and settle them: the window of a process that has served for a while.
    Returns how many requests it took."""
    from hindsight_web.context import _current

    made = 0
    while hs.window.evicted == 0:
        state = hs.begin("GET", "/", "127.0.0.1")
        token = _current.set(state)
        log_lines(lines)
        _current.reset(token)
        state.status = 200
        hs.finish(state)
        made += 1
        if made % TICK_EVERY == 0:
            hs.window.settle()
    hs.window.settle()
    return made


def window_check(hs: Any, kind: str, lines: int, total: int, prefilled: int) -> str | None:
    """The window kept what it should, and the ticks settled all of it."""
    c = hs.counters()
    held, evicted = c["window_requests"], c["window_evicted"]
    if kind == "off":
        return None if hs.window is None and held == 0 else f"window off holds {held}"
    if kind == "filling" and (held != total or evicted != 0):
        return f"window holds {held} and evicted {evicted}, expected {total} and 0"
    if kind in ("full", "small") and (evicted < 2 or held + evicted != total + prefilled):
        return f"{kind} window holds {held} and evicted {evicted} of {total} + {prefilled}"
    from hindsight_web.buffer import CONTEXT

    states = hs.window.states()
    records = [entry for state in states for entry in state.records]
    if len(records) != lines * len(states):
        return f"{len(records)} records in the window, expected {lines * len(states)}"
    if any(entry[CONTEXT][0] is not None for entry in records):
        return "records in the window hold their contexts"
    return None


COUNT_VARIANTS = ["hindsight-count-100", "hindsight-count-100-general", "hindsight-count-1"]


def add_count_rules(hs: Any, variant: str) -> Any:
    """The count rules of a ``hindsight-count-*`` variant; returns the one that counts
    every request (``-1``), else None.

    ``-100``: 100 rules on failed logins (status 401, so the status index skips them for
    a 200). ``-100-general``: 100 rules on path globs the benchmark never requests (no
    index key: every request is checked against each). ``-1``: one rule that matches every request,
    per client address, with a threshold it never reaches.
    """
    if variant not in COUNT_VARIANTS:
        return None
    then = [{"action": "release"}]
    if variant == "hindsight-count-1":
        rule = {"id": "every", "action": "count", "key": "client_ip", "threshold": 10**9}
        return hs.add_rule({**rule, "window_s": 86400, "then": then})
    for i in range(100):
        match: dict[str, Any] = {"path": f"/login/{i}/*"}
        if variant == "hindsight-count-100":
            match = {"path": f"/login/{i}", "status": 401}
        rule = {"id": f"c{i}", "action": "count", "match": match, "key": "client_ip"}
        hs.add_rule({**rule, "threshold": 10, "window_s": 60, "then": then})
    return None


def add_user_rules(hs: Any, count: int) -> None:
    """`count` user-scoped rules: one dry-run rule for the benchmark's user, whose hits
    prove that every request was looked up, and detail/release rules for other users."""
    hs.add_rule(
        {"id": "visitor", "action": "release", "dry_run": True, "match": {"user_id": "visitor"}}
    )
    for i in range(count - 1):
        action = "detail" if i % 2 else "release"
        hs.add_rule({"id": f"u{i}", "action": action, "match": {"user_id": f"user-{i}"}})


def _wrap(framework: str, app: Any, asgi: Any, wsgi: Any) -> Any:
    if framework == "flask":
        app.wsgi_app = wsgi(app.wsgi_app)
        return app
    return asgi(app)


LINE_VARIANTS = {
    "bare-10-off",
    "hindsight-10-discarded",
    "hindsight-10-released",
    "handler-capture",
    "memoryhandler",
    "file-debug",
    "sentry",
}


# -- per-record benchmarks ---------------------------------------------------------

PER_REQUEST = 1000


def record_worker(variant: str, n: int) -> dict[str, Any]:
    """Cost of one `logger.debug(...)` call, in us."""
    setup_logging()
    reqs = max(1, n // PER_REQUEST)
    if variant == "stdlib-disabled":
        t = perf_counter()
        for _ in range(reqs):
            log_lines(PER_REQUEST)
        dt = perf_counter() - t
        ok, err = "hindsight_web" not in sys.modules, ""
    elif variant == "stdlib-enabled-noop":
        noop = NoOpHandler()
        LOG.handlers[:] = [noop]
        LOG.setLevel(logging.DEBUG)
        t = perf_counter()
        for _ in range(reqs):
            log_lines(PER_REQUEST)
        dt = perf_counter() - t
        ok = noop.count == reqs * PER_REQUEST and "hindsight_web" not in sys.modules
        err = f"no-op handler saw {noop.count}"
    elif variant in ("hindsight-discarded", "hindsight-discarded-redact-off"):
        import hindsight_web
        from hindsight_web.context import _current

        hs = hindsight_web.Hindsight(
            slow_ms=None,
            max_records=10**7,
            max_bytes=10**9,
            max_total_bytes=10**10,
            redact=variant == "hindsight-discarded",
        )
        t = perf_counter()
        for _ in range(reqs):
            state = hs.begin("GET", "/")
            token = _current.set(state)
            log_lines(PER_REQUEST)
            _current.reset(token)
            hs.finish(state)
        dt = perf_counter() - t
        c = hs.counters()
        ok = c["records_captured"] == reqs * PER_REQUEST and c["records_dropped"] == 0
        ok = ok and c["releases"] == 0
        err = f"counters {c}"
    else:
        raise ValueError(variant)
    return {"ok": ok, "errors": [] if ok else [err], "us": dt / (reqs * PER_REQUEST) * 1e6}


RELEASE_N = 100


def release_worker(variant: str, n: int) -> dict[str, Any]:
    """Cost per record of getting RELEASE_N DEBUG records of a request written."""
    out = setup_logging()
    reqs = max(1, n // RELEASE_N)
    if variant == "direct":
        LOG.setLevel(logging.DEBUG)
        t = perf_counter()
        for _ in range(reqs):
            log_lines(RELEASE_N)
        dt = perf_counter() - t
        want = reqs * RELEASE_N
    else:
        import hindsight_web
        from hindsight_web.context import _current

        hs = hindsight_web.Hindsight(slow_ms=0, max_releases_per_s=1e8)
        dt = 0.0
        for _ in range(reqs):
            t0 = perf_counter()
            state = hs.begin("GET", "/")
            token = _current.set(state)
            log_lines(RELEASE_N)
            _current.reset(token)
            t1 = perf_counter()
            hs.finish(state)
            hs.flush()  # the release is written by the writer thread: until it is done
            t2 = perf_counter()
            dt += (t2 - t1) if variant == "release-only" else (t2 - t0)
        want = reqs * (RELEASE_N + 1)
        c = hs.counters()
        if c["records_released"] != reqs * RELEASE_N:
            return {"ok": False, "errors": [f"counters {c}"]}
    ok = out.count == want
    return {
        "ok": ok,
        "errors": [] if ok else [f"handler wrote {out.count}, expected {want}"],
        "us": dt / (reqs * RELEASE_N) * 1e6,
    }


def memory_worker(n: int) -> dict[str, Any]:
    """Bytes held per buffered record, and the size of its message formatted (which a
    buffered record does not hold: it is formatted only if released)."""
    setup_logging()
    import hindsight_web
    from hindsight_web.context import _current

    hs = hindsight_web.Hindsight(slow_ms=None, max_records=10**7, max_bytes=10**9)
    state = hs.begin("GET", "/")
    token = _current.set(state)
    log_lines(10)  # warm caches and the deque's first block
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    log_lines(n)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    from hindsight_web.buffer import ARGS, MSG
    from hindsight_web.messages import text

    last = state.records[-1]
    message = text(last[MSG], last[ARGS])
    kept = len(state.records)
    _current.reset(token)
    hs.finish(state)
    per = (after - before) / n
    msg_size = sys.getsizeof(message)
    return {
        "ok": kept == n + 10,
        "errors": [] if kept == n + 10 else [f"kept {kept}"],
        "per_record": per,
        "message_bytes": msg_size,
        "message_len": len(message),
        "estimate": hs.budget.used,
    }


# -- driver --------------------------------------------------------------------------


def worker_main(argv: list[str]) -> None:
    kind = argv[0]
    if kind == "request":
        answer = request_worker(argv[1], argv[2], int(argv[3]))
    elif kind == "record":
        answer = record_worker(argv[1], int(argv[2]))
    elif kind == "release":
        answer = release_worker(argv[1], int(argv[2]))
    elif kind == "memory":
        answer = memory_worker(int(argv[1]))
    else:
        raise ValueError(kind)
    print(json.dumps(answer))


WINDOW_LABELS = {
    "off": "window off (freed when it ends)",
    "filling": "window filling (defaults, from empty)",
    "full": "window full (defaults: 32 MB, evicting)",
    "small": f"window of {SMALL_WINDOW} requests (evicting)",
}

LABELS = {
    "bare": "bare",
    "bare-10-off": "bare, 10 DEBUG lines (disabled)",
    "hindsight-imported": "hindsight imported, no middleware (logging wrappers only)",
    "minimal": "reference: minimal capture middleware (ContextVar, send wrapper, timer)",
    "hindsight": "hindsight, no lines",
    "hindsight-nostats": "hindsight, no lines, statistics off (analysis only)",
    "hindsight-sqlite": "hindsight, no lines, SQLite store",
    "hindsight-redis": "hindsight, no lines, Redis store",
    "hindsight-10-discarded": "hindsight, 10 lines discarded",
    "hindsight-10-released": "hindsight, 10 lines released (devnull)",
    "handler-capture": "logging.Handler capture, 10 lines",
    "memoryhandler": "stdlib MemoryHandler, 10 lines",
    "file-debug": "always-on DEBUG to a file, 10 lines",
    "correlation-id": "asgi-correlation-id, no lines",
    **{
        f"hindsight-window-{kind}-{lines}": f"hindsight, {lines} DEBUG lines, {label}"
        for kind, label in WINDOW_LABELS.items()
        for lines in (0, 5)
    },
    "hindsight-count-100": "hindsight, 100 count rules on status 401 (not matching)",
    "hindsight-count-100-general": "hindsight, 100 count rules on path globs (not matching)",
    "hindsight-count-1": "hindsight, 1 count rule matching every request",
    "hindsight-rules-0": "hindsight, no rules",
    "hindsight-rules-1": "hindsight, 1 user rule",
    "hindsight-rules-10000": "hindsight, 10,000 user rules",
    "sentry": "sentry-sdk (drop transport), 10 lines as breadcrumbs",
    "stdlib-disabled": "stdlib, DEBUG disabled",
    "stdlib-enabled-noop": "stdlib, DEBUG enabled, no-op handler (LogRecord)",
    "hindsight-discarded": "hindsight, captured then discarded",
    "direct": "direct: DEBUG enabled, same handler",
    "release-only": "hindsight: release only (finish)",
    "capture+release": "hindsight: capture + release",
}


def sentry_available() -> bool:
    try:
        import sentry_sdk  # noqa: F401
    except ImportError:
        return False
    return True


def cid_available() -> bool:
    try:
        import asgi_correlation_id  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny n, 2 rounds")
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()
    smoke = args.smoke
    rounds = args.rounds or (2 if smoke else 5)
    req_n = 200 if smoke else 2000
    flask_n = 200 if smoke else 2000
    rec_n = 2000 if smoke else 200_000
    print(machine_line())
    print(build_line())
    pure_only = () if build_compiled() else PURE_ONLY
    print(f"micro: rounds={rounds} (interleaved), requests per timing={req_n}, smoke={smoke}")
    print()
    verdicts: list[tuple[str, str, bool]] = []

    def requests_table(
        title: str,
        framework: str,
        variants: list[str],
        n: int,
        budgets: dict[str, Budget],
        baseline: str = "bare",
    ) -> None:
        res = interleave(
            variants,
            rounds,
            lambda v: (float(run_worker("micro.py", ["request", framework, v, str(n)])["us"]), ""),  # type: ignore[arg-type]
        )
        text, v = table(title, res, baseline, "us/request", budgets, LABELS)
        verdicts.extend(v)
        print(text, flush=True)

    requests_table(
        "Fixed cost: raw ASGI app, HindsightMiddleware, no records",
        "asgi",
        ["bare", "minimal", "hindsight", *pure_only],
        req_n * 4,
        {"hindsight": Budget("diff<=", 5.0)},
    )
    # The variants of both framework tables; asgi-correlation-id is ASGI only.
    framework_variants = [
        "bare",
        "bare-10-off",
        "hindsight-imported",
        "minimal",
        "hindsight",
        *pure_only,
        "hindsight-10-discarded",
        "hindsight-10-released",
        "handler-capture",
        "memoryhandler",
        "file-debug",
    ]
    sentry = ["sentry"] if sentry_available() else []
    fastapi_variants = [
        *framework_variants,
        *(["correlation-id"] if cid_available() else []),
        *sentry,
    ]
    requests_table(
        "FastAPI endpoint",
        "fastapi",
        fastapi_variants,
        req_n,
        {"hindsight": Budget("ratio<=", 1.05)},
    )
    requests_table(  # no budget line: for comparison with the reference figures
        "Starlette endpoint",
        "starlette",
        ["bare", "hindsight-imported", "minimal", "hindsight", "hindsight-10-discarded"],
        req_n,
        {},
    )
    requests_table(
        "Rule lookup: FastAPI endpoint that calls set_user(), user-scoped rules",
        "fastapi",
        ["hindsight-rules-0", "hindsight-rules-1", "hindsight-rules-10000"],
        req_n,
        {"hindsight-rules-10000": Budget("ratio<=", 1.05)},
        baseline="hindsight-rules-0",
    )
    requests_table(
        "Flask endpoint (HindsightWSGIMiddleware)",
        "flask",
        [*framework_variants, *sentry],
        flask_n,
        {"hindsight": Budget("ratio<=", 1.05)},
    )

    rec = interleave(
        ["stdlib-enabled-noop", "stdlib-disabled", "hindsight-discarded"],
        rounds,
        lambda v: (float(run_worker("micro.py", ["record", v, str(rec_n)])["us"]), ""),  # type: ignore[arg-type]
    )
    text, v = table(
        f"Per record: one logger.debug() call ({PER_REQUEST} per request)",
        rec,
        "stdlib-enabled-noop",
        "us/record",
        {"hindsight-discarded": Budget("ratio<=", 0.25)},
        LABELS,
        digits=3,
    )
    verdicts.extend(v)
    print(text, flush=True)

    rel = interleave(
        ["direct", "release-only", "capture+release"],
        rounds,
        lambda v: (float(run_worker("micro.py", ["release", v, str(rec_n // 2)])["us"]), ""),  # type: ignore[arg-type]
    )
    text, v = table(
        f"Release: {RELEASE_N} DEBUG records written through the same handler (formatter, devnull)",
        rel,
        "direct",
        "us/record",
        {"release-only": Budget("ratio<=", 1.2), "capture+release": Budget("ratio<=", 1.2)},
        LABELS,
        digits=3,
    )
    verdicts.extend(v)
    print(text, flush=True)

    mem = run_worker("micro.py", ["memory", str(2000 if smoke else 100_000)])
    per = float(mem["per_record"])  # type: ignore[arg-type]
    msg = int(mem["message_bytes"])  # type: ignore[call-overload]
    beyond = per - msg
    passed = beyond <= 200
    print("### Memory per buffered record (tracemalloc)")
    print()
    print(
        "A buffered record holds the call's format string and arguments, not its "
        "message: that is formatted only if the record is released. The goal is "
        "counted against the record plus its formatted message."
    )
    print()
    print("| bytes per record | its message formatted | record - message | goal | result |")
    print("|---:|---:|---:|---|---|")
    print(
        f"| {per:.1f} | {msg} (len {mem['message_len']}) | {beyond:.1f} | <= 200 | "
        f"{'PASS' if passed else 'MISS'} |"
    )
    print()
    verdicts.append(
        (
            "Memory: bytes kept per buffered record, less its formatted message",
            f"{beyond:.0f} B (<= 200)",
            passed,
        )
    )

    print_verdicts("Budget lines (micro)", verdicts)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker_main(sys.argv[2:])
    else:
        sys.exit(main())
