"""HindsightMiddleware: the ASGI adapter (FastAPI, Starlette, any ASGI app)."""

from __future__ import annotations

from time import perf_counter
from typing import Any

from . import errors
from ._types import ASGIApp, Message, Receive, Scope, Send
from .context import RequestState, _current
from .core import Hindsight

__all__ = ["HindsightMiddleware"]


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

    def __init__(self, app: ASGIApp, hindsight: Hindsight | None = None, **options: Any) -> None:
        if hindsight is not None and options:
            raise TypeError(
                "HindsightMiddleware takes either 'hindsight' or options, not both: "
                f"got hindsight and {sorted(options)}"
            )
        self.app = app
        self.hindsight = hindsight if hindsight is not None else Hindsight(**options)
        self._header = self.hindsight.request_id_header.lower().encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            state = self._begin(scope)
        except Exception as exc:  # fail open: serve the request without hindsight
            errors.report("begin", exc)
            await self.app(scope, receive, send)
            return
        token = _current.set(state)
        header = (self._header, state.request_id.encode("latin-1"))

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                state.status = message["status"]
                state.ttfb = perf_counter()
                message = _with_header(message, header)
            elif not message.get("more_body", False) and state.ended is None:
                state.ended = perf_counter()  # the last body byte
            await send(message)

        exception = None
        try:
            await self.app(scope, receive, send_wrapper)
        except BaseException as exc:
            exception = exc
            raise
        finally:
            self.hindsight.finish(state, exception)
            _current.reset(token)

    def _begin(self, scope: Scope) -> RequestState:
        incoming = None
        wanted = self._header
        headers = scope.get("headers", ())
        for name, value in headers:
            if name == wanted:
                incoming = value.decode("latin-1")
                break
        client = scope.get("client")
        return self.hindsight.begin(
            scope.get("method", "GET"),
            scope.get("path", ""),
            client[0] if client else None,
            incoming,
            headers,
        )


def _with_header(message: Message, header: tuple[bytes, bytes]) -> Message:
    headers = message.get("headers", ())
    name = header[0]
    for key, _ in headers:
        if key.lower() == name:
            return message  # the app set its own request id; keep it
    return {**message, "headers": [*headers, header]}
