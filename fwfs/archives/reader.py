"""Reads of zip members for one archive version, choosing per read how to get the bytes.

One ``ArchiveReader`` serves every open member of one archive version; it is handed plain
callables and knows nothing of HTTP. There are three ways to a member's bytes:

* **The server's ``?member=``** (``fetch_member``): one request returns the whole member,
  decompressed. Best for one-off reads: a tool opening one slice of a DICOM series pays one
  request and nothing for the central directory. If the server will not serve a member
  (404, 400, or anything not already an ``FwfsError``), the archive itself is asked.
* **The archive itself** (``open_archive``: ranged, cached, read-ahead views of the archive
  bytes). Once a program has read more than ``scan_members`` distinct members, or the
  members fetched one by one add up to ``scan_fraction`` of the archive, it is most likely
  reading all of them (dcm2niix does), and one request per member would cost more than the
  archive. From then on members are cut out of the archive: ``zipfile.ZipFile`` reads the
  central directory once, and each member costs one ranged read from its local header to
  the next member's, so a scan in archive order is one sequential stream that the ranged
  reader's readahead turns into a few large requests. A scan in another order (by name,
  over an archive stored otherwise) also drives a sequential *sweep* of the archive, so it
  too costs a few large requests rather than one per member. Members with a path another
  member shares are always read this way: ``?member=`` would name only one of them.
  Given a ``prefetch`` pool, the second member read from the archive bytes also fetches
  the rest of the members' bytes (or a window of them) at once, as a few ranged requests
  in parallel: one round trip instead of readahead's chain of growing requests
  (``ArchiveConfig.bulk_span``); the next members are then decompressed ahead of the
  program on that pool.
* **Large members** (over ``large_member``) are never buffered whole to answer a small
  read. A stored one is read in place at its data offset; a compressed one is streamed
  through a decompressor that stays alive between sequential reads.

Members are decompressed with ``zipfile.ZipExtFile`` over bytes already fetched (or over a
private file object per stream), not with ``ZipFile.open``: that shares one lock per
``ZipFile`` across every open member and holds it during each read of the underlying
file, which here would be a network request, so every reader would wait for every other.
``ZipExtFile`` checks the CRC when a member is read to its end.

Decompressed member bytes are cached in the shared ``BlockCache`` in blocks of
``member_block`` under ``(archive_key, "member", path, block)`` (``(path, index)`` in place
of ``path`` for a path several members share), so a member read twice or out of order is
fetched or decompressed once, and the cache's byte bound holds.

Errors: every failure is an ``FwfsError``. A corrupt or truncated archive, a CRC mismatch,
a member missing from the archive and the like are ``RemoteError`` (EIO); an encrypted
member is ``PermissionDenied`` (EACCES). Errors of the callables that are already
``FwfsError`` pass unchanged. Member names stay out of messages: they can be PHI.
"""

from __future__ import annotations

import bisect
import contextlib
import importlib.util
import io
import struct
import threading
import zipfile
import zlib
from collections.abc import Callable, Hashable
from concurrent.futures import Executor
from dataclasses import dataclass

from fwfs.archives.central import ArchiveIO, CentralDirectory, NotAZip, read_directory
from fwfs.archives.index import MemberFile
from fwfs.blockcache import BlockCache
from fwfs.errors import (
    FwfsError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RemoteError,
)
from fwfs.rangedfile import RangedReader

KiB = 1024
MiB = 1024 * KiB

# The local file header (APPNOTE 4.3.7): signature, version needed (2 bytes), flags,
# method, time, date, CRC-32, compressed size, size, name length, extra field length.
_LOCAL = struct.Struct("<4s2B4HL2L2H")
_LOCAL_MAGIC = b"PK\x03\x04"
_FLAG_ENCRYPTED = 0x1
_FLAG_PATCHED = 0x20
_FLAG_STRONG_ENCRYPTION = 0x40
_FLAG_UTF8 = 0x800


def _methods() -> frozenset[int]:
    methods = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED}
    # zipfile decompresses these only when Python was built with the modules.
    if importlib.util.find_spec("bz2") is not None:
        methods.add(zipfile.ZIP_BZIP2)
    if importlib.util.find_spec("lzma") is not None:
        methods.add(zipfile.ZIP_LZMA)
    return frozenset(methods)


_LOCAL_METHODS = _methods()

# The bulk fetch's parts: at least this large, and cut on multiples of the alignment.
_BULK_PART_MIN = 1 * MiB
_BULK_ALIGN = 1 * MiB

# (archive key, "member", member path or (path, index), block number): the cache key of one
# block of a member's decompressed bytes.
_MemberKey = tuple[Hashable, str, object, int]


