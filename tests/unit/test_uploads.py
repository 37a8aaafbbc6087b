"""Tests of the write path's staging spool and uploader, on real files in tmp_path.

The upload is a plain callable (``FakeSite``) that records what it was given and fails
when told to: no HTTP here, the client's own tests cover that.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import math
import os
import random
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pytest

from fwfs.errors import (
    AlreadyExists,
    FwfsError,
    PermissionDenied,
    RemoteError,
    RemoteUnavailable,
    StaleFile,
)
from fwfs.models import Json
from fwfs.uploads import (
    RetryPolicy,
    SendBudget,
    Spool,
    SpoolBusy,
    StagedFile,
    Uploader,
    UploadTarget,
)

MiB = 1 << 20
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Received:
    target: UploadTarget
    size: int
    sha256: str
    data: bytes | None  # kept for small uploads only


class FakeSite:
    """The upload callable: reads what it is given in 1 MiB chunks, like a streaming client.

    ``fail`` uploads fail first (``math.inf``: all of them) with ``error()``; ``on_read`` is
    called with the bytes read so far, so a test can stall or crash mid-upload.
    """

    def __init__(
        self,
        *,
        fail: float = 0,
        error: Callable[[], FwfsError] = lambda: RemoteUnavailable("HTTP 503 after retries"),
        on_read: Callable[[int], None] | None = None,
    ) -> None:
        self.received: list[Received] = []
        self.fail = fail
        self.error = error
        self.on_read = on_read

    def __call__(
        self, target: UploadTarget, fileobj: BinaryIO, size: int, budget: SendBudget
    ) -> Json:
        digest = hashlib.sha256()
        kept = bytearray()
        got = 0
        while got < size:
            chunk = fileobj.read(min(MiB, size - got))
            assert chunk, "short staged file"
            digest.update(chunk)
            if size <= MiB:
                kept += chunk
            got += len(chunk)
            if self.on_read is not None:
                self.on_read(got)
        self.received.append(Received(target, size, digest.hexdigest(), bytes(kept)))
        if self.fail > 0:
            self.fail -= 1
            raise self.error()
        return {"name": target.name, "size": size, "hash": digest.hexdigest()}

    @property
    def names(self) -> list[str]:
        return [r.target.name for r in self.received]


def target(name: str = "scan.nii.gz", cid: str = "6b0c5cfdafda0ce900000001") -> UploadTarget:
    return UploadTarget("acquisition", cid, name, f"grp/proj/sub/ses/acq/{name}")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    s = Spool(tmp_path / "spool")
    yield s
    s.close()


def uploader(
    spool: Spool, site: FakeSite, *, attempts: int = 3, backoff: float = 1.0
) -> tuple[Uploader, list[float]]:
    """An Uploader whose sleeps are recorded instead of slept."""
    sleeps: list[float] = []
    retry = RetryPolicy(attempts=attempts, backoff=backoff)
    up = Uploader(spool, site, retry=retry, sleep=sleeps.append)
    return up, sleeps


# Staged bytes: a local file at offsets.


def test_write_read_at_offsets_and_sparse(spool: Spool) -> None:
    staged = spool.create(target())
    assert (staged.size, staged.dirty, staged.writers) == (0, True, 1)
    assert staged.write(0, b"hello world") == 11
    assert staged.write(6, b"WORLD!") == 6
    assert staged.read(0, 100) == b"hello WORLD!"
    assert staged.read(6, 3) == b"WOR"
    assert staged.read(50, 10) == b""
    hole = 64 * MiB
    staged.write(hole, b"tail")
    assert staged.size == hole + 4
    assert staged.read(hole - 2, 10) == b"\0\0tail"
    assert staged.read(1000, 4) == b"\0" * 4
    # The hole is sparse on disk: staging costs what was written, not the offset.
    assert os.stat(staged.data_path).st_blocks * 512 < MiB


def test_truncate_shrinks_and_extends_with_zeros(spool: Spool) -> None:
    staged = spool.create(target())
    staged.write(0, b"0123456789")
    staged.truncate(4)
    assert (staged.size, staged.read(0, 100)) == (4, b"0123")
    staged.truncate(8)
    assert staged.read(0, 100) == b"0123\0\0\0\0"
    assert os.path.getsize(staged.data_path) == 8
    with pytest.raises(FwfsError) as info:
        staged.truncate(-1)
    assert info.value.errno == errno.EINVAL


def test_truncate_from_copies_and_stays_clean_until_written(spool: Spool) -> None:
    site = FakeSite()
    up, _ = uploader(spool, site)
    old = bytes(range(256)) * 10_000
    unchanged = spool.create(target("a"), truncate_from=io.BytesIO(old))
    assert (unchanged.size, unchanged.dirty) == (len(old), False)
    assert unchanged.read(100, 5) == old[100:105]
    assert up.release(unchanged) is None  # opened for writing, closed unchanged: no version
    assert site.received == [] and unchanged.finished
    changed = spool.create(target("b"), truncate_from=io.BytesIO(old))
    changed.write(0, b"NEW")
    assert up.release(changed) is not None
    assert site.received[0].sha256 == sha(b"NEW" + old[3:])


def test_failed_copy_leaves_nothing_behind(spool: Spool) -> None:
    class Broken(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, b: object) -> int:
            raise RemoteUnavailable("GET …: connection reset")

    with pytest.raises(RemoteUnavailable):
        spool.create(target(), truncate_from=Broken())  # type: ignore[arg-type]
    assert list(spool.staging.iterdir()) == [] and list(spool.journal.iterdir()) == []


def test_concurrent_writes_of_disjoint_ranges(spool: Spool) -> None:
    staged = spool.create(target())
    block = 64 * 1024

    def writer(k: int) -> None:
        for i in range(k, 64, 8):
            staged.write(i * block, bytes([i]) * block)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert staged.read(0, 64 * block) == b"".join(bytes([i]) * block for i in range(64))


# Commits.


def test_empty_file_is_uploaded(spool: Spool) -> None:
    site = FakeSite()
    up, _ = uploader(spool, site)
    staged = spool.create(target("empty"))
    result = up.release(staged)
    assert result == {"name": "empty", "size": 0, "hash": sha(b"")}
    assert [(r.target.name, r.size) for r in site.received] == [("empty", 0)]
    assert staged.finished
    assert files_under(spool.staging) == set() and files_under(spool.journal) == set()


def test_commit_streams_64_mib_in_constant_memory(spool: Spool) -> None:
    staged = spool.create(target("big.nii"))
    rng = random.Random(7)
    digest = hashlib.sha256()
    for i in range(64):
        chunk = rng.randbytes(MiB)
        digest.update(chunk)
        staged.write(i * MiB, chunk)
    site = FakeSite()
    up, _ = uploader(spool, site)
    tracemalloc.start()
    try:
        up.release(staged)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert site.received[0].size == 64 * MiB
    assert site.received[0].sha256 == digest.hexdigest()
    assert peak < 8 * MiB, f"peak {peak / MiB:.1f} MiB for a 64 MiB upload"


def test_transient_failures_are_retried_with_fresh_reads(spool: Spool) -> None:
    site = FakeSite(fail=2)
    up, sleeps = uploader(spool, site, attempts=3, backoff=0.5)
    staged = spool.create(target())
    staged.write(0, b"payload")
    assert up.release(staged) == {"name": "scan.nii.gz", "size": 7, "hash": sha(b"payload")}
    # Every attempt streamed the whole file from its start.
    assert [r.data for r in site.received] == [b"payload"] * 3
    assert sleeps == [0.5, 1.0]
    assert files_under(spool.root / "recovery") == set()


def recovery_files(spool: Spool) -> dict[str, Path]:
    return {p.suffix: p for p in spool.recovery.iterdir()}


@pytest.mark.parametrize(
    ("error", "expected_errno", "expected_calls"),
    [
        (lambda: PermissionDenied("POST /api/acquisitions/x/files: HTTP 403"), errno.EACCES, 1),
        (lambda: AlreadyExists("POST …: HTTP 409"), errno.EEXIST, 1),
        (lambda: RemoteUnavailable("POST …: HTTP 503 after retries"), errno.EIO, 3),
        (lambda: RemoteError("POST …: HTTP 500"), errno.EIO, 3),
    ],
)
def test_final_failure_keeps_exact_bytes_in_recovery_and_says_where(
    spool: Spool,
    caplog: pytest.LogCaptureFixture,
    error: Callable[[], FwfsError],
    expected_errno: int,
    expected_calls: int,
) -> None:
    site = FakeSite(fail=math.inf, error=error)
    up, _ = uploader(spool, site, attempts=3)
    staged = spool.create(target("../../etc/passwd"))
    payload = os.urandom(300_000)
    staged.write(0, payload)
    with caplog.at_level(logging.WARNING, logger="fwfs.uploads"), pytest.raises(FwfsError) as info:
        up.release(staged)
    assert info.value.errno == expected_errno
    assert len(site.received) == expected_calls
    files = recovery_files(spool)
    assert set(files) == {".data", ".json"}
    assert files[".data"].read_bytes() == payload
    record = json.loads(files[".json"].read_text())
    assert record["state"] == "failed"
    assert record["target"]["name"] == "../../etc/passwd"
    assert record["attempts"] == expected_calls and record["errno"] == expected_errno
    assert record["size"] == len(payload)
    assert files_under(spool.staging) == set() and files_under(spool.journal) == set()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(files[".data"]) in m for m in warnings), warnings
    assert staged.finished
    with pytest.raises(StaleFile):
        staged.write(0, b"x")


def test_unexpected_exception_from_upload_is_eio_and_keeps_bytes(spool: Spool) -> None:
    def broken(target: UploadTarget, fileobj: BinaryIO, size: int, budget: SendBudget) -> Json:
        raise KeyError("bug")

    up = Uploader(spool, broken, sleep=lambda s: None)
    staged = spool.create(target())
    staged.write(0, b"abc")
    with pytest.raises(FwfsError) as info:
        up.release(staged)
    assert info.value.errno == errno.EIO
    assert recovery_files(spool)[".data"].read_bytes() == b"abc"


def test_last_writer_uploads_once(spool: Spool) -> None:
    site = FakeSite()
    up, _ = uploader(spool, site)
    staged = spool.create(target())
    staged.open()  # a second handle
    staged.write(0, b"one")
    assert up.release(staged) is None and site.received == []
    staged.write(3, b"two")
    assert up.release(staged) is not None
    assert [r.data for r in site.received] == [b"onetwo"]
    with pytest.raises(StaleFile):
        staged.open()


def test_flush_commit_then_release_uploads_once(spool: Spool) -> None:
    """FUSE's order: flush (close(2), which must get the errno) commits, release drops."""
    site = FakeSite()
    up, _ = uploader(spool, site)
    staged = spool.create(target())
    staged.write(0, b"data")
    assert up.commit(staged) is not None
    assert not staged.dirty and staged.state == "clean"
    assert up.commit(staged) is None  # nothing new: no second version
    assert up.release(staged) is None
    assert len(site.received) == 1 and staged.finished
    assert files_under(spool.staging) == set() and files_under(spool.journal) == set()


