"""Zip archives as directories: the central directory read from the archive (``central``),
the member tree (``index``), where a member lies in the archive (``layout``), member reads
(``reader``, tuned by ``settings``; large members in ``large``) and the bulk fetch and
inflating ahead (``bulk``).

Imports only ``paths``, ``errors``, ``models``, ``blockcache``, ``rangedfile`` and the
standard library: the network reaches it as plain callables.
"""

from fwfs.archives.central import CentralDirectory, NotAZip, read_directory
from fwfs.archives.index import Member, MemberDir, MemberFile, ZipIndex
from fwfs.archives.reader import ArchiveReader, ArchiveStats
from fwfs.archives.settings import ArchiveConfig

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
