"""The logging seam: what is written at once, what is kept, what a release writes."""

from __future__ import annotations

import asyncio
import copy
import logging
import logging.config
import logging.handlers
import queue
import time
from typing import Any

import pytest

import hindsight_web
from hindsight_web import Hindsight, HindsightMiddleware, errors
from hindsight_web.buffer import entry_size
from hindsight_web.context import _current

from .apps import call_asgi, log, run_asgi
from .conftest import ListHandler


def make_app(status: int = 200, lines: int = 3, marker: str = "line", **options: Any) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        for i in range(lines):
            log.debug("%s %d", marker, i)
        log.info("handled %s", scope["path"])
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return HindsightMiddleware(app, **options)


def test_fast_request_writes_exactly_what_it_wrote_before(out: ListHandler) -> None:
    async def bare(scope: Any, receive: Any, send: Any) -> None:
        log.debug("hidden")
        log.info("shown %s", 1)
        log.warning("warned")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    wrapped = HindsightMiddleware(bare)
    run_asgi(bare)
    before = [(r.levelname, r.name, r.getMessage(), r.funcName) for r in out.records]
    out.records.clear()
    run_asgi(wrapped)
    after = [(r.levelname, r.name, r.getMessage(), r.funcName) for r in out.records]
    assert (
        before
        == after
        == [("INFO", "app", "shown 1", "bare"), ("WARNING", "app", "warned", "bare")]
    )


def test_500_releases_summary_then_own_records_in_order(out: ListHandler) -> None:
    result = run_asgi(make_app(status=500))
    rid = result["headers"]["x-request-id"]
    assert out.messages()[0] == "handled /"
    summary = out.records[1]
    assert summary.name == "hindsight_web"
    assert "GET / -> 500" in summary.getMessage()
    assert "(reason: status)" in summary.getMessage()
    assert f"request_id={rid}" in summary.getMessage()
    assert "records=3 dropped=0" in summary.getMessage()
    assert out.messages()[2:] == ["line 0", "line 1", "line 2"]
    assert [r.levelname for r in out.records[2:]] == ["DEBUG"] * 3
    assert {r.request_id for r in out.records} == {rid}  # type: ignore[attr-defined]


def test_exception_is_released_and_reraised_untouched(out: ListHandler) -> None:
    boom = ValueError("boom")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        log.debug("before the failure")
        raise boom

    result = run_asgi(HindsightMiddleware(app))
    assert result["exception"] is boom
    assert "-> no response, raised ValueError" in out.messages()[0]
    assert "(reason: exception)" in out.messages()[0]
    assert out.messages()[1:] == ["before the failure"]


def test_cancelled_error_is_reraised_and_request_finished_once(out: ListHandler) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        log.debug("started")
        await asyncio.sleep(10)

    async def main() -> Any:
        task = asyncio.ensure_future(call_asgi(HindsightMiddleware(app)))
        await asyncio.sleep(0.05)
        task.cancel()
        return await task

    result = asyncio.run(main())
    assert isinstance(result["exception"], asyncio.CancelledError)
    summaries = [m for m in out.messages() if m.startswith("hindsight release")]
    assert len(summaries) == 1
    assert "raised CancelledError" in summaries[0]
    assert out.messages()[-1] == "started"


def test_slow_request_is_released(out: ListHandler) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        log.debug("slow work")
        await asyncio.sleep(0.06)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    run_asgi(HindsightMiddleware(app, slow_ms=50))
    assert "(reason: slow)" in out.messages()[0]
    assert out.messages()[1:] == ["slow work"]


def test_slow_streaming_body_counts_until_the_last_byte(out: ListHandler) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for i in range(3):
            log.debug("chunk %d", i)
            await asyncio.sleep(0.03)
            await send({"type": "http.response.body", "body": b"x", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    run_asgi(HindsightMiddleware(app, slow_ms=60))
    assert "(reason: slow)" in out.messages()[0]
    assert out.messages()[1:] == ["chunk 0", "chunk 1", "chunk 2"]


def test_time_after_the_last_byte_is_not_latency(out: ListHandler) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})
        log.debug("background work after the response")
        await asyncio.sleep(0.08)

    run_asgi(HindsightMiddleware(app, slow_ms=50))
    assert out.messages() == []


