"""HTTP client for the Flywheel REST API, and the only module that imports requests.

Requests go out the way flywheel-sdk sends them (as recorded in the project's Flywheel API
reference, flywheel-api.md): the same paths, the same ``x-accept-feature`` header, the
same upload flows. The differences are deliberate: every failure becomes a typed
``FwfsError``, retries are bounded in wall time, and a ranged read never silently turns
into a whole-file download.
"""

from __future__ import annotations

import email.utils
import io
import json
import logging
import math
import os
import platform
import random
import re
import ssl
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, BinaryIO, Final, Literal, TypeVar
from urllib.parse import parse_qs, quote, urljoin, urlsplit

import certifi
import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase
from urllib3.fields import format_multipart_header_param

if TYPE_CHECKING:
    from requests.adapters import _HostParams, _PoolKwargs
    from requests.sessions import _Settings

from fwfs.config import ClientConfig, TrustConfig
from fwfs.errors import (
    FwfsError,
    InvalidArgument,
    RemoteError,
    RemoteUnavailable,
    errno_for_status,
)

Kind = Literal["group", "project", "subject", "session", "acquisition", "analysis"]
Json = dict[str, Any]

_PLURAL: Final[Mapping[str, str]] = {
    "group": "groups",
    "project": "projects",
    "subject": "subjects",
    "session": "sessions",
    "acquisition": "acquisitions",
    "analysis": "analyses",
}
# `pagination` turns a list answer into {count, total, results}: sent only on the list
# calls that read that shape (_paged), never on the session.
_FEATURES: Final = "Safe-Redirect,multipart_signed_url,subject-container"
_PAGED_HEADERS: Final = {"x-accept-feature": f"{_FEATURES},pagination"}
_RETRY_STATUSES: Final = frozenset({429, 502, 503, 504})
_IDEMPOTENT: Final = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
_PAGE_SIZE: Final = 250  # the SDK finders' page size
_ERROR_BODY_LIMIT: Final = 64 * 1024
# The SDK aligns multi-URL upload parts to 256 KiB because GCS requires it.
_PART_ALIGNMENT: Final = 256 * 1024
_FILE_HEADERS: Final = {"Accept": "application/octet-stream", "Accept-Encoding": "identity"}
_SEND_BLOCK = 1 << 20
_CONFIG_TTL = 300.0  # seconds the site's upload mode (signed URLs or not) is trusted
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_QUERY = re.compile(r"\?[^\s'\")]*")

log = logging.getLogger("fwfs.client")
_T = TypeVar("_T")
_J = TypeVar("_J", dict[str, Any], list[Any])
_Piece = bytes | tuple[BinaryIO, int, int]


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


class _StreamBody:
    """A sized, rewindable request body of byte strings and (file, offset, size) slices.

    It is read lazily, so uploads never hold a file in memory, and its length is known,
    so requests sends Content-Length rather than chunked encoding (signed URLs refuse it).
    """

    def __init__(self, pieces: Sequence[_Piece]) -> None:
        self._pieces = list(pieces)
        self._sizes = [len(p) if isinstance(p, bytes) else p[2] for p in self._pieces]
        self._index = self._offset = self._pos = 0

    def __len__(self) -> int:
        return sum(self._sizes)

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if offset != 0 or whence != io.SEEK_SET:
            raise io.UnsupportedOperation("upload bodies can only be rewound")
        self._index = self._offset = self._pos = 0
        return 0

    def read(self, n: int = -1) -> bytes:
        out = bytearray()
        while self._index < len(self._pieces) and (n < 0 or len(out) < n):
            piece, left = self._pieces[self._index], self._sizes[self._index] - self._offset
            want = left if n < 0 else min(left, n - len(out))
            if isinstance(piece, bytes):
                chunk = piece[self._offset : self._offset + want]
            else:
                fileobj, start, _ = piece
                fileobj.seek(start + self._offset)
                chunk = fileobj.read(want)
                if not chunk and want:
                    raise InvalidArgument("file to upload is shorter than its declared size")
            out += chunk
            self._offset += len(chunk)
            self._pos += len(chunk)
            if self._offset == self._sizes[self._index]:
                self._index, self._offset = self._index + 1, 0
        return bytes(out)

    def __iter__(self) -> Iterator[bytes]:
        # Being iterable puts requests on its streaming path, which records the start
        # position so a 307/308 redirect can rewind the body too.
        while chunk := self.read(1 << 20):
            yield chunk


class RangeIgnored(RemoteError):
    """A ranged read from a non-zero offset that the site answered with the whole file.

    ``whole_file_only`` is the mark readers of the block cache look for (they cannot
    import this module): read such a file as one stream.
    """

    whole_file_only: Final = True


class _Failed(Exception):
    """One attempt failed with ``error``; ``retry`` says whether another could succeed."""

    def __init__(self, error: FwfsError, retry: bool, retry_after: float | None = None) -> None:
        super().__init__(str(error))
        self.error, self.retry, self.retry_after = error, retry, retry_after


