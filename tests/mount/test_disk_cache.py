"""`fwfs mount --disk-cache`: real mounts, what a user would check.

A file read through one mount is read again after an unmount and a fresh mount (a new
daemon: its memory cache is gone, and so are the kernel's pages of the old mount) without a
single request for its bytes, byte for byte the same. A daemon killed with SIGKILL while it
writes blocks, and blocks damaged on disk afterwards, never cost a wrong byte: the next
mount reads every byte of the file right, fetching what it cannot trust, and logs it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mountkit import Mount, big_path, quiet_mark, requests_since, stop_mount, wait_for

from fwfs.sandbox import demodata

pytestmark = pytest.mark.timeout(240)

MiB = 1 << 20
BIG = 64 * MiB


@pytest.fixture(scope="module")
def big_sha(tmp_path_factory: pytest.TempPathFactory) -> str:
    """sha256 of the sandbox's `big.bin` (64 MiB), made as the sandbox makes it."""
    path = tmp_path_factory.mktemp("big") / "big.bin"
    demodata.random_bytes_file(path, BIG, seed=64)
    digest = sha(path)
    path.unlink()
    return digest


def sha(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


def data_gets(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in entries if e["method"] == "GET" and "/files/" in e["path"]]


def blocks_in(cache_dir: Path) -> list[Path]:
    return sorted(p for p in (cache_dir / "blocks").rglob("*") if p.is_file())


def test_a_reread_after_a_remount_makes_no_data_request(
    big_site: Any, mount_site: Callable[..., Mount], tmp_path: Path, big_sha: str
) -> None:
    cache_dir = tmp_path / "cache"
    args = ["--disk-cache", "1G", "--cache-dir", str(cache_dir)]
    first = mount_site(big_site, read_only=True, args=args)
    small = first / "flywheel/Anxiety Study/protocol.pdf"
    small_bytes = small.read_bytes()
    zip_dir = big_path(first).parent / "T1w.dicom.zip.d"
    members = sorted(os.listdir(zip_dir))
    mark = quiet_mark(big_site)
    assert sha(big_path(first)) == big_sha
    assert data_gets(requests_since(big_site, mark))  # the cold read went to the site
    stop_mount(first)  # the daemon writes what it has queued, then exits

    assert os.stat(cache_dir).st_mode & 0o777 == 0o700
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in blocks_in(cache_dir))
    second = mount_site(big_site, read_only=True, args=args)
    path = big_path(second)
    mark = quiet_mark(big_site)
    assert sha(path) == big_sha
    assert (second / "flywheel/Anxiety Study/protocol.pdf").read_bytes() == small_bytes
    # The zip's index is built again from its central directory's blocks, on disk.
    assert sorted(os.listdir(big_path(second).parent / "T1w.dicom.zip.d")) == members
    with path.open("rb") as f:  # out of order, across block edges
        for offset in (BIG - 1000, 5, 3 * MiB - 7):
            f.seek(offset)
            assert len(f.read(200_000)) == min(200_000, BIG - offset)
    assert data_gets(requests_since(big_site, mark)) == []


def test_a_daemon_killed_while_keeping_blocks_costs_no_wrong_byte(
    start_site: Callable[..., Any],
    mount_site: Callable[..., Mount],
    tmp_path: Path,
    big_sha: str,
) -> None:
    # A link slow enough (about 2 s for the file) that the kill lands mid-read.
    site = start_site(big_file_mb=64, bandwidth_mbit=250)
    cache_dir = tmp_path / "cache"
    args = ["--disk-cache", "1G", "--cache-dir", str(cache_dir)]
    first = mount_site(site, read_only=True, args=args)
    reader = subprocess.Popen(
        ["cat", str(big_path(first))], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for(lambda: len(blocks_in(cache_dir)) >= 40, timeout=60)
    first.kill()
    assert reader.wait(timeout=30) != 0, "the read ended before the kill"
    stop_mount(first)
    kept = [p for p in blocks_in(cache_dir) if not p.name.startswith(".tmp.")]
    assert len(kept) >= 40
    # What a crash or a bad disk can leave beyond that: a torn block, a flipped bit.
    with kept[0].open("r+b") as f:
        f.truncate(kept[0].stat().st_size // 2)
    raw = bytearray(kept[1].read_bytes())
    raw[5000] ^= 0x40
    kept[1].write_bytes(raw)

    second = mount_site(site, read_only=True, args=args)
    assert sha(big_path(second)) == big_sha
    stop_mount(second)
    assert second.log().count("failed its check") == 2
