"""The logging seam: every stdlib logging call made during a request reaches hindsight.

Why methods of `logging.Logger` are replaced rather than a `logging.Handler` added:
the contract is that the app's logging configuration keeps working unchanged,
however and whenever it is set. A handler on the root logger would make a later
`basicConfig()` a no-op, be removed by `dictConfig()`, miss loggers with
`propagate=False`, and see only records the logger's level lets through, each
a full LogRecord built at a cost of several microseconds. So, as sentry-python
does with `Logger.callHandlers`, methods are replaced once per process:

- the level methods (`debug`, `info`, `warning`, `error`, `critical`, `log`):
  a record the logger makes (its effective level) takes the stdlib's own path,
  exactly as without hindsight, so every hook on it (`callHandlers` patches,
  sentry-sdk's breadcrumbs) sees it; during a request, a record below the
  logger's level, down to `capture_level`, is kept as a small tuple instead (or
  written at once in detail mode), and so is a copy of a record the logger made
  that no handler it reaches writes;
- `isEnabledFor` also says yes, during a request, to the levels kept, so code
  guarded by ``isEnabledFor(DEBUG)`` runs;
- `makeRecord` tags every record with `request_id`, `user_id` and `session_id`
  (None outside requests), so a formatter may always use them.

Why the replacements look like logging's own code: code that walks the stack to
find a log call's caller (the stdlib's ``findCaller`` and ``stacklevel``, a
Logger subclass's own ``findCaller``, loguru's ``InterceptHandler``, structlog's
frame walker) skips the logging module's frames by file name, by module name or
by a fixed depth. The replacements are compiled with logging's file name, run in
a namespace named ``logging``, and each stands in for the method it replaces
frame for frame: every walker finds the caller it finds without hindsight. (A
traceback through them names ``logging/__init__.py`` with this file's lines.)

A kept tuple becomes a real LogRecord only if the request is released
(`release.py`). Outside requests every replacement does what the stdlib does.
"""

from __future__ import annotations

import contextvars
import datetime
import enum
import logging
import sys
import threading
import time
import traceback
import types
import uuid
from collections.abc import Callable, Mapping
from numbers import Number
from pathlib import PurePath
from typing import Any

from . import errors
from .buffer import ENTRY_OVERHEAD, SCALARS, call_size, keep, make_room
from .context import RequestState, _current, new_cell, of_exception
from .messages import Shown
from .redact import CLEAN
from .release import delivering, write_live

__all__ = ["install", "uninstall"]

_Logger = logging.Logger
_LEVELS = (
    ("debug", logging.DEBUG),
    ("info", logging.INFO),
    ("warning", logging.WARNING),
    ("error", logging.ERROR),
    ("critical", logging.CRITICAL),
)
_originals: dict[str, Any] = {
    name: _Logger.__dict__[name]
    for name in ("isEnabledFor", "makeRecord", "log", "fatal", *(n for n, _ in _LEVELS))
}
_orig_is_enabled_for = _Logger.isEnabledFor
_orig_make_record = _Logger.makeRecord
_orig_find_caller = _Logger.findCaller

_LOGGING_FILE: str = logging.addLevelName.__code__.co_filename
_getframe = sys._getframe
_time_ns = time.time_ns
_current_thread = threading.current_thread
_copy_context = contextvars.copy_context
_exception_formatter = logging.Formatter()
# Values kept as they are: they cannot change after the call.
_IMMUTABLE = frozenset((str, int, float, bool, type(None), bytes, complex, frozenset))
_IMMUTABLE_KINDS: tuple[type, ...] = (Number, enum.Enum, datetime.date, datetime.time)
_IMMUTABLE_KINDS += (datetime.timedelta, uuid.UUID, PurePath)
_FREEZE_DEPTH = 3
# Before 3.11, findCaller stepped `stacklevel` frames before skipping logging's own.
_STACKLEVEL_FIRST = sys.version_info < (3, 11)


def _is_enabled_for(self: logging.Logger, level: int) -> bool:
    if _enabled(self, level):
        return True
    state = _current.get()
    return (
        state is not None
        and not state.closed
        and level >= state.capture_level
        and not self.disabled
        and not self._hindsight_internal  # type: ignore[attr-defined]
        and self.manager.disable < level
    )


