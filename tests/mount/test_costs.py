"""What each operation costs, counted in the site's access log (docs/SEMANTICS.md, "Cost of
each operation"). Every test mounts privately, so the caches start empty and the counts
are exact. Each test runs against both sandbox profiles: `[default]` on `big_site` (the demo
plus a 64 MiB `big.bin`) and `[strict]` on its `--strict` twin, which behaves like a real
core: resolve answers without the children's files, downloads redirected to a storage
listener, lazy metadata. Where the counts differ, the strict figure is asserted too.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flywheel
import pytest
from mountkit import DEMO_PROJECT, DEMO_SES, Mount, big_path, quiet_mark, requests_since, sh

pytestmark = pytest.mark.timeout(90)

PROJECT = DEMO_PROJECT
SES = DEMO_SES
ANALYSIS = f"{SES}/analyses/dcm2niix 2018-09-12"
BIG = 64 << 20


# The root: /groups and /projects side by side, each one page (asked with the `pagination`
# feature, whose `total` proves the page is the whole list): 2 requests, 1 round trip.
ROOT_CALLS = [("GET", "/api/groups"), ("GET", "/api/projects")]


def calls(entries: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["method"], e["path"]) for e in entries]


def file_gets(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The core's file downloads: the bytes themselves, or (strict) a 302 to storage."""
    return [e for e in entries if e["method"] == "GET" and "/files/" in e["path"]]


