"""Micro benchmark of the rule lookups: us per `detail_for` / `decide` call.

Rule sets: empty; 1 user rule; 10,000 user rules (one per user); a handful of
general rules (method, path, header, status, duration). Requests: one of a user
that no rule names, and one of a user that a rule names. The index is meant to
make 10,000 user rules cost about what one does.

Usage: python benchmarks/rules_lookup.py [--rounds N] [--calls N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

from common import machine_line

from hindsight_web.rules import RuleSet, parse_rule

NOW = time.time()


class Request:
    """What a lookup reads from a request, like the core's RequestState."""

    __slots__ = ("client", "headers", "method", "path", "route", "session_id", "status", "user_id")

    def __init__(self, user_id: str | None) -> None:
        self.method = "GET"
        self.path = "/items/42"
        self.route: str | None = "/items/{item_id}"
        self.user_id = user_id
        self.session_id: str | None = None
        self.client: str | None = "192.0.2.10"
        self.status: int | None = 200
        self.headers = {"user-agent": "bench"}

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def mentions(self, needle: str) -> bool:
        return any(needle in text for text in ("one", "two"))


def user_rules(action: str, n: int) -> list[object]:
    return [
        {"action": action, "id": f"{action}-{i}", "match": {"user_id": f"user{i}"}, "ttl_s": 3600}
        for i in range(n)
    ]


def handful(action: str) -> list[object]:
    if action == "detail":
        matches: list[dict[str, object]] = [
            {"path": "/admin/*"},
            {"method": "POST", "path": "/checkout/*"},
            {"header": {"X-Debug": "1"}},
            {"client_ip": "10.0.0.0/8"},
            {"session_id": "s-1"},
        ]
    else:
        matches = [
            {"path": "/health", "method": "GET"},
            {"status": {"gte": 500}},
            {"duration_ms": {"gt": 2000}, "path": "/items/*"},
            {"route": "/checkout", "status": 402},
            {"header": {"X-Debug": "1"}},
        ]
    return [{"action": action, "match": m, "ttl_s": 3600} for m in matches]


def build(rules: list[object]) -> RuleSet:
    rs = RuleSet()
    rs.replace([parse_rule(rule, now=NOW) for rule in rules])
    return rs


def per_call_us(call: Callable[[], object], calls: int, rounds: int) -> tuple[float, float, float]:
    """Median, min and max over rounds of the mean us per call."""
    results = []
    for _ in range(rounds):
        start = time.perf_counter_ns()
        for _ in range(calls):
            call()
        results.append((time.perf_counter_ns() - start) / calls / 1000.0)
    return statistics.median(results), min(results), max(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=100_000)
    args = parser.parse_args()
    print(machine_line())
    print(f"median of {args.rounds} rounds of {args.calls} calls; us per call (min-max)\n")
    other, named = Request("somebody-else"), Request("user0")
    sets = {
        "empty": ([], []),
        "1 user rule": (user_rules("detail", 1), user_rules("release", 1)),
        "10,000 user rules": (user_rules("detail", 10_000), user_rules("release", 10_000)),
        "5 general rules": (handful("detail"), handful("release")),
    }
    print(f"{'rules':<20} {'request':<16} {'detail_for':>22} {'decide':>22}")
    for name, (detail_rules, end_rules) in sets.items():
        detail_set, end_set = build(detail_rules), build(end_rules)
        for who, request in (("another user", other), ("a named user", named)):
            if name in ("empty", "5 general rules") and who == "a named user":
                continue
            d = per_call_us(partial(detail_set.detail_for, request), args.calls, args.rounds)
            e = per_call_us(partial(end_set.decide, request, 12.5), args.calls, args.rounds)
            print(
                f"{name:<20} {who:<16} {d[0]:>8.3f} ({d[1]:.3f}-{d[2]:.3f}) "
                f"{e[0]:>8.3f} ({e[1]:.3f}-{e[2]:.3f})"
            )
    for held in (0, 10_000):
        rs = build(user_rules("release", held))
        extra = [parse_rule(r, now=NOW) for r in user_rules("drop", 200)]
        start = time.perf_counter_ns()
        for rule in extra:
            rs.add(rule)
        add_us = (time.perf_counter_ns() - start) / len(extra) / 1000.0
        print(f"add() to a set of {held:,} rules: {add_us:.1f} us per rule")


if __name__ == "__main__":
    main()