def _enabled(logger: logging.Logger, level: int) -> bool:
    """What the original `isEnabledFor` answers, from its cache when it can."""
    try:
        enabled: bool = logger._cache[level]  # type: ignore[attr-defined]
    except KeyError:
        return _orig_is_enabled_for(logger, level)
    return enabled and not logger.disabled


def _makes(logger: logging.Logger, level: int) -> bool:
    """Whether the logger makes a record at `level` (its own `isEnabledFor` if it has one)."""
    if type(logger).isEnabledFor is not _is_enabled_for:
        return bool(logger.isEnabledFor(level))
    return _enabled(logger, level)


# How a level method handles a call in a request, cached per logger and level in the
# logger's own level cache (which logging clears whenever levels change).
_NORMAL = 0  # the stdlib's path (the logger makes the record, or has its own isEnabledFor)
_KEEP_INLINE = 1  # kept, the plain case built in place
_KEEP = 2  # kept through the generic path (the logger has its own findCaller)


def _how(logger: logging.Logger, level: int) -> int:
    kind = type(logger)
    if kind.isEnabledFor is not _is_enabled_for or _enabled(logger, level):
        return _NORMAL
    if logger._hindsight_internal:  # type: ignore[attr-defined]
        return _NORMAL
    return _KEEP_INLINE if kind.findCaller is _orig_find_caller else _KEEP


# -- the level methods ----------------------------------------------------------------------


def _level_method(level: int) -> Callable[..., None]:
    """`Logger.debug` and its kind, with the common case of a kept record in place.

    Most kept records come through here, built inline: no call to the generic
    entry builder. Whatever is not the plain case (keyword arguments, a message
    that is not a str, a call from inside `logging`) takes the generic path.
    """
    how_key = ~level  # in the logger's own level cache: a key no level uses

    def method(
        self: logging.Logger,
        msg: object,
        *args: object,
        exc_info: Any = None,
        extra: Mapping[str, object] | None = None,
        stack_info: bool = False,
        stacklevel: int = 1,
    ) -> None:
        state = _current.get()
        if state is not None and level >= state.keep_level and not self.disabled:
            cache = self._cache  # type: ignore[attr-defined]
            try:
                how = cache[how_key]
            except KeyError:
                how = cache[how_key] = _how(self, level)
            if how == _KEEP_INLINE:
                frame = _getframe(1)
                if (
                    type(msg) is not str
                    or exc_info is not None
                    or extra is not None
                    or stack_info
                    or stacklevel != 1
                    or frame.f_code.co_filename == _LOGGING_FILE
                ):
                    kwargs = _kwargs(exc_info, extra, stack_info, stacklevel)
                    _keep_call(self, level, msg, args, kwargs, state)
                    return
                try:
                    # The message is formatted only if the record is released (or a rule
                    # reads it). The arguments are kept as they are now: as given when
                    # they cannot change, else frozen. The size as `entry_size` has it.
                    # Redaction looks closer only at a format string that mentions a
                    # key (or was never seen), a str argument holding "=" or ":" or
                    # that is a secret's usual name, or an argument of another kind.
                    size = ENTRY_OVERHEAD + len(msg)
                    redactor = state.redactor
                    look = redactor is not None and redactor.plans.get(msg) is not CLEAN
                    for arg in args:
                        kind = type(arg)
                        if kind is str:
                            size += len(arg)  # type: ignore[arg-type]  # a str
                            if redactor is not None and (
                                "=" in arg  # type: ignore[operator]
                                or ":" in arg  # type: ignore[operator]
                                or arg in redactor.names  # "%s=%s" % ("password", ...)
                            ):
                                look = True
                        elif kind not in SCALARS:
                            args = _freeze_args(args)
                            look = redactor is not None
                            size = -1  # the formatted message's: after redaction
                            break
                    if look:
                        msg, args = redactor.call(msg, args)  # type: ignore[union-attr]
                    if look or size < 0:
                        size = call_size(msg, args)
                    context = _copy_context()  # see `context_now`
                    cell = state.context
                    if cell is None or context != cell[0]:
                        cell = new_cell(state, context)
                    records = state.records
                    code = frame.f_code
                    records.append(
                        (
                            self,
                            level,
                            msg,
                            args,
                            _time_ns(),
                            code.co_filename,
                            frame.f_lineno,
                            code.co_name,
                            _current_thread(),
                            cell,
                            None,
                        )
                    )
                    state.nbytes += size
                    if state.nbytes > state.reserved or len(records) > state.max_records:
                        make_room(state)
                except Exception as exc:
                    errors.report("capture", exc)
                return
            if how == _KEEP:
                kwargs = _kwargs(exc_info, extra, stack_info, stacklevel)
                _keep_call(self, level, msg, args, kwargs, state)
                return
        if _makes(self, level):
            self._log(level, msg, args, exc_info, extra, stack_info, stacklevel)
            if state is not None and level >= state.capture_level:
                kwargs = _kwargs(exc_info, extra, stack_info, stacklevel)
                _keep_call(self, level, msg, args, kwargs, state, made=True)
        elif state is not None and level >= state.capture_level:
            kwargs = _kwargs(exc_info, extra, stack_info, stacklevel)
            _keep_call(self, level, msg, args, kwargs, state)

    return method


