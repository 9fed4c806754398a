"""Where rules, their hits, the audit trail and every process's statistics live.

A `Store` is what the processes of an app share: ``memory://`` (one process),
``sqlite:///path/to/file.db`` (every process of one host) or
``redis://host:port/db`` (every process of every host). It is used only from
background threads and admin calls, never on the request path: each process
keeps its own in-memory copy of the rules and refreshes it from the store.

Rule changes go through :meth:`Store.change`: a *plan* reads the rules inside
a transaction (a `RulesView`) and returns the `Change` to write; the store
writes it atomically with one new revision, or writes nothing. Two processes
that plan at once are serialised (SQLite: ``BEGIN IMMEDIATE``; Redis:
``WATCH``/``MULTI``, the plan run again on a conflict; memory: a lock), so a
plan that expires a rule, say, finds it gone when another process was first:
each change happens, and is audited, once in all.

Every error of a backend (down, locked, timed out, refused) is raised as
:class:`StoreError`, and then nothing was changed.
"""

from __future__ import annotations

import re
import secrets
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "AUDIT_KEPT",
    "BEATS_KEPT_S",
    "CHANGES_KEPT",
    "QUERIES_KEPT_S",
    "SCHEMA_VERSION",
    "Change",
    "CountUpdate",
    "Plan",
    "RulesRead",
    "RulesView",
    "SchemaError",
    "StatsRow",
    "Store",
    "StoreError",
    "StoredRule",
    "display_url",
    "first_revision",
    "open_store",
]

SCHEMA_VERSION = 1
"""The version of the stored layout; a store written by another version is refused."""

AUDIT_KEPT = 1000
"""Audit events kept in a store; the oldest are forgotten first."""

QUERIES_KEPT_S = 60.0
"""Seconds a question to every process (and its answers) is kept after it expired."""

BEATS_KEPT_S = 3600.0
"""Seconds a process's last heartbeat is kept."""

CHANGES_KEPT = 1000
"""Revisions of rule changes a store remembers: a process further behind reloads every rule."""

_PREFIX = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def first_revision() -> int:
    """The revision a new store starts from: random, so that a store made again in
    the same place (a Redis restarted without persistence) does not continue the
    numbers of the one before. A reader holding a revision of the old store then
    finds it outside the new one's and reads every rule again."""
    return 1 + secrets.randbelow(1 << 40)


_QUERY_PASSWORD = re.compile(r"((?:^|&)password=)[^&]*")


class StoreError(Exception):
    """The store cannot be used now (down, locked, too slow, refused); nothing was changed.

    The message names the store by its display URL (no password).
    """


class SchemaError(StoreError):
    """The store holds data of a layout this version does not know (`SCHEMA_VERSION`)."""


@dataclass(frozen=True)
class StoredRule:
    """A rule as a store keeps it.

    Attributes:
        id: the rule's id.
        body: the rule's stored form: ``Rule.to_json()`` without ``hits`` and ``ttl_s``.
        origin: who owns it, for :meth:`RulesView.of_origin`: ``"admin"``, ``"count"``
            (made by a count rule), ``"startup"`` or ``"rules_url <url>"``.
        hits: requests it matched in every process (flushed by `Store.add_hits`).
    """

    id: str
    body: dict[str, Any]
    origin: str
    hits: int = 0


class RulesView(ABC):
    """What a plan of :meth:`Store.change` reads, inside the transaction."""

    revision: int
    """The revision before the change."""

    @abstractmethod
    def get(self, rule_id: str) -> StoredRule | None:
        """The rule with this id, or None."""

    @abstractmethod
    def count(self) -> int:
        """How many rules the store holds."""

    @abstractmethod
    def of_origin(self, origin: str) -> list[StoredRule]:
        """The rules whose `origin` is this one."""

    @abstractmethod
    def fingerprint(self, origin: str) -> str | None:
        """The fingerprint a `Change` last recorded for `origin`, or None."""


@dataclass
class Change:
    """What a plan asks a store to write, atomically, under one new revision.

    Attributes:
        put: rules added or replaced (by id); their hits start at `StoredRule.hits`.
        delete: ids of rules removed (an id that is not there is ignored).
        events: audit events to append, oldest first (JSON objects).
        fingerprints: per origin, a fingerprint of the rules it last applied.
    """

    put: list[StoredRule] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    fingerprints: dict[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.put or self.delete or self.events or self.fingerprints)


@dataclass(frozen=True)
class RulesRead:
    """What :meth:`Store.read_rules` answers.

    Attributes:
        revision: the store's revision the answer is as of.
        full: True when `rules` are all the rules (the reader replaces its copy);
            False when they are only those put since the revision asked for.
        rules: the rules, with their hits.
        deleted: ids removed since the revision asked for (empty when `full`).
    """

    revision: int
    full: bool
    rules: list[StoredRule]
    deleted: list[str]


