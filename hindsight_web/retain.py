"""``retain`` rules: the requests they match kept in the store, for longer than the window.

A request that ends matching a ``retain`` rule is queued here (its facts and its
records, no copy of their text: formatting happens later); the background thread
of `fanout` writes the queue to the store as JSON documents, each kept for its
rule's ``retain_s`` within the store's ``retain_max_bytes`` (the oldest go first).
The queue is bounded (`MAX_QUEUED`): a request that finds it full is not kept, and
is counted. Searches read the kept documents with `search.StoredRequest`.
"""

from __future__ import annotations

import functools
import json
import time
from collections import deque
from typing import Any

from . import errors
from ._sync import new_lock
from .buffer import Entry
from .context import RequestState
from .rules import Rule
from .search import facts_json, records_json
from .store import Store, StoreError
from .store.health import Health

__all__ = ["BATCH", "EXPIRE_EVERY_S", "MAX_QUEUED", "Retainer"]

MAX_QUEUED = 1000
"""Requests waiting to be written to the store, at most."""

BATCH = 50
"""Requests written to the store at one step of the background thread, at most."""

EXPIRE_EVERY_S = 30.0
"""Seconds between two removals of the kept requests whose time is up."""


class Retainer:
    """One process's queue of requests to keep in the store, and its counts.

    Args:
        store: where the requests are kept.
        health: notes store calls that fail or succeed again.
        max_bytes: ``retain_max_bytes``: the most the store keeps, all processes together.

    Attributes:
        retained: requests written to the store.
        dropped: requests not kept: the queue was full, the store failed, or one
            request alone was larger than `max_bytes`.
        evicted: kept requests this process removed for room before their time.
    """

    def __init__(self, store: Store, health: Health, max_bytes: int) -> None:
        self.store = store
        self.health = health
        self.max_bytes = max_bytes
        self.retained = self.dropped = self.evicted = 0
        self._queue: deque[tuple[RequestState, list[Entry], Rule]] = deque()
        self._lock = new_lock()
        self._next_expiry = 0.0

    def keep(self, state: RequestState, entries: list[Entry], rule: Rule) -> None:
        """Queue a request that ended matching `rule`; the request path (no I/O)."""
        with self._lock:
            if len(self._queue) >= MAX_QUEUED:
                self.dropped += 1
                return
            self._queue.append((state, entries, rule))

    def write(self) -> None:
        """Write what is queued to the store, `BATCH` requests at most, and now and then
        remove what is past its time (the background thread, at each of its steps).

        A store that fails ends the batch: the thread's other work never waits on more
        than one failed call per step.
        """
        now = time.monotonic()
        if now >= self._next_expiry:
            self._next_expiry = now + EXPIRE_EVERY_S
            try:
                self.health.checked(lambda: self.store.expire_retained(time.time()), write=True)
            except StoreError:
                return
        for _ in range(BATCH):
            with self._lock:
                if not self._queue:
                    return
                state, entries, rule = self._queue.popleft()
            try:
                keep = functools.partial(
                    self.store.retain,
                    state.request_id,
                    state.at,
                    state.at + (rule.retain_s or 0),
                    json.dumps(document(state, entries, rule)),
                    self.max_bytes,
                )
                evicted = self.health.checked(keep, write=True)
            except StoreError:
                self.dropped += 1  # the store's trouble is logged by `health`
                return
            except Exception as exc:
                self.dropped += 1
                errors.report("retain", exc)
                continue
            if evicted < 0:  # larger than the store may keep
                self.dropped += 1
            else:
                self.retained += 1
                self.evicted += evicted

    def counts(self) -> dict[str, int]:
        return {
            "retained": self.retained,
            "retain_dropped": self.dropped,
            "retain_evicted": self.evicted,
        }


def document(state: RequestState, entries: list[Entry], rule: Rule) -> dict[str, Any]:
    """What the store keeps of a request: its facts, its records, the rule and the time."""
    return {
        **facts_json(state),
        "records": records_json(entries),
        "at_s": state.at,
        "retained_by": rule.id,
    }
