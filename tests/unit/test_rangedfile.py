"""Tests of RangedReader against deterministic in-memory sources that record every fetch.

Readahead runs on executors the tests control: ``InlineExecutor`` runs a task inside
``submit`` (deterministic counts), ``ManualExecutor`` holds tasks until told to run them
(deterministic interleavings), and a real thread pool checks nothing relies on either.
"""

from __future__ import annotations

import errno
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

import pytest
from executors import InlineExecutor
from hypothesis import given, settings
from hypothesis import strategies as st

from fwfs.blockcache import BlockCache
from fwfs.rangedfile import KiB, MiB, RangedReader, ReadConfig, ReaderStats

P = ParamSpec("P")
T = TypeVar("T")

KEY = ("file-id", 1)


class Boom(Exception):
    pass


class Source:
    """A remote file: ``fetch`` returns exactly the bytes asked for and records the call.

    ``data`` is either real bytes or None for a virtual file of ``size`` bytes whose byte
    at offset i is i % 256, generated on demand so a 1 GiB file costs no memory.
    """

    def __init__(self, data: bytes | None = None, size: int | None = None) -> None:
        self.data = data
        self.size = len(data) if data is not None else (size or 0)
        self.calls: list[tuple[int, int]] = []
        self.fail: Callable[[int, int], bool] | None = None
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, start: int, end: int) -> bytes:
        assert 0 <= start < end <= self.size
        with self._lock:
            self.calls.append((start, end))
        self.entered.set()
        if self.gate is not None:
            self.gate.wait()
        if self.fail is not None and self.fail(start, end):
            raise Boom(f"cannot fetch {start}-{end}")
        return self.slice(start, end)

    def slice(self, start: int, end: int) -> bytes:
        end = min(end, self.size)
        if self.data is not None:
            return self.data[start:end]
        if start >= end:
            return b""
        pattern = bytes(range(256)) * ((end - start) // 256 + 2)
        return pattern[start % 256 : start % 256 + end - start]

    @property
    def bytes_fetched(self) -> int:
        return sum(end - start for start, end in self.calls)


class ManualExecutor(Executor):
    def __init__(self) -> None:
        self.queue: list[tuple[Future[Any], Callable[[], Any]]] = []

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        future: Future[T] = Future()
        self.queue.append((future, lambda: fn(*args, **kwargs)))
        return future

    def run_all(self) -> None:
        queue, self.queue = self.queue, []
        for future, task in queue:
            if future.set_running_or_notify_cancel():
                future.set_result(task())

    def run_oldest(self) -> None:
        """Run the task submitted first; what it submits when done joins the queue."""
        future, task = self.queue.pop(0)
        if future.set_running_or_notify_cancel():
            future.set_result(task())


def wait_until(condition: Callable[[], bool]) -> None:
    """Wait for another thread to reach a state; pytest-timeout ends a test that never does."""
    while not condition():
        time.sleep(0.001)


def reader_for(
    source: Source,
    *,
    config: ReadConfig | None = None,
    cache: BlockCache | None = None,
    pool: Executor | None = None,
) -> RangedReader:
    return RangedReader(
        KEY,
        source.size,
        source,
        cache if cache is not None else BlockCache(256 * MiB),
        pool if pool is not None else InlineExecutor(),
        config if config is not None else ReadConfig(),
    )


SMALL = ReadConfig(block_size=16, initial_window=32, max_window=128, max_request=64)
RANDOM_DATA = random.Random(1234).randbytes(1000)


# --------------------------------------------------------------------------- correctness


@settings(max_examples=300, deadline=None)
@given(
    size=st.integers(0, 1000),
    block_size=st.sampled_from([1, 7, 16, 64]),
    cache_blocks=st.sampled_from([0, 1, 3, 1000]),
    reads=st.lists(st.tuples(st.integers(0, 1100), st.integers(0, 300)), max_size=30),
    sequential=st.booleans(),
)
def test_every_read_equals_the_source_slice(
    size: int,
    block_size: int,
    cache_blocks: int,
    reads: list[tuple[int, int]],
    sequential: bool,
) -> None:
    data = RANDOM_DATA[:size]
    source = Source(data)
    config = ReadConfig(
        block_size=block_size,
        initial_window=2 * block_size,
        max_window=16 * block_size,
        max_request=4 * block_size,
        max_parallel=2,
    )
    cache = BlockCache(cache_blocks * block_size)
    reader = reader_for(source, config=config, cache=cache)
    position = 0
    for offset, length in reads:
        if sequential:  # the lengths then walk the file, as cat and cp do
            offset, position = position, position + length
        assert reader.read(offset, length) == data[offset : offset + length]
        assert cache.stats().bytes_cached <= cache.max_bytes
    stats = reader.stats()
    assert all(0 <= start < end <= size for start, end in source.calls)
    assert stats.fetch_calls == len(source.calls)
    assert stats.bytes_fetched == source.bytes_fetched


@settings(max_examples=50, deadline=None)
@given(reads=st.lists(st.tuples(st.integers(0, 1100), st.integers(0, 300)), max_size=30))
def test_reads_are_correct_with_a_real_pool_and_several_handles(
    reads: list[tuple[int, int]],
) -> None:
    source = Source(RANDOM_DATA)
    cache = BlockCache(20 * 16)
    with ThreadPoolExecutor(4) as pool:
        readers = [reader_for(source, config=SMALL, cache=cache, pool=pool) for _ in range(2)]
        for i, (offset, length) in enumerate(reads):
            got = readers[i % 2].read(offset, length)
            assert got == RANDOM_DATA[offset : offset + length]
        for r in readers:
            r.close()


def test_edges_eof_and_zero_length() -> None:
    source = Source(RANDOM_DATA)
    reader = reader_for(source, config=SMALL)
    assert reader.read(10, 30) == RANDOM_DATA[10:40]  # spans three 16-byte blocks
    assert reader.read(16, 16) == RANDOM_DATA[16:32]  # exactly one block
    assert reader.read(990, 100) == RANDOM_DATA[990:]  # runs over EOF
    assert reader.read(999, 1) == RANDOM_DATA[999:]
    assert reader.read(1000, 10) == b""
    assert reader.read(5000, 10) == b""
    assert reader.read(500, 0) == b""
    with pytest.raises(ValueError):
        reader.read(-1, 10)
    with pytest.raises(ValueError):
        reader.read(0, -1)


def test_an_empty_file_reads_empty_and_never_fetches() -> None:
    source = Source(b"")
    reader = reader_for(source)
    assert reader.read(0, 100) == b""
    assert reader.read(7, 1) == b""
    assert source.calls == []


def test_config_is_validated() -> None:
    with pytest.raises(ValueError):
        ReadConfig(block_size=0)
    with pytest.raises(ValueError):
        ReadConfig(initial_window=2 * MiB, max_window=1 * MiB)
    with pytest.raises(ValueError):
        ReadConfig(block_size=1 * MiB, max_request=64 * KiB)
    with pytest.raises(ValueError):
        ReadConfig(block_size=1 * MiB, wire_window=64 * KiB)
    with pytest.raises(ValueError):
        ReadConfig(max_parallel=-1)


# --------------------------------------------------------------------------- caching


def test_a_second_read_of_the_same_range_makes_no_fetch() -> None:
    source = Source(RANDOM_DATA)
    cache = BlockCache(1 * MiB)
    first = reader_for(source, config=SMALL, cache=cache)
    assert first.read(100, 50) == RANDOM_DATA[100:150]
    calls = len(source.calls)
    assert first.read(100, 50) == RANDOM_DATA[100:150]
    # Another handle on the same file version shares the blocks.
    second = reader_for(source, config=SMALL, cache=cache)
    assert second.read(110, 30) == RANDOM_DATA[110:140]
    assert len(source.calls) == calls


def test_adjacent_missing_blocks_are_fetched_in_one_request() -> None:
    source = Source(RANDOM_DATA)
    reader = reader_for(source, config=SMALL)
    assert reader.read(40, 1) == RANDOM_DATA[40:41]  # caches block 2 (32-48)
    source.calls.clear()
    assert reader.read(900, 5) == RANDOM_DATA[900:905]  # a seek: only its block
    assert source.calls == [(896, 912)]
    source.calls.clear()
    assert reader.read(0, 100) == RANDOM_DATA[:100]
    # Blocks 0-1 and 3-6 are missing: two runs around the cached block, one fetch each.
    assert source.calls == [(0, 32), (48, 112)]


def test_concurrent_readers_of_one_missing_block_cause_one_fetch() -> None:
    source = Source(size=4 * MiB)
    source.gate = threading.Event()
    cache = BlockCache(16 * MiB)
    readers = [reader_for(source, cache=cache) for _ in range(4)]
    results: list[bytes] = []

    def read(reader: RangedReader) -> None:
        results.append(reader.read(1000, 2000))

    threads = [threading.Thread(target=read, args=(r,)) for r in readers]
    threads[0].start()
    source.entered.wait()
    for t in threads[1:]:
        t.start()
    wait_until(lambda: cache.stats().waits == 3)
    source.gate.set()
    for t in threads:
        t.join()
    assert source.calls == [(0, 128 * KiB)]
    assert results == [source.slice(1000, 3000)] * 4


# --------------------------------------------------------------------------- failures


def test_a_fetch_error_reaches_the_reader_caches_nothing_and_later_reads_recover() -> None:
    source = Source(RANDOM_DATA)
    cache = BlockCache(1 * MiB)
    reader = reader_for(source, config=SMALL, cache=cache)
    source.fail = lambda start, end: True
    with pytest.raises(Boom):
        reader.read(100, 50)
    assert cache.stats().blocks == 0
    assert reader.stats().fetch_errors == 1
    source.fail = None
    assert reader.read(100, 50) == RANDOM_DATA[100:150]


def test_a_short_fetch_is_an_io_error_not_short_data() -> None:
    source = Source(RANDOM_DATA)
    cache = BlockCache(1 * MiB)
    reader = RangedReader(
        KEY, 1000, lambda s, e: RANDOM_DATA[s : e - 1], cache, InlineExecutor(), SMALL
    )
    with pytest.raises(OSError) as info:
        reader.read(0, 10)
    assert info.value.errno == errno.EIO
    assert cache.stats().blocks == 0
    assert reader_for(source, config=SMALL, cache=cache).read(0, 10) == RANDOM_DATA[:10]


def test_a_failed_readahead_does_not_break_reads_of_other_blocks() -> None:
    source = Source(RANDOM_DATA)
    pool = ManualExecutor()
    reader = reader_for(source, config=SMALL, pool=pool)
    for offset in range(0, 48, 16):  # the third read starts a readahead of blocks 4-7
        assert reader.read(offset, 16) == RANDOM_DATA[offset : offset + 16]
    assert len(pool.queue) == 1
    source.fail = lambda start, end: start < 128 and end > 64  # blocks 4-7 only
    pool.run_all()
    assert reader.stats().fetch_errors == 1
    assert reader.read(0, 64) == RANDOM_DATA[:64]
    assert reader.read(200, 16) == RANDOM_DATA[200:216]
    with pytest.raises(Boom):
        reader.read(64, 16)
    source.fail = None
    assert reader.read(64, 100) == RANDOM_DATA[64:164]


def test_a_reader_waiting_for_a_failed_readahead_gets_its_error() -> None:
    source = Source(RANDOM_DATA)
    pool = ManualExecutor()
    cache = BlockCache(1 * MiB)
    reader = reader_for(source, config=SMALL, cache=cache, pool=pool)
    for offset in range(0, 48, 16):  # the third read starts a readahead of blocks 4-7
        reader.read(offset, 16)
    assert len(pool.queue) == 1
    errors: list[BaseException] = []

    def read_ahead_block() -> None:
        try:
            reader.read(64, 16)
        except Boom as exc:
            errors.append(exc)

    thread = threading.Thread(target=read_ahead_block)
    thread.start()
    wait_until(lambda: cache.stats().waits == 1)
    source.fail = lambda start, end: True
    pool.run_all()
    thread.join()
    assert len(errors) == 1
    source.fail = None
    assert reader.read(64, 16) == RANDOM_DATA[64:80]


# --------------------------------------------------------------------------- readahead


def scan(reader: RangedReader, size: int, chunk: int) -> bytes:
    return b"".join(reader.read(offset, chunk) for offset in range(0, size, chunk))


# Fetches of a sequential scan of 64 MiB: two by the reads, at most six while readahead
# grows, then one per wire_window (4 MiB).
FEW_LARGE_FETCHES = 2 + 6 + 64 // 4


def test_a_sequential_scan_makes_few_large_fetches() -> None:
    size = 64 * MiB
    source = Source(size=size)
    config = ReadConfig()
    reader = reader_for(source, config=config)
    assert scan(reader, size, 128 * KiB) == source.slice(0, size)
    # The first read fetches its block; the second fetches its own and the first 1 MiB
    # in one request. Readahead requests then grow from 1 MiB to wire_window (4 MiB) as
    # the window doubles: a handful while it grows, then one per 4 MiB.
    assert len(source.calls) <= FEW_LARGE_FETCHES
    assert source.bytes_fetched == size  # nothing fetched twice, nothing past EOF
    assert max(end - start for start, end in source.calls) == config.wire_window
    assert reader.stats() == ReaderStats(size, size, len(source.calls), 0)


@pytest.mark.parametrize("chunk", [1 * MiB, 100_000, 4 * KiB])
def test_a_sequential_scan_with_a_real_pool_fetches_each_byte_once(chunk: int) -> None:
    size = 16 * MiB
    source = Source(size=size)
    with ThreadPoolExecutor(8) as pool:
        reader = reader_for(source, pool=pool)
        assert scan(reader, size, chunk) == source.slice(0, size)
        reader.close()
    # Thread timing decides how the work splits into requests, but single flight means
    # no byte is fetched twice.
    assert source.bytes_fetched == size
    assert all(start % (128 * KiB) == 0 for start, _ in source.calls)


def test_a_header_read_of_a_huge_file_fetches_one_block() -> None:
    source = Source(size=1024 * MiB)
    reader = reader_for(source)
    assert reader.read(0, 352) == source.slice(0, 352)
    assert source.calls == [(0, 128 * KiB)]
    assert source.bytes_fetched <= 256 * KiB < source.size // 100
    # The kernel's own first request for the header is a 128 KiB read: still one block.
    assert reader_for(source, cache=BlockCache(MiB)).read(0, 128 * KiB) == source.slice(
        0, 128 * KiB
    )
    assert len(source.calls) == 2


def test_a_small_file_is_fetched_whole_by_its_first_read() -> None:
    source = Source(size=500 * KiB)
    reader = reader_for(source)
    assert scan(reader, source.size, 128 * KiB) == source.slice(0, source.size)
    assert source.calls == [(0, 500 * KiB)]


def test_random_small_reads_fetch_small_ranges() -> None:
    size = 1024 * MiB
    source = Source(size=size)
    reader = reader_for(source)
    rng = random.Random(7)
    for _ in range(200):
        offset = rng.randrange(size)
        assert reader.read(offset, 4096) == source.slice(offset, offset + 4096)
    assert len(source.calls) <= 200
    assert all(end - start <= 2 * 128 * KiB for start, end in source.calls)
    assert source.bytes_fetched <= 200 * 2 * 128 * KiB


def test_a_seek_resets_the_window_and_fetches_only_what_is_needed() -> None:
    source = Source(size=256 * MiB)
    reader = reader_for(source)
    scan(reader, 8 * MiB, 128 * KiB)
    source.calls.clear()
    assert reader.read(200 * MiB, 128 * KiB) == source.slice(200 * MiB, 200 * MiB + 128 * KiB)
    assert source.calls == [(200 * MiB, 200 * MiB + 128 * KiB)]
    # Continuing from there starts again at the initial window.
    reader.read(200 * MiB + 128 * KiB, 128 * KiB)
    assert source.calls[1:] == [(200 * MiB + 128 * KiB, 200 * MiB + 256 * KiB + 1 * MiB)]


def test_a_small_forward_seek_keeps_the_readahead_and_the_stream() -> None:
    source = Source(size=64 * MiB)
    reader = reader_for(source)
    scan(reader, 2 * MiB, 128 * KiB)
    requested = max(end for _, end in source.calls)
    assert requested > 3 * MiB + 128 * KiB
    source.calls.clear()
    # Skip 1 MiB forward, into what readahead already fetched: the stream goes on, and
    # every request from here on starts where readahead had got to.
    rest = [reader.read(o, 128 * KiB) for o in range(3 * MiB, 64 * MiB, 128 * KiB)]
    assert b"".join(rest) == source.slice(3 * MiB, 64 * MiB)
    assert min(start for start, _ in source.calls) == requested
    assert source.bytes_fetched == 64 * MiB - requested
    # Readahead goes on growing from where it was: no restart at the initial window (a
    # restart would fetch one block, then one block and the initial window).
    first_start, first_end = source.calls[0]
    assert first_end - first_start > ReadConfig().initial_window


def test_reordered_kernel_requests_do_not_end_the_stream() -> None:
    source = Source(size=64 * MiB)
    reader = reader_for(source)
    order = [0, 1, 3, 2, 4, 6, 5, *range(7, 512)]
    for block in order:
        reader.read(block * 128 * KiB, 128 * KiB)
    assert source.bytes_fetched == 64 * MiB
    assert len(source.calls) <= FEW_LARGE_FETCHES


def test_reordered_1mib_kernel_requests_keep_large_fetches() -> None:
    # With a 1 MiB kernel readahead, its parallel 1 MiB reads arrive swapped in pairs.
    source = Source(size=64 * MiB)
    reader = reader_for(source)
    order = [0, 1]
    for pair in range(2, 64, 2):
        order += [pair + 1, pair]
    for m in order:
        assert reader.read(m * MiB, MiB) == source.slice(m * MiB, (m + 1) * MiB)
    assert source.bytes_fetched == 64 * MiB
    # Ending the stream at each swap would fetch 1 MiB at a time: 60 requests or more.
    assert len(source.calls) <= FEW_LARGE_FETCHES
    assert max(end - start for start, end in source.calls) == ReadConfig().wire_window


def test_inflight_readahead_is_bounded_per_reader() -> None:
    source = Source(RANDOM_DATA)
    pool = ManualExecutor()
    config = ReadConfig(
        block_size=16, initial_window=128, max_window=256, max_request=16, max_parallel=2
    )
    reader = reader_for(source, config=config, pool=pool)
    for offset in range(0, 1000, 16):
        assert reader.read(offset, 16) == RANDOM_DATA[offset : offset + 16]
        assert len(pool.queue) <= config.max_parallel
        pool.run_all()
    assert source.bytes_fetched == 1000


def test_each_landing_readahead_is_replaced_at_once_not_per_wave() -> None:
    # Requests asked for together share the link and land together; if the next ones
    # went out only when a whole wave had landed, the link would idle a round trip per
    # wave. Each landing must be replaced while the others are still on their way.
    size = 256 * MiB
    source = Source(size=size)
    pool = ManualExecutor()
    cache = BlockCache(256 * MiB)
    config = ReadConfig()
    reader = reader_for(source, config=config, cache=cache, pool=pool)
    bs = config.block_size
    pending_after_landing: list[tuple[int, int]] = []
    for offset in range(0, size, bs):
        # A landing: the oldest readahead request completes, before the reader needs it.
        while cache.get((KEY, offset // bs)) is None and pool.queue:
            pool.run_oldest()
            pending_after_landing.append((offset, len(pool.queue)))
        assert reader.read(offset, bs) == source.slice(offset, offset + bs)
        assert len(pool.queue) <= config.max_parallel
    assert source.bytes_fetched == size
    # Once the window is full, and until it reaches the end of the file, every landing
    # leaves max_parallel requests pending: the landed one was replaced immediately.
    full = [n for o, n in pending_after_landing if o < size - config.max_window]
    assert config.max_parallel in full[:10]
    steady = full[full.index(config.max_parallel) :]
    assert len(steady) >= 15
    assert steady == [config.max_parallel] * len(steady)


def test_close_cancels_pending_readahead_and_frees_its_blocks() -> None:
    source = Source(size=64 * MiB)
    pool = ManualExecutor()
    cache = BlockCache(256 * MiB)
    config = ReadConfig(initial_window=4 * MiB, max_request=1 * MiB)
    reader = reader_for(source, config=config, cache=cache, pool=pool)
    for offset in range(0, 9 * 256 * KiB, 128 * KiB):  # to the middle of the first batch
        reader.read(offset, 128 * KiB)
    assert len(pool.queue) == config.max_parallel
    calls = len(source.calls)
    reader.close()
    pool.run_all()
    assert len(source.calls) == calls
    assert reader.closed
    with pytest.raises(ValueError):
        reader.read(0, 1)
    # The cancelled readahead left no claim behind: another handle fetches the blocks.
    other = reader_for(source, cache=cache, pool=InlineExecutor())
    assert other.read(6 * MiB, 10) == source.slice(6 * MiB, 6 * MiB + 10)


def test_close_stops_a_running_readahead_between_requests() -> None:
    source = Source(RANDOM_DATA)
    pool = ManualExecutor()
    cache = BlockCache(1 * MiB)
    config = ReadConfig(
        block_size=16, initial_window=64, max_window=128, max_request=64, max_parallel=2
    )
    reader = reader_for(source, config=config, cache=cache, pool=pool)
    cache.put((KEY, 7), RANDOM_DATA[112:128])  # splits the readahead of blocks 6-9 in two
    for offset in range(0, 64, 16):  # the third read starts readahead of blocks 6-9
        reader.read(offset, 16)
    assert len(pool.queue) == 1
    ((future, task),) = pool.queue
    pool.queue = []
    future.set_running_or_notify_cancel()
    source.calls.clear()
    source.gate = threading.Event()
    source.entered.clear()
    thread = threading.Thread(target=task)
    thread.start()
    source.entered.wait()
    reader.close()
    source.gate.set()
    thread.join()
    assert pool.queue == []  # its landing asked for no more readahead after close
    assert source.calls == [(96, 112)]  # blocks 8-9 did not go out
    source.gate = None
    assert reader_for(source, config=config, cache=cache).read(128, 96) == RANDOM_DATA[128:224]


def test_reads_still_work_when_the_pool_is_shut_down() -> None:
    source = Source(RANDOM_DATA)
    pool = ThreadPoolExecutor(1)
    pool.shutdown()
    reader = reader_for(source, config=SMALL, pool=pool)
    assert scan(reader, 1000, 10) == RANDOM_DATA
    assert source.bytes_fetched == 1000


# --------------------------------------------------------------------------- stream mode


class WholeFileOnly(Exception):
    whole_file_only = True


class IgnoresRange(Source):
    """A site that answers any ranged read past offset 0 with the whole file.

    ``fetch`` at offset 0 works (a 200 starts with the right bytes); elsewhere it raises
    the mark; ``stream()`` yields the whole file in ``chunk``-sized pieces and counts
    every byte it hands out, as the network would.
    """

    def __init__(self, size: int, chunk: int = 100_000) -> None:
        super().__init__(size=size)
        self.chunk = chunk
        self.streams = 0
        self.streamed = 0
        self.open_streams = 0

    def __call__(self, start: int, end: int) -> bytes:
        if start > 0:
            with self._lock:
                self.calls.append((start, start))  # nothing useful moved
            raise WholeFileOnly(f"range {start}-{end} ignored")
        return super().__call__(start, end)

    def stream(self) -> Any:
        with self._lock:
            self.streams += 1
            self.open_streams += 1
        try:
            for offset in range(0, self.size, self.chunk):
                piece = self.slice(offset, offset + self.chunk)
                with self._lock:
                    self.streamed += len(piece)
                yield piece
        finally:
            with self._lock:
                self.open_streams -= 1


def stream_reader(
    source: IgnoresRange, *, cache: BlockCache | None = None, pool: Executor | None = None
) -> RangedReader:
    return RangedReader(
        KEY,
        source.size,
        source,
        cache if cache is not None else BlockCache(256 * MiB),
        pool if pool is not None else InlineExecutor(),
        ReadConfig(),
        stream=source.stream,
    )


def test_a_file_whose_site_ignores_range_is_streamed_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    size = 32 * MiB + 12345
    source = IgnoresRange(size)
    reader = stream_reader(source)
    with caplog.at_level("DEBUG", logger="fwfs.rangedfile"):
        assert scan(reader, size, 128 * KiB) == source.slice(0, size)
    reader.close()
    assert source.streams == 1
    # The first block came by a (working) ranged read at 0; the stream then re-sends it.
    assert source.bytes_fetched + source.streamed <= 1.1 * size
    assert source.open_streams == 0
    # Said once per file, not once per block.
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "ignores Range" in warnings[0].getMessage()


@pytest.mark.parametrize("chunk", [1 * MiB, 4 * KiB])
def test_a_streamed_file_reads_right_with_a_real_pool(chunk: int) -> None:
    size = 8 * MiB + 1
    source = IgnoresRange(size, chunk=65_536)
    with ThreadPoolExecutor(8) as pool:
        reader = stream_reader(source, pool=pool)
        assert scan(reader, size, chunk) == source.slice(0, size)
        reader.close()
    assert source.streams == 1
    assert source.streamed == size


def test_parallel_out_of_order_reads_share_the_one_stream() -> None:
    size = 4 * MiB
    source = IgnoresRange(size)
    reader = stream_reader(source)
    reader.read(0, 128 * KiB)
    reader.read(128 * KiB, 128 * KiB)  # now in stream mode
    order = list(range(256 * KiB, size, 128 * KiB))
    # The kernel's parallel readahead reaches fwfs a few requests out of order.
    for i in range(0, len(order) - 3, 4):
        order[i : i + 4] = reversed(order[i : i + 4])
    with ThreadPoolExecutor(4) as pool:
        parts = dict(
            zip(order, pool.map(lambda off: reader.read(off, 128 * KiB), order), strict=True)
        )
    for off in order:
        assert parts[off] == source.slice(off, off + 128 * KiB)
    assert source.streams == 1


def test_a_block_evicted_behind_the_stream_reopens_it() -> None:
    size = 2 * MiB
    source = IgnoresRange(size)
    reader = stream_reader(source)
    assert scan(reader, size, 128 * KiB) == source.slice(0, size)
    assert source.streams == 1
    reader._cache.clear()  # everything the stream passed is gone
    assert reader.read(256 * KiB, 10) == source.slice(256 * KiB, 256 * KiB + 10)
    assert source.streams == 2
    assert reader.read(512 * KiB, 10) == source.slice(512 * KiB, 512 * KiB + 10)
    assert source.streams == 2  # still ahead of the reopened stream: no third
    reader.close()
    assert source.open_streams == 0


def test_a_stream_that_ends_short_is_an_io_error_and_a_retry_reopens_it() -> None:
    size = 1 * MiB + 7
    source = IgnoresRange(size)
    full = source.stream

    def short() -> Any:
        yield source.slice(0, 300 * KiB)

    source.stream = short  # type: ignore[method-assign]
    reader = stream_reader(source)
    reader.read(0, 128 * KiB)
    with pytest.raises(OSError) as caught:
        reader.read(512 * KiB, 128 * KiB)
    assert caught.value.errno == errno.EIO
    source.stream = full  # type: ignore[method-assign]
    reader = stream_reader(source)
    assert reader.read(512 * KiB, 128 * KiB) == source.slice(512 * KiB, 640 * KiB)


def test_without_a_stream_the_whole_file_mark_is_an_ordinary_error() -> None:
    source = IgnoresRange(4 * MiB)
    reader = reader_for(source)
    with pytest.raises(WholeFileOnly):
        reader.read(1 * MiB, 10)
