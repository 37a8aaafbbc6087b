"""Tests of the archive layer: the member tree of a zip listing, and reads of members.

Archives are built in memory with ``zipfile``. The "server" is a pair of plain callables
over those bytes that record every call, as the real one would see them: ``fetch_member``
is ``ZipFile.read`` (the ``?member=`` download) and the archive is read through a real
``RangedReader`` over a recording ``fetch(start, end)``. Nothing is mocked.
"""

from __future__ import annotations

import errno
import functools
import io
import random
import struct
import threading
import time
import zipfile
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

import pytest
from executors import InlineExecutor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fwfs.archives import (
    ArchiveConfig,
    ArchiveReader,
    Member,
    MemberDir,
    MemberFile,
    ZipIndex,
)
from fwfs.archives.central import ArchiveIO
from fwfs.blockcache import BlockCache
from fwfs.errors import (
    FwfsError,
    NotADirectory,
    NotFound,
    PermissionDenied,
    RemoteError,
)
from fwfs.paths import NAME_MAX
from fwfs.rangedfile import KiB, MiB, RangedReader, ReadConfig

KEY = ("archive-file-id", 3)
READ = ReadConfig(
    block_size=16 * KiB,
    initial_window=64 * KiB,
    max_window=1 * MiB,
    max_request=256 * KiB,
    max_parallel=4,
)
STAMP = "2024-01-02T03:04:04"


# --------------------------------------------------------------------------- the fake site


class Site:
    """One archive on a site: the listing, ``?member=`` and ranged reads, all recorded.

    ``serve_member`` and ``serve_range`` answer the requests; a test replaces them to make
    the site misbehave.
    """

    def __init__(
        self,
        data: bytes,
        *,
        cache: BlockCache | None = None,
        pool: Executor | None = None,
        read_config: ReadConfig = READ,
        size: int | None = None,
    ) -> None:
        self.data = data
        self.size = len(data) if size is None else size
        self.cache = cache if cache is not None else BlockCache(256 * MiB)
        self.pool = pool if pool is not None else InlineExecutor()
        self.read_config = read_config
        self.member_calls: list[str] = []
        self.range_calls: list[tuple[int, int]] = []
        self.member_bytes = 0
        self._lock = threading.Lock()
        self.serve_member: Callable[[str], bytes] = self._zip_member
        self.serve_range: Callable[[int, int], bytes] = lambda start, end: data[start:end]

    def _zip_member(self, path: str) -> bytes:
        return zipfile.ZipFile(io.BytesIO(self.data)).read(path)

    def fetch_member(self, path: str) -> bytes:
        with self._lock:
            self.member_calls.append(path)
        data = self.serve_member(path)
        with self._lock:
            self.member_bytes += len(data)
        return data

    def fetch(self, start: int, end: int) -> bytes:
        assert 0 <= start < end <= self.size
        with self._lock:
            self.range_calls.append((start, end))
        return self.serve_range(start, end)

    def open_archive(self) -> RangedReader:
        return RangedReader(KEY, self.size, self.fetch, self.cache, self.pool, self.read_config)

    def reader(self, config: ArchiveConfig | None = None) -> ArchiveReader:
        return ArchiveReader(
            KEY, self.size, self.fetch_member, self.open_archive, self.cache, config
        )

    @property
    def archive_bytes(self) -> int:
        return sum(end - start for start, end in self.range_calls)

    @property
    def transferred(self) -> int:
        return self.archive_bytes + self.member_bytes


REMOTE = ArchiveConfig(scan_members=10**9, scan_fraction=float("inf"))
LOCAL = ArchiveConfig(scan_members=0, scan_fraction=0.0)


def build_zip(
    members: Iterable[tuple[str, bytes] | tuple[str, bytes, int]],
    *,
    comment: bytes = b"",
) -> bytes:
    """A zip of ``(name, data[, compress_type])``; names ending in ``/`` are directories."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.comment = comment
        for name, data, *method in members:
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 2, 3, 4, 4))
            info.compress_type = method[0] if method else zipfile.ZIP_DEFLATED
            if name.endswith("/"):
                info.compress_type = zipfile.ZIP_STORED
                info.external_attr = 0o40755 << 16 | 0x10
            # Two members of one name are what these tests are about; zipfile warns.
            with pytest.warns(UserWarning) if name in zf.NameToInfo else _nothing():
                zf.writestr(info, data)
    return buf.getvalue()


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def listing(data: bytes) -> dict[str, Any]:
    """The API's zip listing, built the way the server builds it (from ``ZipInfo``)."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {
            "comment": zf.comment.decode("utf-8", "replace"),
            "members": [
                {
                    "path": i.filename,
                    "size": i.file_size,
                    "timestamp": datetime(*i.date_time).isoformat(),
                    "comment": i.comment.decode("utf-8", "replace"),
                }
                for i in zf.infolist()
            ],
        }


def index_of(data: bytes) -> ZipIndex:
    return ZipIndex.from_listing(listing(data))


def index_for(paths: Iterable[str], size: int = 1) -> ZipIndex:
    members = [{"path": p, "size": size, "timestamp": STAMP, "comment": ""} for p in paths]
    return ZipIndex.from_listing({"comment": "", "members": members})


_LOW_NIBBLE = bytes(b & 0x0F for b in range(256))


