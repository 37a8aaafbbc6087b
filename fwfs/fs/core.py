"""FlywheelFS: the filesystem model in domain terms, testable without FUSE.

Every method takes a path (or a handle) and returns plain values or raises an `FwfsError`;
the FUSE adapter only translates. File bytes are immutable per (file_id, version), so they
are cached by that key without expiry; only names and attributes go stale (the TTL).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import posixpath
import stat
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import NamedTuple, Protocol

from cachetools import TTLCache

from fwfs import paths
from fwfs.blockcache import BlockCache
from fwfs.config import MountConfig
from fwfs.diskcache import DiskCache
from fwfs.errors import (
    FwfsError,
    InvalidArgument,
    IsADirectory,
    NameTooLong,
    NotADirectory,
    NotFound,
    ReadOnly,
    RemoteError,
    StaleFile,
)
from fwfs.fs import xattrs
from fwfs.fs.archived import Archives
from fwfs.fs.bidsview import BidsViews, BytesReads
from fwfs.fs.nodes import (
    ARCHIVE_SUFFIX,
    BIDS_SUFFIX,
    ArchiveDir,
    ArchiveFile,
    Attr,
    BidsDir,
    BidsFile,
    Dir,
    File,
    Node,
    ViewNode,
    archive_attr,
    bids_attr,
    dir_attr,
    file_attr,
    is_archive,
)
from fwfs.fs.tree import NAME_SHARED, ROOT, Listing, Tree
from fwfs.fs.walkahead import WalkAhead
from fwfs.fs.writes import Pending, WriteHandle, Writes, is_write
from fwfs.models import Container, FileInfo
from fwfs.rangedfile import RangedReader, ReadConfig
from fwfs.site import SiteClient
from fwfs.uploads import RetryPolicy, Spool

log = logging.getLogger("fwfs.fs")

WRITE_BLOCK = 1 << 20  # FUSE's largest write (libfuse 3: 256 pages)


def _refuse_shared_name(node: Node | Pending | ViewNode) -> None:
    if isinstance(node, File) and node.info.raw.get(NAME_SHARED):
        raise RemoteError(
            "another file of this directory has this file's name, and the site reads by "
            "name; read it from the container it came from"
        )


def _project_is(pid: str) -> Callable[[str, str | None], bool]:
    return lambda project, _group: project == pid


def _underlying(node: Node | Pending | ViewNode) -> Node | Pending | ViewNode:
    """A BIDS view's data file shows its site file's attributes."""
    if isinstance(node, BidsFile) and node.entry.source is not None:
        return File(node.entry.source)
    return node


class _Reads(Protocol):
    def read(self, offset: int, length: int) -> bytes: ...
    def close(self) -> None: ...


class _MemberReads:
    """An open zip member: reads go to the archive's shared reader."""

    def __init__(self, archives: Archives, node: ArchiveFile) -> None:
        self._archives = archives
        self._node = node
        self._reader = archives.acquire(node.archive)

    def read(self, offset: int, length: int) -> bytes:
        return self._reader.read(self._node.member, offset, length)

    def close(self) -> None:
        self._archives.release(self._node.archive)


class _WriteReads:
    """Reads through a handle on a file being written: the staged bytes once there are
    any, else the site's version the handle was opened on; and the site's newest version
    once the staged file is uploaded and gone (a read right after close() may open the
    path just before the upload's release)."""

    def __init__(self, fs: FlywheelFS, handle: WriteHandle) -> None:
        self._fs = fs
        self._handle = handle
        self._site: _Reads | None = None
        self._gone = False

    def read(self, offset: int, length: int) -> bytes:
        if not self._gone:
            try:
                data = self._fs._writes().read(self._handle, offset, length)
            except StaleFile:
                self._gone = True
                self._close_site()
            else:
                if data is not None:
                    return data
        if self._site is None:
            source = None if self._gone else self._handle.source
            if source is None:
                node = self._fs.lookup_site(self._handle.path)
                if not isinstance(node, File):
                    raise StaleFile(f"{self._handle.path!r} is no longer a file")
                source = node
            self._site = self._fs._ranged(source.info)
        return self._site.read(offset, length)

    def _close_site(self) -> None:
        if self._site is not None:
            self._site.close()
            self._site = None

    def close(self) -> None:
        self._close_site()


