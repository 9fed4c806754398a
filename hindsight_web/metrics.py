"""Prometheus text exposition (format 0.0.4) of the statistics and the core's counters.

Written here in a few lines rather than with ``prometheus_client``: the admin API's
``GET /metrics`` needs no dependency, and the numbers already live in the exports.

It renders a `StatsView`: the exports of the processes of one host merged (one
Prometheus target per host or pod). Every counter is a sum of since-start counts
that only grow in each process, and `retire` keeps the sums of the processes that
ended, so the merged counters only grow as long as each process's last export (or
the retired export that replaced it) stays in the view.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping

from .histogram import BOUNDS_MS
from .stats import Stats
from .stats_view import StatsView

__all__ = ["CONTENT_TYPE", "RELEASE_KINDS", "release_kind", "render"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The content type of `render`'s text."""

# The core's counters: key -> (metric name, type, help). "requests" and "releases" are
# left out: hindsight_requests_total and hindsight_releases_total carry them, by label.
_COUNTERS = {
    "records_captured": (
        "hindsight_records_captured_total",
        "counter",
        "Log records kept in request buffers.",
    ),
    "records_released": (
        "hindsight_records_released_total",
        "counter",
        "Buffered log records written out by releases.",
    ),
    "records_dropped": (
        "hindsight_records_dropped_total",
        "counter",
        "Log records dropped because a request's buffer or the total budget was full.",
    ),
    "records_suppressed": (
        "hindsight_records_suppressed_total",
        "counter",
        "Log records not written: their release was beyond max_releases_per_s.",
    ),
    "releases_suppressed": (
        "hindsight_releases_suppressed_total",
        "counter",
        "Releases beyond max_releases_per_s: their summary only was written.",
    ),
    "releases_dropped": (
        "hindsight_releases_dropped_total",
        "counter",
        "Releases lost because the queue of the writer thread was full.",
    ),
    "internal_errors": (
        "hindsight_internal_errors_total",
        "counter",
        "Errors hindsight caught in itself; the requests went on.",
    ),
    "window_evicted": (
        "hindsight_window_evicted_total",
        "counter",
        "Requests dropped from the window for room before window_s was up.",
    ),
    "retained": (
        "hindsight_retained_total",
        "counter",
        "Requests written to the store by retain rules.",
    ),
    "retain_dropped": (
        "hindsight_retain_dropped_total",
        "counter",
        "Requests retain rules matched that were not kept (queue full, store down, too large).",
    ),
    "retain_evicted": (
        "hindsight_retain_evicted_total",
        "counter",
        "Kept requests removed from the store for room (retain_max_bytes) before their time.",
    ),
    "count_firings": (
        "hindsight_count_firings_total",
        "counter",
        "Times a count rule fired for one key (in the process that fired it).",
    ),
    "count_firings_dropped": (
        "hindsight_count_firings_dropped_total",
        "counter",
        "Firings of count rules not run: too many were waiting for the firing thread.",
    ),
    "count_keys_evicted": (
        "hindsight_count_keys_evicted_total",
        "counter",
        "Keys count rules forgot for room (max_keys) before their window was up.",
    ),
    "count_keys_dropped": (
        "hindsight_count_keys_dropped_total",
        "counter",
        "Requests not counted: a count rule had max_keys keys waiting for the store.",
    ),
    "alerts_unknown": (
        "hindsight_alerts_unknown_total",
        "counter",
        "Alerts for a target id this process does not have.",
    ),
    "window_requests": (
        "hindsight_window_requests",
        "gauge",
        "Requests held now in the window.",
    ),
    "window_bytes": (
        "hindsight_window_bytes",
        "gauge",
        "Bytes (estimated) held now by the window.",
    ),
    "buffer_bytes": (
        "hindsight_buffer_bytes",
        "gauge",
        "Bytes held now by the buffers of the requests in progress.",
    ),
    "store_up": (
        "hindsight_store_up",
        "gauge",
        "1 when the store answered the last time every process merged used it, else 0.",
    ),
}
_COVERED = frozenset(("requests", "releases"))
# Counters per configured sink or alert target: prefix -> (label, total, its help,
# queued gauge, its help).
_PER_TARGET = {
    "sink_": (
        "sink",
        "hindsight_sink_records_total",
        "Records a sink sent, dropped (queue full) or failed.",
        "hindsight_sink_queued",
        "Records waiting in a sink's queue.",
    ),
    "alert_": (
        "alert",
        "hindsight_alerts_total",
        "Alerts a target was sent, dropped (queue full) or failed to take.",
        "hindsight_alerts_queued",
        "Alerts waiting in a target's queue.",
    ),
}
_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_LE = [repr(bound / 1000) for bound in BOUNDS_MS] + ["+Inf"]


