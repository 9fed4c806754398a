"""HindsightWSGIMiddleware: PEP 3333 behaviour and release."""

from __future__ import annotations

import contextvars
import logging
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import flask
import pytest
from flask import Flask

from hindsight_web import HindsightWSGIMiddleware
from hindsight_web.context import current
from hindsight_web.release import flush_all

from .apps import call_wsgi, log
from .conftest import ListHandler

T = TypeVar("T")


class Body:
    """An app iterable that counts close() calls and can fail mid-iteration."""

    def __init__(self, chunks: int = 3, fail_at: int | None = None) -> None:
        self.chunks = chunks
        self.fail_at = fail_at
        self.closed = 0

    def __iter__(self) -> Iterator[bytes]:
        for i in range(self.chunks):
            if i == self.fail_at:
                raise RuntimeError("broken stream")
            log.debug("chunk %d", i)
            yield b"x"

    def close(self) -> None:
        self.closed += 1


def body_app(body: Body, status: str = "200 OK") -> Any:
    def app(environ: Any, start_response: Any) -> Any:
        log.debug("app called")
        start_response(status, [("Content-Type", "text/plain")])
        return body

    return app


def test_fast_request_writes_nothing_extra_and_close_runs_once(out: ListHandler) -> None:
    body = Body()
    result = call_wsgi(HindsightWSGIMiddleware(body_app(body)))
    assert result["body"] == b"xxx"
    assert len(result["headers"]["X-Request-ID"]) == 32
    assert out.records == []
    assert body.closed == 1


def test_app_given_as_a_keyword_is_wrapped(out: ListHandler) -> None:
    body = Body()
    result = call_wsgi(
        HindsightWSGIMiddleware(app=body_app(body, "500 Internal Server Error"), slow_ms=None)
    )
    assert "(reason: status)" in out.messages()[0]
    assert out.messages()[1:] == ["app called", "chunk 0", "chunk 1", "chunk 2"]
    assert len(result["headers"]["X-Request-ID"]) == 32
    assert body.closed == 1


def test_500_releases_records_of_the_app_call_and_each_chunk(out: ListHandler) -> None:
    body = Body()
    result = call_wsgi(HindsightWSGIMiddleware(body_app(body, "500 Internal Server Error")))
    assert "GET / -> 500" in out.messages()[0]
    assert out.messages()[1:] == ["app called", "chunk 0", "chunk 1", "chunk 2"]
    rid = result["headers"]["X-Request-ID"]
    assert {r.request_id for r in out.records} == {rid}  # type: ignore[attr-defined]
    assert body.closed == 1


def test_error_mid_iteration_releases_and_closes_once(out: ListHandler) -> None:
    body = Body(fail_at=2)
    result = call_wsgi(HindsightWSGIMiddleware(body_app(body)))
    assert isinstance(result["exception"], RuntimeError)
    assert "raised RuntimeError" in out.messages()[0]
    assert out.messages()[1:] == ["app called", "chunk 0", "chunk 1"]
    assert body.closed == 1


def test_early_close_closes_once_and_counts_until_close(out: ListHandler) -> None:
    body = Body(chunks=10)
    mw = HindsightWSGIMiddleware(body_app(body, "503 Service Unavailable"))
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/early"}
    response = mw(environ, lambda status, headers, exc_info=None: None)
    iterator = iter(response)
    next(iterator)
    response.close()  # type: ignore[attr-defined]
    response.close()  # type: ignore[attr-defined]
    flush_all()
    assert body.closed == 1
    assert out.messages()[1:] == ["app called", "chunk 0"]
    assert sum(m.startswith("hindsight release") for m in out.messages()) == 1


def test_app_raising_before_returning_is_released_and_reraised(out: ListHandler) -> None:
    def app(environ: Any, start_response: Any) -> Any:
        log.debug("about to fail")
        raise KeyError("missing")

    result = call_wsgi(HindsightWSGIMiddleware(app))
    assert isinstance(result["exception"], KeyError)
    assert out.messages()[1:] == ["about to fail"]


def test_status_from_lazy_start_response_in_a_generator(out: ListHandler) -> None:
    def app(environ: Any, start_response: Any) -> Any:
        log.debug("generator created")
        start_response("502 Bad Gateway", [])
        yield b"late"

    call_wsgi(HindsightWSGIMiddleware(app))
    assert "-> 502" in out.messages()[0]
    assert out.messages()[1:] == ["generator created"]


