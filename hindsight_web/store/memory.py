"""``memory://``: the store of one process (nothing is shared; nothing can fail)."""

from __future__ import annotations

import json
import math
import time
from collections import OrderedDict, deque
from dataclasses import replace
from typing import Any

from .._sync import new_lock
from . import (
    AUDIT_KEPT,
    BEATS_KEPT_S,
    QUERIES_KEPT_S,
    Change,
    CountUpdate,
    Plan,
    RulesRead,
    RulesView,
    StatsRow,
    Store,
    StoredRule,
)

__all__ = ["MemoryStore"]


class _View(RulesView):
    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self.revision = store._revision

    def get(self, rule_id: str) -> StoredRule | None:
        rule = self._store._rules.get(rule_id)
        return None if rule is None else self._store._with_hits(rule)

    def count(self) -> int:
        return len(self._store._rules)

    def of_origin(self, origin: str) -> list[StoredRule]:
        rules = self._store._rules.values()
        return [self._store._with_hits(rule) for rule in rules if rule.origin == origin]

    def fingerprint(self, origin: str) -> str | None:
        return self._store._fingerprints.get(origin)


class MemoryStore(Store):
    """A store held in this process's memory: the default, for one process.

    `read_rules` always answers every rule: a process reads only its own
    changes back, which it applied already.
    """

    def __init__(self) -> None:
        self.url = "memory://"
        self.shared = False
        self._lock = new_lock()
        self._revision = 0
        self._rules: dict[str, StoredRule] = {}
        self._hits: dict[str, int] = {}
        self._fingerprints: dict[str, str] = {}
        self._audit: deque[dict[str, Any]] = deque(maxlen=AUDIT_KEPT)
        self._epoch = 0
        self._stats: dict[str, StatsRow] = {}
        self._queries: dict[int, tuple[float, dict[str, Any]]] = {}
        self._last_query = 0
        self._answers: dict[int, dict[str, dict[str, Any]]] = {}
        self._beats: dict[str, float] = {}
        self._retained: dict[str, tuple[float, float, str]] = {}  # id -> (at, until, doc)
        self._retained_bytes = 0
        # Per counter, key -> (text, until), least recently seen first.
        self._counts: dict[str, OrderedDict[str, tuple[str, float]]] = {}

    def change(self, plan: Plan) -> tuple[Change, int]:
        with self._lock:
            change = plan(_View(self))
            if not change:
                return change, self._revision
            self._revision += 1
            for rule_id in change.delete:
                self._rules.pop(rule_id, None)
                self._hits.pop(rule_id, None)
            for rule in change.put:
                self._rules[rule.id] = rule
                self._hits[rule.id] = rule.hits
            self._fingerprints.update(change.fingerprints)
            self._audit.extend(change.events)
            return change, self._revision

    def read_rules(self, since: int | None) -> RulesRead:
        with self._lock:
            rules = [self._with_hits(rule) for rule in self._rules.values()]
            return RulesRead(self._revision, True, rules, [])

    def _with_hits(self, rule: StoredRule) -> StoredRule:
        """`rule` with its current hits (`add_hits` counts them apart)."""
        return replace(rule, hits=self._hits.get(rule.id, 0))

    def state(self) -> tuple[int, int]:
        return self._revision, self._epoch

    def add_hits(self, hits: dict[str, int]) -> None:
        with self._lock:
            for rule_id, n in hits.items():
                if rule_id in self._hits:
                    self._hits[rule_id] += n

    def hits(self, ids: list[str] | None = None) -> dict[str, int]:
        with self._lock:
            held = self._hits
            return dict(held) if ids is None else {i: held[i] for i in ids if i in held}

    def audit(self, limit: int) -> list[dict[str, Any]]:
        with self._lock:
            events = self._audit
            return [events[-1 - i] for i in range(min(limit, len(events)))]

    def publish_stats(self, row: StatsRow, epoch: int) -> int:
        with self._lock:
            if epoch == self._epoch:
                self._stats[row.process] = row
            return self._epoch

    def read_stats(self) -> tuple[int, list[StatsRow]]:
        with self._lock:
            return self._epoch, list(self._stats.values())

    def reset_stats(self) -> int:
        with self._lock:
            self._epoch += 1
            self._stats.clear()
            return self._epoch

    def retire_stats(self, gone: dict[str, float], into: StatsRow, epoch: int) -> bool:
        with self._lock:
            rows = self._stats
            if epoch != self._epoch or any(
                process not in rows or rows[process].updated != updated
                for process, updated in gone.items()
            ):
                return False
            for process in gone:
                del rows[process]
            rows[into.process] = into
            return True

    def post_query(self, body: dict[str, Any], expires: float) -> int:
        with self._lock:
            now = time.time()
            for query_id, (until, _) in list(self._queries.items()):
                if until < now - QUERIES_KEPT_S:
                    del self._queries[query_id]
                    self._answers.pop(query_id, None)
            self._last_query += 1
            self._queries[self._last_query] = (expires, body)
            return self._last_query

    def queries_after(self, after: int | None) -> tuple[int, list[tuple[int, dict[str, Any]]]]:
        with self._lock:
            if after is None:
                return self._last_query, []
            now = time.time()
            found = [
                (query_id, body)
                for query_id, (until, body) in sorted(self._queries.items())
                if query_id > after and until > now
            ]
            return self._last_query, found

    def put_answer(self, query_id: int, process: str, body: dict[str, Any]) -> None:
        with self._lock:
            if query_id in self._queries:
                self._answers.setdefault(query_id, {})[process] = body

    def answers(self, query_id: int) -> dict[str, dict[str, Any]]:
        with self._lock:
            return dict(self._answers.get(query_id, {}))

    def beat(self, process: str, at: float) -> None:
        with self._lock:
            self._beats[process] = at
            for other, seen in list(self._beats.items()):
                if seen < at - BEATS_KEPT_S:
                    del self._beats[other]

    def peers(self, since: float) -> list[str]:
        with self._lock:
            return [process for process, at in self._beats.items() if at >= since]

    def retain(self, request_id: str, at: float, until: float, doc: str, max_bytes: int) -> int:
        if len(doc) > max_bytes:
            return -1
        with self._lock:
            kept = self._retained
            now = time.time()
            for other, (_, ends, _) in list(kept.items()):
                if ends < now or other == request_id:
                    self._forget(other)
            kept[request_id] = (at, until, doc)
            self._retained_bytes += len(doc)
            evicted = 0
            while self._retained_bytes > max_bytes:
                self._forget(min(kept, key=lambda other: kept[other][0]))
                evicted += 1
            return evicted

    def expire_retained(self, now: float) -> None:
        with self._lock:
            for other, (_, ends, _) in list(self._retained.items()):
                if ends < now:
                    self._forget(other)

    def _forget(self, request_id: str) -> None:
        _, _, doc = self._retained.pop(request_id)
        self._retained_bytes -= len(doc)

    def retained(
        self, since: float | None, until: float | None, limit: int
    ) -> list[dict[str, Any]]:
        low = -math.inf if since is None else since
        high = math.inf if until is None else until
        now = time.time()
        with self._lock:
            held = sorted(self._retained.values(), key=lambda kept: kept[0], reverse=True)
        found = [doc for at, ends, doc in held if low <= at <= high and ends >= now]
        return [json.loads(doc) for doc in found[:limit]]

    def retained_one(self, request_id: str) -> dict[str, Any] | None:
        with self._lock:
            kept = self._retained.get(request_id)
        if kept is None or kept[1] < time.time():
            return None
        found: dict[str, Any] = json.loads(kept[2])
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
        with self._lock:
            self._expire_counts(now)
            table = self._counts.setdefault(counter, OrderedDict())
            given = {key: table[key][0] for key in keys if key in table}
            until = now + keep_s
            for key, text in update(given).items():
                table[key] = (text, until)
                table.move_to_end(key)
            evicted = max(0, len(table) - max_keys)
            for _ in range(evicted):
                table.popitem(last=False)
            return evicted

    def expire_counts(self, now: float) -> None:
        with self._lock:
            self._expire_counts(now)

    def _expire_counts(self, now: float) -> None:
        for name in list(self._counts):
            held = self._counts[name]
            while held and next(iter(held.values()))[1] < now:
                held.popitem(last=False)  # least recently seen: the first past its time
            if not held:
                del self._counts[name]

    def read_counts(self, counter: str, limit: int) -> dict[str, str]:
        now = time.time()
        with self._lock:
            table = self._counts.get(counter)
            if not table:
                return {}
            found = {}
            for key in reversed(table):
                text, until = table[key]
                if until >= now:
                    found[key] = text
                    if len(found) >= limit:
                        break
            return found

    def close(self) -> None:
        pass
