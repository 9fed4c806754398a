"""``sqlite:///path/to/file.db``: a store shared by every process of one host.

Stdlib `sqlite3` in WAL mode: readers never wait for the writer, and writers
are serialised by ``BEGIN IMMEDIATE`` (each waits up to ``timeout_s`` for the
others). Each process opens its own connection when it first needs one.
"""

from __future__ import annotations

import json
import math
import os
import random
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from .._sync import new_lock
from . import (
    AUDIT_KEPT,
    BEATS_KEPT_S,
    CHANGES_KEPT,
    QUERIES_KEPT_S,
    SCHEMA_VERSION,
    Change,
    CountUpdate,
    Plan,
    RulesRead,
    RulesView,
    SchemaError,
    StatsRow,
    Store,
    StoredRule,
    StoreError,
    first_revision,
)

__all__ = ["SQLiteStore"]

_FORMS = "expected 'sqlite:///relative/path.db' or 'sqlite:////absolute/path.db'"

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS rules"
    " (id TEXT PRIMARY KEY, body TEXT NOT NULL, origin TEXT NOT NULL, hits INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS rules_origin ON rules (origin)",
    # The revision of each id's last change; a deleted rule's id stays here
    # (pruned after CHANGES_KEPT revisions) so that readers learn of the delete.
    "CREATE TABLE IF NOT EXISTS changes (id TEXT PRIMARY KEY, revision INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS changes_revision ON changes (revision)",
    "CREATE TABLE IF NOT EXISTS audit (seq INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS sources (origin TEXT PRIMARY KEY, fingerprint TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS stats"
    " (process TEXT PRIMARY KEY, host TEXT NOT NULL, updated REAL NOT NULL, body BLOB NOT NULL)",
)
# Questions to every process's window, their answers, the processes' heartbeats, the
# requests retain rules keep and the counts of count rules: made in files created before
# them too.
_ADDED = (
    "CREATE TABLE IF NOT EXISTS queries"
    " (id INTEGER PRIMARY KEY AUTOINCREMENT, expires REAL NOT NULL, body TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS answers (query INTEGER NOT NULL, process TEXT NOT NULL,"
    " body TEXT NOT NULL, PRIMARY KEY (query, process))",
    "CREATE TABLE IF NOT EXISTS beats (process TEXT PRIMARY KEY, at REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS retained (request_id TEXT PRIMARY KEY, at REAL NOT NULL,"
    " until REAL NOT NULL, nbytes INTEGER NOT NULL, doc TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS retained_at ON retained (at)",
    "CREATE INDEX IF NOT EXISTS retained_until ON retained (until)",
    "CREATE TABLE IF NOT EXISTS counts (counter TEXT NOT NULL, key TEXT NOT NULL,"
    " seen REAL NOT NULL, until REAL NOT NULL, body TEXT NOT NULL, PRIMARY KEY (counter, key))",
    "CREATE INDEX IF NOT EXISTS counts_seen ON counts (counter, seen)",
    "CREATE INDEX IF NOT EXISTS counts_until ON counts (until)",
)
_META = (("schema", SCHEMA_VERSION), ("epoch", 0))
_RULE = "SELECT id, body, origin, hits FROM rules"

# Connections inherited through fork, kept and never closed: closing one would
# run SQLite on state copied from the parent (its locks, its mapping of the WAL
# index), which SQLite forbids ("do not carry an open connection across a
# fork"). One per store per fork.
_inherited: list[sqlite3.Connection] = []


def _path_of(url: str) -> str:
    rest = url.removeprefix("sqlite:///")
    if rest == url or not rest or rest == "/" or any(c in rest for c in "?#"):
        raise ValueError(f"invalid 'store' {url!r}: {_FORMS}")
    path = os.path.abspath(rest)
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise ValueError(f"invalid 'store' {url!r}: the directory {directory!r} does not exist")
    return path


