"""Shared helpers: machine line, interleaved rounds, statistics and tables."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))


class BenchFailure(RuntimeError):
    """A variant did not do what it claims to do."""


def machine_line() -> str:
    return (
        f"machine: python {platform.python_version()} ({platform.python_implementation()}), "
        f"cpus={os.cpu_count()}, platform={platform.platform()}, machine={platform.machine()}"
    )


def build_compiled(env: dict[str, str] | None = None) -> bool:
    """Whether the hindsight_web that workers import (with `env`) is the compiled build."""
    cmd = [sys.executable, "-c", "import hindsight_web; print(hindsight_web.__compiled__)"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return done.stdout.strip() == "True"


def build_line() -> str:
    """Which build of hindsight_web the workers run."""
    if build_compiled():
        return "build: compiled (mypyc)"
    return "build: pure Python (scripts/build-compiled makes the compiled one)"


PURE_ONLY = ("hindsight-nostats",)
"""Variants that replace a method of hindsight's (analysis only): not possible on the
compiled build, whose classes are closed."""


@dataclass
class Series:
    name: str
    values: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def lo(self) -> float:
        return min(self.values)

    @property
    def hi(self) -> float:
        return max(self.values)


def run_worker(script: str, args: Sequence[str]) -> dict[str, object]:
    """Run `script --worker args...` in a fresh interpreter; return its JSON answer."""
    cmd = [sys.executable, os.path.join(HERE, script), "--worker", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise BenchFailure(
            f"worker {' '.join(args)} failed (exit {proc.returncode}):\n"
            f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        )
    answer: dict[str, object] = json.loads(lines[-1])
    if not answer.get("ok"):
        raise BenchFailure(f"worker {' '.join(args)} check failed: {answer}")
    return answer


def interleave(
    names: Sequence[str], rounds: int, measure: Callable[[str], tuple[float, str]]
) -> dict[str, Series]:
    """Measure every name once per round, in the order A B C A B C ... (reversed every
    other round so no variant always runs first); return all values per name."""
    out = {name: Series(name) for name in names}
    for r in range(rounds):
        order = list(names) if r % 2 == 0 else list(reversed(names))
        for name in order:
            value, note = measure(name)
            out[name].values.append(value)
            if note:
                out[name].notes.append(note)
    return out


@dataclass
class Budget:
    """A budget line: `kind` is 'ratio<=' / 'ratio>=' / 'diff<=' against the baseline."""

    kind: str
    limit: float

    def check(self, value: float, base: float) -> tuple[str, bool]:
        if self.kind == "ratio<=":
            ratio = value / base
            return f"<= {self.limit:g}x", ratio <= self.limit
        if self.kind == "ratio>=":
            ratio = value / base
            return f">= {self.limit:g}x", ratio >= self.limit
        if self.kind == "diff<=":
            return f"+{value - base:.2f} <= {self.limit:g}", value - base <= self.limit
        raise ValueError(self.kind)


def table(
    title: str,
    series: dict[str, Series],
    baseline: str | None,
    unit: str,
    budgets: dict[str, Budget] | None = None,
    labels: dict[str, str] | None = None,
    digits: int = 2,
) -> tuple[str, list[tuple[str, str, bool]]]:
    """A Markdown table; returns it and the budget verdicts (line, detail, passed)."""
    budgets = budgets or {}
    labels = labels or {}
    verdicts: list[tuple[str, str, bool]] = []
    rows = [
        f"### {title}",
        "",
        f"| variant | median {unit} | min-max | ratio vs {baseline or '-'} | budget | result |",
        "|---|---:|---:|---:|---|---|",
    ]
    base = series[baseline].median if baseline else None
    for name, s in series.items():
        ratio = f"{s.median / base:.3f}x" if base else "-"
        budget_text, result = "", ""
        if name in budgets and base is not None:
            budget_text, passed = budgets[name].check(s.median, base)
            result = "PASS" if passed else "MISS"
            verdicts.append(
                (f"{title}: {labels.get(name, name)}", f"{ratio} ({budget_text})", passed)
            )
        rows.append(
            f"| {labels.get(name, name)} | {s.median:.{digits}f} | "
            f"{s.lo:.{digits}f}-{s.hi:.{digits}f} | {ratio} | {budget_text} | {result} |"
        )
    return "\n".join(rows) + "\n", verdicts


def print_verdicts(title: str, verdicts: list[tuple[str, str, bool]]) -> None:
    """Print the budget lines of a run, each as PASS or MISS."""
    print(f"### {title}")
    print()
    for line, detail, ok in verdicts:
        print(f"- {'PASS' if ok else 'MISS'}: {line}: {detail}")
    print()


@contextlib.contextmanager
def redis_server(prefix: str) -> Iterator[str]:
    """A redis-server of its own on a free port of 127.0.0.1, stopped at the end: its
    ``redis://`` URL, with `prefix`."""
    if shutil.which("redis-server") is None:
        raise BenchFailure("redis-server is not installed (apt-get install redis-server)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    server = subprocess.Popen([*argv, "--appendonly", "no"], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise BenchFailure("redis-server did not start") from None
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0?prefix={prefix}"
    finally:
        server.terminate()
        server.wait()
