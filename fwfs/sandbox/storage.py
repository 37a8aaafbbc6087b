"""The "storage" listener of `--redirect-downloads`: where a real core's 302 sends downloads.

A real core on signed-URL storage answers a file GET with 302 to a URL that expires in 60 s
(CORE19 listhandler.py:498-509; audit D8). Storage is another origin: it refuses requests
that carry the site's `Authorization` (as S3 does a second credential), honours `Range`
unless told to ignore it (`--redirect-ignores-range`, a proxy or old storage), and knows
nothing of API keys.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable

from fwfs.sandbox.files import parse_range
from fwfs.sandbox.httpd import ApiError, FileBody, Request, Response, Router
from fwfs.sandbox.store import FileRec, Store

log = logging.getLogger("fwfs.sandbox")


class Storage:
    def __init__(
        self,
        store: Store,
        ttl: float = 60.0,
        ignores_range: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.ttl = ttl
        self.ignores_range = ignores_range
        self.clock = clock
        self.base_url = ""  # set once the listener has its port
        self._key = secrets.token_bytes(32)

    def _sig(self, file_id: str, exp: int) -> str:
        return hmac.new(self._key, f"{file_id}\n{exp}".encode(), hashlib.sha256).hexdigest()

    def signed_url(self, rec: FileRec) -> str:
        exp = int(self.clock() + self.ttl)
        return f"{self.base_url}/storage/{rec.file_id}?exp={exp}&sig={self._sig(rec.file_id, exp)}"

    def _refuse(self, req: Request, why: str) -> ApiError:
        log.debug("storage refused %s: %s", req.path, why)
        return ApiError(403, f"AccessDenied: {why}")

    def get(self, req: Request) -> Response:
        file_id = req.params["fid"]
        if req.headers.get("Authorization"):
            raise self._refuse(req, "only one auth mechanism allowed (Authorization present)")
        try:
            exp = int(req.arg("exp") or "")
        except ValueError:
            raise self._refuse(req, "no expiry") from None
        if not hmac.compare_digest(req.arg("sig") or "", self._sig(file_id, exp)):
            raise self._refuse(req, "signature does not match")
        if self.clock() > exp:
            raise self._refuse(req, "request has expired")
        rec = self.store.file_by_id(file_id)
        if rec is None:
            raise ApiError(404, "NoSuchKey")
        path = self.store.blob_path(rec)
        headers = {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        spec = req.headers.get("Range")
        if spec and self.ignores_range:
            log.debug("storage ignored Range %s on %s", spec, req.path)
        elif spec:
            span = parse_range(spec, rec.size)
            if isinstance(span, str):
                return Response(416, b"", {**headers, "Content-Range": f"bytes */{rec.size}"})
            if span is not None:
                start, end = span
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{rec.size}"
                return Response(206, FileBody(path, start, end - start), headers)
        return Response(200, FileBody(path, 0, rec.size), headers)

    def register(self, r: Router) -> None:
        r.add("GET", "/storage/{fid}", self.get, auth=False)
        r.add("HEAD", "/storage/{fid}", self.get, auth=False)