@dataclass
class Handle:
    key: tuple[str, ...]
    reader: _Reads
    path: str
    attr: Attr
    write: WriteHandle | None = None


class Opened(NamedTuple):
    """`keep_cache`: the kernel's pages of this path are of this version: keep them.
    `direct_io`: another version of this path is open through the page cache; this handle
    must bypass it, since the kernel keeps one page cache and one size per path."""

    fh: int
    keep_cache: bool
    direct_io: bool


class FlywheelFS:
    """Dependencies: `client`, `config`, `tree`, `cache`, `pool` (never reassigned), and
    `clock`, which every TTL of the model reads (tests pass one they advance by hand).

    Guarded by `self._lock`: `_handles` and `_opened` (the version last opened per path,
    which decides whether the kernel may keep its page cache).
    """

    def __init__(
        self,
        client: SiteClient,
        config: MountConfig,
        user_id: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        *,
        upload_retry: RetryPolicy | None = None,
    ) -> None:
        self.client = client
        self.config = config
        self.clock = clock
        # Listings fetched ahead of a walk (`ls -R`, `find`): see Tree.listdir.
        self.list_pool = ThreadPoolExecutor(4, thread_name_prefix="fwfs-list")
        self.tree = Tree(
            client, config.listing_ttl, config.negative_ttl, clock, prefetch=self.list_pool
        )
        self.cache = BlockCache(config.cache_size)
        # Behind the memory cache, when asked for: blocks kept on disk across mounts.
        self.disk: DiskCache | None = None
        if config.disk_cache > 0 and config.cache_dir is not None:
            self.disk = DiskCache(config.cache_dir, config.disk_cache)
        self.pool = ThreadPoolExecutor(config.read_threads, thread_name_prefix="fwfs-read")
        # Readahead lands in the cache: a window larger than a quarter of it would evict its
        # own blocks before they are read (64M cache: 3,974 requests for a 1 GiB file).
        window = max(config.block_size, min(config.max_readahead, config.cache_size // 4))
        self.read_config = ReadConfig(
            block_size=config.block_size,
            initial_window=min(window, 1 << 20),
            max_window=window,
            max_request=min(window, 8 << 20),
        )
        self.archives = Archives(
            client,
            self.cache,
            lambda info, locate: self._ranged(info, stream=False, locate=locate),
        )
        # The next files of a directory a program reads in order: see fs/walkahead.py.
        self.walk = WalkAhead(
            config.walk_ahead,
            self.cache,
            lambda info: self._ranged(info, stream=False),
            self.tree.listing,
            config.block_size,
            clock=clock,
        )
        # `<project>.bids` views: see fs/bidsview.py.
        self.bids = BidsViews(
            client,
            config.listing_ttl,
            clock,
            sourcedata=config.bids_sourcedata,
            pool=self.list_pool,
        )
        self.mount_time = time.time()
        self._lock = threading.Lock()
        self._handles: dict[int, Handle] = {}
        self._opened: dict[str, tuple[str, ...]] = {}
        # Per path, the file whose attributes the kernel was given last. The kernel keeps
        # them for `kernel_ttl` and stops reads at that size, so an open in that time reads
        # that version, not a newer one a fresher listing names. Unbounded in size: an
        # entry leaves when the kernel's copy expires (a listing of 20,000 entries tells
        # them all at once; pruning by hand on each cost 3.9 s of CPU once).
        self._told: TTLCache[str, File | ArchiveFile] = TTLCache(
            math.inf, config.kernel_ttl, timer=clock
        )
        self._next_fh = itertools.count(1)
        self.writes: Writes | None = None
        if not config.read_only:
            if config.spool_dir is None:
                raise InvalidArgument("a writable mount needs a spool directory")
            spool = Spool(config.spool_dir)
            self.writes = Writes(
                client, config, self.tree, self._lookup_writable, spool, user_id, retry=upload_retry
            )

    def _writes(self) -> Writes:
        if self.writes is None:
            raise ReadOnly("this mount is read-only")
        return self.writes

    def close(self) -> None:
        with self._lock:
            handles = list(self._handles.values())
            self._handles.clear()
        for h in handles:
            h.reader.close()
        self.archives.close()
        if self.writes is not None:
            self.writes.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.walk.close()
        self.list_pool.shutdown(wait=False, cancel_futures=True)
        if self.disk is not None:
            self.disk.close()

    # ---- metadata ---------------------------------------------------------------------

    def _lookup_writable(self, path: str) -> Node | Pending:
        """`lookup` for the writes: nothing in a BIDS view may be changed."""
        node = self.lookup(path)
        if isinstance(node, BidsDir | BidsFile):
            raise ReadOnly("a BIDS view is read-only: curation is done on the site")
        return node

    def _refuse_view(self, *paths_: str) -> None:
        """EROFS for a path in a BIDS view (`<group>/<name>.bids/…`); others are looked up
        by the writes themselves, so this costs them nothing."""
        for path in paths_:
            parts = [p for p in path.split("/") if p]
            if len(parts) >= 2 and parts[1].endswith(BIDS_SUFFIX):
                with contextlib.suppress(NotFound, NotADirectory):
                    self._lookup_writable(path)

    def lookup(self, path: str) -> Node | Pending | ViewNode:
        if self.writes is not None:
            pending = self.writes.pending(path)
            if pending is not None:
                return pending
        return self.lookup_site(path)

    def lookup_site(self, path: str) -> Node | ViewNode:
        """`path` as the site's listings show it, ignoring files being written."""
        node: Node | ViewNode = ROOT
        parts = [part for part in path.split("/") if part]
        for i, part in enumerate(parts):
            if len(part.encode("utf-8", "surrogateescape")) > paths.NAME_MAX:
                # FUSE lets names of up to 1024 bytes through; POSIX and the errno table
                # say ENAMETOOLONG, before a name the site would list cut short is created.
                raise NameTooLong(f"a name longer than {paths.NAME_MAX} bytes")
            if isinstance(node, Dir) and i + 1 < len(parts):
                # A deeper path than this step needs: its directories' listings are asked
                # side by side with this one's (the kernel asks one name at a time, so
                # this is for in-process users: flywheel://, fwfs prefetch).
                with self.tree.guessing(node, self._guessable(parts[i:-1])):
                    node = self._child(node, part)
            else:
                node = self._child(node, part)
        return node

    def _guessable(self, names: list[str]) -> list[str]:
        """`names` up to the first that may name no container: a BIDS view, an archive's
        directory, a name too long (each of those is found another way)."""
        for i, name in enumerate(names):
            if (
                name.endswith(BIDS_SUFFIX)
                or (self.config.archives and name.endswith(ARCHIVE_SUFFIX))
                or len(name.encode("utf-8", "surrogateescape")) > paths.NAME_MAX
            ):
                return names[:i]
        return names

    def _child(self, node: Node | ViewNode, name: str) -> Node | ViewNode:
        if isinstance(node, Dir):
            try:
                return self.tree.child(node, name)
            except NotFound:
                project = self._bids_named(node, name)
                if project is not None:
                    return BidsDir(project, "")
                archive = self._archive_named(node, name)
                if archive is None:
                    raise
                return self.archives.root(archive)
        if isinstance(node, ArchiveDir):
            return self.archives.child(node, name)
        if isinstance(node, BidsDir):
            return self.bids.child(node, name)
        raise NotADirectory(f"not a directory on the way to {name!r}")

    def _bids_named(self, parent: Dir, name: str) -> Container | None:
        """The project whose BIDS view `name` is: `<project entry name>.bids` in a group
        (a real entry of that name was looked for first, and wins)."""
        c = parent.container
        if parent.kind != "container" or c is None or c.kind != "group":
            return None
        if not name.endswith(BIDS_SUFFIX):
            return None
        base = self.tree.listing(parent).entries.get(name[: -len(BIDS_SUFFIX)])
        if isinstance(base, Dir) and base.container is not None:
            return base.container
        return None

    def _archive_named(self, parent: Dir, name: str) -> FileInfo | None:
        """The archive whose member directory `name` is: `<archive entry name>.d`."""
        if not self.config.archives or not name.endswith(ARCHIVE_SUFFIX):
            return None
        base = self.tree.listing(parent).entries.get(name[: -len(ARCHIVE_SUFFIX)])
        if isinstance(base, File) and is_archive(base.info):
            _refuse_shared_name(base)
            return base.info
        return None

    def attr(self, node: Node | Pending | ViewNode) -> Attr:
        writable = not self.config.read_only
        if isinstance(node, BidsDir | BidsFile):
            return bids_attr(node)
        if isinstance(node, Pending):
            # cp sizes its buffer by the destination's st_blksize: 1 MiB writes cost an
            # eighth of the callbacks of 128 KiB ones. (Site files keep the block size, so
            # a buffered read of a header stays one block.)
            size = node.staged.size
            return Attr(stat.S_IFREG | 0o644, size, node.mtime, node.mtime, blksize=WRITE_BLOCK)
        if isinstance(node, File):
            return file_attr(node, writable and node.info.parent.kind != "analysis")
        if isinstance(node, Dir):
            return dir_attr(node, writable, self.mount_time)
        return archive_attr(node)

    def getattr(self, path: str) -> Attr:
        node = self.lookup(path)
        attr = self.attr(node)
        if isinstance(node, Pending):
            return attr
        with self._lock:
            cached = self._opened.get(path)
            for h in self._handles.values():
                # While the version in the kernel's page cache is open, its size stands:
                # a newer listing must not cut that program's reads short. Handles of a
                # file being written hold no size of their own (before the first change of
                # a lazy copy-on-write, the site's version is the file: O_APPEND writes at
                # its end; after the upload, the listing is).
                if h.path == path and h.key == cached and h.key[0] != "written":
                    return h.attr
            if isinstance(node, File | ArchiveFile):
                self._tell(path, node)
        return attr

    def _tell(self, path: str, node: File | ArchiveFile) -> None:
        """Caller holds self._lock: the kernel now holds `node`'s attributes for `path`."""
        self._told[path] = node

    def _as_told(self, path: str, node: File | ArchiveFile) -> File | ArchiveFile:
        """The version of `node` whose size the kernel may still hold for `path`.

        A larger newer version would be cut at the kernel's size; a smaller one would read
        short of the size fstat shows (mmap: SIGBUS). Within the kernel's share of the TTL
        the open reads the version it was told of (still within the staleness bound); one
        of the same size is safe to read as listed."""
        with self._lock:
            old = self._told.get(path)
        if old is None:
            return node
        if isinstance(old, File) and isinstance(node, File):
            same = (old.info.parent, old.info.name) == (node.info.parent, node.info.name)
            return old if same and old.info.size != node.info.size else node
        if isinstance(old, ArchiveFile) and isinstance(node, ArchiveFile):
            a, b = old.archive, node.archive
            same = (a.parent, a.name, old.member.path) == (b.parent, b.name, node.member.path)
            return old if same and old.member.size != node.member.size else node
        return node

    def readdir(self, path: str) -> list[tuple[str, Attr]]:
        node = self.lookup(path)
        entries: dict[str, Node | Pending | ViewNode]
        if isinstance(node, ArchiveDir):
            entries = dict(self.archives.listdir(node))
        elif isinstance(node, BidsDir):
            entries = dict(self.bids.listdir(node))
        elif isinstance(node, Dir):
            listing = self.tree.listdir(node)
            if self.walk.reading():
                self._walk_listed(path, node, listing)
            entries = dict(listing.entries)
            if self.config.archives and self.config.list_archives:
                for name, child in list(entries.items()):
                    if isinstance(child, File) and is_archive(child.info):
                        # Shown as a directory now, entered (and checked) on lookup.
                        entries.setdefault(
                            name + ARCHIVE_SUFFIX,
                            ArchiveDir(child.info, "", child.info.modified),
                        )
            c = node.container
            if self.config.list_bids and c is not None and c.kind == "group":
                for name, child in list(entries.items()):
                    if isinstance(child, Dir) and child.container is not None:
                        entries.setdefault(name + BIDS_SUFFIX, BidsDir(child.container, ""))
        else:
            raise NotADirectory("not a directory")
        if self.writes is not None and isinstance(node, Dir):
            for p in self.writes.pending_in(path.rstrip("/") or "/"):
                entries[posixpath.basename(p.path)] = p
        out = [(name, self.attr(child)) for name, child in entries.items()]
        base = path.rstrip("/")
        with self._lock:
            open_paths = {h.path for h in self._handles.values()}
            # readdirplus hands these attributes to the kernel too.
            for name, child in entries.items():
                if isinstance(child, File | ArchiveFile):
                    self._tell(f"{base}/{name}", child)
        if open_paths:
            # The attributes go to the kernel with the names (readdirplus): an open
            # version's size must stand here too, as in getattr.
            out = [
                (name, self.getattr(f"{base}/{name}") if f"{base}/{name}" in open_paths else a)
                for name, a in out
            ]
        return out

    def listxattr(self, path: str) -> list[str]:
        return xattrs.names(_underlying(self.lookup(path)), self.tree)

    def getxattr(self, path: str, name: str) -> bytes:
        if not name.startswith(xattrs.PREFIX):
            # `ls -l` asks every entry for security.* and system.* attributes: answered
            # without walking the path (17,303 of them in one `ls -lR` of 3,103 directories).
            raise NotFound(f"no attribute {name}")
        return xattrs.value(_underlying(self.lookup(path)), name, self.tree)

    def statfs(self) -> dict[str, int]:
        out = {"f_bsize": self.config.block_size, "f_frsize": self.config.block_size}
        out.update(f_blocks=0, f_bfree=0, f_bavail=0, f_namemax=255)
        if self.writes is not None:
            # What can be written is what the spool can stage: tools that check free
            # space before copying (and `df`) see that.
            st = os.statvfs(self.writes.spool.root)
            scale = st.f_frsize / self.config.block_size
            out.update(
                f_blocks=int(st.f_blocks * scale),
                f_bfree=int(st.f_bfree * scale),
                f_bavail=int(st.f_bavail * scale),
            )
        return out

    # ---- `fwfs status` and `fwfs refresh` ---------------------------------------------

    def refresh(self, path: str) -> int:
        """Forget the listings of the directory at `path` and below it (of a file's
        directory; of the nearest directory the mount still lists, for a name it does not
        know yet), so the next use lists them from the site. Nothing below `path` is
        fetched here (an expired listing on the way to it is). How many were forgotten."""
        parts = [p for p in path.split("/") if p]
        while True:
            try:
                node = self.lookup_site("/".join(parts))
            except (NotFound, NotADirectory):
                node = None
            if isinstance(node, BidsDir | BidsFile):
                return self.bids.forget(_project_is(node.project.id))
            if isinstance(node, Dir):
                return self.tree.forget_under(node) + self._forget_views(node)
            if not parts:
                return 0
            parts.pop()

    def _forget_views(self, node: Dir) -> int:
        """The BIDS views of the projects at or below `node`."""
        c = node.container
        if node.kind == "root":
            return self.bids.forget(lambda _p, _g: True)
        if node.kind != "container" or c is None or c.kind not in ("group", "project"):
            return 0
        return self.bids.forget(lambda p, g: (p if c.kind == "project" else g) == c.id)

    def cache_stats(self) -> dict[str, int]:
        """The memory block cache's counters, JSON-ready."""
        return asdict(self.cache.stats())

    # ---- reading ----------------------------------------------------------------------

    def _ranged(
        self,
        info: FileInfo,
        *,
        stream: bool = True,
        locate: Callable[[], FileInfo] | None = None,
    ) -> RangedReader:
        """``stream``: on a site that ignores Range, read the file as one stream (a plain
        file); without it the reader raises the client's ``whole_file_only`` error (an
        archive, which then asks the site for its index and members instead).

        ``locate``: where the file is now, asked at every fetch. A reader that outlives the
        open that made it (an archive's, kept by file version) must follow the file when it
        is moved: its version is the same, its container and name are not."""
        where = locate if locate is not None else (lambda: info)

        def fetch(start: int, end: int) -> bytes:
            now = where()
            p = now.parent
            return self.client.read_range(
                p.kind,
                p.id,
                now.name,
                start,
                end,
                version=info.version,
                group=now.file_group,
                file_id=info.file_id,
            )

        def whole() -> Iterator[bytes]:
            now = where()
            p = now.parent
            return self.client.stream_file(
                p.kind,
                p.id,
                now.name,
                version=info.version,
                group=now.file_group,
                file_id=info.file_id,
            )

        return RangedReader(
            info.cache_key,
            info.size,
            fetch,
            self.cache,
            self.pool,
            self.read_config,
            stream=whole if stream else None,
            store=self.disk,
        )

    def _walk_opened(self, path: str, info: FileInfo, reader: RangedReader) -> None:
        """Tell the walk read-ahead that `path` was opened for reading."""
        try:
            parent = self.lookup_site(posixpath.dirname(path))
            if isinstance(parent, Dir):
                # Fresh: the lookup of `path` just used it.
                listing = self.tree.listing(parent)
                self.walk.opened(parent, listing, info, lambda: reader.stats().bytes_read)
        except FwfsError as err:
            log.debug("walk read-ahead: %s: %s", path, err)

    def _walk_listed(self, path: str, node: Dir, listing: Listing) -> None:
        """Tell the walk read-ahead that `path` was enumerated while files are being read."""
        parent: Node | ViewNode | None = None
        if path.strip("/"):
            try:
                parent = self.lookup_site(posixpath.dirname(path.rstrip("/")))
            except FwfsError as err:
                log.debug("walk read-ahead: %s: %s", path, err)
        self.walk.listed(node, listing, parent if isinstance(parent, Dir) else None)

    def open(self, path: str, flags: int) -> Opened:
        node = self.lookup(path)
        if isinstance(node, Dir | ArchiveDir | BidsDir):
            raise IsADirectory("is a directory")
        if isinstance(node, BidsFile):
            return self._open_view(path, node, flags)
        if is_write(flags):
            truncate = bool(flags & os.O_TRUNC)
            try:
                whandle = self._writes().open(path, node, truncate)
            except StaleFile:
                # Its upload was released between the lookup and now: open what the site
                # holds instead.
                whandle = self._writes().open(path, self._lookup_writable(path), truncate)
            return self._add_write_handle(path, whandle)
        if isinstance(node, Pending):
            return self._add_write_handle(path, WriteHandle(path, node), reading=True)
        reader: _Reads
        _refuse_shared_name(node)
        node = self._as_told(path, node)
        if isinstance(node, ArchiveFile):
            reader = _MemberReads(self.archives, node)
            key: tuple[str, ...] = (*map(str, node.archive.cache_key), node.member.path)
        else:
            ranged = reader = self._ranged(node.info)
            key = tuple(map(str, node.info.cache_key))
            if self.walk.enabled:
                self._walk_opened(path, node.info, ranged)
        fh = next(self._next_fh)
        attr = self.attr(node)
        with self._lock:
            cached = self._opened.get(path)
            other_open = any(h.path == path and h.key == cached for h in self._handles.values())
            self._handles[fh] = Handle(key, reader, path, attr)
            if other_open and cached != key:
                return Opened(fh, keep_cache=False, direct_io=True)
            self._opened[path] = key
        return Opened(fh, keep_cache=cached == key, direct_io=False)

    def _open_view(self, path: str, node: BidsFile, flags: int) -> Opened:
        if is_write(flags):
            raise ReadOnly("a BIDS view is read-only: curation is done on the site")
        entry = node.entry
        reader: _Reads
        if entry.source is not None:
            # The site file's own version: the same blocks, cached under the same key.
            reader = self._ranged(entry.source)
            key: tuple[str, ...] = tuple(map(str, entry.source.cache_key))
        else:
            reader = BytesReads(entry.data or b"")
            key = ("bids", node.project.id, entry.path, str(hash(entry.data)))
        fh = next(self._next_fh)
        with self._lock:
            cached = self._opened.get(path)
            self._handles[fh] = Handle(key, reader, path, bids_attr(node))
            self._opened[path] = key
        return Opened(fh, keep_cache=cached == key, direct_io=False)

    def create(self, path: str) -> Opened:
        self._refuse_view(posixpath.dirname(path))
        return self._add_write_handle(path, self._writes().create(path))

    def _add_write_handle(self, path: str, whandle: WriteHandle, reading: bool = False) -> Opened:
        fh = next(self._next_fh)
        attr = Attr(stat.S_IFREG | 0o644, 0, 0, 0)
        with self._lock:
            # The kernel's pages of this path are of no version any more, and the size it
            # holds will come from these writes, not from any version it was told of.
            self._opened[path] = ("written", str(fh))
            if not reading:
                self._told.pop(path, None)
            self._handles[fh] = Handle(
                ("written", str(fh)),
                _WriteReads(self, whandle),
                path,
                attr,
                None if reading else whandle,
            )
        return Opened(fh, keep_cache=False, direct_io=False)

    def read(self, fh: int, offset: int, size: int) -> bytes:
        return self._handle(fh).reader.read(offset, size)

    def write(self, fh: int, offset: int, data: bytes | memoryview) -> int:
        return self._writes().write(self._write_handle(fh), offset, data)

    def flush(self, fh: int) -> None:
        handle = self._handle(fh)
        if handle.write is not None:
            self._writes().flush(handle.write)

    def fsync(self, fh: int) -> None:
        handle = self._handle(fh)
        if handle.write is not None:
            self._writes().fsync(handle.write)

    def truncate(self, path: str, size: int, fh: int | None = None) -> None:
        if fh is not None:
            self._writes().truncate_handle(self._write_handle(fh), size)
            return
        self._writes().truncate(path, self._lookup_writable(path), size)

    def release(self, fh: int) -> None:
        with self._lock:
            handle = self._handles.pop(fh, None)
        if handle is None:
            return
        handle.reader.close()
        if handle.write is not None:
            with self._lock:
                self._told.pop(handle.path, None)
            self._writes().release(handle.write)

    def _write_handle(self, fh: int) -> WriteHandle:
        handle = self._handle(fh)
        if handle.write is None:
            raise InvalidArgument(f"file handle {fh} is not open for writing")
        return handle.write

    # ---- changing the namespace -------------------------------------------------------

    def mkdir(self, path: str) -> None:
        self._refuse_view(path, posixpath.dirname(path))
        self._writes().mkdir(path)

    def rmdir(self, path: str) -> None:
        self._writes().rmdir(path, self._lookup_writable(path))

    def unlink(self, path: str) -> None:
        self._writes().unlink(path, self._lookup_writable(path))

    def rename(self, old: str, new: str, flags: int = 0) -> None:
        node = self._lookup_writable(old)
        self._refuse_view(new, posixpath.dirname(new))
        self._writes().rename(old, new, flags, node)

    def set_metadata(self, path: str) -> None:
        """chmod, chown, utimens: Flywheel keeps no modes, owners or times, so these are
        accepted and change nothing (as `cp -p` and `rsync -a` need) on a writable mount."""
        self._writes()
        self._lookup_writable(path)

    def _handle(self, fh: int) -> Handle:
        with self._lock:
            handle = self._handles.get(fh)
        if handle is None:
            raise InvalidArgument(f"no open file handle {fh}")
        return handle
