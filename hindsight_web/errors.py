"""Fail open: hindsight's own errors are caught, counted and reported once each."""

from __future__ import annotations

import logging

from ._sync import new_lock

__all__ = ["count", "report"]

logger = logging.getLogger("hindsight_web")

_lock = new_lock()
_count = 0
_seen: set[tuple[str, str]] = set()


def report(where: str, exc: BaseException) -> None:
    """Count an error hindsight hit in `where`; log it the first time its kind is seen."""
    global _count
    key = (where, type(exc).__name__)
    with _lock:
        _count += 1
        first = key not in _seen
        if first:
            _seen.add(key)
    if first:
        try:
            logger.error(
                "hindsight-web internal error in %s; the request went on, further errors of "
                "this kind are only counted",
                where,
                exc_info=exc,
            )
        except Exception:
            pass


def count() -> int:
    """How many internal errors this process has hit."""
    return _count


def reset() -> None:
    """Forget counted and reported errors (for tests)."""
    global _count
    with _lock:
        _count = 0
        _seen.clear()
