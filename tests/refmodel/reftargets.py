"""The two things the reference model (refmachine.py) drives: tests/targets.py's os-like
targets, a real FUSE mount and FlywheelFS itself, with what the machine needs beyond them:

- time: a mount's is the monotonic clock and a wait sleeps; the model tier's is a `Clock`
  the machine advances (a wait costs nothing, and nothing happens between two readings);
- `scandir` (names with d_type), `fstat` of an open handle, `mmap` (a mount's only);
- `faults`: the model tier's site client is a `FaultyClient` the machine arms.
"""

from __future__ import annotations

import mmap
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from mountkit import Mount, wait_for
from targets import ModelTarget, MountTarget, Stat

from fwfs.client import FlywheelClient
from fwfs.config import ClientConfig, MountConfig
from fwfs.errors import FwfsError
from fwfs.fs import FlywheelFS
from fwfs.testing.faults import Clock, FaultyClient


class Driver(Protocol):
    """What refmachine.py asks of a target. Paths are relative to the root ("g/P-1/x")."""

    ttl: float  # the metadata TTL
    slack: float  # the daemon's own time between its freshness check and the answer
    faults: FaultyClient | None  # None: this target takes no faults

    def now(self) -> float: ...
    def pause(self, seconds: float) -> None: ...
    def wait_for(self, ready: Callable[[], bool], what: str) -> None: ...
    def alive(self) -> bool: ...
    def scandir(self, path: str) -> dict[str, bool]: ...
    def stat(self, path: str) -> Stat: ...
    def getxattr(self, path: str, name: str) -> bytes: ...
    def open(self, path: str, flags: int, mode: int = 0o644) -> int: ...
    def fstat(self, fd: int) -> Stat: ...
    def pread(self, fd: int, size: int, offset: int) -> bytes: ...
    def write(self, fd: int, data: bytes) -> int: ...
    def close(self, fd: int) -> None: ...
    def mmap(self, fd: int) -> mmap.mmap | None: ...
    def forget_bytes(self) -> None: ...
    def mkdir(self, path: str) -> None: ...
    def rename(self, old: str, new: str, flags: int = 0) -> None: ...


class MountDriver(MountTarget):
    faults: FaultyClient | None = None

    def __init__(self, mount: Mount, ttl: float, slack: float) -> None:
        super().__init__(mount.path)
        self.mount = mount
        self.ttl = ttl
        self.slack = slack

    def now(self) -> float:
        return time.monotonic()

    def pause(self, seconds: float) -> None:
        time.sleep(seconds)

    def wait_for(self, ready: Callable[[], bool], what: str) -> None:
        wait_for(ready, what=what)

    def alive(self) -> bool:
        return bool(self.mount.alive)

    def scandir(self, path: str) -> dict[str, bool]:
        with os.scandir(self.path(path)) as it:
            return {e.name: e.is_dir(follow_symlinks=False) for e in it}

    def fstat(self, fd: int) -> Stat:
        st = os.fstat(fd)
        return Stat(st.st_mode, st.st_size, st.st_mtime)

    def mmap(self, fd: int) -> mmap.mmap | None:
        return mmap.mmap(fd, 0, access=mmap.ACCESS_READ)

    def forget_bytes(self) -> None:
        """Nothing to do: the daemon's cache is out of reach (no faults here either)."""


class ModelDriver(ModelTarget):
    """FlywheelFS on `site` (as its admin), through a `FaultyClient`, on a `Clock`."""

    slack = 0.0  # the clock stands still while FlywheelFS answers

    def __init__(self, site: Any, spool: Path, ttl: float) -> None:
        self.ttl = ttl
        self.clock = Clock()
        self.client = FlywheelClient(
            ClientConfig.from_api_key(site.api_key, retries=1, total_timeout=10, read_timeout=20)
        )
        self.faults: FaultyClient | None = FaultyClient(self.client)
        config = MountConfig(
            metadata_ttl=ttl, read_only=False, spool_dir=spool, uid=os.getuid(), gid=os.getgid()
        )
        user = self.client.auth_status()["user_id"]
        super().__init__(FlywheelFS(self.faults, config, user, clock=self.clock))
        self._dirs: dict[int, str] = {}  # directories open for reading
        self._dir_fds = iter(range(1 << 30, 1 << 31))  # far from the model's file handles

    def shutdown(self) -> None:
        for fd in [*self._open, *self._dirs]:
            self.close(fd)
        self.fs.close()
        self.client.close()

    def now(self) -> float:
        return self.clock()

    def pause(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def wait_for(self, ready: Callable[[], bool], what: str) -> None:
        # A release is done when close returns here: only a thread of FlywheelFS (a
        # SwapVersion's upload on a read ahead) may still be at work.
        for _ in range(500):
            if ready():
                return
            time.sleep(0.01)
        raise AssertionError(f"waited in vain for {what}")

    def alive(self) -> bool:
        return True

    def scandir(self, path: str) -> dict[str, bool]:
        try:
            return {n: stat.S_ISDIR(a.mode) for n, a in self.fs.readdir(path)}
        except FwfsError as err:
            raise OSError(err.errno, str(err), path) from None

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        reading = flags & (os.O_ACCMODE | os.O_CREAT) == os.O_RDONLY
        # open(2) of a directory for reading is the kernel's opendir: it succeeds.
        if reading and stat.S_ISDIR(self.stat(path).mode):
            fd = next(self._dir_fds)
            self._dirs[fd] = path
            return fd
        return super().open(path, flags, mode)

    def fstat(self, fd: int) -> Stat:
        # The kernel asks for the attributes of the inode the handle is open on.
        return self.stat(self._dirs[fd] if fd in self._dirs else self._handle(fd).path)

    def close(self, fd: int) -> None:
        if self._dirs.pop(fd, None) is None:
            super().close(fd)

    def mmap(self, fd: int) -> mmap.mmap | None:
        return None  # no page cache to map without a kernel

    def forget_bytes(self) -> None:
        """Drop the file blocks FlywheelFS holds, so the next read asks the site."""
        self.fs.cache.clear()

    def rename(self, old: str, new: str, flags: int = 0) -> None:
        super().rename(old, new, flags)
        for h in self._open.values():
            if h.path == old:
                h.path = new  # the inode moved, and its open handles with it
