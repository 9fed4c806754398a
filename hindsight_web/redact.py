"""Redaction: secrets taken out of what hindsight keeps, before it keeps it.

A record is redacted when it is kept (the request's buffer, and from there the
window, the store and every sink) or written by detail mode, never when the
app's own logging writes it at once. What is replaced with ``[redacted]``:

- the value of a field whose name contains a key (``extra`` fields, `bind()`
  fields, the keys of a dict logged as a message or an argument), ignoring case
  and ``-``, ``_``, ``.`` and spaces between words: ``password`` covers
  ``user_password``, ``api_key`` covers ``X-Api-Key`` and ``apiKey``;
- in texts (messages, their string arguments, exception and stack texts), the
  value of the shapes ``key=value``, ``key: value`` (to the end of the line, as
  a header is: ``Authorization: Bearer ...``) and ``"key": "value"`` whose key
  contains a key;
- anything a pattern of `redact_patterns` matches, in the formatted message and
  the other texts.

A ``%`` format string is looked at once (its plan is cached): the arguments
that fill the value of a key shape (``"password=%s"``) are replaced, the format
stays, so the app's record factory still gets its format and arguments. A
message that must be formatted to be redacted (a key shape with a literal
value, an argument holding a secret that is not a string, a pattern that
matches across the format and its arguments) is kept formatted, without
arguments.

The fast path: a format string without a key costs one dict lookup, a string
argument one test for ``=`` and ``:``; only texts that mention a key are
scanned for shapes. Patterns, when given, are matched against every kept
message formatted.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from typing import Any

from .messages import text as formatted

__all__ = ["BUILT_IN_KEYS", "CLEAN", "REDACTED", "Plan", "Redactor", "hash_session"]

REDACTED = "[redacted]"

BUILT_IN_KEYS = (
    "password",
    "passwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "authorization",
    "cookie",
    "session",
    "credit_card",
    "card_number",
    "cvv",
    "ssn",
    "private_key",
)

MAX_PLANS = 4096
"""Format strings whose plan is cached, at most (the cache starts again when full)."""

_MAX_PLANNED = 1000  # longer format strings are planned at each call, never cached
_MAX_KEY = 100

# Between a key and its value ("=" or ":"), and the value of a key shape.
_SEPARATOR = re.compile(r"[ \t]*[=:][ \t]*")
_VALUE = re.compile(
    r"""(?:"(?:[^"\\\n]|\\.)*"?|'(?:[^'\\\n]|\\.)*'?)"""
    r"""|(?:(?:bearer|basic|digest|token|negotiate|bot)[ \t]+)?[^\s&,;"'}\])]*""",
    re.IGNORECASE,
)
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
# A %-format placeholder (Python's printf-style formatting).
_PLACEHOLDER = re.compile(
    r"%(?:\((?P<key>[^)]*)\))?[#0 +-]*(?:\*|\d+)?(?:\.(?:\*|\d+))?[hlL]?"
    r"(?P<conv>[diouxXeEfFgGcrsa%])"
)
_SCALARS = frozenset((int, float, bool, type(None), complex))


class Plan:
    """What redacting a call made with one format string takes.

    Attributes:
        slots: the positions (ints) or mapping keys (strs) of the arguments that
            fill the value of a key shape.
        whole: the message must be formatted to be redacted (a literal value).
    """

    __slots__ = ("slots", "whole")

    def __init__(self, slots: frozenset[int | str], whole: bool) -> None:
        self.slots = slots
        self.whole = whole


CLEAN = Plan(frozenset(), False)
"""The plan of a format string that mentions no key: nothing to do but look at the arguments."""

_LOOK = Plan(frozenset(), False)  # CLEAN, but every call is looked at (there are patterns)


def hash_session(value: str) -> str:
    """A short stable pseudonym for a session id or session cookie value: sha256, the
    first 16 hex digits (no salt: the same in every worker and host).

    Hindsight shows session ids only this way; use it to find a session you know
    the id of.

    Raises:
        TypeError: `value` is not a string.

    Example::

        session_id = hash_session(request.cookies["session"])
    """
    if not isinstance(value, str):
        raise TypeError(f"invalid session value {type(value).__name__}: expected a string")
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _key_source(key: str) -> str:
    words = [re.escape(w) for w in re.split(r"[-_. ]+", key) if w]
    return "[-_. ]?".join(words)


