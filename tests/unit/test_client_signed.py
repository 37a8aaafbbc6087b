"""Reuse of the signed storage URL a download's 302 names (issue 12): a file's later ranges
go straight to storage until shortly before the URL expires, never with the key, and a
URL storage refuses is dropped for one more ask of the core. HTTP is mocked with
`responses`; the client's clock is a fake one, so expiry needs no waiting."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import responses

from fwfs.client import FlywheelClient
from fwfs.client.signed import _SignedUrls
from fwfs.config import ClientConfig
from fwfs.errors import PermissionDenied

SECRET = "signed-test-secret-4Rt"
API = "https://fw.example.org:443/api"
FILE = f"{API}/acquisitions/a1/files/scan.nii.gz"
STORAGE = "https://bucket.storage.example.net/blob/f1"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def client(clock: Clock) -> Iterator[FlywheelClient]:
    config = ClientConfig.from_api_key(f"fw.example.org:{SECRET}", retries=0)
    with FlywheelClient(config, clock=clock) as c:
        yield c


@pytest.fixture
def server() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock() as mock:
        yield mock


def signed(sig: str, lifetime: int = 60) -> str:
    return f"{STORAGE}?exp={int(time.time()) + lifetime}&sig={sig}"


def redirect(server: responses.RequestsMock, url: str) -> None:
    server.get(FILE, status=302, headers={"Location": url})


def storage(server: responses.RequestsMock, status: int = 206) -> None:
    def answer(request: object) -> tuple[int, dict[str, str], bytes]:
        spec = getattr(request, "headers", {})["Range"].removeprefix("bytes=")
        first, last = (int(x) for x in spec.split("-"))
        if status != 206:
            return status, {}, b'{"message": "AccessDenied: request has expired"}'
        return 206, {"Content-Range": f"bytes {first}-{last}/100"}, bytes(last - first + 1)

    server.add_callback(responses.GET, STORAGE, callback=answer)


def read(client: FlywheelClient, start: int, version: int | None = 3) -> bytes:
    return client.read_range(
        "acquisition", "a1", "scan.nii.gz", start, start + 10, version=version, file_id="f1"
    )


def hosts(server: responses.RequestsMock) -> list[str]:
    return [str(call.request.url).split("/")[2] for call in server.calls]


CORE, BUCKET = "fw.example.org:443", "bucket.storage.example.net"


def test_later_ranges_of_a_file_go_straight_to_storage_without_the_key(
    server: responses.RequestsMock, client: FlywheelClient
) -> None:
    redirect(server, signed("a"))
    storage(server)
    for start in (0, 10, 20, 30):
        assert len(read(client, start)) == 10
    assert hosts(server) == [CORE, BUCKET, BUCKET, BUCKET, BUCKET]
    for call in server.calls[1:]:
        assert "Authorization" not in call.request.headers
        assert "sig=a" in str(call.request.url)
    ranges = [call.request.headers["Range"] for call in server.calls[1:]]
    assert ranges == ["bytes=0-9", "bytes=10-19", "bytes=20-29", "bytes=30-39"]


def test_a_url_is_not_used_after_it_expires_less_a_margin(
    server: responses.RequestsMock, client: FlywheelClient, clock: Clock
) -> None:
    redirect(server, signed("a", lifetime=60))
    storage(server)
    read(client, 0)
    clock.now += 40  # 20 s left: still used
    read(client, 10)
    assert hosts(server) == [CORE, BUCKET, BUCKET]
    clock.now += 10  # 10 s left: too close, the core is asked again
    read(client, 20)
    assert hosts(server) == [CORE, BUCKET, BUCKET, CORE, BUCKET]


def test_a_url_without_a_stated_lifetime_is_trusted_for_a_short_while(
    server: responses.RequestsMock, client: FlywheelClient, clock: Clock
) -> None:
    redirect(server, f"{STORAGE}?sig=opaque")
    storage(server)
    read(client, 0)
    clock.now += 20
    read(client, 10)
    clock.now += 20
    read(client, 20)
    assert hosts(server) == [CORE, BUCKET, BUCKET, CORE, BUCKET]


def test_a_refused_url_is_dropped_and_the_core_asked_once_more(
    server: responses.RequestsMock, client: FlywheelClient
) -> None:
    redirect(server, signed("a"))
    storage(server)
    read(client, 0)
    server.replace(responses.GET, FILE, status=302, headers={"Location": signed("b")})
    server.remove(responses.GET, STORAGE)
    refused = {"sig=a": 403}

    def answer(request: object) -> tuple[int, dict[str, str], bytes]:
        url = str(getattr(request, "url", ""))
        if any(sig in url for sig in refused):
            return 403, {}, b'{"message": "AccessDenied: request has expired"}'
        return 206, {"Content-Range": "bytes 10-19/100"}, bytes(10)

    server.add_callback(responses.GET, STORAGE, callback=answer)
    assert read(client, 10) == bytes(10)
    assert hosts(server) == [CORE, BUCKET, BUCKET, CORE, BUCKET]
    assert "sig=b" in str(server.calls[-1].request.url)
    read(client, 10)  # the new URL is the one remembered
    assert hosts(server)[-1] == BUCKET and "sig=b" in str(server.calls[-1].request.url)


def test_a_fresh_url_that_storage_refuses_is_an_error_not_a_loop(
    server: responses.RequestsMock, client: FlywheelClient
) -> None:
    redirect(server, signed("a"))
    storage(server, status=403)
    with pytest.raises(PermissionDenied) as caught:
        read(client, 0)
    assert hosts(server) == [CORE, BUCKET]
    assert "sig=" not in str(caught.value) and SECRET not in str(caught.value)
    assert "signed URL on bucket.storage.example.net" in str(caught.value)


def test_without_a_version_nothing_is_reused(
    server: responses.RequestsMock, client: FlywheelClient
) -> None:
    # A URL names one blob; "the latest version" may be another one by the next read.
    redirect(server, signed("a"))
    storage(server)
    read(client, 0, version=None)
    read(client, 10, version=None)
    assert hosts(server) == [CORE, BUCKET, CORE, BUCKET]


def test_versions_of_a_file_have_their_own_urls(
    server: responses.RequestsMock, client: FlywheelClient
) -> None:
    redirect(server, signed("a"))
    storage(server)
    read(client, 0, version=3)
    read(client, 0, version=4)
    read(client, 10, version=3)
    read(client, 10, version=4)
    assert hosts(server) == [CORE, BUCKET, CORE, BUCKET, BUCKET, BUCKET]


def test_a_stream_reuses_the_url_too(
    server: responses.RequestsMock, client: FlywheelClient
) -> None:
    redirect(server, signed("a"))
    storage(server)
    read(client, 0)
    server.add(responses.GET, STORAGE, body=b"whole")
    whole = client.stream_file("acquisition", "a1", "scan.nii.gz", version=3, file_id="f1")
    assert b"".join(whole) == b"whole"
    assert hosts(server) == [CORE, BUCKET, BUCKET]
    assert "Authorization" not in server.calls[-1].request.headers


def test_the_url_cache_forgets_the_least_recently_used_file_beyond_its_capacity() -> None:
    now = [0.0]
    urls = _SignedUrls(lambda: now[0], capacity=2)
    urls.put(("a", 1), "https://storage/a")
    urls.put(("b", 1), "https://storage/b")
    assert urls.get(("a", 1)) == "https://storage/a"  # now the most recently used
    urls.put(("c", 1), "https://storage/c")
    assert urls.get(("b", 1)) is None
    assert urls.get(("a", 1)) == "https://storage/a"
    assert urls.get(("c", 1)) == "https://storage/c"


def test_a_url_without_a_stated_lifetime_is_kept_30_s_less_a_quarter() -> None:
    now = [100.0]
    urls = _SignedUrls(lambda: now[0])
    urls.put(("a", 1), "https://storage/a")
    now[0] = 122.4
    assert urls.get(("a", 1)) == "https://storage/a"
    now[0] = 122.5
    assert urls.get(("a", 1)) is None
    urls.drop(("a", 1), "https://storage/a")  # gone already: nothing to drop
