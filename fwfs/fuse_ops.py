"""The FUSE adapter: translates kernel calls into FlywheelFS calls. No policy, no HTTP.

The only module that imports mfusepy. Every callback goes through `_errors`, the one place
where exceptions become errnos: an FwfsError gives its errno, an OSError with an int errno
passes through, anything else is logged once with its traceback and becomes EIO (mfusepy
would answer EINVAL, and fusepy would end the mount).
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar, cast

import mfusepy

from fwfs.config import MountConfig
from fwfs.errors import FwfsError
from fwfs.fs import Attr, FlywheelFS

log = logging.getLogger("fwfs.fuse")

F = TypeVar("F", bound=Callable[..., Any])
_LOOKUPS = frozenset({"getattr", "getxattr", "listxattr", "access", "readdir"})


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
                log.info("%s: %s (%s)", func.__name__, err, errno.errorcode.get(err.errno))
            raise mfusepy.FuseOSError(err.errno) from None
        except mfusepy.FuseOSError:
            raise
        except OSError as err:
            if isinstance(err.errno, int) and err.errno > 0:
                raise mfusepy.FuseOSError(err.errno) from None
            log.exception("%s failed", func.__name__)
            raise mfusepy.FuseOSError(errno.EIO) from None
        except Exception:
            log.exception("%s failed", func.__name__)
            raise mfusepy.FuseOSError(errno.EIO) from None

    return cast(F, wrapper)


class FuseOperations(mfusepy.Operations):  # type: ignore[misc]
    use_ns = True

    def __init__(
        self, fs: FlywheelFS, config: MountConfig, on_ready: Callable[[], None] | None = None
    ) -> None:
        self.fs = fs
        self.config = config
        self._on_ready = on_ready
        self.ready = threading.Event()

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
            "st_blksize": self.config.block_size,
            "st_blocks": (attr.size + 511) // 512,
        }

    def init_with_config(self, conn: Any, config: Any) -> None:
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

    @_errors
    def open(self, path: str, fi: Any) -> int:
        opened = self.fs.open(path, fi.flags)
        fi.fh = opened.fh
        fi.keep_cache = int(opened.keep_cache)
        fi.direct_io = int(opened.direct_io)
        return 0

    @_errors
    def read(self, path: str, size: int, offset: int, fi: Any) -> bytes:
        return self.fs.read(fi.fh, offset, size)

    @_errors
    def release(self, path: str, fi: Any) -> int:
        self.fs.release(fi.fh)
        return 0

    @_errors
    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        try:
            return self.fs.getxattr(path, name)
        except FwfsError as err:
            if err.errno == errno.ENOENT:
                # "No such attribute" is ENODATA, not "no such file".
                raise mfusepy.FuseOSError(mfusepy.ENOATTR) from None
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
            raise mfusepy.FuseOSError(errno.EROFS)
        return 0


def mount(
    ops: FuseOperations,
    mountpoint: str,
    *,
    foreground: bool = True,
    options: dict[str, Any] | None = None,
) -> None:
    """Blocks until unmounted."""
    opts: dict[str, Any] = {"fsname": "fwfs", "subtype": "fwfs", "default_permissions": True}
    if ops.config.read_only:
        opts["ro"] = True
    opts.update(options or {})
    mfusepy.FUSE(ops, mountpoint, foreground=foreground, raw_fi=True, nothreads=False, **opts)
