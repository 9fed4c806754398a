"""The README's use-case sections (count rules, alerts, tags), run as printed against the
demo: the FastAPI example under `uvicorn --workers 2` on a SQLite store, its alerts sent
to its own `/webhooks/alerts`.

Each section's bash block is taken from README.md and run with bash from the root of
the repository, with the demo's port put in place of 8000; what the section says
happens is then read from the demo's log and the commands' output.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .servers import REPO, Server, launch

pytestmark = pytest.mark.server
__all__ = ["launch"]  # a fixture

TOKEN = "demo-admin-token-0123"
SECTION = "## Patterns across requests: count rules, alerts, tags"


def blocks() -> dict[str, str]:
    """The bash block of each use-case section of the README, by its title."""
    text = (REPO / "README.md").read_text()
    section = text[text.index(SECTION) :]
    section = section[: section.index("\n## ", len(SECTION))]
    found = {}
    for part in section.split("\n### ")[1:]:
        title = part.splitlines()[0]
        code = re.search(r"```bash\n(.*?)```", part, re.DOTALL)
        assert code is not None, f"no bash block in {title!r}"
        found[title] = code.group(1)
    return found


@pytest.fixture
def demo(launch: Callable[..., Server], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Server:
    monkeypatch.setenv("HINDSIGHT_STORE", f"sqlite:///{tmp_path}/hindsight.db")
    monkeypatch.setenv("HINDSIGHT_ADMIN_TOKEN", TOKEN)
    monkeypatch.setenv("HINDSIGHT_SLOW_MS", "500")

    def argv(port: int) -> list[str]:
        monkeypatch.setenv("HINDSIGHT_ALERT_URL", f"http://127.0.0.1:{port}/webhooks/alerts")
        monkeypatch.setenv("HINDSIGHT_URL", f"http://127.0.0.1:{port}/_hindsight")
        return [
            "env",  # the servers of the tests start without the admin token's variable
            f"HINDSIGHT_ADMIN_TOKEN={TOKEN}",
            sys.executable,
            "-m",
            "uvicorn",
            "examples.fastapi_app.app:app",
            "--app-dir",
            str(REPO),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "2",
        ]

    return launch(argv, "demo")


def run(demo: Server, block: str) -> str:
    script = block.replace("127.0.0.1:8000", f"127.0.0.1:{demo.port}")
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"{script}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def lines(demo: Server, pattern: str) -> list[str]:
    return [line for line in demo.output().splitlines() if re.search(pattern, line)]


def test_every_use_case_section_works_against_the_demo_as_printed(demo: Server) -> None:
    sections = blocks()
    assert list(sections) == [
        "Security: failed logins from one address",
        "Incident response: a message that must page someone",
        "Fraud: declined payments from one client",
        "User experience: a session that keeps being slow",
        "Compliance: tag and keep every request to an audited endpoint",
    ]
    assert Path(REPO / ".venv" / "bin" / "hindsight-web").exists(), "run scripts/setup first"

    shown = run(demo, sections["Security: failed logins from one address"])
    assert "brute-force" in shown
    assert "127.0.0.1" in shown
    fired = r"WARNING .*ALERT hindsight: rule brute-force fired for client_ip=127\.0\.0\.1"
    assert len(lines(demo, fired)) == 1
    assert lines(demo, r"DEBUG .*checking the password of alice")

    shown = run(demo, sections["Incident response: a message that must page someone"])
    assert "db-down" in shown
    assert len(lines(demo, r"ALERT hindsight: rule db-down fired for route=/reports/daily")) == 1

    shown = run(demo, sections["Fraud: declined payments from one client"])
    assert "card-testing" in shown
    fired = r"ALERT hindsight: rule card-testing fired for field\.client_id=shop-42"
    assert len(lines(demo, fired)) == 1
    demo.wait_for(
        lambda: len(lines(demo, r"DEBUG .*authorising 1\.00 on card ending 0000")) == 5,
        "the five declines' DEBUG lines",
    )

    before = len(lines(demo, r"DEBUG .*cache lookup item=1"))
    shown = run(demo, sections["User experience: a session that keeps being slow"])
    assert "slow-session.detail." in shown
    demo.wait_for(
        lambda: len(lines(demo, r"DEBUG .*user=carol .*cache lookup item=1")) > before,
        "carol's detailed request",
    )

    shown = run(demo, sections["Compliance: tag and keep every request to an audited endpoint"])
    assert re.search(r"compliance\s+pci\s+1\b", shown), shown
    assert "/accounts/7" in shown
    time.sleep(0.1)
    assert "internal error" not in demo.output()
