"""The ``hindsight-web`` command: manage a running app's rules, find and release its
recent requests, and see what its count rules fired, through its admin API.

Usage::

    export HINDSIGHT_URL=http://127.0.0.1:8000/_hindsight HINDSIGHT_ADMIN_TOKEN=s3cret
    hindsight-web rules list                    # count rules with their top keys, tag rules' tags
    hindsight-web rules add '{"action": "release", "match": {"path": "/checkout/*"}}'
    hindsight-web rules add rules.json          # one rule, a list, or {"rules": [...]}; - is stdin
    hindsight-web rules rm checkout-slow
    hindsight-web detail alice --ttl 30m        # alice's requests write from DEBUG, live
    hindsight-web detail alice --backfill 15m   # ... and release hers of the last 15 minutes
    hindsight-web undetail alice
    hindsight-web audit --limit 20
    hindsight-web sinks                         # where releases go: sent, queued, dropped, errors
    hindsight-web stats [--slow | --sessions | --tags] [--limit N]
    hindsight-web alerts [--limit N]            # what count rules fired; the targets' deliveries
    hindsight-web requests --user-id alice --status 5xx --since -15m   # the window, newest first
    hindsight-web show 6cf5e022f83c427895fd405f17114c34                 # one request's records
    hindsight-web release --path '/checkout*' --since -10m --note 'ticket 4711' [--yes]

The options ``--url``, ``--token``, ``--json`` and ``--timeout`` go before or after
the command. ``--json`` prints the admin API's answer as is (indented, keys
sorted); the calls that answer nothing (``rules rm``, ``undetail``) print what
they removed. ``release`` asks before it releases (on stderr, the answer read from
stdin) unless ``--yes`` is given.

The exit codes are listed by ``hindsight-web --help`` (`EXIT_CODES` below).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from ._version import __version__
from .audit import ACTIONS as AUDIT_ACTIONS

if TYPE_CHECKING:
    import httpx

__all__ = ["main"]

OK, API_ERROR, USAGE, UNREACHABLE, TOKEN_REFUSED, READ_ONLY, BAD_ANSWER, NOT_CONFIRMED = range(8)

EXIT_CODES = """\
exit codes:
  0  done
  1  the admin refused the call: bad input (400, 422: the fields are named),
     no such rule, user or request (404), an id already taken (409)
  2  usage: bad arguments, no URL or token, rule input that cannot be read
  3  the app cannot be reached: connection refused, timeout, unknown host
  4  the admin refused the token (401)
  5  the read-only token was used for a change (403)
  6  the answer is not the admin API's (not JSON, wrong URL) or the admin failed (5xx)
  7  a release was not confirmed (no "y" answered, and no --yes)
