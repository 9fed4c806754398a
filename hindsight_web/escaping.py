"""Text that hindsight writes, escaped so that no value can forge a log line.

User ids, session ids, bound fields, paths and rule notes come from clients or
operators; written raw, a newline (or NEL, LS, PS, which some viewers break
lines at) would start a made-up line, and bidirectional controls (RLO, ...)
would make a line read differently from what it holds. Such characters are
written as ``\\xNN`` / ``\\uNNNN`` escapes.
"""

from __future__ import annotations

import re

__all__ = ["escape", "shown"]

# C0 and C1 controls and DEL, the line and paragraph separators, and the
# bidirectional marks, embeddings, overrides and isolates.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: str) -> str:
    """`text` with control, separator and bidirectional characters escaped.

    Example::

        escape("u\\nFAKE")  # 'u\\\\nFAKE' printed as u\\x0aFAKE
    """
    if _UNSAFE.search(text) is None:
        return text
    return _UNSAFE.sub(_escaped, text)


def shown(text: str, limit: int) -> str:
    """`text` escaped and cut at `limit` characters (``...`` marks a cut)."""
    if len(text) > limit:
        text = text[:limit] + "..."
    return escape(text)
