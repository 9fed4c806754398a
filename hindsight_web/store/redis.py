"""``redis://host:port/db``: a store shared by every process of every host.

Every key starts with ``{prefix}:`` (``?prefix=name`` in the URL, default
``hindsight``), so that apps can share one Redis:

==================  ==============================================================
``schema``          the layout version, `SCHEMA_VERSION`
``revision``        the rules' revision: INCR by each change
``floor``           changes at or below this revision are forgotten
``rules``           hash: id -> JSON ``{"body": ..., "origin": ...}``
``hits``            hash: id -> hits
``changes``         sorted set: id -> revision of its last change (put or delete)
``audit``           list of JSON events, newest first
``fingerprints``    hash: origin -> fingerprint
``epoch``           the statistics epoch
``stats``           hash: process -> JSON ``[host, updated]``, newline, body
``query``           the id of the newest question to every process: INCR by each
``queries``         hash: id -> JSON ``{"expires": ..., "body": ...}``
``answers:{id}``    hash: process -> JSON answer (expires with its question)
``beats``           hash: process -> time of its last heartbeat
``retained``        hash: request id -> JSON document kept by a ``retain`` rule
``retained:at``     sorted set: request id -> its time (the oldest go first)
``retained:until``  sorted set: request id -> when its time is up
``retained:size``   hash: request id -> bytes; ``retained:bytes`` their sum
``counts:{c}``      hash: key -> JSON counts of counter ``c`` (a ``count`` rule)
``counts:{c}:seen`` sorted set: key -> when it was last counted (the oldest go first)
==================  ==============================================================

The two keys of a counter expire when it has counted nothing for its window.

A change is an optimistic transaction (WATCH the revision, plan, MULTI/EXEC),
planned again when another process changed the rules meanwhile.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

try:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry
except ImportError as e:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "the 'redis://' store needs redis-py: pip install 'hindsight-web[redis]'"
    ) from e

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
    check_prefix,
    display_url,
    first_revision,
)

if TYPE_CHECKING:
    from redis.client import Pipeline
    from redis.typing import EncodableT

__all__ = ["RedisStore"]

T = TypeVar("T")

DEFAULT_PREFIX = "hindsight"
_ATTEMPTS = 50
"""Optimistic transactions tried before giving up (each failed one means another succeeded)."""

_FORMS = (
    "expected 'redis://[[user]:password@]host:port/db' or 'rediss://...' (TLS), "
    "with an optional '?prefix=name'"
)

# Keeps one request's document (ARGV: id, at, until, bytes, doc, max bytes, now):
# forgets those past their time, replaces one with the same id, evicts the oldest
# while over the bytes; returns how many it evicted.
_RETAIN = """
local docs, by_at, by_until, sizes, total = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
-- Every trace of `id` goes, whichever of its keys are left (a Redis that evicted
-- some under maxmemory): the loops below always make progress.
local function forget(id)
  local size = redis.call('HGET', sizes, id)
  redis.call('HDEL', docs, id)
  redis.call('HDEL', sizes, id)
  redis.call('ZREM', by_at, id)
  redis.call('ZREM', by_until, id)
  if not size then return 0 end
  redis.call('DECRBY', total, size)
  return 1
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', by_until, '-inf', '(' .. ARGV[7])) do
  forget(id)
end
if ARGV[1] == '' then return 0 end  -- only forget what is past its time
forget(ARGV[1])
redis.call('HSET', docs, ARGV[1], ARGV[5])
redis.call('HSET', sizes, ARGV[1], ARGV[4])
redis.call('ZADD', by_at, ARGV[2], ARGV[1])
redis.call('ZADD', by_until, ARGV[3], ARGV[1])
local bytes = redis.call('INCRBY', total, ARGV[4])
local evicted = 0
while bytes > tonumber(ARGV[6]) do
  local oldest = redis.call('ZRANGE', by_at, 0, 0)[1]
  if not oldest or oldest == ARGV[1] then break end
  evicted = evicted + forget(oldest)
  bytes = tonumber(redis.call('GET', total) or 0)
end
return evicted
"""

# Posts a question (KEYS: the id counter, the questions hash; ARGV: the JSON to hold):
# the id and its question appear together, so a reader never sees one without the other.
_POST_QUERY = """
local id = redis.call('INCR', KEYS[1])
redis.call('HSET', KEYS[2], id, ARGV[1])
return id
"""

# Adds hits only to rules that exist, atomically: a rule deleted meanwhile
# never gets a hits entry back.
_ADD_HITS = """
for i = 1, #ARGV, 2 do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 1 then
    redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 1])
  end
