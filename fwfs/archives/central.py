"""A zip archive's central directory, read from the archive's own bytes with ranged reads.

The site can list an archive too (``?info=true``), but it builds that answer by reading the
archive from object storage, which on a large archive is slow enough to hit a read timeout,
and costs the same round trip as reading the directory ourselves. Here it costs:

* one ranged read of the archive's tail (``TAIL`` bytes, rounded up to the ranged reader's
  blocks), which holds the end-of-central-directory record, a comment of any length, the
  zip64 locator and record, and the whole central directory of most archives;
* a second read only when the central directory starts before that tail.

An archive no larger than the ranged reader's first window is fetched whole by the first
read, so its members then cost nothing more. The bytes land in the shared block cache under
the archive's key, where member reads find them.
"""

from __future__ import annotations

import io
import struct
import zipfile
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fwfs.errors import FwfsError
from fwfs.rangedfile import RangedReader

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

# The largest comment (64 KiB - 1), the end record (22 bytes) and the zip64 locator (20)
# and record (56), rounded up: where zipfile looks for the end of the archive.
TAIL = 66 * 1024


@dataclass(frozen=True)
class CentralDirectory:
    """Members in central-directory order, where that directory starts, and the comment."""

    infos: tuple[zipfile.ZipInfo, ...]
    start: int
    comment: bytes


class NotAZip(Exception):
    """The bytes are not a zip archive that can be listed (the reason is the message)."""


def read_directory(reader: RangedReader, *, prime: bool = True) -> CentralDirectory:
    """The central directory of the archive ``reader`` reads.

    ``prime``: first read the whole tail in one request, so that zipfile's own small reads
    of the end record, the locator and the directory are served from it (the last block
    alone can be a few bytes long). Off where the tail is most likely cached already.
    NotAZip when the bytes are not a readable archive; errors of the reader (the network)
    pass unchanged.
    """
    if prime:
        reader.read(max(0, reader.size - TAIL), TAIL)
    try:
        with zipfile.ZipFile(ArchiveIO(reader)) as zf:
            return CentralDirectory(tuple(zf.infolist()), zf.start_dir, zf.comment)
    except (FwfsError, OSError):
        raise  # the network or the ranged reader: the archive could not be read, no verdict
    except (zipfile.BadZipFile, EOFError, struct.error, ValueError, NotImplementedError) as err:
        raise NotAZip(f"{type(err).__name__}: {err}") from err


class ArchiveIO(io.RawIOBase):
    """A seekable read-only file over ``[start, start + size)`` of the archive.

    Reads go straight to the RangedReader, which is thread-safe; the position is not, so
    one object serves one thread at a time (a zipfile parse, or one stream).
    """

    def __init__(self, reader: RangedReader, start: int = 0, size: int | None = None) -> None:
        super().__init__()
        self._reader = reader
        self._start = start
        self._size = reader.size - start if size is None else size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            # zipfile probes for the end record with a seek before the start of tiny files
            # and expects OSError, as lseek(2) gives.
            raise OSError(22, "negative seek position")
        self._pos = pos
        return pos

    def read(self, size: int | None = -1, /) -> bytes:
        # Straight through, without RawIOBase's bytearray round trip: zipfile reads the
        # whole central directory in one call.
        available = max(0, self._size - self._pos)
        want = available if size is None or size < 0 else min(size, available)
        if want == 0:
            return b""
        data = self._reader.read(self._start + self._pos, want)
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)