def test_concurrent_requests_never_mix_records(out: ListHandler) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        marker = scope["path"].strip("/")
        for i in range(5):
            log.debug("%s step %d", marker, i)
            await asyncio.sleep(0)
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    mw = HindsightMiddleware(app, max_releases_per_s=1000)  # 100 at once: not a storm here

    async def main() -> None:
        await asyncio.gather(*(call_asgi(mw, f"/r{n}") for n in range(100)))

    asyncio.run(main())
    blocks: dict[str, list[str]] = {}
    for record in out.records:
        if record.name == "app":
            blocks.setdefault(record.request_id, []).append(record.getMessage())  # type: ignore[attr-defined]
    assert len(blocks) == 100
    for lines in blocks.values():
        marker = lines[0].split()[0]
        assert lines == [f"{marker} step {i}" for i in range(5)]
    assert sum(m.startswith("hindsight release") for m in out.messages()) == 100


def test_mutated_argument_does_not_change_the_released_message(out: ListHandler) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        cart = ["apple"]
        log.debug("cart is %s", cart)
        cart.append("pear")
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    run_asgi(HindsightMiddleware(app))
    assert out.messages()[1] == "cart is ['apple']"
    assert out.records[1].args == (["apple"],)  # as it was at log time, for formatters


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("c-9", 3), "card c-9 declined after 3 tries"),  # kept as given
        ((["c-9"], 3), "card ['c-9'] declined after 3 tries"),  # frozen at log time
        (({"card": "c-9"}, 3), "card {'card': 'c-9'} declined after 3 tries"),
    ],
)
def test_message_rules_read_the_kept_records_formatted_as_at_log_time(
    out: ListHandler, args: tuple[Any, ...], needle: str
) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        given = copy.deepcopy(args)
        log.debug("card %s declined after %d tries", *given)
        if isinstance(given[0], list):
            given[0].append("changed")
        elif isinstance(given[0], dict):
            given[0]["card"] = "changed"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    for text in (needle, "changed"):
        rules = [{"action": "release", "match": {"message": text}}]
        run_asgi(HindsightMiddleware(app, hindsight=Hindsight(slow_ms=None, rules=rules)))
    written = [m for m in out.messages() if not m.startswith("hindsight rule added")]
    assert len(written) == 2  # the first request only
    assert "reason: rule:" in written[0]
    assert written[1] == needle


