"""Zip archives as directories: the member tree (``index``) and member reads (``reader``).

Imports only ``paths``, ``errors``, ``models``, ``blockcache``, ``rangedfile`` and the
standard library: the network reaches it as plain callables.
"""

from fwfs.archives.index import Member, MemberDir, MemberFile, ZipIndex
from fwfs.archives.reader import ArchiveConfig, ArchiveReader, ArchiveStats

__all__ = [
    "ArchiveConfig",
    "ArchiveReader",
    "ArchiveStats",
    "Member",
    "MemberDir",
    "MemberFile",
    "ZipIndex",
]
