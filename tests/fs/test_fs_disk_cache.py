"""The disk cache (`--disk-cache`) in the filesystem model, against the demo sandbox.

What a user would check, in the site's access log: a file read by one mount is read by the
next mount on the same cache directory (a remount, or another mount of the site) without
a single request for its bytes, and the bytes are the site's; a file replaced on the site
is read as its new version, never as the cached old one; the directory holds only
private files."""

from __future__ import annotations

import os
import random
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from writekit import Scratch, read_all

from fwfs.diskcache import usage
from fwfs.fs import FlywheelFS

pytestmark = pytest.mark.timeout(120)

KiB = 1 << 10
MiB = 1 << 20


def file_gets(site: Any, mark: int, acq_id: str) -> list[dict[str, Any]]:
    return [
        e
        for e in site.requests_since(mark)
        if e["method"] == "GET" and e["path"].startswith(f"/api/acquisitions/{acq_id}/files/")
    ]


def read(fs: FlywheelFS, path: str) -> bytes:
    fh = fs.open(path, os.O_RDONLY).fh
    try:
        return read_all(fs, fh, chunk=MiB)
    finally:
        fs.release(fh)


def test_a_second_mount_on_the_cache_dir_reads_with_no_data_request(
    demo_site: Any,
    scratch: Scratch,
    new_model: Callable[..., FlywheelFS],
    tmp_path: Path,
) -> None:
    cache_dir = tmp_path / "cache"
    data = {
        "big.bin": random.randbytes(5 * MiB + 123),
        "small.txt": random.randbytes(200 * KiB),
        "tiny.txt": b"x",
    }
    for name, body in data.items():
        scratch.put(name, body)

    def mount() -> FlywheelFS:
        return new_model(
            demo_site.api_key, metadata_ttl=300, disk_cache=64 * MiB, cache_dir=cache_dir
        )

    first = mount()
    mark = demo_site.quiet_mark()
    for name, body in data.items():
        assert read(first, f"{scratch.acq_path}/{name}") == body
    assert len(file_gets(demo_site, mark, scratch.acq.id)) >= len(data)
    first.close()  # an unmount: what is queued for the disk is written

    second = mount()
    second.readdir(scratch.acq_path)
    mark = demo_site.quiet_mark()
    for name, body in data.items():
        assert read(second, f"{scratch.acq_path}/{name}") == body
    # Out of order too, across block edges.
    fh = second.open(f"{scratch.acq_path}/big.bin", os.O_RDONLY).fh
    for offset in [5 * MiB, 77, 128 * KiB - 1, 3 * MiB + 5]:
        assert second.read(fh, offset, 300 * KiB) == data["big.bin"][offset : offset + 300 * KiB]
    second.release(fh)
    assert file_gets(demo_site, mark, scratch.acq.id) == []
    assert second.disk is not None and second.disk.stats().hits > 0

    assert stat.S_IMODE(cache_dir.stat().st_mode) == 0o700
    files = [p for p in cache_dir.rglob("*") if p.is_file() and p.name != "CACHEDIR.TAG"]
    assert files and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files)
    assert usage(cache_dir).files == len(data)


def test_a_replaced_file_is_read_as_its_new_version(
    demo_site: Any,
    scratch: Scratch,
    new_model: Callable[..., FlywheelFS],
    tmp_path: Path,
) -> None:
    cache_dir = tmp_path / "cache"
    old, new = random.randbytes(700 * KiB), random.randbytes(700 * KiB)
    scratch.put("scan.bin", old)
    first = new_model(demo_site.api_key, disk_cache=64 * MiB, cache_dir=cache_dir)
    assert read(first, f"{scratch.acq_path}/scan.bin") == old
    first.close()
    scratch.put("scan.bin", new)  # a new version of the same file
    second = new_model(demo_site.api_key, disk_cache=64 * MiB, cache_dir=cache_dir)
    mark = demo_site.quiet_mark()
    assert read(second, f"{scratch.acq_path}/scan.bin") == new
    assert len(file_gets(demo_site, mark, scratch.acq.id)) >= 1
    assert usage(cache_dir).files == 2  # both versions kept: each is valid forever


def test_without_the_flag_nothing_lands_on_disk(
    demo_site: Any,
    scratch: Scratch,
    new_model: Callable[..., FlywheelFS],
    tmp_path: Path,
) -> None:
    cache_dir = tmp_path / "cache"
    scratch.put("plain.bin", random.randbytes(300 * KiB))
    fs = new_model(demo_site.api_key, cache_dir=cache_dir)
    assert fs.disk is None
    read(fs, f"{scratch.acq_path}/plain.bin")
    assert not cache_dir.exists()
