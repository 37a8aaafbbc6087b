"""FlywheelFS writes, driven directly (no FUSE) against the sandbox: files.

docs/SEMANTICS.md, *Writes*, in the model's terms: a created file is staged and shown from the
spool, uploaded once at close (flush of the last writer), empty files at release, new versions
(O_TRUNC, copy-on-write, truncate, fsync), a failed upload kept in recovery/, and a crashed
daemon's finished file uploaded by the next one. The calls follow the FUSE adapter's protocol:
create/open, write, flush (close(2): its error is the program's), release.

The SDK (`scratch.fw`) is the witness of what the site holds; the access log counts requests.
Directories, deletes, renames, names and refusals: test_fs_writes_tree.py.
"""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from writekit import (
    MakeFs,
    Scratch,
    assert_on_site,
    changes,
    close,
    downloads,
    errno_of,
    names,
    read_all,
    set_faults,
    uploads,
)

from fwfs.client import FlywheelClient
from fwfs.errors import FwfsError
from fwfs.fs import FlywheelFS

pytestmark = pytest.mark.timeout(120)


# ---- create, write, close -----------------------------------------------------------------


def test_created_file_is_shown_from_the_spool_and_uploaded_once_at_close(
    scratch: Scratch, make_fs: MakeFs
) -> None:
    fs = make_fs()
    site, path = scratch.site, f"{scratch.acq_path}/notes.txt"
    fs.readdir(scratch.acq_path)
    mark = site.quiet_mark()
    fh = fs.create(path).fh
    assert fs.write(fh, 0, b"hello ") == 6
    assert fs.write(fh, 6, b"world") == 5
    # Written, not closed: listed with its size from the spool; not on the site.
    assert fs.getattr(path).size == 11
    assert dict(fs.readdir(scratch.acq_path))["notes.txt"].size == 11
    assert uploads(site.requests_since(mark)) == []
    assert "notes.txt" not in scratch.files()

    fs.flush(fh)
    assert len(uploads(site.requests_since(mark))) == 1
    assert scratch.data("notes.txt") == b"hello world"
    # Still open: the path is the spool's until the release.
    assert fs.getattr(path).size == 11
    assert "notes.txt" in names(fs, scratch.acq_path)

    mark = site.quiet_mark()
    fs.release(fh)
    listing = dict(fs.readdir(scratch.acq_path))
    file_id = fs.getxattr(path, "user.flywheel.file_id")
    version = fs.getxattr(path, "user.flywheel.version")
    # The release made the parent be listed again, once; nothing was uploaded again.
    after = site.requests_since(mark)
    assert [(e["method"], e["path"]) for e in after] == [("POST", "/api/resolve")]
    assert listing["notes.txt"].size == 11
    assert (file_id, version) == (scratch.files()["notes.txt"].file_id.encode(), b"1")


def test_a_close_long_after_the_last_config_costs_only_the_upload(
    scratch: Scratch, make_fs: MakeFs
) -> None:
    # The site's upload mode (GET /api/config) is trusted for 5 minutes; older than that,
    # it is asked again while the program writes, not after its close().
    fs = make_fs()
    site, path = scratch.site, f"{scratch.acq_path}/late.txt"
    fs.readdir(scratch.acq_path)
    # The model holds the site as a SiteClient; this test ages the real client's memory.
    client = fs.client
    assert isinstance(client, FlywheelClient)
    client.note_site_config({}, time.monotonic() - 3600)
    mark = site.quiet_mark()
    fh = fs.create(path).fh
    fs.write(fh, 0, b"written an hour after the mount asked")
    asked = site.wait_for_log(lambda e: e["path"] == "/api/config", since=mark, timeout=10)
    assert len(asked) == 1  # asked at the create, before any close
    mark = site.quiet_mark()
    close(fs, fh)
    assert [(e["method"], e["path"]) for e in site.requests_since(mark)] == [
        ("POST", f"/api/acquisitions/{scratch.acq.id}/files")
    ]
    assert scratch.data("late.txt") == b"written an hour after the mount asked"