@dataclass(frozen=True)
class ArchiveConfig:
    """When to stop asking the server for members one by one, and what counts as large.

    ``scan_members``: reading more distinct members than this switches the archive to
    local reads. 8: a tool looking at a few slices stays at one request each, and a scan of
    a series of hundreds of slices pays for at most 8 members twice.
    ``scan_fraction``: members fetched one by one adding up to this fraction of the
    archive's size also switch it, so an archive of a few big members is not downloaded
    twice. 0.25: by then the central directory costs little next to what was fetched.
    ``large_member``: members larger than this are read in place or streamed instead of
    fetched whole. 8 MiB: above any single-frame DICOM slice (0.1-1 MB), and the request
    size of the ranged reader, so a whole-member fetch is never slower than one request.
    ``member_block``: the unit in which decompressed bytes are cached. 1 MiB holds a
    typical slice in one block.
    ``max_streams``: live decompressors kept per large compressed member, so a few readers
    at different positions do not restart each other.
    ``sweep_step``: while local reads jump around the archive (a scan in name order of an
    archive stored in another order), each read also advances a sequential read of the
    whole archive by this much, whose readahead then brings the archive in large requests
    instead of one request per member. Only for archives that fit in half the cache, so
    the sweep never evicts what it fetched before it is used. 1 MiB: the ranged reader's
    first readahead window. 0 turns it off.
    ``bulk_span`` / ``bulk_parts``: when a program reads a second member from the archive
    bytes, the members' bytes not yet cached are fetched at once, as up to ``bulk_parts``
    ranged requests in flight together (each 1 MiB or more): all of them when they fit in
    ``bulk_span`` and a quarter of the cache, else that much ahead of the member being
    read, after which readahead carries on. Readahead reaches the same bytes in requests
    asked for as the reader moves on; a program that reads members faster than those
    arrive (cat, cp; dcm2niix over a 150 ms link: 0.2 s less) waits for about one round
    trip instead. dcm2niix at 40 ms is slower than the link either way: no change. Only
    with a ``prefetch`` pool; 0 turns it off.
    ``inflate_ahead``: once the bulk fetch has run, each read of a member also has the
    next this many members (in listing order, among those the bulk fetch brought, and no
    more bytes than a sixteenth of the cache) decompressed into the cache on the
    ``prefetch`` pool, so that a program reading them one by one finds them ready instead
    of waiting for zlib at each open (a DICOM slice: ~0.5 ms). 0 turns it off.
    """

    scan_members: int = 8
    scan_fraction: float = 0.25
    large_member: int = 8 * MiB
    member_block: int = 1 * MiB
    max_streams: int = 2
    sweep_step: int = 1 * MiB
    bulk_span: int = 32 * MiB
    bulk_parts: int = 4
    inflate_ahead: int = 16

    def __post_init__(self) -> None:
        if self.scan_members < 0 or self.scan_fraction < 0:
            raise ValueError("scan thresholds must not be negative")
        if self.large_member < 0 or self.member_block < 1 or self.max_streams < 1:
            raise ValueError("need large_member >= 0, member_block >= 1, max_streams >= 1")
        if self.sweep_step < 0:
            raise ValueError("sweep_step must not be negative")
        if self.bulk_span < 0 or self.bulk_parts < 1 or self.inflate_ahead < 0:
            raise ValueError("need bulk_span >= 0, bulk_parts >= 1 and inflate_ahead >= 0")


@dataclass(frozen=True)
class ArchiveStats:
    """Counters of one archive. ``archive_bytes_fetched`` counts ranged reads of the archive.

    ``members_fetched`` / ``member_bytes_fetched``: ``?member=`` requests and their bytes.
    ``members_local``: members served from the archive bytes (small ones each time they
    are decompressed into the cache, large ones once).
    ``scanning``: whether the archive has switched to local reads for good.
    """

    members_fetched: int
    member_bytes_fetched: int
    members_local: int
    archive_bytes_fetched: int
    archive_fetches: int
    scanning: bool


@dataclass(frozen=True)
class _Directory:
    """The archive's central directory, parsed once."""

    infos: tuple[zipfile.ZipInfo, ...]
    # Member names that occur once: a fallback when the listing's order is not the archive's.
    by_name: dict[str, zipfile.ZipInfo]
    # Every local header offset and the start of the central directory, ascending: a
    # member's bytes (header, data, descriptor) end where the next one of these begins.
    bounds: tuple[int, ...]

    @classmethod
    def of(cls, central: CentralDirectory) -> _Directory:
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


class _Stream:
    """A live decompressor of one large member, at ``pos`` (a multiple of member_block)."""

    def __init__(self, ext: zipfile.ZipExtFile) -> None:
        self.ext = ext
        self.pos = 0


