"""FlywheelFS writes, driven directly (no FUSE) against the sandbox: files.

docs/SEMANTICS.md, *Writes*, in the model's terms, where only the model can show it: the
flush and the release that a mount's close(2) is made of (the upload at the flush of the
last writer, an empty file's at the release), the site's upload mode asked again, a reader
across the upload, and a crashed daemon's synced file. The calls follow the FUSE adapter's
protocol: create/open, write, flush (close(2): its error is the program's), release.

The scenarios a mount shows alike (a file listed while written, new versions, fsync, the
last writer, a failed upload or a half-written file kept for the next daemon) run in both
tiers: tests/writes/test_write_files.py.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from writekit import (
    MakeFs,
    Scratch,
    close,
    names,
    uploads,
)

from fwfs.client import FlywheelClient
from fwfs.fs import FlywheelFS

pytestmark = pytest.mark.timeout(120)


# ---- create, write, close -----------------------------------------------------------------


def test_until_the_release_the_path_is_the_spools_and_the_release_lists_it_once(
    scratch: Scratch, make_fs: MakeFs
) -> None:
    # What a mount shows as one close(2), in its two steps (tests/writes/test_write_files.py
    # has the rest, in both tiers).
    fs = make_fs()
    site, path = scratch.site, f"{scratch.acq_path}/notes.txt"
    fs.readdir(scratch.acq_path)
    mark = site.quiet_mark()
    fh = fs.create(path).fh
    assert fs.write(fh, 0, b"hello ") == 6
    assert fs.write(fh, 6, b"world") == 5
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


# ---- crashes ------------------------------------------------------------------------------


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
