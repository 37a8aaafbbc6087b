"""`fwfs refresh` in the model (`FlywheelFS.refresh`), against a private sandbox: what the
site changed behind the mount shows at the next listing of the refreshed subtree, within
any TTL; refreshing makes no request; listings outside the subtree stay kept."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flywheel
import pytest
from writekit import Scratch

from fwfs.fs import FlywheelFS

pytestmark = pytest.mark.timeout(120)


def resolves(site: Any, mark: int) -> list[dict[str, Any]]:
    """The `/api/resolve` requests since `mark` (one per listing)."""
    return [
        r for r in site.requests_since(mark) if (r["method"], r["path"]) == ("POST", "/api/resolve")
    ]


def names(fs: FlywheelFS, path: str) -> list[str]:
    return sorted(name for name, _ in fs.readdir(path))


def test_refresh_forgets_the_subtree_only_and_costs_nothing_itself(
    private_scratch: Scratch, make_fs: Callable[..., FlywheelFS]
) -> None:
    s = private_scratch
    fs = make_fs(site=s.site, metadata_ttl=300)
    acq_path = f"{s.session_path}/{s.acq.label}"
    assert names(fs, acq_path) == []
    assert names(fs, s.project_path) == ["sub-01"]
    s.acq.upload_file(flywheel.FileSpec("new.txt", b"behind its back\n"))
    s.project.upload_file(flywheel.FileSpec("top.txt", b"also\n"))
    mark = s.site.quiet_mark()
    assert names(fs, acq_path) == []  # within the TTL
    assert resolves(s.site, mark) == []

    # The session and what is below it; the project above is not forgotten.
    assert fs.refresh(s.session_path) >= 2
    assert resolves(s.site, mark) == []
    assert names(fs, acq_path) == ["new.txt"]
    # The session's listing (which may bring its acquisitions' files along), then the
    # acquisition's if it did not.
    listed = len(resolves(s.site, mark))
    assert 1 <= listed <= 2
    assert names(fs, s.project_path) == ["sub-01"]  # still the kept listing
    assert len(resolves(s.site, mark)) == listed


def test_refresh_of_a_name_the_mount_does_not_know_yet_refreshes_its_parent(
    private_scratch: Scratch, make_fs: Callable[..., FlywheelFS]
) -> None:
    s = private_scratch
    fs = make_fs(site=s.site, metadata_ttl=300)
    assert "ses-02" not in names(fs, s.subject_path)
    s.subject.add_session(label="ses-02")
    assert fs.refresh(f"{s.subject_path}/ses-02/deeper") >= 1
    assert "ses-02" in names(fs, s.subject_path)
    # A file's path refreshes its directory.
    s.session.upload_file(flywheel.FileSpec("f.txt", b"x\n"))
    assert fs.refresh(f"{s.session_path}/f.txt") >= 1
    assert "f.txt" in names(fs, s.session_path)
