"""The disk cache (fwfs/diskcache.py): what a user would check is that a block read back is
exactly the block kept, or nothing, whatever happened to the directory in between (a killed
writer, a corrupt or truncated file, a file of another block, a full disk, another mount
evicting at the same time), and that the directory stays within its size and private."""

from __future__ import annotations

import errno
import io
import os
import random
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fwfs import diskcache
from fwfs.blockcache import BlockCache
from fwfs.diskcache import DiskCache, cache_command, clear, usage
from fwfs.diskcache import cache as cache_module
from fwfs.errors import InvalidArgument
from fwfs.rangedfile import RangedReader, ReadConfig

KiB = 1 << 10
BS = 128 * KiB
SEG = 1 << 20  # one segment file per megabyte of a version (fwfs/diskcache/segment.py)
KEY = ("5f0c1a2b3c4d5e6f7a8b9c0d", 3)


@pytest.fixture
def caches(tmp_path: Path) -> Iterator[Callable[..., DiskCache]]:
    made: list[DiskCache] = []

    def make(max_bytes: int = 64 << 20, root: Path | None = None) -> DiskCache:
        cache = DiskCache(root or tmp_path / "cache", max_bytes)
        made.append(cache)
        return cache

    yield make
    for cache in made:
        cache.close()


def block_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "blocks").rglob("*") if p.is_file())


def by_segment(files: list[Path]) -> list[Path]:
    return sorted(files, key=lambda p: int(p.name.rsplit(".", 1)[1]))


def body(key: tuple[str, int], start: int, length: int) -> bytes:
    """Bytes that differ for every (key, start): a wrong block can never pass for a right one."""
    return random.Random(f"{key}/{start}").randbytes(length)


def test_a_block_kept_is_read_back_by_a_later_process_private_to_the_user(
    caches: Callable[..., DiskCache], tmp_path: Path
) -> None:
    first = caches()
    data = body(KEY, 0, BS)
    first.save(KEY, 0, memoryview(data))
    first.close()
    again = caches()
    assert again.load(KEY, 0, BS) == data
    assert again.load(KEY, BS, BS) is None  # never kept
    assert again.load(KEY, 0, BS - 1) is None  # another length is another block
    assert again.load((KEY[0], 4), 0, BS) is None  # another version
    root = tmp_path / "cache"
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    files = block_files(root)
    assert len(files) == 1
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    assert stat.S_IMODE(files[0].parent.stat().st_mode) == 0o700
    assert (root / "CACHEDIR.TAG").read_text().startswith("Signature: 8a477f597d28d172")
    assert stat.S_IMODE((root / "CACHEDIR.TAG").stat().st_mode) == 0o600
    assert (again.stats().hits, again.stats().misses) == (1, 3)


def test_an_existing_directory_is_made_private(tmp_path: Path) -> None:
    root = tmp_path / "shared"
    root.mkdir(mode=0o755)
    root.chmod(0o755)
    DiskCache(root, 1 << 20).close()
    assert stat.S_IMODE(root.stat().st_mode) == 0o700


def test_a_directory_that_cannot_be_made_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(InvalidArgument, match=r"cannot use .* as the disk cache"):
        DiskCache(tmp_path / "file" / "cache", 1 << 20)


def test_keys_that_name_no_file_version_are_not_kept(caches: Callable[..., DiskCache]) -> None:
    cache = caches()
    for key in [("x", "3"), ("x", -1), ("x", 1, 2), "x", ("x", True)]:
        cache.save(key, 0, b"abc")
        assert cache.load(key, 0, 3) is None
    cache.flush()
    assert block_files(cache.root) == []


def test_an_id_with_odd_characters_is_kept_under_a_safe_name(
    caches: Callable[..., DiskCache],
) -> None:
    cache = caches()
    key = ("../../etc/passwd", 1)
    cache.save(key, 0, b"abc")
    cache.flush()
    assert cache.load(key, 0, 3) == b"abc"
    (path,) = block_files(cache.root)
    assert path.parent.parent == cache.root / "blocks"


