"""Audit events of rule changes: made once, kept by the store, logged through `hindsight_web`."""

from __future__ import annotations

import logging
from typing import Any

from .escaping import escape
from .stats import iso

__all__ = ["ACTIONS", "event", "fired", "log", "released"]

logger = logging.getLogger("hindsight_web")

ACTIONS = ("added", "removed", "replaced", "expired", "released", "fired")
"""The actions of audit events."""


def event(action: str, rule: dict[str, Any], by: str | None, now: float) -> dict[str, Any]:
    """The audit event of `rule` (its JSON form) being `action` ("added", "removed",
    "expired") by `by` (a token's name, a client address, or a rule source) at `now`."""
    return {"at": iso(now), "action": action, "rule": rule, "by": by}


def released(
    query: dict[str, Any], count: int, note: str | None, by: str | None, now: float
) -> dict[str, Any]:
    """The audit event of a release from the window (``POST /release``, a backfill):
    the `query` asked and the `count` of requests it released."""
    return {
        "at": iso(now),
        "action": "released",
        "rule": None,
        "query": query,
        "count": count,
        "note": note,
        "by": by,
    }


def fired(
    rule: dict[str, Any], firing: dict[str, Any], made: list[str], by: str, now: float
) -> dict[str, Any]:
    """The audit event of count rule `rule` (its JSON form) firing for one key: `firing`
    (what `GET /alerts` lists: the key, its count, samples...) and the ids of the rules
    it `made`."""
    return {
        "at": iso(now),
        "action": "fired",
        "rule": rule,
        "firing": firing,
        "made": made,
        "by": by,
    }


def log(event: dict[str, Any]) -> None:
    """Log an event at INFO through the ``hindsight_web`` logger, with the rule's note.

    Only the process that made a change logs it: one line per change in all. The
    note and the author are escaped (no value can forge a line).
    """
    rule = event["rule"]
    by = event["by"]
    if rule is None:  # a release from the window
        note = event.get("note")
        logger.info(
            "hindsight window released: count=%d query=%s by=%s note=%s",
            event["count"],
            event["query"],
            None if by is None else escape(by),
            None if note is None else escape(note),
            extra={"rule_event": event["action"], "rule_id": None, "changed_by": by},
        )
        return
    note = rule.get("note")
    firing = event.get("firing")
    if firing is not None:
        logger.info(
            "hindsight rule fired: id=%s %s=%s count=%d window_s=%g made=%s dry_run=%s",
            rule.get("id"),
            firing["key_name"],
            escape(str(firing["key"])),
            firing["count"],
            firing["window_s"],
            event["made"],
            firing["dry_run"],
            extra={"rule_event": "fired", "rule_id": rule.get("id"), "changed_by": by},
        )
        return
    logger.info(
        "hindsight rule %s: id=%s action=%s match=%s by=%s note=%s",
        event["action"],
        rule.get("id"),
        rule.get("action"),
        rule.get("match"),  # a dict: shown as its repr, control characters escaped
        None if by is None else escape(by),
        None if note is None else escape(note),
        extra={"rule_event": event["action"], "rule_id": rule.get("id"), "changed_by": by},
    )
