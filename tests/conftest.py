"""Shared fixtures: every test leaves the logging configuration as it found it."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest

import hindsight_web
from hindsight_web import errors

from .redis_server import REDIS_SERVER, RedisServer

FORMAT = "%(levelname)s %(name)s rid=%(request_id)s uid=%(user_id)s %(message)s"


def pytest_report_header() -> str:
    return f"hindsight-web build: {'compiled' if hindsight_web.__compiled__ else 'pure Python'}"


class ListHandler(logging.Handler):
    """Keeps each record and its formatted line."""

    def __init__(self, level: int = logging.NOTSET, fmt: str = FORMAT) -> None:
        super().__init__(level)
        self.setFormatter(logging.Formatter(fmt))
        self.records: list[logging.LogRecord] = []
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self.records.append(record)
        self.lines.append(line)

    def messages(self) -> list[str]:
        return [r.getMessage() for r in self.records]


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    manager = logging.Logger.manager
    saved_root = (root.level, list(root.handlers), list(root.filters))
    saved = {
        name: (lg.level, list(lg.handlers), lg.propagate, lg.disabled, list(lg.filters))
        for name, lg in manager.loggerDict.items()
        if isinstance(lg, logging.Logger)
    }
    factory = logging.getLogRecordFactory()
    disable = manager.disable
    errors.reset()
    yield
    logging.setLogRecordFactory(factory)
    logging.disable(disable)
    root.setLevel(saved_root[0])
    root.handlers[:] = saved_root[1]
    root.filters[:] = saved_root[2]
    for name, lg in list(manager.loggerDict.items()):
        if not isinstance(lg, logging.Logger):
            continue
        if name in saved:
            lg.level, handlers, lg.propagate, lg.disabled, filters = saved[name]
            lg.handlers[:] = handlers
            lg.filters[:] = filters
        else:
            lg.setLevel(logging.NOTSET)
            lg.handlers.clear()
            lg.propagate = True
            lg.disabled = False
    manager._clear_cache()


@pytest.fixture
def out() -> ListHandler:
    """The app's logging config: root at INFO, one handler collecting formatted lines."""
    handler = ListHandler()
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    return handler


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the session (stopped at its end); each test uses its own prefix."""
    if not os.access(REDIS_SERVER, os.X_OK):
        pytest.fail(f"{REDIS_SERVER} is missing: run scripts/install-debian-tools")
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()
