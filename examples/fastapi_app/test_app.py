"""What a user of the FastAPI example sees in its log output."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

import httpx
import pytest
from fastapi import FastAPI

from examples.conftest import LineHandler
from examples.fastapi_app.app import LOG_FORMAT, create_app
from hindsight_web.release import flush_all

SUMMARY = re.compile(r"hindsight release: .* request_id=(\w+) ")


@pytest.fixture
def logs(capture_logs: Callable[[str], LineHandler]) -> LineHandler:
    return capture_logs(LOG_FORMAT)


def get(app: FastAPI, path: str, **headers: str) -> httpx.Response:
    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
            return await client.get(
                path, headers={k.replace("_", "-"): v for k, v in headers.items()}
            )

    response = asyncio.run(run())
    flush_all()  # releases are written by a background thread
    return response


def of_request(logs: LineHandler, request_id: str) -> list[str]:
    return [line for line in logs.lines if f"rid={request_id} " in line]


def summaries(logs: LineHandler) -> list[str]:
    return [line for line in logs.lines if "hindsight release:" in line]


def test_fast_request_writes_only_its_info_lines(logs: LineHandler) -> None:
    response = get(create_app(slow_ms=1000), "/items/1", X_User="alice")

    assert response.status_code == 200
    request_id = response.headers["X-Request-ID"]
    lines = of_request(logs, request_id)
    assert len(lines) == 1
    assert " INFO  pid=" in lines[0]
    assert " shop rid=" in lines[0]
    assert lines[0].endswith(f"rid={request_id} user=alice | served item 1")
    assert not [line for line in logs.lines if " DEBUG " in line]
    assert summaries(logs) == []


def test_failing_request_releases_its_debug_lines_after_a_summary(logs: LineHandler) -> None:
    response = get(create_app(slow_ms=1000), "/fail", X_User="bob")

    assert response.status_code == 500
    [summary] = summaries(logs)
    assert "GET /fail" in summary
    assert "raised RuntimeError" in summary
    assert "(reason: exception)" in summary
    request_id = SUMMARY.search(summary).group(1)  # type: ignore[union-attr]
    lines = of_request(logs, request_id)
    assert all(f"rid={request_id} user=bob | " in line for line in lines)
    assert [line.split(" | ", 1)[1] for line in lines] == [
        "applying loyalty discount",
        summary.split(" | ", 1)[1],
        "authenticated user bob from X-User header",
        "loading loyalty points",
        "loyalty service returned an empty body",
    ]
    assert [line.split()[2] for line in lines] == ["INFO", "INFO", "DEBUG", "DEBUG", "DEBUG"]


def test_slow_checkout_is_released_as_slow(logs: LineHandler) -> None:
    response = get(create_app(slow_ms=50), "/checkout?delay_ms=120", X_User="carol")

    assert response.status_code == 200
    request_id = response.headers["X-Request-ID"]
    [summary] = summaries(logs)
    assert f"rid={request_id} user=carol | hindsight release: GET /checkout -> 200" in summary
    assert "(reason: slow)" in summary
    debug = [line for line in of_request(logs, request_id) if " DEBUG " in line]
    assert [line.split(" | ", 1)[1] for line in debug] == [
        "authenticated user carol from X-User header",
        "reserving stock for cart of user carol",
        "calling payment provider (expected latency 120 ms)",
        "payment provider answered: authorised",
    ]
    assert logs.lines.index(summary) < logs.lines.index(debug[0])


def test_quick_checkout_is_not_released(logs: LineHandler) -> None:
    response = get(create_app(slow_ms=1000), "/checkout?delay_ms=0", X_User="carol")

    assert response.status_code == 200
    lines = of_request(logs, response.headers["X-Request-ID"])
    assert [line.split(" | ", 1)[1] for line in lines] == ["checkout complete"]
    assert summaries(logs) == []


def test_request_id_header_is_set_or_kept(logs: LineHandler) -> None:
    app = create_app(slow_ms=1000)

    assert re.fullmatch(r"[0-9a-f]{32}", get(app, "/healthz").headers["X-Request-ID"])
    response = get(app, "/items/2", X_Request_ID="trace-42")
    assert response.headers["X-Request-ID"] == "trace-42"
    assert of_request(logs, "trace-42") == [line for line in logs.lines if "served item 2" in line]
