"""`fwfs mount`: the layers wired together from the parsed options and the environment.

It builds the typed configs, checks the key and the site before anything goes to the
background, builds the client and the filesystem model, and mounts them. `run_mount`
returns only when the mount is ready (exit 0) or has failed (non-zero, with the reason on
stderr); the process around it is daemon.py's, the Linux tuning linux.py's.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from fwfs import daemon, linux, report
from fwfs.client import FlywheelClient, Json
from fwfs.config import (
    ClientConfig,
    MountConfig,
    load_api_key,
    tls_verify_from_env,
)
from fwfs.errors import FwfsError
from fwfs.fs import FlywheelFS
from fwfs.fuse_ops import FuseOperations, mount
from fwfs.inprocess import connect, mount_config
from fwfs.site import SiteClient
from fwfs.uploads import RetryPolicy, check_spool

log = logging.getLogger("fwfs")


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
