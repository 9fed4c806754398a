"""Apps and drivers for the admin API tests: a FastAPI and a Flask app, one sync client for
both, a raw HTTP/1.1 client for real servers, and the sources of the real-server apps."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator, Iterable
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from flask import Flask

import hindsight_web
from hindsight_web import Hindsight, HindsightMiddleware, HindsightWSGIMiddleware
from hindsight_web.release import flush_all

log = logging.getLogger("app")

TOKEN = "s3cret-token-0123456789"
READ_TOKEN = "read-only-token-0123456789"
ADMIN = "/_hindsight"
CALLER = "203.0.113.7"  # the client address both transports report, so `by` is checkable
UNSET: Any = object()


def log_user_request(uid: str) -> None:
    """What /user/{uid} logs: a DEBUG and an INFO line, set_user(), a DEBUG and an INFO line."""
    log.debug("before-set_user %s", uid)
    log.info("pre-info %s", uid)
    hindsight_web.set_user(uid)
    log.debug("after-set_user %s", uid)
    log.info("post-info %s", uid)


def fastapi_app(hs: Hindsight) -> Any:
    app = FastAPI()

    @app.get("/fast")
    async def fast() -> PlainTextResponse:
        log.debug("fast-debug-1")
        log.debug("fast-debug-2")
        return PlainTextResponse("ok")

    @app.get("/fail")
    async def fail() -> PlainTextResponse:
        log.debug("fail-debug")
        return PlainTextResponse("failed", status_code=500)

    @app.get("/user/{uid}")
    async def user(uid: str) -> PlainTextResponse:
        log_user_request(uid)
        return PlainTextResponse("ok")

    @app.get(f"{ADMIN}/health")
    async def own_health() -> PlainTextResponse:
        return PlainTextResponse("the app's own route")

    app.add_middleware(HindsightMiddleware, hindsight=hs)
    return app


def flask_app(hs: Hindsight) -> Any:
    app = Flask("admin_test_app")

    @app.get("/fast")
    def fast() -> str:
        log.debug("fast-debug-1")
        log.debug("fast-debug-2")
        return "ok"

    @app.get("/fail")
    def fail() -> tuple[str, int]:
        log.debug("fail-debug")
        return "failed", 500

    @app.get("/user/<uid>")
    def user(uid: str) -> str:
        log_user_request(uid)
        return "ok"

    @app.get(f"{ADMIN}/health")
    def own_health() -> str:
        return "the app's own route"

    app.wsgi_app = HindsightWSGIMiddleware(app.wsgi_app, hindsight=hs)  # type: ignore[method-assign]
    return app


class AppClient:
    """Sync requests to an ASGI app (through httpx.AsyncClient on its own loop) or a WSGI app.

    `admin()` prefixes the admin path and sends the admin token unless told otherwise.
    """

    def __init__(self, app: Any, *, asgi: bool, hs: Hindsight | None = None) -> None:
        self.hs = hs
        self.asgi = asgi
        self._loop: asyncio.AbstractEventLoop | None = None
        self._async: httpx.AsyncClient | None = None
        self._sync: httpx.Client | None = None
        if asgi:
            self._loop = asyncio.new_event_loop()
            transport = httpx.ASGITransport(app=app, client=(CALLER, 40000))
            self._async = httpx.AsyncClient(transport=transport, base_url="http://test")
        else:
            wsgi = httpx.WSGITransport(app=app, remote_addr=CALLER)
            self._sync = httpx.Client(transport=wsgi, base_url="http://test")

    def request(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        json_body: Any = UNSET,
        content: bytes | Iterable[bytes] | AsyncIterator[bytes] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        headers = dict(headers or {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if json_body is not UNSET:
            content = json.dumps(json_body).encode()
            headers.setdefault("Content-Type", "application/json")
        if self._async is not None and self._loop is not None:
            call = self._async.request(method, path, content=content, headers=headers)
            response = self._loop.run_until_complete(call)
        else:
            assert self._sync is not None
            response = self._sync.request(method, path, content=content, headers=headers)
        flush_all()  # releases are written by a background thread
        return response

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def admin(
        self, method: str, path: str, *, token: str | None = TOKEN, **kwargs: Any
    ) -> httpx.Response:
        return self.request(method, ADMIN + path, token=token, **kwargs)

    def rules(self) -> list[dict[str, Any]]:
        """GET /rules, each rule without `ttl_s` (the seconds left, which change as time goes)."""
        response = self.admin("GET", "/rules")
        assert response.status_code == 200, response.text
        return [{k: v for k, v in r.items() if k != "ttl_s"} for r in response.json()["rules"]]

    def audit(self) -> list[dict[str, Any]]:
        response = self.admin("GET", "/audit")
        assert response.status_code == 200, response.text
        events: list[dict[str, Any]] = response.json()["events"]
        return events

    def close(self) -> None:
        if self._async is not None and self._loop is not None:
            self._loop.run_until_complete(self._async.aclose())
            self._loop.close()
        if self._sync is not None:
            self._sync.close()


def make_client(adapter: str, hs: Hindsight) -> AppClient:
    if adapter == "fastapi":
        return AppClient(fastapi_app(hs), asgi=True, hs=hs)
    return AppClient(flask_app(hs), asgi=False, hs=hs)


async def chunks_of(body: bytes, size: int) -> AsyncIterator[bytes]:
    """`body` as a stream of chunks: httpx sends it without a Content-Length."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


