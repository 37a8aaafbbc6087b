"""docs/SEMANTICS.md, *Writes*: files, in both tiers (`[model]`: a FlywheelFS driven directly;
`[mount]`: a real FUSE mount). A created file is listed while written and uploaded once at
close, empty files too; only the last writer uploads; new versions (O_TRUNC, copy-on-write,
O_APPEND, truncate); fsync uploads at once; a failed upload fails close() and its bytes
stay in recovery/, where the next daemon leaves them; so do those of a file being written
when its daemon died.

The SDK (`scratch.fw`) is the witness of what the site holds; the access log counts requests.
What one tier alone can show stays in its own module: the model's flush/release split and
a synced file a crashed daemon left (tests/fs/test_fs_writes.py), the tools and the
daemon's life (tests/mount/test_writes*.py).
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

import pytest
from mountkit import (
    changes,
    errno_of,
    quiet_mark,
    recovery_entries,
    requests_since,
    uploads,
    wait_for,
)
from targets import ModelTarget, Target
from tierkit import MakeTarget, Scratch, crash, downloads, model_of, mount_of, stop

pytestmark = pytest.mark.timeout(120)


def version(scratch: Scratch, container: object, name: str) -> int:
    return int(scratch.files(container)[name].version)


# ---- create, write, close -----------------------------------------------------------------


def test_a_new_file_is_listed_while_written_and_uploaded_once_at_close(
    scratch: Scratch, target: Target
) -> None:
    p = scratch.paths
    path = f"{p.acq}/new.bin"
    chunks = [os.urandom(100_000), os.urandom(70_000), os.urandom(5)]
    target.listdir(p.acq)
    mark = quiet_mark(scratch.site)
    fd = target.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        written = 0
        for chunk in chunks:
            assert target.write(fd, chunk) == len(chunk)
            written += len(chunk)
            # Listed, with its current size from the spool, by stat and by the listing.
            assert target.stat(path).size == written
            assert "new.bin" in target.listdir(p.acq)
            if fs := model_of(target):
                assert dict(fs.readdir(p.acq))["new.bin"].size == written
        # Not on the site before the close: no upload yet.
        assert uploads(requests_since(scratch.site, mark)) == []
        assert "new.bin" not in scratch.files(scratch.acquisition)
    finally:
        target.close(fd)
    # close() returned: the site has it, exactly as written, from one upload.
    files = scratch.files(scratch.acquisition)
    assert files["new.bin"].size == written and files["new.bin"].version == 1
    assert scratch.read(scratch.acquisition, "new.bin") == b"".join(chunks)
    assert len(uploads(requests_since(scratch.site, mark))) == 1
    assert target.read_file(path) == b"".join(chunks)
    assert target.stat(path).size == written


def test_files_can_be_created_in_every_container_directory(
    scratch: Scratch, target: Target
) -> None:
    p = scratch.paths
    where = {
        p.project: scratch.project,
        f"{p.project}/sub-01": scratch.subject,
        p.ses: scratch.session,
    }
    where[p.acq] = scratch.acquisition
    for folder, container in where.items():
        body = f"written into {folder}\n".encode()
        target.write_file(f"{folder}/made-here.txt", body)
        assert scratch.read(container, "made-here.txt") == body, folder


def test_empty_files_are_uploaded_when_released(scratch: Scratch, target: Target) -> None:
    p = scratch.paths
    mark = quiet_mark(scratch.site)
    # touch's open, then a shell's `: > e2` (O_TRUNC): neither writes a byte.
    target.close(target.open(f"{p.acq}/empty", os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK))
    target.write_file(f"{p.acq}/e2", b"")
    assert target.stat(f"{p.acq}/empty").size == 0
    # Uploaded when the last handle is released, which the kernel sends after close()
    # returns: wait for it, then check it happened once per file.
    wait_for(
        lambda: {"empty", "e2"} <= set(scratch.files(scratch.acquisition)),
        what="the empty files on the site",
    )
    files = scratch.files(scratch.acquisition)
    assert (files["empty"].size, files["e2"].size) == (0, 0)
    assert (files["empty"].version, files["e2"].version) == (1, 1)
    assert scratch.read(scratch.acquisition, "e2") == b""
    assert len(uploads(requests_since(scratch.site, mark))) == 2


def test_only_the_last_writer_uploads(scratch: Scratch, target: Target) -> None:
    p = scratch.paths
    path = f"{p.project}/two-writers.txt"
    mark = quiet_mark(scratch.site)
    first = target.open(path, os.O_WRONLY | os.O_CREAT)
    second = target.open(path, os.O_WRONLY)
    try:
        target.pwrite(first, b"from the first", 0)
        target.pwrite(second, b"FROM", 0)
        target.close(first)
        first = -1
        # One writer is still open: nothing uploaded yet.
        assert uploads(requests_since(scratch.site, mark)) == []
        target.pwrite(second, b"!", 14)
    finally:
        if first >= 0:
            target.close(first)
        target.close(second)
    assert scratch.read(scratch.project, "two-writers.txt") == b"FROM the first!"
    assert len(uploads(requests_since(scratch.site, mark))) == 1
    assert version(scratch, scratch.project, "two-writers.txt") == 1


def test_fsync_uploads_at_once_and_a_later_write_uploads_again(
    scratch: Scratch, target: Target
) -> None:
    p = scratch.paths
    path = f"{p.project}/synced.txt"
    mark = quiet_mark(scratch.site)
    fd = target.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        target.write(fd, b"first part\n")
        target.fsync(fd)
        # Uploaded before the close.
        assert len(uploads(requests_since(scratch.site, mark))) == 1
        assert scratch.read(scratch.project, "synced.txt") == b"first part\n"
        assert version(scratch, scratch.project, "synced.txt") == 1
        target.write(fd, b"second part\n")
    finally:
        target.close(fd)
    # The close uploads what changed since: a second version, and nothing more.
    assert version(scratch, scratch.project, "synced.txt") == 2
    assert scratch.read(scratch.project, "synced.txt") == b"first part\nsecond part\n"
    assert len(uploads(requests_since(scratch.site, mark))) == 2


# ---- new versions -------------------------------------------------------------------------


def test_o_trunc_writes_the_next_version_without_reading_the_old(
    scratch: Scratch, target: Target
) -> None:
    p = scratch.paths
    before = version(scratch, scratch.project, "notes.txt")
    mark = quiet_mark(scratch.site)
    fd = target.open(p.notes, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)  # open(path, "wb")
    try:
        assert target.stat(p.notes).size == 0
        target.write(fd, b"version two\n")
    finally:
        target.close(fd)
    entries = requests_since(scratch.site, mark)
    assert len(uploads(entries)) == 1
    assert downloads(entries) == []  # the old bytes were not needed
    after = scratch.files(scratch.project)
    assert sorted(after) == ["notes.txt"]  # same name, no second file
    assert after["notes.txt"].version == before + 1
    assert scratch.read(scratch.project, "notes.txt") == b"version two\n"


def test_an_open_for_writing_without_a_change_costs_nothing(
    scratch: Scratch, target: Target
) -> None:
    p = scratch.paths
    target.stat(p.notes)  # the kernel looks the path up before it opens
    mark = quiet_mark(scratch.site)
    appending = os.O_WRONLY | os.O_APPEND
    for flags in (os.O_WRONLY, os.O_RDWR, appending, appending | os.O_CREAT):
        fd = target.open(p.notes, flags)
        assert target.stat(p.notes).size == len(Scratch.NOTES)  # the site's version, while open
        target.close(fd)
    if model_of(target):
        # Copy-on-write is lazy: no download, no upload, no request at all. (On a mount
        # the kernel's own lookups may ask the site; they change nothing, as below says.)
        assert requests_since(scratch.site, mark) == []
    fd = target.open(p.notes, os.O_RDWR)
    try:
        assert target.pread(fd, 100, 0) == Scratch.NOTES
    finally:
        target.close(fd)
    assert changes(requests_since(scratch.site, mark)) == []
    assert version(scratch, scratch.project, "notes.txt") == 1


def test_a_write_in_the_middle_of_a_read_write_open_is_copy_on_write(
    scratch: Scratch, target: Target
) -> None:
    p = scratch.paths
    fd = target.open(p.notes, os.O_RDWR)
    try:
        # The site's bytes, before any change.
        assert target.pread(fd, 8, 0) == Scratch.NOTES[:8]
        assert target.pread(fd, 100, 0) == Scratch.NOTES
        mark = quiet_mark(scratch.site)
        target.pwrite(fd, b"XY", 4)
        assert len(downloads(requests_since(scratch.site, mark))) == 1  # the copy, at the write
        want = Scratch.NOTES[:4] + b"XY" + Scratch.NOTES[6:]
        assert target.pread(fd, 100, 0) == want
        assert target.stat(p.notes).size == len(Scratch.NOTES)
        target.pwrite(fd, b"V", 0)
    finally:
        target.close(fd)
    want = b"V" + want[1:]
    assert scratch.read(scratch.project, "notes.txt") == want
    assert version(scratch, scratch.project, "notes.txt") == 2
    assert target.read_file(p.notes) == want


def test_o_append_writes_at_the_end(scratch: Scratch, target: Target) -> None:
    p = scratch.paths
    fd = target.open(p.notes, os.O_WRONLY | os.O_CREAT | os.O_APPEND)  # a shell's `>>`
    try:
        assert target.stat(p.notes).size == len(Scratch.NOTES)
        target.write(fd, b"appended\n")
        assert target.stat(p.notes).size == len(Scratch.NOTES) + 9
    finally:
        target.close(fd)
    assert version(scratch, scratch.project, "notes.txt") == 2
    assert scratch.read(scratch.project, "notes.txt") == Scratch.NOTES + b"appended\n"


def test_truncate_of_a_closed_file_uploads_a_new_version_at_once(
    scratch: Scratch, target: Target
) -> None:
    p = scratch.paths
    mark = quiet_mark(scratch.site)
    target.truncate(p.notes, 7)
    assert len(uploads(requests_since(scratch.site, mark))) == 1
    assert version(scratch, scratch.project, "notes.txt") == 2
    assert scratch.read(scratch.project, "notes.txt") == Scratch.NOTES[:7]
    assert target.stat(p.notes).size == 7  # the site's new version
    target.truncate(p.notes, 10)  # longer: zeros at the end
    assert version(scratch, scratch.project, "notes.txt") == 3
    assert scratch.read(scratch.project, "notes.txt") == Scratch.NOTES[:7] + b"\0\0\0"
    assert target.stat(p.notes).size == 10
    mark = quiet_mark(scratch.site)
    target.truncate(p.notes, 0)
    entries = requests_since(scratch.site, mark)
    assert len(uploads(entries)) == 1
    assert downloads(entries) == []  # nothing of the old bytes is kept
    assert version(scratch, scratch.project, "notes.txt") == 4
    assert scratch.read(scratch.project, "notes.txt") == b""
    assert target.stat(p.notes).size == 0


# ---- a failed upload ----------------------------------------------------------------------


def test_a_failed_upload_fails_close_keeps_the_bytes_and_the_next_daemon_keeps_them(
    scratch: Scratch, make_target: MakeTarget, tmp_path: Path
) -> None:
    p = scratch.paths
    spool = tmp_path / "spool"
    target = make_target(spool=spool)
    body = os.urandom(200_000)
    mark = quiet_mark(scratch.site)
    scratch.site.set_faults(fail_uploads=3)  # every one of the uploader's three attempts fails
    fd = target.open(f"{p.acq}/lost.bin", os.O_WRONLY | os.O_CREAT)
    target.write(fd, body)
    assert errno_of(lambda: target.close(fd)) == errno.EIO
    attempts = uploads(requests_since(scratch.site, mark))
    assert [e["status"] for e in attempts] == [503, 503, 503]
    assert "lost.bin" not in scratch.files(scratch.acquisition)
    if isinstance(target, ModelTarget):
        # The release the kernel sends after close() fails too (no program sees it).
        assert len(target.release_errors) == 1
    # The bytes are kept, with the target beside them. (They move to recovery/ at the
    # release, which the kernel sends after close() has returned.)
    wait_for(lambda: bool(recovery_entries(spool)), what="lost.bin in recovery/")
    [(record, data)] = recovery_entries(spool)
    assert data == body
    assert record["state"] == "failed"
    assert record["target"]["name"] == "lost.bin"
    assert record["target"]["cid"] == scratch.acquisition.id
    kept = sorted(e.name for e in (spool / "recovery").iterdir())
    entry = kept[0].removesuffix(".data")
    assert kept == [f"{entry}.data", f"{entry}.json"]
    assert list((spool / "staging").iterdir()) == []
    # The release did not try the failed commit again; the file is not listed.
    assert len(uploads(requests_since(scratch.site, mark))) == 3
    wait_for(lambda: "lost.bin" not in target.listdir(p.acq), what="lost.bin unlisted")
    if mount := mount_of(target):
        # The log says where the bytes are.
        assert str(spool / "recovery" / f"{entry}.data") in mount.log()

    # The next daemon on this spool lists the entry as kept, and does not upload it.
    stop(target)
    mark = quiet_mark(scratch.site)
    again = make_target(spool=spool)
    if fs := model_of(again):
        assert fs.writes is not None
        reports = fs.writes.recover()  # what a mount does as it starts
        assert [(r.entry, r.outcome) for r in reports] == [(entry, "kept")]
        assert reports[0].target is not None and reports[0].target.name == "lost.bin"
    assert again.listdir(p.acq) == ["scan.zip"]
    if mount := mount_of(again):
        kept_path = str(spool / "recovery" / f"{entry}.data")
        wait_for(lambda: kept_path in mount.log(), what="the kept entry in the log")
    assert uploads(requests_since(scratch.site, mark)) == []
    assert (spool / "recovery" / f"{entry}.data").read_bytes() == body
    assert "lost.bin" not in scratch.files(scratch.acquisition)


def test_a_file_being_written_when_the_daemon_died_is_kept_not_uploaded(
    scratch: Scratch, make_target: MakeTarget, tmp_path: Path
) -> None:
    p = scratch.paths
    spool = tmp_path / "spool"
    first = make_target(spool=spool)
    fd = first.open(f"{p.acq}/half.bin", os.O_WRONLY | os.O_CREAT)
    first.write(fd, b"the first half\n")
    crash(first)  # still being written
    if mount_of(first):
        with contextlib.suppress(OSError):  # the daemon is gone: ENOTCONN
            first.close(fd)

    mark = quiet_mark(scratch.site)
    second = make_target(spool=spool)
    if fs := model_of(second):
        assert fs.writes is not None
        reports = fs.writes.recover()  # what a mount does as it starts
        assert [r.outcome for r in reports] == ["incomplete"]
        assert reports[0].data_path is not None
        assert reports[0].data_path.read_bytes() == b"the first half\n"
    wait_for(lambda: bool(recovery_entries(spool)), what="half.bin in recovery/")
    [(record, data)] = recovery_entries(spool)
    assert data == b"the first half\n"
    assert record["target"]["name"] == "half.bin"
    if mount := mount_of(second):
        [kept] = list((spool / "recovery").glob("*.data"))
        wait_for(lambda: str(kept) in mount.log(), what="the recovery path in the log")
    assert changes(requests_since(scratch.site, mark)) == []
    assert "half.bin" not in scratch.files(scratch.acquisition)