def context_now(state: RequestState) -> list[contextvars.Context | None]:
    """The cell of a copy of the current context, for a kept record: the last record's
    cell when nothing changed since (two copies of one unchanged context compare equal
    at the cost of a pointer comparison), so that records share one."""
    context = _copy_context()
    cell = state.context
    if cell is not None and context == cell[0]:
        return cell
    return new_cell(state, context)


def _kwargs(exc_info: Any, extra: Any, stack_info: bool, stacklevel: int) -> dict[str, Any]:
    return {
        "exc_info": exc_info,
        "extra": extra,
        "stack_info": stack_info,
        "stacklevel": stacklevel,
    }


def _log_method(
    self: logging.Logger, level: int, msg: object, *args: object, **kwargs: Any
) -> None:
    """`Logger.log`: the level methods' work for any level."""
    if not isinstance(level, int):
        if logging.raiseExceptions:
            raise TypeError("level must be an integer")
        return
    state = _current.get()
    if _makes(self, level):
        self._log(level, msg, args, **kwargs)
        if state is not None and level >= state.capture_level:
            _keep_call(self, level, msg, args, kwargs, state, made=True)
    elif state is not None and level >= state.capture_level:
        _keep_call(self, level, msg, args, kwargs, state)


def _keep_call(
    self: logging.Logger,
    level: int,
    msg: object,
    args: tuple[object, ...],
    kwargs: dict[str, Any],
    state: RequestState,
    made: bool = False,
) -> None:
    """A call in a request whose record no handler writes, kept (or, in detail mode,
    written at once) so that a release has it: the logger makes no record of it, or
    (`made`) made one that no handler it reaches wrote. Called by a level method only:
    its caller is the log call's."""
    if (
        state.closed
        or self.disabled
        or self._hindsight_internal  # type: ignore[attr-defined]
        or delivering()
        or (_would_write(self, level) if made else self.manager.disable >= level)
    ):
        return
    try:
        # A Logger subclass's own findCaller is called from here: at the depth the
        # stdlib's `_log` calls it from, so a walker by depth finds the same frame.
        if type(self).findCaller is _orig_find_caller:
            caller = _caller(_getframe(1), kwargs)
        else:
            caller = self.findCaller(bool(kwargs.get("stack_info")), kwargs.get("stacklevel", 1))
        _take(self, level, msg, args, kwargs, state, caller)
    except Exception as exc:
        errors.report("capture", exc)


