"""HindsightMiddleware: the ASGI adapter (FastAPI, Starlette, any ASGI app)."""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from time import perf_counter
from typing import Any
from urllib.parse import parse_qsl, quote

from . import errors
from ._types import ASGIApp, Message, Receive, Scope, Send
from .admin import Admin, AdminRequest, admin_segments, too_large
from .context import RequestState, _current, mark_exception
from .core import Hindsight, adopt_request_id, middleware_arguments
from .stats import UNMATCHED

__all__ = ["AdminASGIApp", "HindsightMiddleware"]


class HindsightMiddleware:
    """Pure ASGI middleware that keeps each HTTP request's logs and releases the interesting ones.

    Lifespan and websocket scopes pass through untouched. The app's response
    is not changed, except for the request-id response header; the app's
    exceptions (`asyncio.CancelledError` included) are re-raised as they are.

    Args:
        app: the ASGI app to wrap.
        hindsight: a shared :class:`Hindsight`; if None, one is made from `options`.
        **options: the options of :class:`Hindsight`, when `hindsight` is not given.

    Example::

        app = FastAPI()
        app.add_middleware(HindsightMiddleware, slow_ms=500)
    """

    def __init__(self, *app: ASGIApp, hindsight: Hindsight | None = None, **options: Any) -> None:
        name = type(self).__name__
        self.app, self.hindsight = middleware_arguments(name, app, hindsight, options)
        self.admin = Admin(self.hindsight)
        self._header = self.hindsight.request_id_header.lower().encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # ASGI scopes and messages are dicts: read as dicts, they cost a compiled build
        # far less (any other mapping is read through a copy).
        http: dict[str, Any] = scope if isinstance(scope, dict) else dict(scope)
        hindsight = self.hindsight
        path = http.get("path", "")
        marker = self.admin.marker
        if marker is not None and marker in path:
            segments = self.admin.route(_raw_path(http), encoded=True)
            if segments is not None:
                await serve_admin(self.admin, segments, http, receive, send)
                return
        try:
            headers = http.get("headers", ())
            incoming = None
            wanted = self._header
            for name, value in headers:
                if name == wanted:
                    incoming = value.decode("latin-1")
                    break
            client = http.get("client")
            state = hindsight.begin(
                http.get("method", "GET"), path, client[0] if client else None, incoming, headers
            )
            request_id = state.request_id.encode("latin-1")
            if incoming is None:  # the app and inner layers see the same id
                http = {**http, "headers": [*headers, (wanted, request_id)]}
            elif incoming != state.request_id:  # not a valid id: replaced
                kept = [h for h in headers if h[0] != wanted]
                http = {**http, "headers": [*kept, (wanted, request_id)]}
        except Exception as exc:  # fail open: serve the request without hindsight
            errors.report("begin", exc)
            await self.app(scope, receive, send)
            return
        token = _current.set(state)
        unfinished = _Unfinished(hindsight, state) if _COMPILED else None
        exception = None
        try:
            await self.app(http, receive, partial(_send, send, state, wanted, request_id))
        except BaseException as exc:
            exception = exc
            raise
        finally:
            route = http.get("route")  # Starlette and FastAPI put the matched route here
            if route is not None:
                state.route = getattr(route, "path", None)
            elif "router" in http:  # Starlette routed the request and no route matched
                state.route = UNMATCHED
            if unfinished is None:
                hindsight.finish(state, exception)
            else:  # its last use: it lives until the request is over
                unfinished.finish(exception)
            _current.reset(token)
            if exception is not None:
                mark_exception(exception, state)


_COMPILED = not __file__.endswith(".py")


class _Unfinished:
    """Finishes a request whose coroutine was dropped before it ended (never resumed nor
    closed again), when the coroutine is freed.

    Interpreted, the coroutine's ``finally`` does that; a compiled coroutine (mypyc) runs
    no ``finally`` when it is dropped, so the compiled build makes one of these per
    request, and finishes the request through it (so that it lives as long as the
    request): its finalizer finishes the request unless the request finished already.
    """

    def __init__(self, hindsight: Hindsight, state: RequestState) -> None:
        self.hindsight = hindsight
        self.state = state

    def finish(self, exception: BaseException | None) -> None:
        """Finish the request (the coroutine's own ``finally``)."""
        self.hindsight.finish(self.state, exception)

    def __del__(self) -> None:
        if not self.state.closed:
            self.hindsight.finish(self.state)