"""
URL_HINT = "--url should be the admin's base URL, e.g. http://127.0.0.1:8000/_hindsight"
TTL_FORMS = "seconds (90) or a number with s, m, h or d (90s, 30m, 2h, 1d)"
_TTL = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
TIME_FORMS = "ISO 8601 (2026-11-30T14:00:00Z), now, or a time ago: -30s, -15m, -2h, -1d"
STATUS_FORMS = "a status (500), a class (5xx), a range (400-499) or a list (500,502)"
_AGO = re.compile(r"-?\s*\d+(?:\.\d+)?\s*[smhd]")
_STATUS = re.compile(r"([1-9])xx|(\d{3})-(\d{3})|\d{3}(?:,\d{3})*")
MAX_LIMIT = 1000
"""The most requests one ``GET /requests`` answers with."""
DEFAULT_LIMIT = 50
"""How many it answers with when no ``limit`` is given."""
# The filters of `requests` and `release` by their name in the API, and the options that
# give them (a refusal names the API's field; the error names the option too).
_MATCH_FILTERS = (
    "user_id",
    "session_id",
    "client_ip",
    "method",
    "path",
    "route",
    "status",
    "min_duration_ms",
    "message",
)
_OPTIONS = {
    **{name: "--" + name.replace("_", "-") for name in _MATCH_FILTERS},
    "duration_ms": "--min-duration-ms",
    "since": "--since",
    "until": "--until",
    "limit": "--limit",
    "released": "--released/--not-released",
    "note": "--note",
    "sinks": "--sink",
    "field": "--field",
    "backfill_s": "--backfill",
    "ttl_s": "--ttl",
    "level": "--level",
}
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class CliError(Exception):
    """A failure to report on one line of stderr, with the exit code it gives."""

    def __init__(self, message: str, code: int, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class Api:
    """A client of one admin API: each call returns the decoded JSON answer or raises CliError.

    Args:
        url: the admin's base URL, e.g. ``http://127.0.0.1:8000/_hindsight``.
        token: the bearer token (admin or read-only).
        timeout: seconds to wait for the connection and for the answer.
    """

    def __init__(self, url: str, token: str, timeout: float) -> None:
        try:
            import httpx
        except ImportError:
            raise CliError(
                "this command needs httpx: pip install 'hindsight-web[cli]'", USAGE
            ) from None
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._client = httpx.Client(
            timeout=timeout,
            headers={
                "authorization": f"Bearer {token}",
                "accept": "application/json",
                "user-agent": f"hindsight-web/{__version__}",
            },
        )

    def close(self) -> None:
        """Close the connections."""
        self._client.close()

    def call(
        self,
        method: str,
        path: str,
        body: object = None,
        params: Mapping[str, str | int | float | None] | None = None,
        options: Mapping[str, str] | None = None,
    ) -> Any:
        """Make one call (`path` below the base URL, segments quoted); None for a 204.

        `options` names the command's option for each field of the API a refusal may name.
        """
        import httpx

        what = f"{method} {path}"
        try:
            response = self._client.request(
                method,
                self.url + path,
                json=body,
                params={k: v for k, v in (params or {}).items() if v is not None},
            )
        except httpx.TimeoutException:
            raise CliError(
                f"no answer from {self.url} within {self.timeout:g} s (see --timeout)", UNREACHABLE
            ) from None
        except (httpx.TransportError, httpx.InvalidURL) as exc:
            raise CliError(
                f"cannot reach {self.url}: {str(exc) or type(exc).__name__}", UNREACHABLE
            ) from None
        return _answer(what, response, options or {})


def _answer(what: str, response: httpx.Response, options: Mapping[str, str]) -> Any:
    """The decoded answer to a successful call (None for 204), else the CliError it means."""
    status = response.status_code
    if status == 204:
        return None
    try:
        body = response.json()
    except ValueError:
        if status < 400:
            kind = response.headers.get("content-type", "no content type")
            raise CliError(
                f"the answer to {what} is not JSON (HTTP {status}, {kind}); {URL_HINT}",
                BAD_ANSWER,
                status,
            ) from None
        body = None
    if status < 400:
        return body
    raise _refusal(what, status, body, options)


def _refusal(what: str, status: int, body: object, options: Mapping[str, str]) -> CliError:
    """The error for an answer of `status` >= 400, naming the API's message and fields."""
    error = body.get("error") if isinstance(body, dict) else None
    if status == 401:
        message = "the admin refused the token (HTTP 401); check --token or HINDSIGHT_ADMIN_TOKEN"
        return CliError(message, TOKEN_REFUSED, status)
    if status == 403:
        message = (
            f"the admin refused {what} with this token (HTTP 403): {error or 'forbidden'}; "
            "changes need the admin token, not the read-only one"
        )
        return CliError(message, READ_ONLY, status)
    if not isinstance(body, dict) or not isinstance(error, str):
        message = f"no hindsight admin API answered {what} (HTTP {status}); {URL_HINT}"
        return CliError(message, BAD_ANSWER, status)
    details = body.get("details")
    fields = "; ".join(
        _detail(str(d.get("field")), str(d.get("error")), error, options)
        for d in (details if isinstance(details, list) else [])
        if isinstance(d, dict)
    )
    verb = "failed on" if status >= 500 else "refused"
    message = f"the admin {verb} {what} (HTTP {status}): {error}"
    code = BAD_ANSWER if status >= 500 else API_ERROR
    return CliError(message + (f" [{fields}]" if fields else ""), code, status)


def _detail(field: str, problem: str, error: str, options: Mapping[str, str]) -> str:
    """One field a refusal names, as ``field: problem``; with the command's option that
    gave it when there is one: ``--status`` alone when `error` already says the problem,
    else ``status (--status): problem``."""
    key = "field" if field.startswith("field.") else field.removeprefix("match.")
    option = options.get(key.split(".")[0].split("[")[0])
    if option is None:
        return f"{field}: {problem}"
    if problem in error:
        return option
    return f"{field} ({option}): {problem}"


# -- commands ------------------------------------------------------------------------------


def rules_list(api: Api, args: argparse.Namespace) -> int:
    """``rules list``: every rule, as a table."""
    return _emit(args, api.call("GET", "/rules"), lambda answer: _rules_table(answer["rules"]))


def rules_add(api: Api, args: argparse.Namespace) -> int:
    """``rules add``: post each rule of the input, print the stored rules."""
    rules, single = _read_rules(args.source)
    stored: list[Any] = []
    for number, rule in enumerate(rules, 1):
        try:
            stored.append(api.call("POST", "/rules", rule))
        except CliError as exc:
            if len(rules) == 1:
                raise
            if stored:
                _emit(args, {"rules": stored}, lambda answer: _rules_table(answer["rules"]))
            rule_id = rule.get("id") if isinstance(rule, dict) else None
            where = f"rule {number} of {len(rules)}" + (f" (id {rule_id!r})" if rule_id else "")
            done = f"; the {len(stored)} before it were added" if stored else ""
            rest = "; the rest were not sent" if number < len(rules) else ""
            raise CliError(f"{where}: {exc}{done}{rest}", exc.code, exc.status) from None
    answer = stored[0] if single else {"rules": stored}
    return _emit(args, answer, lambda _: _rules_table(stored))


def rules_rm(api: Api, args: argparse.Namespace) -> int:
    """``rules rm``: remove each rule; a missing one is reported and the others still go."""
    removed: list[str] = []
    code = OK
    for rule_id in args.ids:
        try:
            api.call("DELETE", f"/rules/{_segment(rule_id)}")
        except CliError as exc:
            if exc.code != API_ERROR:
                raise
            _complain(str(exc))
            code = API_ERROR
            continue
        removed.append(rule_id)
    _emit(args, {"removed": removed}, _removed_text)
    return code


