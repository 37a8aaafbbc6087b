"""FlywheelClient: typed access to the Flywheel REST API."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
import urllib3.exceptions

from fwfs.client.signed import (
    _PROBE_HIDDEN,
    ProbeResult,
    _signed_lifetime,
)
from fwfs.client.uploads import Uploads
from fwfs.client.wire import (
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
    _version_params,
    _whole_body,
)
from fwfs.errors import (
    InvalidArgument,
    RemoteError,
)
from fwfs.models import Json, Kind

log = logging.getLogger("fwfs.client")


class FlywheelClient(Uploads):
    """Thin, typed access to the Flywheel REST API. Returns plain JSON dicts and lists.

    One instance is shared by all FUSE threads. Every call goes through `Transport`,
    whose docstring gives the time bounds and the retry rules.
    """

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

    def list_children(
        self, kind: Kind, cid: str, child_kind: Kind, *, all_info: bool = False
    ) -> list[Json]:
        """All children, paged by ``after_id`` until an empty page, as the SDK finders do.
        ``all_info``: ``include_all_info=true``, the children's (and their files') whole
        ``info``, which a real core trims to its ``BIDS`` key in lists."""
        path = f"/{_plural(kind)}/{_segment(cid)}/{_plural(child_kind)}"
        return self._paged(path, {"include_all_info": "true"} if all_info else None)

    def _paged(self, path: str, extra: Mapping[str, str] | None = None) -> list[Json]:
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
        params = {**(extra or {}), "limit": str(_PAGE_SIZE)}
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
            params = {**(extra or {}), "limit": str(_PAGE_SIZE), "after_id": cursor}

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
            self.stats.add_bytes("download", received)
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
