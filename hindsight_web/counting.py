"""Count rules: requests counted per key over a sliding window, in every process
together, and the firing of a rule when one key reaches its threshold.

Counting. A request that ends and matches a ``count`` rule adds one to its key
(`Counting.add`, on the request path: a few dict operations under a short lock).
Every `interval_s` (``store_sync_s``) the background thread adds what this
process counted since to the store, one atomic update per rule, and gets back
each key's count over the window: with a shared store, the count of every
process on every host. So a threshold crossed by requests spread over many
workers is seen within about `interval_s`.

The window. A rule's window is cut into `SLOTS` slots of ``window_s / SLOTS``
seconds; a key's count is the sum of the slots that began within the last
``window_s`` seconds, and of the one before: it holds every request of the last
``window_s`` seconds, and may hold some up to ``window_s / SLOTS`` older (10 %).

Firing. The update that finds a key at or above the threshold marks it fired
until ``now + window_s``, in the same atomic update: one process in all fires it,
at most once per key and window. Its ``then`` runs on a thread of its own (the
`fire` callable given, `firing.FiringActions.run`), so that a slow action (a release
that waits for every process) holds up no count.

Memory. Per rule, the store holds at most ``max_keys`` keys (the least recently
counted go first, counted as ``count_keys_evicted``), about 0.6 KB each (a JSON
text: the slots, the time of the last request, up to `SAMPLES` request ids). Each
process holds, between two updates, at most ``max_keys`` keys per rule (about
0.8 KB each); the keys beyond are not counted (``count_keys_dropped``). A key not
counted for a window is forgotten. With ``memory://`` both are in the process:
under 1.5 KB per key of ``max_keys``, whatever the number of distinct keys seen.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from functools import lru_cache
from typing import Any, NamedTuple

from . import errors
from ._sync import new_lock, start_thread
from .rules import Rule, RuleSet
from .store import Store, StoreError
from .store.health import Health

__all__ = ["SAMPLES", "SLOTS", "TOP_READ", "Counting", "Firing", "counter_name", "window_count"]

SLOTS = 10
"""Slots a window is cut into: the count may hold requests up to a tenth of it older."""

SAMPLES = 10
"""Request ids kept per key (the most recent), for the alert and the audit trail."""

TOP_READ = 200
"""Keys (the most recently counted) read to list a rule's top keys."""

FIRINGS_QUEUED = 1000
"""Firings waiting for the firing thread, at most (beyond, they are dropped and counted)."""

EXPIRY_S = 60.0
"""Seconds between two purges of the counts past their time (of rules removed too)."""

IDLE_S = 1.0  # how often an idle firing thread checks whether it is still wanted

UNSURE_KEPT = 10  # batches per rule whose update raised, remembered until one succeeds

_batches = itertools.count()


class Firing(NamedTuple):
    """A key of a count rule that reached the threshold.

    Attributes:
        rule: the count rule.
        key: the key's value (a client address, a user id, ...).
        total: requests counted in the window when it fired.
        first, last: epoch seconds of the first and the last of them.
        samples: ``(epoch seconds, request id)`` of the last `SAMPLES`, oldest first.
        at: when it fired, epoch seconds.
    """

    rule: Rule
    key: str
    total: int
    first: float
    last: float
    samples: list[tuple[float, str]]
    at: float


class _Pending:
    """What one process counted for one key of `rule` since its last update of the store."""

    __slots__ = ("last", "rule", "samples", "slots")

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self.slots: dict[int, list[float]] = {}  # slot -> [requests, first time]
        self.last = 0.0
        self.samples: list[tuple[float, str]] = []


