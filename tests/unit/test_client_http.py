"""FlywheelClient's HTTP behaviour on retries and failures, with `responses` standing in
for the server. Happy paths are tested against the real sandbox elsewhere; here the point
is what a flaky, slow or misbehaving server does to a caller.
"""

from __future__ import annotations

import errno
import io
import logging
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any

import pytest
import requests
import responses
import urllib3.exceptions

from fwfs import __version__
from fwfs.client import FlywheelClient, RangeIgnored
from fwfs.config import ClientConfig
from fwfs.errors import (
    FwfsError,
    NotFound,
    PermissionDenied,
    RemoteError,
    RemoteUnavailable,
)

SECRET = "Qv8-client-secret-never-to-be-seen-3Kd"
API = "https://fw.example.org:443/api"
PROJECT = f"{API}/projects/p1"
FILE = f"{API}/projects/p1/files/scan.nii.gz"


class FakeTime:
    """A clock that only moves when the client sleeps, so tests never wait."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def make_client(
    time: FakeTime, key: str = f"fw.example.org:{SECRET}", **cfg: Any
) -> FlywheelClient:
    config = ClientConfig.from_api_key(key, **cfg)
    return FlywheelClient(config, sleep=time.sleep, clock=time.clock, jitter=lambda: 1.0)


@pytest.fixture
def clock() -> FakeTime:
    return FakeTime()


@pytest.fixture
def client(clock: FakeTime) -> Iterator[FlywheelClient]:
    with make_client(clock) as c:
        yield c


@pytest.fixture
def server() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


class CountingReader(io.RawIOBase):
    """A response body that records how much of it the client actually pulled."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.served = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        chunk = self._data[self.served : self.served + len(buffer)]
        buffer[: len(chunk)] = chunk
        self.served += len(chunk)
        return len(chunk)


def never_connected() -> requests.exceptions.ConnectionError:
    """What requests raises when the TCP connection was refused: nothing was sent."""
    refused = urllib3.exceptions.NewConnectionError(None, "Connection refused")  # type: ignore[arg-type]
    return requests.exceptions.ConnectionError(
        urllib3.exceptions.MaxRetryError(None, "/api/x", refused)  # type: ignore[arg-type]
    )


def dropped() -> requests.exceptions.ConnectionError:
    """What requests raises when the server hung up after the request went out."""
    return requests.exceptions.ConnectionError(
        urllib3.exceptions.ProtocolError("Connection aborted.", ConnectionResetError(104, "reset"))
    )


# -- headers ---------------------------------------------------------------------------


def test_requests_carry_key_features_and_user_agent(
    server: responses.RequestsMock, client: FlywheelClient
) -> None:
    server.get(f"{API}/users/self", json={"_id": "ada@example.org"})
    assert client.current_user() == {"_id": "ada@example.org"}
    sent = server.calls[0].request.headers
    assert sent["Authorization"] == f"scitran-user {SECRET}"
    assert sent["x-accept-feature"] == "Safe-Redirect,multipart_signed_url,subject-container"
    assert "pagination" not in sent["x-accept-feature"].split(",")
    assert sent["User-Agent"] == f"fwfs/{__version__}"


def test_57_character_key_is_sent_as_bearer(
    server: responses.RequestsMock, clock: FakeTime
) -> None:
    token = "t" * 57
    server.get(f"{API}/auth/status", json={"is_device": False})
    with make_client(clock, key=f"fw.example.org:{token}") as c:
        c.auth_status()
    assert server.calls[0].request.headers["Authorization"] == f"Bearer {token}"


# -- retries ---------------------------------------------------------------------------


def test_get_retries_503_then_succeeds(
    server: responses.RequestsMock, client: FlywheelClient, clock: FakeTime
) -> None:
    server.get(PROJECT, status=503)
    server.get(PROJECT, status=503)
    server.get(PROJECT, json={"_id": "p1", "label": "Brain"})
    assert client.get("project", "p1")["label"] == "Brain"
    assert len(server.calls) == 3
    assert clock.sleeps == [0.5, 1.0]  # backoff_factor * 2**n with jitter pinned to 1


def test_retry_after_seconds_is_honoured(
    server: responses.RequestsMock, client: FlywheelClient, clock: FakeTime
) -> None:
    server.get(PROJECT, status=503, headers={"Retry-After": "7"})
    server.get(PROJECT, json={"_id": "p1"})
    client.get("project", "p1")
    assert clock.sleeps == [7.0]


