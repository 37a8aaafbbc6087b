"""Uploads under failure: bodies are streamed, exact, and rewound before every retry.

`responses` stands in for the server only to inject the failures; the wire format of a
successful upload is tested against the sandbox.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from collections.abc import Iterator
from email.message import Message
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest
import requests
import responses
import urllib3.exceptions

from fwfs.client import FlywheelClient
from fwfs.client.wire import _SEND_BLOCK, _StreamBody
from fwfs.config import ClientConfig
from fwfs.errors import InvalidArgument

SECRET = "upload-secret-Pz4-never-logged"
TICKET = "UPTICKET-7f3a-never-logged"
API = "https://fw.example.org:443/api"
FILES = f"{API}/projects/p1/files"


def payload(size: int) -> bytes:
    return bytes((i * 7 + i // 251) % 256 for i in range(size))


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def client(sleeps: list[float]) -> Iterator[FlywheelClient]:
    config = ClientConfig.from_api_key(f"fw.example.org:{SECRET}")
    with FlywheelClient(config, sleep=sleeps.append, jitter=lambda: 0.0) as c:
        yield c


@pytest.fixture
def server() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock() as mock:
        yield mock


def never_connected() -> requests.exceptions.ConnectionError:
    refused = urllib3.exceptions.NewConnectionError(None, "Connection refused")  # type: ignore[arg-type]
    return requests.exceptions.ConnectionError(
        urllib3.exceptions.MaxRetryError(None, "/api/x", refused)  # type: ignore[arg-type]
    )


def read_body(request: requests.PreparedRequest) -> bytes:
    body: Any = request.body
    if body is None or isinstance(body, bytes):
        return body or b""
    data: bytes = body.read()
    return data


def form_parts(content_type: str, body: bytes) -> list[Message]:
    message = BytesParser().parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    parts = message.get_payload()
    assert isinstance(parts, list)
    return [part for part in parts if isinstance(part, Message)]


def test_stream_body_reads_exactly_the_slice_in_any_chunking() -> None:
    data = payload(10_000)
    body = _StreamBody([b"head|", (io.BytesIO(data), 1000, 5000), b"|tail"])
    assert len(body) == 5 + 5000 + 5
    chunks = []
    while chunk := body.read(777):
        chunks.append(chunk)
    expected = b"head|" + data[1000:6000] + b"|tail"
    assert b"".join(chunks) == expected
    body.seek(0)
    assert body.read() == expected


def test_stream_body_of_a_file_on_disk_sends_its_slice_byte_for_byte(tmp_path: Path) -> None:
    # The staged file the Uploader hands over: read by offset, past several send blocks.
    data = os.urandom(2 * _SEND_BLOCK + 12_345)
    (tmp_path / "staged.data").write_bytes(data)
    with open(tmp_path / "staged.data", "rb") as source:
        body = _StreamBody([b"head|", (source, 100, len(data) - 200), b"|tail"])
        expected = b"head|" + data[100:-100] + b"|tail"
        for size in (777, _SEND_BLOCK, -1):
            body.seek(0)
            source.seek(5)  # where the file stands is not where the slice starts
            chunks = []
            while chunk := body.read(size):
                chunks.append(chunk)
            assert b"".join(chunks) == expected
        assert len(body) == len(expected)


def test_stream_body_refuses_a_file_shorter_than_declared() -> None:
    body = _StreamBody([(io.BytesIO(b"abc"), 0, 10)])
    with pytest.raises(InvalidArgument, match="shorter"):
        body.read()


def test_multipart_post_is_rewound_when_retried_after_a_failed_connect(
    server: responses.RequestsMock, client: FlywheelClient
) -> None:
    data = payload(300_000)
    seen: list[tuple[str, bytes]] = []

    def answer(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        seen.append((request.headers["Content-Type"], read_body(request)))
        if len(seen) == 1:
            raise never_connected()
        return 200, {}, json.dumps([{"name": "scan.bin", "size": len(data)}])

    server.get(f"{API}/config", json={"features": {"signed_url": False}})
    server.add_callback("POST", FILES, callback=answer)
    source = io.BytesIO(data)
    result = client.upload_file(
        "project", "p1", "scan.bin", source, len(data), metadata={"type": "binary"}
    )
    assert result == [{"name": "scan.bin", "size": len(data)}]
    assert len(seen) == 2
    assert seen[0][1] == seen[1][1]  # the retry sent the whole body again, not the rest
    content_type, body = seen[1]
    metadata, file_part = form_parts(content_type, body)
    assert metadata.get_param("name", header="content-disposition") == "metadata"
    assert json.loads(str(metadata.get_payload())) == {"type": "binary"}
    assert file_part.get_filename() == "scan.bin"
    assert file_part.get_payload(decode=True) == data


def test_signed_upload_retries_a_failed_part_with_the_whole_part(
    server: responses.RequestsMock,
    client: FlywheelClient,
    sleeps: list[float],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    data = payload(600 * 1024)
    urls = [f"https://bucket.s3.amazonaws.com/key?uploadId=UP1&partNumber={n}" for n in (1, 2)]
    puts: list[tuple[str, bytes, dict[str, str]]] = []

    def put(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        puts.append((str(request.url), read_body(request), dict(request.headers)))
        if len(puts) == 1:
            return 503, {}, "<Error>SlowDown</Error>"
        return 200, {"ETag": f'"etag-{len(puts)}"'}, ""

    server.get(f"{API}/config", json={"features": {"signed_url": True}})
    ticket = {"ticket": TICKET, "urls": {"big.bin": urls}, "headers": {"x-sig": "1"}}
    server.post(FILES, json=ticket)
    for url in urls:
        server.add_callback("PUT", url.split("?")[0], callback=put)
    server.post(FILES, json=[{"name": "big.bin"}])

    assert client.upload_file("project", "p1", "big.bin", io.BytesIO(data), len(data)) == [
        {"name": "big.bin"}
    ]
    assert len(sleeps) == 1
    # The SDK's split for 2 URLs: 512 KiB, then the rest; part 1 went twice, whole each time.
    assert [len(body) for _, body, _ in puts] == [524288, 524288, 90112]
    assert puts[0][1] == puts[1][1] == data[:524288]
    assert puts[2][1] == data[524288:]
    for _, _, headers in puts:
        assert "Authorization" not in headers
        assert "x-accept-feature" not in headers
        assert headers["x-sig"] == "1"
    create, *_, finish = (c for c in server.calls if c.request.method == "POST")
    assert "ticket=" in str(create.request.url) and TICKET not in str(create.request.url)
    assert f"ticket={TICKET}" in str(finish.request.url)
    assert json.loads(finish.request.body or b"") == {
        "multipart": {"e_tags": ["etag-2", "etag-3"], "upload_id": "UP1"}
    }
    assert caplog.records
    for record in caplog.records:
        assert TICKET not in record.getMessage() and SECRET not in record.getMessage()


@pytest.mark.parametrize("signed", [False, True])
def test_a_config_handed_over_spares_the_first_upload_its_own_request(
    server: responses.RequestsMock, client: FlywheelClient, signed: bool
) -> None:
    # The mount asks /config when it connects; the client starts with that answer.
    client.note_site_config({"features": {"signed_url": signed}}, time.monotonic())
    if signed:
        url = "https://bucket.storage.example.net/up/k?sig=1"
        server.post(FILES, json={"ticket": TICKET, "urls": {"a.txt": url}})
        server.put(url.split("?")[0], body="")
    server.post(FILES, json=[{"name": "a.txt"}])
    assert client.upload_file("project", "p1", "a.txt", io.BytesIO(b"abc"), 3)
    assert [c.request.method for c in server.calls] == ["POST", "PUT", "POST"][: 1 + 2 * signed]


def test_a_config_handed_over_is_asked_again_once_stale(
    server: responses.RequestsMock, client: FlywheelClient
) -> None:
    client.note_site_config({"features": {"signed_url": True}}, time.monotonic() - 301)
    server.get(f"{API}/config", json={"features": {"signed_url": False}})
    server.post(FILES, json=[{"name": "a.txt"}])
    assert client.upload_file("project", "p1", "a.txt", io.BytesIO(b"abc"), 3)
    assert [c.request.method for c in server.calls] == ["GET", "POST"]
