"""A real HTTP endpoint on 127.0.0.1 that receives what the http sink POSTs (a SIEM) and
what alerts POST (a chat webhook)."""

from __future__ import annotations

import json
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from .servers import Server, free_port, uvicorn_argv, write_app


class Receiver:
    """Records every POSTed JSON body; `statuses` are answered first, then 200.

    ``batches`` holds the arrays (the http sink), ``bodies`` every body as it came (an
    alert's object). While `gate` is clear, each POST is counted and then held until it
    is set. ``stop()`` and ``start()`` again take it down and bring it back on the same
    port.
    """

    def __init__(
        self, statuses: list[int] | None = None, tls: tuple[Path, Path] | None = None
    ) -> None:
        self.port = free_port()
        self.statuses = list(statuses or [])
        self.tls = tls
        self.batches: list[list[dict[str, Any]]] = []
        self.bodies: list[Any] = []
        self.headers: list[dict[str, str]] = []
        self.posts = 0
        self.gate = threading.Event()
        self.gate.set()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}/ingest"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with receiver._lock:
                    receiver.posts += 1
                receiver.gate.wait(60)
                with receiver._lock:
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                    if status == 200:
                        received = json.loads(body)
                        receiver.bodies.append(received)
                        if isinstance(received, list):
                            receiver.batches.append(received)
                        receiver.headers.append({k.lower(): v for k, v in self.headers.items()})
                self.send_response(status)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        if self.tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(self.tls[0]), str(self.tls[1]))
            server.socket = context.wrap_socket(server.socket, server_side=True)
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def objects(self) -> list[dict[str, Any]]:
        """Every object received, in the order they arrived."""
        with self._lock:
            return [obj for batch in self.batches for obj in batch]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; received {len(self.objects())} objects")
            time.sleep(0.05)


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made with the openssl command."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


ALERT_APP = """
import asyncio
import logging
import sys

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from hindsight_web import Hindsight, HindsightMiddleware, set_user

logging.basicConfig(level=logging.INFO, stream=sys.stderr, format={FORMAT})
log = logging.getLogger("app")


async def login(request):
    query = request.query_params
    if query.get("user"):
        set_user(query["user"])
    log.debug("login attempt")
    await asyncio.sleep(int(query.get("delay_ms", "0")) / 1000)
    return PlainTextResponse("login", status_code=int(query.get("status", "200")))


app = HindsightMiddleware(
    Starlette(routes=[Route("/login", login)]),
    hindsight=Hindsight(
        admin_token={TOKEN},
        store_sync_s=0.2,
        slow_ms=200,
        alerts=[
            {"id": "security", "type": "webhook", "url": {SECURITY}},
            {"id": "pager", "type": "webhook", "url": {PAGER}},
        ],
    ),
)
"""
"""An app whose count rules alert `security` (a receiver that takes every alert) and
`pager` (one that refuses every alert with a 404: failed at once, not retried);
``GET /login`` answers ``?status=`` (200), after ``?delay_ms=``, as ``?user=``."""


@contextmanager
def alerting_app(workdir: Path, token: str) -> Iterator[tuple[Server, Receiver, Receiver]]:
    """`ALERT_APP` under uvicorn in `workdir` with admin token `token`, and its two
    receivers: ``(server, security, pager)``, stopped when the block ends."""
    security = Receiver().start()
    pager = Receiver(statuses=[404] * 1000).start()
    source = (
        ALERT_APP.replace("{TOKEN}", repr(token))
        .replace("{SECURITY}", repr(security.url))
        .replace("{PAGER}", repr(pager.url))
    )
    write_app(workdir, "alerting_app", source)
    port = free_port()
    server = Server(uvicorn_argv(workdir, "alerting_app")(port), workdir, "uvicorn")
    try:
        server.start(port)
        yield server, security, pager
    finally:
        server.stop()
        security.stop()
        pager.stop()
