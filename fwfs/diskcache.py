"""A persistent cache of file blocks on local disk, behind the memory ``BlockCache``.

A block is bytes ``[start, start + length)`` of one file version, named by
``(file_id, version)``. Flywheel never changes the bytes of a version, so a block is valid
forever: nothing is revalidated, and a block is kept until evicted. What is on disk is
trusted only after it is checked; no file is ever trusted because of its name alone.

Layout under ``root`` (mode 0700; files 0600)::

    CACHEDIR.TAG                        backup tools skip the directory
    blocks/<xx>/<file_id>.<version>.<start>.<length>

``xx`` is a hash of ``<file_id>.<version>``, so the blocks of one version share a
directory and no directory grows past a few thousand entries. Each file is a 16-byte
header (magic, length, XXH3-64 of the name and the bytes) and the bytes.

Crash safety: a block is written to a temporary file in its directory and renamed into
place, so a name holds a whole file or nothing. Nothing is fsync'ed: after a power loss a
renamed file may hold zeros, and the check on read catches it. A file that fails the check
(truncated, corrupt, a block of another file moved or copied in) is logged, removed, and
the block is fetched again: the cache never serves a wrong byte.

Sharing: several processes (mounts of one site, nodes on a shared scratch directory) may
use one ``root``. There is no shared index: each process keeps only an estimate of the
bytes on disk and, when its estimate passes the budget (or it has written an eighth of the
budget since it last looked), lists the directory, which shows every process's blocks,
and removes the least recently used (by mtime, which a hit renews: atime is often off) to
come back under 90 % of it. A block another process removes between the listing and the
open is a miss; a block removed while open is still read whole (POSIX keeps its inode).

Writes happen on one background thread behind a bounded queue (64 MiB), so a read from
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
import struct
import threading
import time
from collections import deque
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, TextIO

import xxhash

from fwfs.errors import InvalidArgument

log = logging.getLogger("fwfs.diskcache")

Block = bytes | memoryview

_MAGIC = b"fwfsblk2"
_HEADER = struct.Struct("<8sI4xQ")  # magic, length, xxh3_64(bytes, seed=xxh3_64(name))
_TMP_PREFIX = ".tmp."
# A temporary file this old was left by a killed process: no write takes a minute.
_STALE_TMP = 600.0
# Seconds before a hit renews a block's mtime again.
_TOUCH_AFTER = 60.0
# Bytes of blocks waiting for the writer; past this a save waits for room.
_QUEUE_BYTES = 64 << 20
# Seconds a save waits for a writer that keeps nothing before blocks are no longer kept.
_STALL = 5.0
# Blocks one ``load_many`` opens at once (each an open file until it is read).
_BATCH = 64
_SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,100}")
_TAG = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# fwfs's disk cache of Flywheel file blocks; see `fwfs cache clear`.\n"
)


class _Open(NamedTuple):
    """A block file opened by ``load_many``, not yet read; ``st`` None if fstat failed."""

    fd: int
    path: str
    name: str
    length: int
    st: os.stat_result | None


@dataclass(frozen=True)
class DiskStats:
    """Counters of this process's use of the cache, and its estimate of the bytes on disk
    (every process's blocks, as of its last listing plus its own writes since)."""

    hits: int
    misses: int
    corrupt: int
    writes: int
    dropped: int
    evictions: int
    bytes_on_disk: int
    max_bytes: int


@dataclass(frozen=True)
class Usage:
    """What a listing of the directory shows (`fwfs cache stats`)."""

    blocks: int
    bytes: int
    files: int


def _checksum(data: Block, name: str) -> int:
    """XXH3-64 of the bytes, seeded by the block's name, so a block's bytes moved or copied
    under another name fail. XXH3 runs at tens of GB/s where zlib's CRC-32 ran at about
    2 GB/s: CRC-32 was 0.45 s of CPU for every GiB read from the cache, on the read path."""
    return xxhash.xxh3_64_intdigest(data, xxhash.xxh3_64_intdigest(name.encode()))


def footprint(length: int) -> int:
    """The disk a block of ``length`` bytes takes, in 4 KiB filesystem blocks."""
    return -(-(_HEADER.size + length) // 4096) * 4096


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


def prepare_dir(root: Path) -> None:
    """``root`` as a private directory: made with mode 0700, or, when it exists, ours (the
    blocks are patient data: another user's directory is refused) and tightened to 0700."""
    try:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = root.stat()
        if st.st_uid != os.getuid():
            raise InvalidArgument(f"cache directory {root} belongs to another user")
        if st.st_mode & 0o077:
            log.info("cache directory %s: mode %o -> 700", root, st.st_mode & 0o777)
            root.chmod(0o700)
        (root / "blocks").mkdir(exist_ok=True, mode=0o700)
    except OSError as err:
        raise InvalidArgument(f"cannot use {root} as the disk cache: {err.strerror}") from None
    tag = root / "CACHEDIR.TAG"
    if not tag.exists():
        with contextlib.suppress(OSError):
            fd = os.open(tag, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(_TAG)


def _block_files(root: Path) -> Iterator[os.DirEntry[str]]:
    """Every entry of every shard directory; entries that vanish meanwhile are skipped."""
    try:
        shards = list(os.scandir(root / "blocks"))
    except FileNotFoundError:
        return
    for shard in shards:
        try:
            with os.scandir(shard.path) as entries:
                yield from entries
        except (FileNotFoundError, NotADirectoryError):
            continue


def usage(root: Path) -> Usage:
    """Blocks, bytes on disk and file versions in the cache at ``root`` now."""
    blocks = size = 0
    versions: set[str] = set()
    for entry in _block_files(root):
        if entry.name.startswith(_TMP_PREFIX):
            continue
        with contextlib.suppress(FileNotFoundError):
            size += entry.stat().st_blocks * 512
            blocks += 1
            versions.add(entry.name.rsplit(".", 2)[0])
    return Usage(blocks, size, len(versions))


def clear(root: Path) -> int:
    """Remove every block; returns how many. Safe while mounts use the cache: a block
    removed under a reader is a miss (or, once open, still read whole), and the
    directories stay so writers in flight land their files."""
    removed = 0
    for entry in _block_files(root):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry.path)
            removed += 1
    return removed


def _show(size: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def cache_command(
    action: str, cache_dir: Path | None, cache_home: Path, out: TextIO, err: TextIO
) -> int:
    """`fwfs cache stats|clear [--cache-dir DIR]`: that cache, or every site's under
    ``cache_home`` (``~/.cache/fwfs/cache/<site host>``). Clearing is safe while mounts
    use a cache (see ``clear``); they go on keeping blocks."""
    if cache_dir is not None:
        roots = [cache_dir.expanduser()]
        if not (roots[0] / "blocks").is_dir():
            print(f"fwfs: {roots[0]} is not a disk cache (no blocks/ in it)", file=err)
            return 1
    else:
        base = cache_home / "fwfs" / "cache"
        roots = sorted(p for p in base.glob("*/blocks") if p.is_dir())
        roots = [p.parent for p in roots]
        if not roots:
            print(f"no disk cache under {base}", file=out)
            return 0
    for root in roots:
        if action == "clear":
            print(f"{root}: {clear(root)} blocks removed", file=out)
        else:
            now = usage(root)
            print(
                f"{root}: {now.blocks} blocks of {now.files} file versions, "
                f"{_show(now.bytes)} on disk",
                file=out,
            )
    return 0


class DiskCache:
    """Blocks of file versions on disk, up to ``max_bytes`` (see the module).

    ``load`` runs on the reading threads; ``save`` only queues. The writer thread owns
    the files' creation and eviction. Guarded by ``_lock``: the queue, its byte count,
    ``_closed`` and the counters.
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
        self._queue: deque[tuple[str, str, Block]] = deque()
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

    def load(self, key: Hashable, start: int, length: int) -> bytes | None:
        """Bytes ``[start, start + length)`` of the version ``key`` names, or None."""
        return self.load_many(key, [(start, length)])[0]

    def load_many(self, key: Hashable, ranges: Sequence[tuple[int, int]]) -> list[bytes | None]:
        """``load`` of each ``(start, length)`` of one version, in order.

        Every file is opened and announced to the kernel (``POSIX_FADV_WILLNEED``) before
        the first is read, so the disk works on the whole run at once instead of one
        128 KiB read at a time: with the page cache cold, 32 blocks on one thread load at
        685-853 MB/s this way and at 304-385 MB/s one by one (bench machine, virtio disk).
        """
        part = _version_part(key)
        if part is None:
            return [None] * len(ranges)
        directory = os.path.dirname(self._path(part, part))
        out: list[bytes | None] = []
        for at in range(0, len(ranges), _BATCH):
            batch = ranges[at : at + _BATCH]
            opened: list[_Open | None] = []
            try:
                for start, length in batch:
                    name = f"{part}.{start}.{length}"
                    path = os.path.join(directory, name)
                    opened.append(self._open(path, name, length))
                for pos, entry in enumerate(opened):
                    opened[pos] = None
                    out.append(None if entry is None else self._read(entry))
            finally:
                for entry in opened:
                    if entry is not None:
                        os.close(entry.fd)
        with self._lock:
            found = sum(data is not None for data in out)
            self._hits += found
            self._misses += len(out) - found
        return out

    def _open(self, path: str, name: str, length: int) -> _Open | None:
        """The block's file, open, with the kernel asked to read it in now; None if absent."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as err:
            log.warning("disk cache: cannot open %s: %s", path, err.strerror)
            return None
        try:
            st = os.fstat(fd)
            # A file of the wrong size (torn, truncated, another block's) is not even read.
            if st.st_size == _HEADER.size + length:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError as err:
            log.warning("disk cache: cannot read %s: %s", path, err.strerror)
            st = None
        return _Open(fd, path, name, length, st)

    def _read(self, entry: _Open) -> bytes | None:
        """The checked bytes of an opened block; None (and the file removed) if they fail
        their check. Closes the file."""
        fd, path, name, length, st = entry
        if st is None:
            os.close(fd)
            return None  # fstat failed, and was logged: a miss, not a corrupt block
        try:
            head = body = b""
            if st.st_size == _HEADER.size + length:
                head = os.read(fd, _HEADER.size)
                body = os.read(fd, length)
                while 0 < len(body) < length:
                    more = os.read(fd, length - len(body))
                    if not more:
                        break
                    body += more
            if self._valid(head, body, name, length):
                # The LRU clock: mtime, since atime is often not kept (noatime, relatime);
                # renewed at most once a minute, which is all the precision eviction needs.
                if time.time() - st.st_mtime > _TOUCH_AFTER:
                    with contextlib.suppress(OSError):
                        os.utime(fd)
                return body
        except OSError as err:
            log.warning("disk cache: cannot read %s: %s", path, err.strerror)
            return None
        finally:
            os.close(fd)
        with self._lock:
            self._corrupt += 1
        log.warning("disk cache: %s failed its check; removed, and fetched again", path)
        with contextlib.suppress(OSError):
            os.unlink(path)
        return None

    @staticmethod
    def _valid(head: bytes, body: bytes, name: str, length: int) -> bool:
        if len(head) != _HEADER.size or len(body) != length:
            return False
        magic, stored_length, crc = _HEADER.unpack(head)
        return bool(magic == _MAGIC and stored_length == length and _checksum(body, name) == crc)

    # ---- writing --------------------------------------------------------------------

    def save(self, key: Hashable, start: int, data: Block) -> None:
        """Keep ``data`` as bytes ``[start, start + len(data))`` of ``key``'s version, later,
        on the writer thread. Waits while 64 MiB are queued (at most 5 s; see the module)."""
        part = _version_part(key)
        if part is None or not data:
            return
        name = f"{part}.{start}.{len(data)}"
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
            self._queue.append((part, name, data))
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

    def _path(self, part: str, name: str) -> str:
        shard = hashlib.blake2b(part.encode(), digest_size=1).hexdigest()
        return os.path.join(self._blocks, shard, name)

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
                while not self._queue and not self._closed:
                    self._wake.wait()
                if not self._queue:
                    return
                part, name, data = self._queue.popleft()
                self._queued_bytes -= len(data)
                self._busy = True
            try:
                self._write(part, name, data)
                with self._lock:
                    self._stalled = False
                if self._used > self.max_bytes or self._since_scan > self.max_bytes // 8:
                    self._evict()
            except Exception:
                log.exception("disk cache: keeping %s failed", name)
            finally:
                with self._lock:
                    self._busy = False
                    self._wake.notify_all()

    def _write(self, part: str, name: str, data: Block) -> None:
        path = self._path(part, name)
        if os.path.exists(path):
            return  # another reader or mount kept it first: the same bytes
        header = _HEADER.pack(_MAGIC, len(data), _checksum(data, name))
        directory = os.path.dirname(path)
        tmp = os.path.join(directory, f"{_TMP_PREFIX}{os.getpid()}.{secrets.token_hex(6)}")
        try:
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except FileNotFoundError:
                os.makedirs(directory, mode=0o700, exist_ok=True)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                written = os.writev(fd, [header, data])
                if written != len(header) + len(data):
                    raise OSError(errno.ENOSPC, "short write")
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError as err:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            with self._lock:
                self._dropped += 1
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                if not self._full_logged:
                    self._full_logged = True
                    log.warning("disk cache: %s is full; blocks are not kept", self.root)
                return
            log.warning("disk cache: cannot keep a block in %s: %s", directory, err.strerror)
            return
        self._full_logged = False
        with self._lock:
            self._writes += 1
            self._used += footprint(len(data))
            self._since_scan += footprint(len(data))

    # ---- eviction -------------------------------------------------------------------

    def _evict(self) -> None:
        """List every process's blocks; remove the least recently used past 90 % of the
        budget, and temporary files killed writers left."""
        now = time.time()
        found: list[tuple[float, int, str]] = []
        for entry in _block_files(self.root):
            try:
                st = entry.stat()
            except FileNotFoundError:
                continue
            if entry.name.startswith(_TMP_PREFIX) and now - st.st_mtime > _STALE_TMP:
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
                if os.path.basename(path).startswith(_TMP_PREFIX):
                    continue
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
