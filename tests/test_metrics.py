"""The Prometheus exposition: it parses, and the parsed values are the known traffic."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hindsight_web.histogram import BOUNDS_MS
from hindsight_web.metrics import CONTENT_TYPE, RELEASE_KINDS, render
from hindsight_web.stats import OTHER, RequestRecord, Stats
from hindsight_web.stats_view import StatsView, retire

WEIRD = '/say/"hi"\\there\nnow'
COUNTERS = {
    "requests": 999,
    "releases": 998,
    "records_captured": 120,
    "records_released": 40,
    "records_dropped": 3,
    "internal_errors": 1,
    "buffer_bytes": 4096,
}


def req(duration_ms: float, **fields: Any) -> RequestRecord:
    values: dict[str, Any] = {
        "request_id": "r",
        "method": "GET",
        "path": "/p",
        "route": "/p",
        "status": 200,
        "duration_ms": duration_ms,
        "at": 1_700_000_000.0,
    }
    values.update(fields)
    return RequestRecord(**values)


def traffic() -> list[RequestRecord]:
    rng = random.Random(8)
    records = []
    for i in range(2000):
        route = ["/items/{item_id}", "/checkout", WEIRD][i % 3]
        method = "POST" if route == "/checkout" else "GET"
        ms = rng.choice([float(rng.choice(BOUNDS_MS)), rng.lognormvariate(4, 1.8)])
        errored = i % 37 == 0
        slow = ms >= 1000
        reason = "status" if errored else "slow" if slow else None
        if route == "/checkout" and reason is None and ms > 300:
            reason = "rule:checkout-slow"
        records.append(
            req(
                ms,
                method=method,
                route=route,
                status=500 if errored else 200,
                errored=errored,
                slow=slow,
                released=reason is not None,
                reason=reason,
            )
        )
    return records


def parsed(text: str) -> dict[str, Any]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def samples(family: Any, name: str | None = None) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for s in family.samples
        if name is None or s.name == name
    }


@pytest.fixture
def known() -> tuple[list[RequestRecord], dict[str, Any], str]:
    records = traffic()
    stats = Stats()
    for r in records:
        stats.record(r)
    text = render(stats, COUNTERS)
    return records, parsed(text), text


def by_route(records: list[RequestRecord]) -> dict[tuple[str, str], list[RequestRecord]]:
    groups: dict[tuple[str, str], list[RequestRecord]] = {}
    for r in records:
        groups.setdefault((r.method, r.route or ""), []).append(r)
    return groups


def test_request_and_error_counters_equal_the_traffic(known: Any) -> None:
    records, families, _ = known
    requests = samples(families["hindsight_requests"], "hindsight_requests_total")
    errors = samples(families["hindsight_errors"], "hindsight_errors_total")
    assert families["hindsight_requests"].type == "counter"
    groups = by_route(records)
    assert len(requests) == len(errors) == len(groups) == 3
    for (method, route), mine in groups.items():
        labels = (("method", method), ("route", route))
        assert requests[labels] == len(mine)
        assert errors[labels] == sum(r.errored for r in mine)


def test_slow_and_release_counters_equal_the_traffic(known: Any) -> None:
    records, families, _ = known
    assert samples(families["hindsight_slow"]) == {(): sum(r.slow for r in records)}
    releases = samples(families["hindsight_releases"], "hindsight_releases_total")
    expected: dict[tuple[tuple[str, str], ...], float] = {}
    for r in records:
        if r.released:
            kind = "rule" if (r.reason or "").startswith("rule:") else r.reason or ""
            key = (("reason", kind),)
            expected[key] = expected.get(key, 0) + 1
    assert releases == expected
    assert len(expected) == 3


def test_release_reasons_are_a_bounded_set_of_label_values() -> None:
    stats = Stats()
    for i in range(300):  # a detail rule per support call: a new id each time
        stats.record(req(5.0, released=True, reason=f"rule:{i:012x}"))
    stats.record(req(5.0, released=True, reason="retro"))
    stats.record(req(5.0, released=True, reason="something-new"))
    text = render(stats, {})
    labels = {
        s.labels["reason"]
        for s in parsed(text)["hindsight_releases"].samples
        if s.name == "hindsight_releases_total"
    }
    assert labels == {"rule", "retro", "other"}
    assert labels <= set(RELEASE_KINDS)


def test_duration_histogram_is_cumulative_and_exact(known: Any) -> None:
    records, families, _ = known
    family = families["hindsight_request_duration_seconds"]
    assert family.type == "histogram"
    for (method, route), mine in by_route(records).items():
        labels = {"method": method, "route": route}
        buckets = [
            (s.labels["le"], s.value)
            for s in family.samples
            if s.name.endswith("_bucket") and {k: s.labels[k] for k in labels} == labels
        ]
        assert [le for le, _ in buckets] == [repr(b / 1000) for b in BOUNDS_MS] + ["+Inf"]
        for le, value in buckets[:-1]:
            bound_ms = BOUNDS_MS[[repr(b / 1000) for b in BOUNDS_MS].index(le)]
            assert value == sum(1 for r in mine if r.duration_ms <= bound_ms), le
        counts = [value for _, value in buckets]
        assert counts == sorted(counts)
        assert buckets[-1][1] == len(mine)
        (count,) = [
            s.value for s in family.samples if s.name.endswith("_count") and s.labels == labels
        ]
        (total,) = [
            s.value for s in family.samples if s.name.endswith("_sum") and s.labels == labels
        ]
        assert count == len(mine)
        assert total == pytest.approx(math.fsum(r.duration_ms for r in mine) / 1000, rel=1e-9)


def test_label_values_are_escaped(known: Any) -> None:
    _, families, text = known
    routes = {s.labels["route"] for s in families["hindsight_requests"].samples}
    assert WEIRD in routes
    assert 'route="/say/\\"hi\\"\\\\there\\nnow"' in text
    assert all(line.startswith(("# ", "hindsight_")) for line in text.splitlines())


def test_core_counters_become_metrics(known: Any) -> None:
    _, families, _ = known
    assert samples(families["hindsight_records_captured"]) == {(): 120}
    assert samples(families["hindsight_records_released"]) == {(): 40}
    assert samples(families["hindsight_records_dropped"]) == {(): 3}
    assert samples(families["hindsight_internal_errors"]) == {(): 1}
    assert families["hindsight_buffer_bytes"].type == "gauge"
    assert samples(families["hindsight_buffer_bytes"]) == {(): 4096}
    # requests and releases come from the stats, by label, not a second time
    values = [sample.value for family in families.values() for sample in family.samples]
    assert 999 not in values
    assert 998 not in values
    assert all(s.labels for s in families["hindsight_requests"].samples)


def test_every_family_has_help_and_type_before_its_samples(known: Any) -> None:
    _, _, text = known
    assert text.endswith("\n")
    seen: set[str] = set()
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("# HELP "):
            name = line.split()[2]
            assert lines[i + 1].startswith(f"# TYPE {name} ")
            assert name not in seen
            seen.add(name)
        elif not line.startswith("#"):
            assert any(line.startswith(name) for name in seen), line
    assert all(name.startswith("hindsight_") for name in seen)


def test_gauges_of_routes_and_sessions() -> None:
    stats = Stats(max_sessions=2, max_routes=1)
    for i in range(3):
        stats.record(req(1.0, session_id=f"s{i}", route=f"/r{i}"))
    families = parsed(render(stats, {}))
    assert samples(families["hindsight_routes"]) == {(): 1}
    assert samples(families["hindsight_sessions"]) == {(): 2}
    assert samples(families["hindsight_sessions_evicted"]) == {(): 1}
    requests = samples(families["hindsight_requests"], "hindsight_requests_total")
    assert requests == {
        (("method", "GET"), ("route", "/r0")): 1,
        (("method", "GET"), ("route", "(other)")): 2,
    }


def test_empty_stats_render_and_parse() -> None:
    families = parsed(render(Stats(), {}))
    assert samples(families["hindsight_slow"]) == {(): 0}
    assert samples(families["hindsight_requests"]) == {}


def test_an_unknown_counter_is_rendered_untyped_and_a_bad_one_refused() -> None:
    families = parsed(render(Stats(), {"queue_depth": 7}))
    assert families["hindsight_queue_depth"].type == "unknown"
    assert samples(families["hindsight_queue_depth"]) == {(): 7}
    with pytest.raises(ValueError, match="invalid counter name 'bad name'"):
        render(Stats(), {"bad name": 1})
    with pytest.raises(TypeError, match="invalid counter 'buffer_bytes' '1'"):
        render(Stats(), {"buffer_bytes": "1"})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="expected a Stats or a StatsView"):
        render({}, {})  # type: ignore[arg-type]


def test_content_type() -> None:
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"


# -- merged exports ------------------------------------------------------------------------


def exported(records: list[RequestRecord], **counters: int) -> dict[str, Any]:
    stats = Stats()
    for r in records:
        stats.record(r)
    return stats.export(counters)


def test_merged_exports_render_as_one_stats_fed_every_request() -> None:
    records = traffic()
    parts = [records[:700], records[700:1500], records[1500:]]
    exports = [
        exported(part, records_captured=10 * (n + 1), buffer_bytes=100, store_up=1)
        for n, part in enumerate(parts)
    ]
    single = Stats()
    for r in records:
        single.record(r)
    merged = parsed(render(StatsView(exports)))
    alone = parsed(render(single, {"records_captured": 60, "buffer_bytes": 300, "store_up": 1}))
    for name in ("hindsight_requests", "hindsight_errors", "hindsight_slow", "hindsight_releases"):
        assert samples(merged[name]) == samples(alone[name]), name
    duration = "hindsight_request_duration_seconds"
    assert {k: v for k, v in samples(merged[duration]).items() if "_sum" not in str(k)} == {
        k: v for k, v in samples(alone[duration]).items() if "_sum" not in str(k)
    }
    for key, value in samples(merged[duration], duration + "_sum").items():
        assert value == pytest.approx(samples(alone[duration], duration + "_sum")[key])
    assert samples(merged["hindsight_processes"]) == {(): 3}
    assert samples(alone["hindsight_processes"]) == {(): 1}
    assert merged["hindsight_store_up"].type == "gauge"
    assert samples(merged["hindsight_store_up"]) == {(): 1}
    assert samples(merged["hindsight_records_captured"]) == {(): 60}
    assert samples(merged["hindsight_buffer_bytes"]) == {(): 300}


def test_store_up_is_0_when_one_process_cannot_reach_the_store() -> None:
    exports = [exported([], store_up=1), exported([], store_up=0)]
    assert samples(parsed(render(StatsView(exports)))["hindsight_store_up"]) == {(): 0}
    assert "hindsight_store_up" not in parsed(render(StatsView([exported([])])))


def counter_values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a counter or a histogram (which only grow), by name and labels."""
    values = {}
    for family in text_string_to_metric_families(text):
        if family.type in ("counter", "histogram"):
            for s in family.samples:
                values[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return values


def test_merged_counters_only_grow() -> None:
    rng = random.Random(4)
    known = traffic()[:200]

    def more(stats: Stats, n: int, folded: bool = False) -> None:
        for _ in range(n):
            if folded:
                path = f"/p{rng.randrange(40)}/x"
                stats.record(req(rng.uniform(1, 50), path=path, route=None))
            else:
                r = rng.choice(known)
                stats.record(r._replace(duration_ms=rng.uniform(1, 3000)))

    a, b, c = Stats(max_routes=30), Stats(max_routes=30), Stats(max_routes=30)
    more(a, 300)
    more(b, 300, folded=True)  # its table fills with folded paths
    views = [[a.export({"records_captured": 5}), b.export({"records_captured": 7})]]
    more(a, 300)
    more(b, 100)  # templates take rows of folded paths
    b_rows = {(r["method"], r["route"]) for r in b.overview()["routes"]}
    assert ("GET", "/items/{item_id}") in b_rows
    assert len(b_rows) > b.overview()["routes_tracked"] == 30
    more(c, 50)
    views.append(
        [e({"records_captured": n}) for e, n in ((a.export, 9), (b.export, 8), (c.export, 1))]
    )
    retired = retire([views[-1][0]])  # a ended
    more(b, 100, folded=True)
    views.append([retired, b.export({"records_captured": 9}), c.export({"records_captured": 1})])
    views.append([retire([retired, views[-1][1]]), c.export({"records_captured": 2})])
    before: dict[Any, float] = {}
    for exports in views:
        now = counter_values(render(StatsView(exports)))
        for key, value in before.items():
            assert key in now, key
            assert now[key] >= value, key
        before = now
    assert before[("hindsight_records_captured_total", ())] == 20
    assert before[("hindsight_requests_total", (("method", "GET"), ("route", OTHER)))] > 0


def test_a_view_carries_its_own_counters() -> None:
    with pytest.raises(TypeError, match="its exports carry their counters"):
        render(StatsView([]), {"records_captured": 1})