async def _send(
    send: Send, state: RequestState, name: bytes, request_id: bytes, message: Message
) -> None:
    """The `send` the app is given (bound to its first four arguments): notes the
    status, the time of the first and of the last body byte, and adds the request-id
    header (`name`: `request_id`) to the response start.

    A partial rather than a closure: nothing of it refers back to the request's
    coroutine, so both are freed when the request ends, without the garbage collector.
    """
    sent: dict[str, Any] = message if isinstance(message, dict) else dict(message)
    kind = sent["type"]
    if kind == "http.response.start":
        status = sent["status"]  # an int by ASGI: anything else is the server's to refuse
        state.status = status if isinstance(status, int) else None
        state.ttfb = perf_counter()
        sent = _with_request_id(sent, name, request_id, state)
    elif state.ended is None and not sent.get("more_body", False):
        state.ended = perf_counter()  # the last body byte
    await send(sent)


class AdminASGIApp:
    """The admin API of a :class:`Hindsight` as an ASGI app that answers at its own root.

    Mount it anywhere, or serve it on a separate port. It answers HTTP only
    (lifespan is accepted and ignored).

    Raises:
        ValueError: the Hindsight has no ``admin_token``.

    Example::

        app.mount("/ops/hindsight", AdminASGIApp(hs))  # Starlette / FastAPI
    """

    def __init__(self, hindsight: Hindsight) -> None:
        self.hindsight = hindsight
        self.admin = Admin(hindsight, mounted=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _serve_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path = _raw_path(scope)
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        segments = admin_segments(path, [], encoded=True) or []
        await serve_admin(self.admin, segments, scope, receive, send)


async def serve_admin(
    admin: Admin, segments: list[str], scope: Scope, receive: Receive, send: Send
) -> None:
    """Read the request (body bounded by `admin.max_body`) and send the admin's answer.

    The admin's answer may wait on the store: it is made in a thread, so the event
    loop goes on serving the app's requests meanwhile.
    """
    headers = {
        name.decode("latin-1").lower(): value.decode("latin-1")
        for name, value in scope.get("headers", ())
    }
    limit = admin.max_body
    answer = None
    body = b""
    if _declared_length(headers) > limit:
        answer = too_large(limit)
    else:
        chunks = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                answer = too_large(limit)
                break
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
    if answer is None:
        client = scope.get("client")
        request = AdminRequest(
            method=scope.get("method", "GET"),
            segments=segments,
            query=dict(
                parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
            ),
            headers=headers,
            body=body,
            client=client[0] if client else None,
        )
        answer = await asyncio.get_running_loop().run_in_executor(
            _admin_threads(), admin.handle, request
        )
    status, response_headers, payload = answer
    raw_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response_headers]
    raw_headers.append((b"content-length", str(len(payload)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send(
        {"type": "http.response.body", "body": payload if scope.get("method") != "HEAD" else b""}
    )


_executor: ThreadPoolExecutor | None = None


def _admin_threads() -> ThreadPoolExecutor:
    """The threads that answer admin calls: their own, so that admin calls waiting on a
    store that does not answer never hold up the app's work in the loop's default pool."""
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="hindsight-admin")
    return _executor


def _forget_admin_threads() -> None:
    global _executor
    _executor = None  # its threads did not survive the fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_admin_threads)


def _declared_length(headers: dict[str, str]) -> int:
    try:
        return int(headers.get("content-length", "0"))
    except ValueError:
        return 0


def _raw_path(scope: Scope) -> str:
    """The request path as sent (percent-escapes kept), without the query string."""
    raw = scope.get("raw_path")
    if raw:
        return str(raw.decode("latin-1")).split("?", 1)[0]
    return quote(scope.get("path", ""), safe="/:@!$&'()*+,;=-._~")


async def _serve_lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _with_request_id(
    message: dict[str, Any], name: bytes, request_id: bytes, state: RequestState
) -> dict[str, Any]:
    """The response start with the request-id header (`name`: `request_id`); an id the
    app answered with itself is kept, and becomes the request's (its summary and
    records carry it)."""
    headers = message.get("headers", ())
    if not isinstance(headers, (list, tuple)):  # any iterable is allowed: read it once
        headers = list(headers)
        message = {**message, "headers": headers}
    size = len(name)
    for key, value in headers:  # compared as bytes: ASGI's header names are
        if len(key) == size and key.lower() == name:
            adopt_request_id(state, value.decode("latin-1"))
            return message
    return {**message, "headers": [*headers, (name, request_id)]}