def test_released_record_keeps_time_caller_and_traceback(out: ListHandler) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        try:
            _ = 1 / 0
        except ZeroDivisionError:
            log.debug("division failed", exc_info=True)
        await asyncio.sleep(0.05)
        await send({"type": "http.response.start", "status": 503, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    before = time.time()
    run_asgi(HindsightMiddleware(app))
    summary, record = out.records
    assert before <= record.created < summary.created - 0.04
    assert record.funcName == "app"
    assert record.filename == "test_capture.py"
    assert record.exc_info is not None  # for tools that read it, while the request is in memory
    assert record.exc_info[0] is ZeroDivisionError
    assert "ZeroDivisionError: division by zero" in out.lines[1]
    assert record.levelno == logging.DEBUG
    assert record.name == "app"


def test_records_carry_request_attributes_inside_and_none_outside(out: ListHandler) -> None:
    result = run_asgi(make_app(status=200), headers=[("X-Request-ID", "abc-123")])
    assert result["headers"]["x-request-id"] == "abc-123"
    assert out.records[0].request_id == "abc-123"  # type: ignore[attr-defined]
    log.info("outside")
    assert out.lines[-1] == "INFO app rid=None uid=None outside"


def test_invalid_incoming_request_id_is_replaced(out: ListHandler) -> None:
    result = run_asgi(make_app(), headers=[("X-Request-ID", "bad id\nwith newline")])
    rid = result["headers"]["x-request-id"]
    assert rid != "bad id\nwith newline"
    assert len(rid) == 32


def test_summary_escapes_control_characters_in_the_path(out: ListHandler) -> None:
    run_asgi(make_app(status=500), path="/a\nINFO forged line")
    summary = out.messages()[1]
    assert "\n" not in summary
    assert "/a\\x0aINFO forged line" in summary


def test_summary_never_contains_authorization_or_cookie(out: ListHandler) -> None:
    run_asgi(
        make_app(status=500),
        headers=[("Authorization", "Bearer topsecret"), ("Cookie", "session=hush")],
    )
    text = "\n".join(out.lines)
    assert "topsecret" not in text
    assert "hush" not in text


def test_huge_request_stays_within_the_cap_and_reports_the_drop(out: ListHandler) -> None:
    mw = make_app(status=500, lines=200_000, max_records=1000)
    run_asgi(mw)
    summary = out.messages()[1]
    assert "records=1000 dropped=199000" in summary
    released = out.messages()[2:]
    assert released[0] == "line 199000"
    assert released[-1] == "line 199999"
    counts = mw.hindsight.counters()
    assert counts["records_dropped"] == 199000
    assert counts["buffer_bytes"] == 0


def test_per_request_byte_cap(out: ListHandler) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        for i in range(100):
            log.debug("%d %s", i, "x" * 1000)
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    run_asgi(HindsightMiddleware(app, max_bytes=12_000))
    released = out.messages()[1:]
    assert 5 <= len(released) <= 10
    assert released[-1].startswith("99 ")
    assert f"dropped={100 - len(released)}" in out.messages()[0]


@pytest.mark.parametrize(
    ("limits", "kept_at_most"),
    [({"max_records": 50}, 50), ({"max_bytes": 30_000}, 60)],
    ids=["records", "bytes"],
)
def test_buffer_bytes_are_the_sum_of_its_entries_sizes_through_drops(
    limits: dict[str, int], kept_at_most: int
) -> None:
    """Every kind of call adds to the request's bytes what dropping it takes away."""
    seen: list[tuple[int, int, int]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        state = _current.get()
        assert state is not None
        for i in range(60):
            log.debug("plain %d", i)
            log.debug("text %s %s %r", "x" * i, i, 1.5)
            log.debug("mutable %s", ["a"] * i)
            log.debug("%(k)s mapping", {"k": i})
            log.debug("enum %s and bytes %r", logging.INFO, b"b" * i)
            log.debug({"event": "not a str", "i": i})
            log.debug("extra %d", i, extra={"order": i})
            try:
                raise ValueError(i)
            except ValueError:
                log.debug("failed %d", i, exc_info=True, stack_info=i % 2 == 0)
            seen.append((state.nbytes, sum(map(entry_size, state.records)), len(state.records)))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    run_asgi(HindsightMiddleware(app, slow_ms=None, **limits))
    assert all(nbytes == total for nbytes, total, _ in seen)
    assert 10 < seen[-1][2] <= kept_at_most  # the limit dropped the oldest


def test_process_budget_is_shared_by_live_requests(out: ListHandler) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        for i in range(200):
            log.debug("%d %s", i, "y" * 1000)
        await asyncio.sleep(0.02)
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    mw = HindsightMiddleware(app, max_total_bytes=300_000)

    async def main() -> None:
        await asyncio.gather(*(call_asgi(mw, f"/{n}") for n in range(10)))

    asyncio.run(main())
    counts = mw.hindsight.counters()
    assert counts["records_released"] * 1200 <= 300_000
    assert counts["records_dropped"] == 2000 - counts["records_released"]
    assert counts["buffer_bytes"] == 0


def test_capture_level_bounds_what_is_kept(out: ListHandler) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        log.debug("too low")
        log.log(15, "kept")
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    run_asgi(HindsightMiddleware(app, capture_level=15))
    assert out.messages()[1:] == ["kept"]


def test_basic_config_after_the_middleware_is_not_a_noop(
    capsys: pytest.CaptureFixture[str],
) -> None:
    mw = make_app(status=500)
    logging.getLogger().handlers.clear()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    assert logging.getLogger().handlers
    run_asgi(mw)
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "INFO handled /"
    assert err[1].startswith("INFO hindsight release: GET / -> 500")
    assert err[2:] == ["DEBUG line 0", "DEBUG line 1", "DEBUG line 2"]


def test_dict_config_that_replaces_handlers_is_followed(out: ListHandler) -> None:
    mw = make_app(status=500, release_handler_level="WARNING")
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "handlers": {"mine": {"class": "tests.conftest.ListHandler", "level": "WARNING"}},
            "root": {"level": "INFO", "handlers": ["mine"]},
        }
    )
    mine = logging.getLogger().handlers[0]
    assert isinstance(mine, ListHandler)
    run_asgi(mw)
    assert out.records == []
    # The handler's own level (WARNING) keeps the INFO line from being written, so a copy
    # is kept too; the release reaches the handler, whose level is within
    # release_handler_level, whatever the records' levels.
    assert mine.messages()[0].startswith("hindsight release")
    assert mine.messages()[1:] == ["line 0", "line 1", "line 2", "handled /"]


def test_a_release_reaches_a_handler_above_release_handler_level_only_at_its_level(
    out: ListHandler,
) -> None:
    pager = ListHandler(level=logging.ERROR)  # mail, Sentry events, pagers
    logging.getLogger().addHandler(pager)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        log.debug("detail")
        log.error("failed")  # written at once, as without hindsight
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    run_asgi(HindsightMiddleware(app))
    assert pager.messages() == ["failed"]
    assert out.messages()[0] == "failed"
    assert out.messages()[1].startswith("hindsight release")
    assert out.messages()[2:] == ["detail"]


def test_logger_enabled_but_handler_level_too_high_is_captured(out: ListHandler) -> None:
    out.setLevel(logging.INFO)
    logging.getLogger().setLevel(logging.DEBUG)
    run_asgi(make_app(status=200))
    assert out.messages() == ["handled /"]
    out.records.clear()
    run_asgi(make_app(status=500))
    assert out.messages()[2:] == ["line 0", "line 1", "line 2"]


def test_logger_written_directly_is_not_duplicated(out: ListHandler) -> None:
    logging.getLogger().setLevel(logging.DEBUG)
    run_asgi(make_app(status=500))
    app_lines = [r.getMessage() for r in out.records if r.name == "app"]
    assert app_lines == ["line 0", "line 1", "line 2", "handled /"]
    assert sum(m.startswith("hindsight release") for m in out.messages()) == 1


def test_non_propagating_logger_releases_to_its_own_handler(out: ListHandler) -> None:
    own = ListHandler()
    audit = logging.getLogger("app.audit")
    audit.propagate = False
    audit.addHandler(own)
    audit.setLevel(logging.WARNING)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        audit.info("audit detail")
        audit.warning("audit warning")
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    run_asgi(HindsightMiddleware(app))
    assert own.messages() == ["audit warning", "audit detail"]
    assert not any(m == "audit detail" for m in out.messages())


def test_queue_handler_gets_released_records(out: ListHandler) -> None:
    q: queue.Queue[logging.LogRecord] = queue.Queue()
    sink = ListHandler()
    listener = logging.handlers.QueueListener(q, sink)
    logging.getLogger().handlers[:] = [logging.handlers.QueueHandler(q)]
    listener.start()
    try:
        run_asgi(make_app(status=500))
    finally:
        listener.stop()
    assert sink.messages()[0] == "handled /"
    assert sink.messages()[2:] == ["line 0", "line 1", "line 2"]
    assert len({r.request_id for r in sink.records}) == 1  # type: ignore[attr-defined]


def test_record_factory_and_logger_filters_apply_on_release(out: ListHandler) -> None:
    old = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = old(*args, **kwargs)
        record.service = "shop"  # type: ignore[attr-defined]
        return record

    logging.setLogRecordFactory(factory)
    log.addFilter(lambda record: "secret" not in record.getMessage())

    async def app(scope: Any, receive: Any, send: Any) -> None:
        log.debug("public")
        log.debug("secret stuff")
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    run_asgi(HindsightMiddleware(app))
    assert out.messages()[1:] == ["public"]
    assert out.records[1].service == "shop"  # type: ignore[attr-defined]


def test_bad_format_string_never_breaks_the_request(out: ListHandler) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        log.debug("%d items", "x")
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    seen: list[logging.LogRecord] = []
    raw = logging.Handler()
    raw.emit = seen.append  # type: ignore[method-assign]
    logging.getLogger().addHandler(raw)
    result = run_asgi(HindsightMiddleware(app))
    assert result["exception"] is None
    assert result["status"] == 500
    # Released as made at log time: the handler meets the format error then, as it
    # would have met it at log time (its own handleError), and the request went on.
    assert [(r.msg, r.args) for r in seen if r.name == "app"] == [("%d items", ("x",))]
    assert "records=1" in seen[0].getMessage()


def test_argument_whose_str_logs_again_does_not_recurse(out: ListHandler) -> None:
    class Noisy:
        def __str__(self) -> str:
            log.debug("inner")
            return "noisy"

    async def app(scope: Any, receive: Any, send: Any) -> None:
        log.debug("outer %s", Noisy())
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    run_asgi(HindsightMiddleware(app))
    assert out.messages()[1:] == ["inner", "outer noisy"]


def test_raising_handler_is_counted_and_reported_once(out: ListHandler) -> None:
    class Broken(logging.Handler):
        # Raises for DEBUG records, which only a release hands to it.
        def handle(self, record: logging.LogRecord) -> bool:
            if record.levelno == logging.DEBUG:
                raise RuntimeError("disk full")
            return True

    logging.getLogger("app").addHandler(Broken())
    mw = make_app(status=500, lines=2)
    for _ in range(3):
        assert run_asgi(mw)["status"] == 500
    reports = [r for r in out.records if r.name == "hindsight_web" and r.levelno == logging.ERROR]
    assert len(reports) == 1
    assert "internal error in handler" in reports[0].getMessage()
    assert errors.count() == 6
    assert out.messages().count("line 0") == 3


def test_lifespan_and_websocket_pass_through() -> None:
    seen: list[tuple[Any, Any, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope, receive, send))

    async def receive() -> Any:
        return {}

    async def send(message: Any) -> None:
        return None

    mw = HindsightMiddleware(app)
    for kind in ("lifespan", "websocket"):
        scope = {"type": kind}
        asyncio.run(mw(scope, receive, send))
        assert seen[-1] == (scope, receive, send)


def test_options_and_hindsight_together_are_refused() -> None:
    from hindsight_web import Hindsight

    with pytest.raises(TypeError, match="either 'hindsight' or options"):
        HindsightMiddleware(lambda *a: None, hindsight=Hindsight(), slow_ms=5)  # type: ignore[arg-type,return-value]


def test_app_given_as_a_keyword_is_wrapped(out: ListHandler) -> None:
    # Starlette before 0.41.3 builds its middleware stack as cls(app=app, **options).
    async def app(scope: Any, receive: Any, send: Any) -> None:
        log.debug("kept")
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b"no"})

    result = run_asgi(HindsightMiddleware(app=app, slow_ms=None))
    assert result["status"] == 500
    assert len(result["headers"]["x-request-id"]) == 32
    assert "(reason: status)" in out.messages()[0]
    assert out.messages()[1:] == ["kept"]


