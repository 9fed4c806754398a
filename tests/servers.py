"""Real server processes on 127.0.0.1 for the end-to-end tests, and readers of their logs."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

REPO = Path(__file__).resolve().parents[1]
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
LOG_FORMAT = "%(levelname)s %(name)s rid=%(request_id)s %(message)s"
LINE = re.compile(r"^(?P<level>[A-Z]+) (?P<logger>\S+) rid=(?P<rid>\S+) (?P<message>.*)$")
SUMMARY = re.compile(
    r"^hindsight release: (?P<method>\S+) (?P<path>\S+) -> (?P<outcome>.+?) "
    r"in (?P<ms>[0-9.]+) ms \(reason: (?P<reason>\w+)\) request_id=(?P<rid>\S+) "
    r"records=(?P<records>\d+) dropped=(?P<dropped>\d+)$"
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def write_app(directory: Path, module: str, source: str) -> Path:
    """Write an app module into `directory`; `source` may use {FORMAT}."""
    path = directory / f"{module}.py"
    path.write_text(textwrap.dedent(source).replace("{FORMAT}", repr(LOG_FORMAT)))
    return path


@dataclass(frozen=True)
class Line:
    """One line of the app's log format."""

    index: int
    level: str
    logger: str
    rid: str
    message: str

    @property
    def text(self) -> str:
        return f"{self.level} {self.logger} {self.message}"


class Server:
    """One server process whose stdout and stderr go to files in the test's directory."""

    def __init__(self, argv: Sequence[str], workdir: Path, name: str) -> None:
        self.argv = list(argv)
        self.port = 0
        self.stdout_path = workdir / f"{name}.stdout"
        self.stderr_path = workdir / f"{name}.stderr"
        self._files: list[IO[bytes]] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.workdir = workdir

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, port: int) -> None:
        self.port = port
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        for name in ("HINDSIGHT_ADMIN_TOKEN", "HINDSIGHT_ADMIN_READ_TOKEN", "HINDSIGHT_URL"):
            env.pop(name, None)
        out = open(self.stdout_path, "wb")  # noqa: SIM115
        err = open(self.stderr_path, "wb")  # noqa: SIM115
        self._files = [out, err]
        self.proc = subprocess.Popen(
            self.argv, cwd=self.workdir, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(
                    f"server exited with {self.proc.returncode} before listening:\n{self.output()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        pytest.fail(f"server not listening on port {self.port} after {READY_TIMEOUT} s")

    def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_TIMEOUT)
        for f in self._files:
            f.close()

    def output(self) -> str:
        """Everything the server wrote so far (stderr, then stdout)."""
        text = self.stderr_path.read_text(errors="replace")
        stdout = self.stdout_path.read_text(errors="replace")
        return text + (f"\n--- stdout ---\n{stdout}" if stdout else "")

    def raw_lines(self) -> list[str]:
        return self.stderr_path.read_text(errors="replace").splitlines()

    def lines(self) -> list[Line]:
        """The lines of the app's log format, in the order they were written."""
        found = []
        for i, raw in enumerate(self.raw_lines()):
            m = LINE.match(raw)
            if m:
                found.append(Line(i, m["level"], m["logger"], m["rid"], m["message"]))
        return found

    def lines_of(self, rid: str) -> list[Line]:
        return [line for line in self.lines() if line.rid == rid]

    def summaries(self, rid: str | None = None) -> list[re.Match[str]]:
        found = []
        for line in self.lines():
            if line.logger != "hindsight_web":
                continue
            m = SUMMARY.match(line.message)
            if m and (rid is None or m["rid"] == rid):
                found.append(m)
        return found

    def wait_for(self, predicate: Callable[[], object], what: str, timeout: float = 10.0) -> None:
        """Poll the logs until `predicate()` is true."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}; server output:\n{self.output()}")
            time.sleep(0.05)

    def wait_for_line(self, needle: str, timeout: float = 10.0) -> None:
        self.wait_for(lambda: any(needle in raw for raw in self.raw_lines()), repr(needle), timeout)


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start server processes for a test; each is stopped when the test ends.

    ``launch(argv_builder, name)`` calls ``argv_builder(port)`` with a free port.
    """
    started: list[Server] = []

    def start(argv_for_port: Callable[[int], Sequence[str]], name: str = "server") -> Server:
        port = free_port()
        server = Server(argv_for_port(port), tmp_path, name)
        started.append(server)
        server.start(port)
        return server

    yield start
    for server in started:
        server.stop()


def uvicorn_argv(app_dir: Path, module: str) -> Callable[[int], list[str]]:
    def argv(port: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "uvicorn",
            f"{module}:app",
            "--app-dir",
            str(app_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "info",
        ]

    return argv


def gunicorn_argv(
    app_dir: Path, module: str, *extra: str, workers: int = 2
) -> Callable[[int], list[str]]:
    def argv(port: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "gunicorn",
            "-w",
            str(workers),
            *extra,
            "--chdir",
            str(app_dir),
            f"{module}:app",
            "-b",
            f"127.0.0.1:{port}",
            "--graceful-timeout",
            "3",
        ]

    return argv
