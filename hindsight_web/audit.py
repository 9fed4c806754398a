"""The audit trail of rule changes: logged through `hindsight_web`, and kept (bounded)."""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

from ._sync import new_lock
from .stats import iso

__all__ = ["Audit"]

logger = logging.getLogger("hindsight_web")


class Audit:
    """Rule changes, newest first: every rule added, removed or expired.

    Each event is also logged at INFO through the ``hindsight_web`` logger with
    the rule, who made the change (the caller's address, or the rule source) and
    the rule's note. At most `max_events` are kept; older ones are forgotten
    (and counted in `forgotten`).
    """

    def __init__(self, max_events: int = 1000) -> None:
        self._events: deque[dict[str, Any]] = deque(maxlen=max_events)
        self._lock = new_lock()
        self.forgotten = 0

    def record(self, action: str, rule: dict[str, Any], by: str | None) -> None:
        """Note that `rule` (its JSON form) was `action` ("added", "removed", "expired") by `by`."""
        event = {
            "at": iso(time.time()),
            "action": action,
            "rule": rule,
            "by": by,
        }
        with self._lock:
            if len(self._events) == self._events.maxlen:
                self.forgotten += 1
            self._events.appendleft(event)
        logger.info(
            "hindsight rule %s: id=%s action=%s match=%s by=%s note=%s",
            action,
            rule.get("id"),
            rule.get("action"),
            rule.get("match"),
            by,
            rule.get("note"),
            extra={"rule_event": action, "rule_id": rule.get("id"), "changed_by": by},
        )

    def events(self, limit: int) -> list[dict[str, Any]]:
        """The newest `limit` events, newest first."""
        with self._lock:
            return [self._events[i] for i in range(min(limit, len(self._events)))]
