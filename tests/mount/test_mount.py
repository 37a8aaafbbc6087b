"""Real mounts, used the way people use them: ls, stat, find, du, cat, cp -r, md5sum,
getfattr, nibabel, pydicom, zip archives, random reads, the read-only user, mount and
unmount failures, an unmount with a file open, the site dying mid-read, and a site that
ignores Range without view=true.

The official SDK is the witness of what the site holds (`profile_tree`, `profile_fw`). The
read tests run against both sandbox profiles, `[default]` and `[strict]` (a real core's
behaviour: tests/mount/conftest.py); the tests of the daemon's life (mount, unmount,
signals, keys, a dying site) run against the default one only.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import mmap
import os
import pwd
import random
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import flywheel
import nibabel as nib
import numpy as np
import pydicom
import pytest
import requests
from mountkit import (
    DEMO_PROJECT,
    DEMO_SES,
    Mount,
    SiteTree,
    big_path,
    errno_of,
    fusermount,
    fwfs,
    is_mounted,
    mounted_paths,
    requests_since,
    root_conftest,
    sdk_container,
    sha256,
    start_mount,
    stop_mount,
)

pytestmark = pytest.mark.timeout(120)

PROJECT = DEMO_PROJECT
SES = DEMO_SES


def run(argv: list[str], timeout: float = 60, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )


def children(tree: SiteTree, parent: str) -> set[str]:
    """Names directly under `parent` in the SDK's view of the tree."""
    out = set()
    for path in [*tree.dirs, *tree.files]:
        head, _, name = path.rpartition("/")
        if head == parent:
            out.add(name)
    return out


@pytest.fixture(scope="module")
def big_bytes(profile_big_site: Any) -> bytes:
    fw = profile_big_site.client()
    acq = sdk_container(fw, f"{SES}/T1w")
    data: bytes = fw.download_file_from_container_as_data(acq.id, "big.bin")
    assert len(data) == 64 << 20
    return data


# ---- everyday commands ----------------------------------------------------------------------


def test_ls_la(profile_mount: Mount, profile_tree: SiteTree) -> None:
    out = run(["ls", "-la", "--time-style=+%s", str(profile_mount / SES)])
    assert out.returncode == 0, out.stderr
    user = pwd.getpwuid(os.getuid()).pw_name
    entries = {}
    for line in out.stdout.splitlines()[1:]:  # after "total N"
        mode, _links, owner, _group, size_text, _mtime, name = line.split(None, 6)
        entries[name] = (mode, owner, int(size_text))
    assert set(entries) == {".", ".."} | children(profile_tree, SES)
    for name, (mode, owner, size) in entries.items():
        path = f"{SES}/{name}"
        # A writable mount: containers and their files can be written, analyses cannot.
        if path in profile_tree.files:
            assert (mode, size) == ("-rw-r--r--", len(profile_tree.files[path])), name
        else:
            assert mode == ("dr-xr-xr-x" if name == "analyses" else "drwxr-xr-x"), name
        assert owner == user
    root = run(["ls", "-la", str(profile_mount.path)])
    assert root.returncode == 0, root.stderr
    names = {line.split(None, 8)[-1] for line in root.stdout.splitlines()[1:]}
    assert {"flywheel", "radiology"} <= names


def test_stat(profile_mount: Mount, profile_fw: Any) -> None:
    acq = sdk_container(profile_fw, f"{SES}/T1w")
    f = acq.get_file("T1w.nii.gz")
    fmt = "%F|%a|%s|%X|%Y|%Z|%u|%g"
    ids = f"{os.getuid()}|{os.getgid()}"
    path = profile_mount / f"{SES}/T1w"
    out = run(["stat", "-c", fmt, str(path / "T1w.nii.gz"), str(path)])
    assert out.returncode == 0, out.stderr
    mtime, ctime = int(f.modified.timestamp()), int(f.created.timestamp())
    amtime, actime = int(acq.modified.timestamp()), int(acq.created.timestamp())
    assert out.stdout.splitlines() == [
        f"regular file|644|{f.size}|{mtime}|{mtime}|{ctime}|{ids}",
        f"directory|755|0|{amtime}|{amtime}|{actime}|{ids}",
    ]


