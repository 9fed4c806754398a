"""Bounded per-request buffers, the byte budget they share, and the counts of what is kept.

A buffered record is a plain tuple (the hot path builds it inline) read by the
field names below; its cost in bytes is estimated as a fixed overhead plus the
lengths of its texts. Each request keeps at most `max_records` records and
`max_bytes` bytes (the most recent ones); all live requests together stay
within one `Budget`, which grants each request what it uses, a little ahead. What
does not fit is dropped and counted.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from . import _sync, errors
from ._sync import new_lock
from .context import RequestState
from .messages import text

# An entry's fields, by position.
LOGGER = 0  # the logging.Logger called
LEVEL = 1
MSG = 2  # the call's msg (frozen unless a str): formatted only when released or read
ARGS = 3  # the call's args, frozen (as given when they cannot change); () when none
TIME_NS = 4
PATHNAME = 5  # the caller, as findCaller gives it at log time
LINENO = 6
FUNC = 7
THREAD = 8  # the threading.Thread that logged
CONTEXT = 9  # a cell: [the contextvars.Context of the log call], [None] once let go
MORE = 10  # None for a plain call, else a `More` tuple

# The fields of MORE, by position: what a plain call does not have.
EXC_TEXT = 0  # the traceback as text, or None
STACK = 1  # the stack_info text, or None
EXTRA = 2  # the call's `extra`, frozen, or None
EXC_INFO = 3  # the (type, value, traceback) of the call, or None
NO_MORE = (None, None, None, None)  # MORE of a plain call

Entry = tuple[Any, ...]

# The records of an ended request that has none: one shared deque that holds nothing
# (an append to it is dropped), instead of an empty deque per request.
NO_RECORDS: deque[Entry] = deque(maxlen=0)
More = tuple[Any, ...]

# Estimated bytes of one entry besides its texts: the tuple, the time and lineno
# ints, the args tuple, the deque slot.
ENTRY_OVERHEAD = 260
# Arguments kept as given that hold no text (a str argument counts as its length;
# anything else counts as the formatted message).
SCALARS = frozenset((int, float, bool, type(None), complex))
# The most a request is granted ahead of what it uses, and the least.
CHUNK = 64 * 1024
_FIRST = 4 * 1024


def entry_size(entry: Entry) -> int:
    """Estimated bytes held by one buffered entry.

    The level methods compute the same for a plain call in place (`capture`):
    the overhead, the format string, and the str arguments, or the formatted
    message when another kind of argument is kept.
    """
    size = call_size(entry[MSG], entry[ARGS])
    more = entry[MORE]
    if more is not None:
        exc_text, stack, extra = more[EXC_TEXT], more[STACK], more[EXTRA]
        if exc_text is not None:
            size += len(exc_text)
        if stack is not None:
            size += len(stack)
        if extra is not None:
            size += 64 * len(extra)
    return size


def call_size(msg: object, args: Any) -> int:
    """Estimated bytes of an entry of a plain call (`msg`, `args`): the overhead, the
    format string and the str arguments, or the formatted message when another kind of
    argument is kept."""
    size = ENTRY_OVERHEAD
    if type(msg) is str:
        size += len(msg)
        for arg in args:
            kind = type(arg)
            if kind is str:
                size += len(arg)
            elif kind not in SCALARS:
                return ENTRY_OVERHEAD + len(text(msg, args))
        return size
    return size + len(text(msg, args))


class Budget:
    """A byte budget shared by all live request buffers of one Hindsight.

    A request is granted what it uses plus a margin that grows with it (4 KiB,
    then as much as it holds, up to 64 KiB): a small request holds little of the
    budget, so many concurrent ones fit, and a large one asks rarely.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self._used = 0
        self.exhausted = False  # since it last ran out, until bytes come back
        self._lock = new_lock()
        self._forks = _sync.forks

    @property
    def used(self) -> int:
        """Bytes reserved now by the live requests of this process."""
        with self._lock:
            return self._in_use()

    def _in_use(self) -> int:
        if self._forks != _sync.forks:  # a forked child: the parent's requests are not here
            self._forks, self._used = _sync.forks, 0
        return self._used

    def reserve(self, state: RequestState) -> None:
        """Grant `state` more bytes, up to what it needs and may have.

        Under the budget's lock, so that threads sharing one request (a thread
        pool, a copied context) never lose a reservation.
        """
        with self._lock:
            if state.nbytes <= state.reserved:
                return
            ahead = min(CHUNK, max(_FIRST, state.reserved))
            wanted = min(state.nbytes - state.reserved + ahead, state.max_bytes - state.reserved)
            granted = min(wanted, self.total - self._in_use())
            if granted > 0:
                self._used += granted
                state.reserved += granted
            report = granted < wanted and not self.exhausted
            if report:
                self.exhausted = True
        if report:
            _report_exhausted(self)

    def give_back(self, nbytes: int) -> None:
        """Take back `nbytes` reserved by a request that no longer holds them."""
        with self._lock:
            self._used = max(0, self._in_use() - nbytes)
            if self.exhausted and self._used < self.total // 2:
                self.exhausted = False  # reported again if it runs out again

    def release(self, state: RequestState) -> None:
        """Take back everything `state` reserved."""
        reserved, state.reserved = state.reserved, 0
        if reserved:
            self.give_back(reserved)


