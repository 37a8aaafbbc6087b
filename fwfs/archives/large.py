"""What the reads of one large member share: where its data is, how far its CRC is checked,
and its live decompressors.

Members over ``ArchiveConfig.large_member`` are never buffered whole to answer a small
read: a stored one is read in place at its data offset, a compressed one is streamed
through a decompressor that stays alive between sequential reads. Every open handle of the
member shares one ``LargeMember``, so a reader that continues where another stopped picks
up its decompressor instead of starting from the member's first byte.
"""

from __future__ import annotations

import threading
import zipfile
import zlib

from fwfs.archives.central import ArchiveIO
from fwfs.errors import RemoteError
from fwfs.rangedfile import RangedReader


class Stream:
    """A live decompressor of one large member, at ``pos`` (a multiple of member_block)."""

    def __init__(self, ext: zipfile.ZipExtFile) -> None:
        self.ext = ext
        self.pos = 0


class LargeMember:
    """One large member's data in the archive, read through a reader of its own.

    Guarded by ``lock``: ``crc``, ``crc_end``, ``bad`` and ``streams``. Innermost: no other
    lock is taken while it is held.
    """

    def __init__(self, info: zipfile.ZipInfo, data_offset: int, reader: RangedReader) -> None:
        self.info = info
        self.data_offset = data_offset
        self.reader = reader
        self.lock = threading.Lock()
        self.crc = 0
        self.crc_end = 0
        self.bad = False
        self.streams: list[Stream] = []

    def read_stored(self, offset: int, end: int) -> bytes:
        """Bytes ``[offset, end)`` of a stored member, read in place."""
        data = self.reader.read(self.data_offset + offset, end - offset)
        if len(data) != end - offset:
            raise RemoteError("truncated zip archive: member data runs past its end")
        # A range of a stored member cannot be checked against the member's CRC, which
        # covers the whole member. What can be done cheaply is done: the CRC of the prefix
        # read so far is carried along while reads continue one another (a sequential
        # read), and when that reaches the end a mismatch fails the read and every later
        # one. Random reads of a corrupt stored member are served unchecked.
        info = self.info
        with self.lock:
            if offset <= self.crc_end < end:
                self.crc = zlib.crc32(data[self.crc_end - offset :], self.crc)
                self.crc_end = end
                if end == info.file_size and self.crc != info.CRC:
                    self.bad = True
            if self.bad:
                raise RemoteError("zip member fails its CRC check")
        return data

    def mark_bad(self) -> None:
        """Refuse every later read: the member failed its CRC check."""
        with self.lock:
            self.bad = True

    def take_stream(self, target: int) -> Stream:
        """The live stream nearest before ``target``, or a new one from the member's start."""
        with self.lock:
            usable = [s for s in self.streams if s.pos <= target]
            if usable:
                best = max(usable, key=lambda s: s.pos)
                self.streams.remove(best)
                return best
        raw = ArchiveIO(self.reader, self.data_offset, self.info.compress_size)
        return Stream(zipfile.ZipExtFile(raw, "r", self.info))

    def put_stream(self, stream: Stream, keep: int) -> None:
        """Give back a stream for later reads, keeping the ``keep`` most recent ones."""
        with self.lock:
            self.streams.append(stream)
            del self.streams[:-keep]