class _BodyError(Exception):
    """A response body that is unusable; ``transient`` ones are retried like a drop."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


def _plural(kind: str) -> str:
    try:
        return _PLURAL[kind]
    except KeyError:
        raise InvalidArgument(f"unknown container kind {kind!r}") from None


def _segment(value: str) -> str:
    if not value:
        raise InvalidArgument("empty id or name in a request path")
    return quote(value, safe="")


def _version_params(version: int | None, **extra: str) -> dict[str, str]:
    return extra if version is None else {**extra, "version": str(version)}


def _reason_params(reason: str | None) -> dict[str, str] | None:
    return None if reason is None else {"delete_reason": reason}


def _by_id(name: str, file_id: str | None) -> bool:
    """Whether to address the file by id: a name-keyed route cannot carry a '/' (FastAPI
    path parameters stop at the encoded slash), so such names go by file id."""
    return bool(file_id) and "/" in name


def _content_length(resp: requests.Response) -> int | None:
    """Length of the body as the caller sees it, when the headers say so reliably."""
    if resp.headers.get("Content-Encoding", "identity").lower() != "identity":
        return None  # gzip: the header counts wire bytes, not the decoded ones
    value = resp.headers.get("Content-Length", "")
    return int(value) if value.isdigit() else None


def _read_body(resp: requests.Response, size: int) -> bytes:
    """The next ``size`` bytes of the body, fewer only where it ends; never reads past them.

    The whole span is one read: http.client fills a single ``bytes`` straight from the
    socket. ``iter_content`` would copy each 1 MiB chunk twice more on the way (urllib3's
    decode buffer, then the caller's join), which was most of a cold read's CPU.
    """
    if size <= 0:
        return b""
    if resp.headers.get("Content-Encoding", "identity").lower() != "identity":
        # A server that compresses despite Accept-Encoding: identity: requests decodes.
        buf = bytearray()
        for chunk in resp.iter_content(chunk_size=size):
            buf += chunk[: size - len(buf)]
            if len(buf) >= size:
                break
        return bytes(buf)
    try:
        data: bytes = resp.raw.read(size, decode_content=False)
    # The translations iter_content makes, so that errors read the same either way.
    except urllib3.exceptions.ProtocolError as exc:
        raise requests.exceptions.ChunkedEncodingError(exc) from exc
    except urllib3.exceptions.ReadTimeoutError as exc:
        raise requests.exceptions.ConnectionError(exc) from exc
    return data


def _range_body(resp: requests.Response, start: int, end: int, display: str) -> bytes:
    status = resp.status_code
    if status == 416:
        return b""
    if status == 200:
        length = _content_length(resp)
        if start:
            # The site sent the whole file (a proxy, or storage that drops Range). Reading
            # past the prefix for every block would move O(size²) bytes: say so instead.
            raise RangeIgnored.for_request(
                "GET", display, "the site ignored Range and sent the whole file", status=200
            )
        want = end if length is None else min(end, length)
        data = _read_body(resp, want)
        # Without a length, a short body is the end of the file (a broken transport raises).
        if length is not None and len(data) < want:
            raise _BodyError(f"body ended before byte {start + want}", transient=True)
        return data
    elif status == 206:
        match = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", "").strip())
        if match is None:
            raise _BodyError("HTTP 206 without a single-range Content-Range", transient=False)
        first, last, total = int(match[1]), int(match[2]), match[3]
        if first != start or last < first:
            raise _BodyError(
                f"asked for bytes {start}-{end - 1}, got {first}-{last}", transient=False
            )
        if last < end - 1 and (total == "*" or last != int(total) - 1):
            raise _BodyError("server sent a shorter range than asked, not at EOF", transient=False)
        want = min(last, end - 1) - first + 1
    else:
        raise _BodyError(f"unexpected HTTP {status} for a ranged read", transient=False)
    data = _read_body(resp, want)
    if len(data) < want:
        raise _BodyError(f"body ended after {len(data)} of {want} bytes", transient=True)
    return data


def _whole_body(resp: requests.Response) -> bytes:
    data = resp.content
    length = _content_length(resp)
    if length is not None and len(data) != length:
        raise _BodyError(f"body ended after {len(data)} of {length} bytes", transient=True)
    return data


def _json_reader(expect: type[_J], allow_empty: bool) -> Callable[[requests.Response], _J]:
    def read(resp: requests.Response) -> _J:
        data = _whole_body(resp)
        if allow_empty and not data.strip():
            return expect()
        try:
            value = json.loads(data)
        except ValueError:
            raise _BodyError("response is not valid JSON", transient=False) from None
        # Every list endpoint fwfs uses returns objects; anything else is not Flywheel.
        if not isinstance(value, expect) or (
            isinstance(value, list) and not all(isinstance(item, dict) for item in value)
        ):
            what = "array of objects" if expect.__name__ == "list" else "object"
            raise _BodyError(f"expected a JSON {what}", transient=False)
        return value

    return read


def _read_page(resp: requests.Response) -> tuple[list[Json], int | None]:
    """A list answer and its ``total``: a ``pagination`` Page, or a bare list (None)."""
    try:
        value = json.loads(_whole_body(resp))
    except ValueError:
        raise _BodyError("response is not valid JSON", transient=False) from None
    total: int | None = None
    if isinstance(value, dict) and "results" in value:
        count = value.get("total")
        # bool is an int to isinstance; a Page's total never is one.
        if isinstance(count, int) and not isinstance(count, bool) and count >= 0:
            total = count
        value = value["results"]
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise _BodyError("expected a JSON array of objects or a page of them", transient=False)
    return value, total


def _signed_mode(site: Json) -> bool:
    """Whether a ``/config`` answer asks for the signed-URL upload flow."""
    features = site.get("features")
    return bool(
        (isinstance(features, dict) and features.get("signed_url")) or site.get("signed_url")
    )


def _detail_text(detail: Any) -> str:
    """A FastAPI ``detail``: a string, or a list of {loc, msg} validation errors."""
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict) and isinstance(item.get("msg"), str):
                loc = item.get("loc")
                where = ".".join(str(x) for x in loc) if isinstance(loc, list) else ""
                parts.append(f"{where}: {item['msg']}" if where else item["msg"])
        if parts:
            return "; ".join(parts)
    return json.dumps(detail)[:500]


def _retry_after(resp: requests.Response) -> float | None:
    value = resp.headers.get("Retry-After", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - datetime.now(timezone.utc)).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _never_sent(exc: Exception) -> bool:
    """True when the connection failed before any byte of the request left."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    cause = exc.args[0] if exc.args else None
    if isinstance(cause, urllib3.exceptions.MaxRetryError):
        return isinstance(cause.reason, urllib3.exceptions.NewConnectionError)
    return False


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, (requests.exceptions.SSLError, requests.exceptions.TooManyRedirects)):
        return False
    return not isinstance(exc, ValueError)  # InvalidURL, InvalidHeader and friends


