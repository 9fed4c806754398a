"""Request statistics: latency per route, the slowest requests and the slowest sessions.

One `Stats` per process records every finished request (`Stats.record`, on the hot
path: a dict lookup, a histogram increment and a few counters under one short lock)
and answers the admin API's ``/stats`` calls from what it kept. Everything it keeps
is bounded: routes (`max_routes`, then one ``(other)`` route per method), sessions
(`max_sessions`, least recently seen evicted), slow requests (`slow_kept` per
minute of the window and since start).

The recent window is a ring of 15 slots of ``window_s / 15`` seconds (one minute by
default). A request is counted in the current slot only; a slot that leaves the
window is merged into the since-start totals once, one route per later `record`
call, so that no call pays for more than one merge. Reading merges the slots
outside the lock.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import re
import time
from array import array
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from heapq import heappush, heapreplace
from itertools import count
from operator import attrgetter
from typing import Any, NamedTuple, Protocol

from ._sync import new_lock
from .histogram import BOUNDS_MS, Histogram, bucket_of_rank, bucket_range

__all__ = [
    "OTHER",
    "SESSION_RELATIVE_ERROR",
    "RequestRecord",
    "RouteStats",
    "Snapshot",
    "Stats",
    "hash_session",
    "iso",
    "route_of",
]

OTHER = "(other)"
"""The route (and method) that requests beyond `max_routes` are counted under."""

SESSION_RELATIVE_ERROR = 1 / 16
"""The bound on the relative error of a session's ``p95_ms`` (6.25 %)."""

_SLOTS = 15
_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"))
_MAX_METHOD = 16
_MAX_ROUTE = 300  # a longer route template is counted under (other)
_MAX_FOLDED = 200  # route_of() folds at most this many characters of a path
_MAX_PATH_KEPT = 1000  # characters of the path kept with a slow request
_MAX_REASONS = 100
_FOLD_CACHE = 4096
_LIMIT_MAX = 1000
_WINDOWS = ("all", "recent")

# A session's latency: pairs of the histogram's fine buckets (8 sub-buckets per octave),
# 16-bit counters, halved when one would overflow: 217 * 2 bytes.
_SESSION_BUCKETS = 217


class RequestRecord(NamedTuple):
    """What `Stats.record` learns of one finished request. Build it with keywords.

    Attributes:
        request_id: the request id.
        method: the HTTP method.
        path: the path requested (without the query string).
        route: the framework's route template (``/items/{item_id}``), or None to
            group by the path with id-like segments folded (`route_of`).
        status: the response status, or None when no response started.
        duration_ms: until the last body byte, in milliseconds.
        at: when the request started, epoch seconds.
        ttfb_ms: time to the first response byte, in milliseconds, or None.
        user_id: the user, when the app said (`set_user`).
        session_id: the session, when the app said.
        errored: the status was >= 500 or the app raised.
        slow: the request was at least `slow_ms` long.
        released: its buffered records were released.
        reason: why they were released (``"status"``, ``"exception"``, ``"slow"``,
            ``"rule:<id>"``), or None.
        raised: the name of the exception type the app raised, or None.
    """

    request_id: str
    method: str
    path: str
    route: str | None
    status: int | None
    duration_ms: float
    at: float
    ttfb_ms: float | None = None
    user_id: str | None = None
    session_id: str | None = None
    errored: bool = False
    slow: bool = False
    released: bool = False
    reason: str | None = None
    raised: str | None = None


