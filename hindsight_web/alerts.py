"""Alerts: JSON objects POSTed to webhook targets when a count rule fires.

The ``alerts`` option (and the ``"alerts"`` key of a rules file) is a list of
target objects, checked once at start by `parse_alerts`::

    {"id": "security", "type": "webhook", "url": "https://hooks.example.com/T0/B0",
     "headers": {"Authorization": "Bearer ..."}, "verify": true,
     "timeout_s": 10, "retry_s": 300, "max_queued": 1000}

``id`` (1 to 64 letters, digits and ``. _ : -``), ``type`` and ``url`` are
required; ``headers``, ``verify`` (true, false or the path of a CA bundle),
``timeout_s`` and ``retry_s`` (seconds) mean what they mean for the ``http`` sink;
``max_queued`` is how many alerts wait for the target at most (1 to 1,000,000).

A rule whose ``then`` holds ``{"alert": "security"}`` hands `Alerts.send` one
JSON object; it is POSTed alone (not in an array), with ``content-type:
application/json`` and the target's headers. Without a ``"text"`` key, one is
added, a line for chat webhooks (Slack, Mattermost) made from the payload's
``rule``, ``key_name``, ``key``, ``count`` and ``window_s``:
``"hindsight: rule brute-force fired for client_ip=203.0.113.9 (10 in 60 s)"``.

Delivery is the http sink's (`sinks.http.HttpSink`, one alert per POST): a
bounded queue and a thread per target, so `send` never blocks; a connection
error, a timeout, a 5xx, a 408 or a 429 is retried with backoff for ``retry_s``
seconds, then the alert counts as failed; any other 4xx, or a certificate that
cannot be verified, fails it at once. Dropped (queue full), failed and unknown
(a target id not configured) alerts are counted and reported once. After a fork
each process starts with an empty queue of its own; at exit, a process waits a
little for its alerts to go out (as for sinks).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from . import errors
from .sinks import ID_PATTERN, parse_http, parse_int, parse_objects
from .sinks.base import DEFAULT_MAX_QUEUED_BYTES
from .sinks.http import HttpSink

__all__ = ["DEFAULT_MAX_QUEUED", "DEFAULT_RETRY_S", "TYPES", "Alerts", "parse_alerts"]

TYPES = ("webhook",)

DEFAULT_RETRY_S = 300.0
"""How long an alert is tried again before it counts as failed, in seconds (``retry_s``)."""

DEFAULT_MAX_QUEUED = 1000
"""Alerts waiting for one target, at most (the default of ``max_queued``)."""

_KEYS = ("id", "type", "url", "headers", "verify", "timeout_s", "retry_s", "max_queued")


def parse_alerts(value: object, where: str = "alerts") -> list[dict[str, Any]]:
    """Check a list of alert target objects; returns them with every default filled in.

    None is no targets (``[]``).

    Raises:
        ValueError: not a list of objects, an unknown type or key, a bad value, or an
            id used twice; the message names the field (``alerts[1].url``) and what is
            allowed.
    """
    return parse_objects(value, where, _parse_one, "alert target")


def _parse_one(where: str, item: object) -> dict[str, Any]:
    if not isinstance(item, Mapping):
        raise ValueError(f"invalid {where!r} {item!r}: expected an object with 'id', 'type', 'url'")
    for key in item:
        if key not in _KEYS:
            raise ValueError(f"unknown key '{where}.{key}': allowed keys: {', '.join(_KEYS)}")
    kind = item.get("type")
    if kind not in TYPES:
        raise ValueError(
            f"invalid '{where}.type' {kind!r}: expected one of {', '.join(map(repr, TYPES))}"
        )
    target = item.get("id")
    if not isinstance(target, str) or not ID_PATTERN.fullmatch(target):
        raise ValueError(
            f"invalid '{where}.id' {target!r}: expected 1 to 64 letters, digits and . _ : -"
        )
    config: dict[str, Any] = {"id": target, "type": kind}
    # The http sink's checks, with this module's default for retry_s.
    parse_http(where, {"retry_s": DEFAULT_RETRY_S, **item}, config, "alert target")
    config["max_queued"] = parse_int(where, "max_queued", item, DEFAULT_MAX_QUEUED, 1, 1_000_000)
    return config


class Alerts:
    """The alert targets of one `Hindsight`, each with its queue and thread.

    Args:
        configs: target objects (as `parse_alerts` checks them; checked again here).

    Raises:
        ValueError: a bad target object (the message names the field).
        ImportError: httpx is not installed (names ``pip install 'hindsight-web[http]'``).

    Example::

        alerts = Alerts([{"id": "security", "type": "webhook", "url": "https://..."}])
        alerts.send("security", {"rule": "brute-force", "key_name": "client_ip",
                                 "key": "203.0.113.9", "count": 10, "window_s": 60})
    """

    def __init__(self, configs: object = None) -> None:
        self._targets = {c["id"]: _Webhook(c) for c in parse_alerts(configs)}
        self.ids: tuple[str, ...] = tuple(self._targets)
        self.unknown = 0  # alerts sent to an id not configured

    def send(self, target: str, payload: dict[str, Any]) -> bool:
        """Queue `payload` (a JSON-ready object) for the target with the id `target`.

        Never blocks, never raises. Returns False when `target` is not configured
        (counted in ``alerts_unknown``), the target's queue is full (counted as
        dropped) or the payload cannot be encoded as JSON; each kind is reported once.
        """
        try:
            webhook = self._targets.get(target)
            if webhook is None:
                self.unknown += 1
                errors.report("alerts", LookupError(f"no alert target has the id {target!r}"))
                return False
            body = dict(payload)
            if "text" not in body:
                body["text"] = _text(body)
            line = json.dumps(body, default=repr, separators=(",", ":"))
            return webhook.put([(line, len(line))]) == 0
        except Exception as exc:
            errors.report("alerts", exc)
            return False

    def flush(self, timeout_s: float) -> bool:
        """Wait until every target settled what it holds (sent, failed or dropped);
        False if `timeout_s` seconds passed first."""
        deadline = time.monotonic() + timeout_s
        return all(
            webhook.flush(max(0.0, deadline - time.monotonic()))
            for webhook in self._targets.values()
        )

    def state(self) -> list[dict[str, Any]]:
        """Each target's state: ``id``, ``type``, ``url`` (without credentials or query),
        ``queued``, ``sent``, ``dropped``, ``failed``, ``retries`` (alerts), ``last_error``
        and ``last_error_at`` (ISO 8601 UTC, or None)."""
        return [webhook.state() for webhook in self._targets.values()]

    def counters(self) -> dict[str, int]:
        """``alert_sent:<id>``, ``alert_dropped:<id>``, ``alert_failed:<id>`` and
        ``alert_queued:<id>`` per target, and ``alerts_unknown``: alerts sent to an id
        not configured."""
        counts: dict[str, int] = {}
        for webhook in self._targets.values():
            state = webhook.state()
            for outcome in ("sent", "dropped", "failed", "queued"):
                counts[f"alert_{outcome}:{webhook.target}"] = state[outcome]
        counts["alerts_unknown"] = self.unknown
        return counts


class _Webhook(HttpSink):
    """The http sink, one alert (a JSON text) per POST, sent as it is."""

    type = "webhook"

    def __init__(self, config: dict[str, Any]) -> None:
        self.target = config["id"]
        # As a sink its id is alert:<id>: its thread (hindsight-sink-alert:<id>, which the
        # httpx log filter covers) and its reported errors are told apart from a sink's.
        super().__init__(
            f"alert:{self.target}",
            config["url"],
            config["headers"],
            config["verify"],
            config["timeout_s"],
            config["retry_s"],
            config["max_queued"],
            DEFAULT_MAX_QUEUED_BYTES,
            1,
        )

    def body(self, batch: list[Any]) -> bytes:
        return "".join(batch).encode("utf-8")

    def state(self) -> dict[str, Any]:
        return {**super().state(), "id": self.target}


def _text(payload: Mapping[str, Any]) -> str:
    """One line saying what fired, from the payload's fields that are there."""
    rule, key, count = payload.get("rule"), payload.get("key"), payload.get("count")
    text = "hindsight: alert" if rule is None else f"hindsight: rule {rule} fired"
    if key is not None:
        name = payload.get("key_name")
        text += f" for {key}" if name is None else f" for {name}={key}"
    if count is not None:
        window = payload.get("window_s")
        text += f" ({count})" if window is None else f" ({count} in {_seconds(window)} s)"
    return " ".join(text.split())[:500]


def _seconds(value: object) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)
