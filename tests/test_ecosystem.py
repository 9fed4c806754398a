"""Hindsight among the real logging ecosystem: structlog, loguru, sentry-sdk, OpenTelemetry,
Flask and asgi-correlation-id see what they see without hindsight, live and on release.

Every app here answers 500 (unless said otherwise), so its kept records are released.
"""

from __future__ import annotations

import inspect
import itertools
import json
import logging
import logging.handlers
import socket
import sys
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any
from uuid import uuid4

import flask
import httpx
import pytest
import sentry_sdk
import structlog
from aiosmtpd.controller import Controller
from asgi_correlation_id import CorrelationIdMiddleware, correlation_id
from fastapi import FastAPI
from fastapi.responses import Response
from loguru import logger as loguru_logger
from opentelemetry.instrumentation.logging import LoggingInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Tracer
from sentry_sdk.envelope import Envelope
from sentry_sdk.integrations.logging import EventHandler, LoggingIntegration
from sentry_sdk.transport import Transport

from hindsight_web import Hindsight, HindsightMiddleware, HindsightWSGIMiddleware

from .admin_apps import AppClient
from .conftest import ListHandler

log = logging.getLogger("app")

ADAPTERS = ["fastapi", "flask"]
Endpoint = Callable[[], int]  # the app's code: logs, and returns the status to answer


# -- apps, requests, releases ------------------------------------------------------------------


def flush_releases(hs: Hindsight) -> None:
    """Wait until every release handed over so far is written (a background thread may write
    them); a Hindsight without `flush` writes its releases before the request returns."""
    flush = getattr(hs, "flush", None)
    if flush is not None:
        assert flush(timeout_s=5.0), "the releases were not written within 5 s"


def request(client: AppClient, headers: dict[str, str] | None = None) -> httpx.Response:
    """GET /checkout, then wait for its release to be written."""
    response = client.get("/checkout", headers=headers)
    assert client.hs is not None
    flush_releases(client.hs)
    return response


def build_client(
    adapter: str, endpoint: Endpoint, *, sync: bool = False, inner: tuple[Any, ...] = ()
) -> AppClient:
    """`endpoint` served at /checkout by FastAPI (an async endpoint, or a sync one run in the
    thread pool) or Flask, behind hindsight; `inner`: ASGI middleware classes inside it."""
    hs = Hindsight()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the test client's own INFO lines
    if adapter == "fastapi":
        app = FastAPI()
        if sync:

            @app.get("/checkout")
            def sync_checkout() -> Response:
                return Response(status_code=endpoint())

        else:

            @app.get("/checkout")
            async def checkout() -> Response:
                return Response(status_code=endpoint())

        for middleware in inner:
            app.add_middleware(middleware)
        app.add_middleware(HindsightMiddleware, hindsight=hs)  # added last: the outermost
        return AppClient(app, asgi=True, hs=hs)
    flask_app = flask.Flask("ecosystem")

    @flask_app.get("/checkout")
    def flask_checkout() -> tuple[str, int]:
        return "", endpoint()

    flask_app.wsgi_app = HindsightWSGIMiddleware(flask_app.wsgi_app, hindsight=hs)  # type: ignore[method-assign]
    return AppClient(flask_app, asgi=False, hs=hs)


@pytest.fixture
def serve() -> Iterator[Callable[..., AppClient]]:
    """`build_client`, with every client and Hindsight closed at the end of the test."""
    clients: list[AppClient] = []

    def make(adapter: str, endpoint: Endpoint, **kwargs: Any) -> AppClient:
        clients.append(build_client(adapter, endpoint, **kwargs))
        return clients[-1]

    yield make
    for client in clients:
        client.close()
        if client.hs is not None:
            client.hs.close()


def is_app(record: logging.LogRecord) -> bool:
    return record.name == "app" or record.name.startswith("app.")


def app_records(handler: ListHandler) -> list[logging.LogRecord]:
    """The app's records `handler` got (not hindsight's summaries, nor the test client's)."""
    return [r for r in handler.records if is_app(r)]


def summaries(handler: ListHandler) -> list[str]:
    return [r.getMessage() for r in handler.records if r.name == "hindsight_web"]


def line_of(function: Callable[..., object], text: str) -> int:
    """The number of the line of `function` whose source contains `text`."""
    lines, first = inspect.getsourcelines(function)
    return first + next(i for i, line in enumerate(lines) if text in line)


# -- 1. hindsight's frames are invisible to code that walks the stack ----------------------------


