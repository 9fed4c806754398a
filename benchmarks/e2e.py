"""End to end: real servers on 127.0.0.1 loaded by wrk, with and without hindsight.

uvicorn (1 worker) serving FastAPI, and gunicorn (1 sync worker) serving Flask; the
endpoint logs 10 DEBUG lines per request, which the app's configuration does not
write (DEBUG disabled). Per stack, the servers run side by side: the bare app, the app
with the minimal capture middleware (the reference), and with hindsight, pure Python
and, when scripts/build-compiled put it in place, compiled. wrk loads them in
interleaved rounds (A B C D, then D C B A ...). After the rounds, each server's /_count
must show that it served what wrk counted and, with hindsight, captured 10 records per
request, released none, and ran the build claimed.

Usage: python benchmarks/e2e.py [--smoke] [--rounds N] [--duration S]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any

from common import (
    HERE,
    BenchFailure,
    Budget,
    Series,
    build_compiled,
    machine_line,
    print_verdicts,
    table,
)

VENV_BIN = os.path.dirname(sys.executable)
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# Each server of a stack: HINDSIGHT (off, minimal, on) and HINDSIGHT_PURE_PYTHON.
VARIANTS = {
    "without": ("0", "1"),
    "minimal": ("minimal", "1"),
    "pure": ("1", "1"),
    "compiled": ("1", "0"),
}
LABELS = {
    "without": "without hindsight (DEBUG disabled)",
    "minimal": "reference: minimal capture middleware",
    "pure": "with hindsight, pure Python",
    "compiled": "with hindsight, compiled",
}


def start(stack: str, variant: str, port: int) -> subprocess.Popen[bytes]:
    mode, pure = VARIANTS[variant]
    env = dict(os.environ, HINDSIGHT=mode, HINDSIGHT_PURE_PYTHON=pure)
    if stack == "uvicorn":
        env["BENCH_APP"] = "fastapi"
        cmd = [
            os.path.join(VENV_BIN, "uvicorn"),
            "e2e_apps:fastapi_app",
            "--app-dir",
            HERE,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--log-level",
            "warning",
            "--no-access-log",
        ]
    else:
        env["BENCH_APP"] = "flask"
        cmd = [
            os.path.join(VENV_BIN, "gunicorn"),
            "--chdir",
            HERE,
            "-w",
            "1",
            "-k",
            "sync",
            "-b",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
            "e2e_apps:flask_app",
        ]
    proc = subprocess.Popen(cmd, env=env)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_count", timeout=1) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.1)
    proc.terminate()
    raise BenchFailure(f"{stack} ({variant}) did not start on port {port}")


def counts(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_count", timeout=5) as r:
        data: dict[str, Any] = json.loads(r.read())
        return data


def parse_wrk(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if not m:
        raise BenchFailure(f"no Requests/sec in wrk output:\n{text}")
    out["rps"] = float(m.group(1))
    for pct in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        if not m:
            raise BenchFailure(f"no {pct}% latency in wrk output:\n{text}")
        out[f"p{pct}"] = float(m.group(1)) * _UNITS[m.group(2)]
    m = re.search(r"(\d+) requests in", text)
    out["requests"] = float(m.group(1)) if m else 0.0
    errs = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    out["non2xx"] = float(errs.group(1)) if errs else 0.0
    sock = re.search(r"Socket errors: (.*)", text)
    out["socket_errors"] = sum(map(float, re.findall(r"\d+", sock.group(1)))) if sock else 0.0
    return out


def wrk(port: int, duration: float, connections: int) -> dict[str, float]:
    cmd = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--latency",
        f"http://127.0.0.1:{port}/",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return parse_wrk(proc.stdout)


def run_stack(
    stack: str, rounds: int, duration: float, connections: int, variants: list[str]
) -> tuple[str, list[Any]]:
    ports = {name: free_port() for name in variants}
    procs = {name: start(stack, name, ports[name]) for name in variants}
    try:
        for name in variants:  # warm-up
            wrk(ports[name], max(1.0, duration / 3), connections)
        before = {name: counts(ports[name]) for name in ports}
        results: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
        for r in range(rounds):
            for name in variants if r % 2 == 0 else variants[::-1]:
                results[name].append(wrk(ports[name], duration, connections))
        after = {name: counts(ports[name]) for name in ports}
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()

    for name in ports:
        served = after[name]["requests"] - before[name]["requests"]
        counted = sum(x["requests"] for x in results[name])
        bad = sum(x["non2xx"] + x["socket_errors"] for x in results[name])
        if served < counted or bad or counted == 0:
            raise BenchFailure(
                f"{stack}/{name}: served {served}, wrk counted {counted}, errors {bad}"
            )
        if after[name]["hindsight"] != (name in ("pure", "compiled")):
            raise BenchFailure(f"{stack}/{name}: server not configured as claimed")
        if after[name]["minimal"] != (name == "minimal"):
            raise BenchFailure(f"{stack}/{name}: server not configured as claimed")
        if name in ("pure", "compiled"):
            captured = after[name]["records_captured"] - before[name]["records_captured"]
            released = after[name]["releases"] - before[name]["releases"]
            # Requests in flight when a count was read may fall on either side of it.
            if abs(captured - 10 * served) > 10 * connections or released:
                raise BenchFailure(
                    f"{stack}/{name}: captured {captured} for {served} requests, "
                    f"released {released}"
                )
            if after[name]["build"] != name:
                raise BenchFailure(f"{stack}/{name}: ran the {after[name]['build']} build")

    labels = {name: LABELS[name] for name in variants}
    ours = [name for name in variants if name in ("pure", "compiled")]
    rps = {n: Series(n, [x["rps"] for x in results[n]]) for n in ports}
    p50 = {n: Series(n, [x["p50"] for x in results[n]]) for n in ports}
    p99 = {n: Series(n, [x["p99"] for x in results[n]]) for n in ports}
    rps_limit = 0.8 if stack == "uvicorn" else 0.9
    app = "FastAPI" if stack == "uvicorn" else "Flask"
    title = f"{stack} + {app}, 10 DEBUG lines/request, wrk -t1 -c{connections} -d{duration:g}s"
    text = ""
    verdicts = []
    t, v = table(
        f"{title}: req/s",
        rps,
        "without",
        "req/s",
        {name: Budget("ratio>=", rps_limit) for name in ours},
        labels,
        digits=0,
    )
    text += t + "\n"
    verdicts += v
    t, _ = table(f"{title}: p50 latency", p50, "without", "ms", None, labels, digits=3)
    text += t + "\n"
    t, v = table(
        f"{title}: p99 latency",
        p99,
        "without",
        "ms",
        {name: Budget("ratio<=", 1.3) for name in ours},
        labels,
        digits=3,
    )
    text += t
    verdicts += v
    return text, verdicts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="1 round of 1 s per server")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--duration", type=float, default=None)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("e2e: wrk not found (apt-get install -y wrk, or run benchmarks/run)")
        return 2
    rounds = args.rounds or (1 if args.smoke else 5)
    duration = args.duration or (1.0 if args.smoke else 5.0)
    variants = ["without", "minimal", "pure"]
    if build_compiled(dict(os.environ, HINDSIGHT_PURE_PYTHON="0")):
        variants.append("compiled")
    print(machine_line())
    print(f"e2e: rounds={rounds} (interleaved), duration={duration:g}s, smoke={args.smoke}")
    if "compiled" not in variants:
        print("the compiled build is not in place (scripts/build-compiled): pure Python only")
    print()
    verdicts: list[Any] = []
    for stack in ("uvicorn", "gunicorn"):
        text, v = run_stack(stack, rounds, duration, args.connections, variants)
        verdicts += v
        print(text, flush=True)
    print_verdicts("Budget lines (e2e)", verdicts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
