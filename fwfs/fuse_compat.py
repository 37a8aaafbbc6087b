"""The binding: the only module that imports mfusepy, its fixes, and their version guard.

Part of the FUSE adapter, under fuse_ops. `PatchedFUSE` overrides private methods of
`mfusepy.FUSE` (`write`, `readdir_fuse_3`, `rename_fuse_3`) and calls into the C API
(`PyMemoryView_FromMemory`). Each fixes a gap of mfusepy 3.1 (see the methods). Another
release may rename those methods, and then the overrides would silently stop applying:
`check_version` refuses to mount on a version outside `SUPPORTED` instead.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
from typing import Any

import mfusepy
from mfusepy import ENOATTR, FuseOSError, Operations

# The mfusepy releases these patches were written and tested against: [low, high).
# pyproject.toml bounds the dependency the same way.
SUPPORTED = ((3, 1), (3, 2))
__all__ = ["ENOATTR", "SUPPORTED", "FuseOSError", "Operations", "PatchedFUSE", "check_version"]
_READDIR_PLUS = 1  # libfuse's FUSE_READDIR_PLUS flag of readdir
_FILL_DIR_PLUS = 2  # and FUSE_FILL_DIR_PLUS of its filler
_PYBUF_READ = 0x100
_memory_view = ctypes.pythonapi.PyMemoryView_FromMemory
_memory_view.restype = ctypes.py_object
_memory_view.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_int)


def check_version(version: str | None = None) -> None:
    """Raise RuntimeError unless mfusepy `version` (default: the installed one) is supported."""
    if version is None:
        version = importlib.metadata.version("mfusepy")
    (low, high) = SUPPORTED
    try:
        release = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        release = ()
    if not low <= release < high:
        raise RuntimeError(
            f"mfusepy {version} is installed, but fwfs patches mfusepy internals written for "
            f"versions >= {'.'.join(map(str, low))} and < {'.'.join(map(str, high))}; "
            f"install a version in that range"
        )


class PatchedFUSE(mfusepy.FUSE):  # type: ignore[misc]
    """mfusepy.FUSE with three fixes; build it only after `check_version`."""

    def write(self, path: bytes | None, buf: Any, size: int, offset: int, fip: Any) -> int:
        # mfusepy copies every write into a bytes object first (ctypes.string_at), the
        # largest cost of a write; the kernel's buffer is valid for the whole callback, so
        # hand the staged file a view of it instead.
        # (Not a ctypes array view: ctypes keeps one new array type per distinct size for
        # good, 5.7 KB each, a leak for programs that write in varying sizes.)
        address = ctypes.cast(buf, ctypes.c_void_p).value or 0
        view = _memory_view(address, size, _PYBUF_READ)
        result: int = self.operations.write(
            None if path is None else path.decode(self.encoding, self.errors),
            view,
            offset,
            fip.contents,
        )
        return result

    def readdir_fuse_3(
        self, path: bytes | None, buf: Any, filler: Any, offset: int, fip: Any, flags: int
    ) -> int:
        # mfusepy ignores FUSE_READDIR_PLUS (a TODO in its readdir_fuse_3) and passes only
        # each entry's mode, so the kernel sent a LOOKUP for every entry listed.
        if not flags & _READDIR_PLUS:
            result: int = super().readdir_fuse_3(path, buf, filler, offset, fip, flags)
            return result
        # Entries go out with their offsets (index + 1): libfuse 3.14 only passes a
        # PLUS entry's attributes on to the kernel in that mode, not when it buffers a whole
        # directory given at offset 0.
        decoded = None if path is None else path.decode(self.encoding, self.errors)
        entries = self.operations.readdir_plus(decoded, fip.contents.fh, offset)
        for index in range(offset, len(entries)):
            name, attrs = entries[index]
            st = mfusepy.c_stat()
            fill = 0
            if attrs is not None:
                mfusepy.set_st_attrs(st, attrs, use_ns=True)
                fill = _FILL_DIR_PLUS
            if filler(buf, name.encode(self.encoding, self.errors), st, index + 1, fill) != 0:
                break
        return 0

    def rename_fuse_3(self, old: bytes, new: bytes, flags: int) -> int:
        # mfusepy drops rename's flags; RENAME_NOREPLACE (`mv -n`) must not replace a file.
        result: int = self.operations.rename(
            old.decode(self.encoding, self.errors), new.decode(self.encoding, self.errors), flags
        )
        return result