def test_empty_created_file_uploads_at_release_not_at_flush(
    scratch: Scratch, make_fs: MakeFs
) -> None:
    fs = make_fs()
    site, path = scratch.site, f"{scratch.acq_path}/empty.txt"
    mark = site.quiet_mark()
    fh = fs.create(path).fh
    fs.flush(fh)  # a shell's own close of `> f`: nothing to upload yet
    assert uploads(site.requests_since(mark)) == []
    assert fs.getattr(path).size == 0
    fs.release(fh)
    assert len(uploads(site.requests_since(mark))) == 1
    assert scratch.files()["empty.txt"].size == 0
    assert scratch.data("empty.txt") == b""


def test_a_reader_open_across_the_upload_sees_the_uploaded_size(
    scratch: Scratch, make_fs: MakeFs
) -> None:
    fs = make_fs()
    path = f"{scratch.acq_path}/followed.txt"
    writer = fs.create(path).fh
    fs.write(writer, 0, b"12345")
    reader = fs.open(path, os.O_RDONLY).fh
    assert fs.read(reader, 0, 100) == b"12345"
    close(fs, writer)
    assert fs.getattr(path).size == 5
    assert fs.read(reader, 0, 100) == b"12345"
    fs.release(reader)
    assert fs.getattr(path).size == 5


def test_only_the_last_writer_uploads(scratch: Scratch, make_fs: MakeFs) -> None:
    fs = make_fs()
    site, path = scratch.site, f"{scratch.acq_path}/two.txt"
    mark = site.quiet_mark()
    first = fs.create(path).fh
    second = fs.open(path, os.O_WRONLY).fh
    fs.write(first, 0, b"from the first")
    close(fs, first)
    assert uploads(site.requests_since(mark)) == []  # the second writer is still open
    fs.write(second, 0, b"FROM")
    fs.flush(second)
    assert len(uploads(site.requests_since(mark))) == 1
    assert scratch.data("two.txt") == b"FROM the first"
    fs.release(second)
    assert len(uploads(site.requests_since(mark))) == 1
    assert scratch.files()["two.txt"].version == 1


# ---- new versions of existing files -------------------------------------------------------


def test_o_trunc_writes_the_next_version(scratch: Scratch, make_fs: MakeFs) -> None:
    old = scratch.put("data.txt", b"old contents, longer than the new")
    fs = make_fs()
    path = f"{scratch.acq_path}/data.txt"
    mark = scratch.site.quiet_mark()
    fh = fs.open(path, os.O_WRONLY | os.O_TRUNC).fh
    assert fs.getattr(path).size == 0
    fs.write(fh, 0, b"new")
    close(fs, fh)
    entries = scratch.site.requests_since(mark)
    assert len(uploads(entries)) == 1
    assert downloads(entries) == []  # the old bytes were not needed
    assert_on_site(scratch, "data.txt", b"new", old.version + 1)


def test_open_for_writing_without_change_costs_nothing(scratch: Scratch, make_fs: MakeFs) -> None:
    old = scratch.put("same.txt", b"unchanged")
    fs = make_fs()
    path = f"{scratch.acq_path}/same.txt"
    fs.getattr(path)  # the kernel looks the path up before it opens
    mark = scratch.site.quiet_mark()
    for flags in (os.O_WRONLY, os.O_RDWR, os.O_WRONLY | os.O_APPEND):
        fh = fs.open(path, flags).fh
        assert fs.getattr(path).size == 9  # the site's version, while open
        close(fs, fh)
    # Copy-on-write is lazy: no download, no upload, no request at all.
    assert scratch.site.requests_since(mark) == []
    assert scratch.files()["same.txt"].version == old.version


def put_and_open(
    scratch: Scratch, fs: FlywheelFS, name: str, data: bytes, flags: int
) -> tuple[Any, str, int]:
    """`name` uploaded through the SDK, then opened by `fs` with `flags`: the site's file
    record, the model's path, the handle."""
    old = scratch.put(name, data)
    path = f"{scratch.acq_path}/{name}"
    return old, path, fs.open(path, flags).fh


