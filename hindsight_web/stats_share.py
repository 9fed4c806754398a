"""Statistics across processes: this one's published to the store, every one's merged.

Each process that has recorded requests publishes a mergeable export of its
`Stats` every ``stats_flush_s`` (from the background thread). ``/stats*``
answer from this process's live statistics merged with the latest export of
every other process; ``/metrics`` merges the published exports of this host's
processes only (this one's included as published), so that every scrape of a
host, whichever worker answers it, sees the same counters, which only grow.
``DELETE /stats`` starts a new epoch in the store: every process forgets its
statistics when it sees it.

The rows of processes that ended stay (``window=all`` still counts them): a
row not published again for `ended_after_s` is merged into one row per host,
so the store holds a bounded number of rows.
"""

from __future__ import annotations

import os
import socket
import time
import weakref
from collections.abc import Callable
from typing import Any

from . import errors
from ._sync import new_lock
from .stats_view import Export, StatsView, encode, retire
from .store import StatsRow, Store, StoreError
from .store.health import Health

__all__ = ["SharedStats"]

_RETIRE_EVERY_S = 60.0


class SharedStats:
    """This process's statistics in the store, and every process's merged.

    Args:
        store: where the statistics are published.
        health: notes store calls that fail or succeed again.
        export: this process's live statistics, as a mergeable export.
        recorded: how many requests this process's statistics hold.
        reset: forgets this process's statistics (a new `Stats`).
        flush_s: seconds between two publications: a row not published again
            for ``max(60, 12 * flush_s)`` seconds is taken for a process that
            ended.
    """

    def __init__(
        self,
        store: Store,
        health: Health,
        *,
        export: Callable[[], dict[str, Any]],
        recorded: Callable[[], int],
        reset: Callable[[], None],
        flush_s: float,
    ) -> None:
        self.store = store
        self.health = health
        self._export = export
        self._recorded = recorded
        self._reset = reset
        self.ended_after_s = max(60.0, 12 * flush_s)
        self.live_s = 3 * flush_s + 1.0  # gauges of rows older than this are not "now"
        self.host = socket.gethostname()
        self.process = _process_key(self.host)
        self.epoch: int | None = None
        self._lock = new_lock()  # one publication or reset at a time
        self._published: Export | None = None  # what this process last published
        self._published_at = 0.0
        self._next_retire = 0.0
        self._rows: list[StatsRow] = []  # the last rows read, for answers while it cannot
        # Parsed rows by (process, updated): a row changes only when it is published again.
        self._parsed: dict[tuple[str, float], Export] = {}
        _shares.add(self)

    def follow_epoch(self, epoch: int) -> None:
        """Forget this process's statistics when the store has moved to a newer epoch
        (a ``DELETE /stats`` made by any process)."""
        with self._lock:
            if self.epoch is None:
                self.epoch = epoch
            elif epoch > self.epoch:
                self._new_epoch(epoch)

    def publish(self) -> None:
        """Write this process's statistics to a shared store (nothing for ``memory://``,
        nor for a process that has recorded no request).

        Raises:
            StoreError: the store cannot be used now (published again next time).
        """
        if not self.store.shared or self.epoch is None or not self._recorded():
            return
        with self._lock:
            now = time.time()
            if self._published_at and now - self._published_at > self.ended_after_s / 2:
                self._rejoin()
            epoch = self.epoch  # before the export: a reset meanwhile refuses this row
            export = Export.parse(self._export())
            row = StatsRow(self.process, self.host, now, encode(export.to_json()))
            current = self.health.checked(lambda: self.store.publish_stats(row, epoch), write=True)
            if current == epoch:
                self._published, self._published_at = export, now
            elif current > epoch:
                self._new_epoch(current)
            else:  # the store lost its data (a Redis restarted): carry on in its epoch
                self.epoch = current
        if now >= self._next_retire:
            self._next_retire = now + _RETIRE_EVERY_S
            self._retire_ended(now)

    def view(self, *, host_only: bool = False) -> tuple[StatsView, bool]:
        """Every process's statistics merged (of the processes that recorded requests),
        and whether the others' are stale (the store cannot be read: its last rows are
        used).

        With `host_only` (``/metrics``): the published statistics of this host's
        processes, this one's as last published.
        """
        stale = False
        if self.store.shared:
            try:
                _, self._rows = self.health.checked(self.store.read_stats)
            except StoreError:
                stale = True
        else:  # one process: its live statistics are all there is
            return StatsView([self._export()], now=time.time()), False
        exports = []
        if not host_only:
            if self._recorded():  # as published: a process counts once it recorded requests
                exports.append(Export.parse(self._export()))
        elif self._published is not None:
            exports.append(self._published)
        parsed = {}
        for row in self._rows:
            if row.process == self.process or (host_only and row.host != self.host):
                continue
            key = (row.process, row.updated)
            export = self._parsed.get(key)
            try:
                parsed[key] = export = export or Export.from_bytes(row.body)
            except ValueError as exc:  # a row this version cannot read: left out, counted
                errors.report("stats row", exc)
                continue
            exports.append(export)
        if not host_only:
            self._parsed = parsed
        return StatsView(exports, now=time.time(), live_s=self.live_s), stale

    def reset(self) -> None:
        """Forget the statistics of every process (``DELETE /stats``).

        Raises:
            StoreError: the store cannot be used now; nothing was forgotten.
        """
        with self._lock:
            epoch = self.health.checked(self.store.reset_stats, write=True)
            self._new_epoch(epoch)
            self._rows = []

    def after_fork(self) -> None:
        """A forked process is another process: its own key, none of its parent's counts."""
        self.process = _process_key(self.host)
        self._published, self._published_at = None, 0.0
        self._reset()

    def _new_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._published = None
        self._reset()

    def _rejoin(self) -> None:
        """After a long silence: if this process's row was merged away as ended, its
        statistics are in the merged row already: start over, not count them twice."""
        _, rows = self.health.checked(self.store.read_stats)
        if all(row.process != self.process for row in rows):
            self._published = None
            self._reset()

    def _retire_ended(self, now: float) -> None:
        """Merge the rows of ended processes (not published for `ended_after_s`) into
        one row per host."""
        epoch, rows = self.health.checked(self.store.read_stats)
        by_host: dict[str, list[StatsRow]] = {}
        for row in rows:
            merged = row.process == _ended_key(row.host)
            if (
                not merged
                and row.process != self.process
                and now - row.updated > self.ended_after_s
            ):
                by_host.setdefault(row.host, []).append(row)
        for host, ended in by_host.items():
            gone = ended + [row for row in rows if row.process == _ended_key(host)]
            try:
                exports = [Export.from_bytes(row.body) for row in gone]
            except ValueError as exc:
                errors.report("stats row", exc)
                continue
            into = StatsRow(_ended_key(host), host, now, encode(retire(exports)))
            self._retire({row.process: row.updated for row in gone}, into, epoch)

    def _retire(self, gone: dict[str, float], into: StatsRow, epoch: int) -> None:
        self.health.checked(lambda: self.store.retire_stats(gone, into, epoch), write=True)


def _process_key(host: str) -> str:
    """A key unique to this run of this process, on every host."""
    return f"{host}:{os.getpid()}:{os.urandom(4).hex()}"


def _ended_key(host: str) -> str:
    return f"{host}:ended"


_shares: weakref.WeakSet[SharedStats] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for share in list(_shares):
        share.after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
