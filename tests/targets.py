"""One set of os-like calls over either tier of fwfs: a FlywheelFS model or a real mount.

A scenario written once against `Target` runs against both (rclone's vfs tests do the
same): the model tier is fast and shows the model's own behaviour, the mount tier adds the
kernel and the FUSE adapter. Both raise OSError with the errno a program would see, so an
assertion on an errno means the same thing in either tier.

Paths are relative to the filesystem's root, `/`-separated, as the model takes them
(`"g/P/sub-01"`; `""` is the root). Handles are ints: a file descriptor on a mount, the
model's own file handle on the model.

What the model target does not do, because the kernel does it on a mount: permission checks
against modes (`default_permissions`), the page cache, and the asynchronous release after
close(2). `ModelTarget.close` releases at once, so what a mount shows only "shortly after
close()" the model shows when `close` returns.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from fwfs.errors import FwfsError
from fwfs.fs import FlywheelFS

# renameat2(2) flags (linux/fs.h); os.rename cannot pass them.
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
_AT_FDCWD = -100

# What a plain `open(path, "wb")` asks for: the flags of `write_file`.
WRITE_NEW = os.O_WRONLY | os.O_CREAT | os.O_TRUNC


class Stat(NamedTuple):
    """The fields both tiers can answer: the others (uid, nlink, ...) are the adapter's."""

    mode: int
    size: int
    mtime: float


class Target(ABC):
    """A filesystem that scenarios drive through os-like calls (see the module doc)."""

    #: "model" or "mount": test ids and the few assertions only one tier can make.
    tier: str

    @abstractmethod
    def listdir(self, path: str) -> list[str]:
        """The directory's entry names, sorted (listings of the two tiers then compare)."""

    @abstractmethod
    def stat(self, path: str) -> Stat: ...

    @abstractmethod
    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        """open(2): O_CREAT, O_EXCL, O_TRUNC, O_APPEND, O_RDONLY/O_WRONLY/O_RDWR."""

    @abstractmethod
    def pread(self, fd: int, size: int, offset: int) -> bytes: ...

    @abstractmethod
    def pwrite(self, fd: int, data: bytes, offset: int) -> int: ...

    @abstractmethod
    def write(self, fd: int, data: bytes) -> int:
        """write(2) at the handle's position (with O_APPEND: at the end), which it advances."""

    @abstractmethod
    def fsync(self, fd: int) -> None: ...

    @abstractmethod
    def ftruncate(self, fd: int, length: int) -> None: ...

    @abstractmethod
    def close(self, fd: int) -> None:
        """close(2): its error is the upload's, as a program sees it."""

    @abstractmethod
    def truncate(self, path: str, length: int) -> None: ...

    @abstractmethod
    def mkdir(self, path: str) -> None: ...

    @abstractmethod
    def rmdir(self, path: str) -> None: ...

    @abstractmethod
    def unlink(self, path: str) -> None: ...

    @abstractmethod
    def rename(self, old: str, new: str, flags: int = 0) -> None:
        """rename(2), or renameat2(2) with RENAME_NOREPLACE / RENAME_EXCHANGE."""

    @abstractmethod
    def getxattr(self, path: str, name: str) -> bytes:
        """ENODATA for an attribute the entry does not have, ENOENT for no entry."""

    @abstractmethod
    def listxattr(self, path: str) -> list[str]: ...

    # ---- built on the calls above, so both tiers do them alike ----------------------------

    def exists(self, path: str) -> bool:
        try:
            self.stat(path)
        except FileNotFoundError:
            return False
        return True

    def read_file(self, path: str, chunk: int = 1 << 20) -> bytes:
        """open, read to the end, close."""
        fd = self.open(path, os.O_RDONLY)
        try:
            out = bytearray()
            while data := self.pread(fd, chunk, len(out)):
                out += data
            return bytes(out)
        finally:
            self.close(fd)

    def write_file(self, path: str, data: bytes, flags: int = WRITE_NEW) -> None:
        """open (`open(path, "wb")` unless told), write everything, close."""
        fd = self.open(path, flags)
        try:
            done = 0
            while done < len(data):
                done += self.write(fd, data[done:])
        except BaseException:
            with contextlib.suppress(OSError):  # the write's error is the one to report
                self.close(fd)
            raise
        self.close(fd)


# ---- the model ------------------------------------------------------------------------------


@dataclass
class _Open:
    fh: int
    path: str
    flags: int
    pos: int = 0


def _os_error(err: FwfsError, path: str) -> OSError:
    # FwfsError's class fixes its errno (fwfs/errors.py's table): the model's errors become
    # the OSError a program would get, as the FUSE adapter's one `except` does.
    return OSError(err.errno, os.strerror(err.errno), path)


