"""HindsightWSGIMiddleware: PEP 3333 behaviour and release."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from hindsight_web import HindsightWSGIMiddleware
from hindsight_web.release import flush_all

from .apps import call_wsgi, log
from .conftest import ListHandler


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
