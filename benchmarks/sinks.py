"""Sinks: how fast each sink takes released records, and what a sink that is down costs
the requests.

Every measurement runs in a fresh interpreter (`--worker`); requests go through
`HindsightMiddleware` around a raw ASGI app that logs 10 DEBUG records (DEBUG disabled
in the app's configuration) and answers 500, so that every request is released
(``max_releases_per_s`` high enough never to hold one back).

- **Release throughput** per sink, alone (the app's handlers are left out of the
  default with ``{"id": "app", "type": "logging", "default": false}``, but for the
  ``logging`` row, which writes through a formatter to ``os.devnull``): records per
  second from the first request until `Hindsight.flush` returns, each release's
  summary counted as a record. ``jsonl`` writes to a file in a temporary directory,
  ``http`` POSTs to a threading HTTP server of the same process on 127.0.0.1 (its
  handler's time counts), ``otel`` emits through an OpenTelemetry SDK
  ``LoggerProvider`` with a ``SimpleLogRecordProcessor`` and an in-memory exporter.
  Each worker checks that the sink received every record (its queue is made large
  enough for the whole run: with the default bound, 10,000 records, a burst of
  releases faster than the sink sends is partly dropped, counted).
- **Request path with the http sink down**: microseconds per request (the calls
  through the middleware only, not the writing) with no sink, with an http sink to
  a local endpoint, and with an http sink whose URL has no listener (connection
  refused, retried with backoff; its queue fills, then drops). The request path
  does the same in all three (the release is handed to the writer thread); what
  differs is the background work sharing the interpreter (the writer making each
  sink's JSON objects, the sink's thread): the wall-time table counts it (two
  cores, one interpreter lock), the CPU table (``time.thread_time`` of the thread
  that makes the requests) does not. Rounds interleaved.

Usage: python benchmarks/sinks.py [--smoke] [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from time import perf_counter
from typing import Any

from common import BenchFailure, Series, interleave, machine_line, run_worker, table

LINES = 10
SINKS = ["logging", "jsonl", "http", "otel"]
DOWN = ["no sink", "http sink up", "http sink down"]
LOG = logging.getLogger("bench.app")


def _app(hs: Any) -> Any:
    from hindsight_web import HindsightMiddleware

    async def app(scope: Any, receive: Any, send: Any) -> None:
        for i in range(LINES):
            LOG.debug("step %d of %s", i, scope["path"])
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    return HindsightMiddleware(app, hindsight=hs)


async def _requests(app: Any, n: int) -> None:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        pass

    for i in range(n):
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "method": "GET",
            "path": f"/orders/{i}",
            "raw_path": b"/orders",
            "query_string": b"",
            "headers": [],
            "client": ("127.0.0.1", 5000),
            "server": ("127.0.0.1", 8000),
        }
        await app(scope, receive, send)


def _logging_config() -> None:
    handler = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


class _Receiver:
    """A local endpoint that counts the JSON objects POSTed to it."""

    def __init__(self) -> None:
        self.objects = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.objects += len(json.loads(body))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/ingest"


def throughput_worker(sink: str, n: int) -> dict[str, Any]:
    from hindsight_web import Hindsight

    _logging_config()
    directory = tempfile.mkdtemp()
    check: Any
    if sink == "logging":
        sinks: list[dict[str, Any]] = []
        check = None
    else:
        sinks = [{"id": "app", "type": "logging", "default": False}]
        if sink == "jsonl":
            path = os.path.join(directory, "out.jsonl")
            sinks.append({"id": "s", "type": "jsonl", "path": path, "max_bytes": 0})

            def check() -> int:
                with open(path) as file:
                    return sum(1 for _ in file)

        elif sink == "http":
            receiver = _Receiver()
            sinks.append({"id": "s", "type": "http", "url": receiver.url})

            def check() -> int:
                return receiver.objects

        else:
            from opentelemetry import _logs
            from opentelemetry.sdk._logs import LoggerProvider
            from opentelemetry.sdk._logs.export import (
                InMemoryLogRecordExporter,
                SimpleLogRecordProcessor,
            )

            exporter = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
            provider = LoggerProvider()
            provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
            _logs.set_logger_provider(provider)
            sinks.append({"id": "s", "type": "otel"})

            def check() -> int:
                return len(exporter.get_finished_logs())

    for config in sinks[1:]:  # room for the whole run: measure the sink, not its drops
        config.update(max_queued=10_000_000, max_queued_bytes=10_000_000_000)
    hs = Hindsight(slow_ms=None, max_releases_per_s=1e9, sinks=sinks, window_s=0)
    app = _app(hs)
    asyncio.run(_requests(app, 20))  # warm up
    if not hs.flush(60):
        raise BenchFailure("warm-up not written")
    before = hs.counters()["records_released"]
    start = perf_counter()
    asyncio.run(_requests(app, n))
    if not hs.flush(300):
        raise BenchFailure(f"{sink}: not written within 300 s")
    elapsed = perf_counter() - start
    records = n * (LINES + 1)
    released = hs.counters()["records_released"] - before
    got = None if check is None else check() - 20 * (LINES + 1)
    ok = released == n * LINES and (got is None or got == records)
    return {"ok": ok, "records_per_s": records / elapsed, "got": got, "released": released}


def down_worker(variant: str, n: int) -> dict[str, Any]:
    from hindsight_web import Hindsight

    _logging_config()
    sinks = []
    if variant == "http sink up":
        receiver = _Receiver()
        sinks = [{"id": "siem", "type": "http", "url": receiver.url}]
    if variant == "http sink down":
        with socket.socket() as sock:  # a port nothing listens on
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        sinks = [{"id": "siem", "type": "http", "url": f"http://127.0.0.1:{port}/x"}]
    hs = Hindsight(slow_ms=None, max_releases_per_s=1e9, sinks=sinks, window_s=0)
    app = _app(hs)
    asyncio.run(_requests(app, 200))  # warm up; the down sink starts retrying
    time.sleep(0.2)
    start, cpu = perf_counter(), time.thread_time()
    asyncio.run(_requests(app, n))
    elapsed, cpu = perf_counter() - start, time.thread_time() - cpu
    hs.writer.flush(60)
    state = hs.sinks.state()
    ok = hs.counters()["releases_dropped"] == 0
    if variant == "http sink down":
        down = state[1]
        ok = ok and down["sent"] == 0 and down["queued"] + down["dropped"] > 0
    return {
        "ok": ok,
        "us_per_request": elapsed / n * 1e6,
        "cpu_us_per_request": cpu / n * 1e6,
        "sinks": state,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny n, one round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, variant, n = args.worker
        worker = throughput_worker if kind == "throughput" else down_worker
        print(json.dumps(worker(variant, int(n)), default=str))
        return 0
    rounds = 1 if args.smoke else args.rounds
    releases = 20 if args.smoke else 2000
    requests = 200 if args.smoke else 5000
    print(machine_line())
    print()

    def rate(sink: str) -> tuple[float, str]:
        answer = run_worker("sinks.py", ["throughput", sink, str(releases)])
        return float(answer["records_per_s"]), ""  # type: ignore[arg-type]

    text, _ = table(
        f"Release throughput per sink ({releases} releases of {LINES} records and a summary)",
        interleave(SINKS, rounds, rate),
        "logging",
        "records/s",
        digits=0,
    )
    print(text)

    cpu: dict[str, list[float]] = {name: [] for name in DOWN}

    def cost(variant: str) -> tuple[float, str]:
        answer = run_worker("sinks.py", ["down", variant, str(requests)])
        cpu[variant].append(float(answer["cpu_us_per_request"]))  # type: ignore[arg-type]
        return float(answer["us_per_request"]), ""  # type: ignore[arg-type]

    wall = interleave(DOWN, rounds, cost)
    title = f"every request released ({LINES} records), http sink down, up or none"
    text, _ = table(f"Request path, wall time: {title}", wall, "no sink", "us/request")
    print(text)
    own = {name: Series(name, values) for name, values in cpu.items()}
    text, _ = table(
        f"Request path, CPU of the requests' thread only: {title}", own, "no sink", "us/request"
    )
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