@dataclass(frozen=True)
class StatsRow:
    """One process's published statistics.

    Attributes:
        process: the process's key (unique per process run, on every host).
        host: the host name it runs on (``/metrics`` merges one host's processes).
        updated: when it was published, epoch seconds.
        body: the statistics, encoded by the stats module (opaque to the store).
    """

    process: str
    host: str
    updated: float
    body: bytes


Plan = Callable[[RulesView], Change]

CountUpdate = Callable[[dict[str, str]], dict[str, str]]
"""Given the JSON texts held for some keys of a counter (keys held nothing for are
absent), returns the texts to hold for them now (see `Store.update_counts`)."""


class Store(ABC):
    """Rules, hits, audit trail and statistics shared by the processes that open it.

    Thread-safe; every method may block on I/O (never call one on the request
    path or an event loop). Connections are made in the process that uses them
    (safe across ``fork``). Every failure raises :class:`StoreError`.
    """

    url: str
    """The store's URL as shown (health, logs, errors): any password replaced by ``***``."""

    shared: bool
    """True when other processes may use the same store (SQLite, Redis)."""

    @abstractmethod
    def change(self, plan: Plan) -> tuple[Change, int]:
        """Run `plan` inside a transaction and write the `Change` it returns.

        The plan may run more than once (after a conflict with another
        process); it must only read through the view and return. An empty
        change writes nothing and keeps the revision.

        Returns:
            The change written and the store's revision after it.
        """

    @abstractmethod
    def read_rules(self, since: int | None) -> RulesRead:
        """The rules changed since revision `since` (every rule when None, or when
        the store no longer remembers that far back)."""

    @abstractmethod
    def state(self) -> tuple[int, int]:
        """``(revision, stats epoch)``: cheap, read by every process each sync."""

    def probe_write(self) -> bool:
        """Whether a write could be made now, found without writing anything.

        Only a store whose writes can fail while its reads go on checks (SQLite:
        a file locked by another writer); the others answer False at once, and
        their last read and write tell.

        Returns:
            True when a write could be made now; False when this store does not check.

        Raises:
            StoreError: a write would fail now.
        """
        return False

    @abstractmethod
    def add_hits(self, hits: dict[str, int]) -> None:
        """Add to the hits of these rules (ids no longer held are ignored).

        Does not change the revision.
        """

    @abstractmethod
    def hits(self, ids: list[str] | None = None) -> dict[str, int]:
        """The hits of these rules (every rule when None); ids not held are left out."""

    @abstractmethod
    def audit(self, limit: int) -> list[dict[str, Any]]:
        """The newest `limit` audit events, newest first."""

    @abstractmethod
    def publish_stats(self, row: StatsRow, epoch: int) -> int:
        """Write `row` (replacing the process's previous one) if `epoch` is the
        store's stats epoch; return the store's epoch either way."""

    @abstractmethod
    def read_stats(self) -> tuple[int, list[StatsRow]]:
        """``(epoch, rows)``: every process's statistics published in the current epoch."""

    @abstractmethod
    def reset_stats(self) -> int:
        """Forget every process's statistics: a new epoch, returned."""

    @abstractmethod
    def retire_stats(self, gone: dict[str, float], into: StatsRow, epoch: int) -> bool:
        """Replace the rows of ended processes by one row that merges them.

        Atomically: only if `epoch` is current and every process of `gone` still
        has a row published at exactly that `updated` time, delete those rows
        and write `into`. Returns whether it was done.
        """

    # -- questions to every process's window (see `hindsight_web.fanout`) --------------

    @abstractmethod
    def post_query(self, body: dict[str, Any], expires: float) -> int:
        """Post a question (a JSON object) for every process until `expires` (epoch
        seconds); returns its id (ids only grow). Questions expired for a minute are
        forgotten, with their answers."""

    @abstractmethod
    def queries_after(self, after: int | None) -> tuple[int, list[tuple[int, dict[str, Any]]]]:
        """``(newest id, [(id, question), ...])``: the unexpired questions posted after
        id `after`, oldest first; none when `after` is None (a reader starting)."""

    @abstractmethod
    def put_answer(self, query_id: int, process: str, body: dict[str, Any]) -> None:
        """Write `process`'s answer (a JSON object) to question `query_id`."""

    @abstractmethod
    def answers(self, query_id: int) -> dict[str, dict[str, Any]]:
        """The answers to question `query_id` so far, by process."""

    @abstractmethod
    def beat(self, process: str, at: float) -> None:
        """Note that `process` is live at `at` (epoch seconds); beats older than an hour
        are forgotten."""

    @abstractmethod
    def peers(self, since: float) -> list[str]:
        """The processes whose last beat is at or after `since`."""

    # -- requests kept by `retain` rules ------------------------------------------------

    @abstractmethod
    def retain(self, request_id: str, at: float, until: float, doc: str, max_bytes: int) -> int:
        """Keep a request's JSON document (`doc`) from `at` until `until` (epoch seconds),
        replacing one with its id, within `max_bytes` for every document together: the
        oldest (by `at`) go first, and those past their time.

        Returns:
            How many documents were removed for room; -1 when `doc` alone is larger
            than `max_bytes` (then nothing is kept).
        """

    @abstractmethod
    def expire_retained(self, now: float) -> None:
        """Remove the kept documents whose time is up at `now` (epoch seconds)."""

    @abstractmethod
    def retained(
        self, since: float | None, until: float | None, limit: int
    ) -> list[dict[str, Any]]:
        """The kept documents whose `at` is within ``[since, until]`` (None: no bound) and
        whose time is not up, newest first, at most `limit`."""

    @abstractmethod
    def retained_one(self, request_id: str) -> dict[str, Any] | None:
        """The kept document of this request, or None (none, or its time is up)."""

    # -- the counts of ``count`` rules (see `hindsight_web.counting`) ----------------------

    @abstractmethod
    def update_counts(
        self,
        counter: str,
        keys: list[str],
        update: CountUpdate,
        *,
        now: float,
        keep_s: float,
        max_keys: int,
    ) -> int:
        """Atomically: read what `counter` holds for `keys` (one JSON text per key), hold
        what ``update(held)`` returns instead, each seen at `now` and kept until ``now +
        keep_s``; forget the texts past their time (of every counter); and forget the
        least recently seen keys of `counter` beyond `max_keys`.

        `update` may run more than once (after a conflict with another process); it must
        only compute and return.

        Returns:
            How many keys of `counter` were forgotten for room (not those past their time).
        """

    @abstractmethod
    def expire_counts(self, now: float) -> None:
        """Forget the count texts past their time at `now` (epoch seconds), of every counter
        (those of removed rules too)."""

    @abstractmethod
    def read_counts(self, counter: str, limit: int) -> dict[str, str]:
        """What `counter` holds for its `limit` most recently seen keys (not past their time)."""

    @abstractmethod
    def close(self) -> None:
        """Close this process's connections (the store's data stays)."""


