"""Sinks in real multi-worker servers: four gunicorn workers writing one JSON lines file,
rotated while they write, and four uvicorn workers POSTing to one endpoint."""

from __future__ import annotations

import json
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from .servers import REPO, gunicorn_argv, launch, uvicorn_argv, write_app
from .sink_servers import Receiver

pytestmark = pytest.mark.server
__all__ = ["launch"]  # a fixture

WORKERS = 4
REQUESTS = 400

FLASK_APP = """
import logging, os, sys
from flask import Flask
from hindsight_web import HindsightWSGIMiddleware

logging.basicConfig(level=logging.INFO, format={FORMAT}, stream=sys.stderr)
log = logging.getLogger("shop")
app = Flask(__name__)
app.wsgi_app = HindsightWSGIMiddleware(
    app.wsgi_app, slow_ms=None, max_releases_per_s=10_000,
    sinks=[{"id": "file", "type": "jsonl", "path": os.environ["HS_JSONL"],
            "max_bytes": 200_000, "backups": 1000}],
)

@app.get("/fail/<int:n>")
def fail(n):
    for i in range(5):
        log.debug("step %d of request %d: %s", i, n, "x" * (n % 7) * 40)
    return {"pid": os.getpid()}, 500
"""

FASTAPI_APP = """
import logging, os, sys
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from hindsight_web import HindsightMiddleware

logging.basicConfig(level=logging.INFO, format={FORMAT}, stream=sys.stderr)
log = logging.getLogger("shop")
app = FastAPI()
app.add_middleware(
    HindsightMiddleware, slow_ms=None, max_releases_per_s=10_000,
    sinks=[{"id": "siem", "type": "http", "url": os.environ["HS_SIEM"]}],
)

@app.get("/fail/{n}")
async def fail(n: int):
    log.debug("step of request %d", n)
    return JSONResponse({"pid": os.getpid()}, status_code=500)
"""


def _hammer(base_url: str, n: int) -> Counter[int]:
    def one(i: int) -> int:
        with httpx.Client(base_url=base_url, timeout=20) as client:
            response = client.get(f"/fail/{i}", headers={"connection": "close"})
        assert response.status_code == 500
        pid: int = response.json()["pid"]
        return pid

    with ThreadPoolExecutor(16) as pool:
        return Counter(pool.map(one, range(n)))


def test_four_gunicorn_workers_write_one_jsonl_file_without_cutting_a_line(
    launch: launch, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "out" / "released.jsonl"
    target.parent.mkdir()
    monkeypatch.setenv("HS_JSONL", str(target))
    write_app(tmp_path, "flask_sinks", FLASK_APP)
    # --preload: the sinks are made in the master, and each worker, forked from it,
    # starts with a queue and a thread of its own.
    argv = gunicorn_argv(tmp_path, "flask_sinks", "--preload", "--threads", "4", workers=WORKERS)
    server = launch(argv, "gunicorn")
    pids = _hammer(server.base_url, REQUESTS)
    assert len(pids) == WORKERS  # every worker wrote
    server.stop()  # each worker writes what it holds at exit

    files = [p for p in target.parent.iterdir() if not p.name.endswith(".lock")]
    assert len(files) > 3  # rotated while four processes wrote
    objects = []
    for path in files:
        assert path.stat().st_size <= 200_000
        for line in path.read_text().splitlines():
            objects.append(json.loads(line))  # a cut or interleaved line would not parse
    summaries = [o for o in objects if o["kind"] == "release"]
    records = [o for o in objects if o["kind"] == "record"]
    assert len(summaries) == REQUESTS
    assert sum(o["records"] for o in summaries) == len(records) == 5 * REQUESTS
    assert sorted(o["path"] for o in summaries) == sorted(f"/fail/{i}" for i in range(REQUESTS))
    per_request = Counter(o["request_id"] for o in records)
    assert set(per_request.values()) == {5}


def test_four_uvicorn_workers_post_to_one_endpoint(
    launch: launch, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver = Receiver().start()
    try:
        monkeypatch.setenv("HS_SIEM", receiver.url)
        write_app(tmp_path, "fastapi_sinks", FASTAPI_APP)
        argv = uvicorn_argv(tmp_path, "fastapi_sinks")
        server = launch(lambda port: [*argv(port), "--workers", str(WORKERS)], "uvicorn")
        pids = _hammer(server.base_url, 200)
        assert len(pids) > 1
        receiver.wait_for(lambda: len(receiver.objects()) == 400)
        kinds = Counter((o["request_id"], o["kind"]) for o in receiver.objects())
        assert set(kinds.values()) == {1}
    finally:
        receiver.stop()


def test_the_readme_siem_example_works_as_printed(
    launch: launch, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """examples/siem_receiver.py and examples/siem_app.py, started as the README says."""
    monkeypatch.setenv("SIEM_FILE", str(tmp_path / "released.jsonl"))
    receiver = launch(
        lambda port: [
            sys.executable,
            str(REPO / "examples" / "siem_receiver.py"),
            "--port",
            str(port),
            "--token",
            "demo-siem-token",
        ],
        "receiver",
    )
    monkeypatch.setenv("SIEM_URL", f"http://127.0.0.1:{receiver.port}/ingest")
    app = launch(uvicorn_argv(REPO, "examples.siem_app"), "app")
    with httpx.Client(base_url=app.base_url, timeout=10) as client:
        assert client.get("/orders/13").status_code == 500
        assert client.get("/refunds/7").status_code == 200
        assert client.get("/orders/1").status_code == 200

    def received() -> list[dict[str, object]]:
        text = receiver.stdout_path.read_text()
        return [json.loads(line) for line in text.splitlines()]

    receiver.wait_for(lambda: len(received()) == 5, "five objects at the receiver")
    paths = [o["path"] for o in received() if o["kind"] == "release"]
    assert paths == ["/orders/13", "/refunds/7"]
    app.wait_for(lambda: (tmp_path / "released.jsonl").exists(), "the jsonl file")
    app.wait_for(lambda: len((tmp_path / "released.jsonl").read_text().splitlines()) == 3, "lines")
    in_file = [json.loads(x) for x in (tmp_path / "released.jsonl").read_text().splitlines()]
    assert [o["path"] for o in in_file if o["kind"] == "release"] == ["/orders/13"]
    assert "HTTP Request: POST" not in app.output()  # the sink's own traffic stays out
