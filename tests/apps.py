"""Tiny ASGI and WSGI apps and drivers shared by the in-process tests."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

from hindsight_web.release import flush_all

log = logging.getLogger("app")


async def call_asgi(
    app: Any, path: str = "/", method: str = "GET", headers: Any = (), flush: bool = True
) -> dict[str, Any]:
    """Run one HTTP request through an ASGI app; return status, headers, body, exception.

    With `flush`, wait until hindsight's background thread wrote its releases.
    """
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    result: dict[str, Any] = {"exception": None}
    try:
        await app(scope, receive, send)
    except BaseException as exc:
        result["exception"] = exc
    start = next((m for m in sent if m["type"] == "http.response.start"), None)
    result["status"] = start["status"] if start else None
    result["headers"] = {k.decode(): v.decode() for k, v in (start or {}).get("headers", [])}
    result["body"] = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    if flush:
        flush_all()  # releases are written by a background thread
    return result


def run_asgi(app: Any, path: str = "/", **kwargs: Any) -> dict[str, Any]:
    return asyncio.run(call_asgi(app, path, **kwargs))


def call_wsgi(
    app: Any, path: str = "/", headers: Any = (), consume: bool = True, flush: bool = True
) -> dict[str, Any]:
    """Run one request through a WSGI app as a PEP 3333 server would.

    With `flush`, wait until hindsight's background thread wrote its releases.
    """
    environ = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "REMOTE_ADDR": "127.0.0.1",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": None,
        "wsgi.errors": None,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for name, value in headers:
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    result: dict[str, Any] = {"exception": None, "status": None, "headers": {}}

    def start_response(
        status: str, response_headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Any:
        result["status"] = int(status.split()[0])
        result["headers"] = dict(response_headers)
        return lambda data: None

    body = []
    iterable: Iterable[bytes] | None = None
    try:
        iterable = app(environ, start_response)
        if consume:
            body.extend(iterable)
    except Exception as exc:
        result["exception"] = exc
    finally:
        close = getattr(iterable, "close", None)
        if close is not None:
            close()
    result["body"] = b"".join(body)
    if flush:
        flush_all()  # releases are written by a background thread
    return result
