"""The bad-archive corpus on real mounts (docs/SEMANTICS.md, "Zip archives", "Bad
archives"): truncated and corrupt archives, encrypted members, CP437 and UTF-8 names, zip64,
20,000 members, names that try to leave the member directory, duplicates, and the demo's
DICOM archives checked against pydicom and the official SDK.

Each archive is built here with `zipfile` (and patched byte by byte where zipfile will not
write the oddity), uploaded to a private site through the SDK and read through a fresh
mount. Archives come in two sizes where it matters: "small" (1 MiB or less: the first read
of the index fetches the whole archive) and "large" (over 1 MiB: the index is a read of the
tail, each member a ranged read of its own region). Whatever the archive, the mount answers
with the right bytes or a clear errno, logs why, and stays up.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import struct
import subprocess
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import flywheel
import numpy as np
import pydicom
import pytest
import requests
from mountkit import Mount, SiteTree, errno_of, quiet_mark, requests_since
from test_zip_members import demo_archive, member_files

pytestmark = pytest.mark.timeout(90)

SIZES = ["small", "large"]
# Incompressible bytes that push an archive over the 1 MiB of a "small" one.
PAD = np.random.default_rng(11).integers(0, 255, 1_200_000, np.uint8).tobytes()
_FLAG_ENCRYPTED = 0x1
_FLAG_UTF8 = 0x800
# Members of broken_zip() that cannot be read, and how long their EIO may take (seconds).
BROKEN = ["garbage.bin", "moved.bin", "cut.bin"]
PROMPT = 5


@pytest.fixture
def corpus(start_site: Callable[..., Any]) -> Any:
    """A private site with an empty project g/P for crafted archives: (site, sdk, project)."""
    site = start_site(demo=False)
    fw = site.client()
    fw.add_group(flywheel.Group("g", "Corpus"))
    return site, fw, fw.get_group("g").add_project(label="P")


def build_zip(
    members: list[tuple[str, bytes]],
    compression: int = zipfile.ZIP_DEFLATED,
    large: bool = False,
) -> bytes:
    """An archive of `members` in order; `large` adds a stored `pad.bin` member after them."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as z:
        for name, data in members:
            z.writestr(name, data)
        if large:
            z.writestr("pad.bin", PAD, zipfile.ZIP_STORED)
    data = buf.getvalue()
    assert (len(data) > 1 << 20) == large
    return data


def upload(project: Any, name: str, data: bytes) -> None:
    project.upload_file(flywheel.FileSpec(name, data))


def central_entries(data: bytes | bytearray) -> Iterator[tuple[int, bytes]]:
    """(offset, raw name) of every central-directory entry."""
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as z:
        pos = z.start_dir
    while data[pos : pos + 4] == b"PK\x01\x02":
        name_len, extra_len, comment_len = struct.unpack_from("<3H", data, pos + 28)
        yield pos, bytes(data[pos + 46 : pos + 46 + name_len])
        pos += 46 + name_len + extra_len + comment_len


def set_flag(data: bytes, member: str, bit: int) -> bytes:
    """`data` with general-purpose flag `bit` set for `member` in its local header and in
    its central-directory entry (an ASCII name)."""
    out = bytearray(data)
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        local = z.getinfo(member).header_offset
    assert out[local : local + 4] == b"PK\x03\x04"
    (flags,) = struct.unpack_from("<H", out, local + 6)
    struct.pack_into("<H", out, local + 6, flags | bit)
    (central,) = [pos for pos, raw in central_entries(out) if raw == member.encode("ascii")]
    (flags,) = struct.unpack_from("<H", out, central + 8)
    struct.pack_into("<H", out, central + 8, flags | bit)
    return bytes(out)


def all_alive(mount: Mount) -> None:
    """The mount is up, answers, and never met an exception it did not expect."""
    assert mount.alive
    assert os.path.isdir(mount / "g/P")
    assert "Traceback" not in mount.log(), mount.log()[-4000:]


# ---- corrupt and truncated archives ------------------------------------------------------


