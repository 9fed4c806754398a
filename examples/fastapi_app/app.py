"""A small shop API whose slow and failing requests keep their DEBUG logs.

Run from the repository root::

    uvicorn examples.fastapi_app.app:app
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from typing import Annotated

from fastapi import Depends, FastAPI, Header, HTTPException

from hindsight_web import HindsightMiddleware, set_user

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


def identify_user(x_user: Annotated[str | None, Header()] = None) -> str | None:
    """Take the user from the `X-User` header (a stand-in for real authentication)."""
    if x_user and len(x_user) <= 256:
        set_user(x_user)
        log.debug("authenticated user %s from X-User header", x_user)
        return x_user
    return None


User = Annotated[str | None, Depends(identify_user)]


def create_app(slow_ms: float | None = None) -> FastAPI:
    """Build the app; `slow_ms` defaults to env HINDSIGHT_SLOW_MS, else 500."""
    if slow_ms is None:
        slow_ms = float(os.environ.get("HINDSIGHT_SLOW_MS", "500"))
    app = FastAPI(title="hindsight-web FastAPI example")
    # HINDSIGHT_STORE shares rules and statistics between worker processes, e.g.
    # sqlite:////tmp/hindsight.db (scripts/demo runs two workers on one).
    store = os.environ.get("HINDSIGHT_STORE", "memory://")
    app.add_middleware(HindsightMiddleware, slow_ms=slow_ms, store=store)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/items/{item_id}")
    async def get_item(item_id: int, user: User) -> dict[str, object]:
        log.debug("cache lookup item=%d", item_id)
        item = ITEMS.get(item_id)
        if item is None:
            log.debug("cache miss item=%d, not in catalogue", item_id)
            raise HTTPException(status_code=404, detail="no such item")
        log.debug("cache hit item=%d price=%.2f", item_id, item["price"])
        log.info("served item %d", item_id)
        return item

    @app.api_route("/checkout", methods=["GET", "POST"])
    async def checkout(user: User, delay_ms: int | None = None) -> dict[str, object]:
        if delay_ms is None:
            delay_ms = 900 if random.random() < 0.2 else random.randint(10, 60)
        log.debug("reserving stock for cart of user %s", user)
        log.debug("calling payment provider (expected latency %d ms)", delay_ms)
        await asyncio.sleep(delay_ms / 1000)
        log.debug("payment provider answered: authorised")
        log.info("checkout complete")
        return {"status": "paid", "payment_ms": delay_ms}

    @app.get("/fail")
    async def fail(user: User) -> dict[str, str]:
        log.debug("loading loyalty points")
        log.debug("loyalty service returned an empty body")
        log.info("applying loyalty discount")
        raise RuntimeError("loyalty service returned malformed data")

    return app


logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
app = create_app()
