"""The ``otel`` sink: released records as OpenTelemetry logs, through the app's LoggerProvider.

Each record becomes an OpenTelemetry ``LogRecord`` made by the release writer in
the record's own contextvars context, so it carries the trace and span ids of the
span that was current at log time. Its severity follows the OpenTelemetry log data
model (DEBUG 5, INFO 9, WARNING 13, ERROR 17, CRITICAL 21; a level in between
takes the number of the standard level below it), the level name is its
severity text, the formatted message its body; the attributes are
``request_id``, ``user_id``, ``session_id`` (when known), ``code.file.path``,
``code.line.number``, ``code.function.name``, ``exception.stacktrace`` (the
traceback text) and ``field.<name>`` for each field (given to ``bind()`` or as
``extra``). The sink's thread emits them through the logger named after the
record's logger, from the provider ``opentelemetry._logs.get_logger_provider()``
gives at that time (the one the app set).
"""

from __future__ import annotations

import logging
from typing import Any

from .base import QueuedSink

__all__ = ["OtelSink", "severity"]

_SEVERITIES = ((50, 21), (40, 17), (30, 13), (20, 9), (10, 5))


def severity(levelno: int) -> int:
    """The OpenTelemetry severity number of a logging level (1, TRACE, below DEBUG)."""
    for level, number in _SEVERITIES:
        if levelno >= level:
            return number
    return 1


class OtelSink(QueuedSink):
    """Emits OpenTelemetry log records (items made by `record`) from its own thread.

    Raises:
        ImportError: opentelemetry-api is not installed (names
            ``pip install 'hindsight-web[otel]'``).
    """

    type = "otel"

    def __init__(self, sink_id: str, max_queued: int, max_queued_bytes: int, batch: int) -> None:
        try:
            from opentelemetry import _logs
            from opentelemetry.context import get_current
        except ImportError:
            raise ImportError(
                f"sink {sink_id!r} of type 'otel' needs opentelemetry-api: "
                "pip install 'hindsight-web[otel]'"
            ) from None
        self._logs = _logs
        self._get_current = get_current
        self._loggers: dict[str, Any] = {}
        self._provider: Any = None
        super().__init__(sink_id, max_queued, max_queued_bytes, batch)

    def record(
        self,
        *,
        time_ns: int,
        levelno: int,
        logger: str,
        message: str,
        attributes: dict[str, Any],
    ) -> tuple[tuple[str, Any], int]:
        """The item for one record, made in its context (the current span is its span),
        with its estimated size."""
        log_record = self._logs.LogRecord(
            timestamp=time_ns,
            context=self._get_current(),
            severity_text=logging.getLevelName(levelno),
            severity_number=self._logs.SeverityNumber(severity(levelno)),
            body=message,
            attributes={k: v for k, v in attributes.items() if v is not None},
        )
        size = 300 + len(message) + sum(len(str(v)) for v in attributes.values())
        return (logger, log_record), size

    def send(self, batch: list[Any]) -> None:
        provider = self._logs.get_logger_provider()
        if provider is not self._provider:
            self._provider, self._loggers = provider, {}
        for name, log_record in batch:
            otel_logger = self._loggers.get(name)
            if otel_logger is None:
                otel_logger = self._loggers[name] = provider.get_logger(name)
            otel_logger.emit(log_record)