class FixedDepthLogger(logging.Logger):
    """A Logger whose caller is the frame at a fixed depth: findCaller <- Logger._log <-
    Logger.info/debug <- the app."""

    def findCaller(
        self, stack_info: bool = False, stacklevel: int = 1
    ) -> tuple[str, int, str, str | None]:
        frame = sys._getframe(3)
        return frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name, None


class ModuleNameLogger(logging.Logger):
    """A Logger whose caller is the first frame outside the `logging` modules, found by module
    name as structlog's `_find_first_app_frame_and_name` finds it (whatever the stacklevel)."""

    def findCaller(
        self, stack_info: bool = False, stacklevel: int = 1
    ) -> tuple[str, int, str, str | None]:
        frame = sys._getframe(1)
        while frame.f_back is not None and frame.f_globals["__name__"].startswith("logging"):
            frame = frame.f_back
        return frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name, None


def logger_of_class(name: str, cls: type[logging.Logger]) -> logging.Logger:
    """A new logger of class `cls`, made by `logging.getLogger` (so it has the root as parent)."""
    saved = logging.getLoggerClass()
    logging.setLoggerClass(cls)
    try:
        made = logging.getLogger(name)
    finally:
        logging.setLoggerClass(saved)
    assert type(made) is cls, f"{name} was made before as a {type(made).__name__}"
    return made


def structlog_logger(name: str) -> logging.Logger:
    """A logger made by structlog's LoggerFactory: structlog's `_FixedFindCallerLogger`, whose
    findCaller walks frames by module name, skipping `logging` (and `structlog`) modules."""
    saved = logging.getLoggerClass()
    try:
        made: logging.Logger = structlog.stdlib.LoggerFactory()(name)
    finally:
        logging.setLoggerClass(saved)  # LoggerFactory() installs its class for every logger
    assert type(made).__name__ == "_FixedFindCallerLogger"
    return made


def checkout(logger: logging.Logger) -> int:
    logger.info("checkout started")
    logger.debug("cart loaded")
    return 500


def log_for_caller(method: Callable[..., None], message: str) -> None:
    """A helper the app calls: its records name the helper's caller."""
    method(message, stacklevel=2)


def checkout_through_helper(logger: logging.Logger) -> int:
    log_for_caller(logger.info, "checkout started")
    log_for_caller(logger.debug, "cart loaded")
    return 500


WALKERS: dict[str, tuple[Callable[[], logging.Logger], Callable[[logging.Logger], int]]] = {
    "fixed-depth-findCaller": (
        lambda: logger_of_class("app.fixed_depth", FixedDepthLogger),
        checkout,
    ),
    "module-name-findCaller": (
        lambda: logger_of_class("app.module_name", ModuleNameLogger),
        checkout,
    ),
    "structlog-findCaller": (lambda: structlog_logger("app.structlog_caller"), checkout),
    "stacklevel-2": (lambda: logging.getLogger("app.stacklevel"), checkout_through_helper),
}


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize("walker", list(WALKERS))
def test_callers_are_the_app_frames_live_and_released(
    walker: str, adapter: str, out: ListHandler, serve: Callable[..., AppClient]
) -> None:
    make_logger, app_code = WALKERS[walker]
    logger = make_logger()
    request(serve(adapter, lambda: app_code(logger)))
    app_code(logger)  # outside requests: the INFO line only
    here = (__file__, app_code.__name__)
    info = (*here, line_of(app_code, "checkout started"))
    debug = (*here, line_of(app_code, "cart loaded"))
    assert [(r.getMessage(), r.pathname, r.funcName, r.lineno) for r in app_records(out)] == [
        ("checkout started", *info),  # live, in the request
        ("cart loaded", *debug),  # released
        ("checkout started", *info),  # live, outside requests
    ]


class InterceptHandler(logging.Handler):
    """loguru's InterceptHandler, as its README gives it."""

    def emit(self, record: logging.LogRecord) -> None:
        # Get corresponding Loguru level if it exists.
        level: str | int
        try:
            level = loguru_logger.level(record.levelname).name
        except ValueError:
            level = record.levelno

        # Find caller from where originated the logged message.
        frame, depth = inspect.currentframe(), 0
        while frame and (depth == 0 or frame.f_code.co_filename == logging.__file__):
            frame = frame.f_back
            depth += 1

        loguru_logger.opt(depth=depth, exception=record.exc_info).log(level, record.getMessage())


