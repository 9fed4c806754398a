"""Sinks: where released records go, besides (or instead of) the app's own handlers.

The ``sinks`` option (and the ``"sinks"`` key of a rules file) is a list of sink
objects; `Sinks` parses and checks them once, at start, and holds them:

- ``{"id": "app", "type": "logging"}``: the app's handlers (`release.deliver`);
  always there, with the id ``app``, whether listed or not.
- ``{"id": ..., "type": "jsonl", "path": ..., "max_bytes": 100000000, "backups": 5}``:
  JSON lines in a file rotated by size (`jsonl.JsonlSink`).
- ``{"id": ..., "type": "http", "url": ..., "headers": {...}, "verify": true,
  "timeout_s": 10, "retry_s": 300}``: JSON arrays POSTed (`http.HttpSink`).
- ``{"id": ..., "type": "otel"}``: OpenTelemetry logs (`otel.OtelSink`).

Every sink also takes ``"default": true`` (false: only releases of rules that name
it reach it) and, but for ``logging``, ``max_queued`` (records, default 10,000),
``max_queued_bytes`` (default 16,000,000) and ``batch`` (records written or sent at
once, default 500).

A release goes to every sink whose ``default`` is true, unless the rule that
released it names its sinks (``"sinks": ["support"]``): then to those only.

The JSON objects (one per line for ``jsonl``, the items of each POSTed array for
``http``): first the release's summary, then each record, in order::

    {"kind": "release", "time": "2026-01-02T03:04:05.678Z", "request_id": "...",
     "method": "POST", "path": "/checkout", "status": 500, "duration_ms": 812.5,
     "reason": "status", "raised": null, "records": 12, "dropped": 0, "suppressed": 0,
     "user_id": "alice", "session_id": null, "fields": {"tenant": "acme"}}
    {"kind": "record", "time": "...", "level": "DEBUG", "logger": "shop", "message": "...",
     "request_id": "...", "user_id": "alice", "session_id": null, "fields": {...},
     "exc_text": null, "stack_info": null, "pathname": "/app/shop.py", "lineno": 42,
     "func": "checkout"}

``time`` is ISO 8601 UTC (the log call's time; for the summary, the request's end),
``message`` the formatted message, ``fields`` the fields given to ``bind()`` and the
call's ``extra``, ``duration_ms`` until the last body byte, ``records`` the records
that follow, ``dropped`` those the request's buffer dropped and ``suppressed`` those
held back by ``max_releases_per_s``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from .. import errors
from ..buffer import LEVEL, LOGGER, TIME_NS, Entry
from ..context import _current
from ..search import records_json
from ..stats import iso
from .base import DEFAULT_MAX_QUEUED, DEFAULT_MAX_QUEUED_BYTES, QueuedSink

__all__ = ["APP", "TYPES", "Sinks", "parse_sinks"]

APP = "app"
"""The id of the app's handlers, the ``logging`` sink."""

TYPES = ("http", "jsonl", "logging", "otel")

DEFAULT_BATCH = 500
DEFAULT_JSONL_MAX_BYTES = 100_000_000
DEFAULT_BACKUPS = 5
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_RETRY_S = 300.0

ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_HEADER = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_COMMON = ("id", "type", "default")
_QUEUE = ("max_queued", "max_queued_bytes", "batch")
_KEYS = {
    "logging": _COMMON,
    "jsonl": (*_COMMON, *_QUEUE, "path", "max_bytes", "backups"),
    "http": (*_COMMON, *_QUEUE, "url", "headers", "verify", "timeout_s", "retry_s"),
    "otel": (*_COMMON, *_QUEUE),
}


def parse_sinks(value: object, where: str = "sinks") -> list[dict[str, Any]]:
    """Check a list of sink objects; returns them with every default filled in.

    Raises:
        ValueError: not a list of objects, an unknown type or key, a bad value, or an
            id used twice; the message names the field (``sinks[1].url``) and what
            is allowed. Nothing is made yet (see `Sinks`).
    """
    return parse_objects(value, where, _parse_one, "sink")


def parse_objects(
    value: object, where: str, parse_one: Callable[[str, object], dict[str, Any]], what: str
) -> list[dict[str, Any]]:
    """A list of configuration objects (sinks, alert targets) with unique ids: each
    checked by ``parse_one(field, item)``; None is ``[]``.

    Raises:
        ValueError: not a list, a bad object (as `parse_one` says), or an id used twice;
            the message names the field (``sinks[1].id``).
    """
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"invalid {where!r} {value!r}: expected a list of {what} objects")
    parsed = [parse_one(f"{where}[{i}]", item) for i, item in enumerate(value)]
    seen: set[str] = set()
    for i, config in enumerate(parsed):
        if config["id"] in seen:
            raise ValueError(
                f"invalid '{where}[{i}].id' {config['id']!r}: another {what} has this id"
            )
        seen.add(config["id"])
    return parsed


