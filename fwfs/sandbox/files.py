"""File endpoints of the sandbox: download with Range, zip listing and members, tickets, versions.

Uploads (multipart and the signed-URL ticket flow) are in `uploads.py`.
"""

from __future__ import annotations

import functools
import mimetypes
import re
import zipfile
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fwfs.sandbox.api import SiteApi, apply_info_patch
from fwfs.sandbox.fidelity import archive_delay, check_delete_reason, log, refuse_encoded_slash
from fwfs.sandbox.httpd import ApiError, FileBody, Request, Response, Router
from fwfs.sandbox.store import Container, FileRec, now_iso

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")

# Flywheel's file `type` values for the kinds of file the demo and users put on the site.
_TYPES = (
    (".dicom.zip", "dicom"),
    (".dcm", "dicom"),
    (".nii.gz", "nifti"),
    (".nii", "nifti"),
    (".csv", "tabular data"),
    (".tsv", "tabular data"),
    (".json", "source code"),
    (".bval", "bval"),
    (".bvec", "bvec"),
    (".pdf", "pdf"),
    (".txt", "text"),
    (".log", "log"),
    (".zip", "archive"),
)


def file_type(name: str) -> str | None:
    lower = name.lower()
    return next((t for suffix, t in _TYPES if lower.endswith(suffix)), None)


def mimetype(name: str) -> str:
    lower = name.lower()
    if lower.endswith(".dcm"):
        return "application/dicom"
    if lower.endswith((".nii.gz", ".nii")):
        return "application/octet-stream"
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


