"""The central directory read from the archive's own bytes (fwfs/archives/central.py): what
it costs in ranged reads, and that it lists what the site's ``?info=true`` would.

The "site" is ``test_archives.Site``: a recording ``fetch(start, end)`` under a real
``RangedReader`` (blocks of 16 KiB here), nothing mocked.
"""

from __future__ import annotations

import io
import zipfile
from datetime import datetime

import pytest
from test_archives import LOCAL, Site, build_zip

from fwfs.archives import ArchiveReader, MemberFile, NotAZip, ZipIndex, read_directory
from fwfs.errors import RemoteError


def site_listing(data: bytes) -> dict[str, object]:
    """What the site's ``?info=true`` answers (the sandbox's code, CORE19's shape)."""
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


def files_of(index: ZipIndex) -> list[tuple[str, str, int, float, str, bool]]:
    return [(f.relpath, f.path, f.size, f.mtime, f.comment, f.fetchable) for f in index.files]


def padded_zip(count: int = 40, pad: int = 300_000, comment: bytes = b"") -> bytes:
    return build_zip(
        [(f"d/m{i:03d}.bin", bytes([i % 251]) * 10, zipfile.ZIP_STORED) for i in range(count)]
        + [("pad.bin", bytes(range(256)) * (pad // 256), zipfile.ZIP_STORED)],
        comment=comment,
    )


def test_the_index_of_a_large_archive_is_one_read_of_its_tail() -> None:
    data = padded_zip()
    site = Site(data)
    with site.open_archive() as reader:
        central = read_directory(reader)
    assert len(site.range_calls) == 1
    start, end = site.range_calls[0]
    assert end == len(data) and end - start <= 66 * 1024 + 16 * 1024
    assert len(central.infos) == 41


def test_the_index_is_what_the_sites_listing_gives() -> None:
    members = [
        ("a/", b""),
        ("a/one.dcm", b"1" * 100),
        ("../escape.txt", b"x"),
        ("dup.txt", b"first"),
        ("dup.txt", b"second"),
        ("ünïcode/名前.txt", b"utf-8 name"),
    ]
    data = build_zip(members, comment="archive comment ü".encode())
    site = Site(data)
    with site.open_archive() as reader:
        central = read_directory(reader)
    ours = ZipIndex.from_directory(central.infos, central.comment)
    theirs = ZipIndex.from_listing(site_listing(data))
    assert files_of(ours) == files_of(theirs)
    assert ours.comment == theirs.comment == "archive comment ü"
    assert sorted(ours.root.children) == sorted(theirs.root.children)


def test_a_directory_larger_than_the_tail_costs_a_second_read() -> None:
    data = build_zip(
        [(f"series/{i:05d}-{'x' * 40}.dcm", b"", zipfile.ZIP_STORED) for i in range(3000)]
        + [("pad.bin", b"\0" * 400_000, zipfile.ZIP_STORED)]
    )
    site = Site(data)
    with site.open_archive() as reader:
        central = read_directory(reader)
    assert len(central.infos) == 3001
    assert central.start < len(data) - 66 * 1024  # the directory is longer than the tail
    assert len(site.range_calls) == 2
    assert site.archive_bytes < len(data) - 300_000  # never the members


def test_a_longest_comment_is_still_one_read() -> None:
    data = padded_zip(comment=b"c" * 65535)
    site = Site(data)
    with site.open_archive() as reader:
        central = read_directory(reader)
    assert central.comment == b"c" * 65535
    assert len(site.range_calls) == 1


def test_a_zip64_archive_is_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    # zipfile writes the zip64 end records only past 65,535 members: lower the bar to write
    # them for a small archive.
    monkeypatch.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", 2)
    data = padded_zip(count=5)
    monkeypatch.undo()
    assert b"PK\x06\x06" in data[-200:] and b"PK\x06\x07" in data[-200:]
    site = Site(data)
    with site.open_archive() as reader:
        central = read_directory(reader)
    assert [i.filename for i in central.infos][:2] == ["d/m000.bin", "d/m001.bin"]
    assert len(site.range_calls) == 1
    reader2 = site.reader(LOCAL)
    index = ZipIndex.from_directory(central.infos, central.comment)
    member = index.files[3]
    assert reader2.read(member, 0, 100) == bytes([3]) * 10


@pytest.mark.parametrize(
    "data",
    [b"", b"PK", b"not a zip at all\n" * 100, b"\0" * 200_000, b"PK\x05\x06" + b"\xff" * 18],
    ids=["empty", "two-bytes", "text", "zeros", "bad-end-record"],
)
def test_bytes_that_are_not_a_zip_say_so(data: bytes) -> None:
    site = Site(data)
    with site.open_archive() as reader, pytest.raises(NotAZip):
        read_directory(reader)


def test_a_failing_site_is_not_a_verdict_on_the_archive() -> None:
    site = Site(padded_zip())

    def broken(start: int, end: int) -> bytes:
        raise RemoteError("site down")

    site.serve_range = broken
    with site.open_archive() as reader, pytest.raises(RemoteError):
        read_directory(reader)


class RangeIgnored(RemoteError):
    """What the client raises when a site answers a ranged read with the whole file."""

    whole_file_only = True


def test_members_come_from_the_site_where_it_ignores_range() -> None:
    data = padded_zip()
    site = Site(data)
    index = ZipIndex.from_listing(site_listing(data))

    def ignores_range(start: int, end: int) -> bytes:
        if start > 0:
            raise RangeIgnored("the site sent the whole file")
        return data[start:end]

    site.serve_range = ignores_range
    reader = site.reader(LOCAL)
    member: MemberFile = index.files[7]
    assert reader.read(member, 0, 100) == bytes([7]) * 10
    assert site.member_calls == ["d/m007.bin"]
    assert reader.read(index.files[8], 0, 100) == bytes([8]) * 10
    # Once told, the archive is not tried again.
    assert site.member_calls == ["d/m007.bin", "d/m008.bin"]
    assert reader.stats().members_local == 0


def test_a_reader_given_the_directory_reads_only_the_member() -> None:
    data = padded_zip()
    site = Site(data)
    with site.open_archive() as reader:
        central = read_directory(reader)
    site.cache.clear()  # whatever the cache kept, the directory is not read again
    site.range_calls.clear()
    index = ZipIndex.from_directory(central.infos, central.comment)
    archive = ArchiveReader(
        ("archive-file-id", 3),
        site.size,
        site.fetch_member,
        site.open_archive,
        site.cache,
        LOCAL,
        central,
    )
    assert archive.read(index.files[5], 0, 10) == bytes([5]) * 10
    assert len(site.range_calls) == 1 and site.range_calls[0][0] <= central.infos[5].header_offset
    assert site.range_calls[0][1] < central.start
