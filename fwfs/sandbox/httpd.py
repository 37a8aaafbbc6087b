"""HTTP plumbing of the sandbox: a thread per connection, keep-alive, routing, access log.

Bodies of files go out with `socket.sendfile`, so serving is never what limits a benchmark
of the mount. Handlers return a `Response`; raising `ApiError` gives the JSON error body
the Flywheel SDK reads (`message`, `detail`).
"""

from __future__ import annotations

import json
import logging
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qs, unquote, urlsplit

log = logging.getLogger("fwfs.sandbox")


class ApiError(Exception):
    def __init__(self, status: int, message: str, detail: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.detail = detail


@dataclass
class FileBody:
    """A byte range of a file on disk, sent with sendfile."""

    path: Path
    offset: int
    length: int


@dataclass
class Response:
    status: int = 200
    body: bytes | FileBody | Iterable[bytes] = b""
    headers: dict[str, str] = field(default_factory=dict)
    length: int | None = None  # for iterable bodies; None means chunked is not used: close

    @classmethod
    def json(cls, obj: Any, status: int = 200) -> Response:
        data = json.dumps(obj).encode()
        return cls(status, data, {"Content-Type": "application/json"})


@dataclass
class Request:
    method: str
    path: str  # percent-decoded
    raw_path: str
    query: dict[str, list[str]]
    headers: Any  # email.message.Message
    rfile: IO[bytes]
    user: Any = None
    params: dict[str, str] = field(default_factory=dict)
    _body_left: int = 0

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else default

    def flag(self, name: str) -> bool:
        return (self.arg(name) or "").lower() in ("true", "1", "yes")

    def int_arg(self, name: str) -> int | None:
        value = self.arg(name)
        if value in (None, ""):
            return None
        try:
            return int(value or "")
        except ValueError:
            raise ApiError(400, f"query parameter {name} must be an integer") from None

    def read_body(self, limit: int = 64 << 20) -> bytes:
        if self._body_left > limit:
            raise ApiError(413, "request body too large")
        data = self.rfile.read(self._body_left)
        self._body_left = 0
        return data

    def iter_body(self, chunk: int = 1 << 20) -> Iterable[bytes]:
        while self._body_left > 0:
            data = self.rfile.read(min(chunk, self._body_left))
            if not data:
                raise ApiError(400, "request body ended early")
            self._body_left -= len(data)
            yield data

    def json(self) -> Any:
        raw = self.read_body()
        if not raw.strip():
            return {}
        try:
            return json.loads(raw)
        except ValueError:
            raise ApiError(400, "request body is not valid JSON") from None


Handler = Callable[[Request], Response]


class Router:
    def __init__(self) -> None:
        self._routes: list[tuple[str, re.Pattern[str], Handler, bool]] = []

    def add(self, method: str, pattern: str, handler: Handler, auth: bool = True) -> None:
        """`pattern` uses {name} for one path segment and {name:path} for the rest."""
        regex = re.sub(r"\{(\w+):path\}", r"(?P<\1>.+)", pattern)
        regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", regex)
        self._routes.append((method, re.compile(f"^{regex}$"), handler, auth))

    def match(self, method: str, raw_path: str) -> tuple[Handler, dict[str, str], bool]:
        allowed = False
        for m, regex, handler, auth in self._routes:
            found = regex.match(raw_path)
            if found:
                if m != method:
                    allowed = True
                    continue
                params = {k: unquote(v) for k, v in found.groupdict().items()}
                return handler, params, auth
        if allowed:
            raise ApiError(405, f"method {method} not allowed on {unquote(raw_path)}")
        raise ApiError(404, f"no such endpoint: {method} {unquote(raw_path)}")


class AccessLog:
    def __init__(self, path: Path | None) -> None:
        self._lock = threading.Lock()
        self._fh = open(path, "a", encoding="utf-8", buffering=1) if path else None  # noqa: SIM115

    def write(self, record: dict[str, Any]) -> None:
        if self._fh is None:
            return
        line = json.dumps(record) + "\n"
        with self._lock:
            self._fh.write(line)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()


class SandboxHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        addr: tuple[str, int],
        router: Router,
        authenticate: Callable[[Request], Any],
        access_log: AccessLog,
        tls: ssl.SSLContext | None = None,
        listener: str = "core",
    ) -> None:
        super().__init__(addr, _Handler)
        self.listener = listener  # "core" or "storage" (--redirect-downloads), in the log
        self.router = router
        self.authenticate = authenticate
        self.access_log = access_log
        if tls is not None:
            # Handshake in the connection's own thread, so one slow client cannot stall accept().
            self.socket = tls.wrap_socket(
                self.socket, server_side=True, do_handshake_on_connect=False
            )


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle on, the body would wait for
    # the client's delayed ACK (40 ms a request).
    disable_nagle_algorithm = True
    server: SandboxHTTPServer
    server_version = "fwfs-sandbox"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (ConnectionError, ssl.SSLError, TimeoutError):
            self.close_connection = True

    def _dispatch(self) -> None:
        started = time.monotonic()
        # Wall-clock, so a test can order requests in time across the site's two listeners
        # and tell requests sent side by side from requests that waited on each other.
        started_at = time.time()
        split = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        req = Request(
            method=self.command,
            path=unquote(split.path),
            raw_path=split.path,
            query=parse_qs(split.query, keep_blank_values=True),
            headers=self.headers,
            rfile=self.rfile,  # type: ignore[arg-type]
            _body_left=length,
        )
        sent = 0
        status = 500
        try:
            try:
                handler, params, needs_auth = self.server.router.match(req.method, req.raw_path)
                req.params = params
                if needs_auth:
                    req.user = self.server.authenticate(req)
                resp = handler(req)
            except ApiError as err:
                resp = Response.json(
                    {"status": err.status, "message": err.message, "detail": err.detail},
                    err.status,
                )
            except Exception:
                log.exception("sandbox handler failed: %s %s", req.method, req.path)
                resp = Response.json(
                    {"status": 500, "message": "internal server error", "detail": None}, 500
                )
            # Unread request bytes would be parsed as the next request on this connection.
            if req._body_left:
                self.close_connection = True
            status = resp.status
            sent = self._send(resp)
        finally:
            self.server.access_log.write(
                {
                    "listener": self.server.listener,
                    "method": req.method,
                    "path": req.path,
                    "query": split.query,
                    "range": self.headers.get("Range"),
                    "status": status,
                    "bytes": sent,
                    "start": round(started_at, 6),
                    "duration": round(time.monotonic() - started, 6),
                }
            )

    def _send(self, resp: Response) -> int:
        self.send_response(resp.status, HTTPStatus(resp.status).phrase)
        body = resp.body
        for k, v in resp.headers.items():
            self.send_header(k, v)
        if isinstance(body, bytes):
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            return len(body)
        if isinstance(body, FileBody):
            self.send_header("Content-Length", str(body.length))
            self.end_headers()
            if self.command == "HEAD" or body.length == 0:
                return 0
            with open(body.path, "rb") as fh:
                return int(self.connection.sendfile(fh, body.offset, body.length))
        if resp.length is not None:
            self.send_header("Content-Length", str(resp.length))
        else:
            self.close_connection = True
            self.send_header("Connection", "close")
        self.end_headers()
        total = 0
        try:
            for chunk in body:
                self.wfile.write(chunk)
                total += len(chunk)
        except Exception:
            # The status line is gone already: cutting the connection is the only way left
            # to tell the client that the body is incomplete.
            log.exception("sandbox body failed after %d bytes: %s", total, self.path)
            self.close_connection = True
        if resp.length is not None and total != resp.length:
            # Fewer bytes than Content-Length promised: only a closed connection says so.
            self.close_connection = True
        return total

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _dispatch