def test_missing_or_doubled_app_is_refused() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        pass

    with pytest.raises(TypeError, match=r"HindsightMiddleware needs the app to wrap"):
        HindsightMiddleware(slow_ms=5)
    with pytest.raises(TypeError, match="got the app twice"):
        HindsightMiddleware(app, app=app)


def test_stacklevel_names_the_same_caller_written_or_released(out: ListHandler) -> None:
    def helper(level: int) -> None:
        log.log(level, "from helper", stacklevel=2)

    def helper_method(level: int) -> None:
        method = log.debug if level == logging.DEBUG else log.info
        method("from helper method", stacklevel=2)

    async def endpoint(scope: Any, receive: Any, send: Any) -> None:
        helper(logging.DEBUG)
        helper(logging.INFO)
        helper_method(logging.DEBUG)
        helper_method(logging.INFO)
        log.info("direct")
        log.debug("direct")
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    run_asgi(HindsightMiddleware(endpoint))
    by_level = {(r.levelname, r.getMessage()): r.funcName for r in out.records if r.name == "app"}
    assert by_level == {
        ("INFO", "from helper"): "endpoint",
        ("INFO", "from helper method"): "endpoint",
        ("INFO", "direct"): "endpoint",
        ("DEBUG", "from helper"): "endpoint",
        ("DEBUG", "from helper method"): "endpoint",
        ("DEBUG", "direct"): "endpoint",
    }
    outside = ListHandler()
    log.addHandler(outside)
    helper_method(logging.INFO)
    assert (
        outside.records[0].funcName == "test_stacklevel_names_the_same_caller_written_or_released"
    )