def test_fsync_commit_with_writer_open_then_more_writes(spool: Spool) -> None:
    site = FakeSite()
    up, _ = uploader(spool, site)
    staged = spool.create(target())
    staged.write(0, b"v1")
    staged.fsync()
    up.commit(staged)
    staged.write(2, b"+v2")
    assert staged.dirty and staged.state == "staged"
    up.release(staged)
    assert [r.data for r in site.received] == [b"v1", b"v1+v2"]


def test_failed_flush_then_release_goes_to_recovery_without_retrying(spool: Spool) -> None:
    site = FakeSite(fail=math.inf)
    up, _ = uploader(spool, site, attempts=2)
    staged = spool.create(target())
    staged.write(0, b"important")
    with pytest.raises(RemoteUnavailable):
        up.commit(staged)  # the program's close() sees EIO
    # Still open (release not yet called): the bytes stay staged, marked as complete.
    assert staged.state == "synced" and staged.read(0, 9) == b"important"
    assert recovery_files(spool) == {}
    with pytest.raises(RemoteUnavailable):
        up.release(staged)
    assert len(site.received) == 2  # release did not upload again
    assert recovery_files(spool)[".data"].read_bytes() == b"important"


def test_failed_fsync_commit_is_retried_after_more_writes(spool: Spool) -> None:
    site = FakeSite(fail=1)
    up, _ = uploader(spool, site, attempts=1)
    staged = spool.create(target())
    staged.write(0, b"a")
    with pytest.raises(RemoteUnavailable):
        up.commit(staged)
    staged.write(1, b"b")
    assert up.release(staged) is not None
    assert [r.data for r in site.received] == [b"a", b"ab"]
    assert recovery_files(spool) == {}