def transfers(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The requests that carried a file's bytes: the core's own download, or the storage
    GET a redirect led to."""
    return [
        e
        for e in entries
        if e["listener"] == "storage" or (e in file_gets(entries) and e["status"] != 302)
    ]


@dataclass(frozen=True)
class Costs:
    """Where the profiles differ (docs/SEMANTICS.md, "Cost of each operation")."""

    # Resolves to list an acquisition whose session is listed: the default sandbox's resolve
    # carries each acquisition's files; a real core's leaves them out.
    acquisition: int
    # Requests for the first read of a file: the download itself, or the core's 302 plus
    # the GET of the signed storage URL it names (which serves the file's later reads).
    read: int
    # `getfattr -d` of a file and of its directory: a real core's listings lack `info` and
    # `tags`, so each entry's own document is fetched once.
    getfattr: int


COSTS = {"default": Costs(acquisition=0, read=1, getfattr=0), "strict": Costs(1, 2, 2)}


@pytest.fixture
def costs(profile: str) -> Costs:
    return COSTS[profile]


@pytest.fixture
def site(profile_big_site: Any) -> Any:
    """`big_site` or its strict twin, per profile."""
    return profile_big_site


@pytest.fixture
def fresh(site: Any, mount_site: Callable[..., Mount]) -> Callable[..., Mount]:
    """A new private mount of `site` (empty caches)."""
    return lambda **options: mount_site(site, **options)


def test_listing_the_root_and_a_directory_costs_what_semantics_says(
    fresh: Callable[..., Mount], site: Any
) -> None:
    mount = fresh()
    mark = quiet_mark(site)
    assert "flywheel" in sh("ls", mount.path).split()
    assert sorted(calls(requests_since(site, mark))) == ROOT_CALLS
    os.stat(mount / PROJECT)  # lists the group on the way
    mark = quiet_mark(site)
    assert "participants.csv" in sh("ls", mount / PROJECT).splitlines()
    assert calls(requests_since(site, mark)) == [("POST", "/api/resolve")]


def test_ls_l_and_stat_of_every_entry_after_a_listing_cost_nothing(
    fresh: Callable[..., Mount], site: Any
) -> None:
    mount = fresh()
    names = os.listdir(mount / SES)
    mark = quiet_mark(site)
    sh("ls", "-l", mount / SES)
    for name in names:
        os.stat(mount / SES / name)
        os.listxattr(mount / SES / name)
    assert requests_since(site, mark) == []


def test_a_path_not_yet_listed_costs_one_listing_per_directory_on_the_way(
    fresh: Callable[..., Mount], site: Any, costs: Costs
) -> None:
    mount = fresh()
    mark = quiet_mark(site)
    os.stat(mount / SES / "DWI/DWI.nii.gz")
    # The root, then the group, project, subject and session; on the default sandbox the
    # session's listing carried its acquisitions' files, so the acquisition costs nothing
    # more, while a real core's acquisition is listed on its own.
    assert sorted(calls(requests_since(site, mark))) == sorted(
        ROOT_CALLS + [("POST", "/api/resolve")] * (4 + costs.acquisition)
    )
    mark = quiet_mark(site)
    os.stat(mount / SES / "fMRI rest/fMRI_rest.nii.gz")  # a sibling acquisition
    assert calls(requests_since(site, mark)) == [("POST", "/api/resolve")] * costs.acquisition


def test_ls_lR_of_the_project_costs_one_request_per_directory(
    fresh: Callable[..., Mount], site: Any, costs: Costs
) -> None:
    mount = fresh()
    os.stat(mount / PROJECT)
    mark = quiet_mark(site)
    sh("ls", "-lR", mount / PROJECT)
    log = requests_since(site, mark)
    dirs = [Path(d) for d, _, _ in os.walk(mount / PROJECT)]
    io_dirs = [
        d for d in dirs if d.name in ("input", "output") and d.parent.parent.name == "analyses"
    ]
    container_dirs = [
        d for d in dirs if d.name != "analyses" and d.parent.name != "analyses" and d not in io_dirs
    ]
    # Acquisitions (no analyses in the demo) come with their session's listing, unless the
    # site's resolve leaves their files out (a real core).
    acquisitions = [d for d in container_dirs if len(d.relative_to(mount / PROJECT).parts) == 3]
    assert acquisitions
    listed = len(container_dirs) - len(acquisitions) * (1 - costs.acquisition)
    assert len(log) <= len(dirs)
    counts = Counter(calls(log))
    assert counts[("POST", "/api/resolve")] == listed
    analysis_gets = sum(n for (m, p), n in counts.items() if p.startswith("/api/analyses/"))
    assert analysis_gets == len(io_dirs)
    assert len(log) == listed + len(io_dirs)  # and nothing else: no file bytes
    # find and du after it, within the TTL: nothing more.
    mark = quiet_mark(site)
    sh("find", mount / PROJECT)
    sh("du", "-s", mount / PROJECT)
    assert requests_since(site, mark) == []


def test_analyses_directories_cost_nothing_but_input_and_output(
    fresh: Callable[..., Mount], site: Any
) -> None:
    mount = fresh()
    os.listdir(mount / SES)
    mark = quiet_mark(site)
    assert os.listdir(mount / SES / "analyses") == ["dcm2niix 2018-09-12"]
    assert sorted(os.listdir(mount / ANALYSIS)) == ["input", "output"]
    assert requests_since(site, mark) == []
    analysis_id = os.getxattr(mount / ANALYSIS, "user.flywheel.id").decode()
    for sub in ("input", "output"):
        mark = quiet_mark(site)
        assert os.listdir(mount / ANALYSIS / sub)
        assert calls(requests_since(site, mark)) == [("GET", f"/api/analyses/{analysis_id}")]


def test_reading_a_header_of_a_large_file_is_one_small_ranged_request(
    fresh: Callable[..., Mount], site: Any, costs: Costs
) -> None:
    mount = fresh()
    path = big_path(mount)
    assert path.stat().st_size == BIG
    mark = quiet_mark(site)
    header = subprocess.run(["head", "-c", "352", str(path)], capture_output=True, check=True)
    assert len(header.stdout) == 352
    log = requests_since(site, mark)
    assert len(log) == costs.read, log
    (ask,) = file_gets(log)
    assert ask["method"] == "GET" and ask["path"].endswith("/files/big.bin")
    assert "view=true" in ask["query"]
    (get,) = transfers(log)
    # On a real core the 302 goes to storage, which gets the Range (and never the key).
    assert get["status"] == 206 and get["range"].startswith("bytes=0-")
    assert get["bytes"] < BIG // 100


def test_a_second_read_even_through_a_new_open_makes_no_request(
    fresh: Callable[..., Mount], site: Any
) -> None:
    mount = fresh()
    big = big_path(mount)
    nii = big.parent / "T1w.nii.gz"
    header = sh("head", "-c", "352", big)
    whole = nii.read_bytes()
    mark = quiet_mark(site)
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
    assert requests_since(site, mark) == []


def test_without_a_block_cache_the_kernel_page_cache_still_serves_rereads(
    fresh: Callable[..., Mount], site: Any
) -> None:
    mount = fresh(cache_size=0)
    path = mount / PROJECT / "protocol.pdf"
    data = path.read_bytes()
    mark = quiet_mark(site)
    assert path.read_bytes() == data  # kept page cache: same version as last time
    assert requests_since(site, mark) == []
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        mark = quiet_mark(site)
        assert os.pread(fd, len(data) + 1, 0) == data
    finally:
        os.close(fd)
    # Nothing cached anywhere now: the bytes come from the site again.
    assert len(transfers(requests_since(site, mark))) >= 1


def test_getfattr_statfs_open_and_close_make_no_request(
    fresh: Callable[..., Mount], site: Any, costs: Costs
) -> None:
    mount = fresh()
    path = big_path(mount)
    acquisition = os.getxattr(path.parent, "user.flywheel.id").decode()
    mark = quiet_mark(site)
    sh("getfattr", "-d", path)
    sh("getfattr", "-d", path.parent)
    # A real core's listings lack info and tags: each entry's own document, once.
    lazy = [
        ("GET", f"/api/acquisitions/{acquisition}/files/big.bin/info"),
        ("GET", f"/api/acquisitions/{acquisition}"),
    ]
    assert calls(requests_since(site, mark)) == lazy[: costs.getfattr]
    mark = quiet_mark(site)
    sh("getfattr", "-d", path)
    sh("getfattr", "-d", path.parent)
    assert os.statvfs(mount.path).f_namemax == 255
    sh("df", mount.path)
    os.close(os.open(path, os.O_RDONLY))
    assert requests_since(site, mark) == []


def test_a_sequential_read_uses_few_large_ranged_requests(
    fresh: Callable[..., Mount], site: Any, costs: Costs
) -> None:
    mount = fresh()
    path = big_path(mount)
    mark = quiet_mark(site)
    sh("md5sum", path)
    log = requests_since(site, mark)
    assert all("view=true" in e["query"] for e in file_gets(log))
    gets = transfers(log)
    # A real core answers the first with a 302 to a signed URL, and that URL serves every
    # later range straight from storage: one request per range, plus one.
    redirects = [e for e in file_gets(log) if e["status"] == 302]
    assert len(redirects) == costs.read - 1
    assert len(log) == len(gets) + len(redirects)
    spans = []
    for e in gets:
        assert e["status"] == 206, e
        first, last = (int(x) for x in e["range"].removeprefix("bytes=").split("-"))
        spans.append((first, last + 1))
        assert e["bytes"] == last + 1 - first
        assert e["bytes"] <= 4 << 20  # requests of at most 4 MiB
    # Every byte once: no block is fetched twice, and nothing is missing.
    spans.sort()
    assert spans[0][0] == 0 and spans[-1][1] == BIG
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    # Readahead windows double up to 64 MiB: a handful of requests, not one per block.
    assert len(gets) <= 24, [e["range"] for e in gets]


def test_id_aliases_are_free_when_listed_and_misses_are_remembered(
    fresh: Callable[..., Mount], site: Any
) -> None:
    fw = site.client()
    gid = f"costs-{uuid.uuid4().hex[:8]}"
    fw.add_group(flywheel.Group(gid, "Costs"))
    listed = fw.get_group(gid).add_project(label="Listed")
    mount = fresh(negative_ttl=2)
    assert os.listdir(mount / gid) == ["Listed"]
    mark = quiet_mark(site)
    assert os.getxattr(mount / gid / f"<id:{listed.id}>", "user.flywheel.label") == b"Listed"
    assert requests_since(site, mark) == []  # in the listing: free
    missing = mount / gid / "<id:0123456789abcdef01234567>"
    mark = quiet_mark(site)
    for _ in range(3):
        assert not missing.exists()
    assert calls(requests_since(site, mark)) == [("POST", "/api/lookup")]  # remembered


def test_an_alias_not_yet_listed_costs_one_lookup(fresh: Callable[..., Mount], site: Any) -> None:
    fw = site.client()
    gid = f"costs-{uuid.uuid4().hex[:8]}"
    fw.add_group(flywheel.Group(gid, "Costs"))
    mount = fresh()
    assert os.listdir(mount / gid) == []
    late = fw.get_group(gid).add_project(label="Late")  # not in the fresh listing
    for i in range(4):
        late.add_subject(label=f"sub-{i}")
    mark = quiet_mark(site)
    listing = sh("ls", "-l", mount / gid / f"<id:{late.id}>")
    assert len(listing.splitlines()) == 5  # total, and four subjects
    # One lookup for the alias, one listing of the project, as for any directory.
    assert sorted(calls(requests_since(site, mark))) == [
        ("POST", "/api/lookup"),
        ("POST", "/api/resolve"),
    ]


def test_the_first_upload_asks_no_config_the_mount_asked_at_connect(
    fresh: Callable[..., Mount], site: Any, tmp_path: Path
) -> None:
    fw = site.client()
    gid = f"costs-{uuid.uuid4().hex[:8]}"
    fw.add_group(flywheel.Group(gid, "Costs"))
    project = fw.get_group(gid).add_project(label="Uploads")
    mount = fresh()
    assert os.listdir(mount / gid / "Uploads") == []
    source = tmp_path / "notes.txt"
    source.write_bytes(b"first upload\n")
    mark = quiet_mark(site)
    sh("cp", source, mount / gid / "Uploads" / "notes.txt")
    log = calls(requests_since(site, mark))
    assert ("GET", "/api/config") not in log
    assert ("POST", f"/api/projects/{project.id}/files") in log
    assert (mount / gid / "Uploads" / "notes.txt").read_bytes() == b"first upload\n"
