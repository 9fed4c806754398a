"""The output side: everything hindsight writes, made as the stdlib would have made it.

A kept record becomes a real `LogRecord` through its logger's own `makeRecord`
(the app's record factory and record class) with the original ``msg`` object
and arguments, its caller and time taken at log time, its ``exc_info`` while
the request is in memory, and it is made, filtered and handled in the
contextvars context of its log call (the OpenTelemetry span, structlog's
contextvars, Flask's request). It goes to the handlers its logger would use
(as ``callHandlers`` walks them) whose level is at most ``release_handler_level``,
and to a handler of a higher level (mail, Sentry events, pagers) only when its
own level reaches that handler's.

Releases (one summary, then the kept records in their order) are written by one
background thread per `Hindsight` (`Writer`), never on the request path nor on an
event loop: a handler that blocks holds up only that thread. The queue is
bounded; a release that finds it full is dropped and counted. Detail mode writes
its records at once (`write_live`), as the app's own logging does.

Records that handlers make while hindsight hands them a record are never kept
or detailed again (`delivering`): a handler that logs cannot make hindsight
recurse.
"""

from __future__ import annotations

import atexit
import contextvars
import logging
import os
import sys
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass
from queue import Empty, SimpleQueue
from typing import Any, Protocol

from . import errors
from ._sync import new_lock
from .buffer import (
    ARGS,
    CONTEXT,
    FUNC,
    LEVEL,
    LINENO,
    LOGGER,
    MORE,
    MSG,
    NO_MORE,
    PATHNAME,
    THREAD,
    TIME_NS,
    Budget,
    Counts,
    Entry,
)
from .escaping import shown

__all__ = [
    "LINGER_S",
    "MAX_QUEUED",
    "Collector",
    "Outputs",
    "RateLimit",
    "Release",
    "Writer",
    "build_record",
    "deliver",
    "delivering",
    "flush_all",
    "write_live",
    "write_now",
]

logger = errors.logger

MAX_QUEUED = 10_000
"""Releases waiting for the writer thread, at most; the records they hold are within
the byte budget of the requests they came from."""

LINGER_S = 0.02
"""Once it has written every queued release, the writer thread waits this long (s)
before it takes the next: a release alone is written at once, releases that follow
each other closely in batches (each thread switch costs the app's threads time)."""

_MAX_PATH_SHOWN = 300
_delivering: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "hindsight_web.delivering", default=False
)


def delivering() -> bool:
    """True while hindsight hands a record to handlers (in this context)."""
    return _delivering.get()


# -- making records -------------------------------------------------------------------


def build_record(entry: Entry) -> logging.LogRecord:
    """The LogRecord the app would have made at log time for a kept `entry`.

    Call it in the entry's context (``entry[CONTEXT][0].run``, or its request's once
    that is gone): the record factory and `makeRecord` read ambient state there.
    """
    log: logging.Logger = entry[LOGGER]
    msg, args = entry[MSG], entry[ARGS]
    exc_text, stack, extra, exc_info = entry[MORE] or NO_MORE
    pathname, lineno, func, level = entry[PATHNAME], entry[LINENO], entry[FUNC], entry[LEVEL]
    try:
        record = log.makeRecord(
            log.name, level, pathname, lineno, msg, args, exc_info, func, extra, stack
        )
    except KeyError:
        # `extra` tried to overwrite a record attribute; the stdlib would have raised at log time.
        record = log.makeRecord(
            log.name, level, pathname, lineno, msg, args, exc_info, func, None, stack
        )
    t_ns = entry[TIME_NS]
    created = t_ns / 1e9
    record.created = created
    record.msecs = (t_ns % 1_000_000_000) // 1_000_000 + 0.0
    start = logging._startTime  # type: ignore[attr-defined]
    if isinstance(start, int):  # Python 3.13+ keeps it in nanoseconds
        record.relativeCreated = (t_ns - start) / 1e6
    else:
        record.relativeCreated = (created - start) * 1000.0
    thread = entry[THREAD]
    record.thread = thread.ident
    record.threadName = thread.name
    if exc_info is None:
        record.exc_text = exc_text
    return record


def write_live(
    log: logging.Logger,
    level: int,
    msg: object,
    args: Any,
    exc_info: Any,
    extra: Any,
    caller: tuple[str, int, str, str | None],
    release_level: int,
    exc_text: str | None = None,
) -> None:
    """Make and write a record at once (detail mode): the record the stdlib makes for
    this call (`caller`: pathname, lineno, funcName, stack text), to the handlers
    `deliver` picks; `exc_text` stands for the traceback when there is no `exc_info`."""
    pathname, lineno, func, stack = caller
    record = log.makeRecord(
        log.name, level, pathname, lineno, msg, args, exc_info, func, extra, stack
    )
    if exc_info is None:
        record.exc_text = exc_text
    deliver(log, record, release_level)


