"""Reads of one remote file of known size through the shared block cache, with readahead.

The reader knows nothing of HTTP: it is given ``fetch(start, end) -> bytes`` (end exclusive)
and lets whatever that raises propagate unchanged. Bytes are fetched and cached in whole
blocks keyed by ``(key, block_index)``, so ``key`` must pin the content, e.g.
``(file_id, version)``.

Readahead starts like mountpoint-s3's prefetcher. The first read of a stream fetches only
its own blocks, so probing a header costs one block (a file no larger than
``initial_window`` is fetched whole instead: one request rather than one per kernel read).
When a read continues exactly where the previous one ended, its fetch also takes the next
``initial_window`` bytes, in the same request. From then on readahead is a sliding
window: up to ``max_parallel`` requests of at most ``wire_window`` bytes run on the pool,
covering at most the window's bytes past the furthest read, and each one that lands is
replaced at once by the next range, not when a whole batch has landed. The window
doubles, up to ``max_window``, each time the reader has read half of it. Parallel
requests share the link and land together if asked for together, so requests that go out
at the same moment get graded sizes (see ``_fill``): their landings, and so their
replacements, are spread out, and there is no wave of landings followed by a round trip
with nothing on the wire. A read outside the stream (further back than ``reorder_window``,
or past what was requested) starts a new stream; readahead already in flight is never
discarded, because the reader may well come back to it.

Readahead lands in the shared cache, up to ``max_window`` ahead of each sequential reader.
A cache smaller than that times the number of concurrent sequential readers evicts
readahead before it is read; ``bytes_fetched > bytes_read`` shows it.

Some sites answer a ranged request with the whole file (a proxy, or object storage behind
a redirect that drops Range). ``fetch`` says so by raising an exception whose
``whole_file_only`` attribute is true; the reader then switches to *stream mode* for good:
it reads the file as one whole-file stream (``stream()``), handing out blocks in order and
putting the blocks it passes on the way into the cache, so every byte crosses the network
once. Readahead stops, since the open stream is the readahead. Only a block that the stream
has passed and the cache has since evicted opens the stream again, from the start.

A ``store`` (the disk cache, fwfs/diskcache.py) is a second tier behind the memory cache:
every fetch of blocks, a read's, readahead's or prefetch's, first takes the blocks the
store has and fetches only the others, which it then hands to the store. It is consulted
inside the memory cache's single flight (the blocks are claimed), so no block is loaded or
fetched twice at once, and a block it gives lands in the memory cache like a fetched one.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import functools
import logging
import threading
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

from fwfs.blockcache import BlockCache, Reservation

KiB = 1024
MiB = 1024 * KiB

Fetch = Callable[[int, int], bytes]
Stream = Callable[[], Iterable[bytes]]
BlockKey = tuple[Hashable, int]

log = logging.getLogger("fwfs.rangedfile")


class BlockStore(Protocol):
    """A slower tier of blocks behind the memory cache (``fwfs.diskcache.DiskCache``).

    ``load_many``: for each ``(start, length)``, bytes ``[start, start + length)`` of the
    content ``key`` names, exactly, or None; asked for a run at once so that a store on
    disk can have the whole run read in parallel. ``save``: keep them, if it can; it may wait
    for room when it is behind (the read path calls it, so a store slower than the link
    slows reads to its rate), but never without bound. Both are called from any thread and raise
    nothing.
    """

    def load_many(
        self, key: Hashable, ranges: Sequence[tuple[int, int]]
    ) -> list[bytes | memoryview | None]: ...

    def save(self, key: Hashable, start: int, data: bytes | memoryview) -> None: ...


@dataclass(frozen=True)
class ReadConfig:
    """How readers split files into blocks and read ahead. Sizes in bytes.

    ``block_size``: the unit of caching and of demand fetches. 128 KiB is the size of the
    kernel's default FUSE readahead and read requests, so one kernel request touches one
    or two blocks and a 352-byte header read transfers 128 KiB, not megabytes.
    ``initial_window`` / ``max_window``: the first readahead and the cap of the doubling
    window (bytes requested past the furthest read); 1 MiB wastes little when a "stream"
    turns out to be two reads, and 64 MiB keeps several requests busy on a fast link.
    ``reorder_window``: how far behind the furthest read of a stream a read may start and
    still belong to it. The kernel sends its readahead as parallel requests (1 MiB each
    when its readahead is 1 MiB) that reach fwfs in any order; ending the stream on each
    of them would restart readahead from ``initial_window`` every few MiB.
    ``max_request``: the largest readahead fetch. 8 MiB is mountpoint-s3's part size,
    large enough that request latency is noise.
    ``wire_window``: what one connection is taken to carry at once (a TCP receive window);
    readahead requests are no larger, and no larger than ``max_window / max_parallel`` so
    that a small window still holds ``max_parallel`` of them. A response that fits is on
    the wire whole as soon as it is asked for, behind the ones asked for before it, so
    responses land in the order asked and one at a time. A larger one trickles at one
    window per round trip while newer responses burst past it, their landings bunch up,
    and the link idles a round trip after each bunch: over the 40 ms, 1 Gbit/s bench link
    (7 MB per connection) requests of 8 MiB ran at 110-114 MB/s, of 4 MiB at 117-119.
    ``max_parallel``: readahead requests one reader may have pending, which bounds its
    in-flight readahead to ``max_parallel`` requests (16 MiB). 0 disables it. When one
    lands, the three others, 12 MiB, are still on their way: more than a 40 ms, 1 Gbit/s
    link's bandwidth-delay product (5 MB), so the link stays busy while the replacement
    waits a round trip for its first byte.
    Windows and requests are rounded up to whole blocks.
    """

    block_size: int = 128 * KiB
    initial_window: int = 1 * MiB
    max_window: int = 64 * MiB
    max_request: int = 8 * MiB
    wire_window: int = 4 * MiB
    max_parallel: int = 4
    reorder_window: int = 8 * MiB

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise ValueError("block_size must be positive")
        if not self.block_size <= self.initial_window <= self.max_window:
            raise ValueError("need block_size <= initial_window <= max_window")
        if min(self.max_request, self.wire_window) < self.block_size:
            raise ValueError("max_request and wire_window must be at least block_size")
        if self.max_parallel < 0 or self.reorder_window < 0:
            raise ValueError("max_parallel and reorder_window must not be negative")


@dataclass(frozen=True)
class ReaderStats:
    """Counters of one reader. ``bytes_fetched / bytes_read`` is its read amplification."""

    bytes_read: int
    bytes_fetched: int
    fetch_calls: int
    fetch_errors: int


def _blocks_needed(size: int, block_size: int) -> int:
    return -(-size // block_size)


def block_runs(indices: list[int]) -> list[tuple[int, int]]:
    """Ascending indices as maximal ``[first, last)`` runs of consecutive numbers."""
    runs: list[tuple[int, int]] = []
    for i in indices:
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


class RangedReader:
    """One open handle on a remote file of fixed ``size``. Thread-safe.

    Dependencies (never change): ``key``, ``size``, ``_fetch``, ``_cache``, ``_pool``,
    ``_config`` and the block counts derived from it.
    Guarded by ``_lock``: the stream state (``_last_end``, ``_ahead``, ``_trigger``,
    ``_window``), ``_pending``, ``_futures``, ``_closed`` and the counters.
    Invariants: every block of the current stream below ``_ahead`` has been requested,
    by a read or by readahead; ``_pending`` (readahead requests submitted and not yet
    finished) never exceeds ``max_parallel``; readahead never asks for blocks past the
    furthest read's end block plus ``_window``. Fetching, waiting and submitting happen
    without ``_lock`` held, and it is never held together with the cache's lock.

    ``read`` must not be called from a task of ``pool``: it may wait for readahead queued
    on that pool behind it.

    Stream mode (see the module): ``_stream_mode`` is guarded by ``_lock`` and never goes
    back to False. ``_stream_lock`` serialises pulling from the stream and guards
    ``_stream_iter``, ``_stream_buf`` (bytes received from block ``_stream_block`` on) and
    ``_stream_block``; it is held while receiving, and ``_lock`` may be taken inside it.
    """

    def __init__(
        self,
        key: Hashable,
        size: int,
        fetch: Fetch,
        cache: BlockCache,
        pool: Executor,
        config: ReadConfig,
        *,
        stream: Stream | None = None,
        store: BlockStore | None = None,
    ) -> None:
        if size < 0:
            raise ValueError("size must not be negative")
        self.key = key
        self.size = size
        self._fetch = fetch
        self._cache = cache
        self._pool = pool
        self._config = config
        bs = config.block_size
        self._nblocks = _blocks_needed(size, bs)
        self._initial_blocks = _blocks_needed(config.initial_window, bs)
        self._max_window_blocks = _blocks_needed(config.max_window, bs)
        self._request_blocks = min(
            _blocks_needed(config.max_request, bs),
            _blocks_needed(config.wire_window, bs),
            max(1, self._max_window_blocks // max(1, config.max_parallel)),
        )

        self._lock = threading.Lock()
        self._last_end: int | None = None  # end of the furthest read of the stream
        self._ahead = 0  # first block the stream has not yet read or requested
        self._trigger = 0  # a read ending at or past this block doubles the window
        self._window = 0  # blocks readahead may request past the furthest read; 0 until
        # the stream proves sequential
        self._pending = 0
        self._futures: set[Future[None]] = set()
        self._closed = False
        self._bytes_read = 0
        self._bytes_fetched = 0
        self._fetch_calls = 0
        self._fetch_errors = 0
        self._stream = stream
        self._store = store
        self._stream_mode = False
        self._stream_lock = threading.Lock()
        self._stream_iter: Iterator[bytes] | None = None
        self._stream_buf = bytearray()
        self._stream_block = 0

    def read(self, offset: int, length: int) -> bytes:
        """Exactly ``min(length, size - offset)`` bytes from ``offset``; b"" at or past EOF."""
        if offset < 0 or length < 0:
            raise ValueError("offset and length must not be negative")
        end = min(offset + length, self.size)
        with self._lock:
            if self._closed:
                raise ValueError("read from a closed RangedReader")
            if offset >= end:
                return b""
            upto, parts = self._advance(offset, end)
        self._issue(parts)
        data = self._read_range(offset, end, upto)
        with self._lock:
            self._bytes_read += len(data)
        return data

    def close(self) -> None:
        """Cancel readahead that has not started; requests already running finish."""
        with self._lock:
            self._closed = True
            futures = list(self._futures)
        for future in futures:
            future.cancel()
        # A read still pulling from the stream closes it when done (see _stream_blocks).
        if self._stream_lock.acquire(blocking=False):
            try:
                self._stop_stream()
            finally:
                self._stream_lock.release()

    def prefetch(self, upto: int) -> None:
        """Bytes ``[0, upto)`` into the cache now, in the calling thread, skipping blocks
        cached or in flight: a guess made before the file is opened (the walk read-ahead).

        On an error the claimed blocks are released, not failed, so a reader waiting for
        them fetches them itself and meets its own error; this one goes to the caller.
        """
        bs = self._config.block_size
        count = _blocks_needed(min(upto, self.size), bs)
        claim = self._cache.reserve([(self.key, i) for i in range(count)])
        try:
            for first, last in block_runs([i for _, i in claim.keys]):
                for i, data in enumerate(self._fetch_blocks(first, last), first):
                    claim.fulfil((self.key, i), data)
        finally:
            claim.release()

    @property
    def closed(self) -> bool:
        return self._closed

    def stats(self) -> ReaderStats:
        with self._lock:
            return ReaderStats(
                bytes_read=self._bytes_read,
                bytes_fetched=self._bytes_fetched,
                fetch_calls=self._fetch_calls,
                fetch_errors=self._fetch_errors,
            )

    def __enter__(self) -> RangedReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _advance(self, offset: int, end: int) -> tuple[int, list[tuple[int, int]]]:
        """Update the stream for a read of ``[offset, end)``; called with ``_lock`` held.

        Returns the block before which this read's own fetch should stop (past its last
        block when it also fetches ahead), and the ``[first, last)`` block ranges to read
        ahead on the pool, already counted in ``_pending``.
        """
        bs = self._config.block_size
        end_block = _blocks_needed(end, bs)
        last = self._last_end
        if self._stream_mode:
            # The open stream is the readahead; the reader only takes its own blocks.
            self._last_end = end
            return end_block, []
        if last is None or not last - self._config.reorder_window <= offset <= self._ahead * bs:
            upto = end_block
            if last is None and self.size <= self._config.initial_window:
                # A small file (a DICOM slice) costs one request, not one per block read.
                upto = self._nblocks
            self._last_end = end
            self._ahead = upto
            self._window = 0
            return upto, []
        if offset == last and self._window == 0 and self._config.max_parallel > 0:
            # The stream has proved sequential. Its first readahead goes out in the same
            # request as this read's blocks, like mountpoint's first 1 MiB + 128 KiB.
            start = max(self._ahead, end_block)
            upto = min(self._nblocks, start + self._initial_blocks)
            self._last_end = end
            self._ahead = upto
            self._window = min(2 * self._initial_blocks, self._max_window_blocks)
            self._trigger = end_block + self._window // 2
            return upto, []
        self._last_end = max(last, end)
        self._ahead = max(self._ahead, end_block)
        if self._window == 0 or offset < last:
            return end_block, []
        return end_block, self._fill()

    def _fill(self) -> list[tuple[int, int]]:
        """Readahead ranges to issue now, counted in ``_pending``; ``_lock`` held.

        Requests go out one by one as room opens, not in batches: whenever a request
        lands or the reader moves on, the next range is asked for, so the link never
        waits for a whole batch to land before more is requested (one idle round trip
        per batch). The window doubles each time the reader has read half of it.
        """
        pos = _blocks_needed(self._last_end or 0, self._config.block_size)
        if pos >= self._trigger and self._window < self._max_window_blocks:
            self._window = min(2 * self._window, self._max_window_blocks)
            self._trigger = pos + self._window // 2
        request = max(1, min(self._request_blocks, self._window // 2))
        # Ranges asked for together land together (they share the link), and would then be
        # replaced together, in waves, each wave waiting a round trip. Sizes graded 1/m,
        # 2/m, ..., 1 of a request spread their landings evenly instead, and replacing one
        # range per landing keeps them spread.
        room = min(self._nblocks, pos + self._window) - self._ahead
        slots = self._config.max_parallel - self._pending
        count = min(slots, room // request)
        if count == 0 and slots > 0 and 0 < room == self._nblocks - self._ahead:
            count = 1  # the file's tail, shorter than a request
        parts: list[tuple[int, int]] = []
        for k in range(1, count + 1):
            stop = min(self._nblocks, self._ahead + max(1, request * k // count))
            parts.append((self._ahead, stop))
            self._ahead = stop
        self._pending += len(parts)
        return parts

    def _issue(self, parts: list[tuple[int, int]]) -> None:
        # A loop, not recursion: ranges already cached finish at once and make room for
        # the next ones, a whole window's worth when re-reading a cached file.
        todo = collections.deque(parts)
        while todo:
            todo.extend(self._start_readahead(*todo.popleft()))

    def _start_readahead(self, first: int, last: int) -> list[tuple[int, int]]:
        """Submit readahead of blocks ``[first, last)``; returns ranges to issue next."""
        claim = self._cache.reserve([(self.key, i) for i in range(first, last)])
        if not claim.keys:
            return self._readahead_finished(None)
        try:
            future = self._pool.submit(self._readahead, claim)
        except RuntimeError:
            # The pool is shut down because the mount is stopping; reads go on without it.
            claim.release()
            self._readahead_finished(None, refill=False)
            return []
        with self._lock:
            closed = self._closed
            if not closed:
                self._futures.add(future)
        if closed:
            future.cancel()
        future.add_done_callback(functools.partial(self._readahead_done, claim))
        return []

    def _readahead(self, claim: Reservation[BlockKey]) -> None:
        # Errors reach readers through the claim: whoever waits for these blocks re-raises
        # the error, and later reads fetch them afresh. Leftovers after close are released.
        with contextlib.suppress(Exception), claim:
            for first, last in block_runs([i for _, i in claim.keys]):
                if self._closed:
                    break
                for i, data in enumerate(self._fetch_blocks(first, last), first):
                    claim.fulfil((self.key, i), data)

    def _readahead_done(self, claim: Reservation[BlockKey], future: Future[None]) -> None:
        if future.cancelled():
            # Never ran: let anyone waiting for these blocks fetch them instead.
            claim.release()
        self._issue(self._readahead_finished(future))

    def _readahead_finished(
        self, future: Future[None] | None, *, refill: bool = True
    ) -> list[tuple[int, int]]:
        """Count a readahead request as finished; returns the ranges to issue in its place.

        A landing frees a slot, and the next range goes out now rather than at the
        reader's next read: with requests landing one by one, one by one is also how they
        are replaced, so the link always has requests on their way (see ``_fill``).
        """
        with self._lock:
            self._pending -= 1
            if future is not None:
                self._futures.discard(future)
            if self._closed or self._stream_mode or not self._window or not refill:
                return []
            return self._fill()

    def _read_range(self, offset: int, end: int, upto: int) -> bytes:
        bs = self._config.block_size
        first, last = offset // bs, _blocks_needed(end, bs)
        keys = [(self.key, i) for i in range(first, max(last, upto))]
        blocks = self._cache.get_or_fetch_many(keys, self._fetch_keys)[: last - first]
        head, tail = offset - first * bs, end - (last - 1) * bs
        # The one copy of the read path: FUSE replies must be bytes. A read of one whole
        # block the disk cache gave (its own bytes object) needs none.
        if len(blocks) == 1:
            block = blocks[0]
            whole = block.obj if isinstance(block, memoryview) else block
            if type(whole) is bytes and head == 0 and tail == len(block) == len(whole):
                data = whole
            else:
                data = bytes(block[head:tail])
        else:
            data = b"".join([blocks[0][head:], *blocks[1:-1], blocks[-1][:tail]])
        if len(data) != end - offset:
            # Only a block of the wrong length can cause this: a key reused for other bytes.
            raise OSError(errno.EIO, f"cached blocks of {self.key!r} do not match its size")
        return data

    def _fetch_keys(self, keys: list[BlockKey]) -> list[memoryview]:
        blocks: list[memoryview] = []
        for first, last in block_runs([i for _, i in keys]):
            blocks.extend(self._fetch_blocks(first, last))
        return blocks

    def _fetch_blocks(self, first: int, last: int) -> list[memoryview]:
        """Blocks ``[first, last)``: those the store has from it, the others fetched (one
        request per run of adjacent ones) and handed to the store."""
        store = self._store
        if store is None:
            return self._network_blocks(first, last)
        bs = self._config.block_size
        ranges = [(i * bs, min(bs, self.size - i * bs)) for i in range(first, last)]
        blocks = [
            None if data is None else memoryview(data) for data in store.load_many(self.key, ranges)
        ]
        missing = [i for i in range(first, last) if blocks[i - first] is None]
        for run_first, run_last in block_runs(missing):
            for i, view in enumerate(self._network_blocks(run_first, run_last), run_first):
                blocks[i - first] = view
                store.save(self.key, i * bs, view)
        return [view for view in blocks if view is not None]

    def _network_blocks(self, first: int, last: int) -> list[memoryview]:
        """Blocks ``[first, last)`` in one fetch, so adjacent misses cost one request.

        The blocks are slices of the fetched bytes, not copies; the cache charges the whole
        buffer for as long as any of them is stored.
        """
        bs = self._config.block_size
        start, stop = first * bs, min(last * bs, self.size)
        if self._stream_mode:
            return self._stream_blocks(first, last)
        with self._lock:
            self._fetch_calls += 1
        try:
            data = self._fetch(start, stop)
            if len(data) != stop - start:
                raise OSError(errno.EIO, f"fetch({start}, {stop}) returned {len(data)} bytes")
        except Exception as exc:
            if getattr(exc, "whole_file_only", False) is True and self._stream is not None:
                with self._lock:
                    switched, self._stream_mode = not self._stream_mode, True
                if switched:
                    log.warning("%r: the site ignores Range; reading it as one stream", self.key)
                return self._stream_blocks(first, last)
            with self._lock:
                self._fetch_errors += 1
            raise
        with self._lock:
            self._bytes_fetched += len(data)
        view = memoryview(data)
        return [view[i : i + bs] for i in range(0, len(data), bs)]

    # ---- stream mode ------------------------------------------------------------------

    def _stream_blocks(self, first: int, last: int) -> list[memoryview]:
        """Blocks ``[first, last)`` from the whole-file stream, opened (again) if needed.

        Blocks the stream passes before ``first`` go into the cache: with parallel or
        slightly reordered reads, the reader that asks for them next finds them there.
        """
        with self._stream_lock:
            try:
                return self._pull_blocks(first, last)
            except BaseException:
                self._stop_stream()
                raise
            finally:
                if self._closed:
                    self._stop_stream()

    def _pull_blocks(self, first: int, last: int) -> list[memoryview]:
        bs = self._config.block_size
        found = [self._cache.get((self.key, i)) for i in range(first, last)]
        if all(block is not None for block in found):
            # Passed by the stream for an earlier request, or a restart's skipped prefix.
            return [memoryview(block) for block in found if block is not None]
        if self._stream_iter is None or self._stream_block > first:
            self._start_stream()
        assert self._stream_iter is not None
        out: list[memoryview] = []
        while self._stream_block < last:
            index = self._stream_block
            want = min(bs, self.size - index * bs)
            while len(self._stream_buf) < want:
                chunk = next(self._stream_iter, None)
                if chunk is None:
                    raise OSError(
                        errno.EIO, f"stream of {self.key!r} ended before byte {self.size}"
                    )
                self._stream_buf += chunk
                with self._lock:
                    self._bytes_fetched += len(chunk)
            block = memoryview(bytes(self._stream_buf[:want]))
            del self._stream_buf[:want]
            self._stream_block += 1
            if index < first:
                self._cache.put((self.key, index), block)
                if self._store is not None:
                    self._store.save(self.key, index * bs, block)
            else:
                out.append(block)
        return out

    def _start_stream(self) -> None:
        if self._stream_iter is not None:
            log.debug("%r: a block behind the stream left the cache; streaming again", self.key)
        self._stop_stream()
        assert self._stream is not None
        with self._lock:
            self._fetch_calls += 1
        self._stream_iter = iter(self._stream())

    def _stop_stream(self) -> None:
        """Drop the stream (closing its connection); called with ``_stream_lock`` held."""
        it, self._stream_iter = self._stream_iter, None
        self._stream_buf = bytearray()
        self._stream_block = 0
        close = getattr(it, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                close()
