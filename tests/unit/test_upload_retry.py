"""One retry policy for uploads: however the failure comes, no request of one close() is sent
more often than the policy says (three times), never that count times the client's own
retries; a request that failed in a way that sending it again may fix is sent again alone
(one failed part of a large upload does not send the other parts again); a failure that a
new ticket may fix starts the upload again, within the same count.

The pieces are the mount's own: `Writes`' Uploader and upload callable over a real
`FlywheelClient`. `responses` stands in for the site and its storage only to make them
fail; the wire format of a successful upload is tested against the sandbox.
"""

from __future__ import annotations

import errno
import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import responses
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fwfs.client import FlywheelClient
from fwfs.config import ClientConfig, MountConfig
from fwfs.errors import FwfsError
from fwfs.fs.tree import Tree
from fwfs.fs.writes import Writes
from fwfs.uploads import RetryPolicy, SendBudget, Spool, UploadTarget

SECRET = "retry-secret-Qm2-never-logged"
API = "https://fw.example.org:443/api"
FILES = f"{API}/acquisitions/a1/files"
STORAGE = "https://bucket.storage.example.net/up/key"
MiB = 1 << 20

# What a storage or the site answers one request: a status, or an exception raised in
# place of an answer (a dropped connection).
Outcome = int | Exception
RESET = requests.exceptions.ConnectionError("connection reset by peer")


def make_writes(spool_dir: Path, sleeps: list[float]) -> tuple[Writes, FlywheelClient]:
    """The write side of a mount, as `FlywheelFS` makes it, over the client a mount uses
    (its default retries: 7, backoffs recorded rather than slept) and the policy the mount
    builds from that client's config; the policy's waits are recorded in ``sleeps``."""
    config = ClientConfig.from_api_key(f"fw.example.org:{SECRET}")
    client = FlywheelClient(config, sleep=lambda s: None, jitter=lambda: 0.0)
    w = Writes(
        client,
        MountConfig(read_only=False, spool_dir=spool_dir),
        cast(Tree, None),  # an upload never lists
        lambda path: cast(Any, None),
        Spool(spool_dir),
        None,
        retry=RetryPolicy.from_config(config),
    )
    w.uploader.sleep = sleeps.append
    return w, client


@pytest.fixture
def server() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def writes(tmp_path: Path, sleeps: list[float]) -> Iterator[Writes]:
    w, client = make_writes(tmp_path / "spool", sleeps)
    yield w
    w.close()
    client.close()


def stage(writes: Writes, data: bytes) -> Any:
    staged = writes.spool.create(UploadTarget("acquisition", "a1", "scan.bin", "p/scan.bin"))
    staged.write(0, data)
    return staged


def commit(writes: Writes, data: bytes) -> FwfsError:
    """Stage `data` for a1/scan.bin and close its only writer: the error close() returns."""
    with pytest.raises(FwfsError) as info:
        writes.uploader.release(stage(writes, data))
    return info.value


def sent(server: responses.RequestsMock, method: str, prefix: str) -> int:
    return sum(
        1
        for c in server.calls
        if c.request.method == method and str(c.request.url).startswith(prefix)
    )


