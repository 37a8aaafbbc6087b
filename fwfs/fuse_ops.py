"""The FUSE adapter: translates kernel calls into FlywheelFS calls. No policy, no HTTP.

It reaches mfusepy only through fuse_compat, which owns the binding and its patches.
Every callback goes through `_errors`, the one place where exceptions become errnos: an
FwfsError gives its errno, an OSError with an int errno passes through, anything else is
logged once with its traceback and becomes EIO (mfusepy would answer EINVAL, and fusepy
would end the mount).
"""

from __future__ import annotations

import errno
import functools
import itertools
import logging
import os
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar, cast

from fwfs.config import MountConfig
from fwfs.errors import FwfsError, NotPermitted, NotSupported
from fwfs.fs import Attr, FlywheelFS
from fwfs.fuse_compat import ENOATTR, FuseOSError, Operations, PatchedFUSE, check_version

log = logging.getLogger("fwfs.fuse")

F = TypeVar("F", bound=Callable[..., Any])
_LOOKUPS = frozenset({"getattr", "getxattr", "listxattr", "access", "readdir", "readdir_plus"})
_PlusEntry = tuple[str, dict[str, int] | None]
# Where a failure means bytes did not reach the site: worth more than an INFO line.
_UPLOADS = frozenset({"flush", "fsync", "release", "truncate", "rename"})


class Served:
    """What the adapter answered the kernel, for `fwfs status`: errors by errno (counted
    by `_errors` alone) and the bytes programs read."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._errnos: Counter[int] = Counter()
        self._bytes_read = 0

    def error(self, code: int) -> None:
        with self._lock:
            self._errnos[code] += 1

    def read(self, size: int) -> None:
        with self._lock:
            self._bytes_read += size

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready: `bytes_served`, and `errors` by errno name ("ENOENT": 3)."""
        with self._lock:
            errnos = sorted(self._errnos.items())
            served = self._bytes_read
        return {
            "bytes_served": served,
            "errors": {errno.errorcode.get(code, str(code)): n for code, n in errnos},
        }


def _errors(func: F) -> F:
    @functools.wraps(func)
    def wrapper(self: FuseOperations, *args: Any) -> Any:
        try:
            return func(self, *args)
        except FwfsError as err:
            # Lookups of names that do not exist are routine (shells, tools probing);
            # any other failure, and every failed open or read, gets a line.
            quiet = func.__name__ in _LOOKUPS and err.errno in (errno.ENOENT, errno.ENODATA)
            if not quiet:
                level = logging.WARNING if func.__name__ in _UPLOADS else logging.INFO
                # Callbacks on an open handle may get no path (an unlinked file).
                where = args[0] if args and isinstance(args[0], str) else "(open file)"
                code = errno.errorcode.get(err.errno)
                log.log(level, "%s %r: %s (%s)", func.__name__, where, err, code)
            self.served.error(err.errno)
            raise FuseOSError(err.errno) from None
        except FuseOSError as err:
            self.served.error(err.errno)
            raise
        except OSError as err:
            if isinstance(err.errno, int) and err.errno > 0:
                self.served.error(err.errno)
                raise FuseOSError(err.errno) from None
            log.exception("%s failed", func.__name__)
            self.served.error(errno.EIO)
            raise FuseOSError(errno.EIO) from None
        except Exception:
            log.exception("%s failed", func.__name__)
            self.served.error(errno.EIO)
            raise FuseOSError(errno.EIO) from None

    return cast(F, wrapper)


