"""A small HTTP proxy that injects faults between `fwfs mount` and a sandbox site.

The mount is pointed at the proxy by its API key: `proxy.api_key(site.api_key)` is a key
with the proxy's port and the site's secret. Every request is forwarded to the site and
its whole answer read; then the proxy either passes it on or does one of `KINDS` to it:

| kind | what the client sees |
|---|---|
| `500`, `502`, `503` | that status with a JSON error body; the site never sees the request |
| `429` | 429 with `Retry-After` (`plan.retry_after` seconds); the site never sees it |
| `reset` | the site handles the request, then the connection is reset before any answer |
| `reset_mid_body` | the headers (full Content-Length) and half the body, then a reset |
| `truncate` | the headers (full Content-Length) and half the body, then a clean close |
| `stall` | nothing for `plan.stall_seconds`, then a close; the site never sees it |
| `drip` | the right answer, its body sent in small pieces over `plan.drip_seconds` |

What happens to a request is decided by a `FaultPlan`: its `rules` first (in order; each
fires for the matching requests it names, however many there are), then its random `mix`.
The random decision for a request depends only on the seed, the request's identity
(method, path, query, Range, and the file name of an upload) and how many times that
identity was seen before, never on the order in which threads send requests, so a seed
injects the same faults into the same requests on every run. `max_per_key` bounds how many
times in a row one request is hurt, so a retrying client always gets through in the end.

Counters: `proxy.injected()` (by kind), `proxy.requests()`, `proxy.events()`.
Stdlib only.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import random
import re
import socket
import struct
import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

STATUS_KINDS = ("500", "502", "503", "429")
KINDS = (*STATUS_KINDS, "reset", "reset_mid_body", "truncate", "stall", "drip")
# Faults a Flywheel client is expected to ride out on an idempotent request (a retry
# succeeds); 500 is final by the errno table, so a mix without it should lose nothing.
RETRIABLE = ("502", "503", "429", "reset", "reset_mid_body", "truncate", "stall", "drip")
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_FILENAME = re.compile(rb'filename="([^"]*)"')


@dataclass(frozen=True)
class Rule:
    """Do `kind` to matching requests: skip the first `skip` that match, then hurt the next
    `times` (None: every one). `method` is exact; `path` and `query` are regexes searched
    in the path (without the query) and the query; `ranged` asks for (or excludes) a Range
    header; `upload` matches the file name of a multipart upload (a regex)."""

    kind: str
    method: str | None = None
    path: str | None = None
    query: str | None = None
    ranged: bool | None = None
    upload: str | None = None
    skip: int = 0
    times: int | None = 1
    seconds: float | None = None  # a stall's or drip's length; None: the plan's

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; one of {KINDS}")

    def matches(self, req: Request) -> bool:
        if self.method is not None and req.method != self.method:
            return False
        if self.path is not None and not re.search(self.path, req.path):
            return False
        if self.query is not None and not re.search(self.query, req.query):
            return False
        if self.ranged is not None and self.ranged != (req.range is not None):
            return False
        return self.upload is None or (
            req.upload_name is not None and re.search(self.upload, req.upload_name) is not None
        )


@dataclass(frozen=True)
class FaultPlan:
    """What to inject. `rate` of the requests that `methods`, `path` and `upload` (regexes
    searched in the path and in an upload's file name) admit get a kind drawn from `mix`
    (kind -> weight), at most `max_per_key` times in a row for one request identity;
    `rules` come first. A plan with neither passes everything."""

    seed: int = 0
    rate: float = 0.0
    mix: Mapping[str, float] = field(default_factory=dict)
    rules: tuple[Rule, ...] = ()
    methods: tuple[str, ...] | None = None
    path: str | None = None
    upload: str | None = None
    max_per_key: int = 2
    retry_after: float = 1.0
    stall_seconds: float = 2.0
    drip_seconds: float = 0.3

    def __post_init__(self) -> None:
        for kind in self.mix:
            if kind not in KINDS:
                raise ValueError(f"unknown fault kind {kind!r}; one of {KINDS}")
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError("rate is a probability")


PASS = FaultPlan()


@dataclass
class Request:
    method: str
    path: str
    query: str
    range: str | None
    upload_name: str | None

    @property
    def key(self) -> str:
        return f"{self.method} {self.path}?{self.query} range={self.range} up={self.upload_name}"


@dataclass(frozen=True)
class Event:
    """One request the proxy saw, and what it did (`kind` None: passed through)."""

    method: str
    path: str
    kind: str | None
    status: int | None  # the site's status, when the request reached it


class _Decider:
    """The plan's decisions, with the per-rule and per-identity counts they need."""

    def __init__(self, plan: FaultPlan) -> None:
        self.plan = plan
        self._rule_seen = [0] * len(plan.rules)
        self._key_seen: Counter[str] = Counter()
        self._key_run: Counter[str] = Counter()  # faults in a row per identity
        self._lock = threading.Lock()
        total = sum(w for w in plan.mix.values() if w > 0)
        self._mix = [(k, w / total) for k, w in plan.mix.items() if w > 0] if total else []

    def decide(self, req: Request) -> tuple[str | None, float | None]:
        """(kind or None, a rule's own stall or drip length, or None for the plan's)."""
        plan = self.plan
        with self._lock:
            # Every rule counts every request it matches, whether or not an earlier rule
            # fires: Rule(a, times=1) then Rule(b, skip=1) hurts the 1st with a, the 2nd
            # with b.
            fired: Rule | None = None
            for i, rule in enumerate(plan.rules):
                if rule.matches(req):
                    self._rule_seen[i] += 1
                    nth = self._rule_seen[i]
                    hit = nth > rule.skip and (rule.times is None or nth <= rule.skip + rule.times)
                    if hit and fired is None:
                        fired = rule
            if fired is not None:
                return fired.kind, fired.seconds
            return self._draw(req), None

    def _draw(self, req: Request) -> str | None:
        """The random mix's decision (the caller holds the lock)."""
        plan = self.plan
        if not self._mix or plan.rate <= 0:
            return None
        if plan.methods is not None and req.method not in plan.methods:
            return None
        if plan.path is not None and not re.search(plan.path, req.path):
            return None
        if plan.upload is not None and not re.search(plan.upload, req.upload_name or ""):
            return None
        key = req.key
        nth = self._key_seen[key]
        self._key_seen[key] += 1
        if self._key_run[key] >= plan.max_per_key:
            self._key_run[key] = 0
            return None
        digest = hashlib.sha256(f"{plan.seed}|{key}|{nth}".encode()).digest()
        draw = random.Random(digest)
        if draw.random() >= plan.rate:
            self._key_run[key] = 0
            return None
        self._key_run[key] += 1
        point, acc = draw.random(), 0.0
        for kind, weight in self._mix:
            acc += weight
            if point < acc:
                return kind
        return self._mix[-1][0]


class _Upstream:
    """The answer of the site to one request, read whole."""

    def __init__(self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes):
        self.status, self.reason, self.headers, self.body = status, reason, headers, body


class FaultProxy:
    """`with FaultProxy(site.url, plan) as proxy:` ... `proxy.api_key(site.api_key)`."""

    def __init__(self, upstream: str, plan: FaultPlan = PASS) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or parts.hostname is None or parts.port is None:
            raise ValueError("the proxy forwards to a plain http://host:port site")
        self.upstream = (parts.hostname, parts.port)
        self._decider = _Decider(plan)
        self._lock = threading.Lock()
        self._injected: Counter[str] = Counter()
        self._events: list[Event] = []
        self._closing = threading.Event()
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread: threading.Thread | None = None

    # ---- control ----------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"faultproxy-{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._closing.set()  # ends stalls and drips
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def plan(self) -> FaultPlan:
        return self._decider.plan

    @plan.setter
    def plan(self, plan: FaultPlan) -> None:
        """A new plan, with fresh rule and identity counts (the counters keep counting)."""
        self._decider = _Decider(plan)

    def api_key(self, site_key: str) -> str:
        """The site's key with the proxy's port: `127.0.0.1:PORT:__force_insecure:SECRET`."""
        secret = site_key.rsplit(":", 1)[1]
        return f"127.0.0.1:{self.port}:__force_insecure:{secret}"

    # ---- counters ---------------------------------------------------------------------

    def injected(self) -> dict[str, int]:
        """Faults done so far, by kind."""
        with self._lock:
            return dict(self._injected)

    def requests(self) -> int:
        with self._lock:
            return len(self._events)

    def events(self) -> list[Event]:
        with self._lock:
            return list(self._events)

    def reset_counters(self) -> None:
        with self._lock:
            self._injected.clear()
            self._events.clear()

    def _note(self, req: Request, kind: str | None, status: int | None) -> None:
        with self._lock:
            if kind is not None:
                self._injected[kind] += 1
            self._events.append(Event(req.method, req.path, kind, status))

    # ---- forwarding -------------------------------------------------------------------

    def _forward(
        self,
        conn: http.client.HTTPConnection | None,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]],
        body: bytes,
    ) -> tuple[http.client.HTTPConnection | None, _Upstream]:
        """Send to the site on `conn` (a new connection if None, or if a kept one turns out
        closed), read the whole answer; the connection to keep using, if any."""
        headers = list(headers)
        for attempt in (1, 2):
            fresh = conn is None
            if conn is None:
                conn = http.client.HTTPConnection(*self.upstream, timeout=120)
            try:
                conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
                for name, value in headers:
                    conn.putheader(name, value)
                conn.putheader("Content-Length", str(len(body)))
                conn.endheaders(body if body else None)
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = None
                if fresh or attempt == 2:
                    raise
                continue
            out = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP_BY_HOP]
            if resp.will_close:
                conn.close()
                conn = None
            return conn, _Upstream(resp.status, resp.reason, out, data)
        raise AssertionError("unreachable")


