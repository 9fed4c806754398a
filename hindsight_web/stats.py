"""Request statistics of one process: latency per route, the slowest requests and sessions.

One `Stats` per process records every finished request (`Stats.record`, on the hot
path: a dict lookup, a histogram increment and a few counters under one short lock),
exports what it kept for other processes to merge (`Stats.export`, see
`hindsight_web.stats_view`) and answers the admin API's ``/stats`` calls for itself
alone through the same view. Everything it keeps is bounded: routes, sessions (see
`Stats`), slow requests (`slow_kept` per slot of the window and since start).

No key that a client chooses can take or keep a row that the app's own traffic
needs: route templates come before folded paths, requests that matched no route
share one ``(unmatched)`` row per method, made-up methods are counted under
``(other)``, and sessions known only by a cookie hash never evict the sessions the
app identified.

The recent window is a ring of 15 slots of ``window_s / 15`` seconds (one minute by
default). A request is counted in the current slot only; a slot that leaves the
window is merged into the since-start totals once, one route per later `record`
call, so that no call pays for more than one merge. Reading merges the slots
outside the lock.
"""

from __future__ import annotations

import heapq
import math
import re
import time
from array import array
from collections import OrderedDict, deque
from collections.abc import Iterator, Mapping
from heapq import heappush, heapreplace
from itertools import chain, count
from operator import attrgetter
from typing import Any, NamedTuple, Protocol

from ._sync import new_lock
from .context import RequestState
from .histogram import PAIR_BUCKETS, RouteStats
from .redact import hash_session
from .stats_view import (
    OTHER,
    SESSIONS_EXPORTED,
    SLOTS,
    Export,
    Part,
    SessionCounts,
    Snapshot,
    StatsView,
    add_counts,
    iso,
    merge_routes,
)

__all__ = [
    "MAX_TAG_VALUES",
    "METHODS",
    "OTHER",
    "SESSION_RELATIVE_ERROR",
    "UNMATCHED",
    "Finished",
    "RequestRecord",
    "RouteStats",
    "Snapshot",
    "Stats",
    "hash_session",
    "iso",
    "route_of",
]

UNMATCHED = "(unmatched)"
"""The route of a request that matched no route of the app: give it as
`RequestRecord.route` when the framework said so. Such requests share one row per
method, whatever their path."""

METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"))
"""The standard methods; any other is counted under the method ``(other)``."""

MAX_TAG_VALUES = 1000
"""Field values of ``tag`` rules counted apart (``GET /stats/tags``); the others count
under ``(other)``."""

SESSION_RELATIVE_ERROR = 1 / 16
"""The bound on the relative error of a session's ``p95_ms`` (6.25 %)."""

_SLOTS = SLOTS
_MAX_METHOD_KEPT = 16  # characters of the method kept with a slow request
_MAX_ROUTE = 300  # a longer route template is counted under (other)
_MAX_FOLDED = 200  # route_of() folds at most this many characters of a path
_MAX_PATH_KEPT = 1000  # characters of the path kept with a slow request
_MAX_REASONS = 100
_BUILT_IN_REASONS = frozenset(("exception", "status", "slow", "retro", "unknown"))
_FOLD_CACHE = 4096
_LIMIT_MAX = 1000
_WINDOWS = ("all", "recent")