_BUSY_CODES = (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED (named in sqlite3 from Python 3.11)


def _busy(error: sqlite3.Error) -> bool:
    """Whether `error` is another connection holding a lock (the connection is fine)."""
    code = getattr(error, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None:
        return code & 0xFF in _BUSY_CODES
    return "locked" in str(error)


def _use_wal(conn: sqlite3.Connection, timeout_s: float) -> None:
    """Put the file in WAL mode (once for good: the mode is kept in the file)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as e:
            # Switching needs the file alone, and SQLite answers "locked" at once
            # instead of waiting its busy timeout (seen with 8 processes opening
            # a new file together): wait here, a little at random.
            if not _busy(e) or time.monotonic() > deadline:
                raise
            time.sleep(random.uniform(0.001, 0.02))


def _meta(conn: sqlite3.Connection, key: str) -> int:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return int(row[0])


def _schema_version(conn: sqlite3.Connection) -> object:
    """The stored schema version; None when there is no ``meta`` table yet."""
    sql = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
    if conn.execute(sql).fetchone() is None:
        return None
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    return "none" if row is None else row[0]


def _create_schema(conn: sqlite3.Connection) -> object:
    """Create the tables unless another process just did; the schema version after."""
    # IMMEDIATE: processes starting together create them one after the other.
    conn.execute("BEGIN IMMEDIATE")
    try:
        if _schema_version(conn) is None:
            for statement in _SCHEMA:
                conn.execute(statement)
            first = first_revision()
            meta = (*_META, ("revision", first), ("floor", first))
            conn.executemany("INSERT OR IGNORE INTO meta VALUES (?, ?)", meta)
        version = _schema_version(conn)
        conn.execute("COMMIT")
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    return version


def _rule(row: tuple[str, str, str, int]) -> StoredRule:
    return StoredRule(row[0], json.loads(row[1]), row[2], row[3])


class _View(RulesView):
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self.revision = _meta(conn, "revision")

    def get(self, rule_id: str) -> StoredRule | None:
        row = self._conn.execute(f"{_RULE} WHERE id = ?", (rule_id,)).fetchone()
        return None if row is None else _rule(row)

    def count(self) -> int:
        count: int = self._conn.execute("SELECT COUNT(*) FROM rules").fetchone()[0]
        return count

    def of_origin(self, origin: str) -> list[StoredRule]:
        return [_rule(row) for row in self._conn.execute(f"{_RULE} WHERE origin = ?", (origin,))]

    def fingerprint(self, origin: str) -> str | None:
        sql = "SELECT fingerprint FROM sources WHERE origin = ?"
        row = self._conn.execute(sql, (origin,)).fetchone()
        return None if row is None else str(row[0])


def _write(conn: sqlite3.Connection, change: Change, revision: int) -> None:
    """Write `change` as `revision`, inside the caller's transaction."""
    conn.executemany("DELETE FROM rules WHERE id = ?", [(i,) for i in change.delete])
    conn.executemany(
        "INSERT OR REPLACE INTO rules VALUES (?, ?, ?, ?)",
        [(r.id, json.dumps(r.body), r.origin, r.hits) for r in change.put],
    )
    ids = [*change.delete, *(r.id for r in change.put)]
    conn.executemany("INSERT OR REPLACE INTO changes VALUES (?, ?)", [(i, revision) for i in ids])
    floor = revision - CHANGES_KEPT
    if floor > _meta(conn, "floor"):  # it never goes down: below it is another store's
        conn.execute("DELETE FROM changes WHERE revision <= ?", (floor,))
        conn.execute("UPDATE meta SET value = ? WHERE key = 'floor'", (floor,))
    if change.events:
        rows = [(json.dumps(event),) for event in change.events]
        conn.executemany("INSERT INTO audit (body) VALUES (?)", rows)
        conn.execute(
            "DELETE FROM audit WHERE seq <= (SELECT MAX(seq) FROM audit) - ?", (AUDIT_KEPT,)
        )
    conn.executemany("INSERT OR REPLACE INTO sources VALUES (?, ?)", change.fingerprints.items())
    conn.execute("UPDATE meta SET value = ? WHERE key = 'revision'", (revision,))


class SQLiteStore(Store):
    """A store in one SQLite file, shared by the processes of one host.

    Args:
        url: ``sqlite:///relative/path.db`` (relative to the working directory
            when the store is made) or ``sqlite:////absolute/path.db``; the file
            is created when missing, its directory must exist.
        timeout_s: how long a write waits for the other processes' writes
            (SQLite's busy timeout), in seconds.

    Raises:
        ValueError: a malformed URL, a missing directory, or a file that cannot
            be opened as an SQLite database (the message names the path).
        SchemaError: the file holds another layout version than `SCHEMA_VERSION`.
        StoreError: the file stayed locked by another process for `timeout_s`.

    Example::

        store = SQLiteStore("sqlite:////var/lib/app/hindsight.db", timeout_s=1.0)
    """

    def __init__(self, url: str, *, timeout_s: float) -> None:
        self.url = url
        self.shared = True
        self._path = _path_of(url)
        self._timeout_s = timeout_s
        self._lock = new_lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        try:
            conn = self._open()
        except sqlite3.Error as e:
            raise self._open_error(e) from e
        try:
            self._check_schema(conn)
        except sqlite3.Error as e:
            raise self._open_error(e) from e
        finally:
            # A master process that forks its workers (gunicorn --preload) holds none.
            conn.close()

    def _open(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions; each method says BEGIN.
        conn = sqlite3.connect(
            self._path, timeout=self._timeout_s, isolation_level=None, check_same_thread=False
        )
        try:
            _use_wal(conn, self._timeout_s)
            conn.execute("PRAGMA synchronous = NORMAL")
        except BaseException:
            conn.close()
            raise
        return conn

    def _open_error(self, error: sqlite3.Error) -> Exception:
        if _busy(error):
            return self._error(error)
        return ValueError(f"invalid 'store' {self.url!r}: cannot use {self._path!r}: {error}")

    def _check_schema(self, conn: sqlite3.Connection) -> None:
        version = _schema_version(conn)  # without a lock: the usual case
        if version is None:
            version = _create_schema(conn)
        if version != SCHEMA_VERSION:
            raise SchemaError(
                f"store {self.url}: the file {self._path!r} holds schema version {version}; "
                f"this version of hindsight-web uses schema version {SCHEMA_VERSION}"
            )
        sql = "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'counts'"
        if not conn.execute(sql).fetchone()[0]:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _ADDED:
                    conn.execute(statement)
                conn.execute("COMMIT")
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")

    def _error(self, error: sqlite3.Error) -> StoreError:
        return StoreError(f"store {self.url}: {type(error).__name__}: {error}")

    def _connection(self) -> sqlite3.Connection:
        """This process's connection (the caller holds the lock)."""
        if self._conn is not None and self._pid != os.getpid():
            _inherited.append(self._conn)
            self._conn = None
        if self._conn is None:
            self._conn = self._open()
            self._pid = os.getpid()
        return self._conn

    @contextmanager
    def _connected(self) -> Iterator[sqlite3.Connection]:
        """The connection, held alone; a sqlite3 error rolls back and becomes StoreError."""
        with self._lock:
            try:
                yield self._connection()
            except sqlite3.Error as e:
                self._abort(keep=_busy(e))
                raise self._error(e) from e
            except BaseException:
                self._abort(keep=True)
                raise

    def _abort(self, *, keep: bool) -> None:
        """Roll back; unless `keep`, drop the connection, which the error may have broken
        (disk I/O, a file replaced): the next call opens a new one."""
        conn = self._conn
        if conn is None:
            return
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            keep = False
        if not keep:
            self._conn = None
            with suppress(sqlite3.Error):
                conn.close()

    @contextmanager
    def _transaction(self, begin: str = "BEGIN") -> Iterator[sqlite3.Connection]:
        """One transaction: ``BEGIN`` reads one snapshot, ``BEGIN IMMEDIATE`` writes."""
        with self._connected() as conn:
            conn.execute(begin)
            yield conn
            if conn.in_transaction:
                conn.execute("COMMIT")

    def change(self, plan: Plan) -> tuple[Change, int]:
        """Run `plan` in a write transaction and write its `Change` as one new revision.

        Raises:
            StoreError: the file stayed locked by other writers for `timeout_s`,
                or another SQLite error (nothing is written).
            Exception: whatever the plan raised, unchanged (nothing is written).
        """
        with self._transaction("BEGIN IMMEDIATE") as conn:
            view = _View(conn)
            change = plan(view)
            if not change:
                conn.execute("ROLLBACK")
                return change, view.revision
            _write(conn, change, view.revision + 1)
            return change, view.revision + 1

    def read_rules(self, since: int | None) -> RulesRead:
        """Every rule, or only those changed after revision `since` and the ids deleted
        since (when `since` is at most `CHANGES_KEPT` revisions behind)."""
        with self._transaction() as conn:
            revision, floor = _meta(conn, "revision"), _meta(conn, "floor")
            if since is None or not floor <= since <= revision:
                return RulesRead(revision, True, [_rule(row) for row in conn.execute(_RULE)], [])
            changed = "SELECT id FROM changes WHERE revision > ?"
            rows = conn.execute(f"{_RULE} WHERE id IN ({changed})", (since,))
            rules = [_rule(row) for row in rows]
            gone = conn.execute(f"{changed} AND id NOT IN (SELECT id FROM rules)", (since,))
            return RulesRead(revision, False, rules, [row[0] for row in gone])

    def state(self) -> tuple[int, int]:
        """``(revision, stats epoch)`` in one query (WAL: never waits for a writer)."""
        with self._connected() as conn:
            sql = (
                "SELECT (SELECT value FROM meta WHERE key = 'revision'),"
                " (SELECT value FROM meta WHERE key = 'epoch')"
            )
            revision, epoch = conn.execute(sql).fetchone()
            return int(revision), int(epoch)

    def probe_write(self) -> bool:
        """Take the write lock and let it go, writing nothing: a write would wait as long.

        Raises:
            StoreError: the file stayed locked by other writers for `timeout_s`,
                or another SQLite error.
        """
        with self._transaction("BEGIN IMMEDIATE") as conn:
            conn.execute("ROLLBACK")
        return True

    def add_hits(self, hits: dict[str, int]) -> None:
        """Add to the hits of the rules still held; waits up to `timeout_s` for writers."""
        if not hits:
            return
        with self._transaction("BEGIN IMMEDIATE") as conn:
            rows = [(n, rule_id) for rule_id, n in hits.items()]
            conn.executemany("UPDATE rules SET hits = hits + ? WHERE id = ?", rows)

    def hits(self, ids: list[str] | None = None) -> dict[str, int]:
        """The hits of these rules (every rule when None), read in one snapshot."""
        with self._transaction() as conn:
            rows = conn.execute("SELECT id, hits FROM rules").fetchall()
        if ids is None:
            return dict(rows)
        wanted = set(ids)
        return {rule_id: n for rule_id, n in rows if rule_id in wanted}

    def audit(self, limit: int) -> list[dict[str, Any]]:
        """The newest `limit` audit events, newest first."""
        with self._connected() as conn:
            sql = "SELECT body FROM audit ORDER BY seq DESC LIMIT ?"
            return [json.loads(row[0]) for row in conn.execute(sql, (max(limit, 0),))]

    def publish_stats(self, row: StatsRow, epoch: int) -> int:
        """Write `row` if `epoch` is current; return the current epoch."""
        with self._transaction("BEGIN IMMEDIATE") as conn:
            current = _meta(conn, "epoch")
            if current == epoch:
                values = (row.process, row.host, row.updated, row.body)
                conn.execute("INSERT OR REPLACE INTO stats VALUES (?, ?, ?, ?)", values)
            return current

    def read_stats(self) -> tuple[int, list[StatsRow]]:
        """``(epoch, rows)`` read in one snapshot."""
        with self._transaction() as conn:
            epoch = _meta(conn, "epoch")
            rows = conn.execute("SELECT process, host, updated, body FROM stats")
            return epoch, [StatsRow(p, h, u, bytes(b)) for p, h, u, b in rows]

    def reset_stats(self) -> int:
        """Delete every row and start a new epoch, returned."""
        with self._transaction("BEGIN IMMEDIATE") as conn:
            conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'epoch'")
            conn.execute("DELETE FROM stats")
            return _meta(conn, "epoch")

    def retire_stats(self, gone: dict[str, float], into: StatsRow, epoch: int) -> bool:
        """Replace the rows of `gone` by `into` if none changed and `epoch` is current."""
        with self._transaction("BEGIN IMMEDIATE") as conn:
            if _meta(conn, "epoch") != epoch:
                return False
            sql = "SELECT updated FROM stats WHERE process = ?"
            for process, updated in gone.items():
                row = conn.execute(sql, (process,)).fetchone()
                if row is None or row[0] != updated:
                    return False
            conn.executemany("DELETE FROM stats WHERE process = ?", [(p,) for p in gone])
            values = (into.process, into.host, into.updated, into.body)
            conn.execute("INSERT OR REPLACE INTO stats VALUES (?, ?, ?, ?)", values)
            return True

    def post_query(self, body: dict[str, Any], expires: float) -> int:
        """Insert the question, forgetting those expired for `QUERIES_KEPT_S`."""
        with self._transaction("BEGIN IMMEDIATE") as conn:
            old = time.time() - QUERIES_KEPT_S
            conn.execute("DELETE FROM queries WHERE expires < ?", (old,))
            conn.execute("DELETE FROM answers WHERE query NOT IN (SELECT id FROM queries)")
            sql = "INSERT INTO queries (expires, body) VALUES (?, ?)"
            query_id = conn.execute(sql, (expires, json.dumps(body))).lastrowid
            return int(query_id or 0)

    def queries_after(self, after: int | None) -> tuple[int, list[tuple[int, dict[str, Any]]]]:
        """The newest id (``sqlite_sequence``: ids never come back) and the questions after."""
        with self._transaction() as conn:
            row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'queries'").fetchone()
            newest = 0 if row is None else int(row[0])
            if after is None or newest <= after:
                return newest, []
            sql = "SELECT id, body FROM queries WHERE id > ? AND expires > ? ORDER BY id"
            rows = conn.execute(sql, (after, time.time())).fetchall()
        return newest, [(int(i), json.loads(body)) for i, body in rows]

    def put_answer(self, query_id: int, process: str, body: dict[str, Any]) -> None:
        with self._transaction("BEGIN IMMEDIATE") as conn:
            sql = "INSERT OR REPLACE INTO answers VALUES (?, ?, ?)"
            conn.execute(sql, (query_id, process, json.dumps(body)))

    def answers(self, query_id: int) -> dict[str, dict[str, Any]]:
        with self._connected() as conn:
            rows = conn.execute("SELECT process, body FROM answers WHERE query = ?", (query_id,))
            return {process: json.loads(body) for process, body in rows}

    def beat(self, process: str, at: float) -> None:
        with self._transaction("BEGIN IMMEDIATE") as conn:
            conn.execute("INSERT OR REPLACE INTO beats VALUES (?, ?)", (process, at))
            conn.execute("DELETE FROM beats WHERE at < ?", (at - BEATS_KEPT_S,))

    def peers(self, since: float) -> list[str]:
        with self._connected() as conn:
            rows = conn.execute("SELECT process FROM beats WHERE at >= ?", (since,))
            return [row[0] for row in rows]

    def retain(self, request_id: str, at: float, until: float, doc: str, max_bytes: int) -> int:
        """Insert, then delete what is past its time and the oldest over `max_bytes`."""
        nbytes = len(doc)
        if nbytes > max_bytes:
            return -1
        with self._transaction("BEGIN IMMEDIATE") as conn:
            conn.execute("DELETE FROM retained WHERE until < ?", (time.time(),))
            sql = "INSERT OR REPLACE INTO retained VALUES (?, ?, ?, ?, ?)"
            conn.execute(sql, (request_id, at, until, nbytes, doc))
            total = conn.execute("SELECT coalesce(sum(nbytes), 0) FROM retained").fetchone()[0]
            evicted = 0
            sql = "SELECT request_id, nbytes FROM retained ORDER BY at LIMIT 1000"
            for other, size in conn.execute(sql).fetchall() if total > max_bytes else ():
                if total <= max_bytes:
                    break
                conn.execute("DELETE FROM retained WHERE request_id = ?", (other,))
                total -= size
                evicted += 1
            return evicted

    def expire_retained(self, now: float) -> None:
        with self._transaction("BEGIN IMMEDIATE") as conn:
            conn.execute("DELETE FROM retained WHERE until < ?", (now,))

    def retained(
        self, since: float | None, until: float | None, limit: int
    ) -> list[dict[str, Any]]:
        low = -math.inf if since is None else since
        high = math.inf if until is None else until
        with self._connected() as conn:
            sql = (
                "SELECT doc FROM retained WHERE at >= ? AND at <= ? AND until >= ?"
                " ORDER BY at DESC LIMIT ?"
            )
            rows = conn.execute(sql, (low, high, time.time(), limit)).fetchall()
        return [json.loads(row[0]) for row in rows]

    def retained_one(self, request_id: str) -> dict[str, Any] | None:
        with self._connected() as conn:
            sql = "SELECT doc FROM retained WHERE request_id = ? AND until >= ?"
            row = conn.execute(sql, (request_id, time.time())).fetchone()
        if row is None:
            return None
        found: dict[str, Any] = json.loads(row[0])
        return found

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
        with self._transaction("BEGIN IMMEDIATE") as conn:
            conn.execute("DELETE FROM counts WHERE until < ?", (now,))
            held: dict[str, str] = {}
            for start in range(0, len(keys), 500):
                part = keys[start : start + 500]
                sql = "SELECT key, body FROM counts WHERE counter = ? AND key IN ({})"
                rows = conn.execute(sql.format(",".join("?" * len(part))), (counter, *part))
                held.update(rows.fetchall())
            conn.executemany(
                "INSERT OR REPLACE INTO counts VALUES (?, ?, ?, ?, ?)",
                [(counter, key, now, now + keep_s, text) for key, text in update(held).items()],
            )
            size = conn.execute("SELECT count(*) FROM counts WHERE counter = ?", (counter,))
            evicted = max(0, int(size.fetchone()[0]) - max_keys)
            if evicted:
                sql = (
                    "DELETE FROM counts WHERE counter = ? AND key IN (SELECT key FROM counts"
                    " WHERE counter = ? ORDER BY seen LIMIT ?)"
                )
                conn.execute(sql, (counter, counter, evicted))
            return evicted

    def expire_counts(self, now: float) -> None:
        with self._transaction("BEGIN IMMEDIATE") as conn:
            conn.execute("DELETE FROM counts WHERE until < ?", (now,))

    def read_counts(self, counter: str, limit: int) -> dict[str, str]:
        with self._connected() as conn:
            sql = (
                "SELECT key, body FROM counts WHERE counter = ? AND until >= ?"
                " ORDER BY seen DESC LIMIT ?"
            )
            return dict(conn.execute(sql, (counter, time.time(), limit)).fetchall())

    def close(self) -> None:
        """Close this process's connection; the next call opens a new one."""
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None and self._pid == os.getpid():
                conn.close()
            elif conn is not None:
                _inherited.append(conn)
