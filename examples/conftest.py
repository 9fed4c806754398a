"""Fixtures for the example apps' tests: capture what the app's log format writes."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import pytest

# Importing an example app runs its logging.basicConfig(); collection imports them all,
# so the root logger is put back as it was once collection is over.
_root = logging.getLogger()
_before_collection = (_root.level, list(_root.handlers))


def pytest_collection_finish(session: pytest.Session) -> None:
    _root.setLevel(_before_collection[0])
    _root.handlers[:] = _before_collection[1]


class LineHandler(logging.Handler):
    """Keeps each formatted line, as a console handler would print it."""

    def __init__(self, fmt: str) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter(fmt))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def capture_logs() -> Iterator[Callable[[str], LineHandler]]:
    """Make the root logger write to a LineHandler at INFO, as the apps configure it."""
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))

    def capture(fmt: str) -> LineHandler:
        handler = LineHandler(fmt)
        root.handlers[:] = [handler]
        root.setLevel(logging.INFO)
        return handler

    yield capture
    root.setLevel(saved[0])
    root.handlers[:] = saved[1]