class RequestRecord(NamedTuple):
    """What `Stats.record` learns of one finished request. Build it with keywords.

    Attributes:
        request_id: the request id.
        method: the HTTP method.
        path: the path requested (without the query string).
        route: the framework's route template (``/items/{item_id}``); `UNMATCHED`
            when the framework said that no route matched; or None when the
            framework is unknown: the request is grouped by its path with id-like
            segments folded (`route_of`), or as unmatched when its status is 404.
        status: the response status, or None when no response started.
        duration_ms: until the last body byte, in milliseconds.
        at: when the request started, epoch seconds.
        ttfb_ms: time to the first response byte, in milliseconds, or None.
        user_id: the user, when the app said (`set_user`).
        session_id: the session, when the app said, or a hash of the session cookie.
        errored: the status was >= 500 or the app raised.
        slow: the request was at least `slow_ms` long.
        released: its buffered records were released.
        reason: why they were released (``"status"``, ``"exception"``, ``"slow"``,
            ``"rule:<id>"``), or None.
        raised: the name of the exception type the app raised, or None.
        session_from_cookie: True when `session_id` is only a hash of a cookie the
            client sent (so the client chose it), False when the app gave it.
        tagged: the fields ``tag`` rules added (name to value), or None.
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
    session_from_cookie: bool = False
    tagged: Mapping[str, str] | None = None


class Finished(Protocol):
    """What `Stats.record` reads of a finished request: a `RequestRecord`, or the
    middleware's own request state (no copy on the hot path). See `RequestRecord`
    for the meaning of each attribute.

    ``session_from_cookie`` is read too when the object has it (False when not), so
    that a request state made before the attribute existed still type-checks.
    """

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
    @property
    def tagged(self) -> Mapping[str, str] | None: ...


Facts = RequestState | Finished
"""What `Stats.record` takes: the middleware's own request state is named apart, so that a
compiled build reads its attributes directly, not by name."""

_Kept = tuple[float, int, RequestRecord]  # (duration_ms, sequence, record), a min-heap entry


class _Slot:
    """What the requests of one slot of the window left: routes, slowest, reasons."""

    __slots__ = ("floor", "number", "reasons", "routes", "slowest", "total")

    def __init__(self, number: int) -> None:
        self.number = number
        # The fastest duration kept once `slowest` is full: a faster request is not kept.
        self.floor = -math.inf
        self.routes: dict[tuple[str, str], RouteStats] = {}
        self.slowest: list[_Kept] = []
        self.reasons: dict[str, int] = {}
        # Its routes merged, made once it is closed (nothing records into it then).
        self.total: RouteStats | None = None

    def view(self) -> _Slot:
        """A copy for a reader of a slot that records no longer write to: its routes
        may still move to the totals, but its entries and lists are never changed in
        place, only replaced."""
        new = _Slot(self.number)
        new.routes = self.routes.copy()
        new.slowest = self.slowest
        new.reasons = self.reasons
        return new

    def frozen(self, routes: bool = True) -> _Slot:
        """A copy of the current slot that later records do not change (without its
        routes when `routes` is False)."""
        new = _Slot(self.number)
        if routes:
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
        # 16-bit counters per pair of fine histogram buckets, halved when one would
        # overflow: 217 * 2 bytes.
        self.counts = array("H", bytes(2 * PAIR_BUCKETS))

    def halve(self) -> None:
        """Halve every counter (a non-zero one stays non-zero): the shape stays."""
        self.counts = array("H", [(n + 1) >> 1 for n in self.counts])

    def state(self) -> _SessionState:
        """Its counts as they are now (take it under the lock; cheap: the counters are
        copied as bytes)."""
        return (
            self.session_id,
            self.user_id,
            self.requests,
            self.slow,
            self.errors,
            self.sum_ms,
            self.max_ms,
            self.last_seen,
            array("H", self.counts),
        )


_SessionState = tuple[str | None, str | None, int, int, int, float, float, float, "array[int]"]
_SessionKey = str | tuple[str | None]
_RANK = attrgetter("max_ms", "requests", "last_seen")  # slowest sessions first


class Stats:
    """Per-route latency, slowest requests and sessions of one process; thread-safe.

    Args:
        max_routes: rows of the route table, one per ``(method, route)``; see below.
        max_sessions: sessions kept; 0 keeps none. See below.
        slow_kept: slowest requests kept per slot of the window and since start.
        window_s: the length of the recent window in seconds (15 slots).
        clock: the time in epoch seconds (for tests).

    Routes. A row is keyed by the method (a method that is not one of `METHODS`
    counts as ``(other)``) and the route. A route template of the framework (the
    app defines a finite set) always gets a row: when the table is full, it takes
    the row of the least recently seen folded path (to within one slot of the
    window). A folded path (`route_of`: the framework is unknown, so the client
    chose the path) takes only a free row, else it is counted under ``(METHOD,
    (other))``. Requests that matched no route (`UNMATCHED`, or a 404 when the
    framework is unknown) are counted under ``(METHOD, (unmatched))``. A folded
    path whose row was taken keeps what it counted under its own key (the totals
    and every counter stay exact and only grow); its later requests go to
    ``(other)``. So the table holds at most ``max_routes`` keys; since start there
    are at most ``2 * max_routes + 18`` rows (the 18: ``(other)`` and
    ``(unmatched)`` per method), since a row is taken at most once.

    Sessions. A session is keyed by its session id, else its user id. A session
    known only by a hash of the client's cookie (``session_from_cookie`` and no
    user) holds at most ``max_sessions // 2`` rows and evicts only such sessions,
    least recently seen first; it finds no row when the app's sessions fill the
    table. A session the app identified (`set_user`) takes the row of the least
    recently seen cookie-only session when the table is full, else of the least
    recently seen identified one; a cookie-only session whose user becomes known
    becomes an identified one. Evictions are counted.

    Memory: a route costs about 3.9 KB (a `Histogram` and its counts) per slot of
    the window it was requested in, plus the same since start: 8 KB for a route
    requested once, 62 KB for one requested every minute. The worst case is
    ``16 * (max_routes + 18) + 2 * max_routes`` histograms (36 MB with 500 routes
    all requested every minute), plus the slots that left the window and are being
    merged (usually one), plus one histogram per slot with all its routes merged
    (what ``GET /stats/timeline`` shows). A session costs about 770 bytes (a
    434-byte array of 16-bit counters, its object and its table entry) plus its id
    strings: 10,000 sessions take about 8 MB. The cache of folded paths holds at most 4096 paths of
    at most 200 characters.

    Example::

        stats = Stats()
        stats.record(RequestRecord(request_id="r1", method="GET", path="/items/7",
                                   route="/items/{item_id}", status=200,
                                   duration_ms=12.5, at=time.time()))
        stats.overview()["routes"][0]["p95_ms"]
        body = stats_view.encode(stats.export(hs.counters()))  # to merge elsewhere
    """

    def __init__(
        self,
        *,
        max_routes: object = 500,
        max_sessions: object = 10_000,
        slow_kept: object = 50,
        window_s: object = 900.0,
        clock: object = time.time,
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
        # The route table: every key with a row; of them, the folded paths (client
        # chosen), least recently seen first.
        self._registry: set[tuple[str, str]] = set()
        self._chosen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._reasons: set[str] = set()
        # Sessions the app identified, and those known only by a cookie hash; each
        # least recently seen first.
        self._sessions: OrderedDict[_SessionKey, _Session] = OrderedDict()
        self._cookies: OrderedDict[_SessionKey, _Session] = OrderedDict()
        self._max_cookies = self.max_sessions // 2
        self._evicted = 0
        self._tags: dict[str, dict[str, list[int]]] = {}
        self._tag_values = 0
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

    def record(self, r: Facts) -> None:
        """Count one finished request (called once per request; cheap).

        Raises:
            ValueError: `r.duration_ms` is not a finite number >= 0; nothing is counted.
        """
        route = r.route
        if route is None:
            # Unknown framework: a 404 matched nothing; else the path, folded (cached).
            path = r.path
            route = UNMATCHED if r.status == 404 else self._folded.get(path) or self._fold(path)
        key = (r.method, route)
        ms = r.duration_ms
        now = self._clock()
        # One function on purpose: a call more costs a tenth of the budget here. A
        # key the table does not hold as it is (a new key, a made-up method, a full
        # table) misses `slot.routes` and goes through `_entry`.
        with self._lock:
            if now >= self._slot_end:
                self._rotate(now)
            slot = self._slot
            entry = slot.routes.get(key) or self._entry(slot, key, r.route is not None)
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
            tagged = r.tagged
            if tagged is not None:
                self._count_tags(tagged, errored, slow)

            # Sessions: keyed by session id, else by user id; a 1-tuple keeps a user id
            # from ever meeting an equal session id.
            sid = r.session_id
            uid = r.user_id
            if (sid is None and uid is None) or not self.max_sessions:
                return
            skey: _SessionKey = sid if sid is not None else (uid,)
            sessions = self._sessions
            session = sessions.get(skey)
            if session is not None:
                sessions.move_to_end(skey)
            else:
                cookies = self._cookies
                session = cookies.get(skey)
                if session is not None and uid is None:
                    cookies.move_to_end(skey)
                else:
                    session = self._other_session(r, skey, sid, uid)
                    if session is None:
                        return
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

    def _count_tags(self, tagged: Mapping[str, str], errored: bool, slow: bool) -> None:
        """Count a request with the fields `tagged` (by ``tag`` rules): per name and value,
        at most `MAX_TAG_VALUES` in all; the values beyond count under ``(other)``."""
        tags = self._tags
        for name, value in tagged.items():
            values = tags.get(name)
            if values is None:
                if self._tag_values >= MAX_TAG_VALUES:
                    continue
                values = tags[name] = {}
            counts = values.get(value)
            if counts is None:
                if self._tag_values >= MAX_TAG_VALUES:
                    value = OTHER
                    counts = values.get(value)
                if counts is None:
                    counts = values[value] = [0, 0, 0]
                    self._tag_values += 1
            counts[0] += 1
            counts[1] += errored
            counts[2] += slow

    def _keep_slow(self, slot: _Slot, r: Facts, route: str, now: float) -> None:
        """Keep `r` among the slowest of `slot` (it is slower than the fastest kept)."""
        slowest = slot.slowest
        entry = (r.duration_ms, next(self._seq), _kept(r, route, now))
        if len(slowest) < self.slow_kept:
            heappush(slowest, entry)
        else:
            heapreplace(slowest, entry)
        if len(slowest) == self.slow_kept:
            slot.floor = slowest[0][0]

    def _other_session(
        self, r: Facts, key: _SessionKey, sid: str | None, uid: str | None
    ) -> _Session | None:
        """The session of `key` when it is neither an identified one nor a cookie-only
        one seen without its user: a cookie-only one whose user is now known (it
        becomes identified), or a new one; None when a cookie-only one finds no row."""
        cookies = self._cookies
        sessions = self._sessions
        session = cookies.pop(key, None)
        if session is not None:
            sessions[key] = session
            return session
        # getattr: see `Finished`; read only here, off the path of known sessions.
        if uid is None and getattr(r, "session_from_cookie", False):
            if len(cookies) >= self._max_cookies or len(cookies) + len(sessions) >= (
                self.max_sessions
            ):
                if not cookies:
                    return None
                cookies.popitem(last=False)
                self._evicted += 1
            session = cookies[key] = _Session(sid, None)
            return session
        if len(sessions) + len(cookies) >= self.max_sessions:
            (cookies or sessions).popitem(last=False)
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

    def _entry(self, slot: _Slot, key: tuple[str, str], template: bool) -> RouteStats:
        """The entry of `key` in `slot`, made on its first request there."""
        row = self._row(key, template)
        entry = slot.routes.get(row)
        if entry is None:
            entry = slot.routes[row] = RouteStats()
        return entry

    def _row(self, key: tuple[str, str], template: bool) -> tuple[str, str]:
        """The row `key` is counted under (see `Stats`); `template`: its route is the
        framework's (or `UNMATCHED`), not a folded path."""
        method, route = key
        if method not in METHODS:
            method = OTHER
        if route == UNMATCHED:
            return method, UNMATCHED
        row = (method, route) if len(route) <= _MAX_ROUTE else (method, OTHER)
        registry = self._registry
        chosen = self._chosen
        if row in registry:
            if row in chosen:
                if template:  # a template of that name: never to be taken
                    del chosen[row]
                else:  # seen again: the last to be taken
                    chosen.move_to_end(row)
            return row
        if row[1] == OTHER:
            return row
        if len(registry) < self.max_routes:
            registry.add(row)
            if not template:
                chosen[row] = None
            return row
        if template and chosen:
            taken, _ = chosen.popitem(last=False)
            registry.discard(taken)
            registry.add(row)
            return row
        return method, OTHER

    def _count_reason(self, slot: _Slot, reason: str | None) -> None:
        reason = reason or "unknown"
        if reason not in self._reasons and reason not in _BUILT_IN_REASONS:
            # Rule ids come and go (a detail rule per support call): at most
            # _MAX_REASONS of them are counted apart; the built-in reasons always are.
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
        retired.reasons = add_counts(retired.reasons, old.reasons)
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

    # -- exporting and reading ----------------------------------------------------------

    def export(self, counters: Mapping[str, int | float] | None = None) -> dict[str, Any]:
        """A JSON-ready snapshot of this process that other processes' exports merge with.

        It holds when it was made (``at``), since when it counts (``started``), per
        route the latency histogram and the error, slow and release counts since
        start (``all``) and of the recent window (``recent``), releases by reason and
        the `slow_kept` slowest requests of both, the `SESSIONS_EXPORTED` slowest
        sessions seen in the recent window and as many of the whole table (their
        union), the sizes of the tables, `counters` (the core's counters), and
        ``processes: 1``. See `hindsight_web.stats_view` for merging and encoding.

        Raises:
            TypeError: a counter is not a number, or its name not a string.

        Example::

            body = stats_view.encode(stats.export(hs.counters()))
        """
        return self._export(_counters(counters)).to_json()

    def view(
        self, counters: Mapping[str, int | float] | None = None, *, sessions: bool = True
    ) -> StatsView:
        """A `StatsView` of this process alone, as of now: what `export` holds, unencoded
        (without sessions when `sessions` is False, which is cheaper)."""
        wanted = (SESSIONS_EXPORTED, SESSIONS_EXPORTED) if sessions else (0, 0)
        exported = self._export(_counters(counters), sessions=wanted)
        return StatsView([exported], now=exported.at)

    def _export(
        self,
        counters: dict[str, int | float],
        *,
        since_start: bool = True,
        routes: bool = True,
        sessions: tuple[int, int] = (SESSIONS_EXPORTED, SESSIONS_EXPORTED),
    ) -> Export:
        """What `export` holds. Less for the answers of this process alone: no ``all``
        part unless `since_start`, no routes unless `routes`, and the `sessions` slowest
        sessions of the recent window and of the whole table."""
        now = self._clock()
        with self._lock:
            if now >= self._slot_end:
                self._rotate(now)
            # The current slot first, a copy (see `_part`).
            window = [self._slot.frozen(routes), *(slot.view() for slot in self._slots)]
            window.pop()
            closed = list(self._slots)[:-1]
            older = [slot.view() for slot in (self._retired, *self._leaving)]
            tracked = len(self._sessions) + len(self._cookies)
            routes_tracked, evicted = len(self._registry), self._evicted
            tags = {
                name: {v: c[:] for v, c in values.items()} for name, values in self._tags.items()
            }
        chosen = self._slowest_sessions(now - self.window_s, *sessions)
        since = max(self._started, (window[0].number - _SLOTS + 1) * self._slot_s)
        if not routes:
            for slot in (*window, *older):
                slot.routes = {}
        recent = self._part(since, window)
        if routes:
            recent = recent._replace(slots=self._slot_totals(window[0], closed, window[1:]))
        if since_start:
            everything = self._part(self._started, older, recent)
        else:
            everything = Part(self._started, {}, {}, [])
        return Export(
            at=now,
            started=self._started,
            window_s=self.window_s,
            slow_kept=self.slow_kept,
            processes=1,
            since_start=everything,
            recent=recent,
            sessions=chosen,
            routes_tracked=routes_tracked,
            sessions_tracked=tracked,
            sessions_evicted=evicted,
            counters=counters,
            tags=tags,
        )

    def _part(self, since: float, slots: list[_Slot], base: Part | None = None) -> Part:
        """The slots (outside the lock: see `_Slot.view`) merged, and `base` if given.

        Without `base`, the first slot is the current one, frozen: its entries are ours.
        """
        tables = [slot.routes for slot in slots]
        reasons: dict[str, int] = {}
        if base is not None:
            tables.insert(0, base.routes)
            reasons = base.releases_by_reason
        for slot in slots:
            reasons = add_counts(reasons, slot.reasons)
        kept = chain.from_iterable(slot.slowest for slot in slots)
        slowest = [_kept_json(r) for _, _, r in heapq.nlargest(self.slow_kept, kept)]
        if base is not None:
            slowest = heapq.nlargest(self.slow_kept, base.slowest + slowest, key=_duration)
        return Part(since, merge_routes(tables, first_owned=base is None), reasons, slowest)

    def _slot_totals(
        self, current: _Slot, closed: list[_Slot], views: list[_Slot]
    ) -> tuple[tuple[float, RouteStats], ...]:
        """Per slot of the window that counted requests, oldest first: its start and its
        routes merged (outside the lock: `current` is a frozen copy, `views` are the
        views of the `closed` slots). A closed slot is merged once and keeps its total."""
        totals = []
        for slot, view in zip(closed, views, strict=True):
            total = slot.total
            if total is None:
                slot.total = total = _merged(view.routes)
            totals.append((slot.number * self._slot_s, total))
        totals.append((current.number * self._slot_s, _merged(current.routes)))
        return tuple((start, total) for start, total in totals if total.count)

    def _slowest_sessions(self, horizon: float, recent: int, overall: int) -> list[SessionCounts]:
        """Copies of the `recent` slowest sessions seen after `horizon` and of the
        `overall` slowest (their union).

        The lock is held twice, briefly: to list the sessions, then to copy the chosen
        ones; they are ranked in between, as they are then.
        """
        if not (recent or overall):
            return []
        with self._lock:
            tables = [list(self._sessions.values()), list(self._cookies.values())]
        seen = chain.from_iterable(_seen_since(table, horizon) for table in tables)
        chosen = heapq.nlargest(recent, seen, key=_RANK) if recent else []
        if overall:
            chosen += heapq.nlargest(overall, chain.from_iterable(tables), key=_RANK)
        unique = {id(session): session for session in chosen}
        with self._lock:
            states = [session.state() for session in unique.values()]
        return [SessionCounts(*state[:8], state[8].tolist()) for state in states]

    def totals(self) -> dict[str, int]:
        """Requests and releases counted since start (cheap: no merging)."""
        with self._lock:
            return {"requests": self._requests, "releases": self._releases}

    def snapshot(self, window: object = "all") -> Snapshot:
        """The statistics of `window` (``"all"`` or ``"recent"``), merged per route."""
        kind = _window(window)
        return self._view_of(kind).snapshot(kind)

    def overview(self, window: object = "all") -> dict[str, Any]:
        """Totals and per-route latency of `window`, as ``GET /stats`` answers for this
        process alone (``"processes": 1``); see `StatsView.overview`."""
        kind = _window(window)
        return self._view_of(kind).overview(kind)

    def slowest(self, limit: object = 20, window: object = "recent") -> dict[str, Any]:
        """The `limit` slowest requests of `window`, slowest first (``GET /stats/slow``).

        At most `slow_kept` of them: the slowest since start (``"all"``) or of the
        recent window (``"recent"``, the last `window_s` seconds to within one slot).
        """
        wanted, kind = _limit(limit), _window(window)
        exported = self._export({}, since_start=kind == "all", routes=False, sessions=(0, 0))
        return StatsView([exported], now=exported.at).slowest(wanted, kind)

    def sessions(self, limit: object = 20, window: object = "recent") -> dict[str, Any]:
        """The `limit` slowest sessions, by ``max_ms``, slowest first (``GET /stats/sessions``).

        ``"recent"`` lists the sessions seen in the last `window_s` seconds, ``"all"``
        every session in the tables. The counts of a session are since it entered a
        table. ``p95_ms`` is within 6.25 % (`SESSION_RELATIVE_ERROR`).
        """
        most, kind = _limit(limit), _window(window)
        wanted = (most, 0) if kind == "recent" else (0, most)
        exported = self._export({}, since_start=False, routes=False, sessions=wanted)
        return StatsView([exported], now=exported.at).sessions(most, kind)

    def _view_of(self, window: str) -> StatsView:
        """A view of this process that holds what `window` needs (no sessions)."""
        exported = self._export({}, since_start=window == "all", sessions=(0, 0))
        return StatsView([exported], now=exported.at)


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


