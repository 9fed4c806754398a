"""The logging seam: every stdlib logging call made during a request reaches hindsight.

Why methods of `logging.Logger` are wrapped rather than a `logging.Handler` added:
the contract is that the app's logging configuration keeps working unchanged,
however and whenever it is set. A handler on the root logger would make a later
`basicConfig()` a no-op, be removed by `dictConfig()`, miss loggers with
`propagate=False`, and, worst of all, see only records the logger's level lets
through, each one a full LogRecord built at a cost of several microseconds. So,
as sentry-python does with `Logger.callHandlers`, three methods are wrapped once
per process:

- `isEnabledFor` also says yes, during a request, to levels down to
  `capture_level` that the configuration would not write, so `logger.debug()`
  and code guarded by `isEnabledFor(DEBUG)` both reach `_log`;
- `_log` sends what the configuration would write down the normal path, and
  keeps the rest as a small tuple (formatted message, time, caller, traceback
  text) instead of a LogRecord;
- `makeRecord` tags every record with `request_id`, `user_id` and `session_id`
  (None outside requests), so a formatter may always use them.

A kept tuple becomes a real LogRecord, through the logger's own `makeRecord`
(so the app's record factory applies) and filters, only if the request is
released. Outside requests every wrapper defers to the original at once.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import traceback
from collections.abc import Mapping
from typing import Any

from . import errors
from .buffer import ENTRY_OVERHEAD, Entry, keep, make_room
from .context import RequestState, _current

__all__ = ["build_record", "deliver", "install", "uninstall"]

_Logger = logging.Logger
_orig_is_enabled_for = _Logger.isEnabledFor
_orig_log = _Logger._log
_orig_make_record = _Logger.makeRecord
_orig_debug = _Logger.debug
_orig_info = _Logger.info

# How much to add to `stacklevel` when one of the level methods below calls `_log`:
# from 3.11 on, findCaller counts our frame like any non-logging frame; before, it
# started from the frame that called `_log` and stepped past it on its own.
_LEVEL_METHOD_FRAMES = 1 if sys.version_info >= (3, 11) else 0
_level_method_codes: set[Any] = set()

_getframe = sys._getframe
_time_ns = time.time_ns
_current_thread = threading.current_thread
_exception_formatter = logging.Formatter()
_scalars = (str, int, float, bool, type(None), bytes)
# Frames of these files are logging's plumbing, not the caller of a log call.
_internal_files: set[str] = {logging.addLevelName.__code__.co_filename}


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


def _log(
    self: logging.Logger,
    level: int,
    msg: object,
    args: Any,
    exc_info: Any = None,
    extra: Mapping[str, object] | None = None,
    stack_info: bool = False,
    stacklevel: int = 1,
) -> None:
    state = _current.get()
    if (
        state is None
        or state.closed
        or level < state.capture_level
        or self.disabled
        or self._hindsight_internal  # type: ignore[attr-defined]
    ):
        # One more level: this wrapper's frame stands between the caller and the original.
        return _orig_log(self, level, msg, args, exc_info, extra, stack_info, stacklevel + 1)
    if _enabled(self, level) and _would_write(self, level):
        return _orig_log(self, level, msg, args, exc_info, extra, stack_info, stacklevel + 1)
    detail = state.detail_level
    try:
        # Frame 1 called `_log`: `Logger.debug`, one of ours, a LoggerAdapter, the app.
        frame = sys._getframe(1)
        if frame.f_code in _level_method_codes:
            stacklevel -= _LEVEL_METHOD_FRAMES  # added for the stdlib's findCaller only
        frame = _caller(frame, stacklevel)
        if detail is not None and level >= detail:
            deliver(self, _live_record(self, level, msg, args, exc_info, extra, stack_info, frame))
        else:
            keep(state, _make_entry(self, level, msg, args, exc_info, extra, stack_info, frame))
    except Exception as exc:
        errors.report("capture", exc)
    return None


def _live_record(
    logger: logging.Logger,
    level: int,
    msg: object,
    args: Any,
    exc_info: Any,
    extra: Mapping[str, object] | None,
    stack_info: bool,
    frame: Any,
) -> logging.LogRecord:
    """The record the stdlib would make for this call (args and exc_info kept as they are),
    for a request in detail mode: it is written at once, so nothing is pinned."""
    code = frame.f_code
    return logger.makeRecord(
        logger.name,
        level,
        code.co_filename,
        frame.f_lineno,
        msg,
        args,
        _exc_info(exc_info),
        code.co_name,
        extra,
        _stack_text(frame) if stack_info else None,
    )


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


def _level_method(level: int) -> Any:
    """`Logger.debug` / `Logger.info` with the common capture case handled in place.

    Most captured records come through here, so a kept record is built inline:
    no call to `isEnabledFor`, `_log` or the generic entry builder. Whatever is
    not the plain case (a record the configuration writes, detail mode,
    `exc_info`, `extra`, `stack_info`, `stacklevel`, a message that is not a
    str, a call from inside `logging`) takes the generic path.
    """
    written_key = ~level
    # Arguments are kept (when plain) from INFO up, where formatters that read
    # record.args live (uvicorn's access log); DEBUG keeps only the message, for speed.
    keep_args = level >= logging.INFO

    def log_at_level(
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
            # Whether the configuration writes `level` for this logger (or it is ours):
            # cached in the logger's own level cache, which logging clears on every
            # level change, under a key that no level uses.
            cache = self._cache  # type: ignore[attr-defined]
            try:
                written = cache[written_key]
            except KeyError:
                written = cache[written_key] = (
                    self._hindsight_internal  # type: ignore[attr-defined]
                    or self.manager.disable >= level
                    or level >= self.getEffectiveLevel()
                    # A Logger subclass with its own `_log` must see the call.
                    or type(self)._log is not _log
                    or type(self).isEnabledFor is not _is_enabled_for
                )
            if not written:
                try:
                    frame = _getframe(1)
                    code = frame.f_code
                    if (
                        type(msg) is not str
                        or exc_info is not None
                        or extra is not None
                        or stack_info
                        or stacklevel != 1
                        or code.co_filename in _internal_files
                    ):
                        frame = _caller(frame, stacklevel)
                        keep(
                            state,
                            _make_entry(self, level, msg, args, exc_info, extra, stack_info, frame),
                        )
                        return
                    original = None
                    if args:
                        try:
                            message = msg % args
                        except Exception:
                            message = _message(msg, args)
                        if keep_args and _plain(args):
                            original = (msg, args)
                    else:
                        message = msg
                    records = state.records
                    records.append(
                        (
                            self,
                            level,
                            message,
                            _time_ns(),
                            code.co_filename,
                            frame.f_lineno,
                            code.co_name,
                            _current_thread(),
                            None,
                            None,
                            None,
                            original,
                        )
                    )
                    state.nbytes += ENTRY_OVERHEAD + len(message)
                    if state.nbytes > state.reserved or len(records) > state.max_records:
                        make_room(state)
                except Exception as exc:
                    errors.report("capture", exc)
                return
        if self.isEnabledFor(level):
            self._log(
                level, msg, args, exc_info, extra, stack_info, stacklevel + _LEVEL_METHOD_FRAMES
            )

    _level_method_codes.add(log_at_level.__code__)
    log_at_level.__name__ = logging.getLevelName(level).lower()
    log_at_level.__qualname__ = f"Logger.{log_at_level.__name__}"
    return log_at_level


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
    """Give `record` the request's attributes, unless the log call's `extra` set them."""
    d = record.__dict__
    if state is None:
        d.setdefault("request_id", None)
        d.setdefault("user_id", None)
        d.setdefault("session_id", None)
        return
    d.setdefault("request_id", state.request_id)
    d.setdefault("user_id", state.user_id)
    d.setdefault("session_id", state.session_id)
    for key, value in state.fields.items():
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


def _caller(frame: Any, stacklevel: int) -> Any:
    """The frame `stacklevel` steps up from `frame`, skipping logging's own frames."""
    internal = _internal_files
    while True:
        if frame.f_code.co_filename not in internal:
            stacklevel -= 1
            if stacklevel <= 0:
                return frame
        back = frame.f_back
        if back is None:
            return frame
        frame = back


