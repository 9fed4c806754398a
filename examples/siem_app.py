"""An app whose released requests also go to a SIEM (``examples/siem_receiver.py``) and to
a JSON lines file; a rule sends the releases of ``/refunds`` to the SIEM only.

Run from the repository root (the receiver first)::

    python examples/siem_receiver.py --port 9000 --token demo-siem-token &
    uvicorn examples.siem_app:app --port 8000
"""

from __future__ import annotations

import logging
import os

from fastapi import FastAPI, HTTPException

from hindsight_web import HindsightMiddleware, set_user

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s | %(message)s")
log = logging.getLogger("shop")

app = FastAPI()
app.add_middleware(
    HindsightMiddleware,
    sinks=[
        {
            "id": "siem",
            "type": "http",
            "url": os.environ.get("SIEM_URL", "http://127.0.0.1:9000/ingest"),
            "headers": {
                "Authorization": "Bearer " + os.environ.get("SIEM_TOKEN", "demo-siem-token")
            },
        },
        {"id": "file", "type": "jsonl", "path": os.environ.get("SIEM_FILE", "released.jsonl")},
    ],
    rules=[
        {"id": "refunds", "action": "release", "match": {"path": "/refunds/*"}, "sinks": ["siem"]}
    ],
)


@app.get("/orders/{order_id}")
async def order(order_id: int) -> dict[str, int]:
    set_user("alice")
    log.debug("loading order %d", order_id)
    if order_id == 13:
        log.debug("order %d has no payment", order_id)
        raise HTTPException(500, "payment missing")
    return {"order_id": order_id}


@app.get("/refunds/{refund_id}")
async def refund(refund_id: int) -> dict[str, int]:
    log.debug("refund %d checked against the ledger", refund_id)
    return {"refund_id": refund_id}