end
return 0
"""


class _Keys:
    """The keys of one store, under its prefix."""

    def __init__(self, prefix: str) -> None:
        self.schema = f"{prefix}:schema"
        self.revision = f"{prefix}:revision"
        self.floor = f"{prefix}:floor"
        self.rules = f"{prefix}:rules"
        self.hits = f"{prefix}:hits"
        self.changes = f"{prefix}:changes"
        self.audit = f"{prefix}:audit"
        self.fingerprints = f"{prefix}:fingerprints"
        self.epoch = f"{prefix}:epoch"
        self.stats = f"{prefix}:stats"
        self.query = f"{prefix}:query"
        self.queries = f"{prefix}:queries"
        self.answers = f"{prefix}:answers:"
        self.beats = f"{prefix}:beats"
        self.retained = f"{prefix}:retained"
        self.retained_at = f"{prefix}:retained:at"
        self.retained_until = f"{prefix}:retained:until"
        self.retained_size = f"{prefix}:retained:size"
        self.retained_bytes = f"{prefix}:retained:bytes"
        self.counts = f"{prefix}:counts:"


def _split_url(url: str) -> tuple[str, str]:
    """``(the URL for redis-py, the key prefix)``: our ``prefix`` removed from the query."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefixes = [value for name, value in query if name == "prefix"]
    if len(prefixes) > 1:
        raise ValueError(f"invalid 'store' {display_url(url)!r}: 'prefix' given twice")
    if parts.path.strip("/") and not parts.path.strip("/").isdigit():
        raise ValueError(f"invalid 'store' {display_url(url)!r}: the db must be a number")
    rest = urlencode([(name, value) for name, value in query if name != "prefix"])
    return urlunsplit(parts._replace(query=rest)), check_prefix(
        prefixes[0] if prefixes else DEFAULT_PREFIX
    )


def _int(value: Any) -> int:
    return 0 if value is None else int(value)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _rule(rule_id: bytes | str, raw: bytes | str, hits: Any) -> StoredRule:
    stored = json.loads(raw)
    return StoredRule(_text(rule_id), stored["body"], stored["origin"], _int(hits))


def _stats_value(row: StatsRow) -> bytes:
    return json.dumps([row.host, row.updated]).encode() + b"\n" + row.body


def _stats_row(process: bytes | str, value: bytes | str) -> StatsRow:
    raw = value.encode() if isinstance(value, str) else value
    head, _, body = raw.partition(b"\n")
    host, updated = json.loads(head)
    return StatsRow(_text(process), host, updated, body)


class _View(RulesView):
    """Reads of a plan, on the pipeline that WATCHes the revision (immediate mode)."""

    def __init__(self, store: RedisStore, pipe: Pipeline) -> None:
        self._store = store
        self._pipe = pipe
        self._keys = store._keys
        self.revision, self.floor = map(_int, pipe.mget(self._keys.revision, self._keys.floor))

    def get(self, rule_id: str) -> StoredRule | None:
        with self._store._guard():
            raw = self._pipe.hget(self._keys.rules, rule_id)
            return None if raw is None else _rule(rule_id, raw, self._hits([rule_id])[0])

    def count(self) -> int:
        with self._store._guard():
            return self._pipe.hlen(self._keys.rules)

    def of_origin(self, origin: str) -> list[StoredRule]:
        with self._store._guard():
            found = {
                _text(rule_id): stored
                for rule_id, raw in self._pipe.hgetall(self._keys.rules).items()
                if (stored := json.loads(raw))["origin"] == origin
            }
            hits = self._hits(list(found))
        return [
            StoredRule(rule_id, stored["body"], origin, _int(n))
            for (rule_id, stored), n in zip(found.items(), hits, strict=True)
        ]

    def fingerprint(self, origin: str) -> str | None:
        with self._store._guard():
            found = self._pipe.hget(self._keys.fingerprints, origin)
        return None if found is None else _text(found)

    def _hits(self, ids: list[str]) -> list[Any]:
        return self._pipe.hmget(self._keys.hits, ids) if ids else []