class FuseOperations(Operations):  # type: ignore[misc]
    use_ns = True

    def __init__(
        self, fs: FlywheelFS, config: MountConfig, on_ready: Callable[[], None] | None = None
    ) -> None:
        self.fs = fs
        self.config = config
        self._on_ready = on_ready
        self.ready = threading.Event()
        self.served = Served()
        # Open directories' entries with attributes, for READDIRPLUS resumed at an offset.
        self._dirs_lock = threading.Lock()
        self._dirs: dict[int, list[_PlusEntry] | None] = {}
        self._dir_handles = itertools.count(1)

    def _stat(self, attr: Attr) -> dict[str, int]:
        return {
            "st_mode": attr.mode,
            "st_nlink": attr.nlink,
            "st_size": attr.size,
            "st_uid": self.config.uid,
            "st_gid": self.config.gid,
            "st_mtime": int(attr.mtime * 1e9),
            "st_atime": int(attr.mtime * 1e9),
            "st_ctime": int(attr.ctime * 1e9),
            "st_blksize": attr.blksize or self.config.block_size,
            "st_blocks": (attr.size + 511) // 512,
        }

    def init_with_config(self, conn: Any, config: Any) -> None:
        if conn is not None:
            # The kernel keeps the smaller of the mount's readahead and this: no cap of our
            # own, so the larger one `mount` sets in sysfs stands whichever comes first.
            conn.max_readahead = 0xFFFFFFFF
        if config is not None:
            # The kernel's share of the staleness budget (see MountConfig.kernel_ttl).
            ttl = float(self.config.kernel_ttl)
            config.entry_timeout = ttl
            config.attr_timeout = ttl
            # A name missing now may be listed at the next listing: no longer than that.
            config.negative_timeout = float(min(self.config.negative_ttl, ttl))
        self.ready.set()
        if self._on_ready is not None:
            self._on_ready()

    def destroy(self, path: str) -> None:
        self.fs.close()

    @_errors
    def getattr(self, path: str, fh: int | None = None) -> dict[str, int]:
        return self._stat(self.fs.getattr(path))

    @_errors
    def readdir(self, path: str, fh: int) -> list[Any]:
        entries: list[Any] = [".", ".."]
        entries += [(name, {"st_mode": attr.mode}, 0) for name, attr in self.fs.readdir(path)]
        return entries

    def opendir(self, path: str) -> int:
        with self._dirs_lock:
            fh = next(self._dir_handles)
            self._dirs[fh] = None
        return fh

    def releasedir(self, path: str | None, fh: int) -> int:
        with self._dirs_lock:
            self._dirs.pop(fh, None)
        return 0

    @_errors
    def readdir_plus(self, path: str, fh: int, offset: int) -> list[_PlusEntry]:
        """readdir with every entry's attributes, for the kernel's READDIRPLUS: `ls -l` and
        `find` then stat what they listed without a LOOKUP round trip per entry. The kernel
        reads a directory a buffer at a time, resuming at an offset: the entries are made
        once per opened directory (from the start, offset 0) and reused for the rest."""
        with self._dirs_lock:
            cached = self._dirs.get(fh)
        if cached is not None and offset > 0:
            return cached
        entries: list[_PlusEntry] = [(".", None), ("..", None)]
        entries += [(name, self._stat(attr)) for name, attr in self.fs.readdir(path)]
        with self._dirs_lock:
            if fh in self._dirs:
                self._dirs[fh] = entries
        return entries

    @_errors
    def open(self, path: str, fi: Any) -> int:
        opened = self.fs.open(path, fi.flags)
        fi.fh = opened.fh
        fi.keep_cache = int(opened.keep_cache)
        fi.direct_io = int(opened.direct_io)
        return 0

    @_errors
    def read(self, path: str, size: int, offset: int, fi: Any) -> bytes:
        data = self.fs.read(fi.fh, offset, size)
        self.served.read(len(data))
        return data

    @_errors
    def release(self, path: str, fi: Any) -> int:
        self.fs.release(fi.fh)
        return 0

    @_errors
    def create(self, path: str, mode: int, fi: Any) -> int:
        opened = self.fs.create(path)
        fi.fh = opened.fh
        fi.keep_cache = 0
        fi.direct_io = 0
        return 0

    @_errors
    def write(self, path: str | None, data: bytes | memoryview, offset: int, fi: Any) -> int:
        return self.fs.write(fi.fh, offset, data)

    @_errors
    def flush(self, path: str, fi: Any) -> int:
        # The errno returned here is what close(2) returns: the upload's outcome.
        self.fs.flush(fi.fh)
        return 0

    @_errors
    def fsync(self, path: str, datasync: int, fi: Any) -> int:
        self.fs.fsync(fi.fh)
        return 0

    @_errors
    def truncate(self, path: str | None, length: int, fh: Any = None) -> int:
        if path is None:
            # mfusepy passes no handle for truncate, and an unlinked file has no path.
            raise NotSupported("truncate of a file that was removed while open")
        self.fs.truncate(path, length, getattr(fh, "fh", None))
        return 0

    @_errors
    def mkdir(self, path: str, mode: int) -> int:
        self.fs.mkdir(path)
        return 0

    @_errors
    def rmdir(self, path: str) -> int:
        self.fs.rmdir(path)
        return 0

    @_errors
    def unlink(self, path: str) -> int:
        self.fs.unlink(path)
        return 0

    @_errors
    def rename(self, old: str, new: str, flags: int = 0) -> int:
        self.fs.rename(old, new, flags)
        return 0

    @_errors
    def chmod(self, path: str, mode: int) -> int:
        self.fs.set_metadata(path)
        return 0

    @_errors
    def chown(self, path: str, uid: int, gid: int) -> int:
        self.fs.set_metadata(path)
        return 0

    @_errors
    def utimens(self, path: str, times: Any = None) -> int:
        self.fs.set_metadata(path)
        return 0

    @_errors
    def symlink(self, target: str, source: str) -> int:
        raise NotSupported("Flywheel has no links")

    @_errors
    def link(self, target: str, source: str) -> int:
        raise NotSupported("Flywheel has no links")

    @_errors
    def mknod(self, path: str, mode: int, dev: int) -> int:
        raise NotPermitted("only regular files and directories can be made")

    @_errors
    def setxattr(self, path: str, name: str, value: bytes, options: int, position: int = 0) -> int:
        raise NotSupported("extended attributes are read-only")

    @_errors
    def removexattr(self, path: str, name: str) -> int:
        raise NotSupported("extended attributes are read-only")

    @_errors
    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        try:
            return self.fs.getxattr(path, name)
        except FwfsError as err:
            if err.errno == errno.ENOENT:
                # "No such attribute" is ENODATA, not "no such file".
                raise FuseOSError(ENOATTR) from None
            raise

    @_errors
    def listxattr(self, path: str) -> list[str]:
        return self.fs.listxattr(path)

    @_errors
    def statfs(self, path: str) -> dict[str, int]:
        return self.fs.statfs()

    @_errors
    def access(self, path: str, amode: int) -> int:
        self.fs.lookup(path)
        if amode & os.W_OK and self.config.read_only:
            raise FuseOSError(errno.EROFS)
        return 0


def mount(
    ops: FuseOperations,
    mountpoint: str,
    *,
    foreground: bool = True,
    options: dict[str, Any] | None = None,
) -> None:
    """Blocks until unmounted; RuntimeError if the installed mfusepy is not one fwfs patches."""
    check_version()
    opts: dict[str, Any] = {"fsname": "fwfs", "subtype": "fwfs", "default_permissions": True}
    # libfuse would turn the unlink of an open file into a rename to `.fuse_hiddenNNN`,
    # which on Flywheel is an upload under that name: remove it now, keep the handle.
    opts["hard_remove"] = True
    if ops.config.read_only:
        opts["ro"] = True
    opts.update(options or {})
    PatchedFUSE(ops, mountpoint, foreground=foreground, raw_fi=True, nothreads=False, **opts)
