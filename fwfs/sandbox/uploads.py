"""Uploads to the sandbox: multipart POST, and the signed-URL ticket flow of `/api/config`.

Bodies stream to the spool directory with a running hash, so a 1 GiB upload costs the
server constant memory. Fault counters let tests make the next N uploads fail
(`fail_uploads`), or the next N PUTs to a signed upload URL answer as a busy storage does
(`fail_signed_puts`: 503) or as it does once the URL has expired (`refuse_signed_puts`:
403); see `faults`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
from pathlib import Path
from typing import IO, Any

from python_multipart.multipart import MultipartParser, parse_options_header

from fwfs.sandbox.api import SiteApi
from fwfs.sandbox.files import file_type, mimetype, zip_member_count
from fwfs.sandbox.httpd import ApiError, Request, Response, Router
from fwfs.sandbox.store import Container

# Above this size a client that accepts multipart signed URLs gets several part URLs.
_PART_THRESHOLD = 256 << 20

# The faults of a signed PUT: what the storage answers.
_SIGNED_FAULTS: dict[str, tuple[int, str]] = {
    "fail_signed_puts": (503, "SlowDown: please reduce your request rate"),
    "refuse_signed_puts": (403, "AccessDenied: request has expired"),
}


class _Spooled:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.fh: IO[bytes] = open(path, "wb")  # noqa: SIM115
        self.sha = hashlib.sha384()
        self.size = 0

    def write(self, data: bytes) -> None:
        self.fh.write(data)
        self.sha.update(data)
        self.size += len(data)

    def close(self) -> None:
        self.fh.close()

    @property
    def hash(self) -> str:
        return "v0-sha384-" + self.sha.hexdigest()


class UploadApi:
    def __init__(self, site: SiteApi) -> None:
        self.site = site
        self.store = site.store
        self._fault_lock = threading.Lock()
        self.fail_uploads = 0
        # The counters of signed PUTs, by fault: `faults` sets them, each PUT takes one.
        self.signed_faults = dict.fromkeys(_SIGNED_FAULTS, 0)

    def _should_fail(self) -> bool:
        with self._fault_lock:
            if self.fail_uploads > 0:
                self.fail_uploads -= 1
                return True
        return False

    def _signed_fault(self) -> str | None:
        with self._fault_lock:
            for name, left in self.signed_faults.items():
                if left > 0:
                    self.signed_faults[name] = left - 1
                    return name
        return None

    def _target(self, req: Request) -> Container:
        ctype = self.site.kind(req.params["kind"], allow_any=True)
        parent = self.site.container(req.params["cid"], ctype)
        if "aid" in req.params:
            parent = self.site.container(req.params["aid"], "analysis")
        if parent.type == "group":
            raise ApiError(400, "groups do not hold files")
        self.site.require_write(req, parent)
        return parent

    def upload(self, req: Request) -> Response:
        parent = self._target(req)
        ticket = req.arg("ticket")
        if ticket == "":
            return self._start_ticket(req, parent)
        if ticket:
            return self._finish_ticket(req, parent, ticket)
        return self._multipart(req, parent)

    def _adopt(
        self, parent: Container, name: str, spooled: _Spooled, meta: dict[str, Any], origin: Any
    ) -> dict[str, Any]:
        # A real site holds names with "/" (other tools put them there); a site that refuses
        # them in name-keyed routes accepts them here, so tests can make such files (D12).
        slash_ok = self.site.fidelity.refuse_encoded_slash
        if not name or ("/" in name and not slash_ok) or name in (".", ".."):
            spooled.path.unlink(missing_ok=True)
            raise ApiError(400, f"invalid file name: {name!r}")
        doc: dict[str, Any] = {
            "hash": spooled.hash,
            "mimetype": mimetype(name),
            "type": file_type(name),
            "modality": None,
            "classification": {},
            "origin": origin,
            "zip_member_count": zip_member_count(spooled.path),
        }
        for key in ("type", "modality", "info", "tags", "classification"):
            if key in meta:
                doc[key] = meta[key]
        rec = self.store.add_file(parent.id, name, spooled.path, spooled.size, doc)
        return self.site.views.file(rec, parent)

    def _origin(self, req: Request) -> dict[str, str]:
        return {"type": "user", "id": req.user.id}

    # ---- multipart --------------------------------------------------------------------

    def _multipart(self, req: Request, parent: Container) -> Response:
        ctype, params = parse_options_header(req.headers.get("Content-Type") or "")
        boundary = params.get(b"boundary")
        if ctype != b"multipart/form-data" or not boundary:
            raise ApiError(400, "upload must be multipart/form-data")
        parts: list[tuple[dict[str, str], _Spooled | bytearray]] = []
        state: dict[str, Any] = {"field": b"", "value": b"", "headers": {}}

        def on_header_field(data: bytes, start: int, end: int) -> None:
            state["field"] += data[start:end]

        def on_header_value(data: bytes, start: int, end: int) -> None:
            state["value"] += data[start:end]

        def on_header_end() -> None:
            # Kept as bytes: clients put UTF-8 file names in Content-Disposition.
            state["headers"][state["field"].decode("latin-1").lower()] = bytes(state["value"])
            state["field"], state["value"] = b"", b""

        def on_headers_finished() -> None:
            disp = state["headers"].get("content-disposition", b"")
            _, dparams = parse_options_header(disp)
            # Clients escape '"' and newlines in names the HTML5 way (%22, %0D, %0A).
            info = {
                k.decode(): v.decode("utf-8", "replace")
                .replace("%22", '"')
                .replace("%0D", "\r")
                .replace("%0A", "\n")
                for k, v in dparams.items()
            }
            sink: _Spooled | bytearray
            sink = _Spooled(self.store.spool_path()) if "filename" in info else bytearray()
            parts.append((info, sink))
            state["headers"] = {}

        def on_part_data(data: bytes, start: int, end: int) -> None:
            sink = parts[-1][1]
            if isinstance(sink, bytearray):
                if len(sink) > 1 << 20:
                    raise ApiError(413, "form field too large")
                sink += data[start:end]
            else:
                sink.write(data[start:end])

        parser = MultipartParser(
            boundary,
            {
                "on_header_field": on_header_field,
                "on_header_value": on_header_value,
                "on_header_end": on_header_end,
                "on_headers_finished": on_headers_finished,
                "on_part_data": on_part_data,
            },
        )
        try:
            for chunk in req.iter_body():
                parser.write(chunk)
            parser.finalize()
        finally:
            for _, sink in parts:
                if isinstance(sink, _Spooled):
                    sink.close()
        files = [(i, s) for i, s in parts if isinstance(s, _Spooled)]
        try:
            if not files:
                raise ApiError(400, "upload has no file part")
            meta_raw = next(
                (
                    bytes(s)
                    for i, s in parts
                    if i.get("name") == "metadata" and isinstance(s, bytearray)
                ),
                b"",
            )
            metas = _parse_metadata(meta_raw, len(files))
            if self._should_fail():
                raise ApiError(503, "upload failed (sandbox fault injection)")
            out = []
            for (info, sink), meta in zip(files, metas, strict=True):
                out.append(self._adopt(parent, info["filename"], sink, meta, self._origin(req)))
        except BaseException:
            for _, sink in files:
                sink.path.unlink(missing_ok=True)
            raise
        return Response.json(out)

    # ---- signed-URL ticket flow -------------------------------------------------------

    def _start_ticket(self, req: Request, parent: Container) -> Response:
        body = req.json()
        if not isinstance(body, dict) or not isinstance(body.get("filenames"), list):
            raise ApiError(400, "ticket request needs filenames")
        names = [str(n) for n in body["filenames"]]
        metas = body.get("metadata") or {}
        if isinstance(metas, dict):
            metas = [metas]
        sizes = {m.get("name"): int(m.get("size") or 0) for m in metas if isinstance(m, dict)}
        features = (req.headers.get("x-accept-feature") or "").lower()
        multipart_ok = "multipart_signed_url" in features
        doc = {
            "kind": "upload",
            "container": parent.id,
            "user": req.user.id,
            "files": [],
            "metadata": metas,
        }
        ticket = self.store.new_ticket(doc)
        urls: dict[str, Any] = {}
        for index, name in enumerate(names):
            size = sizes.get(name, 0)
            nparts = math.ceil(size / _PART_THRESHOLD) if multipart_ok and size else 1
            part_urls = [
                f"{self.site.options.base_url}/sandbox-upload/{ticket}/{index}/{p}"
                for p in range(nparts)
            ]
            doc["files"].append({"name": name, "parts": nparts})
            urls[name] = part_urls if nparts > 1 else part_urls[0]
        self.store.put_ticket(ticket, doc)
        if self.site.fidelity.old_core:
            # CORE19 upload.py:203-234 answers without `headers` (audit D11).
            return Response.json({"ticket": ticket, "urls": urls})
        return Response.json({"ticket": ticket, "urls": urls, "headers": {}})

    def _part_path(self, ticket: str, index: int, part: int) -> Path:
        return self.store.spool_dir / f"ticket-{ticket}-{index}-{part}"

    def signed_put(self, req: Request) -> Response:
        ticket = req.params["ticket"]
        doc = self.store.get_ticket(ticket)
        try:
            index, part = int(req.params["index"]), int(req.params["part"])
        except ValueError:
            raise ApiError(400, "bad upload URL") from None
        if doc is None or doc.get("kind") != "upload" or index >= len(doc["files"]):
            raise ApiError(403, "invalid upload URL")
        if part >= doc["files"][index]["parts"]:
            raise ApiError(400, "bad part number")
        fault = self._signed_fault()
        if fault is not None:
            for _ in req.iter_body():  # read off, so the connection stays usable
                pass
            status, why = _SIGNED_FAULTS[fault]
            raise ApiError(status, f"{why} (sandbox fault injection)")
        tmp = self._part_path(ticket, index, part).with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            for chunk in req.iter_body():
                fh.write(chunk)
        os.replace(tmp, self._part_path(ticket, index, part))
        return Response(200, b"", {"ETag": f'"part-{part}"'})

    def _finish_ticket(self, req: Request, parent: Container, ticket: str) -> Response:
        doc = self.store.get_ticket(ticket)
        if doc is None or doc.get("kind") != "upload" or doc["container"] != parent.id:
            raise ApiError(404, "upload ticket not found")
        req.read_body()
        metas = doc.get("metadata") or []
        by_name = {m.get("name"): m for m in metas if isinstance(m, dict)}
        if self._should_fail():
            raise ApiError(503, "upload failed (sandbox fault injection)")
        out = []
        for index, entry in enumerate(doc["files"]):
            spooled = _Spooled(self.store.spool_path())
            try:
                for part in range(entry["parts"]):
                    path = self._part_path(ticket, index, part)
                    if not path.exists():
                        raise ApiError(400, f"part {part} of {entry['name']} was not uploaded")
                    with open(path, "rb") as fh:
                        while block := fh.read(1 << 20):
                            spooled.write(block)
            finally:
                spooled.close()
            meta = by_name.get(entry["name"], {})
            out.append(self._adopt(parent, entry["name"], spooled, meta, self._origin(req)))
            for part in range(entry["parts"]):
                self._part_path(ticket, index, part).unlink(missing_ok=True)
        self.store.drop_ticket(ticket)
        return Response.json(out)

    # ---- fault switch -----------------------------------------------------------------

    def faults(self, req: Request) -> Response:
        """`POST /sandbox/faults {"fail_uploads": N}`: the next N uploads answer 503.
        `{"fail_signed_puts": N}`, `{"refuse_signed_puts": N}`: the next N PUTs to signed
        upload URLs answer 503, or 403 as for an expired URL (the former first).

        The answer holds `fail_uploads`, and each signed-PUT counter that was asked
        about or is not 0."""
        self.site.require_write(req)
        body = req.json()
        if not isinstance(body, dict):
            body = {}
        with self._fault_lock:
            if "fail_uploads" in body:
                self.fail_uploads = int(body["fail_uploads"])
            for name in _SIGNED_FAULTS:
                if name in body:
                    self.signed_faults[name] = int(body[name])
            state: dict[str, int] = {"fail_uploads": self.fail_uploads}
            state.update(
                (name, left) for name, left in self.signed_faults.items() if left or name in body
            )
        return Response.json(state)

    def register(self, r: Router) -> None:
        r.add("POST", "/api/{kind}/{cid}/files", self.upload)
        r.add("POST", "/api/{kind}/{cid}/analyses/{aid}/files", self.upload)
        r.add("PUT", "/sandbox-upload/{ticket}/{index}/{part}", self.signed_put, auth=False)
        r.add("POST", "/sandbox/faults", self.faults)


def _parse_metadata(raw: bytes, count: int) -> list[dict[str, Any]]:
    if not raw.strip():
        return [{} for _ in range(count)]
    try:
        meta = json.loads(raw)
    except ValueError:
        raise ApiError(400, "metadata must be JSON") from None
    if isinstance(meta, dict):
        return [meta] * count
    if isinstance(meta, list) and all(isinstance(m, dict) for m in meta):
        return (meta + [{}] * count)[:count]
    raise ApiError(400, "metadata must be an object or a list of objects")
