"""Hindsight: begin a request, finish it, decide whether its buffered records are released.

The core serves requests only: it reads the rules in force (`RuleBook.active`),
records statistics, and releases or discards buffers. Rule changes go through
the `RuleBook`, the admin API lives in `admin`, and the store is kept in step
by the background thread of `sync`; none of them is on the request path.
"""

from __future__ import annotations

import contextvars
import math
import os
import re
import time
from collections import deque
from random import getrandbits
from time import perf_counter
from typing import TYPE_CHECKING, Any, TypeVar

from . import audit, capture, errors, options, sources
from .alerts import Alerts, parse_alerts
from .book import RuleBook
from .buffer import Budget, Counts, release_memory
from .context import CLOSED_LEVEL, RequestState, _current, let_go
from .counting import Counting
from .fanout import Answers, Fanout
from .firing import FiringActions
from .options import DEFAULTS, HindsightOptions
from .redact import Redactor, hash_session
from .release import MAX_QUEUED, RateLimit, Release, Writer, write_now
from .retain import Retainer
from .rules import Rule, count_key
from .search import Search, StoredRequest, facts_json, records_json
from .sinks import Sinks, parse_sinks
from .sources import RulesPoller, load_initial
from .stats import Stats, iso
from .stats_share import SharedStats
from .store import StoreError, open_store
from .store.health import Health
from .sync import Sync
from .tokens import Failures, parse_tokens
from .window import Window

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["Hindsight"]

logger = errors.logger

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:+/=@-]{1,128}")
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")
_MAX_PATH_SHOWN = 300
DEFAULT_DETAIL_TTL_S = 1800.0
STARTUP = "startup"
"""The origin (and audit `by`) of the rules given by the `rules` option."""