def test_find_shows_every_container_and_file(profile_mount: Mount, profile_tree: SiteTree) -> None:
    for kind, expected in (("f", set(profile_tree.files)), ("d", profile_tree.dirs)):
        out = run(["find", "flywheel", "radiology", "-type", kind], cwd=profile_mount.path)
        assert out.returncode == 0, out.stderr
        assert set(out.stdout.splitlines()) == expected


def test_du_counts_the_listed_sizes(profile_mount: Mount, profile_tree: SiteTree) -> None:
    out = run(["du", "-sb", PROJECT], cwd=profile_mount.path)
    assert out.returncode == 0, out.stderr
    expected = sum(len(v) for k, v in profile_tree.files.items() if k.startswith(PROJECT + "/"))
    assert int(out.stdout.split()[0]) == expected
    # Blocks too: du without -b adds up st_blocks.
    out = run(["du", "-sk", PROJECT], cwd=profile_mount.path)
    assert int(out.stdout.split()[0]) >= expected // 1024


def test_cat(profile_mount: Mount, profile_fw: Any) -> None:
    project = sdk_container(profile_fw, PROJECT)
    for name in ("participants.csv", "dataset_description.json"):
        out = subprocess.run(
            ["cat", str(profile_mount / PROJECT / name)],
            capture_output=True,
            timeout=30,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout == profile_fw.download_file_from_container_as_data(project.id, name)
    assert json.loads((profile_mount / PROJECT / "dataset_description.json").read_bytes())


def test_cp_r_of_the_project_is_byte_identical_to_the_sdk(
    profile_mount: Mount, profile_tree: SiteTree, tmp_path: Path
) -> None:
    dest = tmp_path / "copy"
    out = run(["cp", "-r", str(profile_mount / PROJECT), str(dest)], timeout=90)
    assert out.returncode == 0, out.stderr
    copied = {
        str(p.relative_to(dest)): sha256(p.read_bytes()) for p in dest.rglob("*") if p.is_file()
    }
    expected = {k: sha256(v) for k, v in profile_tree.under(PROJECT).files.items()}
    assert copied == expected
    dirs = {str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_dir()}
    assert dirs == profile_tree.under(PROJECT).dirs


def test_md5sum_of_every_demo_file(profile_mount: Mount, profile_tree: SiteTree) -> None:
    paths = sorted(profile_tree.files)
    out = run(["md5sum", "--", *paths], cwd=profile_mount.path, timeout=90)
    assert out.returncode == 0, out.stderr
    sums = {
        name: digest for digest, name in (line.split("  ", 1) for line in out.stdout.splitlines())
    }
    assert sums == {p: hashlib.md5(profile_tree.files[p]).hexdigest() for p in paths}


def test_random_preads_match_the_source(
    profile_big_site: Any, big_bytes: bytes, mount_site: Callable[..., Mount]
) -> None:
    mount = mount_site(profile_big_site, cache_size="16M")  # smaller than the file: evictions too
    rng = random.Random(20181012)
    size = len(big_bytes)
    fd = os.open(big_path(mount), os.O_RDONLY)
    try:
        for _ in range(300):
            offset = rng.choice([rng.randrange(size), rng.randrange(size - 300_000, size)])
            length = rng.choice([1, 352, 4096, rng.randrange(1, 300_000)])
            got = os.pread(fd, length, offset)
            assert got == big_bytes[offset : offset + length], (offset, length)
        assert os.pread(fd, 100, size) == b""
        # And straight through, as md5sum or cp would read it.
        digest = hashlib.sha256()
        offset = 0
        while chunk := os.pread(fd, 1 << 20, offset):
            digest.update(chunk)
            offset += len(chunk)
        assert (offset, digest.hexdigest()) == (size, sha256(big_bytes))
    finally:
        os.close(fd)


def test_concurrent_readers_get_the_right_bytes(
    profile_big_site: Any, big_bytes: bytes, mount_site: Callable[..., Mount]
) -> None:
    mount = mount_site(profile_big_site, cache_size="8M")
    path = big_path(mount)
    size = len(big_bytes)

    def worker(seed: int) -> int:
        rng = random.Random(seed)
        fd = os.open(path, os.O_RDONLY)
        try:
            offset = rng.randrange(size)
            for _ in range(40):
                length = rng.randrange(1, 600_000)
                if rng.random() < 0.3:
                    offset = rng.randrange(size)  # jump, or else read on sequentially
                assert os.pread(fd, length, offset) == big_bytes[offset : offset + length]
                offset = min(offset + length, size - 1)
        finally:
            os.close(fd)
        return seed

    with ThreadPoolExecutor(8) as pool:
        assert sorted(pool.map(worker, range(8))) == list(range(8))


def test_files_with_awkward_names_read_back(
    profile: str, start_site: Callable[..., Any], mount_site: Callable[..., Mount]
) -> None:
    site = start_site(demo=False, strict=profile == "strict")
    fw = site.client()
    fw.add_group(flywheel.Group("g", "Names"))
    project = fw.get_group("g").add_project(label="P")
    names = [
        "weird #1?.txt",
        "100%.csv",
        "a+b c.txt",
        "Zoë.nii.gz",
        "back\\slash.txt",
        ".hidden",
        "semi;colon&amp=1.txt",
        "x" * 250 + ".nii.gz",
        "empty.txt",
    ]
    for name in names:
        content = b"" if name == "empty.txt" else name.encode() * 100
        project.upload_file(flywheel.FileSpec(name, content))
    mount = mount_site(site)
    folder = mount / "g/P"
    entries = os.listdir(folder)
    assert len(entries) == len(names)
    for entry in entries:
        name = os.getxattr(folder / entry, "user.flywheel.name").decode()
        expected = fw.download_file_from_container_as_data(project.id, name)
        assert (folder / entry).read_bytes() == expected, name
        assert os.stat(folder / entry).st_size == len(expected)
        assert len(entry.encode()) <= 255


def test_other_ways_of_reading(profile_mount: Mount, profile_tree: SiteTree) -> None:
    rel = next(p for p in sorted(profile_tree.files) if p.endswith(".dicom.zip"))
    source = profile_tree.files[rel]
    path = profile_mount / rel
    direct = subprocess.run(
        ["dd", f"if={path}", "iflag=direct", "bs=4096", "status=none"],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert direct.returncode == 0 and direct.stdout == source
    tail = subprocess.run(["tail", "-c", "100", str(path)], capture_output=True, timeout=30)
    assert tail.stdout == source[-100:]
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mapped:
        assert mapped[:] == source
    assert run(["unzip", "-tq", str(path)]).returncode == 0


def test_getfattr_dumps_the_flywheel_attributes(profile_mount: Mount, profile_fw: Any) -> None:
    acq = sdk_container(profile_fw, f"{SES}/T1w")
    f = acq.get_file("T1w.dicom.zip")
    path = profile_mount / f"{SES}/T1w"

    def dump(p: Path) -> dict[str, str]:
        out = run(["getfattr", "-d", "--absolute-names", str(p)])
        assert out.returncode == 0, out.stderr
        pairs = [line.split("=", 1) for line in out.stdout.splitlines() if "=" in line]
        return {k: json.loads(v) for k, v in pairs}

    attrs = dump(path / "T1w.dicom.zip")
    assert attrs["user.flywheel.id"] == attrs["user.flywheel.file_id"] == f.file_id
    assert attrs["user.flywheel.container_type"] == "file"
    assert attrs["user.flywheel.name"] == "T1w.dicom.zip"
    assert attrs["user.flywheel.size"] == str(f.size)
    assert attrs["user.flywheel.version"] == str(f.version)
    assert attrs["user.flywheel.hash"] == f.hash
    assert attrs["user.flywheel.zip_member_count"] == str(f.zip_member_count)
    assert json.loads(attrs["user.flywheel.classification"]) == f.classification
    attrs = dump(path)
    assert attrs["user.flywheel.id"] == acq.id
    assert attrs["user.flywheel.container_type"] == "acquisition"
    assert attrs["user.flywheel.label"] == "T1w"
    attrs = dump(profile_mount / "flywheel/Anxiety Study/sub-02/ses-followup/T2／FLAIR")
    assert attrs["user.flywheel.label"] == "T2/FLAIR"


# ---- imaging tools ------------------------------------------------------------------------


def load_nifti(path: Path, use_mmap: bool = True) -> nib.Nifti1Image:
    """`nib.load`, narrowed to the NIfTI-1 image every file here is."""
    img = nib.load(path, mmap=use_mmap)
    assert isinstance(img, nib.Nifti1Image)
    return img


def assert_same_image(mounted_file: Path, local_file: Path) -> None:
    local = load_nifti(local_file)
    expected = np.asanyarray(local.dataobj)
    for use_mmap in (True, False):
        img = load_nifti(mounted_file, use_mmap)
        assert img.header.binaryblock == local.header.binaryblock
        np.testing.assert_array_equal(np.asanyarray(img.dataobj), expected)
        np.testing.assert_array_equal(img.get_fdata(), local.get_fdata())
        np.testing.assert_array_equal(img.affine, local.affine)


def test_nibabel_loads_a_nii_gz(
    profile_mount: Mount, profile_tree: SiteTree, tmp_path: Path
) -> None:
    for rel in sorted(p for p in profile_tree.files if p.endswith(".nii.gz"))[:3]:
        local = tmp_path / Path(rel).name
        local.write_bytes(profile_tree.files[rel])
        assert_same_image(profile_mount / rel, local)


@pytest.fixture(scope="module")
def imaging(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A private site holding an uncompressed NIfTI and a DICOM file uploaded through the
    SDK, the local originals, and a mount of it."""
    root = root_conftest(request.config)
    site = root.start_sandbox(tmp_path_factory.mktemp("imaging-site"), demo=False)
    request.addfinalizer(site.stop)
    fw = site.client()
    fw.add_group(flywheel.Group("imaging", "Imaging"))
    project = fw.get_group("imaging").add_project(label="Formats")
    acq = project.add_subject(label="sub-01").add_session(label="ses-01")
    acq = acq.add_acquisition(label="anat")
    local = tmp_path_factory.mktemp("imaging-local")

    rng = np.random.default_rng(7)
    data = rng.integers(-2000, 30000, size=(64, 64, 40), dtype=np.int16)
    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    affine[:3, 3] = [-48.0, -48.0, -60.0]
    nib.save(nib.Nifti1Image(data, affine), local / "T1w.nii")  # type: ignore[no-untyped-call]

    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.MRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.SOPClassUID = pydicom.uid.MRImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.PatientName = "Zoë^Test"
    ds.PatientID = "sub-01"
    ds.StudyInstanceUID = pydicom.uid.generate_uid()
    ds.SeriesInstanceUID = pydicom.uid.generate_uid()
    ds.Rows, ds.Columns = 128, 96
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = rng.integers(0, 4096, size=(128, 96), dtype=np.uint16).tobytes()
    ds.save_as(local / "slice 001.dcm", enforce_file_format=True)

    for name in ("T1w.nii", "slice 001.dcm"):
        acq.upload_file(str(local / name))
    mount = start_mount(site, tmp_path_factory.mktemp("imaging-mount"))
    request.addfinalizer(lambda: stop_mount(mount))
    return mount, local, mount / "imaging/Formats/sub-01/ses-01/anat"


def test_nibabel_mmaps_an_uncompressed_nii(imaging: Any) -> None:
    _mount, local, acq = imaging
    assert_same_image(acq / "T1w.nii", local / "T1w.nii")
    # mmap=True really maps the mounted file (uncompressed NIfTI is mmap-able).
    img = load_nifti(acq / "T1w.nii", use_mmap=True)
    mapped = np.asanyarray(img.dataobj)
    assert isinstance(mapped, np.memmap)
    np.testing.assert_array_equal(mapped, np.asanyarray(load_nifti(local / "T1w.nii").dataobj))


def test_pydicom_reads_an_uploaded_dicom_file(imaging: Any) -> None:
    _mount, local, acq = imaging
    got = pydicom.dcmread(acq / "slice 001.dcm")
    expected = pydicom.dcmread(local / "slice 001.dcm")
    assert got.SOPInstanceUID == expected.SOPInstanceUID
    assert str(got.PatientName) == "Zoë^Test"
    np.testing.assert_array_equal(got.pixel_array, expected.pixel_array)
    # Reading just the header, as indexers do, also works.
    header = pydicom.dcmread(acq / "slice 001.dcm", stop_before_pixels=True)
    assert header.Rows == 128


def test_zip_archives_read_with_random_access(profile_mount: Mount, profile_tree: SiteTree) -> None:
    rel = next(p for p in sorted(profile_tree.files) if p.endswith(".dicom.zip"))
    local = zipfile.ZipFile(io.BytesIO(profile_tree.files[rel]))
    with zipfile.ZipFile(profile_mount / rel) as archive:
        assert archive.testzip() is None
        names = archive.namelist()
        assert names == local.namelist()
        member = archive.read(names[len(names) // 2])
    assert member == local.read(names[len(names) // 2])
    ds = pydicom.dcmread(io.BytesIO(member))
    assert ds.Modality in ("MR", "CT")


# ---- the read-only user -------------------------------------------------------------------


def test_read_only_user_sees_the_same_and_cannot_write(
    profile_site: Any, profile_mount: Mount, mount_site: Callable[..., Mount]
) -> None:
    mounted = profile_mount
    # --allow-delete (and a reason, for a site with an audit trail): the site's refusal is
    # what stops the deletes, not fwfs's own rules.
    args = ["--allow-delete", "--delete-reason", "test_data"]
    ro = mount_site(profile_site, key=profile_site.readonly_api_key, args=args)

    def tree(root: Path) -> dict[str, int]:
        out = {}
        for dirpath, dirnames, filenames in os.walk(root / PROJECT):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                out[str(p.relative_to(root))] = p.stat().st_size
        return out

    assert tree(ro.path) == tree(mounted.path)
    assert (ro / PROJECT / "participants.csv").read_bytes() == (
        mounted / PROJECT / "participants.csv"
    ).read_bytes()
    target = ro / PROJECT / "participants.csv"
    attempts: list[tuple[str, Callable[[], Any]]] = [
        ("open for writing", lambda: open(target, "r+b")),  # noqa: SIM115
        ("create", lambda: open(ro / PROJECT / "new.txt", "wb")),  # noqa: SIM115
        ("mkdir", lambda: os.mkdir(ro / PROJECT / "sub-99")),
        ("unlink", lambda: os.unlink(target)),
        ("rename", lambda: os.rename(target, ro / PROJECT / "renamed.csv")),
    ]
    for what, attempt in attempts:
        assert errno_of(attempt) == errno.EACCES, what
    assert sorted(os.listdir(ro / PROJECT)) == sorted(os.listdir(mounted / PROJECT))
    assert target.read_bytes() == (mounted / PROJECT / "participants.csv").read_bytes()


# ---- mount and unmount ----------------------------------------------------------------------


def daemons_of(mountpoint: Path) -> list[int]:
    """Pids of processes whose command line names the mount point."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if str(mountpoint).encode() in cmdline and b"fwfs" in cmdline:
                pids.append(int(entry.name))
    return pids


def test_mount_in_the_background_then_fwfs_unmount(demo_site: Any, tmp_path: Path) -> None:
    mp = tmp_path / "mnt"
    mp.mkdir()
    try:
        result = fwfs("mount", str(mp), "--log-file", str(tmp_path / "log"), key=demo_site.api_key)
        assert result.returncode == 0, result.stderr
        # Returned only once the mount is ready: usable at once.
        assert is_mounted(mp)
        assert "participants.csv" in os.listdir(mp / PROJECT)
        assert daemons_of(mp)
        result = fwfs("unmount", str(mp))
        assert result.returncode == 0, result.stderr
        assert not is_mounted(mp)
        deadline = time.monotonic() + 15
        while daemons_of(mp) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert daemons_of(mp) == [], "the daemon outlived its mount"
    finally:
        if is_mounted(mp):
            fusermount(mp, lazy=True)
        for pid in daemons_of(mp):
            os.kill(pid, signal.SIGKILL)


def test_mount_on_a_busy_mountpoint_fails_and_leaves_it_alone(
    mounted: Mount, demo_site: Any
) -> None:
    for args in (["mount", str(mounted.path)], ["mount", str(mounted.path), "-f"]):
        result = fwfs(*args, key=demo_site.api_key)
        assert result.returncode != 0
        assert "busy" in result.stderr
        assert mounted_paths().count(str(mounted.path)) == 1
    assert "flywheel" in os.listdir(mounted.path)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_stopping_a_foreground_mount_unmounts_it(
    demo_site: Any, mount_site: Callable[..., Mount], sig: int
) -> None:
    mount = mount_site(demo_site)
    assert os.listdir(mount / "flywheel")
    mount.proc.send_signal(sig)  # Ctrl-C, or a service manager stopping it
    mount.proc.wait(timeout=15)
    assert not is_mounted(mount.path)
    assert os.listdir(mount.path) == []  # the empty mount point again, not a dead mount


def test_stopping_a_foreground_mount_is_a_clean_exit(
    demo_site: Any, mount_site: Callable[..., Mount]
) -> None:
    mount = mount_site(demo_site)
    assert os.listdir(mount / "flywheel")
    mount.proc.send_signal(signal.SIGTERM)
    assert mount.proc.wait(timeout=15) == 0
    assert "ERROR" not in mount.log()


@pytest.mark.parametrize("case", ["wrong secret", "malformed key", "no key at all"])
def test_mount_with_a_bad_key_fails_clearly(demo_site: Any, tmp_path: Path, case: str) -> None:
    secret = "wrong-Secret-1234567890"
    host, port = demo_site.url.removeprefix("http://").split(":")
    key = {
        "wrong secret": f"{host}:{port}:__force_insecure:{secret}",
        "malformed key": secret,
        "no key at all": None,
    }[case]
    mp = tmp_path / "mnt"
    mp.mkdir()
    # HOME without ~/.config/flywheel/user.json, so that no key is found there either.
    result = fwfs("mount", str(mp), key=key, HOME=str(tmp_path), FLYWHEEL_USER_HOME=str(tmp_path))
    assert result.returncode != 0
    assert any(line.startswith("fwfs: ") for line in result.stderr.splitlines())
    assert secret not in result.stderr + result.stdout
    assert not is_mounted(mp)
    expected = {
        "wrong secret": "401",
        "malformed key": "API key",
        "no key at all": "no Flywheel API key",
    }[case]
    assert expected in result.stderr


READER = r"""
import hashlib, json, os, sys, time
path, first, second = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fd = os.open(path, os.O_RDONLY)
head = os.pread(fd, first, 0)
print(json.dumps({"ready": hashlib.sha256(head).hexdigest()}), flush=True)
sys.stdin.readline()
report = {}
start = time.monotonic()
try:
    rest = os.pread(fd, 1 << 16, second)
    report["read"] = hashlib.sha256(rest).hexdigest()
    report["length"] = len(rest)
except OSError as e:
    report["errno"] = e.errno
report["seconds"] = time.monotonic() - start
if len(sys.argv) > 4:
    again = os.pread(fd, first, 0)
    report["cached"] = hashlib.sha256(again).hexdigest()
    report["listing"] = sorted(os.listdir(sys.argv[4]))
os.close(fd)
print(json.dumps(report), flush=True)
"""


@pytest.fixture
def reader() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """A separate process that holds a file of the mount open: `reader(path, first, second)`
    reads `first` bytes, waits for a line on stdin, then reads 64 KiB at `second` (and with a
    directory as fourth argument, the first bytes again and the directory). Reports JSON
    lines. Killed after the test."""
    procs: list[subprocess.Popen[str]] = []

    def start(*args: Any) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", READER, *map(str, args)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def talk(proc: subprocess.Popen[str], line: str | None, timeout: float) -> dict[str, Any]:
    """Send `line` (if any) and read one JSON line back, or fail after `timeout`."""
    assert proc.stdin is not None and proc.stdout is not None
    if line is not None:
        proc.stdin.write(line + "\n")
        proc.stdin.flush()
    result: list[str] = []
    stdout = proc.stdout
    thread = threading.Thread(target=lambda: result.append(stdout.readline()), daemon=True)
    thread.start()
    thread.join(timeout)
    if not result:
        proc.kill()
        pytest.fail(f"the reader did not answer within {timeout:.0f} s (hung on the mount)")
    assert result[0], "the reader died"
    return dict(json.loads(result[0]))


def test_unmount_with_a_file_still_open(
    demo_site: Any, mount_site: Callable[..., Mount], reader: Any, demo_tree: SiteTree
) -> None:
    mount = mount_site(demo_site)
    rel = next(p for p in sorted(demo_tree.files) if p.endswith(".dicom.zip"))
    source = demo_tree.files[rel]
    proc = reader(mount / rel, 1000, 1000)
    assert talk(proc, None, 30) == {"ready": sha256(source[:1000])}
    # A plain unmount refuses while the file is open, and leaves the mount working.
    busy = fwfs("unmount", str(mount.path))
    assert busy.returncode != 0
    assert is_mounted(mount.path)
    assert os.listdir(mount / PROJECT)
    # A lazy one detaches it at once.
    lazy = fwfs("unmount", "-z", str(mount.path))
    assert lazy.returncode == 0, lazy.stderr
    assert not is_mounted(mount.path)
    # The holder reads on: the right bytes, end of file or an error, but no hang.
    report = talk(proc, "go", 30)
    if "read" in report:
        rest = source[1000 : 1000 + (1 << 16)]
        assert report["read"] in (sha256(rest), sha256(b"")), "wrong bytes after unmount -z"
    else:
        assert report["errno"] in (errno.EIO, errno.ENOTCONN, errno.EBADF)
    proc.wait(timeout=10)
    # Once the last file is closed, the daemon ends by itself.
    assert mount.proc.wait(timeout=15) == 0


@pytest.mark.timeout(240)
def test_site_dies_mid_read(
    start_site: Callable[..., Any], mount_site: Callable[..., Mount], reader: Any
) -> None:
    site = start_site(big_file_mb=64)
    acq = site.client().lookup(f"{SES}/T1w")
    source = site.client().download_file_from_container_as_data(acq.id, "big.bin")
    # A long TTL, so that what was listed stays usable while the site is gone.
    mount = mount_site(site, ttl=600)
    path = big_path(mount)
    first = 1 << 20
    proc = reader(path, first, 48 << 20, path.parent)
    assert talk(proc, None, 30) == {"ready": sha256(source[:first])}
    site.proc.kill()  # SIGKILL: connections are refused from now on
    site.proc.wait(timeout=10)
    # The next read of a part never fetched fails with EIO, in bounded time.
    report = talk(proc, "go", 170)
    assert report.get("errno") == errno.EIO, report
    assert report["seconds"] < 150
    # The mount is still alive: what is cached still reads, what is listed still lists.
    assert report["cached"] == sha256(source[:first])
    assert report["listing"] == ["T1w.dicom.zip", "T1w.nii.gz", "big.bin"]
    assert mount.alive
    assert "EIO" in mount.log()


# ---- a site that ignores Range without view=true --------------------------------------------


def test_range_quirk_site_still_serves_exact_bytes_by_range(
    start_site: Callable[..., Any], mount_site: Callable[..., Mount]
) -> None:
    site = start_site(range_quirk=True, big_file_mb=64)
    fw = site.client()
    acq = fw.lookup(f"{SES}/T1w")
    source = fw.download_file_from_container_as_data(acq.id, "big.bin")
    # The quirk is on: a Range request without view=true gets the whole file.
    url = f"{site.api_url}/acquisitions/{acq.id}/files/big.bin"
    plain = requests.get(url, headers={**site.headers(), "Range": "bytes=0-9"}, stream=True)
    assert plain.status_code == 200
    plain.close()
    mount = mount_site(site)
    path = big_path(mount)
    mark = site.log_mark()
    fd = os.open(path, os.O_RDONLY)
    try:
        assert os.pread(fd, 352, 0) == source[:352]
        assert os.pread(fd, 5000, 40 << 20) == source[40 << 20 : (40 << 20) + 5000]
    finally:
        os.close(fd)
    gets = [e for e in requests_since(site, mark) if e["path"].endswith("/big.bin")]
    assert gets and all(e["status"] == 206 and "view=true" in e["query"] for e in gets), gets
    assert sum(e["bytes"] for e in gets) < len(source) // 100
    nii = mount / f"{SES}/{path.parent.name}/T1w.nii.gz"
    assert nii.read_bytes() == fw.download_file_from_container_as_data(acq.id, "T1w.nii.gz")
