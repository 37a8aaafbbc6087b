"""FlywheelClient: typed access to the Flywheel REST API."""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, BinaryIO, Final
from urllib.parse import parse_qs, urljoin, urlsplit

import requests
import urllib3.exceptions
from urllib3.fields import format_multipart_header_param

from fwfs.client.signed import (
    _PROBE_HIDDEN,
    ProbeResult,
    _signed_lifetime,
)
from fwfs.client.transport import Again, Transport
from fwfs.client.wire import (
    _CONFIG_TTL,
    _FILE_HEADERS,
    _PAGE_SIZE,
    _PAGED_HEADERS,
    _by_id,
    _content_length,
    _plural,
    _range_body,
    _read_page,
    _reason_params,
    _segment,
    _signed_mode,
    _signed_part_size,
    _StreamBody,
    _version_params,
    _whole_body,
)
from fwfs.errors import (
    FwfsError,
    InvalidArgument,
    RemoteError,
)
from fwfs.models import Json, Kind

log = logging.getLogger("fwfs.client")


class FlywheelClient(Transport):
    """Thin, typed access to the Flywheel REST API. Returns plain JSON dicts and lists.

    One instance is shared by all FUSE threads. Every call goes through `Transport`,
    whose docstring gives the time bounds and the retry rules.
    """

    # Whether the site wants signed-URL uploads, and when that was learnt (None: not yet).
    _upload_mode: tuple[bool, float] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._mode_lock = threading.Lock()
        # Set when prepare_upload's /config request is answered (or failed); None: none out.
        self._mode_asked: threading.Event | None = None

    def __repr__(self) -> str:
        return f"FlywheelClient({self._base!r})"

    def __enter__(self) -> FlywheelClient:
        return self

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
        retry: bool | Callable[[str, Exception], bool] = True,
    ) -> list[Json]:
        """Upload ``size`` bytes from ``fileobj``'s current position; returns the file list.

        Like the SDK, asks ``/config`` first and uses the signed-URL ticket flow when the
        site offers it, else one streamed multipart POST. ``retry=True``: each request is
        retried as `Transport` says. A callable ``retry(request, error)``: the caller's
        budget (the Uploader's `SendBudget.again`) decides alone; after a failure that
        sending the request again may fix (5xx, 429, dropped connections, read timeouts;
        POSTs included, since the caller would otherwise send them again with the whole
        upload) it is asked with a name for the request ("PUT part 2", "finish", ...) and
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
        budget = _Budget(retry)
        if self._signed_uploads(budget):
            return self._upload_signed(kind, path, name, fileobj, start, size, metadata, budget)
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
            idempotent=budget.idempotent,
            again=budget.for_request("POST upload"),
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
                self._upload_mode = (_signed_mode(self.site_config()), started)
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

    def _signed_uploads(self, budget: _Budget | None = None) -> bool:
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
        again = budget.for_request("GET /config") if budget is not None else None
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
        budget: _Budget,
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
            idempotent=budget.idempotent,
            again=budget.for_request("POST ticket"),
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
        multipart = self._put_parts(targets, extra, fileobj, start, size, budget)
        try:
            return self._json_call(
                "POST",
                path,
                params={"ticket": token},
                body={"multipart": multipart} if multipart else None,
                content_type="application/json",
                expect=list,
                idempotent=budget.idempotent,
                again=budget.for_request("POST finish"),
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
        budget: _Budget,
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
                    again=budget.for_request(f"PUT part {number + 1}"),
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


class _Budget:
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
