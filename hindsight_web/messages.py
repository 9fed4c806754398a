"""The text of a log call's message, as `LogRecord.getMessage` makes it, without raising."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["Shown", "formatted", "text"]


def formatted(msg: str, args: Any) -> str | None:
    """``msg % args`` as `LogRecord.getMessage` makes it (the one-mapping form too), or
    None when it cannot be formatted."""
    if not args:
        return msg
    try:
        shown: str = msg % args
        return shown
    except Exception:
        pass
    if len(args) == 1 and isinstance(args[0], Mapping) and args[0]:
        try:
            shown = msg % args[0]
            return shown
        except Exception:
            pass
    return None


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


class Shown:
    """An object as formatting reads it, taken at log time: its `str` and `repr`."""

    __slots__ = ("rep", "text")

    def __init__(self, text: str, rep: str) -> None:
        self.text = text
        self.rep = rep

    @classmethod
    def of(cls, value: object) -> Shown:
        """`value` as it is now."""
        return cls(_safely(str, value), _safely(repr, value))

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return self.rep

    def __format__(self, spec: str) -> str:
        return format(self.text, spec)


def _safely(convert: Callable[[object], str], value: object) -> str:
    try:
        return convert(value)
    except Exception as exc:
        return f"<{type(value).__name__}: {convert.__name__}() raised {type(exc).__name__}>"
