"""The hindsight window: what a kept request and record hold in memory, the window's
estimate against real memory, and how long a search of a full window takes.

Every measurement runs in a fresh interpreter (`--worker`); requests go through
`HindsightMiddleware` around a raw ASGI app that logs DEBUG records (DEBUG disabled
in the app's configuration, INFO written to os.devnull). The window's background
thread is kept out of the way (its first tick, then an hour): the workers settle
the window every 100 requests, as the thread does every 0.1 s, and before they
measure (the uvicorn of the HTTP searches runs the thread as it is).

- **Bytes per record and per request** (tracemalloc). M requests run at once, each
  logs K records of one kind and then waits: the bytes traced then are the records
  *buffered*. The requests end (their records go to the window) and the window
  settles them; what emptying the window then frees is what it *kept*. Per record:
  the difference between K records and none, divided by M*K; per request: the
  requests of no records. The window's own estimate is its `window_bytes` counter,
  taken the same way.
- **A full window** (defaults: 32 MB, 300 s). Requests of 5-50 records (a mix of
  kinds, as an app logs them; users, routes, 2 % of 500s, 5 % of 404s) until the
  window evicts, then as many again: the bytes the window holds (tracemalloc: what
  emptying it frees) and the growth of the process's RSS against a run of the same
  requests with the window off, each against the `window_bytes` counter; the
  garbage collections the interpreter made while the window was full, and one
  `gc.collect()` after, window full and off. The same with requests of 0-2 records
  (many more requests in the same bytes).
- **Search latency** over that full window, in process (`Hindsight.ask`, what
  ``GET /requests`` does before the JSON) and through HTTP (``GET
  /_hindsight/requests`` on a uvicorn whose window was filled the same way):
  median and p99 of `--reps` searches by user, path glob, status class and message
  substring.

Usage: python benchmarks/window.py [--smoke] [--reps N] [--no-http]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import random
import resource
import socket
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any, cast

from common import HERE, BenchFailure, machine_line, run_worker
from micro import TICK_EVERY, setup_logging

LOG = logging.getLogger("bench.app")
TOKEN = "bench-admin-token"
FILL_SEED = 20261130
PAGE = resource.getpagesize()

# The kinds of records the bytes table measures, one kind per run.
KINDS = {
    "plain": "format string, int and literal args",
    "str": "2 str args made per call",
    "dict": "a dict arg (frozen: counted as its message)",
    "exc": "exc_info=True (traceback text)",
    "mix": "the fill's mix: 50 % plain, 35 % str, 12 % dict, 3 % exc",
}
MIX = (("plain", "str", "dict", "exc"), (50, 35, 12, 3))

# Routes of the fill: (weight, path made from the request's number, route).
ROUTES = (
    (45, "/api/orders/{n}", "/api/orders/{order_id}"),
    (25, "/api/users/{n}/profile", "/api/users/{user_id}/profile"),
    (20, "/api/cart", "/api/cart"),
    (9, "/api/search", "/api/search"),
    (1, "/api/refunds/{n}", "/api/refunds/{refund_id}"),
)
USERS = 1000
WARM = 50  # requests made before a fill is measured

# Searches: (label, query parameters of GET /requests).
QUERIES: tuple[tuple[str, dict[str, str]], ...] = (
    ("newest 50, no filter", {}),
    ("by user", {"user_id": "user-0042"}),
    ("by path glob (1 % of requests)", {"path": "/api/refunds/*"}),
    ("by status class (2 % of requests)", {"status": "5xx"}),
    ("by message substring (1 % of requests)", {"message": "card declined"}),
    ("by message substring, found nowhere", {"message": "no such text"}),
    ("by status class and message", {"status": "5xx", "message": "card declined"}),
)


# -- the app ---------------------------------------------------------------------------


def log_record(kind: str, n: int, i: int, user: str) -> None:
    """One DEBUG record of `kind`: record `i` of request `n`."""
    if kind == "plain":
        LOG.debug("step %d of %s: value=%r", i, "checkout", 42)
    elif kind == "str":
        LOG.debug("loaded order %s for %s", f"ord-{n}-{i}", f"{user}/cart-{n}")
    elif kind == "dict":
        LOG.debug("cart line %s", {"sku": f"sku-{n}-{i}", "qty": i, "price": 9.99})
    elif kind == "exc":
        try:
            raise TimeoutError(f"inventory service did not answer in {i} ms")
        except TimeoutError:
            LOG.debug("retrying the inventory call %d", i, exc_info=True)
    elif kind == "declined":
        LOG.debug("payment %s: card declined (%s)", f"pay-{n}", "insufficient_funds")
    else:
        raise ValueError(kind)


@dataclass
class Plan:
    """What one request of the app does."""

    n: int
    path: str
    route: str
    user: str
    status: int
    records: list[str]
    fields: dict[str, Any] | None = None
    gate: asyncio.Event | None = None
    parked: list[int] = field(default_factory=list)


@dataclass
class Route:
    path: str


async def app(scope: Any, receive: Any, send: Any) -> None:
    """Logs the plan's records, waits at its gate if it has one, answers its status."""
    import hindsight_web

    plan: Plan = scope["bench.plan"]
    scope["route"] = Route(plan.route)  # as Starlette's router does
    hindsight_web.set_user(plan.user)
    if plan.fields:
        hindsight_web.bind(**plan.fields)
    for i, kind in enumerate(plan.records):
        log_record(kind, plan.n, i, plan.user)
    if plan.gate is not None:
        plan.parked.append(plan.n)
        await plan.gate.wait()
    await send({"type": "http.response.start", "status": plan.status, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def scope_of(plan: Plan) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": plan.path,
        "raw_path": plan.path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"bench"), (b"user-agent", b"bench/1.0")],
        "client": (f"10.0.{plan.n % 250}.{plan.n % 199 + 1}", 40000 + plan.n % 20000),
        "server": ("127.0.0.1", 80),
        "bench.plan": plan,
    }


