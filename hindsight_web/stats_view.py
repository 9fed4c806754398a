"""Statistics of several processes: the exported form, its encoding, merging and the answers.

Every process publishes its statistics as an *export* (`Stats.export`): a JSON-ready
dict that says when it was made, since when it counts, and per route the latency
histogram and the error, slow and release counts of two windows (since start, and
the recent window, also slot by slot), the slowest requests of both, its slowest
sessions, the sizes of its tables and the core's counters. `encode` and `decode`
carry an export through a store; `StatsView` merges any number of exports and answers
the admin API's ``/stats`` calls; `retire` folds the exports of processes that ended
into one.

Merging is exact for counts and histograms: the merged export of two processes gives
the same routes, counts and percentiles as one `Stats` that recorded both request
streams (bucket for bucket; sums may differ in the last bits of float addition). The
slowest requests are exact up to the smallest `slow_kept` of the exports merged, and
the membership of the ``N <= 1000`` slowest sessions is exact (see `StatsView.sessions`).

Example::

    body = encode(stats.export(hs.counters()))  # in each process, every few seconds
    view = StatsView([decode(row.body) for row in rows])  # in the admin, from the store
    view.overview("recent")["processes"]
"""

from __future__ import annotations

import heapq
import json
import math
import time
import zlib
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from operator import attrgetter
from typing import Any, NamedTuple

from .histogram import (
    BOUNDS_MS,
    PAIR_BUCKETS,
    RouteStats,
    nonzero_pairs,
    pair_quantile,
    read_pairs,
)

__all__ = [
    "FORMAT",
    "MAX_ENCODED",
    "OTHER",
    "SESSIONS_EXPORTED",
    "SLOTS",
    "Export",
    "Part",
    "SessionCounts",
    "Snapshot",
    "StatsView",
    "add_counts",
    "decode",
    "encode",
    "iso",
    "merge_routes",
    "retire",
]

FORMAT = "hindsight-stats/1"
"""The ``format`` of an export; `decode` refuses any other."""

OTHER = "(other)"
"""The route (and method) that requests beyond a process's route table are counted under."""

SESSIONS_EXPORTED = 1000
"""An export carries at most this many of the slowest sessions of each window (their union)."""

MAX_ENCODED = 64 * 1024 * 1024
"""The most bytes `decode` inflates an export to; a larger one is refused."""

SLOTS = 15
"""The recent window is this many slots of ``window_s / SLOTS`` seconds (a minute by default)."""

_WINDOWS = ("all", "recent")
_LIMIT_MAX = 1000

# Counters that are gauges: a process that ended holds none of them (`retire` drops
# them); ``store_up`` merges as the minimum (1 only if every process reaches the store).
_GAUGES = ("buffer_bytes", "store_up", "window_requests", "window_bytes")
_REQUEST_TEXT = ("request_id", "method", "path")
_REQUEST_OPTIONAL_TEXT = ("route", "user_id", "session_id", "reason", "raised")
_REQUEST_FLAGS = ("errored", "slow", "released")


class Snapshot(NamedTuple):
    """The statistics of one window, merged per route.

    Attributes:
        window: ``"all"`` (since start) or ``"recent"``.
        since: the start of the window, epoch seconds.
        routes: per ``(method, route)``, its merged `RouteStats` (read them, do not
            change them: they may be shared with the exports merged).
        releases_by_reason: releases per reason.
        routes_tracked: distinct routes kept in a route table (the largest table
            among the processes merged).
        sessions_tracked: sessions in the session tables now.
        sessions_evicted: sessions evicted from the session tables since start.
        processes: how many processes the window covers.
    """

    window: str
    since: float
    routes: dict[tuple[str, str], RouteStats]
    releases_by_reason: dict[str, int]
    routes_tracked: int
    sessions_tracked: int
    sessions_evicted: int
    processes: int = 1


