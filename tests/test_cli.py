"""The hindsight-web command, run as a process against a real uvicorn serving the FastAPI example.

Each test asserts what a user sees: the command's stdout, stderr and exit code, and the lines
the app writes to its log. One server serves the module (each test uses its own rule ids and
users); the test of empty answers starts a fresh one, the test of records with a traceback
an app of its own, and the test of several workers two workers sharing a SQLite store. The
tests of count rules, alerts and tags share an app with two alert targets (real webhook
receivers: one takes the alerts, one refuses them); each uses its own rules and client
addresses (uvicorn takes the client's address from X-Forwarded-For, sent from 127.0.0.1).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from .servers import REPO, Server, free_port, launch, uvicorn_argv, write_app
from .sink_servers import Receiver, alerting_app

__all__ = ["launch"]

pytestmark = [pytest.mark.server, pytest.mark.timeout(60)]

CLI = Path(sys.executable).with_name("hindsight-web")
TOKEN = "cli-admin-token-0123456789"
READ_TOKEN = "cli-read-only-token"
ADMIN = "/_hindsight"
NO_TRACEBACK = "Traceback"


def example_argv(port: int) -> list[str]:
    """uvicorn serving examples.fastapi_app.app:app with both admin tokens.

    `Server.start` drops HINDSIGHT_ADMIN_TOKEN from the environment it passes on (so that a
    developer's shell cannot leak into other tests), hence env(1) in the command itself. The
    slow threshold is high so that only rules release anything, however slow the machine.
    """
    return [
        "env",
        f"HINDSIGHT_ADMIN_TOKEN={TOKEN}",
        f"HINDSIGHT_ADMIN_READ_TOKEN={READ_TOKEN}",
        "HINDSIGHT_SLOW_MS=60000",
        *uvicorn_argv(REPO, "examples.fastapi_app.app")(port),
    ]


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    port = free_port()
    server = Server(example_argv(port), tmp_path_factory.mktemp("cli"), "uvicorn")
    try:
        server.start(port)
        yield server
    finally:
        server.stop()


@pytest.fixture
def env(app: Server) -> dict[str, str]:
    """The environment of a user who set HINDSIGHT_URL and HINDSIGHT_ADMIN_TOKEN."""
    return {"HINDSIGHT_URL": app.base_url + ADMIN, "HINDSIGHT_ADMIN_TOKEN": TOKEN}


def run(*args: str, env: Mapping[str, str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    """Run the installed hindsight-web script on this tree's package, `stdin` its input;
    whatever happens, it prints no traceback."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HINDSIGHT_")}
    clean["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), clean.get("PYTHONPATH")) if p)
    done = subprocess.run(
        [str(CLI), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={**clean, **env},
        timeout=30,
        check=False,
    )
    assert NO_TRACEBACK not in done.stderr, done.stderr
    return done


def rows(stdout: str) -> list[dict[str, str]]:
    """The rows of a table the command printed, by column header (columns: 2+ spaces apart)."""
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    headers = re.split(r"\s{2,}", lines[0])
    return [dict(zip(headers, re.split(r"\s{2,}", line), strict=True)) for line in lines[1:]]


def row_of(stdout: str, column: str, value: str) -> dict[str, str]:
    found = [row for row in rows(stdout) if row[column] == value]
    assert len(found) == 1, stdout
    return found[0]


def rules_by_id(env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    listed = run("rules", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    return {rule["id"]: rule for rule in json.loads(listed.stdout)["rules"]}


def get_item(app: Server, user: str, item: int = 1) -> str:
    """Ask the app for an item as `user`; the request id."""
    response = httpx.get(f"{app.base_url}/items/{item}", headers={"X-User": user}, timeout=10)
    assert response.status_code == 200
    return response.headers["x-request-id"]


def lines_of(app: Server, rid: str) -> list[str]:
    return [line for line in app.raw_lines() if f"rid={rid} " in line]


def wait_until_served(app: Server, rid: str, user: str, item: int = 1) -> list[str]:
    """Wait for the request's INFO line (written whatever the rules); its lines until then."""
    app.wait_for_line(f"rid={rid} user={user} | served item {item}")
    return lines_of(app, rid)


# -- rules ---------------------------------------------------------------------------------


def test_add_inline_rule_then_list_it_as_a_table_and_as_json(env: dict[str, str]) -> None:
    rule = {
        "id": "cli-inline",
        "action": "release",
        "match": {"path": "/checkout*", "duration_ms": {"gt": 300}},
        "note": "ticket 4711",
    }
    added = run("rules", "add", json.dumps(rule), env=env)
    assert added.returncode == 0, added.stderr
    expected = {
        "id": "cli-inline",
        "action": "release",
        "match": '{"path":"/checkout*","duration_ms":{"gt":300}}',
        "level": "DEBUG",
        "priority": "0",
        "sample": "1",
        "dry_run": "no",
        "expires in": "never",
        "hits": "0",
        "note": "ticket 4711",
    }
    assert rows(added.stdout) == [expected]

    listed = run("rules", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    assert row_of(listed.stdout, "id", "cli-inline") == expected

    stored = rules_by_id(env)["cli-inline"]
    assert stored["match"] == rule["match"]
    assert stored["note"] == "ticket 4711"
    assert stored["expires_at"] is None
    # Removed again: later tests make slow checkouts that this rule would release.
    assert run("rules", "rm", "cli-inline", env=env).returncode == 0


def test_add_rules_from_a_file_holding_a_list(env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "rules.json"
    path.write_text(
        json.dumps(
            [
                {"id": "cli-file-1", "action": "drop", "match": {"path": "/healthz"}},
                {"id": "cli-file-2", "action": "release", "match": {"status": 404}, "ttl_s": 7200},
            ]
        )
    )
    added = run("rules", "add", str(path), env=env)
    assert added.returncode == 0, added.stderr
    assert [row["id"] for row in rows(added.stdout)] == ["cli-file-1", "cli-file-2"]
    listed = run("rules", "list", env=env).stdout
    assert row_of(listed, "id", "cli-file-1")["expires in"] == "never"
    assert row_of(listed, "id", "cli-file-2")["expires in"] in ("2h00m", "1h59m")
    assert row_of(listed, "id", "cli-file-2")["match"] == '{"status":404}'


def test_add_rules_from_stdin(env: dict[str, str]) -> None:
    document = {"rules": [{"id": "cli-stdin", "action": "release", "match": {"method": "PUT"}}]}
    added = run("rules", "add", "-", "--json", env=env, stdin=json.dumps(document))
    assert added.returncode == 0, added.stderr
    answer = json.loads(added.stdout)
    assert [rule["id"] for rule in answer["rules"]] == ["cli-stdin"]
    assert "cli-stdin" in rules_by_id(env)


def test_rm_removes_each_rule_and_names_the_missing_one(env: dict[str, str]) -> None:
    for rule_id in ("cli-rm-1", "cli-rm-2"):
        assert run("rules", "add", json.dumps({"id": rule_id, "action": "drop"}), env=env).stdout
    removed = run("rules", "rm", "cli-rm-1", "cli-rm-missing", "cli-rm-2", env=env)
    assert removed.returncode == 1
    assert removed.stdout.splitlines() == ["removed rule cli-rm-1", "removed rule cli-rm-2"]
    assert "HTTP 404" in removed.stderr
    assert "no rule with id 'cli-rm-missing'" in removed.stderr
    assert not {"cli-rm-1", "cli-rm-2"} & set(rules_by_id(env))


@pytest.mark.parametrize(
    ("rule", "field", "status"),
    [
        (
            {"action": "release", "match": {"duration_ms": {"gt": "fast"}}},
            "match.duration_ms.gt",
            400,
        ),
        ({"action": "explode"}, "action", 422),
        ({"action": "detail", "match": {"status": 500}}, "match.status", 422),
    ],
)
def test_an_invalid_rule_is_refused_naming_the_field(
    env: dict[str, str], rule: dict[str, Any], field: str, status: int
) -> None:
    before = rules_by_id(env)
    refused = run("rules", "add", json.dumps(rule), env=env)
    assert refused.returncode == 1
    assert f"(HTTP {status})" in refused.stderr
    assert f"[{field}: " in refused.stderr
    assert refused.stdout == ""
    assert rules_by_id(env).keys() == before.keys()


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ('{"action": "drop",', "the inline rule is not valid JSON"),
        ("no-such-rules.json", "cannot read rule file 'no-such-rules.json'"),
        ("[]", "holds no rules"),
    ],
)
def test_rule_input_that_cannot_be_read_is_a_usage_error(
    env: dict[str, str], source: str, message: str
) -> None:
    done = run("rules", "add", source, env=env)
    assert done.returncode == 2
    assert message in done.stderr


# -- detail --------------------------------------------------------------------------------


def test_detail_with_ttl_writes_the_users_debug_lines(app: Server, env: dict[str, str]) -> None:
    user = "ana/42"  # the slash must reach the admin as part of the user id
    before = wait_until_served(app, get_item(app, user), user)
    assert not [line for line in before if " DEBUG " in line]

    done = run("detail", user, "--ttl", "30m", "--note", "ticket 7", "--json", env=env)
    assert done.returncode == 0, done.stderr
    rule = json.loads(done.stdout)
    assert rule["action"] == "detail"
    assert rule["match"] == {"user_id": user}
    assert 1790 < rule["ttl_s"] <= 1800
    assert rule["note"] == "ticket 7"

    rid = get_item(app, user)
    lines = wait_until_served(app, rid, user)
    debug = [line for line in lines if " DEBUG " in line]
    assert any(line.endswith(f"user={user} | cache lookup item=1") for line in debug), lines
    assert any(line.endswith(f"user={user} | cache hit item=1 price=12.50") for line in debug)

    other = wait_until_served(app, get_item(app, "someone-else"), "someone-else")
    assert not [line for line in other if " DEBUG " in line]


def test_detail_prints_the_rule_it_made(env: dict[str, str]) -> None:
    done = run("detail", "bo", "--ttl", "2h", "--level", "INFO", env=env)
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(
        r"detail on for user 'bo' from INFO, expires in (2h00m|1h59m) \(rule \S+\)\n", done.stdout
    )
    assert run("undetail", "bo", env=env).returncode == 0


def test_undetail_turns_the_users_debug_lines_off(app: Server, env: dict[str, str]) -> None:
    user = "cli-undetail"
    assert run("detail", user, env=env).returncode == 0
    lines = wait_until_served(app, get_item(app, user), user)
    assert [line for line in lines if " DEBUG " in line]

    done = run("undetail", user, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"detail off for user '{user}'\n"
    lines = wait_until_served(app, get_item(app, user), user)
    assert not [line for line in lines if " DEBUG " in line]

    again = run("undetail", user, env=env)
    assert again.returncode == 1
    assert f"no detail rule for user '{user}'" in again.stderr
    assert "HTTP 404" in again.stderr


@pytest.mark.parametrize("ttl", ["5x", "0", "30 minutes", "-1m"])
def test_a_bad_ttl_is_a_usage_error_naming_the_forms(env: dict[str, str], ttl: str) -> None:
    done = run("detail", "ana", f"--ttl={ttl}", env=env)
    assert done.returncode == 2
    assert "argument --ttl" in done.stderr
    assert f"invalid value {ttl!r}" in done.stderr
    assert "90s, 30m, 2h, 1d" in done.stderr


# -- audit and stats -------------------------------------------------------------------------


def test_audit_shows_changes_by_token_name_and_filters_them(env: dict[str, str]) -> None:
    rule = {"id": "cli-audit", "action": "drop", "note": "noisy probe"}
    assert run("rules", "add", json.dumps(rule), env=env).returncode == 0
    assert run("rules", "rm", "cli-audit", env=env).returncode == 0

    done = run("audit", "--limit", "50", env=env)
    assert done.returncode == 0, done.stderr
    mine = [row for row in rows(done.stdout) if row["rule id"] == "cli-audit"]
    assert [(row["action"], row["by"], row["note"]) for row in mine] == [
        ("removed", "admin", "noisy probe"),
        ("added", "admin", "noisy probe"),
    ]

    removed = run("audit", "--action", "removed", "--by", "admin", "--since", "5m", env=env)
    assert removed.returncode == 0, removed.stderr
    assert {row["action"] for row in rows(removed.stdout)} == {"removed"}
    assert "cli-audit" in [row["rule id"] for row in rows(removed.stdout)]
    nobody = run("audit", "--by", "someone-else", env=env)
    assert nobody.returncode == 0, nobody.stderr
    assert nobody.stdout.strip() == "no rule changes"


def test_sinks_lists_the_outputs_and_their_counts(env: dict[str, str]) -> None:
    done = run("sinks", env=env)
    assert done.returncode == 0, done.stderr
    app = row_of(done.stdout, "id", "app")
    assert app["type"] == "logging"
    assert app["dropped"] == "0"
    answer = json.loads(run("sinks", "--json", env=env).stdout)
    assert answer["sinks"][0]["id"] == "app"


def test_stats_show_routes_slow_requests_and_sessions(app: Server, env: dict[str, str]) -> None:
    user = "cli-stats"
    wait_until_served(app, get_item(app, user, 3), user, 3)

    overview = run("stats", env=env)
    assert overview.returncode == 0, overview.stderr
    totals, _, table = overview.stdout.partition("\n\n")
    assert re.match(r"requests \d+  errors \d+  slow \d+  releases \d+", totals)
    route = row_of(table, "route", "/items/{item_id}")
    assert route["method"] == "GET"
    assert int(route["count"]) >= 1

    slow = run("stats", "--slow", "--limit", "1000", "--json", env=env)
    assert slow.returncode == 0, slow.stderr
    assert "/items/3" in [r["path"] for r in json.loads(slow.stdout)["requests"]]

    sessions = run("stats", "--sessions", "--limit", "1000", env=env)
    assert sessions.returncode == 0, sessions.stderr
    assert row_of(sessions.stdout, "user", user)["requests"] == "1"


def test_empty_answers_say_so(launch: Callable[..., Server]) -> None:
    fresh = launch(example_argv, "fresh")
    env = {"HINDSIGHT_URL": fresh.base_url + ADMIN, "HINDSIGHT_ADMIN_TOKEN": TOKEN}
    assert run("rules", "list", env=env).stdout == "no rules\n"
    assert run("audit", env=env).stdout == "no rule changes\n"
    assert run("stats", "--slow", env=env).stdout == "no requests recorded\n"
    assert run("stats", "--sessions", env=env).stdout == "no sessions recorded\n"
    assert run("stats", "--tags", env=env).stdout == "no tagged requests recorded\n"
    assert run("alerts", env=env).stdout == (
        "no alerts fired\n\nno alert targets (the app's 'alerts' option)\n"
    )


# -- count rules, alerts and tags ------------------------------------------------------------

WATCH_TOKEN = "cli-watch-token-0123456789"


@dataclass
class Watch:
    """The app with alert targets, and the receivers behind its targets."""

    server: Server
    env: dict[str, str]
    security: Receiver  # takes every alert
    pager: Receiver  # refuses every alert (404: failed at once, not retried)


@pytest.fixture(scope="module")
def watch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Watch]:
    with alerting_app(tmp_path_factory.mktemp("watch"), WATCH_TOKEN) as (server, security, pager):
        env = {"HINDSIGHT_URL": server.base_url + ADMIN, "HINDSIGHT_ADMIN_TOKEN": WATCH_TOKEN}
        yield Watch(server, env, security, pager)


def login(watch: Watch, client: str, rid: str | None = None, **query: str | int) -> str:
    """GET /login from `client` (X-Forwarded-For), answered with ``status`` (200); its id."""
    headers = {"X-Forwarded-For": client, **({"X-Request-ID": rid} if rid else {})}
    response = httpx.get(
        f"{watch.server.base_url}/login", params=query, headers=headers, timeout=10
    )
    assert response.status_code == int(query.get("status", 200))
    return response.headers["x-request-id"]


def add_rule(watch: Watch, rule: dict[str, Any]) -> None:
    added = run("rules", "add", json.dumps(rule), env=watch.env)
    assert added.returncode == 0, added.stderr


def poll_json(env: Mapping[str, str], args: list[str], done: Callable[[Any], bool]) -> Any:
    """The answer of ``hindsight-web ARGS --json`` once `done` holds (10 s at most): a
    count is shared and fires within ``store_sync_s``, an alert is posted from a thread."""
    deadline = time.monotonic() + 10
    while True:
        answer = json.loads(run(*args, "--json", env=env).stdout)
        if done(answer) or time.monotonic() > deadline:
            assert done(answer), answer
            return answer
        time.sleep(0.1)


def firings_of(answer: dict[str, Any], rule_id: str) -> list[dict[str, Any]]:
    return [fired for fired in answer["alerts"] if fired["rule"] == rule_id]


def target_of(answer: dict[str, Any], target: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [t for t in answer["targets"] if t["id"] == target]
    assert len(found) == 1, answer
    return found[0]


def test_alerts_lists_a_firing_then_the_targets_deliveries(watch: Watch) -> None:
    env = watch.env
    add_rule(
        watch,
        {
            "id": "cli-brute",
            "action": "count",
            "match": {"status": 401},
            "key": "client_ip",
            "threshold": 3,
            "window_s": 60,
            "then": [{"action": "detail", "ttl_s": 900}, {"alert": "security"}, {"alert": "pager"}],
            "note": "ticket 12",
        },
    )
    before = json.loads(run("alerts", "--json", env=env).stdout)
    assert firings_of(before, "cli-brute") == []
    rids = [login(watch, "203.0.113.9", f"cli-brute-{n}", status=401) for n in range(3)]
    login(watch, "198.51.100.1", status=401)  # another key, below the threshold

    answer = poll_json(
        env,
        ["alerts"],
        lambda a: (
            len(firings_of(a, "cli-brute")) == 1
            and target_of(a, "pager")["failed"] == 1
            and target_of(a, "security")["sent"] >= 1
        ),
    )
    (fired,) = firings_of(answer, "cli-brute")
    assert (fired["key_name"], fired["key"], fired["count"], fired["threshold"]) == (
        "client_ip",
        "203.0.113.9",
        3,
        3,
    )
    assert fired["made"] == ["cli-brute.detail.203.0.113.9"]
    assert [s["request_id"] for s in fired["samples"]] == rids
    (posted,) = [b for b in watch.security.bodies if b.get("rule") == "cli-brute"]
    assert posted["key"] == "203.0.113.9"

    done = run("alerts", env=env)
    assert done.returncode == 0, done.stderr
    firings, targets = done.stdout.split("\n\n")
    mine = row_of(firings, "rule", "cli-brute")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", mine.pop("at"))
    assert mine == {
        "rule": "cli-brute",
        "key": "client_ip=203.0.113.9",
        "count": "3/3",
        "window": "1m",
        "made": "cli-brute.detail.203.0.113.9",
        "sample": "cli-brute-0",
        "note": "ticket 12",
    }
    shown = {row["id"]: row for row in rows(targets)}
    assert set(shown) == {"security", "pager"}
    assert (shown["security"]["failed"], shown["security"]["last error"]) == ("0", "-")
    assert int(shown["security"]["sent"]) >= 1
    assert shown["security"]["target"] == watch.security.url
    assert (shown["pager"]["sent"], shown["pager"]["failed"]) == ("0", "1")
    assert "HTTP 404" in shown["pager"]["last error"]

    # the detail rule it made shows in the rule list, and the sample in the window
    assert "cli-brute.detail.203.0.113.9" in rules_by_id(env)
    assert run("show", "cli-brute-0", env=env).returncode == 0


def test_alerts_limit_and_none_fired(tmp_path: Path) -> None:
    """A fresh app: no firing yet, its targets with nothing sent; then two firings, the
    newest first, and --limit 1 shows only it."""
    with alerting_app(tmp_path, WATCH_TOKEN) as (server, security, pager):
        env = {"HINDSIGHT_URL": server.base_url + ADMIN, "HINDSIGHT_ADMIN_TOKEN": WATCH_TOKEN}
        done = run("alerts", env=env)
        assert done.returncode == 0, done.stderr
        nothing, targets = done.stdout.split("\n\n")
        assert nothing == "no alerts fired"
        assert [(r["id"], r["sent"], r["failed"]) for r in rows(targets)] == [
            ("security", "0", "0"),
            ("pager", "0", "0"),
        ]
        answer = json.loads(run("alerts", "--json", env=env).stdout)
        assert answer["alerts"] == []
        assert [t["id"] for t in answer["targets"]] == ["security", "pager"]

        rule: dict[str, Any] = {"action": "count", "match": {"status": 403}, "key": "client_ip"}
        rule |= {"threshold": 1, "window_s": 60, "then": [{"alert": "security"}]}
        assert run("rules", "add", json.dumps({"id": "cli-quiet", **rule}), env=env).stdout
        quiet = Watch(server, env, security, pager)
        login(quiet, "192.0.2.1", status=403)
        poll_json(env, ["alerts"], lambda a: len(a["alerts"]) == 1)
        login(quiet, "192.0.2.2", status=403)
        poll_json(env, ["alerts"], lambda a: len(a["alerts"]) == 2)
        listed = rows(run("alerts", env=env).stdout.split("\n\n")[0])
        assert [r["key"] for r in listed] == ["client_ip=192.0.2.2", "client_ip=192.0.2.1"]
        newest = rows(run("alerts", "--limit", "1", env=env).stdout.split("\n\n")[0])
        assert [r["key"] for r in newest] == ["client_ip=192.0.2.2"]


def test_alerts_limit_must_be_a_number_from_1_to_1000(watch: Watch) -> None:
    done = run("alerts", "--limit", "0", env=watch.env)
    assert done.returncode == 2
    assert "argument --limit: invalid value '0'" in done.stderr


def test_rules_list_shows_count_rules_top_keys_and_tag_rules_tags(watch: Watch) -> None:
    env = watch.env
    top = {
        "id": "cli-top",
        "action": "count",
        "match": {"header": {"x-case": "cli-top"}},
        "key": "client_ip",
        "threshold": 1000,
        "window_s": 600,
        "then": [{"action": "detail", "ttl_s": 900, "level": "INFO"}, {"alert": "security"}],
    }
    added = run("rules", "add", json.dumps(top), env=env)
    assert added.returncode == 0, added.stderr
    assert row_of(added.stdout, "id", "cli-top")["top keys"] == "-"  # none counted yet
    tags = {"action": "tag", "match": {"path": "/nowhere"}, "tags": {"compliance": "pci"}}
    add_rule(watch, {"id": "cli-pci", **tags, "note": "audit 2026"})
    for client, times in (("198.51.100.2", 3), ("203.0.113.9", 7)):
        for _ in range(times):
            headers = {"X-Forwarded-For": client, "X-Case": "cli-top"}
            assert httpx.get(f"{watch.server.base_url}/login", headers=headers).status_code == 200
    expected = [{"key": "203.0.113.9", "count": 7}, {"key": "198.51.100.2", "count": 3}]
    poll_json(env, ["rules", "list"], lambda a: rule_in(a, "cli-top").get("top_keys") == expected)

    listed = run("rules", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    row = row_of(listed.stdout, "id", "cli-top")
    assert (row["action"], row["key"], row["threshold"]) == ("count", "client_ip", "1000 in 10m")
    assert row["then"] == "detail 15m from INFO, alert security"
    assert row["top keys"] == "203.0.113.9 (7), 198.51.100.2 (3)"
    assert row["tags"] == "-"
    pci = row_of(listed.stdout, "id", "cli-pci")
    assert (pci["action"], pci["tags"], pci["note"]) == ("tag", "compliance=pci", "audit 2026")
    assert (pci["key"], pci["threshold"], pci["then"], pci["top keys"]) == ("-",) * 4


def rule_in(answer: dict[str, Any], rule_id: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [rule for rule in answer["rules"] if rule["id"] == rule_id]
    assert len(found) == 1, answer
    return found[0]


def test_stats_tags_counts_requests_errors_and_slow_ones_per_tag_value(watch: Watch) -> None:
    env = watch.env
    for plan in ("gold", "silver"):
        rule = {"action": "tag", "match": {"header": {"x-plan": plan}}, "tags": {"cli_plan": plan}}
        add_rule(watch, {"id": f"cli-tags-{plan}", **rule})

    def get(plan: str, **query: str | int) -> None:
        url = f"{watch.server.base_url}/login"
        response = httpx.get(url, params=query, headers={"X-Plan": plan}, timeout=10)
        assert response.status_code == int(query.get("status", 200))

    for _ in range(3):
        get("gold")
    get("gold", status=503)
    get("gold", status=503)
    get("gold", delay_ms=300)
    get("silver")
    get("bronze")  # no rule tags it

    def counted(answer: dict[str, Any]) -> dict[str, tuple[int, int, int]]:
        return {
            t["value"]: (t["requests"], t["errors"], t["slow"])
            for t in answer["tags"]
            if t["tag"] == "cli_plan"
        }

    poll_json(
        env, ["stats", "--tags"], lambda a: counted(a) == {"gold": (6, 2, 1), "silver": (1, 0, 0)}
    )
    done = run("stats", "--tags", env=env)
    assert done.returncode == 0, done.stderr
    mine = [r for r in rows(done.stdout) if r["tag"] == "cli_plan"]
    assert mine == [
        {"tag": "cli_plan", "value": "gold", "requests": "6", "errors": "2", "slow": "1"},
        {"tag": "cli_plan", "value": "silver", "requests": "1", "errors": "0", "slow": "0"},
    ]
    assert len(rows(run("stats", "--tags", "--limit", "1", env=env).stdout)) == 1
    both = run("stats", "--tags", "--slow", env=env)
    assert both.returncode == 2
    assert "not allowed with argument" in both.stderr


# -- the window: find, show and release what was discarded ---------------------------------


def get_as(app: Server, path: str, user: str, rid: str) -> None:
    """Ask the app for `path` as `user`, with `rid` as the request id; it answers 200."""
    headers = {"X-User": user, "X-Request-ID": rid}
    response = httpx.get(app.base_url + path, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == rid


def search(env: Mapping[str, str], *filters: str, count: int) -> dict[str, Any]:
    """`requests --json` with `filters`, asked again until it finds `count` requests (a
    request joins the window when it ends, which may be just after its answer was sent)."""
    deadline = time.monotonic() + 10
    while True:
        done = run("requests", *filters, "--limit", "1000", "--json", env=env)
        assert done.returncode == 0, done.stderr
        answer: dict[str, Any] = json.loads(done.stdout)
        if len(answer["requests"]) == count or time.monotonic() > deadline:
            assert len(answer["requests"]) == count, answer
            return answer
        time.sleep(0.1)


def debug_of(app: Server, rid: str) -> list[str]:
    """The messages of the request's DEBUG lines in the app's log, in order."""
    return [line.split(" | ", 1)[1] for line in lines_of(app, rid) if " DEBUG " in line]


def summaries_of(app: Server, rid: str) -> list[str]:
    return [line for line in lines_of(app, rid) if "| hindsight release: " in line]


def wait_released(app: Server, rid: str, debug: list[str]) -> None:
    app.wait_for(lambda: debug_of(app, rid) == debug, f"the DEBUG lines of {rid}")


ITEM_DEBUG = {
    1: ["cache lookup item=1", "cache hit item=1 price=12.50"],
    2: ["cache lookup item=2", "cache hit item=2 price=89.00"],
    3: ["cache lookup item=3", "cache hit item=3 price=35.00"],
}


def item_debug(user: str, item: int) -> list[str]:
    """The DEBUG lines the example writes for GET /items/{item} as `user`, in order."""
    return [f"authenticated user {user} from X-User header", *ITEM_DEBUG[item]]


def test_requests_finds_a_users_discarded_requests_newest_first(
    app: Server, env: dict[str, str]
) -> None:
    user = "win-find"
    get_as(app, "/items/1", user, "win-find-1")
    get_as(app, "/items/2", user, "win-find-2")
    get_as(app, "/checkout?delay_ms=300", user, "win-find-3")
    get_as(app, "/items/1", "win-find-someone-else", "win-find-other")
    search(env, "--user-id", user, count=3)

    done = run("requests", "--user-id", user, env=env)
    assert done.returncode == 0, done.stderr
    listed, _, footer = done.stdout.partition("\n\n")
    assert footer == "1 process answered\n"
    found = rows(listed)
    assert [
        (
            r["request id"],
            r["method"],
            r["path"],
            r["status"],
            r["user"],
            r["records"],
            r["released"],
        )
        for r in found
    ] == [
        ("win-find-3", "GET", "/checkout", "200", user, "4", "no"),
        ("win-find-2", "GET", "/items/2", "200", user, "3", "no"),
        ("win-find-1", "GET", "/items/1", "200", user, "3", "no"),
    ]
    assert float(found[0]["ms"]) >= 300
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r["at"]) for r in found)
    assert not debug_of(app, "win-find-1")  # found, not released

    def ids(*filters: str) -> list[str]:
        done = run("requests", "--user-id", user, *filters, env=env)
        assert done.returncode == 0, done.stderr
        return [r["request id"] for r in rows(done.stdout.partition("\n\n")[0])]

    assert ids("--path", "/items/*", "--status", "2xx", "--since", "-5m") == [
        "win-find-2",
        "win-find-1",
    ]
    assert ids("--min-duration-ms", "250") == ["win-find-3"]
    assert ids("--message", "price=89.00") == ["win-find-2"]
    assert ids("--until", "-5m") == []
    assert ids("--limit", "1") == ["win-find-3"]
    newest = run("requests", "--user-id", user, "--limit", "2", env=env).stdout
    assert newest.endswith(
        "\n\nthe newest 2 shown (--limit, at most 1000, for more); 1 process answered\n"
    )
    nothing = run("requests", "--user-id", "win-find-nobody", env=env)
    assert nothing.stdout == "no requests found\n\n1 process answered\n"


def test_show_prints_the_facts_and_the_records_of_a_request(
    app: Server, env: dict[str, str]
) -> None:
    user = "win-show"
    get_as(app, "/items/2", user, "win-show-1")
    search(env, "--user-id", user, count=1)

    done = run("show", "win-show-1", env=env)
    assert done.returncode == 0, done.stderr
    facts_text, _, records_text = done.stdout.partition("\n\n")
    facts = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in facts_text.splitlines())
    assert re.fullmatch(r"\d+(\.\d+)? ms", facts.pop("duration"))
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]+Z", facts.pop("at"))
    assert facts == {
        "request": "win-show-1",
        "method": "GET",
        "path": "/items/2",
        "route": "/items/{item_id}",
        "status": "200",
        "user": user,
        "session": "-",
        "client": "127.0.0.1",
        "released": "no",
    }
    heading, *records = records_text.splitlines()
    assert heading == "3 records kept:"
    record = re.compile(r"\d{4}-\d\d-\d\dT[\d:.]+Z DEBUG shop (?P<message>.+)")
    matched = [record.fullmatch(line) for line in records]
    assert [m["message"] if m else line for m, line in zip(matched, records, strict=True)] == (
        item_debug(user, 2)
    )

    as_json = json.loads(run("show", "win-show-1", "--json", env=env).stdout)
    assert [r["message"] for r in as_json["records"]] == item_debug(user, 2)
    assert as_json["records"][1]["func"] == "get_item"
    assert as_json["records"][1]["pathname"].endswith("app.py")

    missing = run("show", "win-show-missing", env=env)
    assert missing.returncode == 1
    assert "(HTTP 404)" in missing.stderr
    assert "no request 'win-show-missing' in the window" in missing.stderr


TRACEBACK_APP = """
    import logging

    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    import hindsight_web
    from hindsight_web import HindsightMiddleware

    logging.basicConfig(level=logging.INFO, format={FORMAT})
    log = logging.getLogger("app")


    async def order(request):
        hindsight_web.set_user("win-trace")
        hindsight_web.bind(tenant="acme")
        try:
            {}["coupon"]
        except KeyError:
            log.debug("no coupon on order %s", request.path_params["order_id"], exc_info=True)
        return PlainTextResponse("ok")


    app = HindsightMiddleware(
        Starlette(routes=[Route("/orders/{order_id}", order)]),
        admin_token="trace-admin-token",
        slow_ms=60000,
    )
"""


def test_show_prints_a_records_traceback_and_requests_finds_bound_fields(
    launch: Callable[..., Server], tmp_path: Path
) -> None:
    write_app(tmp_path, "trace_app", TRACEBACK_APP)
    server = launch(uvicorn_argv(tmp_path, "trace_app"), "trace")
    env = {"HINDSIGHT_URL": server.base_url + ADMIN, "HINDSIGHT_ADMIN_TOKEN": "trace-admin-token"}
    response = httpx.get(
        f"{server.base_url}/orders/7", headers={"X-Request-ID": "win-trace-1"}, timeout=10
    )
    assert response.status_code == 200
    search(env, "--field", "tenant=acme", count=1)
    assert search(env, "--field", "tenant=other", count=0)["requests"] == []

    done = run("show", "win-trace-1", env=env)
    assert done.returncode == 0, done.stderr
    facts, _, records = done.stdout.partition("\n\n")
    assert 'fields    {"tenant":"acme"}' in facts.splitlines()
    heading, first, *traceback = records.splitlines()
    assert heading == "1 record kept:"
    assert re.fullmatch(r"\S+Z DEBUG app no coupon on order 7", first), first
    assert traceback[0] == "    Traceback (most recent call last):"
    assert any(line.endswith('{}["coupon"]') for line in traceback), traceback
    assert traceback[-1] == "    KeyError: 'coupon'"
    assert all(line.startswith("    ") for line in traceback)


def test_release_writes_the_records_once_and_a_second_release_writes_nothing(
    app: Server, env: dict[str, str]
) -> None:
    user = "win-release"
    get_as(app, "/items/1", user, "win-release-1")
    get_as(app, "/items/3", user, "win-release-2")
    search(env, "--user-id", user, count=2)
    question = "release the records of 2 requests (1 process answered)? [y/N] "

    unanswered = run("release", "--user-id", user, "--since", "-5m", env=env)
    assert unanswered.returncode == 7
    assert unanswered.stdout == ""
    assert unanswered.stderr == (
        f"{question}\nhindsight-web: not released: no answer on stdin (--yes releases without "
        "asking)\n"
    )
    declined = run("release", "--user-id", user, env=env, stdin="n\n")
    assert declined.returncode == 7
    assert declined.stderr == f"{question}\nhindsight-web: not released\n"
    assert not debug_of(app, "win-release-1")

    done = run(
        "release", "--user-id", user, "--since", "-5m", "--note", "ticket 9", env=env, stdin="y\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == question + "\n"
    assert done.stdout == "released 2 requests (1 process answered)\n"
    wait_released(app, "win-release-1", item_debug(user, 1))
    wait_released(app, "win-release-2", item_debug(user, 3))

    again = run("release", "--user-id", user, "--yes", env=env)
    assert again.returncode == 0, again.stderr
    assert again.stdout == "released 0 requests (1 process answered)\n"
    asked = run("release", "--user-id", user, env=env)
    assert asked.returncode == 0, asked.stderr
    assert asked.stdout == (
        "nothing to release: no request found that was not released (1 process answered)\n"
    )
    # Releases are written in order: once this later one is out, the second wrote nothing.
    get_as(app, "/items/2", "win-release-later", "win-release-later")
    search(env, "--user-id", "win-release-later", count=1)
    assert run("release", "--user-id", "win-release-later", "--yes", env=env).returncode == 0
    wait_released(app, "win-release-later", item_debug("win-release-later", 2))

    for rid, item in (("win-release-1", 1), ("win-release-2", 3)):
        assert debug_of(app, rid) == item_debug(user, item)
        [summary] = summaries_of(app, rid)
        assert f"hindsight release: GET /items/{item} -> 200 in " in summary
        assert "(reason: retro)" in summary
    listed = rows(run("requests", "--user-id", user, env=env).stdout.partition("\n\n")[0])
    assert [r["released"] for r in listed] == ["yes (retro)", "yes (retro)"]

    trail = rows(run("audit", "--limit", "50", env=env).stdout)
    [mine] = [r for r in trail if r["action"] == "released" and r["note"] == "ticket 9"]
    assert mine["count"] == "2"
    assert mine["by"] == "admin"
    assert mine["rule id"] == "-"
    assert json.loads(mine["query"])["match"] == {"user_id": user}


def test_detail_with_backfill_writes_the_users_recent_requests(
    app: Server, env: dict[str, str]
) -> None:
    user = "win-backfill"
    get_as(app, "/items/1", user, "win-backfill-1")
    get_as(app, "/items/2", user, "win-backfill-2")
    get_as(app, "/items/3", "win-backfill-other", "win-backfill-other")
    search(env, "--user-id", user, count=2)

    done = run("detail", user, "--backfill", "15m", "--ttl", "10m", env=env)
    assert done.returncode == 0, done.stderr
    made, backfilled = done.stdout.splitlines()
    assert re.fullmatch(
        rf"detail on for user '{user}' from DEBUG, expires in (10m00s|9m59s) \(rule \S+\)", made
    )
    assert backfilled == "released 2 requests of the last 15m from the window (1 process answered)"
    wait_released(app, "win-backfill-1", item_debug(user, 1))
    wait_released(app, "win-backfill-2", item_debug(user, 2))
    assert all(len(summaries_of(app, f"win-backfill-{i}")) == 1 for i in (1, 2))

    get_as(app, "/items/3", user, "win-backfill-3")  # detail now goes on live
    assert debug_of(app, "win-backfill-3") == item_debug(user, 3)
    other = json.loads(run("show", "win-backfill-other", "--json", env=env).stdout)
    assert other["released"] is False
    assert not debug_of(app, "win-backfill-other")
    assert run("undetail", user, env=env).returncode == 0


@pytest.mark.parametrize(
    ("args", "status", "named", "option"),
    [
        (["requests", "--since", "yesterday"], 400, "invalid 'since' 'yesterday'", "--since"),
        (["requests", "--client-ip", "nope"], 400, "invalid 'client_ip'", "--client-ip"),
        (
            ["release", "--client-ip", "nope", "--yes"],
            422,
            "invalid 'match.client_ip' \"nope\"",
            "--client-ip",
        ),
        (
            ["release", "--since", "-1m", "--until", "-2m", "--yes"],
            400,
            "invalid 'until': earlier than 'since'",
            "--until",
        ),
    ],
)
def test_a_bad_filter_is_refused_naming_the_option(
    env: dict[str, str], args: list[str], status: int, named: str, option: str
) -> None:
    done = run(*args, env=env)
    assert done.returncode == 1
    assert done.stdout == ""
    assert f"(HTTP {status}): {named}" in done.stderr
    assert done.stderr.endswith(f" [{option}]\n"), done.stderr


def test_a_backfill_beyond_a_day_is_refused_and_makes_no_rule(env: dict[str, str]) -> None:
    done = run("detail", "win-backfill-long", "--backfill", "2d", env=env)
    assert done.returncode == 1
    assert "(HTTP 422): invalid 'backfill_s' 172800" in done.stderr
    assert "[backfill_s (--backfill): expected a number of seconds > 0, at most 86400]" in (
        done.stderr
    )
    rules = rules_by_id(env).values()
    assert not [r for r in rules if r["match"].get("user_id") == "win-backfill-long"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["requests", "--status", "5yy"], "argument --status: invalid value '5yy'"),
        (["requests", "--status", "599-500"], "argument --status: invalid value '599-500'"),
        (["requests", "--field", "tenant"], "argument --field: invalid value 'tenant'"),
        (["requests", "--limit", "1001"], "argument --limit: invalid value '1001'"),
        (["release", "--min-duration-ms", "-5"], "argument --min-duration-ms: invalid value"),
    ],
)
def test_a_filter_of_the_wrong_form_is_a_usage_error(
    env: dict[str, str], args: list[str], message: str
) -> None:
    done = run(*args, env=env)
    assert done.returncode == 2
    assert message in done.stderr


def test_the_window_of_every_worker(launch: Callable[..., Server], tmp_path: Path) -> None:
    """Two uvicorn workers on one SQLite store: each search and release reaches both."""
    store = f"sqlite:///{tmp_path}/hindsight.db"

    def argv(port: int) -> list[str]:
        workers = [*example_argv(port), "--workers", "2"]
        return [*workers[:1], f"HINDSIGHT_STORE={store}", *workers[1:]]

    server = launch(argv, "workers")
    started = re.compile(r"Started server process \[(\d+)\]")
    server.wait_for(
        lambda: len({m[1] for m in map(started.search, server.raw_lines()) if m}) == 2,
        "two workers",
        timeout=20,
    )
    env = {"HINDSIGHT_URL": server.base_url + ADMIN, "HINDSIGHT_ADMIN_TOKEN": TOKEN}
    user = "win-workers"
    served_by: dict[str, str] = {}
    while len(set(served_by.values())) < 2 and len(served_by) < 100:
        rid = f"win-workers-{len(served_by)}"
        get_as(server, "/items/1", user, rid)
        server.wait_for_line(f"rid={rid} user={user} | served item 1")
        [line] = [line for line in lines_of(server, rid) if "served item" in line]
        served_by[rid] = line.split("pid=")[1].split()[0]
    assert len(set(served_by.values())) == 2, served_by

    answer = search(env, "--user-id", user, count=len(served_by))
    assert (answer["processes"], answer["complete"]) == (2, True)
    listed = run("requests", "--user-id", user, "--limit", "1000", env=env).stdout
    assert listed.endswith("\n\n2 processes answered\n")

    done = run("release", "--user-id", user, "--yes", env=env)
    assert done.stdout == f"released {len(served_by)} requests (2 processes answered)\n"
    for rid, pid in served_by.items():
        wait_released(server, rid, item_debug(user, 1))
        assert all(f" pid={pid} " in line for line in lines_of(server, rid))

    stopped = next(iter(served_by.values()))
    os.kill(int(stopped), signal.SIGSTOP)  # alive in the store, answering nothing
    try:
        partial = run("requests", "--user-id", user, "--limit", "1000", env=env)
    finally:
        os.kill(int(stopped), signal.SIGCONT)
    assert partial.returncode == 0, partial.stderr
    assert partial.stdout.endswith(
        "\n\n1 process answered (incomplete: some processes did not answer in time)\n"
    )
    shown = rows(partial.stdout.partition("\n\n")[0])
    others = {rid for rid, pid in served_by.items() if pid != stopped}
    assert {r["request id"] for r in shown} == others


# -- errors --------------------------------------------------------------------------------


def test_a_wrong_token_is_refused(env: dict[str, str]) -> None:
    done = run("rules", "list", env={**env, "HINDSIGHT_ADMIN_TOKEN": "not-the-token"})
    assert done.returncode == 4
    assert "the admin refused the token (HTTP 401)" in done.stderr
    assert done.stdout == ""


def test_the_read_only_token_may_list_but_not_add(env: dict[str, str]) -> None:
    reader = {**env, "HINDSIGHT_ADMIN_TOKEN": READ_TOKEN}
    refused = run("rules", "add", '{"id": "cli-read-only", "action": "drop"}', env=reader)
    assert refused.returncode == 5
    assert "HTTP 403" in refused.stderr
    assert "read-only" in refused.stderr
    listed = run("rules", "list", "--token", READ_TOKEN, env=env)
    assert listed.returncode == 0, listed.stderr
    assert "cli-read-only" not in rules_by_id(env)


def test_an_unreachable_app_is_named(app: Server) -> None:
    url = f"http://127.0.0.1:{free_port()}{ADMIN}"
    done = run("rules", "list", "--url", url, env={"HINDSIGHT_ADMIN_TOKEN": TOKEN})
    assert done.returncode == 3
    assert f"cannot reach {url}" in done.stderr


def test_a_url_that_is_not_the_admin_says_what_url_to_give(app: Server) -> None:
    done = run("rules", "list", env={"HINDSIGHT_URL": app.base_url, "HINDSIGHT_ADMIN_TOKEN": TOKEN})
    assert done.returncode == 6
    assert "no hindsight admin API answered GET /rules (HTTP 404)" in done.stderr
    assert "--url should be the admin's base URL" in done.stderr


@pytest.mark.parametrize(
    ("unset", "message"),
    [("HINDSIGHT_URL", "set --url or HINDSIGHT_URL"), ("HINDSIGHT_ADMIN_TOKEN", "set --token")],
)
def test_a_missing_url_or_token_is_a_usage_error(
    env: dict[str, str], unset: str, message: str
) -> None:
    done = run("rules", "list", env={k: v for k, v in env.items() if k != unset})
    assert done.returncode == 2
    assert done.stderr.startswith(f"hindsight-web: {message}")


def test_help_lists_the_commands_and_exit_codes() -> None:
    done = run("--help", env={})
    assert done.returncode == 0
    commands = ("rules", "detail", "undetail", "audit", "stats", "requests", "show", "release")
    for word in (*commands, "alerts"):
        assert word in done.stdout
    for word in ("exit codes:", "401", "403", "not confirmed"):
        assert word in done.stdout
