"""`fwfs mount`: the layers wired together from the parsed options and the environment.

It builds the typed configs, checks the key and the site before anything goes to the
background, builds the client and the filesystem model, and mounts them. `run_mount`
returns only when the mount is ready (exit 0) or has failed (non-zero, with the reason on
stderr); the process around it is daemon.py's, the Linux tuning linux.py's.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from fwfs import daemon, linux, report
from fwfs.client import FlywheelClient, Json
from fwfs.config import (
    ClientConfig,
    MountConfig,
    WalkAheadConfig,
    load_api_key,
    tls_verify_from_env,
)
from fwfs.errors import FwfsError
from fwfs.fs import FlywheelFS
from fwfs.fuse_ops import FuseOperations, mount
from fwfs.options import option
from fwfs.site import SiteClient
from fwfs.uploads import RetryPolicy, check_spool

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


def spool_problem(config: MountConfig) -> str | None:
    """A spool another fwfs holds, or one we may not use, fails the mount here and now."""
    if config.read_only or config.spool_dir is None:
        return None
    try:
        check_spool(config.spool_dir)
    except FwfsError as err:
        return str(err)
    return None


def mountpoint_problem(mountpoint: Path) -> str | None:
    if not mountpoint.is_dir():
        return f"mountpoint {mountpoint} is not a directory"
    if os.path.ismount(mountpoint):
        return f"mountpoint {mountpoint} is busy: something is mounted there already"
    return None


class Facts(NamedTuple):
    """What the mount needs to know about the site, learnt once when it connects."""

    user_id: str | None
    audit_trail: bool
    # `/config` and when it was asked (time.monotonic()): the client's first upload
    # then needs no `/config` of its own. None when the site did not answer it.
    site_config: tuple[Json, float] | None = None


def connect(client_config: ClientConfig) -> tuple[Facts, str | None]:
    """Checks the key and the site before going to the background: (facts, error).

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
        try:
            status = asked[0].result()
        except FwfsError as err:
            return Facts(None, False), f"cannot use the site at {client_config.base_url}: {err}"
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
    return Facts(user_id, audit, (site, asked_at) if answered else None), None


def _informative(future: Future[Json]) -> Json:
    try:
        return future.result()
    except FwfsError as err:
        log.warning("the site did not say: %s", err)
        return {}


class SignedIn(NamedTuple):
    """A checked key: the client's settings, who it is, and the site's `/config`."""

    config: ClientConfig
    user_id: str | None
    site_config: tuple[Json, float] | None = None  # `Facts.site_config`


def run_mount(args: argparse.Namespace) -> int:
    mountpoint = args.mountpoint.expanduser().absolute()
    problem = mountpoint_problem(mountpoint)
    if problem:
        print(f"fwfs: {problem}", file=sys.stderr)
        return 1
    try:
        key, source = load_api_key(args.api_key, os.environ, Path.home())
        if args.api_key:
            log.warning("the API key given with --api-key is visible to other users in `ps`")
        client_config = ClientConfig.from_api_key(key, verify=tls_verify_from_env(os.environ))
    except FwfsError as err:
        print(f"fwfs: {err}", file=sys.stderr)
        return 1
    log.info("API key from %s", source)
    facts, problem = connect(client_config)
    config = mount_config(args, client_config.base_url, mountpoint, facts.audit_trail)
    problem = problem or spool_problem(config)
    if problem:
        print(f"fwfs: {problem}", file=sys.stderr)
        return 1
    options = linux.fuse_options(args.fuse_options)
    if args.read_only:
        options["ro"] = True
    site = SignedIn(client_config, facts.user_id, facts.site_config)
    if args.foreground:
        return serve(site, config, mountpoint, options, on_ready=None)
    return daemon.daemonize(lambda ready: serve(site, config, mountpoint, options, ready))


def _as_site(client: FlywheelClient) -> SiteClient:
    """Where mypy proves that ``FlywheelClient`` keeps the contract ``fs/`` is written to."""
    return client


def serve(
    site: SignedIn,
    config: MountConfig,
    mountpoint: Path,
    options: dict[str, Any],
    on_ready: Callable[[], None] | None,
) -> int:
    """Builds the client and the model, and serves the mount until it is unmounted."""
    linux.limit_malloc_arenas()
    client = FlywheelClient(site.config)
    if site.site_config is not None:
        client.note_site_config(*site.site_config)
    try:
        retry = RetryPolicy.from_config(site.config)
        fs = FlywheelFS(_as_site(client), config, site.user_id, upload_retry=retry)
    except FwfsError as err:
        log.error("cannot mount %s: %s", mountpoint, err)
        client.close()
        return 1

    def ready() -> None:
        daemon.write_pid_file(mountpoint, config.spool_dir if fs.writes is not None else None)
        if fs.writes is not None:
            # What a previous run left pending is finished (or reported) while this one
            # serves; an unmount waits for it like for any other upload.
            threading.Thread(target=fs.writes.recover, name="fwfs-recover", daemon=True).start()
        if on_ready is not None:
            on_ready()

    ops = FuseOperations(fs, config, on_ready=ready)
    # `fwfs status` and `fwfs refresh` (fwfs/control.py): up before the kernel lists the mount.
    control = report.start_control(mountpoint, site.config.base_url, fs, client, ops)
    stop_trim = threading.Event()
    threading.Thread(
        target=linux.trim_memory, args=(stop_trim,), name="fwfs-trim", daemon=True
    ).start()
    linux.raise_readahead(str(mountpoint), ops.ready)
    try:
        mount(ops, str(mountpoint), foreground=True, options=options)
    except RuntimeError as err:
        # libfuse reports a loop ended by SIGTERM or Ctrl-C as an error too.
        if ops.ready.is_set() and not os.path.ismount(mountpoint):
            log.info("unmounted %s (%s)", mountpoint, err)
            return 0
        log.error("mount of %s failed: %s", mountpoint, err)
        return 1
    finally:
        if control is not None:
            control.close()
        stop_trim.set()
        fs.close()
        client.close()
        daemon.remove_pid_file(mountpoint)
    return 0