class Site:
    """The site and its storage, scripted: each ticket POST hands out a new ticket whose
    ``parts`` signed URLs name it; ``storage[(ticket, part)]`` and ``finish[ticket]`` are
    the answers of successive sends (then 200). Counts every request by what it is."""

    def __init__(self, server: responses.RequestsMock, parts: int = 1) -> None:
        self.parts = parts
        self.tickets = 0
        self.storage: dict[tuple[int, int], list[Outcome]] = {}
        self.finish: dict[int, list[Outcome]] = {}
        self.ticket_answers: list[Outcome] = []
        self.sent: Counter[str] = Counter()
        self.bytes: dict[tuple[int, int], bytes] = {}
        server.get(f"{API}/config", json={"features": {"signed_url": True}})
        server.add_callback("POST", FILES, callback=self._post)
        server.add_callback("PUT", re.compile(re.escape(STORAGE) + "/"), callback=self._put)

    def _answer(self, script: list[Outcome], ok: Any) -> tuple[int, dict[str, str], str]:
        outcome = script.pop(0) if script else 200
        if isinstance(outcome, Exception):
            raise outcome
        if outcome != 200:
            return outcome, {}, json.dumps({"message": f"scripted {outcome}"})
        return 200, {}, json.dumps(ok)

    def _post(self, request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        ticket = parse_qs(urlsplit(str(request.url)).query, keep_blank_values=True)["ticket"][0]
        if ticket == "":
            self.sent["ticket"] += 1
            answer = self._answer(self.ticket_answers, None)
            if answer[0] != 200:
                return answer
            self.tickets += 1
            t = self.tickets
            urls = [f"{STORAGE}/T{t}/{p}?sig=s{t}" for p in range(self.parts)]
            return 200, {}, json.dumps({"ticket": f"T{t}", "urls": {"scan.bin": urls}})
        t = int(ticket.removeprefix("T"))
        self.sent[f"finish T{t}"] += 1
        return self._answer(self.finish.setdefault(t, []), [{"name": "scan.bin"}])

    def _put(self, request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        t, p = urlsplit(str(request.url)).path.split("/")[-2:]
        key = (int(t.removeprefix("T")), int(p))
        self.sent[f"PUT T{key[0]} part {key[1]}"] += 1
        body: Any = request.body
        self.bytes[key] = body.read() if hasattr(body, "read") else (body or b"")
        answer = self._answer(self.storage.setdefault(key, []), None)
        return answer[0], {}, "" if answer[0] == 200 else "<Error>scripted</Error>"

    def puts_of_part(self, part: int) -> int:
        return sum(
            n for k, n in self.sent.items() if k.startswith("PUT") and k.endswith(f" {part}")
        )


# -- always failing: each request at most the policy's count ----------------------------


def test_a_put_to_failing_storage_is_sent_at_most_the_policy_count(
    server: responses.RequestsMock, writes: Writes, sleeps: list[float]
) -> None:
    server.get(f"{API}/config", json={"features": {"signed_url": True}})
    server.post(FILES, json={"ticket": "T1", "urls": {"scan.bin": f"{STORAGE}?sig=1"}})
    server.put(STORAGE, status=503, body="<Error>SlowDown</Error>")
    error = commit(writes, b"x" * 1000)
    assert error.errno == errno.EIO
    # Before: 3 attempts of the Uploader x 8 of the transport = 24 PUTs.
    assert sent(server, "PUT", STORAGE) == RetryPolicy().attempts == 3
    # Sent again alone, on the same ticket: no new ticket, never a finish.
    assert sent(server, "POST", FILES) == 1
    assert sleeps == [1.0, 2.0]
    [kept] = list(writes.spool.recovery.glob("*.data"))
    assert kept.read_bytes() == b"x" * 1000


def test_a_storage_that_cannot_be_reached_is_tried_the_policy_count(
    server: responses.RequestsMock, writes: Writes
) -> None:
    server.get(f"{API}/config", json={"features": {"signed_url": True}})
    server.post(FILES, json={"ticket": "T1", "urls": {"scan.bin": f"{STORAGE}?sig=1"}})
    server.put(STORAGE, body=RESET)
    assert commit(writes, b"y" * 10).errno == errno.EIO
    assert sent(server, "PUT", STORAGE) == 3


def test_a_failing_multipart_post_is_sent_the_policy_count(
    server: responses.RequestsMock, writes: Writes
) -> None:
    server.get(f"{API}/config", json={"features": {"signed_url": False}})
    server.post(FILES, status=503, json={"message": "busy"})
    assert commit(writes, b"z" * 10).errno == errno.EIO
    assert sent(server, "POST", FILES) == 3
    assert sent(server, "GET", f"{API}/config") == 1  # asked once, then remembered


def test_a_failing_finish_is_sent_again_alone_within_the_policy_count(
    server: responses.RequestsMock, writes: Writes
) -> None:
    site = Site(server)
    site.finish[1] = [502] * 10
    assert commit(writes, b"w" * 10).errno == errno.EIO
    assert site.sent == {"ticket": 1, "PUT T1 part 0": 1, "finish T1": 3}
    finishes = [c for c in server.calls if "ticket=T1" in str(c.request.url)]
    assert all(json.loads(c.request.body or b"null") is None for c in finishes)


def test_a_failing_ticket_post_is_sent_the_policy_count(
    server: responses.RequestsMock, writes: Writes
) -> None:
    site = Site(server)
    site.ticket_answers = [RESET] * 10
    assert commit(writes, b"v" * 10).errno == errno.EIO
    assert site.sent == {"ticket": 3}


# -- one transient failure: that request alone is sent again ---------------------------


@pytest.mark.parametrize("failure", [503, 429, RESET], ids=["503", "429", "reset"])
def test_a_part_that_fails_once_is_sent_twice_and_the_others_once(
    server: responses.RequestsMock, writes: Writes, sleeps: list[float], failure: Outcome
) -> None:
    site = Site(server, parts=3)
    site.storage[(1, 1)] = [failure]
    data = bytes(range(256)) * (2 * MiB // 256)
    staged = stage(writes, data)
    result = writes.uploader.release(staged)
    assert result == {"name": "scan.bin"}
    # Before (HEAD 093eb21): a new ticket and all three parts again (2 tickets, 6 PUTs).
    assert site.sent == {
        "ticket": 1,
        "PUT T1 part 0": 1,
        "PUT T1 part 1": 2,
        "PUT T1 part 2": 1,
        "finish T1": 1,
    }
    assert sleeps == [1.0]
    # The part sent again was the whole part, from its first byte.
    assert b"".join(site.bytes[(1, p)] for p in range(3)) == data
    assert not list(writes.spool.recovery.iterdir())


def test_each_part_may_fail_up_to_the_count_on_its_own(
    server: responses.RequestsMock, writes: Writes
) -> None:
    site = Site(server, parts=3)
    for part in range(3):
        site.storage[(1, part)] = [503, 503]  # each part: two failures, then stored
    assert writes.uploader.release(stage(writes, b"u" * (2 * MiB))) == {"name": "scan.bin"}
    assert [site.puts_of_part(p) for p in range(3)] == [3, 3, 3]
    assert site.sent["ticket"] == 1


# -- a failure a new ticket may fix: the upload starts again, within the count ---------


@pytest.mark.parametrize("status", [403, 400, 404])
def test_storage_refusing_a_signed_url_starts_again_with_a_new_ticket(
    server: responses.RequestsMock, writes: Writes, sleeps: list[float], status: int
) -> None:
    site = Site(server, parts=2)
    site.storage[(1, 1)] = [status]  # the first ticket's second URL expired
    assert writes.uploader.release(stage(writes, b"t" * (2 * MiB))) == {"name": "scan.bin"}
    assert site.sent == {
        "ticket": 2,
        "PUT T1 part 0": 1,
        "PUT T1 part 1": 1,
        "PUT T2 part 0": 1,
        "PUT T2 part 1": 1,
        "finish T2": 1,
    }
    assert sleeps == [1.0]


def test_storage_that_always_refuses_gets_the_policy_count_of_tickets(
    server: responses.RequestsMock, writes: Writes
) -> None:
    site = Site(server)
    for t in (1, 2, 3, 4):
        site.storage[(t, 0)] = [403]
    assert commit(writes, b"s" * 10).errno == errno.EIO  # not EACCES: not the user's
    assert site.sent == {"ticket": 3, "PUT T1 part 0": 1, "PUT T2 part 0": 1, "PUT T3 part 0": 1}
    [kept] = list(writes.spool.recovery.glob("*.data"))
    assert kept.read_bytes() == b"s" * 10


def test_a_finish_for_a_ticket_the_site_dropped_starts_again_with_a_new_ticket(
    server: responses.RequestsMock, writes: Writes
) -> None:
    site = Site(server)
    site.finish[1] = [404]
    assert writes.uploader.release(stage(writes, b"r" * 10)) == {"name": "scan.bin"}
    assert site.sent == {
        "ticket": 2,
        "PUT T1 part 0": 1,
        "finish T1": 1,
        "PUT T2 part 0": 1,
        "finish T2": 1,
    }


def test_a_restart_never_sends_a_request_past_the_count(
    server: responses.RequestsMock, writes: Writes
) -> None:
    site = Site(server, parts=2)
    site.storage[(1, 0)] = [503, 503]  # part 0: its third send is stored
    site.storage[(1, 1)] = [403]  # then part 1's URL has expired
    assert commit(writes, b"q" * (2 * MiB)).errno == errno.EIO
    # A new ticket would send part 0 a fourth time: the upload gives up instead.
    assert site.sent == {"ticket": 1, "PUT T1 part 0": 3, "PUT T1 part 1": 1}


# -- final at once ------------------------------------------------------------------------


@pytest.mark.parametrize("status", [403, 409, 422])
def test_a_refusal_by_the_api_fails_at_once_and_keeps_the_bytes(
    server: responses.RequestsMock, writes: Writes, sleeps: list[float], status: int
) -> None:
    site = Site(server)
    site.ticket_answers = [status]
    error = commit(writes, b"p" * 10)
    assert error.errno != errno.EIO
    assert site.sent == {"ticket": 1}
    assert sleeps == []
    [kept] = list(writes.spool.recovery.glob("*.data"))
    assert kept.read_bytes() == b"p" * 10


# -- whatever fails, and how often: never more than the count per request -------------

SCRIPTS = st.lists(st.sampled_from([200, 200, 503, 403, 404, 409]), max_size=4)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    parts=st.integers(1, 3),
    tickets=st.lists(SCRIPTS, min_size=3, max_size=3),
    storage=st.dictionaries(st.tuples(st.integers(1, 3), st.integers(0, 2)), SCRIPTS),
    finish=st.dictionaries(st.integers(1, 3), SCRIPTS),
)
def test_no_request_of_one_close_is_sent_more_than_the_count(
    tmp_path_factory: pytest.TempPathFactory,
    parts: int,
    tickets: list[list[int]],
    storage: dict[tuple[int, int], list[int]],
    finish: dict[int, list[int]],
) -> None:
    sleeps: list[float] = []
    w, client = make_writes(tmp_path_factory.mktemp("spool") / "spool", sleeps)
    try:
        with responses.RequestsMock(assert_all_requests_are_fired=False) as server:
            site = Site(server, parts=parts)
            site.ticket_answers = [status for script in tickets for status in script]
            site.storage = {k: list(v) for k, v in storage.items()}
            site.finish = {k: list(v) for k, v in finish.items()}
            staged = stage(w, b"o" * (MiB + 1))
            try:
                outcome: object = w.uploader.release(staged)
            except FwfsError as error:
                outcome = error
        policy = w.uploader.retry
        # Per request, as the wire saw it: the ticket POST, each part's PUT, the finish.
        assert site.sent["ticket"] <= policy.attempts
        for part in range(parts):
            assert site.puts_of_part(part) <= policy.attempts
        finishes = sum(n for k, n in site.sent.items() if k.startswith("finish"))
        assert finishes <= policy.attempts
        if isinstance(outcome, FwfsError):
            [kept] = list(w.spool.recovery.glob("*.data"))
            assert kept.stat().st_size == MiB + 1
        else:
            assert outcome == {"name": "scan.bin"}
    finally:
        w.close()
        client.close()


# -- the policy ---------------------------------------------------------------------------


def test_the_policy_built_from_the_default_client_config_is_the_mounts() -> None:
    config = ClientConfig.from_api_key(f"fw.example.org:{SECRET}")
    policy = RetryPolicy.from_config(config)
    assert policy == RetryPolicy()
    assert (policy.attempts, policy.delay(1), policy.delay(2)) == (3, 1.0, 2.0)
    # A longer policy never waits longer than the client's own cap.
    assert RetryPolicy(attempts=9).delay(8) == config.backoff_max


def test_the_policy_takes_its_count_from_the_client_config() -> None:
    config = ClientConfig.from_api_key(f"fw.example.org:{SECRET}", upload_attempts=5)
    assert RetryPolicy.from_config(config).attempts == 5
    with pytest.raises(FwfsError):
        ClientConfig.from_api_key(f"fw.example.org:{SECRET}", upload_attempts=0)


def test_a_budget_allows_each_request_the_count_and_restarts_within_it() -> None:
    waits: list[float] = []
    budget = RetryPolicy(attempts=3).budget("p/x", waits.append)
    error = RuntimeError("503")
    assert budget.again("PUT part 1", error) and budget.again("PUT part 1", error)
    assert not budget.again("PUT part 1", error)  # its third send was its last
    assert budget.again("PUT part 2", error)
    assert not budget.restart(error)  # part 1 would be sent a fourth time
    fresh = RetryPolicy(attempts=3).budget("p/y", waits.append)
    assert fresh.restart(error) and fresh.again("finish", error)  # 2 rounds + 1 = 3
    assert not fresh.again("finish", error) and not fresh.restart(error)
    assert isinstance(fresh, SendBudget) and fresh.rounds == 2
    assert waits == [1.0, 2.0, 1.0, 1.0, 2.0]