def test_retarget_before_upload(spool: Spool) -> None:
    site = FakeSite()
    up, _ = uploader(spool, site)
    staged = spool.create(target(".scan.nii.gz.XXXXXX"))
    staged.write(0, b"rsync")
    staged.retarget(target("scan.nii.gz"))
    journal = json.loads(spool.journal_path(staged.entry).read_text())
    assert journal["target"]["name"] == "scan.nii.gz"
    up.release(staged)
    assert site.names == ["scan.nii.gz"]


def test_retarget_after_upload_makes_it_dirty_again(spool: Spool) -> None:
    site = FakeSite()
    up, _ = uploader(spool, site)
    staged = spool.create(target("tmp"))
    staged.write(0, b"x")
    up.commit(staged)
    staged.retarget(target("final"))
    assert staged.dirty
    up.release(staged)
    assert site.names == ["tmp", "final"]


def test_discard_never_uploads(spool: Spool) -> None:
    site = FakeSite()
    up, _ = uploader(spool, site)
    staged = spool.create(target())
    staged.write(0, b"swap file")
    staged.discard()  # unlinked while open: still readable by its holder
    assert staged.read(0, 4) == b"swap"
    assert up.commit(staged) is None
    assert up.release(staged) is None
    assert site.received == [] and staged.finished
    assert files_under(spool.staging) == set() and files_under(spool.journal) == set()


