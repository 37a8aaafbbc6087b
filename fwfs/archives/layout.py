"""Where a member's bytes lie in a zip archive, and whether what the archive says of it holds.

Pure: it reads no bytes. The central directory (``Directory``) says where each member's
local header is and where its bytes must end; the local header (``data_start``) says where
its data begins. Both are checked against the listing before a byte is trusted: believing
a corrupt directory would read far past the member or hand out another member's bytes.
"""

from __future__ import annotations

import bisect
import importlib.util
import struct
import zipfile
from dataclasses import dataclass

from fwfs.archives.central import CentralDirectory
from fwfs.archives.index import MemberFile
from fwfs.errors import PermissionDenied, RemoteError

KiB = 1024

# The local file header (APPNOTE 4.3.7): signature, version needed (2 bytes), flags,
# method, time, date, CRC-32, compressed size, size, name length, extra field length.
LOCAL = struct.Struct("<4s2B4HL2L2H")
LOCAL_MAGIC = b"PK\x03\x04"
FLAG_ENCRYPTED = 0x1
FLAG_PATCHED = 0x20
FLAG_STRONG_ENCRYPTION = 0x40
FLAG_UTF8 = 0x800


def _methods() -> frozenset[int]:
    methods = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED}
    # zipfile decompresses these only when Python was built with the modules.
    if importlib.util.find_spec("bz2") is not None:
        methods.add(zipfile.ZIP_BZIP2)
    if importlib.util.find_spec("lzma") is not None:
        methods.add(zipfile.ZIP_LZMA)
    return frozenset(methods)


# The compression methods this Python can decompress; the others only the server can.
LOCAL_METHODS = _methods()


@dataclass(frozen=True)
class Directory:
    """The archive's central directory, parsed once."""

    infos: tuple[zipfile.ZipInfo, ...]
    # Member names that occur once: a fallback when the listing's order is not the archive's.
    by_name: dict[str, zipfile.ZipInfo]
    # Every local header offset and the start of the central directory, ascending: a
    # member's bytes (header, data, descriptor) end where the next one of these begins.
    bounds: tuple[int, ...]

    @classmethod
    def of(cls, central: CentralDirectory) -> Directory:
        counts: dict[str, int] = {}
        for info in central.infos:
            counts[info.filename] = counts.get(info.filename, 0) + 1
        return cls(
            infos=central.infos,
            by_name={i.filename: i for i in central.infos if counts[i.filename] == 1},
            bounds=tuple(sorted({i.header_offset for i in central.infos} | {central.start})),
        )

    def region_end(self, info: zipfile.ZipInfo, archive_size: int) -> int:
        i = bisect.bisect_right(self.bounds, info.header_offset)
        return self.bounds[i] if i < len(self.bounds) else archive_size

    def match(self, member: MemberFile) -> zipfile.ZipInfo | None:
        # The listing is the central directory in order, so the index finds the very
        # member even among several of one name; the name is the fallback.
        if member.index < len(self.infos):
            info = self.infos[member.index]
            if info.filename == member.path and not info.is_dir():
                return info
        return self.by_name.get(member.path) if member.fetchable else None

    def checked_info(self, member: MemberFile) -> zipfile.ZipInfo:
        """The member's entry, refused unless it matches the listing and can be read here."""
        info = self.match(member)
        if info is None:
            raise RemoteError("zip member is missing from the archive")
        if info.file_size != member.size:
            raise RemoteError("zip archive does not match its listing (member size)")
        if info.flag_bits & (FLAG_ENCRYPTED | FLAG_STRONG_ENCRYPTION):
            raise PermissionDenied("zip member is encrypted")
        if info.flag_bits & FLAG_PATCHED:
            raise RemoteError("zip member holds patched data, which is not supported")
        if info.compress_size > info.file_size + info.file_size // 8 + 64 * KiB:
            # No method expands data by more than a fraction of a percent; a directory that
            # says otherwise is corrupt, and believing it would read far past the member.
            raise RemoteError("corrupt zip archive: implausible compressed size")
        return info


def data_start(info: zipfile.ZipInfo, head: bytes) -> int:
    """Where the data starts, from the start of the local header in ``head``.

    The local header, not the central directory, decides: its extra field often differs
    (zip64 writers put one only here).
    """
    if len(head) < LOCAL.size:
        raise RemoteError("truncated zip archive: local header runs past its end")
    magic, _, _, flags, _, _, _, _, _, _, name_len, extra_len = LOCAL.unpack_from(head)
    if magic != LOCAL_MAGIC:
        raise RemoteError("corrupt zip archive: bad local header signature")
    if flags & (FLAG_ENCRYPTED | FLAG_STRONG_ENCRYPTION):
        raise PermissionDenied("zip member is encrypted")
    raw_name = head[LOCAL.size : LOCAL.size + name_len]
    if len(raw_name) != name_len:
        raise RemoteError("truncated zip archive: local header runs past its end")
    name = raw_name.decode("utf-8" if flags & FLAG_UTF8 else "cp437", "replace")
    if name != info.orig_filename:
        raise RemoteError("corrupt zip archive: local header names another member")
    return LOCAL.size + int(name_len) + int(extra_len)
