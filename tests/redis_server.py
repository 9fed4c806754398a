"""Real redis-server processes on 127.0.0.1 for the store tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from .servers import free_port

REDIS_SERVER = "/usr/bin/redis-server"
READY_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


class RedisServer:
    """One redis-server in its own directory, on a free port.

    ``start()`` again after ``stop()`` or ``kill()`` listens on the same port,
    with no data, or, with ``persist=True`` (an append-only file written at
    every command, as a production Redis that must keep its rules), with all of it.
    """

    def __init__(
        self,
        directory: Path,
        *,
        password: str | None = None,
        port: int | None = None,
        persist: bool = False,
    ) -> None:
        self.directory = directory
        self.password = password
        self.persist = persist
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    def url(self, prefix: str | None = None, db: int = 0) -> str:
        """A ``redis://`` URL of this server (with its password, and `prefix` if given)."""
        auth = f":{self.password}@" if self.password else ""
        query = f"?prefix={prefix}" if prefix else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}{query}"

    def start(self) -> RedisServer:
        """Start it and wait until it answers PING."""
        argv = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1"]
        appendonly = ["yes", "--appendfsync", "always"] if self.persist else ["no"]
        argv += ["--save", "", "--appendonly", *appendonly, "--dir", str(self.directory)]
        argv += ["--logfile", str(self.directory / "redis.log")]
        if self.password:
            argv += ["--requirepass", self.password]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {self.log()}")
            if self._answers():
                return
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"redis-server not answering on port {self.port}: {self.log()}")

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                # +PONG, or -NOAUTH when a password is required: either way it is up.
                return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def log(self) -> str:
        path = self.directory / "redis.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def stop(self) -> None:
        """SIGTERM, then wait for the process to end."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: the server vanishes without closing its connections cleanly."""
        self._end(signal.SIGKILL)

    def pause(self) -> None:
        """SIGSTOP: the server keeps its port and connections but never answers."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after `pause`."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def _end(self, sig: signal.Signals) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGCONT)  # a paused server must run to handle SIGTERM
        proc.send_signal(sig)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)