def deliver(log: logging.Logger, record: logging.LogRecord, release_level: int) -> None:
    """Hand `record` to the handlers its logger would use: those of a level up to
    `release_level` whatever the record's level, the others when the record's level
    reaches theirs.

    The logger's own filters apply, as in `Logger.handle`, and ``logging.disable``
    too; a handler that raises is counted and skipped, and the others still get
    the record. Records made by the handlers meanwhile are not kept again.
    """
    if log.disabled or record.levelno <= log.manager.disable:
        return
    passed: Any = log.filter(record)
    if not passed:
        return
    if isinstance(passed, logging.LogRecord):  # Python 3.12+ filters may replace the record
        record = passed
    token = _delivering.set(True)
    try:
        found = False
        current: logging.Logger | None = log
        level = record.levelno
        while current is not None:
            for handler in current.handlers:
                found = True
                if handler.level <= release_level or level >= handler.level:
                    try:
                        handler.handle(record)
                    except Exception as exc:
                        errors.report("handler", exc)
            current = current.parent if current.propagate else None
        last = logging.lastResort
        if not found and last is not None and level >= last.level:
            last.handle(record)
    finally:
        _delivering.reset(token)


# -- releases ---------------------------------------------------------------------------


@dataclass
class Release:
    """One release, handed from the request to the writer thread.

    Attributes:
        request_id, method, path, status, raised: the request (``raised``: the
            type name of an exception the app raised, or None).
        duration_ms: until the last body byte.
        reason: why it is released (``"status"``, ``"slow"``, ``"rule:<id>"``, ...).
        entries: the kept records, in order (empty when suppressed).
        dropped: records the request's buffer dropped.
        suppressed: records held back by the release limit.
        context: the request's contextvars context at its end (for the summary, and
            for records settled in the window, which no longer hold their own).
        at: when it ended, epoch seconds.
        budget, reserved: the bytes its records hold, given back once written.
        release_level: ``release_handler_level``.
        sinks: the ids of the sinks it goes to (a rule's ``sinks``), or None for the
            default ones.
    """

    request_id: str
    method: str
    path: str
    status: int | None
    raised: str | None
    duration_ms: float
    reason: str
    entries: list[Entry] | deque[Entry]
    dropped: int
    suppressed: int
    context: contextvars.Context
    at: float
    budget: Budget
    reserved: int
    release_level: int
    sinks: tuple[str, ...] | None = None


class Outputs(Protocol):
    """Where releases go besides the app's handlers (`sinks.Sinks`)."""

    app_sent: int

    def route(self, names: tuple[str, ...] | None) -> tuple[bool, tuple[Any, ...]]:
        """Whether the app's handlers take a release for `names`, and which other sinks."""

    def collector(self, sinks: tuple[Any, ...]) -> Collector:
        """What gathers one release's items for `sinks`."""


class Collector(Protocol):
    """Gathers the items of one release for the sinks (`sinks.Collector`)."""

    def summary(self, job: Release, message: str) -> None:
        """The summary (in the release's context)."""

    def entry(self, entry: Entry, request_id: str) -> None:
        """A record (in its own context)."""

    def done(self) -> None:
        """Hand the items over."""


def _summary(job: Release) -> logging.LogRecord:
    outcome = "-> no response" if job.status is None else f"-> {job.status}"
    if job.raised is not None:
        outcome += f", raised {shown(job.raised, 100)}"
    text = "hindsight release: %s %s %s in %.1f ms (reason: %s) request_id=%s records=%d dropped=%d"
    args: tuple[Any, ...] = (
        shown(job.method, 16),
        shown(job.path, _MAX_PATH_SHOWN),
        outcome,
        job.duration_ms,
        job.reason,
        job.request_id,
        len(job.entries),
        job.dropped,
    )
    if job.suppressed:
        text += " suppressed=%d"
        args += (job.suppressed,)
    record = logger.makeRecord(
        logger.name,
        logging.INFO,
        __file__,
        sys._getframe().f_lineno,
        text,
        args,
        None,
        "release",
        {
            "http_method": job.method,
            "http_path": job.path,
            "http_status": job.status,
            "duration_ms": round(job.duration_ms, 3),
            "release_reason": job.reason,
            "records_released": len(job.entries),
            "records_dropped": job.dropped,
            "records_suppressed": job.suppressed,
        },
    )
    record.created = job.at
    record.msecs = (job.at * 1000) % 1000
    return record


