"""A persistent cache of file blocks on local disk, behind the memory ``BlockCache``.

A block is bytes ``[start, start + length)`` of one file version, named by
``(file_id, version)``. Flywheel never changes the bytes of a version, so a block is valid
forever: nothing is revalidated, and a block is kept until evicted. What is on disk is
trusted only after it is checked; no file is ever trusted because of its name alone.

Blocks are kept a megabyte of a version to a file (fwfs/diskcache/segment.py: the format;
fwfs/diskcache/directory.py: the layout). A block joining a segment file that exists is
written with the blocks already there into a new file that replaces it.

Crash safety: a segment file is written to a temporary file in its directory and renamed
into place, so a name holds a whole file or nothing. Nothing is fsync'ed: after a power
loss a renamed file may hold zeros, and the checks on read catch it. A file that fails
them (truncated, corrupt, bytes of another block moved or copied in) is logged, removed,
and its blocks are fetched again: the cache never serves a wrong byte.

Sharing: several processes (mounts of one site, nodes on a shared scratch directory) may
use one root. There is no shared index: each process keeps only an estimate of the
bytes on disk and, when its estimate passes the budget (or it has written an eighth of the
budget since it last looked), lists the directory, which shows every process's files,
and removes the least recently used (by mtime, which a hit renews: atime is often off) to
come back under 90 % of it. A file another process removes between the listing and the
open is a miss; one removed while open is still read whole (POSIX keeps its inode). Two
processes adding blocks to one segment at once may each replace the other's file: a
block is then lost (fetched again later), never wrong.

Writes happen on one background thread behind a bounded queue (32 MiB), so a read from
the network waits for the disk only when the disk is slower than the link: then the
queue's bound holds the reads back to the disk's rate, so that what was read is kept. A
disk that is full (ENOSPC, EDQUOT) costs nothing: the writer drops the block at once and
reads go on from the network. A writer that keeps nothing for 5 s (a hung filesystem) is
given up on until it writes again: meanwhile blocks are not kept.

Imports nothing from fwfs but ``errors``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from fwfs.diskcache import segment
from fwfs.diskcache.directory import TMP_PREFIX, entries, prepare_dir
from fwfs.diskcache.segment import Block
from fwfs.errors import InvalidArgument

log = logging.getLogger("fwfs.diskcache")

# A temporary file this old was left by a killed process: no write takes a minute.
_STALE_TMP = 600.0
# Seconds before a hit renews a file's mtime again.
_TOUCH_AFTER = 60.0
# Bytes of blocks waiting for the writer; past this a save waits for room. Queued blocks
# may have left the memory cache and are then memory of their own: 64 MiB put the daemon's
# peak RSS with a full 10 GiB cache at 399-416 MiB against a bound of 406 (256 MiB cache +
# 150); the queue only absorbs bursts, since a save waits rather than drops.
_QUEUE_BYTES = 32 << 20
# Seconds a save waits for a writer that keeps nothing before blocks are no longer kept.
_STALL = 5.0
# Segment files one ``load_many`` opens at once (each an open file until it is read).
_BATCH = 64
# No segment file fwfs writes is larger (MAX_ENTRIES blocks of at most a few MiB).
_MAX_FILE = 256 << 20
_SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,100}")


class _Open(NamedTuple):
    """A segment file opened by ``load_many``, not yet read; ``st`` None if fstat failed."""

    fd: int
    path: str
    segment: int
    st: os.stat_result | None


class _Queued(NamedTuple):
    part: str
    segment: int
    start: int
    data: Block


@dataclass(frozen=True)
class DiskStats:
    """Counters of this process's use of the cache, and its estimate of the bytes on disk
    (every process's files, as of its last listing plus its own writes since)."""

    hits: int
    misses: int
    corrupt: int
    writes: int
    dropped: int
    evictions: int
    bytes_on_disk: int
    max_bytes: int


def _version_part(key: Hashable) -> str | None:
    """``<file_id>.<version>`` for a ``(file_id, version)`` key; None for any other key,
    which the cache does not keep (it names no immutable file version)."""
    if not (isinstance(key, tuple) and len(key) == 2):
        return None
    file_id, version = key
    if not isinstance(file_id, str) or type(version) is not int or version < 0:
        return None
    if not _SAFE_ID.fullmatch(file_id):
        file_id = "h" + hashlib.blake2b(file_id.encode(), digest_size=16).hexdigest()
    return f"{file_id}.{version}"


def _read_whole(fd: int, size: int) -> bytes:
    """The file's bytes; fewer than ``size`` if it shrank meanwhile."""
    data = os.read(fd, size)
    if len(data) == size or not data:
        return data
    parts = [data]
    got = len(data)
    while got < size:
        more = os.read(fd, size - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


class DiskCache:
    """Blocks of file versions on disk, up to ``max_bytes`` (see the module).

    ``load_many`` runs on the reading threads; ``save`` only queues (waiting for room when
    the writer is behind). The writer thread owns the files' creation and eviction.
    Guarded by ``_lock``: the queue, its byte count, ``_closed``, ``_stalled`` and the
    counters.
    """

    def __init__(self, root: Path, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise InvalidArgument("the disk cache needs a positive size")
        prepare_dir(root)
        self.root = root
        self.max_bytes = max_bytes
        self._blocks = root / "blocks"
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._queue: deque[_Queued] = deque()
        self._queued_bytes = 0
        self._busy = True  # the first listing, until it is done
        self._closed = False
        self._stalled = False
        self._hits = self._misses = self._corrupt = 0
        self._writes = self._dropped = self._evictions = 0
        self._used = 0
        self._since_scan = 0
        self._full_logged = False
        self._thread = threading.Thread(target=self._run, name="fwfs-diskcache", daemon=True)
        self._thread.start()

    # ---- reading --------------------------------------------------------------------

    def load(self, key: Hashable, start: int, length: int) -> Block | None:
        """Bytes ``[start, start + length)`` of the version ``key`` names, or None."""
        return self.load_many(key, [(start, length)])[0]

    def load_many(self, key: Hashable, ranges: Sequence[tuple[int, int]]) -> list[Block | None]:
        """``load`` of each ``(start, length)`` of one version, in order.

        Each segment file the ranges fall in is opened and announced to the kernel
        (``POSIX_FADV_WILLNEED``) before the first is read, so that with the page cache
        cold the disk works on the whole run at once; each is then read whole, in one
        call. A block comes back as a view of its segment's bytes (no copy), unless it is
        one of few blocks asked of the file (see ``_read``).
        """
        out: list[Block | None] = [None] * len(ranges)
        part = _version_part(key)
        if part is None:
            return out
        wanted: dict[int, list[int]] = {}
        for i, (start, _) in enumerate(ranges):
            wanted.setdefault(segment.index(start), []).append(i)
        directory = self._directory(part)
        runs = list(wanted.items())
        for at in range(0, len(runs), _BATCH):
            batch = runs[at : at + _BATCH]
            opened: list[_Open | None] = []
            try:
                for seg, _ in batch:
                    opened.append(self._open(directory, part, seg))
                for pos, (_, indexes) in enumerate(batch):
                    entry, opened[pos] = opened[pos], None
                    if entry is None:
                        continue
                    found = self._read(entry, part, [ranges[i] for i in indexes])
                    for i, data in zip(indexes, found, strict=True):
                        out[i] = data
            finally:
                for entry in opened:
                    if entry is not None:
                        os.close(entry.fd)
        with self._lock:
            hits = sum(data is not None for data in out)
            self._hits += hits
            self._misses += len(out) - hits
        return out

    def _open(self, directory: str, part: str, seg: int) -> _Open | None:
        """The segment file, open, with the kernel asked to read it in now; None if absent."""
        path = os.path.join(directory, segment.name(part, seg))
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as err:
            log.warning("disk cache: cannot open %s: %s", path, err.strerror)
            return None
        try:
            st = os.fstat(fd)
            if st.st_size <= _MAX_FILE:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError as err:
            log.warning("disk cache: cannot read %s: %s", path, err.strerror)
            st = None
        return _Open(fd, path, seg, st)

    def _read(
        self, entry: _Open, part: str, wanted: Sequence[tuple[int, int]]
    ) -> list[Block | None]:
        """The checked bytes of each wanted block the opened file holds. A file that fails
        a check is removed whole (its good blocks are fetched again too: which of its
        bytes a torn write reached is not worth guessing). Closes the file."""
        fd, path, seg, st = entry
        missing: list[Block | None] = [None] * len(wanted)
        if st is None:
            os.close(fd)
            return missing  # fstat failed, and was logged: a miss, not a corrupt file
        try:
            raw = _read_whole(fd, st.st_size) if st.st_size <= _MAX_FILE else b""
        except OSError as err:
            log.warning("disk cache: cannot read %s: %s", path, err.strerror)
            return missing
        finally:
            os.close(fd)
        held = segment.blocks(raw, part, seg)
        if held is None:
            self._drop_corrupt(path)
            return missing
        # The LRU clock: mtime, since atime is often not kept (noatime, relatime); renewed
        # at most once a minute, which is all the precision eviction needs.
        if time.time() - st.st_mtime > _TOUCH_AFTER:
            with contextlib.suppress(OSError):
                os.utime(path)
        found: list[Block | None] = [held[at][0] if at in held else None for at in wanted]
        if 2 * sum(len(block) for block in found if block is not None) < len(raw):
            # The memory cache charges a view for the whole buffer under it: a header read
            # would hold a megabyte for 128 KiB. Few blocks asked for get their own bytes.
            return [None if block is None else bytes(block) for block in found]
        return found

    def _drop_corrupt(self, path: str) -> None:
        with self._lock:
            self._corrupt += 1
        log.warning("disk cache: %s failed its check; removed, and fetched again", path)
        with contextlib.suppress(OSError):
            os.unlink(path)

    # ---- writing --------------------------------------------------------------------

    def save(self, key: Hashable, start: int, data: Block) -> None:
        """Keep ``data`` as bytes ``[start, start + len(data))`` of ``key``'s version, later,
        on the writer thread. Waits while 32 MiB are queued (at most 5 s; see the module)."""
        part = _version_part(key)
        if part is None or not data:
            return
        with self._lock:
            if self._closed:
                return
            if self._queued_bytes + len(data) > _QUEUE_BYTES and self._queue:
                # Backpressure: the reader waits for the writer, so a disk slower than the
                # link slows reads to the disk's rate instead of leaving holes in the cache
                # (a re-read would fetch them again). A writer that makes no progress for
                # _STALL seconds (a hung scratch filesystem) is given up on until it does:
                # reads go on from the network and the blocks are not kept.
                deadline = time.monotonic() + _STALL
                while (
                    not self._stalled
                    and not self._closed
                    and self._queue
                    and self._queued_bytes + len(data) > _QUEUE_BYTES
                ):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        self._stalled = True
                        log.warning(
                            "disk cache: %s has kept no block for %.0f s; not keeping "
                            "blocks until it does",
                            self.root,
                            _STALL,
                        )
                        break
                    self._wake.wait(left)
                if self._closed or (
                    self._stalled and self._queued_bytes + len(data) > _QUEUE_BYTES
                ):
                    self._dropped += 1
                    return
            self._queue.append(_Queued(part, segment.index(start), start, data))
            self._queued_bytes += len(data)
            self._wake.notify()

    def flush(self) -> None:
        """Wait until every block queued so far is written (or dropped)."""
        with self._lock:
            while self._queue or self._busy:
                self._wake.wait()

    def close(self) -> None:
        """Write what is queued, then stop the writer. Later saves are ignored."""
        with self._lock:
            self._closed = True
            self._wake.notify_all()
        self._thread.join()

    def stats(self) -> DiskStats:
        with self._lock:
            return DiskStats(
                hits=self._hits,
                misses=self._misses,
                corrupt=self._corrupt,
                writes=self._writes,
                dropped=self._dropped,
                evictions=self._evictions,
                bytes_on_disk=self._used,
                max_bytes=self.max_bytes,
            )

    def _directory(self, part: str) -> str:
        """The shard directory of a version's segments (fwfs/diskcache/directory.py)."""
        return os.path.join(self._blocks, hashlib.blake2b(part.encode(), digest_size=1).hexdigest())

    def _take(self) -> list[_Queued] | None:
        """The next queued block and every other one queued for its segment; None once
        closed and drained. Called with ``_lock`` held."""
        while not self._queue and not self._closed:
            self._wake.wait()
        if not self._queue:
            return None
        first = self._queue.popleft()
        taken = [first]
        rest: deque[_Queued] = deque()
        for item in self._queue:
            same = item.part == first.part and item.segment == first.segment
            (taken if same else rest).append(item)
        self._queue = rest
        self._queued_bytes -= sum(len(item.data) for item in taken)
        self._busy = True
        return taken

    def _run(self) -> None:
        # Know what other runs left before adding to it; a listing of a large cache takes
        # a while, so it is done here and not before the mount is ready.
        try:
            self._evict()
        except Exception:
            log.exception("disk cache: listing %s failed", self.root)
        finally:
            with self._lock:
                self._busy = False
                self._wake.notify_all()
        while True:
            with self._lock:
                taken = self._take()
            if taken is None:
                return
            try:
                self._write(taken)
                with self._lock:
                    self._stalled = False  # it answered, kept or not: no hung disk
                if self._used > self.max_bytes or self._since_scan > self.max_bytes // 8:
                    self._evict()
            except Exception:
                log.exception("disk cache: keeping blocks of %s failed", taken[0].part)
            finally:
                with self._lock:
                    self._busy = False
                    self._wake.notify_all()

    def _existing(self, path: str, part: str, seg: int) -> tuple[dict[int, tuple[Block, int]], int]:
        """The blocks a segment file already holds, checked, by start; and its size (0 when
        there is none or it fails its check: then it is replaced whole)."""
        try:
            with open(path, "rb") as f:
                raw = f.read(_MAX_FILE + 1)
        except FileNotFoundError:
            return {}, 0
        held = segment.blocks(raw, part, seg)
        if held is None:
            return {}, 0
        return {start: checked for (start, _), checked in held.items()}, len(raw)

    def _write(self, taken: list[_Queued]) -> None:
        """Add ``taken`` (blocks of one segment) to its file, or count them dropped."""
        part, seg = taken[0].part, taken[0].segment
        directory = self._directory(part)
        path = os.path.join(directory, segment.name(part, seg))
        blocks, old_size = self._existing(path, part, seg)
        new = [
            item
            for item in taken
            if item.start not in blocks or len(blocks[item.start][0]) != len(item.data)
        ]
        if not new:
            return  # another reader or mount kept them first: the same bytes
        for item in new:
            crc = segment.checksum(item.data, part, item.start, len(item.data))
            blocks[item.start] = (item.data, crc)
        if len(blocks) > segment.MAX_ENTRIES:
            mine = {item.start for item in new}
            blocks = {s: b for s, b in blocks.items() if s in mine}
        buffers = segment.pack((start, data, crc) for start, (data, crc) in blocks.items())
        total = sum(len(b) for b in buffers)
        tmp = os.path.join(directory, f"{TMP_PREFIX}{os.getpid()}.{secrets.token_hex(6)}")
        try:
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except FileNotFoundError:
                os.makedirs(directory, mode=0o700, exist_ok=True)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                if os.writev(fd, buffers) != total:
                    raise OSError(errno.ENOSPC, "short write")
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError as err:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            with self._lock:
                self._dropped += len(new)
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                if not self._full_logged:
                    self._full_logged = True
                    log.warning("disk cache: %s is full; blocks are not kept", self.root)
                return
            log.warning("disk cache: cannot keep a block in %s: %s", directory, err.strerror)
            return
        self._full_logged = False
        grown = segment.size_on_disk(total) - segment.size_on_disk(old_size)
        with self._lock:
            self._writes += len(new)
            self._used += grown
            self._since_scan += max(0, grown)

    # ---- eviction -------------------------------------------------------------------

    def _evict(self) -> None:
        """List every process's files; remove the least recently used past 90 % of the
        budget, temporary files killed writers left, and block files of an older fwfs."""
        now = time.time()
        found: list[tuple[float, int, str]] = []
        for entry in entries(self.root):
            try:
                st = entry.stat()
            except FileNotFoundError:
                continue
            if entry.name.startswith(TMP_PREFIX):
                if now - st.st_mtime > _STALE_TMP:
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
                continue
            if segment.version_of(entry.name) is None:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                continue
            found.append((st.st_mtime, st.st_blocks * 512, entry.path))
        used = sum(size for _, size, _ in found)
        evicted = 0
        if used > self.max_bytes:
            target = self.max_bytes * 9 // 10
            found.sort()
            for _, size, path in found:
                if used <= target:
                    break
                try:
                    os.unlink(path)
                    evicted += 1
                except FileNotFoundError:
                    pass  # another mount evicted it first
                except OSError as err:
                    log.warning("disk cache: cannot evict %s: %s", path, err.strerror)
                    continue
                used -= size
        with self._lock:
            self._used = used
            self._since_scan = 0
            self._evictions += evicted