def _parse_one(where: str, item: object) -> dict[str, Any]:
    if not isinstance(item, Mapping):
        raise ValueError(f"invalid {where!r} {item!r}: expected an object with 'id' and 'type'")
    kind = item.get("type")
    if kind not in TYPES:
        raise ValueError(
            f"invalid '{where}.type' {kind!r}: expected one of {', '.join(map(repr, TYPES))}"
        )
    allowed = _KEYS[kind]
    for key in item:
        if key not in allowed:
            raise ValueError(
                f"unknown key '{where}.{key}' for a {kind} sink: allowed keys: "
                + ", ".join(allowed)
            )
    sink_id = item.get("id")
    if not isinstance(sink_id, str) or not ID_PATTERN.fullmatch(sink_id):
        raise ValueError(
            f"invalid '{where}.id' {sink_id!r}: expected 1 to 64 letters, digits and . _ : -"
        )
    if (kind == "logging") != (sink_id == APP):
        raise ValueError(
            f"invalid '{where}.id' {sink_id!r}: the app's handlers are the one 'logging' sink, "
            f"with the id {APP!r}"
        )
    config: dict[str, Any] = {"id": sink_id, "type": kind}
    config["default"] = _bool(where, "default", item.get("default", True))
    if kind != "logging":
        config["max_queued"] = parse_int(where, "max_queued", item, DEFAULT_MAX_QUEUED, 1)
        config["max_queued_bytes"] = parse_int(
            where, "max_queued_bytes", item, DEFAULT_MAX_QUEUED_BYTES, 1
        )
        config["batch"] = parse_int(where, "batch", item, DEFAULT_BATCH, 1, 100_000)
    if kind == "jsonl":
        _parse_jsonl(where, item, config)
    elif kind == "http":
        parse_http(where, item, config)
    return config


def _parse_jsonl(where: str, item: Mapping[str, Any], config: dict[str, Any]) -> None:
    path = item.get("path")
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise ValueError(f"invalid '{where}.path' {path!r}: expected the path of a file")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ValueError(f"invalid '{where}.path' {path!r}: its directory does not exist")
    config["path"] = path
    config["max_bytes"] = parse_int(where, "max_bytes", item, DEFAULT_JSONL_MAX_BYTES, 0)
    config["backups"] = parse_int(where, "backups", item, DEFAULT_BACKUPS, 0, 1000)


def parse_http(
    where: str, item: Mapping[str, Any], config: dict[str, Any], what: str = "sink"
) -> None:
    # Shared with the webhook alert targets (alerts.py); `what` names the thing in the warning.
    url = item.get("url")
    if not isinstance(url, str) or not re.match(r"https?://[^/?#\s]+", url) or " " in url:
        raise ValueError(f"invalid '{where}.url' {url!r}: expected an http:// or https:// URL")
    config["url"] = url
    headers = item.get("headers", {})
    if not isinstance(headers, Mapping):
        raise ValueError(f"invalid '{where}.headers': expected an object of names to texts")
    for name, value in headers.items():
        if not isinstance(name, str) or not _HEADER.fullmatch(name):
            raise ValueError(f"invalid '{where}.headers' name {name!r}: expected a header name")
        if not isinstance(value, str) or re.search(r"[\r\n\x00]", value):
            raise ValueError(
                f"invalid '{where}.headers.{name}': expected a text without line breaks"
            )
    config["headers"] = dict(headers)
    verify = item.get("verify", True)
    if isinstance(verify, os.PathLike):
        verify = os.fspath(verify)
    if isinstance(verify, str):
        if not os.path.isfile(verify):
            raise ValueError(
                f"invalid '{where}.verify' {verify!r}: expected true, false or the path of "
                "a CA bundle (PEM) that exists"
            )
    elif not isinstance(verify, bool):
        raise ValueError(
            f"invalid '{where}.verify' {verify!r}: expected true, false or a CA bundle path"
        )
    if verify is False:
        logging.getLogger("hindsight_web").warning(
            "%s %r sends to %s without verifying its TLS certificate ('verify': false)",
            what,
            config["id"],
            url.split("?")[0].split("@")[-1],
        )
    config["verify"] = verify
    config["timeout_s"] = _number(where, "timeout_s", item, DEFAULT_TIMEOUT_S, positive=True)
    config["retry_s"] = _number(where, "retry_s", item, DEFAULT_RETRY_S, positive=False)


def _bool(where: str, key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"invalid '{where}.{key}' {value!r}: expected true or false")
    return value