def write(job: Release, counts: Counts, outputs: Outputs | None = None) -> None:
    """Write a release: its summary, then its records in order, each in its own context,
    to the app's handlers and to the sinks it is routed to (`outputs`)."""
    written = 0
    app, others = (True, ()) if outputs is None else outputs.route(job.sinks)
    collect = outputs.collector(others) if outputs is not None and others else None
    try:
        job.context.run(_write_summary, job, app, collect)
        for entry in job.entries:
            # A record of the window holds its context no more: its request's stands in.
            context = entry[CONTEXT][0] or job.context
            if context.run(_write_entry, entry, job.release_level, app, collect, job.request_id):
                written += 1
    finally:
        if collect is not None:
            try:
                collect.done()
            except Exception as exc:
                errors.report("sinks", exc)
        job.entries = []
        job.budget.give_back(job.reserved)
        counts.add(records_released=written)
        if app and outputs is not None:
            outputs.app_sent += written + 1


def write_now(entries: list[Entry], release_level: int) -> int:
    """Write kept records at once, in order, each in its own context (detail mode turning
    on); returns how many were written."""
    return sum(
        (entry[CONTEXT][0] or contextvars.copy_context()).run(_write_entry, entry, release_level)
        for entry in entries
    )


def _write_summary(job: Release, app: bool = True, collect: Collector | None = None) -> None:
    try:
        record = _summary(job)
        if app:
            deliver(logger, record, job.release_level)
        if collect is not None:
            collect.summary(job, record.getMessage())
    except Exception as exc:
        errors.report("release", exc)


def _write_entry(
    entry: Entry,
    release_level: int,
    app: bool = True,
    collect: Collector | None = None,
    request_id: str = "",
) -> bool:
    written = False
    try:
        if app:
            deliver(entry[LOGGER], build_record(entry), release_level)
            written = True
    except Exception as exc:
        errors.report("release", exc)
    if collect is not None:
        try:
            collect.entry(entry, request_id)
            written = True
        except Exception as exc:
            errors.report("sinks", exc)
    return written


class RateLimit:
    """A token bucket: `rate` takes per second, `burst` at once; thread-safe."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._stamp = time.monotonic()
        self._lock = new_lock()

    def take(self) -> bool:
        """Take one token; False when none is left."""
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            if self._tokens < 1:
                return False
            self._tokens -= 1
            return True


class Writer:
    """The background thread that writes one Hindsight's releases.

    Args:
        counts: where written and dropped records are counted.

    The thread starts with the first release of each process (also after a
    fork); it holds only a weak reference to the writer, so it ends once the
    writer is gone and nothing is left to write.
    """

    def __init__(self, counts: Counts, outputs: Outputs | None = None) -> None:
        self.counts = counts
        self.outputs = outputs
        self._jobs: SimpleQueue[Release | threading.Event] = SimpleQueue()
        self._hurry = threading.Event()  # a flush waits: stop lingering
        self._thread: threading.Thread | None = None
        self._lock = new_lock()
        _writers.add(self)

    def submit(self, job: Release) -> bool:
        """Queue `job` for writing; False (and nothing queued) when `MAX_QUEUED` wait."""
        jobs = self._jobs
        if jobs.qsize() >= MAX_QUEUED:
            return False
        jobs.put(job)
        if self._thread is None:
            self._start()
        return True

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until every release queued so far is written; False if `timeout_s` passed."""
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return self._jobs.empty()
        written = threading.Event()
        self._jobs.put(written)
        self._hurry.set()
        return written.wait(timeout_s)

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=_run,
                    args=(weakref.ref(self), self._jobs, self._hurry, self.counts, self.outputs),
                    name="hindsight-release",
                    daemon=True,
                )
                self._thread.start()


def _run(
    ref: weakref.ref[Writer],
    jobs: SimpleQueue[Release | threading.Event],
    hurry: threading.Event,
    counts: Counts,
    outputs: Outputs | None = None,
) -> None:
    while True:
        if jobs.empty():  # let releases gather: one thread switch per batch, not per release
            hurry.wait(LINGER_S)
            hurry.clear()
        try:
            job = jobs.get(timeout=5.0)
        except Empty:
            if ref() is None:
                return  # its Hindsight is gone and everything is written
            continue
        if isinstance(job, threading.Event):  # a flush waits for what was queued before it
            job.set()
            continue
        try:
            write(job, counts, outputs)
        except Exception as exc:
            errors.report("release", exc)
        del job  # its records and context go now, not when the next one comes


_writers: weakref.WeakSet[Writer] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # The parent's thread and its queue are the parent's: the child starts empty.
    for writer in list(_writers):
        writer._jobs = SimpleQueue()
        writer._thread = None


def flush_all(timeout_s: float = 5.0) -> bool:
    """Wait until every release handed over so far, by every `Hindsight` of this process,
    is written; False if `timeout_s` seconds passed first (for tests of apps whose
    middleware makes its own `Hindsight`)."""
    deadline = time.monotonic() + timeout_s
    return all(writer.flush(max(0.0, deadline - time.monotonic())) for writer in list(_writers))


def _flush_at_exit() -> None:
    """Releases promised before the process ends are written (two seconds at most)."""
    flush_all(2.0)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_flush_at_exit)
