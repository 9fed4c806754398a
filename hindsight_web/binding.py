"""What the app says of its current request: who it is for (`set_user`) and the fields
every record of it carries (`bind`).

Called by the app, each checks its arguments (a wrong one is an error naming it) and
changes the request's state, which every task and thread sharing the request sees.
"""

from __future__ import annotations

from typing import Any

from .context import RESERVED, _current
from .redact import hash_session

__all__ = ["bind", "set_user"]


def set_user(user_id: str | int | None, session_id: str | int | None = None) -> None:
    """Say who the current request is for, once the app knows it.

    Every record of the request from then on carries ``user_id`` and
    ``session_id``, and rules scoped to that user or session apply. Outside a
    request this does nothing. The session id is kept and shown only as its hash
    (`hash_session`: 16 hex digits), so that nothing hindsight writes or shows can
    take the session over; rules and searches given the id itself hash it too.

    Args:
        user_id: the user's id (a string or an int), or None if unknown.
        session_id: the user's session id, if the app has one (None leaves the
            session already known, if any, as it is).

    Example::

        @app.get("/cart")
        def cart(user: User = Depends(current_user)):
            hindsight_web.set_user(user.id, session_id=user.session_id)
    """
    uid = _identity("user_id", user_id)
    sid = _identity("session_id", session_id)
    state = _current.get()
    if state is None:
        return
    state.user_id = uid
    if sid is not None:
        state.session_id = hash_session(sid)
    state.retag()
    if state.on_identity is not None:
        state.on_identity(state)


def bind(**fields: Any) -> None:
    """Attach fields to the current request: every record of it carries them.

    ``bind(user_id=..., session_id=...)`` is the same as :func:`set_user`.
    Other names become attributes of every record written for the request,
    so a formatter can print them. Outside a request this does nothing. With
    redaction on (the default), the value of a field whose name holds a
    redaction key (``token``, ``password``, ...) is kept as ``[redacted]``.

    Raises:
        ValueError: a field name is not an identifier or would overwrite a
            standard LogRecord attribute.

    Example::

        hindsight_web.bind(tenant="acme", plan="pro")
    """
    identity = {k: fields.pop(k) for k in ("user_id", "session_id") if k in fields}
    for name in fields:
        if not name.isidentifier() or name.startswith("_") or name in RESERVED:
            raise ValueError(
                f"invalid bind() field {name!r}: expected an identifier that does not start "
                f"with '_' and is not a LogRecord attribute"
            )
    uid = _identity("user_id", identity["user_id"]) if "user_id" in identity else None
    sid = _identity("session_id", identity["session_id"]) if "session_id" in identity else None
    state = _current.get()
    if state is None:
        return
    if fields:
        if state.redactor is not None:
            fields = state.redactor.fields(fields)
        state.fields = {**(state.fields or {}), **fields}
    if "user_id" in identity:
        state.user_id = uid
    if "session_id" in identity:
        state.session_id = None if sid is None else hash_session(sid)
    state.retag()
    if identity and state.on_identity is not None:
        state.on_identity(state)


def _identity(name: str, value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TypeError(f"invalid {name!r} {value!r}: expected a string, an int or None")
    text = str(value)
    if not text or len(text) > 256:
        raise ValueError(f"invalid {name!r} {text[:40]!r}: expected 1 to 256 characters")
    return text