def test_logger_adapter_records_are_captured_with_their_caller(out: ListHandler) -> None:
    adapter = logging.LoggerAdapter(log, {"component": "cart"})

    async def endpoint(scope: Any, receive: Any, send: Any) -> None:
        adapter.debug("through an adapter")
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    run_asgi(HindsightMiddleware(endpoint))
    record = out.records[1]
    assert record.getMessage() == "through an adapter"
    assert record.funcName == "endpoint"
    assert record.component == "cart"  # type: ignore[attr-defined]


class _Shown:
    def __str__(self) -> str:
        return "shown object"


MESSAGE_FORMS: list[tuple[Any, tuple[Any, ...]]] = [
    ("plain", ()),
    ("100% sure", ()),
    ("%s and %r", ("text", "text")),
    ("%(a)s and %(b)d", ({"a": "x", "b": 2},)),
    ("%s", ({"a": 1},)),
    ("no specifier", ({"a": 1},)),
    ("%s", ((1, 2),)),
    (_Shown(), ()),
    (42, ()),
]


def test_released_messages_read_as_the_stdlib_formats_them(out: ListHandler) -> None:
    def log_all() -> None:
        for msg, args in MESSAGE_FORMS:
            log.debug(msg, *args)
            log.log(logging.DEBUG, msg, *args)
            logging.debug(msg, *args)

    log_all()
    assert out.records == []
    logging.getLogger().setLevel(logging.DEBUG)
    log_all()
    expected = [(r.getMessage(), r.funcName, r.lineno) for r in out.records]
    assert len(expected) == 3 * len(MESSAGE_FORMS)
    logging.getLogger().setLevel(logging.INFO)
    out.records.clear()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        log_all()
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    run_asgi(HindsightMiddleware(app))
    released = [(r.getMessage(), r.funcName, r.lineno) for r in out.records[1:]]
    assert released == expected