def slice_bytes(rng: random.Random, size: int) -> bytes:
    """Something like a DICOM slice: a random header, then half-compressible pixel data."""
    head = rng.randbytes(min(size, 512))
    body = rng.randbytes(max(0, size - 512) // 2).translate(_LOW_NIBBLE)
    return (head + body + rng.randbytes(size))[:size]


def read_all(reader: ArchiveReader, member: MemberFile, chunk: int = 128 * KiB) -> bytes:
    return b"".join(reader.read(member, off, chunk) for off in range(0, member.size, chunk))


def files_of(index: ZipIndex) -> dict[str, MemberFile]:
    return {f.path: f for f in index.files}


def central_entries(data: bytes) -> list[int]:
    """Offsets of the central directory entries, in order."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        pos = zf.start_dir
        count = len(zf.infolist())
    offsets = []
    for _ in range(count):
        assert data[pos : pos + 4] == b"PK\x01\x02"
        offsets.append(pos)
        n, m, k = struct.unpack_from("<3H", data, pos + 28)
        pos += 46 + n + m + k
    return offsets


def patch(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


def header_offsets(data: bytes) -> list[int]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return [i.header_offset for i in zf.infolist()]


# --------------------------------------------------------------------------- the index


def test_nested_paths_and_implicit_directories() -> None:
    index = index_for(["a/b/c.dcm", "a/b/d.dcm", "a/e.txt", "top.json", "x/", "x/y/"])
    assert list(index.listdir("")) == ["a", "top.json", "x"]
    assert list(index.listdir("a")) == ["b", "e.txt"]
    assert list(index.listdir("a/b")) == ["c.dcm", "d.dcm"]
    assert list(index.listdir("x")) == ["y"]
    implied = index.lookup("a/b")
    assert isinstance(implied, MemberDir) and implied.path is None
    listed = index.lookup("x/y")
    assert isinstance(listed, MemberDir) and listed.path == "x/y/"
    leaf = index.lookup("a/b/c.dcm")
    assert isinstance(leaf, MemberFile)
    assert (leaf.path, leaf.relpath, leaf.name, leaf.index) == (
        "a/b/c.dcm",
        "a/b/c.dcm",
        "c.dcm",
        0,
    )
    assert index.lookup("") is index.root
    assert index.file_count == 4 and index.total_size == 4


def test_lookup_errors() -> None:
    index = index_for(["a/b.dcm"])
    with pytest.raises(NotFound) as nf:
        index.lookup("a/nope")
    assert nf.value.errno == errno.ENOENT
    with pytest.raises(NotADirectory) as nd:
        index.lookup("a/b.dcm/c")
    assert nd.value.errno == errno.ENOTDIR
    with pytest.raises(NotADirectory):
        index.listdir("a/b.dcm")
    with pytest.raises(NotFound):
        index.lookup("..")


@pytest.mark.parametrize(
    ("path", "relpath"),
    [
        ("../../etc/passwd", "．．/．．/etc/passwd"),
        ("/abs/path", "abs/path"),
        ("//abs//./path", "abs/path"),
        ("a/./b/../c", "a/b/．．/c"),
        ("a\\..\\b", "a\\..\\b"),
        ("dir/.", "dir"),
        (".", "(no label)"),
        ("a/\x00b", "a/␀b"),
    ],
)
def test_member_paths_never_leave_the_archive(path: str, relpath: str) -> None:
    index = index_for([path])
    (member,) = index.files
    assert member.relpath == relpath
    assert member.path == path
    assert index.lookup(relpath) is member
    for entry in index.walk():
        assert entry.name not in ("", ".", "..") and "/" not in entry.name


def test_duplicate_member_paths_are_both_reachable_with_stable_names() -> None:
    paths = ["s/IM1.dcm", "s/dup.dcm", "s/IM2.dcm", "s/dup.dcm"]
    index = index_for(paths)
    names = list(index.listdir("s"))
    assert names[0] == "IM1.dcm" and names[2] == "IM2.dcm"
    dups = [f for f in index.files if f.path == "s/dup.dcm"]
    assert len(dups) == 2 and dups[0].name != dups[1].name
    assert not any(f.fetchable for f in dups)
    assert all(f.fetchable for f in index.files if f.path != "s/dup.dcm")
    for f in dups:
        assert index.lookup(f.relpath) is f
    # Stable: other members, before or after, do not move the duplicates' names.
    again = index_for(["s/zzz.dcm", "s/dup.dcm", "other/x", "s/dup.dcm", "s/IM1.dcm"])
    assert [f.name for f in again.files if f.path == "s/dup.dcm"] == [f.name for f in dups]
    assert index_for(paths).listdir("s").keys() == index.listdir("s").keys()


def test_a_file_and_a_directory_of_one_name() -> None:
    index = index_for(["scan", "scan/a.dcm", "other.nii.gz", "other.nii.gz/x"])
    root = index.listdir("")
    dirs = {n for n, e in root.items() if isinstance(e, MemberDir)}
    files = {n for n, e in root.items() if isinstance(e, MemberFile)}
    assert len(dirs) == 2 and len(files) == 2
    scan_file = next(f for f in index.files if f.path == "scan")
    assert scan_file.name.startswith("scan (file-")
    other = next(f for f in index.files if f.path == "other.nii.gz")
    assert other.name.startswith("other (file-") and other.name.endswith(").nii.gz")
    inner = index.lookup(next(n for n in dirs if n.startswith("scan")) + "/a.dcm")
    assert isinstance(inner, MemberFile) and inner.path == "scan/a.dcm"
    # An explicit directory entry for a name a file has is the same collision.
    both = index_for(["t", "t/"])
    assert len(both.listdir("")) == 2


def test_names_that_escape_alike_and_long_names() -> None:
    long = "脳" * 100 + ".dcm"
    index = index_for(["..", "．．", long, "a/" + "b" * 300 + "/c"])
    names = list(index.listdir(""))
    assert len(names) == 4 and len(set(names)) == 4
    for entry in index.walk():
        assert len(entry.name.encode()) <= NAME_MAX
    long_member = next(f for f in index.files if f.path == long)
    assert long_member.name.endswith(".dcm")


def test_timestamps_are_utc_and_directories_take_the_newest() -> None:
    doc = {
        "comment": "c",
        "members": [
            {"path": "d/", "size": 0, "timestamp": "2020-05-05T00:00:00", "comment": ""},
            {"path": "d/a", "size": 3, "timestamp": "2024-01-02T03:04:04", "comment": "x"},
            {"path": "e/b", "size": 4, "timestamp": "2024-01-02T03:04:06", "comment": ""},
            {"path": "e/c", "size": 5, "timestamp": "garbage", "comment": ""},
        ],
    }
    index = ZipIndex.from_listing(doc)
    expected = datetime(2024, 1, 2, 3, 4, 4, tzinfo=timezone.utc).timestamp()
    a = index.lookup("d/a")
    assert isinstance(a, MemberFile) and a.mtime == expected and a.comment == "x"
    assert index.lookup("d").mtime == datetime(2020, 5, 5, tzinfo=timezone.utc).timestamp()
    assert index.lookup("e").mtime == expected + 2
    assert index.lookup("e/c").mtime == 0.0
    assert index.comment == "c" and index.file_count == 3 and index.total_size == 12


@pytest.mark.parametrize(
    "doc",
    [
        None,
        [],
        {"members": None},
        {"members": ["a"]},
        {"members": [{"size": 1}]},
        {"members": [{"path": "a", "size": -1}]},
        {"members": [{"path": "a", "size": "1"}]},
    ],
)
def test_a_malformed_listing_is_a_remote_error(doc: Any) -> None:
    with pytest.raises(RemoteError):
        ZipIndex.from_listing(doc)


def test_cp437_and_utf8_names() -> None:
    # zipfile writes non-ASCII names as UTF-8 with flag 0x800; an old tool writes CP437
    # bytes without it. Build that by patching an ASCII placeholder of the same length.
    placeholder, cp437 = b"cafX.dcm", "café.dcm".encode("cp437")
    data = build_zip([("cafX.dcm", b"old tool"), ("naïve/ß.dcm", b"new tool")])
    data = data.replace(placeholder, cp437)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert [i.filename for i in zf.infolist()] == ["café.dcm", "naïve/ß.dcm"]
        assert [i.flag_bits & 0x800 for i in zf.infolist()] == [0, 0x800]
    index = index_of(data)
    assert list(index.listdir("")) == ["café.dcm", "naïve"]
    for config in (REMOTE, LOCAL):
        site = Site(data)
        reader = site.reader(config)
        old, new = index.lookup("café.dcm"), index.lookup("naïve/ß.dcm")
        assert isinstance(old, MemberFile) and isinstance(new, MemberFile)
        assert reader.read(old, 0, 100) == b"old tool"
        assert reader.read(new, 0, 100) == b"new tool"


def test_20000_members_index_quickly() -> None:
    members = [
        {
            "path": f"series{i % 4}/IM_{i:05d}.dcm",
            "size": 500_000 + i,
            "timestamp": f"2024-01-02T03:{i // 60 % 60:02d}:{i % 60:02d}",
            "comment": "",
        }
        for i in range(20_000)
    ]
    start = time.perf_counter()
    index = ZipIndex.from_listing({"comment": "", "members": members})
    elapsed = time.perf_counter() - start
    print(f"index of 20000 members built in {elapsed * 1000:.0f} ms")
    assert index.file_count == 20_000
    assert len(index.listdir("series3")) == 5000
    assert index.lookup("series1/IM_00001.dcm").relpath == "series1/IM_00001.dcm"


path_parts = st.sampled_from(["a", "b", "..", ".", "", "c.dcm", "C.dcm", "x\\y", "脳", "．．"])


def place(path: str) -> tuple[str, ...]:
    """Where a file member lands: paths that differ only in `/`, `.` and `` are one place."""
    return tuple(p for p in path.split("/") if p not in ("", ".")) or ("",)


@settings(max_examples=200, deadline=None)
@given(
    paths=st.lists(
        st.builds(
            lambda parts, slash, lead: ("/" if lead else "") + "/".join(parts) + slash,
            st.lists(path_parts, min_size=1, max_size=4),
            st.sampled_from(["", "", "/"]),
            st.booleans(),
        ),
        max_size=25,
    ),
    seed=st.randoms(use_true_random=False),
)
def test_every_member_is_reachable_and_names_do_not_depend_on_order(
    paths: list[str], seed: random.Random
) -> None:
    index = index_for(paths)
    files = [p for p in paths if not p.endswith("/")]
    assert index.file_count == len(files)
    for member in index.files:
        assert index.lookup(member.relpath) is member
        assert paths[member.index] == member.path
    for entry in index.walk():
        assert entry.name not in ("", ".", "..") and "/" not in entry.name
        assert "\x00" not in entry.name and len(entry.name.encode()) <= NAME_MAX
    # Shuffling members with distinct paths changes no name (duplicates are ranked by
    # their order, so only they may swap names).
    shuffled = list(paths)
    seed.shuffle(shuffled)
    other = index_for(shuffled)
    places = [place(p) for p in files]
    unique = {p for p in files if places.count(place(p)) == 1}
    names = {f.path: f.relpath for f in index.files if f.path in unique}
    assert names == {f.path: f.relpath for f in other.files if f.path in unique}
    assert sorted(e.relpath for e in index.walk()) == sorted(e.relpath for e in other.walk())


# --------------------------------------------------------------------------- reads

MIXED_CONFIG = ArchiveConfig(
    scan_members=3, scan_fraction=0.5, large_member=64 * KiB, member_block=8 * KiB
)


def mixed_archive() -> bytes:
    rng = random.Random(7)
    members: list[tuple[str, bytes] | tuple[str, bytes, int]] = [
        ("dir/", b""),
        ("dir/empty", b""),
        ("dir/stored.dcm", slice_bytes(rng, 20_000), zipfile.ZIP_STORED),
        ("dir/deflated.dcm", slice_bytes(rng, 30_000), zipfile.ZIP_DEFLATED),
        ("dir/bzip2.dcm", slice_bytes(rng, 9_000), zipfile.ZIP_BZIP2),
        ("dir/lzma.dcm", slice_bytes(rng, 9_000), zipfile.ZIP_LZMA),
        ("big/stored.bin", rng.randbytes(200_000), zipfile.ZIP_STORED),
        ("big/deflated.nii", slice_bytes(rng, 300_000), zipfile.ZIP_DEFLATED),
        ("big/exact.bin", slice_bytes(rng, 128 * KiB), zipfile.ZIP_DEFLATED),
        ("dup.txt", b"first of two", zipfile.ZIP_STORED),
        ("dup.txt", b"second of two, longer", zipfile.ZIP_DEFLATED),
    ]
    members += [(f"s/IM{i:03d}.dcm", slice_bytes(rng, rng.randrange(1, 5000))) for i in range(12)]
    return build_zip(members)


MIXED = mixed_archive()
MIXED_INDEX = index_of(MIXED)
with zipfile.ZipFile(io.BytesIO(MIXED)) as _zf:
    MIXED_DATA = [_zf.open(i).read() if not i.is_dir() else b"" for i in _zf.infolist()]


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    mode=st.sampled_from([REMOTE, LOCAL, MIXED_CONFIG]),
    cache_size=st.sampled_from([0, 20 * KiB, 64 * MiB]),
    reads=st.lists(
        st.tuples(
            st.integers(0, len(MIXED_INDEX.files) - 1),
            st.integers(0, 310_000),
            st.integers(0, 70_000),
        ),
        min_size=1,
        max_size=25,
    ),
)
def test_reads_equal_the_source(
    mode: ArchiveConfig, cache_size: int, reads: list[tuple[int, int, int]]
) -> None:
    site = Site(MIXED, cache=BlockCache(cache_size))
    reader = site.reader(mode)
    for which, offset, length in reads:
        member = MIXED_INDEX.files[which]
        expected = MIXED_DATA[member.index][offset : offset + length]
        assert reader.read(member, offset, length) == expected


def test_every_member_reads_whole_in_every_mode() -> None:
    for config in (REMOTE, LOCAL, MIXED_CONFIG):
        site = Site(MIXED)
        reader = site.reader(config)
        for member in MIXED_INDEX.files:
            assert read_all(reader, member, 7_000) == MIXED_DATA[member.index]
            assert reader.read(member, member.size, 10) == b""
            assert reader.read(member, member.size + 5, 10) == b""


def test_duplicate_paths_read_their_own_bytes_without_asking_the_server() -> None:
    site = Site(MIXED)
    reader = site.reader(REMOTE)
    first, second = (f for f in MIXED_INDEX.files if f.path == "dup.txt")
    assert reader.read(first, 0, 100) == b"first of two"
    assert reader.read(second, 0, 100) == b"second of two, longer"
    # The server's ?member=dup.txt would name only one of them.
    assert site.member_calls == []


def test_a_single_read_is_one_member_request_and_a_second_read_none() -> None:
    site = Site(MIXED)
    reader = site.reader()
    member = files_of(MIXED_INDEX)["s/IM004.dcm"]
    assert reader.read(member, 10, 100) == MIXED_DATA[member.index][10:110]
    assert site.member_calls == ["s/IM004.dcm"] and site.range_calls == []
    assert reader.read(member, 0, member.size) == MIXED_DATA[member.index]
    assert reader.read(member, 5, 1) == MIXED_DATA[member.index][5:6]
    assert site.member_calls == ["s/IM004.dcm"] and site.range_calls == []
    stats = reader.stats()
    assert (stats.members_fetched, stats.members_local, stats.scanning) == (1, 0, False)
    assert stats.member_bytes_fetched == member.size and stats.archive_bytes_fetched == 0


def test_an_empty_member_costs_nothing() -> None:
    site = Site(MIXED)
    reader = site.reader()
    empty = files_of(MIXED_INDEX)["dir/empty"]
    assert reader.read(empty, 0, 10) == b""
    assert site.member_calls == [] and site.range_calls == []


def test_large_members_are_split_into_cache_blocks_within_the_bound() -> None:
    rng = random.Random(3)
    data = build_zip([("m.dcm", slice_bytes(rng, 200_000))])
    cache = BlockCache(150_000)
    site = Site(data, cache=cache)
    config = ArchiveConfig(member_block=32 * KiB, large_member=1 * MiB)
    reader = site.reader(config)
    (member,) = index_of(data).files
    assert reader.read(member, 0, 10) == zipfile.ZipFile(io.BytesIO(data)).read("m.dcm")[:10]
    stats = cache.stats()
    assert stats.bytes_cached <= stats.max_bytes
    assert stats.blocks >= 4


@functools.cache
def scan_archive(order: str, count: int = 300) -> tuple[bytes, ZipIndex]:
    rng = random.Random(11)
    names = [f"series/IM_{i:04d}.dcm" for i in range(count)]
    if order == "shuffled":
        rng.shuffle(names)
    data = build_zip((name, slice_bytes(rng, rng.randrange(8_000, 40_000))) for name in names)
    return data, index_of(data)


@pytest.mark.parametrize(
    ("zip_order", "read_order"),
    [("sorted", "zip"), ("shuffled", "zip"), ("shuffled", "name"), ("sorted", "name")],
)
def test_a_full_scan_transfers_about_the_archive_once(zip_order: str, read_order: str) -> None:
    data, index = scan_archive(zip_order)
    site = Site(data)
    reader = site.reader()
    members = list(index.files)
    if read_order == "name":
        members.sort(key=lambda f: f.relpath)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for member in members:
            # dcm2niix: open, read the whole slice in kernel-sized requests, close.
            assert read_all(reader, member) == zf.read(member.path)
    ratio = site.transferred / len(data)
    stats = reader.stats()
    print(
        f"scan of a {zip_order} archive in {read_order} order: {len(data)} bytes, "
        f"{site.transferred} transferred ({ratio:.3f}x) in "
        f"{len(site.member_calls) + len(site.range_calls)} requests"
    )
    assert site.transferred <= 1.1 * len(data) + READ.block_size
    assert stats.scanning and stats.members_fetched == ArchiveConfig().scan_members
    assert stats.members_local == len(members) - stats.members_fetched
    assert stats.archive_bytes_fetched == site.archive_bytes
    assert stats.member_bytes_fetched == site.member_bytes
    # In archive order the scan is one stream, and readahead turns it into a few large
    # requests; out of order, the sweep does the same.
    assert len(site.range_calls) < len(members) / 4


def test_no_sweep_when_the_archive_does_not_fit_in_half_the_cache() -> None:
    data, index = scan_archive("shuffled", count=100)
    site = Site(data, cache=BlockCache(2 * len(data) - 1))
    reader = site.reader()
    for member in sorted(index.files, key=lambda f: f.relpath):
        read_all(reader, member)
    ratio = site.transferred / len(data)
    print(f"scan out of order, no sweep: {ratio:.3f}x in {len(site.range_calls)} requests")
    # One request per member read out of order. The cache holds decompressed members as
    # well as archive blocks, so a block two members share may be gone when the second
    # one is read, and fetched again.
    assert len(site.range_calls) > 50
    assert site.transferred <= 1.5 * len(data)


def test_scan_switches_on_the_bytes_fetched_too() -> None:
    rng = random.Random(5)
    parts = [(f"m{i}", rng.randbytes(50_000), zipfile.ZIP_STORED) for i in range(4)]
    data = build_zip(parts)
    site = Site(data)
    reader = site.reader(ArchiveConfig(scan_fraction=0.25))
    files = index_of(data).files
    for member in files:
        read_all(reader, member)
    # The first member's 50 KB is a quarter of the archive: the second read goes local.
    assert len(site.member_calls) == 2
    assert reader.stats().members_local == 2


def bulk_reader(site: Site, config: ArchiveConfig = LOCAL) -> ArchiveReader:
    """A reader with a prefetch pool, as the mount makes them (parts run inline here)."""
    return ArchiveReader(
        KEY,
        site.size,
        site.fetch_member,
        site.open_archive,
        site.cache,
        config,
        None,
        InlineExecutor(),
    )


def test_a_second_member_brings_the_rest_of_the_archive_in_a_few_parts() -> None:
    data, index = scan_archive("sorted")
    site = Site(data)
    reader = bulk_reader(site)
    files = list(index.files)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert read_all(reader, files[0]) == zf.read(files[0].path)
        # One member alone: its own region (and the central directory), nothing ahead.
        one = site.archive_bytes
        assert one <= len(data) - zf.start_dir + files[0].size + 4 * READ.block_size
        calls = len(site.range_calls)
        assert read_all(reader, files[1]) == zf.read(files[1].path)
        # The member's own head (up to the next 1 MiB boundary), and the members' bytes not
        # yet fetched, cut on 1 MiB boundaries into parts of at most a quarter of them
        # (rounded up to 1 MiB), at least 1 MiB each but the last.
        here = zf.getinfo(files[1].path).header_offset
        fetched = site.range_calls[calls:]
        own = [(start, end) for start, end in fetched if start < MiB]  # what is not cached
        assert len(own) == 1 and own[0][0] <= here + READ.block_size and own[0][1] == MiB
        parts = [call for call in fetched if call not in own]
        assert 2 <= len(parts) <= 5, parts
        step = -(-len(data) // 4 // MiB) * MiB
        assert all(end - start <= step for start, end in parts), parts
        assert all(end % MiB == 0 for _, end in sorted(parts)[:-1]), parts
        # ...and the next members are decompressed ahead of the reader, each once.
        ahead = ArchiveConfig().inflate_ahead
        assert reader.stats().members_local == 2 + ahead
        calls = len(site.range_calls)
        for member in files[2:]:
            assert read_all(reader, member) == zf.read(member.path)
    assert site.range_calls[calls:] == []  # every later member was already here
    assert site.archive_bytes <= len(data) + READ.block_size
    assert reader.stats().members_local == len(files)


def test_the_bulk_fetch_stays_within_a_quarter_of_the_cache() -> None:
    data, index = scan_archive("sorted")
    cache = BlockCache(4 * MiB)  # a quarter: 1 MiB, well short of the archive's ~7 MB
    site = Site(data, cache=cache)
    reader = bulk_reader(site)
    files = list(index.files)
    read_all(reader, files[0])
    calls = len(site.range_calls)
    read_all(reader, files[1])
    fetched = sum(end - start for start, end in site.range_calls[calls:])
    assert fetched <= 1 * MiB + 2 * READ.block_size, site.range_calls[calls:]
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for member in files[2:]:
            assert read_all(reader, member) == zf.read(member.path)


def test_no_bulk_fetch_without_a_pool_or_when_turned_off() -> None:
    data, index = scan_archive("sorted")
    for site, reader in [
        (s := Site(data), s.reader(LOCAL)),
        (t := Site(data), bulk_reader(t, ArchiveConfig(scan_members=0, bulk_span=0))),
    ]:
        for member in index.files[:2]:
            read_all(reader, member)
        # The two regions, one after the other, and the readahead they started: no more.
        assert site.archive_bytes < 1.5 * MiB, site.range_calls


def large_archive(method: int, size: int = 4 * MiB) -> tuple[bytes, MemberFile, bytes]:
    rng = random.Random(13)
    payload = rng.randbytes(size)
    data = build_zip([("small.dcm", b"x" * 100), ("big.nii", payload, method)])
    return data, files_of(index_of(data))["big.nii"], payload


def test_a_large_stored_member_is_read_in_place() -> None:
    data, member, payload = large_archive(zipfile.ZIP_STORED)
    site = Site(data)
    reader = site.reader(ArchiveConfig(large_member=1 * MiB))
    far = member.size - 300_000
    assert reader.read(member, far, 100) == payload[far : far + 100]
    # The end of the archive (directory), the local header and the wanted block: a few
    # blocks, never the member.
    print(f"100 bytes at {far} of a {member.size}-byte stored member: {site.archive_bytes} bytes")
    assert site.archive_bytes <= 4 * READ.block_size
    assert site.member_calls == []
    assert reader.read(member, 0, 10) == payload[:10]
    assert read_all(reader, member, 100_000) == payload


def test_a_large_deflated_member_streams() -> None:
    data, member, payload = large_archive(zipfile.ZIP_DEFLATED)
    site = Site(data)
    config = ArchiveConfig(large_member=1 * MiB, member_block=64 * KiB)
    reader = site.reader(config)
    assert reader.read(member, 0, 100) == payload[:100]
    first = site.archive_bytes
    print(f"head of a {member.size}-byte deflated member: {first} bytes transferred")
    assert first <= 512 * KiB
    assert read_all(reader, member, 128 * KiB) == payload
    assert site.archive_bytes <= 1.1 * len(data) + READ.block_size
    assert site.member_calls == []
    stats = reader.stats()
    assert (stats.members_fetched, stats.members_local) == (0, 1)
    assert stats.archive_bytes_fetched == site.archive_bytes
    # Backwards: the blocks passed on the way are in the cache.
    before = site.archive_bytes
    assert reader.read(member, 1 * MiB + 3, 200_000) == payload[1 * MiB + 3 : 1 * MiB + 200_003]
    assert site.archive_bytes == before


def test_a_large_deflated_member_restarts_when_its_blocks_are_gone() -> None:
    data, member, payload = large_archive(zipfile.ZIP_DEFLATED, size=2 * MiB)
    site = Site(data, cache=BlockCache(200 * KiB))
    reader = site.reader(ArchiveConfig(large_member=1 * MiB, member_block=32 * KiB))
    positions = [1_500_000, 100, 1_900_000, 1_000_000, 5]
    for pos in positions:
        assert reader.read(member, pos, 70_000) == payload[pos : pos + 70_000]


def test_zip64_members() -> None:
    rng = random.Random(17)
    payloads = {f"z{i}.dcm": slice_bytes(rng, 3000 + i) for i in range(12)}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
        for name, payload in payloads.items():
            with zf.open(zipfile.ZipInfo(name, (2024, 1, 2, 3, 4, 4)), "w", force_zip64=True) as fh:
                fh.write(payload)
    data = buf.getvalue()
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        info = zf.infolist()[0]
        # The local header carries the zip64 extra field, the central directory does not:
        # the data offset must come from the local header.
        local_extra = struct.unpack_from("<H", data, info.header_offset + 28)[0]
        assert local_extra == 20 and info.extra == b""
    index = index_of(data)
    for config in (LOCAL, REMOTE):
        reader = Site(data).reader(config)
        for member in index.files:
            assert read_all(reader, member) == payloads[member.path]


class _Unseekable(io.RawIOBase):
    def __init__(self) -> None:
        self.buf = io.BytesIO()

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        return self.buf.write(b)


def test_members_with_data_descriptors() -> None:
    # A zip written to a pipe has a data descriptor after each member's data.
    rng = random.Random(19)
    payloads = {f"d{i}.dcm": slice_bytes(rng, 5000) for i in range(20)}
    out = _Unseekable()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, payload in payloads.items():
            zf.writestr(zipfile.ZipInfo(name, (2024, 1, 2, 3, 4, 4)), payload)
    data = out.buf.getvalue()
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert all(i.flag_bits & 0x08 for i in zf.infolist())
    site = Site(data)
    reader = site.reader(LOCAL)
    for member in index_of(data).files:
        assert read_all(reader, member) == payloads[member.path]
    assert site.archive_bytes <= len(data)


# --------------------------------------------------------------------------- failures


def assert_errno(exc: pytest.ExceptionInfo[FwfsError], number: int) -> None:
    assert exc.value.errno == number
    assert isinstance(exc.value, FwfsError)


@pytest.mark.parametrize("config", [LOCAL, REMOTE], ids=["local", "remote"])
def test_a_corrupt_archive_is_eio(config: ArchiveConfig) -> None:
    data = MIXED
    # Overwrite the middle of the archive: central directory intact, member data not.
    member = files_of(MIXED_INDEX)["dir/deflated.dcm"]
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        info = zf.infolist()[member.index]
    start = info.header_offset + 30 + len(info.filename) + 100
    bad = data[:start] + bytes(5000) + data[start + 5000 :]
    reader = Site(bad).reader(config)
    with pytest.raises(RemoteError) as exc:
        reader.read(member, 0, 10)
    assert_errno(exc, errno.EIO)
    # Garbage where the archive should be.
    junk = random.Random(1).randbytes(len(data))
    reader = Site(junk).reader(config)
    with pytest.raises(RemoteError) as exc:
        reader.read(member, 0, 10)
    assert_errno(exc, errno.EIO)


@pytest.mark.parametrize("config", [LOCAL, REMOTE], ids=["local", "remote"])
def test_a_truncated_archive_is_eio(config: ArchiveConfig) -> None:
    member = files_of(MIXED_INDEX)["s/IM001.dcm"]
    reader = Site(MIXED[: len(MIXED) // 2]).reader(config)
    with pytest.raises(RemoteError) as exc:
        reader.read(member, 0, 10)
    assert_errno(exc, errno.EIO)


def test_a_server_that_sends_less_than_the_archive_is_eio() -> None:
    # The listing says the archive is longer than what the site sends.
    site = Site(MIXED, size=len(MIXED) + 1000)
    reader = site.reader(LOCAL)
    with pytest.raises(RemoteError) as exc:
        reader.read(files_of(MIXED_INDEX)["dir/stored.dcm"], 0, 10)
    assert_errno(exc, errno.EIO)


def test_a_short_member_from_the_server_is_eio() -> None:
    site = Site(MIXED)
    site.serve_member = lambda path: b"short"
    reader = site.reader(REMOTE)
    with pytest.raises(RemoteError) as exc:
        reader.read(files_of(MIXED_INDEX)["dir/stored.dcm"], 0, 10)
    assert_errno(exc, errno.EIO)


def encrypted(data: bytes, which: int) -> bytes:
    """``data`` with member ``which`` flagged as encrypted, as a password-protected zip is."""
    local = header_offsets(data)[which]
    data = patch(data, local + 6, "<H", struct.unpack_from("<H", data, local + 6)[0] | 1)
    central = central_entries(data)[which]
    return patch(data, central + 8, "<H", struct.unpack_from("<H", data, central + 8)[0] | 1)


@pytest.mark.parametrize("config", [LOCAL, REMOTE, MIXED_CONFIG], ids=["local", "remote", "mixed"])
@pytest.mark.parametrize("name", ["dir/stored.dcm", "big/stored.bin", "big/deflated.nii"])
def test_an_encrypted_member_is_eacces(config: ArchiveConfig, name: str) -> None:
    member = files_of(MIXED_INDEX)[name]
    data = encrypted(MIXED, member.index)
    with pytest.raises(RuntimeError, match="encrypted"):
        zipfile.ZipFile(io.BytesIO(data)).read(name)
    reader = Site(data).reader(config)
    with pytest.raises(PermissionDenied) as exc:
        reader.read(member, 0, 10)
    assert_errno(exc, errno.EACCES)
    # The others still read.
    other = files_of(MIXED_INDEX)["s/IM002.dcm"]
    assert reader.read(other, 0, 10) == MIXED_DATA[other.index][:10]


def crc_corrupted(data: bytes, which: int) -> bytes:
    local = header_offsets(data)[which]
    crc = struct.unpack_from("<L", data, local + 14)[0] ^ 0x5A5A
    data = patch(data, local + 14, "<L", crc)
    return patch(data, central_entries(data)[which] + 16, "<L", crc)


@pytest.mark.parametrize("config", [LOCAL, REMOTE], ids=["local", "remote"])
@pytest.mark.parametrize("name", ["dir/stored.dcm", "dir/deflated.dcm", "dir/lzma.dcm"])
def test_a_crc_mismatch_is_eio(config: ArchiveConfig, name: str) -> None:
    member = files_of(MIXED_INDEX)[name]
    reader = Site(crc_corrupted(MIXED, member.index)).reader(config)
    with pytest.raises(RemoteError, match="CRC") as exc:
        reader.read(member, 0, 10)
    assert_errno(exc, errno.EIO)


def test_flipped_data_in_a_stored_member_is_eio() -> None:
    member = files_of(MIXED_INDEX)["dir/stored.dcm"]
    with zipfile.ZipFile(io.BytesIO(MIXED)) as zf:
        info = zf.infolist()[member.index]
    pos = info.header_offset + 30 + len(info.filename) + 1000
    bad = patch(MIXED, pos, "<B", MIXED[pos] ^ 0xFF)
    for config in (LOCAL, REMOTE):
        with pytest.raises(RemoteError, match="CRC"):
            Site(bad).reader(config).read(member, 0, 10)


def test_a_crc_mismatch_of_a_large_member_fails_the_read_that_reaches_the_end() -> None:
    for name, block in (("big/stored.bin", 20_000), ("big/deflated.nii", 8 * KiB)):
        member = files_of(MIXED_INDEX)[name]
        reader = Site(crc_corrupted(MIXED, member.index)).reader(MIXED_CONFIG)
        with pytest.raises(RemoteError, match="CRC"):
            read_all(reader, member, block)
        # And no byte of it is served from then on.
        with pytest.raises(RemoteError, match="CRC"):
            reader.read(member, 0, 10)


def test_a_member_missing_from_the_archive_is_eio() -> None:
    doc = listing(MIXED)
    doc["members"].append({"path": "ghost.dcm", "size": 10, "timestamp": STAMP, "comment": ""})
    ghost = files_of(ZipIndex.from_listing(doc))["ghost.dcm"]
    for config in (LOCAL, REMOTE):
        with pytest.raises(RemoteError, match="missing") as exc:
            Site(MIXED).reader(config).read(ghost, 0, 10)
        assert_errno(exc, errno.EIO)


def test_a_listing_that_disagrees_with_the_archive_is_eio() -> None:
    doc = listing(MIXED)
    entry = doc["members"][files_of(MIXED_INDEX)["dir/stored.dcm"].index]
    entry["size"] += 1
    member = files_of(ZipIndex.from_listing(doc))["dir/stored.dcm"]
    with pytest.raises(RemoteError):
        Site(MIXED).reader(LOCAL).read(member, 0, 10)


def test_an_implausible_compressed_size_is_eio_without_reading_the_archive() -> None:
    member = files_of(MIXED_INDEX)["dir/deflated.dcm"]
    data = patch(MIXED, central_entries(MIXED)[member.index] + 20, "<L", 0x7FFF_FFFF)
    site = Site(data)
    with pytest.raises(RemoteError, match="implausible"):
        site.reader(LOCAL).read(member, 0, 10)
    assert site.archive_bytes < 4 * READ.block_size


@pytest.mark.parametrize("large_member", [8 * MiB, 1 * KiB], ids=["small", "large"])
def test_a_method_zipfile_cannot_decompress_comes_from_the_server(large_member: int) -> None:
    # Method 93 (zstd): the site may decompress it, Python's zipfile cannot.
    member = files_of(MIXED_INDEX)["dir/deflated.dcm"]
    local = header_offsets(MIXED)[member.index]
    data = patch(MIXED, local + 8, "<H", 93)
    data = patch(data, central_entries(data)[member.index] + 10, "<H", 93)
    site = Site(data)
    served = MIXED_DATA[member.index]
    site.serve_member = lambda path: served
    reader = site.reader(ArchiveConfig(scan_members=0, large_member=large_member))
    assert reader.read(member, 5, 1000) == served[5:1005]
    # Without a server that can (the fake site's zipfile cannot), an error, not garbage.
    with pytest.raises(RemoteError):
        Site(data).reader(LOCAL).read(member, 0, 10)


def test_a_member_the_server_will_not_serve_is_read_from_the_archive() -> None:
    site = Site(MIXED)

    def not_found(path: str) -> bytes:
        raise NotFound("no such member")

    site.serve_member = not_found
    reader = site.reader(REMOTE)
    member = files_of(MIXED_INDEX)["dir/deflated.dcm"]
    assert reader.read(member, 0, 100) == MIXED_DATA[member.index][:100]
    assert site.member_calls == ["dir/deflated.dcm"]
    assert reader.stats().members_local == 1


def test_errors_of_the_site_pass_unchanged() -> None:
    class Unavailable(RemoteError):
        pass

    def down(*args: object) -> bytes:
        raise Unavailable("site down")

    site = Site(MIXED)
    site.serve_member = down
    site.serve_range = down
    member = files_of(MIXED_INDEX)["dir/deflated.dcm"]
    for config in (LOCAL, REMOTE, ArchiveConfig(large_member=0)):
        with pytest.raises(Unavailable):
            site.reader(config).read(member, 0, 10)


def test_nothing_but_fwfs_errors_escape() -> None:
    rng = random.Random(23)
    for trial in range(60):
        bad = bytearray(MIXED)
        for _ in range(rng.randrange(1, 20)):
            bad[rng.randrange(len(bad))] = rng.randrange(256)
        site = Site(bytes(bad))
        reader = site.reader(rng.choice([LOCAL, REMOTE, MIXED_CONFIG]))
        for member in MIXED_INDEX.files:
            try:
                got = read_all(reader, member, 50_000)
            except FwfsError as err:
                assert err.errno in (errno.EIO, errno.EACCES), trial
            else:
                # Whatever was served is the member's true bytes.
                assert got == MIXED_DATA[member.index], (trial, member.path)


def test_negative_offsets_are_rejected() -> None:
    reader = Site(MIXED).reader()
    with pytest.raises(FwfsError) as exc:
        reader.read(MIXED_INDEX.files[1], -1, 10)
    assert exc.value.errno == errno.EINVAL


# --------------------------------------------------------------------------- threads


def test_concurrent_reads_of_many_members() -> None:
    data, index = scan_archive("shuffled", count=120)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        expected = {f.path: zf.read(f.path) for f in index.files}
    big_rng = random.Random(29)
    with ThreadPoolExecutor(8) as pool:
        site = Site(data, pool=pool, cache=BlockCache(4 * MiB))
        reader = site.reader(ArchiveConfig(scan_members=20, member_block=4 * KiB))
        errors: list[BaseException] = []

        def worker(seed: int) -> None:
            rng = random.Random(seed)
            try:
                for _ in range(150):
                    member = rng.choice(index.files)
                    offset = rng.randrange(member.size + 10)
                    length = rng.randrange(1, 20_000)
                    got = reader.read(member, offset, length)
                    assert got == expected[member.path][offset : offset + length]
            except BaseException as err:
                errors.append(err)

        threads = [threading.Thread(target=worker, args=(big_rng.random(),)) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    assert reader.stats().scanning


def test_concurrent_streams_of_one_large_member() -> None:
    data, member, payload = large_archive(zipfile.ZIP_DEFLATED, size=2 * MiB)
    with ThreadPoolExecutor(4) as pool:
        site = Site(data, pool=pool, cache=BlockCache(512 * KiB))
        reader = site.reader(ArchiveConfig(large_member=1 * MiB, member_block=16 * KiB))
        errors: list[BaseException] = []

        def worker(start: int) -> None:
            try:
                for off in range(start, member.size, 100_000):
                    assert reader.read(member, off, 50_000) == payload[off : off + 50_000]
            except BaseException as err:
                errors.append(err)

        threads = [threading.Thread(target=worker, args=(s * 37_000,)) for s in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []


# --------------------------------------------------------------------------- plumbing


def test_the_archive_file_object_reads_and_seeks_like_a_file() -> None:
    site = Site(MIXED)
    raw = ArchiveIO(site.open_archive(), 10, 1000)
    assert raw.seekable() and raw.readable()
    assert raw.read(5) == MIXED[10:15] and raw.tell() == 5
    assert raw.seek(-3, io.SEEK_END) == 997
    assert raw.read() == MIXED[1007:1010] and raw.read(10) == b""
    raw.seek(2)
    buf = bytearray(4)
    assert raw.readinto(buf) == 4 and bytes(buf) == MIXED[12:16]
    with pytest.raises(OSError):
        raw.seek(-2000, io.SEEK_END)
    assert io.BufferedReader(ArchiveIO(site.open_archive())).read() == MIXED


def test_close_releases_readers_and_reads_go_on() -> None:
    site = Site(MIXED)
    reader = site.reader(MIXED_CONFIG)
    for member in MIXED_INDEX.files[:6]:
        read_all(reader, member)
    reader.close()
    for member in MIXED_INDEX.files:
        assert read_all(reader, member) == MIXED_DATA[member.index]


def test_member_entries_are_what_the_reader_takes() -> None:
    entry: Member = MIXED_INDEX.lookup("dir/stored.dcm")
    assert isinstance(entry, MemberFile)
    reader = Site(MIXED).reader()
    assert reader.read(entry, 0, entry.size) == MIXED_DATA[entry.index]
