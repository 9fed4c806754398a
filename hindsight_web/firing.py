"""What a count rule does when one key reaches its threshold: its ``then``.

`FiringActions.run` is called on the counting's firing thread for each firing
(`counting.Firing`): it makes the ``detail`` and ``tag`` rules scoped to the key and
puts them in force with the audit event ``fired`` (one change of the store), queues
the alerts, and releases the key's matching requests of every window (audited).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from . import audit, errors
from .alerts import Alerts
from .book import RuleBook
from .counting import SLOTS, Firing
from .rules import Rule, Then
from .stats import iso
from .store import StoreError
from .window import Window

__all__ = ["FiringActions"]

_RULE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

Release = Callable[[dict[str, Any], "str | None", "str | None", str], dict[str, Any]]
"""Releases what a spec finds in every window, audited (`Hindsight.release_everywhere`)."""


class FiringActions:
    """Runs the ``then`` of the count rules of one `Hindsight` when they fire.

    Args:
        book: the rule book the rules made by firings go through.
        alerts: the alert targets.
        window: this process's window (None when off: nothing can be released).
        admin_path: where the admin answers (the samples' links), or None.
        release: releases a spec's requests of every window, audited.
    """

    def __init__(
        self,
        book: RuleBook,
        alerts: Alerts,
        window: Window | None,
        admin_path: str | None,
        release: Release,
    ) -> None:
        self.book = book
        self.alerts = alerts
        self.window = window
        self.admin_path = admin_path
        self.release = release

    def run(self, firing: Firing) -> None:
        """Run what a count rule does when one key reached its threshold (on the firing
        thread): the ``detail`` and ``tag`` rules it makes for that key, in force with the
        audit event "fired" (one change); its alerts; the release of that key's matching
        requests of every window (audited). A dry-run rule's firing is only audited."""
        rule = firing.rule
        spec = rule.count
        assert spec is not None
        then = () if rule.dry_run else spec.then
        by = f"rule:{rule.id}"
        scoped = []
        for action in then:
            if action.action in ("detail", "tag"):
                try:
                    scoped.append(self.book.parse(_scoped(rule, action, firing.key)))
                except ValueError as exc:  # a rule this book refuses
                    errors.report("count rule", exc)
        shown = self._firing_json(firing)
        targets = [a.alert for a in then if a.action == "alert" and a.alert is not None]
        # A target another process has and this one not (configured otherwise) is said.
        shown["alerts"] = {
            t: "queued" if t in self.alerts.ids else "unknown target" for t in targets
        }
        if self.window is None and any(a.action == "release" for a in then):
            shown["release"] = "no window here (window_s=0): nothing to release"
        event = audit.fired(rule.to_json(firing.at), shown, [], by, firing.at)
        try:
            made = self.book.fire(scoped, event, by)  # puts the ids made in event["made"]
        except StoreError as exc:
            errors.report("count rule", exc)
            audit.log(event)  # fired all the same: the line says so, the store cannot
        else:
            if len(made) < len(scoped):
                errors.report(
                    "count rule", OverflowError(f"{by}: too many rules made by count rules")
                )
        for target in targets:
            self.alerts.send(target, {"alert": target, **shown, "made": event["made"]})
        if self.window is not None and any(a.action == "release" for a in then):
            note = f"{by} fired for {firing.key}"
            self.release(_key_release(rule, firing), note, by, f"rule:{rule.id}")

    def _firing_json(self, firing: Firing) -> dict[str, Any]:
        """A firing as the audit trail, ``GET /alerts`` and the alerts show it: samples
        whose request the window still holds have the admin path that shows it."""
        rule = firing.rule
        spec = rule.count
        assert spec is not None
        window = self.window
        horizon = (
            math.inf if window is None or self.admin_path is None else firing.at - window.window_s
        )
        samples = []
        for at, request_id in firing.samples:
            sample: dict[str, Any] = {"request_id": request_id, "at": iso(at)}
            if at >= horizon:
                sample["link"] = f"{self.admin_path}/requests/{quote(request_id, safe='')}"
            samples.append(sample)
        return {
            "rule": rule.id,
            "note": rule.note,
            "key_name": spec.key,
            "key": firing.key,
            "count": firing.total,
            "threshold": spec.threshold,
            "window_s": spec.window_s,
            "first": iso(firing.first),
            "last": iso(firing.last),
            "fired_at": iso(firing.at),
            "samples": samples,
            "dry_run": rule.dry_run,
        }


def _scoped(rule: Rule, then: Then, key: str) -> dict[str, Any]:
    """The rule a count rule's ``detail`` or ``tag`` action makes for one `key`."""
    spec = rule.count
    assert spec is not None
    made_id = f"{rule.id}.{then.action}.{key}"
    if not _RULE_ID.fullmatch(made_id):
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        made_id = f"{rule.id[:100]}.{then.action}.{digest}"
    made: dict[str, Any] = {
        "id": made_id,
        "action": then.action,
        "match": {spec.key: key},
        "ttl_s": then.ttl_s,
        "note": f"made by count rule {rule.id}: {spec.key} {key} reached {spec.threshold}",
    }
    if then.level is not None:
        made["level"] = then.level
    if then.tags:
        made["tags"] = dict(then.tags)
    return made


def _key_release(rule: Rule, firing: Firing) -> dict[str, Any]:
    """The spec of the release of a count rule's requests of the key that fired, in the
    window it counted (and the slot before)."""
    spec = rule.count
    assert spec is not None
    match = dict(rule.to_json()["match"])  # type: ignore[call-overload]
    fields = {}
    if spec.key.startswith("field."):
        fields[spec.key[6:]] = firing.key
    else:
        match[spec.key] = firing.key
    since = firing.at - spec.window_s * (1 + 1 / SLOTS)
    routed = None if rule.sinks is None else list(rule.sinks)
    return {
        "match": match,
        "fields": fields,
        "since": since,
        "until": None,
        "note": None,
        "sinks": routed,
    }