# -- raw HTTP/1.1 for real servers (httpx would normalise the paths) --------------------------


class RawResponse:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"RawResponse({self.status}, {self.headers}, {self.body[:300]!r})"


def raw_request(
    port: int,
    method: str,
    target: str,
    *,
    token: str | None = None,
    body: bytes = b"",
    chunked: bool = False,
) -> RawResponse:
    """Send one request exactly as written (the target is not normalised) and read the answer."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    payload = body
    if chunked:
        lines.append("Transfer-Encoding: chunked")
        lines.append("Content-Type: application/json")
        payload = b"".join(
            b"%x\r\n%s\r\n" % (len(body[i : i + 100]), body[i : i + 100])
            for i in range(0, len(body), 100)
        )
        payload += b"0\r\n\r\n"
    elif body:
        lines.append(f"Content-Length: {len(body)}")
        lines.append("Content-Type: application/json")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload
    data = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        while chunk := sock.recv(65536):
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        rest = _dechunk(rest)
    return RawResponse(int(status_line.split()[1]), headers, rest)


def _dechunk(data: bytes) -> bytes:
    body = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        body += data[:size]
        data = data[size + 2 :]
    return body


# -- the real-server apps: a catch-all route answers 200 to whatever reaches the app -----------

UVICORN_APP = f"""
import logging
import sys

from fastapi import FastAPI, Request

from hindsight_web import HindsightMiddleware

logging.basicConfig(level=logging.INFO, stream=sys.stderr, format={{FORMAT}})

app = FastAPI()


@app.api_route("/{{rest:path}}", methods=["GET", "POST", "DELETE"])
async def catch_all(request: Request, rest: str):
    return {{"app": request.url.path}}


app.add_middleware(HindsightMiddleware, admin_token={TOKEN!r}, admin_max_body=1024)
"""

GUNICORN_APP = f"""
import logging
import sys

from flask import Flask, request

from hindsight_web import HindsightWSGIMiddleware

logging.basicConfig(level=logging.INFO, stream=sys.stderr, format={{FORMAT}})

app = Flask(__name__)


@app.route("/", defaults={{"rest": ""}}, methods=["GET", "POST", "DELETE"])
@app.route("/<path:rest>", methods=["GET", "POST", "DELETE"])
def catch_all(rest):
    return {{"app": request.path}}


app.wsgi_app = HindsightWSGIMiddleware(app.wsgi_app, admin_token={TOKEN!r}, admin_max_body=1024)
"""
