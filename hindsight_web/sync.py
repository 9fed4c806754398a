"""The background work of a Hindsight, one thread per process: in step with the store.

Every ``store_sync_s`` the thread reads the store's revision and stats epoch
(one cheap call), applies the rule changes other processes made, and writes
down the rules whose time is up; every ``stats_flush_s`` it adds this process's
rule hits to the store's and publishes its statistics. A store that cannot be
used is noted (`Health`) and tried again at the next tick; requests never wait
for any of it.

The thread starts when the `Hindsight` is made, and again in each process
forked from one where it ran (a gunicorn worker of a ``--preload`` master): a
worker's rules are fresh before its first request. The thread holds only a
weak reference: it ends with the `Hindsight` that owns it, or with `stop`.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable

from . import errors
from ._sync import new_lock, start_thread
from .book import RuleBook
from .store import StoreError

__all__ = ["Sync"]


class Sync:
    """The background thread of one Hindsight in this process.

    Args:
        book: the rule book kept in step with its store.
        interval_s: seconds between two ticks (``store_sync_s``).
        flush_s: seconds between two flushes of hits and statistics (``stats_flush_s``).
        on_epoch: called with the store's stats epoch at every tick.
        publish: publishes this process's statistics (every `flush_s`).

    Attributes:
        cpu_s: CPU seconds the thread has spent in its ticks.
    """

    def __init__(
        self,
        book: RuleBook,
        *,
        interval_s: float,
        flush_s: float,
        on_epoch: Callable[[int], None],
        publish: Callable[[], None],
    ) -> None:
        self.book = book
        self.interval_s = interval_s
        self.flush_s = flush_s
        self._on_epoch = on_epoch
        self._publish = publish
        self.cpu_s = 0.0
        self._next_flush = 0.0
        self._writes_after = 0.0
        self._lock = new_lock()  # one tick at a time
        self._stop = threading.Event()

    def start(self) -> None:
        """Start the thread of this process (and of each process forked from it)."""
        _syncs.add(self)
        start_thread(self, Sync._step, self._stop, "hindsight-sync")

    def stop(self) -> None:
        """Stop the thread (after its current tick)."""
        self._stop.set()

    def _step(self) -> float:
        self.tick()
        return self.interval_s

    def tick(self) -> None:
        """One round of background work; never raises.

        After a write that failed (a SQLite file locked by another writer), the
        writes wait `flush_s` before they are tried again, so that reading the
        changes of others is not held up by writes that wait on the lock; with
        nothing to write then, a write is probed (`Store.probe_write`), so that
        the process notes when the store answers again.
        """
        begun = time.thread_time()
        book = self.book
        now = time.monotonic()
        writes = now >= self._writes_after
        try:
            with self._lock:
                revision, epoch = book.health.checked(book.store.state)
                self._on_epoch(epoch)
                book.sync(revision, write=writes)
                if writes:
                    book.expire()
                    if now >= self._next_flush:
                        self._next_flush = now + self.flush_s
                        book.flush_hits()
                        self._publish()
                    if book.health.writes_failing:
                        # Nothing was written here since a write failed (a refused admin
                        # change, in a process with nothing else to write): try one.
                        book.health.probed(book.store.probe_write)
        except StoreError:
            if book.health.writes_failing:
                self._writes_after = now + self.flush_s
        except Exception as exc:
            errors.report("sync", exc)
        finally:
            self.cpu_s += time.thread_time() - begun


_syncs: weakref.WeakSet[Sync] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # The thread did not survive the fork: each running Sync gets its own in the child.
    for sync in list(_syncs):
        if not sync._stop.is_set():
            sync._stop = threading.Event()
            sync._next_flush = sync._writes_after = 0.0
            sync.start()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