def test_level_changes_between_requests_are_followed_at_once(out: ListHandler) -> None:
    app = make_app(status=200, lines=1)
    run_asgi(app)
    assert out.messages() == ["handled /"]
    log.setLevel(logging.DEBUG)
    run_asgi(app)
    assert out.messages() == ["handled /", "line 0", "handled /"]
    out.records.clear()
    logging.disable(logging.INFO)
    run_asgi(make_app(status=500, lines=1))
    assert out.records == []  # nothing kept, nothing written, not even the summary
    logging.disable(logging.NOTSET)
    log.setLevel(logging.NOTSET)
    out.records.clear()
    run_asgi(make_app(status=500, lines=1))
    assert out.messages()[2:] == ["line 0"]


def test_detail_mode_writes_records_with_their_own_args(out: ListHandler) -> None:
    # A formatter that reads record.args (uvicorn's access log does) must work on them.
    seen: list[tuple[object, object]] = []

    class ArgsHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append((record.msg, record.args))

    logging.getLogger().addHandler(ArgsHandler())
    hs = Hindsight()
    hs.add_rule({"action": "detail", "match": {"user_id": "u1"}})

    async def app(scope: Any, receive: Any, send: Any) -> None:
        hindsight_web.set_user("u1")
        log.debug("%s-%d", "a", 1)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    run_asgi(HindsightMiddleware(app, hindsight=hs))
    assert ("%s-%d", ("a", 1)) in seen
    assert "a-1" in out.messages()


def test_response_headers_given_as_an_iterator_are_all_sent(out: ListHandler) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        headers = iter([(b"content-type", b"text/plain"), (b"set-cookie", b"a=1")])
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})

    result = run_asgi(HindsightMiddleware(app))
    assert result["headers"]["content-type"] == "text/plain"
    assert result["headers"]["set-cookie"] == "a=1"
    assert "x-request-id" in result["headers"]


