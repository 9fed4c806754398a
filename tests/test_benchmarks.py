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


WINDOW_VARIANTS = [
    f"hindsight-window-{kind}-{lines}"
    for kind in ("off", "filling", "full", "small")
    for lines in (0, 5)
]


@pytest.mark.parametrize("variant", WINDOW_VARIANTS)
def test_window_variants_of_the_request_worker_prove_their_work(variant: str) -> None:
    """The variants `instructions.py --window` counts: each checks what its window holds
    (nothing, every request, or full and evicting) and that all of it was settled."""
    done = subprocess.run(
        [sys.executable, "benchmarks/micro.py", "--worker", "request", "asgi", variant, "100"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert '"ok": true' in done.stdout, done.stdout[-2000:]


def test_instructions_window_tables_name_every_variant(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The tables of `instructions.py --window`, from made-up counts (valgrind is slow)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import instructions

    made_up = {"off": 1000.0, "filling": 1100.0, "full": 1040.0, "small": 1060.0}

    def per_request(framework: str, variant: str, small: int, large: int) -> float:
        return 500.0 if variant == "bare" else made_up[variant.split("-")[2]]

    monkeypatch.setattr(instructions, "per_request", per_request)
    instructions.window_tables(["asgi", "flask"], 100, 200, 2)
    out = capsys.readouterr().out
    for label in ("window off", "window filling", "window full", "window of 100 requests"):
        assert label in out, label
    assert "| asgi | 5 | 1,000 | 1,100 (1.100x) | 1,040 (1.040x) | 1,060 (1.060x) | PASS |" in out


@pytest.mark.server
@pytest.mark.timeout(300)
def test_window_benchmark_runs_and_every_measure_proves_its_work() -> None:
    """Bytes per record and request, a full window against its estimate, and searches in
    process and through uvicorn; each worker checks what it kept, settled and found."""
    out = run_smoke("window.py", 250)
    for title in (
        "### Bytes per record: buffered and kept in the window",
        "### A full window",
        "### Garbage collection with the window full",
        "### Search latency in process",
        "### Search latency through HTTP",
    ):
        assert title in out, title
    for kind in ("plain", "str", "dict", "exc", "mix"):
        assert f"| {kind}: " in out, kind
    assert out.count("| by message substring, found nowhere |") == 2


@pytest.mark.timeout(300)
def test_sinks_benchmark_runs_and_every_sink_proves_its_work() -> None:
    """Each throughput worker checks that its sink got every record; each request-path
    worker that nothing was lost on the way to the writer and the down sink sent nothing."""
    out = run_smoke("sinks.py", 250)
    assert "### Release throughput per sink" in out
    for sink in ("logging", "jsonl", "http", "otel"):
        assert f"| {sink} | " in out, sink
    assert "| http sink down | " in out