def _take(
    self: logging.Logger,
    level: int,
    msg: object,
    args: tuple[object, ...],
    kwargs: dict[str, Any],
    state: RequestState,
    caller: tuple[str, int, str, str | None],
) -> None:
    """Keep the call in the request's buffer, or write it now when detail mode covers it."""
    exc_info = _exc_info(kwargs.get("exc_info"))
    extra = kwargs.get("extra")
    pathname, lineno, func, stack = caller
    detail = state.detail_level
    live = detail is not None and level >= detail
    if not live:  # kept: as it is now
        msg = msg if type(msg) is str else _freeze(msg)
        args = _freeze_args(args) if args else args
        extra = _freeze_extra(extra) if extra else None
    redactor = state.redactor
    exc_text = None
    if exc_info is not None and exc_info[0] is not None and (redactor or not live):
        exc_text = _exception_formatter.formatException(exc_info)
    if redactor is not None:
        msg, args = redactor.call(msg, args)
        extra = redactor.fields(extra) if extra else None
        stack = redactor.text(stack) if stack else stack
        if exc_text is not None:
            redacted = redactor.text(exc_text)
            if redacted != exc_text:  # the traceback is written from its redacted text
                exc_text, exc_info = redacted, None
    if live:
        write_live(
            self, level, msg, args, exc_info, extra, (pathname, lineno, func, stack),
            state.release_level, exc_text,
        )  # fmt: skip
        state.counts.add(records_captured=1, records_released=1)
        return
    more = None
    if exc_text is not None or stack is not None or extra or exc_info is not None:
        more = (exc_text, stack, extra, exc_info)
    keep(
        state,
        (
            self,
            level,
            msg,
            args,
            _time_ns(),
            pathname,
            lineno,
            func,
            _current_thread(),
            context_now(state),
            more,
        ),
    )


def _caller(frame: Any, kwargs: Mapping[str, Any]) -> tuple[str, int, str, str | None]:
    """(pathname, lineno, funcName, stack text) of a log call, as the stdlib's
    `findCaller` finds them, walking out from `frame` (a frame of logging's own)."""
    stacklevel = kwargs.get("stacklevel", 1)
    while frame.f_code.co_filename == _LOGGING_FILE and frame.f_back is not None:
        frame = frame.f_back  # the log call's own caller
    if _STACKLEVEL_FIRST:  # before 3.11: step out, then past logging's frames
        while stacklevel > 1 and frame.f_back is not None:
            frame, stacklevel = frame.f_back, stacklevel - 1
        while frame.f_code.co_filename == _LOGGING_FILE and frame.f_back is not None:
            frame = frame.f_back
    else:
        while stacklevel > 1 and frame.f_back is not None:
            frame = frame.f_back
            if frame.f_code.co_filename != _LOGGING_FILE:
                stacklevel -= 1
    code = frame.f_code
    stack = _stack_text(frame) if kwargs.get("stack_info") else None
    return code.co_filename, frame.f_lineno, code.co_name, stack


# -- what is kept of a call -------------------------------------------------------------------


def _exc_info(exc_info: Any) -> Any:
    """`exc_info` as `Logger._log` normalises it: a (type, value, traceback) tuple or None."""
    if not exc_info:
        return None
    if isinstance(exc_info, BaseException):
        return (type(exc_info), exc_info, exc_info.__traceback__)
    if not isinstance(exc_info, tuple):
        return sys.exc_info()
    return exc_info


def _stack_text(frame: Any) -> str:
    """The `stack_info` text `Logger.findCaller` makes, from `frame` up."""
    text = "Stack (most recent call last):\n" + "".join(traceback.format_stack(frame))
    return text.rstrip("\n")


def _freeze_args(args: Any) -> Any:
    """The arguments as they are at log time (what formatting them later will read)."""
    if type(args) is tuple:
        return tuple(_freeze(arg) for arg in args)
    return _freeze(args)  # the one mapping of log.debug("%(a)s", {"a": 1}), as the stdlib keeps it


def _freeze(value: Any, depth: int = 0) -> Any:
    """`value` as it is now: immutable values as they are, containers copied, anything
    else as the text formatting reads from it (`str`, `repr`) now."""
    kind = type(value)
    if kind in _IMMUTABLE or isinstance(value, _IMMUTABLE_KINDS):
        return value
    if depth < _FREEZE_DEPTH:
        if kind is tuple:
            return tuple(_freeze(v, depth + 1) for v in value)
        if kind is list:
            return [_freeze(v, depth + 1) for v in value]
        if kind is dict:
            return {k: _freeze(v, depth + 1) for k, v in value.items()}
        if kind is set:
            return {_freeze(v, depth + 1) for v in value}
    return Shown.of(value)


def _freeze_extra(extra: Mapping[str, object]) -> dict[str, object]:
    """`extra` as it is now: containers copied; other objects kept (formatters read
    them as record attributes: structlog's ``_logger``, say)."""
    kept = {}
    for key, value in extra.items():
        kind = type(value)
        kept[key] = _freeze(value) if kind in (list, dict, set, tuple) else value
    return kept


