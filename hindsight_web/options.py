"""Validation of the options of `Hindsight`: each error names the option and what is allowed."""

from __future__ import annotations

import logging
import math
import re

__all__ = [
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
