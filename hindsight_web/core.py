"""Hindsight: begin a request, finish it, decide whether its buffered records are released."""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterable
from time import perf_counter
from typing import Any, TypeVar

from . import admin, capture, dashboard, errors, metrics, options, sources
from ._sync import new_lock
from .audit import Audit
from .buffer import Budget, Entry, release_memory
from .context import CLOSED_LEVEL, RequestState
from .rules import Rule, RuleSet, parse_rule
from .stats import Stats, hash_session

__all__ = ["Hindsight"]

logger = errors.logger

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:+/=@-]{1,128}")
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")
_STORE_SCHEMES = ("memory://", "sqlite://", "redis://", "rediss://")
_MAX_PATH_SHOWN = 300
DEFAULT_DETAIL_TTL_S = 1800.0


class Hindsight:
    """The shared core behind `HindsightMiddleware` and `HindsightWSGIMiddleware`.

    One instance holds the options, the shared byte budget and the counters;
    give the same instance to several middlewares to share them.

    Args:
        slow_ms: release a request that took at least this many milliseconds
            (until its last body byte); None turns the trigger off.
        release_on_status: release a request whose status is at least this;
            None turns the trigger off.
        release_on_exception: release a request whose app raised.
        capture_level: the lowest level kept in buffers (a name or a number).
        admin_path: where the admin sub-app answers; None to serve it only as
            a separate app (:meth:`admin_asgi_app`, :meth:`admin_wsgi_app`).
        admin_token: bearer token of the admin sub-app; defaults to the
            ``HINDSIGHT_ADMIN_TOKEN`` environment variable; with none the admin
            sub-app is off.
        admin_read_token: an optional second token that may only make GET
            calls; defaults to ``HINDSIGHT_ADMIN_READ_TOKEN``.
        admin_max_body: the largest admin request body accepted, in bytes.
        store: where rules and shared state live (``memory://``,
            ``sqlite:///path/file.db``, ``redis://host:port/db``).
        max_records: records kept per request (the most recent ones).
        max_bytes: bytes kept per request (estimated).
        max_total_bytes: bytes kept by all live requests of the process together.
        request_id_header: the request header trusted for an incoming request
            id, and the response header that carries it.
        rules: rules in force from the start: a list of rule objects, or the
            path of a JSON file holding such a list (or ``{"rules": [...]}``).
        rules_url: a URL serving such a JSON document, fetched at start and
            then every `rules_poll_s` seconds (needs ``hindsight-web[cli]``);
            the rules it serves replace the ones it served before.
        rules_poll_s: seconds between two fetches of `rules_url`.
        max_detail_ttl_s: the longest a ``detail`` rule may live; detail rules
            given no ttl expire after 30 minutes.
        max_routes: routes (method and route template) kept in the statistics;
            requests to others are counted under ``(other)``.
        max_sessions: user sessions kept in the statistics (the least recently
            seen are forgotten first); 0 keeps none.
        session_cookie: the name of the app's session cookie, to group the
            statistics of requests whose app did not call ``set_user(...,
            session_id=...)``; only a hash of its value is kept.

    Example::

        hs = Hindsight(slow_ms=500)
        app.add_middleware(HindsightMiddleware, hindsight=hs)
    """

    def __init__(
        self,
        *,
        slow_ms: float | None = 1000,
        release_on_status: int | None = 500,
        release_on_exception: bool = True,
        capture_level: int | str = "DEBUG",
        admin_path: str | None = "/_hindsight",
        admin_token: str | None = None,
        store: str = "memory://",
        max_records: int = 5000,
        max_bytes: int = 1_000_000,
        max_total_bytes: int = 64_000_000,
        request_id_header: str = "X-Request-ID",
        admin_read_token: str | None = None,
        admin_max_body: int = 64 * 1024,
        rules: list[Any] | str | os.PathLike[str] | None = None,
        rules_url: str | None = None,
        rules_poll_s: float = 30.0,
        max_detail_ttl_s: float = 24 * 3600.0,
        max_routes: int = 500,
        max_sessions: int = 10_000,
        session_cookie: str | None = None,
    ) -> None:
        self.slow_ms = options.optional_number("slow_ms", slow_ms)
        self.release_on_status = options.optional_status(release_on_status)
        self.release_on_exception = options.boolean("release_on_exception", release_on_exception)
        self.capture_level = options.level("capture_level", capture_level)
        self.admin_path = options.admin_path(admin_path)
        self.admin_token = options.token("admin_token", admin_token, "HINDSIGHT_ADMIN_TOKEN")
        self.admin_read_token = options.token(
            "admin_read_token", admin_read_token, "HINDSIGHT_ADMIN_READ_TOKEN"
        )
        if self.admin_read_token is not None and self.admin_token is None:
            raise ValueError("invalid 'admin_read_token': it needs an 'admin_token' too")
        self.admin_max_body = options.positive_int("admin_max_body", admin_max_body)
        self.max_detail_ttl_s = options.seconds("max_detail_ttl_s", max_detail_ttl_s)
        self.rules_poll_s = options.seconds("rules_poll_s", rules_poll_s)
        if not isinstance(store, str) or not store.startswith(_STORE_SCHEMES):
            raise ValueError(
                f"invalid 'store' {store!r}: expected 'memory://', 'sqlite:///path/to/file.db' "
                "or 'redis://host:port/db'"
            )
        if store != "memory://":
            raise ValueError(
                f"'store' {store!r} is not available in this version: rules and statistics are "
                "kept per process ('memory://')"
            )
        self.store = store
        self.max_records = options.positive_int("max_records", max_records)
        self.max_bytes = options.positive_int("max_bytes", max_bytes)
        self.max_total_bytes = options.positive_int("max_total_bytes", max_total_bytes)
        self.request_id_header = options.header_name("request_id_header", request_id_header)
        self.budget = Budget(self.max_total_bytes)
        self.rules = RuleSet()
        self._rules_lock = new_lock()
        self.audit = Audit()
        self._watch_messages = False
        self._message_rules = 0
        self._next_expiry_check = 0.0
        self._admin_segments = [part for part in (self.admin_path or "").split("/") if part]
        # A path without the admin path's last segment in it cannot be the admin's,
        # however it is spelled: the adapters normalise and look at the others only.
        served = self.admin_token is not None and self._admin_segments
        self.admin_marker = self._admin_segments[-1] if served else None
        if rules is not None:
            for rule in sources.load_initial(rules, self.parse_rule):
                self._add(rule, by="startup")
        self._poller = sources.RulesPoller(self, rules_url) if rules_url is not None else None
        self._lock = new_lock()
        self._counts = dict.fromkeys(("records_captured", "records_released", "records_dropped"), 0)
        self.stats = Stats(max_routes=max_routes, max_sessions=max_sessions)
        self.session_cookie = options.cookie_name("session_cookie", session_cookie)
        capture.install()

    # -- the life of a request -------------------------------------------------

    def begin(
        self,
        method: str,
        path: str,
        client: str | None = None,
        request_id: str | None = None,
        headers: Any = None,
    ) -> RequestState:
        """Open the state of a new request (the adapter makes it current)."""
        if request_id is None or not _REQUEST_ID.fullmatch(request_id):
            request_id = new_request_id()
        state = RequestState(
            request_id,
            method,
            path,
            client,
            headers,
            self.capture_level,
            self.max_records,
            self.max_bytes,
            self.budget,
        )
        if self._poller is not None:
            self._poller.ensure_running()
        if not self.rules.empty:
            self._begin_with_rules(state)
        return state

    def _begin_with_rules(self, state: RequestState) -> None:
        state.on_identity = self._identity_known
        if self._watch_messages:
            state.written = []
        self._identity_known(state)

    def _identity_known(self, state: RequestState) -> None:
        """Look the start-time rules up again (at the start, and when the user becomes known)."""
        if state.detail_rule is not None or state.closed:
            return
        try:
            rule = self.rules.detail_for(state)
            if rule is not None:
                self._start_detail(state, rule)
        except Exception as exc:
            errors.report("rules", exc)

    def _start_detail(self, state: RequestState, rule: Rule) -> None:
        """Write what the request buffered so far, then its records from `rule.level` up live."""
        state.detail_rule = rule.id
        state.detail_level = rule.level
        state.keep_level = CLOSED_LEVEL
        records = list(state.records)
        release_memory(state)
        written = _write(records, state)
        with self._lock:
            self._counts["records_captured"] += len(records)
            self._counts["records_released"] += written

    def finish(self, state: RequestState, exception: BaseException | None = None) -> str | None:
        """Close the request: release its buffer or discard it. Returns the release reason.

        Safe to call more than once; only the first call acts.
        """
        if state.closed:
            return None
        state.closed = True
        state.keep_level = CLOSED_LEVEL
        reason = None
        try:
            end = state.ended
            if end is None:
                end = perf_counter()
            duration_ms = (end - state.started) * 1000.0
            state.duration_ms = duration_ms
            slow_ms = self.slow_ms
            state.slow = slow_ms is not None and duration_ms >= slow_ms
            status = state.status
            if exception is not None:
                state.errored = True
                state.raised = type(exception).__name__
            else:
                state.errored = status is not None and status >= 500
                state.raised = None
            # The built-in triggers, then the rules (which may override them).
            on_status = self.release_on_status
            trigger = None
            if exception is not None and self.release_on_exception:
                trigger = "exception"
            elif on_status is not None and status is not None and status >= on_status:
                trigger = "status"
            elif state.slow:
                trigger = "slow"
            reason = trigger if self.rules.empty else self._decide(state, trigger, duration_ms)
            state.reason = reason
            state.released = reason is not None
            released = 0
            if reason is not None:
                released = self._release(state, reason, duration_ms, exception)
            if reason is not None or state.records or state.dropped:
                with self._lock:
                    counts = self._counts
                    counts["records_captured"] += len(state.records) + state.dropped
                    counts["records_dropped"] += state.dropped
                    counts["records_released"] += released
            if self.session_cookie is not None and state.session_id is None:
                state.session_id = _cookie_session(state, self.session_cookie)
            self.stats.record(state)
        except Exception as exc:
            errors.report("finish", exc)
        finally:
            if state.reserved or state.records:
                release_memory(state)
            # A context copied from the request (a task it started) may keep the state
            # alive: let it pin nothing more.
            state.headers = None
            if state.on_identity is not None:
                state.written = state.on_identity = None
        return reason

    def _decide(self, state: RequestState, trigger: str | None, duration_ms: float) -> str | None:
        """The end-time rules first (a `drop` silences even a failure), then the built-in
        `trigger`, then a detail rule that was on for the request."""
        if perf_counter() >= self._next_expiry_check:
            self._next_expiry_check = perf_counter() + 1.0
            self.expire_rules()
        rule = self.rules.decide(state, duration_ms)
        if rule is not None:
            return f"rule:{rule.id}" if rule.action == "release" else None
        if trigger is None and state.detail_rule is not None:
            return f"rule:{state.detail_rule}"
        return trigger

    def _release(
        self,
        state: RequestState,
        reason: str,
        duration_ms: float,
        exception: BaseException | None,
    ) -> int:
        """Write the summary, then the buffered records in order; return how many were written."""
        records = state.records
        outcome = "-> no response" if state.status is None else f"-> {state.status}"
        if exception is not None:
            outcome += f", raised {type(exception).__name__}"
        summary = logger.makeRecord(
            logger.name,
            logging.INFO,
            __file__,
            sys._getframe().f_lineno,
            "hindsight release: %s %s %s in %.1f ms (reason: %s) request_id=%s "
            "records=%d dropped=%d",
            (
                safe_text(state.method, 16),
                safe_text(state.path, _MAX_PATH_SHOWN),
                outcome,
                duration_ms,
                reason,
                state.request_id,
                len(records),
                state.dropped,
            ),
            None,
            "release",
            {
                "http_method": state.method,
                "http_path": state.path,
                "http_status": state.status,
                "duration_ms": round(duration_ms, 3),
                "release_reason": reason,
                "records_released": len(records),
                "records_dropped": state.dropped,
            },
        )
        capture.tag(summary, state)
        if logger.manager.disable < logging.INFO:  # logging.disable() silences it too
            capture.deliver(logger, summary)
        return _write(records, state)

    # -- rules -------------------------------------------------------------------

    def add_rule(self, rule: Any, by: str | None = None) -> Rule:
        """Validate a rule (DESIGN.md format, as decoded JSON) and put it in force.

        The change is audited (logged at INFO and listed by ``GET /audit``).

        Raises:
            rules.RuleError: the rule is malformed; nothing was changed.
            KeyError: a rule with its id is in force already.

        Example::

            hs.add_rule({"id": "checkout-slow", "action": "release",
                         "match": {"path": "/checkout/*", "duration_ms": {"gt": 800}}})
        """
        parsed = self.parse_rule(rule)
        self._add(parsed, by)
        return parsed

    def parse_rule(self, rule: Any) -> Rule:
        """Validate a rule against this Hindsight's limits, without putting it in force.

        Raises:
            rules.RuleError: the rule is malformed.
        """
        return parse_rule(
            rule,
            now=time.time(),
            max_detail_ttl_s=self.max_detail_ttl_s,
            default_detail_ttl_s=min(DEFAULT_DETAIL_TTL_S, self.max_detail_ttl_s),
        )

    def remove_rule(self, rule_id: str, by: str | None = None) -> Rule | None:
        """Take a rule out of force; returns it, or None if there was none with that id."""
        with self._rules_lock:
            removed = self.rules.remove(rule_id)
        if removed is not None:
            self._rules_changed([removed], -1)
            self.audit.record("removed", removed.to_json(), by)
        return removed

    def expire_rules(self) -> None:
        """Drop the rules whose time is up, and audit each."""
        expired = self.rules.expire()
        if expired:
            self._rules_changed(expired, -1)
            for rule in expired:
                self.audit.record("expired", rule.to_json(), "expiry")

    def _add(self, rule: Rule, by: str | None) -> None:
        with self._rules_lock:
            self.rules.add(rule)
        self._rules_changed([rule], +1)
        self.audit.record("added", rule.to_json(), by)

    def swap_rules(
        self, old: dict[str, Rule], rules: list[Rule], by: str
    ) -> tuple[dict[str, Rule], list[str]]:
        """Replace the rules `old` (put in force by one source) by `rules`, at once.

        Rules of other sources are left alone, also one that took the id of a rule
        in `old` since; a new rule whose id another source holds is skipped.
        Returns the rules put in force and the ids skipped.
        """
        self.expire_rules()
        with self._rules_lock:
            current = {rule.id: rule for rule in self.rules.rules()}
            mine = {rule_id for rule_id, rule in old.items() if current.get(rule_id) is rule}
            others = [rule for rule_id, rule in current.items() if rule_id not in mine]
            taken = {rule.id for rule in others}
            applied = [rule for rule in rules if rule.id not in taken]
            self.rules.replace(others + applied)
        removed = [current[rule_id] for rule_id in sorted(mine)]
        self._rules_changed(removed, -1)
        self._rules_changed(applied, +1)
        for rule in removed:
            self.audit.record("removed", rule.to_json(), by)
        for rule in applied:
            self.audit.record("added", rule.to_json(), by)
        return {rule.id: rule for rule in applied}, [rule.id for rule in rules if rule.id in taken]

    def _rules_changed(self, rules: list[Rule], delta: int) -> None:
        # Messages of written records are kept only while some rule matches on them.
        watching = sum("message" in rule.to_json()["match"] for rule in rules)  # type: ignore[operator]
        with self._rules_lock:
            self._message_rules += delta * watching
            self._watch_messages = self._message_rules > 0

    def close(self) -> None:
        """Stop background work (the polling of `rules_url`); requests are still served."""
        if self._poller is not None:
            self._poller.stop()

    # -- admin -------------------------------------------------------------------

    def admin_route(self, path: str, *, encoded: bool = False) -> list[str] | None:
        """The admin call a request path names (segments below `admin_path`), or None.

        None also when the admin sub-app is off (no `admin_token`).
        """
        if self.admin_token is None or self.admin_path is None:
            return None
        return admin.admin_segments(path, self._admin_segments, encoded=encoded)

    def admin_asgi_app(self) -> Any:
        """The admin API as an ASGI app answering at its own root, to mount or serve apart.

        Example::

            app.mount("/ops/hindsight", hs.admin_asgi_app())  # Starlette / FastAPI
        """
        from .asgi import AdminASGIApp

        return AdminASGIApp(self)

    def admin_wsgi_app(self) -> Any:
        """The admin API as a WSGI app answering at its own root, to mount or serve apart.

        Example::

            DispatcherMiddleware(flask_app.wsgi_app, {"/ops/hindsight": hs.admin_wsgi_app()})
        """
        from .wsgi import AdminWSGIApp

        return AdminWSGIApp(self)

    def dashboard_page(self) -> bytes:
        """The dashboard's HTML page (no data in it: it asks for the token, then the API)."""
        return dashboard.page(self.admin_path or "")

    def stats_answer(self, segments: list[str], query: dict[str, str]) -> tuple[str, bytes] | None:
        """The answer (content type, body) to a statistics call, or None if there is none.

        Raises:
            ValueError: a bad ``limit`` or ``window`` query parameter.
        """
        call = "/".join(segments)
        if call == "metrics":
            return metrics.CONTENT_TYPE, metrics.render(self.stats, self.counters()).encode()
        window = query.get("window")
        if call == "stats":
            answer = self.stats.overview(window or "all")
            answer["counters"] = self.counters()
        elif call == "stats/slow":
            answer = self.stats.slowest(_query_int(query, "limit", 20), window or "recent")
        elif call == "stats/sessions":
            answer = self.stats.sessions(_query_int(query, "limit", 20), window or "recent")
        else:
            return None
        return "application/json", json.dumps(answer).encode()

    # -- reporting ---------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        """Counts since start: requests, releases, records captured, released and
        dropped, internal errors, and buffer bytes in use now."""
        totals = self.stats.totals()
        with self._lock:
            counts = {"requests": totals["requests"], "releases": totals["releases"]}
            counts.update(self._counts)
        counts["internal_errors"] = errors.count()
        counts["buffer_bytes"] = self.budget.used
        return counts


def _write(records: Iterable[Entry], state: RequestState) -> int:
    """Write kept `records` of `state` through their loggers' handlers; how many were written."""
    written = 0
    for entry in records:
        try:
            capture.deliver(entry[0], capture.build_record(entry, state))
            written += 1
        except Exception as exc:
            errors.report("release", exc)
    return written