async def receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


def fill_plans(low: int, high: int, seed: int = FILL_SEED) -> Callable[[int], Plan]:
    """Request n of the fill: low-high records of the mix, its user, route and status."""
    rng = random.Random(seed)
    weights = [w for w, _, _ in ROUTES]

    def plan(n: int) -> Plan:
        _, path, route = rng.choices(ROUTES, weights)[0]
        user = f"user-{rng.randrange(USERS):04d}"
        roll = rng.random()
        status = 500 if roll < 0.02 else 404 if roll < 0.07 else 200
        records = rng.choices(MIX[0], MIX[1], k=rng.randint(low, high))
        if records and rng.random() < 0.01:
            records[rng.randrange(len(records))] = "declined"
        fields = {"order_id": f"ord-{n}"} if route.startswith("/api/orders") else None
        return Plan(n, path.format(n=n), route, user, status, records, fields)

    return plan


def new_hindsight(**options: Any) -> Any:
    """A Hindsight whose window the worker settles itself (see the module's docstring)."""
    import hindsight_web
    import hindsight_web.fanout

    hindsight_web.fanout.POLL_S = 3600
    return hindsight_web.Hindsight(store_sync_s=3600, stats_flush_s=3600, **options)


def settled(hs: Any) -> bool:
    """Every record the window holds was settled: its context let go, its traceback too."""
    from hindsight_web.buffer import CONTEXT, EXC_INFO, MORE

    return all(
        e[CONTEXT][0] is None and (e[MORE] is None or e[MORE][EXC_INFO] is None)
        for s in hs.window.states()
        for e in s.records
    )


def empty(hs: Any) -> None:
    """Let the window drop every request, as it does those older than `window_s`."""
    hs.window.settle(now=time.time() + 2 * hs.window.window_s)
    if len(hs.window):
        raise BenchFailure(f"the window still holds {len(hs.window)} requests")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


# -- bytes per record and per request -------------------------------------------------


