"""The latency histogram: exact counts, bounded quantile error, merge and round trip."""

from __future__ import annotations

import json
import math
import random

import pytest

from hindsight_web.histogram import (
    BOUNDS_MS,
    PAIR_BUCKETS,
    RELATIVE_ERROR,
    Histogram,
    RouteStats,
    bucket_range,
    nonzero_pairs,
    pair_quantile,
    read_pairs,
)

QUANTILES = (0.0, 0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0)


def true_quantile(values: list[float], q: float) -> float:
    """Nearest rank: the smallest value with at least q * n values at or below it."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def bucket_of(ms: float) -> int:
    return Histogram().record(ms)


def filled(values: list[float]) -> Histogram:
    h = Histogram()
    for v in values:
        h.record(v)
    return h


def distributions() -> dict[str, list[float]]:
    rng = random.Random(1234)
    return {
        "lognormal": [rng.lognormvariate(3, 1.5) for _ in range(20_000)],
        "uniform": [rng.uniform(0.01, 600_000) for _ in range(5_000)],
        "bimodal": [
            rng.gauss(20, 2) if rng.random() < 0.9 else rng.gauss(2000, 100) for _ in range(10_000)
        ],
        "constant": [37.25] * 1_000,
        "few": [1.0, 1000.0, 3.5],
        "tiny and huge": [rng.uniform(0.01, 0.05) for _ in range(500)] + [590_000.0] * 10,
    }


@pytest.mark.parametrize("name", list(distributions()))
def test_quantiles_are_within_the_stated_relative_error(name: str) -> None:
    values = distributions()[name]
    h = filled(values)
    for q in QUANTILES:
        true = true_quantile(values, q)
        assert abs(h.quantile(q) - true) <= RELATIVE_ERROR * true + 1e-12, (q, true)


def test_count_sum_and_max_are_exact() -> None:
    values = distributions()["lognormal"]
    h = filled(values)
    assert h.count == len(values)
    assert h.sum == pytest.approx(math.fsum(values), rel=1e-12)
    assert h.max == max(values)
    assert h.mean() == pytest.approx(math.fsum(values) / len(values), rel=1e-12)


def test_empty_histogram() -> None:
    h = Histogram()
    assert (h.count, h.sum, h.max, h.mean()) == (0, 0.0, 0.0, 0.0)
    assert h.quantile(0.5) == 0.0
    assert h.buckets()[-1] == (math.inf, 0)


def test_quantile_one_is_the_exact_maximum_and_zero_the_smallest_bucket() -> None:
    h = filled([3.0, 17.123, 250.5])
    assert h.quantile(1) == 250.5
    assert abs(h.quantile(0) - 3.0) <= RELATIVE_ERROR * 3.0


def test_values_outside_the_range_are_counted() -> None:
    h = filled([0, 0.0001, 0.005, 2_000_000.0, 5_000_000.0])
    assert h.count == 5
    assert h.max == 5_000_000.0
    assert h.quantile(1) == 5_000_000.0
    assert h.quantile(0.2) <= 2.0**-7  # below the lowest tracked value: absolute error
    assert h.buckets()[0] == (5.0, 3)
    assert h.buckets()[-1] == (math.inf, 5)


@pytest.mark.parametrize("bad", [-1.0, -1e-9, math.nan, math.inf, -math.inf])
def test_a_value_that_is_not_a_duration_is_refused(bad: float) -> None:
    h = Histogram()
    with pytest.raises(ValueError, match="expected a finite number of ms >= 0"):
        h.record(bad)
    assert h.count == 0


@pytest.mark.parametrize("q", [-0.1, 1.5, math.nan, "0.5", True])
def test_quantile_refuses_a_share_outside_0_to_1(q: object) -> None:
    with pytest.raises(ValueError, match="expected a number from 0 to 1"):
        Histogram().quantile(q)  # type: ignore[arg-type]


def test_prometheus_buckets_are_exact_at_and_around_the_bounds() -> None:
    rng = random.Random(5)
    values: list[float] = []
    for bound in BOUNDS_MS:
        values += [bound, bound, math.nextafter(bound, 0), math.nextafter(bound, math.inf)]
        values += [bound * (1 + rng.uniform(-0.05, 0.05)) for _ in range(50)]
    values += [rng.lognormvariate(4, 2) for _ in range(5000)]
    h = filled(values)
    expected = [sum(1 for v in values if v <= b) for b in BOUNDS_MS] + [len(values)]
    assert h.buckets() == list(zip([*map(float, BOUNDS_MS), math.inf], expected, strict=True))
    per_bucket = h.bucket_counts()
    assert sum(per_bucket) == len(values)
    assert per_bucket[0] == expected[0]
    assert per_bucket[-1] == sum(1 for v in values if v > BOUNDS_MS[-1])
    assert all(n >= 0 for n in per_bucket)


def test_every_fine_bucket_holds_its_own_range() -> None:
    h = Histogram()
    for index in range(1, 433):
        low, high = bucket_range(index)
        assert h.record(low) == index
        assert h.record(math.nextafter(high, 0)) == index
    assert bucket_range(0) == (0.0, 2.0**-7)
    with pytest.raises(ValueError, match="invalid bucket index"):
        bucket_range(433)


def test_merge_equals_recording_everything_in_one() -> None:
    rng = random.Random(9)
    a_values = [rng.lognormvariate(2, 1) for _ in range(3000)]
    b_values = [rng.lognormvariate(6, 1) for _ in range(2000)] + [5.0, 10.0]
    a, b = filled(a_values), filled(b_values)
    a.merge(b)
    whole = filled(a_values + b_values)
    assert a.count == whole.count == 5002
    assert a.max == whole.max
    assert a.buckets() == whole.buckets()
    assert a.sum == pytest.approx(whole.sum)
    for q in QUANTILES:
        assert a.quantile(q) == whole.quantile(q)
    assert b.count == 2002  # the merged one is left as it was
    with pytest.raises(TypeError, match="expected a Histogram"):
        a.merge({"counts": []})  # type: ignore[arg-type]


def test_copy_is_independent() -> None:
    h = filled([1.0, 5.0])
    c = h.copy()
    c.record(100.0)
    assert (h.count, c.count) == (2, 3)
    assert h.buckets()[0] == (5.0, 2)


def test_to_dict_from_dict_round_trip_through_json() -> None:
    values = [*distributions()["bimodal"], 5.0, 10.0, 0.0, 3_000_000.0]
    h = filled(values)
    data = json.loads(json.dumps(h.to_dict()))
    back = Histogram.from_dict(data)
    assert back.to_dict() == h.to_dict()
    assert back.count == h.count
    assert back.buckets() == h.buckets()
    assert [back.quantile(q) for q in QUANTILES] == [h.quantile(q) for q in QUANTILES]
    # compact: only the non-zero buckets, as one flat list [index, count, ...]
    assert len(data["counts"]) <= 2 * len(set(values))
    assert all(type(x) is int for x in data["counts"])
    assert filled([37.25] * 1000).to_dict()["counts"] == [bucket_of(37.25), 1000]
    assert filled([5.0, 5.0]).to_dict()["below"] == [bucket_of(5.0), 2]
    assert len(json.dumps(Histogram().to_dict())) < 120


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"layout": "log-linear/32/-7/20"}, "invalid histogram layout"),
        ({"counts": [433, 1]}, "invalid histogram 'counts' entry \\[433, 1\\]"),
        ({"counts": [1, -1]}, "invalid histogram 'counts' entry \\[1, -1\\]"),
        ({"counts": [-1, 1]}, "invalid histogram 'counts' entry"),
        ({"counts": [1, True]}, "invalid histogram 'counts' entry"),
        ({"counts": [1.0, 1]}, "invalid histogram 'counts' entry"),
        ({"counts": [[1, 1]]}, "expected \\[index, count, ...\\]"),
        ({"counts": [1, 1, 2]}, "expected \\[index, count, ...\\]"),
        ({"counts": "nope"}, "expected \\[index, count, ...\\]"),
        ({"below": [1, 1]}, "invalid histogram 'below' entry"),
        ({"below": [149, 99]}, "at most the"),
        ({"sum": -1}, "invalid histogram 'sum'"),
        ({"max": math.nan}, "invalid histogram 'max'"),
    ],
)
def test_from_dict_refuses_broken_input(change: dict[str, object], message: str) -> None:
    data = filled([4.0, 5.0]).to_dict()
    data.update(change)
    with pytest.raises(ValueError, match=message):
        Histogram.from_dict(data)


def test_from_dict_refuses_what_is_not_a_mapping() -> None:
    with pytest.raises(ValueError, match="invalid histogram layout"):
        Histogram.from_dict([1, 2])  # type: ignore[arg-type]


def test_route_stats_round_trip_with_their_counts() -> None:
    r = RouteStats()
    for ms in (1.0, 20.0, 3000.0):
        r.record(ms)
    r.errors, r.slow, r.releases = 1, 1, 2
    back = RouteStats.from_dict(json.loads(json.dumps(r.to_dict())))
    assert isinstance(back, RouteStats)
    assert (back.errors, back.slow, back.releases) == (1, 1, 2)
    assert back.to_dict() == r.to_dict()
    merged = back.copy()
    merged.merge(r)
    assert (merged.count, merged.errors, merged.releases) == (6, 2, 4)
    assert (back.count, back.errors) == (3, 1)


@pytest.mark.parametrize(
    ("name", "value"), [("errors", 4), ("slow", -1), ("releases", "1"), ("errors", None)]
)
def test_route_stats_refuse_counts_beyond_their_requests(name: str, value: object) -> None:
    r = RouteStats()
    for ms in (1.0, 2.0, 3.0):
        r.record(ms)
    data = r.to_dict()
    data[name] = value
    with pytest.raises(ValueError, match=f"invalid route '{name}'.*from 0 to the route's 3"):
        RouteStats.from_dict(data)


def test_pair_quantile_is_within_one_sixteenth() -> None:
    rng = random.Random(3)
    values = [rng.lognormvariate(3, 1.5) for _ in range(5000)]
    counts = [0] * PAIR_BUCKETS
    for v in values:
        counts[(Histogram().record(v) + 1) >> 1] += 1
    for q in QUANTILES[1:-1]:
        true = true_quantile(values, q)
        assert abs(pair_quantile(counts, max(values), q) - true) <= true / 16
    assert pair_quantile([0] * PAIR_BUCKETS, 0.0, 0.5) == 0.0


def test_nonzero_pairs_and_read_pairs() -> None:
    counts = [0, 3, 0, 0, 7]
    flat = nonzero_pairs(counts)
    assert flat == [1, 3, 4, 7]
    assert read_pairs(flat, 5, "x") == ([1, 4], [3, 7])
    assert read_pairs([], 5, "x") == ([], [])
    with pytest.raises(
        ValueError, match=r"invalid x entry \[5, 1\]: expected an index from 0 to 4"
    ):
        read_pairs([1, 3, 5, 1], 5, "x")
