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

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse

from hindsight_web import HindsightMiddleware, bind, set_user

LOG_FORMAT = (
    "%(asctime)s %(levelname)-5s pid=%(process)d %(name)s rid=%(request_id)s user=%(user_id)s "
    "| %(message)s"
)

log = logging.getLogger("shop")
alerts_log = logging.getLogger("shop.alerts")

ITEMS = {
    1: {"id": 1, "name": "coffee beans", "price": 12.5},
    2: {"id": 2, "name": "grinder", "price": 89.0},
    3: {"id": 3, "name": "kettle", "price": 35.0},
}


def identify_user(
    x_user: Annotated[str | None, Header()] = None,
    x_session: Annotated[str | None, Header()] = None,
) -> str | None:
    """Take the user (and session) from the `X-User` (`X-Session`) header: a stand-in for
    real authentication."""
    if x_user and len(x_user) <= 256:
        session = x_session if x_session and len(x_session) <= 256 else None
        set_user(x_user, session_id=session)
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
    # HINDSIGHT_ALERT_URL: where count rules' alerts go (scripts/demo points it at the
    # app's own /webhooks/alerts, which logs them).
    alert_url = os.environ.get("HINDSIGHT_ALERT_URL")
    alerts = [
        {"id": target, "type": "webhook", "url": alert_url} for target in ("security", "oncall")
    ]
    app.add_middleware(
        HindsightMiddleware, slow_ms=slow_ms, store=store, alerts=alerts if alert_url else None
    )

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

    @app.post("/login")
    async def login(user: str, password: str) -> JSONResponse:
        log.debug("checking the password of %s", user)
        if password != "correct-horse":
            log.info("login refused")
            return JSONResponse({"error": "invalid credentials"}, status_code=401)
        set_user(user)
        log.info("login of %s", user)
        return JSONResponse({"status": "welcome"})

    @app.post("/payments")
    async def pay(
        amount: float, card: str, x_client_id: Annotated[str, Header()] = "anonymous"
    ) -> JSONResponse:
        bind(client_id=x_client_id[:64])
        log.debug("authorising %.2f on card ending %s", amount, card[-4:])
        if card.endswith("0000"):
            log.info("payment declined")
            return JSONResponse({"status": "declined"}, status_code=402)
        log.info("payment accepted")
        return JSONResponse({"status": "paid"})

    @app.get("/reports/daily")
    async def daily_report(db: str = "up") -> JSONResponse:
        log.debug("opening a connection to the reporting database")
        if db == "down":
            log.error("Database Connection Failed")
            return JSONResponse({"error": "reporting database unavailable"}, status_code=503)
        log.info("daily report built")
        return JSONResponse({"orders": 42})

    @app.get("/accounts/{account_id}")
    async def account(account_id: int, user: User) -> dict[str, object]:
        log.debug("loading account %d for %s", account_id, user)
        log.info("account %d viewed", account_id)
        return {"id": account_id, "owner": user}

    @app.post("/webhooks/alerts")
    async def alert_received(request: Request) -> dict[str, str]:
        """Where the demo's alerts go: stands in for a pager or a chat channel."""
        body = await request.json()
        alerts_log.warning("ALERT %s", body.get("text"))
        return {"status": "received"}

    @app.get("/fail")
    async def fail(user: User) -> dict[str, str]:
        log.debug("loading loyalty points")
        log.debug("loyalty service returned an empty body")
        log.info("applying loyalty discount")
        raise RuntimeError("loyalty service returned malformed data")

    return app


logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
app = create_app()
