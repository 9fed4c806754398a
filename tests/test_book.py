"""The rule book: every rule change through one owner, written to a store, audited once."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hindsight_web.book import RuleBook, TooManyRules, fingerprint
from hindsight_web.rules import Rule, RuleError
from hindsight_web.store import RulesRead, Store, StoreError, open_store
from hindsight_web.store.health import Health
from hindsight_web.store.memory import MemoryStore

from .conftest import ListHandler
from .redis_server import RedisServer

NOW = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def _url(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if kind == "memory":
        return "memory://"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path}/rules.db"
    redis: RedisServer = request.getfixturevalue("redis_server")
    return redis.url(prefix=f"book-{time.time_ns()}")


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return _url(request.param, request, tmp_path)


@pytest.fixture(params=["sqlite", "redis"])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store several processes share (each `RuleBook` made on it is one process)."""
    return _url(request.param, request, tmp_path)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def books(clock: Clock) -> Iterator[Callable[..., RuleBook]]:
    """`books(url, max_rules=100)`: a book on the store at `url`, as one process sees it
    (memory:// gives the same store to every book: it is one process's)."""
    stores: list[Store] = []
    memory = open_store("memory://")

    def make(url: str, max_rules: int = 100) -> RuleBook:
        store = memory if url == "memory://" else open_store(url)
        stores.append(store)
        return RuleBook(
            store,
            Health(store.url),
            max_rules=max_rules,
            max_detail_ttl_s=86400.0,
            default_detail_ttl_s=1800.0,
            clock=clock,
        )

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def make_book(books: Callable[..., RuleBook], store_url: str) -> Callable[..., RuleBook]:
    """`make_book(max_rules=100)`: a book on the test's store."""
    return lambda **options: books(store_url, **options)


def rule(book: RuleBook, **fields: object) -> Rule:
    return book.parse({"action": "drop", "match": {"path": "/x"}, **fields})


def ids(book: RuleBook) -> list[str]:
    return sorted(r.id for r in book.active.rules())


def audit(book: RuleBook) -> list[tuple[str, str, str | None]]:
    events, stale = book.audit(100)
    assert not stale
    return [(e["action"], e["rule"]["id"], e["by"]) for e in reversed(events)]


def test_add_is_in_force_at_once_and_audited(make_book: Callable[..., RuleBook]) -> None:
    book = make_book()
    book.add(rule(book, id="a"), by="10.0.0.1")
    assert ids(book) == ["a"]
    assert audit(book) == [("added", "a", "10.0.0.1")]
    listed, stale = book.listing()
    assert [r["id"] for r in listed] == ["a"]
    assert stale is False


def test_a_taken_id_is_refused_and_nothing_changes(make_book: Callable[..., RuleBook]) -> None:
    book = make_book()
    book.add(rule(book, id="a"), by=None)
    with pytest.raises(KeyError):
        book.add(rule(book, id="a", action="release"), by=None)
    assert [r.action for r in book.active.rules()] == ["drop"]
    assert len(audit(book)) == 1


def test_max_rules_refuses_the_next_add_with_a_422(make_book: Callable[..., RuleBook]) -> None:
    book = make_book(max_rules=3)
    for n in range(3):
        book.add(rule(book, id=f"r{n}"), by=None)
    with pytest.raises(TooManyRules) as refused:
        book.add(rule(book, id="r3"), by=None)
    assert refused.value.status == 422
    assert "max_rules" in str(refused.value)
    assert isinstance(refused.value, RuleError)
    assert ids(book) == ["r0", "r1", "r2"]
    book.remove("r0", by=None)
    book.add(rule(book, id="r3"), by=None)  # room again


def test_remove_is_audited_once_and_a_second_remove_finds_nothing(
    make_book: Callable[..., RuleBook],
) -> None:
    book = make_book()
    book.add(rule(book, id="a"), by=None)
    assert book.remove("a", by="ops") is not None
    assert book.remove("a", by="ops") is None
    assert ids(book) == []
    assert audit(book) == [("added", "a", None), ("removed", "a", "ops")]


def test_expiry_is_written_once_by_whichever_process_comes_first(
    books: Callable[..., RuleBook], shared_url: str, clock: Clock
) -> None:
    first, second = books(shared_url), books(shared_url)
    first.add(rule(first, id="short", ttl_s=10), by=None)
    second.sync()
    assert ids(second) == ["short"]
    clock.now += 11
    assert second.active.get("short") is None  # out of force at once, written or not
    expired = first.expire() + second.expire()
    assert [r.id for r in expired] == ["short"]
    second.sync()
    first.sync()
    assert ids(first) == ids(second) == []
    assert [a for a in audit(first) if a[0] == "expired"] == [("expired", "short", "expiry")]


