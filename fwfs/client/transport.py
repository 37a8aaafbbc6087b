"""The request machinery under FlywheelClient: one attempt, bounded retries, typed errors,
and downloads that follow a redirect to storage (reusing its signed URL)."""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
import urllib3.exceptions

from fwfs.client.session import (
    _ApiKeyAuth,
    _KeyedAdapter,
    _NoAuth,
    _Session,
    _ssl_context,
)
from fwfs.client.signed import (
    _SIGNED_REFUSED,
    _Redirect,
    _SignedKey,
    _SignedUrls,
)
from fwfs.client.stats import RequestStats, kind_of
from fwfs.client.wire import (
    _ERROR_BODY_LIMIT,
    _FEATURES,
    _IDEMPOTENT,
    _J,
    _QUERY,
    _RETRY_STATUSES,
    _T,
    _BodyError,
    _detail_text,
    _Failed,
    _json_reader,
    _never_sent,
    _retry_after,
    _StreamBody,
    _transient,
)
from fwfs.config import ClientConfig
from fwfs.errors import (
    FwfsError,
    InvalidArgument,
    RemoteError,
    RemoteUnavailable,
    errno_for_status,
)

log = logging.getLogger("fwfs.client")

# A caller's retry policy for one request: may it be sent again after this failure?
Again = Callable[[FwfsError], bool]


class Transport:
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
        self._signed_urls = _SignedUrls(clock)
        # Every round trip by kind, for `fwfs status`.
        self.stats = RequestStats()
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
        return f"Transport({self._base!r})"

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- downloads -----------------------------------------------------------------------

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
        again: Again | None = None,
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
            again=again,
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
        again: Again | None = None,
    ) -> _T:
        """Send with retries and hand the response to ``consume``; failures are FwfsError.

        ``display`` is what logs and errors show instead of the URL: it never contains a
        query string, so tickets and signatures stay out of both. ``again``: the caller's
        policy instead of this one (an upload: see ``upload_file``); a failure that a
        retry could fix is sent again only when ``again(error)`` says so (it waits itself),
        any other is raised at once.
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
                if failed.retry and (
                    again(error)
                    if again is not None
                    else self._pause(attempt, started, failed.retry_after, str(error))
                ):
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
        signed = isinstance(send.get("auth"), _NoAuth)
        path = "" if signed else urlsplit(url).path.removeprefix(self._base_path)
        kind = kind_of(method, path, send.get("params"), send.get("headers"), signed)
        sent_at = self._clock()
        try:
            resp = self._session.request(
                method, url, timeout=(cfg.connect_timeout, cfg.read_timeout), stream=True, **send
            )
        except (OSError, urllib3.exceptions.HTTPError) as exc:
            self.stats.record(kind, self._clock() - sent_at, 0, failed=True)
            retry = _never_sent(exc) or (retry_ok and _transient(exc))
            raise _Failed(self._transport_error(exc, method, display), retry) from exc
        status = resp.status_code
        failed = True
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
            failed = False
        except BaseException:
            resp.close()
            raise
        finally:
            # Bytes as read off the wire so far; a kept-open stream logs its total later.
            elapsed = self._clock() - sent_at
            received = resp.raw.tell()
            self.stats.record(kind, elapsed, received, failed)
            log.debug("%s %s -> %d, %d bytes, %.3f s", method, display, status, received, elapsed)
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
