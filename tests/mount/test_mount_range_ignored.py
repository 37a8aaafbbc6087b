"""A site whose downloads ignore Range (D8): storage behind the 302 sends the whole file.

The mount must read such a file as one stream: a `cp` moves about its size, not the
O(size²) of reading past the prefix for every block, and the bytes are exact.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mountkit import DEMO_SES, Mount, big_path, requests_since

pytestmark = pytest.mark.timeout(180)

SIZE_MB = 64


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cp_of_a_file_whose_storage_ignores_range_moves_it_about_once(
    start_site: Callable[..., Any], mount_site: Callable[..., Mount], tmp_path: Path
) -> None:
    site = start_site(redirect_ignores_range=True, big_file_mb=SIZE_MB)
    fw = site.client()
    acq = fw.lookup(f"{DEMO_SES}/T1w")
    source = fw.download_file_from_container_as_data(acq.id, "big.bin")
    assert len(source) == SIZE_MB << 20
    mount = mount_site(site, cache_size="256M")
    path = big_path(mount)
    mark = site.log_mark()
    copy = tmp_path / "big.bin"
    shutil.copyfile(path, copy)
    assert digest(copy) == hashlib.sha256(source).hexdigest()
    log = requests_since(site, mark, settle=0.5)
    storage = [e for e in log if e.get("listener") == "storage"]
    assert storage, log
    moved = sum(e["bytes"] for e in storage)
    assert moved <= 1.1 * len(source), (moved, len(storage))
    # Logged once for the file, not once per block.
    assert mount.log().count("ignores Range") == 1, mount.log()
    # A second, random read of the same version comes from the cache.
    mark = site.log_mark()
    fd = os.open(path, os.O_RDONLY)
    try:
        assert os.pread(fd, 4096, 40 << 20) == source[40 << 20 : (40 << 20) + 4096]
    finally:
        os.close(fd)
    assert not [e for e in requests_since(site, mark) if e.get("listener") == "storage"]