def test_a_change_made_by_one_process_reaches_the_other_on_sync(
    books: Callable[..., RuleBook], shared_url: str
) -> None:
    first, second = books(shared_url), books(shared_url)
    second.sync()
    first.add(rule(first, id="a"), by=None)
    first.add(rule(first, id="b"), by=None)
    second.sync()
    assert ids(second) == ["a", "b"]
    first.remove("a", by=None)
    second.sync()
    assert ids(second) == ["b"]
    second.remove_detail("nobody", by=None)
    # read-your-writes on the other process: its listing reads the store
    first.add(rule(first, id="c"), by=None)
    assert [r["id"] for r in second.listing()[0]] == ["b", "c"]


def test_hits_of_every_process_add_up_and_local_counters_keep_counting(
    make_book: Callable[..., RuleBook], store_url: str
) -> None:
    first = make_book()
    first.add(rule(first, id="a"), by=None)
    second = make_book()
    second.sync()
    first.active.get("a")._hits.n += 3  # type: ignore[union-attr]
    second.active.get("a")._hits.n += 4  # type: ignore[union-attr]
    first.flush_hits()
    second.flush_hits()
    first.flush_hits()  # nothing new: nothing added twice
    assert first.active.get("a").hits >= 3  # type: ignore[union-attr]
    assert [r["hits"] for r in first.listing()[0]] == [7]
    assert [r["hits"] for r in second.listing()[0]] == [7]


def test_swap_is_idempotent_across_processes_and_audits_each_change_once(
    make_book: Callable[..., RuleBook], store_url: str
) -> None:
    first, second = make_book(), make_book()
    doc = [{"id": "x", "action": "drop", "match": {"path": "/x"}}]
    parsed = [first.parse(item) for item in doc]
    first.swap("startup", fingerprint(doc), parsed, by="startup")
    second.swap("startup", fingerprint(doc), [second.parse(item) for item in doc], by="startup")
    assert audit(first) == [("added", "x", "startup")]
    first.remove("x", by="ops")  # an operator's removal sticks while the document is the same
    second.swap("startup", fingerprint(doc), [second.parse(item) for item in doc], by="startup")
    second.sync()
    assert ids(second) == []
    doc2 = [*doc, {"id": "y", "action": "drop", "match": {"path": "/y"}}]
    second.swap("startup", fingerprint(doc2), [second.parse(i) for i in doc2], by="startup")
    first.sync()
    assert ids(first) == ["x", "y"]


def test_swap_leaves_other_origins_alone_and_skips_their_ids(
    make_book: Callable[..., RuleBook],
) -> None:
    book = make_book()
    book.add(rule(book, id="mine"), by="ops")
    doc = [{"id": "mine", "action": "release"}, {"id": "theirs", "action": "drop"}]
    skipped = book.swap("rules_url u", fingerprint(doc), [book.parse(i) for i in doc], by="u")
    assert skipped == ["mine"]
    assert {r.id: r.action for r in book.active.rules()} == {"mine": "drop", "theirs": "drop"}
    book.swap("rules_url u", fingerprint([]), [], by="u")
    assert ids(book) == ["mine"]


def test_an_unchanged_rule_keeps_running_when_its_source_changes(
    make_book: Callable[..., RuleBook], clock: Clock
) -> None:
    book = make_book()
    doc = [{"id": "x", "action": "drop", "ttl_s": 60}]
    book.swap("s", fingerprint(doc), [book.parse(i) for i in doc], by="s")
    expires = book.active.get("x").expires_at  # type: ignore[union-attr]
    clock.now += 30
    doc2 = [*doc, {"id": "y", "action": "drop"}]
    book.swap("s", fingerprint(doc2), [book.parse(i) for i in doc2], by="s")
    assert book.active.get("x").expires_at == expires  # type: ignore[union-attr]
    assert [a for a in audit(book) if a[1] == "x"] == [("added", "x", "s")]


def test_remove_detail_takes_every_detail_rule_of_that_user_only(
    make_book: Callable[..., RuleBook],
) -> None:
    book = make_book()
    for _ in range(3):
        book.add(book.parse({"action": "detail", "match": {"user_id": "alice"}}), by=None)
    book.add(book.parse({"action": "detail", "match": {"user_id": "bob"}}), by=None)
    book.add(book.parse({"id": "a2", "action": "detail", "match": {"user_id": ["alice"]}}), by=None)
    removed = book.remove_detail("alice", by="desk")
    assert len(removed) == 4
    assert [r._match for r in book.active.rules()] == [{"user_id": "bob"}]


def test_rules_given_at_start_are_in_force_before_the_store_answers(
    tmp_path: Path, clock: Clock
) -> None:
    store = open_store(f"sqlite:///{tmp_path}/late.db")
    book = RuleBook(
        store, Health(store.url), max_rules=10, max_detail_ttl_s=60, default_detail_ttl_s=60
    )
    doc = [{"id": "early", "action": "drop"}]
    book.swap_later("startup", fingerprint(doc), [book.parse(i) for i in doc], by="startup")
    assert ids(book) == ["early"]  # nothing written yet
    book.sync()
    assert ids(book) == ["early"]
    assert audit(book) == [("added", "early", "startup")]


