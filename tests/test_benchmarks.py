"""The in-process benchmarks in smoke mode (tiny n), so that they do not rot.

Every variant runs in its own interpreter and checks that it did what it claims
(records captured, lines written, requests seen); a failed check fails the run.
The numbers of a smoke run mean nothing and are not asserted.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

TABLES = (
    "Fixed cost: raw ASGI app, HindsightMiddleware, no records",
    "FastAPI endpoint",
    "Starlette endpoint",
    "Rule lookup: FastAPI endpoint that calls set_user(), user-scoped rules",
    "Flask endpoint (HindsightWSGIMiddleware)",
    "Per record: one logger.debug() call (1000 per request)",
    "Release: 100 DEBUG records written through the same handler (formatter, devnull)",
    "Memory per buffered record (tracemalloc)",
)

# Every budget line of the issue that the micro benchmarks measure gets a verdict.
BUDGET_LINES = (
    "Fixed cost: raw ASGI app, HindsightMiddleware, no records: hindsight, no lines",
    "FastAPI endpoint: hindsight, no lines",
    "Flask endpoint (HindsightWSGIMiddleware): hindsight, no lines",
    "hindsight, 10,000 user rules",
    "Per record: one logger.debug() call (1000 per request): hindsight, captured then discarded",
    "hindsight: release only (finish)",
    "hindsight: capture + release",
    "Memory: bytes kept per buffered record, less its formatted message",
)


def run_smoke(script: str, timeout_s: float) -> str:
    """`benchmarks/<script> --smoke`, which fails if a variant's own check fails; its output."""
    done = subprocess.run(
        [sys.executable, f"benchmarks/{script}", "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout


@pytest.mark.timeout(900)
def test_micro_benchmarks_run_and_every_variant_proves_its_work() -> None:
    out = run_smoke("micro.py", 850)
    for title in TABLES:
        assert f"### {title}" in out, title
    assert "reference: minimal capture middleware" in out
    verdicts = out.split("### Budget lines (micro)", 1)[1].splitlines()
    for budget in BUDGET_LINES:
        assert any(
            line.startswith(("- PASS: ", "- MISS: ")) and budget in line for line in verdicts
        ), f"no verdict for {budget!r}"


@pytest.mark.timeout(300)
def test_storm_benchmark_runs_and_every_variant_proves_its_work() -> None:
    """Each variant checks its own lines: with the limit, summaries for every request and
    the records of the releases not held back; without it, every record."""
    out = run_smoke("storm.py", 250)
    for label in ("bare (DEBUG off)", "max_releases_per_s=20", "no release limit"):
        assert label in out, label
