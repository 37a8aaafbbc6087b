"""What each operation costs, counted in the site's access log (docs/SEMANTICS.md, "Cost of
each operation"). Every test mounts privately, so the caches start empty and the counts
are exact; the site is `big_site` (the demo plus a 64 MiB `big.bin`).
"""

from __future__ import annotations

import itertools
import os
import subprocess
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flywheel
import pytest
from mountkit import DEMO_PROJECT, DEMO_SES, Mount, big_path, quiet_mark, requests_since

pytestmark = pytest.mark.timeout(90)

PROJECT = DEMO_PROJECT
SES = DEMO_SES
ANALYSIS = f"{SES}/analyses/dcm2niix 2018-09-12"
BIG = 64 << 20


def sh(*argv: str | Path) -> str:
    out = subprocess.run(
        [str(a) for a in argv],
        capture_output=True,
        encoding="utf-8",
        errors="surrogateescape",
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


# The root: /groups and /projects side by side, each paged until an empty page.
ROOT_CALLS = [("GET", "/api/groups")] * 2 + [("GET", "/api/projects")] * 2


def calls(entries: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["method"], e["path"]) for e in entries]


def file_gets(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in entries if e["method"] == "GET" and "/files/" in e["path"]]


@pytest.fixture
def fresh(big_site: Any, mount_site: Callable[..., Mount]) -> Callable[..., Mount]:
    """A new private mount of `big_site` (empty caches)."""
    return lambda **options: mount_site(big_site, **options)


def test_listing_the_root_and_a_directory_costs_what_semantics_says(
    fresh: Callable[..., Mount], big_site: Any
) -> None:
    mount = fresh()
    mark = quiet_mark(big_site)
    assert "flywheel" in sh("ls", mount.path).split()
    assert sorted(calls(requests_since(big_site, mark))) == ROOT_CALLS
    os.stat(mount / PROJECT)  # lists the group on the way
    mark = quiet_mark(big_site)
    assert "participants.csv" in sh("ls", mount / PROJECT).splitlines()
    assert calls(requests_since(big_site, mark)) == [("POST", "/api/resolve")]


def test_ls_l_and_stat_of_every_entry_after_a_listing_cost_nothing(
    fresh: Callable[..., Mount], big_site: Any
) -> None:
    mount = fresh()
    names = os.listdir(mount / SES)
    mark = quiet_mark(big_site)
    sh("ls", "-l", mount / SES)
    for name in names:
        os.stat(mount / SES / name)
        os.listxattr(mount / SES / name)
    assert requests_since(big_site, mark) == []


def test_a_path_not_yet_listed_costs_one_listing_per_directory_on_the_way(
    fresh: Callable[..., Mount], big_site: Any
) -> None:
    mount = fresh()
    mark = quiet_mark(big_site)
    os.stat(mount / SES / "DWI/DWI.nii.gz")
    # The root, then the group, project, subject and session; the session's listing
    # carried its acquisitions' files, so the acquisition costs nothing more.
    assert sorted(calls(requests_since(big_site, mark))) == sorted(
        ROOT_CALLS + [("POST", "/api/resolve")] * 4
    )
    mark = quiet_mark(big_site)
    os.stat(mount / SES / "fMRI rest/fMRI_rest.nii.gz")  # a sibling acquisition: free
    assert calls(requests_since(big_site, mark)) == []


def test_ls_lR_of_the_project_costs_one_request_per_directory(
    fresh: Callable[..., Mount], big_site: Any
) -> None:
    mount = fresh()
    os.stat(mount / PROJECT)
    mark = quiet_mark(big_site)
    sh("ls", "-lR", mount / PROJECT)
    log = requests_since(big_site, mark)
    dirs = [Path(d) for d, _, _ in os.walk(mount / PROJECT)]
    io_dirs = [
        d for d in dirs if d.name in ("input", "output") and d.parent.parent.name == "analyses"
    ]
    container_dirs = [
        d for d in dirs if d.name != "analyses" and d.parent.name != "analyses" and d not in io_dirs
    ]
    # Acquisitions (no analyses in the demo) come with their session's listing.
    acquisitions = [d for d in container_dirs if len(d.relative_to(mount / PROJECT).parts) == 3]
    assert acquisitions
    listed = len(container_dirs) - len(acquisitions)
    assert len(log) <= len(dirs)
    counts = Counter(calls(log))
    assert counts[("POST", "/api/resolve")] == listed
    analysis_gets = sum(n for (m, p), n in counts.items() if p.startswith("/api/analyses/"))
    assert analysis_gets == len(io_dirs)
    assert len(log) == listed + len(io_dirs)  # and nothing else: no file bytes
    # find and du after it, within the TTL: nothing more.
    mark = quiet_mark(big_site)
    sh("find", mount / PROJECT)
    sh("du", "-s", mount / PROJECT)
    assert requests_since(big_site, mark) == []


def test_analyses_directories_cost_nothing_but_input_and_output(
    fresh: Callable[..., Mount], big_site: Any
) -> None:
    mount = fresh()
    os.listdir(mount / SES)
    mark = quiet_mark(big_site)
    assert os.listdir(mount / SES / "analyses") == ["dcm2niix 2018-09-12"]
    assert sorted(os.listdir(mount / ANALYSIS)) == ["input", "output"]
    assert requests_since(big_site, mark) == []
    analysis_id = os.getxattr(mount / ANALYSIS, "user.flywheel.id").decode()
    for sub in ("input", "output"):
        mark = quiet_mark(big_site)
        assert os.listdir(mount / ANALYSIS / sub)
        assert calls(requests_since(big_site, mark)) == [("GET", f"/api/analyses/{analysis_id}")]


