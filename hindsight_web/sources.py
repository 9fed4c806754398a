"""Rules in force from the start: a Python list, a JSON file, or a URL polled for changes."""

from __future__ import annotations

import json
import logging
import os
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .rules import Rule, RuleError

if TYPE_CHECKING:
    from .core import Hindsight

__all__ = ["RulesPoller", "load_initial"]

logger = logging.getLogger("hindsight_web")


def load_initial(rules: Any, parse: Callable[[object], Rule]) -> list[Rule]:
    """Parse the `rules` option: a list of rule objects, or the path of a JSON file.

    Raises:
        ValueError: the file cannot be read or a rule is invalid; the message
            names the rule (its position) and the offending field.
    """
    where = "rules"
    if isinstance(rules, (str, os.PathLike)):
        where = f"rules file {os.fspath(rules)!r}"
        try:
            text = Path(rules).read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"invalid 'rules': cannot read {where}: {exc}") from None
        try:
            rules = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"invalid 'rules': {where} is not JSON: {exc}") from None
    return parse_document(rules, where, parse)


def parse_document(document: Any, where: str, parse: Callable[[object], Rule]) -> list[Rule]:
    """The rules of a decoded JSON document: a list of rules or ``{"rules": [...]}``."""
    if isinstance(document, dict) and set(document) == {"rules"}:
        document = document["rules"]
    if not isinstance(document, list):
        raise ValueError(
            f"invalid 'rules': {where} must be a list of rules or {{\"rules\": [...]}}, "
            f"not {type(document).__name__}"
        )
    parsed: list[Rule] = []
    for index, item in enumerate(document):
        try:
            parsed.append(parse(item))
        except RuleError as exc:
            raise ValueError(f"invalid rule #{index} in {where}: {exc}") from None
    ids = [rule.id for rule in parsed]
    duplicates = sorted({rule_id for rule_id in ids if ids.count(rule_id) > 1})
    if duplicates:
        raise ValueError(f"invalid 'rules': {where} uses the id {duplicates[0]!r} twice")
    return parsed


_pollers: weakref.WeakSet[RulesPoller] = weakref.WeakSet()


class RulesPoller:
    """Keeps the rules served by `url` in force, fetching it every `hs.rules_poll_s` seconds.

    The first fetch happens at once. Each new document replaces the rules the
    previous one put in force (rules added through the admin API are left
    alone). A source that cannot be reached, or that serves invalid rules,
    leaves the last good rules in place; that is logged once when it starts and
    once when it ends, not at every poll. Sends ``If-None-Match`` with the last
    ETag.
    """

    def __init__(self, hs: Hindsight, url: str) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"invalid 'rules_url' {url!r}: expected an http:// or https:// URL")
        try:
            import httpx
        except ImportError:
            raise ImportError("'rules_url' needs httpx: pip install 'hindsight-web[cli]'") from None
        self._httpx = httpx
        self._hs = weakref.ref(hs)
        self.url = url
        self.interval = hs.rules_poll_s or 30.0
        self._etag: str | None = None
        self._last_body: bytes | None = None
        self._rules: dict[str, Rule] = {}  # the rules this source put in force, by id
        self._failing: str | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        _pollers.add(self)
        self.poll()

    def ensure_running(self) -> None:
        """Start the polling thread if this process has none (also after a fork)."""
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="hindsight-rules-poller", daemon=True
                    )
                    self._thread.start()

    def stop(self) -> None:
        """Stop polling."""
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if self._hs() is None:
                return
            self.poll()

    def poll(self) -> None:
        """Fetch the URL once and apply what it serves."""
        hs = self._hs()
        if hs is None:
            return
        try:
            headers = {"If-None-Match": self._etag} if self._etag else {}
            response = self._httpx.get(self.url, headers=headers, timeout=min(10.0, self.interval))
            if response.status_code == 304:
                self._ok()
                return
            if response.status_code != 200:
                raise ValueError(f"it answered HTTP {response.status_code}")
            body = response.content
            if body != self._last_body:
                try:
                    document = json.loads(body)
                except ValueError as exc:
                    raise ValueError(f"it served malformed JSON: {exc}") from None
                rules = parse_document(document, f"rules_url {self.url!r}", hs.parse_rule)
                self._apply(hs, rules)
                self._last_body = body
            self._etag = response.headers.get("etag")
            self._ok()
        except Exception as exc:
            self._failed(exc)

    def _apply(self, hs: Hindsight, rules: list[Rule]) -> None:
        self._rules, skipped = hs.swap_rules(self._rules, rules, by=f"rules_url {self.url}")
        for rule_id in skipped:
            logger.warning(
                "hindsight-web: rule %r from %s not applied: a rule with that id was added "
                "through the admin API",
                rule_id,
                self.url,
            )

    def _ok(self) -> None:
        if self._failing is not None:
            self._failing = None
            logger.warning("hindsight-web: rules from %s are applied again", self.url)

    def _failed(self, exc: Exception) -> None:
        if self._failing is None:
            self._failing = str(exc)
            logger.warning(
                "hindsight-web: cannot apply the rules of %s (%s: %s); the last good rules stay "
                "in force, and this is logged again only once it recovers",
                self.url,
                type(exc).__name__,
                exc,
            )


def _after_fork_in_child() -> None:
    for poller in list(_pollers):
        poller._thread = None  # the thread did not survive the fork
        poller._lock = threading.Lock()
        stopped = poller._stop.is_set()
        poller._stop = threading.Event()
        if stopped:
            poller._stop.set()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