def test_a_truncated_archive_is_the_file_it_is_and_nothing_more(
    corpus: Any, mount_site: Callable[..., Mount]
) -> None:
    site, _fw, project = corpus
    rng = np.random.default_rng(1)
    members = [
        (f"scan/{i:03d}.dcm", rng.integers(0, 255, 3000, np.uint8).tobytes()) for i in range(20)
    ]
    whole = build_zip(members)
    half = whole[: len(whole) // 2]  # the central directory and its end record are gone
    with pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(io.BytesIO(half))
    upload(project, "truncated.zip", half)
    mount = mount_site(site)
    folder = mount / "g/P"
    assert errno_of(lambda: os.stat(folder / "truncated.zip.d")) == errno.ENOENT
    assert errno_of(lambda: os.listdir(folder / "truncated.zip.d")) == errno.ENOENT
    assert errno_of(lambda: os.stat(folder / "truncated.zip.d/scan/000.dcm")) == errno.ENOENT
    assert (folder / "truncated.zip").read_bytes() == half
    assert os.stat(folder / "truncated.zip").st_size == len(half)
    # The answer is cached with the file version: asking again costs nothing.
    mark = quiet_mark(site)
    assert errno_of(lambda: os.stat(folder / "truncated.zip.d")) == errno.ENOENT
    assert requests_since(site, mark) == []
    assert "not a zip archive" in mount.log()
    all_alive(mount)


def broken_zip(large: bool) -> tuple[bytes, dict[str, bytes]]:
    """An archive that lists fine but holds broken members: `garbage.bin` (deflated data
    overwritten with junk), `moved.bin` (its directory entry points into another member's
    data) and `cut.bin` (its directory entry claims more data than the archive holds), with
    two good members around them. Returns the bytes and the good members."""
    rng = np.random.default_rng(2)
    good = {"first.txt": b"first good member\n" * 50, "last/ok.txt": b"last good member\n" * 50}
    noise = rng.integers(0, 255, 4000, np.uint8).tobytes()
    members = [
        ("first.txt", good["first.txt"]),
        ("garbage.bin", b"".join(b"line %d of garbage.bin\n" % i for i in range(2000))),
        ("moved.bin", noise),
        ("cut.bin", b"cut short " * 500),
        ("last/ok.txt", good["last/ok.txt"]),
    ]
    data = bytearray(build_zip(members, large=large))
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as z:
        garbage = z.getinfo("garbage.bin")
        first = z.getinfo("first.txt")
    # Junk over the middle of garbage.bin's deflate stream.
    start = garbage.header_offset + 30 + len("garbage.bin")
    middle = start + garbage.compress_size // 2
    assert middle + 16 < start + garbage.compress_size
    data[middle : middle + 16] = b"\xff\x00" * 8
    for pos, raw in central_entries(data):
        if raw == b"moved.bin":
            # The local header offset now lands in the middle of first.txt's data.
            struct.pack_into("<L", data, pos + 42, first.header_offset + 40)
        if raw == b"cut.bin":
            # Sizes grown by 16 KiB (still "plausible" next to the real ones): the deflate
            # stream ends 16 KiB short of the listed size, and the listed data runs on
            # into the following members.
            csize, usize = struct.unpack_from("<2L", data, pos + 20)
            struct.pack_into("<2L", data, pos + 20, csize + 16384, usize + 16384)
    listed = zipfile.ZipFile(io.BytesIO(bytes(data))).namelist()
    assert listed[:5] == [name for name, _ in members]
    return bytes(data), good


def test_a_corrupt_archive_lists_and_its_broken_members_fail_with_eio(
    corpus: Any, mount_site: Callable[..., Mount]
) -> None:
    site, _fw, project = corpus
    data, good = broken_zip(large=False)
    upload(project, "broken.zip", data)
    mount = mount_site(site)
    root = mount / "g/P/broken.zip.d"
    assert set(os.listdir(root)) == {"first.txt", "garbage.bin", "moved.bin", "cut.bin", "last"}
    for name in BROKEN:
        for _ in range(2):  # and again: never the wrong bytes on a second try
            assert errno_of((root / name).read_bytes) == errno.EIO, name
    for name, content in good.items():
        assert (root / name).read_bytes() == content
    assert (mount / "g/P/broken.zip").read_bytes() == data
    log = mount.log()
    assert log.count("(EIO)") >= 3, log[-4000:]
    all_alive(mount)


def test_the_good_members_of_a_large_corrupt_archive_read(
    corpus: Any, mount_site: Callable[..., Mount]
) -> None:
    site, _fw, project = corpus
    data, good = broken_zip(large=True)
    upload(project, "broken.zip", data)
    mount = mount_site(site)
    root = mount / "g/P/broken.zip.d"
    assert set(os.listdir(root)) == {
        "first.txt",
        "garbage.bin",
        "moved.bin",
        "cut.bin",
        "last",
        "pad.bin",
    }
    for name, content in good.items():
        assert (root / name).read_bytes() == content
    assert (root / "pad.bin").read_bytes() == PAD
    for name in BROKEN:
        assert (
            os.stat(root / name).st_size
            == zipfile.ZipFile(io.BytesIO(data)).getinfo(name).file_size
        )
    all_alive(mount)


def test_a_broken_member_of_a_large_archive_fails_with_eio_promptly(
    corpus: Any, mount_site: Callable[..., Mount]
) -> None:
    site, _fw, project = corpus
    data, _good = broken_zip(large=True)
    upload(project, "broken.zip", data)
    mount = mount_site(site)
    path = mount / "g/P/broken.zip.d/garbage.bin"
    os.stat(path)
    # `cat` in a subprocess, so that a read stuck in the daemon's retries can be given up
    # at the deadline (a FUSE read yields to SIGKILL); the daemon, still retrying, is then
    # killed too, so that the unmount does not wait for it.
    try:
        run = subprocess.run(["cat", str(path)], capture_output=True, timeout=PROMPT, check=False)
    except subprocess.TimeoutExpired:
        mount.kill()
        pytest.fail(f"reading a broken member took more than {PROMPT} s")
    assert run.returncode != 0 and b"Input/output error" in run.stderr, run
    assert "(EIO)" in mount.log()
    all_alive(mount)


def test_the_site_cuts_a_member_body_it_cannot_complete(corpus: Any) -> None:
    site, _fw, project = corpus
    data, _good = broken_zip(large=True)
    upload(project, "broken.zip", data)
    url = f"{site.api_url}/projects/{project.id}/files/broken.zip"
    with pytest.raises(requests.exceptions.ChunkedEncodingError):  # the short body, at once
        requests.get(url, params={"member": "cut.bin"}, headers=site.headers(), timeout=PROMPT)


# ---- encrypted members -----------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
def test_an_encrypted_member_is_eacces_and_the_others_read(
    size: str, corpus: Any, mount_site: Callable[..., Mount]
) -> None:
    site, _fw, project = corpus
    members = [
        ("plain.txt", b"plain text\n" * 100),
        ("secret.dcm", b"DICM pretend-encrypted bytes\n" * 100),
        ("series/also.txt", b"also plain\n" * 100),
    ]
    data = build_zip(members, zipfile.ZIP_STORED, large=size == "large")
    data = set_flag(data, "secret.dcm", _FLAG_ENCRYPTED)
    info = zipfile.ZipFile(io.BytesIO(data)).getinfo("secret.dcm")
    assert info.flag_bits & _FLAG_ENCRYPTED
    upload(project, "locked.zip", data)
    mount = mount_site(site)
    root = mount / "g/P/locked.zip.d"
    # Listed, with its size, but its bytes are refused, every time.
    assert "secret.dcm" in os.listdir(root)
    assert os.stat(root / "secret.dcm").st_size == info.file_size
    for _ in range(2):
        assert errno_of(lambda: (root / "secret.dcm").read_bytes()) == errno.EACCES
    assert (root / "plain.txt").read_bytes() == b"plain text\n" * 100
    assert (root / "series/also.txt").read_bytes() == b"also plain\n" * 100
    if size == "large":
        assert (root / "pad.bin").read_bytes() == PAD
    log = mount.log()
    assert "encrypted" in log and "(EACCES)" in log, log[-4000:]
    all_alive(mount)


# ---- names: CP437 and UTF-8, and names that try to leave -------------------------------


def encoded_names_zip(large: bool) -> bytes:
    """Members named in CP437 (no UTF-8 flag) and in UTF-8 (the flag set by zipfile).

    zipfile writes every non-ASCII name as UTF-8, so the CP437 ones are written under ASCII
    placeholders of the same length and then patched in place, in the local headers and in
    the central directory (the CRCs cover data only)."""
    cp437 = {
        "mXller.dcm": "müller.dcm",
        "XRZTE/befund.dcm": "ÄRZTE/befund.dcm",
        # UTF-8 bytes without the flag: a reader must take them as CP437 ("caf├⌐.dcm").
        "cafXY.dcm": "café.dcm",
    }
    members = [
        ("mXller.dcm", b"cp437 name\n" * 40),
        ("XRZTE/befund.dcm", b"cp437 directory\n" * 40),
        ("cafXY.dcm", b"utf-8 bytes, no flag\n" * 40),
        ("脳.dcm", b"utf-8 name\n" * 40),
        ("画像/スライス_01.dcm", b"utf-8 directory\n" * 40),
    ]
    data = build_zip(members, large=large)
    for placeholder, name in cp437.items():
        raw = name.encode("cp437") if name != "café.dcm" else name.encode("utf-8")
        assert len(raw) == len(placeholder) and data.count(placeholder.encode()) == 2
        data = data.replace(placeholder.encode(), raw)
    return data


@pytest.mark.parametrize("size", SIZES)
def test_cp437_and_utf8_names_appear_as_the_site_decodes_them(
    size: str, corpus: Any, mount_site: Callable[..., Mount]
) -> None:
    site, fw, project = corpus
    data = encoded_names_zip(size == "large")
    archive = zipfile.ZipFile(io.BytesIO(data))
    flags = {i.filename: bool(i.flag_bits & _FLAG_UTF8) for i in archive.infolist()}
    assert flags == {
        "müller.dcm": False,
        "ÄRZTE/befund.dcm": False,
        "caf├⌐.dcm": False,
        "脳.dcm": True,
        "画像/スライス_01.dcm": True,
        **({"pad.bin": False} if size == "large" else {}),
    }
    upload(project, "names.zip", data)
    # The site's listing decodes them as zipfile does.
    listing = fw.get_project(project.id).get_file_zip_info("names.zip")
    assert [m.path for m in listing.members] == [i.filename for i in archive.infolist()]
    mount = mount_site(site)
    root = mount / "g/P/names.zip.d"
    expected = {i.filename: archive.read(i) for i in archive.infolist()}
    assert member_files(root) == expected
    for name in expected:
        assert os.getxattr(root / name, "user.flywheel.member").decode() == name
    top = {"müller.dcm", "ÄRZTE", "caf├⌐.dcm", "脳.dcm", "画像"}
    assert set(os.listdir(root)) == top | ({"pad.bin"} if size == "large" else set())
    all_alive(mount)


def test_member_names_stay_inside_the_member_directory(
    corpus: Any, mount_site: Callable[..., Mount]
) -> None:
    site, _fw, project = corpus
    hostile = [
        "../evil.txt",
        "../../../../etc/passwd",
        "/abs.txt",
        "/etc/shadow",
        "a/../../b.txt",
        "x/./../y.txt",
        "..",
        "sub/..",
        "./dot.txt",
        "//double.txt",
        "..\\windows.txt",
        "...",
    ]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i, name in enumerate(hostile):
            z.writestr(name, f"member {i}: {name}\n".encode())
        # A member marked as a unix symlink to /etc/passwd: a file of its bytes, no link.
        link = zipfile.ZipInfo("link")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        z.writestr(link, b"/etc/passwd")
    data = buf.getvalue()
    upload(project, "names.zip", data)
    mount = mount_site(site)
    root = mount / "g/P/names.zip.d"
    real_root = os.path.realpath(root)
    seen: list[bytes] = []
    for dirpath, dirnames, filenames in os.walk(root):
        assert os.path.realpath(dirpath) == real_root or os.path.realpath(dirpath).startswith(
            real_root + os.sep
        ), dirpath
        for name in dirnames + filenames:
            assert name not in (".", "..") and "/" not in name
            entry = os.path.join(dirpath, name)
            assert os.path.realpath(entry).startswith(real_root + os.sep), entry
            assert not os.path.islink(entry)
        for name in filenames:
            path = os.path.join(dirpath, name)
            assert stat.S_ISREG(os.lstat(path).st_mode)
            seen.append(Path(path).read_bytes())
    # Every member is there, once, with its own bytes.
    archive = zipfile.ZipFile(io.BytesIO(data))
    assert Counter(seen) == Counter(archive.read(i) for i in archive.infolist())
    assert (root / "link").read_bytes() == b"/etc/passwd"
    # Nothing appeared beside the archive or above it.
    assert os.listdir(mount / "g/P") == ["names.zip"]
    assert os.listdir(mount / "g") == ["P"]
    all_alive(mount)


def test_duplicate_members_of_a_large_archive_all_read_under_stable_names(
    corpus: Any, mount_site: Callable[..., Mount]
) -> None:
    site, _fw, project = corpus
    rng = np.random.default_rng(4)
    copies = [rng.integers(0, 255, 500_000, np.uint8).tobytes() for _ in range(3)]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z, pytest.warns(UserWarning, match="Duplicate name"):
        for content in copies:
            z.writestr("scan/dup.dcm", content)
        z.writestr("scan/other.dcm", b"the only one\n")
    assert len(buf.getvalue()) > 1 << 20  # "large": the site's ?member= names only one
    upload(project, "dups.zip", buf.getvalue())
    mount = mount_site(site)
    scan = mount / "g/P/dups.zip.d/scan"
    files = member_files(scan)
    dups = sorted(n for n in files if n != "other.dcm")
    assert len(dups) == 3
    assert all(n.startswith("dup (") and n.endswith(").dcm") for n in dups), dups
    assert sorted(files[n] for n in dups) == sorted(copies)
    assert files["other.dcm"] == b"the only one\n"
    for name in dups:
        assert os.getxattr(scan / name, "user.flywheel.member") == b"scan/dup.dcm"
    again = member_files(mount_site(site) / "g/P/dups.zip.d/scan")
    assert again == files  # the same name for the same member, mount after mount
    all_alive(mount)


# ---- zip64 ---------------------------------------------------------------------------


def zip64_extra(data: bytes, info: zipfile.ZipInfo) -> bool:
    """Whether the member has a zip64 extra field in its local header or its central entry."""
    (name_len,) = struct.unpack_from("<H", data, info.header_offset + 26)
    start = info.header_offset + 30 + name_len
    return data[start : start + 2] == b"\x01\x00" or info.extra[:2] == b"\x01\x00"


def test_a_zip64_archive_lists_and_reads_exactly(
    corpus: Any, mount_site: Callable[..., Mount], monkeypatch: pytest.MonkeyPatch
) -> None:
    site, _fw, project = corpus
    rng = np.random.default_rng(6)
    big_stored = rng.integers(0, 255, 9 << 20, np.uint8).tobytes()  # read in place
    big_deflated = bytes(range(256)) * (36 << 10)  # 9 MiB, streamed
    small = {
        f"series/{i:02d}.dcm": rng.integers(0, 255, 2000, np.uint8).tobytes() for i in range(12)
    }

    # Every member with zip64 local headers (force_zip64).
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, content in small.items():
            with z.open(name, "w", force_zip64=True) as f:
                f.write(content)
        with z.open(zipfile.ZipInfo("big/stored.bin"), "w", force_zip64=True) as f:
            f.write(big_stored)
        info = zipfile.ZipInfo("big/deflated.bin")
        info.compress_type = zipfile.ZIP_DEFLATED
        with z.open(info, "w", force_zip64=True) as f:
            f.write(big_deflated)
    forced = buf.getvalue()

    # And a zip64 central directory: zip64 extras for sizes and offsets in its entries and
    # a zip64 end record, written by zipfile with its limits lowered.
    buf = io.BytesIO()
    with monkeypatch.context() as m:
        m.setattr(zipfile, "ZIP64_LIMIT", 1000)
        m.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", 4)
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for name, content in small.items():
                z.writestr(name, content)
            z.writestr("big/stored.bin", big_stored, zipfile.ZIP_STORED)
    central = buf.getvalue()
    with zipfile.ZipFile(io.BytesIO(central)) as z:
        assert all(i.extra[:2] == b"\x01\x00" for i in z.infolist())
    assert b"PK\x06\x06" in central and b"PK\x06\x07" in central  # zip64 end record, locator

    upload(project, "forced.zip", forced)
    upload(project, "central.zip", central)
    mount = mount_site(site)
    for name, data in (("forced.zip", forced), ("central.zip", central)):
        archive = zipfile.ZipFile(io.BytesIO(data))
        assert all(zip64_extra(data, i) for i in archive.infolist())
        root = mount / f"g/P/{name}.d"
        assert sorted(os.listdir(root / "series")) == sorted(n.split("/")[1] for n in small)
        for i in archive.infolist():
            assert os.stat(root / i.filename).st_size == i.file_size
        # Ranges of the big members, then everything whole.
        with open(root / "big/stored.bin", "rb") as f:
            f.seek(5 << 20)
            assert f.read(100_000) == big_stored[5 << 20 : (5 << 20) + 100_000]
        assert member_files(root) == {i.filename: archive.read(i) for i in archive.infolist()}
    all_alive(mount)


# ---- 20,000 members ------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_an_archive_of_20000_members_lists_in_two_ranged_reads(
    corpus: Any, mount_site: Callable[..., Mount]
) -> None:
    site, _fw, project = corpus
    count = 20_000
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for i in range(count):
            z.writestr(f"{i:05d}.dcm", f"member {i}\n".encode())
    upload(project, "many.zip", buf.getvalue())
    mount = mount_site(site)
    os.stat(mount / "g/P/many.zip")
    root = mount / "g/P/many.zip.d"
    mark = quiet_mark(site)
    names = os.listdir(root)
    assert len(names) == count
    assert sorted(names) == [f"{i:05d}.dcm" for i in range(count)]
    log = requests_since(site, mark)
    # The archive (about 2.2 MB, a central directory of 1 MB) is read in two ranges: its
    # tail, then the rest of the directory.
    assert [(e["method"], e["range"] is not None) for e in log] == [("GET", True)] * 2, log
    assert os.stat(root / "12345.dcm").st_size == len(b"member 12345\n")
    mark = quiet_mark(site)
    for i in (0, 12345, count - 1):
        assert (root / f"{i:05d}.dcm").read_bytes() == f"member {i}\n".encode()
    # The directory was not read again: only member regions (whole blocks of them) and
    # the first step of the sweep that reads jumping around an archive start.
    start_dir = zipfile.ZipFile(buf).start_dir
    ranges = [e["range"].removeprefix("bytes=").split("-") for e in requests_since(site, mark)]
    assert ranges and all(int(first) < start_dir for first, _ in ranges), ranges
    all_alive(mount)