@pytest.fixture
def loguru_lines() -> Iterator[list[str]]:
    """What loguru writes, as `module:function:line message`."""
    lines: list[str] = []
    sink = loguru_logger.add(
        lambda message: lines.append(message.rstrip("\n")),
        format="{name}:{function}:{line} {message}",
        level=0,
    )
    yield lines
    loguru_logger.remove(sink)


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_loguru_intercept_handler_names_the_app_frame(
    adapter: str, out: ListHandler, loguru_lines: list[str], serve: Callable[..., AppClient]
) -> None:
    logging.getLogger().addHandler(InterceptHandler())
    request(serve(adapter, lambda: checkout(log)))
    checkout(log)  # outside requests
    live = f"{__name__}:checkout:{line_of(checkout, 'checkout started')} checkout started"
    assert [line for line in loguru_lines if line.endswith("checkout started")] == [live, live]
    # loguru takes a released record's caller from the stack it is written from, which is no
    # longer the app's: the record itself must carry the app's caller.
    (released,) = [r for r in app_records(out) if r.levelno == logging.DEBUG]
    assert (released.pathname, released.funcName, released.lineno) == (
        __file__,
        "checkout",
        line_of(checkout, "cart loaded"),
    )


# -- 2. a released record is the record the stdlib would have made -------------------------------


