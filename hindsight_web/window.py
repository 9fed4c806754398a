"""The hindsight window: each process's recent requests, kept after they end.

Every request that ends goes into its process's window with its facts (the
`RequestState`) and, when it was not released, its kept records, so that what
was discarded can still be found and released a minute later. The window holds
requests for `window_s` seconds within `window_bytes` (each request counts its
records' estimated bytes plus `STATE_BYTES`); the oldest go first, and those
that go before their time for lack of room are counted (`evicted`).

Adding a request costs the request path an append under a lock, nothing more
(its records let go of their contexts when it ended: `context.let_go`). The
background thread then *settles* what was added: a kept record's ``exc_info``
(a traceback pins its frames and their locals) is let go, its text stays; and it
drops requests older than `window_s`.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from . import _sync
from ._sync import new_lock
from .buffer import EXC_INFO, MORE, NO_RECORDS, Entry, entry_size
from .context import RequestState

__all__ = ["RECORDS_BYTES", "STATE_BYTES", "Window"]

_FRESH_KEPT = 10_000
_GONE = -1  # the `nbytes` of a request that left the window

STATE_BYTES = 800
"""Estimated bytes of one request's facts in the window (its state object, request id,
path, times and identity), besides its records (measured: 790 with a user id)."""

RECORDS_BYTES = 850
"""Estimated bytes of the container of a request's records (a deque, and the cells of
their contexts), counted with its records when it has any."""


class Window:
    """The recent requests of one process, oldest first; thread-safe.

    Args:
        window_s: seconds a request is kept after it ended.
        window_bytes: the most bytes the kept requests may hold together.

    Attributes:
        used: bytes held now (estimated).
        evicted: requests dropped for lack of room before `window_s` was up.
    """

    def __init__(self, window_s: float, window_bytes: int) -> None:
        self.window_s = window_s
        self.window_bytes = window_bytes
        self.used = 0
        self.evicted = 0
        self._states: deque[RequestState] = deque()
        # Added, not settled yet (bounded: a thread held up long leaves the rest as is).
        self._fresh: deque[RequestState] = deque(maxlen=_FRESH_KEPT)
        self._lock = new_lock()
        self._forks = _sync.forks

    def __len__(self) -> int:
        return len(self._states)

    def add(self, state: RequestState) -> None:
        """Keep a request that ended (its `at` set), with its records; the request path."""
        records = state.records
        if records:
            state.nbytes += RECORDS_BYTES
        else:
            state.records = NO_RECORDS  # an empty deque holds 760 bytes: share one
        with self._lock:
            if self._forks != _sync.forks:
                self._forked()
            self._states.append(state)
            if records:
                self._fresh.append(state)
            self.used += state.nbytes + STATE_BYTES
            if self.used > self.window_bytes:
                self._evict()

    def _evict(self) -> None:
        states = self._states
        while self.used > self.window_bytes and states:
            self._forget(states.popleft())
            self.evicted += 1

    def _forget(self, gone: RequestState) -> None:
        """Count out a request that left the window (`nbytes` -1 marks it: a release of
        it from an older snapshot counts nothing out again)."""
        self.used -= gone.nbytes + STATE_BYTES
        gone.nbytes = _GONE

    def settle(self, now: float | None = None) -> None:
        """Let go of the tracebacks the records of newly added requests hold (their text
        stays) and forget requests older than `window_s`; the background thread's work."""
        with self._lock:
            self._forked()
            fresh, self._fresh = self._fresh, deque(maxlen=_FRESH_KEPT)
        for state in fresh:
            records = state.records
            if not any(map(_holds_traceback, records)):
                continue
            settled = deque(map(_settled, records))
            with self._lock:
                if state.records is records:  # not taken by a release meanwhile
                    state.records = settled
        limit = (time.time() if now is None else now) - self.window_s
        with self._lock:
            states = self._states
            while states and states[0].at < limit:
                self._forget(states.popleft())

    def _forked(self) -> None:
        """Forget the parent's requests when this runs in a forked child (under the
        lock): a worker answers for its own only."""
        if self._forks != _sync.forks:
            self._forks = _sync.forks
            self._states.clear()
            self._fresh.clear()
            self.used = 0

    def states(self) -> list[RequestState]:
        """The requests kept now, oldest first (a copy: reading it holds no lock)."""
        with self._lock:
            self._forked()
            return list(self._states)

    def take(self, state: RequestState) -> tuple[deque[Entry], int] | None:
        """Take the records of `state` to release them, and mark it released: the records
        and how many the release limit had held back. None when it was released already
        (by its own end, or by another call); a release the limit held back
        (`suppressed`) was not: its records are taken now."""
        with self._lock:
            if state.released and not state.suppressed:
                return None
            taken = (state.records, state.suppressed)
            state.released, state.suppressed = True, 0
            state.records = NO_RECORDS
            if state.nbytes != _GONE:
                self.used -= state.nbytes
                state.nbytes = 0
        return taken

    def put_back(self, state: RequestState, records: deque[Entry], suppressed: int) -> None:
        """Undo `take`: the release could not be made (the writer's queue stayed full)."""
        with self._lock:
            state.records, state.suppressed = records, suppressed
            state.released = bool(suppressed)
            if state.nbytes != _GONE:
                state.nbytes = sum(map(entry_size, records)) + (RECORDS_BYTES if records else 0)
                self.used += state.nbytes

    def find(self, request_id: str) -> RequestState | None:
        """The newest kept request with this id, or None."""
        for state in reversed(self.states()):
            if state.request_id == request_id:
                return state
        return None


def _holds_traceback(entry: Entry) -> bool:
    more = entry[MORE]
    return more is not None and more[EXC_INFO] is not None


def _settled(entry: Entry) -> Entry:
    """`entry` without its ``exc_info`` (the traceback's frames; its text stays)."""
    if not _holds_traceback(entry):
        return entry
    more: Any = entry[MORE]
    return (*entry[:MORE], (*more[:EXC_INFO], None))
