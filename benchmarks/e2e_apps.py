"""Apps served by e2e.py: an endpoint logging 10 DEBUG lines (DEBUG disabled by the
app's configuration). HINDSIGHT=1 wraps the app with hindsight (the build that
HINDSIGHT_PURE_PYTHON picks), HINDSIGHT=minimal with the minimal capture middleware of
micro.py (the reference); /_count answers how many requests the endpoint served and how
many records hindsight captured."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

LINES = 10
HINDSIGHT = os.environ.get("HINDSIGHT") == "1"
MINIMAL = os.environ.get("HINDSIGHT") == "minimal"

_out = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115
_out.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
logging.getLogger().handlers[:] = [_out]
logging.getLogger().setLevel(logging.INFO)
log = logging.getLogger("bench.app")

served = {"requests": 0}
hs: Any = None
if HINDSIGHT:
    import hindsight_web

    hs = hindsight_web.Hindsight(slow_ms=1000)


def work() -> None:
    served["requests"] += 1
    for i in range(LINES):
        log.debug("step %d of %s: value=%r", i, "request", 42)


def counts() -> str:
    c: dict[str, Any] = dict(served)
    c["hindsight"] = HINDSIGHT
    c["minimal"] = MINIMAL
    if hs is not None:
        import hindsight_web

        c.update(hs.counters())
        c["build"] = "compiled" if hindsight_web.__compiled__ else "pure"
    return json.dumps(c)


def _fastapi() -> Any:
    from fastapi import FastAPI
    from fastapi.responses import PlainTextResponse

    app = FastAPI()

    @app.get("/", response_class=PlainTextResponse)
    async def index() -> str:
        work()
        return "ok"

    @app.get("/_count", response_class=PlainTextResponse)
    async def count() -> str:
        return counts()

    if hs is not None:
        import hindsight_web

        app.add_middleware(hindsight_web.HindsightMiddleware, hindsight=hs)
    if MINIMAL:
        from micro import minimal_asgi

        return minimal_asgi(app)
    return app


def _flask() -> Any:
    from flask import Flask

    app = Flask("bench")

    @app.get("/")
    def index() -> str:
        work()
        return "ok"

    @app.get("/_count")
    def count() -> str:
        return counts()

    if hs is not None:
        import hindsight_web

        app.wsgi_app = hindsight_web.HindsightWSGIMiddleware(app.wsgi_app, hindsight=hs)  # type: ignore[method-assign]
    if MINIMAL:
        from micro import minimal_wsgi

        app.wsgi_app = minimal_wsgi(app.wsgi_app)  # type: ignore[method-assign]
    return app


fastapi_app = _fastapi() if os.environ.get("BENCH_APP") == "fastapi" else None
flask_app = _flask() if os.environ.get("BENCH_APP") == "flask" else None