class Finished(Protocol):
    """What `Stats.record` reads of a finished request: a `RequestRecord`, or the
    middleware's own request state (no copy on the hot path)."""

    @property
    def request_id(self) -> str: ...
    @property
    def method(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def route(self) -> str | None: ...
    @property
    def status(self) -> int | None: ...
    @property
    def duration_ms(self) -> float: ...
    @property
    def ttfb_ms(self) -> float | None: ...
    @property
    def user_id(self) -> str | None: ...
    @property
    def session_id(self) -> str | None: ...
    @property
    def errored(self) -> bool: ...
    @property
    def slow(self) -> bool: ...
    @property
    def released(self) -> bool: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def raised(self) -> str | None: ...


class RouteStats(Histogram):
    """The latency histogram of one route, with its error, slow and release counts."""

    __slots__ = ("errors", "releases", "slow")

    def __init__(self) -> None:
        super().__init__()
        self.errors = 0
        self.slow = 0
        self.releases = 0

    def copy(self) -> RouteStats:
        """An independent copy."""
        new = RouteStats.__new__(RouteStats)
        self._copy_into(new)
        new.errors = self.errors
        new.slow = self.slow
        new.releases = self.releases
        return new

    def merge(self, other: Histogram) -> None:
        """Add the counts of `other` to these."""
        super().merge(other)
        if isinstance(other, RouteStats):
            self.errors += other.errors
            self.slow += other.slow
            self.releases += other.releases


class Snapshot(NamedTuple):
    """The statistics of one window, merged: what `Stats.snapshot` returns.

    Attributes:
        window: ``"all"`` (since the `Stats` was made) or ``"recent"``.
        since: the start of the window, epoch seconds.
        routes: per ``(method, route)``, its merged `RouteStats`.
        releases_by_reason: releases per reason.
        routes_tracked: distinct routes kept since start (at most `max_routes`).
        sessions_tracked: sessions in the session table now.
        sessions_evicted: sessions evicted from the table since start.
    """

    window: str
    since: float
    routes: dict[tuple[str, str], RouteStats]
    releases_by_reason: dict[str, int]
    routes_tracked: int
    sessions_tracked: int
    sessions_evicted: int


_Kept = tuple[float, int, RequestRecord]  # (duration_ms, sequence, record), a min-heap entry


class _Slot:
    """What the requests of one slot of the window left: routes, slowest, reasons."""

    __slots__ = ("floor", "number", "reasons", "routes", "slowest")

    def __init__(self, number: int) -> None:
        self.number = number
        # The fastest duration kept once `slowest` is full: a faster request is not kept.
        self.floor = -math.inf
        self.routes: dict[tuple[str, str], RouteStats] = {}
        self.slowest: list[_Kept] = []
        self.reasons: dict[str, int] = {}

    def view(self) -> _Slot:
        """A copy for a reader of a slot that records no longer write to: its routes
        may still move to the totals, but its entries and lists are never changed in
        place, only replaced."""
        new = _Slot(self.number)
        new.routes = self.routes.copy()
        new.slowest = self.slowest
        new.reasons = self.reasons
        return new

    def frozen(self) -> _Slot:
        """A copy of the current slot that later records do not change."""
        new = _Slot(self.number)
        new.routes = {key: entry.copy() for key, entry in self.routes.items()}
        new.slowest = self.slowest[:]
        new.floor = self.floor
        new.reasons = self.reasons.copy()
        return new


class _Session:
    """One session's counts: about 770 bytes with its table entry (see `Stats`)."""

    __slots__ = (
        "counts",
        "errors",
        "last_seen",
        "max_ms",
        "requests",
        "session_id",
        "slow",
        "sum_ms",
        "user_id",
    )

    def __init__(self, session_id: str | None, user_id: str | None) -> None:
        self.session_id = session_id
        self.user_id = user_id
        self.requests = 0
        self.slow = 0
        self.errors = 0
        self.sum_ms = 0.0
        self.max_ms = 0.0
        self.last_seen = 0.0
        self.counts = array("H", bytes(2 * _SESSION_BUCKETS))

    def halve(self) -> None:
        """Halve every counter (a non-zero one stays non-zero): the shape stays."""
        self.counts = array("H", [(n + 1) >> 1 for n in self.counts])

    def row(self) -> dict[str, Any]:
        return {
            "session": self.session_id,
            "user_id": self.user_id,
            "requests": self.requests,
            "slow": self.slow,
            "errors": self.errors,
            "mean_ms": _ms(self.sum_ms / self.requests),
            "p95_ms": _ms(_session_quantile(self.counts, self.max_ms, 0.95)),
            "max_ms": _ms(self.max_ms),
            "last_seen": iso(self.last_seen),
        }


class Stats:
    """Per-route latency, slowest requests and sessions of one process; thread-safe.

    Args:
        max_routes: distinct ``(method, route)`` pairs kept; requests beyond are
            counted under the route ``(other)`` of their method (``(other)`` too
            for a method that is not a standard one).
        max_sessions: sessions kept, the least recently seen evicted first; 0
            keeps none.
        slow_kept: slowest requests kept per slot of the window and since start.
        window_s: the length of the recent window in seconds (15 slots).
        clock: the time in epoch seconds (for tests).

    Memory: a route costs about 3.9 KB (a `Histogram` and its counts) per slot of
    the window it was requested in, plus the same since start: 8 KB for a route
    requested once, 62 KB for one requested every minute; the worst case is
    ``16 * (max_routes + 9)`` histograms (31 MB with 500 routes all requested every
    minute). A session costs about 770 bytes (a 434-byte array of 16-bit counters,
    its object and its table entry) plus its id strings: 10,000 sessions take
    about 8 MB.

    Example::

        stats = Stats()
        stats.record(RequestRecord(request_id="r1", method="GET", path="/items/7",
                                   route="/items/{item_id}", status=200,
                                   duration_ms=12.5, at=time.time()))
        stats.overview()["routes"][0]["p95_ms"]
    """

    def __init__(
        self,
        *,
        max_routes: int = 500,
        max_sessions: int = 10_000,
        slow_kept: int = 50,
        window_s: float = 900.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_routes = _int("max_routes", max_routes, 1)
        self.max_sessions = _int("max_sessions", max_sessions, 0)
        self.slow_kept = _int("slow_kept", slow_kept, 1, _LIMIT_MAX)
        if (
            isinstance(window_s, bool)
            or not isinstance(window_s, (int, float))
            or not 0 < window_s < math.inf
        ):
            raise ValueError(f"invalid 'window_s' {window_s!r}: expected a number of seconds > 0")
        if not callable(clock):
            raise TypeError(f"invalid 'clock' {clock!r}: expected a function returning seconds")
        self.window_s = float(window_s)
        self._slot_s = self.window_s / _SLOTS
        self._clock = clock
        self._lock = new_lock()
        self._seq = count()
        self._folded: dict[str, str] = {}
        self._registry: dict[tuple[str, str], tuple[str, str]] = {}
        self._reasons: set[str] = set()
        self._sessions: OrderedDict[str | tuple[str | None], _Session] = OrderedDict()
        self._evicted = 0
        self._requests = 0
        self._releases = 0
        now = clock()
        self._started = now
        number = math.floor(now / self._slot_s)
        self._slot = _Slot(number)
        self._slot_end = (number + 1) * self._slot_s
        self._slots: deque[_Slot] = deque([self._slot])
        self._retired = _Slot(number)  # the slots that left the window, merged
        self._leaving: deque[_Slot] = deque()  # slots that left it, their routes not all merged

    # -- the hot path -----------------------------------------------------------------

    def record(self, r: Finished) -> None:
        """Count one finished request (called once per request; cheap).

        Raises:
            ValueError: `r.duration_ms` is not a finite number >= 0; nothing is counted.
        """
        route = r.route
        if route is None:
            route = self._folded.get(r.path) or self._fold(r.path)
        key = (r.method, route)
        ms = r.duration_ms
        now = self._clock()
        # One function on purpose: a call more costs a tenth of the budget here.
        with self._lock:
            if now >= self._slot_end:
                self._rotate(now)
            slot = self._slot
            entry = slot.routes.get(key) or self._entry(slot, key)
            index = entry.record(ms)
            self._requests += 1
            errored = r.errored
            slow = r.slow
            if errored:
                entry.errors += 1
            if slow:
                entry.slow += 1
            if r.released:
                self._releases += 1
                entry.releases += 1
                self._count_reason(slot, r.reason)
            if ms > slot.floor:
                self._keep_slow(slot, r, route, now)
            if self._leaving:
                self._retire_one()

            # Sessions: keyed by session id, else by user id; a 1-tuple keeps a user id
            # from ever meeting an equal session id.
            sid = r.session_id
            uid = r.user_id
            if (sid is None and uid is None) or not self.max_sessions:
                return
            skey: str | tuple[str | None] = sid if sid is not None else (uid,)
            sessions = self._sessions
            session = sessions.get(skey)
            if session is None:
                session = self._new_session(skey, sid, uid)
            else:
                sessions.move_to_end(skey)
            session.requests += 1
            if slow:
                session.slow += 1
            if errored:
                session.errors += 1
            session.sum_ms += ms
            if ms > session.max_ms:
                session.max_ms = ms
            session.last_seen = now
            if uid is not None:
                session.user_id = uid
            try:
                session.counts[(index + 1) >> 1] += 1
            except OverflowError:
                session.halve()
                session.counts[(index + 1) >> 1] += 1

    def _keep_slow(self, slot: _Slot, r: Finished, route: str, now: float) -> None:
        """Keep `r` among the slowest of `slot` (it is slower than the fastest kept)."""
        slowest = slot.slowest
        entry = (r.duration_ms, next(self._seq), _kept(r, route, now))
        if len(slowest) < self.slow_kept:
            heappush(slowest, entry)
        else:
            heapreplace(slowest, entry)
        if len(slowest) == self.slow_kept:
            slot.floor = slowest[0][0]

    def _new_session(
        self, key: str | tuple[str | None], sid: str | None, uid: str | None
    ) -> _Session:
        sessions = self._sessions
        if len(sessions) >= self.max_sessions:
            sessions.popitem(last=False)
            self._evicted += 1
        session = sessions[key] = _Session(sid, uid)
        return session

    def _fold(self, path: str) -> str:
        route = route_of(path)
        if len(path) <= _MAX_FOLDED:
            # Plain dict operations: safe without the lock; a race costs one more fold.
            if len(self._folded) >= _FOLD_CACHE:
                self._folded.clear()
            self._folded[path] = route
        return route

    def _entry(self, slot: _Slot, key: tuple[str, str]) -> RouteStats:
        """The entry of `key` in `slot`, made on its first request there."""
        canonical = self._registry.get(key)
        if canonical is None:
            method, route = key
            if (
                len(self._registry) < self.max_routes
                and len(method) <= _MAX_METHOD
                and len(route) <= _MAX_ROUTE
            ):
                canonical = self._registry[key] = key
            else:
                canonical = (method if method in _METHODS else OTHER, OTHER)
        entry = slot.routes.get(canonical)
        if entry is None:
            entry = slot.routes[canonical] = RouteStats()
        return entry

    def _count_reason(self, slot: _Slot, reason: str | None) -> None:
        reason = reason or "unknown"
        if reason not in self._reasons:
            if len(self._reasons) >= _MAX_REASONS:
                reason = OTHER
            self._reasons.add(reason)
        slot.reasons[reason] = slot.reasons.get(reason, 0) + 1

    def _rotate(self, now: float) -> None:
        """Open the slot of `now`; the slots that leave the window go to the totals."""
        number = max(math.floor(now / self._slot_s), self._slot.number + 1)
        self._slot = _Slot(number)
        self._slot_end = (number + 1) * self._slot_s
        self._slots.append(self._slot)
        while self._slots[0].number <= number - _SLOTS:
            self._leave(self._slots.popleft())

    def _leave(self, old: _Slot) -> None:
        """Move a slot out of the window: its slowest and reasons go to the totals now,
        its routes one per later `record` call (`_retire_one`), so that no call pays
        for hundreds of merges."""
        retired = self._retired
        # Copy on write: readers hold the previous lists and dicts outside the lock.
        slowest = heapq.nlargest(self.slow_kept, retired.slowest + old.slowest)
        heapq.heapify(slowest)
        retired.slowest = slowest
        retired.reasons = _added(retired.reasons, old.reasons)
        old.slowest, old.reasons = [], {}
        self._leaving.append(old)
        while len(self._leaving) > _SLOTS:  # too few requests to keep up: catch up now
            while self._leaving[0].routes:
                self._retire_one()
            self._leaving.popleft()

    def _retire_one(self) -> None:
        """Merge one route of the oldest slot that left the window into the totals."""
        old = self._leaving[0]
        if old.routes:
            key, entry = old.routes.popitem()
            routes = self._retired.routes
            kept = routes.get(key)
            if kept is None:
                routes[key] = entry  # the slot is never written again: share its entry
            else:
                # A new entry, not a change in place: a reader may hold the old one.
                routes[key] = merged = kept.copy()
                merged.merge(entry)
        if not old.routes:
            self._leaving.popleft()

    # -- reading ------------------------------------------------------------------------

    def _slots_of(self, window: str) -> tuple[list[_Slot], tuple[int, int, int]]:
        """The slots that make up `window`, safe to read outside the lock, and the numbers
        of routes tracked, sessions tracked and sessions evicted."""
        now = self._clock()
        with self._lock:
            if now >= self._slot_end:
                self._rotate(now)
            slots = [slot.view() for slot in self._slots]
            slots[-1] = self._slot.frozen()
            if window == "all":
                slots += [slot.view() for slot in (self._retired, *self._leaving)]
            sizes = (len(self._registry), len(self._sessions), self._evicted)
        return slots, sizes

    def totals(self) -> dict[str, int]:
        """Requests and releases counted since start (cheap: no merging)."""
        with self._lock:
            return {"requests": self._requests, "releases": self._releases}

    def snapshot(self, window: str = "all") -> Snapshot:
        """The statistics of `window` (``"all"`` or ``"recent"``), merged per route."""
        window = _window(window)
        slots, sizes = self._slots_of(window)
        routes: dict[tuple[str, str], RouteStats] = {}
        reasons: dict[str, int] = {}
        for slot in slots:
            for key, entry in slot.routes.items():
                merged = routes.get(key)
                if merged is None:
                    routes[key] = entry.copy()
                else:
                    merged.merge(entry)
            reasons = _added(reasons, slot.reasons)
        # An entry made for a request whose duration was then refused holds nothing.
        routes = {key: entry for key, entry in routes.items() if entry.max or entry.count}
        if window == "all":
            since = self._started
        else:
            since = max(self._started, (slots[-1].number - _SLOTS + 1) * self._slot_s)
        return Snapshot(window, since, routes, reasons, *sizes)

    def overview(self, window: str = "all") -> dict[str, Any]:
        """Totals and per-route latency of `window`, as ``GET /stats`` answers.

        Routes come slowest first (by ``p95_ms``, then by count). ``routes_overflow``
        is the number of requests counted under an ``(other)`` route; ``histogram``
        counts the requests per latency bucket: ``counts[i]`` are those above
        ``bounds_ms[i - 1]`` and at most ``bounds_ms[i]``, the last one those above
        the last bound.
        """
        snap = self.snapshot(window)
        rows = [_route_row(key, entry) for key, entry in snap.routes.items()]
        rows.sort(key=lambda row: (-row["p95_ms"], -row["count"], row["route"], row["method"]))
        coarse = [0] * (len(BOUNDS_MS) + 1)
        for entry in snap.routes.values():
            coarse = [a + b for a, b in zip(coarse, entry.bucket_counts(), strict=True)]
        return {
            "window": snap.window,
            "since": iso(snap.since),
            "requests": sum(row["count"] for row in rows),
            "errors": sum(row["errors"] for row in rows),
            "slow": sum(row["slow"] for row in rows),
            "releases": sum(row["releases"] for row in rows),
            "releases_by_reason": dict(sorted(snap.releases_by_reason.items())),
            "routes": rows,
            "routes_overflow": sum(row["count"] for row in rows if row["route"] == OTHER),
            "routes_tracked": snap.routes_tracked,
            "histogram": {"bounds_ms": [float(b) for b in BOUNDS_MS], "counts": coarse},
        }

    def slowest(self, limit: int = 20, window: str = "recent") -> dict[str, Any]:
        """The `limit` slowest requests of `window`, slowest first (``GET /stats/slow``).

        At most `slow_kept` of them: the slowest since start (``"all"``) or of the
        recent window (``"recent"``, the last `window_s` seconds to within one slot).
        """
        limit = min(_limit(limit), self.slow_kept)
        window = _window(window)
        # Each slot keeps its own slow_kept slowest: the union holds the window's top
        # slow_kept exactly, but not always the ones after them.
        kept = (entry for slot in self._slots_of(window)[0] for entry in slot.slowest)
        return {
            "window": window,
            "requests": [_request_row(entry[2]) for entry in heapq.nlargest(limit, kept)],
        }

    def sessions(self, limit: int = 20, window: str = "recent") -> dict[str, Any]:
        """The `limit` slowest sessions, by ``max_ms``, slowest first (``GET /stats/sessions``).

        There is one session table since start (the `max_sessions` most recently
        seen); ``"recent"`` lists the sessions seen in the last `window_s` seconds,
        ``"all"`` every session in the table. The counts of a session are since it
        entered the table. ``p95_ms`` is within 6.25 % (`SESSION_RELATIVE_ERROR`).
        """
        limit = _limit(limit)
        window = _window(window)
        now = self._clock()
        horizon = now - self.window_s if window == "recent" else -math.inf
        with self._lock:
            chosen = heapq.nlargest(
                limit, self._seen_since(horizon), key=attrgetter("max_ms", "requests")
            )
            rows = [_copy_session(session) for session in chosen]
            tracked, evicted = len(self._sessions), self._evicted
        return {
            "window": window,
            "sessions": [session.row() for session in rows],
            "tracked": tracked,
            "evicted": evicted,
        }

    def _seen_since(self, horizon: float) -> Iterator[_Session]:
        for session in reversed(self._sessions.values()):
            if session.last_seen <= horizon:
                return
            yield session


def route_of(path: str) -> str:
    """The route a path is grouped under when the framework gives no template.

    Id-like segments become ``{id}``: numbers, UUIDs, hex strings of 16 characters
    or more (or of 8 or more with a digit), tokens of 20 characters or more with a
    digit, e-mail addresses. The query string is dropped and only the first 200
    characters are kept (``...`` marks a cut).

    Example::

        route_of("/users/42/orders/0f8fad5b-d9cb-469f-a165-70867728950e")
        # '/users/{id}/orders/{id}'
    """
    path = path.partition("?")[0] or "/"
    if len(path) > _MAX_FOLDED:
        return _ID_SEGMENT.sub("{id}", path[:_MAX_FOLDED]) + "..."
    return _ID_SEGMENT.sub("{id}", path)


_ID_SEGMENT = re.compile(
    r"(?<=/)(?:"
    r"\d+"
    r"|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|[0-9a-fA-F]{16,}"
    r"|(?=[a-fA-F]*[0-9])[0-9a-fA-F]{8,}"
    r"|(?=[^/]*[0-9])[\w.~=%+-]{20,}"
    r"|[^/@]+@[^/]+"
    r")(?=/|$)"
)


def hash_session(value: str) -> str:
    """A short stable pseudonym for a session cookie value: sha256, first 16 hex digits.

    Use it to give `RequestRecord.session_id` without keeping the cookie itself
    (which would let anyone who reads the admin API take over the session). The
    same value gives the same pseudonym in every worker and process, so their
    statistics agree; no salt is added.

    Example::

        session_id = hash_session(request.cookies["session"])
    """
    if not isinstance(value, str):
        raise TypeError(f"invalid session value {type(value).__name__}: expected a string")
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def iso(seconds: float) -> str:
    """Epoch `seconds` as ISO 8601 UTC with milliseconds: ``2026-11-23T14:00:00.000Z``."""
    moment = datetime.fromtimestamp(seconds, tz=timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- helpers ----------------------------------------------------------------------------


def _kept(r: Finished, route: str, now: float) -> RequestRecord:
    """`r` as kept among the slowest: a `RequestRecord` with its grouping route and a
    bounded path; `at` (its start) is `now` less its duration unless `r` tells it."""
    path = r.path if len(r.path) <= _MAX_PATH_KEPT else r.path[:_MAX_PATH_KEPT] + "..."
    at = r.at if isinstance(r, RequestRecord) else now - r.duration_ms / 1000.0
    return RequestRecord(
        request_id=r.request_id,
        method=r.method,
        path=path,
        route=r.route if r.route is not None else route,
        status=r.status,
        duration_ms=r.duration_ms,
        at=at,
        ttfb_ms=r.ttfb_ms,
        user_id=r.user_id,
        session_id=r.session_id,
        errored=r.errored,
        slow=r.slow,
        released=r.released,
        reason=r.reason,
        raised=r.raised,
    )


def _added(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    total = a.copy()
    for name, n in b.items():
        total[name] = total.get(name, 0) + n
    return total


def _copy_session(session: _Session) -> _Session:
    new = _Session.__new__(_Session)
    for name in _Session.__slots__:
        setattr(new, name, getattr(session, name))
    new.counts = array("H", session.counts)
    return new


def _session_quantile(counts: array[int], maximum: float, q: float) -> float:
    """Nearest-rank quantile of a session's counters (pairs of fine buckets)."""
    total = sum(counts)
    if total == 0:
        return 0.0
    index = bucket_of_rank(counts, max(1, math.ceil(q * total)))
    if index == 0:
        low, high = bucket_range(0)
    elif index == _SESSION_BUCKETS - 1:
        return maximum
    else:
        low, high = bucket_range(2 * index - 1)[0], bucket_range(2 * index)[1]
    return min((low + high) / 2, maximum)


def _route_row(key: tuple[str, str], entry: RouteStats) -> dict[str, Any]:
    count = entry.count
    return {
        "method": key[0],
        "route": key[1],
        "count": count,
        "errors": entry.errors,
        "slow": entry.slow,
        "releases": entry.releases,
        "p50_ms": _ms(entry.quantile(0.5)),
        "p95_ms": _ms(entry.quantile(0.95)),
        "p99_ms": _ms(entry.quantile(0.99)),
        "max_ms": _ms(entry.max),
        "mean_ms": _ms(entry.sum / count if count else 0.0),
    }


def _request_row(r: RequestRecord) -> dict[str, Any]:
    return {
        "request_id": r.request_id,
        "method": r.method,
        "path": r.path,
        "route": r.route,
        "status": r.status,
        "duration_ms": _ms(r.duration_ms),
        "ttfb_ms": None if r.ttfb_ms is None else _ms(r.ttfb_ms),
        "user_id": r.user_id,
        "session_id": r.session_id,
        "at": iso(r.at),
        "released": r.released,
        "reason": r.reason,
        "errored": r.errored,
        "raised": r.raised,
    }


def _ms(value: float) -> float:
    return round(float(value), 3)


def _int(name: str, value: object, low: int, high: int | None = None) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < low
        or (high is not None and value > high)
    ):
        allowed = f"from {low} to {high}" if high is not None else f">= {low}"
        raise ValueError(f"invalid {name!r} {value!r}: expected an integer {allowed}")
    return value


def _limit(value: object) -> int:
    return _int("limit", value, 1, _LIMIT_MAX)


def _window(value: object) -> str:
    if value not in _WINDOWS:
        raise ValueError(f"invalid 'window' {value!r}: expected 'all' or 'recent'")
    return str(value)
