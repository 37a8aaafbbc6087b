"""The requests session under FlywheelClient: the key on API requests only, the TLS trust,
connection pools, and the environment looked up once per host."""

from __future__ import annotations

import os
import platform
import ssl
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import certifi
import requests
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase

if TYPE_CHECKING:
    from requests.adapters import _HostParams, _PoolKwargs
    from requests.sessions import _Settings

from fwfs.client.wire import (
    _SEND_BLOCK,
)
from fwfs.config import TrustConfig


class _ApiKeyAuth(AuthBase):
    """Sets Authorization per request; as an explicit auth it also keeps ~/.netrc out."""

    def __init__(self, value: str) -> None:
        self._value = value

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers["Authorization"] = self._value
        return r

    def __repr__(self) -> str:
        return "<ApiKeyAuth>"


class _NoAuth(AuthBase):
    """Signed URLs carry their own authorisation; the key must never go to object stores."""

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers.pop("Authorization", None)
        return r


class _Session(requests.Session):
    """A requests session that reads the proxy and CA-bundle environment once per site.

    With ``trust_env``, requests looks up HTTP(S)_PROXY, NO_PROXY, REQUESTS_CA_BUNDLE and
    CURL_CA_BUNDLE on every request (7% of the CPU of a tree walk). The process's
    environment does not change under a running client, and the answer depends only on the
    scheme and host, so it is kept per (scheme, host): the same proxies and bundle as
    before, looked up once.
    """

    def __init__(self, api_base: str) -> None:
        super().__init__()
        self._env: dict[tuple[str, str, Any, Any, Any], _Settings] = {}
        self._api_origin = _origin(api_base)
        self._api_path = urlsplit(api_base).path.rstrip("/") + "/"

    def rebuild_auth(self, prepared_request: requests.PreparedRequest, response: Any) -> None:
        """On a redirect, keep the key only for a URL below the site's own API base.

        requests drops Authorization when the host or port changes, but keeps it on the
        same host and port whatever the path, and from http to https on default ports.
        Downloads redirect to signed storage URLs, which may be anywhere: the key is for
        the API alone.
        """
        super().rebuild_auth(prepared_request, response)  # type: ignore[no-untyped-call]
        if not self.below_api(prepared_request.url or ""):
            prepared_request.headers.pop("Authorization", None)

    def below_api(self, url: str) -> bool:
        """Whether ``url`` is the site's own API (same scheme, host and port, and below
        its path): the only place the key may go."""
        target = urlsplit(url)
        return _origin(url) == self._api_origin and target.path.startswith(self._api_path)

    def merge_environment_settings(
        self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> _Settings:
        if proxies:
            # Per-request proxies mix with the environment's: not worth keeping.
            return super().merge_environment_settings(url, proxies, stream, verify, cert)
        parts = urlsplit(url.decode() if isinstance(url, bytes) else str(url))
        key = (parts.scheme, parts.netloc, stream, verify, cert)
        known = self._env.get(key)
        if known is None:
            known = super().merge_environment_settings(url, {}, stream, verify, cert)
            self._env[key] = known
        # requests may adjust the proxies of a request (redirects): give it its own dict.
        return {**known, "proxies": dict(known["proxies"])}


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or {"http": 80, "https": 443}.get(scheme)
    return scheme, (parts.hostname or "").lower(), port


# Where Linux distributions keep the system bundle when OpenSSL's compiled-in paths are
# unusable (a Python built elsewhere): truststore's and httpcore2's list.
_CA_FILE_CANDIDATES: Final = (
    "/etc/ssl/cert.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/pki/tls/cert.pem",
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/ssl/ca-bundle.pem",
)


def _ssl_context(trust: TrustConfig) -> ssl.SSLContext:
    """A verifying context holding exactly the trust ``trust`` describes.

    The OS store is loaded the way flywheel-sdk 23 (httpcore2) loads it: SSL_CERT_FILE /
    SSL_CERT_DIR when the environment named them, else the platform verifier on macOS and
    Windows (truststore), else OpenSSL's compiled-in paths. certifi's roots are added, so
    a machine with an empty or stale store still reaches cloud sites.
    """
    if trust.ca_file is not None:
        if os.path.isdir(trust.ca_file):
            return ssl.create_default_context(capath=trust.ca_file)
        return ssl.create_default_context(cafile=trust.ca_file)
    ctx: ssl.SSLContext
    if (
        trust.use_os_store
        and not (trust.os_ca_file or trust.os_ca_dir)
        and (platform.system() in ("Darwin", "Windows"))
    ):
        import truststore  # the platform's own verifier, with the keychain's CAs

        ctx = truststore.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies, checks host names
        if trust.use_os_store:
            cafile, capath = trust.os_ca_file, trust.os_ca_dir
            if not cafile and not capath:
                # Not set_default_verify_paths(): it would read SSL_CERT_* itself.
                paths = ssl.get_default_verify_paths()
                cafile = paths.openssl_cafile if os.path.isfile(paths.openssl_cafile) else None
                capath = paths.openssl_capath if os.path.isdir(paths.openssl_capath) else None
                if not cafile and not capath:
                    cafile = next(filter(os.path.isfile, _CA_FILE_CANDIDATES), None)
            if cafile or capath:
                ctx.load_verify_locations(cafile, capath)
    if trust.use_certifi:
        ctx.load_verify_locations(certifi.where())
    return ctx


class _Adapter(HTTPAdapter):
    """urllib3 sends a request body in 16 KiB reads by default: 65,536 reads and sends per
    GiB uploaded. 1 MiB pieces (the spool's own copy size) halve the upload's CPU time.

    With an ``ssl_context`` the context is the whole TLS trust: requests would otherwise
    load certifi's bundle (``verify=True``) or REQUESTS_CA_BUNDLE into it as well.
    """

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None, **kwargs: Any) -> None:
        self._ssl_context = ssl_context  # before super(): it calls init_poolmanager
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("blocksize", _SEND_BLOCK)
        if self._ssl_context is not None:
            kwargs.setdefault("ssl_context", self._ssl_context)
        super().init_poolmanager(*args, **kwargs)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        if self._ssl_context is not None:
            proxy_kwargs.setdefault("ssl_context", self._ssl_context)
        return super().proxy_manager_for(proxy, **proxy_kwargs)

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        if self._ssl_context is None:
            super().cert_verify(conn, url, verify, cert)  # type: ignore[no-untyped-call]
        elif url.lower().startswith("https"):
            conn.cert_reqs, conn.ca_certs, conn.ca_cert_dir = "CERT_REQUIRED", None, None

    def build_connection_pool_key_attributes(
        self, request: requests.PreparedRequest, verify: Any, cert: Any = None
    ) -> tuple[_HostParams, _PoolKwargs]:
        # A path in `verify` (REQUESTS_CA_BUNDLE via trust_env) would become the pool's
        # ca_certs; the context already holds the trust.
        if self._ssl_context is not None:
            verify = True
        return super().build_connection_pool_key_attributes(request, verify, cert)


class _KeyedAdapter(_Adapter):
    """Works out each site's connection-pool key once: requests checks whether the CA
    bundle is a directory (a stat) on every request, 6% of the CPU of a tree walk."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._keys: dict[tuple[str, str, Any, Any], tuple[_HostParams, _PoolKwargs]] = {}

    def build_connection_pool_key_attributes(
        self, request: requests.PreparedRequest, verify: Any, cert: Any = None
    ) -> tuple[_HostParams, _PoolKwargs]:
        parts = urlsplit(request.url or "")
        key = (parts.scheme, parts.netloc, verify, cert)
        if key not in self._keys:
            self._keys[key] = super().build_connection_pool_key_attributes(request, verify, cert)
        host, pool = self._keys[key]
        # urllib3 is free to keep or change what it is given: each request gets its own.
        return host.copy(), pool.copy()
