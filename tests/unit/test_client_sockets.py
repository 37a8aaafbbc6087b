"""FlywheelClient against real sockets that refuse or stall: the failures a dead site gives.

No mocks: these go through requests, urllib3 and the kernel, so they check that the real
exception chains are classified (sent or not, retryable or not) and become EIO.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator

import pytest

from fwfs.client import FlywheelClient
from fwfs.config import ClientConfig
from fwfs.errors import RemoteUnavailable

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
