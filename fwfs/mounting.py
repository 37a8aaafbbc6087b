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
import dataclasses
import hashlib
import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

from fwfs.client import FlywheelClient, Json
from fwfs.config import (
    ClientConfig,
    MountConfig,
    TrustConfig,
    WalkAheadConfig,
    load_api_key,
    tls_verify_from_env,
)
from fwfs.errors import FwfsError
from fwfs.fs import FlywheelFS, check_spool, running_uploads
from fwfs.fuse_ops import FuseOperations, mount
from fwfs.site import SiteClient

log = logging.getLogger("fwfs")

READY_TIMEOUT = 60.0
_CONNECT_BUDGET = 10.0
_M_ARENA_MAX = -8  # mallopt parameters, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3


def fuse_options(values: list[str]) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    for value in values:
        for item in value.split(","):
            if not item:
                continue
            key, eq, val = item.partition("=")
            opts[key] = val if eq else True
    return opts


def _cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


def default_spool_dir(base_url: str, mountpoint: Path) -> Path:
    """One spool per site and mountpoint, found again by the next mount of the same pair:
    that mount finishes or reports what this one left behind."""
    digest = hashlib.sha256(f"{base_url}\n{mountpoint}".encode()).hexdigest()[:16]
    return _cache_home() / "fwfs" / "spool" / digest


def _pid_file(mountpoint: Path) -> Path:
    """Where the daemon of `mountpoint` leaves its pid, for `fwfs unmount` to wait on."""
    digest = hashlib.sha256(str(mountpoint).encode()).hexdigest()[:16]
    return _cache_home() / "fwfs" / "run" / f"{digest}.pid"


def mount_config(
    args: argparse.Namespace, base_url: str, mountpoint: Path, audit_trail: bool = False
) -> MountConfig:
    return MountConfig(
        metadata_ttl=args.metadata_ttl,
        negative_ttl=getattr(args, "negative_ttl", 5.0),
        cache_size=args.cache_size,
        read_only=args.read_only,
        uid=os.getuid(),
        gid=os.getgid(),
        archives=not args.no_archives,
        list_archives=args.list_archives,
        spool_dir=(args.spool_dir or default_spool_dir(base_url, mountpoint)).absolute(),
        allow_delete=args.allow_delete,
        retry_recovery=args.retry_failed_uploads,
        delete_reason=args.delete_reason,
        audit_trail=audit_trail,
        walk_ahead=WalkAheadConfig(files=getattr(args, "walk_ahead", 16)),
    )


def _check_spool(config: MountConfig) -> str | None:
    """A spool another fwfs holds, or one we may not use, fails the mount here and now."""
    if config.read_only or config.spool_dir is None:
        return None
    try:
        check_spool(config.spool_dir)
    except FwfsError as err:
        return str(err)
    return None


def _check_mountpoint(mountpoint: Path) -> str | None:
    if not mountpoint.is_dir():
        return f"mountpoint {mountpoint} is not a directory"
    if os.path.ismount(mountpoint):
        return f"mountpoint {mountpoint} is busy: something is mounted there already"
    return None


class _Facts(NamedTuple):
    """What the mount needs to know about the site, learnt once when it connects."""

    user_id: str | None
    audit_trail: bool
    # `/config` and when it was asked (time.monotonic()): the client's first upload
    # then needs no `/config` of its own. None when the site did not answer it.
    site_config: tuple[Json, float] | None = None


def _connect(client_config: ClientConfig) -> tuple[_Facts, str | None]:
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
            return _Facts(None, False), f"cannot use the site at {client_config.base_url}: {err}"
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
    return _Facts(user_id, audit, (site, asked_at) if answered else None), None


