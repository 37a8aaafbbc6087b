"""What a path of the mount points at: directories of several kinds, and files.

Nodes are immutable snapshots of one listing; the tree replaces them when it lists again.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from typing import Literal

from fwfs.archives import MemberFile
from fwfs.bids import Entry
from fwfs.models import Container, FileInfo

DirKind = Literal["root", "container", "analyses", "analysis", "analysis-io"]

# The directory of a container's analyses, and inside an analysis its two halves.
ANALYSES_DIR = "analyses"
INPUT_DIR = "input"
OUTPUT_DIR = "output"


@dataclass(frozen=True)
class Dir:
    kind: DirKind
    # The container shown (the analysis for "analysis" and "analysis-io"; the container
    # whose analyses are listed for "analyses"); None for the root.
    container: Container | None = None
    # For "analysis-io": "inputs" or "files" (outputs), the API's file_group.
    file_group: str | None = None

    @property
    def key(self) -> tuple[str, ...]:
        """Identity of the listing, independent of the path it was reached by."""
        cid = self.container.id if self.container else ""
        return (self.kind, cid, self.file_group or "")


@dataclass(frozen=True)
class File:
    info: FileInfo


@dataclass(frozen=True)
class ArchiveDir:
    """A directory inside a zip archive: `relpath` "" is `<archive name>.d` itself."""

    archive: FileInfo
    relpath: str
    mtime: float


@dataclass(frozen=True)
class ArchiveFile:
    archive: FileInfo
    member: MemberFile


Node = Dir | File | ArchiveDir | ArchiveFile


@dataclass(frozen=True)
class BidsDir:
    """A directory of `<project>.bids` (fs/bidsview.py): `relpath` "" is the view itself."""

    project: Container
    relpath: str


@dataclass(frozen=True)
class BidsFile:
    project: Container
    entry: Entry


# What a BIDS view holds: read-only, outside `Node` so no write path can take it for a
# site's file or container.
ViewNode = BidsDir | BidsFile
# The suffix of a project's BIDS view, beside the project.
BIDS_SUFFIX = ".bids"

# The suffix that turns an archive's name into the name of its member directory.
ARCHIVE_SUFFIX = ".d"


def is_archive(info: FileInfo) -> bool:
    """A `.zip` name or a Flywheel zip type; whether it opens as one is checked on lookup."""
    return info.name.lower().endswith(".zip") or info.zip_member_count is not None


@dataclass(frozen=True)
class Attr:
    mode: int
    size: int
    mtime: float
    ctime: float
    nlink: int = 1
    # The I/O size programs are told to use; 0 for the mount's block size.
    blksize: int = 0

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)


def dir_attr(node: Dir, writable: bool, mount_time: float) -> Attr:
    c = node.container
    mtime = c.modified if c and c.modified else mount_time
    ctime = c.created if c and c.created else mtime
    # Only containers take new entries (files, or the next level's containers).
    perm = 0o755 if writable and node.kind == "container" else 0o555
    return Attr(mode=stat.S_IFDIR | perm, size=0, mtime=mtime, ctime=ctime, nlink=2)


def archive_attr(node: ArchiveDir | ArchiveFile) -> Attr:
    """Archive contents are read-only whatever the mount: a zip is replaced, not edited."""
    if isinstance(node, ArchiveDir):
        mtime = node.mtime or node.archive.modified
        return Attr(mode=stat.S_IFDIR | 0o555, size=0, mtime=mtime, ctime=mtime, nlink=2)
    mtime = node.member.mtime or node.archive.modified
    return Attr(mode=stat.S_IFREG | 0o444, size=node.member.size, mtime=mtime, ctime=mtime)


def bids_attr(node: ViewNode) -> Attr:
    """Read-only whatever the mount: curation is done on the site."""
    if isinstance(node, BidsDir):
        mtime = node.project.modified or node.project.created
        return Attr(mode=stat.S_IFDIR | 0o555, size=0, mtime=mtime, ctime=mtime, nlink=2)
    e = node.entry
    return Attr(mode=stat.S_IFREG | 0o444, size=e.size, mtime=e.mtime, ctime=e.mtime)


def file_attr(node: File, writable: bool) -> Attr:
    info = node.info
    perm = 0o644 if writable else 0o444
    return Attr(
        mode=stat.S_IFREG | perm,
        size=info.size,
        mtime=info.modified,
        ctime=info.created or info.modified,
    )