def test_retry_after_http_date_is_capped_at_backoff_max(
    server: responses.RequestsMock, client: FlywheelClient, clock: FakeTime
) -> None:
    later = format_datetime(datetime.now(timezone.utc) + timedelta(hours=1), usegmt=True)
    server.get(PROJECT, status=429, headers={"Retry-After": later})
    server.get(PROJECT, json={"_id": "p1"})
    client.get("project", "p1")
    assert clock.sleeps == [15.0]


def test_unusable_retry_after_falls_back_to_the_backoff(
    server: responses.RequestsMock, client: FlywheelClient, clock: FakeTime
) -> None:
    server.get(PROJECT, status=503, headers={"Retry-After": "soon"})
    server.get(PROJECT, json={"_id": "p1"})
    client.get("project", "p1")
    assert clock.sleeps == [0.5]


def test_rate_limit_that_never_lifts_becomes_eio(
    server: responses.RequestsMock, clock: FakeTime
) -> None:
    server.get(PROJECT, status=429, json={"message": "slow down"})
    with make_client(clock, retries=3) as c, pytest.raises(RemoteError) as info:
        c.get("project", "p1")
    assert info.value.errno == errno.EIO
    assert info.value.status == 429
    assert len(server.calls) == 4
    assert "gave up after 4 attempts" in str(info.value)
    assert "slow down" in str(info.value)


def test_total_timeout_bounds_the_retrying(server: responses.RequestsMock, clock: FakeTime) -> None:
    server.get(PROJECT, status=503, headers={"Retry-After": "6"})
    with make_client(clock, total_timeout=10.0) as c, pytest.raises(RemoteUnavailable):
        c.get("project", "p1")
    # The second wait would end past the 10 s budget, so the client gives up instead.
    assert clock.sleeps == [6.0]
    assert len(server.calls) == 2


def test_post_is_not_retried_on_502(
    server: responses.RequestsMock, client: FlywheelClient, clock: FakeTime
) -> None:
    server.post(f"{API}/projects", status=502)
    with pytest.raises(RemoteUnavailable) as info:
        client.create_container("project", {"group": "g", "label": "new"})
    assert info.value.errno == errno.EIO
    assert len(server.calls) == 1
    assert clock.sleeps == []


def test_post_is_not_retried_when_the_connection_dropped_after_sending(
    server: responses.RequestsMock, client: FlywheelClient
) -> None:
    server.post(f"{API}/projects", body=dropped())
    with pytest.raises(RemoteUnavailable):
        client.create_container("project", {"group": "g", "label": "new"})
    assert len(server.calls) == 1


def test_post_is_retried_when_the_connection_was_never_made(
    server: responses.RequestsMock, client: FlywheelClient
) -> None:
    server.post(f"{API}/projects", body=never_connected())
    server.post(f"{API}/projects", json={"_id": "p9"})
    assert client.create_container("project", {"group": "g", "label": "new"}) == "p9"
    assert len(server.calls) == 2


def test_get_is_retried_when_the_connection_dropped(
    server: responses.RequestsMock, client: FlywheelClient
) -> None:
    server.get(PROJECT, body=dropped())
    server.get(PROJECT, json={"_id": "p1"})
    assert client.get("project", "p1") == {"_id": "p1"}


def test_500_is_not_retried(server: responses.RequestsMock, client: FlywheelClient) -> None:
    server.get(PROJECT, status=500, body="Internal Server Error (plain text)")
    with pytest.raises(RemoteError) as info:
        client.get("project", "p1")
    assert len(server.calls) == 1
    assert "HTTP 500" in str(info.value)
    assert info.value.server_message is None


# -- status mapping --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, errno.EINVAL),
        (401, errno.EACCES),
        (403, errno.EACCES),
        (404, errno.ENOENT),
        (409, errno.EEXIST),
        (413, errno.EFBIG),
    ],
)
def test_client_errors_map_to_errno_without_retrying(
    server: responses.RequestsMock, client: FlywheelClient, status: int, expected: int
) -> None:
    server.get(PROJECT, status=status, json={"status": status, "message": "because"})
    with pytest.raises(FwfsError) as info:
        client.get("project", "p1")
    assert info.value.errno == expected
    assert len(server.calls) == 1


def test_404_keeps_the_server_message_and_the_request(
    server: responses.RequestsMock, client: FlywheelClient
) -> None:
    body = {"status": 404, "message": "project p1 not found", "detail": None}
    server.get(PROJECT, status=404, json=body)
    with pytest.raises(NotFound) as info:
        client.get("project", "p1")
    error = info.value
    assert error.errno == errno.ENOENT
    assert (error.status, error.method, error.path) == (404, "GET", "/api/projects/p1")
    assert error.server_message == "project p1 not found"
    assert "project p1 not found" in str(error)


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failures_are_eacces(
    server: responses.RequestsMock, client: FlywheelClient, status: int
) -> None:
    server.get(f"{API}/auth/status", status=status, json={"message": "not authenticated"})
    with pytest.raises(PermissionDenied) as info:
        client.auth_status()
    assert info.value.errno == errno.EACCES