def detail(api: Api, args: argparse.Namespace) -> int:
    """``detail USER``: write the user's requests from `--level` up, live, for `--ttl`."""
    given = (
        ("ttl_s", args.ttl),
        ("level", args.level),
        ("note", args.note),
        ("backfill_s", args.backfill),
    )
    body = {key: value for key, value in given if value is not None}
    rule = api.call("POST", f"/users/{_segment(args.user)}/detail", body, options=_OPTIONS)
    return _emit(args, rule, lambda rule: _detail_text(rule, args.backfill))


def undetail(api: Api, args: argparse.Namespace) -> int:
    """``undetail USER``: remove every detail rule of the user."""
    api.call("DELETE", f"/users/{_segment(args.user)}/detail")
    answer = {"user_id": args.user, "detail": False}
    return _emit(args, answer, lambda _: f"detail off for user {_clean(args.user)!r}")


def audit(api: Api, args: argparse.Namespace) -> int:
    """``audit``: the rule changes, newest first."""
    given = {
        "limit": args.limit,
        "by": args.by,
        "action": args.action,
        "since": args.since,
        "until": args.until,
    }
    answer = api.call("GET", "/audit", params={k: v for k, v in given.items() if v is not None})
    return _emit(args, answer, lambda answer: _audit_table(answer["events"]))


def sinks(api: Api, args: argparse.Namespace) -> int:
    """``sinks``: the outputs of the process that answers, with their counts and last error."""
    answer = api.call("GET", "/sinks")
    return _emit(args, answer, lambda answer: _sinks_table(answer["sinks"]))


def stats(api: Api, args: argparse.Namespace) -> int:
    """``stats``: totals and routes, or the slowest requests (--slow) or sessions
    (--sessions), or the requests per tag value (--tags)."""
    path, render = "/stats", lambda answer: _stats_text(answer, args.limit)
    if args.slow:
        path, render = "/stats/slow", _slow_table
    elif args.sessions:
        path, render = "/stats/sessions", _sessions_table
    elif args.tags:
        path, render = "/stats/tags", lambda answer: _tags_table(answer, args.limit)
    limited = path in ("/stats/slow", "/stats/sessions")  # the others are cut here
    answer = _get_newer(api, path, {"limit": args.limit} if limited else None)
    return _emit(args, answer, render)


def alerts(api: Api, args: argparse.Namespace) -> int:
    """``alerts``: the recent firings of count rules, newest first, then how the alert
    targets of the process that answers delivered them."""
    answer = _get_newer(api, "/alerts", {"limit": args.limit})
    return _emit(args, answer, _alerts_text)


def _get_newer(api: Api, path: str, params: Mapping[str, int | None] | None) -> Any:
    """``GET path``, a call that an older app may not have: its 404 says so."""
    try:
        return api.call("GET", path, params=params)
    except CliError as exc:
        if exc.code == API_ERROR and exc.status == 404:
            raise CliError(
                f"the app's admin API has no {path} call (HTTP 404); "
                "its hindsight-web may be older than this command",
                API_ERROR,
                404,
            ) from None
        raise


def requests(api: Api, args: argparse.Namespace) -> int:
    """``requests``: the requests of every process's window that match, newest first."""
    params = _search_params(args)
    params["limit"] = args.limit
    if args.released is not None:
        params["released"] = "true" if args.released else "false"
    answer = api.call("GET", "/requests", params=params, options=_OPTIONS)
    limit = args.limit or DEFAULT_LIMIT
    return _emit(args, answer, lambda answer: _requests_text(answer, limit))


def show(api: Api, args: argparse.Namespace) -> int:
    """``show REQUEST_ID``: one request of the window, its facts and the records it holds."""
    answer = api.call("GET", f"/requests/{_segment(args.request_id)}")
    return _emit(args, answer, _request_text)


def release(api: Api, args: argparse.Namespace) -> int:
    """``release``: write the records of the window's requests that match, once each.

    Unless ``--yes`` is given, the same search is made first and the count it finds is
    put to the user, who answers on stdin.
    """
    if not args.yes:
        params = {**_search_params(args), "released": "false", "limit": MAX_LIMIT}
        found = api.call("GET", "/requests", params=params, options=_OPTIONS)
        count = len(found["requests"])
        if not count:
            nothing = {
                "released": 0,
                "processes": found["processes"],
                "complete": found["complete"],
            }
            return _emit(args, nothing, _nothing_to_release_text)
        many = "at least " if count >= MAX_LIMIT else ""
        question = (
            f"release the records of {many}{count} request{_s(count)} ({_answered(found)})? [y/N] "
        )
        _confirm(question)
    body: dict[str, Any] = {"match": _release_match(args)}
    body.update(
        (key, value)
        for key, value in (
            ("since", args.since),
            ("until", args.until),
            ("note", args.note),
            ("sinks", args.sinks),
        )
        if value is not None
    )
    answer = api.call("POST", "/release", body, options=_OPTIONS)
    return _emit(args, answer, _released_text)


def _search_params(args: argparse.Namespace) -> dict[str, str | int | float | None]:
    """The query parameters of the filters given to `requests` or `release`."""
    params: dict[str, str | int | float | None] = {
        name: getattr(args, name) for name in _MATCH_FILTERS
    }
    if args.min_duration_ms is not None:
        params["min_duration_ms"] = f"{args.min_duration_ms:g}"
    params["since"] = args.since
    params["until"] = args.until
    for name, value in getattr(args, "field", None) or []:
        params[f"field.{name}"] = value
    return params