class RedisStore(Store):
    """A store in a Redis server, shared by the processes of every host.

    Args:
        url: ``redis://[[user]:password@]host:port/db`` or ``rediss://...``
            (TLS), parsed by redis-py, with an optional ``?prefix=name`` (1 to
            64 letters, digits, ``_ . : -``; default ``hindsight``) that every
            key starts with.
        timeout_s: how long connecting and each reply may take, in seconds;
            one call fails after about that long when the server is
            unreachable (redis-py does not retry).

    The constructor checks the stored schema version when the server answers
    within `timeout_s`; when it does not, the store is made anyway (the app
    starts while Redis is down) and the first call that reaches it checks.

    Raises:
        ImportError: redis-py is not installed.
        ValueError: a malformed URL or prefix.
        SchemaError: the keys hold another layout version than `SCHEMA_VERSION`.

    Example::

        store = RedisStore("redis://:secret@redis.internal:6379/0?prefix=shop", timeout_s=1.0)
    """

    def __init__(self, url: str, *, timeout_s: float) -> None:
        self.url = display_url(url)
        self.shared = True
        self._redis_url, prefix = _split_url(url)
        self._keys = _Keys(prefix)
        self._timeout_s = timeout_s
        self._lock = new_lock()
        self._client: redis.Redis | None = None
        self._pid = 0
        self._checked = False
        try:
            client = self._new_client()
        except ValueError as e:
            raise ValueError(f"invalid 'store' {self.url!r}: {e}; {_FORMS}") from e
        try:
            self._check_schema(client)
        except TypeError as e:  # an unknown query parameter, found when connecting
            raise ValueError(f"invalid 'store' {self.url!r}: {e}; {_FORMS}") from e
        except (redis.RedisError, OSError):
            pass  # unreachable: checked by the first call that reaches it
        finally:
            # A master process that forks its workers (gunicorn --preload) holds none.
            client.close()

    def _new_client(self) -> redis.Redis:
        # One attempt per command, said explicitly: redis-py 8's default depends on
        # the constructor (Redis() retries 10 times with backoff up to 1 s, from_url
        # not at all). So a call to a server that is down fails within about
        # timeout_s, and no command is ever sent twice (an INCR or HINCRBY whose
        # reply was lost). A connection the server closed meanwhile costs no failed
        # call: the pool replaces it before handing it out.
        return redis.Redis.from_url(
            self._redis_url,
            socket_connect_timeout=self._timeout_s,
            socket_timeout=self._timeout_s,
            retry=Retry(NoBackoff(), 0),
        )

    def _check_schema(self, client: redis.Redis) -> None:
        pipe = client.pipeline()
        first = first_revision()
        pipe.set(self._keys.revision, first, nx=True)  # only where the store is new
        pipe.set(self._keys.floor, first, nx=True)
        pipe.set(self._keys.schema, SCHEMA_VERSION, nx=True)
        pipe.get(self._keys.schema)
        found = _text(pipe.execute()[-1])
        if found != str(SCHEMA_VERSION):
            raise SchemaError(
                f"store {self.url}: the key {self._keys.schema!r} holds schema version "
                f"{found}; this version of hindsight-web uses schema version {SCHEMA_VERSION}"
            )
        self._checked = True

    def _redis(self) -> redis.Redis:
        """This process's client, made when first needed (the schema checked then)."""
        with self._lock:
            if self._client is None or self._pid != os.getpid():
                # An inherited client is dropped, not closed: redis-py's pool
                # notices the fork and leaves the parent's sockets alone.
                self._client = self._new_client()
                self._pid = os.getpid()
            client = self._client
        if not self._checked:
            self._check_schema(client)
        return client

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Raise every error of redis-py or the network as StoreError."""
        try:
            yield
        except (redis.RedisError, OSError) as e:
            raise StoreError(f"store {self.url}: {type(e).__name__}: {e}") from e

    def _transact(self, watch: tuple[str, ...], attempt: Callable[[Pipeline], T]) -> T:
        """Run `attempt` on a pipeline watching `watch` until its EXEC is not refused."""
        with self._guard():
            client = self._redis()
            for n in range(_ATTEMPTS):
                pipe = client.pipeline()
                try:
                    _watch(pipe, *watch)
                    return attempt(pipe)
                except redis.WatchError:
                    pass
                finally:
                    _reset(pipe)
                _back_off(n)
        raise self._contended()

    def _contended(self) -> StoreError:
        return StoreError(f"store {self.url}: {_ATTEMPTS} conflicting transactions in a row")

    def change(self, plan: Plan) -> tuple[Change, int]:
        """Run `plan` with the revision WATCHed and write its `Change` in one MULTI/EXEC.

        The plan runs again when another process changed the rules meanwhile.

        Raises:
            StoreError: the server is unreachable, too slow, refused, or
                `_ATTEMPTS` transactions in a row conflicted (nothing is written).
            Exception: whatever the plan raised, unchanged (nothing is written).
        """
        for n in range(_ATTEMPTS):
            with self._guard():
                pipe = self._redis().pipeline()
            try:
                with self._guard():
                    _watch(pipe, self._keys.revision)
                    view = _View(self, pipe)
                change = plan(view)
                if not change:
                    return change, view.revision
                # No revision: a new store, or one that lost its data (a restart without
                # persistence): its numbers start afresh, at random, never where they were.
                revision = view.revision + 1 if view.revision else first_revision()
                with self._guard():
                    if self._write(pipe, change, revision, view.floor):
                        return change, revision
            finally:
                _reset(pipe)
            _back_off(n)
        raise self._contended()

    def _write(self, pipe: Pipeline, change: Change, revision: int, floor: int) -> bool:
        """Queue `change` as `revision` and EXEC; False when the revision moved meanwhile.

        `floor` is the store's floor before the change: it never goes down.
        """
        keys = self._keys
        pipe.multi()
        pipe.set(keys.revision, revision)  # WATCHed: nobody wrote another meanwhile
        if change.delete:
            pipe.hdel(keys.rules, *change.delete)
            pipe.hdel(keys.hits, *change.delete)
        if change.put:
            rules = [(r.id, json.dumps({"body": r.body, "origin": r.origin})) for r in change.put]
            pipe.hset(keys.rules, mapping=_mapping(rules))
            pipe.hset(keys.hits, mapping=_mapping((r.id, r.hits) for r in change.put))
        ids = [*change.delete, *(r.id for r in change.put)]
        if ids:
            pipe.zadd(keys.changes, dict.fromkeys(ids, revision))
        if not floor:  # the first revision of a store: nothing before it is known
            pipe.set(keys.floor, revision)
        elif revision - CHANGES_KEPT > floor:
            pipe.zremrangebyscore(keys.changes, "-inf", revision - CHANGES_KEPT)
            pipe.set(keys.floor, revision - CHANGES_KEPT)
        if change.events:
            pipe.lpush(keys.audit, *(json.dumps(event) for event in change.events))
            pipe.ltrim(keys.audit, 0, AUDIT_KEPT - 1)
        if change.fingerprints:
            pipe.hset(keys.fingerprints, mapping=_mapping(change.fingerprints.items()))
        try:
            pipe.execute()
        except redis.WatchError:
            return False
        return True

    def read_rules(self, since: int | None) -> RulesRead:
        """Every rule, or only those changed after revision `since` and the ids deleted
        since (when `since` is at most `CHANGES_KEPT` revisions behind)."""
        keys = self._keys
        with self._guard():
            client = self._redis()
            if since is not None:
                pipe = client.pipeline()
                pipe.mget(keys.revision, keys.floor)
                pipe.zrangebyscore(keys.changes, f"({since}", "+inf")
                (revision, floor), ids = pipe.execute()
                if _int(floor) <= since <= _int(revision):
                    return self._changed(client, _int(revision), [_text(i) for i in ids])
            pipe = client.pipeline()
            pipe.get(keys.revision)
            pipe.hgetall(keys.rules)
            pipe.hgetall(keys.hits)
            revision, rules, hits = pipe.execute()
        found = [_rule(rule_id, raw, hits.get(rule_id)) for rule_id, raw in rules.items()]
        return RulesRead(_int(revision), True, found, [])

    def _changed(self, client: redis.Redis, revision: int, ids: list[str]) -> RulesRead:
        # Read after the revision: the rules may be newer than `revision` says,
        # which costs the reader one more read of them next time, never a change.
        if not ids:
            return RulesRead(revision, False, [], [])
        pipe = client.pipeline()
        pipe.hmget(self._keys.rules, ids)
        pipe.hmget(self._keys.hits, ids)
        rules, hits = pipe.execute()
        rows = list(zip(ids, rules, hits, strict=True))
        found = [_rule(i, raw, n) for i, raw, n in rows if raw is not None]
        deleted = [i for i, raw, _ in rows if raw is None]
        return RulesRead(revision, False, found, deleted)

    def state(self) -> tuple[int, int]:
        """``(revision, stats epoch)`` in one MGET."""
        with self._guard():
            revision, epoch = self._redis().mget(self._keys.revision, self._keys.epoch)
        return _int(revision), _int(epoch)

    def add_hits(self, hits: dict[str, int]) -> None:
        """Add to the hits of the rules still held, in one atomic script."""
        if not hits:
            return
        args = [x for rule_id, n in hits.items() for x in (rule_id, n)]
        with self._guard():
            client = self._redis()
            client.register_script(_ADD_HITS)(keys=[self._keys.rules, self._keys.hits], args=args)

    def hits(self, ids: list[str] | None = None) -> dict[str, int]:
        """The hits of these rules (every rule when None)."""
        with self._guard():
            client = self._redis()
            if ids is None:
                every = client.hgetall(self._keys.hits)
                return {_text(rule_id): _int(n) for rule_id, n in every.items()}
            found = client.hmget(self._keys.hits, ids) if ids else []
        pairs = zip(ids, found, strict=True)
        return {rule_id: _int(n) for rule_id, n in pairs if n is not None}

    def audit(self, limit: int) -> list[dict[str, Any]]:
        """The newest `limit` audit events, newest first."""
        if limit <= 0:
            return []
        with self._guard():
            events = self._redis().lrange(self._keys.audit, 0, limit - 1)
        return [json.loads(event) for event in events]

    def publish_stats(self, row: StatsRow, epoch: int) -> int:
        """Write `row` if `epoch` is current (WATCHed: a reset meanwhile wins); return
        the current epoch."""

        def attempt(pipe: Pipeline) -> int:
            current = _int(pipe.get(self._keys.epoch))
            if current == epoch:
                pipe.multi()
                pipe.hset(self._keys.stats, row.process, _stats_value(row))
                pipe.execute()
            return current

        return self._transact((self._keys.epoch,), attempt)

    def read_stats(self) -> tuple[int, list[StatsRow]]:
        """``(epoch, rows)`` read in one MULTI/EXEC."""
        with self._guard():
            pipe = self._redis().pipeline()
            pipe.get(self._keys.epoch)
            pipe.hgetall(self._keys.stats)
            epoch, rows = pipe.execute()
        return _int(epoch), [_stats_row(process, value) for process, value in rows.items()]

    def reset_stats(self) -> int:
        """Delete every row and start a new epoch, returned (one MULTI/EXEC)."""
        with self._guard():
            pipe = self._redis().pipeline()
            pipe.incr(self._keys.epoch)
            pipe.delete(self._keys.stats)
            epoch, _ = pipe.execute()
        return int(epoch)

    def retire_stats(self, gone: dict[str, float], into: StatsRow, epoch: int) -> bool:
        """Replace the rows of `gone` by `into` if none changed and `epoch` is current
        (the stats and the epoch WATCHed)."""
        processes = list(gone)

        def attempt(pipe: Pipeline) -> bool:
            current = _int(pipe.get(self._keys.epoch))
            values = pipe.hmget(self._keys.stats, processes) if processes else []
            if current != epoch or any(
                value is None or _stats_row(process, value).updated != gone[process]
                for process, value in zip(processes, values, strict=True)
            ):
                return False
            pipe.multi()
            if processes:
                pipe.hdel(self._keys.stats, *processes)
            pipe.hset(self._keys.stats, into.process, _stats_value(into))
            pipe.execute()
            return True

        return self._transact((self._keys.stats, self._keys.epoch), attempt)

    def post_query(self, body: dict[str, Any], expires: float) -> int:
        """Write the question under a new id (one script: the id and the question appear
        together); forgets those expired for `QUERIES_KEPT_S`."""
        keys = self._keys
        held = json.dumps({"expires": expires, "body": body})
        with self._guard():
            client = self._redis()
            old = time.time() - QUERIES_KEPT_S
            known = client.hgetall(keys.queries)
            gone = [i for i, raw in known.items() if json.loads(raw)["expires"] < old]
            if gone:
                pipe = client.pipeline(transaction=False)
                pipe.hdel(keys.queries, *gone)
                pipe.delete(*(f"{keys.answers}{_text(i)}" for i in gone))
                pipe.execute()
            post = client.register_script(_POST_QUERY)
            query_id = int(post(keys=[keys.query, keys.queries], args=[held]))
        return query_id

    def queries_after(self, after: int | None) -> tuple[int, list[tuple[int, dict[str, Any]]]]:
        """One GET when nothing is new; the newest 100 questions at most."""
        keys = self._keys
        with self._guard():
            client = self._redis()
            newest = _int(client.get(keys.query))
            if after is not None and newest < after:  # a Redis that lost its data
                after = 0
            if after is None or newest <= after:
                return newest, []
            ids = list(range(max(after + 1, newest - 99), newest + 1))
            held = client.hmget(keys.queries, ids)
        now = time.time()
        found = []
        for query_id, raw in zip(ids, held, strict=True):
            if raw is not None:
                question = json.loads(raw)
                if question["expires"] > now:
                    found.append((query_id, question["body"]))
        return newest, found

    def put_answer(self, query_id: int, process: str, body: dict[str, Any]) -> None:
        key = f"{self._keys.answers}{query_id}"
        with self._guard():
            pipe = self._redis().pipeline(transaction=False)
            pipe.hset(key, process, json.dumps(body))
            pipe.expire(key, int(QUERIES_KEPT_S) + 60)
            pipe.execute()

    def answers(self, query_id: int) -> dict[str, dict[str, Any]]:
        with self._guard():
            held = self._redis().hgetall(f"{self._keys.answers}{query_id}")
        return {_text(process): json.loads(body) for process, body in held.items()}

    def beat(self, process: str, at: float) -> None:
        with self._guard():
            client = self._redis()
            client.hset(self._keys.beats, process, repr(at))
            if random.random() < 0.01:  # now and then: forget processes gone for long
                held = client.hgetall(self._keys.beats)
                gone = [p for p, seen in held.items() if float(seen) < at - BEATS_KEPT_S]
                if gone:
                    client.hdel(self._keys.beats, *gone)

    def peers(self, since: float) -> list[str]:
        with self._guard():
            held = self._redis().hgetall(self._keys.beats)
        return [_text(process) for process, at in held.items() if float(at) >= since]

    def retain(self, request_id: str, at: float, until: float, doc: str, max_bytes: int) -> int:
        """One atomic script: forget what is past its time, keep `doc`, evict the oldest."""
        if len(doc) > max_bytes:
            return -1
        args: list[str | int | float] = [request_id, repr(at), repr(until), len(doc), doc]
        return self._retain_script([*args, max_bytes, time.time()])

    def expire_retained(self, now: float) -> None:
        self._retain_script(["", "", "", 0, "", 0, now])  # no document: only forget

    def _retain_script(self, args: list[str | int | float]) -> int:
        keys = self._keys
        retained = [
            keys.retained,
            keys.retained_at,
            keys.retained_until,
            keys.retained_size,
            keys.retained_bytes,
        ]
        with self._guard():
            script = self._redis().register_script(_RETAIN)
            return int(script(keys=retained, args=args))

    def retained(
        self, since: float | None, until: float | None, limit: int
    ) -> list[dict[str, Any]]:
        keys = self._keys
        low = "-inf" if since is None else repr(since)
        high = "+inf" if until is None else repr(until)
        with self._guard():
            client = self._redis()
            found = client.zrevrangebyscore(keys.retained_at, high, low, start=0, num=limit)
            ids = [_text(i) for i in found if isinstance(i, (bytes, str))]
            if not ids:
                return []
            pipe = client.pipeline(transaction=False)
            pipe.hmget(keys.retained, ids)
            pipe.zmscore(keys.retained_until, ids)
            docs, ends = pipe.execute()
        now = time.time()
        return [
            json.loads(doc)
            for doc, end in zip(docs, ends, strict=True)
            if doc is not None and end is not None and end >= now
        ]

    def retained_one(self, request_id: str) -> dict[str, Any] | None:
        keys = self._keys
        with self._guard():
            pipe = self._redis().pipeline(transaction=False)
            pipe.hget(keys.retained, request_id)
            pipe.zscore(keys.retained_until, request_id)
            doc, end = pipe.execute()
        if doc is None or end is None or end < time.time():
            return None
        found: dict[str, Any] = json.loads(doc)
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
        """One optimistic transaction on the counter's two keys (WATCHed)."""
        held_key = self._keys.counts + counter
        seen_key = held_key + ":seen"
        ttl_ms = max(1, int(keep_s * 1000))

        def attempt(pipe: Pipeline) -> int:
            values = pipe.hmget(held_key, keys) if keys else []
            held = {k: _text(v) for k, v in zip(keys, values, strict=True) if v is not None}
            texts = update(held)
            old = _texts(pipe.zrangebyscore(seen_key, "-inf", f"({now - keep_s!r}"))
            size = int(pipe.zcard(seen_key)) - len(old)
            scores = pipe.zmscore(seen_key, list(texts)) if texts else []
            new = sum(1 for score in scores if score is None)
            over = max(0, size + new - max_keys)
            gone = set(old)
            if over:
                oldest = _texts(pipe.zrange(seen_key, 0, over + len(old) + len(texts) - 1))
                gone.update([k for k in oldest if k not in gone and k not in texts][:over])
            pipe.multi()
            if gone:
                pipe.hdel(held_key, *gone)
                pipe.zrem(seen_key, *gone)
            if texts:
                pipe.hset(held_key, mapping=_mapping(texts.items()))
                pipe.zadd(seen_key, dict.fromkeys(texts, now))
            pipe.pexpire(held_key, ttl_ms)
            pipe.pexpire(seen_key, ttl_ms)
            pipe.execute()
            return len(gone) - len(old)

        return self._transact((held_key, seen_key), attempt)

    def expire_counts(self, now: float) -> None:
        """Nothing to do: a counter's keys expire with it (see `update_counts`)."""

    def read_counts(self, counter: str, limit: int) -> dict[str, str]:
        held_key = self._keys.counts + counter
        with self._guard():
            client = self._redis()
            keys = _texts(client.zrevrange(held_key + ":seen", 0, limit - 1))
            if not keys:
                return {}
            values = client.hmget(held_key, keys)
        return {k: _text(v) for k, v in zip(keys, values, strict=True) if v is not None}

    def close(self) -> None:
        """Close this process's connections; the next call opens new ones."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None and self._pid == os.getpid():
            client.close()


def _texts(values: Any) -> list[str]:
    return [_text(v) for v in values if isinstance(v, (bytes, str))]


def _mapping(items: Iterable[tuple[str, str | int]]) -> dict[EncodableT, EncodableT]:
    return dict(items)


def _watch(pipe: Pipeline, *keys: str) -> None:
    pipe.watch(*keys)  # type: ignore[no-untyped-call]  # untyped in redis-py


def _reset(pipe: Pipeline) -> None:
    """Give the pipeline's connection back, even when UNWATCH fails (the connection,
    then closed, forgets the WATCH): an error here must not hide the plan's own."""
    try:
        pipe.reset()
    except (redis.RedisError, OSError):
        if pipe.connection is not None:
            pipe.connection.disconnect()  # type: ignore[no-untyped-call]
        pipe.watching = False
        pipe.reset()


def _back_off(attempt: int) -> None:
    # Jitter, so that processes that conflicted do not meet again at once.
    time.sleep(random.uniform(0, 0.001 * min(attempt, 10)))
