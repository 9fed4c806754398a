"""Instructions per request, counted by valgrind: the noise-free view of the fixed cost.

On a shared 2-core VM, timings of the same variant move by 10-50 % from one run
to the next; the number of machine instructions the interpreter executes for a
request does not. Each variant of `micro.py`'s request benchmark runs under
``valgrind --tool=cachegrind`` twice, with two request counts; the difference of
the two totals, divided by the difference of the request counts, is the cost of
one request with start-up and warm-up cancelled out.

Instructions are not time (a cache miss costs more than an add), but a budget such
as "<= 1.05x bare" can be read on them without noise, and a change to the hot path
can be judged on one run.

Each count is the median of ``--runs`` independent runs (single runs move by about
1.5k instructions with memory layout). The default table and ``--records`` show
both builds side by side, the pure-Python modules (``HINDSIGHT_PURE_PYTHON=1``) and
the compiled ones (mypyc, put in place by ``scripts/build-compiled``); ``--build``
picks one.

With ``--records``, it counts one ``logger.debug()`` call captured then discarded
against the stdlib making (and handing to a no-op handler) its LogRecord.

With ``--stores``, the table compares hindsight on a SQLite file and on a Redis
(a redis-server started for the run on 127.0.0.1) with ``memory://``: the request
path reads no store, so the three should cost the same.

With ``--count``, the tables compare hindsight with count rules in force against
hindsight with no rule: 100 count rules that do not match a request (on status 401,
which the rule index skips for a 200; and on path globs, which no index holds: each is
checked), and
one that matches and counts every request (goal: within 5 % of no rule). Each count
is the median of ``--runs`` runs.

With ``--window``, the tables compare keeping each request in the hindsight window
with freeing it when it ends (``window_s=0``), with no and with 5 DEBUG lines per
request. The window `full` has the defaults (300 s, 32 MB) and was filled up to
its bytes before the run: each new request evicts the oldest one, the steady state
of a process that has served for a while, and the goal (within 5 % of window off)
is read on it. `filling` has the defaults too, from empty (nothing leaves it during
the run); `small` holds about 100 requests (full, evicting, in a small heap). The
window's settling, the background thread's work, is counted: the driver settles
every 100 requests (see `micro.py`). Each count is the median of ``--runs`` runs.

Usage: python benchmarks/instructions.py [--smoke] [--stores | --records | --window | --count]
       [--runs N] [--build both|pure|compiled]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from common import HERE, PURE_ONLY, BenchFailure, build_compiled, machine_line, redis_server
from micro import COUNT_VARIANTS, SMALL_WINDOW, WINDOW_KINDS, WINDOW_LABELS

VARIANTS = ["bare", "minimal", "hindsight", "hindsight-nostats"]
WINDOW_LINES = (0, 5)
WINDOW_VARIANTS = [
    "bare",
    *(f"hindsight-window-{kind}-{lines}" for lines in WINDOW_LINES for kind in WINDOW_KINDS),
]
WINDOW_GOAL = 1.05  # per request, window kept against window off
COUNT_GOAL = 1.05  # per request, count rules in force against no rule
STORE_VARIANTS = ["bare", "hindsight", "hindsight-sqlite", "hindsight-redis"]
FRAMEWORKS = ["asgi", "starlette", "fastapi", "flask"]
LABELS = {
    "bare": "bare",
    "minimal": "minimal capture middleware (reference)",
    "hindsight": "hindsight, no lines",
    "hindsight-nostats": "hindsight, statistics off (analysis only)",
    "hindsight-sqlite": "hindsight, SQLite store",
    "hindsight-redis": "hindsight, Redis store",
    "hindsight-count-100": "100 count rules on status 401, not matching",
    "hindsight-count-100-general": "100 count rules on path globs, not matching",
    "hindsight-count-1": "1 count rule, counting every request",
}
_REFS = re.compile(r"I\s+refs:\s+([\d,]+)")


def requests_made(n: int) -> int:
    """How many requests `micro.py --worker request ... n` makes (warm-up + 3 timings)."""
    return max(50, n // 10) + 3 * n


BUILDS = ("pure", "compiled")
BUILD_LABELS = {"pure": "pure Python", "compiled": "compiled"}


def build_env(build: str | None) -> dict[str, str] | None:
    """The environment of a worker of `build` (None: this process's)."""
    if build is None:
        return None
    return {**os.environ, "HINDSIGHT_PURE_PYTHON": "1" if build == "pure" else "0"}


def builds_asked(asked: str) -> list[str]:
    """The builds `--build` asks for, checking that the compiled one is in place."""
    builds = list(BUILDS) if asked == "both" else [asked]
    if "compiled" in builds and not build_compiled(build_env("compiled")):
        raise SystemExit(
            "the compiled build is not in place: run scripts/build-compiled first (or --build pure)"
        )
    return builds


def count(framework: str, variant: str, n: int, build: str | None = None) -> int:
    """Instructions executed by one worker run of `n` requests."""
    worker = ["request", framework, variant, str(n)]
    return _valgrind(worker, f"{framework} {variant}", build)


def _valgrind(worker: list[str], what: str, build: str | None = None) -> int:
    cmd = [
        "valgrind",
        "--tool=cachegrind",
        "--cache-sim=no",
        "--cachegrind-out-file=/dev/null",
        sys.executable,
        os.path.join(HERE, "micro.py"),
        "--worker",
        *worker,
    ]
    done = subprocess.run(
        cmd, capture_output=True, text=True, cwd=HERE, check=False, env=build_env(build)
    )
    found = _REFS.search(done.stderr)
    if done.returncode != 0 or found is None or '"ok": true' not in done.stdout:
        raise BenchFailure(f"{what}: {done.stdout[-500:]} {done.stderr[-500:]}")
    return int(found.group(1).replace(",", ""))


def per_record(variant: str, small: int, large: int, build: str | None = None) -> float:
    """Instructions of one `logger.debug()` call (micro.py's record worker)."""
    low = _valgrind(["record", variant, str(small)], f"record {variant}", build)
    high = _valgrind(["record", variant, str(large)], f"record {variant}", build)
    return (high - low) / (large - small)


RECORD_BUDGETS = {"pure": 0.25, "compiled": 0.22}
"""Budgets of one discarded record, in LogRecords of the stdlib, per build."""


def records_table(small: int, large: int, builds: list[str], runs: int) -> None:
    """One DEBUG record captured then discarded against the stdlib making its LogRecord,
    per build, medians of `runs` runs."""
    stdlib_variants = ["stdlib-disabled", "stdlib-enabled-noop"]
    ours = ["hindsight-discarded-redact-off", "hindsight-discarded"]
    kinds: list[tuple[str, str | None]] = [(v, None) for v in stdlib_variants]
    kinds += [(v, b) for v in ours for b in builds]
    jobs = [(v, b, r) for v, b in kinds for r in range(runs)]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        found = list(pool.map(lambda job: per_record(job[0], small, large, job[1]), jobs))
    runs_by: dict[tuple[str, str | None], list[float]] = {}
    for (variant, build, _), n in zip(jobs, found, strict=True):
        runs_by.setdefault((variant, build), []).append(n)
    counts = {key: statistics.median(values) for key, values in runs_by.items()}
    stdlib = counts[("stdlib-enabled-noop", None)]
    print("| one logger.debug() call | build | instructions | ratio vs the stdlib's LogRecord |")
    print("|---|---|---:|---:|")
    for (variant, build), n in counts.items():
        label = "-" if build is None else BUILD_LABELS[build]
        print(f"| {variant} | {label} | {n:,.0f} | {n / stdlib:.3f}x |")
    print()
    for build in builds:
        ratio = counts[("hindsight-discarded", build)] / stdlib
        budget = RECORD_BUDGETS[build]
        verdict = "PASS" if ratio <= budget else "MISS"
        print(
            f"{BUILD_LABELS[build]}: captured then discarded {ratio:.3f}x of the stdlib "
            f"(budget <= {budget}x): {verdict}"
        )
        off = counts[("hindsight-discarded-redact-off", build)]
        redaction = counts[("hindsight-discarded", build)] / off - 1
        verdict = "PASS" if redaction <= 0.10 else "MISS"
        print(f"  redaction on (default keys, no match) against off: {redaction:+.1%}", end=" ")
        print(f"(goal <= +10%): {verdict}")


def per_request(
    framework: str, variant: str, small: int, large: int, build: str | None = None
) -> float:
    low = count(framework, variant, small, build)
    high = count(framework, variant, large, build)
    return (high - low) / (requests_made(large) - requests_made(small))


def runs_of(
    frameworks: list[str], variants: list[str], small: int, large: int, runs: int
) -> dict[tuple[str, str], list[float]]:
    """Per (framework, variant), the instructions per request of each of `runs` runs."""
    jobs = [(f, v, r) for f in frameworks for v in variants for r in range(runs)]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        found = list(pool.map(lambda job: per_request(job[0], job[1], small, large), jobs))
    counts: dict[tuple[str, str], list[float]] = {}
    for (framework, variant, _), n in zip(jobs, found, strict=True):
        counts.setdefault((framework, variant), []).append(n)
    return counts


def window_tables(frameworks: list[str], small: int, large: int, runs: int) -> None:
    """Window kept against window off, per framework and DEBUG lines per request."""
    counts = runs_of(frameworks, WINDOW_VARIANTS, small, large, runs)
    median = {key: statistics.median(values) for key, values in counts.items()}
    for framework in frameworks:
        print(f"### {framework}")
        print()
        print(
            f"| variant | instructions/request (median of {runs}) | min-max of the runs "
            "| vs window off | added by the window |"
        )
        print("|---|---:|---:|---:|---:|")
        values = counts[(framework, "bare")]
        bare = median[(framework, "bare")]
        print(f"| bare | {bare:,.0f} | {min(values):,.0f}-{max(values):,.0f} | | |")
        for lines in WINDOW_LINES:
            off = median[(framework, f"hindsight-window-off-{lines}")]
            for kind, label in WINDOW_LABELS.items():
                variant = f"hindsight-window-{kind}-{lines}"
                n, values = median[(framework, variant)], counts[(framework, variant)]
                ratio, added = (
                    ("", "") if kind == "off" else (f"{n / off:.4f}x", f"{n - off:+,.0f}")
                )
                print(
                    f"| hindsight, {lines} DEBUG lines, {label} | {n:,.0f} "
                    f"| {min(values):,.0f}-{max(values):,.0f} | {ratio} | {added} |"
                )
        print()
    print(
        f"### Keeping each request in the window, against freeing it: instructions per "
        f"request (goal: window full <= {WINDOW_GOAL}x window off)"
    )
    print()
    print(
        "| framework | DEBUG lines | window off | filling | full (32 MB) "
        f"| {SMALL_WINDOW} requests | goal |"
    )
    print("|---|---:|---:|---:|---:|---:|---|")
    for framework in frameworks:
        for lines in WINDOW_LINES:
            off = median[(framework, f"hindsight-window-off-{lines}")]
            cells = []
            for kind in ("filling", "full", "small"):
                n = median[(framework, f"hindsight-window-{kind}-{lines}")]
                cells.append(f"{n:,.0f} ({n / off:.3f}x)")
            full = median[(framework, f"hindsight-window-full-{lines}")] / off
            verdict = "PASS" if full <= WINDOW_GOAL else "MISS"
            print(f"| {framework} | {lines} | {off:,.0f} | {' | '.join(cells)} | {verdict} |")
    print()


def count_tables(frameworks: list[str], small: int, large: int, runs: int) -> None:
    """Per framework: hindsight with count rules against hindsight with no rule."""
    variants = ["bare", "hindsight", *COUNT_VARIANTS]
    found = runs_of(frameworks, variants, small, large, runs)
    for framework in frameworks:
        counts = {v: statistics.median(found[(framework, v)]) for v in variants}
        print(f"### {framework}")
        print()
        print("| variant | instructions/request | vs bare | vs no rule | verdict |")
        print("|---|---:|---:|---:|---|")
        for variant in variants:
            n = counts[variant]
            ratio = n / counts["hindsight"]
            verdict = ""
            if variant in COUNT_VARIANTS:
                verdict = "PASS" if ratio <= COUNT_GOAL else "MISS"
            print(
                f"| {LABELS[variant]} | {n:,.0f} | {n / counts['bare']:.3f}x | "
                f"{ratio:.3f}x | {verdict} |"
            )
        print()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="one framework, few requests")
    parser.add_argument("--stores", action="store_true", help="memory, SQLite and Redis stores")
    parser.add_argument("--records", action="store_true", help="per logger.debug() call")
    parser.add_argument("--window", action="store_true", help="the window kept against off")
    parser.add_argument("--count", action="store_true", help="count rules against no rule")
    parser.add_argument("--runs", type=int, default=3, help="runs per count (median)")
    parser.add_argument(
        "--build", choices=["both", *BUILDS], default="both", help="the table's and --records'"
    )
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    if args.records:
        print(machine_line())
        sizes = (2000, 4000) if args.smoke else (20_000, 100_000)
        records_table(*sizes, builds_asked(args.build), 1 if args.smoke else args.runs)
        return 0
    frameworks = ["asgi"] if args.smoke else FRAMEWORKS
    small, large = (100, 200) if args.smoke else (200, 1000)
    if args.count or args.window:
        runs = 1 if args.smoke else args.runs
        print(machine_line())
        print(
            f"instructions: valgrind cachegrind, requests {requests_made(small)} and "
            f"{requests_made(large)} per variant, difference per request, median of {runs} runs"
        )
        print()
        (count_tables if args.count else window_tables)(frameworks, small, large, runs)
        return 0
    print(machine_line())
    if args.stores:
        stores_table(frameworks, small, large)
        return 0
    runs = 1 if args.smoke else args.runs
    print(
        f"instructions: valgrind cachegrind, requests {requests_made(small)} and "
        f"{requests_made(large)} per variant, difference per request, median of {runs} runs"
    )
    print()
    builds_tables(frameworks, small, large, runs, builds_asked(args.build))
    return 0


