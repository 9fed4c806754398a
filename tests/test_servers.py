"""End to end: real uvicorn and gunicorn processes, asserting on what they write to the log."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from .servers import Server, gunicorn_argv, launch, uvicorn_argv, write_app

__all__ = ["launch"]

pytestmark = [pytest.mark.server, pytest.mark.timeout(60)]

SLOW_MS = 500
GENERATED_ID = re.compile(r"[0-9a-f]{32}")

ASGI_ENDPOINTS = """
from starlette.requests import Request

log = logging.getLogger("app")


async def fast(request: Request):
    log.debug("fast-debug-1")
    log.info("fast-info")
    log.debug("fast-debug-2")
    return PlainTextResponse("ok")


def fail(request: Request):
    log.debug("fail-debug-1")
    log.info("fail-info")
    log.debug("fail-debug-2")
    log.debug("fail-debug-3")
    return PlainTextResponse("failed", status_code=500)


async def boom(request: Request):
    log.debug("boom-debug-1")
    log.debug("boom-debug-2")
    raise RuntimeError("boom")


async def chunks(count, pause, tag):
    sent = 0
    try:
        for i in range(count):
            log.debug("%s chunk %d", tag, i)
            yield f"{tag} {i}\\n".encode()
            sent += 1
            await asyncio.sleep(pause)
    finally:
        log.info("%s closed sent=%d", tag, sent)


async def stream(request: Request):
    return StreamingResponse(chunks(5, 0.15, "stream"), media_type="text/plain")


async def stream_long(request: Request):
    return StreamingResponse(chunks(20, 0.1, "long"), media_type="text/plain")
"""

FASTAPI_APP = (
    """
import asyncio
import logging
import sys

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse, StreamingResponse

from hindsight_web import HindsightMiddleware

logging.basicConfig(level=logging.INFO, stream=sys.stderr, format={FORMAT})
"""
    + ASGI_ENDPOINTS
    + f"""

app = FastAPI()
app.add_middleware(HindsightMiddleware, slow_ms={SLOW_MS})
app.get("/fast")(fast)
app.get("/fail")(fail)
app.get("/boom")(boom)
app.get("/stream")(stream)
app.get("/stream-long")(stream_long)
"""
)

STARLETTE_APP = (
    """
import asyncio
import logging
import sys

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route

from hindsight_web import Hindsight, HindsightMiddleware

logging.basicConfig(level=logging.INFO, stream=sys.stderr, format={FORMAT})
"""
    + ASGI_ENDPOINTS
    + f"""

app = Starlette(
    routes=[
        Route("/fast", fast),
        Route("/fail", fail),
        Route("/boom", boom),
        Route("/stream", stream),
        Route("/stream-long", stream_long),
    ],
    middleware=[Middleware(HindsightMiddleware, hindsight=Hindsight(slow_ms={SLOW_MS}))],
)
"""
)

FLASK_APP = """
import logging
import sys
import threading
import time

from flask import Flask, request

from hindsight_web import HindsightWSGIMiddleware

logging.basicConfig(level=logging.INFO, stream=sys.stderr, format={FORMAT})
log = logging.getLogger("app")

app = Flask(__name__)
app.wsgi_app = HindsightWSGIMiddleware(app.wsgi_app, slow_ms={SLOW_MS})


@app.get("/fast")
def fast():
    log.debug("fast-debug-1")
    log.info("fast-info")
    log.debug("fast-debug-2")
    return "ok"


@app.get("/fail")
def fail():
    log.debug("fail-debug-1 %s", request.headers.get("X-Request-ID"))
    log.info("fail-info")
    log.debug("fail-debug-2 %s", request.headers.get("X-Request-ID"))
    return "failed", 500


@app.get("/raise")
def raise_():
    log.debug("raise-debug-1")
    raise ValueError("raised in view")


@app.get("/slow")
def slow():
    log.debug("slow-debug-1")
    time.sleep({SLOW_MS} / 1000 + 0.25)
    log.debug("slow-debug-2")
    return "slow"


@app.get("/marked")
def marked():
    marker = request.headers["X-Marker"]
    for step in range(5):
        log.debug("marker=%s step=%d", marker, step)
        time.sleep(0.005)
    return "marked", 500


@app.get("/warm")
def warm():
    log.debug("warm-debug")
    return "warm"