class _Large:
    """What reads of one large member share: where its data is and how far it is checked.

    Guarded by ``lock``: ``crc``, ``crc_end``, ``bad`` and ``streams``.
    """

    def __init__(self, info: zipfile.ZipInfo, data_offset: int, reader: RangedReader) -> None:
        self.info = info
        self.data_offset = data_offset
        self.reader = reader
        self.lock = threading.Lock()
        self.crc = 0
        self.crc_end = 0
        self.bad = False
        self.streams: list[_Stream] = []


class ArchiveReader:
    """Reads members of one archive version. Thread-safe; share one per archive version.

    Dependencies (never change): ``key``, ``size``, the callables, the cache and the config.
    Guarded by ``_lock``: the scan detector (``_seen``, ``_scanning``), the sweep
    (``_scan_next``, ``_sweep_pos``), the bulk fetch (``_bulk_first``, ``_bulk_started``,
    ``_bulk_span``), inflating ahead (``_ahead_next``, ``_ahead_until``,
    ``_ahead_running``), the counters, ``_roles``, ``_readers`` and
    ``_large``; never held during I/O. ``_dir_lock`` makes loading the central directory
    single-flight: it is held while loading and taken before ``_lock``, never inside it.
    Each ``_Large.lock`` is innermost. Waits on other threads' fetches happen inside the
    cache, with none of our locks held.
    """

    def __init__(
        self,
        archive_key: Hashable,
        archive_size: int,
        fetch_member: Callable[[str], bytes],
        open_archive: Callable[[], RangedReader],
        cache: BlockCache,
        config: ArchiveConfig | None = None,
        directory: CentralDirectory | None = None,
        prefetch: Executor | None = None,
    ) -> None:
        """``directory``: the archive's central directory when the caller has just read it
        (for its index), so that it is not parsed again. ``prefetch``: where the bulk fetch
        runs (see ``ArchiveConfig.bulk_span``); its tasks only read the archive, so it may
        be shared, but not with the ranged readers' own pool (a reader must not wait on
        its pool from a task of it)."""
        if archive_size < 0:
            raise ValueError("archive_size must not be negative")
        self.key = archive_key
        self.size = archive_size
        self._fetch_member = fetch_member
        self._open_archive = open_archive
        self._cache = cache
        self._config = config if config is not None else ArchiveConfig()
        self._prefetch = prefetch

        self._lock = threading.Lock()
        self._dir_lock = threading.Lock()
        self._directory = _Directory.of(directory) if directory is not None else None
        self._seen: set[int] = set()
        self._scanning = False
        # The site answered a ranged read with the whole file: read members with ?member=.
        self._whole_only = False
        # Shared readers by role: "meta" (central directory, local headers), "scan" (small
        # members, in the order they are read) and "sweep" (the archive front to back).
        self._roles: dict[str, RangedReader] = {}
        self._scan_next: int | None = None  # where the last local member read ended
        self._sweep_pos = 0
        # The bulk fetch: the first member read locally, then "started" once a second one is.
        self._bulk_first: int | None = None
        self._bulk_started = False
        self._bulk_span: tuple[int, int] | None = None  # [start, end) it fetched
        # Inflating ahead: members [_ahead_next, _ahead_until) are still to do, by the one
        # task on the prefetch pool while _ahead_running.
        self._ahead_next = 0
        self._ahead_until = 0
        self._ahead_running = False
        self._large: dict[int, _Large] = {}
        self._readers: list[RangedReader] = []
        self._members_fetched = 0
        self._member_bytes = 0
        self._members_local = 0

    # ---- public ------------------------------------------------------------------------

    def read(self, member: MemberFile, offset: int, length: int) -> bytes:
        """Exactly the member's bytes ``[offset, offset + length)``; b"" at or past its end."""
        if offset < 0 or length < 0:
            raise InvalidArgument("negative offset or length")
        end = min(offset + length, member.size)
        if offset >= end:
            return b""
        local = self._note_read(member)
        try:
            if member.size > self._config.large_member:
                return self._read_large(member, offset, end)
            if not (local and self._prefetch is not None):
                return self._read_small(member, offset, end, local)
            if self._bulk_due(member):
                self._bulk(member)
            data = self._read_small(member, offset, end, local)
            self._inflate_ahead(member)
            return data
        except FwfsError:
            raise
        except Exception as err:
            raise _translate(err) from err

    def use_site_members(self) -> None:
        """Read members with ``fetch_member`` from now on, where it can serve them: the
        archive's bytes are known to be unreadable by range (the site ignores Range)."""
        with self._lock:
            self._whole_only = True

    def stats(self) -> ArchiveStats:
        with self._lock:
            readers = list(self._readers)
            counts = (self._members_fetched, self._member_bytes, self._members_local)
            scanning = self._scanning
        reader_stats = [r.stats() for r in readers]
        return ArchiveStats(
            members_fetched=counts[0],
            member_bytes_fetched=counts[1],
            members_local=counts[2],
            archive_bytes_fetched=sum(s.bytes_fetched for s in reader_stats),
            archive_fetches=sum(s.fetch_calls for s in reader_stats),
            scanning=scanning,
        )

    def close(self) -> None:
        """Cancel readahead and drop live decompressors; later reads open what they need.

        Meant for when no read is in flight (the archive's last handle closed).
        """
        with self._lock:
            readers = list(self._roles.values())
            readers += [large.reader for large in self._large.values()]
            self._roles = {}
            self._large = {}
            self._ahead_until = self._ahead_next
        for reader in readers:
            reader.close()

    # ---- the scan detector -------------------------------------------------------------

    def _note_read(self, member: MemberFile) -> bool:
        """Count a read of ``member``; True when it must come from the archive bytes."""
        cfg = self._config
        with self._lock:
            if not self._scanning:
                self._seen.add(member.index)
                if (
                    len(self._seen) > cfg.scan_members
                    or self._member_bytes > cfg.scan_fraction * self.size
                ):
                    self._scanning = True
                    self._seen = set()
            if self._whole_only and member.fetchable:
                return False
            return self._scanning or not member.fetchable

    # ---- small members: whole, through the member cache --------------------------------

    def _read_small(
        self, member: MemberFile, offset: int, end: int, local: bool, ahead: bool = False
    ) -> bytes:
        """``ahead``: for inflating ahead, which must not disturb the scan's stream."""
        bs = self._config.member_block
        first, last = offset // bs, -(-end // bs)
        keys = [self._block_key(member, i) for i in range(first, last)]

        def produce(missing: list[_MemberKey]) -> list[bytes]:
            data = self._load(member, local, ahead)
            blocks = {i: data[i * bs : (i + 1) * bs] for i in range(-(-len(data) // bs))}
            wanted = {key[3] for key in missing}
            for i, block in blocks.items():
                if i not in wanted:
                    self._cache.put(self._block_key(member, i), block)
            return [blocks[key[3]] for key in missing]

        blocks = self._cache.get_or_fetch_many(keys, produce)
        return _assemble(blocks, offset - first * bs, end - offset)

    def _block_key(self, member: MemberFile, block: int) -> _MemberKey:
        # A path shared by several members does not name one of them: add the index.
        ident: object = member.path if member.fetchable else (member.path, member.index)
        return (self.key, "member", ident, block)

    def _load(self, member: MemberFile, local: bool, ahead: bool = False) -> bytes:
        """The whole member, verified: from the archive when ``local``, else the server."""
        if local:
            try:
                info = self._info(member)
                if info.compress_type in _LOCAL_METHODS:
                    return self._extract(member, info, ahead)
            except FwfsError as err:
                if not (member.fetchable and self._note_whole_only(err)):
                    raise
            else:
                if not member.fetchable:
                    raise RemoteError(f"zip compression method {info.compress_type} is unsupported")
        return self._fetch(member)

    def _note_whole_only(self, err: FwfsError) -> bool:
        """True when ``err`` says the site ignores Range: members come from it from now on.

        Reading the archive there moves all of it for every read; ``?member=`` moves one
        member.
        """
        if not getattr(err, "whole_file_only", False):
            return False
        self.use_site_members()
        return True

    def _fetch(self, member: MemberFile) -> bytes:
        try:
            data = self._fetch_member(member.path)
        except (NotFound, InvalidArgument, RemoteError) as err:
            # The server would not serve the member (a name its lookup mangles, a member it
            # calls encrypted or missing, a member it fails to decompress mid-body): the
            # archive itself gives the precise answer, or the same network error.
            return self._extract_instead(member, err)
        except FwfsError:
            raise
        except Exception as err:
            if _is_encryption_error(err):
                raise PermissionDenied("zip member is encrypted") from err
            return self._extract_instead(member, err)
        with self._lock:
            self._members_fetched += 1
            self._member_bytes += len(data)
        if len(data) != member.size:
            raise RemoteError(f"server sent {len(data)} bytes of a zip member of {member.size}")
        directory = self._directory
        if directory is not None:
            # Free when the central directory is at hand: the listing carries no CRC.
            info = self._match(directory, member)
            if info is not None and zlib.crc32(data) != info.CRC:
                raise RemoteError("zip member from the server fails its CRC check")
        return data

    def _extract_instead(self, member: MemberFile, err: Exception) -> bytes:
        info = self._info(member)
        if info.compress_type not in _LOCAL_METHODS:
            raise _translate(err) from err
        return self._extract(member, info)

    def _extract(self, member: MemberFile, info: zipfile.ZipInfo, ahead: bool = False) -> bytes:
        """Decompress one member from its bytes in the archive; zipfile checks the CRC."""
        directory = self._load_directory()
        reader = self._reader("ahead" if ahead else "scan")
        start = info.header_offset
        # Never more than the largest possible header, data and descriptor, whatever gap
        # lies before the next member.
        most = start + _LOCAL.size + 2 * 0xFFFF + info.compress_size + 24
        region_end = min(max(directory.region_end(info, self.size), start + _LOCAL.size), most)
        # One read from the local header to the next member's: a scan in archive order is
        # then a contiguous stream, and the ranged reader reads ahead of it.
        region = reader.read(start, min(region_end, self.size) - start)
        data_start = self._data_start(info, region)
        need = data_start + info.compress_size
        if len(region) < need:
            # The next header starts before this member's data ends (a local extra field
            # longer than usual, or overlapping entries): read the rest.
            region += reader.read(start + len(region), need - len(region))
        if len(region) < need:
            raise RemoteError("truncated zip archive: member data runs past its end")
        if not ahead:
            self._sweep(directory, start, start + len(region))
        payload = io.BytesIO(region[data_start:need])
        with zipfile.ZipExtFile(payload, "r", info) as ext:
            data = ext.read()
        if len(data) != member.size:
            raise RemoteError(f"zip member holds {len(data)} bytes, listed as {member.size}")
        with self._lock:
            self._members_local += 1
        return data

    def _sweep(self, directory: _Directory, start: int, end: int) -> None:
        """After a local read of ``[start, end)``, advance the sweep if reads jump around.

        Reads that follow one another need no sweep: their own stream reads ahead.
        """
        step = self._config.sweep_step
        limit = directory.bounds[-1]  # members end where the central directory begins
        if step == 0 or 2 * self.size > self._cache.max_bytes:
            return
        with self._lock:
            jumped = self._scan_next is not None and self._scan_next != start
            self._scan_next = end
            if not jumped or self._sweep_pos >= limit:
                return
            pos = self._sweep_pos
            stop = self._sweep_pos = min(pos + step, limit)
        # Only a hint: the member's own bytes are already here, and whoever needs a block
        # the sweep failed to fetch fetches it again.
        with contextlib.suppress(Exception):
            self._reader("sweep").read(pos, stop - pos)

    # ---- the bulk fetch ------------------------------------------------------------------

    def _bulk_due(self, member: MemberFile) -> bool:
        """True at the second distinct member read from the archive bytes (once)."""
        with self._lock:
            if self._bulk_started or self._whole_only or self._config.bulk_span == 0:
                return False
            if self._bulk_first is None or self._bulk_first == member.index:
                # One member alone costs its own region only.
                self._bulk_first = member.index
                return False
            self._bulk_started = True
            return True

    def _bulk(self, member: MemberFile) -> None:
        """Fetch the members' bytes in parallel parts (``ArchiveConfig.bulk_span``) for a
        read of ``member``, the second one read.

        The read waits only for its own head: its member up to the next 1 MiB boundary, in
        a request of its own sent with the parts (as small as the scan's first request
        with its readahead). Waiting for a part instead would wait for it to share the
        link with the others; reading the member with the scan's reader would start
        readahead into the first part, and wait for all of it.
        """
        try:
            info = self._info(member)
            directory = self._load_directory()
        except FwfsError:
            return  # the read itself reports it
        here = info.header_offset
        limit = directory.bounds[-1]
        head = min(
            max(limit, here), -(-directory.region_end(info, self.size) // _BULK_ALIGN) * _BULK_ALIGN
        )
        parts = self._bulk_parts(directory, here, head)
        with self._lock:
            self._bulk_span = (
                min([here, *(p[0] for p in parts)]),
                max([head, *(p[1] for p in parts)]),
            )
        assert self._prefetch is not None
        for start, end in parts:
            try:
                self._prefetch.submit(self._fetch_part, start, end)
            except RuntimeError:
                return  # the pool is shut down: the mount is stopping
        self._fetch_part(here, head)

    def _inflate_ahead(self, member: MemberFile) -> None:
        """After a read of ``member``, have the next members decompressed into the cache
        (``ArchiveConfig.inflate_ahead``)."""
        cfg = self._config
        directory = self._directory
        if self._bulk_span is None or cfg.inflate_ahead == 0 or directory is None:
            return
        # At most inflate_ahead members, and no more bytes than a sixteenth of the cache:
        # what is inflated ahead must not push out what the program is reading.
        infos = directory.infos
        until, budget = member.index + 1, self._cache.max_bytes // 16
        while until < min(len(infos), member.index + 1 + cfg.inflate_ahead):
            budget -= infos[until].file_size
            if budget < 0:
                break
            until += 1
        with self._lock:
            self._ahead_next = max(self._ahead_next, member.index + 1)
            self._ahead_until = max(self._ahead_until, until)
            if self._ahead_running or self._ahead_next >= self._ahead_until:
                return
            self._ahead_running = True
        assert self._prefetch is not None
        try:
            self._prefetch.submit(self._run_ahead)
        except RuntimeError:
            with self._lock:
                self._ahead_running = False

    def _run_ahead(self) -> None:
        """Decompress members until caught up with ``_ahead_until``; one task at a time.

        Only members inside what the bulk fetch brought: this is CPU the program would
        otherwise wait for, not another stream of requests (a block the cache has dropped
        since is fetched again, as the program's own read would).
        """
        directory = self._directory
        span = self._bulk_span
        assert directory is not None and span is not None
        while True:
            with self._lock:
                i = self._ahead_next
                if i >= min(self._ahead_until, len(directory.infos)):
                    self._ahead_running = False
                    return
                self._ahead_next = i + 1
            info = directory.infos[i]
            if (
                info.is_dir()
                or not 0 < info.file_size <= self._config.large_member
                or info.compress_type not in _LOCAL_METHODS
                or info.flag_bits & (_FLAG_ENCRYPTED | _FLAG_STRONG_ENCRYPTION | _FLAG_PATCHED)
                or not span[0] <= info.header_offset
                or directory.region_end(info, self.size) > span[1]
            ):
                continue
            member = MemberFile(
                name="",
                relpath="",
                path=info.filename,
                index=i,
                size=info.file_size,
                mtime=0.0,
                comment="",
                fetchable=info.filename in directory.by_name,
            )
            # Only a head start: a member that fails here fails again for its reader, who
            # gets the error.
            with contextlib.suppress(Exception):
                self._read_small(member, 0, member.size, local=True, ahead=True)

    def _bulk_parts(self, directory: _Directory, here: int, head: int) -> list[tuple[int, int]]:
        """The ``[start, end)`` ranges of the bulk fetch for a read of the member whose
        local header is at ``here``, which fetches ``[here, head)`` itself."""
        cfg = self._config
        span = min(cfg.bulk_span, self._cache.max_bytes // 4)
        first, limit = directory.bounds[0], directory.bounds[-1]
        if limit - first <= span:
            ranges = [(head, limit), (first, here)]
        else:
            ranges = [(head, min(limit, here + span))]
        total = sum(end - start for start, end in ranges)
        # Parts on 1 MiB boundaries: two parts never share a ranged reader's block (one
        # would wait for the other's request), and none is smaller than a round trip's worth.
        step = -(-max(_BULK_PART_MIN, -(-total // cfg.bulk_parts)) // _BULK_ALIGN) * _BULK_ALIGN
        parts: list[tuple[int, int]] = []
        for start, end in ranges:
            pos = start
            while pos < end:
                stop = min(end, (pos // _BULK_ALIGN) * _BULK_ALIGN + step)
                parts.append((pos, stop))
                pos = stop
        return parts

    def _fetch_part(self, start: int, end: int) -> None:
        # A reader of its own for each part: its first read fetches exactly the blocks not
        # yet cached, in one request, and starts no readahead. Only a hint: whoever needs
        # a block a part failed to fetch fetches it again.
        reader = self._open_reader()
        try:
            with contextlib.suppress(Exception):
                reader.read(start, end - start)
        finally:
            reader.close()

    # ---- large members: in place or streamed --------------------------------------------

    def _read_large(self, member: MemberFile, offset: int, end: int) -> bytes:
        if self._whole_only and member.fetchable:
            return self._read_small(member, offset, end, local=False)
        try:
            large = self._large_state(member)
        except FwfsError as err:
            if not (member.fetchable and self._note_whole_only(err)):
                raise
            return self._read_small(member, offset, end, local=False)
        if large is None:
            # A method zipfile cannot decompress: only the server can, whole.
            return self._read_small(member, offset, end, local=False)
        if large.bad:
            raise RemoteError("zip member failed its CRC check")
        if large.info.compress_type == zipfile.ZIP_STORED:
            return self._read_stored(large, offset, end)
        return self._read_streamed(member, large, offset, end)

    def _large_state(self, member: MemberFile) -> _Large | None:
        with self._lock:
            large = self._large.get(member.index)
        if large is not None:
            return large
        info = self._info(member)
        if info.compress_type not in _LOCAL_METHODS:
            if member.fetchable:
                return None
            raise RemoteError(f"zip compression method {info.compress_type} is not supported")
        # Header and name in one read: a second read continuing the first would look like
        # a sequential stream and start readahead. No encoding of a name is shorter in
        # UTF-8 than in CP437, so this covers the name whichever the header uses.
        name_len = len(info.orig_filename.encode("utf-8", "surrogatepass"))
        head = self._reader("meta").read(info.header_offset, _LOCAL.size + name_len)
        data_offset = info.header_offset + self._data_start(info, head)
        if data_offset + info.compress_size > self.size:
            raise RemoteError("truncated zip archive: member data runs past its end")
        if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
            raise RemoteError("stored zip member with differing sizes")
        # A reader of its own, so its readahead follows this member's stream alone.
        reader = self._open_reader()
        with self._lock:
            large = self._large.setdefault(member.index, _Large(info, data_offset, reader))
            if large.reader is reader:
                self._members_local += 1
            return large

    def _read_stored(self, large: _Large, offset: int, end: int) -> bytes:
        data = large.reader.read(large.data_offset + offset, end - offset)
        if len(data) != end - offset:
            raise RemoteError("truncated zip archive: member data runs past its end")
        # A range of a stored member cannot be checked against the member's CRC, which
        # covers the whole member. What can be done cheaply is done: the CRC of the prefix
        # read so far is carried along while reads continue one another (a sequential
        # read), and when that reaches the end a mismatch fails the read and every later
        # one. Random reads of a corrupt stored member are served unchecked.
        info = large.info
        with large.lock:
            if offset <= large.crc_end < end:
                large.crc = zlib.crc32(data[large.crc_end - offset :], large.crc)
                large.crc_end = end
                if end == info.file_size and large.crc != info.CRC:
                    large.bad = True
            if large.bad:
                raise RemoteError("zip member fails its CRC check")
        return data

    def _read_streamed(self, member: MemberFile, large: _Large, offset: int, end: int) -> bytes:
        bs = self._config.member_block
        first, last = offset // bs, -(-end // bs)
        keys = [self._block_key(member, i) for i in range(first, last)]

        def produce(missing: list[_MemberKey]) -> list[bytes]:
            wanted = [key[3] for key in missing]
            found = self._decompress_blocks(member, large, wanted)
            return [found[i] for i in wanted]

        blocks = self._cache.get_or_fetch_many(keys, produce)
        return _assemble(blocks, offset - first * bs, end - offset)

    def _decompress_blocks(
        self, member: MemberFile, large: _Large, wanted: list[int]
    ) -> dict[int, bytes]:
        """Blocks ``wanted`` (ascending) of a compressed member, from a live decompressor.

        Blocks passed on the way are cached too: a reader that seeks back finds them there
        instead of restarting the stream from the member's start.
        """
        bs, size = self._config.member_block, member.size
        stream = self._take_stream(large, wanted[0] * bs)
        found: dict[int, bytes] = {}
        targets = set(wanted)
        try:
            while stream.pos < size and stream.pos <= wanted[-1] * bs:
                block = stream.pos // bs
                data = stream.ext.read(min(bs, size - stream.pos))
                if len(data) != min(bs, size - stream.pos):
                    raise RemoteError("zip member decompresses to fewer bytes than listed")
                stream.pos += len(data)
                if block in targets:
                    found[block] = data
                else:
                    self._cache.put(self._block_key(member, block), data)
        except zipfile.BadZipFile as err:
            # zipfile checks the CRC on the read that reaches the member's end, when the
            # earlier blocks have been served already: refuse every later read instead.
            with large.lock:
                large.bad = True
            raise _translate(err) from err
        # Only a stream that succeeded goes back: one that failed mid-block is at an unknown
        # position.
        if stream.pos < size:
            self._put_stream(large, stream)
        return found

    def _take_stream(self, large: _Large, target: int) -> _Stream:
        """The live stream nearest before ``target``, or a new one from the member's start."""
        with large.lock:
            usable = [s for s in large.streams if s.pos <= target]
            if usable:
                best = max(usable, key=lambda s: s.pos)
                large.streams.remove(best)
                return best
        raw = ArchiveIO(large.reader, large.data_offset, large.info.compress_size)
        return _Stream(zipfile.ZipExtFile(raw, "r", large.info))

    def _put_stream(self, large: _Large, stream: _Stream) -> None:
        with large.lock:
            large.streams.append(stream)
            del large.streams[: -self._config.max_streams]

    # ---- the central directory and local headers -----------------------------------------

    def _load_directory(self) -> _Directory:
        directory = self._directory
        if directory is not None:
            return directory
        with self._dir_lock:
            if self._directory is None:
                try:
                    # The index was read from these cached bytes a moment ago, most often.
                    central = read_directory(self._reader("meta"), prime=False)
                except NotAZip as err:
                    raise RemoteError(f"corrupt or truncated zip archive ({err})") from err
                self._directory = _Directory.of(central)
            return self._directory

    def _info(self, member: MemberFile) -> zipfile.ZipInfo:
        info = self._match(self._load_directory(), member)
        if info is None:
            raise RemoteError("zip member is missing from the archive")
        if info.file_size != member.size:
            raise RemoteError("zip archive does not match its listing (member size)")
        if info.flag_bits & (_FLAG_ENCRYPTED | _FLAG_STRONG_ENCRYPTION):
            raise PermissionDenied("zip member is encrypted")
        if info.flag_bits & _FLAG_PATCHED:
            raise RemoteError("zip member holds patched data, which is not supported")
        if info.compress_size > info.file_size + info.file_size // 8 + 64 * KiB:
            # No method expands data by more than a fraction of a percent; a directory that
            # says otherwise is corrupt, and believing it would read far past the member.
            raise RemoteError("corrupt zip archive: implausible compressed size")
        return info

    @staticmethod
    def _match(directory: _Directory, member: MemberFile) -> zipfile.ZipInfo | None:
        # The listing is the central directory in order, so the index finds the very
        # member even among several of one name; the name is the fallback.
        if member.index < len(directory.infos):
            info = directory.infos[member.index]
            if info.filename == member.path and not info.is_dir():
                return info
        return directory.by_name.get(member.path) if member.fetchable else None

    def _data_start(self, info: zipfile.ZipInfo, head: bytes) -> int:
        """Where the data starts, from the start of the local header in ``head``.

        The local header, not the central directory, decides: its extra field often differs
        (zip64 writers put one only here).
        """
        if len(head) < _LOCAL.size:
            raise RemoteError("truncated zip archive: local header runs past its end")
        magic, _, _, flags, _, _, _, _, _, _, name_len, extra_len = _LOCAL.unpack_from(head)
        if magic != _LOCAL_MAGIC:
            raise RemoteError("corrupt zip archive: bad local header signature")
        if flags & (_FLAG_ENCRYPTED | _FLAG_STRONG_ENCRYPTION):
            raise PermissionDenied("zip member is encrypted")
        raw_name = head[_LOCAL.size : _LOCAL.size + name_len]
        if len(raw_name) != name_len:
            raise RemoteError("truncated zip archive: local header runs past its end")
        name = raw_name.decode("utf-8" if flags & _FLAG_UTF8 else "cp437", "replace")
        if name != info.orig_filename:
            raise RemoteError("corrupt zip archive: local header names another member")
        return _LOCAL.size + int(name_len) + int(extra_len)

    # ---- archive readers ---------------------------------------------------------------

    def _reader(self, role: str) -> RangedReader:
        """The shared reader for ``role``, opened on first use.

        One per role, so that each one's readahead follows one pattern: directory and
        header reads would otherwise end the scan's stream at every member.
        """
        with self._lock:
            reader = self._roles.get(role)
        if reader is not None:
            return reader
        fresh = self._open_reader()
        with self._lock:
            return self._roles.setdefault(role, fresh)

    def _open_reader(self) -> RangedReader:
        reader = self._open_archive()
        with self._lock:
            self._readers.append(reader)
        return reader


def _assemble(blocks: list[bytes], head: int, length: int) -> bytes:
    if len(blocks) == 1:
        data = blocks[0][head : head + length]
    else:
        data = b"".join(blocks)[head : head + length]
    if len(data) != length:
        raise RemoteError("cached zip member blocks are shorter than the member")
    return data


def _is_encryption_error(err: BaseException) -> bool:
    # zipfile says so only in the message: "File … is encrypted, password required".
    return isinstance(err, RuntimeError) and "encrypted" in str(err)


def _translate(err: BaseException) -> FwfsError:
    """The FwfsError for a failure inside zipfile, zlib or the archive's bytes."""
    if isinstance(err, FwfsError):
        return err
    if _is_encryption_error(err):
        return PermissionDenied("zip member is encrypted")
    kind = type(err).__name__
    if isinstance(err, zipfile.BadZipFile) and "CRC" in str(err):
        return RemoteError("zip member fails its CRC check")
    if isinstance(err, (zipfile.BadZipFile, EOFError, struct.error)):
        return RemoteError(f"corrupt or truncated zip archive ({kind})")
    if isinstance(err, zlib.error):
        return RemoteError(f"zip member does not decompress ({kind})")
    if isinstance(err, NotImplementedError):
        return RemoteError(f"zip feature not supported ({kind})")
    if isinstance(err, OSError):
        # From the ranged reader (a short fetch) or bz2: no member names in these.
        return RemoteError(f"zip archive cannot be read: {err}")
    return RemoteError(f"zip archive cannot be read ({kind})")