def test_o_rdwr_write_in_the_middle_is_copy_on_write(scratch: Scratch, make_fs: MakeFs) -> None:
    fs = make_fs()
    old, path, fh = put_and_open(scratch, fs, "cow.bin", b"0123456789", os.O_RDWR)
    assert fs.read(fh, 0, 100) == b"0123456789"  # the site's bytes, before any change
    mark = scratch.site.quiet_mark()
    fs.write(fh, 4, b"XY")
    assert len(downloads(scratch.site.requests_since(mark))) == 1  # the copy, at the write
    assert read_all(fs, fh) == b"0123XY6789"
    assert fs.getattr(path).size == 10
    close(fs, fh)
    assert_on_site(scratch, "cow.bin", b"0123XY6789", old.version + 1)


def test_o_append_writes_at_the_end(scratch: Scratch, make_fs: MakeFs) -> None:
    fs = make_fs()
    old, path, fh = put_and_open(scratch, fs, "log.txt", b"line 1\n", os.O_WRONLY | os.O_APPEND)
    # With O_APPEND the kernel writes at the size it was told.
    end = fs.getattr(path).size
    assert end == 7
    fs.write(fh, end, b"line 2\n")
    assert fs.getattr(path).size == 14
    close(fs, fh)
    assert_on_site(scratch, "log.txt", b"line 1\nline 2\n", old.version + 1)


def test_truncate_by_path_uploads_a_new_version_at_once(scratch: Scratch, make_fs: MakeFs) -> None:
    old = scratch.put("cut.txt", b"0123456789")
    fs = make_fs()
    path = f"{scratch.acq_path}/cut.txt"
    mark = scratch.site.quiet_mark()
    fs.truncate(path, 4)
    assert len(uploads(scratch.site.requests_since(mark))) == 1
    assert_on_site(scratch, "cut.txt", b"0123", old.version + 1)
    assert fs.getattr(path).size == 4  # listed again: the site's new version

    mark = scratch.site.quiet_mark()
    fs.truncate(path, 0)
    entries = scratch.site.requests_since(mark)
    assert len(uploads(entries)) == 1
    assert downloads(entries) == []  # nothing of the old bytes is kept
    assert_on_site(scratch, "cut.txt", b"", old.version + 2)
    assert fs.getattr(path).size == 0


def test_truncate_by_path_beyond_the_end_pads_with_zeros(scratch: Scratch, make_fs: MakeFs) -> None:
    scratch.put("grow.txt", b"abc")
    fs = make_fs()
    fs.truncate(f"{scratch.acq_path}/grow.txt", 6)
    assert scratch.data("grow.txt") == b"abc\0\0\0"


def test_fsync_uploads_and_a_later_write_uploads_again(scratch: Scratch, make_fs: MakeFs) -> None:
    fs = make_fs()
    site, path = scratch.site, f"{scratch.acq_path}/synced.txt"
    mark = site.quiet_mark()
    fh = fs.create(path).fh
    fs.write(fh, 0, b"first")
    fs.fsync(fh)
    assert len(uploads(site.requests_since(mark))) == 1
    assert_on_site(scratch, "synced.txt", b"first", 1)

    fs.write(fh, 5, b" and second")
    fs.flush(fh)
    assert len(uploads(site.requests_since(mark))) == 2
    assert_on_site(scratch, "synced.txt", b"first and second", 2)
    fs.release(fh)
    assert len(uploads(site.requests_since(mark))) == 2  # nothing new to upload


# ---- failures and crashes -----------------------------------------------------------------


def spool_entries(spool: Path, sub: str) -> list[str]:
    return sorted(p.name for p in (spool / sub).iterdir())


def start_writing(fs: FlywheelFS, path: str, data: bytes) -> int:
    """Create `path` and write `data` into it, not closed: the handle."""
    fh = fs.create(path).fh
    fs.write(fh, 0, data)
    return fh


def next_daemon(make_fs: MakeFs, *args: Any) -> tuple[FlywheelFS, list[Any]]:
    """A new model on the same spool, as the next daemon: it, and what its recovery did."""
    again = make_fs(*args)
    assert again.writes is not None
    return again, again.writes.recover()