@app.get("/warm-fail")
def warm_fail():
    log.debug("warm-fail-debug")
    return "warm", 500


def _warm_up(seconds):
    client = app.test_client()
    deadline = time.monotonic() + seconds
    while True:
        client.get("/warm", buffered=True)
        client.get("/warm-fail", headers={"X-Request-ID": "warm"}, buffered=True)
        if time.monotonic() >= deadline:
            return
        time.sleep(0.005)


if "--preload" in sys.argv:
    # One pass in the main thread first: a fork while another thread is still
    # importing (werkzeug imports encodings lazily) leaves the child stuck on
    # that module's import lock, with or without hindsight.
    _warm_up(0)
    threading.Thread(target=_warm_up, args=(2.0,), daemon=True).start()
""".replace("{SLOW_MS}", str(SLOW_MS))

Launch = Callable[..., Server]


def texts(server: Server, rid: str) -> list[str]:
    return [line.text for line in server.lines_of(rid)]


def summary_of(server: Server, rid: str) -> re.Match[str]:
    found = server.summaries(rid)
    assert len(found) == 1, f"expected one summary for {rid}, got {len(found)}:\n{server.output()}"
    return found[0]


def settle(server: Server, client: httpx.Client) -> None:
    """Let every earlier request finish: a barrier request's line appears, then a pause."""
    barrier = client.get("/fast")
    assert barrier.status_code == 200
    rid = barrier.headers["x-request-id"]
    server.wait_for(lambda: server.lines_of(rid), f"barrier {rid}")
    time.sleep(0.3)


def assert_released(
    server: Server,
    rid: str,
    *,
    before: list[str],
    debug: list[str],
    path: str,
    outcome: str,
    reason: str,
) -> re.Match[str]:
    """`rid`'s lines are `before` (written live), one summary, then exactly its DEBUG lines."""
    summary = summary_of(server, rid)
    lines = texts(server, rid)
    summary_text = f"INFO hindsight_web {summary.group(0)}"
    assert lines == [*before, summary_text, *(f"DEBUG app {m}" for m in debug)], server.output()
    assert summary["method"] == "GET"
    assert summary["path"] == path
    assert summary["outcome"] == outcome
    assert summary["reason"] == reason
    assert int(summary["records"]) == len(debug)
    assert summary["dropped"] == "0"
    return summary


@pytest.mark.parametrize("framework", ["fastapi", "starlette"])
def test_uvicorn_releases_failing_requests_only(
    launch: Launch, tmp_path: Path, framework: str
) -> None:
    source = FASTAPI_APP if framework == "fastapi" else STARLETTE_APP
    write_app(tmp_path, "asgi_app", source)
    server = launch(uvicorn_argv(tmp_path, "asgi_app"), "uvicorn")

    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        fast = client.get("/fast")
        fail = client.get("/fail", headers={"X-Request-ID": "e2e-fail.1"})
        boom = httpx.get(
            f"{server.base_url}/boom", headers={"X-Request-ID": "e2e-boom-1"}, timeout=10
        )
        invalid = client.get("/fast", headers={"X-Request-ID": "not a valid id"})
        server.wait_for(
            lambda: server.summaries("e2e-fail.1") and server.summaries("e2e-boom-1"),
            "the summaries of /fail and /boom",
        )
        settle(server, client)

    assert fast.status_code == 200
    assert fail.status_code == 500
    assert boom.status_code == 500
    assert fail.headers["x-request-id"] == "e2e-fail.1"
    fast_rid = fast.headers["x-request-id"]
    assert GENERATED_ID.fullmatch(fast_rid)
    invalid_rid = invalid.headers["x-request-id"]
    assert GENERATED_ID.fullmatch(invalid_rid)
    assert invalid_rid != fast_rid

    for rid in (fast_rid, invalid_rid):
        assert texts(server, rid) == ["INFO app fast-info"]
        assert server.summaries(rid) == []
    output = server.output()
    assert "fast-debug" not in output

    assert_released(
        server,
        "e2e-fail.1",
        before=["INFO app fail-info"],
        debug=["fail-debug-1", "fail-debug-2", "fail-debug-3"],
        path="/fail",
        outcome="500",
        reason="status",
    )
    boom_summary = summary_of(server, "e2e-boom-1")
    assert boom_summary["outcome"].endswith("raised RuntimeError")
    assert texts(server, "e2e-boom-1") == [
        f"INFO hindsight_web {boom_summary.group(0)}",
        "DEBUG app boom-debug-1",
        "DEBUG app boom-debug-2",
    ]
    assert boom_summary["reason"] == "exception"
    assert boom_summary["records"] == "2"
    for marker in ("fail-debug-1", "fail-debug-2", "fail-debug-3", "boom-debug-1"):
        assert output.count(marker) == 1

    assert "Exception in ASGI application" in output
    written = server.raw_lines() + server.stdout_path.read_text().splitlines()
    access = [raw for raw in written if '"GET /' in raw and "HTTP/1.1" in raw]
    assert any('"GET /fast HTTP/1.1" 200' in raw for raw in access), output
    assert any('"GET /fail HTTP/1.1" 500' in raw for raw in access), output
    assert len(access) >= 5