class Part(NamedTuple):
    """The statistics of one window of an export.

    Attributes:
        since: the start of the window, epoch seconds.
        routes: per ``(method, route)``, its `RouteStats` (never changed once in a `Part`).
        releases_by_reason: releases per reason.
        slowest: the slowest requests, slowest first, as JSON-ready dicts (the fields
            of `RequestRecord` but ``session_from_cookie``; ``at`` in epoch seconds).
        slots: the recent part only: per slot of the window that requests were counted
            in, oldest first, its start (epoch seconds) and every route of it merged
            (never changed once in a `Part`); empty in the since-start part.
    """

    since: float
    routes: dict[tuple[str, str], RouteStats]
    releases_by_reason: dict[str, int]
    slowest: list[dict[str, Any]]
    slots: tuple[tuple[float, RouteStats], ...] = ()


class SessionCounts:
    """One session's counts in an export: a session id (or, without one, a user id),
    its request, slow and error counts, latency sum and maximum, when it was last seen,
    and its latency counters (`PAIR_BUCKETS` pairs of fine histogram buckets)."""

    __slots__ = (
        "counts",
        "errors",
        "last_seen",
        "max_ms",
        "requests",
        "session",
        "slow",
        "sum_ms",
        "user_id",
    )

    def __init__(
        self,
        session: str | None,
        user_id: str | None,
        requests: int,
        slow: int,
        errors: int,
        sum_ms: float,
        max_ms: float,
        last_seen: float,
        counts: list[int],
    ) -> None:
        self.session = session
        self.user_id = user_id
        self.requests = requests
        self.slow = slow
        self.errors = errors
        self.sum_ms = sum_ms
        self.max_ms = max_ms
        self.last_seen = last_seen
        self.counts = counts

    @property
    def key(self) -> tuple[str, str | None]:
        """What makes two exports' sessions the same: the session id, else the user id."""
        return ("s", self.session) if self.session is not None else ("u", self.user_id)

    def merged(self, other: SessionCounts) -> SessionCounts:
        """A new `SessionCounts` with the counts of both (the same session in two processes)."""
        latest, first = (other, self) if other.last_seen >= self.last_seen else (self, other)
        return SessionCounts(
            self.session,
            latest.user_id if latest.user_id is not None else first.user_id,
            self.requests + other.requests,
            self.slow + other.slow,
            self.errors + other.errors,
            self.sum_ms + other.sum_ms,
            max(self.max_ms, other.max_ms),
            latest.last_seen,
            [a + b for a, b in zip(self.counts, other.counts, strict=True)],
        )

    def row(self) -> dict[str, Any]:
        """The session as ``GET /stats/sessions`` lists it."""
        return {
            "session": self.session,
            "user_id": self.user_id,
            "requests": self.requests,
            "slow": self.slow,
            "errors": self.errors,
            "mean_ms": _ms(self.sum_ms / self.requests),
            "p95_ms": _ms(pair_quantile(self.counts, self.max_ms, 0.95)),
            "max_ms": _ms(self.max_ms),
            "last_seen": iso(self.last_seen),
        }

    def to_dict(self) -> dict[str, Any]:
        """The session as an export holds it (``counts``: see `nonzero_pairs`)."""
        return {
            "session": self.session,
            "user_id": self.user_id,
            "requests": self.requests,
            "slow": self.slow,
            "errors": self.errors,
            "sum_ms": self.sum_ms,
            "max_ms": self.max_ms,
            "last_seen": self.last_seen,
            "counts": nonzero_pairs(self.counts),
        }


_RANK = attrgetter("max_ms", "requests", "last_seen")  # slowest sessions first