# -- helpers ----------------------------------------------------------------------------


def _kept(r: Facts, route: str, now: float) -> RequestRecord:
    """`r` as kept among the slowest: a `RequestRecord` with its grouping route and a
    bounded method and path; `at` (its start) is `now` less its duration unless `r`
    tells it."""
    path = r.path if len(r.path) <= _MAX_PATH_KEPT else r.path[:_MAX_PATH_KEPT] + "..."
    at = r.at if isinstance(r, RequestRecord) else now - r.duration_ms / 1000.0
    return RequestRecord(
        request_id=r.request_id,
        method=r.method[:_MAX_METHOD_KEPT],
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


def _merged(routes: Mapping[tuple[str, str], RouteStats]) -> RouteStats:
    """Every route of a slot in one (a new entry: the slot's are left as they are)."""
    total = RouteStats()
    for entry in routes.values():
        total.merge(entry)
    return total


def _seen_since(table: list[_Session], horizon: float) -> Iterator[_Session]:
    """The sessions of `table` (least recently seen first) seen after `horizon`."""
    for session in reversed(table):
        if session.last_seen <= horizon:
            return
        yield session


def _kept_json(r: RequestRecord) -> dict[str, Any]:
    """A kept request as an export holds it (see `Part.slowest`)."""
    return {
        "request_id": r.request_id,
        "method": r.method,
        "path": r.path,
        "route": r.route,
        "status": r.status,
        "duration_ms": r.duration_ms,
        "at": r.at,
        "ttfb_ms": r.ttfb_ms,
        "user_id": r.user_id,
        "session_id": r.session_id,
        "errored": r.errored,
        "slow": r.slow,
        "released": r.released,
        "reason": r.reason,
        "raised": r.raised,
    }


def _duration(r: Mapping[str, Any]) -> float:
    duration: float = r["duration_ms"]
    return duration


def _counters(counters: object) -> dict[str, int | float]:
    if counters is None:
        return {}
    if not isinstance(counters, Mapping):
        raise TypeError(f"invalid counters {counters!r}: expected a mapping of names to numbers")
    result: dict[str, int | float] = {}
    for name, value in counters.items():
        if not isinstance(name, str):
            raise TypeError(f"invalid counter name {name!r}: expected a string")
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise TypeError(f"invalid counter {name!r} {value!r}: expected a finite number")
        result[name] = value
    return result


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
