"""One retry policy for uploads: however the failure comes, an upload's requests are sent at
most as often as the Uploader's policy says (three times), never that count times the
client's own retries.

The pieces are the mount's own: `Writes`' Uploader and upload callable over a real
`FlywheelClient`. `responses` stands in for the site and its storage only to make them
fail; the wire format of a successful upload is tested against the sandbox.
"""

from __future__ import annotations

import errno
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import requests
import responses

from fwfs.client import FlywheelClient
from fwfs.config import ClientConfig, MountConfig
from fwfs.errors import FwfsError
from fwfs.fs.tree import Tree
from fwfs.fs.writes import Writes
from fwfs.uploads import RetryPolicy, Spool, UploadTarget

SECRET = "retry-secret-Qm2-never-logged"
API = "https://fw.example.org:443/api"
FILES = f"{API}/acquisitions/a1/files"
STORAGE = "https://bucket.storage.example.net/up/key"


@pytest.fixture
def server() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture
def writes(tmp_path: Path) -> Iterator[Writes]:
    """The write side of a mount, as `FlywheelFS` makes it, over the client a mount uses
    (its default retries: 7), whose own backoffs are recorded rather than slept."""
    config = ClientConfig.from_api_key(f"fw.example.org:{SECRET}")
    client = FlywheelClient(config, sleep=lambda s: None, jitter=lambda: 0.0)
    spool = Spool(tmp_path / "spool")
    w = Writes(
        client,
        MountConfig(read_only=False, spool_dir=tmp_path / "spool"),
        cast(Tree, None),  # an upload never lists
        lambda path: cast(Any, None),
        spool,
        None,
    )
    w.uploader.sleep = lambda s: None  # the policy's backoffs: counted by the test, not slept
    yield w
    w.close()
    client.close()


def commit(writes: Writes, data: bytes) -> FwfsError:
    """Stage `data` for a1/scan.bin and close its only writer: the error close() returns."""
    staged = writes.spool.create(UploadTarget("acquisition", "a1", "scan.bin", "p/scan.bin"))
    staged.write(0, data)
    with pytest.raises(FwfsError) as info:
        writes.uploader.release(staged)
    return info.value


def sent(server: responses.RequestsMock, method: str, prefix: str) -> int:
    return sum(
        1
        for c in server.calls
        if c.request.method == method and str(c.request.url).startswith(prefix)
    )


def test_a_put_to_failing_storage_is_sent_at_most_the_policy_count(
    server: responses.RequestsMock, writes: Writes
) -> None:
    server.get(f"{API}/config", json={"features": {"signed_url": True}})
    server.post(FILES, json={"ticket": "T1", "urls": {"scan.bin": f"{STORAGE}?sig=1"}})
    server.put(STORAGE, status=503, body="<Error>SlowDown</Error>")
    error = commit(writes, b"x" * 1000)
    assert error.errno == errno.EIO
    # Before: 3 attempts of the Uploader x 8 of the transport = 24 PUTs.
    assert sent(server, "PUT", STORAGE) == RetryPolicy().attempts == 3
    assert sent(server, "POST", FILES) == 3  # a ticket per attempt; never a finish
    [kept] = list(writes.spool.recovery.glob("*.data"))
    assert kept.read_bytes() == b"x" * 1000


def test_a_storage_that_cannot_be_reached_is_tried_the_policy_count(
    server: responses.RequestsMock, writes: Writes
) -> None:
    server.get(f"{API}/config", json={"features": {"signed_url": True}})
    server.post(FILES, json={"ticket": "T1", "urls": {"scan.bin": f"{STORAGE}?sig=1"}})
    server.put(STORAGE, body=requests.exceptions.ConnectionError("connection reset"))
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


def test_a_failing_finish_restarts_the_upload_within_the_policy_count(
    server: responses.RequestsMock, writes: Writes
) -> None:
    server.get(f"{API}/config", json={"features": {"signed_url": True}})
    ticket = {"ticket": "T1", "urls": {"scan.bin": f"{STORAGE}?sig=1"}}
    for _ in range(3):  # each attempt: a ticket, the PUT, and a finish that fails
        server.post(FILES, json=ticket)
        server.post(FILES, status=502, json={"message": "bad gateway"})
    server.put(STORAGE, body="")
    assert commit(writes, b"w" * 10).errno == errno.EIO
    assert sent(server, "PUT", STORAGE) == 3
    finishes = [
        c for c in server.calls if c.request.method == "POST" and "ticket=T1" in str(c.request.url)
    ]
    assert len(finishes) == 3
    assert all(json.loads(c.request.body or b"null") is None for c in finishes)


def test_the_policy_built_from_the_default_client_config_is_the_mounts() -> None:
    config = ClientConfig.from_api_key(f"fw.example.org:{SECRET}")
    policy = RetryPolicy.from_config(config)
    assert policy == RetryPolicy()
    assert (policy.attempts, policy.delay(1), policy.delay(2)) == (3, 1.0, 2.0)
    # A longer policy never waits longer than the client's own cap.
    assert RetryPolicy(attempts=9).delay(8) == config.backoff_max
