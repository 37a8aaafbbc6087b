"""The mount's process: going to the background with a readiness pipe, the pid file, and
`fwfs unmount` (unmount, then wait for the daemon to finish its uploads and exit).

libfuse's own daemonising forks after the Python thread pools exist, and threads do not
survive a fork; python-daemon has no readiness channel. Hence this module.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from fwfs.uploads import uploads_running

READY_TIMEOUT = 60.0


def cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


def pid_file(mountpoint: Path) -> Path:
    """Where the daemon of `mountpoint` leaves its pid, for `fwfs unmount` to wait on."""
    digest = hashlib.sha256(str(mountpoint).encode()).hexdigest()[:16]
    return cache_home() / "fwfs" / "run" / f"{digest}.pid"


def control_socket(real_mountpoint: str) -> Path:
    """Where the daemon of a mount point answers `fwfs status` (fwfs/control.py), beside
    the pid files. Named by the mount point as the kernel lists it (symlinks resolved);
    the caller resolves it, since resolving a mounted path would ask the mount."""
    digest = hashlib.sha256(real_mountpoint.encode()).hexdigest()[:16]
    return cache_home() / "fwfs" / "run" / f"{digest}.sock"


def write_pid_file(mountpoint: Path, spool: Path | None) -> None:
    """Best effort: without it `fwfs unmount` only does not wait for the uploads."""
    path = pid_file(mountpoint)
    with contextlib.suppress(OSError):
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        record = {"pid": os.getpid(), "spool": str(spool) if spool is not None else ""}
        path.write_text(json.dumps(record) + "\n")


def remove_pid_file(mountpoint: Path) -> None:
    """Removes the file if this process wrote it (a later mount may have replaced it)."""
    path = pid_file(mountpoint)
    with contextlib.suppress(OSError):
        if _read_pid_file(path)[0] == os.getpid():
            path.unlink()


def daemonize(serve: Callable[[Callable[[], None]], int]) -> int:
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


def unmount(mountpoint: Path, *, lazy: bool, timeout: float) -> int:
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
        running = uploads_running(spool) if busy and spool is not None else 0
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
    pid, spool = _read_pid_file(pid_file(mountpoint))
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