def test_writes_wait_for_an_upload_in_progress(spool: Spool) -> None:
    started, go = threading.Event(), threading.Event()

    def stall(got: int) -> None:
        started.set()
        assert go.wait(10)

    site = FakeSite(on_read=stall)
    up, _ = uploader(spool, site)
    staged = spool.create(target())
    staged.write(0, b"before")
    committer = threading.Thread(target=up.commit, args=(staged,))
    committer.start()
    assert started.wait(10)
    wrote = threading.Event()

    def write_after() -> None:
        staged.write(6, b"after")
        wrote.set()

    writer = threading.Thread(target=write_after)
    writer.start()
    assert staged.read(0, 6) == b"before"  # reads are not blocked by the upload
    assert not wrote.wait(0.2)
    go.set()
    committer.join()
    writer.join()
    assert site.received[0].data == b"before"
    assert staged.dirty  # the later write is not lost in the "clean" mark
    up.release(staged)
    assert site.received[1].data == b"beforeafter"


def test_drain_waits_for_a_commit_in_progress(spool: Spool) -> None:
    started, go = threading.Event(), threading.Event()

    def stall(got: int) -> None:
        started.set()
        assert go.wait(10)

    site = FakeSite(on_read=stall)
    up, _ = uploader(spool, site)
    staged = spool.create(target())
    staged.write(0, b"x" * 10)
    assert up.drain(0) is True
    committer = threading.Thread(target=up.release, args=(staged,))
    committer.start()
    assert started.wait(10)
    assert up.active == 1
    assert up.drain(0.1) is False
    pend = up.pending()
    assert [(p.state, p.where, p.size) for p in pend] == [("uploading", "staging", 10)]
    done: list[bool] = []
    waiter = threading.Thread(target=lambda: done.append(up.drain(10)))
    waiter.start()
    time.sleep(0.05)
    assert done == []
    go.set()
    waiter.join()
    committer.join()
    assert done == [True] and up.active == 0 and up.pending() == []


# Disk layout, names and permissions.


