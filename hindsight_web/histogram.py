"""A fixed-size log-linear latency histogram: O(1) record, bounded error quantiles, mergeable."""

from __future__ import annotations

import math
from array import array
from collections.abc import Mapping
from itertools import compress
from operator import add
from typing import Any, TypeVar

__all__ = [
    "BOUNDS_MS",
    "PAIR_BUCKETS",
    "RELATIVE_ERROR",
    "Histogram",
    "RouteStats",
    "bucket_of_rank",
    "bucket_range",
    "nonzero_pairs",
    "pair_quantile",
    "quantile",
    "read_pairs",
]

# Layout: each power-of-two octave [2**k, 2**(k+1)) ms is cut into 16 equal sub-buckets,
# for k from -7 (0.0078 ms) to 19 (up to 2**20 ms, 17.5 minutes): 27 * 16 fine buckets,
# plus bucket 0 for everything below 2**-7 ms. Values from 2**20 ms up land in the last one.
_SUB_BITS = 4
_SUB = 1 << _SUB_BITS
_LOW_EXP = -7
_HIGH_EXP = 20
_LOWEST = 2.0**_LOW_EXP
_TOP = 2.0**_HIGH_EXP
_SIZE = 1 + (_HIGH_EXP - _LOW_EXP) * _SUB
_LAST = _SIZE - 1
# frexp(v) = (m, e) with 0.5 <= m < 1 puts v in octave e - 1 and sub-bucket int(m * 32) - 16;
# the index is then (e << 4) + int(m * 32) + _OFFSET.
_OFFSET = 1 - (_LOW_EXP + 1) * _SUB - _SUB
_LAYOUT = f"log-linear/{_SUB}/{_LOW_EXP}/{_HIGH_EXP}"
_H = TypeVar("_H", bound="Histogram")

RELATIVE_ERROR = 1 / (2 * _SUB)
"""The bound on the relative error of `Histogram.quantile` (3.125 %), for true quantiles
between 2**-7 ms and the last bucket (16.9 minutes)."""

BOUNDS_MS: tuple[float, ...] = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
"""The upper bounds (inclusive, in ms) at which `Histogram.buckets` counts exactly, as
Prometheus ``le`` buckets; a last, open bucket (+Inf) holds everything above 10 s."""

PAIR_BUCKETS = (_SIZE + 1) // 2
"""Counters of the coarser layout that sessions use: fine bucket ``i`` (the index
`Histogram.record` returns) is counted in pair ``(i + 1) >> 1``; see `pair_quantile`."""


def _index(ms: float) -> int:
    m, e = math.frexp(ms)
    return (e << _SUB_BITS) + int(m * (2 * _SUB)) + _OFFSET


# The fine bucket each bound falls in, and per fine bucket the bound inside it (or -1.0):
# a value in such a bucket that is <= its bound is also counted apart, which makes the
# counts at the bounds exact although most bounds fall inside a fine bucket.
_BOUND_INDEX = tuple(_index(bound) for bound in BOUNDS_MS)
_SPLIT = [
    float(BOUNDS_MS[_BOUND_INDEX.index(i)]) if i in _BOUND_INDEX else -1.0 for i in range(_SIZE)
]