def _report_exhausted(budget: Budget) -> None:
    try:
        errors.logger.warning(
            "hindsight-web: the byte budget of request buffers (max_total_bytes=%d) is used "
            "up: records are dropped (and counted as records_dropped) until requests and "
            "releases waiting to be written give bytes back; this is said again only after "
            "it recovered",
            budget.total,
        )
    except Exception:
        pass  # a handler that fails: the drops are counted all the same


class Counts:
    """What one Hindsight kept, wrote and dropped since start; thread-safe.

    Attributes:
        records_captured: records kept in buffers or written live by detail mode.
        records_released: records written by releases and by detail mode.
        records_dropped: records dropped: a buffer or the budget was full, or the
            release queue was.
        records_suppressed: records of releases held back by `max_releases_per_s`.
        releases_suppressed: releases held back by `max_releases_per_s` (their
            summaries are written).
        releases_dropped: releases lost because the release queue was full.
    """

    NAMES = (
        "records_captured",
        "records_released",
        "records_dropped",
        "records_suppressed",
        "releases_suppressed",
        "releases_dropped",
    )

    def __init__(self) -> None:
        self._lock = new_lock()
        self._counts = dict.fromkeys(self.NAMES, 0)

    def add(self, **counts: int) -> None:
        """Add to the named counts."""
        with self._lock:
            for name, n in counts.items():
                self._counts[name] += n

    def snapshot(self) -> dict[str, int]:
        """Every count now."""
        with self._lock:
            return dict(self._counts)


def keep(state: RequestState, entry: Entry) -> None:
    """Append `entry` to the request's buffer, dropping the oldest entries over the limits."""
    records = state.records
    records.append(entry)
    state.nbytes += entry_size(entry)
    # `reserved` never exceeds `max_bytes`, so this one test covers both byte limits.
    if state.nbytes > state.reserved or len(records) > state.max_records:
        make_room(state)


def make_room(state: RequestState) -> None:
    """Reserve more of the shared budget if the request may have it, else drop the oldest."""
    if state.nbytes > state.reserved:
        state.budget.reserve(state)
    records = state.records
    dropped = 0
    while records and (len(records) > state.max_records or state.nbytes > state.reserved):
        state.nbytes -= entry_size(records.popleft())
        dropped += 1
    state.dropped += dropped


def release_memory(state: RequestState) -> None:
    """Empty the buffer and return its reserved bytes to the budget."""
    state.records.clear()
    state.nbytes = 0
    if state.reserved:
        state.budget.release(state)