# Budgets of the compiled build per framework: a ratio to bare, or instructions added.
COMPILED_BUDGETS = {"fastapi": ("ratio", 1.05), "flask": ("ratio", 1.06), "asgi": ("added", 15_000)}


def builds_tables(
    frameworks: list[str], small: int, large: int, runs: int, builds: list[str]
) -> None:
    """Per framework, each variant's instructions per request in each build, side by side."""
    jobs = [
        (f, v, b, r)
        for f in frameworks
        for v in VARIANTS
        for b in (["pure"] if v in ("bare", "minimal") else builds)
        if not (b == "compiled" and v in PURE_ONLY)
        for r in range(runs)
    ]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        found = list(pool.map(lambda j: per_request(j[0], j[1], small, large, j[2]), jobs))
    runs_by: dict[tuple[str, str, str], list[float]] = {}
    for (framework, variant, build, _), n in zip(jobs, found, strict=True):
        runs_by.setdefault((framework, variant, build), []).append(n)
    counts = {key: statistics.median(values) for key, values in runs_by.items()}
    for framework in frameworks:
        bare = counts[(framework, "bare", "pure")]
        print(f"### {framework}")
        print()
        head = " | ".join(f"{BUILD_LABELS[b]}: instructions | ratio | added" for b in builds)
        print(f"| variant | {head} |")
        print("|---|" + "---:|---:|---:|" * len(builds))
        for variant in VARIANTS:
            cells = []
            for build in builds:
                key = (framework, variant, "pure" if variant in ("bare", "minimal") else build)
                m = counts.get(key)
                if m is None:
                    cells.append("n/a | | ")
                else:
                    cells.append(f"{m:,.0f} | {m / bare:.3f}x | {m - bare:+,.0f}")
            print(f"| {LABELS[variant]} | {' | '.join(cells)} |")
        print()
        for build in builds:
            added = counts[(framework, "hindsight", build)] - bare
            line = f"{BUILD_LABELS[build]}: hindsight adds {added:,.0f} ({1 + added / bare:.3f}x)"
            budget = COMPILED_BUDGETS.get(framework) if build == "compiled" else None
            if budget is not None:
                kind, limit = budget
                met = added <= limit if kind == "added" else 1 + added / bare <= limit
                shown = f"+{limit:,.0f}" if kind == "added" else f"{limit}x"
                line += f"; budget <= {shown}: {'PASS' if met else 'MISS'}"
            print(line)
        print()