def test_start_response_called_again_with_exc_info(out: ListHandler) -> None:
    seen: list[str] = []

    def app(environ: Any, start_response: Any) -> Any:
        start_response("200 OK", [])
        try:
            raise ValueError("late failure")
        except ValueError:
            log.debug("switching to an error page")
            start_response("500 Internal Server Error", [], sys.exc_info())
        return [b"error"]

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        seen.append(status)
        return lambda data: None

    response = HindsightWSGIMiddleware(app)(
        {"REQUEST_METHOD": "GET", "PATH_INFO": "/"}, start_response
    )
    list(response)
    response.close()  # type: ignore[attr-defined]
    flush_all()
    assert seen == ["200 OK", "500 Internal Server Error"]
    assert "-> 500" in out.messages()[0]


def test_body_is_streamed_not_buffered() -> None:
    produced: list[int] = []

    def app(environ: Any, start_response: Any) -> Any:
        start_response("200 OK", [])
        for i in range(3):
            produced.append(i)
            yield b"%d" % i

    response = HindsightWSGIMiddleware(app)({"REQUEST_METHOD": "GET"}, lambda *a: None)
    iterator = iter(response)
    assert next(iterator) == b"0"
    assert produced == [0]
    response.close()  # type: ignore[attr-defined]


def test_threads_never_mix_records(out: ListHandler) -> None:
    def app(environ: Any, start_response: Any) -> Any:
        marker = environ["PATH_INFO"].strip("/")
        for i in range(20):
            log.debug("%s step %d", marker, i)
        start_response("500 Internal Server Error", [])
        return [b""]

    mw = HindsightWSGIMiddleware(app)
    barrier = threading.Barrier(24)

    def worker(n: int) -> None:
        barrier.wait()
        call_wsgi(mw, f"/t{n}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    blocks: dict[str, list[str]] = {}
    for record in out.records:
        if record.name == "app":
            blocks.setdefault(record.request_id, []).append(record.getMessage())  # type: ignore[attr-defined]
    assert len(blocks) == 24
    for lines in blocks.values():
        marker = lines[0].split()[0]
        assert lines == [f"{marker} step {i}" for i in range(20)]


def test_incoming_request_id_is_echoed(out: ListHandler) -> None:
    result = call_wsgi(
        HindsightWSGIMiddleware(body_app(Body())), headers=[("X-Request-ID", "req-42")]
    )
    assert result["headers"]["X-Request-ID"] == "req-42"


@pytest.mark.parametrize(
    "incoming", [None, "req-42", "not a valid id\n"], ids=["none", "valid", "invalid"]
)
def test_the_app_sees_the_request_id_it_is_answered_with(
    out: ListHandler, incoming: str | None
) -> None:
    seen: list[str | None] = []

    def app(environ: Any, start_response: Any) -> Any:
        seen.append(environ.get("HTTP_X_REQUEST_ID"))
        start_response("200 OK", [])
        return [b"ok"]

    headers = [] if incoming is None else [("X-Request-ID", incoming)]
    result = call_wsgi(HindsightWSGIMiddleware(app), headers=headers)
    assert seen == [result["headers"]["X-Request-ID"]]
    if incoming == "req-42":
        assert seen == ["req-42"]


def test_an_id_the_app_answers_with_becomes_the_requests(out: ListHandler) -> None:
    def app(environ: Any, start_response: Any) -> Any:
        log.debug("before the answer")
        start_response("500 Internal Server Error", [("x-request-id", "app-7")])
        log.debug("after the answer")
        return [b"failed"]

    result = call_wsgi(HindsightWSGIMiddleware(app, slow_ms=None))
    assert result["headers"] == {"x-request-id": "app-7"}  # not a second header
    assert "request_id=app-7" in out.messages()[0]
    assert [r.request_id for r in out.records[1:]] == ["app-7", "app-7"]  # type: ignore[attr-defined]


@pytest.mark.parametrize("where", ["call", "body", "close"])
def test_the_servers_line_about_an_exception_names_the_request(
    out: ListHandler, where: str
) -> None:
    """A WSGI server logs an exception the app raised once the middleware is done with
    it (gunicorn: ``log.exception("Error handling request ...")``): that line carries
    the request's id."""

    class Failing:
        def __iter__(self) -> Iterator[bytes]:
            if where == "body":
                raise RuntimeError("mid-stream")
            yield b"x"

        def close(self) -> None:
            if where == "close":
                raise RuntimeError("in close")

    def app(environ: Any, start_response: Any) -> Any:
        if where == "call":
            raise RuntimeError("in the call")
        start_response("200 OK", [])
        return Failing()

    try:
        result = call_wsgi(
            HindsightWSGIMiddleware(app, slow_ms=None), headers=[("X-Request-ID", "r-1")]
        )
        raised = result["exception"]
    except RuntimeError as exc:  # close() raising escapes call_wsgi
        raised = exc
    assert isinstance(raised, RuntimeError)
    logging.getLogger("gunicorn.error").error("Error handling request /", exc_info=raised)
    line = out.records[-1]
    assert line.name == "gunicorn.error"
    assert line.request_id == "r-1"  # type: ignore[attr-defined]
    assert "request_id=r-1" in out.messages()[0]


@pytest.mark.parametrize("path", ["/caf\xc3\xa9"])
def test_wsgi_path_is_decoded_for_the_summary(out: ListHandler, path: str) -> None:
    call_wsgi(HindsightWSGIMiddleware(body_app(Body(), "500 Oops")), path)
    assert "GET /café -> 500" in out.messages()[0]


def test_response_never_closed_gives_its_memory_back() -> None:
    import gc

    mw = HindsightWSGIMiddleware(body_app(Body(chunks=2)))
    response = mw({"REQUEST_METHOD": "GET", "PATH_INFO": "/"}, lambda *a: None)
    list(response)
    assert mw.hindsight.budget.used > 0
    del response
    gc.collect()
    assert mw.hindsight.budget.used == 0


# The app and its iterable run in the server's own context, as without hindsight: a
# contextvar the app sets lives where it would live bare, and hindsight's request state
# is current only during the app call and each next() and close() of the response.

APP_VAR: contextvars.ContextVar[str | None] = contextvars.ContextVar("app_var", default=None)
CHUNK_VAR: contextvars.ContextVar[str | None] = contextvars.ContextVar("chunk_var", default=None)
SERVER_VAR: contextvars.ContextVar[str | None] = contextvars.ContextVar("server", default=None)


def in_fresh_context(scenario: Callable[[], T]) -> T:
    """Run `scenario` in a copy of the test's context: what it sets stays there."""
    return contextvars.copy_context().run(scenario)


def no_start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
    return lambda data: None


class ContextBody:
    """A streamed body that sets a contextvar across next() calls and resets, in close(),
    the one the app call set."""

    def __init__(self, token: contextvars.Token[str | None]) -> None:
        self.token = token

    def __iter__(self) -> Iterator[bytes]:
        chunk_token = CHUNK_VAR.set("streaming")
        yield b"a"
        yield b"b"
        CHUNK_VAR.reset(chunk_token)

    def close(self) -> None:
        APP_VAR.reset(self.token)


def context_app(environ: Any, start_response: Any) -> Any:
    token = APP_VAR.set(environ["PATH_INFO"])
    start_response("200 OK", [])
    return ContextBody(token)


def observe_contextvars(app: Any) -> list[tuple[str | None, str | None, bool]]:
    """What a server sees of the app's contextvars and of hindsight's state between calls."""

    def scenario() -> list[tuple[str | None, str | None, bool]]:
        seen = []

        def snapshot() -> None:
            seen.append((APP_VAR.get(), CHUNK_VAR.get(), current() is None))

        response = app({"REQUEST_METHOD": "GET", "PATH_INFO": "/ctx"}, no_start_response)
        snapshot()
        iterator = iter(response)
        for _ in range(2):
            next(iterator)
            snapshot()
        with pytest.raises(StopIteration):
            next(iterator)
        snapshot()
        response.close()
        snapshot()
        return seen

    return in_fresh_context(scenario)


def test_contextvars_of_the_app_and_its_body_live_in_the_servers_context() -> None:
    bare = observe_contextvars(context_app)
    assert bare == [
        ("/ctx", None, True),  # after the app call
        ("/ctx", "streaming", True),  # between next() calls
        ("/ctx", "streaming", True),
        ("/ctx", None, True),  # the body reset its variable
        (None, None, True),  # close() reset the app's
    ]
    assert observe_contextvars(HindsightWSGIMiddleware(context_app)) == bare


def test_contextvar_set_by_a_flask_view_is_seen_after_the_call_as_without_hindsight() -> None:
    def observe(wrap: bool) -> tuple[str | None, bool]:
        app = Flask(__name__)

        @app.get("/tenant")
        def tenant() -> str:
            APP_VAR.set("acme")  # request state kept in a contextvar, never reset
            return "ok"

        if wrap:
            app.wsgi_app = HindsightWSGIMiddleware(app.wsgi_app)  # type: ignore[method-assign]

        def scenario() -> tuple[str | None, bool]:
            app.test_client().get("/tenant").close()
            return APP_VAR.get(), current() is None

        return in_fresh_context(scenario)

    assert observe(wrap=False) == ("acme", True)
    assert observe(wrap=True) == observe(wrap=False)


def flask_streaming_app(view: str) -> Flask:
    app = Flask(__name__)

    def generate() -> Iterator[str]:
        log.debug("streaming %s", flask.request.path)
        yield "streamed"

    if view == "sync":

        @app.get("/stream")
        def stream() -> flask.Response:
            return flask.Response(flask.stream_with_context(generate()))

    else:

        @app.get("/stream")
        async def stream() -> flask.Response:
            return flask.Response(flask.stream_with_context(generate()))

    return app


@pytest.mark.parametrize("view", ["sync", "async"])
def test_flask_client_keeps_a_streamed_request_context_and_pops_it_cleanly(
    out: ListHandler, view: str
) -> None:
    if view == "async":
        pytest.importorskip("asgiref", reason="Flask's async views need 'flask[async]'")
    app = flask_streaming_app(view)
    # slow_ms=0: every request is released, so its records show with their request id.
    app.wsgi_app = HindsightWSGIMiddleware(app.wsgi_app, slow_ms=0)  # type: ignore[method-assign]

    def scenario() -> str:
        with app.test_client() as client:
            with client.get("/stream") as response:
                assert response.get_data() == b"streamed"
            assert flask.request.path == "/stream"  # the context the client keeps
        assert not flask.has_request_context()  # and pops
        assert current() is None
        return response.headers["X-Request-ID"]

    rid = in_fresh_context(scenario)
    flush_all()
    streamed = [r for r in out.records if r.name == "app"]
    assert [r.getMessage() for r in streamed] == ["streaming /stream"]
    assert streamed[0].request_id == rid  # type: ignore[attr-defined]


def test_interleaved_responses_run_in_the_servers_context_with_their_own_request_id(
    out: ListHandler,
) -> None:
    def app(environ: Any, start_response: Any) -> Any:
        start_response("500 Internal Server Error", [])
        path = environ["PATH_INFO"]

        def body() -> Iterator[bytes]:
            for i in range(2):
                log.debug("%s chunk %d for %s", path, i, SERVER_VAR.get())
                yield b"x"

        return body()

    mw = HindsightWSGIMiddleware(app)

    def serve() -> dict[str, str]:
        """One thread serving two responses a chunk at a time, as an event-driven server
        does, naming in its own contextvar the connection it is serving."""
        ids, responses, iterators = {}, {}, {}
        for name in ("a", "b"):
            SERVER_VAR.set(f"{name} called")

            def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
                ids[name] = dict(headers)["X-Request-ID"]  # noqa: B023 (called at once)

            responses[name] = mw({"REQUEST_METHOD": "GET", "PATH_INFO": f"/{name}"}, start_response)
            iterators[name] = iter(responses[name])
        for step in range(2):
            for name in ("a", "b"):
                SERVER_VAR.set(f"{name} step {step}")
                next(iterators[name])
                assert current() is None
        for name in ("b", "a"):
            responses[name].close()
            assert current() is None
        return ids

    ids = in_fresh_context(serve)
    flush_all()
    by_request: dict[str, list[str]] = {}
    for record in out.records:
        if record.name == "app":
            by_request.setdefault(record.request_id, []).append(record.getMessage())  # type: ignore[attr-defined]
    assert by_request == {
        ids["a"]: ["/a chunk 0 for a step 0", "/a chunk 1 for a step 1"],
        ids["b"]: ["/b chunk 0 for b step 0", "/b chunk 1 for b step 1"],
    }


def test_close_from_another_thread_runs_in_that_threads_context(out: ListHandler) -> None:
    class Body:
        def __init__(self) -> None:
            self.seen_on_close: list[str | None] = []

        def __iter__(self) -> Iterator[bytes]:
            yield b"x"

        def close(self) -> None:
            log.debug("closing")
            self.seen_on_close.append(APP_VAR.get())

    def observe(wrap: bool) -> tuple[list[str | None], list[bool], str | None]:
        body = Body()
        headers: dict[str, str] = {}

        def app(environ: Any, start_response: Any) -> Any:
            APP_VAR.set("request")
            start_response("503 Service Unavailable", [])
            return body

        def start_response(status: str, response_headers: Any, exc_info: Any = None) -> Any:
            headers.update(response_headers)

        wsgi_app = HindsightWSGIMiddleware(app) if wrap else app
        response = in_fresh_context(lambda: wsgi_app({"REQUEST_METHOD": "GET"}, start_response))
        list(response)
        current_after: list[bool] = []

        def close() -> None:
            response.close()
            current_after.append(current() is None)

        thread = threading.Thread(target=close)
        thread.start()
        thread.join()
        return body.seen_on_close, current_after, headers.get("X-Request-ID")

    seen_bare, current_bare, _ = observe(wrap=False)
    assert (seen_bare, current_bare) == ([None], [True])  # a thread starts with an empty context
    seen, current_after, rid = observe(wrap=True)
    assert (seen, current_after) == (seen_bare, current_bare)
    flush_all()
    closing = [r for r in out.records if r.getMessage() == "closing"]
    assert [r.request_id for r in closing] == [rid]  # type: ignore[attr-defined]


def test_exceptions_leave_the_apps_contextvars_as_without_hindsight(out: ListHandler) -> None:
    def raising_app(environ: Any, start_response: Any) -> Any:
        APP_VAR.set("before the failure")
        raise KeyError("app call")

    def raising_body_app(environ: Any, start_response: Any) -> Any:
        start_response("200 OK", [])

        def body() -> Iterator[bytes]:
            CHUNK_VAR.set("before the failure")
            yield b"x"
            raise RuntimeError("mid-stream")

        return body()

    def observe(app: Any) -> list[tuple[str | None, str | None, bool]]:
        def scenario() -> list[tuple[str | None, str | None, bool]]:
            result = call_wsgi(app)
            assert result["exception"] is not None
            return [(APP_VAR.get(), CHUNK_VAR.get(), current() is None)]

        return in_fresh_context(scenario)

    for app in (raising_app, raising_body_app):
        assert observe(HindsightWSGIMiddleware(app)) == observe(app)
    assert observe(raising_app) == [("before the failure", None, True)]
    assert observe(raising_body_app) == [(None, "before the failure", True)]


def test_close_from_another_thread_while_next_runs_stops_the_body_and_ends_the_request(
    out: ListHandler,
) -> None:
    class Stream:
        """A body that waits for data until close() tells it to stop, as a server that
        drops a slow client's stream from another thread would."""

        def __init__(self) -> None:
            self.waiting = threading.Event()
            self.stopped = threading.Event()

        def __iter__(self) -> Stream:
            return self

        def __next__(self) -> bytes:
            self.waiting.set()
            if not self.stopped.wait(10):
                raise TimeoutError("never told to stop")
            raise StopIteration

        def close(self) -> None:
            log.debug("closing the stream")
            self.stopped.set()

    stream = Stream()

    def app(environ: Any, start_response: Any) -> Any:
        start_response("503 Service Unavailable", [])
        return stream

    response = HindsightWSGIMiddleware(app)({"REQUEST_METHOD": "GET"}, no_start_response)
    read: list[bytes] = []
    reader = threading.Thread(target=lambda: read.extend(response))
    reader.start()
    assert stream.waiting.wait(10)
    try:
        response.close()  # type: ignore[attr-defined]
    finally:
        stream.stopped.set()
        reader.join()
    assert read == []
    assert current() is None
    flush_all()
    assert "-> 503" in out.messages()[0]
    assert out.messages()[1:] == ["closing the stream"]  # then the request had ended
