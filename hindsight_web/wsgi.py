"""HindsightWSGIMiddleware: the WSGI adapter (Flask, Django, any PEP 3333 app)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from functools import partial
from http import HTTPStatus
from time import perf_counter
from typing import Any
from urllib.parse import parse_qsl

from . import errors
from ._types import StartResponse, WSGIApp, WSGIEnviron
from .admin import Admin, AdminRequest, admin_segments, too_large
from .buffer import release_memory
from .context import RequestState, _current, let_go, mark_exception
from .core import Hindsight, adopt_request_id, middleware_arguments
from .stats import UNMATCHED

__all__ = ["AdminWSGIApp", "HindsightWSGIMiddleware"]


class HindsightWSGIMiddleware:
    """WSGI middleware that keeps each request's logs and releases the interesting ones.

    The app call and each `next()` and `close()` of the response run in the
    server's own context with the request's state current, and only then: the
    contextvars the app sets live where they would without the middleware. The
    body is passed through chunk by chunk, never buffered; the request ends
    when the server closes the response, and the app iterable's `close()` is
    called exactly once.

    Args:
        app: the WSGI app to wrap.
        hindsight: a shared :class:`Hindsight`; if None, one is made from `options`.
        **options: the options of :class:`Hindsight`, when `hindsight` is not given.

    Example::

        flask_app.wsgi_app = HindsightWSGIMiddleware(flask_app.wsgi_app, slow_ms=500)
    """

    def __init__(self, *app: WSGIApp, hindsight: Hindsight | None = None, **options: Any) -> None:
        name = type(self).__name__
        self.app, self.hindsight = middleware_arguments(name, app, hindsight, options)
        self.admin = Admin(self.hindsight)
        self._environ_key = "HTTP_" + self.hindsight.request_id_header.upper().replace("-", "_")

    def __call__(self, environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
        marker = self.admin.marker
        if marker is not None and marker in environ.get("PATH_INFO", ""):
            path, encoded = _request_path(environ)
            segments = self.admin.route(path, encoded=encoded)
            if segments is not None:
                return serve_admin(self.admin, segments, environ, start_response)
        try:
            state = self._begin(environ)
            if environ.get(self._environ_key) != state.request_id:
                environ[self._environ_key] = state.request_id  # the app sees the same id
        except Exception as exc:  # fail open: serve the request without hindsight
            errors.report("begin", exc)
            return self.app(environ, start_response)
        header_name = self.hindsight.request_id_header
        observing = partial(
            _observe_start, start_response, state, environ, header_name.lower(),
            (header_name, state.request_id),
        )  # fmt: skip
        # Not in a copied context: what the app sets (Flask's request context, which its
        # test client keeps and pops later) must stay in the server's context.
        token = _current.set(state)
        try:
            iterable = self.app(environ, observing)
        except BaseException as exc:
            self.hindsight.finish(state, exc)
            mark_exception(exc, state)  # the server's line about it names the request
            raise
        finally:
            _current.reset(token)
        return _Response(iterable, state, self.hindsight)

    def _begin(self, environ: WSGIEnviron) -> RequestState:
        return self.hindsight.begin(
            environ.get("REQUEST_METHOD", "GET"),
            _utf8(environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")),
            environ.get("REMOTE_ADDR"),
            environ.get(self._environ_key),
            environ,
        )


def _observe_start(
    start_response: StartResponse,
    state: RequestState,
    environ: WSGIEnviron,
    wanted: str,
    header: tuple[str, str],
    status: Any,
    headers: Any,
    exc_info: Any = None,
) -> Any:
    """The `start_response` the app is given (bound to its first five arguments): notes
    the status and the route, and adds the request-id `header` (its name lower-case:
    `wanted`) unless the app answered with its own id, which becomes the request's.

    A partial rather than a closure: nothing of it refers back to the call that made it,
    so both are freed when the request ends, without the garbage collector. What the app
    passes is typed `Any`: a compiled build checks annotations, and whatever the app
    passes goes to the server as it is.
    """
    try:
        state.status = int(status[:3])
    except ValueError:
        state.status = None
    # Flask (werkzeug) answers inside its request context: the matched URL rule, or the
    # routing exception of a request that matched none (404, 405).
    request = environ.get("werkzeug.request")
    rule = getattr(request, "url_rule", None)
    if rule is not None:
        state.route = getattr(rule, "rule", None)
    elif getattr(request, "routing_exception", None) is not None:
        state.route = UNMATCHED
    for name, value in headers:
        if name.lower() == wanted:  # the app answered with its own id: the request's
            adopt_request_id(state, value)
            break
    else:
        headers = [*headers, header]
    if exc_info is not None:
        return start_response(status, headers, exc_info)
    return start_response(status, headers)


class AdminWSGIApp:
    """The admin API of a :class:`Hindsight` as a WSGI app that answers at its own root.

    Mount it anywhere (werkzeug's ``DispatcherMiddleware``), or serve it on a
    separate port.

    Raises:
        ValueError: the Hindsight has no ``admin_token``.

    Example::

        DispatcherMiddleware(flask_app.wsgi_app, {"/ops/hindsight": AdminWSGIApp(hs)})
    """

    def __init__(self, hindsight: Hindsight) -> None:
        self.hindsight = hindsight
        self.admin = Admin(hindsight, mounted=True)

    def __call__(self, environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
        segments = admin_segments(_admin_text(environ.get("PATH_INFO", "")), [], encoded=False)
        segments = segments or []
        return serve_admin(self.admin, segments, environ, start_response)


def serve_admin(
    admin: Admin, segments: list[str], environ: WSGIEnviron, start_response: StartResponse
) -> list[bytes]:
    """Read the request (body bounded by `admin.max_body`) and answer it."""
    limit = admin.max_body
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    body = b""
    if length > limit:
        answer = None
    elif length > 0:
        body = environ["wsgi.input"].read(length)
    elif environ.get("wsgi.input_terminated"):  # a chunked body: read up to the limit
        body = environ["wsgi.input"].read(limit + 1)
    if length > limit or len(body) > limit:
        answer = too_large(limit)
    else:
        headers = {
            key[5:].replace("_", "-").lower(): value
            for key, value in environ.items()
            if key.startswith("HTTP_")
        }
        if "CONTENT_TYPE" in environ:
            headers["content-type"] = environ["CONTENT_TYPE"]
        request = AdminRequest(
            method=environ.get("REQUEST_METHOD", "GET"),
            segments=segments,
            query=dict(parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True)),
            headers=headers,
            body=body,
            client=environ.get("REMOTE_ADDR"),
        )
        answer = admin.handle(request)
    status, response_headers, payload = answer
    response_headers = [*response_headers, ("content-length", str(len(payload)))]
    start_response(f"{status} {HTTPStatus(status).phrase}", response_headers)
    return [b"" if environ.get("REQUEST_METHOD") == "HEAD" else payload]


def _request_path(environ: WSGIEnviron) -> tuple[str, bool]:
    """The request path as sent when the server tells it (gunicorn, werkzeug), else decoded."""
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if isinstance(raw, str) and raw.startswith("/"):
        return raw.split("?", 1)[0], True
    return _admin_text(environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")), False


def _utf8(path: str) -> str:
    """A PEP 3333 path (latin-1 decoded bytes) as the UTF-8 text it was sent as."""
    if path.isascii():
        return path
    try:
        return path.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return path


def _admin_text(path: str) -> str:
    """A PEP 3333 path (latin-1 decoded bytes) as the UTF-8 text it was sent as, bytes
    that are not UTF-8 kept as lone surrogates (the admin refuses them, naming the
    path, rather than take them for other characters)."""
    if path.isascii():
        return path
    try:
        return path.encode("latin-1").decode("utf-8", "surrogateescape")
    except UnicodeError:  # not latin-1: the server gave text, not bytes
        return path


_END = object()  # what `next` gives for the end of the app's iterable


class _Response:
    """The app's iterable, passed through chunk by chunk with the request's state current.

    The state is set for each call and reset after it, in the context of whoever calls
    (like sentry-python's `_ScopedResponse`): a server may call `next()` and `close()`
    from another thread, or interleave several responses on one thread, and the app's
    body sets its own contextvars in the server's context, as it would unwrapped.
    """

    __slots__ = (
        "_closed",
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
        hindsight: Hindsight,
    ) -> None:
        self._iterable = iterable
        self._iterator: Iterator[Any] | None = None
        self._state = state
        self._hindsight = hindsight
        self._exception: BaseException | None = None
        self._closed = False

    def __iter__(self) -> Iterator[Any]:
        """The app's chunks as they come, each fetched with the request's state current.

        A generator (not `__next__` on this object): the end of the app's iterable is
        seen without an exception raised and caught here.
        """
        state = self._state
        while True:
            token = _current.set(state)
            try:
                if self._iterator is None:
                    self._iterator = iter(self._iterable)
                chunk: Any = next(self._iterator, _END)
            except BaseException as exc:
                self._exception = exc
                mark_exception(exc, state)
                if state.ended is None:
                    state.ended = perf_counter()
                raise
            finally:
                _current.reset(token)
            if chunk is _END:
                if state.ended is None:
                    state.ended = perf_counter()
                return
            if state.ttfb is None and chunk:
                state.ttfb = perf_counter()
            yield chunk

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        state = self._state
        if state.ended is None:
            state.ended = perf_counter()
        token = _current.set(state)
        try:
            close = getattr(self._iterable, "close", None)
            if close is not None:
                close()
        except BaseException as exc:
            if self._exception is None:
                self._exception = exc
            mark_exception(exc, state)
            raise
        finally:
            try:
                self._hindsight.finish(state, self._exception)
            finally:
                _current.reset(token)

    def __del__(self) -> None:
        # A server that never calls close() breaks PEP 3333; at least give the memory
        # back, and the contexts its records hold (they hold the state).
        if not self._closed:
            let_go(self._state)
            release_memory(self._state)
