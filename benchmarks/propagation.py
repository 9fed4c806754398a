"""How fast one admin change reaches every worker, and what the background sync costs.

Propagation: four worker processes (spawned, as ``uvicorn --workers 4`` does) each
make a `Hindsight` on the same store and watch their own in-memory rules every
millisecond; the parent adds a rule through its own `Hindsight` (the path of
``POST /rules``: validated, written to the store, answered) and notes when the
call returned. The propagation time of a round is from that moment to the moment
the last of the four workers had the rule in force. Budget: p99 <= 1 s.

Sync CPU: the CPU time the background thread of one worker spends per second,
idle and while the worker serves 1,000 requests per second (in process, through
the ASGI middleware, 50 routes and 200 users), with the default ``store_sync_s``
(0.5) and ``stats_flush_s`` (5).

Both for a SQLite file and for a Redis (a redis-server started here on 127.0.0.1).

Usage: python benchmarks/propagation.py [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

from common import BenchFailure, machine_line, redis_server

WORKERS = 4
BUDGET_P99_S = 1.0


def watch(url: str, ids: list[str], ready: Any, seen: Any) -> None:
    """A worker: report (rule id, wall time) the first moment each rule is in force here."""
    from hindsight_web import Hindsight

    hs = Hindsight(store=url)
    ready.put(os.getpid())
    for rule_id in ids:
        while hs.rules.get(rule_id) is None:
            time.sleep(0.001)
        seen.put((rule_id, time.time()))
    hs.close()


def propagation(url: str, rounds: int) -> list[float]:
    """Seconds from each add answered to the rule in force in all workers."""
    from hindsight_web import Hindsight

    context = multiprocessing.get_context("spawn")
    ids = [f"round-{i}" for i in range(rounds)]
    ready, seen = context.Queue(), context.Queue()
    workers = [context.Process(target=watch, args=(url, ids, ready, seen)) for _ in range(WORKERS)]
    for worker in workers:
        worker.start()
    for _ in workers:
        ready.get(timeout=60)
    time.sleep(1.0)  # every worker's thread is past its first tick
    admin = Hindsight(store=url)
    times = []
    try:
        for rule_id in ids:
            admin.add_rule({"id": rule_id, "action": "drop", "match": {"path": f"/{rule_id}"}})
            answered = time.time()
            last = max(seen.get(timeout=10)[1] for _ in workers)
            times.append(max(0.0, last - answered))
            time.sleep(0.05 + (hash(rule_id) % 100) / 1000)  # not in step with the ticks
    finally:
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.terminate()
        admin.close()
    return times


def sync_cpu(url: str, seconds: float, rate: int) -> float:
    """CPU seconds per second of one process's sync thread, serving `rate` req/s."""
    from hindsight_web import Hindsight, HindsightMiddleware, set_user

    hs = Hindsight(store=url, slow_ms=None)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        set_user(f"user-{hash(scope['path']) % 200}")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    middleware = HindsightMiddleware(app, hindsight=hs)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        pass

    async def serve_for(seconds: float) -> int:
        """Requests at `rate` per second for `seconds`, on one event loop."""
        began = time.monotonic()
        n = 0
        while (elapsed := time.monotonic() - began) < seconds:
            if rate and n < elapsed * rate:
                scope = {
                    "type": "http",
                    "method": "GET",
                    "path": f"/items/{n % 50}/{n}",
                    "headers": [],
                    "client": ("127.0.0.1", 1),
                }
                await middleware(scope, receive, send)
                n += 1
            else:
                await asyncio.sleep(0.001)
        return n

    time.sleep(1.0)
    before = hs._sync.cpu_s
    asyncio.run(serve_for(seconds))
    used = hs._sync.cpu_s - before
    hs.close()
    if rate and hs.counters()["requests"] < 0.9 * rate * seconds:
        raise BenchFailure(f"served {hs.counters()['requests']} requests, wanted {rate * seconds}")
    return used / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="few rounds, short CPU windows")
    args = parser.parse_args()
    rounds, seconds = (5, 2.0) if args.smoke else (100, 20.0)
    print(machine_line())
    print(f"{WORKERS} worker processes, {rounds} rounds; sync CPU over {seconds:g} s windows")
    print()
    folder = tempfile.mkdtemp(prefix="hindsight-propagation-")
    misses = 0
    with redis_server("propagation") as redis_url:
        stores = {"SQLite": f"sqlite:///{folder}/store.db", "Redis": redis_url}
        print("| store | propagation median | p99 | max | budget p99 <= 1 s |")
        print("|---|---:|---:|---:|---|")
        for name, url in stores.items():
            times = sorted(propagation(url, rounds))
            p99 = times[min(len(times) - 1, int(0.99 * len(times)))]
            verdict = "PASS" if p99 <= BUDGET_P99_S else "MISS"
            misses += verdict == "MISS"
            print(
                f"| {name} | {statistics.median(times) * 1000:.0f} ms | {p99 * 1000:.0f} ms | "
                f"{times[-1] * 1000:.0f} ms | {verdict} |"
            )
        print()
        print("| store | sync CPU, idle | sync CPU, 1,000 req/s |")
        print("|---|---:|---:|")
        for name, url in stores.items():
            idle = sync_cpu(url, seconds, 0)
            busy = sync_cpu(url, seconds, 1000)
            print(f"| {name} | {idle * 100:.2f} % of a core | {busy * 100:.2f} % of a core |")
        shutil.rmtree(folder, ignore_errors=True)
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