def _make_entry(
    logger: logging.Logger,
    level: int,
    msg: object,
    args: Any,
    exc_info: Any,
    extra: Mapping[str, object] | None,
    stack_info: bool,
    frame: Any,
) -> Entry:
    code = frame.f_code

    message = _message(msg, args)
    exc_text = None
    exc_info = _exc_info(exc_info)
    if exc_info is not None and exc_info[0] is not None:
        exc_text = _exception_formatter.formatException(exc_info)
    stack_text = _stack_text(frame) if stack_info else None
    frozen = None
    if extra:
        frozen = {k: (v if isinstance(v, _scalars) else str(v)) for k, v in extra.items()}
    return (
        logger,
        level,
        message,
        time.time_ns(),
        code.co_filename,
        frame.f_lineno,
        code.co_name,
        threading.current_thread(),
        exc_text,
        stack_text,
        frozen,
        (msg, args) if args and _plain(args) else None,
    )


_PLAIN = frozenset((str, int, float, bool, type(None)))


def _plain(args: Any) -> bool:
    """Whether `args` is a tuple of values that cannot change after the call."""
    if type(args) is not tuple:
        return False
    return all(type(arg) in _PLAIN for arg in args)


def _message(msg: object, args: Any) -> str:
    """`msg % args` as `LogRecord.getMessage` makes it, without raising."""
    if args:
        if type(msg) is str:
            try:
                text: str = msg % args
                return text
            except Exception:  # maybe the one-mapping form: log.debug("%(a)s", {"a": 1})
                pass
        if len(args) == 1 and isinstance(args[0], Mapping) and args[0]:
            args = args[0]
        try:
            text = str(msg) % args
            return text
        except Exception as exc:
            return _unformattable(msg, args, exc)
    if type(msg) is str:
        return msg
    try:
        return str(msg)
    except Exception as exc:
        return _unformattable(msg, args, exc)