def bytes_worker(kind: str, per_request: int, requests: int) -> dict[str, Any]:
    """Traced bytes of `requests` requests of `per_request` records of `kind` at once:
    buffered, ended (in the window) and settled; and the window's estimate."""
    from hindsight_web import HindsightMiddleware

    setup_logging()
    # Nothing released: requests waiting at their gate are slow, and tracemalloc slows them.
    hs = new_hindsight(window_s=3600, window_bytes=10**12, slow_ms=None)
    mw = HindsightMiddleware(app, hindsight=hs)
    rng = random.Random(1)

    def plan(n: int, gate: asyncio.Event | None, parked: list[int]) -> Plan:
        records = (
            rng.choices(MIX[0], MIX[1], k=per_request) if kind == "mix" else [kind] * per_request
        )
        path, route = f"/api/orders/{n}", "/api/orders/{order_id}"
        return Plan(n, path, route, f"user-{n % USERS:04d}", 200, records, None, gate)

    async def send(message: Any) -> None:
        pass

    async def run() -> dict[str, Any]:
        for n in range(50):  # warm-up: first calls, free lists, the window's deque
            await mw(scope_of(plan(-n - 1, None, [])), receive, send)
        hs.window.settle()
        held_before, used_before = len(hs.window), hs.window.used
        gate = asyncio.Event()
        parked: list[int] = []
        plans = [plan(n, gate, parked) for n in range(requests)]
        for p in plans:
            p.parked = parked
        tracemalloc.start()
        base = traced()
        tasks = [asyncio.ensure_future(mw(scope_of(p), receive, send)) for p in plans]
        while len(parked) < requests:
            await asyncio.sleep(0)
        buffered = traced() - base
        gate.set()
        await asyncio.gather(*tasks)
        del tasks
        ended = traced() - base
        hs.window.settle()
        records = sum(len(s.records) for s in hs.window.states()[-requests:])
        all_settled = settled(hs)
        kept = traced()
        held, estimated = len(hs.window) - held_before, hs.window.used - used_before
        empty(hs)
        kept -= traced()  # what emptying the window freed
        tracemalloc.stop()
        return {
            "buffered": buffered,
            "ended": ended,
            "settled": kept,
            "held": held,
            "estimated": estimated,
            "records": records,
            "settled_all": all_settled,
        }

    got = asyncio.run(run())
    counts = hs.counters()
    ok = got["held"] == requests and got["records"] == requests * per_request
    ok = ok and counts["records_dropped"] == 0 and counts["releases"] == 0
    return {"ok": ok and got["settled_all"], **got}