def parse_int(
    where: str, key: str, item: Mapping[str, Any], default: int, low: int, high: int = 2**53
) -> int:
    value = item.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(
            f"invalid '{where}.{key}' {value!r}: expected a whole number from {low} to {high}"
        )
    return value


def _number(
    where: str, key: str, item: Mapping[str, Any], default: float, *, positive: bool
) -> float:
    value = item.get(key, default)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not (0 < value < 1e9 if positive else 0 <= value < 1e9):
        expected = "a number > 0" if positive else "a number >= 0"
        raise ValueError(f"invalid '{where}.{key}' {value!r}: expected {expected} (seconds)")
    return float(value)


def _make(config: dict[str, Any]) -> QueuedSink:
    queue = (config["max_queued"], config["max_queued_bytes"], config["batch"])
    kind = config["type"]
    if kind == "jsonl":
        from .jsonl import JsonlSink

        path, max_bytes, backups = config["path"], config["max_bytes"], config["backups"]
        return JsonlSink(config["id"], path, max_bytes, backups, *queue)
    if kind == "http":
        from .http import HttpSink

        return HttpSink(
            config["id"],
            config["url"],
            config["headers"],
            config["verify"],
            config["timeout_s"],
            config["retry_s"],
            *queue,
        )
    from .otel import OtelSink

    return OtelSink(config["id"], *queue)


class Sinks:
    """The sinks of one `Hindsight`: the app's handlers and the queued sinks.

    Args:
        configs: sink objects (as `parse_sinks` checks them; checked again here).

    Raises:
        ValueError: a bad sink object (the message names the field).
        ImportError: a sink needs an extra that is not installed (the message
            names the ``pip install`` to run).
    """

    def __init__(self, configs: object = None) -> None:
        parsed = parse_sinks(configs)
        app = next((c for c in parsed if c["id"] == APP), None)
        self.app_default = True if app is None else bool(app["default"])
        self.queued = {c["id"]: _make(c) for c in parsed if c["type"] != "logging"}
        self.ids = (APP, *self.queued)
        self.defaults: tuple[QueuedSink, ...] = tuple(
            self.queued[c["id"]] for c in parsed if c["type"] != "logging" and c["default"]
        )
        self.app_sent = 0
        self.unknown = 0  # releases routed to a sink id this process does not have

    def route(self, names: tuple[str, ...] | None) -> tuple[bool, tuple[QueuedSink, ...]]:
        """Whether the app's handlers take a release routed to `names` (None: the default
        sinks), and which queued sinks do. An id this process does not have (a rule of
        the shared store made for processes configured otherwise) is counted and
        reported once."""
        if names is None:
            return self.app_default, self.defaults
        missing = [name for name in names if name != APP and name not in self.queued]
        if missing:
            self.unknown += 1
            errors.report(
                "sinks", LookupError(f"a rule names sinks this process does not have: {missing}")
            )
        return APP in names, tuple(self.queued[n] for n in names if n in self.queued)

    def collector(self, sinks: tuple[QueuedSink, ...]) -> Collector:
        """A collector of one release's items for `sinks` (see `Collector`)."""
        return Collector(sinks)

    def flush(self, timeout_s: float) -> bool:
        """Wait until every queued sink settled what it holds; False if `timeout_s` passed."""
        deadline = time.monotonic() + timeout_s
        return all(
            sink.flush(max(0.0, deadline - time.monotonic())) for sink in self.queued.values()
        )

    def state(self) -> list[dict[str, Any]]:
        """Each sink's state, as ``GET /sinks`` shows it: ``id``, ``type``, ``default``,
        ``queued``, ``sent``, ``dropped``, ``failed``, ``retries``, ``last_error`` and
        ``last_error_at``; ``url`` (without credentials) or ``path`` where it has one."""
        app = {
            "id": APP,
            "type": "logging",
            "default": self.app_default,
            "queued": 0,
            "sent": self.app_sent,
            "dropped": 0,
            "failed": 0,
            "retries": 0,
            "last_error": None,
            "last_error_at": None,
        }
        shown = [app]
        for sink in self.queued.values():
            shown.append({**sink.state(), "default": sink in self.defaults})
        return shown

    def counters(self) -> dict[str, int]:
        """Per queued sink: ``sink_sent:<id>``, ``sink_dropped:<id>``, ``sink_failed:<id>``
        and ``sink_queued:<id>`` (records), for the statistics and ``/metrics``."""
        counts: dict[str, int] = {}
        for sink in self.queued.values():
            state = sink.state()
            for outcome in ("sent", "dropped", "failed", "queued"):
                counts[f"sink_{outcome}:{sink.id}"] = state[outcome]
        return counts