@pytest.mark.parametrize(
    "name",
    ["../../../escape", "a/b/c", "/etc/passwd", "nul\x00byte", "脳" * 100, "x" * 300, ".", ".."],
)
def test_flywheel_names_never_choose_disk_paths(tmp_path: Path, name: str) -> None:
    root = tmp_path / "deep" / "spool"
    spool = Spool(root)
    before = files_under(tmp_path)
    site = FakeSite(fail=math.inf, error=lambda: PermissionDenied("no"))
    up = Uploader(spool, site, sleep=lambda s: None)
    staged = spool.create(UploadTarget("session", "../cid/..", name, name))
    staged.write(0, b"bytes")
    for p in (staged.data_path, spool.journal_path(staged.entry)):
        assert p.parent.parent == root and len(p.stem) == 32
    with pytest.raises(PermissionDenied):
        up.release(staged)
    after = files_under(tmp_path) - before
    assert all(p.startswith("deep/spool/recovery/") for p in after), after
    assert {Path(p).suffix for p in after} == {".data", ".json"}
    assert site.names == [name]  # the name reaches the upload unchanged
    # ... and survives the journal.
    assert [r.target.name for r in up.recover() if r.target] == [name]
    spool.close()


def test_private_permissions_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        spool = Spool(tmp_path / "spool")
        site = FakeSite(fail=math.inf, error=lambda: PermissionDenied("no"))
        up = Uploader(spool, site, sleep=lambda s: None)
        kept = spool.create(target("kept"))
        kept.write(0, b"x")
        failed = spool.create(target("failed"))
        with pytest.raises(PermissionDenied):
            up.release(failed)
    finally:
        os.umask(old)
    for d in (spool.root, spool.staging, spool.journal, spool.recovery):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    files = [p for p in spool.root.rglob("*") if p.is_file()]
    assert {p.parent.name for p in files} >= {"staging", "journal", "recovery"}
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    spool.close()


