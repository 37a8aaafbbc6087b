"""`fwfs prefetch` through a running mount (`--mount MP`, or a path inside it): the
daemon's disk cache is warmed, so after an unmount and a fresh mount on the same cache
directory every byte is read with no request for it; a mount without a disk cache is
refused, as nothing would be kept."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mountkit import DEMO_SES, Mount, big_path, fwfs, quiet_mark, requests_since, stop_mount

pytestmark = pytest.mark.timeout(240)


def data_gets(entries: list[dict[str, Any]], names: list[str]) -> list[dict[str, Any]]:
    """Requests for the bytes of the files `names`. Not of others: the daemon's walk-ahead
    (--walk-ahead) may read on into the next directories, as for any program reading a
    directory's files in order."""
    return [
        e for e in entries if e["method"] == "GET" and e["path"].rsplit("/files/", 1)[-1] in names
    ]


def digests(directory: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.iterdir())
        if p.is_file()
    }


def test_prefetch_through_a_mount_then_a_remount_reads_with_no_data_request(
    big_site: Any, mount_site: Callable[..., Mount], tmp_path: Path
) -> None:
    bare = mount_site(big_site, read_only=True)
    refused = fwfs("prefetch", str(bare / DEMO_SES))
    assert refused.returncode == 1
    assert "has no disk cache" in refused.stderr
    stop_mount(bare)

    cache_dir = tmp_path / "cache"
    args = ["--disk-cache", "512M", "--cache-dir", str(cache_dir)]
    first = mount_site(big_site, read_only=True, args=args)
    t1w = big_path(first).parent
    files = sorted(p.name for p in t1w.iterdir() if p.is_file())
    mark = quiet_mark(big_site)
    done = fwfs("prefetch", str(t1w), timeout=180)
    assert done.returncode == 0, done.stderr
    assert f"{len(files)} of {len(files)} files read" in done.stdout
    assert data_gets(requests_since(big_site, mark), files)  # the bytes came from the site
    # Resumable: the same selection again (a site path under --mount) asks for no bytes.
    mark = quiet_mark(big_site)
    again = fwfs("prefetch", "--mount", str(first.path), str(t1w.relative_to(first.path)))
    assert again.returncode == 0, again.stderr
    assert data_gets(requests_since(big_site, mark), files) == []
    stop_mount(first)  # the daemon writes what it has queued, then exits

    second = mount_site(big_site, read_only=True, args=args)
    t1w = big_path(second).parent
    sorted(os.listdir(t1w))
    mark = quiet_mark(big_site)
    read = digests(t1w)
    assert sorted(read) == files
    assert data_gets(requests_since(big_site, mark), files) == []
