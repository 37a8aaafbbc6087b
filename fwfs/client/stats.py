"""What the client has asked of the site: requests by kind, their latencies and bytes, for
`fwfs status`.

One `RequestStats` per client, fed by `Transport._attempt` once per round trip (a retry is
a second request, as the site's access log shows it). Latencies go into fixed log-scaled
buckets (`Histogram`): recording is a bisect and an increment under one lock, with nothing
allocated, so the cost per request stays constant however long the mount runs. A
percentile is read as its bucket's upper bound: within `_GROWTH` (12%) of the true value,
never below it.
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass
from typing import Any

# Bucket upper bounds in seconds: 50 µs growing by 12% a step, past ten minutes.
_GROWTH = 1.12
_FIRST = 50e-6
_BOUNDS: tuple[float, ...] = tuple(_FIRST * _GROWTH**i for i in range(145))

# What a request is for, named from its method and path (`kind_of`).
KINDS = (
    "list",
    "lookup",
    "range",
    "download",
    "upload",
    "create",
    "modify",
    "delete",
    "move",
    "config",
    "other",
)
PERCENTILES = (50, 90, 99)


class Histogram:
    """Counts of values (seconds) in fixed log-scaled buckets. Not thread-safe:
    `RequestStats` holds its lock around it."""

    __slots__ = ("_counts", "count", "largest", "total")

    def __init__(self) -> None:
        # The last bucket takes everything above the last bound.
        self._counts = [0] * (len(_BOUNDS) + 1)
        self.count = 0
        self.total = 0.0
        self.largest = 0.0

    def add(self, value: float) -> None:
        self._counts[bisect.bisect_left(_BOUNDS, value)] += 1
        self.count += 1
        self.total += value
        if value > self.largest:
            self.largest = value

    def percentile(self, p: float) -> float:
        """The upper bound of the bucket holding the p-th percentile (0 when empty); the
        largest value seen if that is smaller, so a percentile never exceeds the maximum."""
        if self.count == 0:
            return 0.0
        rank = max(1, -(-self.count * p // 100))  # the ceil'th value, 1-based
        seen = 0
        for i, n in enumerate(self._counts):
            seen += n
            if seen >= rank:
                bound = _BOUNDS[i] if i < len(_BOUNDS) else self.largest
                return min(bound, self.largest)
        return self.largest


@dataclass
class _Kind:
    latency: Histogram
    errors: int = 0
    bytes: int = 0


class RequestStats:
    """Requests by kind: count, failures, body bytes received, latency percentiles.
    Thread-safe; `record` is all a request costs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kinds: dict[str, _Kind] = {k: _Kind(Histogram()) for k in KINDS}

    def record(self, kind: str, seconds: float, received: int, failed: bool) -> None:
        with self._lock:
            entry = self._kinds.get(kind) or self._kinds["other"]
            entry.latency.add(seconds)
            entry.bytes += received
            if failed:
                entry.errors += 1

    def add_bytes(self, kind: str, received: int) -> None:
        """Bytes of a body read after its request was counted (a streamed download)."""
        with self._lock:
            (self._kinds.get(kind) or self._kinds["other"]).bytes += received

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready: per kind that has been asked, its count, errors, bytes and
        latency percentiles in milliseconds; and the bytes of file data fetched."""
        with self._lock:
            kinds = {
                name: {
                    "count": k.latency.count,
                    "errors": k.errors,
                    "bytes": k.bytes,
                    **{f"p{p}_ms": round(k.latency.percentile(p) * 1000, 3) for p in PERCENTILES},
                    "max_ms": round(k.latency.largest * 1000, 3),
                }
                for name, k in self._kinds.items()
                if k.latency.count
            }
            fetched = self._kinds["range"].bytes + self._kinds["download"].bytes
        return {
            "requests": sum(k["count"] for k in kinds.values()),
            "bytes_fetched": fetched,
            "by_kind": kinds,
        }


# Path ends of the calls that only read the site's facts.
_CONFIG_PATHS = ("/auth/status", "/config", "/version", "/users/self")
_METADATA_ENDS = ("/info", "/zip_info", "/versions")


def kind_of(
    method: str, path: str, params: Any = None, headers: Any = None, signed: bool = False
) -> str:
    """The kind of one request from its method, its path below the API base (no query),
    its query parameters and headers. `signed`: a GET of object storage's signed URL."""
    params = params or {}
    if method == "DELETE":
        return "delete"
    if method == "POST":
        if path.endswith("/move"):
            return "move"
        if path == "/resolve":
            return "list"
        if path == "/lookup":
            return "lookup"
        if "/files" in path or "/upload" in path:
            return "upload"
        return "create"
    if method == "PUT":
        return "upload" if signed or "/upload" in path else "modify"
    if method not in ("GET", "HEAD"):
        return "other"
    if headers and any(str(h).lower() == "range" for h in headers):
        return "range"
    if path in _CONFIG_PATHS:
        return "config"
    if "info" in params or path.endswith(_METADATA_ENDS):
        return "lookup"
    if signed or "member" in params or "view" in params or path.endswith("/download"):
        return "download"
    if "limit" in params:
        return "list"
    return "lookup"