class Counting:
    """The count rules' counting and firing in one process.

    Args:
        store: where the counts are shared (``memory://``: this process).
        health: notes store calls that fail or succeed again.
        rules: the rules in force (a rule removed meanwhile counts no more).
        interval_s: seconds between two updates of the store (``store_sync_s``).
        fire: runs a firing's ``then`` (it may block: on a thread of its own, which
            takes at most `FIRINGS_QUEUED` firings waiting; those beyond are counted
            as ``count_firings_dropped``).
        thread: False to run no background thread: the owner calls `flush`, which
            then runs the firings itself.
    """

    def __init__(
        self,
        store: Store,
        health: Health,
        *,
        rules: RuleSet,
        interval_s: float,
        fire: Callable[[Firing], None],
        thread: bool = True,
    ) -> None:
        self.store = store
        self.health = health
        self.rules = rules
        self.interval_s = interval_s
        self._fire = fire
        self._lock = new_lock()
        # Per rule id and key: a copy of a rule read again from the store counts with it.
        self._pending: dict[tuple[str, str], _Pending] = {}
        self._sizes: dict[str, int] = {}  # keys pending per rule id
        self._firings: deque[Firing] = deque()
        self._busy = False  # a firing is being run
        self._ready = threading.Condition(new_lock())
        self._stop = threading.Event()
        self._threaded = thread
        self._running = not thread  # the thread starts with the first request counted
        self._firing = False  # the firing thread starts with the first firing
        self._next_expiry = 0.0
        # Per rule id, the batches whose update raised: the store may have applied one
        # and lost its answer (a Redis reply lost after EXEC), with a key marked fired.
        self._unsure: dict[str, list[str]] = {}
        self.dropped = 0
        self.evicted = 0
        self.fired = 0
        self.firings_dropped = 0
        _countings.add(self)

    # -- the request path ----------------------------------------------------------

    def add(self, rule: Rule, key: str, at: float, request_id: str) -> None:
        """Count one request of `key` that ended at `at` (epoch seconds) for `rule`."""
        spec = rule.count
        if spec is None:
            return
        slot = int(at * SLOTS // spec.window_s)
        rule_id = rule.id
        with self._lock:
            pending = self._pending.get((rule_id, key))
            if (
                pending is not None
                and pending.rule is not rule
                and counter_name(pending.rule) != counter_name(rule)
            ):  # the rule changed under its id: its counts start anew
                pending = self._pending[rule_id, key] = _Pending(rule)
            elif pending is None:
                size = self._sizes.get(rule_id, 0)
                if size >= spec.max_keys:
                    self.dropped += 1
                    return
                self._sizes[rule_id] = size + 1
                pending = self._pending[rule_id, key] = _Pending(rule)
            slots = pending.slots
            counted = slots.get(slot)
            if counted is None:
                slots[slot] = [1, at]
            else:
                counted[0] += 1
            pending.last = at
            samples = pending.samples
            samples.append((at, request_id))
            if len(samples) > SAMPLES:
                del samples[0]
        if not self._running:
            self._start()

    # -- the background threads ------------------------------------------------------

    def _start(self) -> None:
        with self._lock:
            if self._running:
                return
            self._running = True
        # The first update waits one interval: the request that started the thread is
        # in its window by then (a release then finds it).
        start_thread(self, Counting._step, self._stop, "hindsight-count")

    def stop(self) -> None:
        self._stop.set()
        with self._ready:
            self._ready.notify_all()

    def _step(self) -> float:
        if self._next_expiry == 0.0:
            self._next_expiry = time.monotonic() + EXPIRY_S
            return self.interval_s
        try:
            self.flush()
            if time.monotonic() >= self._next_expiry:
                self._next_expiry = time.monotonic() + EXPIRY_S
                self.health.checked(lambda: self.store.expire_counts(time.time()), write=True)
        except StoreError:
            pass  # noted by `health`; tried again at the next step
        except Exception as exc:
            errors.report("count", exc)
        return self.interval_s

    def _fire_next(self) -> float:
        with self._ready:
            while not self._firings and not self._stop.is_set():
                self._ready.wait(IDLE_S)
            if not self._firings:
                return 0.0
            firing = self._firings.popleft()
            self._busy = True
        try:
            self._run(firing)
        finally:
            self._busy = False
        return 0.0

    def _run(self, firing: Firing) -> None:
        try:
            self._fire(firing)
        except Exception as exc:
            errors.report("count firing", exc)

    def settle(self, timeout_s: float) -> bool:
        """Update the store with what was counted so far, and wait until the firings it
        makes have run; False if `timeout_s` seconds passed first.

        Raises:
            store.StoreError: the store cannot be used now (what it did not take is
                counted again at the next update).
        """
        deadline = time.monotonic() + timeout_s
        self.health.checked(self.flush, write=True) if False else self.flush()
        while self._firings or self._busy:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def flush(self, now: float | None = None) -> list[Firing]:
        """Add what was counted since the last call to the store and fire the keys that
        reached their threshold; returns the firings (run by the firing thread, or here
        when there is none).

        What the store did not take (down) is counted again at the next call, within
        the bounds of `add` and of the window.
        """
        with self._lock:
            pending, self._pending = self._pending, {}
            self._sizes = {}
        if not pending:
            return []
        now = time.time() if now is None else now
        by_rule: dict[Rule, dict[str, _Pending]] = {}
        in_force: dict[Rule, Rule | None] = {}
        for (_, key), counted in pending.items():
            rule = counted.rule
            if rule not in in_force:
                held = self.rules.get(rule.id)
                same = held is not None and held.count is not None
                in_force[rule] = held if same and counter_name(held) == counter_name(rule) else None
            held = in_force[rule]
            if held is not None:  # else removed or changed since: its counts go with it
                by_rule.setdefault(held, {})[key] = counted
        firings: list[Firing] = []
        for rule, keys in by_rule.items():
            try:
                firings += self._update(rule, keys, now)
            except StoreError:
                self._put_back(rule, keys, now)
            except Exception as exc:  # one rule's trouble costs the others nothing
                errors.report("count", exc)
        self.fired += len(firings)
        if not self._threaded:
            for firing in firings:
                self._run(firing)
            return firings
        with self._ready:
            if firings and not self._firing:
                self._firing = True
                start_thread(self, Counting._fire_next, self._stop, "hindsight-fire")
            for firing in firings:
                if len(self._firings) >= FIRINGS_QUEUED:
                    self.firings_dropped += 1
                    errors.report("count firing", OverflowError("firings waiting: dropped"))
                else:
                    self._firings.append(firing)
            self._ready.notify()
        return firings

    def _update(self, rule: Rule, keys: dict[str, _Pending], now: float) -> list[Firing]:
        """One atomic update of `rule`'s counts in the store; the keys it fires.

        Each update carries a batch id, kept with a key it marks fired (``"b"``). When an
        update raised, its batch id is remembered: should the store have applied it and
        lost its answer, the next update of the key finds the mark and runs the firing,
        which would otherwise be lost (the counts put back are then counted twice).
        """
        spec = rule.count
        assert spec is not None
        slot_s = spec.window_s / SLOTS
        oldest = math.floor(now * SLOTS / spec.window_s) - SLOTS
        fired: list[Firing] = []
        batch = f"{os.getpid()}:{next(_batches)}"
        unsure = self._unsure.get(rule.id, ())

        def update(held: dict[str, str]) -> dict[str, str]:
            fired.clear()
            texts = {}
            for key, counted in keys.items():
                body = _merged(held.get(key), counted, oldest)
                count, first = window_count(body, oldest)
                lost = body.get("b") in unsure and body.get("f", 0) > now
                if lost or (count >= spec.threshold and body.get("f", 0) <= now):
                    if not lost:
                        body["f"] = now + spec.window_s
                    body["b"] = batch
                    samples = [(at, request_id) for at, request_id in body["x"]]
                    fired.append(Firing(rule, key, count, first, body["l"], samples, now))
                texts[key] = json.dumps(body, separators=(",", ":"))
            return texts

        try:
            evicted = self.health.checked(
                lambda: self.store.update_counts(
                    counter_name(rule),
                    list(keys),
                    update,
                    now=now,
                    keep_s=spec.window_s + 2 * slot_s,
                    max_keys=spec.max_keys,
                ),
                write=True,
            )
        except StoreError:
            self._unsure[rule.id] = [*unsure[-(UNSURE_KEPT - 1) :], batch]
            raise
        self.evicted += evicted
        self._unsure.pop(rule.id, None)
        return fired

    def _put_back(self, rule: Rule, keys: dict[str, _Pending], now: float) -> None:
        """Count again at the next flush what the store did not take, but for the slots
        that have left the window meanwhile (so that a long outage holds no more)."""
        spec = rule.count
        assert spec is not None
        oldest = math.floor(now * SLOTS / spec.window_s) - SLOTS
        with self._lock:
            for key, counted in keys.items():
                counted.slots = {slot: n for slot, n in counted.slots.items() if slot >= oldest}
                if not counted.slots:
                    continue
                held = self._pending.get((rule.id, key))
                if held is None:
                    size = self._sizes.get(rule.id, 0)
                    if size >= spec.max_keys:
                        self.dropped += 1
                        continue
                    self._sizes[rule.id] = size + 1
                    self._pending[rule.id, key] = counted
                    continue
                _add(held, counted)

    # -- reading -------------------------------------------------------------------------

    def top(self, rule: Rule, limit: int = 5) -> list[dict[str, Any]]:
        """The keys of `rule` with the highest counts in its window now, highest first,
        among the `TOP_READ` most recently counted: ``[{"key", "count"}]``.

        Raises:
            store.StoreError: the store cannot be read now.
        """
        spec = rule.count
        if spec is None:
            return []
        oldest = math.floor(time.time() * SLOTS / spec.window_s) - SLOTS
        held = self.health.checked(lambda: self.store.read_counts(counter_name(rule), TOP_READ))
        counts = []
        for key, text in held.items():
            count, _ = window_count(json.loads(text), oldest)
            if count:
                counts.append((count, key))
        counts.sort(key=lambda item: -item[0])
        return [{"key": key, "count": count} for count, key in counts[:limit]]

    def counters(self) -> dict[str, int]:
        """``count_firings``, ``count_firings_dropped``, ``count_keys_evicted`` and
        ``count_keys_dropped`` since start."""
        return {
            "count_firings": self.fired,
            "count_firings_dropped": self.firings_dropped,
            "count_keys_evicted": self.evicted,
            "count_keys_dropped": self.dropped,
        }


def window_count(body: dict[str, Any], oldest: int) -> tuple[int, float]:
    """A key's count over the window whose oldest slot is `oldest`, and the time of its
    first request (``inf`` when it has none)."""
    count, first = 0, math.inf
    for slot, n, begun in body["s"]:
        if slot >= oldest:
            count += n
            first = min(first, begun)
    return count, first


def _merged(text: str | None, counted: _Pending, oldest: int) -> dict[str, Any]:
    """The stored counts of a key (`text`, or none) with `counted` added, slots older
    than `oldest` left out."""
    body: dict[str, Any] = (
        {"s": [], "l": 0.0, "x": [], "f": 0} if text is None else json.loads(text)
    )
    slots = {slot: [n, first] for slot, n, first in body["s"] if slot >= oldest}
    for slot, (n, first) in counted.slots.items():
        if slot < oldest:
            continue
        held = slots.get(slot)
        if held is None:
            slots[slot] = [n, first]
        else:
            held[0] += n
            held[1] = min(held[1], first)
    body["s"] = [[slot, int(n), first] for slot, (n, first) in sorted(slots.items())]
    body["l"] = max(body["l"], counted.last)
    samples = [tuple(sample) for sample in body["x"]] + counted.samples
    body["x"] = [list(sample) for sample in sorted(samples)[-SAMPLES:]]
    return body


def _add(held: _Pending, counted: _Pending) -> None:
    """Add what `counted` holds to `held` (the same rule and key)."""
    for slot, (n, first) in counted.slots.items():
        mine = held.slots.setdefault(slot, [0, first])
        mine[0] += n
        mine[1] = min(mine[1], first)
    held.samples = sorted(counted.samples + held.samples)[-SAMPLES:]
    held.last = max(held.last, counted.last)


@lru_cache(maxsize=4096)
def counter_name(rule: Rule) -> str:
    """The store's name for a rule's counts: its id and a digest of what it counts, so
    that a rule changed under the same id starts from nothing."""
    spec = rule.count
    assert spec is not None
    what = json.dumps([rule.to_json(0)["match"], spec.key, spec.window_s], sort_keys=True)
    return f"{rule.id}@{hashlib.sha256(what.encode()).hexdigest()[:16]}"


_countings: weakref.WeakSet[Counting] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A forked process counts its own requests, with a thread of its own.
    for counting in list(_countings):
        counting._pending = {}
        counting._sizes = {}
        counting._firings = deque()
        counting._ready = threading.Condition(new_lock())
        counting._next_expiry = 0.0
        counting._firing = False
        counting._unsure = {}
        counting._running = not counting._threaded or counting._stop.is_set()
        if not counting._running:
            counting._stop = threading.Event()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