class Histogram:
    """Latency histogram in milliseconds: fixed size, O(1) `record`, quantiles within 3.125 %.

    Every power-of-two octave of milliseconds is split into 16 linear sub-buckets, from
    2**-7 ms (0.0078 ms) to 2**20 ms (17.5 minutes): 433 counters, about 3.5 KB (a
    counter above 256 adds a 28-byte int). `quantile` answers the midpoint of the bucket
    that holds the true (nearest-rank) quantile, capped at the exact maximum, so for a
    true quantile ``v`` from 0.0078 ms to 16.9 minutes the answer is within ``v / 32`` of
    it (`RELATIVE_ERROR`, 3.125 %). Below 0.0078 ms the error is at most 0.004 ms; in the
    last bucket (from 16.9 minutes, where larger values are clamped and counted) the
    answer is the exact maximum.

    The counts at the Prometheus bounds `BOUNDS_MS` (see `buckets`) are exact: a value
    equal to a bound counts under it, as ``le`` says.

    Not thread-safe: the owner holds a lock around it.

    Example::

        h = Histogram()
        for ms in (12.0, 15.5, 230.0):
            h.record(ms)
        h.quantile(0.5)  # 15.75: 15.5 is in the bucket [15.5, 16)
    """

    __slots__ = ("_below", "_counts", "max", "sum")

    def __init__(self) -> None:
        self._counts = [0] * _SIZE
        self._below: dict[int, int] = {}
        self.sum = 0.0
        """The sum of the recorded values (ms)."""
        self.max = 0.0
        """The largest recorded value (ms), exact; 0.0 when empty."""

    def record(self, ms: float) -> int:
        """Count one value in milliseconds (a finite number >= 0); return its bucket index."""
        if _LOWEST <= ms < _TOP:
            m, e = math.frexp(ms)
            index = (e << _SUB_BITS) + int(m * 32.0) + _OFFSET
        else:
            index = _edge_index(ms)
        self._counts[index] += 1
        if ms <= _SPLIT[index]:
            self._below[index] = self._below.get(index, 0) + 1
        self.sum += ms
        if ms > self.max:
            self.max = ms
        return index

    @property
    def count(self) -> int:
        """How many values were recorded."""
        return sum(self._counts)

    def quantile(self, q: object) -> float:
        """The value (ms) at or below which a share `q` (0 to 1) of the values lie.

        The true quantile is the nearest-rank one: the smallest recorded value with at
        least ``q * count`` values at or below it. Returns 0.0 when empty; ``quantile(1)``
        is the exact maximum.
        """
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 <= q <= 1:
            raise ValueError(f"invalid quantile {q!r}: expected a number from 0 to 1")
        return quantile(self._counts, self.max, q)

    def mean(self) -> float:
        """The mean of the recorded values (ms); 0.0 when empty."""
        count = self.count
        return self.sum / count if count else 0.0

    def merge(self, other: object) -> None:
        """Add the counts of `other` (another `Histogram`) to this one."""
        if not isinstance(other, Histogram):
            raise TypeError(f"invalid histogram {other!r}: expected a Histogram")
        self._counts = list(map(add, self._counts, other._counts))
        below = self._below
        for index, n in other._below.items():
            below[index] = below.get(index, 0) + n
        self.sum += other.sum
        if other.max > self.max:
            self.max = other.max

    def copy(self) -> Histogram:
        """An independent copy."""
        new = Histogram.__new__(type(self))
        Histogram._copy_into(self, new)
        return new

    def _copy_into(self, new: Histogram) -> None:
        new._counts = self._counts[:]
        new._below = self._below.copy()
        new.sum = self.sum
        new.max = self.max

    def buckets(self) -> list[tuple[float, int]]:
        """Cumulative counts at the Prometheus bounds: ``[(le_ms, n), ..., (math.inf, count)]``.

        Exact: a value counts under every bound it is at most equal to.
        """
        return list(zip((*map(float, BOUNDS_MS), math.inf), self._cumulative(), strict=True))

    def bucket_counts(self) -> list[int]:
        """Counts per coarse bucket, not cumulative: one per bound of `BOUNDS_MS` (the values
        above the bound before it, up to and including this one), then those above 10 s."""
        cumulative = self._cumulative()
        return [n - before for n, before in zip(cumulative, [0, *cumulative[:-1]], strict=True)]

    def _cumulative(self) -> list[int]:
        counts = self._counts
        result = []
        total = 0
        start = 0
        for index in _BOUND_INDEX:
            total += sum(counts[start:index])
            start = index
            result.append(total + self._below.get(index, 0))
        result.append(total + sum(counts[start:]))
        return result

    def to_dict(self) -> dict[str, Any]:
        """A compact JSON-ready form for `from_dict`: ``counts`` and ``below`` hold only
        the non-zero buckets, as flat lists ``[index, count, index, count, ...]``."""
        below = sorted(item for item in self._below.items() if item[1])
        return {
            "layout": _LAYOUT,
            "sum": self.sum,
            "max": self.max,
            "counts": nonzero_pairs(self._counts),
            "below": [x for item in below for x in item],
        }

    @classmethod
    def from_dict(cls: type[_H], data: Mapping[str, Any]) -> _H:
        """Rebuild a histogram from `to_dict` output (possibly made by another process).

        Raises:
            ValueError: `data` is not what `to_dict` makes (the message names the field).
        """
        layout = data.get("layout") if isinstance(data, Mapping) else data
        if layout != _LAYOUT:
            raise ValueError(f"invalid histogram layout {layout!r}: expected {_LAYOUT!r}")
        new = cls()
        new._load(data)
        return new

    def _load(self, data: Mapping[str, Any]) -> None:
        self.sum = _number(data.get("sum"), "sum")
        self.max = _number(data.get("max"), "max")
        counts = self._counts
        indexes, numbers = read_pairs(data.get("counts"), _SIZE, "histogram 'counts'")
        for index, n in zip(indexes, numbers, strict=True):
            counts[index] = n
        indexes, numbers = read_pairs(data.get("below"), _SIZE, "histogram 'below'")
        for index, n in zip(indexes, numbers, strict=True):
            if index not in _BOUND_INDEX or n > counts[index]:
                raise ValueError(
                    f"invalid histogram 'below' entry {[index, n]!r}: expected the index of "
                    f"a bucket a bound falls in {_BOUND_INDEX}, and at most the "
                    f"{counts[index]} values of that bucket"
                )
            self._below[index] = n

    def __repr__(self) -> str:
        return f"Histogram(count={self.count}, sum={self.sum:.3f}, max={self.max:.3f})"


