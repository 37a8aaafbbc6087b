"""docs/SEMANTICS.md, *Writes*, *Nothing is lost* and *Memory*: failed uploads fail close()
and keep their bytes in recovery/; a daemon killed mid-upload or mid-write; `fwfs unmount`
waits for uploads; one daemon per spool; a 1 GiB upload in flat memory.

A failed close(), what recovery/ then holds and the next mount keeping it, and a file being
written when the daemon died, run in both tiers: tests/writes/test_write_files.py.

The sandbox's fault switch (`POST /sandbox/faults {"fail_uploads": N}`) makes the next N
uploads answer 503; fwfs tries an upload three times in all.
"""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from mountkit import (
    ACQ,
    Mount,
    Scratch,
    fusermount,
    fwfs,
    is_mounted,
    quiet_mark,
    recovery_entries,
    requests_since,
    spool_journal,
    uploads,
    wait_for,
)

pytestmark = pytest.mark.timeout(120)


def with_spool(
    mount_site: Callable[..., Mount], scratch: Scratch, spool: Path, *args: str
) -> Mount:
    """A mount of `scratch` spooling to `spool` (`args`: further options)."""
    return mount_site(scratch.site, args=["--spool-dir", str(spool), *args])


def fail_into_recovery(
    scratch: Scratch, mount_site: Callable[..., Mount], spool: Path, name: str, body: bytes
) -> None:
    """On a mount spooling to `spool`: write `name` into ACQ with every upload attempt
    failing (close() fails), wait for its bytes in recovery/, then `fwfs unmount`."""
    mount = with_spool(mount_site, scratch, spool)
    scratch.site.set_faults(fail_uploads=3)
    with pytest.raises(OSError):
        (mount / ACQ / name).write_bytes(body)
    wait_for(lambda: bool(recovery_entries(mount.spool)), what=f"{name} in recovery/")
    assert fwfs("unmount", str(mount.path), timeout=120).returncode == 0


def uploading(spool: Path) -> bool:
    return any(entry.get("state") == "uploading" for entry in spool_journal(spool))


# ---- a failed upload ----------------------------------------------------------------------


