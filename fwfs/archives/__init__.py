"""Zip archives as directories: the central directory read from the archive (``central``),
the member tree (``index``) and member reads (``reader``).

Imports only ``paths``, ``errors``, ``models``, ``blockcache``, ``rangedfile`` and the
standard library: the network reaches it as plain callables.
"""

from fwfs.archives.central import CentralDirectory, NotAZip, read_directory
from fwfs.archives.index import Member, MemberDir, MemberFile, ZipIndex
from fwfs.archives.reader import ArchiveConfig, ArchiveReader, ArchiveStats

__all__ = [
    "ArchiveConfig",
    "ArchiveReader",
    "ArchiveStats",
    "CentralDirectory",
    "Member",
    "MemberDir",
    "MemberFile",
    "NotAZip",
    "ZipIndex",
    "read_directory",
]
