"""Uploads of FlywheelClient: one streamed multipart POST, or the signed-URL ticket flow
(a ticket, a PUT to storage per part, the ticket's finish), each request sent again only as
the caller's policy allows (see `Uploads.upload_file`)."""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO, Final
from urllib.parse import parse_qs, urlsplit

from urllib3.fields import format_multipart_header_param

from fwfs.client.transport import Again, Transport
from fwfs.client.wire import (
    _CONFIG_TTL,
    _plural,
    _segment,
    _signed_mode,
    _signed_part_size,
    _StreamBody,
)
from fwfs.errors import FwfsError, InvalidArgument, RemoteError
from fwfs.models import Json, Kind

log = logging.getLogger("fwfs.client")


class Uploads(Transport):
    """The upload calls of `FlywheelClient`, and what they remember of the site: whether
    it wants signed-URL uploads."""

    # Whether the site wants signed-URL uploads, and when that was learnt (None: not yet).
    _upload_mode: tuple[bool, float] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._mode_lock = threading.Lock()
        # Set when prepare_upload's /config request is answered (or failed); None: none out.
        self._mode_asked: threading.Event | None = None

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
        retry: bool | Callable[[str, Exception], bool] = True,
    ) -> list[Json]:
        """Upload ``size`` bytes from ``fileobj``'s current position; returns the file list.

        Like the SDK, asks ``/config`` first and uses the signed-URL ticket flow when the
        site offers it, else one streamed multipart POST. ``retry=True``: each request is
        retried as `Transport` says. A callable ``retry(request, error)``: the caller's
        budget (the Uploader's `SendBudget.again`) decides alone; after a failure that
        sending the request again may fix (5xx, 429, dropped connections, read timeouts;
        POSTs included, since the caller would otherwise send them again with the whole
        upload) it is asked with a name for the request ("PUT part 2", "POST finish", ...) and
        waits itself; True sends that request alone again. ``retry=False`` sends each
        request once. Storage refusing a signed URL, or the site no longer knowing the
        ticket, raises ``RemoteError`` (EIO): a new upload, with a new ticket, may succeed.
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
        retries = _Retries(retry)
        if self._signed_uploads(retries):
            return self._upload_signed(kind, path, name, fileobj, start, size, metadata, retries)
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
        return self._json_call(
            "POST",
            path,
            data=body,
            content_type=content,
            expect=list,
            idempotent=retries.idempotent,
            again=retries.for_request("POST upload"),
        )

    def prepare_upload(self) -> None:
        """A program started writing a file that is uploaded at its close: if the site's
        upload mode is unknown or too old to use, ask for it now, in the background, so the
        close costs only the upload's own requests (a round trip less after close())."""
        with self._mode_lock:
            if self._mode_fresh() is not None or self._mode_asked is not None:
                return
            asked = self._mode_asked = threading.Event()

        def ask() -> None:
            started = time.monotonic()
            try:
                config = self._json_call("GET", "/config", expect=dict)
                self._upload_mode = (_signed_mode(config), started)
            except FwfsError as err:  # the close asks again, and its program gets the errno
                log.debug("upload mode not learnt ahead of the upload: %s", err)
            finally:
                with self._mode_lock:
                    self._mode_asked = None
                asked.set()

        threading.Thread(target=ask, name="fwfs-upload-mode", daemon=True).start()

    def _mode_fresh(self) -> bool | None:
        cached = self._upload_mode
        if cached is not None and time.monotonic() - cached[1] < _CONFIG_TTL:
            return cached[0]
        return None

    def _signed_uploads(self, retries: _Retries | None = None) -> bool:
        """Whether the site wants the signed-URL flow. Asked once per client and remembered
        for a few minutes: `cp -r` of a thousand files should not ask a thousand times."""
        with self._mode_lock:
            asked = self._mode_asked
        if asked is not None:
            asked.wait()  # prepare_upload's answer is on its way: not a second request
        fresh = self._mode_fresh()
        if fresh is not None:
            return fresh
        now = time.monotonic()
        again = retries.for_request("GET /config") if retries is not None else None
        signed = _signed_mode(self._json_call("GET", "/config", expect=dict, again=again))
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
        retries: _Retries,
    ) -> list[Json]:
        # setdefault semantics as in the SDK: the caller's metadata wins; size 0 is omitted.
        meta = {"name": name, **({"size": size} if size else {}), **(metadata or {})}
        ticket_body = {"metadata": [meta] if kind == "analysis" else meta, "filenames": [name]}
        ticket = self._json_call(
            "POST",
            path,
            params={"ticket": ""},
            body=ticket_body,
            expect=dict,
            idempotent=retries.idempotent,
            again=retries.for_request("POST ticket"),
        )
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
        multipart = self._put_parts(targets, extra, fileobj, start, size, retries)
        try:
            return self._json_call(
                "POST",
                path,
                params={"ticket": token},
                body={"multipart": multipart} if multipart else None,
                content_type="application/json",
                expect=list,
                idempotent=retries.idempotent,
                again=retries.for_request("POST finish"),
            )
        except FwfsError as exc:
            if exc.status not in _TICKET_GONE:
                raise
            why = f"the site no longer knows the upload ticket ({exc}); a new one may do"
            raise RemoteError.for_request("POST", self._base_path + path, why) from exc

    def _put_parts(
        self,
        urls: list[str],
        extra: dict[str, str],
        fileobj: BinaryIO,
        start: int,
        size: int,
        retries: _Retries,
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
            try:
                etag = self._request(
                    "PUT",
                    url,
                    display=display,
                    data=body,
                    headers=headers,
                    signed=True,
                    again=retries.for_request(f"PUT part {number + 1}"),
                    consume=lambda resp: resp.headers.get("ETag"),
                )
            except FwfsError as exc:
                if exc.status not in _URL_REFUSED:
                    raise
                # Not the user's permission: the URL expired or was revoked, which the
                # next ticket's URLs fix. EIO, so the Uploader starts again.
                why = f"storage refused the signed URL ({exc}); a new ticket may do"
                raise RemoteError.for_request("PUT", display, why) from exc
            if is_s3:
                if not etag:
                    raise RemoteError.for_request("PUT", display, "no ETag in the response")
                etags.append(etag.strip('"'))
        upload_id = parse_qs(urlsplit(urls[0]).query).get("uploadId")
        if is_s3 and etags and upload_id:
            return {"e_tags": etags, "upload_id": upload_id[0]}
        return None


# Storage refusing a signed URL (expired, revoked, signature no longer valid), and the
# site's answers to a finish POST for a ticket it dropped (expired, or finished already).
_URL_REFUSED: Final = frozenset({400, 401, 403, 404})
_TICKET_GONE: Final = frozenset({404, 410})


def _never(error: FwfsError) -> bool:
    return False


class _Retries:
    """``upload_file``'s ``retry`` for each of its requests."""

    def __init__(self, retry: bool | Callable[[str, Exception], bool]) -> None:
        self._retry = retry
        # A caller that retries whole uploads would send these POSTs again anyway.
        self.idempotent = True if callable(retry) else None

    def for_request(self, request: str) -> Again | None:
        """The ``again`` of `Transport._request` for ``request``: None for the
        transport's own retries."""
        retry = self._retry
        if retry is True:
            return None
        if retry is False:
            return _never
        return functools.partial(retry, request)
