"""The rule book: the one owner of rule changes (add, remove, replace, expire, audit, hits).

Every change of the rules, whether from the admin API, a rule source (the
``rules`` option, ``rules_url``) or the Python API, goes through a `RuleBook`:
validated, written to the store together with its audit event (one
transaction), then put in force in this process at once, so that the admin
that made it reads it back. Other processes take it from the store on their
next `sync`, which the background thread runs every ``store_sync_s``; expiry
runs there too (`expire`), never inside a request.

Requests read only `RuleBook.active`, the in-memory `RuleSet` of this process:
no request ever waits on the store.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from typing import Any

from . import audit, errors
from ._sync import new_lock
from .rules import Rule, RuleError, RuleSet, parse_rule, restore_rule
from .store import Change, RulesView, Store, StoredRule, StoreError
from .store.health import Health

__all__ = ["ADMIN", "MADE", "MADE_SHARE", "RuleBook", "TooManyRules", "fingerprint"]

ADMIN = "admin"
"""The origin of rules added through the admin API or the Python API."""

MADE = "count"
"""The origin of the rules count rules make when they fire."""

MADE_SHARE = 0.5
"""The share of ``max_rules`` the rules made by count rules may hold together."""

_Source = tuple[str, str, list[Rule], str]  # origin, digest, rules, by

# What a rule's definition is, for telling whether a source changed it: its stored
# form without the fields that depend on when it was written.
_TIMES = ("created_at", "expires_at", "ttl_s", "hits")


class TooManyRules(RuleError):
    """Adding the rules would hold more than `max_rules` (a 422 of the admin API)."""

    def __init__(self, max_rules: int) -> None:
        super().__init__(
            f"too many rules: at most {max_rules} are held ('max_rules'); remove some first",
            status=422,
            details=[{"field": "rules", "error": f"at most {max_rules} rules (max_rules)"}],
        )


def fingerprint(document: object) -> str:
    """A short stable digest of a JSON-ready document (a source's rules)."""
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class RuleBook:
    """The rules of one app: every change goes to the store, then into force here.

    Args:
        store: where the rules, their hits and the audit trail are kept.
        health: notes store calls that fail or succeed again.
        max_rules: the most rules held at once; an add beyond is refused
            (`TooManyRules`).
        max_detail_ttl_s: the longest a ``detail`` rule may live, in seconds.
        default_detail_ttl_s: how long, in seconds, a ``detail`` rule given no
            expiry lives.
        clock: the time in epoch seconds (for tests).
        sinks: the sink ids a rule's ``"sinks"`` may name (None: any).
        alerts: the alert target ids a count rule's ``then`` may name (None: any).

    Every change raises:
        RuleError: the rule is malformed (`TooManyRules`: there would be too many).
        KeyError: a live rule already has the id being added.
        store.StoreError: the store cannot be used now; nothing was changed.
    """

    def __init__(
        self,
        store: Store,
        health: Health,
        *,
        max_rules: int,
        max_detail_ttl_s: float,
        default_detail_ttl_s: float,
        clock: Callable[[], float] = time.time,
        sinks: tuple[str, ...] | None = None,
        alerts: tuple[str, ...] | None = None,
    ) -> None:
        self.store = store
        self.sinks = sinks
        self.alerts = alerts
        self.health = health
        self.max_rules = max_rules
        self.max_detail_ttl_s = max_detail_ttl_s
        self.default_detail_ttl_s = default_detail_ttl_s
        self._clock = clock
        self.active = RuleSet(clock=clock)
        """The rules in force in this process: what requests look up."""
        self.revision: int | None = None
        """The store revision `active` reflects; None before the first read."""
        self._lock = new_lock()  # one change or sync at a time in this process
        self._pending: list[_Source] = []  # rules of sources not written yet
        self._sources: dict[str, _Source] = {}  # the last rules each source wrote
        self._hits_lock = new_lock()
        self._flushed: dict[str, tuple[Rule, int]] = {}  # per rule id, its hits flushed
        self._stored_hits: dict[str, int] = {}  # at the last read, for stale answers
        self._events: list[dict[str, Any]] = []  # at the last audit read

    # -- validation -------------------------------------------------------------------

    def parse(self, obj: object) -> Rule:
        """Validate a rule (DESIGN.md format, as decoded JSON) against this book's limits.

        Raises:
            RuleError: the rule is malformed; its ``status`` and ``details`` name
                every offending field.
        """
        return parse_rule(
            obj,
            now=self._clock(),
            max_detail_ttl_s=self.max_detail_ttl_s,
            default_detail_ttl_s=self.default_detail_ttl_s,
            sinks=self.sinks,
            alerts=self.alerts,
        )

    # -- changes ----------------------------------------------------------------------

    def add(self, rule: Rule, by: str | None) -> Rule:
        """Put `rule` in force everywhere (audited as "added" by `by`); returns it.

        Raises:
            KeyError: a live rule already has its id.
            TooManyRules: `max_rules` are held already.
            store.StoreError: the store cannot be used now.
        """
        now = self._clock()

        def plan(view: RulesView) -> Change:
            change = Change(put=[_stored(rule, ADMIN)])
            held = view.get(rule.id)
            if held is not None:
                old = self._restore(held)
                if old is None or old.live(now):
                    raise KeyError(rule.id)
                change.events.append(audit.event("expired", old.to_json(now), "expiry", now))
            elif view.count() >= self.max_rules:
                raise TooManyRules(self.max_rules)
            change.events.append(audit.event("added", rule.to_json(now), by, now))
            return change

        self._commit(plan, {rule.id: rule})
        return rule

    def note(self, event: dict[str, Any]) -> None:
        """Append an audit event that changes no rule (a release from the window).

        Raises:
            store.StoreError: the store cannot be used now.
        """
        self._commit(lambda view: Change(events=[event]), {})

    def fire(self, rules: list[Rule], event: dict[str, Any], by: str) -> list[Rule]:
        """Audit a count rule's firing (`event`, "fired": its ``made`` is set to the ids
        put in force) and put the `rules` it made in force everywhere, each in place of
        any rule with its id (audited "replaced", then "added" by `by`), in one change;
        returns the rules put in force.

        Rules made by count rules hold at most half of `max_rules` (`MADE_SHARE`), so
        that an attack from many keys leaves operators room for their own; those beyond
        are left out.

        Raises:
            store.StoreError: the store cannot be used now; nothing was changed.
        """
        now = self._clock()
        made: list[Rule] = []
        share = int(self.max_rules * MADE_SHARE)

        def plan(view: RulesView) -> Change:
            made.clear()
            change = Change(events=[event])
            room = min(self.max_rules - view.count(), share - len(view.of_origin(MADE)))
            for rule in rules:
                held = view.get(rule.id)
                if held is None and room <= 0:
                    continue
                if held is None:
                    room -= 1
                else:
                    old = self._restore(held)
                    body = held.body if old is None else old.to_json(now)
                    change.events.append(audit.event("replaced", body, by, now))
                made.append(rule)
                change.put.append(_stored(rule, MADE))
                change.events.append(audit.event("added", rule.to_json(now), by, now))
            event["made"] = [rule.id for rule in made]
            return change

        self._commit(plan, {rule.id: rule for rule in rules})
        return made

    def remove(self, rule_id: str, by: str | None) -> Rule | None:
        """Take the live rule `rule_id` out of force everywhere; returns it, or None
        when there is none (an expired one is then audited as "expired").

        Raises:
            store.StoreError: the store cannot be used now.
        """
        now = self._clock()
        removed: list[Rule] = []

        def plan(view: RulesView) -> Change:
            removed.clear()
            held = view.get(rule_id)
            if held is None:
                return Change()
            old = self._restore(held)
            if old is not None and old.live(now):
                removed.append(old)
            return Change(delete=[rule_id], events=[_gone(held, old, by, now)])

        if not self._commit(plan, {}):
            self.active.discard(rule_id)  # gone from the store already
        return removed[0] if removed else None

    def replace_detail(self, rule: Rule, user_id: str, by: str | None) -> list[Rule]:
        """Put detail rule `rule` for `user_id` in force in place of that user's other
        detail rules, in one change (audited: "replaced", then "added"); returns the
        rules it replaced.

        Raises:
            KeyError: a live rule already has its id.
            TooManyRules: `max_rules` are held already (besides those replaced).
            store.StoreError: the store cannot be used now.
        """
        now = self._clock()
        replaced: list[Rule] = []

        def plan(view: RulesView) -> Change:
            # Read in the change's own transaction: a detail rule another process added
            # a moment ago is replaced too.
            replaced.clear()
            change = Change(put=[_stored(rule, ADMIN)])
            for held in view.of_origin(ADMIN):
                old = self._restore(held)
                if old is not None and old.live(now) and _details_user(old, user_id):
                    replaced.append(old)
                    change.delete.append(old.id)
                    change.events.append(audit.event("replaced", old.to_json(now), by, now))
            if view.get(rule.id) is not None:
                raise KeyError(rule.id)
            if view.count() - len(replaced) >= self.max_rules:
                raise TooManyRules(self.max_rules)
            change.events.append(audit.event("added", rule.to_json(now), by, now))
            return change

        self._commit(plan, {rule.id: rule})
        return replaced

    def remove_detail(self, user_id: str, by: str | None) -> list[Rule]:
        """Take every ``detail`` rule of `user_id` out of force; returns those removed.

        Raises:
            store.StoreError: the store cannot be used now.
        """
        self.sync()
        mine = [rule.id for rule in self.active.rules() if _details_user(rule, user_id)]
        if not mine:
            return []
        now = self._clock()
        removed: list[Rule] = []

        def plan(view: RulesView) -> Change:
            removed.clear()
            change = Change()
            for rule_id in mine:
                held = view.get(rule_id)
                old = None if held is None else self._restore(held)
                if old is not None and old.live(now) and _details_user(old, user_id):
                    removed.append(old)
                    change.delete.append(rule_id)
                    change.events.append(audit.event("removed", old.to_json(now), by, now))
            return change

        self._commit(plan, {})
        return removed

    def swap(self, origin: str, digest: str, rules: list[Rule], by: str) -> list[str]:
        """Make `rules` the rules of `origin` (a rule source), at once and everywhere.

        Idempotent: when the store holds this `digest` for `origin` already
        (another worker applied the same document), nothing changes. Otherwise
        the origin's rules that are gone or changed are removed, new ones added
        (each audited, by `by`); unchanged ones keep running (their expiry and
        hits). Rules of other origins are left alone; a rule whose id another
        origin holds is skipped: its id is returned.

        Raises:
            TooManyRules: there would be more than `max_rules`.
            store.StoreError: the store cannot be used now.
        """
        now = self._clock()
        skipped: list[str] = []

        def plan(view: RulesView) -> Change:
            skipped.clear()
            if view.fingerprint(origin) == digest:
                return Change()
            mine = {held.id: held for held in view.of_origin(origin)}
            wanted = {rule.id: rule for rule in rules}
            change = Change(fingerprints={origin: digest})
            for rule_id, held in mine.items():
                if rule_id not in wanted or _definition(held.body) != _definition(
                    wanted[rule_id].to_json(now)
                ):
                    change.delete.append(rule_id)
                    change.events.append(_gone(held, self._restore(held), by, now))
            for rule_id, rule in wanted.items():
                if rule_id in mine and rule_id not in change.delete:
                    continue
                if rule_id not in mine and view.get(rule_id) is not None:
                    skipped.append(rule_id)
                    continue
                change.put.append(_stored(rule, origin))
                change.events.append(audit.event("added", rule.to_json(now), by, now))
            if view.count() - len(change.delete) + len(change.put) > self.max_rules:
                raise TooManyRules(self.max_rules)
            return change

        self._commit(plan, {rule.id: rule for rule in rules})
        with self._lock:  # written: no longer pending, offered again if the store loses it
            self._pending = [source for source in self._pending if source[0] != origin]
            self._sources[origin] = (origin, digest, rules, by)
        return skipped

    def swap_later(self, origin: str, digest: str, rules: list[Rule], by: str) -> None:
        """Put `rules` in force here at once and write them (`swap`) at the next sync.

        For the rules given at start to a shared store: a request served before
        the store answers already obeys them, and they are written once it does.
        """
        with self._lock:
            for rule in rules:
                if self.active.held(rule.id) is None:
                    self.active.put(rule)
            self._pending.append((origin, digest, rules, by))

    def expire(self) -> list[Rule]:
        """Remove the rules whose time is up from the store, each audited once in all.

        Requests stop using a rule the moment it expires, whether or not this has
        run; this writes it down. Returns the rules this process expired.

        Raises:
            store.StoreError: the store cannot be used now.
        """
        due = self.active.due()
        if not due:
            return []
        now = self._clock()
        expired: list[Rule] = []

        def plan(view: RulesView) -> Change:
            expired.clear()
            change = Change()
            for rule in due:
                held = view.get(rule.id)
                old = None if held is None else self._restore(held)
                if old is not None and not old.live(now):
                    expired.append(old)
                    change.delete.append(rule.id)
                    change.events.append(audit.event("expired", old.to_json(now), "expiry", now))
            return change

        self._commit(plan, {})
        return expired

    # -- keeping in step with the store -----------------------------------------------

    def sync(self, revision: int | None = None, *, write: bool = True) -> None:
        """Bring `active` in step with the store (the rules other processes changed).

        `revision` is the store's, when the caller has just read it: nothing is
        read when `active` reflects it already. Rules given at start that are not
        written yet are written first (unless `write` is False); until they are,
        they stay in force beside the store's.

        Raises:
            store.StoreError: the store cannot be used now.
        """
        if self._pending and write:
            self._write_pending()
        if revision is not None and revision == self.revision:
            return
        with self._lock:
            read = self.health.checked(lambda: self.store.read_rules(self.revision))
            restored = (self._restore(stored) for stored in read.rules)
            fresh = [self._held_or(rule) for rule in restored if rule is not None]
            if read.full:
                self.active.replace(fresh)
                if self.revision is not None:
                    # Read again from scratch: far behind, or the store lost its data (a
                    # Redis restarted without persistence). Offer the sources' rules
                    # again: a no-op where the store has them (their fingerprints).
                    self._pending = list(self._sources.values())
            else:
                for rule_id in read.deleted:
                    self.active.discard(rule_id)
                for rule in fresh:
                    self.active.put(rule)
            for origin, _, rules, _ in self._pending:
                if origin in self._sources:
                    continue  # written before: the store's word stands until written again
                for rule in rules:
                    if self.active.held(rule.id) is None:
                        self.active.put(rule)
            self.revision = read.revision

    def flush_hits(self) -> None:
        """Add the hits counted here since the last flush to the store's.

        A rule's own counter (`Rule.hits`) keeps counting this process's hits;
        what was flushed of it is remembered here.

        Raises:
            store.StoreError: the store cannot be used now (counted again next time).
        """
        with self._hits_lock:
            counted = {rule.id: (rule, rule.hits) for rule in self.active.rules()}
            deltas = {
                rule_id: n - self._flushed_of(rule)
                for rule_id, (rule, n) in counted.items()
                if n > self._flushed_of(rule)
            }
            if deltas:
                self.health.checked(lambda: self.store.add_hits(deltas), write=True)
            self._flushed = counted

    def _held_or(self, rule: Rule) -> Rule:
        """The rule held here when it is the same as `rule` (it keeps its hits), else `rule`."""
        held = self.active.held(rule.id)
        return held if held is not None and held == rule else rule

    def _flushed_of(self, rule: Rule) -> int:
        flushed = self._flushed.get(rule.id)
        return flushed[1] if flushed is not None and flushed[0] is rule else 0

    def _write_pending(self) -> None:
        # A rule skipped for its id (another origin holds it) is replaced here by the
        # store's at the read that follows.
        for origin, digest, rules, by in list(self._pending):
            try:
                self.swap(origin, digest, rules, by)
            except TooManyRules as exc:  # the store holds other rules: too many with these
                with self._lock:
                    self._pending = [p for p in self._pending if p[0] != origin]
                errors.report("rules", exc)

    # -- reading, for the admin ---------------------------------------------------------

    def listing(self) -> tuple[list[dict[str, Any]], bool]:
        """Every live rule's JSON form (hits of every process), oldest first, and
        whether the answer is stale (the store cannot be read: this process's copy).

        Reads only: a store that answers reads gives a fresh answer even while it
        refuses writes (a SQLite file locked by another writer).
        """
        stale = self._refresh(None)
        now = self._clock()
        return [self._json(rule, now) for rule in self.active.rules()], stale

    def lookup(self, rule_id: str) -> tuple[dict[str, Any] | None, bool]:
        """One live rule's JSON form, or None, and whether it is stale (see `listing`)."""
        stale = self._refresh([rule_id])
        rule = self.active.get(rule_id)
        return (None if rule is None else self._json(rule, self._clock())), stale

    def audit(self, limit: int) -> tuple[list[dict[str, Any]], bool]:
        """The newest `limit` audit events, newest first, and whether they are stale."""
        try:
            self._events = self.health.checked(lambda: self.store.audit(limit))
            return self._events, False
        except StoreError:
            return self._events[:limit], True

    def _refresh(self, ids: list[str] | None) -> bool:
        """Read the rules and the hits of `ids` (None: all) from the store; True when it
        cannot (the answer is then this process's copy)."""
        try:
            self.sync(write=False)
            hits = self.health.checked(lambda: self.store.hits(ids))
        except StoreError:
            return True
        self._stored_hits = hits if ids is None else {**self._stored_hits, **hits}
        return False

    def _json(self, rule: Rule, now: float) -> dict[str, Any]:
        body = rule.to_json(now)
        body["hits"] = self._stored_hits.get(rule.id, 0) + rule.hits - self._flushed_of(rule)
        return body

    # -- helpers ----------------------------------------------------------------------

    def _commit(self, plan: Callable[[RulesView], Change], made: dict[str, Rule]) -> Change:
        """Write what `plan` decides, then apply it here (rules of `made` as they are)."""
        with self._lock:
            change, revision = self.health.checked(lambda: self.store.change(plan), write=True)
            for rule_id in change.delete:
                self.active.discard(rule_id)
            for stored in change.put:
                rule = made.get(stored.id) or self._restore(stored)
                if rule is not None:
                    self.active.put(rule)
            if change and self.revision is not None and revision == self.revision + 1:
                self.revision = revision  # nobody else changed anything meanwhile
        for event in change.events:
            try:
                audit.log(event)
            except Exception as exc:  # a handler that fails: the change is made all the same
                errors.report("audit", exc)
        return change

    def _restore(self, stored: StoredRule) -> Rule | None:
        """The rule a store holds, or None when it cannot be read (reported once)."""
        try:
            return restore_rule(
                stored.body,
                now=self._clock(),
                max_detail_ttl_s=self.max_detail_ttl_s,
                default_detail_ttl_s=self.default_detail_ttl_s,
            )
        except (RuleError, ValueError) as exc:
            errors.report("store rule", exc)
            return None


def _stored(rule: Rule, origin: str) -> StoredRule:
    body = rule.to_json()
    del body["hits"], body["ttl_s"]
    return StoredRule(rule.id, body, origin)


def _gone(held: StoredRule, old: Rule | None, by: str | None, now: float) -> dict[str, Any]:
    """The audit event of a stored rule deleted by `by`: "expired" once its time is up."""
    if old is not None and not old.live(now):
        return audit.event("expired", old.to_json(now), "expiry", now)
    return audit.event("removed", held.body if old is None else old.to_json(now), by, now)


def _definition(body: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in body.items() if key not in _TIMES}


def _details_user(rule: Rule, user_id: str) -> bool:
    """Whether `rule` is a detail rule of exactly `user_id`."""
    return rule.action == "detail" and rule.to_json()["match"] in (
        {"user_id": user_id},
        {"user_id": [user_id]},
    )