class _Handler(BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = "HTTP/1.1"
    _upstream: http.client.HTTPConnection | None = None

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (OSError, ValueError):
            # A connection the client dropped, or one a fault closed (ValueError: the
            # handler's streams are closed already).
            self.close_connection = True

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        if self._upstream is not None:
            self._upstream.close()

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _serve(self) -> None:
        owner = self.owner
        body = self._body()
        path, _, query = self.path.partition("?")
        upload = None
        if self.command == "POST" and b"filename=" in body[:4096]:
            found = _FILENAME.search(body[:4096])
            upload = found.group(1).decode("utf-8", "replace") if found else None
        req = Request(self.command, path, query, self.headers.get("Range"), upload)
        kind, seconds = owner._decider.decide(req)
        if kind in STATUS_KINDS:
            owner._note(req, kind, None)
            self._send_status(int(kind))
            return
        if kind == "stall":
            owner._note(req, kind, None)
            owner._closing.wait(owner.plan.stall_seconds if seconds is None else seconds)
            self._drop(reset=False)
            return
        headers = [
            (k, v)
            for k, v in self.headers.items()
            if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length"
        ]
        try:
            self._upstream, answer = owner._forward(
                self._upstream, self.command, self.path, headers, body
            )
        except (OSError, http.client.HTTPException):
            owner._note(req, None, None)
            self._drop(reset=True)
            return
        has_body = self.command != "HEAD" and len(answer.body) >= 2
        if kind in ("reset_mid_body", "truncate") and not has_body:
            kind = "reset"  # nothing to cut: the nearest fault is a reset before the answer
        owner._note(req, kind, answer.status)
        if kind == "reset":
            self._drop(reset=True)
            return
        head = self._head(answer)
        if kind in ("reset_mid_body", "truncate"):
            self.wfile.write(head + answer.body[: len(answer.body) // 2])
            self._drop(reset=kind == "reset_mid_body")
            return
        if kind == "drip":
            self.wfile.write(head)
            pieces = 16
            step = max(1, -(-len(answer.body) // pieces))
            pause = (owner.plan.drip_seconds if seconds is None else seconds) / pieces
            for at in range(0, len(answer.body), step):
                self.wfile.write(answer.body[at : at + step])
                if owner._closing.wait(pause):
                    break
            return
        self.wfile.write(head + (b"" if self.command == "HEAD" else answer.body))

    def _head(self, answer: _Upstream) -> bytes:
        lines = [f"HTTP/1.1 {answer.status} {answer.reason}"]
        for k, v in answer.headers:
            if k.lower() == "content-length" and self.command != "HEAD":
                continue
            lines.append(f"{k}: {v}")
        if self.command != "HEAD":
            lines.append(f"Content-Length: {len(answer.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _send_status(self, status: int) -> None:
        body = json.dumps({"message": f"fault injected by the test proxy: HTTP {status}"})
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 429:
            self.send_header("Retry-After", f"{self.owner.plan.retry_after:g}")
        self.end_headers()
        self.wfile.write(data)

    def _drop(self, *, reset: bool) -> None:
        """Close the client's connection: a TCP reset (linger 0), or a clean FIN."""
        self.close_connection = True
        sock = self.connection
        try:
            if reset:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        # The reader and writer hold references: close them, so the close is real now.
        for stream in (self.wfile, self.rfile):
            with contextlib.suppress(OSError):
                stream.close()
        sock.close()

    def do_GET(self) -> None:
        self._serve()

    do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = do_GET
