"""Request context through FastAPI, Starlette and Flask, in process."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
from fastapi import BackgroundTasks, Depends, FastAPI, Header
from flask import Flask

import hindsight_web
from hindsight_web import HindsightMiddleware, HindsightWSGIMiddleware, hash_session
from hindsight_web.release import flush_all

from .conftest import ListHandler

log = logging.getLogger("app")


def fastapi_app() -> FastAPI:
    app = FastAPI()

    def current_user(x_user: str = Header(default="anonymous")) -> str:
        hindsight_web.set_user(x_user, session_id=f"s-{x_user}")
        log.debug("authenticated %s", x_user)
        return x_user

    @app.get("/sync-fail")
    def sync_fail(user: str = Depends(current_user)) -> dict[str, str]:
        hindsight_web.bind(tenant="acme")
        log.debug("sync endpoint in the thread pool")
        raise RuntimeError("sync failure")

    @app.get("/task")
    async def with_task(user: str = Depends(current_user)) -> dict[str, str]:
        async def child() -> None:
            log.debug("child task")

        await asyncio.create_task(child())
        raise RuntimeError("after the task")

    @app.get("/background")
    async def with_background(background: BackgroundTasks) -> dict[str, str]:
        def later() -> None:
            log.debug("background task ran")
            log.error("background task failed")

        background.add_task(later)
        return {"ok": "yes"}

    app.add_middleware(HindsightMiddleware)
    return app


async def get(app: Any, path: str, **kwargs: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get(path, **kwargs)
    flush_all()  # releases are written by a background thread
    return response


def test_set_user_from_dependency_and_sync_endpoint(out: ListHandler) -> None:
    response = asyncio.run(get(fastapi_app(), "/sync-fail", headers={"X-User": "alice"}))
    assert response.status_code == 500
    app_records = [r for r in out.records if r.name == "app"]
    assert [r.getMessage() for r in app_records] == [
        "authenticated alice",
        "sync endpoint in the thread pool",
    ]
    assert {r.user_id for r in app_records} == {"alice"}  # type: ignore[attr-defined]
    assert {r.session_id for r in app_records} == {hash_session("s-alice")}  # type: ignore[attr-defined]
    assert app_records[1].tenant == "acme"  # type: ignore[attr-defined]


def test_logs_of_tasks_created_in_the_request_belong_to_it(out: ListHandler) -> None:
    asyncio.run(get(fastapi_app(), "/task", headers={"X-User": "bob"}))
    assert [r.getMessage() for r in out.records if r.name == "app"] == [
        "authenticated bob",
        "child task",
    ]


def test_background_task_belongs_to_the_request(out: ListHandler) -> None:
    response = asyncio.run(get(fastapi_app(), "/background"))
    rid = response.headers["x-request-id"]
    assert response.status_code == 200
    app_records = [r for r in out.records if r.name == "app"]
    assert [r.getMessage() for r in app_records] == ["background task failed"]
    assert app_records[0].request_id == rid  # type: ignore[attr-defined]


def test_flask_user_and_release(out: ListHandler) -> None:
    app = Flask(__name__)

    @app.before_request
    def identify() -> None:
        from flask import request

        hindsight_web.set_user(request.headers.get("X-User"))

    @app.get("/fail")
    def fail() -> str:
        log.debug("flask detail")
        raise ValueError("flask failure")

    app.wsgi_app = HindsightWSGIMiddleware(app.wsgi_app)  # type: ignore[method-assign]
    response = app.test_client().get("/fail", headers={"X-User": "carol"})
    assert response.status_code == 500
    response.close()  # as a server does: the request ends when the response is closed
    flush_all()
    rid = response.headers["X-Request-ID"]
    released = [r for r in out.records if r.name == "app"]
    assert [r.getMessage() for r in released] == ["flask detail"]
    assert released[0].user_id == "carol"  # type: ignore[attr-defined]
    assert released[0].request_id == rid  # type: ignore[attr-defined]
    assert any("GET /fail -> 500" in m for m in out.messages())


def test_wrapping_the_whole_app_sees_the_500_of_an_unhandled_exception(out: ListHandler) -> None:
    inner = FastAPI()

    @inner.get("/boom")
    async def boom() -> None:
        log.debug("before the crash")
        raise RuntimeError("crash")

    response = asyncio.run(get(HindsightMiddleware(inner), "/boom"))
    assert response.status_code == 500
    rid = response.headers["x-request-id"]
    summary = next(m for m in out.messages() if m.startswith("hindsight release"))
    assert "GET /boom -> 500, raised RuntimeError" in summary
    assert f"request_id={rid}" in summary