def test_retry_failed_uploads_uploads_what_recovery_holds(
    scratch: Scratch, mount_site: Callable[..., Mount], tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    fail_into_recovery(
        scratch, mount_site, spool, "again.txt", b"upload me when the site is back\n"
    )
    second = with_spool(mount_site, scratch, spool, "--retry-failed-uploads")
    wait_for(lambda: "again.txt" in scratch.files(scratch.acquisition), what="the retried upload")
    assert scratch.read(scratch.acquisition, "again.txt") == (b"upload me when the site is back\n")
    # Uploaded, the entry leaves recovery/, and the file is listed through the mount.
    wait_for(lambda: not recovery_entries(spool), what="recovery/ emptied")
    wait_for(lambda: "again.txt" in os.listdir(second / ACQ), what="again.txt listed")


def test_a_failed_cp_exits_non_zero(scratch: Scratch, mount: Mount, tmp_path: Path) -> None:
    local = tmp_path / "scan.bin"
    local.write_bytes(os.urandom(100_000))
    scratch.site.set_faults(fail_uploads=3)
    done = subprocess.run(
        ["cp", str(local), str(mount / ACQ)], capture_output=True, timeout=60, check=False
    )
    assert done.returncode != 0
    assert b"Input/output error" in done.stderr
    wait_for(lambda: bool(recovery_entries(mount.spool)), what="scan.bin in recovery/")
    [(record, data)] = recovery_entries(mount.spool)
    assert data == local.read_bytes() and record["target"]["name"] == "scan.bin"


def test_an_upload_that_fails_twice_succeeds_the_third_time(scratch: Scratch, mount: Mount) -> None:
    mark = quiet_mark(scratch.site)
    scratch.site.set_faults(fail_uploads=2)
    (mount / ACQ / "third.txt").write_bytes(b"third time lucky\n")  # close() succeeds
    assert scratch.read(scratch.acquisition, "third.txt") == b"third time lucky\n"
    statuses = [e["status"] for e in uploads(requests_since(scratch.site, mark))]
    assert statuses == [503, 503, 200]
    assert recovery_entries(mount.spool) == []


# ---- a daemon that dies -------------------------------------------------------------------


def test_an_upload_cut_short_by_a_kill_is_finished_by_the_next_mount(
    scratch: Scratch, mount_site: Callable[..., Mount], tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    first = with_spool(mount_site, scratch, spool)
    local = tmp_path / "crash.bin"
    local.write_bytes(os.urandom(300_000))
    scratch.site.set_faults(fail_uploads=1000)  # every attempt fails: the upload is still running
    writer = subprocess.Popen(["cp", str(local), str(first / ACQ)], stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: uploading(spool), what="an upload in progress")
        first.kill()
    finally:
        writer.wait(timeout=30)
    scratch.site.set_faults(fail_uploads=0)
    assert "crash.bin" not in scratch.files(scratch.acquisition)
    second = with_spool(mount_site, scratch, spool)
    wait_for(
        lambda: "crash.bin" in scratch.files(scratch.acquisition),
        what="the next mount uploading crash.bin",
    )
    assert scratch.read(scratch.acquisition, "crash.bin") == local.read_bytes()
    wait_for(lambda: "crash.bin" in second.log(), what="a log line about crash.bin")
    assert recovery_entries(spool) == []


def test_one_daemon_per_spool_directory(
    scratch: Scratch, mount_site: Callable[..., Mount], tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    with_spool(mount_site, scratch, spool)
    mp = tmp_path / "second"
    mp.mkdir()
    done = fwfs("mount", str(mp), "--spool-dir", str(spool), key=scratch.site.api_key)
    if is_mounted(mp):
        fusermount(mp)
    assert done.returncode != 0
    assert str(spool) in done.stderr


# ---- unmount ------------------------------------------------------------------------------


def test_unmount_waits_for_a_running_upload(scratch: Scratch, mount: Mount, tmp_path: Path) -> None:
    local = tmp_path / "late.bin"
    local.write_bytes(os.urandom(500_000))
    scratch.site.set_faults(fail_uploads=2)  # two failures and backoffs: the upload takes seconds
    writer = subprocess.Popen(["cp", str(local), str(mount / ACQ)])
    try:
        wait_for(lambda: uploading(mount.spool), what="an upload in progress")
        done = fwfs("unmount", str(mount.path), timeout=120)
    finally:
        assert writer.wait(timeout=60) == 0
    assert done.returncode == 0, done.stderr
    assert not is_mounted(mount.path)
    # unmount returned: the upload had finished.
    assert scratch.read(scratch.acquisition, "late.bin") == local.read_bytes()


def test_unmount_right_after_touch_keeps_the_empty_file(scratch: Scratch, mount: Mount) -> None:
    scratch.site.set_faults(fail_uploads=1)  # one backoff: the release-time upload takes a second
    done = subprocess.run(
        [
            *("sh", "-c", 'touch "$1" && "$2" -m fwfs unmount "$3"', "sh"),
            *(str(mount / ACQ / "touched"), sys.executable, str(mount.path)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert not is_mounted(mount.path)
    files = scratch.files(scratch.acquisition)
    assert "touched" in files and files["touched"].size == 0


# ---- memory -------------------------------------------------------------------------------


def peak_rss(pid: int) -> int:
    """VmHWM, the process's peak resident set, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.fixture
def gib_file(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A 1 GiB local file (a repeating pseudo-random MiB, sparse-free) and its sha384."""
    path = tmp_path / "one-gib.bin"
    block = hashlib.sha512(b"fwfs").digest() * (1 << 14)  # 1 MiB
    digest = hashlib.sha384()
    with open(path, "wb") as f:
        for i in range(1024):
            chunk = i.to_bytes(8, "little") + block[8:]
            f.write(chunk)
            digest.update(chunk)
    yield path, digest.hexdigest()
    path.unlink(missing_ok=True)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_1_gib_upload_keeps_memory_flat(
    scratch: Scratch, mount_site: Callable[..., Mount], gib_file: tuple[Path, str]
) -> None:
    local, digest = gib_file
    mount = mount_site(scratch.site, cache_size="64M")
    os.listdir(mount / ACQ)
    before = peak_rss(mount.proc.pid)
    done = subprocess.run(
        ["cp", str(local), str(mount / ACQ / "big.bin")],
        capture_output=True,
        timeout=540,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    grown = peak_rss(mount.proc.pid) - before
    assert grown < 150 << 20, f"the daemon's peak RSS grew by {grown >> 20} MiB"
    entry = scratch.files(scratch.acquisition)["big.bin"]
    assert entry.size == 1 << 30
    assert entry.hash == f"v0-sha384-{digest}"
    assert list((mount.spool / "staging").glob("*.data")) == []  # nothing left behind


def test_a_full_spool_fails_the_write_and_uploads_nothing(
    scratch: Scratch,
    mount_site: Callable[..., Mount],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(small)], check=True)
    request.addfinalizer(lambda: subprocess.run(["umount", "-l", str(small)], check=False))
    mount = mount_site(scratch.site, args=["--spool-dir", str(small / "spool")])
    filler = small / "filler"
    filler.write_bytes(b"\0" * (5 << 19))  # 2.5 MiB of the 4
    mark = quiet_mark(scratch.site)
    fd = os.open(mount / ACQ / "too-big.bin", os.O_WRONLY | os.O_CREAT, 0o644)
    with pytest.raises(OSError) as info:
        for _ in range(8):
            os.write(fd, os.urandom(1 << 20))
    assert info.value.errno == errno.ENOSPC
    # Space again (another program freed some): still, what reached the spool is not the
    # file the program meant to write, and it was told so; close() repeats the error and
    # nothing is uploaded.
    filler.unlink()
    with pytest.raises(OSError) as info:
        os.close(fd)
    assert info.value.errno == errno.ENOSPC
    assert uploads(requests_since(scratch.site, mark, settle=0.5)) == []
    assert "too-big.bin" not in scratch.files(scratch.acquisition)
    assert mount.alive
    assert os.listdir(mount / ACQ) is not None
