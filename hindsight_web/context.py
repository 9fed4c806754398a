"""The request context: one ContextVar holding one mutable state object per request.

The state object is shared by reference with every task, thread-pool call and
background task that copies the request's context, so `set_user()` and `bind()`
(`binding`) called from any of them change what the whole request sees.
"""

from __future__ import annotations

import logging
from collections import deque
from contextvars import Context, ContextVar
from time import perf_counter
from typing import TYPE_CHECKING, Any

from .escaping import escape
from .messages import text

if TYPE_CHECKING:
    from .buffer import Budget, Counts
    from .redact import Redactor

__all__ = ["RequestState", "current", "mark_exception", "of_exception"]

# Above every logging level: a request with this `keep_level` keeps nothing on the fast path.
CLOSED_LEVEL = 1 << 62

_current: ContextVar[RequestState | None] = ContextVar("hindsight_web.request", default=None)

# Names a bound field may not take: they would overwrite what a LogRecord already carries.
RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {
    "message",
    "asctime",
    "request_id",
    "user_id",
    "session_id",
    "taskName",
    "hindsight_raw",
}


class RequestState:
    """What hindsight knows of one request while it runs."""

    __slots__ = (
        "at",
        "budget",
        "capture_level",
        "cells",
        "client",
        "closed",
        "context",
        "counts",
        "detail_level",
        "detail_rule",
        "dropped",
        "duration_ms",
        "ended",
        "errored",
        "fields",
        "headers",
        "keep_level",
        "kept",
        "max_bytes",
        "max_records",
        "method",
        "nbytes",
        "needles",
        "on_identity",
        "path",
        "raised",
        "reason",
        "records",
        "redactor",
        "release_level",
        "released",
        "request_id",
        "reserved",
        "route",
        "seen",
        "session_from_cookie",
        "session_id",
        "slow",
        "started",
        "status",
        "suppressed",
        "tagged",
        "tags",
        "ttfb",
        "user_id",
    )

    # The outcome, set by `Hindsight.finish` for the statistics and the window (which
    # read it after): `at` is when it ended (epoch seconds), `kept` how many records it
    # kept, `suppressed` how many of them the release limit held back.
    at: float
    kept: int
    suppressed: int
    duration_ms: float
    errored: bool
    slow: bool
    released: bool
    reason: str | None
    raised: str | None

    def __init__(
        self,
        request_id: str,
        method: str,
        path: str,
        client: str | None,
        headers: Any,
        capture_level: int,
        max_records: int,
        max_bytes: int,
        budget: Budget,
        counts: Counts,
        release_level: int,
        redactor: Redactor | None,
    ) -> None:
        # Positional, and one clock read: this runs for every request.
        self.request_id = request_id
        self.method = method
        self.path = path
        self.client = client
        self.headers = headers
        self.capture_level = capture_level
        # The lowest level the fast capture path keeps; raised above every level
        # once the request is closed or its records are written live.
        self.keep_level = capture_level
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.budget = budget
        self.counts = counts
        self.release_level = release_level
        self.redactor = redactor  # None: nothing is redacted
        self.started = perf_counter()
        self.user_id: str | None = None
        self.session_id: str | None = None
        # The attributes records get besides `request_id` (see `retag`); None while the
        # user, the session and the bound fields are unknown.
        self.tags: dict[str, Any] | None = None
        # True when the session is only a hash of a cookie the client sent.
        self.session_from_cookie = False
        self.fields: dict[str, Any] | None = None  # bind()'s, and tag rules'
        self.tagged: dict[str, str] | None = None  # the fields tag rules added
        self.records: deque[tuple[Any, ...]] = deque()
        # The cell of the context copy of the last kept record: the next one shares it
        # when the context has not changed meanwhile (see `capture.context_now`); every
        # cell of the request in `cells`, so that `let_go` empties them.
        self.context: list[Context | None] | None = None
        self.cells: list[list[Context | None]] | None = None
        self.nbytes = 0
        self.reserved = 0
        self.dropped = 0
        self.status: int | None = None
        self.ttfb: float | None = None
        self.ended: float | None = None
        self.detail_level: int | None = None
        self.detail_rule: str | None = None
        self.route: str | None = None
        self.closed = False
        self.on_identity: Any = None
        # While rules match on `message`: the substrings they look for, and those
        # found in the records written during the request (their text is not kept).
        self.needles: tuple[str, ...] = ()
        self.seen: set[str] | None = None

    @property
    def ttfb_ms(self) -> float | None:
        """Milliseconds from the start to the first response byte, or None."""
        return None if self.ttfb is None else (self.ttfb - self.started) * 1000.0

    def header(self, name: str) -> str | None:
        """The value of request header `name` (lower-case), or None."""
        headers = self.headers
        if headers is None:
            return None
        if isinstance(headers, dict):  # a WSGI environ
            key = "HTTP_" + name.upper().replace("-", "_")
            if name == "content-type":
                key = "CONTENT_TYPE"
            elif name == "content-length":
                key = "CONTENT_LENGTH"
            value = headers.get(key)
            return value if isinstance(value, str) else None
        wanted = name.encode("latin-1")
        for raw_name, raw_value in headers:  # ASGI: (bytes, bytes) pairs
            if raw_name.lower() == wanted:
                return str(raw_value.decode("latin-1"))
        return None

    def retag(self) -> None:
        """Work out the attributes records get besides `request_id`: ``user_id``,
        ``session_id`` and the bound fields, their texts escaped (no value can forge a
        line), and the raw values under ``hindsight_raw`` where they differ."""
        given = {"user_id": self.user_id, "session_id": self.session_id, **(self.fields or {})}
        tags = {k: escape(v) if type(v) is str else v for k, v in given.items()}
        raw = {k: v for k, v in given.items() if tags[k] is not v}
        if raw:
            tags["hindsight_raw"] = raw
        self.tags = tags

    def mentions(self, needle: str) -> bool:
        """Whether a record of the request, written or buffered, has `needle` in its message
        (a record written before `needle` was watched for is not known)."""
        if self.seen is not None and needle in self.seen:
            return True
        # An entry's msg and args (buffer.MSG, buffer.ARGS), formatted now.
        return any(needle in text(entry[2], entry[3]) for entry in self.records)