def test_uvicorn_streaming_response_released_as_slow(launch: Launch, tmp_path: Path) -> None:
    write_app(tmp_path, "asgi_app", FASTAPI_APP)
    server = launch(uvicorn_argv(tmp_path, "asgi_app"), "uvicorn")

    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        started = time.monotonic()
        response = client.get("/stream", headers={"X-Request-ID": "e2e-stream"})
        elapsed_ms = (time.monotonic() - started) * 1000
        server.wait_for(lambda: server.summaries("e2e-stream"), "the summary of /stream")
        settle(server, client)

    assert response.status_code == 200
    assert response.text == "".join(f"stream {i}\n" for i in range(5))
    assert elapsed_ms >= SLOW_MS
    summary = assert_released(
        server,
        "e2e-stream",
        before=["INFO app stream closed sent=5"],
        debug=[f"stream chunk {i}" for i in range(5)],
        path="/stream",
        outcome="200",
        reason="slow",
    )
    assert SLOW_MS <= float(summary["ms"]) <= elapsed_ms + 50


def _stream_and_disconnect(port: int, rid: str, last_chunk: int) -> float:
    """Read /stream-long up to chunk `last_chunk`, then close the connection; return seconds."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        request = f"GET /stream-long HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Request-ID: {rid}\r\n\r\n"
        sock.sendall(request.encode())
        received = b""
        needle = f"long {last_chunk}\n".encode()
        while needle not in received:
            data = sock.recv(4096)
            assert data, f"server closed the stream early: {received!r}"
            received += data
    assert received.startswith(b"HTTP/1.1 200 ")
    assert f"x-request-id: {rid}\r\n".encode() in received.lower()
    return time.monotonic() - started


@pytest.mark.parametrize(
    ("last_chunk", "released"),
    [pytest.param(0, False, id="before-slow_ms"), pytest.param(8, True, id="after-slow_ms")],
)
def test_uvicorn_client_disconnect_mid_stream_finishes_once(
    launch: Launch, tmp_path: Path, last_chunk: int, released: bool
) -> None:
    write_app(tmp_path, "asgi_app", FASTAPI_APP)
    server = launch(uvicorn_argv(tmp_path, "asgi_app"), "uvicorn")
    rid = f"e2e-disconnect-{last_chunk}"

    held = _stream_and_disconnect(server.port, rid, last_chunk)
    assert (held * 1000 >= SLOW_MS + 200) is released

    closed = re.compile(r"INFO app long closed sent=(\d+)")
    server.wait_for(
        lambda: any(closed.fullmatch(t) for t in texts(server, rid)), "the stream to be closed"
    )
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        after = client.get("/fail", headers={"X-Request-ID": f"{rid}-after"})
        server.wait_for(lambda: server.summaries(f"{rid}-after"), "the request after")
        settle(server, client)
    assert after.status_code == 500

    lines = texts(server, rid)
    match = closed.fullmatch(lines[0])
    assert match, server.output()
    sent = int(match[1])
    assert last_chunk + 1 <= sent < 20
    if released:
        assert_released(
            server,
            rid,
            before=[lines[0]],
            debug=[f"long chunk {i}" for i in range(sent)],
            path="/stream-long",
            outcome="200",
            reason="slow",
        )
    else:
        assert lines == [lines[0]], server.output()
        assert server.summaries(rid) == []
        assert "long chunk" not in server.output()
    assert "Exception in ASGI application" not in server.output()


def _wsgi_checks(server: Server) -> None:
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        fast = [client.get("/fast") for _ in range(4)]
        raised = client.get("/raise", headers={"X-Request-ID": "g-raise"})
        slow = client.get("/slow", headers={"X-Request-ID": "g-slow"})
        fail_ids = [f"g-fail-{i}" for i in range(6)]
        with ThreadPoolExecutor(len(fail_ids)) as pool:
            fails = list(
                pool.map(lambda rid: client.get("/fail", headers={"X-Request-ID": rid}), fail_ids)
            )
        server.wait_for(
            lambda: all(server.summaries(rid) for rid in ["g-raise", "g-slow", *fail_ids]),
            "the summaries",
        )
        settle(server, client)

    assert [r.status_code for r in fast] == [200] * 4
    for response in fast:
        rid = response.headers["x-request-id"]
        assert GENERATED_ID.fullmatch(rid)
        assert texts(server, rid) == ["INFO app fast-info"]
    output = server.output()
    assert "fast-debug" not in output

    assert [r.status_code for r in fails] == [500] * 6
    for rid, response in zip(fail_ids, fails, strict=True):
        assert response.headers["x-request-id"] == rid
        assert_released(
            server,
            rid,
            before=["INFO app fail-info"],
            debug=[f"fail-debug-1 {rid}", f"fail-debug-2 {rid}"],
            path="/fail",
            outcome="500",
            reason="status",
        )

    assert raised.status_code == 500
    assert_released(
        server,
        "g-raise",
        before=["ERROR wsgi_app Exception on /raise [GET]"],
        debug=["raise-debug-1"],
        path="/raise",
        outcome="500",
        reason="status",
    )
    assert "ValueError: raised in view" in output

    assert slow.status_code == 200
    summary = assert_released(
        server,
        "g-slow",
        before=[],
        debug=["slow-debug-1", "slow-debug-2"],
        path="/slow",
        outcome="200",
        reason="slow",
    )
    assert float(summary["ms"]) >= SLOW_MS
    assert len([s for s in server.summaries() if s["rid"] != "warm"]) == 8


@pytest.mark.parametrize("preload", [False, True], ids=["fork-then-import", "preload"])
def test_gunicorn_sync_workers_flask(launch: Launch, tmp_path: Path, preload: bool) -> None:
    write_app(tmp_path, "wsgi_app", FLASK_APP)
    extra = ["--preload"] if preload else []
    server = launch(gunicorn_argv(tmp_path, "wsgi_app", *extra), "gunicorn")
    if preload:
        time.sleep(0.5)
    _wsgi_checks(server)
    assert "warm-debug" not in server.output()
    if preload:
        warm = server.summaries("warm")
        assert warm, "the master's warm-up thread released nothing"
        assert {m["outcome"] for m in warm} == {"500"}
    assert server.proc is not None
    assert server.proc.poll() is None


def test_gunicorn_gthread_concurrent_releases_keep_their_own_lines(
    launch: Launch, tmp_path: Path
) -> None:
    write_app(tmp_path, "wsgi_app", FLASK_APP)
    server = launch(gunicorn_argv(tmp_path, "wsgi_app", "--threads", "4"), "gunicorn")
    markers = [f"m{i:02d}" for i in range(24)]

    def get(marker: str) -> httpx.Response:
        with httpx.Client(base_url=server.base_url, timeout=10) as client:
            return client.get("/marked", headers={"X-Marker": marker})

    with ThreadPoolExecutor(len(markers)) as pool:
        responses = list(pool.map(get, markers))
    assert [r.status_code for r in responses] == [500] * len(markers)
    rids = {marker: r.headers["x-request-id"] for marker, r in zip(markers, responses, strict=True)}
    assert len(set(rids.values())) == len(markers)
    server.wait_for(
        lambda: all(server.summaries(rid) for rid in rids.values()), "24 summaries", timeout=15
    )
    time.sleep(0.3)

    marked = re.compile(r"marker=(m\d\d) step=(\d)")
    for line in server.lines():
        m = marked.fullmatch(line.message)
        if m:
            assert line.level == "DEBUG"
            assert line.rid == rids[m[1]], f"{line} belongs to {rids[m[1]]}"
    for marker, rid in rids.items():
        assert_released(
            server,
            rid,
            before=[],
            debug=[f"marker={marker} step={step}" for step in range(5)],
            path="/marked",
            outcome="500",
            reason="status",
        )
    assert len(server.summaries()) == len(markers)
