"""The text of a log call's message, as `LogRecord.getMessage` makes it, without raising."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def text(msg: object, args: Any) -> str:
    """``msg % args`` as `LogRecord.getMessage` makes it (``str(msg)`` when there are no
    arguments, the one-mapping form ``log.debug("%(a)s", {"a": 1})`` too); a message that
    cannot be formatted becomes a text naming why instead of raising."""
    if args:
        if type(msg) is str:
            try:
                formatted: str = msg % args
                return formatted
            except Exception:  # maybe the one-mapping form
                pass
        if len(args) == 1 and isinstance(args[0], Mapping) and args[0]:
            args = args[0]
        try:
            formatted = str(msg) % args
            return formatted
        except Exception as exc:
            return _unformattable(msg, args, exc)
    if type(msg) is str:
        return msg
    try:
        return str(msg)
    except Exception as exc:
        return _unformattable(msg, args, exc)


def _unformattable(msg: object, args: Any, exc: Exception) -> str:
    # The app's own format (str.format, a mistake): keep what can be kept, raise nothing.
    try:
        return f"{msg!r} % {args!r} (could not be formatted: {type(exc).__name__}: {exc})"
    except Exception:
        return f"<unformattable log message: {type(exc).__name__}>"
