"""TLS trust of FlywheelClient against a real HTTPS server whose CA certifi does not hold.

A trustme CA stands in for a company or hospital CA. The "OS trust store" is a bundle that
SSL_CERT_FILE names (OpenSSL's own variable; `fwfs mount` reads it through
``tls_verify_from_env``), so the test never touches the machine's real store.
"""

from __future__ import annotations

import http.server
import json
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from fwfs.client import FlywheelClient
from fwfs.config import ClientConfig, TrustConfig, tls_verify_from_env
from fwfs.errors import RemoteUnavailable

SECRET = "tls-test-secret-4Rr"


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"_id": "ada@example.org"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def https_port(ca: trustme.CA) -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
def ca_pem(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "company-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


def user_of(port: int, trust: TrustConfig | bool) -> dict[str, object]:
    config = ClientConfig.from_api_key(
        f"127.0.0.1:{port}:{SECRET}", verify=trust, trust_env=False, retries=0
    )
    with FlywheelClient(config) as client:
        return client.current_user()


def test_a_ca_only_in_the_os_store_is_trusted(https_port: int, ca_pem: Path) -> None:
    # Not in certifi, no FW_SSL_CERT_FILE: only the OS store (here, SSL_CERT_FILE) has it.
    trust = tls_verify_from_env({"SSL_CERT_FILE": str(ca_pem)})
    assert trust.ca_file is None and trust.use_certifi
    assert user_of(https_port, trust) == {"_id": "ada@example.org"}


def test_without_the_ca_the_error_names_the_trust_and_the_remedy(
    https_port: int, tmp_path: Path
) -> None:
    empty = tmp_path / "empty-store"
    empty.mkdir()
    with pytest.raises(RemoteUnavailable) as caught:
        user_of(https_port, tls_verify_from_env({"SSL_CERT_DIR": str(empty)}))
    message = str(caught.value)
    assert "CERTIFICATE_VERIFY_FAILED" in message
    assert "the OS trust store" in message and "certifi" in message
    assert "FW_SSL_CERT_FILE" in message
    assert SECRET not in message


def test_fw_ssl_cert_file_is_trusted_alone(https_port: int, ca_pem: Path) -> None:
    assert user_of(https_port, tls_verify_from_env({"FW_SSL_CERT_FILE": str(ca_pem)})) == {
        "_id": "ada@example.org"
    }
    # Alone: a bundle without the site's CA fails even though the OS store has it.
    other = Path(ca_pem.parent / "other.pem")
    trustme.CA().cert_pem.write_to_path(str(other))
    env = {"FW_SSL_CERT_FILE": str(other), "SSL_CERT_FILE": str(ca_pem)}
    with pytest.raises(RemoteUnavailable, match="only the CA bundle"):
        user_of(https_port, tls_verify_from_env(env))


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_verification_can_be_turned_off(https_port: int) -> None:
    assert user_of(https_port, False) == {"_id": "ada@example.org"}


def test_macos_and_windows_use_the_platform_verifier(monkeypatch: pytest.MonkeyPatch) -> None:
    import platform

    import certifi
    import truststore

    from fwfs.client.session import _ssl_context

    monkeypatch.setattr(platform, "system", lambda: "Darwin")
    assert isinstance(_ssl_context(TrustConfig()), truststore.SSLContext)
    # A store the environment moved is read as a file there too, as the SDK does.
    moved = _ssl_context(TrustConfig(os_ca_file=certifi.where()))
    assert not isinstance(moved, truststore.SSLContext)