RELEASE_KINDS = ("exception", "status", "slow", "retro", "rule", "other")
"""The values of the ``reason`` label of ``hindsight_releases_total``."""


def release_kind(reason: str) -> str:
    """The ``reason`` label of a release reason (``"rule:checkout-slow"`` -> ``"rule"``)."""
    if reason.startswith("rule:"):
        return "rule"
    return reason if reason in RELEASE_KINDS else "other"


def render(source: StatsView | Stats, counters: Mapping[str, int | float] | None = None) -> str:
    """The Prometheus text exposition of `source` (since start) and the core's counters.

    Args:
        source: a `StatsView` (the exports of one host's processes merged; their
            counters are summed, see `StatsView.counters`), or one process's `Stats`.
        counters: with a `Stats`, the core's counters of that process; with a
            `StatsView`, None (the exports carry them).

    Families: ``hindsight_requests_total``, ``hindsight_errors_total`` and
    ``hindsight_request_duration_seconds`` (a histogram) by ``method`` and ``route``;
    ``hindsight_slow_total``; ``hindsight_releases_total`` by ``reason`` (one of
    `RELEASE_KINDS`: every rule counts as ``rule``, so that rule ids, made anew by
    each detail rule, never become label values);
    ``hindsight_routes`` (the largest route table), ``hindsight_sessions`` and
    ``hindsight_processes`` (gauges) and ``hindsight_sessions_evicted_total``; then
    one metric per counter (``records_captured`` ->
    ``hindsight_records_captured_total``, ``buffer_bytes`` -> the gauge
    ``hindsight_buffer_bytes``, ``store_up`` -> the gauge ``hindsight_store_up``,
    ...; ``requests`` and ``releases`` are left out since the labelled families
    carry them; ``sink_<outcome>:<id>`` keys become ``hindsight_sink_records_total``
    by ``sink`` and ``outcome`` (sent, dropped, failed) and the gauge
    ``hindsight_sink_queued`` by ``sink``, ``alert_<outcome>:<id>`` keys
    ``hindsight_alerts_total`` by ``alert`` and ``outcome`` and the gauge
    ``hindsight_alerts_queued`` by ``alert``; another key ``k`` becomes the untyped
    ``hindsight_k``).

    Raises:
        TypeError: `source` is neither, a counter is not a number, or counters come
            with a `StatsView`.
        ValueError: a counter's name is not made of letters, digits and ``_``.

    Example::

        body = render(StatsView(exports_of_this_host)).encode()
        headers = [("content-type", CONTENT_TYPE)]
    """
    if isinstance(source, Stats):
        view = source.view(counters, sessions=False)
    elif isinstance(source, StatsView):
        if counters is not None:
            raise TypeError("invalid counters with a StatsView: its exports carry their counters")
        view = source
    else:
        raise TypeError(f"invalid stats {source!r}: expected a Stats or a StatsView")
    return "".join(line + "\n" for line in _lines(view))