_App = TypeVar("_App")


def middleware_arguments(
    middleware: str, app: _App | None, hindsight: Hindsight | None, options: dict[str, Any]
) -> tuple[_App, Hindsight]:
    """The app a middleware wraps and its `Hindsight`, from the middleware's arguments.

    The app comes positionally, or as ``app=`` (Starlette before 0.41.3 builds its
    middleware stack with keyword arguments); `options` are those of `Hindsight`.

    Raises:
        TypeError: no app, the app twice, or both `hindsight` and options.
    """
    if "app" in options:
        if app is not None:
            raise TypeError(f"{middleware} got the app twice: positionally and as app=")
        app = options.pop("app")
    if app is None:
        raise TypeError(f"{middleware} needs the app to wrap: {middleware}(app, ...)")
    if hindsight is not None and options:
        raise TypeError(
            f"{middleware} takes either 'hindsight' or options, not both: "
            f"got hindsight and {sorted(options)}"
        )
    return app, hindsight if hindsight is not None else Hindsight(**options)


def new_request_id() -> str:
    """A new request id: 32 hex digits, unique across processes and hosts.

    A random prefix per process and a counter: no system call per request.
    """
    return _id_prefix + hex(next(_id_counter))[2:]


def _new_id_prefix() -> None:
    global _id_prefix, _id_counter
    _id_prefix = os.urandom(8).hex()
    _id_counter = itertools.count(1 << 60)  # 16 hex digits from the start


_id_prefix = ""
_id_counter = itertools.count(1 << 60)
_new_id_prefix()
if hasattr(os, "register_at_fork"):  # a forked worker must not repeat its parent's ids
    os.register_at_fork(after_in_child=_new_id_prefix)


def safe_text(text: str, limit: int) -> str:
    """`text` with control characters escaped (no raw newlines in a log line), cut at `limit`."""
    if len(text) > limit:
        text = text[:limit] + "..."
    if _UNSAFE.search(text):
        text = _UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return text


def _cookie_session(state: RequestState, name: str) -> str | None:
    """A hash of the request's `name` cookie (the value itself is never kept), or None."""
    header = state.header("cookie")
    if not header:
        return None
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name and value:
            return hash_session(value.strip('"'))
    return None


def _query_int(query: dict[str, str], name: str, default: int) -> int:
    text = query.get(name)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"invalid {name!r} {text!r}: expected an integer") from None
