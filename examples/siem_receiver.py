"""A stand-in for a SIEM or a support tool: receives what hindsight's http sink POSTs.

It prints every JSON object of every batch on its own line (stdout), and answers 401
to a request without the expected bearer token when ``--token`` is given.

Run from the repository root::

    python examples/siem_receiver.py --port 9000 --token demo-siem-token
"""

from __future__ import annotations

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def serve(port: int, token: str | None) -> None:
    """Listen on 127.0.0.1:`port` until interrupted."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            if token is not None and self.headers.get("authorization") != f"Bearer {token}":
                self._answer(401)
                return
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            try:
                batch = json.loads(body)
            except ValueError:
                self._answer(400)
                return
            for obj in batch:
                print(json.dumps(obj), flush=True)
            self._answer(200)

        def _answer(self, status: int) -> None:
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass  # stdout holds the objects only

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"listening on http://127.0.0.1:{port}/", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--token", help="the bearer token a request must carry")
    args = parser.parse_args()
    serve(args.port, args.token)


if __name__ == "__main__":
    main()