def test_failed_upload_fails_close_and_keeps_the_bytes(
    private_scratch: Scratch, make_fs: MakeFs, spool_dir: Path
) -> None:
    scratch = private_scratch
    site, path = scratch.site, f"{scratch.acq_path}/lost.txt"
    fs = make_fs(site)
    fh = start_writing(fs, path, b"precious bytes")
    mark = site.quiet_mark()
    set_faults(site, 3)  # every one of the uploader's three attempts fails (1 s, 2 s backoff)
    assert errno_of(lambda: fs.flush(fh)) == errno.EIO
    attempts = uploads(site.requests_since(mark))
    assert [e["status"] for e in attempts] == [503, 503, 503]
    # release: the failed commit is not tried again; the bytes move to recovery/.
    with pytest.raises(FwfsError):
        fs.release(fh)
    assert len(uploads(site.requests_since(mark))) == 3
    assert "lost.txt" not in scratch.files()
    assert "lost.txt" not in names(fs, scratch.acq_path)

    kept = spool_entries(spool_dir, "recovery")
    assert len(kept) == 2
    entry = kept[0].removesuffix(".data")
    assert kept == [f"{entry}.data", f"{entry}.json"]
    assert (spool_dir / "recovery" / f"{entry}.data").read_bytes() == b"precious bytes"
    record = json.loads((spool_dir / "recovery" / f"{entry}.json").read_text())
    assert record["state"] == "failed"
    assert record["target"]["cid"] == scratch.acq.id
    assert record["target"]["name"] == "lost.txt"
    assert spool_entries(spool_dir, "staging") == []
    fs.close()

    # The next mount lists it, and does not upload it on its own.
    mark = site.quiet_mark()
    _again, reports = next_daemon(make_fs, site)
    assert [(r.entry, r.outcome) for r in reports] == [(entry, "kept")]
    assert reports[0].target is not None and reports[0].target.name == "lost.txt"
    assert uploads(site.requests_since(mark)) == []
    assert (spool_dir / "recovery" / f"{entry}.data").read_bytes() == b"precious bytes"
    assert "lost.txt" not in scratch.files()


def test_a_crashed_daemons_synced_file_is_uploaded_by_the_next(
    scratch: Scratch, make_fs: MakeFs, spool_dir: Path
) -> None:
    site, path = scratch.site, f"{scratch.acq_path}/survivor.txt"
    fs = make_fs()
    assert fs.writes is not None
    start_writing(fs, path, b"made it")
    pending = fs.writes.pending(path)
    assert pending is not None
    # A completion point the site has not seen: as if killed after fsync, before the upload.
    pending.staged.fsync()
    assert pending.staged.state == "synced"
    # Killed: no flush, no release, no close; only the spool's lock goes with the process.
    fs.writes.spool.close()
    assert "survivor.txt" not in scratch.files()

    mark = site.quiet_mark()
    again, reports = next_daemon(make_fs)
    assert [(r.target.name if r.target else None, r.outcome) for r in reports] == [
        ("survivor.txt", "uploaded")
    ]
    assert len(uploads(site.requests_since(mark))) == 1
    assert scratch.data("survivor.txt") == b"made it"
    assert spool_entries(spool_dir, "staging") == []
    assert spool_entries(spool_dir, "journal") == []
    assert spool_entries(spool_dir, "recovery") == []
    assert "survivor.txt" in names(again, scratch.acq_path)


def test_a_crashed_daemons_half_written_file_is_kept_not_uploaded(
    scratch: Scratch, make_fs: MakeFs, spool_dir: Path
) -> None:
    site, path = scratch.site, f"{scratch.acq_path}/half.txt"
    fs = make_fs()
    assert fs.writes is not None
    start_writing(fs, path, b"half of it")  # still being written when the daemon died
    fs.writes.spool.close()

    mark = site.quiet_mark()
    _again, reports = next_daemon(make_fs)
    assert [r.outcome for r in reports] == ["incomplete"]
    assert reports[0].data_path is not None
    assert reports[0].data_path.read_bytes() == b"half of it"
    assert changes(site.requests_since(mark)) == []
    assert "half.txt" not in scratch.files()
