"""The ``http`` sink: batches of JSON objects POSTed as a JSON array (a SIEM, a support tool).

Its thread sends one batch at a time with httpx. A batch that meets a connection
error, a timeout, a 5xx, a 408 or a 429 is sent again after a pause that doubles
from `FIRST_BACKOFF_S` up to `MAX_BACKOFF_S`, until it is delivered or `retry_s`
seconds have passed (then it counts as failed); meanwhile new records wait in the
bounded queue, and what does not fit is dropped and counted. Any other 4xx, or a
TLS certificate that cannot be verified, fails the batch at once: sending it again
would not help. Certificates are verified (against the system's CAs, or the
``verify`` CA bundle); ``verify: false`` turns that off, which lets anyone on the
path read and change what is sent: only for a test endpoint.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .base import Failed, QueuedSink

__all__ = ["FIRST_BACKOFF_S", "MAX_BACKOFF_S", "HttpSink", "shown_url"]

FIRST_BACKOFF_S = 0.5
"""The pause before the first retry of a batch, in seconds; it doubles with each retry."""

MAX_BACKOFF_S = 5.0
"""The longest pause between two tries of a batch, in seconds."""

_RETRIED = frozenset((408, 429))


class _NotFromSinks(logging.Filter):
    """Drops the records httpx and httpcore log in a sink's thread (one INFO line per
    POST would otherwise fill the app's log with the sink's own traffic)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not threading.current_thread().name.startswith("hindsight-sink-")


_QUIET = _NotFromSinks()


def _quiet_httpx() -> None:
    for name in ("httpx", "httpcore"):
        log = logging.getLogger(name)
        if _QUIET not in log.filters:
            log.addFilter(_QUIET)


def shown_url(url: str) -> str:
    """`url` without what may be a credential: the user and password, the query."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class HttpSink(QueuedSink):
    """POSTs batches of JSON lines (str items) to `url` as one JSON array each.

    Args:
        sink_id: the sink's id.
        url: an ``http://`` or ``https://`` URL.
        headers: sent with every request (``Authorization`` for the endpoint).
        verify: True (the system's CAs), the path of a CA bundle (PEM), or False
            (no verification: unsafe).
        timeout_s: the longest one try may take, in seconds.
        retry_s: how long a batch is tried again, in seconds, before it counts as failed.
        max_queued, max_queued_bytes, batch: see `QueuedSink`.

    Raises:
        ImportError: httpx is not installed (names ``pip install 'hindsight-web[http]'``).
    """

    type = "http"

    def __init__(
        self,
        sink_id: str,
        url: str,
        headers: dict[str, str],
        verify: bool | str,
        timeout_s: float,
        retry_s: float,
        max_queued: int,
        max_queued_bytes: int,
        batch: int,
    ) -> None:
        try:
            import httpx
        except ImportError:
            raise ImportError(
                f"sink {sink_id!r} of type 'http' needs httpx: pip install 'hindsight-web[http]'"
            ) from None
        self._httpx = httpx
        _quiet_httpx()
        self.url = url
        self.headers = {**headers, "content-type": "application/json"}
        self.verify = verify
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self._client: Any = None
        if isinstance(verify, str):
            ssl.create_default_context(cafile=verify)  # a bad bundle is an error at start
        super().__init__(sink_id, max_queued, max_queued_bytes, batch)

    def after_fork(self) -> None:
        self._client = None  # a connection pool does not cross a fork

    def state(self) -> dict[str, Any]:
        return {**super().state(), "url": shown_url(self.url)}

    def body(self, batch: list[Any]) -> bytes:
        """What one POST of `batch` (JSON lines) carries: one JSON array, UTF-8."""
        return ("[" + ",".join(line.rstrip("\n") for line in batch) + "]").encode("utf-8")

    def send(self, batch: list[Any]) -> None:
        body = self.body(batch)
        deadline = time.monotonic() + self.retry_s
        pause = FIRST_BACKOFF_S
        while True:
            error = self._try(body)
            if error is None:
                return
            if time.monotonic() + pause > deadline:
                raise Failed(f"{error}; gave up after {self.retry_s:g} s of retries")
            self.note_error(error)
            self.retries += 1
            time.sleep(pause)
            pause = min(pause * 2, MAX_BACKOFF_S)

    def _try(self, body: bytes) -> str | None:
        """One POST: None when delivered, else the error text of a try worth repeating.

        Raises:
            Failed: an answer or an error that another try would meet again.
        """
        httpx = self._httpx
        if self._client is None:
            verify: Any = self.verify
            if isinstance(verify, str):
                verify = ssl.create_default_context(cafile=verify)
            self._client = httpx.Client(verify=verify, timeout=self.timeout_s)
        try:
            answer = self._client.post(self.url, content=body, headers=self.headers)
        except httpx.TransportError as exc:
            if _certificate_refused(exc):
                raise Failed(f"TLS certificate not accepted: {exc}") from exc
            return f"{type(exc).__name__}: {exc or 'no answer'}"
        status = answer.status_code
        if status < 300:
            return None
        text = f"HTTP {status} from {shown_url(self.url)}: {_excerpt(answer.text)}"
        if status >= 500 or status in _RETRIED:
            return text
        raise Failed(text)


def _certificate_refused(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return "CERTIFICATE_VERIFY_FAILED" in str(exc)


def _excerpt(text: str) -> str:
    try:
        return json.dumps(text[:200])
    except Exception:
        return "(unreadable body)"
