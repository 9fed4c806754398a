"""Memory stays flat over many requests (run in a fresh interpreter)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

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

    mw = HindsightMiddleware(app)

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
    counts = mw.hindsight.counters()
    print(first, last, counts["requests"], counts["releases"], counts["buffer_bytes"])
    """
)


def test_memory_is_flat_over_10000_requests_of_50_debug_lines() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, check=True
    )
    first, last, requests, releases, buffer_bytes = map(int, done.stdout.split())
    assert requests == 10_000
    assert releases == 1_000
    assert buffer_bytes == 0
    assert last - first < 20_000, f"RSS grew by {(last - first) / 1024:.1f} MB"
