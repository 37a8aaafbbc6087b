"""Signed URLs: how long one lives, the storage URLs kept per file version, and what a
probe (`fwfs doctor`) reports of an answer."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs, urlsplit

from cachetools import TLRUCache

if TYPE_CHECKING:
    pass


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
    shared by all threads. Only a pinned version is kept, since a URL names one blob.

    Each entry is ``(url, seconds usable)``; the cache's time-to-use is its put time plus
    those seconds, so each URL expires on its own clock. cachetools is not thread-safe,
    hence the lock."""

    def __init__(self, clock: Callable[[], float], capacity: int = _SIGNED_CAPACITY) -> None:
        self._urls: TLRUCache[_SignedKey, tuple[str, float]] = TLRUCache(
            capacity, ttu=lambda _key, entry, now: now + entry[1], timer=clock
        )
        self._lock = threading.Lock()

    def get(self, key: _SignedKey) -> str | None:
        with self._lock:
            entry = self._urls.get(key)
            return None if entry is None else entry[0]

    def put(self, key: _SignedKey, url: str) -> None:
        lifetime = _signed_lifetime(urlsplit(url).query, time.time())
        if lifetime is None:
            lifetime = _SIGNED_DEFAULT_LIFETIME
        usable = lifetime - min(_SIGNED_MARGIN, lifetime / 4)
        if usable <= 0:
            return
        with self._lock:
            self._urls[key] = (url, usable)

    def drop(self, key: _SignedKey, url: str) -> None:
        with self._lock:
            if self._urls.get(key, ("",))[0] == url:
                del self._urls[key]


@dataclass(frozen=True)
class _Redirect:
    """A download's answer that points elsewhere (``consume`` never saw its body)."""

    location: str
