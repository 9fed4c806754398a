"""A storm: every request fails. Requests and log lines per second, with and without hindsight.

A FastAPI endpoint logs 10 DEBUG lines and one INFO line and answers 500, as fast
as it is called (in process, through httpx's ASGI transport, one request at a
time). The app's logging writes INFO to a formatted handler on /dev/null. Each
variant runs in a fresh interpreter for `--seconds`:

- bare: no hindsight (DEBUG off: the INFO line only);
- hindsight: the default `max_releases_per_s` (20 per second, bursts of 40): the
  releases beyond write their summary only;
- hindsight, no limit: every request released (what the limit protects from).

Lines are counted as the handler writes them, until the end of the window
(releases still queued then are not counted). Requests per second are medians
of `--rounds` interleaved rounds.

Usage: python benchmarks/storm.py [--smoke] [--rounds N] [--seconds S]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import sys
import time
from typing import Any

from common import machine_line, run_worker

VARIANTS = {
    "bare": "bare (DEBUG off)",
    "hindsight": "hindsight, max_releases_per_s=20",
    "hindsight-unlimited": "hindsight, no release limit",
}


class Counting(logging.Handler):
    """Formats each record to /dev/null and counts the lines and their bytes."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        self.sink = open(os.devnull, "w")  # noqa: SIM115
        self.lines = 0
        self.bytes = 0

    def emit(self, record: logging.LogRecord) -> None:
        line = self.format(record)
        self.sink.write(line + "\n")
        self.lines += 1
        self.bytes += len(line) + 1


def worker(variant: str, seconds: float) -> dict[str, Any]:
    import httpx
    from fastapi import FastAPI
    from fastapi.responses import PlainTextResponse

    handler = Counting()
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the client's own lines
    log = logging.getLogger("shop")
    app = FastAPI()

    @app.get("/checkout")
    async def checkout() -> PlainTextResponse:
        for i in range(10):
            log.debug("step %d of the checkout of cart %s", i, "c-42")
        log.info("checkout failed")
        return PlainTextResponse("failed", status_code=500)

    asgi: Any = app
    hs = None
    if variant != "bare":
        from hindsight_web import Hindsight, HindsightMiddleware

        limit = 20 if variant == "hindsight" else 1e9
        hs = Hindsight(max_releases_per_s=limit)
        asgi = HindsightMiddleware(app, hindsight=hs)

    async def run() -> int:
        transport = httpx.ASGITransport(app=asgi)
        async with httpx.AsyncClient(transport=transport, base_url="http://storm") as client:
            n = 0
            deadline = time.perf_counter() + seconds
            while time.perf_counter() < deadline:
                response = await client.get("/checkout")
                if response.status_code != 500:
                    raise RuntimeError(f"status {response.status_code}")
                n += 1
            return n

    started = time.perf_counter()
    n = asyncio.run(run())
    elapsed = time.perf_counter() - started
    lines, nbytes = handler.lines, handler.bytes
    ok = n > 0 and lines >= n  # at least the INFO line of every request
    if hs is not None:
        # Once the queued releases are written: every request's INFO line and release
        # summary, and the 10 DEBUG records of every release not held back.
        hs.flush()
        counts = hs.counters()
        held_back = counts["releases_suppressed"]
        ok = ok and counts["requests"] == n and counts["records_released"] == 10 * (n - held_back)
        ok = ok and handler.lines == 2 * n + 10 * (n - held_back)
        ok = ok and (held_back > 0) == (variant == "hindsight")
    return {
        "ok": ok,
        "req_s": n / elapsed,
        "lines_per_req": lines / n,
        "bytes_per_req": nbytes / n,
        "lines_s": lines / elapsed,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="one short round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], float(args.worker[1]))))
        return 0
    rounds, seconds = (1, 0.5) if args.smoke else (args.rounds, args.seconds)
    print(machine_line())
    print(f"{rounds} interleaved rounds of {seconds:g} s per variant; medians")
    print()
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    for n in range(rounds):
        order = list(VARIANTS) if n % 2 == 0 else list(reversed(VARIANTS))
        for variant in order:
            results[variant].append(run_worker("storm.py", [variant, str(seconds)]))
    bare = statistics.median(r["req_s"] for r in results["bare"])
    bare_lines = statistics.median(r["lines_per_req"] for r in results["bare"])
    print("| variant | req/s | vs bare | lines/req | lines/s | bytes/req |")
    print("|---|---:|---:|---:|---:|---:|")
    for variant, label in VARIANTS.items():
        rows = results[variant]
        req_s = statistics.median(r["req_s"] for r in rows)
        lines = statistics.median(r["lines_per_req"] for r in rows)
        print(
            f"| {label} | {req_s:,.0f} | {req_s / bare:.2f}x | {lines:.2f} "
            f"({lines / bare_lines:.1f}x) | {statistics.median(r['lines_s'] for r in rows):,.0f} "
            f"| {statistics.median(r['bytes_per_req'] for r in rows):,.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
