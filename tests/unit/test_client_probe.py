"""`FlywheelClient.probe`, the one HTTP door of `fwfs doctor`: what it hands back, and what
it must never hand back or send (the HTTP layer, so `responses` stands in for the site)."""

from __future__ import annotations

import time

import requests
import responses

from fwfs.client import FlywheelClient
from fwfs.config import ClientConfig

SECRET = "s3cr3tKeyThatMustNotLeak"
API = "https://site.example.org:443/api"
STORAGE = "https://bucket.storage.example.com/obj/abc"


def client() -> FlywheelClient:
    return FlywheelClient(ClientConfig.from_api_key(f"site.example.org:{SECRET}", retries=0))


@responses.activate
def test_a_redirect_not_followed_gives_host_and_lifetime_never_the_url() -> None:
    exp = int(time.time()) + 60
    signed = f"{STORAGE}?exp={exp}&sig=deadbeef"
    responses.get(f"{API}/projects/p/files/a.zip", status=302, headers={"Location": signed})
    res = client().probe("GET", "/projects/p/files/a.zip", follow_redirects=False)
    assert (res.status, res.redirect_status) == (302, 302)
    assert res.redirect_host == "bucket.storage.example.com"
    assert res.redirect_lifetime is not None and 55 <= res.redirect_lifetime <= 60
    assert "sig=deadbeef" not in repr(res)
    assert all(k.lower() != "location" for k in res.headers)


@responses.activate
def test_a_followed_redirect_reaches_storage_without_the_key() -> None:
    responses.get(
        f"{API}/projects/p/files/a.zip",
        status=302,
        headers={"Location": f"{STORAGE}?X-Amz-Expires=900&X-Amz-Signature=ab"},
    )
    responses.get(STORAGE, status=206, body=b"PK\x03\x04" + b"\0" * 12)
    res = client().probe(
        "GET", "/projects/p/files/a.zip", headers={"Range": "bytes=0-15"}, max_body=8
    )
    assert (res.status, res.redirect_status, res.redirect_lifetime) == (206, 302, 900.0)
    assert res.body == b"PK\x03\x04\0\0\0\0"  # capped at max_body
    core, storage = responses.calls
    assert core.request.headers["Authorization"] == f"scitran-user {SECRET}"
    assert "Authorization" not in storage.request.headers
    assert storage.request.headers["Range"] == "bytes=0-15"


@responses.activate
def test_headers_given_replace_the_sessions() -> None:
    responses.post(f"{API}/resolve", json={"path": [], "children": []})
    res = client().probe(
        "POST",
        "/resolve",
        json_body={"path": ["g"]},
        headers={"x-accept-feature": "Safe-Redirect"},
    )
    assert res.status == 200 and res.json() == {"path": [], "children": []}
    assert responses.calls[0].request.headers["x-accept-feature"] == "Safe-Redirect"


@responses.activate
def test_failures_come_back_as_status_0_with_a_clean_message() -> None:
    responses.get(f"{API}/version", body=requests.exceptions.ConnectionError("refused"))
    responses.get(f"{API}/config", body=requests.exceptions.SSLError("CERTIFICATE_VERIFY_FAILED"))
    c = client()
    down = c.probe("GET", "/version")
    assert down.status == 0 and not down.tls_error and down.error and "/api/version" in down.error
    tls = c.probe("GET", "/config")
    assert tls.status == 0 and tls.tls_error
    assert SECRET not in (down.error or "") + (tls.error or "")
    assert len(responses.calls) == 2  # no retries


@responses.activate
def test_an_error_status_is_an_answer_not_an_exception() -> None:
    responses.get(f"{API}/groups", status=422, json={"detail": [{"ctx": {"limit_value": 500}}]})
    res = client().probe("GET", "/groups", params={"limit": "1000"})
    assert res.status == 422 and res.json()["detail"][0]["ctx"]["limit_value"] == 500
    assert res.redirect_status is None and res.redirect_host is None