def test_a_killed_writers_temporary_file_is_never_read_and_is_swept(
    caches: Callable[..., DiskCache],
) -> None:
    cache = caches()
    data = body(KEY, 0, BS)
    cache.save(KEY, 0, data)
    cache.flush()
    (path,) = block_files(cache.root)
    # What kill -9 leaves: half a block under a temporary name, beside the real one's name.
    path.unlink()
    tmp = path.parent / ".tmp.99999.dead"
    tmp.write_bytes(path.name.encode() + data[: BS // 2])
    assert cache.load(KEY, 0, BS) is None
    os.utime(tmp, (1, 1))  # older than any write in progress
    cache.close()
    caches(max_bytes=1 << 30)  # a later mount sweeps it when it lists the directory
    for _ in range(1000):
        if not tmp.exists():
            break
        threading.Event().wait(0.01)
    assert not tmp.exists()


@pytest.mark.parametrize(
    "damage",
    [
        "flip a byte",
        "flip a table byte",
        "truncate",
        "empty",
        "extend",
        "another segment",
        "another version",
        "bad magic",
    ],
)
def test_a_damaged_block_is_dropped_logged_and_fetched_again(
    caches: Callable[..., DiskCache], damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    size = 2 * SEG
    content = body(KEY, 0, size)
    cache = caches()
    cache.save(KEY, 0, content[:BS])
    cache.save(KEY, SEG, content[SEG : SEG + BS])
    other = (KEY[0], KEY[1] + 1)
    cache.save(other, 0, content[:BS])  # the same bytes, of another version
    cache.flush()
    a, b = by_segment([p for p in block_files(cache.root) if f".{KEY[1]}." in p.name])
    (c,) = [p for p in block_files(cache.root) if f".{other[1]}." in p.name]
    raw = bytearray(a.read_bytes())
    if damage == "flip a byte":
        raw[1000] ^= 0x01
    elif damage == "truncate":
        raw = raw[: len(raw) - 1]
    elif damage == "empty":
        raw = bytearray()
    elif damage == "extend":
        raw += b"\0"
    elif damage == "flip a table byte":
        raw[16] ^= 0x01  # the first entry's start: the block it claims to be
    elif damage == "another segment":
        raw = bytearray(b.read_bytes())
    elif damage == "another version":
        raw = bytearray(c.read_bytes())
    elif damage == "bad magic":
        raw[0] ^= 0xFF
    a.write_bytes(raw)

    fetches: list[tuple[int, int]] = []

    def fetch(start: int, end: int) -> bytes:
        fetches.append((start, end))
        return content[start:end]

    with (
        ThreadPoolExecutor(2) as pool,
        RangedReader(KEY, size, fetch, BlockCache(1 << 20), pool, ReadConfig(), store=cache) as r,
    ):
        assert r.read(0, BS) == content[:BS]
        assert r.read(SEG, BS) == content[SEG : SEG + BS]
    # The damaged block crossed the network; the good one, in another file, came from disk.
    assert fetches == [(0, BS)]
    assert cache.stats().corrupt == 1
    assert "failed its check" in caplog.text
    cache.flush()
    assert cache.load(KEY, 0, BS) == content[:BS]  # kept again, whole


def test_a_full_disk_keeps_nothing_and_reads_go_on(
    caches: Callable[..., DiskCache], monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int, buffers: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "writev", full)
    cache = caches()
    content = body(KEY, 0, 4 * BS)
    with (
        ThreadPoolExecutor(2) as pool,
        RangedReader(
            KEY,
            len(content),
            lambda s, e: content[s:e],
            BlockCache(0),
            pool,
            ReadConfig(),
            store=cache,
        ) as r,
    ):
        assert r.read(0, len(content)) == content
        assert r.read(0, len(content)) == content
    cache.flush()
    assert block_files(cache.root) == []  # not even a temporary file
    assert cache.stats().dropped >= 4 and cache.stats().writes == 0


def test_a_writer_slower_than_the_reads_holds_them_back_and_keeps_every_block(
    caches: Callable[..., DiskCache], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A queue of two blocks and a disk that takes a while per block: reads faster than the
    # disk must wait for it, not leave holes that a re-read would fetch again.
    monkeypatch.setattr(cache_module, "_QUEUE_BYTES", 2 * BS)
    real_writev = os.writev
    gate = threading.Semaphore(0)

    def slow(fd: int, buffers: list[bytes]) -> int:
        gate.acquire()  # one block per release: the test, not a clock, paces the disk
        return real_writev(fd, buffers)

    monkeypatch.setattr(os, "writev", slow)
    cache = caches()
    blocks = [body(KEY, i * BS, BS) for i in range(12)]

    def save_all() -> None:
        for i, block in enumerate(blocks):
            cache.save(KEY, i * BS, block)

    saver = threading.Thread(target=save_all)
    saver.start()
    for _ in blocks:
        gate.release()
    saver.join(timeout=30)
    assert not saver.is_alive()
    cache.flush()
    assert cache.stats().dropped == 0 and cache.stats().writes == len(blocks)
    assert cache.load_many(KEY, [(i * BS, BS) for i in range(12)]) == blocks


def test_a_writer_that_keeps_nothing_is_given_up_on_then_trusted_again(
    caches: Callable[..., DiskCache],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A hung cache filesystem must not hang reads: after _STALL seconds without progress,
    # saves return at once and drop their blocks, until the writer writes again.
    monkeypatch.setattr(cache_module, "_QUEUE_BYTES", 2 * BS)
    monkeypatch.setattr(cache_module, "_STALL", 0.2)
    real_writev = os.writev
    hung = threading.Event()

    def stuck(fd: int, buffers: list[bytes]) -> int:
        hung.wait(30)
        return real_writev(fd, buffers)

    monkeypatch.setattr(os, "writev", stuck)
    cache = caches()
    for i in range(10):
        cache.save(KEY, i * BS, body(KEY, i * BS, BS))
    assert cache.stats().dropped >= 1  # past what is being written and two queued
    assert "has kept no block" in caplog.text
    hung.set()
    cache.flush()
    assert cache.stats().writes + cache.stats().dropped == 10
    cache.save(KEY, 20 * BS, body(KEY, 20 * BS, BS))
    cache.flush()
    assert cache.load(KEY, 20 * BS, BS) == body(KEY, 20 * BS, BS)


def test_a_second_reader_on_the_same_directory_fetches_nothing(
    caches: Callable[..., DiskCache],
) -> None:
    content = body(KEY, 0, 5 * BS + 77)
    fetched: list[int] = []

    def fetch(start: int, end: int) -> bytes:
        fetched.append(end - start)
        return content[start:end]

    first = caches()
    with ThreadPoolExecutor(4) as pool:
        with RangedReader(
            KEY, len(content), fetch, BlockCache(1 << 20), pool, ReadConfig(), store=first
        ) as r:
            assert r.read(0, len(content)) == content
        first.close()
        assert sum(fetched) == len(content)
        fetched.clear()
        second = caches()
        with RangedReader(
            KEY, len(content), fetch, BlockCache(1 << 20), pool, ReadConfig(), store=second
        ) as r:
            for offset in range(0, len(content), 100_000):
                assert r.read(offset, 100_000) == content[offset : offset + 100_000]
    assert fetched == []


def test_eviction_keeps_the_directory_under_its_size_and_the_recently_used(
    caches: Callable[..., DiskCache],
) -> None:
    # One 32 KiB block per segment file: 32 KiB, the table and the header, in 4 KiB pages.
    per_block = 36 * KiB
    cache = caches(max_bytes=20 * per_block)
    blocks = {i: body(KEY, i * SEG, 32 * KiB) for i in range(21)}
    for i in range(10):
        cache.save(KEY, i * SEG, blocks[i])
    cache.flush()
    # Blocks 1-9 were used long ago, in that order; block 0 is read just now.
    for i, path in enumerate(by_segment(block_files(cache.root))):
        os.utime(path, (1000 + i, 1000 + i))
    assert cache.load(KEY, 0, 32 * KiB) == blocks[0]
    for i in range(10, 21):
        cache.save(KEY, i * SEG, blocks[i])
    cache.flush()
    # The 21st block passed the budget: back under 90 % of it, the oldest first.
    assert usage(cache.root).bytes <= 18 * per_block
    assert cache.stats().evictions == 3
    gone = [i for i in range(21) if cache.load(KEY, i * SEG, 32 * KiB) is None]
    assert gone == [1, 2, 3]


def test_two_caches_sharing_a_directory_and_evicting_never_give_a_wrong_byte(
    caches: Callable[..., DiskCache], tmp_path: Path
) -> None:
    # Two mounts' caches (no shared memory: only the directory), a budget far below what
    # they write, so both list and evict while the other writes and reads.
    root = tmp_path / "shared"
    mounts = [caches(max_bytes=40 * 36 * KiB, root=root) for _ in range(2)]
    keys = [(f"{n:024x}", 1) for n in range(8)]
    wrong: list[str] = []
    hits = [0]

    def work(cache: DiskCache, seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(400):
            key = rng.choice(keys)
            start = rng.randrange(16) * SEG // 4
            data = cache.load(key, start, 32 * KiB)
            if data is None:
                cache.save(key, start, body(key, start, 32 * KiB))
            elif data != body(key, start, 32 * KiB):
                wrong.append(f"{key} {start}")
            else:
                hits[0] += 1

    threads = [threading.Thread(target=work, args=(mounts[n % 2], n)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for cache in mounts:
        cache.flush()
    assert wrong == []
    assert hits[0] > 0
    assert sum(cache.stats().evictions for cache in mounts) > 0
    # Each mount stops writing past its budget; together they stay near it.
    assert usage(root).bytes <= 2 * 40 * 36 * KiB


def test_clear_and_usage_while_a_cache_is_in_use(caches: Callable[..., DiskCache]) -> None:
    cache = caches()
    for key in [("a" * 24, 1), ("b" * 24, 2)]:
        for i in range(3):
            cache.save(key, i * BS, body(key, i * BS, BS))
    cache.flush()
    now = usage(cache.root)
    assert (now.blocks, now.files) == (6, 2)
    assert now.bytes >= 6 * BS
    assert clear(cache.root) == 6
    assert usage(cache.root) == diskcache.Usage(0, 0, 0)
    assert cache.load(("a" * 24, 1), 0, BS) is None
    cache.save(("a" * 24, 1), 0, body(("a" * 24, 1), 0, BS))  # the mount goes on keeping
    cache.flush()
    assert cache.load(("a" * 24, 1), 0, BS) == body(("a" * 24, 1), 0, BS)


def test_the_cache_command_shows_and_clears_every_sites_cache(
    caches: Callable[..., DiskCache], tmp_path: Path
) -> None:
    home = tmp_path / "xdg"
    site_a = caches(root=home / "fwfs" / "cache" / "a.example.org:443")
    site_b = caches(root=home / "fwfs" / "cache" / "b.example.org:443")
    for cache in (site_a, site_b):
        cache.save(KEY, 0, body(KEY, 0, BS))
        cache.save(KEY, BS, body(KEY, BS, BS))
        cache.flush()
    out, err = io.StringIO(), io.StringIO()
    assert cache_command("stats", None, home, out, err) == 0
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert all("2 blocks of 1 file versions" in line for line in lines)
    assert "a.example.org" in lines[0] and "b.example.org" in lines[1]
    out = io.StringIO()
    assert cache_command("clear", site_a.root, home, out, err) == 0
    assert out.getvalue() == f"{site_a.root}: 2 blocks removed\n"
    assert usage(site_a.root).blocks == 0 and usage(site_b.root).blocks == 2
    assert cache_command("stats", tmp_path / "nothing", home, out, err) == 1
    assert "is not a disk cache" in err.getvalue()


_OTHER_MOUNT = """
import random, sys
from pathlib import Path
from fwfs.diskcache import DiskCache

root, seed, budget = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
def body(key, start, length):
    return random.Random(f"{key}/{start}").randbytes(length)
cache = DiskCache(root, budget)
rng = random.Random(seed)
wrong = hits = 0
for _ in range(600):
    key = (f"{rng.randrange(8):024x}", 1)
    start = rng.randrange(16) * 262144
    data = cache.load(key, start, 32768)
    if data is None:
        cache.save(key, start, body(key, start, 32768))
    elif data != body(key, start, 32768):
        wrong += 1
    else:
        hits += 1
cache.close()
print(wrong, hits, cache.stats().evictions)
"""


def test_two_processes_sharing_a_directory_never_give_a_wrong_byte(tmp_path: Path) -> None:
    """The same as two mounts: two daemons, one cache directory, both evicting."""
    root = tmp_path / "shared"
    budget = 40 * 36 * KiB
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _OTHER_MOUNT, str(root), str(seed), str(budget)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for seed in (1, 2)
    ]
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        results.append([int(x) for x in out.split()])
    assert [wrong for wrong, _, _ in results] == [0, 0]
    assert sum(hits for _, hits, _ in results) > 0
    assert sum(evicted for _, _, evicted in results) > 0
    assert usage(root).bytes <= 2 * budget


class _RangeIgnored(Exception):
    whole_file_only = True


def test_a_site_that_ignores_range_fills_the_disk_cache_from_its_stream(
    caches: Callable[..., DiskCache],
) -> None:
    content = body(KEY, 0, 3 * 1024 * KiB + 5)
    streams: list[int] = []

    def fetch(start: int, end: int) -> bytes:
        raise _RangeIgnored("the site sent the whole file")

    def stream() -> Iterator[bytes]:
        streams.append(1)
        for at in range(0, len(content), 100_000):
            yield content[at : at + 100_000]

    first = caches()
    with ThreadPoolExecutor(2) as pool:
        with RangedReader(
            KEY,
            len(content),
            fetch,
            BlockCache(1 << 30),
            pool,
            ReadConfig(),
            stream=stream,
            store=first,
        ) as r:
            # Out of order: the stream passes blocks the reader has not asked for yet.
            assert r.read(2 * 1024 * KiB, 300_000) == content[2 * 1024 * KiB :][:300_000]
            assert r.read(0, len(content)) == content
        first.close()
        assert streams == [1]
        second = caches()
        with RangedReader(
            KEY,
            len(content),
            fetch,
            BlockCache(1 << 30),
            pool,
            ReadConfig(),
            stream=stream,
            store=second,
        ) as r:
            assert r.read(0, len(content)) == content
    assert streams == [1]  # every block came from disk


def test_a_run_loaded_at_once_gives_each_block_or_nothing_and_leaves_no_file_open(
    caches: Callable[..., DiskCache], caplog: pytest.LogCaptureFixture
) -> None:
    # More blocks than one batch of open files (diskcache._BATCH), with holes and a damaged
    # one in the middle: what a readahead request of a partly kept file asks for.
    # One block per segment file, so that a run spans more files than one batch opens.
    small = 4 * KiB
    count = cache_module._BATCH + 9
    kept = [i for i in range(count) if i % 5 != 2]
    cache = caches()
    for i in kept:
        cache.save(KEY, i * SEG, body(KEY, i * SEG, small))
    cache.flush()
    damaged = next(p for p in block_files(cache.root) if p.name.endswith(".3"))
    raw = bytearray(damaged.read_bytes())
    raw[-1] ^= 0x01
    damaged.write_bytes(raw)
    open_before = len(os.listdir("/proc/self/fd"))

    got = cache.load_many(KEY, [(i * SEG, small) for i in range(count)])

    assert len(os.listdir("/proc/self/fd")) == open_before
    for i, data in enumerate(got):
        if i in kept and i != 3:
            assert data == body(KEY, i * SEG, small), i
        else:
            assert data is None, i
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.corrupt) == (len(kept) - 1, count - len(kept) + 1, 1)
    assert not damaged.exists() and "failed its check" in caplog.text
    assert cache.load_many(("x", "not a version"), [(0, 3), (3, 3)]) == [None, None]


def test_block_aligned_reads_from_disk_give_each_block_exactly(
    caches: Callable[..., DiskCache],
) -> None:
    # The kernel's reads are whole 128 KiB blocks: those are handed on without a copy.
    content = body(KEY, 0, 6 * BS + 1000)
    first = caches()
    with ThreadPoolExecutor(4) as pool:
        with RangedReader(
            KEY,
            len(content),
            lambda s, e: content[s:e],
            BlockCache(1 << 20),
            pool,
            ReadConfig(),
            store=first,
        ) as r:
            assert r.read(0, len(content)) == content
        first.close()

        def no_fetch(start: int, end: int) -> bytes:
            raise AssertionError(f"fetched {start}-{end}")

        with RangedReader(
            KEY,
            len(content),
            no_fetch,
            BlockCache(1 << 20),
            pool,
            ReadConfig(),
            store=caches(),
        ) as r:
            for offset in [*range(0, len(content), BS), 0, BS]:
                assert r.read(offset, BS) == content[offset : offset + BS], offset


def test_a_block_read_alone_does_not_hold_its_whole_segment_in_memory(
    caches: Callable[..., DiskCache],
) -> None:
    # The memory cache charges a view for the buffer under it: a header read from a
    # segment of eight blocks must not pin the other seven in memory.
    cache = caches()
    for i in range(8):
        cache.save(KEY, i * BS, body(KEY, i * BS, BS))
    cache.flush()
    (alone,) = cache.load_many(KEY, [(0, BS)])
    assert isinstance(alone, bytes) and alone == body(KEY, 0, BS)
    run = cache.load_many(KEY, [(i * BS, BS) for i in range(8)])
    assert all(isinstance(b, memoryview) for b in run)
    assert [bytes(b) for b in run if b is not None] == [body(KEY, i * BS, BS) for i in range(8)]
