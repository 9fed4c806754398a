"""Python bytecodes hindsight executes per request, per function: where the fixed cost goes.

Drives `micro.py`'s app through hindsight's middleware with `sys.settrace` opcode
events on, counting the bytecodes run in hindsight's own functions. The counts do
not depend on the machine's noise; multiply by 50-70 for machine instructions
(CPython 3.11).

Usage: python benchmarks/bytecodes.py [asgi|starlette|fastapi|flask] [LINES]
"""

from __future__ import annotations

import sys
from collections import Counter
from types import FrameType
from typing import Any

import micro

import hindsight_web

WARM = 2000  # past the first slowest-requests fills of the statistics
TRACED = 50


def main() -> int:
    framework = sys.argv[1] if len(sys.argv) > 1 else "asgi"
    lines = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    micro.setup_logging()
    hs = hindsight_web.Hindsight(admin_path=None)
    app = micro.make_app(framework, lines)
    if framework == "flask":
        app.wsgi_app = hindsight_web.HindsightWSGIMiddleware(app.wsgi_app, hindsight=hs)
        drive = micro.drive_wsgi
    else:
        app = hindsight_web.HindsightMiddleware(app, hindsight=hs)
        drive = micro.drive_asgi
    drive(app, WARM, [])

    counts: Counter[str] = Counter()

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        if event == "opcode":
            code = frame.f_code
            if "hindsight_web" in code.co_filename:
                counts[f"{code.co_filename.rsplit('/', 1)[-1]}:{code.co_name}"] += 1
        return tracer

    sys.settrace(tracer)
    try:
        drive(app, TRACED, [])
    finally:
        sys.settrace(None)
    total = sum(counts.values()) / TRACED
    print(f"{framework}, {lines} lines: {total:.0f} hindsight bytecodes per request")
    for name, n in counts.most_common():
        if n / TRACED >= 1:
            print(f"{n / TRACED:8.0f}  {name}")
    print(
        "(tracing makes every traced request slower than the untraced ones before it, so\n"
        " each one joins the statistics' slowest requests: stats.py:_keep_slow and _kept,\n"
        " which in steady state run for a few requests a minute)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