class Export(NamedTuple):
    """An export, parsed and checked: what `StatsView` merges.

    `Export.parse` makes one from the JSON-ready dict of `Stats.export` or `decode`,
    `Export.from_bytes` from what `encode` made; `to_json` gives the dict back. A
    `StatsView` also takes the dicts themselves.

    Attributes:
        at: when it was made, epoch seconds.
        started: since when it counts, epoch seconds.
        window_s: the length of its recent window, seconds.
        slow_kept: how many slowest requests each part keeps at most.
        processes: how many processes it covers (1, more once retired).
        since_start: the ``"all"`` part.
        recent: the ``"recent"`` part, or None (a retired export).
        sessions: its slowest sessions (see `SESSIONS_EXPORTED`).
        routes_tracked: distinct routes in its route table.
        sessions_tracked: sessions in its session tables.
        sessions_evicted: sessions evicted from them since start.
        counters: the core's counters (``records_captured``, ``buffer_bytes``, ...).
        tags: per field name and value that ``tag`` rules added, since start:
            ``[requests, errors, slow]``.
    """

    at: float
    started: float
    window_s: float
    slow_kept: int
    processes: int
    since_start: Part
    recent: Part | None
    sessions: list[SessionCounts]
    routes_tracked: int
    sessions_tracked: int
    sessions_evicted: int
    counters: dict[str, int | float]
    tags: Mapping[str, Mapping[str, list[int]]] = {}

    def to_json(self) -> dict[str, Any]:
        """The JSON-ready dict (what `encode` takes and `decode` gives)."""
        return {
            "format": FORMAT,
            "at": self.at,
            "started": self.started,
            "window_s": self.window_s,
            "slow_kept": self.slow_kept,
            "processes": self.processes,
            "all": _part_json(self.since_start),
            "recent": None if self.recent is None else _part_json(self.recent),
            "sessions": [session.to_dict() for session in self.sessions],
            "sizes": {
                "routes_tracked": self.routes_tracked,
                "sessions_tracked": self.sessions_tracked,
                "sessions_evicted": self.sessions_evicted,
            },
            "counters": dict(self.counters),
            "tags": {name: dict(values) for name, values in self.tags.items()},
        }

    @classmethod
    def from_bytes(cls, body: bytes) -> Export:
        """`decode` and `parse` in one: what to keep of a stored row between views
        (parsing is most of the cost of a view; a row changes only when republished).

        Raises:
            ValueError: as `decode`.
        """
        return cls.parse(_inflate(body))

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> Export:
        """Check and parse the JSON-ready dict of an export.

        Raises:
            ValueError: it is not an export of this `FORMAT`; the message names the field.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"invalid export {_short(data)}: expected a JSON object")
        if data.get("format") != FORMAT:
            raise ValueError(
                f"invalid export 'format' {_short(data.get('format'))}: expected {FORMAT!r}"
            )
        sizes = _object(data.get("sizes"), "sizes")
        recent = data.get("recent")
        return cls(
            at=_number(data.get("at"), "at"),
            started=_number(data.get("started"), "started"),
            window_s=_number(data.get("window_s"), "window_s", positive=True),
            slow_kept=_integer(data.get("slow_kept"), "slow_kept", 1),
            processes=_integer(data.get("processes"), "processes", 1),
            since_start=_parse_part(data.get("all"), "all"),
            recent=None if recent is None else _parse_part(recent, "recent"),
            sessions=[
                _parse_session(item, f"sessions[{i}]")
                for i, item in enumerate(_array(data.get("sessions"), "sessions"))
            ],
            routes_tracked=_integer(sizes.get("routes_tracked"), "sizes.routes_tracked"),
            sessions_tracked=_integer(sizes.get("sessions_tracked"), "sizes.sessions_tracked"),
            sessions_evicted=_integer(sizes.get("sessions_evicted"), "sizes.sessions_evicted"),
            counters=_parse_counters(data.get("counters"), "counters"),
            tags=_parse_tags(data.get("tags", {}), "tags"),
        )


def encode(export: Mapping[str, Any]) -> bytes:
    """An export as bytes to store: compact JSON, zlib-compressed at the fastest level.

    Raises:
        ValueError: `export` holds a value that is not JSON (NaN, infinity, ...).
    """
    text = json.dumps(export, separators=(",", ":"), allow_nan=False)
    return zlib.compress(text.encode("utf-8"), 1)


def decode(body: bytes) -> dict[str, Any]:
    """The export that `encode` made, checked through and through.

    Raises:
        ValueError: `body` is not an encoded export of this `FORMAT` (not zlib data,
            not JSON, larger than `MAX_ENCODED` inflated, or a field of the wrong kind;
            the message says which). Skip such a row.
    """
    data = _inflate(body)
    Export.parse(data)
    return data


def _inflate(body: bytes) -> dict[str, Any]:
    """The JSON object in `body`, not yet checked as an export."""
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise ValueError(f"invalid export body {_short(body)}: expected bytes")
    inflater = zlib.decompressobj()
    try:
        text = inflater.decompress(body, MAX_ENCODED)
    except zlib.error as exc:
        raise ValueError(f"invalid export body: not zlib data ({exc})") from None
    if inflater.unconsumed_tail:
        raise ValueError(f"invalid export body: larger than {MAX_ENCODED} bytes inflated")
    if not inflater.eof or inflater.unused_data:
        raise ValueError("invalid export body: truncated zlib data, or bytes after its end")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError too
        raise ValueError(f"invalid export body: not UTF-8 JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"invalid export {_short(data)}: expected a JSON object")
    return data


class StatsView:
    """Merged statistics of one or more exports, answering as the admin API does.

    Args:
        exports: exports (the dicts of `Stats.export` / `decode`, or `Export`s).
        now: the time the answers are for, epoch seconds (default: now).
        live_s: when given, the gauges of `counters` come only from exports made
            within this many seconds of `now`.

    ``window="all"`` merges everything since each process started. ``window="recent"``
    merges the recent parts of the exports made within their ``window_s`` of `now`:
    an export made longer ago covers none of the recent window (a process that stopped
    publishing, or a retired export). Every answer says how many processes it covers
    (``"processes"``: the sum of the ``processes`` of the exports merged).

    Raises:
        ValueError: an export dict is malformed (see `decode`).

    Example::

        view = StatsView([decode(row.body) for row in rows])
        view.overview("recent")["routes"][0]["p95_ms"]
        view.counters()["records_captured"]
    """

    def __init__(
        self,
        exports: Iterable[Mapping[str, Any] | Export],
        *,
        now: float | None = None,
        live_s: float | None = None,
    ) -> None:
        self.exports = [e if isinstance(e, Export) else Export.parse(e) for e in exports]
        self.now = time.time() if now is None else _number(now, "now")
        self.live_s = live_s

    def covered(self, window: str = "all") -> list[Export]:
        """The exports that `window` merges."""
        if _window(window) == "all":
            return self.exports
        now = self.now
        return [e for e in self.exports if e.recent is not None and now - e.at < e.window_s]

    def processes(self, window: str = "all") -> int:
        """How many processes `window` covers."""
        return sum(e.processes for e in self.covered(window))

    def snapshot(self, window: str = "all") -> Snapshot:
        """The statistics of `window`, merged per route."""
        exports = self.covered(window)
        parts = [_part_of(e, window) for e in exports]
        routes = merge_routes(part.routes for part in parts)
        reasons: dict[str, int] = {}
        for part in parts:
            reasons = add_counts(reasons, part.releases_by_reason)
        if parts:
            since = min(part.since for part in parts)
        elif window == "all":
            since = self.now
        else:
            since = self.now - max((e.window_s for e in self.exports), default=900.0)
        return Snapshot(
            window,
            since,
            routes,
            reasons,
            max((e.routes_tracked for e in exports), default=0),
            sum(e.sessions_tracked for e in exports),
            sum(e.sessions_evicted for e in exports),
            sum(e.processes for e in exports),
        )

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
            "processes": snap.processes,
        }

    def slowest(self, limit: int = 20, window: str = "recent") -> dict[str, Any]:
        """The `limit` slowest requests of `window`, slowest first (``GET /stats/slow``).

        At most the smallest ``slow_kept`` of the exports merged: each export keeps that
        many of each window, so the merged top ones are exact.
        """
        limit = _limit(limit)
        exports = self.covered(window)
        limit = min([limit, *(e.slow_kept for e in exports)])
        kept = (r for e in exports for r in _part_of(e, window).slowest)
        top = heapq.nlargest(limit, kept, key=lambda r: r["duration_ms"])
        return {
            "window": window,
            "requests": [_request_row(r) for r in top],
            "processes": sum(e.processes for e in exports),
        }

    def timeline(self) -> dict[str, Any]:
        """The recent window slot by slot, oldest first (``GET /stats/timeline``).

        Each of the `SLOTS` slots of ``slot_s`` seconds (a minute by default) up to the
        one of `now` gives when it starts (``at``) and its ``requests``, ``errors``,
        ``slow``, ``p50_ms``, ``p95_ms`` and ``max_ms`` (null when it has no request),
        the slots of every export merged bucket for bucket, as `overview` merges
        routes. A slot that no process counted a request in is there with zeros.
        """
        exports = self.covered("recent")
        window_s = max((e.window_s for e in exports or self.exports), default=900.0)
        slot_s = window_s / SLOTS
        # Slot n starts at n * slot_s in every process (`Stats`): the same float.
        last = math.floor(self.now / slot_s)
        numbers = range(last - SLOTS + 1, last + 1)
        first = numbers[0] * slot_s
        merged = {n * slot_s: RouteStats() for n in numbers}
        for export in exports:
            for start, entry in _part_of(export, "recent").slots:
                # (A process with another window_s has slots of its own starts; one whose
                # clock is ahead may have one that starts after `now`.)
                if start >= first:
                    merged.setdefault(start, RouteStats()).merge(entry)
        return {
            "window": "recent",
            "since": iso(first),
            "slot_s": slot_s,
            "slots": [_slot_row(start, merged[start]) for start in sorted(merged)],
            "processes": sum(e.processes for e in exports),
        }

    def sessions(self, limit: int = 20, window: str = "recent") -> dict[str, Any]:
        """The `limit` slowest sessions of `window`, by ``max_ms``, slowest first
        (``GET /stats/sessions``).

        ``"recent"``: the sessions seen within ``window_s`` of `now`, ``"all"``: every
        session exported. The same session (same session id, else same user id) in
        several exports is merged: counts and sums added, the largest ``max_ms``, the
        latest ``last_seen`` and its user.

        Each export holds the `SESSIONS_EXPORTED` slowest sessions of its recent window
        and of its whole table, so which sessions are the ``limit <= 1000`` slowest is
        exact (to within ties and the age of the exports), but a session's counts from
        a process that did not export it (there it was not among its slowest) are left
        out. Within one process a session's counts are since it entered the table.
        """
        limit = _limit(limit)
        exports = self.covered(window)
        merged: dict[tuple[str, str | None], SessionCounts] = {}
        for export in exports:
            horizon = self.now - export.window_s if window == "recent" else -math.inf
            for session in export.sessions:
                if session.last_seen <= horizon:
                    continue
                key = session.key
                seen = merged.get(key)
                merged[key] = session if seen is None else seen.merged(session)
        top = heapq.nlargest(limit, merged.values(), key=_RANK)
        return {
            "window": window,
            "sessions": [session.row() for session in top],
            "tracked": sum(e.sessions_tracked for e in exports),
            "evicted": sum(e.sessions_evicted for e in exports),
            "processes": sum(e.processes for e in exports),
        }

    def tags(self) -> dict[str, Any]:
        """Requests, errors and slow ones per field value that ``tag`` rules added, since
        start, in every process (``GET /stats/tags``): ``{"tags": [{"tag", "value",
        "requests", "errors", "slow"}, ...], "processes": n}``, most requests first."""
        exports = self.covered("all")
        counted = [
            (n, name, value, errors, slow)
            for name, values in merge_tags(e.tags for e in exports).items()
            for value, (n, errors, slow) in values.items()
        ]
        counted.sort(key=lambda row: (-row[0], row[1], row[2]))
        rows = [
            {"tag": name, "value": value, "requests": n, "errors": errors, "slow": slow}
            for n, name, value, errors, slow in counted
        ]
        return {"tags": rows, "processes": self.processes("all")}

    def counters(self) -> dict[str, int | float]:
        """The core's counters summed over every export (``buffer_bytes`` too: the bytes
        held by every process; ``store_up`` is the smallest: 1 only if all reach the store).

        With `live_s`, the gauges come only from exports made in the last `live_s`
        seconds: a process that stopped publishing (it ended) holds nothing now.
        """
        total = _merge_counters(self.exports)
        if self.live_s is not None:
            live = [e for e in self.exports if self.now - e.at <= self.live_s]
            now = _merge_counters(live)
            for gauge in _GAUGES:
                total.pop(gauge, None)
                if gauge in now:
                    total[gauge] = now[gauge]
        return total


def retire(exports: Iterable[Mapping[str, Any] | Export]) -> dict[str, Any]:
    """One export that stands for several processes that ended.

    Their since-start parts, sessions (the `SESSIONS_EXPORTED` slowest kept) and
    counters are merged; it has no recent part; ``processes`` is their sum. Gauges
    (``buffer_bytes``, ``store_up``) are left out: an ended process holds nothing,
    and it tracks no sessions (``sessions_tracked`` is 0). Counters only grow: a
    view that merges the retired export instead of the ones it replaces gives the same
    since-start numbers.

    Raises:
        ValueError: no export, or one is malformed.
    """
    parsed = [e if isinstance(e, Export) else Export.parse(e) for e in exports]
    if not parsed:
        raise ValueError("invalid exports []: expected at least one export to retire")
    slow_kept = min(e.slow_kept for e in parsed)
    reasons: dict[str, int] = {}
    for e in parsed:
        reasons = add_counts(reasons, e.since_start.releases_by_reason)
    since_start = Part(
        min(e.since_start.since for e in parsed),
        merge_routes(e.since_start.routes for e in parsed),
        reasons,
        heapq.nlargest(
            slow_kept,
            (r for e in parsed for r in e.since_start.slowest),
            key=lambda r: r["duration_ms"],
        ),
    )
    sessions: dict[tuple[str, str | None], SessionCounts] = {}
    for e in parsed:
        for session in e.sessions:
            seen = sessions.get(session.key)
            sessions[session.key] = session if seen is None else seen.merged(session)
    counters = _merge_counters(parsed)
    for gauge in _GAUGES:
        counters.pop(gauge, None)
    return Export(
        at=max(e.at for e in parsed),
        started=min(e.started for e in parsed),
        window_s=max(e.window_s for e in parsed),
        slow_kept=slow_kept,
        processes=sum(e.processes for e in parsed),
        since_start=since_start,
        recent=None,
        sessions=heapq.nlargest(SESSIONS_EXPORTED, sessions.values(), key=_RANK),
        routes_tracked=max(e.routes_tracked for e in parsed),
        sessions_tracked=0,
        sessions_evicted=sum(e.sessions_evicted for e in parsed),
        counters=counters,
        tags=merge_tags(e.tags for e in parsed),
    ).to_json()


def merge_tags(
    tables: Iterable[Mapping[str, Mapping[str, list[int]]]],
) -> dict[str, dict[str, list[int]]]:
    """Tag counts (`Export.tags`) summed."""
    merged: dict[str, dict[str, list[int]]] = {}
    for table in tables:
        for name, values in table.items():
            mine = merged.setdefault(name, {})
            for value, counts in values.items():
                held = mine.get(value)
                mine[value] = (
                    list(counts)
                    if held is None
                    else [a + b for a, b in zip(held, counts, strict=True)]
                )
    return merged


def merge_routes(
    sources: Iterable[Mapping[tuple[str, str], RouteStats]], *, first_owned: bool = False
) -> dict[tuple[str, str], RouteStats]:
    """Route tables merged per key, without changing any of them.

    An entry found in one table only is shared, not copied; with `first_owned`, the
    entries of the first table are the caller's own copies and are changed in place.
    Entries with nothing in them (made for a request whose duration was then
    refused) are left out.
    """
    routes: dict[tuple[str, str], RouteStats] = {}
    owned: set[tuple[str, str]] = set()
    for n, source in enumerate(sources):
        if n == 0 and first_owned:
            routes.update(source)
            owned.update(source)
            continue
        for key, entry in source.items():
            mine = routes.get(key)
            if mine is None:
                routes[key] = entry
                continue
            if key not in owned:
                routes[key] = mine = mine.copy()
                owned.add(key)
            mine.merge(entry)
    return {key: entry for key, entry in routes.items() if entry.max or entry.count}


def add_counts(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
    """A new dict with the counts of `a` and `b` added per key."""
    total = dict(a)
    for name, n in b.items():
        total[name] = total.get(name, 0) + n
    return total


def iso(seconds: float) -> str:
    """Epoch `seconds` as ISO 8601 UTC with milliseconds: ``2026-11-23T14:00:00.000Z``."""
    moment = datetime.fromtimestamp(seconds, tz=timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- helpers ----------------------------------------------------------------------------


def _part_of(export: Export, window: str) -> Part:
    if window == "all":
        return export.since_start
    if export.recent is None:  # covered() leaves such exports out of "recent"
        raise ValueError("invalid export: no recent part")
    return export.recent


def _merge_counters(exports: Iterable[Export]) -> dict[str, int | float]:
    total: dict[str, int | float] = {}
    for export in exports:
        for name, value in export.counters.items():
            if name not in total:
                total[name] = value
            elif name == "store_up":
                total[name] = min(total[name], value)
            else:
                total[name] += value
    return total


def _part_json(part: Part) -> dict[str, Any]:
    return {
        "since": part.since,
        "routes": [
            {"method": method, "route": route, **entry.to_dict()}
            for (method, route), entry in part.routes.items()
        ],
        "releases_by_reason": dict(part.releases_by_reason),
        "slowest": [dict(r) for r in part.slowest],
        "slots": [{"start": start, **entry.to_dict()} for start, entry in part.slots],
    }


def _parse_part(value: object, where: str) -> Part:
    data = _object(value, where)
    routes: dict[tuple[str, str], RouteStats] = {}
    for i, item in enumerate(_array(data.get("routes"), f"{where}.routes")):
        path = f"{where}.routes[{i}]"
        entry = _object(item, path)
        key = (
            _text(entry.get("method"), f"{path}.method"),
            _text(entry.get("route"), f"{path}.route"),
        )
        if key in routes:
            raise ValueError(f"invalid export {path!r}: route {key!r} is there twice")
        try:
            routes[key] = RouteStats.from_dict(entry)
        except ValueError as exc:
            raise ValueError(f"invalid export {path!r}: {exc}") from None
    return Part(
        since=_number(data.get("since"), f"{where}.since"),
        routes=routes,
        releases_by_reason=_parse_counts(
            data.get("releases_by_reason"), f"{where}.releases_by_reason"
        ),
        slowest=[
            _parse_request(item, f"{where}.slowest[{i}]")
            for i, item in enumerate(_array(data.get("slowest"), f"{where}.slowest"))
        ],
        # An export of a version that kept no slots has none.
        slots=tuple(
            _parse_slot(item, f"{where}.slots[{i}]")
            for i, item in enumerate(_array(data.get("slots", []), f"{where}.slots"))
        ),
    )


def _parse_slot(value: object, where: str) -> tuple[float, RouteStats]:
    data = _object(value, where)
    start = _number(data.get("start"), f"{where}.start")
    try:
        return start, RouteStats.from_dict(data)
    except ValueError as exc:
        raise ValueError(f"invalid export {where!r}: {exc}") from None


def _parse_request(value: object, where: str) -> dict[str, Any]:
    data = _object(value, where)
    for name in _REQUEST_TEXT:
        _text(data.get(name), f"{where}.{name}")
    for name in _REQUEST_OPTIONAL_TEXT:
        if data.get(name) is not None:
            _text(data.get(name), f"{where}.{name}")
    for name in _REQUEST_FLAGS:
        if not isinstance(data.get(name), bool):
            raise ValueError(
                f"invalid export '{where}.{name}' {_short(data.get(name))}: expected true or false"
            )
    if data.get("status") is not None:
        _integer(data.get("status"), f"{where}.status")
    if data.get("ttfb_ms") is not None:
        _number(data.get("ttfb_ms"), f"{where}.ttfb_ms")
    return {
        "request_id": data["request_id"],
        "method": data["method"],
        "path": data["path"],
        "route": data.get("route"),
        "status": data.get("status"),
        "duration_ms": _number(data.get("duration_ms"), f"{where}.duration_ms"),
        "at": _number(data.get("at"), f"{where}.at"),
        "ttfb_ms": data.get("ttfb_ms"),
        "user_id": data.get("user_id"),
        "session_id": data.get("session_id"),
        "errored": data["errored"],
        "slow": data["slow"],
        "released": data["released"],
        "reason": data.get("reason"),
        "raised": data.get("raised"),
    }


def _parse_session(value: object, where: str) -> SessionCounts:
    data = _object(value, where)
    session = data.get("session")
    user_id = data.get("user_id")
    if session is not None:
        _text(session, f"{where}.session")
    if user_id is not None:
        _text(user_id, f"{where}.user_id")
    if session is None and user_id is None:
        raise ValueError(f"invalid export {where!r}: neither a session nor a user_id")
    requests = _integer(data.get("requests"), f"{where}.requests", 1)
    counts = [0] * PAIR_BUCKETS
    indexes, numbers = read_pairs(data.get("counts"), PAIR_BUCKETS, f"export '{where}.counts'")
    for index, n in zip(indexes, numbers, strict=True):
        counts[index] = n
    if sum(counts) > requests:
        raise ValueError(f"invalid export '{where}.counts': more than its {requests} requests")
    return SessionCounts(
        session,
        user_id,
        requests,
        _integer(data.get("slow"), f"{where}.slow", 0, requests),
        _integer(data.get("errors"), f"{where}.errors", 0, requests),
        _number(data.get("sum_ms"), f"{where}.sum_ms"),
        _number(data.get("max_ms"), f"{where}.max_ms"),
        _number(data.get("last_seen"), f"{where}.last_seen"),
        counts,
    )


def _parse_tags(value: object, where: str) -> dict[str, dict[str, list[int]]]:
    tags: dict[str, dict[str, list[int]]] = {}
    for name, values in _object(value, where).items():
        tags[name] = {}
        for text, counts in _object(values, f"{where}.{name}").items():
            field = f"{where}.{name}.{text}"
            items = _array(counts, field)
            if len(items) != 3:
                raise ValueError(f"invalid {field!r}: expected [requests, errors, slow]")
            tags[name][text] = [_integer(n, field) for n in items]
    return tags


def _parse_counts(value: object, where: str) -> dict[str, int]:
    data = _object(value, where)
    return {_text(name, f"{where} key"): _integer(n, f"{where}.{name}") for name, n in data.items()}


def _parse_counters(value: object, where: str) -> dict[str, int | float]:
    data = _object(value, where)
    counters: dict[str, int | float] = {}
    for name, n in data.items():
        _text(name, f"{where} key")
        if isinstance(n, bool) or not isinstance(n, (int, float)) or not math.isfinite(n):
            raise ValueError(f"invalid export '{where}.{name}' {_short(n)}: expected a number")
        counters[name] = n
    return counters


def _object(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"invalid export {where!r} {_short(value)}: expected a JSON object")
    return value


def _array(value: object, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"invalid export {where!r} {_short(value)}: expected a JSON array")
    return value


def _text(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"invalid export {where!r} {_short(value)}: expected a string")
    return value


def _number(value: object, where: str, *, positive: bool = False) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
        or (positive and value == 0)
    ):
        allowed = "> 0" if positive else ">= 0"
        raise ValueError(f"invalid export {where!r} {_short(value)}: expected a number {allowed}")
    return float(value)


def _integer(value: object, where: str, low: int = 0, high: int | None = None) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < low
        or (high is not None and value > high)
    ):
        allowed = f"from {low} to {high}" if high is not None else f">= {low}"
        raise ValueError(f"invalid export {where!r} {_short(value)}: expected an integer {allowed}")
    return value


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


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


def _slot_row(start: float, entry: RouteStats) -> dict[str, Any]:
    count = entry.count
    return {
        "at": iso(start),
        "requests": count,
        "errors": entry.errors,
        "slow": entry.slow,
        "p50_ms": _ms(entry.quantile(0.5)) if count else None,
        "p95_ms": _ms(entry.quantile(0.95)) if count else None,
        "max_ms": _ms(entry.max) if count else None,
    }


def _request_row(r: Mapping[str, Any]) -> dict[str, Any]:
    ttfb = r["ttfb_ms"]
    return {
        "request_id": r["request_id"],
        "method": r["method"],
        "path": r["path"],
        "route": r["route"],
        "status": r["status"],
        "duration_ms": _ms(r["duration_ms"]),
        "ttfb_ms": None if ttfb is None else _ms(ttfb),
        "user_id": r["user_id"],
        "session_id": r["session_id"],
        "at": iso(r["at"]),
        "released": r["released"],
        "reason": r["reason"],
        "errored": r["errored"],
        "raised": r["raised"],
    }


def _ms(value: float) -> float:
    return round(float(value), 3)


def _limit(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _LIMIT_MAX:
        raise ValueError(f"invalid 'limit' {value!r}: expected an integer from 1 to {_LIMIT_MAX}")
    return value


def _window(value: object) -> str:
    if value not in _WINDOWS:
        raise ValueError(f"invalid 'window' {value!r}: expected 'all' or 'recent'")
    return str(value)