def _signed_part_size(size: int, parts: int) -> int:
    # The SDK's split: adds a whole alignment even when the even split is aligned.
    even = math.ceil(size / parts)
    return even + _PART_ALIGNMENT - even % _PART_ALIGNMENT


# Response headers a probe never hands back: credentials, and a Location that may be a
# signed URL (a credential itself); ``redirect_host`` says where it pointed.
_PROBE_HIDDEN: Final = frozenset({"authorization", "set-cookie", "location"})


@dataclass(frozen=True)
class ProbeResult:
    """One request of ``fwfs doctor``, reduced to what a report may show.

    ``status`` is 0 when no answer came: ``error`` says why (never with the key or a
    query string), ``tls_error`` whether TLS verification failed. ``body`` is at most the
    probe's ``max_body`` bytes. ``redirect_*`` describe the first redirect, followed or
    not: its status, the host (and port) it pointed at, and how long the signed URL said
    it was valid, in seconds, when its query carries ``exp``/``Expires``/``X-Amz-Expires``.
    """

    status: int
    headers: Mapping[str, str]
    body: bytes
    elapsed: float
    redirect_status: int | None = None
    redirect_host: str | None = None
    redirect_lifetime: float | None = None
    error: str | None = None
    tls_error: bool = False

    def json(self) -> Any:
        """The body as JSON; None when it is not (or was cut at ``max_body``)."""
        try:
            return json.loads(self.body)
        except ValueError:
            return None


def _signed_lifetime(query: str, now: float) -> float | None:
    """Seconds a signed URL says it stays valid: X-Amz-Expires and X-Goog-Expires are a
    duration; exp and Expires an epoch time (CORE's own signer, GCS v2, S3 v2)."""
    fields = {k.lower(): v[0] for k, v in parse_qs(query).items() if v}
    for name in ("x-amz-expires", "x-goog-expires"):
        if fields.get(name, "").isdigit():
            return float(fields[name])
    for name in ("exp", "expires"):
        if fields.get(name, "").isdigit():
            return float(fields[name]) - now
    return None


# Storage URLs a download's 302 named, reused for the file's later ranges (one round trip
# each instead of two). A URL whose query states no lifetime is trusted this long.
_SIGNED_DEFAULT_LIFETIME: Final = 30.0
_SIGNED_MARGIN: Final = 15.0  # stop using a URL this long before it expires (at most)
_SIGNED_CAPACITY: Final = 512  # files remembered
# What storage answers a URL it no longer accepts (S3 and the sandbox 403, GCS 400).
_SIGNED_REFUSED: Final = frozenset({400, 401, 403})
_SignedKey = tuple[str, int]


class _SignedUrls:
    """The storage URL of each ``(file, version)`` until shortly before it expires: an LRU
    shared by all threads. Only a pinned version is kept, since a URL names one blob."""

    def __init__(self, clock: Callable[[], float], capacity: int = _SIGNED_CAPACITY) -> None:
        self._clock = clock
        self._capacity = capacity
        self._urls: OrderedDict[_SignedKey, tuple[str, float]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: _SignedKey) -> str | None:
        with self._lock:
            entry = self._urls.get(key)
            if entry is None:
                return None
            if self._clock() >= entry[1]:
                del self._urls[key]
                return None
            self._urls.move_to_end(key)
            return entry[0]

    def put(self, key: _SignedKey, url: str) -> None:
        lifetime = _signed_lifetime(urlsplit(url).query, time.time())
        if lifetime is None:
            lifetime = _SIGNED_DEFAULT_LIFETIME
        usable = lifetime - min(_SIGNED_MARGIN, lifetime / 4)
        if usable <= 0:
            return
        with self._lock:
            self._urls[key] = (url, self._clock() + usable)
            self._urls.move_to_end(key)
            while len(self._urls) > self._capacity:
                self._urls.popitem(last=False)

    def drop(self, key: _SignedKey, url: str) -> None:
        with self._lock:
            if self._urls.get(key, ("",))[0] == url:
                del self._urls[key]


@dataclass(frozen=True)
class _Redirect:
    """A download's answer that points elsewhere (``consume`` never saw its body)."""

    location: str


