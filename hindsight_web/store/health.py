"""Whether a store answered its last call: one log line when trouble starts, one when it ends."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from .._sync import new_lock
from . import StoreError

__all__ = ["Health"]

_T = TypeVar("_T")

logger = logging.getLogger("hindsight_web")


class Health:
    """The state of one store as this process sees it.

    Every store call reports its outcome (`checked`), reads and writes apart: a
    SQLite file locked by another writer still answers reads, and is down all
    the same. The first failure after a success logs a WARNING; the first
    success of both kinds after failures logs that it recovered; failures in
    between are only counted.

    Attributes:
        error: the last failure's message while failing, else None.
        since: when the current state began (epoch seconds).
        failures: store calls that failed since start.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.error: str | None = None
        self.since = time.time()
        self.failures = 0
        self._failing = {False: False, True: False}  # reads, writes
        self._lock = new_lock()

    @property
    def up(self) -> bool:
        """True when the last read and the last write of the store succeeded."""
        return self.error is None

    @property
    def writes_failing(self) -> bool:
        """True when the last write of the store failed."""
        return self._failing[True]

    def checked(self, call: Callable[[], _T], *, write: bool = False) -> _T:
        """`call()`, a store call that reads (or, with `write`, writes), its outcome noted."""
        try:
            result = call()
        except StoreError as exc:
            self._failed(exc, write)
            raise
        if self._failing[write]:
            self._ok(write)
        return result

    def probed(self, probe: Callable[[], bool]) -> None:
        """`probe()`, a store's write probe (`Store.probe_write`), its outcome noted as a
        write's: a process that has written nothing (or nothing since a write failed)
        learns whether writes fail. A store without a probe (False) leaves the last
        write's outcome.

        Raises:
            StoreError: a write would fail now.
        """
        try:
            probed = probe()
        except StoreError as exc:
            self._failed(exc, True)
            raise
        if probed and self._failing[True]:
            self._ok(True)

    def _ok(self, write: bool) -> None:
        with self._lock:
            self._failing[write] = False
            if self.error is None or any(self._failing.values()):
                return
            down_s = time.time() - self.since
            self.error, self.since = None, time.time()
        logger.warning(
            "hindsight-web: the store %s answers again after %.1f s; shared rules and "
            "statistics are in step again",
            self.url,
            down_s,
        )

    def _failed(self, exc: StoreError, write: bool) -> None:
        with self._lock:
            self.failures += 1
            self._failing[write] = True
            first = self.error is None
            self.error = str(exc)
            if first:
                self.since = time.time()
        if first:
            logger.warning(
                "hindsight-web: the store %s cannot be used (%s); requests go on with the last "
                "rules, admin changes answer 503 until it is back; this is logged again only "
                "once it recovers",
                self.url,
                exc,
            )