def test_invalid_json_success_body_is_a_remote_error(
    server: responses.RequestsMock, client: FlywheelClient
) -> None:
    server.get(PROJECT, body="<html>proxy login</html>")
    with pytest.raises(RemoteError, match="not valid JSON"):
        client.get("project", "p1")


# -- ranged reads ----------------------------------------------------------------------


def test_read_range_asks_for_the_range_with_view(
    server: responses.RequestsMock, client: FlywheelClient
) -> None:
    server.get(FILE, status=206, body=b"0123456789", headers={"Content-Range": "bytes 10-19/100"})
    assert client.read_range("project", "p1", "scan.nii.gz", 10, 20, version=3) == b"0123456789"
    request = server.calls[0].request
    assert request.headers["Range"] == "bytes=10-19"
    assert "view=true" in str(request.url) and "version=3" in str(request.url)


def test_read_range_at_end_of_file_returns_the_remainder(
    server: responses.RequestsMock, client: FlywheelClient
) -> None:
    server.get(FILE, status=206, body=b"tail", headers={"Content-Range": "bytes 96-99/100"})
    assert client.read_range("project", "p1", "scan.nii.gz", 96, 200) == b"tail"


def test_read_range_past_end_of_file_is_empty(
    server: responses.RequestsMock, client: FlywheelClient
) -> None:
    server.get(FILE, status=416, json={"message": "range not satisfiable"})
    assert client.read_range("project", "p1", "scan.nii.gz", 500, 600) == b""


def test_read_range_shorter_than_asked_mid_file_is_refused(
    server: responses.RequestsMock, client: FlywheelClient
) -> None:
    server.get(FILE, status=206, body=b"0123", headers={"Content-Range": "bytes 10-13/100"})
    with pytest.raises(RemoteError, match="shorter range"):
        client.read_range("project", "p1", "scan.nii.gz", 10, 20)


def test_ignored_range_at_offset_zero_reads_only_what_was_asked(
    server: responses.RequestsMock, client: FlywheelClient
) -> None:
    whole = bytes(range(256)) * (32 * 1024)  # 8 MiB the server would happily send
    source = CountingReader(whole)
    headers = {"Content-Length": str(len(whole))}
    server.get(FILE, status=200, body=io.BufferedReader(source), headers=headers)
    assert client.read_range("project", "p1", "scan.nii.gz", 0, 100) == whole[:100]
    assert 100 <= source.served < 1024 * 1024


def test_ignored_range_at_offset_zero_on_a_short_file_is_eof(
    server: responses.RequestsMock, client: FlywheelClient
) -> None:
    server.get(FILE, status=200, body=b"tiny")
    assert client.read_range("project", "p1", "scan.nii.gz", 0, 4096) == b"tiny"


def test_ignored_range_at_an_offset_says_so_after_one_request(
    server: responses.RequestsMock, client: FlywheelClient
) -> None:
    whole = bytes(range(256)) * (64 * 1024)  # 16 MiB
    source = CountingReader(whole)
    headers = {"Content-Length": str(len(whole))}
    server.get(FILE, status=200, body=io.BufferedReader(source), headers=headers)
    with pytest.raises(RangeIgnored) as caught:
        client.read_range("project", "p1", "scan.nii.gz", 4096, 8192)
    assert caught.value.whole_file_only and caught.value.errno == errno.EIO
    assert len(server.calls) == 1
    # Not read through to the offset: the caller streams the file once instead.
    assert source.served < 2 * 1024 * 1024


def test_ignored_range_at_offset_zero_gives_the_first_bytes(
    server: responses.RequestsMock, client: FlywheelClient
) -> None:
    whole = bytes(range(256)) * 4096
    server.get(FILE, status=200, body=whole, headers={"Content-Length": str(len(whole))})
    assert client.read_range("project", "p1", "scan.nii.gz", 0, 1000) == whole[:1000]


def test_short_body_is_retried_and_never_returned(
    server: responses.RequestsMock, client: FlywheelClient
) -> None:
    headers = {"Content-Range": "bytes 0-9/100"}
    server.get(FILE, status=206, body=b"01234", headers=headers)
    server.get(FILE, status=206, body=b"0123456789", headers=headers)
    assert client.read_range("project", "p1", "scan.nii.gz", 0, 10) == b"0123456789"
    assert len(server.calls) == 2