# ---- the demo's DICOM archives, against pydicom and the official SDK ------------------


def demo_acquisition(mounted: Mount, fw: Any, rel: str) -> tuple[Any, str]:
    """The SDK's acquisition holding the archive at `rel`, and the archive's file name."""
    acq_id = os.getxattr(mounted / str(Path(rel).parent), "user.flywheel.id").decode()
    name = os.getxattr(mounted / rel, "user.flywheel.name").decode()
    return fw.get_acquisition(acq_id), name


def test_pydicom_reads_a_dicom_member_from_the_mount(
    mounted: Mount, demo_tree: SiteTree, fw: Any
) -> None:
    rel, archive = demo_archive(demo_tree)
    acquisition, name = demo_acquisition(mounted, fw, rel)
    member = next(n for n in archive.namelist() if n.endswith(".dcm"))
    ds = pydicom.dcmread(mounted / (rel + ".d") / member)
    ref = pydicom.dcmread(io.BytesIO(acquisition.read_file_zip_member(name, member)))
    assert ds.PatientID == ref.PatientID and ds.PatientID
    assert (ds.Rows, ds.Columns) == (ref.Rows, ref.Columns) and ds.Rows > 0
    assert ds.SOPInstanceUID == ref.SOPInstanceUID
    assert ds.PixelData == ref.PixelData
    assert mounted.alive


def test_every_member_of_a_demo_archive_equals_the_sdks(
    mounted: Mount, demo_tree: SiteTree, fw: Any
) -> None:
    rel, archive = demo_archive(demo_tree)
    acquisition, name = demo_acquisition(mounted, fw, rel)
    members = [i.filename for i in archive.infolist() if not i.is_dir()]
    assert members
    root = mounted / (rel + ".d")
    for member in members:
        assert (root / member).read_bytes() == acquisition.read_file_zip_member(name, member)
    assert set(member_files(root)) == set(members)
    assert mounted.alive
