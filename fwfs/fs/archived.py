"""Zip archives of the mount: member indexes and readers, one per archive version.

Both come from the archive's own bytes, through the ranged reader and the block cache: the
index is the central directory (one ranged read of the archive's tail, a second one only
for a directory larger than that tail), a member is cut out of the archive (a stored one is
a byte range, a compressed one is inflated here). The site's `?info=true` and `?member=`
cost the same round trip, but the server answers them by reading the archive from object
storage, which on a large archive can outlast the read timeout (fidelity audit, D7); they
are used only for what cannot be done here: `?member=` for a compression method zipfile does
not know, and both on a site that ignores Range (reading the tail would move the whole
archive; the client says so with an error marked `whole_file_only`).

An index is cached by (file_id, version) like file bytes: a new version is a new key. A file
that does not open as a zip has no member directory (ENOENT), and that answer is cached too,
for the same version.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from cachetools import LRUCache

from fwfs.archives import (
    ArchiveConfig,
    ArchiveReader,
    CentralDirectory,
    MemberDir,
    MemberFile,
    NotAZip,
    ZipIndex,
    read_directory,
)
from fwfs.blockcache import BlockCache
from fwfs.errors import FwfsError, InvalidArgument, NotFound
from fwfs.fs.nodes import ArchiveDir, ArchiveFile
from fwfs.models import FileInfo
from fwfs.rangedfile import RangedReader
from fwfs.site import SiteClient

log = logging.getLogger("fwfs.archives")

# Central directories kept between an index and its reader's first use.
_DIRECTORIES = 4
# Readers no open file uses any more, kept for the next open of the same archive.
_IDLE_READERS = 16
# Members come from the archive's bytes from the first read: a member is one ranged read
# of its own region (the central directory is already cached from the index), the same
# round trip as `?member=` without the server's trip to object storage.
_LOCAL_FIRST = ArchiveConfig(scan_members=0)
# Threads of the bulk fetches (ArchiveConfig.bulk_span): one archive's parts, and the part
# in front of the member being read, all in flight together.
_BULK_THREADS = _LOCAL_FIRST.bulk_parts + 1


# Opens a ranged reader of an archive version: its FileInfo, and where the file is now.
OpenRanged = Callable[[FileInfo, Callable[[], FileInfo] | None], RangedReader]


@dataclass
class _Reader:
    reader: ArchiveReader
    # The archive as last listed: a reader is kept by version, which a move through the
    # mount does not change, so its fetches ask this for the container and name.
    archive: FileInfo
    users: int = 0


class Archives:
    """Guarded by `self._lock`: `_indexes` and `_readers` (a `_Reader.archive` is swapped
    under it and read without it by fetches: one reference); no request is made holding
    it."""

    def __init__(
        self,
        client: SiteClient,
        cache: BlockCache,
        open_ranged: OpenRanged,
        index_entries: int = 256,
    ) -> None:
        self._client = client
        self._cache = cache
        self._open_ranged = open_ranged
        self._lock = threading.Lock()
        self._indexes: LRUCache[tuple[str, int], ZipIndex | None] = LRUCache(index_entries)
        self._readers: OrderedDict[tuple[str, int], _Reader] = OrderedDict()
        # Central directories just read for an index, handed to the archive's reader when
        # it opens so they are not parsed twice (150 ms for 20,000 members); a few only,
        # they are large.
        self._directories: LRUCache[tuple[str, int], CentralDirectory] = LRUCache(_DIRECTORIES)
        # Archives whose site ignores Range: their members come from `?member=` too.
        self._site_served: LRUCache[tuple[str, int], bool] = LRUCache(index_entries)
        # Not the ranged readers' pool: a bulk part waits on its reader, which may wait on
        # readahead queued on that pool.
        self._prefetch = ThreadPoolExecutor(_BULK_THREADS, thread_name_prefix="fwfs-archive")

    def index(self, info: FileInfo) -> ZipIndex:
        key = info.cache_key
        with self._lock:
            if key in self._indexes:
                found = self._indexes[key]
                if found is None:
                    raise NotFound("not a zip archive")
                return found
        p = info.parent
        index: ZipIndex | None = None
        try:
            with self._open_ranged(info, None) as reader:
                central = read_directory(reader)
            index = ZipIndex.from_directory(central.infos, central.comment)
            with self._lock:
                self._directories[key] = central
        except NotAZip as err:
            # It does not open as a zip: it is shown as the file it is, no more.
            log.info("%s %s: file %s is not a zip archive (%s)", p.kind, p.id, info.file_id, err)
        except FwfsError as err:
            if not getattr(err, "whole_file_only", False):
                raise
            # The site ignores Range: reading the tail would move the whole archive.
            index = self._site_index(info)
            with self._lock:
                self._site_served[key] = True
        with self._lock:
            self._indexes[key] = index
        if index is None:
            raise NotFound("not a zip archive")
        return index

    def _site_index(self, info: FileInfo) -> ZipIndex | None:
        """The site's own listing (`?info=true`), for a site that ignores Range."""
        p = info.parent
        try:
            doc = self._client.zip_info(
                p.kind,
                p.id,
                info.name,
                version=info.version,
                group=info.file_group,
                file_id=info.file_id,
            )
        except InvalidArgument as err:
            log.info(
                "%s %s: file %s is not a zip archive (%s)",
                p.kind,
                p.id,
                info.file_id,
                err.server_message or err,
            )
            return None
        return ZipIndex.from_listing(doc)

    def root(self, info: FileInfo) -> ArchiveDir:
        self.index(info)
        return ArchiveDir(info, "", info.modified)

    def _node(self, archive: FileInfo, member: MemberDir | MemberFile) -> ArchiveDir | ArchiveFile:
        if isinstance(member, MemberFile):
            return ArchiveFile(archive, member)
        return ArchiveDir(archive, member.relpath, member.mtime)

    def child(self, node: ArchiveDir, name: str) -> ArchiveDir | ArchiveFile:
        relpath = f"{node.relpath}/{name}" if node.relpath else name
        return self._node(node.archive, self.index(node.archive).lookup(relpath))

    def listdir(self, node: ArchiveDir) -> dict[str, ArchiveDir | ArchiveFile]:
        members = self.index(node.archive).listdir(node.relpath)
        return {name: self._node(node.archive, m) for name, m in members.items()}

    # ---- readers ----------------------------------------------------------------------

    def acquire(self, archive: FileInfo) -> ArchiveReader:
        key = archive.cache_key
        with self._lock:
            entry = self._readers.get(key)
            if entry is not None:
                entry.archive = archive
            else:
                entry = self._new_reader(archive)
                self._readers[key] = entry
            entry.users += 1
            self._readers.move_to_end(key)
            return entry.reader

    def _new_reader(self, archive: FileInfo) -> _Reader:
        """A reader of `archive`'s version; the caller holds `self._lock`."""
        key = archive.cache_key

        def located() -> FileInfo:
            return entry.archive

        def fetch_member(path: str) -> bytes:
            now = located()
            p = now.parent
            return self._client.read_zip_member(
                p.kind,
                p.id,
                now.name,
                path,
                version=now.version,
                group=now.file_group,
                file_id=now.file_id,
            )

        reader = ArchiveReader(
            key,
            archive.size,
            fetch_member,
            lambda: self._open_ranged(archive, located),
            self._cache,
            _LOCAL_FIRST,
            self._directories.pop(key, None),
            self._prefetch,
        )
        if key in self._site_served:
            reader.use_site_members()
        entry = _Reader(reader, archive)
        return entry

    def release(self, archive: FileInfo) -> None:
        closing: list[ArchiveReader] = []
        with self._lock:
            entry = self._readers.get(archive.cache_key)
            if entry is not None:
                entry.users -= 1
            idle = [k for k, e in self._readers.items() if e.users <= 0]
            for key in idle[: max(len(idle) - _IDLE_READERS, 0)]:
                closing.append(self._readers.pop(key).reader)
        for reader in closing:
            reader.close()

    def close(self) -> None:
        with self._lock:
            readers = [e.reader for e in self._readers.values()]
            self._readers.clear()
        for reader in readers:
            reader.close()
        self._prefetch.shutdown(wait=False, cancel_futures=True)
