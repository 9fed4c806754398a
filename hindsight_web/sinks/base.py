"""What every sink with its own thread shares: a bounded queue, counts, a sending thread.

The release writer thread turns a release into a sink's items (a JSON line, an
OpenTelemetry log record) and hands them over with `QueuedSink.put`, which never
blocks: what does not fit within the queue's bounds (records and bytes) is
dropped, counted and reported once. The sink's own thread takes batches from the
queue and sends them (`QueuedSink.send`), so a slow disk or an endpoint that is
down holds up only that sink.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
import weakref
from collections import deque
from typing import Any

from .. import errors, release
from .._sync import new_lock
from ..stats import iso

__all__ = [
    "DEFAULT_MAX_QUEUED",
    "DEFAULT_MAX_QUEUED_BYTES",
    "FLUSH_AT_EXIT_S",
    "Failed",
    "QueuedSink",
    "flush_all",
]

DEFAULT_MAX_QUEUED = 10_000
"""Records waiting in one sink's queue, at most (the default of ``max_queued``)."""

DEFAULT_MAX_QUEUED_BYTES = 16_000_000
"""Bytes (estimated) waiting in one sink's queue, at most (``max_queued_bytes``)."""

FLUSH_AT_EXIT_S = 2.0
"""The longest the process waits at exit for its sinks to send what they hold (s)."""

IDLE_S = 1.0  # how often an idle sink thread checks whether its sink is still wanted


class Failed(Exception):
    """A batch that cannot be delivered and will not be retried (counted as failed)."""


class QueuedSink:
    """A sink with a bounded queue and a thread of its own.

    Args:
        sink_id: the sink's id, as configured.
        max_queued: records the queue holds at most.
        max_queued_bytes: bytes (as estimated by the caller of `put`) it holds at most.
        batch: records sent at once, at most.

    Subclasses implement `send(batch)`: deliver the items or raise `Failed` (the
    batch is dropped, counted as failed); any other exception counts the same.
    Retrying is theirs to do (they may check `stopping` between tries).
    """

    type = "queued"

    def __init__(self, sink_id: str, max_queued: int, max_queued_bytes: int, batch: int) -> None:
        self.id = sink_id
        self.max_queued = max_queued
        self.max_queued_bytes = max_queued_bytes
        self.batch = batch
        self._reset()
        _sinks.add(self)

    def _reset(self) -> None:
        self._lock = new_lock()
        self._ready = threading.Condition(self._lock)
        self._items: deque[tuple[Any, int]] = deque()
        self._bytes = 0
        self._busy = 0  # records taken by the thread and not yet settled
        self._thread: threading.Thread | None = None
        self.sent = 0
        self.dropped = 0
        self.failed = 0
        self.retries = 0
        self.last_error: str | None = None
        self.last_error_at: float | None = None

    # -- the writer thread's side ------------------------------------------------------

    def put(self, items: list[tuple[Any, int]]) -> int:
        """Queue `items` (each with its estimated size in bytes) as far as they fit;
        returns how many were dropped (counted, reported once). Never blocks."""
        dropped = 0
        with self._lock:
            for item in items:
                if len(self._items) >= self.max_queued or (
                    self._bytes + item[1] > self.max_queued_bytes and self._items
                ):
                    dropped += 1
                    continue
                self._items.append(item)
                self._bytes += item[1]
            self.dropped += dropped
            if self._thread is None:
                self._start()
            self._ready.notify()
        if dropped:
            errors.report(
                f"sink {self.id}",
                OverflowError(f"sink {self.id!r}: queue full, {dropped} records dropped"),
            )
        return dropped

    def full(self) -> bool:
        """Whether the queue holds as much as it may (what comes now would be dropped)."""
        return len(self._items) >= self.max_queued or self._bytes >= self.max_queued_bytes

    def drop(self, n: int) -> None:
        """Count `n` records dropped without making them (the queue is full); report once."""
        with self._lock:
            self.dropped += n
        errors.report(
            f"sink {self.id}", OverflowError(f"sink {self.id!r}: queue full, {n} records dropped")
        )

    def flush(self, timeout_s: float) -> bool:
        """Wait until every item queued so far is settled (sent, failed or dropped);
        False if `timeout_s` seconds passed first."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while self._items or self._busy:
                left = deadline - time.monotonic()
                if left <= 0 or self._thread is None:
                    return False
                self._ready.wait(min(left, 0.05))
        return True

    def state(self) -> dict[str, Any]:
        """The sink's counts and last error, as ``GET /sinks`` shows them."""
        with self._lock:
            queued = len(self._items) + self._busy
        at = self.last_error_at
        return {
            "id": self.id,
            "type": self.type,
            "queued": queued,
            "sent": self.sent,
            "dropped": self.dropped,
            "failed": self.failed,
            "retries": self.retries,
            "last_error": self.last_error,
            "last_error_at": None if at is None else iso(at),
        }

    # -- the sink's thread --------------------------------------------------------------

    def send(self, batch: list[Any]) -> None:
        """Deliver `batch` (items in queue order); raise `Failed` to give it up."""
        raise NotImplementedError

    def note_error(self, error: BaseException | str) -> None:
        """Remember `error` as the last one (shown by ``GET /sinks``) and report it once."""
        text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        self.last_error = text[:500]
        self.last_error_at = time.time()
        exc = error if isinstance(error, BaseException) else RuntimeError(text)
        errors.report(f"sink {self.id}", exc)

    def after_fork(self) -> None:
        """Called in a child process after a fork (the queue was emptied): drop what
        cannot cross a fork (connections)."""

    def _start(self) -> None:
        self._thread = threading.Thread(
            target=_run,
            args=(weakref.ref(self), self._ready, self._items),
            name=f"hindsight-sink-{self.id}",
            daemon=True,
        )
        self._thread.start()

    def _take(self) -> list[Any]:
        """The next batch (at most `batch` items), marked busy; called under the lock."""
        batch: list[Any] = []
        while self._items and len(batch) < self.batch:
            item, size = self._items.popleft()
            self._bytes -= size
            batch.append(item)
        self._busy = len(batch)
        return batch

    def _settle(self, batch: list[Any], ok: bool) -> None:
        with self._lock:
            if ok:
                self.sent += len(batch)
            else:
                self.failed += len(batch)
            self._busy = 0
            self._ready.notify_all()


def _run(
    ref: weakref.ref[QueuedSink], ready: threading.Condition, items: deque[tuple[Any, int]]
) -> None:
    while True:
        with ready:
            if not items:
                ready.wait(IDLE_S)
            sink = ref()
            if sink is None or sink._items is not items:
                return  # the sink is gone, or was reset after a fork
            batch = sink._take() if items else []
        if batch:
            ok = False
            try:
                sink.send(batch)
                ok = True
            except Failed as exc:
                sink.note_error(str(exc) or type(exc).__name__)
            except Exception as exc:
                sink.note_error(exc)
            sink._settle(batch, ok)
        del sink, batch


_sinks: weakref.WeakSet[QueuedSink] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # The parent's queue and thread are the parent's: the child starts empty, counts too.
    for sink in list(_sinks):
        sink._reset()
        sink.after_fork()


def flush_all(timeout_s: float) -> bool:
    """Wait until every sink of this process settled what it holds (the releases handed to
    the writer threads first); False if `timeout_s` seconds passed first."""
    deadline = time.monotonic() + timeout_s
    release.flush_all(timeout_s / 2)
    return all(sink.flush(max(0.0, deadline - time.monotonic())) for sink in list(_sinks))


def _flush_at_exit() -> None:
    flush_all(FLUSH_AT_EXIT_S)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_flush_at_exit)
