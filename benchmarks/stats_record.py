"""Micro benchmark of `Stats.record`, the statistics' cost on every request's hot path.

Each case records the same prepared `RequestRecord`s in rounds of N calls, rounds of
the cases interleaved; the table shows the median and the min-max of the per-call
time over the rounds, with two reference rows (one `Histogram.record`, a no-op call)
to read them against. It also measures the memory of a session and of a route
(tracemalloc).

Usage: python benchmarks/stats_record.py [--rounds R] [--n N]
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import time
import tracemalloc
from collections.abc import Callable
from time import perf_counter

from common import machine_line

from hindsight_web.histogram import Histogram
from hindsight_web.stats import RequestRecord, Stats


def make(i: int, *, route: str | None, path: str, session: str | None, ms: float) -> RequestRecord:
    return RequestRecord(
        request_id=f"{i:032x}",
        method="GET",
        path=path,
        route=route,
        status=200,
        duration_ms=ms,
        at=time.time(),
        ttfb_ms=ms / 2,
        user_id=None if session is None else f"user-{session}",
        session_id=session,
    )


def cases(n: int) -> dict[str, Callable[[], list[RequestRecord]]]:
    rng = random.Random(7)

    def latencies() -> list[float]:
        return [rng.lognormvariate(3, 1) for _ in range(n)]

    return {
        "template route, no session": lambda: [
            make(i, route="/items/{item_id}", path=f"/items/{i}", session=None, ms=ms)
            for i, ms in enumerate(latencies())
        ],
        "template route, 1000 sessions": lambda: [
            make(i, route="/items/{item_id}", path=f"/items/{i}", session=f"s{i % 1000}", ms=ms)
            for i, ms in enumerate(latencies())
        ],
        "no template (folded, cached)": lambda: [
            make(i, route=None, path=f"/items/{i % 500}", session=f"s{i % 1000}", ms=ms)
            for i, ms in enumerate(latencies())
        ],
    }


def round_of(call: Callable[[RequestRecord], object], records: list[RequestRecord]) -> float:
    """Microseconds per call of one round."""
    start = perf_counter()
    for r in records:
        call(r)
    return (perf_counter() - start) / len(records) * 1e6


def noop(r: RequestRecord) -> None:
    pass


def variants(n: int) -> list[tuple[str, Callable[[RequestRecord], object], list[RequestRecord]]]:
    """(name, call, records): each case records into its own warmed-up Stats; then two
    references: one Histogram.record per record, and a function that does nothing."""
    result: list[tuple[str, Callable[[RequestRecord], object], list[RequestRecord]]] = []
    for name, build in cases(n).items():
        records = build()
        stats = Stats()
        for r in records[:1000]:  # warm up: the route and the sessions exist
            stats.record(r)
        result.append((name, stats.record, records))
    histogram = Histogram()
    records = result[0][2]
    result.append(
        ("reference: Histogram.record", lambda r: histogram.record(r.duration_ms), records)
    )
    result.append(("reference: no-op call", noop, records))
    return result


def measure(rounds: int, n: int) -> dict[str, list[float]]:
    """Per-call microseconds per round; rounds interleave the variants (A B C, then C B A),
    so that a slow phase of a noisy machine hits them all alike."""
    todo = variants(n)
    times: dict[str, list[float]] = {name: [] for name, _, _ in todo}
    gc.disable()
    try:
        for k in range(rounds):
            for name, call, records in todo if k % 2 == 0 else reversed(todo):
                times[name].append(round_of(call, records))
    finally:
        gc.enable()
    return times


def session_bytes(n: int = 10_000) -> float:
    """Bytes per session in the table, averaged over `n` sessions."""
    records = [make(i, route="/a", path="/a", session=f"{i:016x}", ms=12.0) for i in range(n)]
    return bytes_per_record(Stats(max_sessions=n), records)


def route_bytes(n: int = 400) -> float:
    """Bytes per route for one slot (a route seen in k slots costs about k + 1 times this)."""
    records = [make(i, route=f"/r{i}", path=f"/r{i}", session=None, ms=12.0) for i in range(n)]
    return bytes_per_record(Stats(max_routes=n), records)


def bytes_per_record(stats: Stats, records: list[RequestRecord]) -> float:
    """Bytes `stats` allocates per record while recording `records` (tracemalloc)."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for r in records:
        stats.record(r)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before) / len(records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--n", type=int, default=20_000)
    args = parser.parse_args()
    print(machine_line())
    print(f"{'case':34} {'median us/call':>15} {'min-max':>14}")
    for name, times in measure(args.rounds, args.n).items():
        spread = f"{min(times):.2f}-{max(times):.2f}"
        print(f"{name:34} {statistics.median(times):15.2f} {spread:>14}")
    print(f"memory per session: {session_bytes():.0f} bytes")
    print(f"memory per route and slot: {route_bytes():.0f} bytes")


if __name__ == "__main__":
    main()
