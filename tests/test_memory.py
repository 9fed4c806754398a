"""Memory stays flat over many requests (run in a fresh interpreter)."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def run_script(script: str) -> str:
    """What `script` prints, run in a fresh interpreter (five minutes at most)."""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True
    )
    return done.stdout


SCRIPT = textwrap.dedent(
    """
    import asyncio, logging, os
    from hindsight_web import HindsightMiddleware

    logging.basicConfig(level=logging.INFO, stream=open(os.devnull, "w"))
    log = logging.getLogger("app")

    async def app(scope, receive, send):
        for i in range(50):
            log.debug("request %s line %d %s", scope["path"], i, "payload" * 5)
        status = 500 if scope["path"].endswith("0") else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    mw = HindsightMiddleware(app, window_bytes=2_000_000)

    async def receive():
        return {"type": "http.request"}

    async def send(message):
        pass

    def rss_kb():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])

    async def run(n, start):
        for i in range(start, start + n):
            scope = {"type": "http", "method": "GET", "path": f"/r/{i}", "headers": []}
            await mw(scope, receive, send)

    asyncio.run(run(1000, 0))
    first = rss_kb()
    asyncio.run(run(9000, 1000))
    last = rss_kb()
    mw.hindsight.flush()  # the queued releases hold their bytes until written
    counts = mw.hindsight.counters()
    newest = mw.hindsight.window.states()[-1]
    print(first, last, counts["requests"], counts["releases"], counts["buffer_bytes"],
          counts["window_bytes"], counts["window_evicted"], newest.path, len(newest.records))
    """
)


def test_memory_is_flat_over_10000_requests_of_50_debug_lines() -> None:
    output = run_script(SCRIPT)
    first, last, requests, releases, buffer_bytes, window_bytes, evicted, path, records = (
        output.split()
    )
    assert int(requests) == 10_000
    assert int(releases) == 1_000
    assert int(buffer_bytes) == 0
    # The window (2 MB) holds the newest requests, records and all; the older ones went.
    assert 1_500_000 < int(window_bytes) <= 2_000_000
    assert 9_000 < int(evicted) < 10_000
    assert (path, records) == ("/r/9999", "50")
    grew = int(last) - int(first)
    assert grew < 20_000, f"RSS grew by {grew / 1024:.1f} MB"


MESSAGE_RULE_SCRIPT = textwrap.dedent(
    """
    import asyncio, logging, os, tracemalloc
    from hindsight_web import Hindsight, HindsightMiddleware

    class Summaries(logging.Handler):
        def __init__(self):
            super().__init__()
            self.paths = []

        def emit(self, record):
            if record.name == "hindsight_web" and "hindsight release" in record.getMessage():
                self.paths.append(record.http_path)

    summaries = Summaries()
    logging.basicConfig(level=logging.INFO, stream=open(os.devnull, "w"))
    logging.getLogger().addHandler(summaries)
    log = logging.getLogger("app")
    line = "x" * 1000
    all_in = asyncio.Event()
    started = 0

    async def app(scope, receive, send):
        global started
        for i in range(1000):  # written at once (INFO): 1 MB of text per request
            log.info("request %s line %d %s", scope["path"], i, line)
        started += 1
        if started == 500:
            all_in.set()
        await all_in.wait()  # 500 requests in flight together
        if scope["path"] == "/r/7":
            log.info("payment failed: card declined")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    hs = Hindsight(
        slow_ms=None,
        max_total_bytes=1_000_000,
        rules=[{"action": "release", "match": {"message": "card declined"}}],
    )
    mw = HindsightMiddleware(app, hindsight=hs)

    async def receive():
        return {"type": "http.request"}

    async def send(message):
        pass

    async def run():
        scopes = [
            {"type": "http", "method": "GET", "path": f"/r/{i}", "headers": []}
            for i in range(500)
        ]
        await asyncio.gather(*(mw(scope, receive, send) for scope in scopes))

    tracemalloc.start()
    asyncio.run(run())
    current, peak = tracemalloc.get_traced_memory()
    print(peak, " ".join(summaries.paths))
    """
)


def test_a_message_rule_keeps_no_text_of_the_records_written() -> None:
    output = run_script(MESSAGE_RULE_SCRIPT)
    peak, *released = output.split()
    assert released == ["/r/7"]  # the written line matched, in the one request that wrote it
    # 500 requests wrote 1 MB of messages each while in flight together; a copy of the
    # text they wrote would take 500 MB (max_total_bytes is 1 MB).
    assert int(peak) < 50_000_000, f"peak {int(peak) / 1e6:.0f} MB"


ABANDONED_SCRIPT = textwrap.dedent(
    """
    import gc, logging, os, tracemalloc
    from hindsight_web import HindsightMiddleware, HindsightWSGIMiddleware, bind

    logging.basicConfig(level=logging.INFO, stream=open(os.devnull, "w"))
    log = logging.getLogger("app")

    class Wait:
        def __await__(self):
            yield  # suspended here: the coroutine is dropped while it waits

    async def app(scope, receive, send):
        bind(tenant="acme")
        for i in range(5):
            log.debug("request %s line %d", scope["path"], i)
        await Wait()

    def wsgi_app(environ, start_response):
        bind(tenant="acme")
        for i in range(5):
            log.debug("request %s line %d", environ["PATH_INFO"], i)
        start_response("200 OK", [])
        return iter([b"ok"])

    asgi = HindsightMiddleware(app, window_s=0)
    wsgi = HindsightWSGIMiddleware(wsgi_app, window_s=0)

    def abandon(n):
        for i in range(n):
            scope = {"type": "http", "method": "GET", "path": f"/a/{i}", "headers": []}
            coroutine = asgi(scope, None, None)
            try:
                coroutine.send(None)  # up to the wait
            except StopIteration:
                raise SystemExit("the app did not wait")
            del coroutine  # dropped, never resumed nor closed
            response = wsgi({"REQUEST_METHOD": "GET", "PATH_INFO": f"/w/{i}"}, lambda *a: None)
            del response  # dropped, never iterated nor closed
        gc.collect()

    tracemalloc.start()
    abandon(500)
    first = tracemalloc.get_traced_memory()[0]
    abandon(5000)
    last = tracemalloc.get_traced_memory()[0]
    print(first, last, asgi.hindsight.budget.used, wsgi.hindsight.budget.used)
    """
)


def test_requests_abandoned_mid_way_leave_nothing_behind() -> None:
    # An ASGI request whose coroutine is dropped while it waits, a WSGI response never
    # iterated nor closed: both had kept records (whose contexts hold the request).
    output = run_script(ABANDONED_SCRIPT)
    first, last, asgi_bytes, wsgi_bytes = map(int, output.split())
    assert (asgi_bytes, wsgi_bytes) == (0, 0)
    grew = last - first
    assert grew < 200_000, f"traced memory grew by {grew / 1024:.1f} KB over 5000 requests"
