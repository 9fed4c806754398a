"""Bounded per-request buffers and the byte budget they share.

A buffered record is a plain tuple (see `Entry`); its cost in bytes is
estimated as a fixed overhead plus the lengths of its texts. Each request keeps
at most `max_records` records and `max_bytes` bytes (the most recent ones);
all live requests together stay within one `Budget`. What does not fit is
dropped and counted.
"""

from __future__ import annotations

import os
import weakref
from typing import Any

from ._sync import new_lock
from .context import RequestState

# Entry fields, in order: logger, levelno, message, time_ns, pathname, lineno,
# funcName, thread, exc_text, stack_text, extra, (msg, args) when the args are plain.
Entry = tuple[Any, ...]

# Estimated bytes of one entry besides its texts: the tuple (11 slots), the
# time int and the lineno int, the deque slot.
ENTRY_OVERHEAD = 200
# Requests take bytes from the shared budget in chunks, so the lock is rare.
CHUNK = 64 * 1024


def entry_size(entry: Entry) -> int:
    """Estimated bytes held by one buffered entry."""
    size = ENTRY_OVERHEAD + len(entry[2])
    if entry[8] is not None:
        size += len(entry[8])
    if entry[9] is not None:
        size += len(entry[9])
    if entry[10] is not None:
        size += 64 * len(entry[10])
    return size


class Budget:
    """A byte budget shared by all live request buffers of one Hindsight."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self._lock = new_lock()
        _budgets.add(self)

    def reserve(self, state: RequestState) -> None:
        """Grant `state` more bytes, up to what it needs and may have.

        Under the budget's lock, so that threads sharing one request (a thread
        pool, a copied context) never lose a reservation.
        """
        with self._lock:
            if state.nbytes <= state.reserved:
                return
            wanted = min(
                max(CHUNK, state.nbytes - state.reserved), state.max_bytes - state.reserved
            )
            granted = min(wanted, self.total - self.used)
            if granted > 0:
                self.used += granted
                state.reserved += granted

    def release(self, state: RequestState) -> None:
        """Take back everything `state` reserved."""
        with self._lock:
            self.used = max(0, self.used - state.reserved)
            state.reserved = 0


_budgets: weakref.WeakSet[Budget] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # The requests of other threads do not exist in the child.
    for budget in list(_budgets):
        budget.used = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def keep(state: RequestState, entry: Entry) -> None:
    """Append `entry` to the request's buffer, dropping the oldest entries over the limits."""
    records = state.records
    records.append(entry)
    if entry[8] is None and entry[9] is None and entry[10] is None:
        state.nbytes += ENTRY_OVERHEAD + len(entry[2])
    else:
        state.nbytes += entry_size(entry)
    # `reserved` never exceeds `max_bytes`, so this one test covers both byte limits.
    if state.nbytes > state.reserved or len(records) > state.max_records:
        make_room(state)


def make_room(state: RequestState) -> None:
    """Reserve more of the shared budget if the request may have it, else drop the oldest."""
    if state.nbytes > state.reserved:
        state.budget.reserve(state)
    records = state.records
    dropped = 0
    while records and (len(records) > state.max_records or state.nbytes > state.reserved):
        state.nbytes -= entry_size(records.popleft())
        dropped += 1
    state.dropped += dropped


def release_memory(state: RequestState) -> None:
    """Empty the buffer and return its reserved bytes to the budget."""
    state.records.clear()
    state.nbytes = 0
    if state.reserved:
        state.budget.release(state)