def _unformattable(msg: object, args: Any, exc: Exception) -> str:
    # The app's own mistake (`log.debug("%d", "x")`): keep what can be kept, raise nothing.
    try:
        return f"{msg!r} % {args!r} (could not be formatted: {type(exc).__name__}: {exc})"
    except Exception:
        return f"<unformattable log message: {type(exc).__name__}>"


def build_record(entry: Entry, state: RequestState | None) -> logging.LogRecord:
    """Turn a buffered entry into the LogRecord the app would have made at log time."""
    logger, level, message, t_ns, pathname, lineno, func, thread, exc_text, stack, extra = entry[
        :11
    ]
    # With plain arguments the record gets them back (a formatter may read record.args);
    # otherwise it gets the message formatted at log time.
    msg, args = entry[11] or (message, ())
    record: logging.LogRecord
    try:
        record = logger.makeRecord(
            logger.name, level, pathname, lineno, msg, args, None, func, extra, stack
        )
    except KeyError:
        # `extra` tried to overwrite a record attribute; the stdlib would have raised at log time.
        record = logger.makeRecord(
            logger.name, level, pathname, lineno, msg, args, None, func, None, stack
        )
    created = t_ns / 1e9
    record.created = created
    record.msecs = (t_ns % 1_000_000_000) // 1_000_000 + 0.0
    start = logging._startTime  # type: ignore[attr-defined]
    if isinstance(start, int):  # Python 3.13+ keeps it in nanoseconds
        record.relativeCreated = (t_ns - start) / 1e6
    else:
        record.relativeCreated = (created - start) * 1000.0
    record.thread = thread.ident
    record.threadName = thread.name
    record.exc_text = exc_text
    tag(record, state)
    return record


def deliver(logger: logging.Logger, record: logging.LogRecord) -> None:
    """Hand `record` to every handler its logger would use, whatever the handlers' levels.

    The logger's own filters apply, as in `Logger.handle`; a handler that
    raises is counted and skipped, and the others still get the record.
    """
    if logger.disabled:
        return
    passed: Any = logger.filter(record)
    if not passed:
        return
    if isinstance(passed, logging.LogRecord):  # Python 3.12+ filters may replace the record
        record = passed
    found = False
    current: logging.Logger | None = logger
    while current is not None:
        for handler in current.handlers:
            found = True
            try:
                handler.handle(record)
            except Exception as exc:
                errors.report("handler", exc)
        current = current.parent if current.propagate else None
    if not found and logging.lastResort is not None:
        logging.lastResort.handle(record)


_installed = False


def install() -> None:
    """Wrap the logging methods (once per process; later calls do nothing)."""
    global _installed
    if _installed:
        return
    _installed = True
    _internal_files.add(_log.__code__.co_filename)
    _Logger._hindsight_internal = False  # type: ignore[attr-defined]
    errors.logger._hindsight_internal = True  # type: ignore[attr-defined]
    setattr(_Logger, "isEnabledFor", _is_enabled_for)  # noqa: B010
    setattr(_Logger, "_log", _log)  # noqa: B010
    setattr(_Logger, "makeRecord", _make_record)  # noqa: B010
    setattr(_Logger, "debug", _level_method(logging.DEBUG))  # noqa: B010
    setattr(_Logger, "info", _level_method(logging.INFO))  # noqa: B010


def uninstall() -> None:
    """Put the original logging methods back (for tests)."""
    global _installed
    _installed = False
    setattr(_Logger, "isEnabledFor", _orig_is_enabled_for)  # noqa: B010
    setattr(_Logger, "_log", _orig_log)  # noqa: B010
    setattr(_Logger, "makeRecord", _orig_make_record)  # noqa: B010
    setattr(_Logger, "debug", _orig_debug)  # noqa: B010
    setattr(_Logger, "info", _orig_info)  # noqa: B010


# Installed on import, not only when the first middleware is built (Starlette builds
# its middleware stack at the first request): a format using %(request_id)s must
# work for records logged at start-up too.
install()
