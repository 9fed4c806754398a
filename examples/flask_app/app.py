"""A small shop app on Flask whose slow and failing requests keep their DEBUG logs.

Run from the repository root::

    flask --app examples.flask_app.app run
"""

from __future__ import annotations

import logging
import os
import random
import time

from flask import Flask, abort, g, jsonify, request
from flask.typing import ResponseReturnValue

from hindsight_web import HindsightWSGIMiddleware, set_user

LOG_FORMAT = (
    "%(asctime)s %(levelname)-5s pid=%(process)d %(name)s rid=%(request_id)s user=%(user_id)s "
    "| %(message)s"
)

log = logging.getLogger("shop")

ITEMS = {
    1: {"id": 1, "name": "coffee beans", "price": 12.5},
    2: {"id": 2, "name": "grinder", "price": 89.0},
    3: {"id": 3, "name": "kettle", "price": 35.0},
}


def create_app(slow_ms: float | None = None) -> Flask:
    """Build the app; `slow_ms` defaults to env HINDSIGHT_SLOW_MS, else 500."""
    if slow_ms is None:
        slow_ms = float(os.environ.get("HINDSIGHT_SLOW_MS", "500"))
    flask_app = Flask(__name__)
    # HINDSIGHT_STORE shares rules and statistics between worker processes, e.g.
    # sqlite:////tmp/hindsight.db for gunicorn -w 4.
    store = os.environ.get("HINDSIGHT_STORE", "memory://")
    flask_app.wsgi_app = HindsightWSGIMiddleware(  # type: ignore[method-assign]
        flask_app.wsgi_app, slow_ms=slow_ms, store=store
    )

    @flask_app.before_request
    def identify_user() -> None:
        """Take the user from the `X-User` header (a stand-in for real authentication)."""
        user = request.headers.get("X-User")
        g.user = user if user and len(user) <= 256 else None
        if g.user:
            set_user(g.user)
            log.debug("authenticated user %s from X-User header", g.user)

    @flask_app.get("/healthz")
    def healthz() -> ResponseReturnValue:
        return {"status": "ok"}

    @flask_app.get("/items/<int:item_id>")
    def get_item(item_id: int) -> ResponseReturnValue:
        log.debug("cache lookup item=%d", item_id)
        item = ITEMS.get(item_id)
        if item is None:
            log.debug("cache miss item=%d, not in catalogue", item_id)
            abort(404)
        log.debug("cache hit item=%d price=%.2f", item_id, item["price"])
        log.info("served item %d", item_id)
        return jsonify(item)

    @flask_app.route("/checkout", methods=["GET", "POST"])
    def checkout() -> ResponseReturnValue:
        delay_ms = request.args.get("delay_ms", type=int)
        if delay_ms is None:
            delay_ms = 900 if random.random() < 0.2 else random.randint(10, 60)
        log.debug("reserving stock for cart of user %s", g.user)
        log.debug("calling payment provider (expected latency %d ms)", delay_ms)
        time.sleep(delay_ms / 1000)
        log.debug("payment provider answered: authorised")
        log.info("checkout complete")
        return {"status": "paid", "payment_ms": delay_ms}

    @flask_app.get("/fail")
    def fail() -> ResponseReturnValue:
        log.debug("loading loyalty points")
        log.debug("loyalty service returned an empty body")
        log.info("applying loyalty discount")
        raise RuntimeError("loyalty service returned malformed data")

    return flask_app


logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
app = create_app()