def test_body_that_stays_short_fails_with_eio(
    server: responses.RequestsMock, clock: FakeTime
) -> None:
    server.get(FILE, status=206, body=b"01234", headers={"Content-Range": "bytes 0-9/100"})
    with make_client(clock, retries=2) as c, pytest.raises(RemoteError) as info:
        c.read_range("project", "p1", "scan.nii.gz", 0, 10)
    assert info.value.errno == errno.EIO
    assert "5 of 10 bytes" in str(info.value)
    assert len(server.calls) == 3


def test_stream_file_that_ends_early_raises(
    server: responses.RequestsMock, client: FlywheelClient
) -> None:
    server.get(FILE, body=b"12345", headers={"Content-Length": "10"})
    with pytest.raises(FwfsError) as info:
        b"".join(client.stream_file("project", "p1", "scan.nii.gz"))
    assert info.value.errno == errno.EIO


# -- pagination ------------------------------------------------------------------------


def test_listing_follows_after_id_until_an_empty_page(
    server: responses.RequestsMock, client: FlywheelClient
) -> None:
    url = f"{PROJECT}/sessions"
    server.get(url, json=[{"_id": "s1"}, {"_id": "s2"}])
    server.get(url, json=[{"_id": "s3"}])
    server.get(url, json=[])
    assert [s["_id"] for s in client.list_children("project", "p1", "session")] == [
        "s1",
        "s2",
        "s3",
    ]
    urls = [str(call.request.url) for call in server.calls]
    assert "after_id" not in urls[0] and "limit=250" in urls[0]
    assert "after_id=s2" in urls[1] and "after_id=s3" in urls[2]


def test_listing_stops_when_the_server_ignores_after_id(
    server: responses.RequestsMock, client: FlywheelClient
) -> None:
    server.get(f"{PROJECT}/sessions", json=[{"_id": "s1"}, {"_id": "s2"}])
    with pytest.raises(RemoteError, match="cursor did not advance"):
        client.list_children("project", "p1", "session")
    assert len(server.calls) == 2


# -- redirects -------------------------------------------------------------------------


def test_cross_origin_redirect_drops_the_key_but_keeps_the_range(
    server: responses.RequestsMock, client: FlywheelClient
) -> None:
    signed = "https://bucket.storage.example.net/obj?sig=abc"
    server.get(FILE, status=302, headers={"Location": signed})
    server.get(signed, status=206, body=b"abcd", headers={"Content-Range": "bytes 0-3/8"})
    assert client.read_range("project", "p1", "scan.nii.gz", 0, 4) == b"abcd"
    first, second = (call.request.headers for call in server.calls)
    assert first["Authorization"] == f"scitran-user {SECRET}"
    assert "Authorization" not in second
    assert second["Range"] == "bytes=0-3"


def test_same_origin_redirect_keeps_the_key(
    server: responses.RequestsMock, client: FlywheelClient
) -> None:
    server.get(PROJECT, status=302, headers={"Location": f"{API}/projects/p2"})
    server.get(f"{API}/projects/p2", json={"_id": "p2"})
    assert client.get("project", "p1") == {"_id": "p2"}
    assert server.calls[1].request.headers["Authorization"] == f"scitran-user {SECRET}"


# -- secrets ---------------------------------------------------------------------------


def test_key_never_reaches_errors_or_debug_logs(
    server: responses.RequestsMock, clock: FakeTime, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # A server that echoes the credential back in its error message, as some proxies do.
    echo = {"message": f"bad key scitran-user {SECRET}"}
    server.get(PROJECT, status=401, json=echo)
    server.get(f"{API}/projects/p2", status=503)
    server.get(f"{API}/projects/p3", body=dropped())
    server.post(f"{API}/projects", status=500, json=echo)
    raised: list[FwfsError] = []
    with make_client(clock, retries=2) as c:
        calls: list[Callable[[], object]] = [
            lambda: c.get("project", "p1"),
            lambda: c.get("project", "p2"),
            lambda: c.get("project", "p3"),
            lambda: c.create_container("project", {"label": "x"}),
        ]
        for call in calls:
            with pytest.raises(FwfsError) as info:
                call()
            raised.append(info.value)
        assert SECRET not in repr(c)
    assert len(raised) == 4 and len(server.calls) == 1 + 3 + 3 + 1
    for error in raised:
        assert SECRET not in str(error) and SECRET not in repr(error)
        assert SECRET not in str(error.server_message)
    assert "bad key" in str(raised[0])  # scrubbed, not dropped
    assert any(record.name == "fwfs.client" for record in caplog.records)
    for record in caplog.records:
        assert SECRET not in record.getMessage()
