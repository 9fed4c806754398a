"""Validation of the options of `Hindsight`: each error names the option and what is allowed."""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping
from typing import Any, TypedDict

__all__ = [
    "DEFAULTS",
    "HindsightOptions",
    "admin_path",
    "boolean",
    "cookie_name",
    "header_name",
    "level",
    "non_negative_int",
    "non_negative_number",
    "optional_number",
    "optional_status",
    "positive_int",
    "positive_number",
    "seconds",
]


class HindsightOptions(TypedDict, total=False):
    """The options of `Hindsight` (documented there), as a type checker sees them."""

    slow_ms: float | None
    release_on_status: int | None
    release_on_exception: bool
    capture_level: int | str
    admin_path: str | None
    admin_token: str | None
    admin_tokens: Mapping[str, Any] | None
    store: str
    store_sync_s: float
    stats_flush_s: float
    max_records: int
    max_bytes: int
    max_total_bytes: int
    release_handler_level: int | str
    max_releases_per_s: float
    request_id_header: str
    admin_read_token: str | None
    admin_max_body: int
    rules: list[Any] | str | os.PathLike[str] | None
    rules_url: str | None
    rules_poll_s: float
    max_rules: int
    max_detail_ttl_s: float
    max_routes: int
    max_sessions: int
    session_cookie: str | None
    window_s: float
    window_bytes: int
    search_timeout_s: float
    retain_max_bytes: int
    redact: bool
    redact_keys: list[str] | tuple[str, ...]
    redact_patterns: list[str] | tuple[str, ...]
    sinks: list[Any] | None
    alerts: list[Any] | None


DEFAULTS: dict[str, object] = {
    "slow_ms": 1000,
    "release_on_status": 500,
    "release_on_exception": True,
    "capture_level": "DEBUG",
    "admin_path": "/_hindsight",
    "admin_token": None,
    "admin_tokens": None,
    "store": "memory://",
    "store_sync_s": 0.5,
    "stats_flush_s": 5.0,
    "max_records": 5000,
    "max_bytes": 1_000_000,
    "max_total_bytes": 64_000_000,
    "release_handler_level": "INFO",
    "max_releases_per_s": 20,
    "request_id_header": "X-Request-ID",
    "admin_read_token": None,
    "admin_max_body": 64 * 1024,
    "rules": None,
    "rules_url": None,
    "rules_poll_s": 30.0,
    "max_rules": 10_000,
    "max_detail_ttl_s": 24 * 3600.0,
    "max_routes": 500,
    "max_sessions": 10_000,
    "session_cookie": None,
    "window_s": 300.0,
    "window_bytes": 32_000_000,
    "search_timeout_s": 1.0,
    "retain_max_bytes": 64_000_000,
    "redact": True,
    "redact_keys": (),
    "redact_patterns": (),
    "sinks": None,
    "alerts": None,
}
"""Each option of `Hindsight` with its default."""


def optional_number(name: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"invalid {name!r} {value!r}: expected a number >= 0 or None")
    return float(value)


def positive_number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"invalid {name!r} {value!r}: expected a finite number > 0")
    return float(value)


def seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"invalid {name!r} {value!r}: expected a number of seconds > 0")
    return float(value)


def non_negative_number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise ValueError(f"invalid {name!r} {value!r}: expected a finite number >= 0")
    return float(value)


def non_negative_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"invalid {name!r} {value!r}: expected an integer >= 0")
    return value


def optional_status(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 100 <= value <= 999:
        raise ValueError(
            f"invalid 'release_on_status' {value!r}: expected an HTTP status (100-999) or None"
        )
    return value


def boolean(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"invalid {name!r} {value!r}: expected True or False")
    return value


def positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"invalid {name!r} {value!r}: expected an integer > 0")
    return value


def level(name: str, value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    levels: dict[str, int] = logging._nameToLevel
    if isinstance(value, str) and value.upper() in levels:
        return levels[value.upper()]
    names = ", ".join(sorted(levels, key=levels.__getitem__))
    raise ValueError(f"invalid {name!r} {value!r}: expected a level name ({names}) or a number")


def admin_path(value: object) -> str | None:
    if value is None:
        return None
    if (
        not isinstance(value, str)
        or not re.fullmatch(r"(/[A-Za-z0-9._~-]+)+", value)
        or "/../" in value + "/"
    ):
        raise ValueError(
            f"invalid 'admin_path' {value!r}: expected a path such as '/_hindsight' "
            "(segments of letters, digits, '.', '_', '~', '-'), or None to serve the admin "
            "only through AdminASGIApp(hs) / AdminWSGIApp(hs)"
        )
    return value


def header_name(name: str, value: object) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9-]+", value):
        raise ValueError(
            f"invalid {name!r} {value!r}: expected a header name (letters, digits and '-')"
        )
    return value


def cookie_name(name: str, value: object) -> str | None:
    if value is not None and (
        not isinstance(value, str) or not re.fullmatch(r"[!#-'*+.0-9A-Z^-z|~-]+", value)
    ):
        raise ValueError(f"invalid {name!r} {value!r}: expected a cookie name or None")
    return value
