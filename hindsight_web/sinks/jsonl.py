"""The ``jsonl`` sink: one JSON object per line in a file, rotated by size.

Several processes (gunicorn or uvicorn workers) may write one file: each writes a
batch of whole lines with one ``os.write`` on a descriptor opened with
``O_APPEND``, while it holds an exclusive ``fcntl.flock`` on ``<path>.lock``. The
lock makes the batches of different processes follow each other (no line is ever
cut by another's) and lets one process at a time rotate: under the lock, a process
whose descriptor no longer names ``<path>`` (another one rotated it away, or it
was removed) opens ``<path>`` again first, as ``logging.handlers.WatchedFileHandler``
does, then rotates if the batch would take the file beyond ``max_bytes``:
``<path>.N-1`` becomes ``<path>.N`` ... ``<path>`` becomes ``<path>.1``, and the
oldest beyond ``backups`` is removed. Without ``fcntl`` (Windows) only one process
may write a file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .base import QueuedSink

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["JsonlSink"]

_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)


class JsonlSink(QueuedSink):
    """Writes JSON lines (str items, each ending in a newline) to `path`.

    Args:
        sink_id: the sink's id.
        path: the file; its directory must exist.
        max_bytes: rotate before a batch would take the file beyond this size
            (bytes); 0 never rotates.
        backups: rotated files kept (``<path>.1`` is the newest); 0 keeps none.
        max_queued, max_queued_bytes, batch: see `QueuedSink`.
    """

    type = "jsonl"

    def __init__(
        self,
        sink_id: str,
        path: str,
        max_bytes: int,
        backups: int,
        max_queued: int,
        max_queued_bytes: int,
        batch: int,
    ) -> None:
        self.path = os.path.abspath(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self._fd: int | None = None
        super().__init__(sink_id, max_queued, max_queued_bytes, batch)

    def after_fork(self) -> None:
        self._fd = None  # the parent's descriptor stays the parent's to close

    def state(self) -> dict[str, Any]:
        return {**super().state(), "path": self.path}

    def send(self, batch: list[Any]) -> None:
        lines = [line.encode("utf-8", "backslashreplace") for line in batch]
        lock = os.open(self.path + ".lock", _FLAGS, 0o644) if fcntl is not None else None
        try:
            if lock is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)
            fd = self._current()
            size = os.fstat(fd).st_size
            for chunk in self._chunks(lines, size):
                if self.max_bytes and size and size + len(chunk) > self.max_bytes:
                    fd, size = self._rotate(), 0
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
                size += len(chunk)
        finally:
            if lock is not None:
                os.close(lock)  # closing the descriptor releases the lock

    def _chunks(self, lines: list[bytes], size: int) -> list[bytes]:
        """`lines` joined into as few writes as fit the file (one file each: a rotation
        falls between two writes, never within a line)."""
        if not self.max_bytes:
            return [b"".join(lines)]
        chunks: list[bytes] = []
        part: list[bytes] = []
        room = self.max_bytes - size
        for line in lines:
            if part and len(line) > room:
                chunks.append(b"".join(part))
                part, room = [], self.max_bytes
            elif not part and len(line) > room and size:
                room = self.max_bytes  # the first write will rotate first
            part.append(line)
            room -= len(line)
        if part:
            chunks.append(b"".join(part))
        return chunks

    def _current(self) -> int:
        """The descriptor of the file now at `path` (opened again when it changed)."""
        fd = self._fd
        if fd is not None:
            try:
                here = os.stat(self.path)
                mine = os.fstat(fd)
                if (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino):
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)
        self._fd = fd = os.open(self.path, _FLAGS, 0o644)
        return fd

    def _rotate(self) -> int:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        name = self.path
        if self.backups:
            for n in range(self.backups - 1, 0, -1):
                older = Path(f"{name}.{n}")
                if older.exists():
                    older.replace(f"{name}.{n + 1}")
            Path(name).replace(f"{name}.1")
        else:
            Path(name).unlink(missing_ok=True)
        return self._current()