class Redactor:
    """Takes secrets out of what hindsight keeps (see the module's docstring).

    Args:
        keys: words besides `BUILT_IN_KEYS` whose fields and key shapes are redacted
            (``redact_keys``).
        patterns: regular expressions whose matches are redacted (``redact_patterns``).

    Raises:
        ValueError: a key that is not a non-empty string of at most 100 characters, or
            a pattern that is not a string or does not compile (the message names
            ``redact_keys[i]`` / ``redact_patterns[i]``).
    """

    def __init__(self, keys: Iterable[object] = (), patterns: Iterable[object] = ()) -> None:
        extra = _strings("redact_keys", keys)
        words = list(BUILT_IN_KEYS)
        for i, key in enumerate(extra):
            source = _key_source(key.strip())
            if not source or len(key) > _MAX_KEY:
                raise ValueError(
                    f"invalid 'redact_keys[{i}]' {key[:40]!r}: expected a word of 1 to "
                    f"{_MAX_KEY} characters"
                )
            words.append(key.strip())
        self.keys = tuple(dict.fromkeys(words))
        # In a lower-case text (faster than a search that ignores case): the first word
        # of any key (a quick look), then any key.
        firsts = {re.escape(re.split(r"[-_. ]+", k.lower())[0]) for k in self.keys}
        self._words = _any_of(firsts)
        self._mention = _any_of({_key_source(k.lower()) for k in self.keys})
        self.patterns: tuple[re.Pattern[str], ...] = ()
        compiled = []
        for i, pattern in enumerate(_strings("redact_patterns", patterns)):
            try:
                compiled.append(re.compile(pattern))
            except re.error as exc:
                raise ValueError(
                    f"invalid 'redact_patterns[{i}]' {pattern[:60]!r}: not a regular "
                    f"expression ({exc})"
                ) from None
        self.patterns = tuple(compiled)
        # format string -> its Plan; looked up on the request path, filled on first sight
        self.plans: dict[str, Plan] = {}

    # -- names and values -----------------------------------------------------------

    def secret(self, name: str) -> bool:
        """Whether a field called `name` holds a secret (its name contains a key)."""
        return self.mentions(name)

    def mentions(self, value: str) -> bool:
        """Whether `value` holds a key anywhere (ignoring case and separators)."""
        low = value.lower()
        return self._words.search(low) is not None and self._mention.search(low) is not None

    def text(self, value: str) -> str:
        """`value` with the values of its key shapes and the matches of the patterns
        redacted; `value` itself when nothing is."""
        if self.mentions(value):
            value = self._shapes(value)
        for pattern in self.patterns:
            value = pattern.sub(REDACTED, value)
        return value

    def value(self, value: Any, depth: int = 0) -> Any:
        """A copy of `value` redacted: texts as `text`, in dicts the values of secret
        keys replaced, lists, tuples and sets walked (3 levels deep); other objects as
        they are."""
        kind = type(value)
        if kind is str:
            return self.text(value)
        if depth >= 3 or kind in _SCALARS:
            return value
        if kind is dict:
            return self.fields(value, depth + 1)
        if kind in (list, tuple, set, frozenset):
            return kind(self.value(v, depth + 1) for v in value)
        return value

    def fields(self, fields: Mapping[Any, Any], depth: int = 0) -> dict[Any, Any]:
        """A copy of `fields` with the values of secret names replaced, the others as
        `value` redacts them."""
        return {
            k: REDACTED if type(k) is str and self.secret(k) else self.value(v, depth)
            for k, v in fields.items()
        }

    # -- log calls ------------------------------------------------------------------

    def call(self, msg: object, args: Any) -> tuple[object, Any]:
        """The message and arguments of a log call to keep: redacted, the format and the
        arguments kept apart when it can be, else the message formatted."""
        if type(msg) is not str:
            msg = self.value(msg)
            return (msg, self.value(args)) if args else (msg, args)
        plan = self.plan(msg)
        if plan.whole:
            return self.text(formatted(msg, args)), ()
        if not args:
            return msg, args
        if type(args) is not tuple:  # a mapping kept as the record's args
            return msg, self._mapping(args, plan.slots)
        if len(args) == 1 and isinstance(args[0], Mapping) and 0 not in plan.slots:
            # log.debug("%(user)s %(password)s", {...}): the mapping's secret keys
            args = (self._mapping(args[0], plan.slots),)
            if not self.patterns:
                return msg, args
        kept = []
        other = False
        for i, arg in enumerate(args):
            kind = type(arg)
            if i in plan.slots:
                arg = REDACTED
            elif kind is str:
                arg = self.text(arg)
            elif kind not in _SCALARS:
                other = True
            kept.append(arg)
        args = tuple(kept)
        if other or self.patterns:  # what the formatted message shows is what counts
            shown = formatted(msg, args)
            redacted = self.text(shown)
            if redacted is not shown and redacted != shown:
                return redacted, ()
        return msg, args

    def plan(self, msg: str) -> Plan:
        """The plan of format string `msg` (cached)."""
        plan = self.plans.get(msg)
        if plan is None:
            plan = self._plan(msg)
            if plan is CLEAN and self.patterns:
                plan = _LOOK  # every message is matched against the patterns
            if len(msg) <= _MAX_PLANNED:
                if len(self.plans) >= MAX_PLANS:
                    self.plans = {}
                self.plans[msg] = plan
        return plan

    def _plan(self, msg: str) -> Plan:
        if not self.mentions(msg):
            return CLEAN
        slots: set[int | str] = set()
        placeholders = []
        index = 0
        for found in _PLACEHOLDER.finditer(msg):
            if found.group("conv") == "%":
                continue
            key = found.group("key")
            placeholders.append((found.start(), found.end(), index if key is None else key))
            index += 1
        for start, end, _ in self._secret_values(msg):
            inside = [p for p in placeholders if start <= p[0] < end]
            rest = msg[start:end]
            for p_start, p_end, _ in reversed(inside):
                rest = rest[: p_start - start] + rest[p_end - start :]
            if rest.strip("\"' \t"):  # a literal value, or text around the placeholders
                return Plan(frozenset(), True)
            slots.update(slot for _, _, slot in inside)
        return Plan(frozenset(slots), False) if slots else CLEAN

    def _mapping(self, args: Any, slots: frozenset[int | str]) -> Any:
        if not isinstance(args, Mapping):
            return self.value(args)
        return {
            k: REDACTED if k in slots or (type(k) is str and self.secret(k)) else self.value(v)
            for k, v in args.items()
        }

    def _secret_values(self, value: str) -> list[tuple[int, int, str]]:
        """The spans of the values of the key shapes of `value` whose name holds a key,
        each with what replaces it."""
        spans = []
        done = 0
        for separator in _SEPARATOR.finditer(value):
            at = separator.start()
            if at < done:
                continue  # inside a value already found
            name_end = at - 1 if at > 0 and value[at - 1] in "\"'" else at
            name_start = name_end
            while name_start > 0 and value[name_start - 1] in _NAME_CHARS:
                name_start -= 1
            if name_start == name_end or not self.secret(value[name_start:name_end]):
                continue
            start = separator.end()
            found = _VALUE.match(value, start)
            end = start if found is None else found.end()
            quote = value[start : start + 1]
            if quote in ("'", '"') and end > start:
                closed = end - start > 1 and value[end - 1] == quote
                replacement = quote + REDACTED + (quote if closed else "")
            else:
                replacement = REDACTED
                if ":" in separator.group():  # a header's value: to the end of the line
                    line_end = value.find("\n", start)
                    end = len(value) if line_end < 0 else line_end
                    while end > start and value[end - 1] in " \t\r":
                        end -= 1
            if end > start:  # ``token=`` alone hides nothing
                spans.append((start, end, replacement))
                done = end
        return spans

    def _shapes(self, value: str) -> str:
        """`value` with the values of its key shapes whose name holds a key redacted."""
        spans = self._secret_values(value)
        if not spans:
            return value
        parts = []
        done = 0
        for start, end, replacement in spans:
            parts.append(value[done:start])
            parts.append(replacement)
            done = end
        parts.append(value[done:])
        return "".join(parts)


def _any_of(sources: set[str]) -> re.Pattern[str]:
    return re.compile("|".join(sorted(sources, key=lambda s: (-len(s), s))))


def _strings(name: str, values: Iterable[object]) -> list[str]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ValueError(f"invalid {name!r} {values!r}: expected a list of strings")
    found = list(values)
    for i, value in enumerate(found):
        if not isinstance(value, str) or not value:
            raise ValueError(f"invalid '{name}[{i}]' {value!r}: expected a non-empty string")
    return found  # type: ignore[return-value]
