"""Signing in to a site, and the model's settings, for every in-process user of the model:
`fwfs mount` (wiring.py), `fwfs prefetch` and `flywheel://` (fwfs/remote/).

Nothing here imports the FUSE adapter, so `flywheel://` and `fwfs prefetch --cache-dir`
work where libfuse is missing (mfusepy raises on import there).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from fwfs import daemon
from fwfs.client import FlywheelClient, Json
from fwfs.config import ClientConfig, MountConfig, WalkAheadConfig
from fwfs.errors import FwfsError
from fwfs.options import option

log = logging.getLogger("fwfs")

_CONNECT_BUDGET = 10.0


def default_spool_dir(base_url: str, mountpoint: Path) -> Path:
    """One spool per site and mountpoint, found again by the next mount of the same pair:
    that mount finishes or reports what this one left behind."""
    digest = hashlib.sha256(f"{base_url}\n{mountpoint}".encode()).hexdigest()[:16]
    return daemon.cache_home() / "fwfs" / "spool" / digest


def default_cache_dir(base_url: str) -> Path:
    """One disk cache per site, shared by all its mounts: a block is named by its file
    version, which means the same bytes from any mountpoint."""
    host = urlsplit(base_url).netloc.replace("/", "_") or "site"
    return daemon.cache_home() / "fwfs" / "cache" / host


def mount_config(
    args: argparse.Namespace, base_url: str, mountpoint: Path, audit_trail: bool = False
) -> MountConfig:
    """The model's settings from the flags; a flag the command does not take (`fwfs demo`
    takes only some) has the table's default."""

    def given(name: str) -> Any:
        return getattr(args, name, option(name).default)

    return MountConfig(
        metadata_ttl=given("metadata_ttl"),
        negative_ttl=given("negative_ttl"),
        cache_size=given("cache_size"),
        read_only=given("read_only"),
        uid=os.getuid(),
        gid=os.getgid(),
        archives=not given("no_archives"),
        list_archives=given("list_archives"),
        list_bids=given("list_bids"),
        bids_sourcedata=given("bids_sourcedata"),
        spool_dir=(given("spool_dir") or default_spool_dir(base_url, mountpoint)).absolute(),
        disk_cache=given("disk_cache"),
        cache_dir=(given("cache_dir") or default_cache_dir(base_url)).absolute(),
        allow_delete=given("allow_delete"),
        retry_recovery=given("retry_failed_uploads"),
        delete_reason=given("delete_reason"),
        audit_trail=audit_trail,
        walk_ahead=WalkAheadConfig(files=given("walk_ahead")),
    )


class Facts(NamedTuple):
    """What the mount needs to know about the site, learnt once when it connects."""

    user_id: str | None
    audit_trail: bool
    # `/config` and when it was asked (time.monotonic()): the client's first upload
    # then needs no `/config` of its own. None when the site did not answer it.
    site_config: tuple[Json, float] | None = None


def connect(client_config: ClientConfig) -> tuple[Facts, str | None]:
    """`sign_in`, for a command that reports to a person: (facts, None), or (empty facts,
    why not) for stderr."""
    try:
        return sign_in(client_config), None
    except FwfsError as err:
        return Facts(None, False), f"cannot use the site at {client_config.base_url}: {err}"


def sign_in(client_config: ClientConfig) -> Facts:
    """Checks the key and the site before anything else is done: who the key is, and what
    the site says of itself. Raises the FwfsError of `/auth/status`.

    `/auth/status` decides; `/version` and `/config` only inform (the release goes to the
    log, for bug reports; `/config` says whether deletes need a reason). The three go out
    together, so connecting costs one round trip, not three.

    A person is waiting at the prompt: a site that does not answer fails the mount within
    `_CONNECT_BUDGET` seconds (retries included), not the minute a read may take."""
    quick = dataclasses.replace(
        client_config, total_timeout=min(client_config.total_timeout, _CONNECT_BUDGET)
    )
    asked_at = time.monotonic()
    with FlywheelClient(quick) as client, ThreadPoolExecutor(3) as pool:
        asked = [
            pool.submit(call) for call in (client.auth_status, client.version, client.site_config)
        ]
        status = asked[0].result()
        version, site = (_informative(future) for future in asked[1:])
        answered = asked[2].exception() is None
    user = status.get("user_id")
    origin = status.get("origin")
    if not isinstance(user, str) and isinstance(origin, dict) and origin.get("type") == "user":
        user = origin.get("id")  # cores before user_id was added (D11) still say who
    user_id = user if isinstance(user, str) and user else None
    release = version.get("flywheel_release") or version.get("release") or "unknown"
    features = site.get("features")
    audit = isinstance(features, dict) and bool(features.get("audit_trail"))
    log.info(
        "signed in to %s as %s; release %s%s",
        client_config.base_url,
        user_id or "?",
        release,
        "; deletes need a reason (audit trail)" if audit else "",
    )
    return Facts(user_id, audit, (site, asked_at) if answered else None)


def _informative(future: Future[Json]) -> Json:
    try:
        return future.result()
    except FwfsError as err:
        log.warning("the site did not say: %s", err)
        return {}
