"""Questions to every process's window: asked through the store, answered by each process.

A question about the window (a search, a release, one request) is answered by
the process that is asked from its own window at once, and, with a shared store,
posted to the store: every other process of every host sees it within
`POLL_S` seconds from its background thread, answers from its own window and
writes its answer back. The asker waits until every live process has answered
or `timeout_s` has passed (and at least `2 * POLL_S`, so that a process that
began serving just before the question is waited for too), and says how many
processes answered and whether all did: a process that is stopped, busy or gone
never holds the call longer.

A process is live while it beats: every `BEAT_S` seconds its thread writes the
time to the store, once it has served a request (a gunicorn master that imported
the app, or a worker that has served nothing, has nothing to answer with: it neither
answers nor is waited for); one silent for `LIVE_S` seconds counts as gone. A question
carries its deadline: a process that sees it too late does not act on it (a
release it would make is left for the next question). A process's first look takes
every question not yet expired, so that one that begins serving just after a
question was asked (and is waited for, see `ask`) still answers it.

The same thread does the window's other background work (`chores`): it settles
the window (`Window.settle`) and writes what ``retain`` rules keep to the store.
"""

from __future__ import annotations

import functools
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from . import errors
from ._sync import start_thread
from .store import Store, StoreError
from .store.health import Health

__all__ = ["BEAT_S", "LIVE_S", "POLL_S", "Answers", "Fanout"]

POLL_S = 0.1
"""Seconds between two looks of each process for questions (and two settles of its window)."""

BEAT_S = 1.0
"""Seconds between two heartbeats of each process in a shared store."""

LIVE_S = 5.0
"""A process whose last heartbeat is older than this counts as gone."""

_WAIT_S = 0.02

_FIRST_BEAT_S = 2 * POLL_S
"""A process beats at its first step after its first request: within this of the question."""

Answers = tuple[list[dict[str, Any]], int, bool]
"""The answers (this process's first), how many processes answered, whether all did."""


class Fanout:
    """One process's side of the questions to every window.

    Args:
        store: the store the processes share (``memory://``: this process only).
        health: notes store calls that fail or succeed again.
        process: gives this process's key in the store (a forked child has its own).
        answer: answers a question from this process's window.
        timeout_s: how long `ask` waits for the other processes (``search_timeout_s``).
        chores: more background work of the window's, run at every step (settling
            the window, writing what ``retain`` rules keep).
        served: whether this process has served a request (only then does it beat
            and answer).
    """

    def __init__(
        self,
        store: Store,
        health: Health,
        *,
        process: Callable[[], str],
        answer: Callable[[dict[str, Any]], dict[str, Any]],
        timeout_s: float,
        chores: list[Callable[[], None]],
        served: Callable[[], bool],
    ) -> None:
        self.store = store
        self.health = health
        self.process = process
        self.chores = chores
        self._served = served
        self._answer = answer
        self.timeout_s = timeout_s
        # The newest question looked at; at first 0: every question not yet expired, so
        # that a process that begins serving just after a question still answers it.
        self._seen = 0
        self._next_beat = 0.0
        self._stop = threading.Event()
        _fanouts.add(self)

    def start(self) -> None:
        """Start the thread of this process (and of each process forked from it)."""
        start_thread(self, Fanout._step, self._stop, "hindsight-window")

    def stop(self) -> None:
        self._stop.set()

    def ask(self, question: dict[str, Any]) -> Answers:
        """Answer `question` here and in every other live process sharing the store.

        Never raises for the store: one that cannot be used leaves this process's
        answer alone, marked incomplete.
        """
        own = self._answer(question)
        if not self.store.shared:
            return [own], 1, True
        started = time.time()
        deadline = started + self.timeout_s
        try:
            peers = set(self.health.checked(lambda: self.store.peers(started - LIVE_S)))
            posted = {**question, "from": self.process(), "deadline": deadline}
            query_id = self.health.checked(
                lambda: self.store.post_query(posted, deadline + LIVE_S), write=True
            )
        except StoreError:
            return [own], 1 if self._served() else 0, False
        me = self.process()
        answers: dict[str, dict[str, Any]] = {}
        looked_again = False
        while True:
            try:
                answers.update(self.store.answers(query_id))
            except StoreError:
                pass  # asked again until the deadline
            now = time.time()
            if not looked_again and now >= started + _FIRST_BEAT_S:
                # A process that served its first request just before the question
                # has beaten since: it is waited for too.
                looked_again = True
                try:
                    peers.update(self.store.peers(started - LIVE_S))
                except StoreError:
                    pass
            peers.discard(me)
            answers.pop(me, None)
            if (looked_again and peers <= answers.keys()) or now >= deadline:
                break
            time.sleep(_WAIT_S)
        # This process counts once it has served a request, like the others.
        processes = len(answers) + (1 if self._served() else 0)
        return [own, *answers.values()], processes, peers <= answers.keys()

    def _step(self) -> float:
        for chore in (*self.chores, self._answer_others):
            try:
                chore()
            except StoreError:
                pass  # noted by `health`; tried again at the next step
            except Exception as exc:
                errors.report("window", exc)
        return POLL_S

    def _answer_others(self) -> None:
        if not self.store.shared or not self._served():
            return  # nothing in the window to answer with
        now = time.time()
        me = self.process()
        if now >= self._next_beat:
            self._next_beat = now + BEAT_S
            self.health.checked(lambda: self.store.beat(me, now), write=True)
        newest, questions = self.health.checked(lambda: self.store.queries_after(self._seen))
        self._seen = newest
        for query_id, question in questions:
            if question.get("from") == me or time.time() > question["deadline"]:
                continue
            answer = functools.partial(self.store.put_answer, query_id, me, self._answer(question))
            self.health.checked(answer, write=True)


_fanouts: weakref.WeakSet[Fanout] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A forked process is another process: its own thread, no question seen yet.
    for fanout in list(_fanouts):
        fanout._seen = 0
        fanout._next_beat = 0.0
        if not fanout._stop.is_set():
            fanout._stop = threading.Event()
            fanout.start()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