def _release_match(args: argparse.Namespace) -> dict[str, Any]:
    """The rule ``match`` of the filters given to `release`."""
    match: dict[str, Any] = {
        name: getattr(args, name)
        for name in _MATCH_FILTERS
        if name not in ("status", "min_duration_ms") and getattr(args, name) is not None
    }
    if args.status is not None:
        match["status"] = status_match(args.status)
    if args.min_duration_ms is not None:
        match["duration_ms"] = {"gte": args.min_duration_ms}
    return match


def _confirm(question: str) -> None:
    """Ask `question` on stderr; return if the answer on stdin is yes, else raise CliError."""
    print(question, end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline()
    if not answer or not sys.stdin.isatty():  # a terminal echoed the answer and its newline
        print(file=sys.stderr)
    if not answer:
        raise CliError(
            "not released: no answer on stdin (--yes releases without asking)", NOT_CONFIRMED
        )
    if answer.strip().lower() not in ("y", "yes"):
        raise CliError("not released", NOT_CONFIRMED)


# -- input ---------------------------------------------------------------------------------


def _read_rules(source: str) -> tuple[list[Any], bool]:
    """The rules of `source` (inline JSON, a file, or - for stdin) and whether it held one."""
    if source == "-":
        text, name = sys.stdin.read(), "stdin"
    elif source.lstrip()[:1] in ("{", "["):
        text, name = source, "the inline rule"
    else:
        try:
            with open(source, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise CliError(f"cannot read rule file {source!r}: {exc}", USAGE) from None
        name = f"rule file {source!r}"
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise CliError(f"{name} is not valid JSON: {exc}", USAGE) from None
    if isinstance(data, dict) and isinstance(data.get("rules"), list):
        data = data["rules"]
    elif isinstance(data, dict):
        return [data], True
    if not isinstance(data, list):
        raise CliError(
            f'{name}: expected a rule object, a list of rules or {{"rules": [...]}}', USAGE
        )
    if not data:
        raise CliError(f"{name} holds no rules", USAGE)
    return data, False


def parse_ttl(text: str) -> float:
    """A ``--ttl`` value in seconds: ``90``, ``90s``, ``30m``, ``2h``, ``1d``.

    Raises:
        argparse.ArgumentTypeError: any other form, or zero.
    """
    m = _TTL.fullmatch(text.strip().lower())
    seconds = float(m[1]) * _UNITS[m[2]] if m else 0.0
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected {TTL_FORMS}")
    return int(seconds) if seconds.is_integer() else seconds


def parse_moment(text: str) -> str:
    """A ``--since`` / ``--until`` value as the admin API takes it: ``15m`` is ``-15m``
    (15 minutes ago); ISO 8601 and ``now`` go as they are, checked by the API."""
    given = text.strip()
    if _AGO.fullmatch(given):
        return given if given.startswith("-") else "-" + given
    if not given:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected {TIME_FORMS}")
    return given


def parse_status(text: str) -> str:
    """A ``--status`` value: ``500``, ``5xx``, ``400-499`` or ``500,502``."""
    given = text.strip()
    m = _STATUS.fullmatch(given)
    if not m or (m[2] is not None and int(m[2]) > int(m[3])):
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected {STATUS_FORMS}")
    return given


def status_match(text: str) -> Any:
    """A ``--status`` value (checked by `parse_status`) as a rule's ``match`` value.

    Example::

        status_match("5xx")  # {'gte': 500, 'lte': 599}
    """
    m = _STATUS.fullmatch(text)
    if m and m[1] is not None:
        return {"gte": int(m[1]) * 100, "lte": int(m[1]) * 100 + 99}
    if m and m[2] is not None:
        return {"gte": int(m[2]), "lte": int(m[3])}
    numbers = [int(part) for part in text.split(",")]
    return numbers[0] if len(numbers) == 1 else numbers


def _field(text: str) -> tuple[str, str]:
    name, equals, value = text.partition("=")
    if not equals or not name.isidentifier():
        raise argparse.ArgumentTypeError(
            f"invalid value {text!r}: expected NAME=VALUE, NAME a field given to bind()"
        )
    return name, value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected a number >= 0")
    return value


def _limit(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(
            f"invalid value {text!r}: expected an integer from 1 to {MAX_LIMIT}"
        )
    return int(text)


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected an integer >= 1")
    return int(text)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected seconds > 0")
    return value


# -- output --------------------------------------------------------------------------------


def _emit(args: argparse.Namespace, answer: Any, render: Callable[[Any], str]) -> int:
    """Print `answer` as JSON (--json) or as `render` makes it readable."""
    if args.json:
        print(json.dumps(answer, indent=2, sort_keys=True))
        return OK
    try:
        text = render(answer)
    except (KeyError, TypeError, AttributeError, IndexError) as exc:
        raise CliError(
            f"unexpected answer from the admin ({type(exc).__name__}: {exc}); {URL_HINT}",
            BAD_ANSWER,
        ) from None
    print(text)
    return OK


def _rules_table(rules: list[dict[str, Any]]) -> str:
    """The rules; when there are count rules, what each counts, does and its top keys
    now; when there are tag rules, their tags."""
    if not rules:
        return "no rules"
    headers = ["id", "action", "match", "level", "priority", "sample", "dry_run", "expires in"]
    headers.append("hits")
    rows: list[list[object]] = [
        [
            rule["id"],
            rule["action"],
            _compact(rule.get("match")),
            rule.get("level"),
            rule.get("priority"),
            rule.get("sample_rate"),
            rule.get("dry_run"),
            _expires_in(rule.get("ttl_s")),
            rule.get("hits"),
        ]
        for rule in rules
    ]
    if any(rule["action"] == "count" for rule in rules):
        headers += ["key", "threshold", "then", "top keys"]
        for row, rule in zip(rows, rules, strict=True):
            row += _count_cells(rule) if rule["action"] == "count" else [None] * 4
    if any(rule["action"] == "tag" for rule in rules):
        headers.append("tags")
        for row, rule in zip(rows, rules, strict=True):
            row.append(_pairs(rule["tags"]) if rule["action"] == "tag" else None)
    for row, rule in zip(rows, rules, strict=True):
        row.append(rule.get("note"))
    return table([*headers, "note"], rows)


def _count_cells(rule: dict[str, Any]) -> list[object]:
    """A count rule's key, ``3 in 1m``, its then-actions and its top keys now
    (``203.0.113.9 (7), 198.51.100.2 (3)``; none in the answer to ``rules add``)."""
    top = rule.get("top_keys") or []
    return [
        rule["key"],
        f"{rule['threshold']} in {_span(rule['window_s'])}",
        ", ".join(_then_text(then) for then in rule["then"]),
        ", ".join(f"{k['key']} ({k['count']})" for k in top) or None,
    ]


def _then_text(then: dict[str, Any]) -> str:
    """One then-action: ``detail 15m``, ``alert security``, ``release``,
    ``tag compliance=pci 30m``."""
    if "alert" in then:
        return f"alert {then['alert']}"
    parts = [str(then["action"])]
    if then.get("tags"):
        parts.append(_pairs(then["tags"]))
    if then.get("ttl_s") is not None:
        parts.append(_span(then["ttl_s"]))
    if then.get("level") is not None:
        parts.append(f"from {then['level']}")
    return " ".join(parts)


def _pairs(fields: dict[str, Any]) -> str:
    return ", ".join(f"{name}={value}" for name, value in fields.items())


def _alerts_text(answer: dict[str, Any]) -> str:
    """The firings, newest first, then the alert targets (a blank line between)."""
    fired = answer["alerts"]
    parts = [_firings_table(fired) if fired else "no alerts fired"]
    targets = answer["targets"]
    parts.append(
        _sinks_table(targets) if targets else "no alert targets (the app's 'alerts' option)"
    )
    if answer.get("stale"):
        parts.append("stale: the store cannot be read, the firings as last read")
    return "\n\n".join(parts)


def _firings_table(fired: list[dict[str, Any]]) -> str:
    headers = ["at", "rule", "key", "count", "window", "made", "sample", "note"]
    rows = [
        [
            f["at"],
            f["rule"] + (" (dry run)" if f.get("dry_run") else ""),
            f"{f['key_name']}={f['key']}",
            f"{f['count']}/{f['threshold']}",
            _span(f["window_s"]),
            ", ".join(f["made"]) or None,
            f["samples"][0]["request_id"] if f["samples"] else None,
            f.get("note"),
        ]
        for f in fired
    ]
    return table(headers, rows)


def _audit_table(events: list[dict[str, Any]]) -> str:
    """Rule changes; when there are releases from the window, their count and query too."""
    if not events:
        return "no rule changes"
    headers = ["at", "action", "rule id", "by", "note"]
    rows: list[list[object]] = []
    for e in events:
        rule = e.get("rule")
        if rule is None:  # a release from the window
            rows.append([e["at"], e["action"], None, e.get("by"), e.get("note")])
        else:
            rows.append([e["at"], e["action"], rule.get("id"), e.get("by"), rule.get("note")])
    if any(e.get("rule") is None for e in events):
        headers += ["count", "query"]
        for row, e in zip(rows, events, strict=True):
            row += [e.get("count"), e.get("query")]
    return table(headers, rows)


def _sinks_table(shown: list[dict[str, Any]]) -> str:
    keys = ["id", "type", "queued", "sent", "dropped", "failed", "retries", "last_error"]
    rows = [[sink.get(key) for key in keys] for sink in shown]
    headers = [key.replace("_", " ") for key in keys]
    return table(
        [*headers, "target"],
        [[*r, s.get("url") or s.get("path")] for r, s in zip(rows, shown, strict=True)],
    )


def _stats_text(answer: dict[str, Any], limit: int | None) -> str:
    totals = "  ".join(f"{key} {answer[key]}" for key in ("requests", "errors", "slow", "releases"))
    if answer.get("since"):
        totals += f"  (since {answer['since']})"
    if "processes" in answer:
        totals += f"\n{answer['processes']} process{'es' if answer['processes'] != 1 else ''}"
        if answer.get("stale"):
            totals += " (stale: the store cannot be read, other processes as last seen)"
    routes = answer["routes"]
    if not routes:
        return f"{totals}\n\nno requests recorded"
    keys = ["method", "route", "count", "errors", "p50_ms", "p95_ms", "p99_ms", "max_ms"]
    rows = [[route.get(key) for key in keys] for route in routes[:limit]]
    return f"{totals}\n\n" + table([key.replace("_ms", " ms") for key in keys], rows)


def _tags_table(answer: dict[str, Any], limit: int | None) -> str:
    tags = answer["tags"][:limit]
    if not tags:
        return "no tagged requests recorded"
    keys = ["tag", "value", "requests", "errors", "slow"]
    text = table(keys, [[t.get(key) for key in keys] for t in tags])
    if answer.get("stale"):
        text += "\n\nstale: the store cannot be read, other processes as last seen"
    return text


def _slow_table(answer: dict[str, Any]) -> str:
    requests = answer["requests"]
    if not requests:
        return "no requests recorded"
    keys = ["at", "duration_ms", "status", "method", "path", "user_id", "released", "request_id"]
    rows = [[r.get(key) for key in keys] for r in requests]
    return table(["at", "ms", "status", "method", "path", "user", "released", "request id"], rows)


def _sessions_table(answer: dict[str, Any]) -> str:
    sessions = answer["sessions"]
    if not sessions:
        return "no sessions recorded"
    keys = ["session", "user_id", "requests", "slow", "errors", "mean_ms", "max_ms", "last_seen"]
    rows = [[s.get(key) for key in keys] for s in sessions]
    headers = ["session", "user", "requests", "slow", "errors", "mean ms", "max ms", "last seen"]
    return table(headers, rows)


def _detail_text(rule: dict[str, Any], backfill_s: float | None = None) -> str:
    user = rule["match"]["user_id"]
    expires = _expires_in(rule.get("ttl_s"))
    text = (
        f"detail on for user {_clean(str(user))!r} from {rule.get('level')}, "
        f"expires in {expires} (rule {rule['id']})"
    )
    replaced = rule.get("replaced")
    if replaced:
        text += f"; it replaces rule{_s(len(replaced))} {', '.join(map(str, replaced))}"
    backfill = rule.get("backfill")
    if isinstance(backfill, dict):
        count = backfill["released"]
        text += (
            f"\nreleased {count} request{_s(count)} of the last {_span(backfill_s)} "
            f"from the window ({_answered(backfill)})"
        )
    return text


def _requests_text(answer: dict[str, Any], limit: int) -> str:
    found = answer["requests"]
    notes = [_answered(answer)]
    if len(found) >= limit:
        notes.insert(0, f"the newest {limit} shown (--limit, at most {MAX_LIMIT}, for more)")
    if not found:
        return "no requests found\n\n" + "; ".join(notes)
    rows = [
        [
            r["at"],
            r.get("duration_ms"),
            _status(r),
            r.get("method"),
            r.get("path"),
            r.get("user_id"),
            r.get("records"),
            _released(r),
            r["request_id"],
        ]
        for r in found
    ]
    headers = ["at", "ms", "status", "method", "path", "user", "records", "released", "request id"]
    return table(headers, rows) + "\n\n" + "; ".join(notes)


def _request_text(answer: dict[str, Any]) -> str:
    facts = [
        ("request", answer["request_id"]),
        ("at", answer.get("at")),
        ("method", answer.get("method")),
        ("path", answer.get("path")),
        ("route", answer.get("route")),
        ("status", _status(answer)),
        ("duration", f"{_cell(answer.get('duration_ms'))} ms"),
        ("user", answer.get("user_id")),
        ("session", answer.get("session_id")),
        ("client", answer.get("client_ip")),
        ("released", _released(answer)),
    ]
    if answer.get("fields"):
        facts.append(("fields", answer["fields"]))
    width = max(len(name) for name, _ in facts)
    lines = [f"{name.ljust(width)}  {_cell(value)}" for name, value in facts]
    records = answer["records"]
    if records:
        lines += ["", f"{len(records)} record{_s(len(records))} kept:"]
        lines += [line for record in records for line in _record_lines(record)]
    elif answer.get("released"):
        lines += ["", "no records kept: they were written to the app's logs"]
    else:
        lines += ["", "no records kept"]
    return "\n".join(lines)


def _record_lines(record: dict[str, Any]) -> list[str]:
    """One record as ``time level logger message``, then its traceback and stack, indented."""
    message, *more = str(record.get("message")).splitlines() or [""]
    head = f"{record.get('time')} {record.get('level')} {record.get('logger')} {message}"
    if record.get("fields"):
        head += "  " + _compact(record["fields"])
    lines = [_clean(head)] + [_clean("    " + line) for line in more]
    for extra in (record.get("exc_text"), record.get("stack_info")):
        if extra:
            lines += [_clean("    " + line) for line in str(extra).splitlines()]
    return lines


def _status(facts: dict[str, Any]) -> object:
    if facts.get("status") is None and facts.get("raised"):
        return f"raised {facts['raised']}"
    return facts.get("status")


def _released(facts: dict[str, Any]) -> str:
    if facts.get("released"):
        return f"yes ({facts.get('reason')})"
    if facts.get("suppressed"):
        return "summary only"
    return "no"


def _released_text(answer: dict[str, Any]) -> str:
    count = answer["released"]
    return f"released {count} request{_s(count)} ({_answered(answer)})"


def _nothing_to_release_text(answer: dict[str, Any]) -> str:
    return f"nothing to release: no request found that was not released ({_answered(answer)})"


def _answered(answer: dict[str, Any]) -> str:
    """``2 processes answered``, and whether some did not."""
    processes = answer["processes"]
    text = f"{processes} process{'es' if processes != 1 else ''} answered"
    if answer.get("complete") is False:
        text += " (incomplete: some processes did not answer in time)"
    return text


def _s(count: int) -> str:
    return "" if count == 1 else "s"


def _removed_text(answer: dict[str, list[str]]) -> str:
    return "\n".join(f"removed rule {_clean(i)}" for i in answer["removed"]) or "nothing removed"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Rows as aligned plain-text columns; a column of numbers is aligned right.

    Example::

        table(["id", "hits"], [["a", 3], ["bb", 12]])
        # 'id  hits\\na      3\\nbb    12'
    """
    cells = [[_cell(value) for value in row] for row in rows]
    right = [
        any(_is_number(row[i]) for row in rows)
        and all(_is_number(row[i]) or row[i] is None for row in rows)
        for i in range(len(headers))
    ]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]
    lines = []
    for row in [list(headers), *cells]:
        parts = [
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right, strict=True)
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}" if abs(value) < 1e6 else f"{value:.0f}"
    if isinstance(value, (dict, list)):
        return _compact(value)
    return _clean(str(value))


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _compact(value: object) -> str:
    return _clean(json.dumps(value, separators=(",", ":"), ensure_ascii=False))


def _clean(text: str) -> str:
    """`text` on one line, without control characters (a note could hold escapes)."""
    return "".join(ch if ch.isprintable() else " " for ch in text)


def _expires_in(ttl_s: object) -> str:
    """Seconds left as ``29m59s``, ``1h00m``, ``2d03h``; ``never`` for None."""
    if not isinstance(ttl_s, (int, float)) or isinstance(ttl_s, bool):
        return "never"
    s = int(ttl_s)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{s:02d}s" if minutes else f"{s}s"


def _span(seconds: float | None) -> str:
    """A length of time as ``15m``, ``1h30m``, ``90s``, ``1d``."""
    left = int(seconds or 0)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, left = divmod(left, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or f"{seconds or 0:g}s"


def _segment(text: str) -> str:
    return quote(text, safe="")


def _complain(message: str) -> None:
    print(f"hindsight-web: {_clean(message)}", file=sys.stderr)


# -- the parser and main -------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    # The options are declared on every subcommand too, with SUPPRESS defaults, so they may
    # come after the command (`hindsight-web rules list --json`) without undoing earlier ones.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url", default=argparse.SUPPRESS, help="admin base URL (env HINDSIGHT_URL)"
    )
    common.add_argument(
        "--token", default=argparse.SUPPRESS, help="bearer token (env HINDSIGHT_ADMIN_TOKEN)"
    )
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print the API's JSON"
    )
    common.add_argument(
        "--timeout",
        type=_positive_float,
        default=argparse.SUPPRESS,
        metavar="S",
        help="seconds to wait for the app (default 10)",
    )
    parser = argparse.ArgumentParser(
        prog="hindsight-web",
        description=(
            "Manage the runtime rules of an app that runs hindsight-web, find and release "
            "its recent requests, and see what its count rules fired."
        ),
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        group: Any,
        name: str,
        run: Callable[..., int],
        text: str,
        parents: Sequence[argparse.ArgumentParser] = (),
    ) -> Any:
        sub = group.add_parser(name, parents=[common, *parents], help=text, description=text)
        sub.set_defaults(run=run)
        return sub

    rules = commands.add_parser("rules", help="list, add or remove rules")
    rule_commands = rules.add_subparsers(dest="rules_command", required=True, metavar="COMMAND")
    command(
        rule_commands,
        "list",
        rules_list,
        "list the rules; count rules with what they count, do and their top keys now, "
        "tag rules with their tags",
    )
    add = command(rule_commands, "add", rules_add, "add rules and print them as stored")
    add.add_argument(
        "source",
        metavar="FILE-or-JSON",
        help='a JSON file (a rule, a list, or {"rules": [...]}), an inline rule, or - for stdin',
    )
    rm = command(rule_commands, "rm", rules_rm, "remove rules")
    rm.add_argument("ids", nargs="+", metavar="ID")
    on = command(commands, "detail", detail, "write a user's requests from a level up, live")
    on.add_argument("user", metavar="USER")
    on.add_argument(
        "--ttl", type=parse_ttl, help=f"how long: {TTL_FORMS}; default: the app's (30m)"
    )
    on.add_argument("--level", help="lowest level written (default DEBUG)")
    on.add_argument("--note", help="a note kept with the rule and in the audit trail")
    on.add_argument(
        "--backfill",
        type=parse_ttl,
        metavar="TIME",
        help=f"also release the user's requests of the last TIME from the window: {TTL_FORMS}",
    )
    off = command(commands, "undetail", undetail, "remove a user's detail rules")
    off.add_argument("user", metavar="USER")
    trail = command(
        commands, "audit", audit, "rule changes and releases from the window, newest first"
    )
    trail.add_argument("--limit", type=_positive_int, metavar="N", help="at most N events")
    trail.add_argument("--by", metavar="NAME", help="only the changes of this token's name")
    trail.add_argument("--action", choices=AUDIT_ACTIONS, help="only this kind of event")
    trail.add_argument("--since", type=parse_moment, metavar="TIME", help=TIME_FORMS)
    trail.add_argument("--until", type=parse_moment, metavar="TIME", help=TIME_FORMS)
    command(commands, "sinks", sinks, "where releases go, with what each sent, holds and dropped")
    numbers = command(
        commands,
        "stats",
        stats,
        "request statistics per route, the slowest requests or sessions, or per tag value",
    )
    which = numbers.add_mutually_exclusive_group()
    which.add_argument("--slow", action="store_true", help="the slowest requests")
    which.add_argument("--sessions", action="store_true", help="the slowest sessions")
    which.add_argument(
        "--tags",
        action="store_true",
        help="requests, errors and slow ones per value of the fields tag rules add",
    )
    numbers.add_argument("--limit", type=_positive_int, metavar="N", help="at most N rows")
    fired = command(
        commands,
        "alerts",
        alerts,
        "what count rules fired, newest first, and how the alert targets delivered it",
    )
    fired.add_argument(
        "--limit",
        type=_limit,
        metavar="N",
        help=f"at most N firings (default 50, at most {MAX_LIMIT})",
    )

    filters = argparse.ArgumentParser(add_help=False)
    match = filters.add_argument_group("what to find (all given must match)")
    match.add_argument("--user-id", metavar="USER", help="the user given to set_user()")
    match.add_argument("--session-id", metavar="SESSION", help="the session given to set_user()")
    match.add_argument("--client-ip", metavar="IP", help="an address or a network (10.0.0.0/8)")
    match.add_argument("--method", metavar="METHOD", help="GET, POST, ...")
    match.add_argument("--path", metavar="GLOB", help="the path, or a glob: '/checkout*'")
    match.add_argument("--route", metavar="ROUTE", help="the route template: /items/{item_id}")
    match.add_argument("--status", type=parse_status, metavar="STATUS", help=STATUS_FORMS)
    match.add_argument(
        "--min-duration-ms", type=_non_negative_float, metavar="MS", help="at least MS long"
    )
    match.add_argument("--message", metavar="TEXT", help="a record's message contains TEXT")
    match.add_argument("--since", type=parse_moment, metavar="TIME", help=TIME_FORMS)
    match.add_argument("--until", type=parse_moment, metavar="TIME", help=TIME_FORMS)

    found = command(
        commands, "requests", requests, "find requests in the window, newest first", [filters]
    )
    found.add_argument(
        "--field",
        type=_field,
        action="append",
        metavar="NAME=VALUE",
        help="a field given to bind() has this value (repeatable)",
    )
    done = found.add_mutually_exclusive_group()
    done.add_argument(
        "--released",
        action="store_const",
        const=True,
        help="only requests whose records were written",
    )
    done.add_argument(
        "--not-released",
        dest="released",
        action="store_const",
        const=False,
        help="only requests whose records were not written",
    )
    found.add_argument(
        "--limit",
        type=_limit,
        metavar="N",
        help=f"at most N (default {DEFAULT_LIMIT}, at most {MAX_LIMIT})",
    )
    one = command(commands, "show", show, "one request of the window and its records")
    one.add_argument("request_id", metavar="REQUEST_ID")
    out = command(
        commands,
        "release",
        release,
        "write the records of the requests in the window that match, each once",
        [filters],
    )
    out.add_argument("--note", help="a note kept in the audit trail")
    out.add_argument(
        "--sink",
        action="append",
        dest="sinks",
        metavar="ID",
        help="send the releases to this sink (repeat for more; default: the default sinks)",
    )
    out.add_argument(
        "--yes", action="store_true", help="release without asking (and without searching first)"
    )
    return parser


def _times_ago(argv: Sequence[str]) -> list[str]:
    """`argv` with ``--since -15m`` as ``--since=-15m`` (argparse takes a value that starts
    with a dash for an option)."""
    joined: list[str] = []
    for arg in argv:
        previous = joined[-1] if joined else None
        if previous in ("--since", "--until") and _AGO.fullmatch(arg.strip()):
            joined[-1] = f"{previous}={arg}"
        else:
            joined.append(arg)
    return joined


def _connect(args: argparse.Namespace) -> Api:
    url = getattr(args, "url", None) or os.environ.get("HINDSIGHT_URL")
    token = getattr(args, "token", None) or os.environ.get("HINDSIGHT_ADMIN_TOKEN")
    if not url:
        raise CliError(f"set --url or HINDSIGHT_URL ({URL_HINT})", USAGE)
    if not token:
        raise CliError("set --token or HINDSIGHT_ADMIN_TOKEN (the app's admin token)", USAGE)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise CliError(f"invalid --url {url!r}; {URL_HINT}", USAGE)
    return Api(url, token, getattr(args, "timeout", 10.0))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command with `argv` (default ``sys.argv[1:]``) and return its exit code.

    Example::

        main(["--url", "http://127.0.0.1:8000/_hindsight", "rules", "list"])
    """
    args = _parser().parse_args(_times_ago(sys.argv[1:] if argv is None else argv))
    args.json = getattr(args, "json", False)
    try:
        api = _connect(args)
        try:
            code: int = args.run(api, args)
        finally:
            api.close()
    except CliError as exc:
        _complain(str(exc))
        return exc.code
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
