"""FlywheelClient against real sockets that refuse or stall: the failures a dead site gives.

No mocks: these go through requests, urllib3 and the kernel, so they check that the real
exception chains are classified (sent or not, retryable or not) and become EIO.
"""

from __future__ import annotations

import errno
import socket
import threading
from collections.abc import Iterator

import pytest

from fwfs.client import FlywheelClient
from fwfs.config import ClientConfig
from fwfs.errors import FwfsError, RemoteUnavailable

SECRET = "sock-test-secret-8Hq"


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def client_for(port: int, sleeps: Sleeps, **cfg: float) -> FlywheelClient:
    key = f"127.0.0.1:{port}:__force_insecure:{SECRET}"
    # trust_env off: a proxy in the environment must not stand in for the dead server.
    config = ClientConfig.from_api_key(key, trust_env=False, **cfg)
    return FlywheelClient(config, sleep=sleeps)


@pytest.fixture
def refused_port() -> int:
    """A port nobody listens on: bound then closed, so connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def stalled_port() -> Iterator[int]:
    """A port that accepts connections (via the backlog) but never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


def test_refused_connection_is_eio_after_retries(refused_port: int) -> None:
    sleeps = Sleeps()
    client = client_for(refused_port, sleeps, retries=3)
    with client, pytest.raises(RemoteUnavailable) as info:
        client.current_user()
    error = info.value
    assert error.errno == errno.EIO
    assert not isinstance(error, OSError)  # fusepy-style adapters choke on errno=None
    assert len(sleeps.calls) == 3
    assert "Connection refused" in str(error) or "NewConnectionError" in str(error)
    assert SECRET not in str(error)


def test_refused_connection_is_retried_for_post_too(refused_port: int) -> None:
    sleeps = Sleeps()
    with client_for(refused_port, sleeps, retries=2) as client, pytest.raises(RemoteUnavailable):
        client.create_container("project", {"group": "g", "label": "x"})
    assert len(sleeps.calls) == 2


def test_stalled_server_fails_a_read_within_the_read_timeout(stalled_port: int) -> None:
    sleeps = Sleeps()
    client = client_for(stalled_port, sleeps, read_timeout=0.2, retries=1)
    with client, pytest.raises(RemoteUnavailable, match=r"no response within 0\.2 s") as info:
        client.read_range("project", "p1", "a.bin", 0, 10)
    assert info.value.errno == errno.EIO
    assert len(sleeps.calls) == 1


def test_stalled_server_post_is_not_resent(stalled_port: int) -> None:
    sleeps = Sleeps()
    with (
        client_for(stalled_port, sleeps, read_timeout=0.2, retries=3) as client,
        pytest.raises(RemoteUnavailable),
    ):
        client.create_container("project", {"group": "g", "label": "x"})
    assert sleeps.calls == []


class RangeServer:
    """An HTTP/1.1 server of one file that honours Range, counting the connections it
    accepts; ``cut`` makes it send only that many body bytes before hanging up."""

    def __init__(self, data: bytes, cut: int | None = None) -> None:
        self.data, self.cut = data, cut
        self.connections = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port: int = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as requests:
            while True:
                lines = []
                while (line := requests.readline()) not in (b"\r\n", b""):
                    lines.append(line.decode("latin-1"))
                if not lines:
                    return
                spec = next(x for x in lines if x.lower().startswith("range:")).split("=")[1]
                first, last = (int(n) for n in spec.split("-"))
                body = self.data[first : last + 1]
                head = (
                    "HTTP/1.1 206 Partial Content\r\n"
                    f"Content-Range: bytes {first}-{first + len(body) - 1}/{len(self.data)}\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n"
                )
                if self.cut is not None:
                    conn.sendall(head.encode() + body[: self.cut])
                    return
                conn.sendall(head.encode() + body)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def file_data() -> bytes:
    return bytes(range(256)) * (48 * 1024)  # 12 MiB


def test_ranged_reads_give_exact_bytes_and_reuse_one_connection(file_data: bytes) -> None:
    server = RangeServer(file_data)
    try:
        with client_for(server.port, Sleeps()) as client:
            got = [
                client.read_range("project", "p1", "a.bin", start, end)
                for start, end in [(0, 8 << 20), (8 << 20, 12 << 20), (100, 352)]
            ]
        assert got == [file_data[: 8 << 20], file_data[8 << 20 :], file_data[100:352]]
        # Each body is read to its end, so the connection goes back to the pool.
        assert server.connections == 1
    finally:
        server.close()


def test_a_body_cut_off_midway_is_retried_then_eio(file_data: bytes) -> None:
    server = RangeServer(file_data, cut=1000)
    sleeps = Sleeps()
    try:
        with (
            client_for(server.port, sleeps, retries=2) as client,
            pytest.raises(FwfsError) as info,
        ):
            client.read_range("project", "p1", "a.bin", 0, 1 << 20)
        # Never the 1,000 bytes that came: EIO, once the retries are spent.
        assert info.value.errno == errno.EIO
        assert "gave up after 3 attempts" in str(info.value)
        assert len(sleeps.calls) == 2
        assert server.connections == 3
    finally:
        server.close()
