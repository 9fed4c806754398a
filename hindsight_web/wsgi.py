"""HindsightWSGIMiddleware: the WSGI adapter (Flask, Django, any PEP 3333 app)."""

from __future__ import annotations

import contextvars
from collections.abc import Iterable, Iterator
from time import perf_counter
from typing import Any

from . import errors
from ._types import OptExcInfo, StartResponse, WSGIApp, WSGIEnviron
from .buffer import release_memory
from .context import RequestState, _current
from .core import Hindsight

__all__ = ["HindsightWSGIMiddleware"]


class HindsightWSGIMiddleware:
    """WSGI middleware that keeps each request's logs and releases the interesting ones.

    The app call and each chunk of the response run in the request's context;
    the body is passed through chunk by chunk, never buffered; the request
    ends when the server closes the response, and the app iterable's
    `close()` is called exactly once.

    Args:
        app: the WSGI app to wrap.
        hindsight: a shared :class:`Hindsight`; if None, one is made from `options`.
        **options: the options of :class:`Hindsight`, when `hindsight` is not given.

    Example::

        flask_app.wsgi_app = HindsightWSGIMiddleware(flask_app.wsgi_app, slow_ms=500)
    """

    def __init__(self, app: WSGIApp, hindsight: Hindsight | None = None, **options: Any) -> None:
        if hindsight is not None and options:
            raise TypeError(
                "HindsightWSGIMiddleware takes either 'hindsight' or options, not both: "
                f"got hindsight and {sorted(options)}"
            )
        self.app = app
        self.hindsight = hindsight if hindsight is not None else Hindsight(**options)
        self._environ_key = "HTTP_" + self.hindsight.request_id_header.upper().replace("-", "_")

    def __call__(self, environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
        try:
            state = self._begin(environ)
        except Exception as exc:  # fail open: serve the request without hindsight
            errors.report("begin", exc)
            return self.app(environ, start_response)
        context = contextvars.copy_context()
        context.run(_current.set, state)
        header_name = self.hindsight.request_id_header
        wanted = header_name.lower()
        header = (header_name, state.request_id)

        def observing_start_response(
            status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None
        ) -> Any:
            try:
                state.status = int(status[:3])
            except ValueError:
                state.status = None
            for name, _ in headers:
                if name.lower() == wanted:
                    break  # the app set its own request id; keep it
            else:
                headers = [*headers, header]
            if exc_info is not None:
                return start_response(status, headers, exc_info)
            return start_response(status, headers)

        try:
            iterable = context.run(self.app, environ, observing_start_response)
        except BaseException as exc:
            context.run(self.hindsight.finish, state, exc)
            raise
        return _Response(iterable, state, context, self.hindsight)

    def _begin(self, environ: WSGIEnviron) -> RequestState:
        path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        if not path.isascii():
            try:  # PEP 3333 hands the path over as latin-1 decoded bytes
                path = path.encode("latin-1").decode("utf-8")
            except UnicodeError:
                pass
        return self.hindsight.begin(
            environ.get("REQUEST_METHOD", "GET"),
            path,
            environ.get("REMOTE_ADDR"),
            environ.get(self._environ_key),
            environ,
        )


class _Response:
    """The app's iterable, passed through chunk by chunk in the request's context."""

    __slots__ = (
        "_closed",
        "_context",
        "_exception",
        "_hindsight",
        "_iterable",
        "_iterator",
        "_state",
    )

    def __init__(
        self,
        iterable: Iterable[bytes],
        state: RequestState,
        context: contextvars.Context,
        hindsight: Hindsight,
    ) -> None:
        self._iterable = iterable
        self._iterator: Iterator[bytes] | None = None
        self._state = state
        self._context = context
        self._hindsight = hindsight
        self._exception: BaseException | None = None
        self._closed = False

    def __iter__(self) -> _Response:
        return self

    def __next__(self) -> bytes:
        state = self._state
        try:
            if self._iterator is None:
                self._iterator = self._context.run(iter, self._iterable)
            chunk: bytes = self._context.run(next, self._iterator)
        except StopIteration:
            if state.ended is None:
                state.ended = perf_counter()
            raise
        except BaseException as exc:
            self._exception = exc
            if state.ended is None:
                state.ended = perf_counter()
            raise
        if state.ttfb is None and chunk:
            state.ttfb = perf_counter()
        return chunk

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        state = self._state
        if state.ended is None:
            state.ended = perf_counter()
        try:
            close = getattr(self._iterable, "close", None)
            if close is not None:
                self._context.run(close)
        except BaseException as exc:
            if self._exception is None:
                self._exception = exc
            raise
        finally:
            self._context.run(self._hindsight.finish, state, self._exception)

    def __del__(self) -> None:
        # A server that never calls close() breaks PEP 3333; at least give the memory back.
        if not self._closed:
            release_memory(self._state)
