"""The bulk fetch of an archive's members, and decompressing the next members ahead.

Once a program reads a second member from the archive bytes it is most likely reading many
of them, so the bytes of the members not yet cached are fetched at once, in a few ranged
requests in parallel (``ArchiveConfig.bulk_span``), and the members after each one read
are decompressed into the cache ahead of the program (``ArchiveConfig.inflate_ahead``).
Both only run on the ``prefetch`` pool and are only hints: whoever needs a block or a
member they failed to bring gets it, or its error, on its own read.

It reaches the archive and the member cache through the plain callables ``ArchiveReader``
hands it, so it needs nothing of the reader beyond them.
"""

from __future__ import annotations

import contextlib
import threading
import zipfile
from collections.abc import Callable
from concurrent.futures import Executor

from fwfs.archives.index import MemberFile
from fwfs.archives.layout import (
    FLAG_ENCRYPTED,
    FLAG_PATCHED,
    FLAG_STRONG_ENCRYPTION,
    LOCAL_METHODS,
    Directory,
)
from fwfs.archives.settings import ArchiveConfig, MiB
from fwfs.blockcache import BlockCache, guessing
from fwfs.rangedfile import RangedReader

# The bulk fetch's parts: at least this large, and cut on multiples of the alignment.
_BULK_PART_MIN = 1 * MiB
_BULK_ALIGN = 1 * MiB


class BulkFetch:
    """The bulk fetch and inflating ahead for one ``ArchiveReader``. Thread-safe.

    ``open_reader``: a fresh reader of the archive (counted in the archive's stats);
    ``inflate``: decompress one member into the member cache. Guarded by ``_lock`` (taken
    inside no other lock, and never held while calling out): the first member
    (``_first``), whether it ran or never will (``_started``, ``span``, ``_stopped``) and
    inflating ahead (``_ahead_next``, ``_ahead_until``, ``_ahead_running``).
    """

    def __init__(
        self,
        config: ArchiveConfig,
        archive_size: int,
        cache: BlockCache,
        prefetch: Executor,
        open_reader: Callable[[], RangedReader],
        inflate: Callable[[MemberFile], None],
    ) -> None:
        self._config = config
        self._size = archive_size
        self._cache = cache
        self._prefetch = prefetch
        self._open_reader = open_reader
        self._inflate = inflate
        self._lock = threading.Lock()
        # The first member read locally, then "started" once a second one is.
        self._first: int | None = None
        self._started = False
        self._stopped = False
        self.span: tuple[int, int] | None = None  # [start, end) it fetched
        # Members [_ahead_next, _ahead_until) are still to do, by the one task on the
        # prefetch pool while _ahead_running.
        self._ahead_next = 0
        self._ahead_until = 0
        self._ahead_running = False

    def stop(self) -> None:
        """Never start: the site ignores Range, so members come from it, not the archive."""
        with self._lock:
            self._stopped = True

    def cancel_ahead(self) -> None:
        """Drop the members still to be inflated ahead (the archive's last handle closed)."""
        with self._lock:
            self._ahead_until = self._ahead_next

    def due(self, member: MemberFile) -> bool:
        """True at the second distinct member read from the archive bytes (once)."""
        with self._lock:
            if self._started or self._stopped or self._config.bulk_span == 0:
                return False
            if self._first is None or self._first == member.index:
                # One member alone costs its own region only.
                self._first = member.index
                return False
            self._started = True
            return True

    def start(self, directory: Directory, info: zipfile.ZipInfo) -> None:
        """Fetch the members' bytes in parallel parts (``ArchiveConfig.bulk_span``) for a
        read of the member ``info``, the second one read.

        The read waits only for its own head: its member up to the next 1 MiB boundary, in
        a request of its own sent with the parts (as small as the scan's first request
        with its readahead). Waiting for a part instead would wait for it to share the
        link with the others; reading the member with the scan's reader would start
        readahead into the first part, and wait for all of it.
        """
        here = info.header_offset
        limit = directory.bounds[-1]
        head = min(
            max(limit, here),
            -(-directory.region_end(info, self._size) // _BULK_ALIGN) * _BULK_ALIGN,
        )
        parts = self._parts(directory, here, head)
        with self._lock:
            self.span = (
                min([here, *(p[0] for p in parts)]),
                max([head, *(p[1] for p in parts)]),
            )
        for start, end in parts:
            try:
                self._prefetch.submit(self._fetch_part, start, end)
            except RuntimeError:
                return  # the pool is shut down: the mount is stopping
        self._fetch_part(here, head)

    def inflate_ahead(self, member: MemberFile, directory: Directory | None) -> None:
        """After a read of ``member``, have the next members decompressed into the cache
        (``ArchiveConfig.inflate_ahead``)."""
        cfg = self._config
        if self.span is None or cfg.inflate_ahead == 0 or directory is None:
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
        try:
            self._prefetch.submit(self._run_ahead, directory)
        except RuntimeError:
            with self._lock:
                self._ahead_running = False

    def _run_ahead(self, directory: Directory) -> None:
        """Decompress members until caught up with ``_ahead_until``; one task at a time.

        Only members inside what the bulk fetch brought: this is CPU the program would
        otherwise wait for, not another stream of requests (a block the cache has dropped
        since is fetched again, as the program's own read would).
        """
        span = self.span
        assert span is not None
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
                or info.compress_type not in LOCAL_METHODS
                or info.flag_bits & (FLAG_ENCRYPTED | FLAG_STRONG_ENCRYPTION | FLAG_PATCHED)
                or not span[0] <= info.header_offset
                or directory.region_end(info, self._size) > span[1]
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
            with contextlib.suppress(Exception), guessing():
                self._inflate(member)

    def _parts(self, directory: Directory, here: int, head: int) -> list[tuple[int, int]]:
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
            with contextlib.suppress(Exception), guessing():
                reader.read(start, end - start)
        finally:
            reader.close()
