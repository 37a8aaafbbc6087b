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
  program on that pool. Both are planned in ``bulk.py``; where a member lies in the
  archive is worked out in ``layout.py``.
* **Large members** (over ``large_member``) are never buffered whole to answer a small
  read. A stored one is read in place at its data offset; a compressed one is streamed
  through a decompressor that stays alive between sequential reads (``large.py``).

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

import contextlib
import io
import struct
import threading
import zipfile
import zlib
from collections.abc import Callable, Hashable
from concurrent.futures import Executor
from dataclasses import dataclass

from fwfs.archives.bulk import BulkFetch
from fwfs.archives.central import CentralDirectory, NotAZip, read_directory
from fwfs.archives.index import MemberFile
from fwfs.archives.large import LargeMember
from fwfs.archives.layout import LOCAL, LOCAL_METHODS, Directory, data_start
from fwfs.archives.settings import ArchiveConfig
from fwfs.blockcache import BlockCache
from fwfs.errors import (
    FwfsError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RemoteError,
)
from fwfs.rangedfile import RangedReader

# (archive key, "member", member path or (path, index), block number): the cache key of one
# block of a member's decompressed bytes.
_MemberKey = tuple[Hashable, str, object, int]


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


class ArchiveReader:
    """Reads members of one archive version. Thread-safe; share one per archive version.

    Dependencies (never change): ``key``, ``size``, the callables, the cache and the config.
    Guarded by ``_lock``: the scan detector (``_seen``, ``_scanning``), the sweep
    (``_scan_next``, ``_sweep_pos``), the counters, ``_roles``, ``_readers`` and
    ``_large``; never held during I/O. The bulk fetch (``_bulk``) keeps its own lock,
    taken inside none of ours. ``_dir_lock`` makes loading the central directory
    single-flight: it is held while loading and taken before ``_lock``, never inside it.
    Each ``LargeMember.lock`` is innermost. Waits on other threads' fetches happen inside the
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

        self._lock = threading.Lock()
        self._dir_lock = threading.Lock()
        self._directory = Directory.of(directory) if directory is not None else None
        self._seen: set[int] = set()
        self._scanning = False
        # The site answered a ranged read with the whole file: read members with ?member=.
        self._whole_only = False
        # Shared readers by role: "meta" (central directory, local headers), "scan" (small
        # members, in the order they are read) and "sweep" (the archive front to back).
        self._roles: dict[str, RangedReader] = {}
        self._scan_next: int | None = None  # where the last local member read ended
        self._sweep_pos = 0
        self._bulk = (
            BulkFetch(self._config, archive_size, cache, prefetch, self._open_reader, self._inflate)
            if prefetch is not None
            else None
        )
        self._large: dict[int, LargeMember] = {}
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
            if not (local and self._bulk is not None):
                return self._read_small(member, offset, end, local)
            if self._bulk.due(member):
                self._start_bulk(member, self._bulk)
            data = self._read_small(member, offset, end, local)
            self._bulk.inflate_ahead(member, self._directory)
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
        if self._bulk is not None:
            self._bulk.stop()

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
        if self._bulk is not None:
            self._bulk.cancel_ahead()
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
                if info.compress_type in LOCAL_METHODS:
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
            info = directory.match(member)
            if info is not None and zlib.crc32(data) != info.CRC:
                raise RemoteError("zip member from the server fails its CRC check")
        return data

    def _extract_instead(self, member: MemberFile, err: Exception) -> bytes:
        info = self._info(member)
        if info.compress_type not in LOCAL_METHODS:
            raise _translate(err) from err
        return self._extract(member, info)

    def _extract(self, member: MemberFile, info: zipfile.ZipInfo, ahead: bool = False) -> bytes:
        """Decompress one member from its bytes in the archive; zipfile checks the CRC."""
        directory = self._load_directory()
        reader = self._reader("ahead" if ahead else "scan")
        start = info.header_offset
        # Never more than the largest possible header, data and descriptor, whatever gap
        # lies before the next member.
        most = start + LOCAL.size + 2 * 0xFFFF + info.compress_size + 24
        region_end = min(max(directory.region_end(info, self.size), start + LOCAL.size), most)
        # One read from the local header to the next member's: a scan in archive order is
        # then a contiguous stream, and the ranged reader reads ahead of it.
        region = reader.read(start, min(region_end, self.size) - start)
        start_of_data = data_start(info, region)
        need = start_of_data + info.compress_size
        if len(region) < need:
            # The next header starts before this member's data ends (a local extra field
            # longer than usual, or overlapping entries): read the rest.
            region += reader.read(start + len(region), need - len(region))
        if len(region) < need:
            raise RemoteError("truncated zip archive: member data runs past its end")
        if not ahead:
            self._sweep(directory, start, start + len(region))
        payload = io.BytesIO(region[start_of_data:need])
        with zipfile.ZipExtFile(payload, "r", info) as ext:
            data = ext.read()
        if len(data) != member.size:
            raise RemoteError(f"zip member holds {len(data)} bytes, listed as {member.size}")
        with self._lock:
            self._members_local += 1
        return data

    def _sweep(self, directory: Directory, start: int, end: int) -> None:
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

    # ---- the bulk fetch (``bulk.py``) ----------------------------------------------------

    def _start_bulk(self, member: MemberFile, bulk: BulkFetch) -> None:
        try:
            info = self._info(member)
            directory = self._load_directory()
        except FwfsError:
            return  # the read itself reports it
        bulk.start(directory, info)

    def _inflate(self, member: MemberFile) -> None:
        # ``ahead``: inflating ahead must not disturb the scan's stream.
        self._read_small(member, 0, member.size, local=True, ahead=True)

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
            return large.read_stored(offset, end)
        return self._read_streamed(member, large, offset, end)

    def _large_state(self, member: MemberFile) -> LargeMember | None:
        with self._lock:
            large = self._large.get(member.index)
        if large is not None:
            return large
        info = self._info(member)
        if info.compress_type not in LOCAL_METHODS:
            if member.fetchable:
                return None
            raise RemoteError(f"zip compression method {info.compress_type} is not supported")
        # Header and name in one read: a second read continuing the first would look like
        # a sequential stream and start readahead. No encoding of a name is shorter in
        # UTF-8 than in CP437, so this covers the name whichever the header uses.
        name_len = len(info.orig_filename.encode("utf-8", "surrogatepass"))
        head = self._reader("meta").read(info.header_offset, LOCAL.size + name_len)
        data_offset = info.header_offset + data_start(info, head)
        if data_offset + info.compress_size > self.size:
            raise RemoteError("truncated zip archive: member data runs past its end")
        if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
            raise RemoteError("stored zip member with differing sizes")
        # A reader of its own, so its readahead follows this member's stream alone.
        reader = self._open_reader()
        with self._lock:
            large = self._large.setdefault(member.index, LargeMember(info, data_offset, reader))
            if large.reader is reader:
                self._members_local += 1
            return large

    def _read_streamed(
        self, member: MemberFile, large: LargeMember, offset: int, end: int
    ) -> bytes:
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
        self, member: MemberFile, large: LargeMember, wanted: list[int]
    ) -> dict[int, bytes]:
        """Blocks ``wanted`` (ascending) of a compressed member, from a live decompressor.

        Blocks passed on the way are cached too: a reader that seeks back finds them there
        instead of restarting the stream from the member's start.
        """
        bs, size = self._config.member_block, member.size
        stream = large.take_stream(wanted[0] * bs)
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
            large.mark_bad()
            raise _translate(err) from err
        # Only a stream that succeeded goes back: one that failed mid-block is at an unknown
        # position.
        if stream.pos < size:
            large.put_stream(stream, self._config.max_streams)
        return found

    # ---- the central directory and local headers -----------------------------------------

    def _load_directory(self) -> Directory:
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
                self._directory = Directory.of(central)
            return self._directory

    def _info(self, member: MemberFile) -> zipfile.ZipInfo:
        return self._load_directory().checked_info(member)

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