class ModelTarget(Target):
    """A FlywheelFS driven as the FUSE adapter drives it, with the kernel's share of open(2)
    (O_CREAT/O_EXCL become a lookup, then create or open) and of close(2) (flush, then
    release) done here."""

    tier = "model"

    def __init__(self, fs: FlywheelFS) -> None:
        self.fs = fs
        self._open: dict[int, _Open] = {}
        # What releases failed with: no program sees them (see `close`), a test may.
        self.release_errors: list[FwfsError] = []

    def _handle(self, fd: int) -> _Open:
        try:
            return self._open[fd]
        except KeyError:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF)) from None

    def listdir(self, path: str) -> list[str]:
        try:
            return sorted(name for name, _attr in self.fs.readdir(path))
        except FwfsError as err:
            raise _os_error(err, path) from None

    def stat(self, path: str) -> Stat:
        try:
            attr = self.fs.getattr(path)
        except FwfsError as err:
            raise _os_error(err, path) from None
        return Stat(attr.mode, attr.size, attr.mtime)

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        try:
            if flags & os.O_CREAT:
                try:
                    self.fs.getattr(path)
                except FwfsError as err:
                    if err.errno != errno.ENOENT:
                        raise
                    fh = self.fs.create(path).fh
                else:
                    if flags & os.O_EXCL:
                        raise OSError(errno.EEXIST, os.strerror(errno.EEXIST), path) from None
                    fh = self.fs.open(path, flags & ~(os.O_CREAT | os.O_EXCL)).fh
            else:
                fh = self.fs.open(path, flags).fh
        except FwfsError as err:
            raise _os_error(err, path) from None
        self._open[fh] = _Open(fh, path, flags)
        return fh

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        h = self._handle(fd)
        try:
            return self.fs.read(h.fh, offset, size)
        except FwfsError as err:
            raise _os_error(err, h.path) from None

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        h = self._handle(fd)
        try:
            return self.fs.write(h.fh, offset, data)
        except FwfsError as err:
            raise _os_error(err, h.path) from None

    def write(self, fd: int, data: bytes) -> int:
        h = self._handle(fd)
        if h.flags & os.O_APPEND:
            # The kernel writes an O_APPEND handle's data at the size getattr gives.
            h.pos = self.stat(h.path).size
        done = self.pwrite(fd, data, h.pos)
        h.pos += done
        return done

    def fsync(self, fd: int) -> None:
        h = self._handle(fd)
        try:
            self.fs.fsync(h.fh)
        except FwfsError as err:
            raise _os_error(err, h.path) from None

    def ftruncate(self, fd: int, length: int) -> None:
        h = self._handle(fd)
        try:
            self.fs.truncate(h.path, length, h.fh)
        except FwfsError as err:
            raise _os_error(err, h.path) from None

    def close(self, fd: int) -> None:
        h = self._open.pop(fd, None)
        if h is None:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        try:
            self.fs.flush(h.fh)
        except FwfsError as err:
            failed: OSError | None = _os_error(err, h.path)
        else:
            failed = None
        try:
            self.fs.release(h.fh)
        except FwfsError as err:
            # The kernel sends release after close(2) has returned: its error reaches no
            # program (the adapter logs it).
            self.release_errors.append(err)
        if failed is not None:
            raise failed

    def truncate(self, path: str, length: int) -> None:
        try:
            self.fs.truncate(path, length)
        except FwfsError as err:
            raise _os_error(err, path) from None

    def mkdir(self, path: str) -> None:
        try:
            self.fs.mkdir(path)
        except FwfsError as err:
            raise _os_error(err, path) from None

    def rmdir(self, path: str) -> None:
        try:
            self.fs.rmdir(path)
        except FwfsError as err:
            raise _os_error(err, path) from None

    def unlink(self, path: str) -> None:
        try:
            self.fs.unlink(path)
        except FwfsError as err:
            raise _os_error(err, path) from None

    def rename(self, old: str, new: str, flags: int = 0) -> None:
        try:
            self.fs.rename(old, new, flags)
        except FwfsError as err:
            raise _os_error(err, old) from None

    def getxattr(self, path: str, name: str) -> bytes:
        try:
            # The kernel looks the entry up first: a missing one is ENOENT...
            self.fs.lookup(path)
        except FwfsError as err:
            raise _os_error(err, path) from None
        try:
            return self.fs.getxattr(path, name)
        except FwfsError as err:
            # ...and then, as the adapter's getxattr says, "no such attribute" is ENODATA.
            code = errno.ENODATA if err.errno == errno.ENOENT else err.errno
            raise OSError(code, os.strerror(code), path) from None

    def listxattr(self, path: str) -> list[str]:
        try:
            return self.fs.listxattr(path)
        except FwfsError as err:
            raise _os_error(err, path) from None


# ---- a mount --------------------------------------------------------------------------------


def renameat2(old: Path, new: Path, flags: int) -> None:
    """renameat2(2) through libc: Python has no binding for its flags."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.renameat2(_AT_FDCWD, bytes(old), _AT_FDCWD, bytes(new), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(old))


class MountTarget(Target):
    """Plain os calls under a mount point: the kernel and the FUSE adapter in the way."""

    tier = "mount"

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, path: str) -> Path:
        return self.root / path if path else self.root

    def listdir(self, path: str) -> list[str]:
        return sorted(os.listdir(self.path(path)))

    def stat(self, path: str) -> Stat:
        st = os.stat(self.path(path))
        return Stat(st.st_mode, st.st_size, st.st_mtime)

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        return os.open(self.path(path), flags, mode)

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        return os.pread(fd, size, offset)

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        return os.pwrite(fd, data, offset)

    def write(self, fd: int, data: bytes) -> int:
        return os.write(fd, data)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def ftruncate(self, fd: int, length: int) -> None:
        os.ftruncate(fd, length)

    def close(self, fd: int) -> None:
        os.close(fd)

    def truncate(self, path: str, length: int) -> None:
        os.truncate(self.path(path), length)

    def mkdir(self, path: str) -> None:
        os.mkdir(self.path(path))

    def rmdir(self, path: str) -> None:
        os.rmdir(self.path(path))

    def unlink(self, path: str) -> None:
        os.unlink(self.path(path))

    def rename(self, old: str, new: str, flags: int = 0) -> None:
        if flags:
            renameat2(self.path(old), self.path(new), flags)
        else:
            os.rename(self.path(old), self.path(new))

    def getxattr(self, path: str, name: str) -> bytes:
        return os.getxattr(self.path(path), name)

    def listxattr(self, path: str) -> list[str]:
        return os.listxattr(self.path(path))
