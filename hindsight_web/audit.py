"""Audit events of rule changes: made once, kept by the store, logged through `hindsight_web`."""

from __future__ import annotations

import logging
from typing import Any

from .stats import iso

__all__ = ["event", "log"]

logger = logging.getLogger("hindsight_web")


def event(action: str, rule: dict[str, Any], by: str | None, now: float) -> dict[str, Any]:
    """The audit event of `rule` (its JSON form) being `action` ("added", "removed",
    "expired") by `by` (a token's name, a client address, or a rule source) at `now`."""
    return {"at": iso(now), "action": action, "rule": rule, "by": by}


def log(event: dict[str, Any]) -> None:
    """Log an event at INFO through the ``hindsight_web`` logger, with the rule's note.

    Only the process that made a change logs it: one line per change in all.
    """
    rule = event["rule"]
    logger.info(
        "hindsight rule %s: id=%s action=%s match=%s by=%s note=%s",
        event["action"],
        rule.get("id"),
        rule.get("action"),
        rule.get("match"),
        event["by"],
        rule.get("note"),
        extra={"rule_event": event["action"], "rule_id": rule.get("id"), "changed_by": event["by"]},
    )
