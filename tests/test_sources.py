"""Rules in force from the start: a list, a JSON file, a URL polled by a real HTTP server."""

from __future__ import annotations

import gzip
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from hindsight_web import Hindsight, sources
from hindsight_web.sources import MAX_DOCUMENT_BYTES

from .conftest import ListHandler

RELEASE_CHECKOUT = {"id": "checkout", "action": "release", "match": {"path": "/checkout"}}
DROP_HEALTH = {"id": "health", "action": "drop", "match": {"path": "/healthz"}}


def rule_ids(hs: Hindsight) -> list[str]:
    return sorted(rule.id for rule in hs.rules.rules())


def wait_for(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_rules_from_a_list_are_in_force_and_audited() -> None:
    hs = Hindsight(rules=[RELEASE_CHECKOUT, DROP_HEALTH])
    assert rule_ids(hs) == ["checkout", "health"]
    events = hs.book.audit(10)[0]
    assert {(e["action"], e["rule"]["id"], e["by"]) for e in events} == {
        ("added", "checkout", "startup"),
        ("added", "health", "startup"),
    }


@pytest.mark.parametrize("wrapped", [False, True], ids=["list", "object"])
def test_rules_from_a_json_file(tmp_path: Path, wrapped: bool) -> None:
    path = tmp_path / "rules.json"
    document: Any = [RELEASE_CHECKOUT]
    if wrapped:
        document = {"rules": document}
    path.write_text(json.dumps(document))
    assert rule_ids(Hindsight(rules=str(path))) == ["checkout"]
    assert rule_ids(Hindsight(rules=path)) == ["checkout"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[{", "is not JSON"),
        ('{"nope": []}', "must be a list of rules"),
        ('[{"action": "release"}, {"action": "explode"}]', "invalid rule #1"),
        ('[{"id": "a", "action": "drop"}, {"id": "a", "action": "drop"}]', "uses the id 'a' twice"),
    ],
)
def test_a_bad_rules_file_is_refused_at_startup(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "rules.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as info:
        Hindsight(rules=str(path))
    assert str(path) in str(info.value)


def test_a_missing_rules_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"cannot read rules file .*missing\.json"):
        Hindsight(rules=str(tmp_path / "missing.json"))


def test_a_bad_rule_in_a_list_names_its_position_and_field() -> None:
    with pytest.raises(ValueError, match=r"invalid rule #0 in rules: .*sample_rate"):
        Hindsight(rules=[{"action": "release", "sample_rate": 7}])


# -- rules_url ---------------------------------------------------------------------------


class RulesServer:
    """A real HTTP server on 127.0.0.1 serving a rules document with an ETag."""

    def __init__(self) -> None:
        self.document: Any = []
        self.gzip = False  # answer gzip-encoded (Content-Encoding: gzip)
        self.requests: list[str | None] = []  # the If-None-Match of each request
        self.port = 0
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = json.dumps(owner.document).encode()
                etag = f'"{hash(body) & 0xFFFFFFFF:x}"'
                owner.requests.append(self.headers.get("If-None-Match"))
                if self.headers.get("If-None-Match") == etag:
                    self.send_response(304)
                    self.end_headers()
                    return
                if owner.gzip:
                    body = gzip.compress(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                if owner.gzip:
                    self.send_header("Content-Encoding", "gzip")
                self.send_header("ETag", etag)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.allow_reuse_address = True
        self.port = server.server_address[1]
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()
        self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/rules.json"


@pytest.fixture
def rules_server() -> Iterator[RulesServer]:
    server = RulesServer()
    server.start()
    yield server
    for hs in _polling:
        hs.close()
    _polling.clear()
    if server._server is not None:
        server.stop()


_polling: list[Hindsight] = []


def polling(url: str) -> Hindsight:
    """A Hindsight polling `url` often; stopped when the test ends."""
    hs = Hindsight(rules_url=url, rules_poll_s=0.05)
    _polling.append(hs)
    return hs


def test_rules_url_is_fetched_in_the_background_then_polled_with_etag(
    rules_server: RulesServer, out: ListHandler
) -> None:
    rules_server.document = [RELEASE_CHECKOUT]
    hs = polling(rules_server.url)
    wait_for(lambda: rule_ids(hs) == ["checkout"], "the first fetch")
    wait_for(lambda: len(rules_server.requests) >= 3, "a few polls")
    assert rules_server.requests[0] is None
    assert all(tag is not None for tag in rules_server.requests[1:])  # If-None-Match sent

    rules_server.document = {"rules": [DROP_HEALTH]}
    wait_for(lambda: rule_ids(hs) == ["health"], "the new document to replace the old")
    actions = [(e["action"], e["rule"]["id"]) for e in reversed(hs.book.audit(10)[0])]
    assert actions == [("added", "checkout"), ("removed", "checkout"), ("added", "health")]
    assert {e["by"] for e in hs.book.audit(10)[0]} == {f"rules_url {rules_server.url}"}


def test_rules_url_down_keeps_the_last_good_rules_and_says_so_once(
    rules_server: RulesServer, out: ListHandler
) -> None:
    out.setLevel(logging.WARNING)
    rules_server.document = [RELEASE_CHECKOUT]
    hs = polling(rules_server.url)
    hs.finish(hs.begin("GET", "/"))
    wait_for(lambda: rule_ids(hs) == ["checkout"], "the first fetch")
    polls = len(rules_server.requests)
    wait_for(lambda: len(rules_server.requests) > polls, "a poll")

    rules_server.stop()
    wait_for(lambda: any("cannot apply" in m for m in out.messages()), "the warning")
    time.sleep(0.5)  # about ten failed polls
    assert rule_ids(hs) == ["checkout"]
    assert sum("cannot apply" in m for m in out.messages()) == 1

    rules_server.document = [DROP_HEALTH]
    rules_server.start()  # back, on the same port
    wait_for(lambda: rule_ids(hs) == ["health"], "the rules of the server that came back")
    assert sum("applied again" in m for m in out.messages()) == 1


def test_rules_url_serving_invalid_rules_keeps_the_last_good_ones(
    rules_server: RulesServer, out: ListHandler
) -> None:
    out.setLevel(logging.WARNING)
    rules_server.document = [RELEASE_CHECKOUT]
    hs = polling(rules_server.url)
    hs.finish(hs.begin("GET", "/"))
    wait_for(lambda: rule_ids(hs) == ["checkout"], "the first fetch")
    rules_server.document = [{"action": "release", "match": {"nope": 1}}]
    wait_for(lambda: any("cannot apply" in m for m in out.messages()), "the warning")
    time.sleep(0.3)
    assert rule_ids(hs) == ["checkout"]
    warnings = [m for m in out.messages() if "cannot apply" in m]
    assert len(warnings) == 1
    assert "match.nope" in warnings[0]


def test_rules_url_leaves_rules_added_through_the_api_alone(rules_server: RulesServer) -> None:
    rules_server.document = [RELEASE_CHECKOUT]
    hs = polling(rules_server.url)
    hs.add_rule({"id": "mine", "action": "drop", "match": {"path": "/x"}}, by="127.0.0.1")
    hs.finish(hs.begin("GET", "/"))
    wait_for(lambda: rule_ids(hs) == ["checkout", "mine"], "the first fetch")
    rules_server.document = []
    wait_for(lambda: rule_ids(hs) == ["mine"], "the URL's rules to be withdrawn")


def test_rules_url_must_be_http() -> None:
    with pytest.raises(ValueError, match="invalid 'rules_url' 'file:///etc/passwd'"):
        Hindsight(rules_url="file:///etc/passwd")


def test_a_rule_the_admin_put_in_place_of_a_polled_one_survives_the_next_poll(
    rules_server: RulesServer,
) -> None:
    rules_server.document = [RELEASE_CHECKOUT]
    hs = polling(rules_server.url)
    wait_for(lambda: rule_ids(hs) == ["checkout"], "the first fetch")
    hs.remove_rule("checkout", by="127.0.0.1")
    hs.add_rule({"id": "checkout", "action": "drop", "match": {"path": "/x"}}, by="127.0.0.1")
    rules_server.document = [DROP_HEALTH]
    hs.finish(hs.begin("GET", "/"))
    wait_for(lambda: rule_ids(hs) == ["checkout", "health"], "the new document")
    kept = hs.rules.get("checkout")
    assert kept is not None
    assert kept.action == "drop"


def test_more_rules_than_max_rules_at_start_is_an_error() -> None:
    rules = [{"id": f"r{n}", "action": "drop"} for n in range(4)]
    with pytest.raises(ValueError, match=r"invalid 'rules': 4 rules, more than 'max_rules' \(3\)"):
        Hindsight(rules=rules, max_rules=3)


def test_a_rules_file_larger_than_the_cap_is_refused_at_start(tmp_path: Path) -> None:
    path = tmp_path / "huge.json"
    path.write_text("[" + " " * MAX_DOCUMENT_BYTES + "]")
    with pytest.raises(ValueError, match="larger than 4194304 bytes"):
        Hindsight(rules=path)


# -- rules_url that misbehaves: start-up never waits, every fetch is bounded ---------------------


class MisbehavingServer:
    """A real HTTP server on 127.0.0.1 that answers as `mode` says:
    "silent" (accepts, never answers), "trickle" (one byte every 0.2 s, forever),
    "huge" (a document larger than the cap, as fast as it can)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.requests = 0
        self.sent = 0
        self.release = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/rules.json"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        self.requests += 1
        with conn:
            conn.recv(65536)
            try:
                if self.mode == "silent":
                    self.release.wait()
                    return
                head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                if self.mode == "trickle":
                    conn.sendall(head + b"Content-Length: 1000000\r\n\r\n[")
                    while not self.release.wait(0.2):
                        conn.sendall(b" ")
                        self.sent += 1
                else:
                    size = 64 * MAX_DOCUMENT_BYTES
                    conn.sendall(head + f"Content-Length: {size}\r\n\r\n[".encode())
                    chunk = b" " * 65536
                    while self.sent < size and not self.release.is_set():
                        conn.sendall(chunk)
                        self.sent += len(chunk)
            except OSError:
                return  # the client gave up: what it should do

    def close(self) -> None:
        self.release.set()
        self.sock.close()


@pytest.fixture
def misbehaving() -> Iterator[Callable[[str], MisbehavingServer]]:
    made: list[MisbehavingServer] = []

    def make(mode: str) -> MisbehavingServer:
        made.append(MisbehavingServer(mode))
        return made[-1]

    yield make
    for hs in _polling:
        hs.close()
    _polling.clear()
    for server in made:
        server.close()


def test_a_rules_url_that_never_answers_delays_neither_start_nor_requests(
    misbehaving: Callable[[str], MisbehavingServer],
) -> None:
    server = misbehaving("silent")
    hs = polling(server.url)
    for _ in range(3):  # were any of this waiting on the URL, the test would time out
        hs.finish(hs.begin("GET", "/"))
    wait_for(lambda: server.requests >= 1, "the background fetch")
    assert hs.counters()["requests"] == 3


@pytest.mark.parametrize(
    ("mode", "why"),
    [("trickle", "took longer than 1 s"), ("huge", "more than 4194304 bytes")],
)
def test_a_slow_or_huge_rules_url_is_cut_off_and_the_last_good_rules_stay(
    misbehaving: Callable[[str], MisbehavingServer],
    out: ListHandler,
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
    why: str,
) -> None:
    monkeypatch.setattr(sources, "FETCH_TIMEOUT_S", 1.0)  # 10 s by default
    out.setLevel(logging.WARNING)
    server = misbehaving(mode)
    hs = Hindsight(
        rules=[DROP_HEALTH], rules_url=server.url, rules_poll_s=1.0, max_total_bytes=1_000_000
    )
    _polling.append(hs)
    wait_for(lambda: server.requests >= 2, "a second fetch: the first was cut off", timeout=15)
    assert rule_ids(hs) == ["health"]
    warnings = [m for m in out.messages() if "cannot apply" in m]
    assert len(warnings) == 1
    assert why in warnings[0]
    if mode == "huge":  # it stopped reading at the cap, not at the end of the answer
        assert server.sent < 64 * MAX_DOCUMENT_BYTES


def test_a_rules_url_serving_more_than_max_rules_keeps_the_last_good_ones(
    rules_server: RulesServer, out: ListHandler
) -> None:
    out.setLevel(logging.WARNING)
    rules_server.document = [RELEASE_CHECKOUT]
    hs = Hindsight(rules_url=rules_server.url, rules_poll_s=0.05, max_rules=3)
    _polling.append(hs)
    wait_for(lambda: rule_ids(hs) == ["checkout"], "the first fetch")
    rules_server.document = [{"id": f"r{n}", "action": "drop"} for n in range(5)]
    wait_for(lambda: any("max_rules" in m for m in out.messages()), "the warning")
    assert rule_ids(hs) == ["checkout"]


def test_a_gzip_encoded_rules_document_is_read_decoded(rules_server: RulesServer) -> None:
    rules_server.gzip = True
    rules_server.document = [RELEASE_CHECKOUT, DROP_HEALTH]
    hs = polling(rules_server.url)
    wait_for(lambda: rule_ids(hs) == ["checkout", "health"], "the gzip-encoded document")