class RouteStats(Histogram):
    """The latency histogram of one route, with its error, slow and release counts."""

    __slots__ = ("errors", "releases", "slow")

    def __init__(self) -> None:
        super().__init__()
        self.errors = 0
        self.slow = 0
        self.releases = 0

    def copy(self) -> RouteStats:
        """An independent copy."""
        new = RouteStats.__new__(RouteStats)
        self._copy_into(new)
        new.errors = self.errors
        new.slow = self.slow
        new.releases = self.releases
        return new

    def merge(self, other: object) -> None:
        """Add the counts of `other` to these."""
        super().merge(other)
        if isinstance(other, RouteStats):
            self.errors += other.errors
            self.slow += other.slow
            self.releases += other.releases

    def to_dict(self) -> dict[str, Any]:
        """`Histogram.to_dict` with ``errors``, ``slow`` and ``releases``."""
        data = super().to_dict()
        data["errors"] = self.errors
        data["slow"] = self.slow
        data["releases"] = self.releases
        return data

    def _load(self, data: Mapping[str, Any]) -> None:
        super()._load(data)
        count = self.count
        for name in ("errors", "slow", "releases"):
            value = data.get(name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= count:
                raise ValueError(
                    f"invalid route {name!r} {value!r}: expected an integer from 0 to the "
                    f"route's {count} requests"
                )
            setattr(self, name, value)


def quantile(counts: list[int], maximum: float, q: float) -> float:
    """The nearest-rank quantile `q` of fine bucket `counts` (a `Histogram` layout)."""
    total = sum(counts)
    if total == 0:
        return 0.0
    if q == 1:
        return maximum
    index = bucket_of_rank(counts, max(1, math.ceil(q * total)))
    if index == _LAST:
        return maximum
    low, high = bucket_range(index)
    return min((low + high) / 2, maximum)


def pair_quantile(counts: list[int] | array[int], maximum: float, q: float) -> float:
    """The nearest-rank quantile `q` of `PAIR_BUCKETS` counters (pairs of fine buckets).

    Pair 0 is fine bucket 0; pair ``k`` holds fine buckets ``2k - 1`` and ``2k``. The
    answer is the pair's midpoint capped at `maximum` (the last pair: `maximum`), within
    1/16 (6.25 %) of the true quantile over the same range as `Histogram.quantile`.
    """
    total = sum(counts)
    if total == 0:
        return 0.0
    index = bucket_of_rank(counts, max(1, math.ceil(q * total)))
    if index == 0:
        low, high = bucket_range(0)
    elif index == PAIR_BUCKETS - 1:
        return maximum
    else:
        low, high = bucket_range(2 * index - 1)[0], bucket_range(2 * index)[1]
    return min((low + high) / 2, maximum)


def bucket_of_rank(counts: list[int] | array[int], rank: int) -> int:
    """The index of the bucket that holds the `rank`-th smallest value (from 1)."""
    seen = 0
    for index, n in enumerate(counts):
        seen += n
        if seen >= rank:
            return index
    return len(counts) - 1


def bucket_range(index: int) -> tuple[float, float]:
    """The ``[low, high)`` range in ms of fine bucket `index` (bucket 0 holds everything
    below 2**-7 ms; the last one also holds the values from 2**20 ms up)."""
    if not 0 <= index < _SIZE:
        raise ValueError(f"invalid bucket index {index!r}: expected 0 to {_LAST}")
    if index == 0:
        return 0.0, _LOWEST
    octave, sub = divmod(index - 1, _SUB)
    width = 2.0 ** (_LOW_EXP + octave - _SUB_BITS)
    low = 2.0 ** (_LOW_EXP + octave) + sub * width
    return low, low + width


def _edge_index(ms: float) -> int:
    """The bucket of a value outside [2**-7, 2**20) ms; refuses what is not a duration."""
    if _TOP <= ms < math.inf:
        return _LAST
    if 0 <= ms < _LOWEST:
        return 0
    raise ValueError(f"invalid duration {ms!r}: expected a finite number of ms >= 0")


def _number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise ValueError(f"invalid histogram {name!r} {value!r}: expected a finite number >= 0")
    return float(value)


def nonzero_pairs(counts: list[int] | array[int]) -> list[int]:
    """The non-zero `counts` as one flat list ``[index, count, index, count, ...]``.

    One list of ints, not a list per bucket: an export holds thousands of these, and
    lists of ints are not tracked by the garbage collector.
    """
    nonzero = list(compress(range(len(counts)), counts))
    flat = [0] * (2 * len(nonzero))
    flat[0::2] = nonzero
    flat[1::2] = filter(None, counts)
    return flat


def read_pairs(value: object, size: int, what: str) -> tuple[list[int], list[int]]:
    """The indexes and counts of a `nonzero_pairs` list, checked: an even number of
    integers, indexes from 0 to ``size - 1``, counts >= 0.

    Raises:
        ValueError: it is not; the message starts ``invalid `what```.
    """
    if not isinstance(value, list) or len(value) % 2:
        raise ValueError(f"invalid {what} {_short(value)}: expected [index, count, ...]")
    if not value:
        return [], []
    indexes, counts = value[0::2], value[1::2]
    if (
        set(map(type, value)) != {int}  # no bool, no float
        or min(indexes) < 0
        or max(indexes) >= size
        or min(counts) < 0
    ):
        bad = next(
            [i, n]
            for i, n in zip(indexes, counts, strict=True)
            if type(i) is not int or type(n) is not int or not 0 <= i < size or n < 0
        )
        raise ValueError(
            f"invalid {what} entry {bad!r}: expected an index from 0 to {size - 1} and a count >= 0"
        )
    return indexes, counts


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