def test_existing_root_is_made_private(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    root.mkdir(mode=0o755)
    os.chmod(root, 0o755)
    Spool(root).close()
    assert stat.S_IMODE(root.stat().st_mode) == 0o700


def test_a_symlinked_subdirectory_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    root.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (root / "staging").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(FwfsError) as info:
        Spool(root)
    assert info.value.errno == errno.EINVAL


def test_one_spool_per_directory(tmp_path: Path) -> None:
    first = Spool(tmp_path / "spool")
    with pytest.raises(SpoolBusy) as info:
        Spool(tmp_path / "spool")
    assert info.value.errno == errno.EBUSY
    first.close()
    Spool(tmp_path / "spool").close()


def test_journal_records_the_state_of_each_step(spool: Spool) -> None:
    def journal(staged: StagedFile) -> Json:
        value: Json = json.loads(spool.journal_path(staged.entry).read_text())
        return value

    staged = spool.create(target())
    rec = journal(staged)
    assert (rec["state"], rec["id"], rec["attempts"]) == ("staged", staged.entry, 0)
    assert rec["target"] == target().to_json()
    staged.write(0, b"abc")
    staged.fsync()
    assert (journal(staged)["state"], journal(staged)["size"]) == ("synced", 3)
    up, _ = uploader(spool, FakeSite())
    up.commit(staged)
    assert journal(staged)["state"] == "clean"
    staged.write(0, b"z")
    assert journal(staged)["state"] == "staged"
    assert not list(spool.journal.glob("*.tmp"))


# Crashes: a daemon killed with uploads pending loses none of them.

CRASH = textwrap.dedent(
    """
    import json, os, random, signal, sys, time
    from pathlib import Path
    from fwfs.uploads import Spool, Uploader, UploadTarget

    root, name = Path(sys.argv[1]), json.loads(sys.argv[2])
    size, mode = int(sys.argv[3]), sys.argv[4]
    spool = Spool(root)
    staged = spool.create(UploadTarget("acquisition", "cid1", name, "p/" + name))
    data = random.Random(size).randbytes(size)
    for offset in range(0, size, 1 << 20):
        staged.write(offset, data[offset : offset + (1 << 20)])
    if mode == "fsync":
        staged.fsync()
    elif mode in ("uploading", "sending"):
        def upload(target, fileobj, n, budget):
            fileobj.read(n // 2)
            journal = spool.journal_path(staged.entry)
            deadline = time.monotonic() + 10
            # "uploading": die once the bytes are durable; "sending": at once.
            while mode == "uploading" and time.monotonic() < deadline:
                if json.loads(journal.read_text())["state"] == "uploading":
                    break
                time.sleep(0.01)
            os.kill(os.getpid(), signal.SIGKILL)
        Uploader(spool, upload).release(staged)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def crash(root: Path, name: str, size: int, mode: str) -> bytes:
    """Run a daemon-like process that stages a file, then dies with SIGKILL; its bytes."""
    proc = subprocess.run(
        [sys.executable, "-c", CRASH, str(root), json.dumps(name), str(size), mode],
        cwd=REPO,
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    return random.Random(size).randbytes(size)


@pytest.mark.parametrize("mode", ["fsync", "uploading"])
def test_killed_daemon_upload_is_finished_by_the_next_mount(tmp_path: Path, mode: str) -> None:
    root = tmp_path / "spool"
    data = crash(root, "fresh.nii", 3 * MiB + 5, mode)
    site = FakeSite()
    with Spool(root) as spool:
        assert [(p.state, p.size) for p in Uploader(spool, site).pending()] == [
            ("synced" if mode == "fsync" else "uploading", len(data))
        ]
        reports = Uploader(spool, site).recover()
    assert [(r.outcome, r.target and r.target.name) for r in reports] == [("uploaded", "fresh.nii")]
    assert site.received[-1].sha256 == sha(data)
    assert reports[0].result == {"name": "fresh.nii", "size": len(data), "hash": sha(data)}
    assert files_under(root / "staging") == set() and files_under(root / "journal") == set()
    assert files_under(root / "recovery") == set()


def test_killed_daemon_upload_follows_its_journal_state(tmp_path: Path) -> None:
    """Killed as the upload starts, the fsync of the bytes may or may not have finished:
    "uploading" (durable) is uploaded by the next mount, "sending" goes to recovery/."""
    root = tmp_path / "spool"
    data = crash(root, "early.nii", 2 * MiB, "sending")
    site = FakeSite()
    with Spool(root) as spool:
        [pending] = Uploader(spool, site).pending()
        assert pending.state in ("sending", "uploading")
        reports = Uploader(spool, site).recover()
    [report] = reports
    if pending.state == "uploading":
        assert report.outcome == "uploaded"
        assert site.received[-1].sha256 == sha(data)
    else:
        assert report.outcome == "incomplete" and site.received == []
        assert report.data_path is not None and report.data_path.read_bytes() == data


def test_killed_daemon_upload_that_fails_lands_in_recovery(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "spool"
    data = crash(root, "nul\x00../name", 1000, "fsync")
    site = FakeSite(fail=math.inf)
    with Spool(root) as spool, caplog.at_level(logging.WARNING, logger="fwfs.uploads"):
        reports = Uploader(
            spool, site, retry=RetryPolicy(attempts=2), sleep=lambda s: None
        ).recover()
    [report] = reports
    assert (report.outcome, report.errno, report.size) == ("failed", errno.EIO, 1000)
    assert report.target is not None and report.target.name == "nul\x00../name"
    assert report.data_path is not None and report.data_path.parent == root / "recovery"
    assert report.data_path.read_bytes() == data
    assert report.journal_path is not None
    assert json.loads(report.journal_path.read_text())["state"] == "failed"
    assert any(str(report.data_path) in r.getMessage() for r in caplog.records)
    assert len(site.received) == 2


def test_file_open_for_writing_at_the_kill_is_reported_not_uploaded(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    data = crash(root, "half-written", 2 * MiB, "open")
    site = FakeSite()
    with Spool(root) as spool:
        reports = Uploader(spool, site).recover()
    [report] = reports
    assert report.outcome == "incomplete" and site.received == []
    assert report.data_path is not None and report.data_path.read_bytes() == data


def test_in_process_crash_without_commit(tmp_path: Path) -> None:
    """The brief's variant: drop the objects without a commit, reopen the same root."""
    root = tmp_path / "spool"
    spool = Spool(root)
    staged = spool.create(target())
    staged.write(0, b"fsynced bytes")
    staged.fsync()
    spool.close()  # the lock goes with the process; nothing else is cleaned up
    del staged, spool
    site = FakeSite()
    with Spool(root) as again:
        [report] = Uploader(again, site).recover()
    assert report.outcome == "uploaded" and site.received[0].data == b"fsynced bytes"


def test_recovery_entries_are_listed_each_mount_and_retried_on_request(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "spool"
    with Spool(root) as spool:
        up = Uploader(spool, FakeSite(fail=math.inf), retry=RetryPolicy(attempts=1))
        staged = spool.create(target("lost"))
        staged.write(0, b"keep me")
        with pytest.raises(RemoteUnavailable):
            up.release(staged)
        assert [(p.where, p.state, p.last_error) for p in up.pending()] == [
            ("recovery", "failed", "HTTP 503 after retries")
        ]
    site = FakeSite()
    with Spool(root) as spool, caplog.at_level(logging.WARNING, logger="fwfs.uploads"):
        [kept] = Uploader(spool, site).recover()
        assert (kept.outcome, kept.error, kept.errno) == ("kept", "HTTP 503 after retries", 5)
        assert site.received == []
        assert any(str(kept.data_path) in r.getMessage() for r in caplog.records)
        [again] = Uploader(spool, site).recover(retry_recovery=True)
    assert again.outcome == "uploaded" and site.received[0].data == b"keep me"
    assert files_under(root / "recovery") == set()


def test_recover_finishes_an_interrupted_move_and_skips_live_files(spool: Spool) -> None:
    # A crash after recovery/<id>.json and the rename, before journal/<id>.json was removed.
    site = FakeSite(fail=math.inf, error=lambda: PermissionDenied("no"))
    up, _ = uploader(spool, site)
    staged = spool.create(target())
    staged.write(0, b"abc")
    with pytest.raises(PermissionDenied):
        up.release(staged)
    journal = spool.journal_path(staged.entry)
    journal.write_text(spool.journal_path(staged.entry, "recovery").read_text())
    live = spool.create(target("live"))
    live.write(0, b"being written")
    reports = Uploader(spool, FakeSite()).recover()
    assert [(r.entry, r.outcome) for r in reports] == [(staged.entry, "kept")]
    assert not journal.exists()
    assert live.read(0, 100) == b"being written"
    assert spool.journal_path(live.entry).exists()


def test_unreadable_journal_and_orphan_bytes_are_kept(spool: Spool) -> None:
    a, b = "a" * 32, "b" * 32
    spool.data_path(a).write_bytes(b"orphan with garbage journal")
    spool.journal_path(a).write_text("{not json")
    spool.data_path(b).write_bytes(b"orphan without journal")
    (spool.staging / "not-ours.data").write_bytes(b"ignored")
    reports = Uploader(spool, FakeSite()).recover()
    assert sorted((r.entry, r.outcome, r.target) for r in reports) == [
        (a, "incomplete", None),
        (b, "incomplete", None),
    ]
    assert spool.data_path(a, "recovery").read_bytes() == b"orphan with garbage journal"
    assert (spool.recovery / f"{a}.unreadable").read_text() == "{not json"
    assert spool.data_path(b, "recovery").read_bytes() == b"orphan without journal"
    assert (spool.staging / "not-ours.data").exists()


def test_journal_without_bytes_is_dropped(spool: Spool) -> None:
    # A crash between the journal entry and the data file of create, or after an upload
    # removed the data and before it removed the journal: nothing left to do either way.
    entry = "c" * 32
    record = {"id": entry, "state": "uploading", "target": target().to_json()}
    spool.journal_path(entry).write_text(json.dumps(record))
    assert Uploader(spool, FakeSite()).recover() == []
    assert not spool.journal_path(entry).exists()


def test_a_move_to_recovery_cut_short_is_finished_not_uploaded(spool: Spool) -> None:
    # A crash after recovery/<id>.json was written, before the bytes were renamed: the
    # program was told the upload failed, so the next mount must not upload them behind
    # its back.
    staged = spool.create(target())
    staged.write(0, b"told it failed")
    staged.fsync()  # journal/<id>.json says "synced": uploaded after a crash, normally
    record = json.loads(spool.journal_path(staged.entry).read_text())
    spool.journal_path(staged.entry, "recovery").write_text(
        json.dumps({**record, "state": "failed", "last_error": "HTTP 403"})
    )
    spool._forget(staged.entry)  # as if this process had died
    site = FakeSite()
    [report] = Uploader(spool, site).recover()
    assert (report.outcome, report.error) == ("kept", "HTTP 403")
    assert site.received == []
    assert spool.data_path(staged.entry, "recovery").read_bytes() == b"told it failed"
    assert files_under(spool.staging) == set() and files_under(spool.journal) == set()
