"""The two builds: the compiled modules (mypyc) and the pure-Python ones, which runs, the
opt-out, and the wheels as a user installs them."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

import hindsight_web
from hindsight_web import _build

from .apps import run_asgi

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "hindsight_web"
TOKEN = "build-test-token-0123456789"


def expected_build() -> str:
    """The build under test: as scripts/test says, else the one the checkout holds."""
    asked = os.environ.get("HINDSIGHT_TEST_BUILD")
    if asked:
        return asked
    return "compiled" if glob.glob(str(PACKAGE / "*.so")) else "pure"


# Run in a fresh interpreter: which file each module of the package came from, and a
# request that fails served through the middleware (its DEBUG line released).
PROBE = r"""
import asyncio, json, logging, sys
import hindsight_web

lines = []
class Keep(logging.Handler):
    def emit(self, record):
        lines.append(record.getMessage())
logging.getLogger().addHandler(Keep())

async def app(scope, receive, send):
    logging.getLogger("app").debug("charging card")
    await send({"type": "http.response.start", "status": 500, "headers": []})
    await send({"type": "http.response.body", "body": b""})

async def serve():
    mw = hindsight_web.HindsightMiddleware(app, admin_path=None)
    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}
    async def send(message):
        pass
    scope = {"type": "http", "method": "GET", "path": "/pay", "raw_path": b"/pay",
             "query_string": b"", "headers": [], "client": ("127.0.0.1", 5000)}
    await mw(scope, receive, send)
    mw.hindsight.flush()

asyncio.run(serve())
files = {name: getattr(module, "__file__", None) for name, module in sys.modules.items()
         if name == "hindsight_web" or name.startswith("hindsight_web.")}
print(json.dumps({"compiled": hindsight_web.__compiled__, "files": files, "lines": lines}))
"""


def probe(python: str, cwd: Path, pure: str | None = None) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k != "HINDSIGHT_PURE_PYTHON"}
    env.pop("PYTHONPATH", None)
    if pure is not None:
        env["HINDSIGHT_PURE_PYTHON"] = pure
    done = subprocess.run(
        [python, "-c", PROBE], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    answer: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return answer


def test_the_build_under_test_is_the_one_asked() -> None:
    assert hindsight_web.__compiled__ == (expected_build() == "compiled")
    compiled = {Path(f).name.split(".")[0] for f in glob.glob(str(PACKAGE / "*.so"))}
    for name in compiled:  # each module with a compiled file beside it runs from it
        module = sys.modules.get(f"hindsight_web.{name}")
        if module is not None:
            assert _build.is_compiled(module), name


def test_the_pure_python_opt_out_loads_every_module_from_its_source() -> None:
    found = probe(sys.executable, ROOT, pure="1")
    assert found["compiled"] is False
    files = found["files"]
    assert isinstance(files, dict)
    assert "hindsight_web.core" in files
    assert all(str(f).endswith(".py") for f in files.values()), files
    assert "charging card" in found["lines"]  # type: ignore[operator]
    # "0" (or unset) keeps what is installed.
    assert probe(sys.executable, ROOT, pure="0")["compiled"] == (expected_build() == "compiled")


def test_health_says_which_build_runs() -> None:
    mw = hindsight_web.HindsightMiddleware(lambda *a: None, admin_token=TOKEN)
    answer = run_asgi(mw, "/_hindsight/health", headers=[("Authorization", f"Bearer {TOKEN}")])
    assert answer["status"] == 200
    assert json.loads(answer["body"])["build"] == expected_build()


def install(wheel: str, where: Path) -> str:
    """A new virtual environment with `wheel` installed (nothing else); its python."""
    venv.create(where, with_pip=True)
    python = str(where / "bin" / "python")
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", wheel],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return python


@pytest.mark.skipif(expected_build() != "compiled", reason="run in the compiled run")
def test_the_compiled_wheel_installs_and_runs_compiled_or_pure(tmp_path: Path) -> None:
    (wheel,) = glob.glob(str(ROOT / "dist" / "compiled" / "*.whl"))
    assert f"cp{sys.version_info.major}{sys.version_info.minor}" in Path(wheel).name
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert "hindsight_web/core.py" in names  # the sources too: the opt-out loads them
    assert any(n.startswith("hindsight_web/core.") and n.endswith(".so") for n in names)
    python = install(wheel, tmp_path / "venv")
    found = probe(python, tmp_path)  # not the checkout: the installed package
    assert found["compiled"] is True
    files = found["files"]
    assert isinstance(files, dict)
    assert str(files["hindsight_web.core"]).startswith(str(tmp_path / "venv"))
    assert str(files["hindsight_web.core"]).endswith(".so")
    assert "charging card" in found["lines"]  # type: ignore[operator]
    pure = probe(python, tmp_path, pure="1")
    assert pure["compiled"] is False
    assert "charging card" in pure["lines"]  # type: ignore[operator]


@pytest.mark.skipif(expected_build() != "pure", reason="run in the pure-Python run")
def test_the_pure_wheel_has_no_compiled_module_and_runs(tmp_path: Path) -> None:
    out = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=600,
        env={k: v for k, v in os.environ.items() if k != "HATCH_BUILD_HOOKS_ENABLE"},
    )
    (wheel,) = glob.glob(str(out / "*.whl"))
    assert Path(wheel).name.endswith("-py3-none-any.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert not [n for n in archive.namelist() if n.endswith(".so")]
    found = probe(install(wheel, tmp_path / "venv"), tmp_path)
    assert found["compiled"] is False
    assert "charging card" in found["lines"]  # type: ignore[operator]
