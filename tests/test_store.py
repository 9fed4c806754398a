"""The stores: one conformance suite over memory, SQLite (a file) and Redis (a real
redis-server), then what only shared stores do, and their faults."""

from __future__ import annotations

import json
import multiprocessing
import os
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis

from hindsight_web.store import (
    AUDIT_KEPT,
    CHANGES_KEPT,
    QUERIES_KEPT_S,
    SCHEMA_VERSION,
    Change,
    RulesRead,
    RulesView,
    SchemaError,
    StatsRow,
    Store,
    StoredRule,
    StoreError,
    display_url,
    open_store,
)
from hindsight_web.store.redis import RedisStore
from hindsight_web.store.sqlite import SQLiteStore

from .redis_server import RedisServer
from .servers import free_port

TIMEOUT_S = 5.0  # generous: the concurrency tests wait for each other's writes
SPAWN = multiprocessing.get_context("spawn")
T = TypeVar("T")


def unique_prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


def url_of(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if kind == "memory":
        return "memory://"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    server: RedisServer = request.getfixturevalue("redis_server")
    return server.url(prefix=unique_prefix())


@pytest.fixture(params=["memory", "sqlite", "redis"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return url_of(request.param, tmp_path, request)


@pytest.fixture(params=["sqlite", "redis"])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return url_of(request.param, tmp_path, request)


@pytest.fixture
def store(url: str) -> Iterator[Store]:
    opened = open_store(url, timeout_s=TIMEOUT_S)
    yield opened
    opened.close()


def rule(rule_id: str, origin: str = "admin", hits: int = 0, **body: Any) -> StoredRule:
    return StoredRule(rule_id, body, origin, hits)


def put(*rules: StoredRule, **more: Any) -> Callable[[RulesView], Change]:
    return lambda view: Change(put=list(rules), **more)


def delete(*ids: str) -> Callable[[RulesView], Change]:
    return lambda view: Change(delete=list(ids))


def rules_of(store: Store) -> dict[str, StoredRule]:
    return {r.id: r for r in store.read_rules(None).rules}


def read_in_plan(store: Store, read: Callable[[RulesView], T]) -> T:
    """What `read` finds through the view of a plan that changes nothing."""
    found: list[T] = []

    def plan(view: RulesView) -> Change:
        found.append(read(view))
        return Change()

    store.change(plan)
    return found[0]


def apply(copy: dict[str, StoredRule], read: RulesRead) -> None:
    """What a process does with a read: replace its copy, or patch it."""
    if read.full:
        copy.clear()
    for rule_id in read.deleted:
        copy.pop(rule_id, None)
    copy.update((r.id, r) for r in read.rules)


def stats_row(process: str, updated: float, host: str = "web-1") -> StatsRow:
    return StatsRow(process, host, updated, f"{process}@{updated}\n\x00\xff".encode("latin-1"))


# --- every store -------------------------------------------------------------------


def test_url_and_shared(store: Store, url: str) -> None:
    base = store.state()[0]
    assert store.url == url
    assert store.shared is (url != "memory://")
    assert store.state() == (base, 0)
    assert store.read_rules(None) == RulesRead(base, True, [], [])


def test_a_write_probe_writes_nothing(store: Store, url: str) -> None:
    store.change(put(rule("a")))
    before = (store.state(), store.read_rules(None), store.audit(5), store.read_stats())
    # Only SQLite's writes fail apart from its reads (a file locked by another writer).
    assert store.probe_write() is url.startswith("sqlite:")
    assert (store.state(), store.read_rules(None), store.audit(5), store.read_stats()) == before
    assert store.change(put(rule("b")))[1] == before[0][0] + 1  # nothing left locked


def test_questions_reach_readers_that_started_before_them_with_their_answers(
    store: Store,
) -> None:
    newest, none = store.queries_after(None)  # a reader starting: nothing old is handed over
    assert none == []
    now = time.time()
    first = store.post_query({"kind": "search", "n": 1}, now + 5)
    second = store.post_query({"kind": "release", "n": 2}, now + 5)
    assert newest < first < second
    assert store.queries_after(newest) == (
        second,
        [(first, {"kind": "search", "n": 1}), (second, {"kind": "release", "n": 2})],
    )
    assert store.queries_after(first) == (second, [(second, {"kind": "release", "n": 2})])
    assert store.queries_after(second) == (second, [])
    store.put_answer(first, "p1", {"requests": [1]})
    store.put_answer(first, "p2", {"requests": []})
    store.put_answer(first, "p1", {"requests": [1, 2]})  # an answer given again replaces
    assert store.answers(first) == {"p1": {"requests": [1, 2]}, "p2": {"requests": []}}
    assert store.answers(second) == {}


def test_expired_questions_are_not_handed_out_and_are_forgotten(store: Store) -> None:
    start = store.queries_after(None)[0]
    now = time.time()
    old = store.post_query({"n": "old"}, now - QUERIES_KEPT_S - 1)
    store.put_answer(old, "p1", {"n": 1})
    late = store.post_query({"n": "late"}, now - 1)
    live = store.post_query({"n": "live"}, now + 5)
    assert store.queries_after(start) == (live, [(live, {"n": "live"})])
    assert store.answers(old) == {}  # forgotten when a question came after its minute
    assert store.queries_after(late)[0] == live


def test_live_processes_are_those_that_beat_lately(store: Store) -> None:
    now = time.time()
    store.beat("gone", now - 100)
    store.beat("a", now - 1)
    store.beat("b", now)
    assert sorted(store.peers(now - 5)) == ["a", "b"]
    store.beat("gone", now)
    assert sorted(store.peers(now - 5)) == ["a", "b", "gone"]


def test_each_change_is_one_revision(store: Store) -> None:
    base = store.state()[0]
    change, revision = store.change(put(rule("a", n=1), rule("b", n=2)))
    assert revision == base + 1
    assert [r.id for r in change.put] == ["a", "b"]
    assert store.change(put(rule("a", n=3)))[1] == base + 2
    assert store.change(delete("b", "never-there"))[1] == base + 3
    assert {i: r.body for i, r in rules_of(store).items()} == {"a": {"n": 3}}
    assert store.state() == (base + 3, 0)


def test_a_put_after_a_delete_of_the_same_id_wins(store: Store) -> None:
    store.change(put(rule("a", n=1)))
    store.change(lambda view: Change(put=[rule("a", n=2)], delete=["a"]))
    assert rules_of(store)["a"].body == {"n": 2}


def test_the_view_reads_inside_the_transaction(store: Store) -> None:
    base = store.state()[0]
    store.change(
        put(
            rule("a", n=1),
            rule("b", "startup", n=2),
            rule("c", "startup", n=3),
            fingerprints={"startup": "f1"},
        )
    )
    seen: dict[str, Any] = {}

    def plan(view: RulesView) -> Change:
        seen["revision"] = view.revision
        seen["a"] = view.get("a")
        seen["missing"] = view.get("missing")
        seen["count"] = view.count()
        seen["startup"] = sorted(r.id for r in view.of_origin("startup"))
        seen["nobody"] = view.of_origin("nobody")
        seen["fingerprints"] = (view.fingerprint("startup"), view.fingerprint("other"))
        return Change()

    store.change(plan)
    assert seen == {
        "revision": base + 1,
        "a": rule("a", n=1),
        "missing": None,
        "count": 3,
        "startup": ["b", "c"],
        "nobody": [],
        "fingerprints": ("f1", None),
    }


def test_an_empty_change_writes_nothing(store: Store) -> None:
    base = store.state()[0]
    store.change(put(rule("a")))
    change, revision = store.change(lambda view: Change())
    assert not change
    assert revision == base + 1
    assert store.state() == (base + 1, 0)
    assert store.audit(5) == []
    read = store.read_rules(base + 1)
    assert read.revision == base + 1
    assert read.full or read.rules == []


class Taken(Exception):
    pass


def test_an_exception_of_the_plan_propagates_and_nothing_is_written(store: Store) -> None:
    base = store.state()[0]
    store.change(lambda view: Change(put=[rule("a", n=1)], events=[{"n": 1}]))
    error = Taken("id 'a' is taken")

    def plan(view: RulesView) -> Change:
        assert view.get("a") is not None
        raise error

    with pytest.raises(Taken) as raised:
        store.change(plan)
    assert raised.value is error
    assert store.state() == (base + 1, 0)
    assert store.audit(10) == [{"n": 1}]
    # Nothing stays locked or watched: the next change goes through.
    assert store.change(put(rule("b")))[1] == base + 2


def test_read_rules_brings_a_copy_up_to_date(store: Store) -> None:
    base = store.state()[0]
    store.change(put(rule("a", n=1), rule("b", n=1), rule("c", n=1)))
    read = store.read_rules(None)
    assert read.full
    copy: dict[str, StoredRule] = {}
    apply(copy, read)
    store.change(put(rule("a", n=2)))
    store.change(delete("b"))
    store.change(put(rule("d", n=1)))
    read = store.read_rules(base + 1)
    assert read.revision == base + 4
    apply(copy, read)
    assert copy == rules_of(store)
    assert sorted(copy) == ["a", "c", "d"]
    if store.shared:  # memory:// always answers every rule
        assert not read.full
        assert sorted(r.id for r in read.rules) == ["a", "d"]
        assert read.deleted == ["b"]
        assert store.read_rules(base + 4) == RulesRead(base + 4, False, [], [])


def test_read_rules_is_full_when_too_far_behind_or_ahead(store: Store) -> None:
    base = store.state()[0]
    store.change(put(rule("a")))
    assert store.read_rules(base + 7).full  # ahead: the store was made anew
    for n in range(CHANGES_KEPT + 1):
        store.change(put(rule("b", n=n)))
    revision = base + CHANGES_KEPT + 2
    floor = revision - CHANGES_KEPT
    assert store.state()[0] == revision
    behind = store.read_rules(floor - 1)
    assert behind.full
    assert sorted(r.id for r in behind.rules) == ["a", "b"]
    if store.shared:
        assert not store.read_rules(floor).full
        assert [r.id for r in store.read_rules(floor).rules] == ["b"]


def test_hits_are_added_kept_and_dropped_with_their_rule(store: Store) -> None:
    store.change(put(rule("a"), rule("b", hits=7)))
    store.add_hits({"a": 2, "never-there": 5})
    store.add_hits({"a": 3})
    store.add_hits({})
    assert {i: r.hits for i, r in rules_of(store).items()} == {"a": 5, "b": 7}
    store.change(put(rule("c")))  # another change keeps them
    assert {i: r.hits for i, r in rules_of(store).items()} == {"a": 5, "b": 7, "c": 0}
    seen = read_in_plan(store, lambda view: view.get("a"))
    assert seen is not None
    assert seen.hits == 5  # a plan that keeps a rule's hits sees the added ones
    store.change(delete("a"))
    store.add_hits({"a": 4})  # flushed late by a process that still had it
    store.change(put(rule("a")))
    assert rules_of(store)["a"].hits == 0
    assert "never-there" not in rules_of(store)


def test_hits_are_read_for_some_rules_or_every_rule(store: Store) -> None:
    store.change(put(rule("a", hits=2), rule("b", hits=7), rule("c")))
    store.add_hits({"c": 1})
    assert store.hits() == {"a": 2, "b": 7, "c": 1}
    assert store.hits(["b", "c", "never-there"]) == {"b": 7, "c": 1}
    assert store.hits([]) == {}
    store.change(delete("b"))
    assert store.hits() == {"a": 2, "c": 1}


def test_audit_is_newest_first_and_bounded(store: Store) -> None:
    store.change(lambda view: Change(events=[{"n": 1}, {"n": 2}]))
    store.change(lambda view: Change(events=[{"n": 3, "note": "é"}]))
    assert store.audit(10) == [{"n": 3, "note": "é"}, {"n": 2}, {"n": 1}]
    assert store.audit(2) == [{"n": 3, "note": "é"}, {"n": 2}]
    assert store.audit(0) == []
    store.change(lambda view: Change(events=[{"m": i} for i in range(AUDIT_KEPT + 5)]))
    kept = store.audit(2 * AUDIT_KEPT)
    assert len(kept) == AUDIT_KEPT
    assert kept[0] == {"m": AUDIT_KEPT + 4}
    assert kept[-1] == {"m": 5}


def test_fingerprints_are_kept_per_origin(store: Store) -> None:
    url = "rules_url https://example.com/rules.json"
    base = store.state()[0]
    assert store.change(lambda view: Change(fingerprints={url: "f1"}))[1] == base + 1
    store.change(lambda view: Change(fingerprints={url: "f2", "startup": "s1"}))
    found = read_in_plan(
        store, lambda view: [view.fingerprint(origin) for origin in (url, "startup", "x")]
    )
    assert found == ["f2", "s1", None]


def test_stats_are_published_per_process_within_an_epoch(store: Store) -> None:
    base = store.state()[0]
    assert store.publish_stats(stats_row("p1", 1.0), 0) == 0
    assert store.publish_stats(stats_row("p2", 1.5), 0) == 0
    assert store.publish_stats(stats_row("p1", 2.0), 0) == 0  # replaces p1's row
    epoch, rows = store.read_stats()
    assert epoch == 0
    assert sorted(rows, key=lambda r: r.process) == [stats_row("p1", 2.0), stats_row("p2", 1.5)]
    assert store.reset_stats() == 1
    assert store.read_stats() == (1, [])
    assert store.state() == (base, 1)
    assert store.publish_stats(stats_row("p1", 3.0), 0) == 1  # an old epoch: refused
    assert store.read_stats() == (1, [])
    assert store.publish_stats(stats_row("p1", 3.0), 1) == 1
    assert store.read_stats() == (1, [stats_row("p1", 3.0)])


def test_retire_stats_only_when_nothing_changed(store: Store) -> None:
    for process, updated in (("p1", 1.0), ("p2", 2.0), ("p3", 3.0)):
        store.publish_stats(stats_row(process, updated), 0)
    merged = stats_row("ended", 9.0)
    assert not store.retire_stats({"p1": 1.0, "p2": 2.5}, merged, 0)  # p2 published since
    assert not store.retire_stats({"p1": 1.0, "p9": 2.0}, merged, 0)  # p9 has no row
    assert not store.retire_stats({"p1": 1.0}, merged, 1)  # another epoch
    assert len(store.read_stats()[1]) == 3
    assert store.retire_stats({"p1": 1.0, "p2": 2.0}, merged, 0)
    rows = {r.process: r for r in store.read_stats()[1]}
    assert rows == {"ended": merged, "p3": stats_row("p3", 3.0)}
    store.reset_stats()
    assert not store.retire_stats({"p3": 3.0}, merged, 0)


def test_a_closed_store_opens_again_when_used(store: Store) -> None:
    base = store.state()[0]
    store.change(put(rule("a")))
    store.close()
    assert store.change(put(rule("b")))[1] == base + 2
    store.close()
    store.close()
    assert sorted(rules_of(store)) == ["a", "b"]


# --- shared stores -----------------------------------------------------------------


def _increment(url: str, times: int, start: Any) -> None:
    """In another process: add 1 to the counter rule `times` times, one plan each."""
    store = open_store(url, timeout_s=30)

    def plan(view: RulesView) -> Change:
        counter = view.get("counter")
        assert counter is not None
        n = counter.body["n"] + 1
        return Change(put=[StoredRule("counter", {"n": n}, "admin")], events=[{"n": n}])

    start.wait()
    for _ in range(times):
        store.change(plan)
    store.close()


def test_no_update_is_lost_between_processes(shared_url: str) -> None:
    store = open_store(shared_url, timeout_s=TIMEOUT_S)
    base = store.state()[0]
    store.change(put(rule("counter", n=0)))
    start = SPAWN.Barrier(4)
    workers = [SPAWN.Process(target=_increment, args=(shared_url, 50, start)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [w.exitcode for w in workers] == [0, 0, 0, 0]
    assert rules_of(store)["counter"].body == {"n": 200}
    assert store.state()[0] == base + 201
    assert [e["n"] for e in store.audit(200)] == list(range(200, 0, -1))


def _open_and_put(url: str, name: str, start: Any) -> None:
    start.wait()
    store = open_store(url, timeout_s=30)
    # Its audit event says the revision the change was written after.
    store.change(lambda view: Change(put=[rule(name)], events=[{"after": view.revision}]))


def test_processes_starting_together_create_the_store_once(shared_url: str) -> None:
    start = SPAWN.Barrier(8)
    names = [f"w{i}" for i in range(8)]
    workers = [SPAWN.Process(target=_open_and_put, args=(shared_url, n, start)) for n in names]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [w.exitcode for w in workers] == [0] * 8
    store = open_store(shared_url, timeout_s=TIMEOUT_S)
    assert sorted(rules_of(store)) == names
    # One revision each from the revision the store started at (made once: never reset).
    after = sorted(event["after"] for event in store.audit(10))
    base = after[0]
    assert after == list(range(base, base + 8))
    assert store.state() == (base + 8, 0)
    read = store.read_rules(base)
    assert not read.full
    assert sorted(r.id for r in read.rules) == names


def test_two_stores_on_one_url_see_each_other(shared_url: str) -> None:
    one = open_store(shared_url, timeout_s=TIMEOUT_S)
    two = open_store(shared_url, timeout_s=TIMEOUT_S)
    base = one.state()[0]
    assert two.state()[0] == base
    one.change(lambda view: Change(put=[rule("a"), rule("b")], events=[{"by": "one"}]))
    assert sorted(rules_of(two)) == ["a", "b"]
    assert two.change(delete("a"))[1] == base + 2
    read = one.read_rules(base + 1)
    assert (read.full, read.rules, read.deleted) == (False, [], ["a"])
    two.add_hits({"b": 3})
    assert rules_of(one)["b"].hits == 3
    assert two.audit(5) == [{"by": "one"}]
    one.publish_stats(stats_row("p1", 1.0), 0)
    assert two.read_stats() == (0, [stats_row("p1", 1.0)])
    assert two.reset_stats() == 1
    assert one.publish_stats(stats_row("p1", 2.0), 0) == 1
    assert one.state() == two.state() == (base + 2, 1)


def test_a_child_process_uses_a_store_its_parent_used(shared_url: str) -> None:
    store = open_store(shared_url, timeout_s=TIMEOUT_S)
    base = store.state()[0]
    store.change(put(rule("parent")))
    assert store.state() == (base + 1, 0)
    pid = os.fork()
    if pid == 0:  # the child: report by exit code only
        code = 1
        try:
            store.change(put(rule("child")))
            code = 0 if sorted(rules_of(store)) == ["child", "parent"] else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert sorted(rules_of(store)) == ["child", "parent"]
    assert store.change(put(rule("parent-again")))[1] == base + 3


# --- where revisions start -------------------------------------------------------------

FIRST_REVISIONS = range(1, 2**40 + 1)
"""Where a new shared store starts (`first_revision`)."""


def two_fresh_urls(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> list[str]:
    """Two URLs of new stores of `kind`: two files, or two prefixes of one Redis."""
    if kind == "sqlite":
        return [f"sqlite:///{tmp_path / name}" for name in ("one.db", "two.db")]
    server: RedisServer = request.getfixturevalue("redis_server")
    return [server.url(prefix=unique_prefix()) for _ in range(2)]


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_a_new_shared_store_starts_at_a_random_revision(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    bases = []
    for url in two_fresh_urls(kind, tmp_path, request):
        store = open_store(url, timeout_s=TIMEOUT_S)
        base, epoch = store.state()
        assert base in FIRST_REVISIONS
        assert epoch == 0  # the stats epoch still starts at 0
        assert store.read_rules(None) == RulesRead(base, True, [], [])
        # Chosen once, when the store is made: opening it again keeps it.
        again = open_store(url, timeout_s=TIMEOUT_S)
        assert again.state() == (base, 0)
        assert again.change(put(rule("a")))[1] == base + 1
        assert store.state() == (base + 1, 0)
        again.close()
        store.close()
        bases.append(base)
    assert bases[0] != bases[1]  # equal once in 2**40


def test_a_sqlite_file_made_again_does_not_continue_the_old_revisions(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    old = open_store(url, timeout_s=TIMEOUT_S)
    held = old.change(put(rule("a")))[1]
    old.close()
    for path in tmp_path.glob("store.db*"):  # the file, its WAL and shared memory
        path.unlink()
    new = open_store(url, timeout_s=TIMEOUT_S)
    new.change(put(rule("b")))
    revision = new.state()[0]
    assert revision - 1 in FIRST_REVISIONS
    assert not held < revision <= held + CHANGES_KEPT
    read = new.read_rules(held)  # a process that read the old file
    assert read.full
    assert (read.revision, [r.id for r in read.rules], read.deleted) == (revision, ["b"], [])
    new.close()


@pytest.mark.server
@pytest.mark.parametrize("how", ["restart", "flushall"])
def test_a_redis_that_lost_its_data_does_not_continue_the_old_revisions(
    how: str, tmp_path: Path
) -> None:
    server = RedisServer(tmp_path / "redis").start()
    try:
        url = server.url(prefix="app")
        writer = open_store(url, timeout_s=TIMEOUT_S)
        reader = open_store(url, timeout_s=TIMEOUT_S)  # another process's
        writer.change(put(rule("a"), rule("b")))
        copy: dict[str, StoredRule] = {}
        read = reader.read_rules(None)
        apply(copy, read)
        held = read.revision
        assert held == writer.state()[0]
        if how == "restart":
            server.stop()
            server.start()  # the same port, no data
        else:
            client = redis.Redis(port=server.port)
            client.flushall()
            client.close()
        # The same store objects, used again.
        writer.change(put(rule("c")))
        revision = writer.state()[0]
        assert not held < revision <= held + CHANGES_KEPT
        read = reader.read_rules(held)
        assert read.full  # every rule read again: none of the old store's is kept
        assert read.revision == revision
        apply(copy, read)
        assert copy == rules_of(writer)
        assert sorted(copy) == ["c"]
    finally:
        server.stop()


@pytest.mark.server
def test_a_redis_that_lost_its_data_twice_does_not_reuse_revisions(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis").start()
    try:
        url = server.url(prefix="app")
        writer = open_store(url, timeout_s=TIMEOUT_S)
        reader = open_store(url, timeout_s=TIMEOUT_S)
        writer.change(put(rule("a")))
        server.stop()
        server.start()  # no data
        for name in ("b1", "b2", "b3"):
            writer.change(put(rule(name)))
        copy: dict[str, StoredRule] = {}
        read = reader.read_rules(None)
        apply(copy, read)
        held = read.revision
        server.stop()
        server.start()  # no data again
        for name in ("c1", "c2", "c3", "c4", "c5"):
            writer.change(put(rule(name)))
        read = reader.read_rules(held)
        apply(copy, read)
        assert sorted(copy) == ["c1", "c2", "c3", "c4", "c5"]
        assert read.full
        assert writer.state()[0] - 5 in FIRST_REVISIONS
    finally:
        server.stop()


def test_revisions_before_the_start_stay_outside_the_range(shared_url: str) -> None:
    store = open_store(shared_url, timeout_s=TIMEOUT_S)
    base = store.state()[0]
    assert store.read_rules(base - 1).full
    store.change(put(rule("a")))
    assert store.read_rules(base - 1).full  # a revision of another, older store
    assert not store.read_rules(base).full
    store.close()


def test_the_memory_store_starts_at_revision_0() -> None:
    for _ in range(2):
        store = open_store("memory://")
        assert store.state() == (0, 0)
        assert store.read_rules(None) == RulesRead(0, True, [], [])
        assert store.change(put(rule("a")))[1] == 1
        assert store.state() == (1, 0)


# --- Redis ---------------------------------------------------------------------------


def test_prefixes_share_one_redis_apart(redis_server: RedisServer) -> None:
    one = open_store(redis_server.url(prefix=unique_prefix()), timeout_s=TIMEOUT_S)
    two = open_store(redis_server.url(prefix=unique_prefix()), timeout_s=TIMEOUT_S)
    base = two.state()[0]
    one.change(lambda view: Change(put=[rule("a")], events=[{"n": 1}]))
    one.publish_stats(stats_row("p1", 1.0), 0)
    assert two.read_rules(None) == RulesRead(base, True, [], [])
    assert two.audit(5) == []
    assert two.read_stats() == (0, [])
    assert two.state() == (base, 0)


def test_the_default_prefix_is_hindsight(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url(db=3))
    client.flushdb()
    open_store(redis_server.url(db=3), timeout_s=TIMEOUT_S).change(put(rule("a")))
    assert sorted(client.keys()) == [
        b"hindsight:changes",
        b"hindsight:floor",
        b"hindsight:hits",
        b"hindsight:revision",
        b"hindsight:rules",
        b"hindsight:schema",
    ]
    client.flushdb()
    client.close()


def test_hits_of_a_deleted_rule_leave_nothing_in_redis(redis_server: RedisServer) -> None:
    prefix = unique_prefix()
    store = open_store(redis_server.url(prefix=prefix), timeout_s=TIMEOUT_S)
    store.change(put(rule("a"), rule("b")))
    store.change(delete("a"))
    store.add_hits({"a": 4, "b": 1, "never-there": 2})
    client = redis.Redis.from_url(redis_server.url())
    assert client.hgetall(f"{prefix}:hits") == {b"b": b"1"}
    client.close()


def test_redis_schema_of_another_version_is_refused(redis_server: RedisServer) -> None:
    prefix = unique_prefix()
    url = redis_server.url(prefix=prefix)
    store = open_store(url, timeout_s=TIMEOUT_S)
    client = redis.Redis.from_url(redis_server.url())
    client.set(f"{prefix}:schema", 999)
    client.close()
    with pytest.raises(SchemaError, match=rf"schema version 999.*version {SCHEMA_VERSION}"):
        open_store(url, timeout_s=TIMEOUT_S)
    store.state()  # checked once, when this process opened it


def _timed_calls(store: Store, since: int) -> dict[str, Callable[[], object]]:
    return {
        "change": lambda: store.change(put(rule("x"))),
        "read_rules(None)": lambda: store.read_rules(None),
        "read_rules(since)": lambda: store.read_rules(since),
        "state": store.state,
        "add_hits": lambda: store.add_hits({"a": 1}),
        "audit": lambda: store.audit(5),
        "publish_stats": lambda: store.publish_stats(stats_row("p", 1.0), 0),
        "read_stats": store.read_stats,
        "reset_stats": store.reset_stats,
        "retire_stats": lambda: store.retire_stats({"p": 1.0}, stats_row("q", 1.0), 0),
    }


def assert_every_call_fails(store: Store, password: str, within_s: float, since: int) -> None:
    """Every call raises StoreError within `within_s`; `since`: a revision the store had."""
    for name, call in _timed_calls(store, since).items():
        started = time.monotonic()
        with pytest.raises(StoreError) as raised:
            call()
        elapsed = time.monotonic() - started
        assert elapsed < within_s, f"{name} took {elapsed:.2f} s"
        assert store.url in str(raised.value)
        assert password not in str(raised.value)
        assert "***" in str(raised.value)


@pytest.mark.server
def test_redis_down_fails_fast_and_recovers(tmp_path: Path) -> None:
    password = "pw-" + uuid.uuid4().hex
    server = RedisServer(tmp_path / "redis", password=password).start()
    try:
        store = open_store(server.url(prefix="app"), timeout_s=1.0)
        assert password not in store.url
        base = store.state()[0]
        assert store.change(put(rule("a")))[1] == base + 1
        server.stop()
        assert_every_call_fails(store, password, within_s=5.0, since=base + 1)
        server.start()  # the same port, no data: the store is made anew
        restarted = store.state()[0]
        assert store.read_rules(None) == RulesRead(restarted, True, [], [])
        assert store.state() == (restarted, 0)
        assert store.read_rules(base + 1).full
        first = store.change(put(rule("a")))[1]  # numbers start afresh, at random
        assert first in FIRST_REVISIONS
        assert first != base + 2
        server.kill()
        assert_every_call_fails(store, password, within_s=5.0, since=first)
        server.start()
        again = store.state()[0]
        assert store.read_rules(None) == RulesRead(again, True, [], [])
        assert store.read_rules(first).full
    finally:
        server.stop()


@pytest.mark.server
def test_redis_that_does_not_answer_times_out(tmp_path: Path) -> None:
    password = "pw-" + uuid.uuid4().hex
    server = RedisServer(tmp_path / "redis", password=password).start()
    try:
        store = open_store(server.url(prefix="app"), timeout_s=0.5)
        base = store.state()[0]
        store.change(put(rule("a")))

        def plan(view: RulesView) -> Change:
            view.get("a")
            server.pause()  # connections are accepted, nothing is answered
            raise Taken("a")

        with pytest.raises(Taken):  # not hidden by the UNWATCH that times out
            store.change(plan)
        assert_every_call_fails(store, password, within_s=2.0, since=base + 1)
        server.resume()
        assert store.change(put(rule("b")))[1] == base + 2
    finally:
        server.stop()


@pytest.mark.server
def test_redis_unreachable_at_start_is_checked_once_reached(tmp_path: Path) -> None:
    port = free_port()
    store = RedisStore(f"redis://127.0.0.1:{port}/0?prefix=app", timeout_s=1.0)
    with pytest.raises(StoreError, match="Connection refused"):
        store.state()
    server = RedisServer(tmp_path / "redis", port=port).start()
    try:
        client = redis.Redis(port=port)
        client.set("app:schema", 999)
        with pytest.raises(SchemaError, match="999"):
            store.state()
        client.set("app:schema", SCHEMA_VERSION)
        base = int(client.get("app:revision") or 0)  # set by the first check
        assert 1 <= base <= 2**40
        assert store.state() == (base, 0)
        client.set("app:schema", 999)
        assert store.state() == (base, 0)  # checked once per store
        client.close()
    finally:
        server.stop()


def test_redis_py_missing_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)  # import redis raises ImportError
    monkeypatch.delitem(sys.modules, "hindsight_web.store.redis")
    with pytest.raises(ImportError, match=r"pip install 'hindsight-web\[redis\]'"):
        open_store("redis://127.0.0.1:6379/0")


# --- SQLite --------------------------------------------------------------------------


def test_sqlite_locked_by_another_writer(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = open_store(url, timeout_s=0.5)
    base = store.state()[0]
    store.change(lambda view: Change(put=[rule("a")], events=[{"n": 1}]))
    other = sqlite3.connect(tmp_path / "store.db", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        with pytest.raises(StoreError, match="locked") as raised:
            store.change(put(rule("b")))
        assert 0.4 < time.monotonic() - started < 3.0
        assert url in str(raised.value)
        with pytest.raises(StoreError):
            store.add_hits({"a": 1})
        with pytest.raises(StoreError):
            store.publish_stats(stats_row("p", 1.0), 0)
        started = time.monotonic()
        with pytest.raises(StoreError, match="locked"):
            store.probe_write()  # as long as a write would wait
        assert 0.4 < time.monotonic() - started < 3.0
        # WAL: readers do not wait for the writer.
        started = time.monotonic()
        assert sorted(rules_of(store)) == ["a"]
        assert store.state() == (base + 1, 0)
        assert store.audit(5) == [{"n": 1}]
        assert store.read_stats() == (0, [])
        assert time.monotonic() - started < 0.4
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert store.change(put(rule("b")))[1] == base + 2


def test_sqlite_url_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    relative = open_store("sqlite:///sub/rel.db")
    relative.change(put(rule("a")))
    assert (tmp_path / "sub" / "rel.db").exists()
    monkeypatch.chdir("/")  # the path was resolved when the store was made
    assert sorted(rules_of(relative)) == ["a"]
    absolute = open_store(f"sqlite:///{tmp_path / 'sub' / 'rel.db'}")
    assert sorted(rules_of(absolute)) == ["a"]


def test_sqlite_schema_of_another_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    SQLiteStore(f"sqlite:///{path}", timeout_s=TIMEOUT_S)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = 999 WHERE key = 'schema'")
    with pytest.raises(SchemaError) as raised:
        SQLiteStore(f"sqlite:///{path}", timeout_s=TIMEOUT_S)
    message = str(raised.value)
    assert str(path) in message
    assert "999" in message
    assert f"version {SCHEMA_VERSION}" in message


def test_sqlite_file_that_cannot_be_used_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(ValueError, match=f"'store'.*{missing}"):
        open_store(f"sqlite:///{missing / 'store.db'}")
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database" * 100)
    with pytest.raises(ValueError, match=f"'store'.*{garbage}"):
        open_store(f"sqlite:///{garbage}")
    with pytest.raises(ValueError, match=f"'store'.*{tmp_path}"):
        open_store(f"sqlite:///{tmp_path}")


@pytest.mark.parametrize(
    "bad",
    [
        "sqlite://",
        "sqlite:///",
        "sqlite:////",
        "sqlite:///x.db?mode=ro",
        "sqlite://host/x.db",
        "redis://127.0.0.1:6379/0?prefix=no spaces",
        "redis://127.0.0.1:6379/0?prefix=",
        "redis://127.0.0.1:6379/0?prefix=a&prefix=b",
        "redis://127.0.0.1:port/0",
        "redis://:pw@127.0.0.1:port/0",
        "redis://127.0.0.1:6379/zero",
        "redis://127.0.0.1:6379/0?no_such_option=1",
        "postgres://127.0.0.1/db",
    ],
)
def test_malformed_urls_name_the_option(bad: str) -> None:
    with pytest.raises(ValueError, match="'store'"):
        open_store(bad, timeout_s=0.2)


def test_display_url_hides_passwords() -> None:
    assert display_url("redis://:pw@h:6379/0?prefix=a") == "redis://:***@h:6379/0?prefix=a"
    assert display_url("rediss://u:pw@h:6379/0") == "rediss://u:***@h:6379/0"
    assert display_url("redis://u:pw@[::1]:6379/0") == "redis://u:***@[::1]:6379/0"
    assert display_url("redis://:pw@h:port/0") == "redis://:***@h:port/0"
    assert display_url("redis://h/0?password=pw&prefix=a") == "redis://h/0?password=***&prefix=a"
    assert display_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"


# -- requests kept by retain rules ----------------------------------------------------------------


def kept_doc(request_id: str, at: float, size: int = 100) -> str:
    body = json.dumps({"request_id": request_id, "at_s": at, "pad": ""})
    return body[:-2] + "x" * (size - len(body)) + '"}'


def test_retained_requests_newest_first_within_time_and_bytes(store: Store) -> None:
    now = time.time()
    for n in range(5):
        assert (
            store.retain(
                f"r{n}", now - 50 + n, now + 3600, kept_doc(f"r{n}", now - 50 + n, 200), 1000
            )
            == 0
        )
    assert [d["request_id"] for d in store.retained(None, None, 10)] == [
        "r4",
        "r3",
        "r2",
        "r1",
        "r0",
    ]
    assert [d["request_id"] for d in store.retained(now - 49, now - 47, 10)] == ["r3", "r2", "r1"]
    assert [d["request_id"] for d in store.retained(None, None, 2)] == ["r4", "r3"]
    assert store.retained_one("r2") == json.loads(kept_doc("r2", now - 48, 200))
    assert store.retained_one("nope") is None
    # Over the bytes: the oldest go first, and the count says how many.
    assert store.retain("r5", now, now + 3600, kept_doc("r5", now, 300), 1000) == 2
    assert [d["request_id"] for d in store.retained(None, None, 10)] == ["r5", "r4", "r3", "r2"]
    # The same id again replaces it; one alone larger than the bytes is refused.
    assert store.retain("r5", now, now + 3600, kept_doc("r5", now, 100), 1000) == 0
    assert store.retain("big", now, now + 3600, kept_doc("big", now, 2000), 1000) == -1
    assert store.retained_one("big") is None
    assert len(store.retained(None, None, 10)) == 4


def test_retained_requests_go_when_their_time_is_up(store: Store) -> None:
    now = time.time()
    store.retain("short", now - 10, now - 1, kept_doc("short", now - 10), 10_000)
    store.retain("long", now - 5, now + 3600, kept_doc("long", now - 5), 10_000)
    assert [d["request_id"] for d in store.retained(None, None, 10)] == ["long"]
    assert store.retained_one("short") is None


def test_retained_requests_past_their_time_are_removed_from_the_backend(
    shared_url: str,
) -> None:
    store = open_store(shared_url, timeout_s=TIMEOUT_S)
    try:
        now = time.time()
        store.retain("short", now - 10, now - 1, kept_doc("short", now - 10), 10_000)
        store.retain("long", now - 5, now + 3600, kept_doc("long", now - 5), 10_000)
        store.expire_retained(time.time())
        if isinstance(store, SQLiteStore):
            path = shared_url.removeprefix("sqlite:///")
            with sqlite3.connect(path) as conn:
                ids = [row[0] for row in conn.execute("SELECT request_id FROM retained")]
        else:
            assert isinstance(store, RedisStore)
            client = redis.Redis.from_url(shared_url.split("?")[0])
            prefix = shared_url.split("prefix=")[1]
            ids = sorted(k.decode() for k in client.hkeys(f"{prefix}:retained"))
            assert client.zcard(f"{prefix}:retained:until") == 1
        assert ids == ["long"]
    finally:
        store.close()


def test_a_redis_that_lost_part_of_the_retained_keys_is_repaired_not_stuck(
    redis_server: RedisServer,
) -> None:
    prefix = unique_prefix()
    store = open_store(redis_server.url(prefix=prefix), timeout_s=TIMEOUT_S)
    client = redis.Redis.from_url(redis_server.url())
    try:
        now = time.time()
        for n in range(3):
            store.retain(f"r{n}", now + n, now + 3600, kept_doc(f"r{n}", now + n), 1000)
        client.delete(f"{prefix}:retained:size")  # what a maxmemory eviction may leave
        started = time.monotonic()
        store.retain("big", now + 9, now + 3600, kept_doc("big", now + 9, 900), 1000)
        assert time.monotonic() - started < 1.0
        assert client.ping()
        assert [d["request_id"] for d in store.retained(None, None, 10)] == ["big"]
    finally:
        store.close()


def test_every_question_is_seen_by_a_reader_polling_while_they_are_posted(
    shared_url: str,
) -> None:
    poster = open_store(shared_url, timeout_s=TIMEOUT_S)
    reader = open_store(shared_url, timeout_s=TIMEOUT_S)
    seen: list[int] = []
    done = threading.Event()

    start = reader.queries_after(None)[0]  # before anything is posted

    def poll() -> None:
        after = start
        while True:
            finished = done.is_set()  # before the read: a read begun earlier may miss the last
            after, found = reader.queries_after(after)
            seen.extend(query_id for query_id, _ in found)
            if finished and not found:
                break

    thread = threading.Thread(target=poll)
    thread.start()
    try:
        posted = [poster.post_query({"n": n}, time.time() + 60) for n in range(100)]
    finally:
        done.set()
        thread.join(10)
        poster.close()
        reader.close()
    assert seen == posted