def bytes_table(requests: int, per_request: int) -> None:
    """Per record (by kind) and per request: buffered, in the window, and estimated."""
    none = run_worker("window.py", ["bytes", "plain", "0", str(requests)])
    base = {k: num(none, k) for k in ("buffered", "ended", "settled", "estimated")}
    print(f"### Bytes per record: buffered and kept in the window ({requests} requests at once)")
    print()
    print(
        f"Each request logs {per_request} DEBUG records of one kind (tracemalloc; per record: "
        "the difference with requests of no records)."
    )
    print()
    print(
        "| record | buffered (request running) | in the window, before settle | "
        "in the window, settled | settled / buffered | estimated (window_bytes) "
        "| real / estimated |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    verdicts = []
    for kind, label in KINDS.items():
        got = run_worker("window.py", ["bytes", kind, str(per_request), str(requests)])
        n = requests * per_request
        per = {k: (num(got, k) - base[k]) / n for k in base}
        verdicts.append(per["settled"] <= per["buffered"])
        print(
            f"| {kind}: {label} | {per['buffered']:.0f} B | {per['ended']:.0f} B "
            f"| {per['settled']:.0f} B | {per['settled'] / per['buffered']:.2f}x "
            f"| {per['estimated']:.0f} B | {per['settled'] / per['estimated']:.2f}x |"
        )
    print()
    from hindsight_web.window import STATE_BYTES

    per_req = base["settled"] / requests
    print("| per request, no records | in the window, settled | estimated | real / estimated |")
    print("|---|---:|---:|---:|")
    print(
        f"| its facts: state, records deque, ids, path, user, tags | {per_req:.0f} B "
        f"| {base['estimated'] / requests:.0f} B (STATE_BYTES {STATE_BYTES}) "
        f"| {per_req / STATE_BYTES:.2f}x |"
    )
    print()
    result = "PASS" if all(verdicts) else "MISS"
    print(f"Goal: a record kept in the window holds no more than buffered: {result}")
    print()


# -- a full window --------------------------------------------------------------------


def fill(
    hs: Any, low: int, high: int, requests: int | None, steady: Callable[[], None] | None = None
) -> tuple[Any, int]:
    """Drive requests of the fill through the middleware: `requests` of them, or (None)
    until the window evicts and as many again. `steady` is called once the window is
    full (its first eviction), or with the window off halfway through `requests`.
    Returns the middleware and the count."""
    from hindsight_web import HindsightMiddleware

    mw = HindsightMiddleware(app, hindsight=hs)
    plans = fill_plans(low, high)
    window = hs.window

    async def send(message: Any) -> None:
        pass

    async def run() -> int:
        n = 0
        until = requests
        full = False
        while until is None or n < until:
            await mw(scope_of(plans(n)), receive, send)
            n += 1
            if n % TICK_EVERY == 0 and window is not None:
                window.settle()
            if not full and (window.evicted if window else n >= (until or 0) // 2):
                full = True
                if until is None:
                    until = 2 * n
                if steady is not None:
                    steady()
        return n

    made = asyncio.run(run())
    if window is not None:
        window.settle()
    hs.flush()
    return mw, made


class Collections:
    """The garbage collections made once `on` (gc.callbacks): seconds each, by generation."""

    def __init__(self) -> None:
        self.on = False
        self.pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self.requests_at = 0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = perf_counter()
        elif self.on:
            self.pauses[info["generation"]].append(perf_counter() - self._started)


def gc_pause() -> float:
    """Median ms of a full garbage collection (5 of them)."""
    times = []
    for _ in range(5):
        t = perf_counter()
        gc.collect()
        times.append((perf_counter() - t) * 1000)
    return statistics.median(times)


def fill_worker(
    window: str, low: int, high: int, window_bytes: int, requests: int | None, reps: int
) -> dict[str, Any]:
    """Fill a window (`on`, `traced`: bytes it holds, or `off`) and measure; with `on`,
    time the searches too."""
    setup_logging()
    options = {"window_s": 0} if window == "off" else {"window_bytes": window_bytes}
    hs = new_hindsight(**options)
    fill(hs, low, high, WARM)  # warm-up
    gc.collect()
    if window == "traced":
        tracemalloc.start()
        base = traced()
    rss_before = rss()
    collections = Collections()
    made_at_full = [0]

    def steady() -> None:
        collections.on = True
        made_at_full[0] = hs.counters()["requests"]

    gc.callbacks.append(collections)
    _, made = fill(hs, low, high, requests and requests - WARM, steady)
    gc.callbacks.remove(collections)
    made += WARM
    answer: dict[str, Any] = {"requests": made, "rss_growth": rss() - rss_before}
    steady_requests = hs.counters()["requests"] - made_at_full[0]
    full_gcs = collections.pauses[2]
    answer["steady"] = {
        "requests": steady_requests,
        "full": len(full_gcs),
        "full_median_ms": statistics.median(full_gcs) * 1000 if full_gcs else 0.0,
        "full_max_ms": max(full_gcs, default=0.0) * 1000,
        "all_ms": sum(sum(p) for p in collections.pauses.values()) * 1000,
    }
    counts = hs.counters()
    answer.update({k: counts[k] for k in ("window_requests", "window_bytes", "window_evicted")})
    answer["records"] = sum(len(s.records) for s in hs.window.states()) if hs.window else 0
    if window == "traced":
        full = traced()
        empty(hs)  # what the window alone holds: freed with it
        answer["window_traced"] = full - traced()
        answer["traced_growth"] = full - base
        tracemalloc.stop()
        answer["ok"] = made > 0 and counts["window_evicted"] > 0
        return answer
    answer["gc_objects"] = len(gc.get_objects())
    answer["gc_ms"] = gc_pause()
    if window == "off":
        answer["ok"] = hs.window is None
        return answer
    answer["ok"] = counts["window_evicted"] > 0 and settled(hs)
    answer["searches"] = time_searches(hs, reps)
    return answer


def time_searches(hs: Any, reps: int) -> dict[str, dict[str, float]]:
    """Each query `reps` times through `Hindsight.ask`; checks what it found."""
    from hindsight_web.search import parse_search

    states = hs.window.states()
    timings = {}
    for label, query in QUERIES:
        spec = parse_search(query)
        times, found = [], 0
        for _ in range(reps):
            t = perf_counter()
            answers, _, _ = hs.ask({"kind": "search", "spec": parse_search(query)})
            times.append((perf_counter() - t) * 1000)
            found = len(answers[0]["requests"])
        want = min(spec["limit"], sum(1 for s in states if matches(s, query)))
        if found != want:
            raise BenchFailure(f"{label}: found {found}, expected {want}")
        timings[label] = {"found": found, **quantiles(times)}
    return timings


def matches(state: Any, query: dict[str, str]) -> bool:
    """The searches of QUERIES, done the plain way (to check what a search finds)."""
    from hindsight_web.buffer import ARGS, MSG
    from hindsight_web.messages import text

    if "user_id" in query and state.user_id != query["user_id"]:
        return False
    if "path" in query and not state.path.startswith(query["path"].rstrip("*")):
        return False
    if "status" in query and not 500 <= state.status <= 599:
        return False
    if "message" in query:
        return any(query["message"] in text(e[MSG], e[ARGS]) for e in state.records)
    return True


def quantiles(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"median": statistics.median(ordered), "p99": p99, "max": ordered[-1]}


# -- through HTTP ------------------------------------------------------------------------


def serve_worker(port: int, low: int, high: int, window_bytes: int) -> None:
    """Fill the window, print what each query finds in process, then serve on `port`."""
    import uvicorn

    setup_logging()
    import hindsight_web

    hs = hindsight_web.Hindsight(admin_token=TOKEN, window_bytes=window_bytes)
    mw, made = fill(hs, low, high, None)
    found = {}
    for label, query in QUERIES:
        from hindsight_web.search import parse_search

        answers, _, _ = hs.ask({"kind": "search", "spec": parse_search(query)})
        found[label] = len(answers[0]["requests"])
    print(json.dumps({"ok": True, "requests": made, "found": found, **hs.counters()}), flush=True)
    uvicorn.run(
        mw, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="off"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_searches(low: int, high: int, window_bytes: int, reps: int) -> dict[str, Any]:
    """GET /_hindsight/requests on a uvicorn with a full window: ms per search."""
    import httpx

    port = free_port()
    argv = [sys.executable, os.path.join(HERE, "window.py"), "--worker", "serve", str(port)]
    server = subprocess.Popen(
        [*argv, str(low), str(high), str(window_bytes)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        if not line.startswith("{"):
            raise BenchFailure(f"the server did not fill its window: {line!r}")
        filled = json.loads(line)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        with httpx.Client(base_url=base, headers={"authorization": f"Bearer {TOKEN}"}) as client:
            while True:
                try:
                    client.get("/_hindsight/health")
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise BenchFailure("the server did not answer") from None
                    time.sleep(0.1)
            timings = {}
            for label, query in QUERIES:
                times = []
                for _ in range(reps):
                    t = perf_counter()
                    response = client.get("/_hindsight/requests", params=query)
                    times.append((perf_counter() - t) * 1000)
                    if response.status_code != 200:
                        raise BenchFailure(f"{label}: {response.status_code} {response.text}")
                    got = len(response.json()["requests"])
                    if got != filled["found"][label]:
                        raise BenchFailure(f"{label}: {got} over HTTP, {filled['found'][label]}")
                timings[label] = {"found": got, **quantiles(times)}
        return {"filled": filled, "searches": timings}
    finally:
        server.terminate()
        server.wait(10)


# -- driver ------------------------------------------------------------------------------


def worker_main(argv: list[str]) -> None:
    kind = argv[0]
    if kind == "bytes":
        answer = bytes_worker(argv[1], int(argv[2]), int(argv[3]))
    elif kind == "fill":
        requests = None if argv[5] == "-" else int(argv[5])
        answer = fill_worker(
            argv[1], int(argv[2]), int(argv[3]), int(argv[4]), requests, int(argv[6])
        )
    elif kind == "serve":
        serve_worker(int(argv[1]), int(argv[2]), int(argv[3]), int(argv[4]))
        return
    else:
        raise ValueError(kind)
    print(json.dumps(answer))


def num(answer: dict[str, Any], key: str) -> float:
    """A number of a worker's answer."""
    return float(answer[key])


def mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="a small window, few searches")
    parser.add_argument("--reps", type=int, default=100, help="searches per query")
    parser.add_argument("--no-http", action="store_true", help="searches in process only")
    args = parser.parse_args()
    reps = 3 if args.smoke else args.reps
    window_bytes = 1_000_000 if args.smoke else 32_000_000
    requests, per_request = (40, 5) if args.smoke else (1000, 20)
    print(machine_line())
    print(f"window: window_bytes={window_bytes:,}, {reps} searches per query")
    print()
    bytes_table(requests, per_request)

    shapes = [(5, 50)] if args.smoke else [(5, 50), (0, 2)]
    fills = {}
    for low, high in shapes:
        on = run_worker(
            "window.py", ["fill", "on", str(low), str(high), str(window_bytes), "-", str(reps)]
        )
        same = str(on["requests"])
        traced_run = run_worker(
            "window.py", ["fill", "traced", str(low), str(high), str(window_bytes), same, "0"]
        )
        off = run_worker(
            "window.py", ["fill", "off", str(low), str(high), str(window_bytes), same, "0"]
        )
        fills[(low, high)] = (on, traced_run, off)

    print(f"### A full window ({mb(window_bytes)} by its estimate): real memory")
    print()
    print(
        "| requests of | requests made | kept in the window | records kept "
        "| window_bytes (estimate) | traced: held by the window | real / estimated "
        "| RSS growth, window on | RSS growth, window off | (on - off) / estimate |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (low, high), (on, traced_run, off) in fills.items():
        est, held = num(traced_run, "window_bytes"), num(traced_run, "window_traced")
        rss_on, rss_off = num(on, "rss_growth"), num(off, "rss_growth")
        rss_ratio = (rss_on - rss_off) / num(on, "window_bytes")
        print(
            f"| {low}-{high} records | {on['requests']:,} | {on['window_requests']:,} "
            f"| {on['records']:,} | {mb(est)} | {mb(held)} | {held / est:.2f}x "
            f"| {mb(rss_on)} | {mb(rss_off)} | {rss_ratio:.2f}x |"
        )
    print()
    print("### Garbage collection with the window full")
    print()
    print(
        "The collections the interpreter made by itself while the window was full (the "
        "second half of the fill; window off: the second half of the same requests), and "
        "one `gc.collect()` after the fill (median of 5)."
    )
    print()
    print(
        "| requests of | window | objects tracked | gc.collect() ms | requests | full "
        "collections | full collection: median ms | max ms | all collections: ms per "
        "1,000 requests |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for (low, high), (on, _, off) in fills.items():
        for name, got in (("full", on), ("off", off)):
            st = cast(dict[str, float], got["steady"])
            print(
                f"| {low}-{high} records | {name} | {got['gc_objects']:,} "
                f"| {num(got, 'gc_ms'):.1f} | {st['requests']:,.0f} | {st['full']:.0f} "
                f"| {st['full_median_ms']:.1f} | {st['full_max_ms']:.1f} "
                f"| {st['all_ms'] / st['requests'] * 1000:.1f} |"
            )
    print()

    for (low, high), (on, _, _) in fills.items():
        searches = cast(dict[str, dict[str, float]], on["searches"])
        print(
            f"### Search latency in process: a full window of {on['window_requests']:,} "
            f"requests of {low}-{high} records ({reps} searches each)"
        )
        print()
        print_searches(searches)
    if not args.no_http:
        low, high = shapes[0]
        served = http_searches(low, high, window_bytes, reps)
        filled = served["filled"]
        print(
            f"### Search latency through HTTP: GET /_hindsight/requests, uvicorn, a full "
            f"window of {filled['window_requests']:,} requests of {low}-{high} records "
            f"({reps} searches each)"
        )
        print()
        print_searches(served["searches"])
    return 0


def print_searches(searches: dict[str, dict[str, float]]) -> None:
    print("| search | query | found | median ms | p99 ms | max ms |")
    print("|---|---|---:|---:|---:|---:|")
    queries = dict(QUERIES)
    for label, t in searches.items():
        query = "&".join(f"{k}={v}" for k, v in queries[label].items()) or "(none)"
        print(
            f"| {label} | `{query}` | {t['found']:.0f} | {t['median']:.2f} | {t['p99']:.2f} "
            f"| {t['max']:.2f} |"
        )
    print()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker_main(sys.argv[2:])
    else:
        sys.exit(main())