def test_threads_sharing_a_request_give_back_every_reserved_byte(out: ListHandler) -> None:
    import contextvars
    import threading

    hs = Hindsight(max_bytes=10_000_000)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        def work() -> None:
            for i in range(2000):
                log.debug("line %d %s", i, "x" * 100)

        threads = [
            threading.Thread(target=contextvars.copy_context().run, args=(work,)) for _ in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    for _ in range(8):
        run_asgi(HindsightMiddleware(app, hindsight=hs))
    assert hs.counters()["buffer_bytes"] == 0


def test_caller_is_right_when_the_logger_level_lets_the_record_through(
    out: ListHandler,
) -> None:
    # Root at DEBUG, its handler at INFO: DEBUG goes the generic way and is kept.
    out.setLevel(logging.INFO)
    logging.getLogger().setLevel(logging.DEBUG)

    def helper() -> None:
        log.debug("from helper", stacklevel=2)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        log.debug("direct")
        helper()
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    run_asgi(HindsightMiddleware(app))
    kept = {r.getMessage(): r.funcName for r in out.records if r.name == "app"}
    assert kept == {"direct": "app", "from helper": "app"}


def test_a_library_null_handler_does_not_stop_capture(out: ListHandler) -> None:
    out.setLevel(logging.INFO)
    logging.getLogger().setLevel(logging.DEBUG)
    lib = logging.getLogger("somelib.pool")
    lib.addHandler(logging.NullHandler())

    async def app(scope: Any, receive: Any, send: Any) -> None:
        lib.debug("connection reused")
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    run_asgi(HindsightMiddleware(app))
    assert "connection reused" in out.messages()


def test_a_logger_subclass_with_its_own_log_sees_the_calls_it_sees_without_hindsight(
    out: ListHandler,
) -> None:
    calls: list[object] = []

    class Prefixed(logging.Logger):
        def _log(self, level: int, msg: object, args: Any, *rest: Any, **kw: Any) -> None:
            calls.append(msg)
            super()._log(level, f"[billing] {msg}", args, *rest, **kw)

    billing = Prefixed("billing.sub")
    billing.parent = logging.getLogger()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        billing.info("invoice %d", 7)  # made by the logger: through its own _log
        billing.debug("charged %d", 3)  # below its level: kept, as the stdlib never made it
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    run_asgi(HindsightMiddleware(app))
    assert calls == ["invoice %d"]
    assert out.messages()[0] == "[billing] invoice 7"
    assert out.messages()[2:] == ["charged 3"]


def test_records_written_when_detail_turns_on_are_counted(out: ListHandler) -> None:
    hs = Hindsight()
    hs.add_rule({"action": "detail", "match": {"user_id": "u1"}})

    async def app(scope: Any, receive: Any, send: Any) -> None:
        log.debug("before 1")
        log.debug("before 2")
        hindsight_web.set_user("u1")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    run_asgi(HindsightMiddleware(app, hindsight=hs))
    assert [m for m in out.messages() if m.startswith("before")] == ["before 1", "before 2"]
    counts = hs.counters()
    assert (counts["records_captured"], counts["records_released"]) == (2, 2)


def test_released_record_keeps_its_args_for_formatters_that_read_them(
    out: ListHandler,
) -> None:
    # Like uvicorn's access formatter: it unpacks record.args.
    class ArgsFormatter(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            client, method, path = record.args  # type: ignore[misc]
            return f"{client} {method} {path}"

    access = logging.getLogger("app.access")
    handler = ListHandler(level=logging.INFO)
    handler.setFormatter(ArgsFormatter())
    access.addHandler(handler)
    access.propagate = False

    async def app(scope: Any, receive: Any, send: Any) -> None:
        access.debug("%s - %s %s", "127.0.0.1", "GET", "/x")  # kept: below INFO
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    run_asgi(HindsightMiddleware(app))
    assert handler.lines == ["127.0.0.1 GET /x"]
    assert handler.records[0].getMessage() == "127.0.0.1 - GET /x"
