"""Statistics across processes: published, merged, reset and retired through a real store."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest

from hindsight_web.stats import RequestRecord, Stats
from hindsight_web.stats_share import SharedStats
from hindsight_web.store import StatsRow, open_store
from hindsight_web.store.health import Health

_ids = itertools.count()


class Process:
    """One process's statistics and its `SharedStats`, on the store at `url`."""

    def __init__(self, url: str) -> None:
        self.store = open_store(url)
        self.stats = Stats()
        self.resets = 0
        self.share = SharedStats(
            self.store,
            Health(self.store.url),
            export=lambda: self.stats.export({"records_captured": 1, "buffer_bytes": 7}),
            recorded=lambda: self.stats.totals()["requests"],
            reset=self._reset,
            flush_s=5.0,
        )

    def _reset(self) -> None:
        self.stats = Stats()
        self.resets += 1

    def request(self, n: int = 1) -> None:
        for _ in range(n):
            self.stats.record(
                RequestRecord(
                    request_id=f"r{next(_ids)}",
                    method="GET",
                    path="/items/1",
                    route="/items/{item_id}",
                    status=200,
                    duration_ms=12.0,
                    at=time.time(),
                )
            )

    def tick(self) -> None:
        """What the background thread does at a flush."""
        self.share.follow_epoch(self.store.state()[1])
        self.share.publish()

    def requests(self, host_only: bool = False) -> tuple[int, int]:
        view, stale = self.share.view(host_only=host_only)
        assert not stale
        overview = view.overview("all")
        return overview["requests"], overview["processes"]


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/stats.db"


def test_every_process_that_recorded_requests_is_merged(url: str) -> None:
    a, b, idle = Process(url), Process(url), Process(url)
    for process in (a, b, idle):
        process.tick()
    assert a.store.read_stats()[1] == []  # nothing recorded: nothing published
    a.request(3)
    b.request(4)
    a.tick()
    b.tick()
    idle.tick()
    assert [row.process for row in a.store.read_stats()[1]] == [a.share.process, b.share.process]
    assert a.requests() == (7, 2) == b.requests()
    assert idle.requests() == (7, 2)  # an idle process answers for the others


def test_metrics_merge_what_was_published_so_every_worker_answers_the_same(url: str) -> None:
    a, b = Process(url), Process(url)
    a.request(2)
    b.request(1)
    a.tick()
    b.tick()
    a.request(5)  # not published yet
    assert a.requests(host_only=True) == (3, 2) == b.requests(host_only=True)
    assert a.requests() == (8, 2)  # /stats: this process's live statistics
    view, _ = a.share.view(host_only=True)
    assert view.counters()["records_captured"] == 2


def test_a_reset_reaches_every_process_once(url: str) -> None:
    a, b = Process(url), Process(url)
    a.request(2)
    b.request(3)
    a.tick()
    b.tick()
    a.share.reset()
    assert (a.resets, a.requests()) == (1, (0, 0))
    b.request(1)
    b.tick()  # sees the new epoch: forgets its counts, then has nothing to publish
    assert b.resets == 1
    assert a.store.read_stats()[1] == []
    b.request(2)
    b.tick()
    assert a.requests() == (2, 1)
    b.share.follow_epoch(0)  # an older epoch (a tick that read before the reset): ignored
    assert b.resets == 1


def test_a_row_made_before_a_reset_is_refused_and_counts_once(url: str) -> None:
    a, b = Process(url), Process(url)
    a.tick()
    b.tick()
    b.share.reset()  # a has not seen it yet
    a.request(2)
    a.share.publish()  # refused: made in the old epoch; a starts over, once
    assert a.resets == 1
    assert a.store.read_stats()[1] == []
    a.request(1)
    a.tick()
    assert a.resets == 1
    assert b.requests() == (1, 1)


def test_a_store_that_lost_its_epoch_is_followed_without_losing_counts(url: str) -> None:
    a = Process(url)
    a.tick()
    a.share.reset()
    a.share.reset()
    a.share.epoch = 5  # as if the store had been made again below it
    a.request(3)
    a.tick()
    assert a.share.epoch == 2
    a.tick()
    assert a.resets == 2  # the two resets only
    assert a.requests(host_only=True) == (3, 1)


def test_ended_processes_are_merged_into_one_row_per_host_and_still_counted(url: str) -> None:
    a, b, c = Process(url), Process(url), Process(url)
    for process, n in ((a, 1), (b, 2), (c, 4)):
        process.request(n)
        process.tick()
    # b and c published long ago: ended.
    old = time.time() - 2 * a.share.ended_after_s
    epoch, rows = a.store.read_stats()
    for row in rows:
        if row.process != a.share.process:
            assert a.store.retire_stats(
                {row.process: row.updated}, StatsRow(row.process, row.host, old, row.body), epoch
            )
    a.share._retire_ended(time.time())
    rows = a.store.read_stats()[1]
    assert sorted(row.process for row in rows) == sorted([a.share.process, f"{a.share.host}:ended"])
    assert a.requests() == (7, 3)  # the ended ones still count, as two processes
    view, _ = a.share.view(host_only=True)
    assert view.counters()["buffer_bytes"] == 7  # held now by the live process only
    assert view.counters()["records_captured"] == 3  # counters keep what ended ones counted


def test_a_forked_process_is_a_process_of_its_own(url: str) -> None:
    a = Process(url)
    a.request(3)
    a.tick()
    parent = a.share.process
    a.share.after_fork()  # what the at-fork hook does in the child
    assert a.share.process != parent
    assert a.stats.totals()["requests"] == 0  # the parent's requests stay the parent's
    a.request(1)
    a.tick()
    assert a.requests() == (4, 2)