def display_url(url: str) -> str:
    """`url` with its password (if any) replaced by ``***``: the one of the user part
    and a ``password=`` query parameter (which redis-py accepts too)."""
    parts = urlsplit(url)
    query = _QUERY_PASSWORD.sub(r"\1***", parts.query)
    if parts.password is None:
        return url if query == parts.query else parts._replace(query=query).geturl()
    # The host and port as written: parsing the port would raise on a malformed one.
    netloc = f"{parts.username or ''}:***@{parts.netloc.rpartition('@')[2]}"
    return parts._replace(netloc=netloc, query=query).geturl()


def open_store(url: str, *, timeout_s: float = 1.0) -> Store:
    """The store a ``store`` option names.

    Args:
        url: ``memory://``; ``sqlite:///relative/path.db`` or
            ``sqlite:////absolute/path.db``; ``redis://[:password@]host:port/db``
            or ``rediss://...`` (TLS), with an optional ``?prefix=name`` to share
            one Redis between apps.
        timeout_s: how long one store operation may wait (connect, read, lock).

    Raises:
        ValueError: the URL is malformed; the message says what is allowed.
        ImportError: ``redis://`` without redis-py (the message names the
            ``pip install`` to run).
        SchemaError: the store holds data of an unknown layout version (a
            Redis that cannot be reached yet is checked once it can).
    """
    if not isinstance(url, str):
        raise ValueError(f"invalid 'store' {url!r}: expected a URL string")
    if url == "memory://":
        from .memory import MemoryStore

        return MemoryStore()
    if url.startswith("sqlite://"):
        from .sqlite import SQLiteStore

        return SQLiteStore(url, timeout_s=timeout_s)
    if url.startswith(("redis://", "rediss://")):
        from .redis import RedisStore

        return RedisStore(url, timeout_s=timeout_s)
    raise ValueError(
        f"invalid 'store' {display_url(url)!r}: expected 'memory://', "
        "'sqlite:///path/to/file.db' or 'redis://host:port/db'"
    )


def check_prefix(prefix: str) -> str:
    """A Redis key prefix (``?prefix=``): 1 to 64 letters, digits, ``_ . : -``."""
    if not _PREFIX.fullmatch(prefix):
        raise ValueError(
            f"invalid 'store' prefix {prefix!r}: expected 1 to 64 letters, digits, '_', '.', "
            "':' or '-'"
        )
    return prefix