def _informative(future: Future[Json]) -> Json:
    try:
        return future.result()
    except FwfsError as err:
        log.warning("the site did not say: %s", err)
        return {}


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
    facts, problem = _connect(client_config)
    config = mount_config(args, client_config.base_url, mountpoint, facts.audit_trail)
    problem = problem or _check_spool(config)
    if problem:
        print(f"fwfs: {problem}", file=sys.stderr)
        return 1
    options = fuse_options(args.fuse_options)
    if args.read_only:
        options["ro"] = True
    site = _Site(client_config, facts.user_id, facts.site_config)
    if args.foreground:
        return _serve(site, config, mountpoint, options, on_ready=None)
    return _daemonize(lambda ready: _serve(site, config, mountpoint, options, ready))


def _libc() -> ctypes.CDLL:
    """glibc, for its malloc tunables (OSError or AttributeError where it is not glibc)."""
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def _limit_malloc_arenas() -> None:
    """glibc gives each thread its own malloc arena; with a pool of readers moving 8 MiB
    bodies, freed memory then sits in many arenas and the daemon's RSS outgrows its cache
    budget. Two arenas keep it within (measured: 433 -> 403 MiB peak, 256M cache).

    Response bodies of up to 8 MiB each would be fresh mmaps, page-faulted in and unmapped
    again per request; served from the heap below 16 MiB they are reused (measured on a
    1 GiB cold read: 205k -> 100k page faults, daemon CPU 1.12 -> 0.98 s)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = _libc()
        libc.mallopt(_M_ARENA_MAX, 2)
        libc.mallopt(_M_MMAP_THRESHOLD, 16 << 20)


class _Site(NamedTuple):
    config: ClientConfig
    user_id: str | None
    site_config: tuple[Json, float] | None = None  # `_Facts.site_config`


def _trim_memory(stop: threading.Event, every: float = 5.0) -> None:
    """glibc keeps freed response bodies (up to 8 MiB each) in its per-thread pools: after a
    load the daemon's RSS stayed ~50 MiB over its live memory (malloc_trim: 145 -> 97 MiB).
    Handing free pages back every few seconds keeps the resting RSS at what is in use."""
    try:
        trim = _libc().malloc_trim
    except (OSError, AttributeError):
        return
    while not stop.wait(every):
        trim(0)


def _as_site(client: FlywheelClient) -> SiteClient:
    """Where mypy proves that ``FlywheelClient`` keeps the contract ``fs/`` is written to."""
    return client


def _serve(
    site: _Site,
    config: MountConfig,
    mountpoint: Path,
    options: dict[str, Any],
    on_ready: Callable[[], None] | None,
) -> int:
    _limit_malloc_arenas()
    client = FlywheelClient(site.config)
    if site.site_config is not None:
        client.note_site_config(*site.site_config)
    try:
        fs = FlywheelFS(_as_site(client), config, site.user_id)
    except FwfsError as err:
        log.error("cannot mount %s: %s", mountpoint, err)
        client.close()
        return 1
    pid_file = _pid_file(mountpoint)

    def ready() -> None:
        with contextlib.suppress(OSError):
            pid_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            spool = str(config.spool_dir) if fs.writes is not None else ""
            pid_file.write_text(json.dumps({"pid": os.getpid(), "spool": spool}) + "\n")
        if fs.writes is not None:
            # What a previous run left pending is finished (or reported) while this one
            # serves; an unmount waits for it like for any other upload.
            threading.Thread(target=fs.writes.recover, name="fwfs-recover", daemon=True).start()
        if on_ready is not None:
            on_ready()

    ops = FuseOperations(fs, config, on_ready=ready)
    stop_trim = threading.Event()
    threading.Thread(target=_trim_memory, args=(stop_trim,), name="fwfs-trim", daemon=True).start()
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
        stop_trim.set()
        fs.close()
        client.close()
        with contextlib.suppress(OSError):
            if _read_pid_file(pid_file)[0] == os.getpid():
                pid_file.unlink()
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


def unmount(mountpoint: Path, lazy: bool = False, timeout: float = 3600.0) -> int:
    """Unmount, then wait (up to `timeout`) for the daemon to finish its uploads and exit.

    A program still in close() is uploading, and the kernel calls the mount busy until it
    returns: while the spool's journal shows an upload running, a busy mount is tried again
    (until the timeout). Busy for any other reason (a shell inside, a file open for
    reading) fails at once, as umount does."""
    path = mountpoint.expanduser().absolute()
    target = str(path)
    for tool in ("fusermount3", "fusermount"):
        if shutil.which(tool):
            cmd = [tool, "-u", *(["-z"] if lazy else []), target]
            break
    else:
        cmd = ["umount", *(["-l"] if lazy else []), target]
    pid, spool = _daemon_pid(path)
    deadline = time.monotonic() + timeout
    told = False
    while True:
        result = subprocess.run(cmd, check=False, capture_output=True, text=True)
        if result.returncode == 0:
            break
        busy = "busy" in result.stderr.lower()
        running = running_uploads(spool) if busy and spool is not None else 0
        if not running or time.monotonic() > deadline:
            sys.stderr.write(result.stderr)
            return result.returncode
        if not told:
            print(f"fwfs: waiting for {running} upload(s) to finish", file=sys.stderr)
            told = True
        time.sleep(0.5)
    # Lazily detached, the daemon serves its open files on: nothing to wait for.
    if pid is not None and not lazy and not _wait_exit(pid, deadline):
        print(f"fwfs: the daemon (pid {pid}) is still finishing uploads", file=sys.stderr)
        return 1
    return 0


def _read_pid_file(path: Path) -> tuple[int | None, Path | None]:
    try:
        record = json.loads(path.read_text())
        pid, spool = int(record["pid"]), record.get("spool")
    except (OSError, ValueError, KeyError, TypeError):
        return None, None
    return pid, (Path(spool) if isinstance(spool, str) and spool else None)


def _daemon_pid(mountpoint: Path) -> tuple[int | None, Path | None]:
    """The daemon serving `mountpoint` and its spool, from the file it left at mount."""
    pid, spool = _read_pid_file(_pid_file(mountpoint))
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes() if pid else b""
    except OSError:
        cmdline = b""
    # A stale file may name a pid reused by another program: only ever wait on fwfs.
    return (pid, spool) if b"fwfs" in cmdline else (None, None)


def _wait_exit(pid: int, deadline: float) -> bool:
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists():
            return True
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        stat = Path(f"/proc/{pid}/stat")
        with contextlib.suppress(OSError):
            if stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True  # exited; only its parent's wait is missing
        time.sleep(0.1)
    return False


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
        # A demo site with its own CA (`--private-ca`, `--strict`) is trusted by that CA.
        ca = info.get("ca_cert")
        trust = TrustConfig(ca_file=ca, ca_file_source="the demo site") if ca else True
        client_config = ClientConfig.from_api_key(info["api_key"], verify=trust)
        config = MountConfig(
            metadata_ttl=args.metadata_ttl,
            cache_size=args.cache_size,
            read_only=False,
            uid=os.getuid(),
            gid=os.getgid(),
            spool_dir=default_spool_dir(client_config.base_url, mountpoint),
        )

        def ready() -> None:
            print(f"fwfs demo: site {info['url']} mounted at {mountpoint}", flush=True)
            print(f"  ls {mountpoint}/flywheel/'Anxiety Study'", flush=True)
            print(f"  SDK key: {info['api_key']}", flush=True)
            print("  Ctrl-C unmounts and stops the site.", flush=True)

        facts, problem = _connect(client_config)
        config = dataclasses.replace(config, audit_trail=facts.audit_trail)
        problem = problem or _check_spool(config)
        if problem:
            print(f"fwfs: {problem}", file=sys.stderr)
            return 1
        site_facts = _Site(client_config, facts.user_id, facts.site_config)
        return _serve(site_facts, config, mountpoint, {}, ready)
    finally:
        site.stop()