def test_a_store_that_fails_is_noted_once_and_its_recovery_once(
    tmp_path: Path, out: ListHandler
) -> None:
    out.setLevel(logging.WARNING)
    path = tmp_path / "gone" / "x.db"
    path.parent.mkdir()
    store = open_store(f"sqlite:///{path}")
    health = Health(store.url)
    book = RuleBook(store, health, max_rules=10, max_detail_ttl_s=60, default_detail_ttl_s=60)
    book.sync()
    locker = sqlite3.connect(path, timeout=5)
    locker.execute("BEGIN EXCLUSIVE")
    for _ in range(3):
        with pytest.raises(StoreError):
            book.add(rule(book), by=None)
    assert not health.up
    locker.rollback()
    book.add(rule(book, id="after"), by=None)
    assert health.up
    messages = out.messages()
    assert sum("cannot be used" in m for m in messages) == 1
    assert sum("answers again" in m for m in messages) == 1


def test_rules_given_at_start_survive_a_store_that_is_down_at_first(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis")  # its port, not started yet
    store = open_store(redis.url(prefix="late"))
    health = Health(store.url)
    book = RuleBook(store, health, max_rules=10, max_detail_ttl_s=60, default_detail_ttl_s=60)
    doc = [{"id": "early", "action": "drop"}]
    book.swap_later("startup", fingerprint(doc), [book.parse(i) for i in doc], by="startup")
    for _ in range(3):
        with pytest.raises(StoreError):
            book.sync()
        assert ids(book) == ["early"]  # in force all along
    redis.start()
    try:
        book.sync()
        assert ids(book) == ["early"]
        assert [r.id for r in store.read_rules(None).rules] == ["early"]
        assert audit(book) == [("added", "early", "startup")]
        assert health.up
    finally:
        redis.stop()


def test_hits_flushed_from_two_threads_at_once_are_counted_once(
    make_book: Callable[..., RuleBook],
) -> None:
    book = make_book()
    book.add(rule(book, id="a"), by=None)
    held = book.active.get("a")
    assert held is not None
    stop = threading.Event()

    def flush() -> None:
        while not stop.is_set():
            book.flush_hits()

    threads = [threading.Thread(target=flush) for _ in range(2)]
    for thread in threads:
        thread.start()
    for _ in range(500):
        held._hits.n += 1
    stop.set()
    for thread in threads:
        thread.join()
    book.flush_hits()
    assert [r["hits"] for r in book.listing()[0]] == [500]
    assert book.store.hits(["a"]) == {"a": 500}


class CountingStore(MemoryStore):
    """A memory store that counts its reads of rules."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def read_rules(self, since: int | None) -> RulesRead:
        self.reads += 1
        return super().read_rules(since)


def test_a_process_does_not_read_back_what_it_just_wrote() -> None:
    store = CountingStore()
    book = RuleBook(
        store, Health(store.url), max_rules=20_000, max_detail_ttl_s=60, default_detail_ttl_s=60
    )
    book.sync()
    for n in range(100):
        book.add(rule(book, id=f"r{n}"), by=None)
        book.sync(store.state()[0])  # what the background thread does at each tick
    assert store.reads == 1  # the first read only
    assert len(ids(book)) == 100


def test_a_rule_removed_by_an_operator_stays_removed_after_a_full_read(
    books: Callable[..., RuleBook], shared_url: str
) -> None:
    first, second = books(shared_url), books(shared_url)
    doc = [{"id": "x", "action": "drop"}]
    first.swap("startup", fingerprint(doc), [first.parse(i) for i in doc], by="startup")
    second.remove("x", by="ops")
    first.revision = -1  # as if it had fallen too far behind: it reads every rule again
    first.sync()
    first.sync()
    assert ids(first) == []


def test_the_first_read_brings_the_stores_rules_beside_those_given_at_start(
    books: Callable[..., RuleBook], shared_url: str
) -> None:
    first, second = books(shared_url), books(shared_url)
    first.add(rule(first, id="from-admin"), by="ops")
    doc = [{"id": "early", "action": "drop"}]
    second.swap_later("startup", fingerprint(doc), [second.parse(i) for i in doc], by="startup")
    second.sync(write=False)  # what a new worker does when its Hindsight is made
    assert ids(second) == ["early", "from-admin"]
    assert [r["id"] for r in first.listing()[0]] == ["from-admin"]  # nothing written yet
    second.sync()
    assert sorted(r["id"] for r in first.listing()[0]) == ["early", "from-admin"]