def _lines(view: StatsView) -> Iterator[str]:
    snap = view.snapshot("all")
    routes = sorted(snap.routes.items())
    labels = {key: f'method="{_label(key[0])}",route="{_label(key[1])}"' for key, _ in routes}

    yield from _head("hindsight_requests_total", "counter", "Requests finished, by route.")
    for key, entry in routes:
        yield f"hindsight_requests_total{{{labels[key]}}} {entry.count}"
    yield from _head(
        "hindsight_errors_total",
        "counter",
        "Requests that ended with a status >= 500 or an exception, by route.",
    )
    for key, entry in routes:
        yield f"hindsight_errors_total{{{labels[key]}}} {entry.errors}"
    yield from _head("hindsight_slow_total", "counter", "Requests at least slow_ms long.")
    yield f"hindsight_slow_total {sum(entry.slow for _, entry in routes)}"
    yield from _head(
        "hindsight_releases_total", "counter", "Requests whose buffered records were written out."
    )
    by_reason: dict[str, int] = {}
    for reason, n in snap.releases_by_reason.items():
        kind = release_kind(reason)
        by_reason[kind] = by_reason.get(kind, 0) + n
    for kind, n in sorted(by_reason.items()):
        yield f'hindsight_releases_total{{reason="{kind}"}} {n}'

    name = "hindsight_request_duration_seconds"
    yield from _head(name, "histogram", "Request duration until the last body byte, by route.")
    for key, entry in routes:
        for le, (_, n) in zip(_LE, entry.buckets(), strict=True):
            yield f'{name}_bucket{{{labels[key]},le="{le}"}} {n}'
        yield f"{name}_sum{{{labels[key]}}} {_value(entry.sum / 1000)}"
        yield f"{name}_count{{{labels[key]}}} {entry.count}"

    yield from _head("hindsight_routes", "gauge", "Distinct routes kept (the rest: (other)).")
    yield f"hindsight_routes {snap.routes_tracked}"
    yield from _head("hindsight_sessions", "gauge", "Sessions in the session tables.")
    yield f"hindsight_sessions {snap.sessions_tracked}"
    yield from _head(
        "hindsight_sessions_evicted_total",
        "counter",
        "Sessions evicted from the session tables, least recently seen first.",
    )
    yield f"hindsight_sessions_evicted_total {snap.sessions_evicted}"
    yield from _head("hindsight_processes", "gauge", "Processes whose statistics are merged here.")
    yield f"hindsight_processes {snap.processes}"
    yield from _counter_lines(view.counters())


def _counter_lines(counters: Mapping[str, int | float]) -> Iterator[str]:
    targets: dict[str, dict[str, dict[str, int | float]]] = {p: {} for p in _PER_TARGET}
    for key, value in counters.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"invalid counter {key!r} {value!r}: expected a number")
        if key in _COVERED:
            continue
        prefix = key[: key.find("_") + 1]
        if prefix in targets and ":" in key:  # sink_<outcome>:<sink id>, alert_...
            outcome, _, target = key[len(prefix) :].partition(":")
            targets[prefix].setdefault(target, {})[outcome] = value
            continue
        known = _COUNTERS.get(key)
        if known is not None:
            name, kind, text = known
        elif isinstance(key, str) and _NAME.fullmatch(key):
            name, kind, text = f"hindsight_{key}", "untyped", f"The core's counter {key}."
        else:
            raise ValueError(f"invalid counter name {key!r}: expected letters, digits and '_'")
        yield from _head(name, kind, text)
        yield f"{name} {_value(value)}"
    for prefix, found in targets.items():
        if found:
            yield from _target_lines(_PER_TARGET[prefix], found)


def _target_lines(
    family: tuple[str, str, str, str, str], targets: Mapping[str, Mapping[str, int | float]]
) -> Iterator[str]:
    """The families of the sinks or alert targets, labelled by their configured ids (a
    bounded set)."""
    label, name, text, queued, queued_text = family
    yield from _head(name, "counter", text)
    for target, counts in sorted(targets.items()):
        for outcome in ("sent", "dropped", "failed"):
            if outcome in counts:
                value = _value(counts[outcome])
                yield f'{name}{{{label}="{_label(target)}",outcome="{outcome}"}} {value}'
    yield from _head(queued, "gauge", queued_text)
    for target, counts in sorted(targets.items()):
        if "queued" in counts:
            yield f'{queued}{{{label}="{_label(target)}"}} {_value(counts["queued"])}'


def _head(name: str, kind: str, text: str) -> Iterator[str]:
    yield f"# HELP {name} {text.replace(chr(92), chr(92) * 2).replace(chr(10), chr(92) + 'n')}"
    yield f"# TYPE {name} {kind}"


def _label(value: str) -> str:
    """A label value escaped as the text format wants: backslash, double quote, newline."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _value(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)