class Hindsight:
    """The shared core behind `HindsightMiddleware` and `HindsightWSGIMiddleware`.

    One instance holds the options, the rules (`book`), the statistics, the
    shared byte budget and the counters; give the same instance to several
    middlewares to share them.

    Args:
        slow_ms: release a request that took at least this many milliseconds
            (until its last body byte); None turns the trigger off.
        release_on_status: release a request whose status is at least this;
            None turns the trigger off.
        release_on_exception: release a request whose app raised.
        capture_level: the lowest level kept in buffers (a name or a number).
        admin_path: where the admin sub-app answers; None to serve it only as
            a separate app (`hindsight_web.asgi.AdminASGIApp`,
            `hindsight_web.wsgi.AdminWSGIApp`).
        admin_token: bearer token of the admin sub-app, named ``admin`` in the
            audit trail (16 or more printable ASCII characters, no spaces);
            defaults to the ``HINDSIGHT_ADMIN_TOKEN`` environment variable; with
            no token at all the admin sub-app is off.
        admin_tokens: more tokens by name, ``{"support-desk": "<token>",
            "sre-oncall": {"token": "<token>", "access": "read-only"}}``: the
            audit trail says which name made each change; defaults to the JSON
            of ``HINDSIGHT_ADMIN_TOKENS``.
        admin_read_token: an optional token that may only make GET calls, named
            ``read``; defaults to ``HINDSIGHT_ADMIN_READ_TOKEN``.
        admin_max_body: the largest admin request body accepted, in bytes.
        store: where rules, their hits, the audit trail and the statistics of
            every process live: ``memory://`` (this process),
            ``sqlite:///path/file.db`` (every process of one host; four slashes
            for an absolute path) or ``redis://[:password@]host:port/db``
            (every process of every host; ``rediss://`` for TLS,
            ``?prefix=name`` to share one Redis between apps; needs
            ``hindsight-web[redis]``).
        store_sync_s: seconds between two reads of the store by each process: a
            rule change is in force everywhere within about this (plus a
            publication of statistics every `stats_flush_s` seconds).
        stats_flush_s: seconds between two publications of this process's
            statistics (and rule hits) to the store.
        max_records: records kept per request (the most recent ones).
        max_bytes: bytes kept per request (estimated).
        max_total_bytes: bytes kept by all live requests of the process together.
        release_handler_level: handlers up to this level (a name or a number)
            receive released records of any level; a handler of a higher level
            (mail, Sentry events) only those whose own level reaches it.
        max_releases_per_s: releases written per second by the built-in
            triggers and ``release`` rules, in bursts of up to twice that;
            beyond, a release writes its summary only (``suppressed=N``).
            Detail rules are never held back.
        request_id_header: the request header trusted for an incoming request
            id, and the response header that carries it.
        rules: rules in force from the start: a list of rule objects, or the
            path of a JSON file holding such a list (or ``{"rules": [...]}``).
        rules_url: a URL serving such a JSON document, fetched in the
            background from the first request on, then every `rules_poll_s`
            seconds (needs ``hindsight-web[cli]``); the rules it serves replace
            the ones it served before.
        rules_poll_s: seconds between two fetches of `rules_url`.
        max_rules: the most rules held at once (an add beyond answers 422).
        max_detail_ttl_s: the longest a ``detail`` rule may live; detail rules
            given no ttl expire after 30 minutes.
        max_routes: routes (method and route template) kept in the statistics;
            requests to others are counted under ``(other)``.
        max_sessions: user sessions kept in the statistics (the least recently
            seen are forgotten first); 0 keeps none.
        session_cookie: the name of the app's session cookie, to group the
            statistics of requests whose app did not call ``set_user(...,
            session_id=...)``; only a hash of its value is kept.
        window_s: seconds each process keeps its requests after they end (the
            hindsight window: their facts, and the records of those not
            released), to be found (``GET /requests``) and released later
            (``POST /release``); 0 keeps none.
        window_bytes: the most bytes (estimated) the window of one process
            holds; the oldest requests go first, counted as ``window_evicted``;
            0 keeps none.
        search_timeout_s: how long a search or a release of the window waits for
            the other processes sharing the store to answer.
        retain_max_bytes: the most bytes the requests kept by ``retain`` rules may
            take in the store, all processes together (the oldest go first).
        redact: take secrets out of every record hindsight keeps or writes, before
            it keeps it (buffers, the window, the store, releases): the values of
            fields and of ``key=value``, ``key: value`` and ``"key": "value"`` shapes
            whose key holds a word of `redact.BUILT_IN_KEYS` or `redact_keys`, and
            what `redact_patterns` match, become ``[redacted]``. What the app's own
            logging writes at once is never changed.
        redact_keys: more words whose fields and key shapes are redacted (matched
            in names ignoring case and ``-``, ``_``, ``.``).
        redact_patterns: regular expressions whose matches are redacted in every
            kept message and text (each kept message is then formatted at log time).
        sinks: outputs for releases besides the app's handlers (the ``logging``
            sink ``app``, always there): a list of sink objects, ``jsonl``,
            ``http`` or ``otel`` (see `hindsight_web.sinks`); a rules file may
            hold more under ``"sinks"``. A release goes to every sink, unless the
            rule that released it names its ``"sinks"``.
        alerts: where ``count`` rules send their alerts (``{"alert": "<id>"}`` in
            their ``then``): a list of target objects, ``{"id": "security", "type":
            "webhook", "url": "https://...", "headers": {...}}`` (see
            `hindsight_web.alerts`); a rules file may hold more under ``"alerts"``.

    Raises:
        ValueError: a bad option (the message names it and what is allowed).
        store.SchemaError: the store holds data of another layout version (a
            Redis that cannot be reached at start is checked once it answers:
            until then it counts as down).
        ImportError: an option needs an extra that is not installed (the
            message names the ``pip install`` to run).

    Example::

        hs = Hindsight(slow_ms=500, store="sqlite:///hindsight.db")
        app.add_middleware(HindsightMiddleware, hindsight=hs)
    """

    def __init__(self, **given: Unpack[HindsightOptions]) -> None:
        unknown = sorted(given.keys() - DEFAULTS.keys())
        if unknown:
            raise TypeError(
                f"Hindsight() got an unexpected keyword argument {unknown[0]!r} (the options: "
                f"{', '.join(DEFAULTS)})"
            )
        # Typed as objects: each is checked here, and a wrong one is a ValueError naming it.
        o: dict[str, Any] = {**DEFAULTS, **given}
        self.slow_ms = options.optional_number("slow_ms", o["slow_ms"])
        self.release_on_status = options.optional_status(o["release_on_status"])
        self.release_on_exception = options.boolean(
            "release_on_exception", o["release_on_exception"]
        )
        self.capture_level = options.level("capture_level", o["capture_level"])
        self.admin_path = options.admin_path(o["admin_path"])
        self.tokens = parse_tokens(o["admin_token"], o["admin_read_token"], o["admin_tokens"])
        self.failures = Failures()
        self.admin_max_body = options.positive_int("admin_max_body", o["admin_max_body"])
        self.max_records = options.positive_int("max_records", o["max_records"])
        self.max_bytes = options.positive_int("max_bytes", o["max_bytes"])
        self.max_total_bytes = options.positive_int("max_total_bytes", o["max_total_bytes"])
        self.request_id_header = options.header_name("request_id_header", o["request_id_header"])
        self.session_cookie = options.cookie_name("session_cookie", o["session_cookie"])
        max_detail_ttl_s = options.seconds("max_detail_ttl_s", o["max_detail_ttl_s"])
        sync_s = options.seconds("store_sync_s", o["store_sync_s"])
        flush_s = options.seconds("stats_flush_s", o["stats_flush_s"])
        poll_s = options.seconds("rules_poll_s", o["rules_poll_s"])
        max_rules = options.positive_int("max_rules", o["max_rules"])
        self._stats_limits = (o["max_routes"], o["max_sessions"])
        window_s = options.non_negative_number("window_s", o["window_s"])
        window_bytes = options.non_negative_int("window_bytes", o["window_bytes"])
        self.window = Window(window_s, window_bytes) if window_s and window_bytes else None
        self.search_timeout_s = options.seconds("search_timeout_s", o["search_timeout_s"])
        retain_max_bytes = options.positive_int("retain_max_bytes", o["retain_max_bytes"])
        redactor = Redactor(o["redact_keys"], o["redact_patterns"])
        self.redactor = redactor if options.boolean("redact", o["redact"]) else None
        self.budget = Budget(self.max_total_bytes)
        self.release_handler_level = options.level(
            "release_handler_level", o["release_handler_level"]
        )
        self.max_releases_per_s = options.positive_number(
            "max_releases_per_s", o["max_releases_per_s"]
        )
        self._limit = RateLimit(self.max_releases_per_s, burst=2 * self.max_releases_per_s)
        self._counts = Counts()
        # Sinks (the option's, then a rules file's): releases go to them from the writer
        # thread; a rule may name only their ids.
        sections = sources.file_sections(o["rules"])
        file_sinks = parse_sinks(sections.get("sinks"), "rules file 'sinks'")
        self.sinks = Sinks([*parse_sinks(o["sinks"]), *file_sinks])
        file_alerts = parse_alerts(sections.get("alerts"), "rules file 'alerts'")
        self.alerts = Alerts([*parse_alerts(o["alerts"]), *file_alerts])
        self.writer = Writer(self._counts, self.sinks)
        self.stats = Stats(max_routes=self._stats_limits[0], max_sessions=self._stats_limits[1])

        self.store = open_store(o["store"])
        self.health = Health(self.store.url)
        self.book = RuleBook(
            self.store,
            self.health,
            max_rules=max_rules,
            max_detail_ttl_s=max_detail_ttl_s,
            default_detail_ttl_s=min(DEFAULT_DETAIL_TTL_S, max_detail_ttl_s),
            sinks=self.sinks.ids,
            alerts=self.alerts.ids,
        )
        self.rules = self.book.active
        if o["rules"] is not None:
            self._load_rules(o["rules"], max_rules)
        if self.store.shared:
            self._first_read()
        self._poller = (
            RulesPoller(self.book, o["rules_url"], poll_s) if o["rules_url"] is not None else None
        )
        self.shared = SharedStats(
            self.store,
            self.health,
            export=self._export_stats,
            recorded=lambda: self.stats.totals()["requests"],
            reset=self._reset_stats,
            flush_s=flush_s,
        )
        self._sync = Sync(
            self.book,
            interval_s=sync_s,
            flush_s=flush_s,
            on_epoch=self.shared.follow_epoch,
            publish=self.shared.publish,
        )
        self.firing = FiringActions(
            self.book, self.alerts, self.window, self.admin_path, self.release_everywhere
        )
        self.counting = Counting(
            self.store, self.health, rules=self.rules, interval_s=sync_s, fire=self.firing.run
        )
        self.served = False  # True once this process has served a request
        self.retainer = Retainer(self.store, self.health, retain_max_bytes)
        chores = [self.retainer.write]
        if self.window is not None:
            chores.insert(0, self.window.settle)
        self.fanout = Fanout(
            self.store,
            self.health,
            process=lambda: self.shared.process,
            answer=self._answer,
            timeout_s=self.search_timeout_s,
            chores=chores,
            served=lambda: self.served,
        )
        capture.install()
        self._sync.start()
        self.fanout.start()
        if self._poller is not None:
            self._poller.start()

    def _load_rules(self, rules: Any, max_rules: int) -> None:
        parsed, digest = load_initial(rules, self.book.parse)
        if len(parsed) > max_rules:
            raise ValueError(
                f"invalid 'rules': {len(parsed)} rules, more than 'max_rules' ({max_rules})"
            )
        if self.store.shared:  # written by the background thread: start never waits on it
            self.book.swap_later(STARTUP, digest, parsed, by=STARTUP)
        else:
            self.book.swap(STARTUP, digest, parsed, by=STARTUP)

    def _first_read(self) -> None:
        """Read every rule once now, so that this process's first request obeys them all.

        Reads only, bounded by the store's timeout (1 s); a store that cannot be
        read is noted and read again by the background thread, which also writes
        the rules given at start.
        """
        try:
            self.book.sync(write=False)
        except StoreError:
            pass  # noted by `health`: logged once

    def _export_stats(self) -> dict[str, Any]:
        return self.stats.export({**self.counters(), "store_up": int(self.health.up)})

    def _reset_stats(self) -> None:
        self.stats = Stats(max_routes=self._stats_limits[0], max_sessions=self._stats_limits[1])

    def close(self) -> None:
        """Stop the background work; requests are still served."""
        self._sync.stop()
        self.fanout.stop()
        self.counting.stop()
        if self._poller is not None:
            self._poller.stop()
        self.store.close()

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
            self._counts,
            self.release_handler_level,
            self.redactor,
        )
        if self.rules.at_start:
            self._begin_with_rules(state)
        return state

    def _begin_with_rules(self, state: RequestState) -> None:
        state.on_identity = self._identity_known
        needles = self.rules.needles
        if needles:  # rules match on messages: note which the request's written records have
            state.needles = needles
            state.seen = set()
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
        written = write_now(records, state.release_level)
        self._counts.add(records_captured=len(records), records_released=written)

    def finish(self, state: RequestState, exception: BaseException | None = None) -> str | None:
        """Close the request: release its buffer or discard it. Returns the release reason.

        Safe to call more than once; only the first call acts.
        """
        if state.closed:
            return None
        state.closed = True
        state.keep_level = CLOSED_LEVEL
        reason = None
        ended = False
        counted: list[tuple[Rule, str]] | tuple[()] = ()
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
            rules = self.rules
            kinds = rules.kinds
            if rules.empty:
                reason, limited = trigger, True
            else:
                tags = rules.tags_for(state, duration_ms) if "tag" in kinds else None
                if tags is not None:  # before anything reads the fields: records, summary
                    state.tagged = tags
                    state.fields = {**(state.fields or {}), **tags}
                    state.retag()
                reason, limited = self._decide(state, trigger, duration_ms)
            state.reason = reason
            state.released = reason is not None
            state.at = time.time()
            state.suppressed = 0
            state.kept = kept = len(state.records)
            if "retain" in kinds:
                kept_by = rules.retain_for(state, duration_ms)
                if kept_by is not None:
                    self.retainer.keep(state, list(state.records), kept_by)
            if kept or state.dropped:
                self._counts.add(
                    records_captured=kept + state.dropped, records_dropped=state.dropped
                )
            if reason is not None:
                self._release(state, reason, limited)
            if self.session_cookie is not None and state.session_id is None:
                state.session_id = _cookie_session(state, self.session_cookie)
                state.session_from_cookie = state.session_id is not None
            if "count" in kinds:
                counted = self._counted(state, duration_ms)
            self.stats.record(state)
            ended = True
            if not self.served:
                self.served = True
        except Exception as exc:
            errors.report("finish", exc)
        finally:
            # A context copied from the request (a task it started) may keep the state
            # alive: let it pin nothing more, nor its records (see `let_go`).
            state.headers = None
            if state.on_identity is not None:
                state.on_identity = state.seen = None
            if state.context is not None:  # it kept records: they let go of their contexts
                let_go(state)
            window = self.window
            if window is not None and ended:
                if state.reserved:  # the window counts its bytes on its own
                    self.budget.release(state)
                window.add(state)
            elif state.reserved or state.records:
                release_memory(state)
            # Counted once in the window: a release the count fires finds the request.
            for rule, key in counted:
                self.counting.add(rule, key, state.at, state.request_id)
        return reason

    def _counted(self, state: RequestState, duration_ms: float) -> list[tuple[Rule, str]]:
        """The count rules that count `state` (ended), each with the key's value counted:
        none for a rule whose key the request has no value of, nor for ``session_id``
        when the session is only a hash of the client's cookie (a detail rule for it
        could never match)."""
        counted = []
        for rule in self.rules.counting(state, duration_ms):
            spec = rule.count
            if spec is None or (spec.key == "session_id" and state.session_from_cookie):
                continue
            key = count_key(spec.key, state, state.fields)
            if key is not None:
                counted.append((rule, key))
        return counted

    def _decide(
        self, state: RequestState, trigger: str | None, duration_ms: float
    ) -> tuple[str | None, bool]:
        """The release reason and whether the release limit applies to it: the end-time
        rules first (a `drop` silences even a failure), then the built-in `trigger`, then
        a detail rule that was on for the request (never limited)."""
        rule = self.rules.decide(state, duration_ms)
        if rule is not None:
            return (f"rule:{rule.id}", True) if rule.action == "release" else (None, False)
        if state.detail_rule is not None:  # its records were written live: never held back
            return trigger or f"rule:{state.detail_rule}", False
        return trigger, True

    def _release(self, state: RequestState, reason: str, limited: bool) -> None:
        """Hand the summary and the kept records to the writer thread (the records and
        the bytes they hold go with them); beyond `max_releases_per_s`, the summary only."""
        suppressed = 0
        if limited and not self._limit.take():
            # The summary only; the records stay with the request (in the window) for a
            # release an operator asks for later.
            state.suppressed = suppressed = len(state.records)
            self._counts.add(releases_suppressed=1, records_suppressed=suppressed)
            records: deque[Any] = deque()
            reserved = 0
        else:  # the records go with their contexts (written in them)
            records, reserved = state.records, state.reserved
            state.records, state.reserved, state.nbytes = deque(), 0, 0
            state.cells = None
        job = self._job(state, reason, records, suppressed, contextvars.copy_context())
        job.reserved = reserved  # the bytes go with the records: given back once written
        self._submit(job)

    def _job(
        self,
        state: RequestState,
        reason: str,
        entries: deque[Any],
        suppressed: int,
        context: contextvars.Context,
        sinks: tuple[str, ...] | None = None,
    ) -> Release:
        """The release of `state` (ended) with `entries`, for the writer thread, to
        `sinks` (their ids) or else to those its rule names, or the default ones."""
        return Release(
            request_id=state.request_id,
            method=state.method,
            path=state.path,
            status=state.status,
            raised=state.raised,
            duration_ms=state.duration_ms,
            reason=reason,
            entries=entries,
            dropped=state.dropped,
            suppressed=suppressed,
            context=context,
            at=state.at,
            budget=self.budget,
            reserved=0,
            release_level=self.release_handler_level,
            sinks=sinks if sinks is not None else self._routed(reason),
        )

    def _routed(self, reason: str) -> tuple[str, ...] | None:
        """The sinks a release goes to: those its rule names, else None (the defaults)."""
        if reason.startswith("rule:"):
            rule = self.rules.get(reason[5:])
            return None if rule is None else rule.sinks
        return None

    def _submit(self, job: Release) -> bool:
        """Hand `job` to the writer thread; False (dropped, counted, reported) when its
        queue is full."""
        if self.writer.submit(job):
            return True
        self.budget.give_back(job.reserved)
        self._counts.add(releases_dropped=1, records_dropped=len(job.entries))
        errors.report("release", OverflowError(f"{MAX_QUEUED} releases waiting: dropped"))
        return False

    # -- the window ----------------------------------------------------------------

    def ask(self, question: dict[str, Any]) -> Answers:
        """Answer a question about the window here and in every process sharing the
        store (`fanout.Fanout.ask`): ``{"kind": "search", "spec": ...}``,
        ``{"kind": "show", "request_id": ...}`` or ``{"kind": "release", "spec": ...,
        "reason": ...}``, specs as `search.parse_search` and `search.parse_release` make."""
        return self.fanout.ask(question)

    def _answer(self, question: dict[str, Any]) -> dict[str, Any]:
        """This process's answer to a question of `ask`."""
        kind = question.get("kind")
        if kind == "search":
            found = self.search_window(Search(question["spec"]))
            return {"requests": [facts_json(state) for state in found]}
        if kind == "show":
            state = None if self.window is None else self.window.find(question["request_id"])
            if state is None:
                return {"request": None}
            return {"request": {**facts_json(state), "records": records_json(list(state.records))}}
        if kind == "release":
            spec = question["spec"]
            sinks = spec.get("sinks")
            routed = None if sinks is None else tuple(sinks)
            released = self.release_window(Search(spec), question.get("reason", "retro"), routed)
            # Written before the answer: what the process writes after comes after it.
            self.writer.flush(self.search_timeout_s)
            return {"released": released}
        raise ValueError(f"unknown question {kind!r}")

    def release_everywhere(
        self, spec: dict[str, Any], note: str | None, by: str | None, reason: str = "retro"
    ) -> dict[str, Any]:
        """Release what `spec` (as `search.parse_release` makes it) finds in every window,
        audited ("released") with the query, the count, `note` and `by`: ``{"released",
        "processes", "complete"}`` (see `ask`)."""
        query: dict[str, Any] = {"match": spec["match"]}
        for key in ("since", "until"):
            moment = spec.get(key)
            query[key] = None if moment is None else iso(moment)
        if spec.get("fields"):
            query["fields"] = spec["fields"]
        if spec.get("sinks") is not None:
            query["sinks"] = spec["sinks"]
        answers, processes, complete = self.ask({"kind": "release", "spec": spec, "reason": reason})
        released = sum(int(answer.get("released", 0)) for answer in answers)
        event = audit.released(query, released, note, by, time.time())
        try:
            self.book.note(event)
        except StoreError:
            audit.log(event)  # released all the same: the line says so, the store cannot
        return {"released": released, "processes": processes, "complete": complete}

    def search_retained(self, search: Search) -> list[dict[str, Any]]:
        """The requests kept by ``retain`` rules that `search` finds, newest first, at
        most its limit, from the newest `RETAINED_SCANNED` in its time range (facts
        only, marked ``"retained": true``).

        Raises:
            store.StoreError: the store cannot be read now.
        """
        since = None if search.since == -math.inf else search.since
        until = None if search.until == math.inf else search.until
        request_id = search.request_id
        if request_id is not None:  # one document, looked up by its id
            doc = self.health.checked(lambda: self.store.retained_one(request_id))
            docs = [] if doc is None else [doc]
        else:
            docs = self.health.checked(lambda: self.store.retained(since, until, RETAINED_SCANNED))
        found = []
        for doc in docs:
            if search.matches(StoredRequest(doc)):
                found.append(_retained_facts(doc))
                if len(found) >= search.limit:
                    break
        return found

    def retained_request(self, request_id: str) -> dict[str, Any] | None:
        """A request kept by a ``retain`` rule, with its records, or None.

        Raises:
            store.StoreError: the store cannot be read now.
        """
        doc = self.health.checked(lambda: self.store.retained_one(request_id))
        return None if doc is None else {**_retained_facts(doc), "records": doc["records"]}

    def search_window(self, search: Search) -> list[RequestState]:
        """This process's kept requests that `search` finds, newest first, at most its
        limit (none when the window is off)."""
        return [] if self.window is None else search.newest(self.window.states())

    def release_window(
        self, search: Search, reason: str = "retro", sinks: tuple[str, ...] | None = None
    ) -> int:
        """Release this process's kept requests that `search` finds and that were not
        released yet, oldest first, each with its summary (`reason`), never held back
        by the release limit, to `sinks` (their ids; None: the default sinks); returns
        how many were handed to the writer thread."""
        window = self.window
        if window is None:
            return 0
        released = 0
        deadline = time.monotonic() + self.search_timeout_s
        for state in window.states():
            if not search.matches(state):
                continue
            taken = window.take(state)
            if taken is None:
                continue
            records, suppressed = taken
            context = contextvars.Context()  # the records are tagged with their request
            context.run(_current.set, state)
            job = self._job(state, reason, records, 0, context, sinks)
            # An operator's release may wait for room in the writer's queue (up to
            # `search_timeout_s` in all); what finds none stays for the next release.
            if not self.writer.submit(job):
                self.writer.flush(max(0.0, deadline - time.monotonic()))
                if not self.writer.submit(job):
                    window.put_back(state, records, suppressed)
                    continue
            state.reason = reason
            released += 1
        return released

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until what count rules counted so far is in the store and their firings
        have run, every release handed over so far is written (by the background
        thread), and the queued sinks and alert targets have sent what they hold (or
        given it up); returns False if `timeout_s` seconds passed first.

        Releases are written off the request path; call this where the next step
        reads what they wrote (a test, the end of a batch job).
        """
        deadline = time.monotonic() + timeout_s
        counted = self.counting.settle(timeout_s)
        written = self.writer.flush(max(0.0, deadline - time.monotonic()))
        sent = self.sinks.flush(max(0.0, deadline - time.monotonic()))
        alerted = self.alerts.flush(max(0.0, deadline - time.monotonic()))
        return counted and written and sent and alerted

    # -- rules: the Python API (through the rule book, like the admin API) ----------

    def add_rule(self, rule: Any, by: str | None = None) -> Rule:
        """Validate a rule (DESIGN.md format, as decoded JSON) and put it in force
        in every process that shares the store.

        The change is audited (logged at INFO and listed by ``GET /audit``) as
        made by `by` (free text: who or what made it; None when not given).

        Raises:
            rules.RuleError: the rule is malformed, or there would be more than
                `max_rules`; nothing was changed.
            KeyError: a rule with its id is in force already.
            store.StoreError: the store cannot be used now; nothing was changed.

        Example::

            hs.add_rule({"id": "checkout-slow", "action": "release",
                         "match": {"path": "/checkout/*", "duration_ms": {"gt": 800}}})
        """
        return self.book.add(self.book.parse(rule), by)

    def remove_rule(self, rule_id: str, by: str | None = None) -> Rule | None:
        """Take a rule out of force everywhere; returns it, or None if there was none.

        Audited as made by `by`, as for `add_rule`.

        Raises:
            store.StoreError: the store cannot be used now; nothing was changed.
        """
        return self.book.remove(rule_id, by)

    # -- reporting ---------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        """Counts since start: requests, releases, records captured, released, dropped
        and suppressed, releases suppressed and dropped, internal errors, and buffer
        bytes in use now."""
        totals = self.stats.totals()
        counts = {"requests": totals["requests"], "releases": totals["releases"]}
        counts.update(self._counts.snapshot())
        counts["internal_errors"] = errors.count()
        counts["buffer_bytes"] = self.budget.used
        window = self.window
        counts["window_requests"] = 0 if window is None else len(window)
        counts["window_bytes"] = 0 if window is None else window.used
        counts["window_evicted"] = 0 if window is None else window.evicted
        counts.update(self.retainer.counts())
        counts.update(self.sinks.counters())
        counts.update(self.alerts.counters())
        counts.update(self.counting.counters())
        return counts


RETAINED_SCANNED = 10_000
"""Kept requests a search reads from the store at most (the newest in its time range)."""


def _retained_facts(doc: dict[str, Any]) -> dict[str, Any]:
    facts = {k: v for k, v in doc.items() if k not in ("records", "at_s")}
    return {**facts, "records": len(doc.get("records", ())), "retained": True}


_App = TypeVar("_App")


def middleware_arguments(
    middleware: str, apps: tuple[_App, ...], hindsight: Hindsight | None, options: dict[str, Any]
) -> tuple[_App, Hindsight]:
    """The app a middleware wraps and its `Hindsight`, from the middleware's arguments.

    The app comes positionally (`apps`: the positional arguments), or as ``app=``
    (Starlette before 0.41.3 builds its middleware stack with keyword arguments);
    `options` are those of `Hindsight`.

    Raises:
        TypeError: no app, the app twice, more than one positional argument, or both
            `hindsight` and options.
    """
    if len(apps) > 1:
        raise TypeError(
            f"{middleware} takes one positional argument, the app to wrap, and options by "
            f"name: got {len(apps)} positional arguments"
        )
    app = apps[0] if apps else None
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


def adopt_request_id(state: RequestState, request_id: str) -> None:
    """Make `request_id` (the app answered with it) the request's id, if it is a valid one:
    the summary and the records written from now on carry it."""
    if request_id != state.request_id and _REQUEST_ID.fullmatch(request_id):
        state.request_id = request_id


def new_request_id() -> str:
    """A new request id: 32 hex digits, random (a UUID 4), so that ids tell nothing of
    the process or of how many requests came before; accepted by layers that want a
    UUID (asgi-correlation-id). Made `_IDS_MADE` at a time (one random number, one
    formatting), handed out one by one."""
    try:
        return _ids.pop()
    except IndexError:
        return _more_ids()


_IDS_MADE = 64
_ids: list[str] = []


def _uuid4_bits(bits: int) -> int:
    """`bits` set in each 128-bit part of a batch of `_IDS_MADE` ids."""
    return sum(bits << (128 * i) for i in range(_IDS_MADE))


# The version (4) and variant (RFC 4122) bits of a UUID 4, in every id of a batch.
_UUID4_CLEAR = ~_uuid4_bits((0xF << 76) | (0x3 << 62))
_UUID4_SET = _uuid4_bits((0x4 << 76) | (0x2 << 62))


def _more_ids() -> str:
    bits = getrandbits(128 * _IDS_MADE) & _UUID4_CLEAR | _UUID4_SET
    text = f"{bits:0{32 * _IDS_MADE}x}"
    made = [text[i : i + 32] for i in range(0, 32 * _IDS_MADE, 32)]
    first = made.pop()
    _ids.extend(made)  # another thread may add its own meanwhile: all are random
    return first


def _forget_ids() -> None:
    _ids.clear()  # a forked child never hands out its parent's ids


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_ids)


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