class FlywheelClient:
    """Thin, typed access to the Flywheel REST API. Returns plain JSON dicts and lists.

    One instance is shared by all FUSE threads; requests sessions are used this way in
    practice, and the connection pool holds ``pool_size`` keep-alive connections.

    Time bounds: an attempt waits at most ``connect_timeout`` to connect (per address
    that DNS returns; DNS itself is not bounded) and at most ``read_timeout`` for each
    socket read, including the wait for the response headers. Idempotent requests
    (GET/PUT/DELETE/HEAD, plus the read-only POSTs resolve and lookup) are retried on
    429/502/503/504, dropped connections, read timeouts and short bodies; any POST is
    retried when the connection could not be made at all. A retry sleeps
    ``Retry-After`` (capped at ``backoff_max``) or, otherwise, a full-jitter
    ``uniform(0, min(backoff_max, backoff_factor * 2**n))``. No retry starts after
    ``total_timeout`` since the call began, so a non-streaming call ends within about
    ``total_timeout + connect_timeout + read_timeout`` (100 s by default) and after at
    most ``retries + 1`` attempts. Streamed bodies (``stream_file``, uploads) are bounded
    only per socket operation, since a large transfer legitimately takes long.
    """

    def __init__(
        self,
        config: ClientConfig,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._config = config
        self._base = config.base_url.rstrip("/")
        self._base_path = urlsplit(self._base).path
        self._secret = config.api_key
        self._auth = _ApiKeyAuth(config.authorization)
        self._sleep, self._clock, self._jitter = sleep, clock, jitter
        self._upload_mode: tuple[bool, float] | None = None
        self._signed_urls = _SignedUrls(clock)
        session = _Session(self._base)
        trust = config.trust
        self._trust = trust
        adapter = _KeyedAdapter(
            ssl_context=_ssl_context(trust) if trust is not None else None,
            pool_connections=4,
            pool_maxsize=config.pool_size,
            max_retries=0,
        )
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        session.headers.update(
            {
                "User-Agent": config.user_agent,
                "x-accept-feature": _FEATURES,
                "Accept": "application/json",
            }
        )
        session.verify = trust is not None
        session.trust_env = config.trust_env
        self._session = session

    def __repr__(self) -> str:
        return f"FlywheelClient({self._base!r})"

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> FlywheelClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- site and resolver ---------------------------------------------------------------

    def auth_status(self) -> Json:
        return self._json_call("GET", "/auth/status", expect=dict)

    def current_user(self) -> Json:
        return self._json_call("GET", "/users/self", expect=dict)

    def site_config(self) -> Json:
        return self._json_call("GET", "/config", expect=dict)

    def version(self) -> Json:
        return self._json_call("GET", "/version", expect=dict)

    def resolve(self, path: Sequence[str]) -> Json:
        # POST only because the path travels in the body; it reads, so retrying is safe.
        body = {"path": list(path)}
        return self._json_call("POST", "/resolve", body=body, expect=dict, idempotent=True)

    def lookup(self, path: Sequence[str]) -> Json:
        body = {"path": list(path)}
        return self._json_call("POST", "/lookup", body=body, expect=dict, idempotent=True)

    def probe(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str | None] | None = None,
        json_body: Any = None,
        follow_redirects: bool = True,
        max_body: int = 65536,
    ) -> ProbeResult:
        """One request below the API base for ``fwfs doctor``: no retries, and every
        outcome, failures included, comes back as a ``ProbeResult`` instead of raising.

        ``headers`` override the session's (None removes one, e.g. ``x-accept-feature``);
        the key goes only to the API, never along a redirect elsewhere. Only ``max_body``
        bytes are read: a download probe never moves the whole file.
        """
        cfg = self._config
        display = self._base_path + path
        started = self._clock()
        try:
            resp = self._session.request(
                method,
                self._base + path,
                params=params,
                headers=headers,
                json=json_body,
                auth=self._auth,
                allow_redirects=follow_redirects,
                stream=True,
                timeout=(cfg.connect_timeout, cfg.read_timeout),
            )
        except (OSError, urllib3.exceptions.HTTPError) as exc:
            return ProbeResult(
                status=0,
                headers={},
                body=b"",
                elapsed=self._clock() - started,
                error=str(self._transport_error(exc, method, display)),
                tls_error=isinstance(exc, requests.exceptions.SSLError),
            )
        try:
            body = resp.raw.read(max_body, decode_content=True) or b""
        except (OSError, urllib3.exceptions.HTTPError):
            body = b""  # the status and headers are the finding; a broken body is not
        finally:
            resp.close()
        hop = resp.history[0] if resp.history else resp
        location = hop.headers.get("Location") if hop.is_redirect else None
        target = urlsplit(urljoin(hop.url or self._base, location)) if location else None
        return ProbeResult(
            status=resp.status_code,
            headers={k: v for k, v in resp.headers.items() if k.lower() not in _PROBE_HIDDEN},
            body=body,
            elapsed=self._clock() - started,
            redirect_status=hop.status_code if target else None,
            redirect_host=target.netloc.rpartition("@")[2] if target else None,
            redirect_lifetime=_signed_lifetime(target.query, time.time()) if target else None,
        )

    # -- containers ----------------------------------------------------------------------

    def get_container(self, cid: str) -> Json:
        return self._json_call("GET", f"/containers/{_segment(cid)}", expect=dict)

    def get(self, kind: Kind, cid: str) -> Json:
        return self._json_call("GET", f"/{_plural(kind)}/{_segment(cid)}", expect=dict)

    def list_groups(self) -> list[Json]:
        """Every group the key can read, paged: a site may cut an unpaged list short."""
        return self._paged("/groups")

    def list_projects(self) -> list[Json]:
        """Every project the key can read, paged like ``list_groups``."""
        return self._paged("/projects")

    def list_children(self, kind: Kind, cid: str, child_kind: Kind) -> list[Json]:
        """All children, paged by ``after_id`` until an empty page, as the SDK finders do."""
        return self._paged(f"/{_plural(kind)}/{_segment(cid)}/{_plural(child_kind)}")

    def _paged(self, path: str) -> list[Json]:
        """GET ``path`` page by page (``limit`` always sent, never the site's default page
        size) until the list is provably complete.

        Asked with the ``pagination`` feature, a core answers ``{count, total, results}``:
        a page holding ``total`` items, or the pages so far adding up to an unchanged
        ``total``, is the whole list, so a list of under 250 costs one request. A core
        without the feature answers a bare list, where only an empty page proves the end
        (a short page may be a server's own cap).
        """
        display = self._base_path + path
        items: list[Json] = []
        seen: set[str] = set()
        first_total: int | None = None
        params = {"limit": str(_PAGE_SIZE)}
        while True:
            page, total = self._request(
                "GET",
                self._base + path,
                display=display,
                params=params,
                headers=_PAGED_HEADERS,
                consume=_read_page,
            )
            if not page:
                return items
            # The SDK's cursor rule: file lists page by file_id, everything else by _id.
            cursor = page[-1].get("file_id") or page[-1].get("_id")
            if not isinstance(cursor, str) or cursor in seen:
                # A server ignoring after_id would otherwise make the listing endless.
                raise RemoteError.for_request("GET", display, "pagination cursor did not advance")
            seen.add(cursor)
            items.extend(page)
            if first_total is None:
                first_total = total
            # `total` counts either the whole list or (after a cursor) what is left of it.
            if total is not None and (
                len(page) == total or (total == first_total and len(items) == total)
            ):
                return items
            params = {"limit": str(_PAGE_SIZE), "after_id": cursor}

    def create_container(self, kind: Kind, body: Mapping[str, Any]) -> str:
        if kind == "analysis":
            raise InvalidArgument("analyses are created under a parent: use create_analysis")
        return self._inserted_id(f"/{_plural(kind)}", body)

    def create_analysis(self, parent_kind: Kind, parent_id: str, body: Mapping[str, Any]) -> str:
        return self._inserted_id(f"/{_plural(parent_kind)}/{_segment(parent_id)}/analyses", body)

    def modify_container(self, kind: Kind, cid: str, body: Mapping[str, Any]) -> Json:
        return self._json_call(
            "PUT", f"/{_plural(kind)}/{_segment(cid)}", body=dict(body), expect=dict
        )

    def delete_container(self, kind: Kind, cid: str, *, reason: str | None = None) -> Json:
        """``reason``: the ``delete_reason`` sites with an audit trail require."""
        return self._json_call(
            "DELETE",
            f"/{_plural(kind)}/{_segment(cid)}",
            params=_reason_params(reason),
            expect=dict,
            allow_empty=True,
        )

    def _inserted_id(self, path: str, body: Mapping[str, Any]) -> str:
        result = self._json_call("POST", path, body=dict(body), expect=dict)
        new_id = result.get("_id")
        if not isinstance(new_id, str) or not new_id:
            raise RemoteError.for_request("POST", self._base_path + path, "no _id in response")
        return new_id

    # -- files ---------------------------------------------------------------------------

    def file_url_path(
        self,
        kind: Kind,
        cid: str,
        name: str,
        *,
        group: str = "files",
        file_id: str | None = None,
    ) -> str:
        """Path below the base URL of the file's bytes.

        ``group="inputs"`` on an analysis is one of its inputs, read through
        ``/analyses/{id}/inputs/{name}`` (sites serve only outputs under ``files/``). A name
        holding '/' with a ``file_id`` goes to ``/files/{file_id}/download``; otherwise the
        name is quoted whole, so '/' becomes %2F.
        """
        if _by_id(name, file_id):
            return f"/files/{_segment(file_id or '')}/download"
        sub = "inputs" if group == "inputs" and kind == "analysis" else "files"
        return f"/{_plural(kind)}/{_segment(cid)}/{sub}/{_segment(name)}"

    def read_range(
        self,
        kind: Kind,
        cid: str,
        name: str,
        start: int,
        end: int,
        *,
        version: int | None = None,
        group: str = "files",
        file_id: str | None = None,
    ) -> bytes:
        """Bytes ``[start, end)``; fewer only at end of file, b"" at or past it.

        Raises ``RangeIgnored`` when the site answers a read from a non-zero offset with
        the whole file: the caller should stream the file once (``stream_file``) rather
        than read past the prefix again for every block.
        """
        if start < 0 or end < start:
            raise InvalidArgument(f"invalid byte range [{start}, {end})")
        if end == start:
            return b""
        path = self.file_url_path(kind, cid, name, group=group, file_id=file_id)
        display = self._base_path + path
        # The real server honours Range only with view=true (reference section 7).
        return self._download(
            path,
            (file_id or path, version) if version is not None else None,
            params=_version_params(version, view="true"),
            headers={**_FILE_HEADERS, "Range": f"bytes={start}-{end - 1}"},
            passthrough=frozenset({416}),
            consume=lambda resp: _range_body(resp, start, end, display),
        )

    def stream_file(
        self,
        kind: Kind,
        cid: str,
        name: str,
        *,
        version: int | None = None,
        chunk_size: int = 1 << 20,
        group: str = "files",
        file_id: str | None = None,
    ) -> Iterator[bytes]:
        """The whole file in chunks. Raises RemoteError if it ends short of Content-Length."""
        path = self.file_url_path(kind, cid, name, group=group, file_id=file_id)
        display = self._base_path + path
        resp: requests.Response = self._download(
            path,
            (file_id or path, version) if version is not None else None,
            # view=true: the by-id route (like the name route) serves the bytes inline.
            params=_version_params(version, view="true"),
            headers=_FILE_HEADERS,
            consume=lambda r: r,
            keep_open=True,
        )
        expected, received = _content_length(resp), 0
        try:
            for chunk in resp.iter_content(chunk_size=chunk_size):
                received += len(chunk)
                yield chunk
        except (OSError, urllib3.exceptions.HTTPError) as exc:
            raise self._transport_error(exc, "GET", display) from exc
        finally:
            resp.close()
            log.debug("GET %s streamed %d bytes", display, received)
        if expected is not None and received != expected:
            why = f"body ended after {received} of {expected} bytes"
            raise RemoteError.for_request("GET", display, why)

    def _download(
        self,
        path: str,
        key: _SignedKey | None,
        *,
        params: Mapping[str, str],
        headers: Mapping[str, str],
        consume: Callable[[requests.Response], _T],
        passthrough: frozenset[int] = frozenset(),
        keep_open: bool = False,
    ) -> _T:
        """GET a file's bytes at ``path``, following the core's redirect to storage here
        rather than in requests, so that the signed URL can serve the file's later ranges
        (``key`` pins the file and version; None keeps nothing). A remembered URL that
        storage refuses (expired, revoked) is dropped, and the core asked once more.
        """
        display = self._base_path + path
        remembered = self._signed_urls.get(key) if key is not None else None
        if remembered is not None:
            try:
                return self._storage_get(
                    remembered, display, headers, consume, passthrough, keep_open
                )
            except FwfsError as exc:
                if exc.status not in _SIGNED_REFUSED:
                    raise
                assert key is not None
                self._signed_urls.drop(key, remembered)
                log.info("%s: storage refused a remembered signed URL; asking the core", display)

        def first_hop(resp: requests.Response) -> _T | _Redirect:
            location = resp.headers.get("Location") if resp.is_redirect else None
            if location is None:
                return consume(resp)
            resp.close()  # even when the caller wanted the body kept open
            return _Redirect(location)

        answer = self._request(
            "GET",
            self._base + path,
            display=display,
            params=params,
            headers=headers,
            passthrough=passthrough,
            consume=first_hop,
            keep_open=keep_open,
            allow_redirects=False,
        )
        if not isinstance(answer, _Redirect):
            return answer
        target = urljoin(self._base + path, answer.location)
        if self._session.below_api(target):
            # Somewhere else in the API (not storage): the key goes, nothing is kept.
            return self._request(
                "GET",
                target,
                display=display,
                headers=headers,
                passthrough=passthrough,
                consume=consume,
                keep_open=keep_open,
            )
        if key is not None:
            self._signed_urls.put(key, target)
        return self._storage_get(target, display, headers, consume, passthrough, keep_open)

    def _storage_get(
        self,
        url: str,
        display: str,
        headers: Mapping[str, str],
        consume: Callable[[requests.Response], _T],
        passthrough: frozenset[int],
        keep_open: bool,
    ) -> _T:
        """GET a signed storage URL: never with the key; logs and errors name only the
        file and the host, since the URL's query is a credential."""
        host = urlsplit(url).netloc.rpartition("@")[2]
        return self._request(
            "GET",
            url,
            display=f"{display} (signed URL on {host})",
            headers=headers,
            signed=True,
            passthrough=passthrough,
            consume=consume,
            keep_open=keep_open,
        )

    def file_info(
        self,
        kind: Kind,
        cid: str,
        name: str,
        *,
        group: str = "files",
        file_id: str | None = None,
    ) -> Json:
        """The file's metadata document (``info``, tags, classification, ...)."""
        if _by_id(name, file_id):
            return self._json_call("GET", f"/files/{_segment(file_id or '')}", expect=dict)
        path = self.file_url_path(kind, cid, name, group=group)
        return self._json_call("GET", f"{path}/info", expect=dict)

    def zip_info(
        self,
        kind: Kind,
        cid: str,
        name: str,
        *,
        version: int | None = None,
        group: str = "files",
        file_id: str | None = None,
    ) -> Json:
        if _by_id(name, file_id):
            path = f"/files/{_segment(file_id or '')}/zip_info"
            return self._json_call("GET", path, params=_version_params(version), expect=dict)
        path = self.file_url_path(kind, cid, name, group=group)
        return self._json_call(
            "GET", path, params=_version_params(version, info="true"), expect=dict
        )

    def read_zip_member(
        self,
        kind: Kind,
        cid: str,
        name: str,
        member: str,
        *,
        version: int | None = None,
        group: str = "files",
        file_id: str | None = None,
    ) -> bytes:
        path = self.file_url_path(kind, cid, name, group=group, file_id=file_id)
        return self._request(
            "GET",
            self._base + path,
            display=self._base_path + path,
            params=_version_params(version, member=member),
            headers=_FILE_HEADERS,
            consume=_whole_body,
            # A member body that breaks off is most often one the server cannot
            # decompress: the archive reader falls back to the archive's own bytes
            # rather than waiting out every retry.
            idempotent=False,
        )

    def delete_file(self, kind: Kind, cid: str, name: str, *, reason: str | None = None) -> Json:
        """``reason``: the ``delete_reason`` sites with an audit trail require."""
        return self._json_call(
            "DELETE",
            self.file_url_path(kind, cid, name),
            params=_reason_params(reason),
            expect=dict,
            allow_empty=True,
        )

    def move_file(self, file_id: str, kind: Kind, cid: str, name: str) -> Json:
        """Rename a file, or move it to another container (``fw.move_file``)."""
        body = {"container_reference": {"type": kind, "id": cid}, "name": name}
        return self._json_call("POST", f"/files/{_segment(file_id)}/move", body=body, expect=dict)

    def file_versions(self, file_id: str) -> list[Json]:
        return self._json_call("GET", f"/files/{_segment(file_id)}/versions", expect=list)

    # -- uploads -------------------------------------------------------------------------

    def upload_file(
        self,
        kind: Kind,
        cid: str,
        name: str,
        fileobj: BinaryIO,
        size: int,
        *,
        content_type: str = "application/octet-stream",
        metadata: Mapping[str, Any] | None = None,
    ) -> list[Json]:
        """Upload ``size`` bytes from ``fileobj``'s current position; returns the file list.

        Like the SDK, asks ``/config`` first and uses the signed-URL ticket flow when the
        site offers it, else one streamed multipart POST.
        """
        if size < 0 or any(c in content_type for c in "\r\n"):
            raise InvalidArgument("invalid upload size or content type")
        path = f"/{_plural(kind)}/{_segment(cid)}/files"
        try:
            start = fileobj.tell()
        except OSError:
            # Retries rewind the source, so it must be seekable; and OSErrors with no
            # errno must never reach the FUSE layer.
            raise InvalidArgument("upload source must be a seekable file") from None
        if self._signed_uploads():
            return self._upload_signed(kind, path, name, fileobj, start, size, metadata)
        boundary = uuid.uuid4().hex
        head = b""
        if metadata is not None:
            head = (
                f'--{boundary}\r\nContent-Disposition: form-data; name="metadata"\r\n\r\n'
                f"{json.dumps(dict(metadata))}\r\n"
            ).encode()
        head += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f"{format_multipart_header_param('filename', name)}\r\n"
            f"Content-Type: {content_type}\r\n\r\n"
        ).encode()
        body = _StreamBody([head, (fileobj, start, size), f"\r\n--{boundary}--\r\n".encode()])
        content = f"multipart/form-data; boundary={boundary}"
        return self._json_call("POST", path, data=body, content_type=content, expect=list)

    def _signed_uploads(self) -> bool:
        """Whether the site wants the signed-URL flow. Asked once per client and remembered
        for a few minutes: `cp -r` of a thousand files should not ask a thousand times."""
        now = time.monotonic()
        cached = self._upload_mode
        if cached is not None and now - cached[1] < _CONFIG_TTL:
            return cached[0]
        signed = _signed_mode(self.site_config())
        self._upload_mode = (signed, now)
        return signed

    def note_site_config(self, doc: Json, asked_at: float) -> None:
        """Hand over the site's ``/config`` answer, fetched elsewhere at ``asked_at``
        (``time.monotonic()``, e.g. by the mount's connect): uploads within a few minutes
        of it then need no ``/config`` request of their own."""
        self._upload_mode = (_signed_mode(doc), asked_at)

    def _upload_signed(
        self,
        kind: str,
        path: str,
        name: str,
        fileobj: BinaryIO,
        start: int,
        size: int,
        metadata: Mapping[str, Any] | None,
    ) -> list[Json]:
        # setdefault semantics as in the SDK: the caller's metadata wins; size 0 is omitted.
        meta = {"name": name, **({"size": size} if size else {}), **(metadata or {})}
        ticket_body = {"metadata": [meta] if kind == "analysis" else meta, "filenames": [name]}
        ticket = self._json_call("POST", path, params={"ticket": ""}, body=ticket_body, expect=dict)
        token, urls, headers = ticket.get("ticket"), ticket.get("urls"), ticket.get("headers")
        targets = urls.get(name) if isinstance(urls, dict) else None
        if isinstance(targets, str):
            targets = [targets]
        if not (
            isinstance(token, str)
            and token
            and isinstance(targets, list)
            and targets
            and all(isinstance(url, str) for url in targets)
            and isinstance(headers, (dict, type(None)))
        ):
            raise RemoteError.for_request("POST", self._base_path + path, "malformed ticket")
        extra = {str(k): str(v) for k, v in (headers or {}).items()}
        multipart = self._put_parts(targets, extra, fileobj, start, size)
        return self._json_call(
            "POST",
            path,
            params={"ticket": token},
            body={"multipart": multipart} if multipart else None,
            content_type="application/json",
            expect=list,
        )

    def _put_parts(
        self, urls: list[str], extra: dict[str, str], fileobj: BinaryIO, start: int, size: int
    ) -> Json | None:
        """PUT each signed URL its slice of the file; return S3 multipart info if any."""
        is_s3 = ".s3." in urls[0] or ".amazonaws." in urls[0]
        is_gcs = ".googleapis." in urls[0]
        part = _signed_part_size(size, len(urls))
        etags: list[str] = []
        for number, url in enumerate(urls):
            offset = number * part
            length = max(0, min(part, size - offset))
            headers: dict[str, str | None] = {**extra, "x-accept-feature": None, "Accept": "*/*"}
            if is_gcs:
                span = f"{offset}-{offset + length - 1}" if length else "*"
                headers["Content-Range"] = f"bytes {span}/{size}"
            body = _StreamBody([(fileobj, start + offset, length)]) if length else b""
            # Signed URLs carry credentials in their path or query: show only the host.
            display = f"<signed URL on {urlsplit(url).hostname}> part {number + 1}/{len(urls)}"
            etag = self._request(
                "PUT",
                url,
                display=display,
                data=body,
                headers=headers,
                signed=True,
                consume=lambda resp: resp.headers.get("ETag"),
            )
            if is_s3:
                if not etag:
                    raise RemoteError.for_request("PUT", display, "no ETag in the response")
                etags.append(etag.strip('"'))
        upload_id = parse_qs(urlsplit(urls[0]).query).get("uploadId")
        if is_s3 and etags and upload_id:
            return {"e_tags": etags, "upload_id": upload_id[0]}
        return None

    # -- transport -----------------------------------------------------------------------

    def _json_call(
        self,
        method: str,
        path: str,
        *,
        expect: type[_J],
        allow_empty: bool = False,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        data: _StreamBody | None = None,
        content_type: str | None = None,
        idempotent: bool | None = None,
    ) -> _J:
        headers = {"Content-Type": content_type} if content_type else None
        return self._request(
            method,
            self._base + path,
            display=self._base_path + path,
            params=params,
            headers=headers,
            json_body=body,
            data=data,
            idempotent=idempotent,
            consume=_json_reader(expect, allow_empty),
        )

    def _request(
        self,
        method: str,
        url: str,
        *,
        display: str,
        consume: Callable[[requests.Response], _T],
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str | None] | None = None,
        json_body: Any = None,
        data: _StreamBody | bytes | None = None,
        idempotent: bool | None = None,
        signed: bool = False,
        passthrough: frozenset[int] = frozenset(),
        keep_open: bool = False,
        allow_redirects: bool = True,
    ) -> _T:
        """Send with retries and hand the response to ``consume``; failures are FwfsError.

        ``display`` is what logs and errors show instead of the URL: it never contains a
        query string, so tickets and signatures stay out of both.
        """
        retry_ok = method in _IDEMPOTENT if idempotent is None else idempotent
        started = self._clock()
        attempt = 0
        while True:
            attempt += 1
            if isinstance(data, _StreamBody):
                data.seek(0)
            try:
                return self._attempt(
                    method,
                    url,
                    display,
                    consume,
                    retry_ok=retry_ok,
                    passthrough=passthrough,
                    keep_open=keep_open,
                    params=params,
                    headers=headers,
                    json=json_body,
                    data=data,
                    auth=_NoAuth() if signed else self._auth,
                    allow_redirects=allow_redirects,
                )
            except _Failed as failed:
                error = failed.error
                if failed.retry and self._pause(attempt, started, failed.retry_after, str(error)):
                    continue
                if attempt > 1:
                    error.args = (f"{error.args[0]} (gave up after {attempt} attempts)",)
                raise error from failed.__cause__

    def _attempt(
        self,
        method: str,
        url: str,
        display: str,
        consume: Callable[[requests.Response], _T],
        *,
        retry_ok: bool,
        passthrough: frozenset[int],
        keep_open: bool,
        **send: Any,
    ) -> _T:
        """One round trip. Raises _Failed saying whether a retry could help."""
        cfg = self._config
        sent_at = self._clock()
        try:
            resp = self._session.request(
                method, url, timeout=(cfg.connect_timeout, cfg.read_timeout), stream=True, **send
            )
        except (OSError, urllib3.exceptions.HTTPError) as exc:
            retry = _never_sent(exc) or (retry_ok and _transient(exc))
            raise _Failed(self._transport_error(exc, method, display), retry) from exc
        status = resp.status_code
        try:
            if status >= 400 and status not in passthrough:
                error = self._status_error(resp, method, display)
                retry = retry_ok and status in _RETRY_STATUSES
                raise _Failed(error, retry, _retry_after(resp))
            try:
                result = consume(resp)
            except _BodyError as exc:
                error = RemoteError.for_request(method, display, str(exc), status=status)
                raise _Failed(error, retry_ok and exc.transient) from None
            except (OSError, urllib3.exceptions.HTTPError) as exc:
                raise _Failed(self._transport_error(exc, method, display), retry_ok) from exc
        except BaseException:
            resp.close()
            raise
        finally:
            # Bytes as read off the wire so far; a kept-open stream logs its total later.
            elapsed = self._clock() - sent_at
            log.debug(
                "%s %s -> %d, %d bytes, %.3f s", method, display, status, resp.raw.tell(), elapsed
            )
        if not keep_open:
            resp.close()
        return result

    def _pause(self, attempt: int, started: float, retry_after: float | None, why: str) -> bool:
        """Sleep before retry number ``attempt`` if the budget allows; False to give up."""
        cfg = self._config
        if attempt > cfg.retries:
            return False
        if retry_after is not None:
            delay = min(retry_after, cfg.backoff_max)
        else:
            delay = self._jitter() * min(cfg.backoff_max, cfg.backoff_factor * 2 ** (attempt - 1))
        if self._clock() - started + delay > cfg.total_timeout:
            return False
        log.info("retry %d of %d in %.1f s: %s", attempt, cfg.retries, delay, why)
        self._sleep(delay)
        return True

    def _scrub(self, text: str) -> str:
        return _QUERY.sub("?…", text.replace(self._secret, "***"))[:500]

    def _transport_error(self, exc: BaseException, method: str, display: str) -> FwfsError:
        cfg = self._config
        if isinstance(exc, requests.exceptions.ConnectTimeout):
            why = f"could not connect within {cfg.connect_timeout:g} s"
        elif isinstance(exc, requests.exceptions.ReadTimeout):
            why = f"no response within {cfg.read_timeout:g} s"
        elif isinstance(exc, requests.exceptions.ChunkedEncodingError):
            why = "connection dropped while receiving the body"
        else:
            inner = exc.args[0] if exc.args else exc
            if isinstance(inner, urllib3.exceptions.MaxRetryError) and inner.reason is not None:
                inner = inner.reason
            why = f"{type(inner).__name__}: {self._scrub(str(inner))}"
        if isinstance(exc, requests.exceptions.SSLError) and self._trust is not None:
            why += (
                f" (trusted: {self._trust.describe()}; to trust the site's CA, add it to the"
                " OS trust store or set FW_SSL_CERT_FILE to its PEM file)"
            )
        if isinstance(exc, ValueError) and not isinstance(exc, requests.exceptions.SSLError):
            return InvalidArgument.for_request(method, display, why)
        if isinstance(exc, requests.exceptions.TooManyRedirects):
            return RemoteError.for_request(method, display, why)
        return RemoteUnavailable.for_request(method, display, why)

    def _status_error(self, resp: requests.Response, method: str, display: str) -> FwfsError:
        message: str | None = None
        try:
            raw = resp.raw.read(_ERROR_BODY_LIMIT, decode_content=True) or b""
            payload = json.loads(raw)
            if isinstance(payload, dict) and isinstance(payload.get("message"), str):
                message = self._scrub(payload["message"])
            elif isinstance(payload, dict) and payload.get("detail"):
                message = self._scrub(_detail_text(payload["detail"]))
        except (ValueError, OSError, urllib3.exceptions.HTTPError):
            pass
        status = resp.status_code
        why = f"HTTP {status} {resp.reason or ''}".rstrip()
        if message:
            why = f"{why}: {message}"
        error_class = errno_for_status(status)
        return error_class.for_request(method, display, why, status=status, server_message=message)
