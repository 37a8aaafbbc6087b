"""Deletes on a site that keeps an audit trail (`fwfs serve --audit-trail`), driven directly
(no FUSE): such a site refuses a delete without a `delete_reason` (422), so the model asks
for `--delete-reason` before it sends anything, and a rename onto an existing file (an
upload, then a delete of the source) is refused before its upload rather than half done.
docs/SEMANTICS.md, *Deleting*.
"""

from __future__ import annotations

import errno
from typing import Any
from urllib.parse import parse_qs

import pytest
from writekit import MakeFs, Scratch, changes, errno_of, names, uploads, write_file

pytestmark = pytest.mark.timeout(120)

REASON = "test_data"


def deletes(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in entries if e["method"] == "DELETE"]


def reasons(entries: list[dict[str, Any]]) -> list[list[str]]:
    """The delete_reason values each DELETE carried."""
    return [parse_qs(e.get("query") or "").get("delete_reason", []) for e in deletes(entries)]


def test_unlink_without_a_reason_is_refused_before_any_request(
    audited: Scratch, make_fs: MakeFs
) -> None:
    audited.put("keep.txt", b"keep")
    path = f"{audited.acq_path}/keep.txt"
    fs = make_fs(site=audited.site, allow_delete=True, audit_trail=True)
    fs.getattr(path)
    mark = audited.site.quiet_mark()
    assert errno_of(lambda: fs.unlink(path)) == errno.EPERM
    assert changes(audited.site.requests_since(mark)) == []
    assert audited.data("keep.txt") == b"keep"


def test_unlink_and_rmdir_with_a_reason_delete_and_say_why(
    audited: Scratch, make_fs: MakeFs
) -> None:
    audited.put("gone.txt", b"gone")
    fs = make_fs(site=audited.site, allow_delete=True, audit_trail=True, delete_reason=REASON)
    mark = audited.site.quiet_mark()
    fs.unlink(f"{audited.acq_path}/gone.txt")
    fs.rmdir(audited.acq_path)
    entries = audited.site.requests_since(mark)
    assert reasons(entries) == [[REASON], [REASON]]
    assert audited.acq.label not in names(fs, audited.session_path)
    assert audited.acq.label not in {
        a.label for a in audited.fw.get(audited.session.id).acquisitions()
    }


def test_the_site_refuses_a_delete_without_a_reason(audited: Scratch, make_fs: MakeFs) -> None:
    """What the model's check prevents: the site itself says no (the mount learns of the
    audit trail from /api/config; a model told nothing sends the delete and fails)."""
    audited.put("kept.txt", b"kept")
    fs = make_fs(site=audited.site, allow_delete=True)
    assert errno_of(lambda: fs.unlink(f"{audited.acq_path}/kept.txt")) in (errno.EINVAL, errno.EIO)
    assert audited.data("kept.txt") == b"kept"


def test_rename_onto_an_existing_file_without_a_reason_uploads_nothing(
    audited: Scratch, make_fs: MakeFs
) -> None:
    target = audited.put("settings.json", b'{"old": true}')
    fs = make_fs(site=audited.site, audit_trail=True)
    tmp, dst = f"{audited.acq_path}/.settings.tmp", f"{audited.acq_path}/settings.json"
    write_file(fs, tmp, b'{"new": true}')  # this model's own upload: rsync's temporary file
    mark = audited.site.quiet_mark()
    assert errno_of(lambda: fs.rename(tmp, dst)) == errno.EPERM
    entries = audited.site.requests_since(mark)
    assert uploads(entries) == [] and deletes(entries) == []
    files = audited.files()
    assert files["settings.json"].version == target.version
    assert ".settings.tmp" in files


def test_rename_onto_an_existing_file_with_a_reason_replaces_it(
    audited: Scratch, make_fs: MakeFs
) -> None:
    target = audited.put("settings.json", b'{"old": true}')
    fs = make_fs(site=audited.site, audit_trail=True, delete_reason=REASON)
    tmp, dst = f"{audited.acq_path}/.settings.tmp", f"{audited.acq_path}/settings.json"
    write_file(fs, tmp, b'{"new": true}')
    fs.rename(tmp, dst)
    files = audited.files()
    assert ".settings.tmp" not in files
    assert files["settings.json"].version == target.version + 1
    assert audited.data("settings.json") == b'{"new": true}'
