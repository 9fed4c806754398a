"""Threads and locks of the background work: locks that stay usable in a child process
after fork (gunicorn --preload), and threads that end with what they work for."""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

_Owner = TypeVar("_Owner")

_locks: weakref.WeakSet[Any] = weakref.WeakSet()

forks = 0
"""Forks this process was made by (counted in the child): an object that notes it when
made can tell that it now lives in a forked child, where its parent's other threads and
their requests do not exist (compiled classes cannot be held in a `weakref.WeakSet`)."""


def new_lock() -> threading.Lock:
    """A lock that is re-created in the child after a fork, even if another thread held it."""
    lock = threading.Lock()
    _locks.add(lock)
    return lock


def start_thread(
    owner: _Owner, step: Callable[[_Owner], float], stop: threading.Event, name: str
) -> threading.Thread:
    """Run ``step(owner)`` again and again in a daemon thread, waiting between two runs
    the seconds it returns, until `stop` is set or `owner` is garbage: the thread holds
    only a weak reference, so an owner nobody holds (a `Hindsight` dropped without
    ``close()``) is collected and its thread ends."""
    thread = threading.Thread(
        target=_loop, args=(weakref.ref(owner), step, stop), name=name, daemon=True
    )
    thread.start()
    return thread


def _loop(ref: weakref.ref[_Owner], step: Callable[[_Owner], float], stop: threading.Event) -> None:
    while not stop.is_set():
        owner = ref()
        if owner is None:
            return
        wait = step(owner)
        del owner  # hold no reference while waiting
        stop.wait(wait)


def _after_fork_in_child() -> None:
    global forks
    forks += 1
    for lock in list(_locks):
        lock._at_fork_reinit()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
