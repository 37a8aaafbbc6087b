"""`fwfs mount`, `fwfs unmount` and `fwfs demo`: wiring of the layers, daemonising, readiness.

Part of the CLI layer: it builds the typed configs from the parsed arguments and the
environment, checks the key before anything goes to the background, and returns only when
the mount is ready (exit 0) or has failed (non-zero, with the reason on stderr).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fwfs.client import FlywheelClient
from fwfs.config import ClientConfig, MountConfig, load_api_key, tls_verify_from_env
from fwfs.errors import FwfsError
from fwfs.fs import FlywheelFS
from fwfs.fuse_ops import FuseOperations, mount

log = logging.getLogger("fwfs")

READY_TIMEOUT = 60.0
_M_ARENA_MAX = -8  # mallopt parameter, from glibc's malloc.h


def fuse_options(values: list[str]) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    for value in values:
        for item in value.split(","):
            if not item:
                continue
            key, eq, val = item.partition("=")
            opts[key] = val if eq else True
    return opts


def mount_config(args: argparse.Namespace) -> MountConfig:
    return MountConfig(
        metadata_ttl=args.metadata_ttl,
        negative_ttl=getattr(args, "negative_ttl", 5.0),
        cache_size=args.cache_size,
        # Writes arrive with uploads (a later release): until then every mount is read-only.
        read_only=True,
        uid=os.getuid(),
        gid=os.getgid(),
        archives=not args.no_archives,
        list_archives=args.list_archives,
    )


def _check_mountpoint(mountpoint: Path) -> str | None:
    if not mountpoint.is_dir():
        return f"mountpoint {mountpoint} is not a directory"
    if os.path.ismount(mountpoint):
        return f"mountpoint {mountpoint} is busy: something is mounted there already"
    return None


def _connect(client_config: ClientConfig) -> str | None:
    """Checks the key and the site before going to the background; returns an error."""
    try:
        with FlywheelClient(client_config) as client:
            status = client.auth_status()
    except FwfsError as err:
        return f"cannot use the site at {client_config.base_url}: {err}"
    log.info("signed in to %s as %s", client_config.base_url, status.get("user_id", "?"))
    return None


def run_mount(args: argparse.Namespace) -> int:
    mountpoint = args.mountpoint.expanduser().absolute()
    problem = _check_mountpoint(mountpoint)
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
    problem = _connect(client_config)
    if problem:
        print(f"fwfs: {problem}", file=sys.stderr)
        return 1
    config = mount_config(args)
    options = fuse_options(args.fuse_options)
    if args.read_only:
        options["ro"] = True
    if args.foreground:
        return _serve(client_config, config, mountpoint, options, on_ready=None)
    return _daemonize(lambda ready: _serve(client_config, config, mountpoint, options, ready))


def _limit_malloc_arenas() -> None:
    """glibc gives each thread its own malloc arena; with a pool of readers moving 8 MiB
    bodies, freed memory then sits in many arenas and the daemon's RSS outgrows its cache
    budget. Two arenas keep it within (measured: 433 -> 403 MiB peak, 256M cache)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(_M_ARENA_MAX, 2)


def _serve(
    client_config: ClientConfig,
    config: MountConfig,
    mountpoint: Path,
    options: dict[str, Any],
    on_ready: Callable[[], None] | None,
) -> int:
    _limit_malloc_arenas()
    client = FlywheelClient(client_config)
    fs = FlywheelFS(client, config)
    ops = FuseOperations(fs, config, on_ready=on_ready)
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
        fs.close()
        client.close()
    return 0


def _daemonize(serve: Callable[[Callable[[], None]], int]) -> int:
    """Fork; the child serves, the parent waits for its word that the mount is ready."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the daemon
        os.close(read_fd)
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)

        def ready() -> None:
            os.write(write_fd, b"ok\n")
            os.close(write_fd)
            # libfuse's own complaints reached the user's terminal until now.
            os.dup2(devnull, 2)

        code = 1
        try:
            code = serve(ready)
        finally:
            os._exit(code)
    os.close(write_fd)
    ok = False
    with contextlib.closing(os.fdopen(read_fd, "rb")) as pipe:
        readable, _, _ = select.select([pipe], [], [], READY_TIMEOUT)
        if readable:
            ok = pipe.readline().strip() == b"ok"
    if ok:
        return 0
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == 0:  # alive but never ready: do not leave a half-mounted daemon behind
            os.kill(pid, signal.SIGTERM)
    print(
        "fwfs: the mount did not come up (see the messages above, or --log-file)", file=sys.stderr
    )
    return 1


def unmount(mountpoint: Path, lazy: bool = False) -> int:
    target = str(mountpoint.expanduser().absolute())
    for tool in ("fusermount3", "fusermount"):
        if shutil.which(tool):
            cmd = [tool, "-u", *(["-z"] if lazy else []), target]
            break
    else:
        cmd = ["umount", *(["-l"] if lazy else []), target]
    result = subprocess.run(cmd, check=False)
    return result.returncode


def run_demo(args: argparse.Namespace) -> int:
    """The demo site and a mount of it, in the foreground; Ctrl-C ends both."""
    from fwfs.sandbox.server import Sandbox, ServeOptions

    mountpoint = (args.mountpoint or Path("flywheel")).expanduser().absolute()
    mountpoint.mkdir(parents=True, exist_ok=True)
    problem = _check_mountpoint(mountpoint)
    if problem:
        print(f"fwfs: {problem}", file=sys.stderr)
        return 1
    site = Sandbox(ServeOptions.from_args(args, demo=True))
    info = site.announce()
    site.start()
    try:
        client_config = ClientConfig.from_api_key(info["api_key"])
        config = MountConfig(
            metadata_ttl=args.metadata_ttl,
            cache_size=args.cache_size,
            uid=os.getuid(),
            gid=os.getgid(),
        )

        def ready() -> None:
            print(f"fwfs demo: site {info['url']} mounted at {mountpoint}", flush=True)
            print(f"  ls {mountpoint}/flywheel/'Anxiety Study'", flush=True)
            print(f"  SDK key: {info['api_key']}", flush=True)
            print("  Ctrl-C unmounts and stops the site.", flush=True)

        return _serve(client_config, config, mountpoint, {}, ready)
    finally:
        site.stop()
