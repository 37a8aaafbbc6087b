"""What `fwfs status` shows of a running mount, and what `fwfs refresh` does in it: the
daemon's side of the control channel (fwfs/control.py), gathered from the layers that
count (the adapter's `Served`, the client's `RequestStats`, the model's block cache, the
spool's journal). Nothing here is in any request path: a question costs only its answer.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from fwfs import daemon
from fwfs.client import FlywheelClient
from fwfs.control import ControlServer
from fwfs.fs import FlywheelFS
from fwfs.fuse_ops import FuseOperations
from fwfs.uploads.journal import RUNNING, State, peek

log = logging.getLogger("fwfs.control")


def uploads(spool: Path | None) -> dict[str, list[dict[str, Any]]]:
    """The spool's entries by where they stand, read from its journal: `running` (being
    sent), `queued` (complete, waiting to be sent: fsync'ed, or a failed close() to try
    again), `writing` (still open), `failed` (kept in recovery/, not uploaded)."""
    out: dict[str, list[dict[str, Any]]] = {
        "running": [],
        "queued": [],
        "writing": [],
        "failed": [],
    }
    if spool is None:
        return out
    for where, directory in (("staging", spool / "journal"), ("recovery", spool / "recovery")):
        for record in peek(directory):
            target = record.get("target")
            item = {
                "path": target.get("path") if isinstance(target, dict) else None,
                "state": record.get("state"),
                "size": record.get("size"),
                "attempts": record.get("attempts"),
            }
            if record.get("last_error"):
                item["error"] = record.get("last_error")
                item["errno"] = record.get("errno")
            state = record.get("state")
            if where == "recovery" or state == State.FAILED:
                out["failed"].append(item)
            elif state in RUNNING:
                out["running"].append(item)
            elif state == State.SYNCED:
                out["queued"].append(item)
            else:
                out["writing"].append(item)
    for items in out.values():
        items.sort(key=lambda i: str(i["path"]))
    return out


class Status:
    """The answers of one mount's control channel."""

    def __init__(
        self,
        mountpoint: Path,
        site_url: str,
        fs: FlywheelFS,
        client: FlywheelClient,
        ops: FuseOperations,
    ) -> None:
        self.mountpoint = mountpoint
        self.site_url = site_url
        self.fs = fs
        self.client = client
        self.ops = ops
        self.started = time.time()

    def report(self, request: dict[str, Any] | None = None) -> dict[str, Any]:
        served = self.ops.served.snapshot()
        requests = self.client.stats.snapshot()
        memory = self.fs.cache_stats()
        writes = self.fs.writes
        return {
            "mountpoint": str(self.mountpoint),
            "pid": os.getpid(),
            # The site's address only: the key stays in the client.
            "site": self.site_url,
            "uptime_s": round(time.time() - self.started, 1),
            "read_only": writes is None,
            "memory_cache": memory,
            "disk_cache": self.disk_cache(),
            "bytes_served": served["bytes_served"],
            "bytes_fetched": requests["bytes_fetched"],
            "requests": {"total": requests["requests"], "by_kind": requests["by_kind"]},
            "uploads": uploads(writes.spool.root if writes is not None else None),
            "errors": served["errors"],
        }

    def disk_cache(self) -> Any:
        """The disk cache's own counters (`DiskCache.stats()`, fwfs/diskcache.py) when the
        mount has one (`--disk-cache`), else "off"."""
        disk = getattr(self.fs, "disk", None)
        stats = getattr(disk, "stats", None)
        if not callable(stats):
            return "off"
        counters = stats()
        return (
            asdict(counters)
            if is_dataclass(counters) and not isinstance(counters, type)
            else counters
        )

    def refresh(self, request: dict[str, Any]) -> dict[str, Any]:
        path = request.get("path")
        if not isinstance(path, str):
            raise ValueError("refresh needs a path")
        forgotten = self.fs.refresh(path)
        log.info("refresh %r: %d listing(s) forgotten", path, forgotten)
        return {"path": path, "forgotten": forgotten}


def start_control(
    mountpoint: Path, site_url: str, fs: FlywheelFS, client: FlywheelClient, ops: FuseOperations
) -> ControlServer | None:
    """The control channel of the mount at `mountpoint`, serving; None (and a log line) if
    its socket cannot be made: the mount works on without `fwfs status`."""
    status = Status(mountpoint, site_url, fs, client, ops)
    path = daemon.control_socket(os.path.realpath(mountpoint))
    server = ControlServer(path, {"status": status.report, "refresh": status.refresh})
    try:
        server.start()
    except OSError as err:
        log.warning(
            "no control socket at %s (%s): `fwfs status` will not reach this mount", path, err
        )
        return None
    return server