def test_reading_a_header_of_a_large_file_is_one_small_ranged_request(
    fresh: Callable[..., Mount], big_site: Any
) -> None:
    mount = fresh()
    path = big_path(mount)
    assert path.stat().st_size == BIG
    mark = quiet_mark(big_site)
    header = subprocess.run(["head", "-c", "352", str(path)], capture_output=True, check=True)
    assert len(header.stdout) == 352
    log = requests_since(big_site, mark)
    assert len(log) == 1, log
    (get,) = log
    assert get["method"] == "GET" and get["path"].endswith("/files/big.bin")
    assert get["status"] == 206 and get["range"].startswith("bytes=0-")
    assert "view=true" in get["query"]
    assert get["bytes"] < BIG // 100


def test_a_second_read_even_through_a_new_open_makes_no_request(
    fresh: Callable[..., Mount], big_site: Any
) -> None:
    mount = fresh()
    big = big_path(mount)
    nii = big.parent / "T1w.nii.gz"
    header = sh("head", "-c", "352", big)
    whole = nii.read_bytes()
    mark = quiet_mark(big_site)
    assert sh("head", "-c", "352", big) == header
    assert nii.read_bytes() == whole
    for path, size in ((big, 352), (nii, len(whole))):
        fd = os.open(path, os.O_RDONLY)
        try:
            # Out of the kernel's page cache too: fwfs's own block cache still has it.
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            assert len(os.pread(fd, size, 0)) == size
        finally:
            os.close(fd)
    assert nii.read_bytes() == whole
    assert requests_since(big_site, mark) == []


def test_without_a_block_cache_the_kernel_page_cache_still_serves_rereads(
    fresh: Callable[..., Mount], big_site: Any
) -> None:
    mount = fresh(cache_size=0)
    path = mount / PROJECT / "protocol.pdf"
    data = path.read_bytes()
    mark = quiet_mark(big_site)
    assert path.read_bytes() == data  # kept page cache: same version as last time
    assert requests_since(big_site, mark) == []
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        mark = quiet_mark(big_site)
        assert os.pread(fd, len(data) + 1, 0) == data
    finally:
        os.close(fd)
    # Nothing cached anywhere now: the bytes come from the site again.
    assert len(file_gets(requests_since(big_site, mark))) >= 1


def test_getfattr_statfs_open_and_close_make_no_request(
    fresh: Callable[..., Mount], big_site: Any
) -> None:
    mount = fresh()
    path = big_path(mount)
    mark = quiet_mark(big_site)
    sh("getfattr", "-d", path)
    sh("getfattr", "-d", path.parent)
    assert os.statvfs(mount.path).f_namemax == 255
    sh("df", mount.path)
    os.close(os.open(path, os.O_RDONLY))
    assert requests_since(big_site, mark) == []


def test_a_sequential_read_uses_few_large_ranged_requests(
    fresh: Callable[..., Mount], big_site: Any
) -> None:
    mount = fresh()
    path = big_path(mount)
    mark = quiet_mark(big_site)
    sh("md5sum", path)
    gets = file_gets(requests_since(big_site, mark))
    spans = []
    for e in gets:
        assert e["status"] == 206 and "view=true" in e["query"], e
        first, last = (int(x) for x in e["range"].removeprefix("bytes=").split("-"))
        spans.append((first, last + 1))
        assert e["bytes"] == last + 1 - first
        assert e["bytes"] <= 8 << 20  # requests of at most 8 MiB
    # Every byte once: no block is fetched twice, and nothing is missing.
    spans.sort()
    assert spans[0][0] == 0 and spans[-1][1] == BIG
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    # Readahead windows double up to 64 MiB: a handful of requests, not one per block.
    assert len(gets) <= 24, [e["range"] for e in gets]


def test_id_aliases_are_free_when_listed_and_misses_are_remembered(
    fresh: Callable[..., Mount], big_site: Any
) -> None:
    fw = big_site.client()
    gid = f"costs-{uuid.uuid4().hex[:8]}"
    fw.add_group(flywheel.Group(gid, "Costs"))
    listed = fw.get_group(gid).add_project(label="Listed")
    mount = fresh(negative_ttl=2)
    assert os.listdir(mount / gid) == ["Listed"]
    mark = quiet_mark(big_site)
    assert os.getxattr(mount / gid / f"<id:{listed.id}>", "user.flywheel.label") == b"Listed"
    assert requests_since(big_site, mark) == []  # in the listing: free
    missing = mount / gid / "<id:0123456789abcdef01234567>"
    mark = quiet_mark(big_site)
    for _ in range(3):
        assert not missing.exists()
    assert calls(requests_since(big_site, mark)) == [("POST", "/api/lookup")]  # remembered


def test_an_alias_not_yet_listed_costs_one_lookup(
    fresh: Callable[..., Mount], big_site: Any
) -> None:
    fw = big_site.client()
    gid = f"costs-{uuid.uuid4().hex[:8]}"
    fw.add_group(flywheel.Group(gid, "Costs"))
    mount = fresh()
    assert os.listdir(mount / gid) == []
    late = fw.get_group(gid).add_project(label="Late")  # not in the fresh listing
    for i in range(4):
        late.add_subject(label=f"sub-{i}")
    mark = quiet_mark(big_site)
    listing = sh("ls", "-l", mount / gid / f"<id:{late.id}>")
    assert len(listing.splitlines()) == 5  # total, and four subjects
    # One lookup for the alias, one listing of the project, as for any directory.
    assert sorted(calls(requests_since(big_site, mark))) == [
        ("POST", "/api/lookup"),
        ("POST", "/api/resolve"),
    ]