@functools.lru_cache(maxsize=256)
def _zip_listing(path: str, file_id: str) -> tuple[dict[str, Any], dict[str, zipfile.ZipInfo]]:
    """Parsed once per file version: blobs never change under a file_id."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            comment = zf.comment.decode("utf-8", "replace")
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise ApiError(400, f"not a zip file: {err}") from None
    members = [
        {
            "path": i.filename,
            "size": i.file_size,
            "timestamp": datetime(*i.date_time).isoformat(),
            "comment": i.comment.decode("utf-8", "replace"),
        }
        for i in infos
    ]
    return {"comment": comment, "members": members}, {i.filename: i for i in infos}


def zip_member_count(path: Path) -> int | None:
    try:
        with zipfile.ZipFile(path) as zf:
            return len(zf.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return None


class FileApi:
    def __init__(self, site: SiteApi, redirect: Callable[[FileRec], str] | None = None) -> None:
        """`redirect` gives a file's signed storage URL: downloads then answer 302 to it."""
        self.site = site
        self.store = site.store
        self.fidelity = site.fidelity
        self.redirect = redirect

    # ---- lookups ----------------------------------------------------------------------

    def _parent(self, req: Request) -> Container:
        ctype = self.site.kind(req.params["kind"], allow_any=True)
        parent = self.site.container(req.params["cid"], ctype, req.user)
        aid = req.params.get("aid")
        if aid is not None:
            analysis = self.site.container(aid, "analysis", req.user)
            if analysis.parent_id != parent.id:
                raise ApiError(404, f"analysis {aid} not found on {parent.type} {parent.id}")
            return analysis
        return parent

    def _file(self, req: Request, parent: Container) -> FileRec:
        refuse_encoded_slash(req, self.fidelity)
        name = req.params["name"]
        # `/inputs/{name}` reads an analysis's inputs; `/files/{name}` its outputs, and its
        # inputs too unless --analysis-io-split (audit D5).
        group = req.params.get("_group")
        if group is None and parent.type == "analysis" and self.fidelity.analysis_io_split:
            group = "files"
        rec = self.store.file_by_name(parent.id, name, req.int_arg("version"), group)
        if rec is None:
            raise ApiError(404, f"file {name} not found on {parent.type} {parent.id}")
        return rec

    def _by_id(self, req: Request) -> tuple[FileRec, Container]:
        rec = self.store.file_by_id(req.params["fid"])
        if rec is None:
            raise ApiError(404, f"file {req.params['fid']} not found")
        version = req.int_arg("version")
        if version is not None and version != rec.version:
            other = [r for r in self.store.file_versions(rec) if r.version == version]
            if not other:
                raise ApiError(404, f"file {rec.file_id} has no version {version}")
            rec = other[0]
        return rec, self.site.container(rec.container_id, None, req.user)

    # ---- download ---------------------------------------------------------------------

    def download(self, req: Request) -> Response:
        ticket = req.arg("ticket")
        if ticket:
            return self._ticketed(req, ticket)
        req.user = self.site.authenticate(req)
        parent = self._parent(req)
        rec = self._file(req, parent)
        if ticket == "":
            t = self.store.new_ticket(
                {"kind": "download", "file_id": rec.file_id, "user": req.user.id}
            )
            return Response.json(
                {"ticket": t, "filename": rec.name, "file_cnt": 1, "size": rec.size}
            )
        return self.serve(req, rec)

    def _ticketed(self, req: Request, ticket: str) -> Response:
        refuse_encoded_slash(req, self.fidelity)
        doc = self.store.get_ticket(ticket)
        if doc is None or doc.get("kind") != "download":
            raise ApiError(401, "invalid or expired ticket")
        rec = self.store.file_by_id(doc["file_id"])
        cid = req.params.get("aid") or req.params["cid"]
        if rec is None or rec.name != req.params["name"] or rec.container_id != cid:
            raise ApiError(404, "ticket does not match this file")
        return self.serve(req, rec)

    def serve(self, req: Request, rec: FileRec) -> Response:
        path = self.store.blob_path(rec)
        if req.flag("info"):
            archive_delay(req, self.fidelity)
            return Response.json(_zip_listing(str(path), rec.file_id)[0])
        member = req.arg("member")
        if member is not None:
            archive_delay(req, self.fidelity)
            return self._member(path, rec, member)
        if self.redirect is not None:
            # CORE19 listhandler.py:498-509: signed-URL storage, a 60 s URL (audit D8).
            log.debug("redirecting %s to storage", req.path)
            return Response(302, b"", {"Location": self.redirect(rec)})
        headers = {
            "Accept-Ranges": "bytes",
            "ETag": f'"{rec.doc.get("hash", rec.file_id)}"',
            "Last-Modified": rec.doc.get("modified", ""),
        }
        spec = req.headers.get("Range")
        honour = spec and (not self.site.options.range_quirk or req.flag("view"))
        if honour:
            span = parse_range(spec, rec.size)
            if isinstance(span, str):
                return Response(416, b"", {**headers, "Content-Range": f"bytes */{rec.size}"})
            if span is not None:
                start, end = span
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{rec.size}"
                headers["Content-Type"] = rec.doc.get("mimetype") or mimetype(rec.name)
                return Response(206, FileBody(path, start, end - start), headers)
        headers["Content-Type"] = "application/octet-stream"
        headers["Content-Disposition"] = content_disposition(rec.name)
        return Response(200, FileBody(path, 0, rec.size), headers)

    def _member(self, path: Path, rec: FileRec, member: str) -> Response:
        _, infos = _zip_listing(str(path), rec.file_id)
        info = infos.get(member)
        if info is None or info.is_dir():
            raise ApiError(404, f"zip file contains no such member: {member}")
        if info.flag_bits & 0x1:
            raise ApiError(400, f"zip member is encrypted: {member}")

        def chunks() -> Iterator[bytes]:
            with zipfile.ZipFile(path) as zf, zf.open(info) as fh:
                while block := fh.read(1 << 20):
                    yield block

        headers = {"Content-Type": mimetype(member)}
        return Response(200, chunks(), headers, length=info.file_size)

    # ---- metadata ---------------------------------------------------------------------

    def file_info(self, req: Request) -> Response:
        parent = self._parent(req)
        return Response.json(self.site.views.file(self._file(req, parent), parent))

    def modify(self, req: Request) -> Response:
        parent = self._parent(req)
        rec = self._file(req, parent)
        self.site.require_write(req, parent)
        body = req.json()
        if not isinstance(body, dict):
            raise ApiError(400, "body must be a JSON object")
        allowed = {"type", "modality", "tags", "classification", "info"}
        bad = sorted(set(body) - allowed)
        if bad:
            raise ApiError(400, f"cannot modify {', '.join(bad)}")
        rec.doc.update(body)
        rec.doc["modified"] = now_iso()
        self.store.update_file_doc(rec)
        return Response.json({"modified": 1, "jobs_spawned": 0})

    def patch_info(self, req: Request) -> Response:
        parent = self._parent(req)
        rec = self._file(req, parent)
        self.site.require_write(req, parent)
        rec.doc["info"] = apply_info_patch(rec.doc.get("info") or {}, req.json())
        self.store.update_file_doc(rec)
        return Response.json({"modified": 1, "jobs_spawned": 0})

    def delete(self, req: Request) -> Response:
        parent = self._parent(req)
        rec = self._file(req, parent)
        self.site.require_write(req, parent)
        check_delete_reason(req, self.fidelity)
        self.store.delete_file(rec)
        return Response.json({"deleted": 1, "not_found": 0, "delete_scheduled": 0})

    # ---- /files/{file_id} -------------------------------------------------------------

    def get_by_id(self, req: Request) -> Response:
        rec, parent = self._by_id(req)
        return Response.json(self.site.views.file(rec, parent))

    def download_by_id(self, req: Request) -> Response:
        """`/files/{file_id}/download`: any file, whatever its name holds (audit D12)."""
        rec, _ = self._by_id(req)
        return self.serve(req, rec)

    def zip_info_by_id(self, req: Request) -> Response:
        rec, _ = self._by_id(req)
        archive_delay(req, self.fidelity)
        return Response.json(_zip_listing(str(self.store.blob_path(rec)), rec.file_id)[0])

    def versions(self, req: Request) -> Response:
        rec, _ = self._by_id(req)
        return Response.json(
            [
                {
                    "file_id": r.file_id,
                    "version": r.version,
                    "created": r.doc.get("created"),
                    "deleted": None,
                    "origin": r.doc.get("origin"),
                }
                for r in self.store.file_versions(rec)
            ]
        )

    def delete_by_id(self, req: Request) -> Response:
        rec, parent = self._by_id(req)
        self.site.require_write(req, parent)
        check_delete_reason(req, self.fidelity)
        self.store.delete_file(rec)
        return Response.json({"deleted": 1, "not_found": 0, "delete_scheduled": 0})

    def move(self, req: Request) -> Response:
        if self.fidelity.old_core:
            log.debug("refused %s: no file move on an old core", req.path)
            raise ApiError(404, f"no such endpoint: POST {req.path}")
        rec, parent = self._by_id(req)
        self.site.require_write(req, parent)
        body = req.json()
        ref = body.get("container_reference") if isinstance(body, dict) else None
        target = parent
        if isinstance(ref, dict) and ref.get("id"):
            target = self.site.container(str(ref["id"]), ref.get("type"))
            self.site.require_write(req, target)
        name = body.get("name") or rec.name
        if not isinstance(name, str) or "/" in name:
            raise ApiError(400, "invalid file name")
        if self.store.file_by_name(target.id, name) is not None:
            raise ApiError(409, f"file {name} already exists on {target.type} {target.id}")
        self.store.rename_file(rec, target.id, name)
        return Response.json({"modified": 1, "jobs_spawned": 0})

    def all_files(self, req: Request) -> Response:
        docs = []
        for rec in self.store.all_current_files():
            parent = self.store.get_container(rec.container_id)
            if parent is not None and self.site.visible(req.user, [parent]):
                docs.append(self.site.views.file(rec, parent))
        resp = self.site.find(req, docs, id_key="file_id")
        return resp

    def register(self, r: Router) -> None:
        r.add("GET", "/api/files", self.all_files)
        r.add("GET", "/api/files/{fid}", self.get_by_id)
        r.add("DELETE", "/api/files/{fid}", self.delete_by_id)
        r.add("GET", "/api/files/{fid}/zip_info", self.zip_info_by_id)
        r.add("GET", "/api/files/{fid}/download", self.download_by_id)
        r.add("HEAD", "/api/files/{fid}/download", self.download_by_id)
        r.add("GET", "/api/files/{fid}/versions", self.versions)
        r.add("POST", "/api/files/{fid}/move", self.move)
        for prefix in ("/api/{kind}/{cid}", "/api/{kind}/{cid}/analyses/{aid}"):
            r.add("GET", prefix + "/files/{name}", self.download, auth=False)
            r.add("HEAD", prefix + "/files/{name}", self.download, auth=False)
            r.add("GET", prefix + "/files/{name}/info", self.file_info)
            r.add("PUT", prefix + "/files/{name}", self.modify)
            r.add("PATCH", prefix + "/files/{name}/info", self.patch_info)
            r.add("DELETE", prefix + "/files/{name}", self.delete)
            r.add("GET", prefix + "/inputs/{name}", _inputs(self.download), auth=False)
            r.add("HEAD", prefix + "/inputs/{name}", _inputs(self.download), auth=False)
            r.add("GET", prefix + "/inputs/{name}/info", _inputs(self.file_info))


def _inputs(handler: Callable[[Request], Response]) -> Callable[[Request], Response]:
    """The handler, reading an analysis's input files (`/analyses/{id}/inputs/{name}`)."""

    def inputs(req: Request) -> Response:
        req.params["_group"] = "inputs"
        return handler(req)

    return inputs


def content_disposition(name: str) -> str:
    """RFC 6266: an ASCII fallback plus the exact UTF-8 name (HTTP headers are latin-1)."""
    fallback = "".join(c if " " <= c < "\x7f" and c not in '"\\' else "_" for c in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


def parse_range(spec: str, size: int) -> tuple[int, int] | str | None:
    """(start, end-exclusive), "unsatisfiable", or None when the header is to be ignored."""
    found = _RANGE.match(spec.strip())
    if found is None:
        return None  # unparsable or several ranges: RFC 7233 lets a server send it all
    first, last = found.groups()
    if not first and not last:
        return None
    if not first:
        n = int(last)
        if n == 0:
            return "unsatisfiable"
        return max(size - n, 0), size
    start = int(first)
    if start >= size:
        return "unsatisfiable"
    end = size if not last else min(int(last) + 1, size)
    if end <= start:
        return None
    return start, end