def stores_table(frameworks: list[str], small: int, large: int) -> None:
    """hindsight on a SQLite file and on a Redis against memory:// (the running build)."""
    variants = STORE_VARIANTS
    print(
        f"instructions: valgrind cachegrind, requests {requests_made(small)} and "
        f"{requests_made(large)} per variant, difference per request"
    )
    print()
    with redis_for(variants):
        jobs = [(f, v) for f in frameworks for v in variants]
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            results = pool.map(lambda job: per_request(job[0], job[1], small, large), jobs)
            counts = dict(zip(jobs, results, strict=True))
    for framework in frameworks:
        print(f"### {framework}")
        print()
        print("| variant | instructions/request | ratio vs bare | added |")
        print("|---|---:|---:|---:|")
        bare = counts[(framework, "bare")]
        for variant in variants:
            n = counts[(framework, variant)]
            print(f"| {LABELS[variant]} | {n:,.0f} | {n / bare:.3f}x | {n - bare:+,.0f} |")
        print()
        memory = counts[(framework, "hindsight")]
        for variant in ("hindsight-sqlite", "hindsight-redis"):
            ratio = counts[(framework, variant)] / memory
            verdict = "PASS" if ratio <= 1.02 else "MISS"
            print(f"{LABELS[variant]}: {ratio:.4f}x of memory:// (budget <= 1.02x): {verdict}")
        print()


@contextlib.contextmanager
def redis_for(variants: list[str]) -> Iterator[None]:
    """A redis-server for the Redis variant, named in HINDSIGHT_BENCH_REDIS."""
    if "hindsight-redis" not in variants:
        yield
        return
    with redis_server("bench") as url:
        os.environ["HINDSIGHT_BENCH_REDIS"] = url
        yield


if __name__ == "__main__":
    sys.exit(main())