def new_cell(state: RequestState, context: Context) -> list[Context | None]:
    """A new cell holding `context` for the kept records of `state` (a record's
    ``buffer.CONTEXT`` field): records that share a context share its cell, and
    `let_go` empties every cell of a request at once."""
    cell: list[Context | None] = [context]
    state.context = cell
    if state.cells is None:
        state.cells = [cell]
    else:
        state.cells.append(cell)
    return cell


def let_go(state: RequestState) -> None:
    """Let the kept records of `state` hold their contexts no more (the request's
    objects, a span, ...): a release then makes them in the context it is given."""
    cells = state.cells
    if cells is not None:
        for cell in cells:
            cell[0] = None
        state.cells = None
    state.context = None


_STATE = "_hindsight_request"


def mark_exception(exc: BaseException, state: RequestState) -> None:
    """Let `exc`, raised by a request's app, carry the request: the server's own line
    about it (uvicorn's "Exception in ASGI application" traceback), logged once the
    request is over, is tagged with that request's id (`of_exception`)."""
    try:
        setattr(exc, _STATE, state)
    except Exception:
        pass  # an exception that takes no attributes: its line goes untagged


def of_exception(exc_info: Any) -> RequestState | None:
    """The request an exception of `exc_info` (a record's) was raised by, or None."""
    if not exc_info or exc_info is True:
        return None
    exc = exc_info if isinstance(exc_info, BaseException) else exc_info[1]
    state = getattr(exc, _STATE, None)
    return state if isinstance(state, RequestState) else None


def current() -> RequestState | None:
    """The state of the request running in this context, or None outside requests."""
    return _current.get()
