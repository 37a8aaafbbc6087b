"""Zip archives on real mounts (docs/SEMANTICS.md, "Zip archives"): `<archive>.d` member
directories, reachable but not listed by default, their bytes, attributes and costs,
dcm2niix straight from the mount, the listing switches, and bad archives.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import subprocess
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flywheel
import nibabel as nib
import numpy as np
import pytest
from mountkit import Mount, SiteTree, errno_of, quiet_mark, requests_since

pytestmark = pytest.mark.timeout(90)

SES = "flywheel/Anxiety Study/sub-01/ses-baseline"


def demo_archive(tree: SiteTree) -> tuple[str, zipfile.ZipFile]:
    rel = next(p for p in sorted(tree.files) if p.startswith(SES) and p.endswith("T1w.dicom.zip"))
    return rel, zipfile.ZipFile(io.BytesIO(tree.files[rel]))


def member_files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture
def zips(start_site: Callable[..., Any]) -> Any:
    """A private site with crafted archives in g/P: (site, sdk, project)."""
    site = start_site(demo=False)
    fw = site.client()
    fw.add_group(flywheel.Group("g", "Zips"))
    return site, fw, fw.get_group("g").add_project(label="P")


def test_members_are_reachable_not_listed_and_exact(mounted: Mount, demo_tree: SiteTree) -> None:
    rel, archive = demo_archive(demo_tree)
    path = mounted / rel
    assert path.name + ".d" not in os.listdir(path.parent)  # not listed by default...
    members = mounted / (rel + ".d")
    assert stat.S_IMODE(os.stat(members).st_mode) == 0o555  # ...but there
    expected = {i.filename: archive.read(i) for i in archive.infolist() if not i.is_dir()}
    assert member_files(members) == expected
    one = next(iter(expected))
    st = os.stat(members / one)
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o444
    assert st.st_size == archive.getinfo(one).file_size
    assert os.getxattr(members / one, "user.flywheel.member").decode() == one
    assert os.getxattr(members / one, "user.flywheel.archive") == b"T1w.dicom.zip"
    file_id = os.getxattr(path, "user.flywheel.file_id")
    assert os.getxattr(members / one, "user.flywheel.archive_file_id") == file_id
    # The archive itself is still the plain file.
    assert path.read_bytes() == demo_tree.files[rel]


def test_dcm2niix_converts_straight_from_the_mount(
    mounted: Mount, demo_tree: SiteTree, tmp_path: Path
) -> None:
    rel, archive = demo_archive(demo_tree)
    local = tmp_path / "extracted"
    archive.extractall(local)
    outputs: dict[str, nib.Nifti1Image] = {}
    for name, source in (("mounted", mounted / (rel + ".d")), ("local", local)):
        out = tmp_path / name
        out.mkdir()
        run = subprocess.run(
            ["dcm2niix", "-z", "n", "-f", "series", "-o", str(out), str(source)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        (nii,) = out.glob("*.nii")
        image = nib.load(nii)
        assert isinstance(image, nib.Nifti1Image)
        outputs[name] = image
    np.testing.assert_array_equal(
        np.asanyarray(outputs["mounted"].dataobj), np.asanyarray(outputs["local"].dataobj)
    )
    np.testing.assert_array_equal(outputs["mounted"].affine, outputs["local"].affine)


@pytest.mark.parametrize("profile", ["demo_site", "strict_site"], ids=["default", "strict"])
def test_member_costs_of_a_small_archive(
    profile: str,
    request: pytest.FixtureRequest,
    demo_tree: SiteTree,
    mount_site: Callable[..., Mount],
) -> None:
    site = request.getfixturevalue(profile)  # the same demo data, served either way
    rel, archive = demo_archive(demo_tree)
    size = len(demo_tree.files[rel])
    assert size <= 1 << 20  # a "small" archive: the ranged reader fetches it whole
    mount = mount_site(site)
    os.stat(mount / rel)
    mark = quiet_mark(site)
    names = os.listdir(mount / (rel + ".d"))
    assert names
    members = [i.filename for i in archive.infolist() if not i.is_dir()]
    for member in members:
        os.stat(mount / (rel + ".d") / member)
    # The listing and every stat: one ranged read, of the whole archive, never the site's
    # ?info=true (which reads the archive from object storage first). Strict answers it
    # with a redirect, and storage sends the bytes.
    log = requests_since(site, mark)
    core = [e for e in log if e.get("listener", "core") == "core"]
    assert len(core) == 1 and core[0]["range"] is not None, log
    assert "info=true" not in core[0]["query"]
    assert len(log) == (2 if profile == "strict_site" else 1), log
    assert sum(e["bytes"] for e in log) == size
    mark = quiet_mark(site)
    for member in members:
        assert (mount / (rel + ".d") / member).read_bytes() == archive.read(member)
    assert requests_since(site, mark) == []


def big_zip(seed: int = 3, count: int = 6) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(count):
            z.writestr(f"scan/slice_{i}.bin", rng.integers(0, 255, 400_000, np.uint8).tobytes())
    assert len(buf.getvalue()) > 1 << 20
    return buf.getvalue()


def test_a_member_of_a_large_archive_is_one_ranged_read(
    zips: Any, mount_site: Callable[..., Mount]
) -> None:
    site, _fw, project = zips
    data = big_zip()
    project.upload_file(flywheel.FileSpec("big.zip", data))
    archive = zipfile.ZipFile(io.BytesIO(data))
    mount = mount_site(site)
    os.stat(mount / "g/P/big.zip")
    mark = quiet_mark(site)
    members = mount / "g/P/big.zip.d/scan"
    assert sorted(os.listdir(members)) == [f"slice_{i}.bin" for i in range(6)]
    log = requests_since(site, mark)
    # The index: one read of the archive's tail, not the whole archive.
    assert len(log) == 1 and log[0]["range"] is not None, log
    assert log[0]["bytes"] <= 256 * 1024
    mark = quiet_mark(site)
    assert (members / "slice_3.bin").read_bytes() == archive.read("scan/slice_3.bin")
    log = requests_since(site, mark)
    assert len(log) == 1 and log[0]["range"] is not None and "member=" not in log[0]["query"]
    compressed = archive.getinfo("scan/slice_3.bin").compress_size
    assert log[0]["bytes"] <= compressed + 2 * 128 * 1024, log  # its region, in whole blocks
    mark = quiet_mark(site)
    assert (members / "slice_3.bin").read_bytes() == archive.read("scan/slice_3.bin")
    assert requests_since(site, mark) == []


def test_a_scan_of_a_large_archive_costs_about_its_size(
    zips: Any, mount_site: Callable[..., Mount]
) -> None:
    site, _fw, project = zips
    rng = np.random.default_rng(5)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(64):
            z.writestr(f"series/{i:04d}.dcm", rng.integers(0, 255, 40_000, np.uint8).tobytes())
    data = buf.getvalue()
    project.upload_file(flywheel.FileSpec("series.zip", data))
    archive = zipfile.ZipFile(buf)
    mount = mount_site(site)
    os.stat(mount / "g/P/series.zip")
    root = mount / "g/P/series.zip.d"
    mark = quiet_mark(site)
    os.listdir(root / "series")
    assert member_files(root) == {i.filename: archive.read(i) for i in archive.infolist()}
    log = requests_since(site, mark)
    total = sum(e["bytes"] for e in log)
    assert len(data) <= total <= 1.15 * len(data), (total, len(data), len(log))
    assert len(log) < 64 // 2


@pytest.mark.parametrize("strict", [False, True], ids=["default", "strict"])
def test_archives_do_not_wait_for_a_slow_zip_listing(
    start_site: Callable[..., Any], mount_site: Callable[..., Mount], strict: bool
) -> None:
    # The real server answers ?info=true and ?member= only after reading the archive from
    # object storage (fidelity audit, D7): the mount must not wait for either. Strict adds
    # the redirect to storage: each ranged read is then two round trips.
    site = start_site(demo=False, info_delay=5, strict=strict)
    fw = site.client()
    fw.add_group(flywheel.Group("g", "Zips"))
    project = fw.get_group("g").add_project(label="P")
    data = big_zip(seed=7)
    project.upload_file(flywheel.FileSpec("big.zip", data))
    archive = zipfile.ZipFile(io.BytesIO(data))
    mount = mount_site(site)
    os.stat(mount / "g/P/big.zip")
    started = time.monotonic()
    members = mount / "g/P/big.zip.d/scan"
    assert sorted(os.listdir(members)) == [f"slice_{i}.bin" for i in range(6)]
    assert (members / "slice_4.bin").read_bytes() == archive.read("scan/slice_4.bin")
    assert time.monotonic() - started < 2.5
    assert not any("info=true" in e["query"] or "member=" in e["query"] for e in site.access_log())


def test_listing_switches(
    demo_site: Any, demo_tree: SiteTree, mount_site: Callable[..., Mount]
) -> None:
    rel, _archive = demo_archive(demo_tree)
    listed = mount_site(demo_site, args=["--list-archives"])
    parent = Path(rel).parent
    assert Path(rel).name + ".d" in os.listdir(listed / str(parent))
    off = mount_site(demo_site, args=["--no-archives"])
    assert errno_of(lambda: os.stat(off / (rel + ".d"))) == errno.ENOENT
    assert (off / rel).read_bytes() == demo_tree.files[rel]


def test_member_names_never_lead_out_of_the_member_directory(
    zips: Any, mount_site: Callable[..., Mount]
) -> None:
    site, _fw, project = zips
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("../evil.txt", b"dot dot\n")
        z.writestr("/abs.txt", b"absolute\n")
        z.writestr("a//./b.txt", b"empty and dot components\n")
    project.upload_file(flywheel.FileSpec("names.zip", buf.getvalue()))
    mount = mount_site(site)
    assert member_files(mount / "g/P/names.zip.d") == {
        "．．/evil.txt": b"dot dot\n",
        "abs.txt": b"absolute\n",
        "a/b.txt": b"empty and dot components\n",
    }
    assert not (mount / "g/P/evil.txt").exists()


def duplicate_members_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z, pytest.warns(UserWarning, match="Duplicate name"):
        z.writestr("scan/dup.nii.gz", b"first\n")
        z.writestr("scan/dup.nii.gz", b"second\n")
    return buf.getvalue()


def test_members_with_the_same_path_all_appear(zips: Any, mount_site: Callable[..., Mount]) -> None:
    site, _fw, project = zips
    project.upload_file(flywheel.FileSpec("dups.zip", duplicate_members_zip()))
    mount = mount_site(site)
    files = member_files(mount / "g/P/dups.zip.d/scan")
    assert sorted(files.values()) == [b"first\n", b"second\n"]
    again = member_files(mount_site(site) / "g/P/dups.zip.d/scan")
    assert again == files  # stable names


def test_duplicate_members_keep_their_name_and_extension(
    zips: Any, mount_site: Callable[..., Mount]
) -> None:
    site, _fw, project = zips
    project.upload_file(flywheel.FileSpec("dups.zip", duplicate_members_zip()))
    mount = mount_site(site)
    names = sorted(os.listdir(mount / "g/P/dups.zip.d/scan"))
    assert len(names) == 2
    assert all(n.startswith("dup (") and n.endswith(").nii.gz") for n in names), names


def test_bad_archives_fail_clearly(zips: Any, mount_site: Callable[..., Mount]) -> None:
    site, _fw, project = zips
    project.upload_file(flywheel.FileSpec("fake.zip", b"this is not a zip archive\n" * 10))
    good = io.BytesIO()
    with zipfile.ZipFile(good, "w", zipfile.ZIP_STORED) as z:
        z.writestr("data.txt", b"A" * 5000)
    corrupt = bytearray(good.getvalue())
    corrupt[corrupt.index(b"A" * 100) + 50] = ord("B")  # the CRC no longer matches
    project.upload_file(flywheel.FileSpec("corrupt.zip", bytes(corrupt)))
    mount = mount_site(site)
    folder = mount / "g/P"
    # Not a zip: no member directory, and the file itself reads as it is.
    assert errno_of(lambda: os.stat(folder / "fake.zip.d")) == errno.ENOENT
    assert (folder / "fake.zip").read_bytes() == b"this is not a zip archive\n" * 10
    # A CRC mismatch: EIO, never the wrong bytes; the mount stays up.
    assert errno_of(lambda: (folder / "corrupt.zip.d/data.txt").read_bytes()) == errno.EIO
    assert (folder / "corrupt.zip").read_bytes() == bytes(corrupt)
    assert mount.alive
    log = mount.log()
    assert "fake.zip" in log or "not a zip" in log
    assert "corrupt.zip" in log or "CRC" in log


def test_a_site_that_ignores_range_lists_and_serves_members_itself(
    start_site: Callable[..., Any], mount_site: Callable[..., Mount]
) -> None:
    # Storage that answers every ranged read with the whole file (D8): reading the tail
    # would move the whole archive each time, so the site's own listing and members serve.
    site = start_site(demo=False, redirect_downloads=True, redirect_ignores_range=True)
    fw = site.client()
    fw.add_group(flywheel.Group("g", "Zips"))
    project = fw.get_group("g").add_project(label="P")
    data = big_zip(seed=9)
    project.upload_file(flywheel.FileSpec("big.zip", data))
    archive = zipfile.ZipFile(io.BytesIO(data))
    mount = mount_site(site)
    os.stat(mount / "g/P/big.zip")
    mark = quiet_mark(site)
    members = mount / "g/P/big.zip.d/scan"
    assert sorted(os.listdir(members)) == [f"slice_{i}.bin" for i in range(6)]
    for name in ("slice_1.bin", "slice_4.bin"):
        assert (members / name).read_bytes() == archive.read(f"scan/{name}")
    log = requests_since(site, mark)
    queries = [e["query"] for e in log if e.get("listener") == "core"]
    assert sum("info=true" in q for q in queries) == 1, queries
    assert sum("member=" in q for q in queries) == 2, queries
    moved = sum(e["bytes"] for e in log)
    # The first ranged read, refused, may have sent part of the archive before the client
    # hung up; members are then never read from the archive again.
    assert moved <= len(data) + 2 * 400_000 + 4096, (moved, len(data))
    assert sum(e["listener"] == "storage" for e in log) == 1, log
