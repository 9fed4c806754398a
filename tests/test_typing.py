"""The README's wiring type-checks under `mypy --strict` in the user's own code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

USER_CODE = """
from fastapi import FastAPI
from flask import Flask
from starlette.applications import Starlette

import hindsight_web
from hindsight_web import Hindsight, HindsightMiddleware, HindsightWSGIMiddleware

app = FastAPI()
app.add_middleware(HindsightMiddleware, slow_ms=500)

hs = Hindsight(slow_ms=800)
starlette_app = Starlette()
starlette_app.add_middleware(HindsightMiddleware, hindsight=hs)

flask_app = Flask(__name__)
wrapped = HindsightWSGIMiddleware(flask_app.wsgi_app, hindsight=hs)


@app.get("/cart")
def cart() -> str:
    hindsight_web.set_user("alice", session_id="s-1")
    hindsight_web.bind(tenant="acme")
    return "ok"
"""


@pytest.mark.timeout(300)
def test_wiring_from_the_readme_passes_mypy_strict(tmp_path: Path) -> None:
    source = tmp_path / "user_app.py"
    source.write_text(USER_CODE)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--cache-dir",
            str(tmp_path / "cache"),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