@pytest.fixture
def structlog_in_logging() -> Iterator[structlog.stdlib.ProcessorFormatter]:
    """structlog's "rendering within logging" setup: events go to the stdlib wrapped for a
    ProcessorFormatter, which renders them as JSON."""
    saved = logging.getLoggerClass()
    structlog.configure(
        processors=[structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    yield structlog.stdlib.ProcessorFormatter(
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.JSONRenderer(sort_keys=True),
        ]
    )
    structlog.reset_defaults()
    logging.setLoggerClass(saved)


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_structlog_processor_formatter_renders_a_released_event(
    adapter: str,
    out: ListHandler,
    structlog_in_logging: structlog.stdlib.ProcessorFormatter,
    serve: Callable[..., AppClient],
) -> None:
    out.setFormatter(structlog_in_logging)

    def checkout_events() -> int:
        structlog.get_logger("app.events").debug("cart loaded", cart="c-1", items=3)
        return 500

    request(serve(adapter, checkout_events))
    assert "records=1 " in json.loads(out.lines[0])["event"]
    assert [json.loads(line) for line in out.lines[1:]] == [
        {"cart": "c-1", "event": "cart loaded", "items": 3}
    ]


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_structlog_event_fields_holding_secrets_are_released_redacted(
    adapter: str,
    out: ListHandler,
    structlog_in_logging: structlog.stdlib.ProcessorFormatter,
    serve: Callable[..., AppClient],
) -> None:
    out.setFormatter(structlog_in_logging)

    def login_events() -> int:
        log = structlog.get_logger("app.events").bind(api_token="t-SECRET-1")
        log.debug("login", user="alice", password="hunter2", note="password=hunter2")
        return 500

    request(serve(adapter, login_events))
    assert [json.loads(line) for line in out.lines[1:]] == [
        {
            "api_token": "[redacted]",
            "event": "login",
            "note": "password=[redacted]",
            "password": "[redacted]",
            "user": "alice",
        }
    ]
    assert "hunter2" not in "\n".join(out.lines)


class BraceRecord(logging.LogRecord):
    """The app's record class: str.format for positional arguments, % for one mapping."""

    def getMessage(self) -> str:
        if isinstance(self.args, tuple) and self.args:
            return str(self.msg).format(*self.args)
        return super().getMessage()


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_the_app_record_class_formats_released_records_from_their_arguments(
    adapter: str, out: ListHandler, serve: Callable[..., AppClient]
) -> None:
    logging.setLogRecordFactory(BraceRecord)

    def checkout_formatted() -> int:
        log.debug("cart {} has {} items", "c-1", 3)
        user = {"name": "x"}
        log.debug("user %(name)s", user)
        user["name"] = "changed after the call"
        return 500

    request(serve(adapter, checkout_formatted))
    released = app_records(out)
    assert [type(r) for r in released] == [BraceRecord, BraceRecord]
    assert [(r.getMessage(), r.args) for r in released] == [
        ("cart c-1 has 3 items", ("c-1", 3)),
        ("user x", {"name": "x"}),
    ]


class ExcInfoHandler(logging.Handler):
    """Keeps each record's message and the exception its `exc_info` holds when handled."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, BaseException | None]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if is_app(record):
            self.seen.append((record.getMessage(), record.exc_info[1] if record.exc_info else None))


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_a_released_record_has_its_exc_info(
    adapter: str, out: ListHandler, serve: Callable[..., AppClient]
) -> None:
    handler = ExcInfoHandler()
    logging.getLogger().addHandler(handler)
    error = ValueError("bad cart")

    def checkout_failing() -> int:
        try:
            raise error
        except ValueError:
            log.debug("boom", exc_info=True)
        return 500

    request(serve(adapter, checkout_failing))
    assert handler.seen == [("boom", error)]
    assert "ValueError: bad cart" in out.lines[-1]


# -- 3. context is the one at log time ---------------------------------------------------------


@pytest.fixture
def tracer() -> Iterator[Tracer]:
    """An OpenTelemetry SDK tracer, with the logging instrumentation's record factory that puts
    the current span's ids on each record."""
    provider = TracerProvider()
    instrumentor = LoggingInstrumentor()
    instrumentor.instrument(
        tracer_provider=provider,
        set_logging_format=False,
        # Without this (or set_logging_format=True) the factory adds no otel* attribute.
        inject_trace_context=True,
        # Adds no OpenTelemetry LoggingHandler to the root logger.
        enable_log_auto_instrumentation=False,
    )
    yield provider.get_tracer(__name__)
    instrumentor.uninstrument()
    provider.shutdown()


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_opentelemetry_ids_of_a_released_record_are_its_span(
    adapter: str, out: ListHandler, tracer: Tracer, serve: Callable[..., AppClient]
) -> None:
    spans: list[tuple[str, str]] = []

    def checkout_traced() -> int:
        with tracer.start_as_current_span("checkout") as span:
            context = span.get_span_context()
            spans.append((format(context.trace_id, "032x"), format(context.span_id, "016x")))
            log.debug("cart loaded")
            log.info("checkout started")
        return 500

    request(serve(adapter, checkout_traced))
    (span_ids,) = spans
    assert [(r.getMessage(), (r.otelTraceID, r.otelSpanID)) for r in app_records(out)] == [  # type: ignore[attr-defined]
        ("checkout started", span_ids),  # live
        ("cart loaded", span_ids),  # released
    ]


tenant: ContextVar[str] = ContextVar("tenant", default="-")


class TenantFilter(logging.Filter):
    """Puts the current value of the `tenant` context variable on each record it passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.tenant = tenant.get()
        return True


def test_a_filter_sees_the_context_variables_of_a_thread_pool_endpoint(
    out: ListHandler, serve: Callable[..., AppClient]
) -> None:
    out.addFilter(TenantFilter())

    def checkout_for_tenant() -> int:  # a sync FastAPI endpoint: run in the thread pool
        tenant.set("acme")
        log.debug("cart loaded")
        tenant.set("changed after the call")
        return 500

    request(serve("fastapi", checkout_for_tenant, sync=True))
    assert [(r.getMessage(), r.tenant) for r in app_records(out)] == [("cart loaded", "acme")]  # type: ignore[attr-defined]


class FlaskPathFilter(logging.Filter):
    """Puts the path of Flask's current request (None outside one) on each record it passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.path = flask.request.path if flask.has_request_context() else None
        return True


def test_a_filter_sees_the_flask_request_of_a_released_record(
    out: ListHandler, serve: Callable[..., AppClient]
) -> None:
    out.addFilter(FlaskPathFilter())
    request(serve("flask", lambda: checkout(log)))
    assert [(r.getMessage(), r.path) for r in app_records(out)] == [  # type: ignore[attr-defined]
        ("checkout started", "/checkout"),  # live
        ("cart loaded", "/checkout"),  # released
    ]


# -- 4. delivery respects handler levels ---------------------------------------------------------


class MemoryTransport(Transport):
    """A sentry-sdk transport that keeps the events it is given."""

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self.events: list[dict[str, Any]] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        event = envelope.get_event()
        if event is not None:
            self.events.append(event)


@pytest.fixture
def sentry() -> Iterator[MemoryTransport]:
    """sentry-sdk with its logging integration: breadcrumbs from DEBUG up (through its patch of
    `Logger.callHandlers`); events come from an EventHandler the test adds where it wants."""
    transport = MemoryTransport()
    sentry_sdk.init(
        dsn="http://public@127.0.0.1:9/1",
        transport=transport,
        default_integrations=False,
        auto_enabling_integrations=False,
        integrations=[
            LoggingIntegration(level=logging.DEBUG, event_level=None, sentry_logs_level=None)
        ],
    )
    with sentry_sdk.isolation_scope() as scope:
        scope.clear_breadcrumbs()
        yield transport
    sentry_sdk.get_client().close()
    sentry_sdk.get_global_scope().set_client(None)


class MailBox:
    """An aiosmtpd handler keeping the messages it receives."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope.content)
        return "250 Message accepted for delivery"


@pytest.fixture
def mail_server() -> Iterator[tuple[int, MailBox]]:
    """A real SMTP server on 127.0.0.1 (aiosmtpd); yields its port and its mailbox."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    box = MailBox()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    yield port, box
    controller.stop()


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_a_release_reaches_no_mail_or_sentry_event_handler_below_their_level(
    adapter: str,
    out: ListHandler,
    sentry: MemoryTransport,
    mail_server: tuple[int, MailBox],
    serve: Callable[..., AppClient],
) -> None:
    port, mailbox = mail_server
    out.setLevel(logging.INFO)  # the console
    mail = logging.handlers.SMTPHandler(
        ("127.0.0.1", port), "app@example.com", ["ops@example.com"], "app error", timeout=5.0
    )
    mail.setLevel(logging.ERROR)
    logging.getLogger().addHandler(mail)
    logging.getLogger().addHandler(EventHandler(level=logging.ERROR))
    log.error("outside requests")  # the mail and the Sentry event do work
    assert (len(mailbox.messages), len(sentry.events)) == (1, 1)
    mailbox.messages.clear()
    sentry.events.clear()
    out.records.clear()

    def checkout_debugged() -> int:
        for i in range(5):
            log.debug("step %d", i)
        return 500

    request(serve(adapter, checkout_debugged))
    assert {"mails": len(mailbox.messages), "sentry events": len(sentry.events)} == {
        "mails": 0,
        "sentry events": 0,
    }
    assert len(summaries(out)) == 1
    assert [r.getMessage() for r in app_records(out)] == [f"step {i}" for i in range(5)]


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_sentry_breadcrumbs_of_a_debug_logger_are_recorded_once(
    adapter: str, out: ListHandler, sentry: MemoryTransport, serve: Callable[..., AppClient]
) -> None:
    out.setLevel(logging.INFO)  # the logger writes DEBUG records, no handler takes them
    crumbs = logging.getLogger("app.crumbs")
    crumbs.setLevel(logging.DEBUG)
    answers = iter([200, 500])

    def checkout_crumbs() -> int:
        crumbs.debug("cart loaded")
        return next(answers)

    client = serve(adapter, checkout_crumbs)
    request(client)  # 200: dropped
    request(client)  # 500: released
    sentry_sdk.capture_message("probe")
    (event,) = sentry.events
    breadcrumbs = [
        b["message"] for b in event["breadcrumbs"]["values"] if b["category"] == "app.crumbs"
    ]
    assert breadcrumbs == ["cart loaded", "cart loaded"]  # one per request, as without hindsight


# -- 5. one request id for every layer ---------------------------------------------------------


def test_asgi_correlation_id_inside_hindsight_shares_its_request_id(
    out: ListHandler, serve: Callable[..., AppClient]
) -> None:
    seen: list[str | None] = []

    def checkout_correlated() -> int:
        seen.append(correlation_id.get())
        return checkout(log)

    client = serve("fastapi", checkout_correlated, inner=(CorrelationIdMiddleware,))
    incoming = uuid4().hex
    for headers in ({}, {"X-Request-ID": incoming}):
        out.records.clear()
        seen.clear()
        rid = request(client, headers=headers).headers["x-request-id"]
        if headers:
            assert rid == incoming
        (summary,) = summaries(out)
        ids = {
            "app (correlation_id)": seen[0],
            "summary": summary.split("request_id=")[1].split()[0],
            "records": {r.request_id for r in out.records},  # type: ignore[attr-defined]
        }
        assert ids == {"app (correlation_id)": rid, "summary": rid, "records": {rid}}


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_request_ids_are_not_sequential(
    adapter: str, out: ListHandler, serve: Callable[..., AppClient]
) -> None:
    client = serve(adapter, lambda: 200)
    ids = [request(client).headers["x-request-id"] for _ in range(3)]
    for a, b in itertools.pairwise(ids):
        assert a[:-8] != b[:-8], f"{a} and {b} differ only in their last digits"
