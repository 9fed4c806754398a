"""The hindsight-web command, run as a process against a real uvicorn serving the FastAPI example.

Each test asserts what a user sees: the command's stdout, stderr and exit code, and the lines
the app writes to its log. One server serves the module (each test uses its own rule ids and
users); the test of empty answers starts a fresh one.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from .servers import REPO, Server, free_port, launch, uvicorn_argv

__all__ = ["launch"]

pytestmark = [pytest.mark.server, pytest.mark.timeout(60)]

CLI = Path(sys.executable).with_name("hindsight-web")
TOKEN = "cli-admin-token"
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


def run(
    *args: str, env: Mapping[str, str], stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the installed hindsight-web script; whatever happens, it prints no traceback."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HINDSIGHT_")}
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


def test_audit_shows_additions_and_removals_with_the_caller(env: dict[str, str]) -> None:
    rule = {"id": "cli-audit", "action": "drop", "note": "noisy probe"}
    assert run("rules", "add", json.dumps(rule), env=env).returncode == 0
    assert run("rules", "rm", "cli-audit", env=env).returncode == 0

    done = run("audit", "--limit", "50", env=env)
    assert done.returncode == 0, done.stderr
    mine = [row for row in rows(done.stdout) if row["rule id"] == "cli-audit"]
    assert [(row["action"], row["by"], row["note"]) for row in mine] == [
        ("removed", "127.0.0.1", "noisy probe"),
        ("added", "127.0.0.1", "noisy probe"),
    ]


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
    for word in ("rules", "detail", "undetail", "audit", "stats", "exit codes:", "401", "403"):
        assert word in done.stdout
