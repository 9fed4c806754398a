"""Rules in force from the start: a Python list, a JSON file, or a URL polled for changes.

Both kinds of source put their rules in force through the `RuleBook`
(`RuleBook.swap`), by id and idempotently: workers that start together with
the same rules, or poll the same document, make no duplicates.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._sync import start_thread
from .book import RuleBook, fingerprint
from .rules import Rule, RuleError
from .store import StoreError

__all__ = [
    "FETCH_TIMEOUT_S",
    "MAX_DOCUMENT_BYTES",
    "RulesPoller",
    "file_sections",
    "load_initial",
    "parse_document",
]

logger = logging.getLogger("hindsight_web")

FETCH_TIMEOUT_S = 10.0
"""The longest one fetch of ``rules_url`` may take, all in: connecting, waiting, reading."""

MAX_DOCUMENT_BYTES = 4 * 1024 * 1024
"""The largest rules document read, from a file or ``rules_url`` (4 MiB)."""


_SECTIONS = {"rules", "sinks", "alerts"}


def load_initial(rules: Any, parse: Callable[[object], Rule]) -> tuple[list[Rule], str]:
    """Parse the `rules` option: a list of rule objects, or the path of a JSON file.

    Returns the rules and a fingerprint of the document they came from.

    Raises:
        ValueError: the file cannot be read, is larger than `MAX_DOCUMENT_BYTES`,
            or a rule is invalid; the message names the rule (its position) and
            the offending field.
    """
    where = "rules"
    if isinstance(rules, (str, os.PathLike)):
        where = f"rules file {os.fspath(rules)!r}"
        try:
            with Path(rules).open("rb") as file:
                data = file.read(MAX_DOCUMENT_BYTES + 1)
        except OSError as exc:
            raise ValueError(f"invalid 'rules': cannot read {where}: {exc}") from None
        if len(data) > MAX_DOCUMENT_BYTES:
            raise ValueError(f"invalid 'rules': {where} is larger than {MAX_DOCUMENT_BYTES} bytes")
        try:
            rules = json.loads(data)
        except ValueError as exc:
            raise ValueError(f"invalid 'rules': {where} is not JSON: {exc}") from None
    return parse_document(rules, where, parse), fingerprint(rules)


def file_sections(rules: Any) -> dict[str, Any]:
    """The ``"sinks"`` and ``"alerts"`` of a rules file (``{"rules": [...], "sinks":
    [...], "alerts": [...]}``), read once: those it has (none when `rules` is not a path;
    an unreadable file is reported by `load_initial`)."""
    if not isinstance(rules, (str, os.PathLike)):
        return {}
    try:
        with Path(rules).open("rb") as file:
            document = json.loads(file.read(MAX_DOCUMENT_BYTES + 1))
    except (OSError, ValueError):
        return {}
    if not isinstance(document, dict):
        return {}
    return {name: document[name] for name in ("sinks", "alerts") if name in document}


def parse_document(document: Any, where: str, parse: Callable[[object], Rule]) -> list[Rule]:
    """The rules of a decoded JSON document: a list of rules or ``{"rules": [...]}``
    (``"sinks"`` and ``"alerts"`` beside them are read by `file_sections`)."""
    if isinstance(document, dict) and "rules" in document and set(document) <= _SECTIONS:
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
    """Keeps the rules served by `url` in force, fetching it every `interval_s` seconds.

    Fetches run in the poller's own thread, the first at once when it starts
    (and again in a process forked from one where it ran): starting the app
    never waits for the URL. Each fetch has a total deadline
    (`FETCH_TIMEOUT_S`) and a size cap
    (`MAX_DOCUMENT_BYTES`); it sends ``If-None-Match`` with the last ETag. Each
    new document replaces the rules the previous one put in force (rules added
    through the admin API are left alone). A source that cannot be reached, is
    too slow or too large, or serves invalid rules leaves the last good rules in
    place; that is logged once when it starts and once when it ends.

    Raises:
        ValueError: `url` is not an http:// or https:// URL.
        ImportError: httpx is not installed (the message names the pip install).
    """

    def __init__(self, book: RuleBook, url: str, interval_s: float) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"invalid 'rules_url' {url!r}: expected an http:// or https:// URL")
        try:
            import httpx
        except ImportError:
            raise ImportError("'rules_url' needs httpx: pip install 'hindsight-web[cli]'") from None
        self._httpx = httpx
        self.book = book
        self.url = url
        self.origin = f"rules_url {url}"
        self.interval = interval_s
        self.deadline_s = FETCH_TIMEOUT_S
        self._etag: str | None = None
        self._failing: str | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        _pollers.add(self)

    def start(self) -> None:
        """Start the polling thread if this process has none.

        The thread holds only a weak reference: it ends with the poller (and the
        `Hindsight` that owns it), or with `stop`.
        """
        with self._lock:
            if self._thread is None and not self._stop.is_set():
                self._thread = start_thread(
                    self, RulesPoller._step, self._stop, "hindsight-rules-poller"
                )

    def stop(self) -> None:
        """Stop polling."""
        self._stop.set()

    def _step(self) -> float:
        self.poll()
        return self.interval

    def poll(self) -> None:
        """Fetch the URL once and apply what it serves."""
        try:
            body = self._fetch()
            if body is not None:
                try:
                    document = json.loads(body)
                except ValueError as exc:
                    raise ValueError(f"it served malformed JSON: {exc}") from None
                rules = parse_document(document, f"rules_url {self.url!r}", self.book.parse)
                self._apply(rules, fingerprint(document))
            self._ok()
        except Exception as exc:
            self._failed(exc)

    def _fetch(self) -> bytes | None:
        """The document, or None when it is unchanged (304); bounded in time and size."""
        deadline = time.monotonic() + self.deadline_s
        headers = {"If-None-Match": self._etag} if self._etag else {}
        too_slow = f"it took longer than {self.deadline_s:g} s"
        try:
            with self._httpx.stream(
                "GET", self.url, headers=headers, timeout=self.deadline_s
            ) as response:
                if response.status_code == 304:
                    return None
                if response.status_code != 200:
                    raise ValueError(f"it answered HTTP {response.status_code}")
                chunks: list[bytes] = []
                size = 0
                # Decoded bytes (gzip too), capped as they come: a small compressed answer
                # cannot inflate past the cap. A server trickling bytes never trips a
                # read timeout: the clock is checked at every chunk.
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > MAX_DOCUMENT_BYTES:
                        raise ValueError(f"it served more than {MAX_DOCUMENT_BYTES} bytes")
                    if time.monotonic() > deadline:
                        raise ValueError(too_slow)
                    chunks.append(chunk)
                etag = response.headers.get("etag")
        except self._httpx.TimeoutException:
            raise ValueError(too_slow) from None
        body = b"".join(chunks)
        self._etag = etag
        return body

    def _apply(self, rules: list[Rule], digest: str) -> None:
        skipped = self.book.swap(self.origin, digest, rules, by=self.origin)
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
        self._etag = None  # fetch the whole document again next time
        if self._stop.is_set() or isinstance(exc, StoreError):
            return  # stopped meanwhile; or the store is down, which its Health logs
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
    # The thread did not survive the fork: each running poller gets its own in the child.
    for poller in list(_pollers):
        running = poller._thread is not None and not poller._stop.is_set()
        poller._thread = None
        poller._lock = threading.Lock()
        if running:
            poller._stop = threading.Event()
            poller.start()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
