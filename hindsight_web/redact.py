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
- pairs such as ``('Authorization', 'Bearer ...')``, a URL's password
  (``postgres://app:...@db``) and a bearer token written alone;
- a key given as its own argument (``log.debug("%s=%s", "password", value)``),
  seen in the formatted message;
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
argument a test for ``=`` and ``:`` and a set lookup among the keys' usual
spellings (`Redactor.names`); only texts that mention a key are scanned for
shapes, in one pass. Patterns, when given, are matched against every kept
message formatted.
"""

from __future__ import annotations

import hashlib
import re
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from typing import Any

from .messages import Shown, formatted, text

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
# (A comma between two quoted texts separates a pair: ('Authorization', 'Bearer ...').)
_SEPARATOR = re.compile(r"""[ \t]*[=:][ \t]*|(?<=["'])[ \t]*,[ \t]*(?=\\?["'])""")
_VALUE = re.compile(
    r"""(?:"(?:[^"\\\n]|\\.)*"?|'(?:[^'\\\n]|\\.)*'?)"""
    r"""|(?:(?:bearer|basic|digest|token|negotiate|bot)[ \t]+)?[^\s&,;"'}\])]*""",
    re.IGNORECASE,
)
# The password of a URL (postgres://user:secret@host/db), a bearer token written alone.
_USERINFO = re.compile(r"(?<=://)([^/\s:@]*):([^/\s@]+)@")
_BEARER = re.compile(r"(\bbearer[ \t]+)[^\s\"',;]{4,}", re.IGNORECASE)
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
# A %-format placeholder (Python's printf-style formatting).
_PLACEHOLDER = re.compile(
    r"%(?:\((?P<key>[^)%]{0,100})\))?[#0 +-]*(?:\*|\d+)?(?:\.(?:\*|\d+))?[hlL]?"
    r"(?P<conv>[diouxXeEfFgGcrsa%])"
)
_SCALARS = frozenset((int, float, bool, type(None), complex))
_MAX_DEPTH = 8  # levels of containers walked


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
        compiled = []
        for i, pattern in enumerate(_strings("redact_patterns", patterns)):
            try:
                compiled.append(re.compile(pattern))
            except re.error as exc:
                raise ValueError(
                    f"invalid 'redact_patterns[{i}]' {pattern[:60]!r}: not a regular "
                    f"expression ({exc})"
                ) from None
        self.patterns: tuple[re.Pattern[str], ...] = tuple(compiled)
        # format string -> its Plan; looked up on the request path, filled on first sight
        self.plans: dict[str, Plan] = {}
        # The usual spellings of the keys (and of the headers that hold secrets): a str
        # argument that is one may be the key of the next ("%s=%s"), so the request
        # path looks closer at its call.
        self.names = frozenset(_spellings(self.keys))

    # -- names and values -----------------------------------------------------------

    def secret(self, name: str) -> bool:
        """Whether a field called `name` holds a secret (its name contains a key)."""
        return self._holds_key(name.lower())

    def _holds_key(self, low: str) -> bool:
        """Whether lower-case text `low` holds a key: a quick look for a key's first
        word, then the keys themselves."""
        return self._words.search(low) is not None and self._mention.search(low) is not None

    def mentions(self, value: str) -> bool:
        """Whether `value` holds a key anywhere (ignoring case and separators), a URL's
        password or a bearer token: what `text` may redact besides the patterns."""
        low = value.lower()
        if self._holds_key(low):
            return True
        if "://" in value and "@" in value and _USERINFO.search(value) is not None:
            return True
        return "bearer" in low and _BEARER.search(value) is not None

    def text(self, value: str) -> str:
        """`value` with the values of its key shapes and the matches of the patterns
        redacted; `value` itself when nothing is."""
        low = value.lower()
        if self._holds_key(low):
            value = self._shapes(value)
        if "://" in value and "@" in value:
            value = _USERINFO.sub(r"\1:" + REDACTED + "@", value)
        if "bearer" in low:
            value = _BEARER.sub(r"\1" + REDACTED, value)
        for pattern in self.patterns:
            value = pattern.sub(REDACTED, value)
        return value

    def value(self, value: Any, depth: int = 0) -> Any:
        """A copy of `value` redacted: texts as `text`, in mappings the values of secret
        keys replaced, lists, tuples and sets walked (and a pair whose first item is a
        secret name, as headers come, its second item replaced), what formatting read of
        an object at log time (`messages.Shown`) redacted as text; other objects as
        they are."""
        kind = type(value)
        if kind is str:
            return self.text(value)
        if kind in _SCALARS:
            return value
        if kind is Shown:
            return Shown(self.text(value.text), self.text(value.rep))
        if depth >= _MAX_DEPTH:
            return value
        if isinstance(value, Mapping):
            return self.fields(value, depth + 1)
        if kind in (list, tuple, set, frozenset):
            if kind in (list, tuple) and len(value) == 2 and self._names_secret(value[0]):
                return kind((value[0], REDACTED))
            return kind(self.value(v, depth + 1) for v in value)
        return value

    def fields(self, fields: Mapping[Any, Any], depth: int = 0) -> dict[Any, Any]:
        """A copy of `fields` with the values of secret names replaced, the others as
        `value` redacts them."""
        return {
            k: REDACTED if self._names_secret(k) else self.value(v, depth)
            for k, v in fields.items()
        }

    def _names_secret(self, name: object) -> bool:
        if type(name) is bytes:
            name = name.decode("latin-1")
        return type(name) is str and self.secret(name)

    # -- log calls ------------------------------------------------------------------

    def call(self, msg: object, args: Any) -> tuple[object, Any]:
        """The message and arguments of a log call to keep: redacted, the format and the
        arguments kept apart when it can be, else the message formatted."""
        if type(msg) is not str:
            if isinstance(msg, Mapping):  # an event dict (structlog)
                return self.fields(msg), (self.value(args) if args else args)
            return self._formatted(text(msg, args), msg, args)
        if len(msg) > _MAX_PLANNED:  # too long to plan: formatted, then redacted
            return self._formatted(text(msg, args), msg, args)
        plan = self.plan(msg)
        if not args:
            return (msg, args) if plan is CLEAN else self._formatted(msg, msg, args)
        if plan.whole:
            shown = formatted(msg, args)
            if shown is None:  # cannot be formatted: what fails shows the arguments
                return self.text(msg), tuple(REDACTED for _ in args)
            return self.text(shown), ()
        if type(args) is not tuple:  # a mapping kept as the record's args
            return msg, self._mapping(args, plan.slots)
        look = bool(self.patterns)
        if len(args) == 1 and isinstance(args[0], Mapping) and 0 not in plan.slots:
            # log.debug("%(user)s %(password)s", {...}): the mapping's secret keys
            args = (self._mapping(args[0], plan.slots),)
        else:
            kept = []
            for i, arg in enumerate(args):
                kind = type(arg)
                if i in plan.slots:
                    arg = REDACTED
                elif kind is str:
                    # "%s=%s" % ("password", ...): a key given as an argument shows only
                    # once formatted
                    look = look or (_key_like(arg) and self.secret(arg))
                    arg = self.text(arg)
                elif kind not in _SCALARS:
                    look = True
                kept.append(arg)
            args = tuple(kept)
        if look:  # what the formatted message shows is what counts
            return self._formatted(text(msg, args), msg, args)
        return msg, args

    def _formatted(self, shown: str, msg: object, args: Any) -> tuple[object, Any]:
        """The formatted message `shown` redacted, if redacting changes it; else `msg` and
        `args` as they are."""
        redacted = self.text(shown)
        return (redacted, ()) if redacted != shown else (msg, args)

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
        placeholders = []  # (start, end, slot, conversion)
        index = 0
        if "%" in msg:
            for found in _PLACEHOLDER.finditer(msg):
                conversion = found.group("conv")
                if conversion == "%":
                    continue
                index += found.group().count("*")  # a * width or precision takes an argument
                key = found.group("key")
                slot = index if key is None else key
                placeholders.append((found.start(), found.end(), slot, conversion))
                index += 1
        if not self.mentions(msg):
            return CLEAN
        if ("://" in msg and _USERINFO.search(msg)) or _BEARER.search(msg):
            return Plan(frozenset(), True)  # a URL's password, a token: formatted
        starts = [p[0] for p in placeholders]
        slots: set[int | str] = set()
        for start, end, _ in self._secret_values(msg):
            inside = placeholders[bisect_left(starts, start) : bisect_left(starts, end)]
            rest = msg[start:end]
            for p_start, p_end, _, _ in reversed(inside):
                rest = rest[: p_start - start] + rest[p_end - start :]
            if rest.strip("\"' \t") or any(p[3] not in "sra" for p in inside):
                return Plan(frozenset(), True)  # a literal value, a number: formatted
            slots.update(p[2] for p in inside)
        return Plan(frozenset(slots), False) if slots else CLEAN

    def _mapping(self, args: Any, slots: frozenset[int | str]) -> Any:
        if not isinstance(args, Mapping):
            return self.value(args)
        return {
            k: REDACTED if k in slots or self._names_secret(k) else self.value(v)
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
            if name_end < at and name_end > 0 and value[name_end - 1] == "\\":
                name_end -= 1  # JSON in a string: {\"password\": \"...\"}
            name_start = name_end
            while name_start > 0 and value[name_start - 1] in _NAME_CHARS:
                name_start -= 1
            if name_start == name_end or not self.secret(value[name_start:name_end]):
                continue
            start = separator.end()
            if value.startswith(REDACTED, start):
                done = start + len(REDACTED)
                continue  # redacted already
            found = _VALUE.match(value, start)
            end = start if found is None else found.end()
            quote = value[start : start + 1]
            escaped = value[start : start + 2]
            if escaped in ('\\"', "\\'"):  # an escaped quote opens it: up to the next one
                close = value.find(escaped, start + 2)
                end = len(value) if close < 0 else close + 2
                replacement = escaped + REDACTED + (escaped if close >= 0 else "")
            elif quote in ("'", '"') and end > start:
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


_SECRET_HEADERS = (
    "Authorization",
    "Proxy-Authorization",
    "Cookie",
    "Set-Cookie",
    "X-Api-Key",
    "X-Auth-Token",
    "X-Csrf-Token",
    "X-CSRFToken",
    "access_token",
    "refresh_token",
    "id_token",
    "client_secret",
    "sessionid",
    "csrftoken",
)


def _spellings(keys: tuple[str, ...]) -> set[str]:
    """The usual ways of writing `keys` and the secret headers: as given, lower, upper and
    title case, with ``_`` or ``-`` between words, and as HTTP headers and environ keys."""
    found: set[str] = set()
    for key in (*keys, *_SECRET_HEADERS):
        words = [w for w in re.split(r"[-_. ]+", key) if w]
        for joined in ("_".join(words), "-".join(words), "".join(words)):
            found.update((key, joined, joined.lower(), joined.upper(), joined.title()))
        found.add("HTTP_" + "_".join(words).upper())
        found.add("".join(words[:1]).lower() + "".join(w.title() for w in words[1:]))  # apiKey
    return found


def _key_like(value: object) -> bool:
    """Whether an argument could be a key given on its own: a short text, no shape."""
    return type(value) is str and len(value) <= _MAX_KEY and "=" not in value and ":" not in value


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