class Collector:
    """One release's items for its queued sinks, made on the writer thread.

    `summary` is called in the release's context, `entry` in each record's context
    (so an ``otel`` sink sees the record's span), `done` once at the end: it hands
    each sink its items at once.
    """

    def __init__(self, sinks: tuple[QueuedSink, ...]) -> None:
        self.sinks = sinks
        self.items: list[list[tuple[Any, int]]] = [[] for _ in sinks]
        self.json = any(sink.type != "otel" for sink in sinks)

    def summary(self, job: Any, message: str) -> None:
        """Add the summary of release `job` (a `release.Release`).

        A sink whose queue is full already gets nothing of the release: its records
        are counted as dropped without being made (a sink that is down costs the
        writer thread nothing once its queue has filled)."""
        full = [sink.full() for sink in self.sinks]
        if any(full):
            for sink, is_full in zip(self.sinks, full, strict=True):
                if is_full:
                    sink.drop(len(job.entries) + 1)
            self.sinks = tuple(s for s, f in zip(self.sinks, full, strict=True) if not f)
            self.items = [items for items, f in zip(self.items, full, strict=True) if not f]
            self.json = any(sink.type != "otel" for sink in self.sinks)
            if not self.sinks:
                return
        state = _current.get()
        line = None
        if self.json:
            obj = {
                "kind": "release",
                "time": iso(job.at),
                "request_id": job.request_id,
                "method": job.method,
                "path": job.path,
                "status": job.status,
                "duration_ms": round(job.duration_ms, 3),
                "reason": job.reason,
                "raised": job.raised,
                "records": len(job.entries),
                "dropped": job.dropped,
                "suppressed": job.suppressed,
                **_who(state),
            }
            line = _line(obj)
        attributes = {
            "request_id": job.request_id,
            "http.request.method": job.method,
            "url.path": job.path,
            "http.response.status_code": job.status,
            "duration_ms": round(job.duration_ms, 3),
            "release_reason": job.reason,
        }
        self._add(line, int(job.at * 1e9), logging.INFO, "hindsight_web", message, attributes)

    def entry(self, entry: Entry, request_id: str) -> None:
        """Add one kept record of the release (called in the record's context)."""
        if not self.sinks:
            return
        obj = records_json([entry])[0]
        state = _current.get()
        who = _who(state)
        fields = {**who["fields"], **obj["fields"]}
        line = None
        if self.json:
            line = _line(
                {
                    "kind": "record",
                    "time": obj["time"],
                    "level": obj["level"],
                    "logger": obj["logger"],
                    "message": obj["message"],
                    "request_id": request_id,
                    "user_id": who["user_id"],
                    "session_id": who["session_id"],
                    "fields": fields,
                    "exc_text": obj["exc_text"],
                    "stack_info": obj["stack_info"],
                    "pathname": obj["pathname"],
                    "lineno": obj["lineno"],
                    "func": obj["func"],
                }
            )
        attributes: dict[str, Any] = {
            "request_id": request_id,
            "user_id": who["user_id"],
            "session_id": who["session_id"],
            "code.file.path": obj["pathname"],
            "code.line.number": obj["lineno"],
            "code.function.name": obj["func"],
            "exception.stacktrace": obj["exc_text"],
        }
        for name, value in fields.items():
            attributes[f"field.{name}"] = (
                value if isinstance(value, (str, int, float, bool)) else json.dumps(value)
            )
        self._add(
            line, entry[TIME_NS], entry[LEVEL], entry[LOGGER].name, obj["message"], attributes
        )

    def _add(
        self,
        line: str | None,
        time_ns: int,
        levelno: int,
        logger: str,
        message: str,
        attributes: dict[str, Any],
    ) -> None:
        for sink, items in zip(self.sinks, self.items, strict=True):
            if sink.type == "otel":
                items.append(
                    sink.record(  # type: ignore[attr-defined]
                        time_ns=time_ns,
                        levelno=levelno,
                        logger=logger,
                        message=message,
                        attributes=attributes,
                    )
                )
            elif line is not None:
                items.append((line, len(line)))

    def done(self) -> None:
        """Hand each sink its items (what does not fit is dropped and counted)."""
        for sink, items in zip(self.sinks, self.items, strict=True):
            if items:
                sink.put(items)
        self.items = []


def _who(state: Any) -> dict[str, Any]:
    if state is None:
        return {"user_id": None, "session_id": None, "fields": {}}
    fields = state.fields or {}
    return {
        "user_id": state.user_id,
        "session_id": state.session_id,
        "fields": {name: _jsonable(value) for name, value in fields.items()},
    }


def _jsonable(value: object) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        try:
            return repr(value)[:1000]
        except Exception:
            return f"<unrepresentable {type(value).__name__}>"


def _line(obj: dict[str, Any]) -> str:
    return json.dumps(obj, default=repr, separators=(",", ":")) + "\n"