# -- records made by the logger ------------------------------------------------------------


def _make_record(
    self: logging.Logger,
    name: str,
    level: int,
    fn: str,
    lno: int,
    msg: object,
    args: Any,
    exc_info: Any,
    func: str | None = None,
    extra: Mapping[str, object] | None = None,
    sinfo: str | None = None,
) -> logging.LogRecord:
    record: logging.LogRecord = _orig_make_record(
        self, name, level, fn, lno, msg, args, exc_info, func, extra, sinfo
    )
    state = _current.get()
    if state is None and exc_info:  # a server's line about a request's exception
        state = of_exception(exc_info)
    tag(record, state)
    if state is not None and state.needles:
        _note_needles(record, state)
    return record


def _note_needles(record: logging.LogRecord, state: RequestState) -> None:
    """Note which watched substrings a written record's message has (rules on `message`)."""
    try:
        message = record.getMessage()
    except Exception:
        return  # the handler will meet the same broken format and report it
    seen = state.seen
    if seen is not None:
        for needle in state.needles:
            if needle in message:
                seen.add(needle)


def tag(record: logging.LogRecord, state: RequestState | None) -> None:
    """Give `record` the request's attributes (escaped: no value can forge a line), unless
    the log call's `extra` set them; the raw values under ``hindsight_raw`` when they
    differ."""
    d = record.__dict__
    if state is None:
        d.setdefault("request_id", None)
        d.setdefault("user_id", None)
        d.setdefault("session_id", None)
        return
    d.setdefault("request_id", state.request_id)
    tags = state.tags
    if tags is None:
        d.setdefault("user_id", None)
        d.setdefault("session_id", None)
        return
    for key, value in tags.items():
        d.setdefault(key, value)


def _would_write(logger: logging.Logger, level: int) -> bool:
    """Whether a handler the record would reach (as `callHandlers` walks them) takes `level`."""
    found = False
    current: logging.Logger | None = logger
    while current is not None:
        for handler in current.handlers:
            found = True  # a NullHandler too: it keeps lastResort away, as in callHandlers
            if level >= handler.level and not isinstance(handler, logging.NullHandler):
                return True
        current = current.parent if current.propagate else None
    if found:
        return False
    last = logging.lastResort
    return last is not None and level >= last.level


# -- installing -------------------------------------------------------------------------------

# The functions whose frames stand between a log call and its caller's frame.
_RELOCATED = ("_keep_call", "_take", "_caller", "context_now")


def _as_logging(function: Any, namespace: dict[str, Any], name: str) -> Any:
    """`function` made to look defined in the logging module (file and module name)."""
    code = function.__code__.replace(co_filename=_LOGGING_FILE)
    made = types.FunctionType(code, namespace, name, function.__defaults__, function.__closure__)
    made.__kwdefaults__ = function.__kwdefaults__
    made.__qualname__ = f"Logger.{name}"
    made.__module__ = "logging"
    return made


_installed = False


def install() -> None:
    """Replace the logging methods (once per process; later calls do nothing)."""
    global _installed
    if _installed:
        return
    _installed = True
    _Logger._hindsight_internal = False  # type: ignore[attr-defined]
    errors.logger._hindsight_internal = True  # type: ignore[attr-defined]
    namespace = dict(globals())
    namespace["__name__"] = "logging"
    for helper in _RELOCATED:
        namespace[helper] = _as_logging(globals()[helper], namespace, helper)
    for name, level in _LEVELS:
        setattr(_Logger, name, _as_logging(_level_method(level), namespace, name))
    _Logger.fatal = _Logger.critical
    _Logger.log = _as_logging(_log_method, namespace, "log")  # type: ignore[method-assign]
    _Logger.isEnabledFor = _is_enabled_for  # type: ignore[method-assign]
    _Logger.makeRecord = _make_record  # type: ignore[method-assign]


def uninstall() -> None:
    """Put the original logging methods back (for tests)."""
    global _installed
    _installed = False
    for name, original in _originals.items():
        setattr(_Logger, name, original)


# Installed on import, not only when the first middleware is built (Starlette builds
# its middleware stack at the first request): a format using %(request_id)s must
# work for records logged at start-up too.
install()
