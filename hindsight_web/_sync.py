"""Locks that stay usable in a child process after fork (gunicorn --preload)."""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any

_locks: weakref.WeakSet[Any] = weakref.WeakSet()


def new_lock() -> threading.Lock:
    """A lock that is re-created in the child after a fork, even if another thread held it."""
    lock = threading.Lock()
    _locks.add(lock)
    return lock


def _reinit_locks() -> None:
    for lock in list(_locks):
        lock._at_fork_reinit()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reinit_locks)
